//! NAME
//!     cargo xtask bench — measure and print the figures Lattice is judged by
//!
//! SYNOPSIS
//!     cargo xtask bench [--only GROUP]... [--out FILE] [--rounds N]
//!
//! DESCRIPTION
//!     Runs each group of measurements on this machine (Docker and a local Postgres container, no
//!     ssh) and prints one table: figure, value, unit and how it was measured. With `--out FILE` the
//!     same figures are written as TOML (`[group.figure] value, unit, how`).
//!
//!     compile   `cargo build -p xtask` into a fresh CARGO_TARGET_DIR; warm `cargo xtask --help`
//!     image     `cargo xtask image build` of a clone of HEAD: total size, the bot-binary layer
//!               (`docker history`), then the rebuild after a one-line commit to bot/src and
//!               whether the dependency layer was reused
//!     dev       in a clone of HEAD: the first `cargo xtask dev` (cold), then under `dev --watch`
//!               a one-line change to the reply text, timed until `cargo xtask chat` answers
//!               with it (rebuild and restart shown apart)
//!     memory    the release bot against the Discord stand-in and a Postgres container
//!               (POSTGRES_IMAGE), placeholder LLM: RSS idle and under a steady message stream;
//!               then a fresh bot with default limits while one user floods 500 messages
//!     handover  leader lock handover (SIGTERM or SIGKILL the leader, the standby resumes the session)
//!               vs. the naive restarts: gaps, lost, answered twice, most live gateway sessions
//!               next to the naive flows (kill + start, stop + start): gap and events lost
//!     deploy    on a local server (sshd + registry on loopback, as the deploy end-to-end test
//!               builds it): `cargo xtask deploy` and `rollback` beside the original flow (pull,
//!               `compose run --rm` migrate, `up -d`, health polled every 5 s), same images A and
//!               B, interleaved `--rounds`, a 20 msg/s stream through the Discord stand-in:
//!               medians and ratios of start->serving, start->exit, no serving bot, gateway gap,
//!               lost and twice-answered messages, server CPU-seconds and bytes pulled; the runs
//!               as JSON in target/bench-deploy.json (see bench/deploy.rs for how each is measured)
//!
//!     Timings live here and never in tests. Every group removes what it started (containers,
//!     processes, temporary directories) also when it fails; a failed group is reported in the
//!     table and makes the command exit non-zero after the others ran.

mod bot;
mod compile;
mod deploy;
mod dev;
mod http;
mod image;

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{
    flags,
    plan::{Cmd, Plan},
    project::Project,
};

/// The groups, in the order they run.
pub const GROUPS: &[&str] = &["compile", "image", "dev", "memory", "handover", "deploy"];

impl flags::Bench {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let groups: Vec<&str> = GROUPS
            .iter()
            .copied()
            .filter(|g| self.only.is_empty() || self.only.iter().any(|o| o == g))
            .collect();
        let mut report = Report::default();
        let mut failed = Vec::new();
        for group in groups {
            plan.note(&format!("bench {group}"));
            let result = match group {
                "compile" => compile::run(plan, project, &mut report),
                "image" => image::run(plan, project, &mut report),
                "dev" => dev::run(plan, project, &mut report),
                "memory" => bot::memory(plan, project, &mut report),
                "handover" => bot::handover(plan, project, &mut report),
                "deploy" => deploy::run(plan, project, &mut report, self.rounds),
                other => bail!("unknown bench group {other}"),
            };
            if let Err(err) = result {
                eprintln!("bench {group} failed: {err:#}");
                report.text(group, "FAILED", &format!("{err:#}"), "see the output above");
                failed.push(group);
            }
        }
        if plan.is_dry_run() {
            return Ok(());
        }
        println!("{}", report.table());
        if let Some(out) = &self.out {
            std::fs::write(out, report.toml()?).with_context(|| format!("writing {}", out.display()))?;
            println!("figures written to {}", out.display());
        }
        if !failed.is_empty() {
            bail!("bench group(s) failed: {}", failed.join(", "));
        }
        Ok(())
    }
}

/// One measured value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone)]
pub struct Figure {
    pub group: &'static str,
    pub name: String,
    pub value: Value,
    pub unit: &'static str,
    pub how: String,
}

