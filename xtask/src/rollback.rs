//! NAME
//!     cargo xtask rollback

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Rollback {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask rollback` is not implemented yet")
    }
}
