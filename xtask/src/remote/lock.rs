//! The deploy lock: `flock` on `.lock`, held by a background ssh session running lock.sh.
//!
//! **Architecture Invariant:** one deploy, rollback or server migration at a time. The lock lives
//! exactly as long as the ssh session that took it — or, once the switch has started, as long as
//! the switch script, which inherits it — so a dead client can never leave it held, and no one
//! can take it in the middle of a switch. The client sends a heartbeat every
//! [`HEARTBEAT_SECS`]; the session gives the lock up after [`SILENCE_SECS`] without a word, so a
//! suspended client or a half-open connection (which sshd notices only after hours) holds it no
//! longer than that.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{Server, LOCK, LOCK_HOLDER, SWITCH_BOT_LOGS, SWITCH_LOG, SWITCH_RESULT, SWITCH_SCRIPT};
use crate::plan::{Cmd, Plan};

/// The lock's session (see the script's header).
const LOCK_SH: &str = include_str!("lock.sh");
/// flock's exit status when another holds the lock.
const LOCKED_BY_ANOTHER: i32 = 75;
/// How often the holder says it is still there.
const HEARTBEAT_SECS: u64 = 5;
/// How long the lock's session waits for a word from its client before it gives the lock up.
pub const SILENCE_SECS: u64 = 30;

impl Server<'_, '_> {
    /// Takes the deploy lock, held by a background ssh session for as long as the returned guard
    /// lives: if this process dies, its ssh session ends and the lock is released with it — unless
    /// the session has started the switch script ([`Lock::detach`]), which inherits the lock and
    /// keeps it until the switch is finished and recorded. `wait`: seconds to wait for a holder.
    pub fn lock(&self, holder: &str, wait: Option<u64>) -> Result<Lock> {
        let wait_flag = match wait {
            Some(secs) => vec!["-w".to_string(), secs.to_string()],
            None => vec!["-n".to_string()],
        };
        let session = Cmd::of("exec flock")
            .args(wait_flag)
            .args(["-E", &LOCKED_BY_ANOTHER.to_string(), LOCK])
            .args(Cmd::script("lock.sh", LOCK_SH).arg(holder).arg(SILENCE_SECS.to_string()).words());
        let step = Cmd::of("mkdir -p")
            .arg(self.layout.path("releases"))
            .and(Cmd::of("cd").arg(&self.layout.root))
            .and(session);
        let Some(mut child) = self.spawn_at_home(step)? else {
            return Ok(Lock { session: None });
        };
        let mut line = String::new();
        let mut out = child.stdout.take().map(BufReader::new);
        if let Some(out) = out.as_mut() {
            out.read_line(&mut line)?;
        }
        if let (true, Some(out), Some(stdin)) = (line.trim() == "locked", out, child.stdin.take()) {
            return Ok(Lock { session: Some(Session::beating(child, stdin, out)) });
        }
        let status = child.wait()?;
        if status.code() == Some(LOCKED_BY_ANOTHER) {
            let holder = self
                .read(Cmd::of("cat").arg(LOCK_HOLDER).without_errors().or(Cmd::of("echo unknown")))
                .unwrap_or_else(|_| "unknown".into());
            let waited = wait.map(|s| format!(" after waiting {s} s")).unwrap_or_default();
            bail!(
                "the server is locked by another deploy{waited}: {holder}. Wait for it to finish, or pass \
                 --lock-wait SECS. (The lock lives as long as that deploy's ssh session, or its switch script \
                 {root}/{SWITCH_SCRIPT} once started, which always ends after the health wait: \
                 {root}/{SWITCH_LOG} shows its progress. A lock never outlives them; if no deploy is running and \
                 the lock is still held, `fuser -v {root}/{LOCK}` on the server names the stuck process to stop.)",
                holder = super::layout::printable(holder.trim()),
                root = self.layout.root,
            );
        }
        bail!("could not take the deploy lock on the server ({status})")
    }

    /// Who holds the lock now, if anyone (takes nothing, writes nothing).
    pub fn lock_holder(&self) -> Result<Option<String>> {
        let out = self.read(
            Cmd::of("test ! -f")
                .arg(LOCK)
                .or(Cmd::of("flock -n").arg(LOCK).arg("true"))
                .or(Cmd::of("cat").arg(LOCK_HOLDER).without_errors())
                .or(Cmd::of("echo unknown")),
        )?;
        let out = super::layout::printable(out.trim());
        Ok(Some(out).filter(|s| !s.is_empty() && !self.plan().is_dry_run()))
    }
}

/// The held deploy lock. Dropping it closes the remote shell's stdin, which ends the session and
/// releases the `flock` (a detached switch script still running keeps it until it ends).
pub struct Lock {
    session: Option<Session>,
}

/// The lock's ssh session, with the thread that sends its heartbeat.
struct Session {
    child: Child,
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    out: BufReader<ChildStdout>,
    stop: Arc<AtomicBool>,
    beat: Option<JoinHandle<()>>,
}

