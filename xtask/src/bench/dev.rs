//! `bench dev`: the developer's loop. In a temporary `git clone` of HEAD, with its own compose
//! project and ports: the first `cargo xtask dev` (cold: crates, a debug build of everything, the
//! stack), then under `cargo xtask dev --watch` a one-line change to the placeholder reply, saved
//! [`EDITS`] times, each timed from the save until `echo … | cargo xtask chat` prints the new text.
//! The stack and its volumes are removed at the end, also on failure.

use std::{
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use super::{bot::free_port, clone_head, median, Report};
use crate::{
    plan::{Cmd, Plan},
    project::Project,
};

/// Timed edits: the median is reported.
const EDITS: usize = 3;
/// The file and words the edits rewrite.
const REPLY_FILE: &str = "bot/src/llm.rs";
const REPLY_WORDS: &str = "(placeholder reply;";
/// Bounds that only stop a hung run (a cold build on two busy cores takes many minutes).
const FIRST_START_DEADLINE: Duration = Duration::from_secs(40 * 60);
const EDIT_DEADLINE: Duration = Duration::from_secs(5 * 60);

pub fn run(plan: &Plan, project: &Project, report: &mut Report) -> Result<()> {
    let (temp, repo) = clone_head(plan, project)?;
    let exe = std::env::current_exe().context("finding the running xtask")?;
    // The clone's own steps run in the clone.
    let clone_sh = Shell::new()?;
    clone_sh.change_dir(&repo);
    let clone_plan = Plan::new(&clone_sh, plan.is_dry_run());
    let compose_project = format!("lattice-bench-{}", std::process::id());
    let env = vec![
        ("LATTICE_COMPOSE_PROJECT", compose_project.clone()),
        ("BOT_HTTP_PORT", free_port()?.to_string()),
        ("POSTGRES_PORT", free_port()?.to_string()),
    ];
    if plan.is_dry_run() {
        plan.note(&format!(
            "in {}: cargo xtask dev (timed), then cargo xtask dev --watch and {EDITS} one-line edits of \
             {REPLY_FILE}, each timed until `cargo xtask chat` answers with the new text; then \
             docker compose -p {compose_project}-dev down --volumes",
            repo.display()
        ));
        return Ok(());
    }
    let logs = temp.path().to_path_buf();
    let mut stack = BenchStack { plan: &clone_plan, repo, logs, exe, env, compose_project, watcher: None };

    eprintln!("  dev: first `cargo xtask dev` of the clone (cold: many minutes)");
    let start = Instant::now();
    let up = stack.xtask(&["dev"], FIRST_START_DEADLINE)?;
    report.seconds(
        "dev",
        "first_start",
        start.elapsed(),
        "first `cargo xtask dev` of a fresh clone, empty volumes: crates downloaded, debug build of \
         everything, migrate, up --wait",
    );
    if !up.contains("bot healthy") {
        bail!("cargo xtask dev did not report a healthy bot:\n{up}");
    }

    let watch = stack.watch()?;
    watch.wait_for("watching bot/", 1, EDIT_DEADLINE)?;
    let answer = stack.chat("hello")?;
    if !answer.contains(REPLY_WORDS) {
        bail!("the bot's first answer lacks {REPLY_WORDS:?}:\n{answer}");
    }

    let mut to_answer = Vec::new();
    let mut to_restart = Vec::new();
    let mut rebuild = Vec::new();
    let mut restart = Vec::new();
    let mut words = REPLY_WORDS.to_string();
    for edit in 1..=EDITS {
        let new_words = format!("(edited {edit} reply;");
        stack.edit(&words, &new_words)?;
        let saved = Instant::now();
        let line = watch.wait_for("bot restarted with the new build", edit, EDIT_DEADLINE)?;
        to_restart.push(saved.elapsed().as_secs_f64());
        let answer = stack.chat("hi")?;
        if !answer.contains(&new_words) {
            bail!("after the watcher restarted the bot, its answer lacks {new_words:?}:\n{answer}");
        }
        to_answer.push(saved.elapsed().as_secs_f64());
        let (built, healthy) = restart_figures(&line)
            .with_context(|| format!("reading the rebuild and restart times from {line:?}"))?;
        rebuild.push(built);
        restart.push(healthy);
        eprintln!("  dev: edit {edit}: new answer after {:.1} s ({line})", to_answer[edit - 1]);
        words = new_words;
    }
    let how = |what: &str| format!("median of {EDITS}: {what}");
    let m = |values: &[f64]| median(values).unwrap_or(f64::NAN);
    report.number(
        "dev",
        "edit_to_new_answer",
        m(&to_answer),
        "s",
        &how(&format!(
            "one-line change to the placeholder reply in {REPLY_FILE} saved under `cargo xtask dev --watch`, \
             until `echo hi | cargo xtask chat` (run once the watcher says the bot restarted) prints the \
             new text; compare image.rebuild_one_line"
        )),
    );
    report.number(
        "dev",
        "edit_to_bot_restarted",
        m(&to_restart),
        "s",
        &how("from the save until the watcher prints that the new bot is healthy"),
    );
    report.number(
        "dev",
        "rebuild",
        m(&rebuild),
        "s",
        &how("the watcher's `built in`: incremental cargo build in the build service, binary installed"),
    );
    report.number(
        "dev",
        "restart",
        m(&restart),
        "s",
        &how("the watcher's `healthy in`: the bot alone recreated, until its health check passes"),
    );
    // Other work on the machine slows every build: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    if let Some(one_minute) = load.split_whitespace().next() {
        report.text(
            "dev",
            "load_average",
            one_minute,
            "1-minute load average right after the edits (/proc/loadavg)",
        );
    }
    Ok(())
}

