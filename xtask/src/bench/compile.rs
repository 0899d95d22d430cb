//! `bench compile`: how long a newcomer waits for `cargo xtask` on a cold cache, and how long the
//! warm entry point takes.

use std::time::Instant;

use anyhow::{Context, Result};

use super::{median, Report};
use crate::{
    plan::{Cmd, Plan},
    project::Project,
};

const HELP_RUNS: usize = 5;

pub fn run(plan: &Plan, _project: &Project, report: &mut Report) -> Result<()> {
    let sh = plan.sh();
    // Dropped (removed) when this returns, also on failure.
    let target = sh.create_temp_dir()?;
    let dir = target.path();
    plan.note(&format!("cold compile of the xtask into a fresh CARGO_TARGET_DIR={}", dir.display()));
    let start = Instant::now();
    plan.run(Cmd::of("cargo build -p xtask").env("CARGO_TARGET_DIR", dir))
        .context("cold-compiling the xtask")?;
    let cold = start.elapsed();
    report.seconds(
        "compile",
        "xtask_cold",
        cold,
        "cargo build -p xtask into an empty CARGO_TARGET_DIR (crates already downloaded), wall clock",
    );

    let mut runs = Vec::new();
    for _ in 0..HELP_RUNS {
        let start = Instant::now();
        plan.read(Cmd::of("cargo xtask --help")).context("running cargo xtask --help")?;
        runs.push(start.elapsed().as_secs_f64());
    }
    if let Some(m) = median(&runs) {
        report.number(
            "compile",
            "xtask_help_warm",
            m,
            "s",
            &format!("median of {HELP_RUNS} runs of `cargo xtask --help` (already built), wall clock"),
        );
    }
    Ok(())
}
