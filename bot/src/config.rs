//! Configuration from the environment.
//!
//! Every problem is collected and reported at once, and a secret's value never appears in an error,
//! in `Debug` output or in a log line.

use std::{collections::HashMap, fmt, time::Duration};

use sqlx::postgres::PgConnectOptions;
use twilight_model::id::{
    marker::{ChannelMarker, GuildMarker},
    Id,
};

/// Variables whose values must never be printed.
pub const SECRET_VARS: &[&str] =
    &["DISCORD_TOKEN", "OPENROUTER_API_KEY", "POSTGRES_PASSWORD", "DATABASE_URL", "LATTICE_NOTIFY_WEBHOOK"];

pub const DEFAULT_OPENROUTER_BASE_URL: &str = "https://openrouter.ai/api/v1";
/// Discord's REST API and gateway, where twilight goes unless pointed at a stand-in.
pub const DEFAULT_DISCORD_API_URL: &str = "https://discord.com/api/v10";
pub const DEFAULT_DISCORD_GATEWAY_URL: &str = "wss://gateway.discord.gg";
pub const DEFAULT_OPENROUTER_MODEL: &str = "openrouter/auto";
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// Every variable `lattice-bot run` reads. Each must reach the container: compose/base.yml passes
/// them (a test checks), except those marked in `SET_ELSEWHERE` there.
pub const SETTINGS: &[&str] = &[
    "DISCORD_TOKEN",
    "DISCORD_GUILD_ID",
    "DISCORD_MAIN_CHANNEL_ID",
    "DISCORD_DREAM_CHANNEL_ID",
    "DISCORD_API_URL",
    "DISCORD_GATEWAY_URL",
    "LLM_PROVIDER",
    "OPENROUTER_API_KEY",
    "OPENROUTER_MODEL",
    "OPENROUTER_BASE_URL",
    "LLM_TIMEOUT_SECS",
    "LLM_CONCURRENCY",
    "LLM_MAX_TOKENS",
    "USER_RATE_LIMIT",
    "USER_RATE_WINDOW_SECS",
    "REPLY_QUEUE",
    "CONTEXT_MESSAGES",
    "DATABASE_URL",
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "HTTP_PORT",
    "LATTICE_GIT_SHA",
    "SHUTDOWN_TIMEOUT_SECS",
    "GATEWAY_GRACE_SECS",
    "REPLY_LEASE_SECS",
    "LATTICE_NOTIFY_WEBHOOK",
    "ALERT_AFTER_SECS",
    "SHARD_ID",
    "SHARD_COUNT",
    "SHARD_SLOT",
];

/// A secret may instead be given as a file (`<NAME>_FILE`, e.g. a Docker secret under
/// `/run/secrets/`): read when the variable itself is unset.
pub const FILE_SUFFIX: &str = "_FILE";
/// The secrets that may come from a file, and the variable naming the file.
pub const SECRET_FILE_VARS: &[(&str, &str)] = &[
    ("DISCORD_TOKEN", "DISCORD_TOKEN_FILE"),
    ("OPENROUTER_API_KEY", "OPENROUTER_API_KEY_FILE"),
    ("POSTGRES_PASSWORD", "POSTGRES_PASSWORD_FILE"),
    ("LATTICE_NOTIFY_WEBHOOK", "LATTICE_NOTIFY_WEBHOOK_FILE"),
];

/// A snapshot of the environment, so parsing is a pure function that unit tests can drive. The
/// third part lists secrets whose `<NAME>_FILE` could not be read, reported as invalid.
#[derive(Clone, Default)]
pub struct Env(
    HashMap<String, String>,
    std::cell::RefCell<std::collections::BTreeSet<String>>,
    Vec<(String, String)>,
);

