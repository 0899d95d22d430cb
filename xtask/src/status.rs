//! NAME
//!     cargo xtask status — what the server runs.
//!
//! SYNOPSIS
//!     cargo xtask status [--history N] [--json]
//!
//! DESCRIPTION
//!     The current release's sha, its image digest, since when it runs, the health of each
//!     container, the last N lines of `deploys.log`, who holds the deploy lock, if anyone, a
//!     switch that never finished (killed, or cut off by a reboot), if there is one, and the
//!     database snapshots kept on the server.
//!     Reads only; takes no lock. `--json` prints the same facts as one JSON object for scripts
//!     (`current`, `since`, `lock` and `unfinished` are null when there is none).

use anyhow::Result;
use serde::Serialize;

use crate::{
    flags,
    plan::Plan,
    project::Project,
    remote::{history, Server},
};

/// Everything `status` says, read once and printed either way.
#[derive(Debug, Serialize)]
struct Report {
    /// `user@host` of the server.
    server: String,
    current: Option<String>,
    image: Option<String>,
    since: Option<String>,
    containers: Vec<Container>,
    /// Who holds the deploy lock and since when; `None` when it is free.
    lock: Option<String>,
    /// The newest entries of `deploys.log`, oldest first.
    history: Vec<Entry>,
    /// A switch that never finished: what, to which sha, started when and by whom.
    unfinished: Option<String>,
    /// Where the database snapshots are kept on the server, and their names, oldest first.
    snapshots_dir: String,
    snapshots: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Container {
    service: String,
    state: String,
    /// Docker's health status; `None` when the service has no health check.
    health: Option<String>,
}

#[derive(Debug, Serialize)]
struct Entry {
    time: String,
    action: String,
    sha: String,
    digest: String,
    result: String,
    seconds: Option<u64>,
    who: String,
}

impl flags::Status {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        if project.settings.swarm() {
            return crate::swarm::status(plan, project, self.history, self.json);
        }
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
                let health = server.read(
                    layout
                        .compose(sha, &["ps", "--all", "--format", "{{.Service}}\t{{.State}}\t{{.Health}}"]),
                )?;
                (Some(digest), health)
            }
            None => (None, String::new()),
        };
        if plan.is_dry_run() {
            return Ok(());
        }
        let shown = |s: &str| crate::remote::printable(s);
        let report = Report {
            server: format!("{}@{}", server.target.user, server.target.host),
            since: now.as_deref().and_then(|sha| history::since(&lines, sha)).map(shown),
            current: now,
            image: digest.map(|d| shown(d.trim())),
            containers: containers(&health),
            lock: holder.map(|h| h.trim().to_string()),
            history: lines[lines.len().saturating_sub(self.history)..]
                .iter()
                .map(|l| Entry {
                    time: shown(&l.time),
                    action: shown(&l.action),
                    sha: l.sha.clone(),
                    digest: shown(&l.digest),
                    result: shown(&l.result),
                    seconds: l.seconds.trim_end_matches('s').parse().ok(),
                    who: shown(&l.who),
                })
                .collect(),
            unfinished: unfinished.map(|u| u.describe()),
            snapshots_dir: format!("{}/snapshots", server.layout.root),
            snapshots,
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_human(&report, &lines[lines.len().saturating_sub(self.history)..]);
        }
        Ok(())
    }
}

/// The rows of `compose ps --format '{{.Service}}\t{{.State}}\t{{.Health}}'`, escaped.
fn containers(ps: &str) -> Vec<Container> {
    ps.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|row| {
            let mut cols = row.split('\t').map(|c| crate::remote::printable(c.trim()));
            let service = cols.next().unwrap_or_default();
            let state = cols.next().unwrap_or_default();
            let health = cols.next().filter(|h| !h.is_empty());
            Container { service, state, health }
        })
        .collect()
}

fn print_human(report: &Report, lines: &[history::Line]) {
    match &report.current {
        None => println!("current:  nothing deployed yet on {}", report.server),
        Some(sha) => {
            println!("current:  {sha}");
            println!("image:    {}", report.image.as_deref().unwrap_or("-"));
            println!("since:    {}", report.since.as_deref().unwrap_or("unknown"));
            println!("health:");
            for c in &report.containers {
                let health = c.health.as_deref().unwrap_or("no healthcheck");
                println!("  {:<10} {:<10} {health}", c.service, c.state);
            }
        }
    }
    println!("lock:     {}", report.lock.as_deref().unwrap_or("free"));
    match report.snapshots.last() {
        Some(newest) => println!(
            "snapshots: {} under {}, newest {newest} (`cargo xtask restore <name> --yes`)",
            report.snapshots.len(),
            report.snapshots_dir
        ),
        None => println!("snapshots: none yet (a deploy takes one before migrating; `cargo xtask backup`)"),
    }
    if let Some(unfinished) = &report.unfinished {
        println!(
            "UNFINISHED: {unfinished} did not finish (its script was killed or the server rebooted), so what runs \
             may not be what `current` says; the next deploy or rollback sets `current` back to the release before \
             it and hands the bot over from there"
        );
    }
    println!("history (newest last):");
    if lines.is_empty() {
        println!("  (empty)");
    }
    for line in lines {
        println!("  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_ps_rows_become_containers_with_health_only_when_there_is_one() {
        let rows = containers("postgres\trunning\thealthy\nbot\trunning\t\n\n");
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].service.as_str(), rows[0].health.as_deref()), ("postgres", Some("healthy")));
        assert_eq!((rows[1].state.as_str(), rows[1].health.as_deref()), ("running", None));
    }
}
