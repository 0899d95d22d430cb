//! The one door every external command goes through.
//!
//! A task builds each step as a [`Cmd`] (a program and its words, see [`cmd`]) and hands it to
//! [`Plan`]. In a normal run each step is echoed (`$ docker compose …`) and run; with `--dry-run`
//! the same lines are printed, in order, and nothing runs. The printed line is the command's own
//! words, quoted once, so the plan cannot drift from what would really run, and pasted into a
//! shell it runs the same words. Secrets are passed with [`Cmd::env`] or [`Cmd::stdin`], which are
//! never printed, so they cannot reach the plan or an error message.

mod cmd;

use std::{
    cell::RefCell,
    io::{Read as _, Seek as _},
    os::unix::process::CommandExt as _,
    process::{Output, Stdio},
};

use anyhow::{Context, Result};
use xshell::Shell;

pub use self::cmd::{shell_quote, Cmd, Line};

/// How a step run with [`Plan::output`] meets the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Standard error to the terminal as it comes (a long build's progress); a Ctrl-C stops the
    /// step together with the xtask.
    Live,
    /// Standard error kept for the caller, and the step in its own process group: a Ctrl-C stops
    /// the xtask, but a rebuild or a container switch already started finishes on its own instead
    /// of being left halfway.
    Detached,
}

pub struct Plan<'a> {
    sh: &'a Shell,
    dry_run: bool,
    steps: RefCell<Vec<String>>,
}

impl<'a> Plan<'a> {
    pub fn new(sh: &'a Shell, dry_run: bool) -> Plan<'a> {
        Plan { sh, dry_run, steps: RefCell::new(Vec::new()) }
    }

    pub fn sh(&self) -> &'a Shell {
        self.sh
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// Every step so far, as printed. Lets unit tests assert a plan without Docker or SSH.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn steps(&self) -> Vec<String> {
        self.steps.borrow().clone()
    }

    /// A line of commentary in the plan (`# …`), so a printed plan reads as a story.
    pub fn note(&self, text: &str) {
        self.steps.borrow_mut().push(format!("# {text}"));
        if self.dry_run {
            println!("# {text}");
        } else {
            eprintln!("# {text}");
        }
    }

    fn record(&self, cmd: &Cmd) -> String {
        let line = cmd.to_string();
        self.steps.borrow_mut().push(line.clone());
        if self.dry_run {
            println!("$ {line}");
        } else {
            eprintln!("$ {line}");
        }
        line
    }