impl Env {
    pub fn from_process() -> Self {
        Self(std::env::vars().collect(), Default::default(), Vec::new())
            .with_secret_files(|path| std::fs::read_to_string(path))
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            Default::default(),
            Vec::new(),
        )
    }

    /// Fills each secret that is unset from its `<NAME>_FILE`, read with `read` (the file's content
    /// without its trailing newline). A file that cannot be read is reported by name and path, never content.
    pub fn with_secret_files(mut self, read: impl Fn(&str) -> std::io::Result<String>) -> Self {
        for (name, file) in SECRET_FILE_VARS {
            debug_assert_eq!(format!("{name}{FILE_SUFFIX}"), *file);
            let Some(path) = self.0.get(*file).map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()) else {
                continue;
            };
            let file = (*file).to_owned();
            if self.0.get(*name).is_some_and(|v| !v.trim().is_empty()) {
                self.2.push((file, format!("set together with {name}: give only one")));
                continue;
            }
            match read(&path) {
                Ok(value) => {
                    self.0.insert((*name).to_owned(), value.trim_end_matches(['\r', '\n']).to_owned());
                }
                Err(e) => self.2.push((file, format!("cannot read {path}: {}", e.kind()))),
            }
        }
        self
    }

    /// The names looked up so far, for the test that every setting is listed in [`SETTINGS`].
    pub fn names_read(&self) -> Vec<String> {
        self.1.borrow().iter().cloned().collect()
    }

    /// The value, with empty strings treated as unset (compose passes `VAR=` for unset variables).
    fn get(&self, name: &str) -> Option<&str> {
        self.1.borrow_mut().insert(name.to_owned());
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }
}

/// Every missing or invalid variable, listed together.
#[derive(Debug, Default)]
pub struct ConfigError {
    pub missing: Vec<String>,
    pub invalid: Vec<(String, String)>,
}

impl ConfigError {
    fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.invalid.is_empty()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "configuration is incomplete or invalid (set these environment variables, e.g. in `.env`):"
        )?;
        for name in &self.missing {
            writeln!(f, "  missing: {name}")?;
        }
        for (name, why) in &self.invalid {
            writeln!(f, "  invalid: {name}: {why}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems while reading variables.
struct Reader<'a> {
    env: &'a Env,
    err: ConfigError,
}

impl<'a> Reader<'a> {
    /// Starts with the secret files that could not be read.
    fn new(env: &'a Env) -> Self {
        let mut err = ConfigError::default();
        err.invalid.extend(env.2.iter().cloned());
        Reader { env, err }
    }

    fn required(&mut self, name: &str) -> Option<&'a str> {
        let v = self.env.get(name);
        if v.is_none() {
            self.err.missing.push(name.to_owned());
        }
        v
    }

    fn invalid(&mut self, name: &str, why: impl Into<String>) {
        self.err.invalid.push((name.to_owned(), why.into()));
    }

    /// A comma-separated list of at least one Discord id.
    fn snowflakes<T>(&mut self, name: &str) -> Option<Vec<Id<T>>> {
        let raw = self.required(name)?;
        let ids: Option<Vec<Id<T>>> =
            raw.split(',').map(|p| p.trim().parse::<u64>().ok().and_then(Id::new_checked)).collect();
        if ids.is_none() {
            self.invalid(name, "expected Discord ids (positive integers), comma-separated");
        }
        ids
    }

    fn snowflake<T>(&mut self, name: &str) -> Option<Id<T>> {
        let raw = self.required(name)?;
        match raw.parse::<u64>().ok().and_then(Id::new_checked) {
            Some(id) => Some(id),
            None => {
                self.invalid(name, "expected a Discord id (a positive integer)");
                None
            }
        }
    }

    fn number<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
        &mut self,
        name: &str,
        default: T,
        min: T,
        max: T,
    ) -> T {
        let Some(raw) = self.env.get(name) else {
            return default;
        };
        match raw.parse::<T>() {
            Ok(v) if v >= min && v <= max => v,
            _ => {
                self.invalid(name, format!("expected a number from {min} to {max}"));
                default
            }
        }
    }

    /// A URL whose scheme must be one of `schemes`. Its value is never put in an error (a webhook URL is a secret).
    fn url(&mut self, name: &str, schemes: &[&str]) -> Option<String> {
        let raw = self.env.get(name)?;
        let ok = schemes
            .iter()
            .any(|s| raw.strip_prefix(s).and_then(|r| r.strip_prefix("://")).is_some_and(|h| !h.is_empty()));
        if ok {
            Some(raw.trim_end_matches('/').to_owned())
        } else {
            let want: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
            self.invalid(name, format!("expected a URL starting with {}", want.join(" or ")));
            None
        }
    }

    fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigError> {
        if self.err.is_empty() {
            Ok(value())
        } else {
            Err(self.err)
        }
    }
}

