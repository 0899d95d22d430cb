//! NAME
//!     cargo xtask release — build, push and deploy the commit checked out, in one command.
//!
//! SYNOPSIS
//!     cargo xtask release [--allow-dirty] [--lock-wait SECS] [--dry-run]
//!
//! DESCRIPTION
//!     `cargo xtask image push` then `cargo xtask deploy --sha <HEAD>`. CI runs the two as separate
//!     jobs; this is the same thing from a workstation. The SSH settings are checked before the
//!     build, so a missing secret fails in a second, not after the build.

use anyhow::{bail, Result};
use xshell::cmd;

use crate::{
    deploy::{deploy, Sha},
    flags,
    plan::Plan,
    project::Project,
    server::Target,
};

impl flags::Release {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let mut problems = Vec::new();
        Target::from_env(&project.env, &mut problems);
        if !problems.is_empty() && !plan.is_dry_run() {
            bail!("cannot deploy after the build:\n  - {}", problems.join("\n  - "));
        }
        let image = crate::image::push(plan, project, self.allow_dirty)?;
        let sha = if plan.is_dry_run() {
            // The dry run's plan has placeholders for what it did not run; reading HEAD changes
            // nothing, and the deploy plan is only worth reading with the real sha.
            let sh = plan.sh();
            cmd!(sh, "git rev-parse HEAD").quiet().read()?
        } else {
            image.sha
        };
        let sha = Sha::parse(&sha)?;
        deploy(plan, project, sha.as_str(), self.lock_wait)
    }
}