    /// The step as xshell runs it: in the shell's directory, with the step's env and stdin.
    fn xshell(&self, cmd: &Cmd) -> xshell::Cmd<'a> {
        let mut x = self.sh.cmd(cmd.program()).args(cmd.arguments()).quiet();
        if cmd.clears_env() {
            x = x.env_clear();
        }
        for key in cmd.removed_envs() {
            x = x.env_remove(key);
        }
        for (key, value) in cmd.envs() {
            x = x.env(key, value);
        }
        if let Some(input) = cmd.input() {
            x = x.stdin(input);
        }
        x
    }

    /// Runs a step, its output going straight to the terminal. Fails on a non-zero exit.
    pub fn run(&self, cmd: Cmd) -> Result<()> {
        self.record(&cmd);
        if self.dry_run {
            return Ok(());
        }
        // xshell's error already names the whole command and its exit code.
        Ok(self.xshell(&cmd).run()?)
    }

    /// Runs an interactive step: standard input, output and error stay the terminal's
    /// (a chat, a shell). Fails on a non-zero exit.
    pub fn run_interactive(&self, cmd: Cmd) -> Result<()> {
        let line = self.record(&cmd);
        if self.dry_run {
            return Ok(());
        }
        let status = std::process::Command::from(self.xshell(&cmd))
            .status()
            .with_context(|| format!("could not start: {line}"))?;
        if !status.success() {
            anyhow::bail!("step failed ({status}): {line}");
        }
        Ok(())
    }

    /// Runs a step and returns its standard output, trimmed. In a dry run it returns a placeholder
    /// naming the command, so later steps can still be printed.
    pub fn read(&self, cmd: Cmd) -> Result<String> {
        let line = self.record(&cmd);
        if self.dry_run {
            return Ok(format!("<output of {line}>"));
        }
        Ok(self.xshell(&cmd).read()?)
    }

    /// Reads a fact that changes nothing (e.g. which commit HEAD is), in a dry run too, so that the
    /// printed plan names real things rather than placeholders.
    pub fn read_fact(&self, cmd: Cmd) -> Result<String> {
        self.record(&cmd);
        Ok(self.xshell(&cmd).read()?)
    }

    /// Runs a probe: `Some(output)` (stdout, or stderr when stdout is empty, trimmed) when it
    /// succeeds, `None` when it fails or cannot start. A dry run prints it and answers `None`.
    pub fn probe(&self, cmd: Cmd) -> Option<String> {
        self.record(&cmd);
        if self.dry_run {
            return None;
        }
        let output = self.xshell(&cmd).ignore_status().output().ok()?;
        if !output.status.success() {
            return None;
        }
        let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Some(if stdout.is_empty() { stderr } else { stdout })
    }

    /// Starts a long-lived step in the background with piped stdin and stdout (e.g. the ssh session
    /// that holds the deploy lock). A dry run prints it and starts nothing.
    pub fn spawn(&self, cmd: Cmd) -> Result<Option<std::process::Child>> {
        let line = self.record(&cmd);
        if self.dry_run {
            return Ok(None);
        }
        let child = std::process::Command::from(self.xshell(&cmd))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start: {line}"))?;
        Ok(Some(child))
    }

    /// Starts a step that outlives this process and is not waited for (a watchdog that cleans up
    /// after it, however it ends): in a process group of its own, so the Ctrl-C that stops the
    /// xtask does not reach it; no input or output. A dry run prints it and starts nothing.
    pub fn watch(&self, cmd: Cmd) -> Result<()> {
        let line = self.record(&cmd);
        if self.dry_run {
            return Ok(());
        }
        std::process::Command::from(self.xshell(&cmd))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("could not start: {line}"))?;
        Ok(())
    }

    /// Starts a long-lived step in the background (a process under measurement), standard input
    /// closed, its output going to `log`. A dry run prints it and starts nothing.
    pub fn start(&self, cmd: Cmd, log: &std::path::Path) -> Result<Option<std::process::Child>> {
        let line = self.record(&cmd);
        self.note(&format!("its output goes to {}", log.display()));
        if self.dry_run {
            return Ok(None);
        }
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = std::process::Command::from(self.xshell(&cmd))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("could not start: {line}"))?;
        Ok(Some(child))
    }

    /// Runs a step to its end and returns its exit status and standard output, and its standard
    /// error unless it went to the terminal ([`Mode`]). It does not fail on a non-zero exit: the
    /// caller reads `status`. The step writes into unlinked files rather than pipes, so a detached
    /// step outliving the xtask is not killed by a broken pipe. A dry run prints it and returns `None`.
    pub fn output(&self, cmd: Cmd, mode: Mode) -> Result<Option<Output>> {
        let line = self.record(&cmd);
        if self.dry_run {
            return Ok(None);
        }
        let mut stdout_file = unlinked_file()?;
        let mut stderr_file = unlinked_file()?;
        let mut command = std::process::Command::from(self.xshell(&cmd));
        command.stdin(Stdio::null()).stdout(stdout_file.try_clone()?);
        match mode {
            Mode::Live => command.stderr(Stdio::inherit()),
            Mode::Detached => command.process_group(0).stderr(stderr_file.try_clone()?),
        };
        let status = command.status().with_context(|| format!("could not start: {line}"))?;
        let read = |file: &mut std::fs::File| -> Result<Vec<u8>> {
            let mut bytes = Vec::new();
            file.rewind()?;
            file.read_to_end(&mut bytes)?;
            Ok(bytes)
        };
        Ok(Some(Output { status, stdout: read(&mut stdout_file)?, stderr: read(&mut stderr_file)? }))
    }

    /// Runs a check every `every` until it succeeds (`true`) or `within` has passed (`false`),
    /// printed once. A dry run prints it and assumes success.
    pub fn poll(&self, cmd: Cmd, every: std::time::Duration, within: std::time::Duration) -> Result<bool> {
        let line = self.record(&cmd);
        self.note(&format!(
            "(repeated every {:.1} s until it succeeds, at most {} s)",
            every.as_secs_f64(),
            within.as_secs()
        ));
        if self.dry_run {
            return Ok(true);
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.succeeds(&cmd, &line)? {
                return Ok(true);
            }
            if std::time::Instant::now() > deadline {
                return Ok(false);
            }
            std::thread::sleep(every);
        }
    }

    /// Runs a clean-up step (removing what a task started); a failure is ignored, as there is
    /// nothing left to do about it. A dry run prints it.
    pub fn cleanup(&self, cmd: Cmd) {
        self.record(&cmd);
        if !self.dry_run {
            let _ = self.succeeds(&cmd, "");
        }
    }

    /// Runs a step whose exit status is the answer (e.g. "is this image present?"). Its output is
    /// captured, not shown. A dry run assumes success.
    pub fn check(&self, cmd: Cmd) -> Result<bool> {
        let line = self.record(&cmd);
        if self.dry_run {
            return Ok(true);
        }
        self.succeeds(&cmd, &line)
    }

    /// Runs a step whose failure the caller explains from what it said: `Ok(Ok(()))` when it
    /// exits 0, `Ok(Err(stderr))` (trimmed) when not. Its output is captured, not shown. A dry run
    /// assumes success.
    pub fn attempt(&self, cmd: Cmd) -> Result<std::result::Result<(), String>> {
        let line = self.record(&cmd);
        if self.dry_run {
            return Ok(Ok(()));
        }
        let output = self
            .xshell(&cmd)
            .ignore_status()
            .ignore_stdout()
            .output()
            .with_context(|| format!("could not start: {line}"))?;
        if output.status.success() {
            return Ok(Ok(()));
        }
        Ok(Err(String::from_utf8_lossy(&output.stderr).trim().to_string()))
    }

    /// Runs a step already printed as `line`, its output hidden; whether it exited 0.
    fn succeeds(&self, cmd: &Cmd, line: &str) -> Result<bool> {
        let output = self
            .xshell(cmd)
            .ignore_status()
            .ignore_stdout()
            .ignore_stderr()
            .output()
            .with_context(|| format!("could not start: {line}"))?;
        Ok(output.status.success())
    }
}