/// How to reach Postgres: `DATABASE_URL`, or the `POSTGRES_*` parts.
#[derive(Clone)]
pub struct DbConfig {
    pub options: PgConnectOptions,
    /// Host and port only, for messages (never the password).
    pub display: String,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig").field("server", &self.display).finish_non_exhaustive()
    }
}

impl DbConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut r = Reader::new(env);
        let db = read_db(&mut r);
        r.finish(|| db.expect("no error means a database config"))
    }
}

fn read_db(r: &mut Reader<'_>) -> Option<DbConfig> {
    if r.env.get("DATABASE_URL").is_some() {
        let options = read_db_url(r)?;
        let display = format!("{}:{}", options.get_host(), options.get_port());
        return Some(DbConfig { options, display });
    }
    let (host, port) = read_db_server(r);
    let user = r.env.get("POSTGRES_USER");
    let password = r.env.get("POSTGRES_PASSWORD");
    let db = r.env.get("POSTGRES_DB");
    let mut missing = Vec::new();
    for (name, v) in [("POSTGRES_USER", user), ("POSTGRES_PASSWORD", password), ("POSTGRES_DB", db)] {
        if v.is_none() {
            missing.push(name);
        }
    }
    if !missing.is_empty() {
        r.err.missing.push(format!("DATABASE_URL (or {})", missing.join(", ")));
        return None;
    }
    let options =
        PgConnectOptions::new().host(&host).port(port).username(user?).password(password?).database(db?);
    Some(DbConfig { options, display: format!("{host}:{port}") })
}

/// `DATABASE_URL`, which must be set.
fn read_db_url(r: &mut Reader<'_>) -> Option<PgConnectOptions> {
    let url = r.env.get("DATABASE_URL")?;
    let scheme_ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
    match url.parse::<PgConnectOptions>() {
        Ok(options) if scheme_ok => Some(options),
        _ => {
            r.invalid("DATABASE_URL", "not a valid postgres:// URL (value not shown)");
            None
        }
    }
}

/// `POSTGRES_HOST` (default `postgres`, the compose service) and `POSTGRES_PORT`.
fn read_db_server(r: &mut Reader<'_>) -> (String, u16) {
    let host = r.env.get("POSTGRES_HOST").unwrap_or("postgres").to_owned();
    let port = r.number("POSTGRES_PORT", 5432u16, 1, u16::MAX);
    (host, port)
}

/// The database server's host and port, from the same variables as [`DbConfig`] but without
/// needing credentials: what `lattice-bot doctor` checks.
pub fn db_server_from_env(env: &Env) -> Result<(String, u16), ConfigError> {
    let mut r = Reader::new(env);
    let server = if env.get("DATABASE_URL").is_some() {
        read_db_url(&mut r).map(|options| (options.get_host().to_owned(), options.get_port()))
    } else {
        Some(read_db_server(&mut r))
    };
    r.finish(|| server.expect("no error means a server"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmProvider {
    OpenRouter,
    Placeholder,
}

impl LlmProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            LlmProvider::OpenRouter => "openrouter",
            LlmProvider::Placeholder => "placeholder",
        }
    }
}

