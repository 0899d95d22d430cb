//! The production server, reached over one SSH connection (OpenSSH ControlMaster) and driven by
//! plain shell steps that are printed before they run.
//!
//! **Architecture Invariant:** the host key is pinned from `SSH_KNOWN_HOSTS` (never
//! `StrictHostKeyChecking=no`), the private key lives only in a 0600 file inside a 0700 temp dir that
//! is removed when the connection is dropped, and secrets reach the server only through ssh stdin.
//!
//! Server layout under `settings.deploy_path` (relative to the ssh user's home unless absolute):
//! `.env` (app secrets, 0600), `releases/<sha>/{base.yml,prod.yml,release.env}`,
//! `current -> releases/<sha>`, `deploys.log` (append-only history), `.lock` + `.lock.holder`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    process::{Child, ChildStdout},
};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Cmd, TempDir};

use crate::{
    compose::Stack,
    env::{Env, APP_VARS, SSH_VARS},
    history::{Action, Outcome},
    plan::Plan,
    project::Project,
    settings::Settings,
};

pub const HISTORY: &str = "deploys.log";
pub const LOCK: &str = ".lock";
pub const LOCK_HOLDER: &str = ".lock.holder";
/// The switch script a deploy or rollback uploads and starts detached, its output, its result
/// (`healthy`, `back-ok`, `back-unhealthy`, `no-previous`) and the failing container's last logs.
pub const SWITCH_SCRIPT: &str = ".switch.sh";
pub const SWITCH_LOG: &str = ".switch.log";
pub const SWITCH_RESULT: &str = ".switch.result";
pub const SWITCH_BOT_LOGS: &str = ".switch.bot-logs";

// The remote side parses every ssh command line again: quote deliberately.
pub use crate::plan::{shell_quote, shell_words};

/// Where the server is and how to reach it, from `SSH_*` variables. Problems are collected, not
/// raised one by one, so preflight can list them all at once.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: String,
    pub user: String,
}

impl Target {
    pub fn from_env(env: &Env, problems: &mut Vec<String>) -> Target {
        let missing = env.missing(SSH_VARS);
        if !missing.is_empty() {
            problems.push(format!(
                "missing environment variables: {} (set them in the environment, as CI secrets, or in .env; \
                 see .env.example)",
                missing.join(", ")
            ));
        }
        if env.get("SSH_PRIVATE_KEY").is_some() && env.get("SSH_KNOWN_HOSTS").is_none() {
            // Said separately because the fix is not obvious.
            problems.push(format!(
                "SSH_KNOWN_HOSTS is empty: the server's host key must be pinned. Get it with \
                 `ssh-keyscan -p {port} {host}`, check its fingerprint against the server's own \
                 (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the server), and store the lines as \
                 SSH_KNOWN_HOSTS",
                port = env.get("SSH_PORT").unwrap_or("22"),
                host = env.get("SSH_HOST").unwrap_or("<host>"),
            ));
        }
        let port = env.get("SSH_PORT").unwrap_or("22").to_string();
        if port.parse::<u16>().is_err() {
            problems.push(format!("SSH_PORT={port:?} is not a port number"));
        }
        Target {
            host: env.get("SSH_HOST").unwrap_or("$SSH_HOST").to_string(),
            port,
            user: env.get("SSH_USER").unwrap_or("$SSH_USER").to_string(),
        }
    }
}

/// The deploy directory on the server, and every path and command in it.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: String,
    pub settings: Settings,
}

impl Layout {
    pub fn new(settings: &Settings) -> Layout {
        Layout { root: settings.deploy_path.clone(), settings: settings.clone() }
    }

    pub fn release_dir(&self, sha: &str) -> String {
        format!("releases/{sha}")
    }

    pub fn image(&self, sha: &str) -> String {
        format!("{}:{sha}", self.settings.image)
    }

