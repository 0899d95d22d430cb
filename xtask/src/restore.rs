//! NAME
//!     cargo xtask restore — replace the server's database with a snapshot.
//!
//! SYNOPSIS
//!     cargo xtask restore <snapshot> --yes [--lock-wait SECS] [--dry-run]
//!
//! DESCRIPTION
//!     Under the deploy lock: the running bot containers are stopped, the database's public schema
//!     is dropped and the snapshot (`pg_dump -Fc`, from `backup` or the one a deploy takes before
//!     migrating) loaded in its place in one transaction, and the bots that ran are started again.
//!     Everything written since the snapshot is lost, so it refuses without `--yes`; `--dry-run`
//!     prints every step. After a failed deploy whose migrations the previous release cannot run
//!     on, restore the snapshot the deploy named, then `cargo xtask rollback --sha <previous>`.

use anyhow::{bail, Context, Result};

use crate::{
    flags,
    plan::{Cmd, Plan},
    project::Project,
    remote::{running_bots, snapshot, who, Server},
};

impl flags::Restore {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let mut problems = Vec::new();
        let name = snapshot::parse_name(&self.snapshot).map_err(|e| problems.push(format!("{e:#}"))).ok();
        if !self.yes {
            problems.push(
                "restore replaces the server's whole database with the snapshot, and everything written since is \
                 lost: pass --yes to do it (--dry-run shows every step)"
                    .into(),
            );
        }
        let server = Server::open(plan, project, problems)?;
        let name = name.unwrap_or_else(|| self.snapshot.clone());
        let _lock = server.lock(&format!("{} restore {name}", who(&project.env)), self.lock_wait)?;
        let Some(current) = server.current()? else {
            bail!("nothing is deployed on the server yet, so it has no database to restore into")
        };
        let kept = server.snapshots()?;
        if !plan.is_dry_run() && !kept.contains(&name) {
            let kept = if kept.is_empty() { "none".to_string() } else { kept.join(", ") };
            bail!("the server has no snapshot {name} (it keeps: {kept}); `cargo xtask backup` takes one");
        }
        let bots = server.read(running_bots(&server.layout))?;
        let bots: Vec<&str> =
            if plan.is_dry_run() { vec!["<running bots>"] } else { bots.split_whitespace().collect() };
        if let Some(bad) = bots.iter().find(|id| !plan.is_dry_run() && !is_container_id(id)) {
            bail!("the server listed {}, not a container id", crate::remote::escaped(bad));
        }
        if !bots.is_empty() {
            plan.note("stop the bot while its database is replaced");
            server.run(Cmd::of("docker stop").args(&bots))?;
        }
        plan.note(&format!("load {name} in place of the database, in one transaction"));
        let restored = server.restore(&current, &name);
        if !bots.is_empty() {
            plan.note("start the bot again");
            server.run(Cmd::of("docker start").args(&bots))?;
        }
        restored.context("restoring failed (the message is above); the database is as it was before")?;
        if !plan.is_dry_run() {
            println!("restored {name} into the server's database");
        }
        Ok(())
    }
}

/// A container id as `docker ps --quiet` prints it: 12 to 64 lowercase hex digits.
fn is_container_id(id: &str) -> bool {
    (12..=64).contains(&id.len()) && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::tests::fake_project;
    use xshell::Shell;

    #[test]
    fn without_yes_or_with_a_bad_name_nothing_runs() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, false);
        let project = fake_project(&[]);
        let restore = flags::Restore { snapshot: "x;reboot".into(), yes: false, lock_wait: None };
        let err = format!("{:#}", restore.run(&plan, &project).unwrap_err());
        assert!(err.contains("\"x;reboot\" is not a snapshot name"), "{err}");
        assert!(err.contains("pass --yes to do it"), "{err}");
        assert!(plan.steps().iter().all(|s| !s.starts_with("ssh")), "{:?}", plan.steps());
    }

    #[test]
    fn the_dry_run_stops_the_bot_restores_and_starts_it_again() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let project = fake_project(&[]);
        let name = "20261127T214144Z-abc1234.dump";
        flags::Restore { snapshot: name.into(), yes: true, lock_wait: None }.run(&plan, &project).unwrap();
        let text = plan.steps().join("\n");
        let order = ["flock", "docker stop", "drop schema public cascade", name, "docker start"];
        let mut at = 0;
        for needle in order {
            let found = text[at..].find(needle);
            assert!(found.is_some(), "{needle:?} missing after {at} in:\n{text}");
            at += found.unwrap();
        }
        assert!(text.contains(&format!("< snapshots/{name}")) && text.contains("<running bots>"), "{text}");
    }
}
