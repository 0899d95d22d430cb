//! NAME
//!     cargo xtask migrate

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Migrate {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask migrate` is not implemented yet")
    }
}
