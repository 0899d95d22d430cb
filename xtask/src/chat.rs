//! NAME
//!     cargo xtask chat — talk to the bot of the dev stack from the terminal.
//!
//! DESCRIPTION
//!     Each line typed becomes a message in the main channel of the local Discord stand-in; the bot's
//!     replies, and its dream-channel audit lines (marked `[dream]`), are printed as they come. Runs
//!     the stand-in's own client inside its container, so nothing needs installing on the host.

use anyhow::{bail, Context, Result};

use crate::{compose::Stack, flags, plan::Plan, project::Project};

impl flags::Chat {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let stack = Stack::dev(project);
        if project.has_real_discord_token() {
            bail!(
                "DISCORD_TOKEN is set, so the dev stack talks to real Discord: chat there, or unset \
                 DISCORD_TOKEN and run `cargo xtask dev` to use the local stand-in"
            );
        }
        let running = plan.read(stack.cmd().args(["ps", "--status", "running", "--services"]))?;
        if !plan.is_dry_run() && !running.lines().any(|service| service == "discord") {
            bail!("the dev stack is not up (no running Discord stand-in): start it with `cargo xtask dev`");
        }
        let wait = self.wait.to_string();
        plan.run_interactive(stack.cmd().args([
            "exec",
            "-T",
            "discord",
            "lattice-bot",
            "chat",
            "--wait",
            &wait,
        ]))
        .context("chat ended with an error")
    }
}