    /// The compose stack of one release, with its own files and image (paths relative to the root).
    pub fn stack(&self, sha: &str) -> Stack {
        let dir = self.release_dir(sha);
        let mut stack = Stack::prod(&self.settings, &dir);
        stack.env_files = vec![".env".into(), format!("{dir}/release.env")];
        stack
    }

    /// `docker compose … <args>` for one release, as a remote command line.
    pub fn compose(&self, sha: &str, args: &[&str]) -> String {
        let mut words = vec!["docker".to_string(), "compose".to_string()];
        words.extend(self.stack(sha).args());
        words.extend(args.iter().map(|a| a.to_string()));
        shell_words(&words)
    }

    /// Runs `script` inside the deploy directory.
    pub fn within(&self, script: &str) -> String {
        format!("cd {} && {script}", shell_quote(&self.root))
    }

    /// Points `current` at a release atomically: a new symlink, renamed over the old one.
    pub fn switch(&self, sha: &str) -> String {
        format!("ln -sfn {} current.new && mv -T current.new current", shell_quote(&self.release_dir(sha)))
    }

    /// The sha `current` points at, or nothing.
    pub fn read_current(&self) -> String {
        format!(
            "if test -d {root}; then cd {root} && readlink current || true; fi",
            root = shell_quote(&self.root)
        )
    }

    /// The switch script: point `current` at `switch.sha`, bring it up and wait until healthy,
    /// record the outcome; unhealthy → keep the container's last log lines, switch back to the
    /// previous release and record that too. It runs detached on the server holding the lock, so a
    /// dead client cannot leave `current` and the running containers apart. Its last act is writing
    /// the result file.
    pub fn switch_script(&self, switch: &Switch) -> String {
        let timeout = switch.timeout_secs.to_string();
        let up = |sha: &str| {
            self.compose(sha, &["up", "--detach", "--wait", "--wait-timeout", &timeout, "--remove-orphans"])
        };
        let pause = |step: &str| {
            if switch.pause_at.as_deref() == Some(step) {
                format!("echo 'lattice test pause: {step}'\nsleep 5\n")
            } else {
                String::new()
            }
        };
        let result =
            |r: &str| format!("echo {r} > {SWITCH_RESULT}.new && mv {SWITCH_RESULT}.new {SWITCH_RESULT}");
        let sha = &switch.sha;
        let mut s = format!(
            "# Written by cargo xtask; runs detached (setsid nohup) and holds the deploy lock.\n\
             set -u\n\
             start=$(date +%s)\n\
             record() {{\n  \
               d=$(docker image inspect --format '{{{{index .RepoDigests 0}}}}' \"$3\" 2>/dev/null) || d=-\n  \
               printf '%s %s %s %s %s %ss %s\\n' \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" \"$1\" \"$2\" \"${{d:--}}\" \"$4\" \
             \"$(( $5 + $(date +%s) - start ))\" {who} >> {HISTORY}\n\
             }}\n\
             echo 'switch current to {sha}'\n\
             {switch}\n\
             {pause_switch}",
            who = shell_quote(&switch.who.replace(char::is_whitespace, "_")),
            switch = self.switch(sha),
            pause_switch = pause("switch"),
        );
        if switch.pause_at.as_deref() == Some("health") {
            s.push_str(&self.compose(sha, &["up", "--detach", "--remove-orphans"]));
            s.push('\n');
            s.push_str(&pause("health"));
        }
        s.push_str(&format!(
            "echo 'wait up to {timeout} s for {sha} to be healthy'\n\
             if {up_new}; then\n  \
               record {action} {sha_q} {image} {ok} {elapsed}\n  \
               {healthy}\n  \
               exit 0\n\
             fi\n\
             {logs} > {SWITCH_BOT_LOGS} 2>&1\n\
             record {action} {sha_q} {image} {unhealthy} {elapsed}\n",
            sha_q = shell_quote(sha),
            up_new = up(sha),
            action = switch.action.as_str(),
            ok = Outcome::Ok.as_str(),
            unhealthy = Outcome::Unhealthy.as_str(),
            image = shell_quote(&self.image(sha)),
            elapsed = switch.elapsed_secs,
            healthy = result("healthy"),
            logs = self.compose(sha, &["logs", "--no-color", "--tail", "40", "bot"]),
        ));
        match switch.previous.as_deref().filter(|p| p != sha) {
            Some(previous) => s.push_str(&format!(
                "echo '{sha} is not healthy: switching back to {previous}'\n\
                 start=$(date +%s)\n\
                 {switch}\n\
                 if {up_previous}; then\n  \
                   record {back} {previous_q} {image} {ok} 0\n  \
                   {back_ok}\n\
                 else\n  \
                   record {back} {previous_q} {image} {unhealthy} 0\n  \
                   {back_unhealthy}\n\
                 fi\n",
                switch = self.switch(previous),
                up_previous = up(previous),
                back = Action::SwitchBack.as_str(),
                previous_q = shell_quote(previous),
                ok = Outcome::Ok.as_str(),
                unhealthy = Outcome::Unhealthy.as_str(),
                image = shell_quote(&self.image(previous)),
                back_ok = result("back-ok"),
                back_unhealthy = result("back-unhealthy"),
            )),
            None => {
                s.push_str(&result("no-previous"));
                s.push('\n');
            }
        }
        s
    }