/// `(built in, healthy in)` seconds from the watcher's line
/// `built in 4.1 s; bot restarted with the new build, healthy in 2.3 s`.
fn restart_figures(line: &str) -> Option<(f64, f64)> {
    let seconds_after = |marker: &str| -> Option<f64> {
        let rest = &line[line.find(marker)? + marker.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    Some((seconds_after("built in ")?, seconds_after("healthy in ")?))
}

/// The clone's dev stack, brought down with its volumes when dropped.
struct BenchStack<'p, 'a> {
    /// Runs its steps in the clone.
    plan: &'p Plan<'a>,
    repo: PathBuf,
    /// Where the output of the xtasks it starts goes.
    logs: PathBuf,
    exe: PathBuf,
    env: Vec<(&'static str, String)>,
    compose_project: String,
    watcher: Option<Child>,
}

impl BenchStack<'_, '_> {
    fn command(&self, args: &[&str]) -> Cmd {
        // The stand-in stack, whatever the caller's environment holds.
        let mut cmd = Cmd::new(&self.exe).args(args).env_remove("DISCORD_TOKEN").env_remove("LLM_PROVIDER");
        for (key, value) in &self.env {
            cmd = cmd.env(key, value);
        }
        cmd
    }

    /// Runs `cargo xtask <args>` in the clone; its output, both streams, when it succeeds.
    fn xtask(&self, args: &[&str], deadline: Duration) -> Result<String> {
        let log = Log(self.logs.join(format!("xtask-{}.log", args.join("-"))));
        let mut child = self.plan.start(self.command(args), &log.0)?.context("dry run")?;
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("cargo xtask {} took longer than {} s; stopped it", args.join(" "), deadline.as_secs());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = log.text();
        if !status.success() {
            bail!("cargo xtask {} failed ({status}):\n{text}", args.join(" "));
        }
        Ok(text)
    }

    /// `echo <line> | cargo xtask chat`: what it printed.
    fn chat(&self, line: &str) -> Result<String> {
        self.plan.read(self.command(&["chat", "--wait", "60"]).stdin(format!("{line}\n")))
    }

    /// Starts `cargo xtask dev --watch`; what it prints goes to the returned log.
    fn watch(&mut self) -> Result<Log> {
        let log = Log(self.logs.join("xtask-dev-watch.log"));
        let child = self.plan.start(self.command(&["dev", "--watch"]), &log.0)?.context("dry run")?;
        self.watcher = Some(child);
        Ok(log)
    }

    fn edit(&self, from: &str, to: &str) -> Result<()> {
        let path = self.repo.join(REPLY_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if !text.contains(from) {
            bail!("{REPLY_FILE} does not contain {from:?}: the bench needs updating");
        }
        std::fs::write(&path, text.replacen(from, to, 1))
            .with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for BenchStack<'_, '_> {
    fn drop(&mut self) {
        if let Some(mut watcher) = self.watcher.take() {
            let _ = watcher.kill();
            let _ = watcher.wait();
        }
        self.plan.cleanup(
            Cmd::of("docker compose -p")
                .arg(format!("{}-dev", self.compose_project))
                .args(["-f", "compose/base.yml", "-f", "compose/dev.yml", "-f", "compose/standin.yml"])
                // With the build service's profile: `down` removes only the volumes of the services it sees.
                .args(["--profile", "build", "down", "--volumes", "--remove-orphans", "--timeout", "5"]),
        );
    }
}

/// The file a started xtask writes its output (both streams) to.
struct Log(PathBuf);

impl Log {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.0).unwrap_or_default()
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Waits until the `n`-th line containing `needle`, and returns it.
    fn wait_for(&self, needle: &str, n: usize, deadline: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(line) = self.text().lines().filter(|l| l.contains(needle)).nth(n - 1) {
                return Ok(line.to_string());
            }
            if start.elapsed() > deadline {
                bail!(
                    "`cargo xtask dev --watch` did not print {needle:?} within {} s (log: {}):\n{}",
                    deadline.as_secs(),
                    self.path().display(),
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchers_line_gives_the_rebuild_and_restart_times() {
        let line = "built in 4.1 s; bot restarted with the new build, healthy in 2.3 s";
        assert_eq!(restart_figures(line), Some((4.1, 2.3)));
        assert_eq!(restart_figures("bot restarted"), None);
    }
}
