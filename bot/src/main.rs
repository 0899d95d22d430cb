//! NAME
//!     lattice-bot — the Lattice Discord bot and its companions
//!
//! SYNOPSIS
//!     lattice-bot run | migrate | healthcheck [--wait standby|leader --timeout SECS] | doctor
//!                 | schema | discord-standin | chat
//!
//! DESCRIPTION
//!     `run` is the bot. The others serve deploys (`migrate`, `healthcheck`, `schema`), a look
//!     inside a container that has no shell (`doctor`) and development (`discord-standin`, `chat`).
//!     Logs are JSON lines on stderr.
//!
//!     Handover contract for a make-before-break deploy: start the new instance beside the old one;
//!     `healthcheck --wait standby` exits 0 once it is a ready standby (database reachable, schema at
//!     or above its head, not leading: it never takes the lock or connects the gateway while another
//!     instance leads). Then SIGTERM the old one: it stores its session and releases the lock, the
//!     standby takes it and RESUMEs; `healthcheck --wait leader` exits 0 once the new instance leads
//!     with its gateway READY/RESUMED. Each exits non-zero with the reason at `--timeout`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lattice_bot::{
    bot, chat,
    config::{self, Config, DbConfig, Env},
    db, doctor, http, standin,
};

#[derive(Parser)]
#[command(name = "lattice-bot", version, about = "The Lattice Discord bot")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bot: gateway, replies, /health and /metrics on HTTP_PORT.
    Run,
    /// Apply the embedded migrations (needs only the database variables).
    Migrate,
    /// Probe this container's own /health; exit 0 only when it answers 200 (the image's HEALTHCHECK).
    ///
    /// With --wait, poll until this instance is a ready standby (database reachable, schema at or
    /// above its head, not leading) or the leader with its gateway READY/RESUMED; exit non-zero with
    /// the reason when --timeout passes first. A deploy starts the new instance beside the old one,
    /// waits `--wait standby`, stops the old one (SIGTERM), then waits `--wait leader`.
    Healthcheck {
        /// The state to wait for.
        #[arg(long, value_enum, requires = "timeout")]
        wait: Option<http::Wait>,
        /// Seconds to wait at most.
        #[arg(long, value_name = "SECS", requires = "wait")]
        timeout: Option<u64>,
    },
    /// Check what the bot needs from where it runs: a writable /tmp, the database host resolving
    /// and taking TCP connections, and verified TLS to Discord and OpenRouter (or `--url`s).
    Doctor(doctor::DoctorArgs),
    /// Print the embedded migration head as JSON, without touching a database.
    Schema,
    /// Serve a stand-in for Discord (REST, gateway v10, control API) for development and tests.
    DiscordStandin {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8090")]
        listen: String,
        #[command(flatten)]
        world: standin::World,
    },
    /// Chat with the bot through the stand-in: stdin lines become messages, replies are printed.
    Chat(chat::ChatArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lattice_bot::install_crypto_provider();
    init_logs();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx::postgres::notice=warn"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .with_writer(std::io::stderr)
        .init();
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    let env = Env::from_process();
    match command {
        Command::Run => bot::run(Config::from_env(&env)?).await,
        Command::Migrate => {
            let db = DbConfig::from_env(&env)?;
            let applied = db::migrate(&db).await.map_err(|e| anyhow::anyhow!("migrate failed: {e:#}"))?;
            let head = db::schema_info().head;
            if applied.is_empty() {
                println!("up to date at {head}");
            } else {
                for (version, description) in &applied {
                    println!("applied {version:04} {description}");
                }
                println!("now at {head}");
            }
            Ok(())
        }
        Command::Healthcheck { wait, timeout } => {
            let wait = wait.zip(timeout.map(std::time::Duration::from_secs));
            http::probe(config::http_port_from_env(&env)?, wait).await
        }
        Command::Doctor(args) => tokio::task::spawn_blocking(move || doctor::run(args, &env)).await?,
        Command::Schema => {
            println!("{}", serde_json::to_string(&db::schema_info())?);
            Ok(())
        }
        Command::DiscordStandin { listen, world } => {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
            tracing::info!(listen = %listener.local_addr()?, ?world, "discord stand-in serving");
            standin::serve(listener, world).await?;
            Ok(())
        }
        Command::Chat(args) => chat::run(args).await,
    }
}
