//! NAME
//!     cargo xtask chat

use anyhow::{bail, Result};

use crate::{flags, plan::Plan, project::Project};

impl flags::Chat {
    pub fn run(self, _plan: &Plan, _project: &Project) -> Result<()> {
        bail!("`cargo xtask chat` is not implemented yet")
    }
}
