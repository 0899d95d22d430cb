//! The production server, reached over one SSH connection (OpenSSH ControlMaster) and driven by
//! remote steps that are data — a [`Cmd`] or a [`Line`] of them — printed before they run. Scripts
//! that run on the server are the `.sh` files here, with positional arguments.
//!
//! **Architecture Invariant:** the host key is pinned from `SSH_KNOWN_HOSTS` (never
//! `StrictHostKeyChecking=no`), the private key lives only in a 0600 file inside a 0700 temp dir
//! that is removed once the connection stands (and with the connection on any exit that runs
//! destructors), and secrets reach the server only through ssh stdin.
//!
//! A task reaches the server with [`Server::open`], which checks every setting first and refuses
//! with all problems at once, before anything on the server is touched.

pub mod history;
mod layout;
mod lock;
pub mod schema;
pub mod snapshot;
mod switch;
mod unfinished;

use std::{io::Write, os::unix::fs::OpenOptionsExt, path::Path};

use anyhow::{bail, Context, Result};

pub use self::{
    history::{Action, Line as HistoryLine},
    layout::{
        escaped, printable, Layout, Sha, HISTORY, LOCK, LOCK_HOLDER, SWITCH_BOT_LOGS, SWITCH_INTENT,
        SWITCH_LOG, SWITCH_RESULT, SWITCH_SCRIPT,
    },
    lock::{Detached, Lock},
    switch::{pause_at, running_bots, Switch, SwitchBack},
};
use crate::{
    env::{parse_dotenv, required_app_vars, Env, SSH_VARS},
    plan::{Beside, Cmd, Line, Plan},
    project::Project,
    registry, temp,
};

/// What `require_app_env` reads of the server's `.env`: the names set, and `LLM_PROVIDER`'s value.
#[derive(Debug, PartialEq)]
struct ServerEnv {
    names: Vec<String>,
    provider: Option<String>,
}

impl ServerEnv {
    /// `has-env`, the names, `provider:`, then the `LLM_PROVIDER=` lines (the last one counts, as in
    /// Compose), read with the `.env` rules so a quoted value reads the same; `None` without `has-env`.
    fn parse(out: &str) -> Option<ServerEnv> {
        let mut lines = out.lines();
        if lines.next() != Some("has-env") {
            return None;
        }
        let names = lines.by_ref().take_while(|l| *l != "provider:").map(str::to_string).collect();
        let provider = lines
            .last()
            .and_then(|line| parse_dotenv(line).ok())
            .and_then(|vars| vars.get("LLM_PROVIDER").cloned())
            .filter(|v| !v.trim().is_empty());
        Some(ServerEnv { names, provider })
    }
}

/// The name the ssh config gives the server, so the printed commands stay readable.
pub const HOST_ALIAS: &str = "lattice-server";

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
        let unpinned = env.get("SSH_PRIVATE_KEY").is_some() && env.get("SSH_KNOWN_HOSTS").is_none();
        // An empty SSH_KNOWN_HOSTS beside a key is said once, below, with how to fill it.
        let missing: Vec<&str> =
            env.missing(SSH_VARS).into_iter().filter(|n| !(unpinned && *n == "SSH_KNOWN_HOSTS")).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "missing environment variables: {} (set them in the environment, as CI secrets, or in .env; \
                 see .env.example)",
                missing.join(", ")
            ));
        }
        let port = env.get("SSH_PORT").unwrap_or("22").to_string();
        let port_ok = port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p > 0);
        if !port_ok {
            problems.push(format!(
                "SSH_PORT {} is not a port number: set it to the server's ssh port alone, 1 to 65535 (22 when unset)",
                layout::escaped(&port)
            ));
        }
        // Each goes into the generated ssh config: a bad value is named (escaped) and never written.
        let mut checked = |name: &str, what: &str, example: &str| -> String {
            let Some(value) = env.get(name) else { return ["$", name].concat() };
            match config_word_problem(value) {
                None => value.to_string(),
                Some(why) => {
                    problems.push(format!(
                        "{name} {} is not {what}: {why}; set it to {what} alone (e.g. {example})",
                        layout::escaped(value)
                    ));
                    ["$", name].concat()
                }
            }
        };
        let host = checked("SSH_HOST", "a host name or IP address", "203.0.113.9");
        let user = checked("SSH_USER", "a user name on the server", "deploy");
        let target = Target { host, port: if port_ok { port } else { "22".into() }, user };
        if let Some(why) = env.get("SSH_PRIVATE_KEY").and_then(key_problem) {
            problems.push(why.to_string());
        }
        if unpinned {
            // Said separately because the fix is not obvious.
            problems.push(format!(
                "SSH_KNOWN_HOSTS is empty: the server's host key must be pinned. Get it with \
                 `ssh-keyscan -p {port} {host}`, check its fingerprint against the server's own \
                 (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the server), and store the lines as \
                 SSH_KNOWN_HOSTS",
                port = target.port,
                host = if target.host.starts_with('$') { "<host>" } else { &target.host },
            ));
        }
        target
    }
}

