//! NAME
//!     cargo xtask dev

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Dev {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask dev` is not implemented yet")
    }
}
