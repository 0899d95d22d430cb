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
    /// Both kept for the caller, nothing shown; stopped with the xtask.
    Quiet,
}

pub struct Plan<'a> {
    sh: &'a Shell,
    dry_run: bool,
    /// Whether a run echoes each command and note and shows its output as it comes. When not,
    /// a task prints one line per step ([`Steps`]) and a command's output is kept and shown only
    /// when it fails. A dry run always prints the plan.
    verbose: bool,
    steps: RefCell<Vec<String>>,
}

impl<'a> Plan<'a> {
    pub fn new(sh: &'a Shell, dry_run: bool) -> Plan<'a> {
        Plan { sh, dry_run, verbose: true, steps: RefCell::new(Vec::new()) }
    }

    /// The same plan, echoing commands only when `verbose` (see [`Plan::is_verbose`]).
    pub fn verbose(self, verbose: bool) -> Plan<'a> {
        Plan { verbose, ..self }
    }

    /// Whether commands are echoed and their output shown as it comes.
    pub fn is_verbose(&self) -> bool {
        self.verbose
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

    /// Asserts that each of `needles` is in a step at or after the previous one's, and that no
    /// step shows one of `secrets`. For unit tests of a command's plan.
    #[cfg(test)]
    pub fn assert_steps(&self, needles: &[&str], secrets: &[&str]) {
        let steps = self.steps();
        let text = steps.join("\n");
        let mut at = 0;
        for needle in needles {
            let found = steps[at..].iter().position(|s| s.contains(needle));
            assert!(found.is_some(), "{needle:?} missing after step {at} in:\n{text}");
            at += found.unwrap();
        }
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked into the plan:\n{text}");
        }
    }

    /// A line of commentary in the plan (`# …`), so a printed plan reads as a story.
    pub fn note(&self, text: &str) {
        self.steps.borrow_mut().push(format!("# {text}"));
        if self.dry_run {
            println!("# {text}");
        } else if self.verbose {
            eprintln!("# {text}");
        }
    }

    fn record(&self, cmd: &Cmd) -> String {
        let line = cmd.to_string();
        self.steps.borrow_mut().push(line.clone());
        if self.dry_run {
            println!("$ {line}");
        } else if self.verbose {
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

    /// Runs a step, its output going straight to the terminal (when not verbose: kept, and shown
    /// only when the step fails). Fails on a non-zero exit.
    pub fn run(&self, cmd: Cmd) -> Result<()> {
        let line = self.record(&cmd);
        if self.dry_run {
            return Ok(());
        }
        if self.verbose {
            // xshell's error already names the whole command and its exit code.
            return Ok(self.xshell(&cmd).run()?);
        }
        let out = self.output(cmd, Mode::Quiet)?.expect("not a dry run");
        if out.status.success() {
            return Ok(());
        }
        let mut stderr = std::io::stderr().lock();
        let _ = std::io::Write::write_all(&mut stderr, &out.stdout);
        let _ = std::io::Write::write_all(&mut stderr, &out.stderr);
        anyhow::bail!("step failed ({}): {line}", out.status)
    }

    /// Runs a step with its output shown as it comes, verbose or not. Fails on a non-zero exit.
    pub fn run_shown(&self, cmd: Cmd) -> Result<()> {
        self.record(&cmd);
        if self.dry_run {
            return Ok(());
        }
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

    /// Starts a step that runs while the caller goes on, its output kept (as [`Plan::output`]
    /// does, in files: a process it leaves behind, like an ssh master, cannot hold it up); `then`
    /// runs as soon as the step has ended, whatever its outcome, in a thread of its own. A dry run
    /// prints it and starts nothing.
    pub fn beside(&self, cmd: Cmd, then: impl FnOnce() + Send + 'static) -> Result<Option<Beside>> {
        let line = self.record(&cmd);
        if self.dry_run {
            return Ok(None);
        }
        let (mut stdout_file, mut stderr_file) = (unlinked_file()?, unlinked_file()?);
        let mut child = std::process::Command::from(self.xshell(&cmd))
            .stdin(Stdio::null())
            .stdout(stdout_file.try_clone()?)
            .stderr(stderr_file.try_clone()?)
            .spawn()
            .with_context(|| format!("could not start: {line}"))?;
        let thread = std::thread::spawn(move || -> Result<Output> {
            let status = child.wait();
            then();
            let read = |file: &mut std::fs::File| -> Result<Vec<u8>> {
                let mut bytes = Vec::new();
                file.rewind()?;
                file.read_to_end(&mut bytes)?;
                Ok(bytes)
            };
            Ok(Output { status: status?, stdout: read(&mut stdout_file)?, stderr: read(&mut stderr_file)? })
        });
        Ok(Some(Beside { thread, line }))
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
        let line = if mode == Mode::Quiet { cmd.to_string() } else { self.record(&cmd) };
        if self.dry_run {
            return Ok(None);
        }
        let mut stdout_file = unlinked_file()?;
        let mut stderr_file = unlinked_file()?;
        let mut command = std::process::Command::from(self.xshell(&cmd));
        // The step's input, if any, on a pipe (a std Command made from xshell's does not carry it).
        let input = cmd.input();
        command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
        command.stdout(stdout_file.try_clone()?);
        match mode {
            Mode::Live => command.stderr(Stdio::inherit()),
            Mode::Detached => command.process_group(0).stderr(stderr_file.try_clone()?),
            Mode::Quiet => command.stderr(stderr_file.try_clone()?),
        };
        let mut child = command.spawn().with_context(|| format!("could not start: {line}"))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // A step that exits without reading all of it is judged by its exit status.
            let _ = std::io::Write::write_all(&mut stdin, input);
        }
        let status = child.wait().with_context(|| format!("could not wait for: {line}"))?;
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
        Ok(self.attempt_all(vec![cmd])?.remove(0))
    }

    /// Runs independent steps whose failures the caller explains from what they said, all at
    /// once: each answer is `Ok(())` when its step exits 0, `Err(stderr)` (trimmed) when not, in
    /// the steps' order. Their output is captured, not shown. A dry run assumes success.
    pub fn attempt_all(&self, cmds: Vec<Cmd>) -> Result<Vec<std::result::Result<(), String>>> {
        let lines: Vec<String> = cmds.iter().map(|cmd| self.record(cmd)).collect();
        if self.dry_run {
            return Ok(cmds.iter().map(|_| Ok(())).collect());
        }
        let mut children = Vec::new();
        for (cmd, line) in cmds.iter().zip(&lines) {
            let mut command = std::process::Command::from(self.xshell(cmd));
            let input = cmd.input().map(<[u8]>::to_vec);
            command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
            let mut child = command
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("could not start: {line}"))?;
            if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
                std::io::Write::write_all(&mut stdin, &input)?;
            }
            children.push(child);
        }
        let mut answers = Vec::new();
        for (child, line) in children.into_iter().zip(&lines) {
            let output = child.wait_with_output().with_context(|| format!("waiting for: {line}"))?;
            answers.push(if output.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
            });
        }
        Ok(answers)
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

/// A step started with [`Plan::beside`].
pub struct Beside {
    thread: std::thread::JoinHandle<Result<Output>>,
    line: String,
}

impl Beside {
    /// Waits for the step's end. Fails on a non-zero exit, with what it printed.
    pub fn wait(self) -> Result<()> {
        let out = self.thread.join().map_err(|_| anyhow::anyhow!("waiting for: {}", self.line))??;
        if out.status.success() {
            return Ok(());
        }
        let said = [String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)].concat();
        anyhow::bail!("step failed ({}): {}\n{}", out.status, self.line, said.trim_end())
    }
}