    /// The image digest (`repo@sha256:…`) of a release's image on the server, or `-`.
    pub fn digest(&self, sha: &str) -> String {
        format!(
            "docker image inspect --format '{{{{index .RepoDigests 0}}}}' {} 2>/dev/null || echo -",
            shell_quote(&self.image(sha))
        )
    }
}

/// What the switch script does: which release, from which, as what, how long to wait.
#[derive(Debug, Clone)]
pub struct Switch {
    pub sha: String,
    pub previous: Option<String>,
    /// `deploy` or `rollback`, as the history writes it.
    pub action: Action,
    pub timeout_secs: u64,
    pub who: String,
    /// Seconds the command ran before the switch, added to the recorded duration.
    pub elapsed_secs: u64,
    /// Test hook (`LATTICE_TEST_PAUSE_AT=switch|health`): print a marker and sleep 5 s there.
    pub pause_at: Option<String>,
}

/// One open SSH connection to the server. Every remote step goes through [`Server::run`],
/// [`Server::read`] or [`Server::check`], which print `ssh … '<remote command>'` via the plan.
pub struct Server<'p, 'a> {
    plan: &'p Plan<'a>,
    pub layout: Layout,
    pub target: Target,
    options: Vec<String>,
    /// Holds the key, known_hosts and control socket; removed on drop, on every exit path that
    /// runs destructors (errors and panics included).
    dir: Option<TempDir>,
    connected: bool,
}

impl<'p, 'a> Server<'p, 'a> {
    /// Checks the SSH settings and prepares the connection files; problems go to `problems`.
    pub fn prepare(
        plan: &'p Plan<'a>,
        project: &Project,
        problems: &mut Vec<String>,
    ) -> Result<Server<'p, 'a>> {
        let target = Target::from_env(&project.env, problems);
        let layout = Layout::new(&project.settings);
        let (dir, base) = if plan.is_dry_run() {
            (None, "$TMP".to_string())
        } else {
            let dir = plan.sh().create_temp_dir().context("creating a temp dir for the ssh key")?;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
            let base = dir.path().display().to_string();
            (Some(dir), base)
        };
        if let Some(dir) = &dir {
            if let Some(key) = project.env.get("SSH_PRIVATE_KEY") {
                // OpenSSH rejects a key without its final newline; secrets stores often strip it.
                let key = format!("{}\n", key.trim_end());
                write_private(&dir.path().join("id"), key.as_bytes())?;
            }
            if let Some(known) = project.env.get("SSH_KNOWN_HOSTS") {
                write_private(&dir.path().join("known_hosts"), format!("{}\n", known.trim_end()).as_bytes())?;
            }
        }
        let config = ssh_config(&base, &target);
        match &dir {
            Some(dir) => std::fs::write(dir.path().join("config"), &config)?,
            None => plan.note(&format!(
                "$TMP/config, the ssh client configuration used below:\n{}",
                config.trim_end()
            )),
        }
        let options = vec!["-F".to_string(), format!("{base}/config")];
        Ok(Server { plan, layout, target, options, dir, connected: false })
    }