/// Where the bot finds Discord: the real service, or a stand-in.
#[derive(Clone, Debug, Default)]
pub struct DiscordEndpoints {
    /// `http://host:port` of a stand-in REST API; `None` = discord.com.
    pub api_url: Option<String>,
    /// `ws://host:port` of a stand-in gateway; `None` = Discord's gateway.
    pub gateway_url: Option<String>,
}

/// Which part of Discord's guilds this instance serves: shard `id` of `count`, as Discord assigns
/// guilds to shards (`(guild_id >> 22) % count`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    pub id: u32,
    pub count: u32,
}

impl ShardSpec {
    pub const ONE: ShardSpec = ShardSpec { id: 0, count: 1 };

    /// The shard Discord sends `guild`'s events to.
    pub fn of_guild(count: u32, guild: u64) -> u32 {
        ((guild >> 22) % u64::from(count.max(1))) as u32
    }

    pub fn serves(&self, guild: Id<GuildMarker>) -> bool {
        Self::of_guild(self.count, guild.get()) == self.id
    }
}

/// Everything `lattice-bot run` needs.
#[derive(Clone)]
pub struct Config {
    pub discord_token: String,
    /// Every guild served and its main channel (`DISCORD_GUILD_ID` and `DISCORD_MAIN_CHANNEL_ID`,
    /// comma-separated lists in the same order); this shard answers in those of its own guilds.
    pub guilds: Vec<(Id<GuildMarker>, Id<ChannelMarker>)>,
    /// `SHARD_ID` (or `SHARD_SLOT` − 1, Swarm's 1-based task slot) of `SHARD_COUNT`; 0 of 1 unless set.
    pub shard: ShardSpec,
    pub dream_channel_id: Id<ChannelMarker>,
    pub discord: DiscordEndpoints,
    pub llm_provider: LlmProvider,
    pub openrouter_api_key: Option<String>,
    pub openrouter_model: String,
    pub openrouter_base_url: String,
    pub llm_timeout: Duration,
    /// LLM calls at once; more messages wait in the reply queue.
    pub llm_concurrency: usize,
    /// `max_tokens` of every completion.
    pub llm_max_tokens: u32,
    /// Answers per user per `user_rate_window`; beyond it one notice, then silence.
    pub user_rate_limit: u32,
    pub user_rate_window: Duration,
    /// Messages waiting for an answer; beyond it new ones are stored, not answered, and audited.
    pub reply_queue: usize,
    pub context_messages: u32,
    pub db: DbConfig,
    pub http_port: u16,
    pub git_sha: String,
    pub shutdown_timeout: Duration,
    /// How long the gateway may be down before `/health` says unhealthy (`GATEWAY_GRACE_SECS`).
    pub gateway_grace: Duration,
    /// A reply claim's lease, renewed while the reply is worked on; an instance that dies leaves
    /// it to expire and the leader re-takes it (`REPLY_LEASE_SECS`).
    pub reply_lease: Duration,
    /// The Discord webhook runtime alerts go to (`LATTICE_NOTIFY_WEBHOOK`, a secret); `None`: no alerts.
    pub alert_webhook: Option<String>,
    /// How long the bot must be unhealthy before it alerts (`ALERT_AFTER_SECS`).
    pub alert_after: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("discord_token", &"<redacted>")
            .field("guilds", &self.guilds)
            .field("shard", &self.shard)
            .field("dream_channel_id", &self.dream_channel_id)
            .field("discord", &self.discord)
            .field("llm_provider", &self.llm_provider)
            .field("openrouter_api_key", &self.openrouter_api_key.as_ref().map(|_| "<redacted>"))
            .field("openrouter_model", &self.openrouter_model)
            .field("openrouter_base_url", &self.openrouter_base_url)
            .field("llm_timeout", &self.llm_timeout)
            .field("llm_concurrency", &self.llm_concurrency)
            .field("llm_max_tokens", &self.llm_max_tokens)
            .field("user_rate_limit", &self.user_rate_limit)
            .field("user_rate_window", &self.user_rate_window)
            .field("reply_queue", &self.reply_queue)
            .field("context_messages", &self.context_messages)
            .field("db", &self.db)
            .field("http_port", &self.http_port)
            .field("git_sha", &self.git_sha)
            .field("alert_webhook", &self.alert_webhook.as_ref().map(|_| "<redacted>"))
            .field("alert_after", &self.alert_after)
            .finish()
    }
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut r = Reader::new(env);
        let discord_token = r.required("DISCORD_TOKEN").map(str::to_owned);
        let guild_ids = r.snowflakes::<GuildMarker>("DISCORD_GUILD_ID");
        let main_channel_ids = r.snowflakes::<ChannelMarker>("DISCORD_MAIN_CHANNEL_ID");
        let dream_channel_id = r.snowflake("DISCORD_DREAM_CHANNEL_ID");
        if let (Some(channels), Some(dream)) = (&main_channel_ids, dream_channel_id) {
            if channels.contains(&dream) {
                r.invalid("DISCORD_DREAM_CHANNEL_ID", "must differ from DISCORD_MAIN_CHANNEL_ID");
            }
        }
        let guilds: Option<Vec<_>> = match (guild_ids, main_channel_ids) {
            (Some(g), Some(c)) if g.len() == c.len() => Some(g.into_iter().zip(c).collect()),
            (Some(_), Some(_)) => {
                r.invalid(
                    "DISCORD_MAIN_CHANNEL_ID",
                    "expected one main channel per guild of DISCORD_GUILD_ID, in the same order",
                );
                None
            }
            _ => None,
        };
        let shard = read_shard(&mut r);
        let llm_provider = match env.get("LLM_PROVIDER").unwrap_or("openrouter") {
            "openrouter" => LlmProvider::OpenRouter,
            "placeholder" => LlmProvider::Placeholder,
            _ => {
                r.invalid("LLM_PROVIDER", "expected `openrouter` or `placeholder`");
                LlmProvider::OpenRouter
            }
        };
        let openrouter_api_key = match llm_provider {
            LlmProvider::OpenRouter => r.required("OPENROUTER_API_KEY").map(str::to_owned),
            LlmProvider::Placeholder => env.get("OPENROUTER_API_KEY").map(str::to_owned),
        };
        let openrouter_model = env.get("OPENROUTER_MODEL").unwrap_or(DEFAULT_OPENROUTER_MODEL).to_owned();
        let openrouter_base_url = r
            .url("OPENROUTER_BASE_URL", &["https", "http"])
            .unwrap_or_else(|| DEFAULT_OPENROUTER_BASE_URL.to_owned());
        let llm_timeout = Duration::from_secs(r.number("LLM_TIMEOUT_SECS", 60u64, 1, 600));
        let llm_concurrency = r.number("LLM_CONCURRENCY", 4usize, 1, 64);
        let llm_max_tokens = r.number("LLM_MAX_TOKENS", 1024u32, 1, 100_000);
        let user_rate_limit = r.number("USER_RATE_LIMIT", 6u32, 1, 100_000);
        let user_rate_window = Duration::from_secs(r.number("USER_RATE_WINDOW_SECS", 60u64, 1, 86_400));
        let reply_queue = r.number("REPLY_QUEUE", 100usize, 1, 10_000);
        let context_messages = r.number("CONTEXT_MESSAGES", 20u32, 1, 200);
        let discord = DiscordEndpoints {
            api_url: r.url("DISCORD_API_URL", &["http", "https"]),
            gateway_url: r.url("DISCORD_GATEWAY_URL", &["ws", "wss"]),
        };
        let db = read_db(&mut r);
        let http_port = r.number("HTTP_PORT", DEFAULT_HTTP_PORT, 1, u16::MAX);
        let git_sha = env.get("LATTICE_GIT_SHA").unwrap_or("unknown").to_owned();
        let shutdown_timeout = Duration::from_secs(r.number("SHUTDOWN_TIMEOUT_SECS", 8u64, 1, 300));
        let gateway_grace = Duration::from_secs(r.number("GATEWAY_GRACE_SECS", 10u64, 1, 600));
        let reply_lease = Duration::from_secs(r.number("REPLY_LEASE_SECS", 30u64, 3, 3600));
        let alert_webhook = r.url("LATTICE_NOTIFY_WEBHOOK", &["https", "http"]);
        let alert_after = Duration::from_secs(r.number("ALERT_AFTER_SECS", 60u64, 1, 86_400));
        r.finish(|| Config {
            discord_token: discord_token.expect("checked"),
            guilds: guilds.expect("checked"),
            shard,
            dream_channel_id: dream_channel_id.expect("checked"),
            discord,
            llm_provider,
            openrouter_api_key,
            openrouter_model,
            openrouter_base_url,
            llm_timeout,
            llm_concurrency,
            llm_max_tokens,
            user_rate_limit,
            user_rate_window,
            reply_queue,
            context_messages,
            db: db.expect("checked"),
            http_port,
            git_sha,
            shutdown_timeout,
            gateway_grace,
            reply_lease,
            alert_webhook,
            alert_after,
        })
    }

    /// The main channels of the guilds this shard serves: where it answers, and what it backfills.
    pub fn own_channels(&self) -> Vec<Id<ChannelMarker>> {
        self.guilds.iter().filter(|(g, _)| self.shard.serves(*g)).map(|(_, c)| *c).collect()
    }
}

