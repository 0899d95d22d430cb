//! NAME
//!     cargo xtask dev — the local stack from source, on the real Docker Engine.
//!
//! SYNOPSIS
//!     cargo xtask dev [--down]
//!
//! DESCRIPTION
//!     Builds the bot from the working tree (a debug build in Docker; dependencies stay cached in their
//!     own layer, so an edit recompiles only the bot), migrates the database, starts Postgres and the
//!     bot with the base + dev overlays, waits until they are healthy and shows the bot's /health. Without a real
//!     DISCORD_TOKEN it adds the local Discord stand-in and the placeholder LLM, and says so.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{compose::Stack, flags, http, plan::Plan, project::Project};

/// Seconds `up --wait` may take for containers to become healthy (the build comes before it).
const WAIT_SECS: &str = "180";

impl flags::Dev {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let stack = Stack::dev(project);
        if self.down {
            return plan.run(stack.cmd().args(["down", "--remove-orphans"]));
        }
        if !project.has_real_discord_token() {
            plan.note(
                "no DISCORD_TOKEN set: the bot talks to the local Discord stand-in with placeholder replies \
                 (set DISCORD_TOKEN and OPENROUTER_API_KEY in .env to use the real services)",
            );
        }
        plan.run(stack.cmd().arg("build")).context("building the bot image from the working tree")?;
        // As in production: the schema first (this also starts Postgres), then the bot.
        plan.run(stack.cmd().args(["run", "--rm", "bot", "migrate"]))
            .context("migrating the dev database")?;
        plan.run(stack.cmd().args(["up", "--detach", "--wait", "--wait-timeout", WAIT_SECS]))
            .context("the dev stack did not come up healthy; see `cargo xtask logs`")?;
        if plan.is_dry_run() {
            return Ok(());
        }
        let port = project.env.get("BOT_HTTP_PORT").unwrap_or("8080");
        let addr = format!("127.0.0.1:{port}");
        let health = match http::request(&addr, "GET", "/health", None, Duration::from_secs(10)) {
            Ok((200, body)) => body.trim().to_string(),
            Ok((status, body)) => bail!("the bot is up but its /health answers {status}: {}", body.trim()),
            Err(err) => {
                return Err(err).context(format!("the bot is up but http://{addr}/health does not answer"))
            }
        };
        println!("bot healthy: http://127.0.0.1:{port}/health -> {health}");
        println!(
            "logs: cargo xtask logs -f    migrations: cargo xtask migrate    stop: cargo xtask dev --down"
        );
        if !project.has_real_discord_token() {
            println!("talk to it: cargo xtask chat");
        }
        Ok(())
    }
}