    fn destination(&self) -> String {
        format!("{}@{}", self.target.user, self.target.host)
    }

    /// The ssh config file's path (for the e2e test's own checks and `ssh -O exit`).
    fn config_path(&self) -> Option<std::path::PathBuf> {
        self.dir.as_ref().map(|d| d.path().join("config"))
    }

    /// `ssh <options> user@host <remote>`; the remote command runs in the deploy directory unless it
    /// starts with `@` (then in the user's home).
    fn ssh(&self, remote: &str) -> Cmd<'a> {
        let sh = self.plan.sh();
        let options = &self.options;
        cmd!(sh, "ssh {options...} {HOST_ALIAS} {remote}")
    }

    /// The ssh command for a remote step in the user's home, to add stdin to before handing it to
    /// the plan.
    pub fn home_cmd(&self, script: &str) -> Cmd<'a> {
        self.ssh(script)
    }

    /// Opens the shared connection and proves the host is the pinned one.
    pub fn connect(&mut self) -> Result<()> {
        if self.connected {
            return Ok(());
        }
        let check = self.ssh("true");
        self.plan.run(check).with_context(|| {
            format!(
                "cannot reach {dest} on port {port}: check that the host is up and SSH_HOST/SSH_PORT/SSH_USER are \
                 right; \"Host key verification failed\" means SSH_KNOWN_HOSTS does not hold this server's key \
                 (`ssh-keyscan -p {port} {host}`, then verify the fingerprint); \"Permission denied\" means \
                 SSH_PRIVATE_KEY is not in the user's ~/.ssh/authorized_keys",
                dest = self.destination(),
                port = self.target.port,
                host = self.target.host,
            )
        })?;
        self.connected = true;
        // Every later step rides on the shared connection, so the key file is not needed again:
        // removing it now means not even a `kill -9` of this process can leave it behind.
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(dir.path().join("id"));
        }
        Ok(())
    }

    /// Runs a remote step (in the deploy directory), output to the terminal.
    pub fn run(&self, script: &str) -> Result<()> {
        self.plan.run(self.ssh(&self.layout.within(script)))
    }

    /// Runs a remote step (in the deploy directory) with `input` on its stdin: how secrets and
    /// files travel. The input is never printed.
    pub fn run_with_input(&self, script: &str, input: &[u8]) -> Result<()> {
        self.plan.run(self.ssh(&self.layout.within(script)).stdin(input))
    }

    /// Runs a remote step in the deploy directory and returns its stdout.
    pub fn read(&self, script: &str) -> Result<String> {
        self.plan.read(self.ssh(&self.layout.within(script)))
    }

    /// Runs a remote step in the ssh user's home (for steps that must work before the deploy
    /// directory exists) and returns its stdout.
    pub fn read_at_home(&self, script: &str) -> Result<String> {
        self.plan.read(self.ssh(script))
    }

    /// Names (never values) of the variables set in the server's `.env`; `None` when it has none.
    pub fn env_names(&self) -> Result<Option<Vec<String>>> {
        let root = shell_quote(&self.layout.root);
        let out = self.read_at_home(&format!(
            "if test -f {root}/.env; then echo has-env; sed -n 's/^\\(export \\)\\{{0,1\\}}\\([A-Za-z_][A-Za-z0-9_]*\\)=..*$/\\2/p' {root}/.env; fi"
        ))?;
        if self.plan.is_dry_run() {
            return Ok(Some(APP_VARS.iter().map(|s| s.to_string()).collect()));
        }
        let mut lines = out.lines();
        if lines.next() != Some("has-env") {
            return Ok(None);
        }
        Ok(Some(lines.map(str::to_string).collect()))
    }

    /// Takes the deploy lock, held by a background ssh session for as long as the returned guard
    /// lives: if this process dies, its ssh session ends and the lock is released with it — unless
    /// the session has started the switch script ([`Lock::detach`]), which inherits the lock and
    /// keeps it until the switch is finished and recorded.
    pub fn lock(&self, holder: &str, wait: Option<u64>) -> Result<Lock> {
        let wait_flag = match wait {
            Some(secs) => format!("-w {secs}"),
            None => "-n".to_string(),
        };
        // The script starts in a subshell so that init, not this shell, becomes its parent and
        // reaps it: a zombie would keep `tail --pid` following its log forever.
        let inner = format!(
            "printf '%s since %s\\n' {} \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" > {LOCK_HOLDER}; echo locked; \
             while read -r line; do if test \"$line\" = detach; then : > {SWITCH_LOG}; \
             (setsid nohup sh {SWITCH_SCRIPT} >> {SWITCH_LOG} 2>&1 < /dev/null & echo \"started $!\"); fi; done",
            shell_quote(holder)
        );
        let script = format!(
            "mkdir -p {root}/releases && cd {root} && exec flock {wait_flag} -E 75 {LOCK} sh -c {inner}",
            root = shell_quote(&self.layout.root),
            inner = shell_quote(&inner),
        );
        let Some(mut child) = self.plan.spawn(self.ssh(&script))? else {
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
        if status.code() == Some(75) {
            let holder = self
                .read(&format!("cat {LOCK_HOLDER} 2>/dev/null || echo unknown"))
                .unwrap_or_else(|_| "unknown".into());
            let waited = wait.map(|s| format!(" after waiting {s} s")).unwrap_or_default();
            bail!(
                "the server is locked by another deploy{waited}: {holder}. Wait for it to finish, or pass \
                 --lock-wait SECS. (The lock lives as long as that deploy's ssh session, or its switch script \
                 {root}/{SWITCH_SCRIPT} once started, which always ends after the health wait: \
                 {root}/{SWITCH_LOG} shows its progress. A lock never outlives them; if no deploy is running and \
                 the lock is still held, `fuser -v {root}/{LOCK}` on the server names the stuck process to stop.)",
                holder = holder.trim(),
                root = self.layout.root,
            );
        }
        bail!("could not take the deploy lock on the server ({status})")
    }

    /// Who holds the lock now, if anyone.
    pub fn lock_holder(&self) -> Result<Option<String>> {
        let out = self.read(&format!(
            "if test -f {LOCK} && ! flock -n {LOCK} true; then cat {LOCK_HOLDER} 2>/dev/null || echo unknown; fi"
        ))?;
        Ok(Some(out).filter(|s| !s.trim().is_empty() && !self.plan.is_dry_run()))
    }

    pub fn plan(&self) -> &'p Plan<'a> {
        self.plan
    }
}