/// What a person reads of a run: one line per step with its seconds (`  pull        0.84 s`),
/// measured from the end of the step before. A dry run prints none (nothing ran).
pub struct Steps<'p, 'a> {
    plan: &'p Plan<'a>,
    started: std::time::Instant,
    mark: std::time::Instant,
}

impl<'p, 'a> Steps<'p, 'a> {
    pub fn new(plan: &'p Plan<'a>) -> Steps<'p, 'a> {
        Steps::since(plan, std::time::Instant::now())
    }

    /// Steps of a task that started at `started`.
    pub fn since(plan: &'p Plan<'a>, started: std::time::Instant) -> Steps<'p, 'a> {
        Steps { plan, started, mark: started }
    }

    /// Ends the step `name` now: prints its line (with `detail`, if any) and starts the next.
    pub fn done(&mut self, name: &str, detail: &str) {
        self.done_at(name, detail, std::time::Instant::now());
    }

    /// Ends the step `name` at `at` (when it was seen to end).
    pub fn done_at(&mut self, name: &str, detail: &str, at: std::time::Instant) {
        let secs = at.saturating_duration_since(self.mark).as_secs_f64();
        self.mark = at;
        if self.plan.is_dry_run() {
            return;
        }
        eprintln!("{}", step_line(name, secs, detail));
    }

    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    /// Seconds since the task started.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Seconds from the task's start to the end of the last step.
    pub fn at_last(&self) -> f64 {
        self.mark.saturating_duration_since(self.started).as_secs_f64()
    }
}

/// `  name      1.23 s  detail`.
pub fn step_line(name: &str, secs: f64, detail: &str) -> String {
    let line = format!("  {name:<10}{secs:>6.2} s");
    if detail.is_empty() {
        line
    } else {
        [line.as_str(), "  ", detail].concat()
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
    fn a_step_run_one_line_per_step_still_gets_its_input() {
        // `docker login --password-stdin` in a release: not verbose, its input must still arrive.
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, false).verbose(false);
        let check = Cmd::of("sh -c").arg("read -r line && test \"$line\" = given");
        plan.run(check.stdin("given\n")).unwrap();
    }

    #[test]
    fn a_step_gets_its_input_on_stdin() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, false);
        let out = plan.output(Cmd::of("cat").stdin("given\n"), Mode::Quiet).unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "given\n");
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