/// Every figure of a run, in the order measured.
#[derive(Debug, Default)]
pub struct Report {
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn number(&mut self, group: &'static str, name: &str, value: f64, unit: &'static str, how: &str) {
        self.figures.push(Figure {
            group,
            name: name.into(),
            value: Value::Number(value),
            unit,
            how: how.into(),
        });
    }

    pub fn seconds(&mut self, group: &'static str, name: &str, value: Duration, how: &str) {
        self.number(group, name, value.as_secs_f64(), "s", how);
    }

    pub fn text(&mut self, group: &'static str, name: &str, value: &str, how: &str) {
        self.figures.push(Figure {
            group,
            name: name.into(),
            value: Value::Text(value.into()),
            unit: "",
            how: how.into(),
        });
    }

    /// The figures as an aligned text table.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 4]> = self
            .figures
            .iter()
            .map(|f| [format!("{}.{}", f.group, f.name), render(&f.value), f.unit.to_string(), f.how.clone()])
            .collect();
        let header = ["figure".to_string(), "value".into(), "unit".into(), "how it was measured".into()];
        let mut widths = [0usize; 3];
        for row in rows.iter().chain(std::iter::once(&header)) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |row: &[String; 4]| {
            let _ = writeln!(
                out,
                "{:<w0$}  {:>w1$}  {:<w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            );
        };
        line(&header);
        let mut group = "";
        for (figure, row) in self.figures.iter().zip(&rows) {
            if figure.group != group {
                group = figure.group;
                line(&[format!("-- {group}"), String::new(), String::new(), String::new()]);
            }
            line(row);
        }
        out.trim_end().to_string()
    }

    /// `[group.figure]` tables with `value`, `unit` and `how`.
    pub fn toml(&self) -> Result<String> {
        #[derive(Serialize)]
        struct Entry<'r> {
            value: &'r Value,
            unit: &'r str,
            how: &'r str,
        }
        let mut groups: BTreeMap<&str, BTreeMap<&str, Entry>> = BTreeMap::new();
        for f in &self.figures {
            let entry = Entry { value: &f.value, unit: f.unit, how: &f.how };
            groups.entry(f.group).or_default().insert(&f.name, entry);
        }
        Ok(["# cargo xtask bench\n\n", &toml::to_string(&groups)?].concat())
    }
}

fn render(value: &Value) -> String {
    match value {
        Value::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{n:.0}"),
        Value::Number(n) if n.abs() >= 100.0 => format!("{n:.1}"),
        Value::Number(n) => format!("{n:.3}"),
        Value::Text(t) => t.clone(),
    }
}

/// The median (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] })
}

/// A temporary `git clone` of the project's HEAD: the committed tree, whatever the work tree
/// holds. The directory goes with the returned guard.
pub fn clone_head(plan: &Plan, project: &Project) -> Result<(xshell::TempDir, std::path::PathBuf)> {
    let sh = plan.sh();
    let temp = sh.create_temp_dir()?;
    let repo = temp.path().join("repo");
    let root = &project.root;
    plan.run(Cmd::of("git clone --quiet").arg(root).arg(&repo))
        .context("cloning HEAD into a temporary directory")?;
    Ok((temp, repo))
}

/// Bytes as MiB, for the table.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn the_table_and_the_toml_carry_value_unit_and_how() {
        let mut report = Report::default();
        report.number("memory", "rss_idle", 12.25, "MiB", "VmRSS");
        report.number("memory", "replies", 300.0, "", "count");
        report.text("deploy", "deploy_and_rollback", "not measured yet", "later");
        let table = report.table();
        assert!(table.contains("memory.rss_idle"), "{table}");
        assert!(table.contains("12.250  MiB"), "{table}");
        assert!(table.contains("-- deploy"), "{table}");
        report.text("x", "quoted", "a \"b\"\\ c\nd", "");
        let toml: toml::Table = report.toml().unwrap().parse().unwrap();
        assert_eq!(toml["x"]["quoted"]["value"].as_str(), Some("a \"b\"\\ c\nd"));
        assert_eq!(toml["memory"]["rss_idle"]["value"].as_float(), Some(12.25));
        assert_eq!(toml["memory"]["rss_idle"]["unit"].as_str(), Some("MiB"));
        assert_eq!(toml["deploy"]["deploy_and_rollback"]["value"].as_str(), Some("not measured yet"));
    }
}
