//! NAME
//!     cargo xtask backup — snapshot the server's database now.
//!
//! SYNOPSIS
//!     cargo xtask backup [--lock-wait SECS] [--dry-run]
//!
//! DESCRIPTION
//!     Under the deploy lock, `pg_dump -Fc` inside the Postgres container, written on the server to
//!     `<deploy_path>/snapshots/<UTC time>-<current sha>.dump` (0600 in a 0700 directory, never in
//!     an image or the repository); only the newest `snapshots_kept` are kept. A deploy takes one
//!     by itself before applying migrations. `cargo xtask restore <snapshot> --yes` loads one back.

use anyhow::{bail, Result};

use crate::{
    flags,
    plan::Plan,
    project::Project,
    remote::{who, Server},
};

impl flags::Backup {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let server = Server::open(plan, project, Vec::new())?;
        let _lock = server.lock(&format!("{} backup", who(&project.env)), self.lock_wait)?;
        let Some(current) = server.current()? else {
            bail!("nothing is deployed on the server yet, so it has no database to back up")
        };
        let name = server.snapshot(&current)?;
        if !plan.is_dry_run() {
            println!(
                "snapshot {root}/snapshots/{name} on the server (restore it with `cargo xtask restore {name} --yes`)",
                root = server.layout.root
            );
        }
        Ok(())
    }
}