/// What is wrong with SSH_PRIVATE_KEY's contents that OpenSSH would only report as a failed login
/// (and the login's hint would blame authorized_keys), if anything. The value is never shown.
fn key_problem(key: &str) -> Option<&'static str> {
    if !key.contains("-----BEGIN") {
        if !key.trim().contains(char::is_whitespace) && (key.contains('/') || key.starts_with('~')) {
            return Some(
                "SSH_PRIVATE_KEY holds a file path, but it must hold the key itself: set it to the file's contents, \
                 e.g. SSH_PRIVATE_KEY=\"$(cat ~/.ssh/id_ed25519)\"",
            );
        }
        return Some(
            "SSH_PRIVATE_KEY is not a private key (it has no -----BEGIN ... PRIVATE KEY----- line): set it to the \
             contents of the key file, e.g. SSH_PRIVATE_KEY=\"$(cat ~/.ssh/id_ed25519)\"",
        );
    }
    if key.contains('\r') {
        return Some(
            "SSH_PRIVATE_KEY has Windows line endings (CRLF), which OpenSSH cannot read: store it again with plain \
             line feeds (e.g. from `tr -d '\\r' < key`)",
        );
    }
    None
}

/// Why a value cannot stand as one word of the ssh config (HostName, User), if it cannot.
fn config_word_problem(value: &str) -> Option<&'static str> {
    if value.contains(['\n', '\r']) {
        Some("it holds a line break, which would start a new line of the ssh configuration")
    } else if value.contains(char::is_whitespace) {
        Some("it holds white space, which ends a word of the ssh configuration")
    } else if value.contains(char::is_control) {
        Some("it holds a control character")
    } else if value.starts_with('-') {
        Some("it starts with `-`, which ssh would read as an option")
    } else if value.contains('%') {
        Some("it holds `%`, which ssh expands in its configuration (%h, %u, ...)")
    } else if value.contains(['"', '\'', '#', '\\', '=']) {
        Some("it holds a quote, `#`, `\\` or `=`, which the ssh configuration reads as syntax")
    } else {
        None
    }
}

/// One open SSH connection to the server. Every remote step goes through [`Server::run`],
/// [`Server::read`] and their kin, which print `ssh … '<remote line>'` via the plan.
pub struct Server<'p, 'a> {
    plan: &'p Plan<'a>,
    pub layout: Layout,
    pub target: Target,
    options: Vec<String>,
    /// Holds known_hosts, the ssh config, the control socket and, only while connecting, the
    /// key; removed on drop, on every exit path that runs destructors (errors and panics
    /// included), and by the watchdog on the others.
    dir: Option<temp::Dir>,
    /// The private key, written to the directory only while a connection opens.
    key: Option<String>,
}

impl<'p, 'a> Server<'p, 'a> {
    /// The one way a task reaches the server. Adds the SSH settings' problems to `problems` (what
    /// the task found wrong before) and refuses with all of them at once, before the server is
    /// touched; a dry run prints them and goes on. Then opens the shared connection and proves the
    /// host is the pinned one.
    pub fn open(plan: &'p Plan<'a>, project: &Project, problems: Vec<String>) -> Result<Server<'p, 'a>> {
        Server::open_with(plan, project, problems, || Ok(Vec::new()))
    }

    /// [`Server::open`], with the task's own checks (`checks`, which returns the problems it
    /// found) run while the connection opens: the seconds of both overlap. Opening a connection
    /// changes nothing on the server, and nothing else is done there unless every check passed.
    pub fn open_beside(
        plan: &'p Plan<'a>,
        project: &Project,
        checks: impl FnOnce() -> Result<Vec<String>>,
    ) -> Result<Server<'p, 'a>> {
        Server::open_with(plan, project, Vec::new(), checks)
    }

