//! NAME
//!     cargo xtask bench

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Bench {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask bench` is not implemented yet")
    }
}