impl Session {
    fn beating(child: Child, stdin: ChildStdin, out: BufReader<ChildStdout>) -> Session {
        let stdin = Arc::new(Mutex::new(Some(stdin)));
        let stop = Arc::new(AtomicBool::new(false));
        let beat = {
            let (stdin, stop) = (Arc::clone(&stdin), Arc::clone(&stop));
            std::thread::spawn(move || loop {
                for _ in 0..HEARTBEAT_SECS * 10 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let mut guard = stdin.lock().unwrap_or_else(|e| e.into_inner());
                let Some(pipe) = guard.as_mut() else { return };
                if pipe.write_all(b"beat\n").and_then(|()| pipe.flush()).is_err() {
                    return;
                }
            })
        };
        Session { child, stdin, out, stop, beat: Some(beat) }
    }
}

impl Session {
    /// Sends `message` to the lock's session as one write, so that no heartbeat falls inside it.
    fn send(&mut self, message: &str) -> Result<()> {
        let mut guard = self.stdin.lock().unwrap_or_else(|e| e.into_inner());
        let stdin = guard.as_mut().context("the lock session has no stdin")?;
        stdin.write_all(message.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Sends `message` (lines) to the lock's session and returns its one-line answer (empty when
    /// the session has ended).
    fn ask(&mut self, message: &str) -> Result<String> {
        self.send(&[message, "\n"].concat())?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        Ok(line.trim().to_string())
    }
}

/// How a switch started from the lock's session went, as far as the session saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Detached {
    /// The script ended and left this result (`none` when it left none).
    Ended(String),
    /// The connection ended while the script ran (it goes on on the server): its pid, and how
    /// many lines of its log were seen.
    Lost { pid: String, seen: usize },
}

impl Lock {
    /// Fails when the lock's session has ended: the server gave the lock up (this client was
    /// silent for [`SILENCE_SECS`], e.g. suspended) or the connection died. Checked before each
    /// step that needs the lock, so a client that lost it changes nothing more.
    pub fn ensure_held(&mut self) -> Result<()> {
        let Some(session) = self.session.as_mut() else { return Ok(()) };
        let ended = session.child.try_wait()?;
        let answer = match ended {
            Some(_) => String::new(),
            None => session.ask("ping").unwrap_or_default(),
        };
        if answer != "pong" {
            let status = match ended.or(session.child.try_wait()?) {
                Some(status) => status.to_string(),
                None => format!("it answered {:?}", answer),
            };
            bail!(
                "the deploy lock was lost ({status}): the server gives it up after {SILENCE_SECS} s without a \
                 heartbeat from this client (it was suspended, or the connection stalled), so another deploy may \
                 have started since; nothing more was done. Run the command again"
            );
        }
        Ok(())
    }

    /// Writes `content` to `path` (relative to the deploy directory) through the lock's own
    /// session: no connection of its own. Text only; a last line without its newline gets one.
    pub fn write(&mut self, plan: &Plan, path: &str, content: &str) -> Result<()> {
        let content = if content.is_empty() || content.ends_with('\n') {
            content.to_string()
        } else {
            [content, "\n"].concat()
        };
        let lines = content.lines().count();
        plan.note(&format!("in the lock's session: write {path} ({lines} lines)"));
        if path.contains(char::is_whitespace) || path.is_empty() {
            bail!("cannot write {path:?} through the lock's session: the path is empty or holds white space");
        }
        let Some(session) = self.session.as_mut() else { return Ok(()) };
        session.send(&format!("write {path} {lines}\n{content}"))?;
        let mut line = String::new();
        session.out.read_line(&mut line).unwrap_or(0);
        if line.trim() != format!("wrote {path}") {
            // The lock lost says so; otherwise the server's answer.
            self.ensure_held()?;
            bail!("the server did not write {path} (it answered {:?}); nothing was switched", line.trim());
        }
        Ok(())
    }

