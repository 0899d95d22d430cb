//! The deploy lock: `flock` on `.lock`, held by a background ssh session running lock.sh.
//!
//! **Architecture Invariant:** one deploy, rollback or server migration at a time. The lock lives
//! exactly as long as the ssh session that took it — or, once the switch has started, as long as
//! the switch script, which inherits it — so a dead client can never leave it held, and no one
//! can take it in the middle of a switch.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdout},
};

use anyhow::{bail, Context, Result};

use super::{Server, LOCK, LOCK_HOLDER, SWITCH_LOG, SWITCH_SCRIPT};
use crate::plan::{Cmd, Plan};

/// The lock's session (see the script's header).
const LOCK_SH: &str = include_str!("lock.sh");
/// flock's exit status when another holds the lock.
const LOCKED_BY_ANOTHER: i32 = 75;

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
            .args(Cmd::script("lock.sh", LOCK_SH).arg(holder).words());
        let step = Cmd::of("mkdir -p")
            .arg(self.layout.path("releases"))
            .and(Cmd::of("cd").arg(&self.layout.root))
            .and(session);
        let Some(mut child) = self.spawn_at_home(step)? else {
            return Ok(Lock { child: None, out: None });
        };
        let mut line = String::new();
        let mut out = child.stdout.take().map(BufReader::new);
        if let Some(out) = out.as_mut() {
            out.read_line(&mut line)?;
        }
        if line.trim() == "locked" {
            return Ok(Lock { child: Some(child), out });
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
    child: Option<Child>,
    out: Option<BufReader<ChildStdout>>,
}

impl Lock {
    /// Starts the uploaded switch script with `args` from the lock's own session, detached
    /// (`setsid nohup`, output to the switch log): it inherits the locked file descriptor, so the
    /// lock is held until the script has finished, even if this process or its connection dies.
    /// Returns its pid.
    pub fn detach(&mut self, plan: &Plan, args: &[String]) -> Result<String> {
        let started = Cmd::of("setsid nohup sh").arg(SWITCH_SCRIPT).args(args);
        plan.note(&format!(
            "in the lock's session: {started} >> {SWITCH_LOG} 2>&1 < /dev/null & (detached from this connection; \
             it inherits the lock)"
        ));
        let (Some(child), Some(out)) = (self.child.as_mut(), self.out.as_mut()) else {
            return Ok("<pid>".into());
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
        message.push('\n');
        let stdin = child.stdin.as_mut().context("the lock session has no stdin")?;
        stdin.write_all(message.as_bytes())?;
        stdin.flush()?;
        let mut line = String::new();
        out.read_line(&mut line)?;
        let pid = line.trim().strip_prefix("started ").unwrap_or("").to_string();
        if pid.is_empty() || !pid.chars().all(|c| c.is_ascii_digit()) {
            bail!(
                "the server did not start the switch script (it answered {:?}); nothing was switched",
                line.trim()
            );
        }
        Ok(pid)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}
