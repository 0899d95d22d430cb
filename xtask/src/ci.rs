//! NAME
//!     cargo xtask ci

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Ci {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask ci` is not implemented yet")
    }
}
