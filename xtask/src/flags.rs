//! Every flag of `cargo xtask`, in one place. The `///` comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The one entry point for every operational task of Lattice, run the same way by a person and by CI.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about, long_about = None)]
pub struct Xtask {
    /// Print, in order, the exact commands that would run, and run none of them.
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// Print every command as it runs, with its output (deploy, rollback and release print one
    /// line per step with its seconds otherwise).
    #[arg(long, short, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub task: Task,
}

#[derive(Subcommand, Debug)]
pub enum Task {
    /// Run the local stack from source (compose base + dev overlays) and wait until it is healthy;
    /// with --watch, rebuild and restart the bot on every change.
    Dev(Dev),
    /// Build or push the bot image, tagged `<git sha>` and `latest`.
    Image(Image),
    /// Deploy an image that is already in the registry to the server.
    Deploy(Deploy),
    /// Build the image once, push it, and deploy it: `image push` + `deploy`.
    Release(Release),
    /// Switch the server back to an earlier release: no rebuild, no pull when the image is there.
    Rollback(Rollback),
    /// What the server runs: current sha, image digest, since when, health, history, lock holder.
    Status(Status),
    /// Snapshot the server's database now (pg_dump, kept on the server under snapshots/).
    Backup(Backup),
    /// Replace the server's database with a snapshot; the bot is stopped meanwhile.
    Restore(Restore),
    /// Follow the bot's logs (dev stack by default, the server with --server).
    Logs(Logs),
    /// Apply the bot's database migrations (dev stack by default, the server with --server).
    Migrate(Migrate),
    /// Write the app's `.env` on the server from the local environment (over ssh stdin, mode 0600).
    Secrets(Secrets),
    /// Everything CI checks: fmt, clippy -D warnings, all tests, compose overlays, linters.
    Ci(Ci),
    /// Check the tools Lattice needs (docker, engine, Compose v2, BuildKit, ssh) and say what is missing.
    Doctor(Doctor),
    /// Talk to the bot of the dev stack: each line typed is a message in the main channel.
    Chat(Chat),
    /// Measure deploy, rollback, handover and build figures and print them.
    Bench(Bench),
    /// A practice server on this machine (sshd, a registry, the Discord stand-in) to try release,
    /// rollback, status and logs on: `up` prints the environment to use, `down` removes it all.
    Sandbox(Sandbox),
}

