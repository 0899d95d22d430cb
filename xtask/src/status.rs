//! NAME
//!     cargo xtask status

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Status {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask status` is not implemented yet")
    }
}
