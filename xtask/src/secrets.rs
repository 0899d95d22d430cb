//! NAME
//!     cargo xtask secrets

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Secrets {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask secrets` is not implemented yet")
    }
}