#[derive(Args, Debug)]
pub struct Dev {
    /// Stop the dev stack (volumes are kept).
    #[arg(long, conflicts_with = "watch")]
    pub down: bool,
    /// Then keep watching bot/: on every change rebuild (incrementally) and restart the bot alone.
    /// Ctrl-C stops watching and leaves the stack running.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args, Debug)]
pub struct Image {
    #[command(subcommand)]
    pub action: ImageAction,
}

#[derive(Subcommand, Debug)]
pub enum ImageAction {
    /// Build `<image>:<sha>` and `<image>:latest` from the committed tree.
    Build(ImageOpts),
    /// Build (unless already built) and push both tags.
    Push(ImageOpts),
}

#[derive(Args, Debug)]
pub struct ImageOpts {
    /// Build even though the work tree has uncommitted changes (the sha tag will not mean that commit).
    #[arg(long)]
    pub allow_dirty: bool,
}

#[derive(Args, Debug)]
pub struct Deploy {
    /// Git sha of the release to deploy (its image must be in the registry).
    #[arg(long)]
    pub sha: String,
    /// Wait up to this many seconds for another deploy's lock instead of failing at once.
    #[arg(long, value_name = "SECS")]
    pub lock_wait: Option<u64>,
    /// Deploy even a commit older than the running release (an ancestor of it); `rollback` is the
    /// schema-checked way back.
    #[arg(long)]
    pub allow_older: bool,
}

#[derive(Args, Debug)]
pub struct Release {
    /// Build even though the work tree has uncommitted changes.
    #[arg(long)]
    pub allow_dirty: bool,
    /// Wait up to this many seconds for another deploy's lock instead of failing at once.
    #[arg(long, value_name = "SECS")]
    pub lock_wait: Option<u64>,
}

#[derive(Args, Debug)]
pub struct Rollback {
    /// Release to go back to; default: the previous good release.
    #[arg(long)]
    pub sha: Option<String>,
    /// Roll back even when the target's schema is older than the database's.
    #[arg(long)]
    pub force: bool,
    /// Wait up to this many seconds for another deploy's lock instead of failing at once.
    #[arg(long, value_name = "SECS")]
    pub lock_wait: Option<u64>,
}

#[derive(Args, Debug)]
pub struct Status {
    /// How many history entries to show.
    #[arg(long, default_value_t = 10)]
    pub history: usize,
    /// Print the same facts as one JSON object, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct Logs {
    /// The production server's logs instead of the dev stack's.
    #[arg(long)]
    pub server: bool,
    /// Keep following new lines.
    #[arg(long, short)]
    pub follow: bool,
    /// Number of lines from the end.
    #[arg(long, default_value_t = 100)]
    pub tail: usize,
}

#[derive(Args, Debug)]
pub struct Migrate {
    /// Migrate the production server's database instead of the dev stack's.
    #[arg(long)]
    pub server: bool,
}

#[derive(Args, Debug)]
pub struct Backup {
    /// Wait up to this many seconds for another deploy's lock instead of failing at once.
    #[arg(long, value_name = "SECS")]
    pub lock_wait: Option<u64>,
}

#[derive(Args, Debug)]
pub struct Restore {
    /// The snapshot, as `backup`, a deploy or `status` named it (e.g. 20261127T214144Z-<sha>.dump).
    pub snapshot: String,
    /// Yes, replace the whole database with the snapshot (everything written since is lost).
    #[arg(long)]
    pub yes: bool,
    /// Wait up to this many seconds for another deploy's lock instead of failing at once.
    #[arg(long, value_name = "SECS")]
    pub lock_wait: Option<u64>,
}

#[derive(Args, Debug)]
pub struct Secrets {
    /// Also replace values that are already set on the server.
    #[arg(long)]
    pub overwrite: bool,
    /// Also send DISCORD_API_URL, DISCORD_GATEWAY_URL and POSTGRES_IMAGE when set: development and
    /// test settings (a Discord stand-in, a local Postgres image) that production must not get.
    #[arg(long)]
    pub allow_dev_settings: bool,
}

#[derive(Args, Debug)]
pub struct Ci {
    /// Skip the end-to-end tests that need Docker images, a registry and sshd.
    #[arg(long)]
    pub skip_e2e: bool,
}

#[derive(Args, Debug)]
pub struct Doctor {}

#[derive(Args, Debug)]
pub struct Chat {
    /// Seconds to wait for the replies to the last line before exiting.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
}

#[derive(Args, Debug)]
pub struct Bench {
    /// Write the figures as TOML to this file too.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run only this group (repeatable): compile, image, dev, memory, handover, deploy.
    #[arg(long, value_name = "GROUP", value_parser = ["compile", "image", "dev", "memory", "handover", "deploy"])]
    pub only: Vec<String>,
    /// Rounds of the deploy group (each: ours and the original flow, deploy and rollback).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub rounds: u64,
}

#[derive(Args, Debug)]
pub struct Sandbox {
    #[command(subcommand)]
    pub action: SandboxAction,
    /// Where the sandbox keeps its keys, logs, registry storage and `env` file.
    #[arg(long, global = true, value_name = "DIR", default_value = "target/sandbox")]
    pub dir: PathBuf,
    /// The sshd's port on 127.0.0.1.
    #[arg(long, global = true, value_name = "PORT", default_value_t = 2222)]
    pub ssh_port: u16,
    /// The registry's port on 127.0.0.1 (the image repository is `127.0.0.1:<PORT>/lattice-bot`).
    #[arg(long, global = true, value_name = "PORT", default_value_t = 5000)]
    pub registry_port: u16,
}

#[derive(Subcommand, Debug)]
pub enum SandboxAction {
    /// Start it (or check it is running) and print the environment that points `cargo xtask` at it.
    Up,
    /// Stop it and remove everything it made: processes, containers, volumes, images, keys, user.
    Down,
}
