//! NAME
//!     cargo xtask doctor

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Doctor {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask doctor` is not implemented yet")
    }
}
