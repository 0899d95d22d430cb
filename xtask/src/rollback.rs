//! NAME
//!     cargo xtask rollback — switch the server back to an earlier release.
//!
//! SYNOPSIS
//!     cargo xtask rollback [--sha <sha>] [--force] [--lock-wait SECS] [--verbose] [--dry-run]
//!
//! DESCRIPTION
//!     The target is `--sha` (a release still on the server; a unique prefix is enough) or, by
//!     default, the newest release in `deploys.log` that ran healthily and is not the current one.
//!     A rollback is the switch alone: nothing is built or migrated, and the image is pulled (with
//!     a registry login) only when the server no longer has it. The target runs with its own
//!     compose files. One line per step with its seconds (connect, lock, check, switch, healthy),
//!     the commands under `--verbose`. Schema-aware: when the database has migrations newer than the
//!     target image knows (label `lattice.schema.head`), the rollback is refused unless each of
//!     them is declared backward-compatible by the current image (label
//!     `lattice.schema.backward-compatible`) or `--force` is given.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{
    flags, notify,
    plan::{Plan, Steps},
    project::Project,
    remote::{
        history,
        schema::{blocking_migrations, versions, LABEL_COMPATIBLE, LABEL_HEAD},
        who, Action, Server, Sha, Switch,
    },
};

impl flags::Rollback {
    /// The rollback, and its notification (`LATTICE_NOTIFY_WEBHOOK`) whatever the outcome.
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let started = Instant::now();
        let mut target = None;
        let result = self.roll_back(plan, project, started, &mut target);
        let sha = target.as_deref().or(self.sha.as_deref()).unwrap_or("previous");
        notify::outcome(plan, &project.env, Action::Rollback, sha, started, &result);
        result
    }

    /// The steps; `chosen` is set to the target once it is known.
    fn roll_back(
        &self,
        plan: &Plan,
        project: &Project,
        started: Instant,
        chosen: &mut Option<String>,
    ) -> Result<()> {
        if project.settings.swarm() {
            return crate::swarm::rollback(
                plan,
                project,
                self.sha.as_deref(),
                self.lock_wait,
                self.force,
                started,
                chosen,
            );
        }
        let mut steps = Steps::since(plan, started);
        let mut problems = Vec::new();
        if let Some(sha) = &self.sha {
            if let Err(e) = Sha::parse(sha) {
                problems.push(format!("{e:#}"));
            }
        }
        let server = Server::open(plan, project, problems)?;
        steps.done("connect", "");
        let holder = format!("{} rollback {}", who(&project.env), self.sha.as_deref().unwrap_or("previous"));
        let mut lock = server.lock(&holder, self.lock_wait)?;
        server.settle_unfinished()?;
        let state = server.state()?;
        steps.done("lock", "");
        let now = state.current.as_deref();
        let target = if plan.is_dry_run() {
            self.sha.clone().unwrap_or_else(|| "<previous good release>".into())
        } else {
            let releases: Vec<&str> = state.releases.iter().map(String::as_str).collect();
            pick_target(self.sha.as_deref(), now, &state.history, &releases)?
        };
        *chosen = Some(target.clone());
        if now == Some(target.as_str()) {
            println!("{target} is already the current release; nothing to do");
            return Ok(());
        }
        let layout = server.layout.clone();
        plan.note(&format!("roll back to {target}: its own compose files; pull only if its image is gone"));
        let pulled = server
            .pull(&project.env, &target)
            .with_context(|| format!("the image of {target} is not on the server and could not be pulled"))?;
        if let Some(now) = now {
            schema_check(&server, &target, now, self.force)?;
        }
        steps.done("check", &pulled);
        Switch::new(&project.env, &layout, &target, now, Action::Rollback, steps.started())
            .run(&server, &mut lock, &mut steps)
            .with_context(|| format!("rollback to {target}"))?;
        if !plan.is_dry_run() {
            println!(
                "rolled back to {target}: serving after {:.1} s, done in {:.1} s",
                steps.at_last(),
                steps.elapsed()
            );
        }
        Ok(())
    }
}