/// `SHARD_ID` (or `SHARD_SLOT`, 1-based, as Swarm's `{{.Task.Slot}}`) and `SHARD_COUNT`.
fn read_shard(r: &mut Reader<'_>) -> ShardSpec {
    let count = r.number("SHARD_COUNT", 1u32, 1, 65_535);
    let id = match (r.env.get("SHARD_ID").is_some(), r.env.get("SHARD_SLOT").is_some()) {
        (true, true) => {
            r.invalid("SHARD_SLOT", "set together with SHARD_ID: give only one");
            0
        }
        (false, true) => r.number("SHARD_SLOT", 1u32, 1, 65_535) - 1,
        _ => r.number("SHARD_ID", 0u32, 0, 65_534),
    };
    if id >= count {
        r.invalid(
            "SHARD_ID",
            format!("shard {id} does not exist: SHARD_COUNT is {count} (shards 0 to {})", count - 1),
        );
    }
    ShardSpec { id, count }
}

/// `HTTP_PORT` for the health probe, which must work with nothing else configured.
pub fn http_port_from_env(env: &Env) -> Result<u16, ConfigError> {
    let mut r = Reader::new(env);
    let port = r.number("HTTP_PORT", DEFAULT_HTTP_PORT, 1, u16::MAX);
    r.finish(|| port)
}