    /// Opens the connection while `checks` run, unless `known` has problems already.
    fn open_with(
        plan: &'p Plan<'a>,
        project: &Project,
        known: Vec<String>,
        checks: impl FnOnce() -> Result<Vec<String>>,
    ) -> Result<Server<'p, 'a>> {
        let mut settings = Vec::new();
        let target = Target::from_env(&project.env, &mut settings);
        // (Nothing to connect to with settings that are wrong: the target is kept for a dry run.)
        let (server, connecting, target) = if settings.is_empty() && known.is_empty() {
            let server = Server::prepare(plan, project, target)?;
            let connecting = server.start_connect()?;
            (Some(server), connecting, None)
        } else {
            (None, None, Some(target))
        };
        let mut problems = known;
        problems.extend(checks()?);
        problems.extend(settings);
        let connected = connecting.map(Beside::wait);
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(|p| ["  - ", p].concat()).collect();
            if !plan.is_dry_run() {
                bail!(
                    "preflight found {} problem(s); nothing on the server was touched:\n{}",
                    problems.len(),
                    list.join("\n")
                );
            }
            plan.note(&["preflight would fail:\n", &list.join("\n")].concat());
        }
        let server = match server {
            Some(server) => server,
            // Only a dry run gets here with settings that are wrong.
            None => Server::prepare(plan, project, target.expect("kept when not connecting"))?,
        };
        if let Some(connected) = connected {
            server.connected(connected)?;
        }
        Ok(server)
    }

    /// Writes the connection's files but the key: pinned host key, ssh config; and starts the
    /// watchdog that removes them, and ends the connection, once this process has ended, however
    /// it ends. What runs killed earlier left is removed first.
    fn prepare(plan: &'p Plan<'a>, project: &Project, target: Target) -> Result<Server<'p, 'a>> {
        let layout = Layout::new(&project.settings);
        let (dir, base) = if plan.is_dry_run() {
            (None, "$TMP".to_string())
        } else {
            temp::sweep();
            let dir = temp::Dir::new("ssh").context("creating a private temp dir for the ssh connection")?;
            let base = dir.path().display().to_string();
            (Some(dir), base)
        };
        if let Some(dir) = &dir {
            // OpenSSH rejects known_hosts without its final newline; secrets stores often strip it.
            if let Some(known) = project.env.get("SSH_KNOWN_HOSTS") {
                write_private(&dir.path().join("known_hosts"), &[known.trim_end(), "\n"].concat())?;
            }
        }
        let config = ssh_config(&base, &target);
        match &dir {
            Some(dir) => std::fs::write(dir.path().join("config"), &config)?,
            None => plan.note(
                &["$TMP/config, the ssh client configuration used below:\n", config.trim_end()].concat(),
            ),
        }
        plan.watch(Cmd::script("watchdog.sh", WATCHDOG_SH).arg(std::process::id().to_string()).arg(&base))?;
        let options = vec!["-F".to_string(), [base.as_str(), "/config"].concat()];
        let key = project.env.get("SSH_PRIVATE_KEY").map(|k| [k.trim_end(), "\n"].concat());
        Ok(Server { plan, layout, target, options, dir, key })
    }

    /// `ssh <options> lattice-server '<remote line>'`: ssh hands the line to the server's shell,
    /// which parses it once more — the line's words are quoted for exactly that.
    fn ssh(&self, remote: &Line) -> Cmd {
        Cmd::of("ssh").args(&self.options).arg(HOST_ALIAS).arg(remote.to_string())
    }

    /// A step run in the deploy directory.
    fn in_root(&self, step: Line) -> Line {
        Cmd::of("cd").arg(&self.layout.root).and(step)
    }

    /// Opens the shared connection. The key is written (0600, in the 0700 directory) just before
    /// and removed right after, whether it worked or not: every later step rides on the
    /// connection, so not even a `kill -9` of this process can leave the key behind for longer
    /// than the connection takes to open (and then the watchdog removes it).
    fn connect(&self) -> Result<()> {
        match self.start_connect()? {
            Some(connecting) => self.connected(connecting.wait()),
            None => Ok(()),
        }
    }

    /// Starts opening the shared connection (`None` in a dry run); the key is removed the moment
    /// the attempt ends.
    fn start_connect(&self) -> Result<Option<Beside>> {
        let key = self.dir.as_ref().map(|dir| dir.path().join("id"));
        if let (Some(path), Some(key)) = (&key, &self.key) {
            write_private(path, key)?;
        }
        let started = self.plan.beside(self.ssh(&Cmd::of("true").into()), move || {
            if let Some(path) = &key {
                let _ = std::fs::remove_file(path);
            }
        });
        if started.is_err() {
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_file(dir.path().join("id"));
            }
        }
        started
    }

    /// The outcome of opening the connection, explained when it failed.
    fn connected(&self, outcome: Result<()>) -> Result<()> {
        outcome.with_context(|| {
            format!(
                "cannot reach {user}@{host} on port {port}: check that the host is up and SSH_HOST/SSH_PORT/SSH_USER \
                 are right; \"Host key verification failed\" means SSH_KNOWN_HOSTS does not hold this server's key \
                 (`ssh-keyscan -p {port} {host}`, then verify the fingerprint); \"Permission denied\" means \
                 SSH_PRIVATE_KEY is not in the user's ~/.ssh/authorized_keys",
                user = self.target.user,
                port = self.target.port,
                host = self.target.host,
            )
        })
    }

    /// Opens the shared connection again after it dropped (a step failed with ssh's own exit
    /// status 255): the dead master's socket is removed, and the key written again just for the
    /// connect.
    pub fn reconnect(&self) -> Result<()> {
        let said = "the connection to the server dropped: connect again";
        self.plan.note(said);
        if !self.plan.is_verbose() && !self.plan.is_dry_run() {
            // Said even when commands are not: the run takes longer, and why.
            eprintln!("{said}");
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(dir.path().join("cm"));
        }
        self.connect()
    }

    pub fn plan(&self) -> &'p Plan<'a> {
        self.plan
    }

    /// Runs a step in the deploy directory, output to the terminal.
    pub fn run(&self, step: impl Into<Line>) -> Result<()> {
        self.plan.run(self.ssh(&self.in_root(step.into())))
    }

    /// Runs a step in the deploy directory, its output shown as it comes, verbose or not.
    pub fn run_shown(&self, step: impl Into<Line>) -> Result<()> {
        self.plan.run_shown(self.ssh(&self.in_root(step.into())))
    }

    /// Runs a step in the ssh user's home (it may come before the deploy directory exists) with
    /// `input` on its stdin.
    pub fn run_at_home_with_input(&self, step: impl Into<Line>, input: impl AsRef<[u8]>) -> Result<()> {
        self.plan.run(self.ssh(&step.into()).stdin(input))
    }

    /// Runs a step in the deploy directory and returns its stdout.
    pub fn read(&self, step: impl Into<Line>) -> Result<String> {
        self.plan.read(self.ssh(&self.in_root(step.into())))
    }

    /// Runs a step in the deploy directory with `input` on its stdin (never printed) and returns
    /// its stdout.
    pub fn read_with_input(&self, step: impl Into<Line>, input: impl AsRef<[u8]>) -> Result<String> {
        self.plan.read(self.ssh(&self.in_root(step.into())).stdin(input))
    }

    /// Runs a step in the ssh user's home and returns its stdout.
    pub fn read_at_home(&self, step: impl Into<Line>) -> Result<String> {
        self.plan.read(self.ssh(&step.into()))
    }

    /// Starts a long-lived step in the deploy directory (the lock's session).
    fn spawn_at_home(&self, step: Line) -> Result<Option<std::process::Child>> {
        self.plan.spawn(self.ssh(&step))
    }

    /// The sha `current` points at, if any. Whatever else the link holds is refused (it would
    /// otherwise reach the commands built from it).
    pub fn current(&self) -> Result<Option<String>> {
        let link = self.layout.path("current");
        let out = self.read_at_home(Cmd::of("readlink").arg(link).without_errors().or(Cmd::of("true")))?;
        if self.plan.is_dry_run() {
            return Ok(Some("<current sha>".into()));
        }
        current_release(&out)
    }

    /// `deploys.log` as read back (empty when there is none yet), every line's sha checked.
    pub fn history(&self) -> Result<Vec<HistoryLine>> {
        let text = self.read(Cmd::of("cat").arg(HISTORY).without_errors().or(Cmd::of("true")))?;
        if self.plan.is_dry_run() {
            return Ok(Vec::new());
        }
        history::parse_checked(&text)
    }

    /// `current`, the release directories and the history in one round trip (see
    /// [`Server::current`] and [`Server::history`]).
    pub fn state(&self) -> Result<State> {
        const SEPARATOR: &str = "--- lattice ---";
        let out = self.read(
            Cmd::of("readlink current")
                .without_errors()
                .or(Cmd::of("true"))
                .then(Cmd::of("echo").arg(SEPARATOR))
                .then(Cmd::of("ls -1 releases").without_errors().or(Cmd::of("true")))
                .then(Cmd::of("echo").arg(SEPARATOR))
                .then(Cmd::of("cat").arg(HISTORY).without_errors().or(Cmd::of("true"))),
        )?;
        if self.plan.is_dry_run() {
            return Ok(State {
                current: Some("<current sha>".into()),
                releases: Vec::new(),
                history: Vec::new(),
            });
        }
        let mut parts = [String::new(), String::new(), String::new()];
        let mut at = 0;
        for line in out.lines() {
            if line == SEPARATOR && at < 2 {
                at += 1;
            } else {
                parts[at].push_str(line);
                parts[at].push('\n');
            }
        }
        if at < 2 {
            bail!("the server's answer about its releases is cut short: {}", layout::printable(&out));
        }
        let [current, releases, history] = &parts;
        Ok(State {
            current: current_release(current)?,
            releases: release_names(releases)?,
            history: history::parse_checked(history)?,
        })
    }

    /// Pulls a release's image unless the server has it, in one round trip; from a private
    /// registry with the deploy's login (the password on stdin) through a Docker config of this
    /// pull alone (pull.sh). Says which it was.
    pub fn pull(&self, env: &Env, sha: &str) -> Result<String> {
        let image = self.layout.image(sha);
        let present = "on the server already";
        let have = Cmd::of("docker image inspect").arg(&image).silent().and(Cmd::of("echo").arg(present));
        let (step, password) = match (env.get("REGISTRY_USER"), env.get("REGISTRY_PASSWORD")) {
            (Some(user), Some(password)) => (
                have.or(Cmd::script("pull.sh", PULL_SH)
                    .arg(registry::host(&self.layout.settings.image))
                    .arg(user)
                    .arg(&image)),
                password.as_bytes().to_vec(),
            ),
            _ => (
                have.or(self.layout.compose(sha, &["pull", "--policy", "missing", "--quiet", "bot"])),
                Vec::new(),
            ),
        };
        let out = self.read_with_input(step, password)?;
        Ok(if out.trim() == present { format!("{image} {present}") } else { format!("pulled {image}") })
    }

    /// The schema facts of a rollback from the image of `current` to that of `target`, in one
    /// round trip: the target image's label `head_label`, the current image's label
    /// `compatible_label`, and the applied migrations (`None` when they cannot be read).
    pub fn schema(
        &self,
        target: &str,
        head_label: &str,
        current: &str,
        compatible_label: &str,
    ) -> Result<Schema> {
        let script = Cmd::script("schema.sh", SCHEMA_SH)
            .arg(self.layout.image(target))
            .arg(head_label)
            .arg(self.layout.image(current))
            .arg(compatible_label)
            .arg(&self.layout.settings.compose_project);
        let out = self.read(script)?;
        let mut parts = out.split("--- lattice ---\n").skip(1).map(|p| p.trim().to_string());
        let (head, compatible, applied) =
            (parts.next().unwrap_or_default(), parts.next().unwrap_or_default(), parts.next());
        let applied = applied.filter(|a| !a.ends_with("psql failed") && !self.plan.is_dry_run());
        Ok(Schema { head, compatible, applied })
    }

    /// Refuses to go on when the server lacks Compose v2 or its `.env` lacks an app variable
    /// (checked by name; values never leave the server). One round trip.
    pub fn require_app_env(&self) -> Result<()> {
        let env = self.layout.path(".env");
        let names = r"s/^\(export \)\{0,1\}\([A-Za-z_][A-Za-z0-9_]*\)=..*$/\2/p";
        let provider = r"s/^\(export \)\{0,1\}LLM_PROVIDER=/LLM_PROVIDER=/p";
        let out = self.read_at_home(
            Cmd::of("docker compose version --short").without_errors().or(Cmd::of("echo none")).then(
                Cmd::of("test -f")
                    .arg(&env)
                    .and(Cmd::of("echo has-env"))
                    .and(Cmd::of("sed -n").arg(names).arg(&env))
                    .and(Cmd::of("echo provider:"))
                    .and(Cmd::of("sed -n").arg(provider).arg(&env))
                    .or(Cmd::of("true")),
            ),
        )?;
        if self.plan.is_dry_run() {
            return Ok(());
        }
        let mut lines = out.lines();
        let compose = lines.next().unwrap_or("none").trim();
        if compose == "none" || compose.starts_with('1') {
            bail!(
                "the server has no Docker Compose v2 for user {}: install it there (`apt-get install \
                 docker-compose-plugin` from Docker's apt repository) and make sure the user is in the `docker` group",
                self.target.user
            );
        }
        let hint = "write it with `cargo xtask secrets` (from your environment or CI secrets)";
        match ServerEnv::parse(&lines.collect::<Vec<_>>().join("\n")) {
            None => bail!("the server has no {}/.env: {hint}", self.layout.root),
            Some(ServerEnv { names, provider }) => {
                let missing: Vec<&str> = required_app_vars(provider.as_deref())
                    .into_iter()
                    .filter(|n| !names.iter().any(|m| m == n))
                    .collect();
                if !missing.is_empty() {
                    bail!("the server's .env lacks {}: {hint}", missing.join(", "));
                }
            }
        }
        Ok(())
    }

    /// Writes the app's `.env` from `content` (sent on stdin, never printed): names already set
    /// keep their values unless `overwrite`.
    pub fn write_env(&self, content: &str, overwrite: bool) -> Result<()> {
        let mode = if overwrite { "overwrite" } else { "keep" };
        let script = Cmd::script("write_env.sh", WRITE_ENV_SH).arg(&self.layout.root).arg(mode);
        self.run_at_home_with_input(script, content)
    }
}

