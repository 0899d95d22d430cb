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
    flags::{self, ImageAction, ImageOpts},
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
        let sh = plan.sh();
        let sha = if plan.is_dry_run() {
            // Reading HEAD changes nothing; the plan needs the real sha to be worth reading.
            cmd!(sh, "git rev-parse HEAD").quiet().read()?
        } else {
            plan.read(cmd!(sh, "git rev-parse HEAD"))?
        };
        let sha = Sha::parse(&sha)?;
        flags::Image { action: ImageAction::Push(ImageOpts { allow_dirty: self.allow_dirty }) }
            .run(plan, project)?;
        deploy(plan, project, sha.as_str(), self.lock_wait)
    }
}
