//! NAME
//!     cargo xtask dev — the local stack from source, on the real Docker Engine.
//!
//! SYNOPSIS
//!     cargo xtask dev [--watch | --down]
//!
//! DESCRIPTION
//!     Compiles the bot from the working tree (a debug build in the `build` service of the dev
//!     overlay, into a cargo target directory kept on a named volume, so builds are incremental),
//!     migrates the database, starts Postgres and the bot with the base + dev overlays, waits until
//!     they are healthy and shows the bot's /health. Without a real DISCORD_TOKEN it adds the local
//!     Discord stand-in and the placeholder LLM, and says so.
//!
//!     With --watch it then watches bot/, Cargo.toml and Cargo.lock: after a change (a burst of saves
//!     counts once) it rebuilds, runs the migrations if bot/migrations changed, and recreates the bot
//!     alone when its binary changed. Postgres, the stand-in and the database keep running. A
//!     compile error is printed once and the bot keeps running its previous build until a build
//!     succeeds. Ctrl-C stops the watching and leaves the stack as `cargo xtask dev` would: up,
//!     running the last build that succeeded.

use std::{
    io::IsTerminal as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    compose::Stack,
    flags, http,
    plan::{Cmd, Mode, Plan},
    project::Project,
    watch::{Snapshot, Tree},
};

/// Seconds `up --wait` may take for containers to become healthy (the build comes before it).
const WAIT_SECS: &str = "180";
/// What the bot's build reads, relative to the workspace root: what `--watch` watches.
const WATCHED: &[&str] = &["bot", "Cargo.toml", "Cargo.lock"];
/// The compose variable (and label) naming the build a container runs: see compose/dev.yml.
const BUILD_VAR: &str = "LATTICE_DEV_BUILD";

impl flags::Dev {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let stack = Stack::dev(project);
        if self.down {
            return plan.run(stack.cmd().args(["down", "--remove-orphans"]));
        }
        if !project.has_real_discord_token() {
            plan.note(
                "no DISCORD_TOKEN set: the bot talks to the local Discord stand-in with placeholder replies \
                 (set DISCORD_TOKEN and OPENROUTER_API_KEY in .env to use the real services)",
            );
        }
        let dev = DevStack { plan, project, stack };
        let tree = Tree::new(&project.root, WATCHED);
        // Taken before the build, so an edit made while it runs is a change to watch for.
        let before = tree.snapshot();
        let first = dev.build(Mode::Live)?;
        let running = match first {
            Build::Built(binary) => {
                dev.bring_up(&binary)?;
                Some(binary)
            }
            Build::DryRun => {
                dev.bring_up("<build named by the build service>")?;
                if self.watch {
                    dev.dry_run_watch(&tree);
                }
                return Ok(());
            }
            Build::Failed(_) if !self.watch => {
                bail!("the bot does not build from the working tree (the compiler's messages are above)")
            }
            Build::Failed(_) => {
                println!("the bot does not build (the messages are above): fix it and save, the stack comes up then");
                None
            }
        };
        if !self.watch {
            return Ok(());
        }
        Watch { dev: &dev, tree, built: before, running, last_failure: None }.run()
    }
}

/// The dev stack of one project, and the steps `dev` runs on it.
struct DevStack<'a> {
    plan: &'a Plan<'a>,
    project: &'a Project,
    stack: Stack,
}

/// What a build of the bot came to.
enum Build {
    /// Built and installed for the bot: which build it is.
    Built(String),
    /// The build failed: what it printed on standard error.
    Failed(String),
    DryRun,
}