/// A rollback's schema facts, as read back by [`Server::schema`]: label values and the applied
/// migrations' versions as text.
pub struct Schema {
    pub head: String,
    pub compatible: String,
    pub applied: Option<String>,
}

/// What the server runs and keeps, as read back by [`Server::state`].
pub struct State {
    pub current: Option<String>,
    pub releases: Vec<String>,
    pub history: Vec<HistoryLine>,
}

/// The release a `readlink current` output names: `None` when there is no link yet.
fn current_release(readlink: &str) -> Result<Option<String>> {
    let target = readlink.strip_suffix('\n').unwrap_or(readlink);
    if target.is_empty() {
        return Ok(None);
    }
    match target.strip_prefix("releases/") {
        Some(sha) => Ok(Some(Sha::from_server(sha, layout::CURRENT_LINK)?.as_str().to_string())),
        None => Err(layout::not_a_sha(layout::CURRENT_LINK, target)),
    }
}

/// The names `ls -1 releases` lists, each a sha.
fn release_names(listed: &str) -> Result<Vec<String>> {
    listed
        .lines()
        .filter(|l| !l.is_empty())
        .map(|name| Ok(Sha::from_server(name, layout::RELEASES_DIR)?.as_str().to_string()))
        .collect()
}

/// Pulls with registry credentials that live only for the pull (see the script's header).
const PULL_SH: &str = include_str!("pull.sh");
/// A rollback's schema facts (see the script's header).
const SCHEMA_SH: &str = include_str!("schema.sh");