/// A temporary file already removed from its directory: it disappears with its last descriptor,
/// whenever and however the process ends.
fn unlinked_file() -> Result<std::fs::File> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("xtask-output-{}-{n}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dry_run_records_steps_in_order_and_runs_none() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let marker = sh.create_temp_dir().unwrap();
        let file = marker.path().join("touched");
        plan.note("make a file");
        plan.run(Cmd::new("touch").arg(&file)).unwrap();
        assert_eq!(plan.read(Cmd::of("echo hi")).unwrap(), "<output of echo hi>");
        assert!(!file.exists(), "a dry run must not run anything");
        assert_eq!(
            plan.steps(),
            vec!["# make a file".to_string(), format!("touch {}", file.display()), "echo hi".into()]
        );
    }

    #[test]
    fn printed_steps_are_what_a_shell_would_run() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let remote = "cd app && printf '%s\\n' \"$(date)\" >> log\tnext";
        plan.run(Cmd::of("ssh host").arg(remote)).unwrap();
        plan.run(Cmd::of("docker image inspect --format").args(["{{.Size}}", "x", "é ü"])).unwrap();
        let steps = plan.steps();
        assert_eq!(steps[0], format!("ssh host {}", shell_quote(remote)));
        assert_eq!(steps[1], "docker image inspect --format '{{.Size}}' x 'é ü'");
        // A real shell reads the printed line back into the very same words.
        let script = format!("for w in {}; do printf '[%s]' \"$w\"; done", &steps[0][9..]);
        let out = Plan::new(&sh, false).read(Cmd::of("sh -c").arg(script)).unwrap();
        assert_eq!(out, format!("[{remote}]"));
    }

    #[test]
    fn secrets_given_through_env_stay_out_of_the_plan() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, false);
        let out = plan.read(Cmd::of("printenv TOKEN").env("TOKEN", "s3cr3t-value")).unwrap();
        assert_eq!(out, "s3cr3t-value");
        assert!(plan.steps().iter().all(|s| !s.contains("s3cr3t")));
    }

    #[test]
    fn output_keeps_what_a_step_printed_and_its_status() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, false);
        let out = plan
            .output(Cmd::of("sh -c").arg("echo out; echo err >&2; exit 3"), Mode::Detached)
            .unwrap()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
        assert!(Plan::new(&sh, true).output(Cmd::of("false"), Mode::Live).unwrap().is_none());
    }

    #[test]
    fn a_failing_step_names_the_command() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, false);
        let err = plan.run(Cmd::of("false")).unwrap_err();
        assert!(format!("{err:#}").contains("`false`"), "{err:#}");
        assert!(!plan.check(Cmd::of("false")).unwrap());
        assert!(plan.check(Cmd::of("true")).unwrap());
    }
}
