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
    flags,
    plan::Plan,
    project::Project,
    remote::{who, Server},
};

impl flags::Migrate {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        if !self.server {
            return plan.run(Stack::dev(project).cmd().args(["run", "--rm", "--no-TTY", "bot", "migrate"]));
        }
        if project.settings.swarm() {
            return crate::swarm::migrate(plan, project);
        }
        let server = Server::open(plan, project, Vec::new())?;
        server.require_app_env()?;
        let _lock = server.lock(&format!("{} migrate", who(&project.env)), None)?;
        let Some(sha) = server.current()? else {
            bail!("nothing is deployed on the server yet: `cargo xtask deploy --sha <sha>` migrates as it deploys")
        };
        server
            .run(server.layout.compose(&sha, &["run", "--rm", "--no-TTY", "bot", "migrate"]))
            .context("migrations failed on the server (their output is above)")
    }
}
