//! NAME
//!     cargo xtask image

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Image {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask image` is not implemented yet")
    }
}