    /// Starts the uploaded switch script with `args` from the lock's own session, detached
    /// (`setsid nohup`, output to the switch log): it inherits the locked file descriptor, so the
    /// lock is held until the script has finished, even if this process or its connection dies.
    /// Then calls `each_line` with every line of the script's log as it comes (and when it came),
    /// and returns the script's result — or, when the connection ended first, its pid and how many
    /// lines were seen, for the caller to follow it over a new connection.
    pub fn detach(
        &mut self,
        plan: &Plan,
        args: &[String],
        mut each_line: impl FnMut(&str, Instant),
    ) -> Result<Detached> {
        let started = Cmd::of("setsid nohup sh").arg(SWITCH_SCRIPT).args(args);
        plan.note(&format!(
            "in the lock's session: rm -f {SWITCH_RESULT} {SWITCH_BOT_LOGS}; {started} >> {SWITCH_LOG} 2>&1 < /dev/null & \
             (detached from this connection; it inherits the lock)"
        ));
        plan.note(&format!(
            "in the lock's session: tail -n +1 -s 0.1 --pid=<pid> -f {SWITCH_LOG}; cat {SWITCH_RESULT} (its outcome)"
        ));
        self.ensure_held()?;
        let Some(session) = self.session.as_mut() else {
            return Ok(Detached::Ended("healthy".into()));
        };
        // lock.sh's protocol: `detach`, the arguments one a line, an empty line.
        let mut message = String::from("detach\n");
        for arg in args {
            if arg.is_empty() || arg.contains('\n') {
                bail!("the switch's argument {arg:?} cannot travel one a line to the lock's session");
            }
            message.push_str(arg);
            message.push('\n');
        }
        // (`ask` ends the message with the empty line.)
        let line = session.ask(&message)?;
        let pid = line.strip_prefix("started ").unwrap_or("").to_string();
        if pid.is_empty() || !pid.chars().all(|c| c.is_ascii_digit()) {
            bail!("the server did not start the switch script (it answered {line:?}); nothing was switched");
        }
        let mut seen = 0;
        let mut line = String::new();
        loop {
            line.clear();
            // A read error is a connection lost as much as the end of the output is.
            if session.out.read_line(&mut line).unwrap_or(0) == 0 {
                return Ok(Detached::Lost { pid, seen });
            }
            let text = line.strip_suffix('\n').unwrap_or(&line);
            if let Some(log) = text.strip_prefix("log ") {
                seen += 1;
                each_line(log, Instant::now());
            } else if let Some(result) = text.strip_prefix("result ") {
                return Ok(Detached::Ended(result.trim().to_string()));
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(mut session) = self.session.take() {
            session.stop.store(true, Ordering::Relaxed);
            drop(session.stdin.lock().unwrap_or_else(|e| e.into_inner()).take());
            if let Some(beat) = session.beat.take() {
                let _ = beat.join();
            }
            let _ = session.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Write},
        process::{Command, Stdio},
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn the_lock_session_lives_while_the_client_beats_and_ends_once_it_falls_silent() {
        let sh = xshell::Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let mut session = Command::new("sh")
            .args(["-c", LOCK_SH, "lock.sh", "ann deploy abc1234", "1"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(session.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "locked\n");
        let mut stdin = session.stdin.take().unwrap();
        stdin.write_all(b"ping\n").unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "pong\n");
        for _ in 0..8 {
            stdin.write_all(b"beat\n").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            assert!(session.try_wait().unwrap().is_none(), "the session ended although the client beats");
        }
        let silent = Instant::now();
        let status = loop {
            if let Some(status) = session.try_wait().unwrap() {
                break status;
            }
            assert!(silent.elapsed() < Duration::from_secs(10), "the session outlived its silent client");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(status.code(), Some(1), "it did not give the lock up for silence: {status}");
        // The last beat was 300 ms before `silent`; the bound is 1 s.
        assert!(silent.elapsed() >= Duration::from_millis(600), "it ended before the silence bound");
        let holder = std::fs::read_to_string(dir.path().join(".lock.holder")).unwrap();
        assert!(holder.starts_with("ann deploy abc1234 since "), "{holder}");
    }

    #[test]
    fn the_lock_session_writes_files_and_streams_the_switch_log_then_its_result() {
        let sh = xshell::Shell::new().unwrap();
        let temp = sh.create_temp_dir().unwrap();
        let dir = temp.path();
        let mut child = Command::new("sh")
            .args(["-c", LOCK_SH, "lock.sh", "ann@laptop deploy 1234567", "30"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "locked\n");
        let stdin = child.stdin.take().unwrap();
        let mut lock = Lock { session: Some(Session::beating(child, stdin, out)) };
        let plan = Plan::new(&sh, false);
        let compose = "services:\n  bot:\n    image: \"x\\\\y\"  # a comment\n\n  last: {}\n\n";
        lock.write(&plan, "releases/abc1234/base.yml", compose).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("releases/abc1234/base.yml")).unwrap(), compose);
        lock.write(&plan, "empty", "").unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("empty")).unwrap(), "");
        let script = "echo \"first $1\"\necho 'lattice step: switch new is a ready standby'\necho healthy > .switch.result\n";
        lock.write(&plan, SWITCH_SCRIPT, script).unwrap();
        let mut lines = Vec::new();
        let result =
            lock.detach(&plan, &["one".into(), "two".into()], |l, _| lines.push(l.to_string())).unwrap();
        assert_eq!(result, Detached::Ended("healthy".into()));
        assert_eq!(lines, ["first one", "lattice step: switch new is a ready standby"]);
        // The session still answers after the switch, the heartbeats sent meanwhile read.
        lock.ensure_held().unwrap();
        let holder = std::fs::read_to_string(dir.join(LOCK_HOLDER)).unwrap();
        assert!(holder.starts_with("ann@laptop deploy 1234567 since "), "{holder}");
        drop(lock);
    }
}
