//! NAME
//!     cargo xtask status — what the server runs.
//!
//! SYNOPSIS
//!     cargo xtask status [--history N]
//!
//! DESCRIPTION
//!     The current release's sha, its image digest, since when it runs, the health of each
//!     container, the last N lines of `deploys.log`, who holds the deploy lock, if anyone, and a
//!     switch that never finished (killed, or cut off by a reboot), if there is one, and the
//!     database snapshots kept on the server.
//!     Reads only; takes no lock.

use anyhow::Result;

use crate::{
    flags,
    plan::Plan,
    project::Project,
    remote::{history, Server},
};

impl flags::Status {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let server = Server::open(plan, project, Vec::new())?;
        let now = server.current()?;
        let lines = server.history()?;
        let holder = server.lock_holder()?;
        // With the lock free no switch runs, so an intent line left is one that never finished.
        let unfinished = match &holder {
            None => server.unfinished_switch(&lines)?,
            Some(_) => None,
        };
        let snapshots = server.snapshots()?;
        let (digest, health) = match &now {
            Some(sha) => {
                let layout = &server.layout;
                let digest = server.read(layout.digest(sha))?;
                let health = server.read(layout.compose(
                    sha,
                    &["ps", "--all", "--format", "{{.Service}}\t{{.State}}\t{{.Health}}\t{{.Image}}"],
                ))?;
                (digest, health)
            }
            None => ("-".into(), String::new()),
        };
        if plan.is_dry_run() {
            return Ok(());
        }
        let Some(sha) = now else {
            println!("current:  nothing deployed yet on {}@{}", server.target.user, server.target.host);
            print_history(&lines, self.history);
            return Ok(());
        };
        println!("current:  {sha}");
        println!("image:    {digest}");
        println!("since:    {}", history::since(&lines, &sha).unwrap_or("unknown"));
        println!("health:");
        for row in health.lines().filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = row.split('\t').collect();
            let (service, state, health) = (cols[0], cols.get(1).unwrap_or(&""), cols.get(2).unwrap_or(&""));
            let health = if health.is_empty() { "no healthcheck" } else { health };
            println!("  {service:<10} {state:<10} {health}");
        }
        println!("lock:     {}", holder.as_deref().map(str::trim).unwrap_or("free"));
        match snapshots.last() {
            Some(newest) => println!(
                "snapshots: {} under {}/snapshots, newest {newest} (`cargo xtask restore <name> --yes`)",
                snapshots.len(),
                server.layout.root
            ),
            None => {
                println!("snapshots: none yet (a deploy takes one before migrating; `cargo xtask backup`)")
            }
        }
        if let Some(unfinished) = &unfinished {
            println!(
                "UNFINISHED: {} did not finish (its script was killed or the server rebooted), so what runs may not \
                 be what `current` says; the next deploy or rollback sets `current` back to the release before it and \
                 hands the bot over from there",
                unfinished.describe()
            );
        }
        print_history(&lines, self.history);
        Ok(())
    }
}

fn print_history(lines: &[history::Line], n: usize) {
    println!("history (newest last):");
    if lines.is_empty() {
        println!("  (empty)");
    }
    for line in &lines[lines.len().saturating_sub(n)..] {
        println!("  {line}");
    }
}