/// The release to go back to: `--sha` (a unique prefix of a release on the server), or the newest
/// good one in the history other than `current`.
pub(crate) fn pick_target(
    sha: Option<&str>,
    current: Option<&str>,
    lines: &[history::Line],
    releases: &[&str],
) -> Result<String> {
    let known = || {
        if releases.is_empty() {
            "none".to_string()
        } else {
            releases.join(", ")
        }
    };
    match sha {
        Some(sha) => {
            let matches: Vec<&&str> = releases.iter().filter(|r| r.starts_with(sha)).collect();
            match matches.as_slice() {
                [one] => Ok(one.to_string()),
                [] => bail!(
                    "{sha} is not a release on the server (it keeps: {}). Deploy it instead: `cargo xtask deploy --sha {sha}`",
                    known()
                ),
                _ => bail!("{sha} matches several releases on the server; give more digits"),
            }
        }
        None => {
            let Some(target) = history::previous_good(lines, current.unwrap_or("")) else {
                bail!(
                    "the history has no earlier good release to go back to; pick one with --sha (the server keeps: {})",
                    known()
                );
            };
            if !releases.contains(&target) {
                bail!("the previous good release {target} was pruned from the server; pick one with --sha (it keeps: {})", known());
            }
            Ok(target.to_string())
        }
    }
}

/// Refuses a rollback whose image is older than the database schema, unless every newer applied
/// migration is declared backward-compatible by the current image, or `force`.
pub(crate) fn schema_check(server: &Server, target: &str, current: &str, force: bool) -> Result<()> {
    let schema = server.schema(target, LABEL_HEAD, current, LABEL_COMPATIBLE)?;
    let (head, compatible) = (schema.head, schema.compatible);
    let applied = match schema.applied {
        Some(applied) => versions(&applied),
        None if server.plan().is_dry_run() => Vec::new(),
        None if force => {
            eprintln!("warning: cannot read the database's applied migrations; rolling back without a schema check (--force)");
            return Ok(());
        }
        None => bail!(
            "cannot read the database's applied migrations (psql's message is above), so the rollback cannot be \
             checked against the schema; is Postgres running (`cargo xtask status`)? --force skips the check"
        ),
    };
    if server.plan().is_dry_run() {
        return Ok(());
    }
    let Some(head) = versions(&head).first().copied() else {
        if force {
            eprintln!("warning: {target}'s image has no {LABEL_HEAD} label; rolling back without a schema check (--force)");
            return Ok(());
        }
        bail!("{target}'s image has no {LABEL_HEAD} label, so its schema cannot be checked; pass --force to roll back anyway");
    };
    let blocking: Vec<String> =
        blocking_migrations(head, &versions(&compatible), &applied).iter().map(|v| v.to_string()).collect();
    if blocking.is_empty() {
        let newer: Vec<String> = applied.iter().filter(|v| **v > head).map(|v| v.to_string()).collect();
        if !newer.is_empty() {
            eprintln!(
                "schema: the database has migrations {} newer than {target} knows (up to {head}); each is declared \
                 backward-compatible, so the rollback goes ahead",
                newer.join(", ")
            );
        }
        return Ok(());
    }
    if force {
        eprintln!(
            "WARNING (--force): rolling back to {target} (schema {head}) although the database has migrations {} it does not know \
             and that are not declared backward-compatible (--force)",
            blocking.join(", ")
        );
        return Ok(());
    }
    bail!(
        "refusing to roll back to {target}: its image knows the schema up to migration {head}, but the database has \
         migrations {} applied that are not declared backward-compatible (a `-- lattice: backward-compatible` line in \
         the migration file). The old code may misbehave on the new schema. Deploy a fix forward, or pass --force if \
         you know the old code copes.",
        blocking.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_target_is_the_previous_good_release_and_an_unknown_sha_is_refused() {
        let log =
            "t deploy aaa1111 - ok 1s x\nt deploy bbb2222 - ok 1s x\nt deploy ccc3333 - unhealthy 1s x\n";
        let lines = history::parse(log);
        let releases = ["aaa1111", "bbb2222", "ccc3333"];
        assert_eq!(pick_target(None, Some("bbb2222"), &lines, &releases).unwrap(), "aaa1111");
        assert_eq!(pick_target(Some("bbb"), Some("aaa1111"), &lines, &releases).unwrap(), "bbb2222");
        let err = pick_target(Some("ddd4444"), Some("aaa1111"), &lines, &releases).unwrap_err().to_string();
        assert!(err.contains("not a release on the server") && err.contains("aaa1111, bbb2222"), "{err}");
        let err =
            pick_target(None, Some("aaa1111"), &history::parse("t deploy aaa1111 - ok 1s x\n"), &releases)
                .unwrap_err()
                .to_string();
        assert!(err.contains("--sha"), "{err}");
    }
}
