//! NAME
//!     cargo xtask release

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Release {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask release` is not implemented yet")
    }
}