/// Writes the server's `.env` (see the script's header).
pub const WRITE_ENV_SH: &str = include_str!("write_env.sh");
/// Cleans up after the connection once the xtask has ended (see the script's header).
const WATCHDOG_SH: &str = include_str!("watchdog.sh");

/// Whether a remote step failed in ssh itself rather than in the command: OpenSSH exits with 255
/// when the connection could not be made or dropped (xshell's error ends with the status).
pub fn connection_lost(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        let text = e.to_string();
        // xshell's error, or a quiet step's (plan.rs).
        text.ends_with("`: 255") || text.starts_with("step failed (exit status: 255)")
    })
}

impl Drop for Server<'_, '_> {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            // Ends the shared connection now rather than after ControlPersist (nothing to end
            // when it never opened). Not a step of the plan: it changes nothing on either side.
            let _ = std::process::Command::new("ssh")
                .arg("-F")
                .arg(dir.path().join("config"))
                .args(["-O", "exit", HOST_ALIAS])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The ssh client configuration of one connection: the host key pinned, the key given, the
/// connection shared. Written to a file so every printed step reads `ssh -F <file> lattice-server …`.
fn ssh_config(dir: &str, target: &Target) -> String {
    let lines = [
        ["Host ", HOST_ALIAS].concat(),
        ["  HostName ", &target.host].concat(),
        ["  Port ", &target.port].concat(),
        ["  User ", &target.user].concat(),
        ["  IdentityFile ", dir, "/id"].concat(),
        "  IdentitiesOnly yes".into(),
        ["  UserKnownHostsFile ", dir, "/known_hosts"].concat(),
        "  GlobalKnownHostsFile /dev/null".into(),
        "  StrictHostKeyChecking yes".into(),
        "  BatchMode yes".into(),
        "  ConnectTimeout 10".into(),
        "  ServerAliveInterval 15".into(),
        "  ControlMaster auto".into(),
        ["  ControlPath ", dir, "/cm"].concat(),
        // The master ends 10 s after its last client: a killed run's does not stay logged in.
        "  ControlPersist 10".into(),
    ];
    lines.iter().map(|l| [l.as_str(), "\n"].concat()).collect()
}

fn write_private(path: &Path, content: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(content.as_bytes())?;
    Ok(())
}

/// Who runs this deploy, for the lock and the history: the CI actor or `user@host`, without
/// white space.
pub fn who(env: &Env) -> String {
    let who = if let Some(actor) = env.get("GITHUB_ACTOR") {
        [actor, "@github-actions"].concat()
    } else {
        let user = env.get("USER").or(env.get("LOGNAME")).unwrap_or("unknown");
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        [user, "@", host.trim()].concat()
    };
    who.chars().map(|c| if c.is_whitespace() { '_' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_server_env_gives_names_and_a_quoted_provider_unquoted() {
        let out = "has-env\nDISCORD_TOKEN\nLLM_PROVIDER\nprovider:\nLLM_PROVIDER=openrouter\nLLM_PROVIDER='placeholder'\n";
        let env = ServerEnv::parse(out).unwrap();
        assert_eq!(env.names, ["DISCORD_TOKEN", "LLM_PROVIDER"]);
        assert_eq!(env.provider.as_deref(), Some("placeholder"));
        assert!(!required_app_vars(env.provider.as_deref()).contains(&"OPENROUTER_API_KEY"));
        let env = ServerEnv::parse("has-env\nDISCORD_TOKEN\nprovider:\n").unwrap();
        assert_eq!(env.provider, None);
        assert!(required_app_vars(env.provider.as_deref()).contains(&"OPENROUTER_API_KEY"));
        assert_eq!(ServerEnv::parse(""), None);
    }

    #[test]
    fn missing_ssh_settings_are_all_listed_with_how_to_get_the_host_key() {
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-material\n-----END OPENSSH PRIVATE KEY-----\n";
        let env = Env::from_pairs([("SSH_HOST", "203.0.113.9"), ("SSH_PRIVATE_KEY", key)]);
        let mut problems = vec![];
        Target::from_env(&env, &mut problems);
        let text = problems.join("\n");
        assert!(text.contains("missing environment variables: SSH_USER (set"), "{text}");
        assert!(text.contains("ssh-keyscan -p 22 203.0.113.9"), "{text}");
        // Said once, with how to fill it.
        assert_eq!(text.matches("SSH_KNOWN_HOSTS").count(), 2, "{text}");
        assert_eq!(problems.len(), 2, "{text}");
    }

    #[test]
    fn a_key_path_a_crlf_key_or_no_key_is_refused_saying_so_without_showing_it() {
        let problem = |key: &str| {
            let env = Env::from_pairs([("SSH_PRIVATE_KEY", key)]);
            let mut problems = vec![];
            Target::from_env(&env, &mut problems);
            let text = problems.join("\n");
            assert!(!text.contains("secret-material"), "{text}");
            text
        };
        assert!(problem("~/.ssh/id_ed25519").contains("SSH_PRIVATE_KEY holds a file path"));
        assert!(problem("/home/ann/.ssh/id_ed25519").contains("holds a file path"));
        let crlf =
            "-----BEGIN OPENSSH PRIVATE KEY-----\r\nsecret-material\r\n-----END OPENSSH PRIVATE KEY-----\r\n";
        assert!(problem(crlf).contains("Windows line endings (CRLF)"));
        assert!(problem("secret-material").contains("is not a private key"));
        let good =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-material\n-----END OPENSSH PRIVATE KEY-----\n";
        assert!(!problem(good).contains("SSH_PRIVATE_KEY"), "{}", problem(good));
    }

    #[test]
    fn a_host_or_user_that_would_add_ssh_config_lines_is_refused_escaped() {
        let base =
            [("SSH_PRIVATE_KEY", "-----BEGIN OPENSSH PRIVATE KEY-----\nk\n"), ("SSH_KNOWN_HOSTS", "h k")];
        let check = |host: &str, user: &str, port: &str| {
            let env =
                Env::from_pairs(base).with("SSH_HOST", host).with("SSH_USER", user).with("SSH_PORT", port);
            let mut problems = vec![];
            let target = Target::from_env(&env, &mut problems);
            (target, problems.join("\n"))
        };
        let (target, text) = check("host\nProxyCommand touch /tmp/pwned", "deploy", "22");
        assert!(
            text.starts_with(
                "SSH_HOST \"host\\nProxyCommand touch /tmp/pwned\" is not a host name or IP address: it holds a \
                 line break"
            ),
            "{text}"
        );
        let config = ssh_config("/tmp/x", &target);
        assert!(!config.contains("ProxyCommand"), "{config}");
        assert!(config.contains("HostName $SSH_HOST\n"), "{config}");
        let (_, text) = check("h", "-oProxyCommand=x", "22");
        assert!(
            text.contains(
                "SSH_USER \"-oProxyCommand=x\" is not a user name on the server: it starts with `-`"
            ),
            "{text}"
        );
        let (_, text) = check("%h.example", "u s", "22");
        assert!(
            text.contains("SSH_HOST \"%h.example\" is not a host name or IP address: it holds `%`"),
            "{text}"
        );
        assert!(
            text.contains("SSH_USER \"u s\" is not a user name on the server: it holds white space"),
            "{text}"
        );
        let (_, text) = check("h", "u", "+22");
        assert!(text.contains("SSH_PORT \"+22\" is not a port number"), "{text}");
        let (_, text) = check("h", "u", "22\nProxyCommand x");
        assert!(text.contains("SSH_PORT \"22\\nProxyCommand x\" is not a port number"), "{text}");
        let (target, text) = check("2001:db8::1", "deploy.user_1", "2222");
        assert_eq!(text, "");
        assert_eq!(
            (target.host.as_str(), target.user.as_str(), target.port.as_str()),
            ("2001:db8::1", "deploy.user_1", "2222")
        );
    }

    #[test]
    fn what_the_server_reads_back_must_be_release_shas() {
        assert_eq!(current_release("").unwrap(), None);
        assert_eq!(current_release("releases/abc1234\n").unwrap().as_deref(), Some("abc1234"));
        let err = current_release("releases/x';cmd;'\n").unwrap_err().to_string();
        assert!(
            err.starts_with("the server's `current` link holds \"x\\';cmd;\\'\", not a release sha"),
            "{err}"
        );
        let err = current_release("/etc\n").unwrap_err().to_string();
        assert!(err.contains("holds \"/etc\""), "{err}");
        assert_eq!(release_names("abc1234\ndef5678\n").unwrap(), vec!["abc1234", "def5678"]);
        let err = release_names("abc1234\nx';cmd;'\n").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "the server's releases/ directory holds \"x\\';cmd;\\'\", not a release sha: only"
            ),
            "{err}"
        );
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
    fn the_private_key_file_is_owner_only() {
        let sh = xshell::Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let path = dir.path().join("id");
        write_private(&path, "k").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn the_env_file_keeps_set_values_unless_told_and_is_owner_only() {
        let sh = xshell::Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let root = dir.path().join("deploy");
        let write = |content: &str, mode: &str| {
            let mut child = std::process::Command::new("sh")
                .args(["-c", WRITE_ENV_SH, "write_env.sh"])
                .arg(&root)
                .arg(mode)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(content.as_bytes()).unwrap();
            assert!(child.wait().unwrap().success());
            std::fs::read_to_string(root.join(".env")).unwrap()
        };
        assert_eq!(write("A=1\nB=2\n", "keep"), "A=1\nB=2\n");
        assert_eq!(write("B=3\nC=4\n", "keep"), "A=1\nB=2\nC=4\n");
        assert_eq!(write("B=5\n", "overwrite"), "A=1\nC=4\nB=5\n");
        let mode = std::fs::metadata(root.join(".env")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!root.join(".env.incoming").exists());
    }
}
