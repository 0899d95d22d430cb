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

use crate::{
    flags::{self, ImageAction, ImageOpts},
    plan::{Cmd, Plan, Steps},
    project::Project,
    remote::Target,
};

impl flags::Release {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let mut problems = Vec::new();
        Target::from_env(&project.env, &mut problems);
        if !problems.is_empty() && !plan.is_dry_run() {
            bail!("cannot deploy after the build:\n  - {}", problems.join("\n  - "));
        }
        // The two tasks as CI runs them, one after the other: `image push`, then `deploy` of the
        // commit it pushed (HEAD: a dirty tree is refused, or built as HEAD with --allow-dirty).
        let mut steps = Steps::new(plan);
        let push = ImageOpts { allow_dirty: self.allow_dirty };
        flags::Image { action: ImageAction::Push(push) }.run(plan, project)?;
        let sha = plan.read_fact(Cmd::of("git rev-parse HEAD"))?;
        steps.done("image", "");
        flags::Deploy { sha, lock_wait: self.lock_wait, allow_older: false }.run(plan, project)
    }
}
