//! NAME
//!     cargo xtask migrate — apply the bot's database migrations.
//!
//! SYNOPSIS
//!     cargo xtask migrate [--server]
//!
//! DESCRIPTION
//!     Runs `lattice-bot migrate` in a one-off container: against the dev stack by default, or with
//!     `--server` against the server's database with the current release's image, under the deploy
//!     lock. Deploys migrate on their own; this is for a by-hand run.

use anyhow::{bail, Context, Result};

use crate::{
    compose::Stack,
    deploy::{check_server_env, current},
    flags,
    plan::Plan,
    project::Project,
    server::{who, Server},
};

impl flags::Migrate {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        if !self.server {
            return plan
                .run(Stack::dev(project).cmd(plan.sh()).args(["run", "--rm", "--no-TTY", "bot", "migrate"]));
        }
        let mut problems = Vec::new();
        let mut server = Server::prepare(plan, project, &mut problems)?;
        if !problems.is_empty() && !plan.is_dry_run() {
            bail!("nothing on the server was touched:\n  - {}", problems.join("\n  - "));
        }
        server.connect()?;
        check_server_env(&server)?;
        let _lock = server.lock(&format!("{} migrate", who(&project.env)), None)?;
        let Some(sha) = current(&server)? else {
            bail!("nothing is deployed on the server yet: `cargo xtask deploy --sha <sha>` migrates as it deploys")
        };
        server
            .run(&server.layout.compose(&sha, &["run", "--rm", "--no-TTY", "bot", "migrate"]))
            .context("migrations failed on the server (their output is above)")
    }
}