impl DevStack<'_> {
    fn compose(&self, binary: &str) -> Cmd {
        self.stack.cmd().env(BUILD_VAR, binary)
    }

    /// Compiles the bot in the `build` service and installs it in the `bot-bin` volume.
    fn build(&self, mode: Mode) -> Result<Build> {
        let color = if std::io::stderr().is_terminal() { "always" } else { "never" };
        let cmd = self.stack.cmd().args(["run", "--rm", "--no-TTY", "build"]);
        let Some(out) = self.plan.output(cmd.env("CARGO_TERM_COLOR", color), mode)? else {
            return Ok(Build::DryRun);
        };
        let stderr_text = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Ok(Build::Failed(stderr_text));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        match build_id(&stdout) {
            Some(id) => Ok(Build::Built(id)),
            None => bail!("the build succeeded but did not say which build it made:\n{stdout}{stderr_text}"),
        }
    }

    /// Migrations, then the whole stack up and healthy, running `binary`.
    fn bring_up(&self, binary: &str) -> Result<()> {
        let plan = self.plan;
        // As in production: the schema first (this also starts Postgres), then the bot.
        plan.run(self.compose(binary).args(["run", "--rm", "--no-TTY", "bot", "migrate"]))
            .context("migrating the dev database")?;
        plan.run(self.compose(binary).args(["up", "--detach", "--wait", "--wait-timeout", WAIT_SECS]))
            .context("the dev stack did not come up healthy; see `cargo xtask logs`")?;
        if plan.is_dry_run() {
            return Ok(());
        }
        let project = self.project;
        let port = project.env.get("BOT_HTTP_PORT").unwrap_or("8080");
        let addr = format!("127.0.0.1:{port}");
        let health = match http::request(&addr, "GET", "/health", None, Duration::from_secs(10)) {
            Ok((200, body)) => body.trim().to_string(),
            Ok((status, body)) => bail!("the bot is up but its /health answers {status}: {}", body.trim()),
            Err(err) => {
                return Err(err).context(format!("the bot is up but http://{addr}/health does not answer"))
            }
        };
        println!("bot healthy: http://127.0.0.1:{port}/health -> {health}");
        println!(
            "logs: cargo xtask logs -f    migrations: cargo xtask migrate    stop: cargo xtask dev --down"
        );
        if !project.has_real_discord_token() {
            println!("talk to it: cargo xtask chat");
        }
        Ok(())
    }

    /// Applies the migrations with the new binary, without touching the running services.
    fn migrate_cmd(&self, binary: &str) -> Cmd {
        self.compose(binary).args(["run", "--rm", "--no-TTY", "--no-deps", "bot", "migrate"])
    }

    /// Recreates the bot alone on the new binary (the label naming it changed) and waits until it
    /// is healthy; Postgres and the stand-in are left as they are.
    fn recreate_bot_cmd(&self, binary: &str) -> Cmd {
        self.compose(binary).args(["up", "--detach", "--wait", "--wait-timeout", "60", "--no-deps", "bot"])
    }

    fn restart_bot(&self, binary: &str, migrate: bool) -> Result<()> {
        let plan = self.plan;
        if migrate {
            let out = plan.output(self.migrate_cmd(binary), Mode::Detached)?.context("dry run")?;
            if !out.status.success() {
                bail!("the migrations failed:\n{}", String::from_utf8_lossy(&out.stderr).trim_end());
            }
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
        let out = plan.output(self.recreate_bot_cmd(binary), Mode::Detached)?.context("dry run")?;
        if !out.status.success() {
            bail!(
                "the new bot did not become healthy (`cargo xtask logs` shows why):\n{}",
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok(())
    }

    fn dry_run_watch(&self, tree: &Tree) {
        let plan = self.plan;
        plan.note(&format!(
            "then watch {} and, after each change ({BUILD_VAR}=<the new build> for compose):",
            tree.describe()
        ));
        let _ = self.build(Mode::Detached);
        plan.note("if bot/migrations changed:");
        let _ = plan.output(self.migrate_cmd("<new build>"), Mode::Detached);
        plan.note("if the binary changed (the bot alone is recreated):");
        let _ = plan.output(self.recreate_bot_cmd("<new build>"), Mode::Detached);
    }
}

/// The watch loop's state.
struct Watch<'a> {
    dev: &'a DevStack<'a>,
    tree: Tree,
    /// The tree as the last build saw it.
    built: Snapshot,
    /// The binary the stack runs; `None` while nothing has built yet.
    running: Option<String>,
    /// The diagnostics of the last failed build, so the same error is not printed twice.
    last_failure: Option<String>,
}

impl Watch<'_> {
    fn run(mut self) -> Result<()> {
        println!(
            "watching {} for changes (Ctrl-C stops watching; the stack keeps running)",
            self.tree.describe()
        );
        // Migrations changed since the last build that succeeded.
        let mut migrations_changed = false;
        loop {
            let (now, changed) = self.tree.wait_for_change(&self.built);
            self.built = now;
            migrations_changed |= changed.iter().any(|path| path.starts_with("bot/migrations"));
            println!("{}: rebuilding", describe_changes(&changed));
            let start = Instant::now();
            let binary = match self.dev.build(Mode::Detached)? {
                Build::Built(binary) => binary,
                Build::Failed(stderr) => {
                    self.failed(&stderr);
                    continue;
                }
                Build::DryRun => return Ok(()),
            };
            self.last_failure = None;
            let built_in = start.elapsed();
            let Some(running) = &self.running else {
                println!("built in {:.1} s; bringing the stack up", built_in.as_secs_f64());
                if let Err(err) = self.dev.bring_up(&binary) {
                    eprintln!("error: {err:#}");
                    continue;
                }
                self.running = Some(binary);
                migrations_changed = false;
                continue;
            };
            if *running == binary && !migrations_changed {
                println!(
                    "built in {:.1} s; the binary is unchanged: the bot keeps running",
                    built_in.as_secs_f64()
                );
                continue;
            }
            let restart = Instant::now();
            match self.dev.restart_bot(&binary, migrations_changed) {
                Ok(()) => println!(
                    "built in {:.1} s; bot restarted with the new build, healthy in {:.1} s",
                    built_in.as_secs_f64(),
                    restart.elapsed().as_secs_f64()
                ),
                Err(err) => eprintln!("error: {err:#}"),
            }
            // Whatever came of it, the bot's container now runs this binary.
            self.running = Some(binary);
            migrations_changed = false;
        }
    }

    /// A failed build: its diagnostics once, and that the running bot is left alone.
    fn failed(&mut self, stderr: &str) {
        let diagnostics = diagnostics(stderr);
        let keeps = if self.running.is_some() {
            "the bot keeps running its previous build"
        } else {
            "the stack comes up once the bot builds"
        };
        if self.last_failure.as_deref() == Some(diagnostics.as_str()) {
            eprintln!("build failed again with the same errors as above; {keeps}. Fix and save to rebuild.");
            return;
        }
        eprintln!("build failed; {keeps}. Fix and save to rebuild.\n{diagnostics}");
        self.last_failure = Some(diagnostics);
    }
}

