//! NAME
//!     cargo xtask logs

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Logs {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask logs` is not implemented yet")
    }
}
