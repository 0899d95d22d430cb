//! NAME
//!     cargo xtask logs — the bot's logs.
//!
//! SYNOPSIS
//!     cargo xtask logs [--server] [--follow] [--tail N]
//!
//! DESCRIPTION
//!     The dev stack's logs, or with `--server` the current release's containers on the server.

use anyhow::{bail, Result};

use crate::{compose::Stack, flags, plan::Plan, project::Project, remote::Server};

impl flags::Logs {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let tail = self.tail.to_string();
        let mut args = vec!["logs", "--no-color", "--tail", &tail];
        if self.follow {
            args.push("--follow");
        }
        if !self.server {
            return plan.run(Stack::dev(project).cmd().args(&args));
        }
        if project.settings.swarm() {
            return crate::swarm::logs(plan, project, self.tail, self.follow);
        }
        let server = Server::open(plan, project, Vec::new())?;
        let Some(sha) = server.current()? else { bail!("nothing is deployed on the server yet") };
        server.run(server.layout.compose(&sha, &args))
    }
}