/// `bot/src/reply.rs changed` or `3 files changed (bot/a.rs, bot/b.rs, …)`.
fn describe_changes(changed: &[PathBuf]) -> String {
    let shown: Vec<String> = changed.iter().take(3).map(|p| p.display().to_string()).collect();
    match changed.len() {
        1 => format!("{} changed", shown[0]),
        n if n <= 3 => format!("{n} files changed ({})", shown.join(", ")),
        n => format!("{n} files changed ({}, …)", shown.join(", ")),
    }
}

/// The build the build service names last (`lattice-bot build <id>`).
fn build_id(stdout: &str) -> Option<String> {
    let id = stdout.lines().rev().find_map(|line| line.strip_prefix("lattice-bot build "))?.trim();
    (!id.is_empty() && !id.contains(char::is_whitespace)).then(|| id.to_string())
}

/// What a failed build printed, without cargo's progress lines: the compiler's errors and warnings
/// (and anything else, such as Docker's own complaints).
fn diagnostics(stderr: &str) -> String {
    const PROGRESS: &[&str] = &["Compiling ", "Checking ", "Finished ", "Blocking ", "Updating ", "Locking "];
    stderr
        .lines()
        .filter(|line| {
            let plain = strip_ansi(line);
            let plain = plain.trim_start();
            !PROGRESS.iter().any(|word| plain.starts_with(word))
        })
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// `line` without ANSI colour sequences (cargo's, when the terminal has colours).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use xshell::Shell;

    #[test]
    fn the_build_is_named_by_the_last_line() {
        assert_eq!(build_id("lattice-bot build 1795806035.894208807\n"), Some("1795806035.894208807".into()));
        assert_eq!(build_id("lattice-bot build \n"), None);
        assert_eq!(build_id(""), None);
    }

    #[test]
    fn diagnostics_keep_the_errors_and_drop_the_progress() {
        let stderr = "   Compiling lattice-bot v0.1.0 (/src/bot)\n\
                      \u{1b}[1m\u{1b}[32m   Compiling\u{1b}[0m lattice-bot v0.1.0\n\
                      error[E0308]: mismatched types\n  --> bot/src/llm.rs:3:5\n\
                      error: could not compile `lattice-bot` (lib) due to 1 previous error\n";
        assert_eq!(
            diagnostics(stderr),
            "error[E0308]: mismatched types\n  --> bot/src/llm.rs:3:5\n\
             error: could not compile `lattice-bot` (lib) due to 1 previous error"
        );
    }

    #[test]
    fn changes_are_named_shortly() {
        let one = [PathBuf::from("bot/src/reply.rs")];
        assert_eq!(describe_changes(&one), "bot/src/reply.rs changed");
        let many: Vec<PathBuf> = (1..=5).map(|i| PathBuf::from(format!("bot/{i}.rs"))).collect();
        assert_eq!(describe_changes(&many), "5 files changed (bot/1.rs, bot/2.rs, bot/3.rs, …)");
    }

    #[test]
    fn a_dry_run_prints_the_setup_and_what_each_change_runs() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let project = Project {
            root: std::env::temp_dir().join("lattice-no-such-dir"),
            env: crate::env::Env::from_pairs([("DISCORD_TOKEN", "")]),
            settings: crate::settings::Settings::default(),
        };
        flags::Dev { down: false, watch: true }.run(&plan, &project).unwrap();
        let steps = plan.steps().join("\n");
        let compose =
            "docker compose -p lattice-dev -f compose/base.yml -f compose/dev.yml -f compose/standin.yml";
        for step in [
            format!("{compose} run --rm --no-TTY build"),
            format!("{compose} run --rm --no-TTY bot migrate"),
            format!("{compose} up --detach --wait --wait-timeout 180"),
            format!("{compose} up --detach --wait --wait-timeout 60 --no-deps bot"),
        ] {
            assert!(steps.contains(&step), "missing `{step}` in:\n{steps}");
        }
        assert!(steps.contains("# then watch"), "{steps}");
    }
}