impl Drop for Server<'_, '_> {
    fn drop(&mut self) {
        if let (Some(config), true) = (self.config_path(), self.connected) {
            // Ends the shared connection now rather than after ControlPersist.
            let _ = std::process::Command::new("ssh")
                .arg("-F")
                .arg(config)
                .args(["-O", "exit", HOST_ALIAS])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The held deploy lock. Dropping it closes the remote shell's stdin, which ends the session and
/// releases the `flock` (a detached switch script still running keeps it until it ends).
pub struct Lock {
    child: Option<Child>,
    out: Option<BufReader<ChildStdout>>,
}

impl Lock {
    /// Starts the uploaded switch script from the lock's own session, detached (`setsid nohup`,
    /// output to the switch log): it inherits the locked file descriptor, so the lock is held until
    /// the script has finished, even if this process or its connection dies. Returns its pid.
    pub fn detach(&mut self, plan: &Plan) -> Result<String> {
        plan.note(&format!(
            "in the lock's session: setsid nohup sh {SWITCH_SCRIPT} >> {SWITCH_LOG} 2>&1 < /dev/null & \
             (detached from this connection; it inherits the lock)"
        ));
        let (Some(child), Some(out)) = (self.child.as_mut(), self.out.as_mut()) else {
            return Ok("<pid>".into());
        };
        let stdin = child.stdin.as_mut().context("the lock session has no stdin")?;
        stdin.write_all(b"detach\n")?;
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

/// The ssh client configuration of one connection: the host key pinned, the key given, the
/// connection shared. Written to a file so every printed step reads `ssh -F <file> lattice-server …`.
fn ssh_config(dir: &str, target: &Target) -> String {
    format!(
        "Host {HOST_ALIAS}
  HostName {host}
  Port {port}
  User {user}
  IdentityFile {dir}/id
  IdentitiesOnly yes
  UserKnownHostsFile {dir}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  ServerAliveInterval 15
  ControlMaster auto
  ControlPath {dir}/cm
  ControlPersist 60
",
        host = target.host,
        port = target.port,
        user = target.user,
    )
}

/// The name the ssh config gives the server, so the printed commands stay readable.
pub const HOST_ALIAS: &str = "lattice-server";

fn write_private(path: &std::path::Path, content: &[u8]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(content)?;
    Ok(())
}

/// Who runs this deploy, for the lock and the history: the CI actor or `user@host`.
pub fn who(env: &Env) -> String {
    let who = if let Some(actor) = env.get("GITHUB_ACTOR") {
        format!("{actor}@github-actions")
    } else {
        let user = env.get("USER").or(env.get("LOGNAME")).unwrap_or("unknown");
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        format!("{user}@{}", host.trim())
    };
    who.chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_readable_and_others_are_single_quoted() {
        assert_eq!(shell_quote("releases/abc123"), "releases/abc123");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("it's"), r#"'it'\''s'"#);
        assert_eq!(shell_words(&["echo", "a;b", "c"]), "echo 'a;b' c");
    }

    /// Runs the switch script in a temp dir with a fake `docker` whose `up` succeeds for the
    /// releases in `healthy`; returns the history as parsed, the result file and `current`.
    fn run_switch(previous: Option<&str>, healthy: &[&str]) -> (Vec<crate::history::Line>, String, String) {
        let sh = xshell::Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let d = dir.path();
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let ok: Vec<String> = healthy.iter().map(|s| format!("*releases/{s}/*up*) exit 0 ;;")).collect();
        let fake = format!(
            "#!/bin/sh\ncase \"$*\" in\n*inspect*) echo reg/bot@sha256:abc ;;\n*logs*) echo 'panic: no gateway' ;;\n{}\n*up*) exit 1 ;;\nesac\n",
            ok.join("\n")
        );
        std::fs::write(bin.join("docker"), fake).unwrap();
        std::fs::set_permissions(bin.join("docker"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let layout = Layout::new(&Settings::default());
        let script = layout.switch_script(&Switch {
            sha: "bbbbbbb".into(),
            previous: previous.map(str::to_string),
            action: Action::Deploy,
            timeout_secs: 5,
            who: "ann on laptop".into(),
            elapsed_secs: 7,
            pause_at: None,
        });
        std::fs::write(d.join(SWITCH_SCRIPT), script).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let _d = sh.push_dir(d);
        cmd!(sh, "sh {SWITCH_SCRIPT}").env("PATH", path).quiet().ignore_stdout().run().unwrap();
        let log = std::fs::read_to_string(d.join(HISTORY)).unwrap();
        let result = std::fs::read_to_string(d.join(SWITCH_RESULT)).unwrap().trim().to_string();
        let current = std::fs::read_link(d.join("current")).unwrap().display().to_string();
        (crate::history::parse(&log), result, current)
    }

    #[test]
    fn the_switch_script_records_a_healthy_switch() {
        let (lines, result, current) = run_switch(Some("aaaaaaa"), &["bbbbbbb"]);
        assert_eq!((result.as_str(), current.as_str()), ("healthy", "releases/bbbbbbb"));
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(
            (l.action.as_str(), l.sha.as_str(), l.digest.as_str()),
            ("deploy", "bbbbbbb", "reg/bot@sha256:abc")
        );
        assert_eq!(l.result, "ok");
        assert!(l.seconds.starts_with('7') && l.seconds.ends_with('s'), "{}", l.seconds);
        assert_eq!(l.who, "ann_on_laptop");
    }

    #[test]
    fn the_switch_script_switches_back_when_unhealthy_and_records_both() {
        let (lines, result, current) = run_switch(Some("aaaaaaa"), &["aaaaaaa"]);
        assert_eq!((result.as_str(), current.as_str()), ("back-ok", "releases/aaaaaaa"));
        let got: Vec<(&str, &str, &str)> =
            lines.iter().map(|l| (l.action.as_str(), l.sha.as_str(), l.result.as_str())).collect();
        assert_eq!(got, [("deploy", "bbbbbbb", "unhealthy"), ("switch-back", "aaaaaaa", "ok")]);
        let (_, result, current) = run_switch(None, &[]);
        assert_eq!((result.as_str(), current.as_str()), ("no-previous", "releases/bbbbbbb"));
    }

    #[test]
    fn quoted_words_survive_a_real_shell() {
        let sh = xshell::Shell::new().unwrap();
        for word in ["it's", "$(rm -rf /)", "a\nb", "`x`", "\\", "\"q\"", "*", ""] {
            let line = format!("printf %s {}", shell_quote(word));
            let out = cmd!(sh, "sh -c {line}").quiet().read().unwrap();
            assert_eq!(out, word.trim_end_matches('\n'), "{line}");
        }
    }

    #[test]
    fn missing_ssh_settings_are_all_listed_with_how_to_get_the_host_key() {
        let env = Env::from_pairs([("SSH_HOST", "203.0.113.9"), ("SSH_PRIVATE_KEY", "k")]);
        let mut problems = vec![];
        Target::from_env(&env, &mut problems);
        let text = problems.join("\n");
        assert!(text.contains("SSH_USER, SSH_KNOWN_HOSTS"), "{text}");
        assert!(text.contains("ssh-keyscan -p 22 203.0.113.9"), "{text}");
    }

    #[test]
    fn the_host_key_is_pinned_and_never_trusted_on_first_use() {
        let target = Target { host: "h".into(), port: "2222".into(), user: "u".into() };
        let config = ssh_config("/tmp/x", &target);
        for line in [
            "StrictHostKeyChecking yes",
            "UserKnownHostsFile /tmp/x/known_hosts",
            "IdentityFile /tmp/x/id",
            "IdentitiesOnly yes",
            "BatchMode yes",
            "Port 2222",
            "User u",
        ] {
            assert!(config.contains(line), "{line:?} not in:\n{config}");
        }
    }

    #[test]
    fn a_release_runs_with_its_own_files_and_image() {
        let layout = Layout::new(&Settings::default());
        assert_eq!(
            layout.compose("abc1234", &["pull", "--quiet"]),
            "docker compose -p lattice --env-file .env --env-file releases/abc1234/release.env \
             -f releases/abc1234/base.yml -f releases/abc1234/prod.yml pull --quiet"
        );
        assert_eq!(
            layout.switch("abc1234"),
            "ln -sfn releases/abc1234 current.new && mv -T current.new current"
        );
    }

    #[test]
    fn the_private_key_file_is_owner_only() {
        let sh = xshell::Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let path = dir.path().join("id");
        write_private(&path, b"k").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