/// The remote services the bot talks to, as configured (each with a name for messages): Discord's
/// REST API and gateway, and OpenRouter. What `lattice-bot doctor` checks by default.
pub fn remote_urls_from_env(env: &Env) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let mut r = Reader::new(env);
    let urls = vec![
        (
            "Discord API",
            r.url("DISCORD_API_URL", &["http", "https"])
                .unwrap_or_else(|| DEFAULT_DISCORD_API_URL.to_owned()),
        ),
        (
            "Discord gateway",
            r.url("DISCORD_GATEWAY_URL", &["ws", "wss"])
                .unwrap_or_else(|| DEFAULT_DISCORD_GATEWAY_URL.to_owned()),
        ),
        (
            "OpenRouter",
            r.url("OPENROUTER_BASE_URL", &["https", "http"])
                .unwrap_or_else(|| DEFAULT_OPENROUTER_BASE_URL.to_owned()),
        ),
    ];
    r.finish(|| urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &[(&str, &str)] = &[
        ("DISCORD_TOKEN", "tok-secret-value"),
        ("DISCORD_GUILD_ID", "1"),
        ("DISCORD_MAIN_CHANNEL_ID", "2"),
        ("DISCORD_DREAM_CHANNEL_ID", "3"),
        ("OPENROUTER_API_KEY", "sk-or-secret-value"),
        ("POSTGRES_USER", "u"),
        ("POSTGRES_PASSWORD", "pw-secret-value"),
        ("POSTGRES_DB", "d"),
    ];

    #[test]
    fn empty_environment_lists_every_missing_variable_at_once() {
        let err = Config::from_env(&Env::default()).unwrap_err();
        let text = err.to_string();
        for name in [
            "DISCORD_TOKEN",
            "DISCORD_GUILD_ID",
            "DISCORD_MAIN_CHANNEL_ID",
            "DISCORD_DREAM_CHANNEL_ID",
            "OPENROUTER_API_KEY",
            "DATABASE_URL (or POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB)",
        ] {
            assert!(text.contains(name), "{name} not listed in:\n{text}");
        }
    }

    #[test]
    fn placeholder_provider_needs_no_api_key() {
        let env: Vec<_> = FULL.iter().copied().filter(|(k, _)| *k != "OPENROUTER_API_KEY").collect();
        let mut env = Env::from_pairs(env);
        env.0.insert("LLM_PROVIDER".into(), "placeholder".into());
        let cfg = Config::from_env(&env).unwrap();
        assert_eq!(cfg.llm_provider, LlmProvider::Placeholder);
        assert_eq!(cfg.context_messages, 20);
        assert_eq!(cfg.http_port, 8080);
        assert_eq!(
            (cfg.llm_concurrency, cfg.llm_max_tokens, cfg.user_rate_limit, cfg.reply_queue),
            (4, 1024, 6, 100)
        );
        assert_eq!(cfg.user_rate_window, Duration::from_secs(60));
    }

    #[test]
    fn every_variable_run_reads_is_listed_in_settings() {
        let env = Env::from_pairs(FULL.iter().copied());
        Config::from_env(&env).unwrap();
        let env_db = Env::from_pairs([("DATABASE_URL", "postgres://u:p@h/d")]);
        DbConfig::from_env(&env_db).unwrap();
        for name in env.names_read().into_iter().chain(env_db.names_read()) {
            assert!(SETTINGS.contains(&name.as_str()), "{name} is read but not in SETTINGS");
        }
    }

    #[test]
    fn invalid_values_are_reported_together_without_secret_values() {
        let mut env = Env::from_pairs(FULL.iter().copied());
        for (k, v) in [
            ("DISCORD_GUILD_ID", "abc"),
            ("DISCORD_DREAM_CHANNEL_ID", "2"),
            ("LLM_PROVIDER", "gpt"),
            ("CONTEXT_MESSAGES", "0"),
            ("LLM_CONCURRENCY", "0"),
            ("REPLY_QUEUE", "many"),
            ("HTTP_PORT", "99999"),
            ("DISCORD_GATEWAY_URL", "http://x"),
        ] {
            env.0.insert(k.into(), v.into());
        }
        let text = Config::from_env(&env).unwrap_err().to_string();
        for name in [
            "DISCORD_GUILD_ID",
            "DISCORD_DREAM_CHANNEL_ID",
            "LLM_PROVIDER",
            "CONTEXT_MESSAGES",
            "LLM_CONCURRENCY",
            "REPLY_QUEUE",
            "HTTP_PORT",
            "DISCORD_GATEWAY_URL",
        ] {
            assert!(text.contains(&format!("invalid: {name}")), "{name} not reported in:\n{text}");
        }
        assert!(!text.contains("secret-value"), "a secret leaked:\n{text}");
    }

    #[test]
    fn bad_database_url_does_not_echo_it() {
        let env = Env::from_pairs([("DATABASE_URL", "mysql://u:pw-secret-value@h/db")]);
        let text = DbConfig::from_env(&env).unwrap_err().to_string();
        assert!(text.contains("invalid: DATABASE_URL"), "{text}");
        assert!(!text.contains("secret-value"), "{text}");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let cfg = Config::from_env(&Env::from_pairs(FULL.iter().copied())).unwrap();
        let text = format!("{cfg:?}");
        assert!(!text.contains("secret-value"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn shards_default_to_one_and_each_serves_the_guilds_discord_routes_to_it() {
        let cfg = Config::from_env(&Env::from_pairs(FULL.iter().copied())).unwrap();
        assert_eq!(cfg.shard, ShardSpec::ONE);
        assert_eq!(cfg.own_channels(), vec![cfg.guilds[0].1]);
        // Guild 1 << 22 is on shard 1 of 2, guild 2 << 22 on shard 0.
        let (g1, g2) = ((1u64 << 22).to_string(), (2u64 << 22).to_string());
        let guilds = format!("{g1}, {g2}");
        let mut pairs: Vec<(&str, &str)> = FULL.to_vec();
        pairs.extend([("DISCORD_GUILD_ID", guilds.as_str()), ("DISCORD_MAIN_CHANNEL_ID", "20,21")]);
        let shard0 = Config::from_env(&Env::from_pairs(pairs.iter().copied().chain([("SHARD_COUNT", "2")])));
        let shard0 = shard0.unwrap();
        assert_eq!(shard0.shard, ShardSpec { id: 0, count: 2 });
        assert_eq!(shard0.own_channels(), vec![Id::new(21)]);
        // Swarm's task slot 2 is shard 1.
        let env = Env::from_pairs(pairs.iter().copied().chain([("SHARD_COUNT", "2"), ("SHARD_SLOT", "2")]));
        let shard1 = Config::from_env(&env).unwrap();
        assert_eq!(shard1.shard, ShardSpec { id: 1, count: 2 });
        assert_eq!(shard1.own_channels(), vec![Id::new(20)]);
        let env = Env::from_pairs(pairs.iter().copied().chain([("SHARD_COUNT", "2"), ("SHARD_ID", "2")]));
        let text = Config::from_env(&env).unwrap_err().to_string();
        assert!(text.contains("invalid: SHARD_ID: shard 2 does not exist"), "{text}");
        let env = Env::from_pairs(pairs.iter().copied().chain([("DISCORD_MAIN_CHANNEL_ID", "20")]));
        let text = Config::from_env(&env).unwrap_err().to_string();
        assert!(
            text.contains("invalid: DISCORD_MAIN_CHANNEL_ID: expected one main channel per guild"),
            "{text}"
        );
    }

    #[test]
    fn secrets_can_come_from_files_whose_content_is_never_shown() {
        let pairs: Vec<(&str, &str)> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| !matches!(*k, "DISCORD_TOKEN" | "POSTGRES_PASSWORD"))
            .chain([
                ("DISCORD_TOKEN_FILE", "/run/secrets/discord_token"),
                ("POSTGRES_PASSWORD_FILE", "/run/secrets/postgres_password"),
            ])
            .collect();
        let read = |path: &str| match path {
            "/run/secrets/discord_token" => Ok("tok-from-file-secret-value\n".to_owned()),
            _ => Err(std::io::ErrorKind::PermissionDenied.into()),
        };
        let text = Config::from_env(&Env::from_pairs(pairs.iter().copied()).with_secret_files(read))
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("invalid: POSTGRES_PASSWORD_FILE: cannot read /run/secrets/postgres_password"),
            "{text}"
        );
        assert!(!text.contains("secret-value"), "{text}");
        let read_all = |_: &str| Ok("from-file-secret-value\n".to_owned());
        let cfg =
            Config::from_env(&Env::from_pairs(pairs.iter().copied()).with_secret_files(read_all)).unwrap();
        assert_eq!(cfg.discord_token, "from-file-secret-value");
    }
}
