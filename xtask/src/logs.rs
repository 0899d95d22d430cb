//! NAME
//!     cargo xtask logs — the bot's logs.
//!
//! SYNOPSIS
//!     cargo xtask logs [--server] [--follow] [--tail N]
//!
//! DESCRIPTION
//!     The dev stack's logs, or with `--server` the current release's containers on the server.

use anyhow::{bail, Result};

use crate::{compose::Stack, deploy::current, flags, plan::Plan, project::Project, server::Server};

impl flags::Logs {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let tail = self.tail.to_string();
        let mut args = vec!["logs", "--no-color", "--tail", &tail];
        if self.follow {
            args.push("--follow");
        }
        if !self.server {
            return plan.run(Stack::dev(project).cmd(plan.sh()).args(&args));
        }
        let mut problems = Vec::new();
        let mut server = Server::prepare(plan, project, &mut problems)?;
        if !problems.is_empty() && !plan.is_dry_run() {
            bail!("{}", problems.join("\n"));
        }
        server.connect()?;
        let Some(sha) = current(&server)? else { bail!("nothing is deployed on the server yet") };
        server.run(&server.layout.compose(&sha, &args))
    }
}
