//! The deploy protocol end to end, with real parts: the server is `cargo xtask sandbox` — Debian's
//! `docker-registry` on 127.0.0.1:5000, OpenSSH's `sshd` on 127.0.0.1:2222 (as root, a non-root
//! user in the `docker` group), the Discord stand-in — the real bot image built from a clone of
//! this repository, real Compose v2 and Postgres. The xtask gets the server exactly as CI secrets
//! give it: `SSH_*` variables holding key contents, read from what `sandbox up` printed.
//!
//! A runner of its own (`harness = false`): the expensive fixture — the sandbox, the clone,
//! commit A's image built and pushed (as CI's build job) — is set up once, then every scenario
//! below runs in order on that one server and is reported on its own, so one failure does not
//! hide the others. Beside them, in a thread, the sandbox's own scenario uses the same server as a
//! new operator would (its own clone, deploy directory and compose project); once all are done,
//! `sandbox down` must leave nothing behind. Scenarios build on each other as a server's life does (A is
//! deployed, then B released, …): a scenario that needs what an earlier one failed to leave fails
//! too, naming it. Filters work as with libtest: `cargo test --test e2e_deploy -- NAME` runs the
//! scenarios whose name contains NAME, `--skip NAME` leaves them out.
//!
//! Flow: `deploy --sha A` (CI's deploy job) → healthy, migrated, `status` says A; commit B (adds a
//! migration) with `release` → healthy; `rollback` → A serves again; `rollback --sha B` → B; the
//! history lists the four. Then deploy safety: a held lock, a failing migration (C), an unhealthy
//! release switched back (D), a rollback refused below the database's schema (E) and allowed with
//! --force (allowed without it when the newer migrations are declared backward-compatible, A below
//! B); `--lock-wait` waiting for a holder and giving up naming it; bad input (malformed sha, no
//! image, unknown rollback sha, missing variables, unreachable host, wrong host key, broken
//! overlay), each refused with the server unchanged; a deploy killed (SIGKILL of its process group)
//! after pull, during migrate, during switch and during the health wait, each leaving one
//! consistent release running and the lock free, and each completed by running the same deploy
//! again. Releases past E are E's image retagged: no further builds. Last, every byte of output,
//! the containers' logs and the server's files (but `.env`) are scanned for the secret values.
//!
//! Needs `openssh-server` and `docker-registry`, and Docker as the user running it (as root, the
//! sandbox creates the server's ssh user).

use std::{
    collections::BTreeMap,
    io::Write,
    net::{TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Output, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::{free_port, git, run, sandbox_down, sandbox_up, show, stdout, workspace};
#[path = "common/standin.rs"]
mod standin;

#[path = "e2e_deploy/stream.rs"]
mod stream;
use stream::e2e_a_message_stream_is_answered_exactly_once_through_deploys_rollbacks_and_crashes;

/// Distinctive fake secrets: if any of them shows up anywhere, it leaked.
const SECRETS: &[(&str, &str)] = &[
    ("DISCORD_TOKEN", "e2e-discord-token-Zq81xVb"),
    ("OPENROUTER_API_KEY", "e2e-openrouter-key-Kp42mWd"),
    ("POSTGRES_PASSWORD", "e2e-postgres-pass-Hy77rTn"),
];

/// `LATTICE_E2E_SSH_PORT` and `LATTICE_E2E_REGISTRY_PORT` move the sandbox off 2222 and 5000
/// (to run beside another sandbox).
fn moved_ports() -> Vec<String> {
    let mut args = Vec::new();
    for (var, flag) in
        [("LATTICE_E2E_SSH_PORT", "--ssh-port"), ("LATTICE_E2E_REGISTRY_PORT", "--registry-port")]
    {
        if let Ok(port) = std::env::var(var) {
            args.extend([flag.to_string(), port]);
        }
    }
    args
}

fn home_of(user: &str) -> PathBuf {
    let entry = stdout(Command::new("getent").args(["passwd", user]));
    PathBuf::from(entry.split(':').nth(5).unwrap())
}

struct Harness {
    dir: PathBuf,
    clone: PathBuf,
    home: PathBuf,
    deploy_path: String,
    project: String,
    image: String,
    /// The sandbox's Discord stand-in, container and image: `<its compose project>-standin`.
    standin: String,
    env: Vec<(String, String)>,
    /// Every byte the xtask printed, for the secret scan.
    transcript: String,
    private_key: String,
    /// The commits of the scenarios so far, by name (`a`, `b`, …), and `wrong_key`.
    facts: BTreeMap<&'static str, String>,
    /// Whether dropping it removes its server state (the sandbox's own is left to `sandbox down`).
    cleans_up: bool,
}

impl Harness {
    /// A clone in `dir` (made unless there) driving the sandbox with `env` (as printed by
    /// `sandbox up`), deploying to `deploy_path` as compose project `project`.
    fn new(dir: PathBuf, env: Vec<(String, String)>, deploy_path: &str, project: &str) -> Harness {
        let clone = dir.join("clone");
        if !clone.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            run(Command::new("git")
                .args(["clone", "--quiet", "--no-hardlinks"])
                .arg(workspace())
                .arg(&clone));
        }
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
        let get_or_empty =
            |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
        Harness {
            home: home_of(&get("SSH_USER")),
            image: get("LATTICE_IMAGE"),
            private_key: get("SSH_PRIVATE_KEY"),
            clone,
            dir,
            deploy_path: deploy_path.to_string(),
            project: project.to_string(),
            standin: format!("{}-standin", get_or_empty("LATTICE_COMPOSE_PROJECT")),
            env,
            transcript: String::new(),
            facts: BTreeMap::new(),
            cleans_up: true,
        }
    }

    fn env_var(&self, name: &str) -> String {
        self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// The app's variables, as CI secrets would hold them; the bot talks to the Discord stand-in
    /// (reached from the compose network through the docker0 bridge address) and the placeholder LLM.
    fn app_env(&mut self) {
        for (k, v) in SECRETS {
            self.env.push((k.to_string(), v.to_string()));
        }
        let postgres_image =
            std::env::var("POSTGRES_IMAGE").unwrap_or_else(|_| "postgres:16-bookworm".into());
        self.env.extend(
            [
                ("DISCORD_GUILD_ID", "100000000000000001".to_string()),
                ("DISCORD_MAIN_CHANNEL_ID", "100000000000000002".to_string()),
                ("DISCORD_DREAM_CHANNEL_ID", "100000000000000003".to_string()),
                ("POSTGRES_USER", "lattice".to_string()),
                ("POSTGRES_DB", "lattice".to_string()),
                ("POSTGRES_IMAGE", postgres_image),
                ("LLM_PROVIDER", "placeholder".to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
    }

    fn xtask(&mut self, args: &[&str]) -> Output {
        self.xtask_with(args, &[])
    }

    /// The xtask in the clone, with the server's settings and nothing of the caller's registry.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(args).current_dir(&self.clone).stdin(Stdio::null());
        for name in ["REGISTRY_USER", "REGISTRY_PASSWORD", "GITHUB_ACTIONS", "SSH_PORT"] {
            cmd.env_remove(name);
        }
        cmd.env("LATTICE_IMAGE", &self.image)
            .env("LATTICE_DEPLOY_PATH", &self.deploy_path)
            .env("LATTICE_COMPOSE_PROJECT", &self.project)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn xtask_with(&mut self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let out = self.command(args).envs(extra.iter().copied()).output().unwrap();
        self.transcript.push_str(&format!("$ cargo xtask {}\n{}\n", args.join(" "), show(&out)));
        out
    }

    fn xtask_ok(&mut self, args: &[&str]) -> String {
        let out = self.xtask(args);
        assert!(out.status.success(), "cargo xtask {} failed:\n{}", args.join(" "), show(&out));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn git(&self, args: &[&str]) -> String {
        git(&self.clone, args)
    }

    /// Another deploy's lock, held the way the xtask holds it: `flock` in an ssh session that lasts
    /// as long as its stdin.
    fn hold_lock(&self, holder: &str) -> HeldLock {
        let d = &self.dir;
        let known_hosts = d.join("known_hosts");
        let pinned = self.env.iter().find(|(k, _)| k == "SSH_KNOWN_HOSTS").unwrap().1.clone();
        std::fs::write(&known_hosts, format!("{pinned}\n")).unwrap();
        let key = d.join("client_key");
        std::fs::write(&key, format!("{}\n", self.private_key.trim_end())).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let script = format!(
            "cd {} && exec flock -n .lock sh -c 'echo \"{holder} since then\" > .lock.holder; echo locked; exec cat >/dev/null'",
            self.deploy_path
        );
        let mut child = Command::new("ssh")
            .args(["-i"])
            .arg(d.join("client_key"))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", &self.env_var("SSH_PORT")])
            .arg(format!("{}@127.0.0.1", self.env_var("SSH_USER")))
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked", "could not take the lock for the test");
        HeldLock(child)
    }

    /// A fact an earlier scenario left (a commit's sha), or a failure naming what is missing.
    fn fact(&self, name: &str) -> String {
        self.facts.get(name).cloned().unwrap_or_else(|| {
            panic!("an earlier scenario did not leave {name:?} (it failed or was filtered out)")
        })
    }

    /// The highest migration version in the clone's bot/migrations.
    fn schema_head(&self) -> u32 {
        std::fs::read_dir(self.clone.join("bot/migrations"))
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_string_lossy().split('_').next()?.parse::<u32>().ok())
            .max()
            .unwrap()
    }

    fn history(&self) -> Vec<(String, String, String)> {
        self.server_file("deploys.log")
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[1].to_string(), f[2].to_string(), f[4].to_string())
            })
            .collect()
    }

    fn server_file(&self, name: &str) -> String {
        std::fs::read_to_string(self.home.join(&self.deploy_path).join(name)).unwrap_or_default()
    }

    fn container(&self, service: &str) -> String {
        let id = stdout(Command::new("docker").args([
            "ps",
            "--quiet",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            "--filter",
            "label=com.docker.compose.oneoff=False",
        ]));
        assert_eq!(id.lines().count(), 1, "expected one running {service} container, found: {id:?}");
        id
    }

    fn inspect(&self, container: &str, format: &str) -> String {
        stdout(Command::new("docker").args(["inspect", "--format", format, container]))
    }

    /// The container's Docker health once it has one: the switch ends when the new bot leads, which
    /// can be before Docker's first health interval, so `starting` is waited out (bounded).
    fn health(&self, container: &str) -> String {
        for _ in 0..60 {
            let health = self.inspect(container, "{{.State.Health.Status}}");
            if health != "starting" {
                return health;
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        "starting".into()
    }

    fn applied_schema_head(&self) -> String {
        psql(self, "select max(version) from _sqlx_migrations where success")
    }

    /// What a user notices after a switch: the bot container runs that sha's image and is healthy.
    fn assert_serving(&self, sha: &str) {
        let bot = self.container("bot");
        assert_eq!(self.inspect(&bot, "{{.Config.Image}}"), format!("{}:{sha}", self.image));
        assert_eq!(self.health(&bot), "healthy");
        assert_eq!(
            std::fs::read_link(self.home.join(&self.deploy_path).join("current")).unwrap(),
            PathBuf::from(format!("releases/{sha}"))
        );
    }
}

impl Harness {
    /// Runs the xtask in its own process group with `LATTICE_TEST_PAUSE_AT=<step>`, and kills the
    /// whole group (the xtask and its ssh clients) with SIGKILL as soon as it prints the pause
    /// marker of that step. Returns everything it printed.
    fn xtask_killed_at(&mut self, args: &[&str], step: &str) -> String {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut cmd = self.command(args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).env("LATTICE_TEST_PAUSE_AT", step).process_group(0);
        let mut child = cmd.spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let readers: Vec<_> = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .map(|pipe| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            })
        })
        .collect();
        drop(tx);
        let marker = format!("lattice test pause: {step}");
        let mut text = String::new();
        let mut killed = false;
        for line in rx.iter() {
            text.push_str(&line);
            text.push('\n');
            // The whole line: the printed plan quotes the marker inside its commands.
            if !killed && line.trim() == marker {
                run(Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]));
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        for reader in readers {
            reader.join().unwrap();
        }
        self.transcript.push_str(&format!("$ cargo xtask {} (killed at {step})\n{text}\n", args.join(" ")));
        assert!(killed, "the xtask never reached the pause at {step} ({status}):\n{text}");
        text
    }

    /// Runs the xtask in its own process group with `LATTICE_TEST_PAUSE_AT=<step>` and sends the
    /// whole group SIG`signal` (INT: what Ctrl-C at a terminal does) at the pause marker; returns
    /// the xtask's pid once it has ended.
    fn xtask_signalled_at(&mut self, args: &[&str], step: &str, signal: &str) -> u32 {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut child = self
            .command(args)
            .env("LATTICE_TEST_PAUSE_AT", step)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut text = String::new();
        let marker = format!("lattice test pause: {step}");
        for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok) {
            if line.trim() == marker {
                run(Command::new("kill").args([&format!("-{signal}"), "--", &format!("-{pid}")]));
            }
            text.push_str(&line);
            text.push('\n');
        }
        let status = child.wait().unwrap();
        self.transcript
            .push_str(&format!("$ cargo xtask {} (SIG{signal} at {step})\n{text}\n", args.join(" ")));
        assert!(!status.success() && text.contains(&marker), "not interrupted at {step} ({status}):\n{text}");
        pid
    }

    /// Waits (bounded) until nobody holds the deploy lock: a detached switch script may still run.
    fn wait_for_free_lock(&self) {
        let lock = self.home.join(&self.deploy_path).join(".lock");
        run(Command::new("flock").args(["-w", "300"]).arg(&lock).arg("true"));
    }

    /// The server runs exactly one consistent release: one bot container, healthy, running the image
    /// `current/release.env` names; every history line is complete. Returns the current sha.
    fn assert_consistent(&self) -> String {
        let current = std::fs::read_link(self.home.join(&self.deploy_path).join("current")).unwrap();
        let sha = current.to_string_lossy().trim_start_matches("releases/").to_string();
        let release_env = self.server_file("current/release.env");
        let bot = self.container("bot");
        assert_eq!(
            format!("BOT_IMAGE={}", self.inspect(&bot, "{{.Config.Image}}")),
            release_env.trim(),
            "the running bot is not the release `current` points at"
        );
        assert_eq!(self.health(&bot), "healthy");
        for line in self.server_file("deploys.log").lines() {
            assert_eq!(line.split_whitespace().count(), 7, "incomplete history line: {line:?}");
        }
        sha
    }

    /// The server's state a refused command must leave alone.
    fn server_snapshot(&self) -> (String, Option<PathBuf>, Vec<String>) {
        let root = self.home.join(&self.deploy_path);
        let mut releases: Vec<String> = std::fs::read_dir(root.join("releases"))
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect())
            .unwrap_or_default();
        releases.sort();
        (self.server_file("deploys.log"), std::fs::read_link(root.join("current")).ok(), releases)
    }

    /// A new commit whose image is `from` retagged and pushed: a release without a build.
    fn retagged_release(&self, from: &str, name: &str) -> String {
        std::fs::write(self.clone.join("e2e-release.txt"), format!("{name}\n")).unwrap();
        self.git(&["add", "e2e-release.txt"]);
        self.git(&["commit", "--quiet", "-m", name]);
        let sha = self.git(&["rev-parse", "HEAD"]);
        let image = format!("{}:{sha}", self.image);
        run(Command::new("docker").args(["tag", from, &image]));
        run(Command::new("docker").args(["push", "--quiet", &image]));
        sha
    }

    /// Runs a command that must be refused before the server changes; returns its output.
    fn refused(&mut self, args: &[&str], extra: &[(&str, &str)], says: &str) -> String {
        let before = self.server_snapshot();
        let out = self.xtask_with(args, extra);
        let text = show(&out);
        assert!(!out.status.success(), "cargo xtask {} was not refused:\n{text}", args.join(" "));
        assert!(text.contains(says), "cargo xtask {} does not say {says:?}:\n{text}", args.join(" "));
        assert_eq!(self.server_snapshot(), before, "cargo xtask {} changed the server", args.join(" "));
        text
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.cleans_up {
            let label = format!("label=com.docker.compose.project={}", self.project);
            if let Ok(out) = Command::new("docker").args(["ps", "-aq", "--filter", &label]).output() {
                let ids: Vec<String> =
                    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).output();
                }
            }
            let _ = Command::new("docker")
                .args(["rmi", "--no-prune", &format!("lattice-e2e-base:{}", std::process::id())])
                .output();
            let _ =
                Command::new("docker").args(["volume", "rm", &format!("{}_pgdata", self.project)]).output();
            let _ =
                Command::new("docker").args(["network", "rm", &format!("{}_default", self.project)]).output();
            let _ = std::fs::remove_dir_all(self.home.join(&self.deploy_path));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Another deploy's lock (see [`Harness::hold_lock`]): released, by closing its session's stdin,
/// when dropped — also when a scenario fails half-way, so the next one finds the lock free.
struct HeldLock(Child);

impl Drop for HeldLock {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn entry(action: &str, sha: &str, result: &str) -> (String, String, String) {
    (action.to_string(), sha.to_string(), result.to_string())
}

/// The fixture every scenario shares: the sandbox (`cargo xtask sandbox up`: sshd, the registry,
/// the Discord stand-in, all run from a clone), and commit A's image built and pushed as CI's
/// build job does — its local tags then removed, so the server must pull it.
fn fixture(base: &Path) -> (Harness, Vec<(String, String)>) {
    let clone_dir = base.join("main");
    std::fs::create_dir_all(&clone_dir).unwrap();
    let clone = clone_dir.join("clone");
    run(Command::new("git").args(["clone", "--quiet", "--no-hardlinks"]).arg(workspace()).arg(&clone));
    let printed = sandbox_up(&base.join("sandbox"), &clone, &moved_ports());
    // This server's releases go to a directory and compose project of their own, beside the
    // sandbox's (which its own scenario uses).
    let env: Vec<(String, String)> =
        printed.iter().filter(|(k, _)| !k.starts_with("LATTICE_") || k == "LATTICE_IMAGE").cloned().collect();
    let id = std::process::id();
    let mut h =
        Harness::new(clone_dir, env, &format!("lattice-e2e-{id}"), &format!("lattice-e2e-deploy-{id}"));
    let sha_a = h.git(&["rev-parse", "HEAD"]);
    let pushed = h.xtask_ok(&["image", "push"]);
    assert!(pushed.contains(&sha_a), "{pushed}");
    let image_a = format!("{}:{sha_a}", h.image);
    run(Command::new("docker").args(["rmi", "--no-prune", &image_a, &format!("{}:latest", h.image)]));
    h.app_env();
    let project = printed.iter().find(|(k, _)| k == "LATTICE_COMPOSE_PROJECT").unwrap().1.clone();
    h.standin = format!("{project}-standin");
    let wrong_key = std::fs::read_to_string(base.join("sandbox/client_key.pub")).unwrap();
    let wrong_key: Vec<&str> = wrong_key.split_whitespace().take(2).collect();
    h.facts.insert("wrong_key", format!("[127.0.0.1]:{} {}", h.env_var("SSH_PORT"), wrong_key.join(" ")));
    h.facts.insert("a", sha_a);
    (h, printed)
}

/// Bad input is refused before the server changes, with what to do.
fn e2e_an_unknown_commit_is_refused_before_the_server_is_touched(h: &mut Harness) {
    let out = h.xtask(&["deploy", "--sha", &"0".repeat(40)]);
    let text = show(&out);
    assert!(!out.status.success() && text.contains("not a commit of this repository"), "{text}");
    assert!(text.contains("nothing on the server was touched"), "{text}");
    assert!(!h.home.join(&h.deploy_path).join("releases").exists(), "a refused deploy touched the server");
}

/// A fresh server: only Docker and an ssh user. `secrets` writes its .env (with the stand-in's
/// Discord URLs and the local Postgres image, which production never gets without the flag).
fn e2e_secrets_writes_an_owner_only_env_on_a_fresh_server(h: &mut Harness) {
    h.xtask_ok(&["secrets", "--allow-dev-settings"]);
    let env_file = h.home.join(&h.deploy_path).join(".env");
    let mode = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the server's .env must be owner-only");
}

fn e2e_the_dry_run_prints_every_step(h: &mut Harness) {
    let dry = h.xtask_ok(&["--dry-run", "deploy", "--sha", &h.fact("a")]);
    for step in [
        "manifest inspect",
        "flock",
        "pull",
        "bot migrate",
        "mv -T current.new current",
        "--wait",
        "deploys.log",
    ] {
        assert!(dry.contains(step), "the dry-run plan lacks {step:?}:\n{dry}");
    }
}

/// A wrong host key and an unreachable host are refused, saying what to check.
fn e2e_a_wrong_host_key_and_an_unreachable_host_are_refused(h: &mut Harness) {
    let wrong = h.fact("wrong_key");
    let out = h.xtask_with(&["deploy", "--sha", &h.fact("a")], &[("SSH_KNOWN_HOSTS", &wrong)]);
    let text = show(&out);
    assert!(!out.status.success() && text.contains("Host key verification failed"), "{text}");
    assert!(text.contains("SSH_KNOWN_HOSTS does not hold this server's key"), "{text}");
    let out = h.xtask_with(&["status"], &[("SSH_PORT", "1")]);
    let text = show(&out);
    assert!(!out.status.success() && text.contains("cannot reach"), "{text}");
    assert!(!h.home.join(&h.deploy_path).join("releases").exists(), "a refused deploy touched the server");
}

/// CI's deploy job: the server pulls A, migrates, serves it; production containers as they should be.
fn e2e_deploy_pulls_migrates_and_serves(h: &mut Harness) {
    let sha_a = h.fact("a");
    let deployed = h.xtask_ok(&["deploy", "--sha", &sha_a]);
    assert!(deployed.contains("pulled "), "the server did not pull A from the registry:\n{deployed}");
    h.assert_serving(&sha_a);
    assert_eq!(h.applied_schema_head(), h.schema_head().to_string(), "A's migrations are applied");
    assert_eq!(h.health(&h.container("bot")), "healthy");
    let status = h.xtask_ok(&["status"]);
    assert!(status.contains(&format!("current:  {sha_a}")), "{status}");
    assert!(status.contains("bot") && status.contains("healthy"), "{status}");

    // What runs in production: non-root bot with a health check and no source mount; Postgres
    // published on no host port.
    let bot = h.container("bot");
    assert_eq!(h.inspect(&bot, "{{.Config.User}}"), "10001:10001");
    assert_ne!(h.inspect(&bot, "{{if .Config.Healthcheck}}yes{{end}}"), "");
    assert_eq!(h.inspect(&bot, "{{range .Mounts}}{{if eq .Type \"bind\"}}{{.Source}} {{end}}{{end}}"), "");
    let postgres = h.container("postgres");
    assert_eq!(h.inspect(&postgres, "{{range $p, $b := .HostConfig.PortBindings}}{{$p}} {{end}}"), "");
}

/// B: a commit that adds a (backward-compatible) migration, shipped with `release`.
fn e2e_release_builds_pushes_and_deploys_head(h: &mut Harness) {
    let head_b = h.schema_head() + 1;
    let migration = h.clone.join("bot/migrations").join(format!("{head_b:04}_e2e_release_b.sql"));
    let mut file = std::fs::File::create(&migration).unwrap();
    writeln!(file, "-- lattice: backward-compatible\n-- Added by release B of the deploy end-to-end test.\ncreate table e2e_release_b (id bigint primary key);").unwrap();
    h.git(&["add", "bot/migrations"]);
    h.git(&["commit", "--quiet", "-m", "B: add a migration"]);
    let sha_b = h.git(&["rev-parse", "HEAD"]);
    h.xtask_ok(&["release"]);
    h.assert_serving(&sha_b);
    assert_eq!(h.applied_schema_head(), head_b.to_string(), "B's migration is applied");
    h.facts.insert("b", sha_b);
}

/// Rollback without a sha: the previous good release, A, with its own files; no pull, no build.
/// B's migration is declared backward-compatible, so going back below it is allowed, saying why.
fn e2e_rollback_goes_to_the_previous_good_release_or_the_one_named(h: &mut Harness) {
    let (sha_a, sha_b) = (h.fact("a"), h.fact("b"));
    let head_b = h.schema_head();
    let head_a = head_b - 1;
    let rolled = h.xtask_ok(&["rollback"]);
    assert!(!rolled.contains("pulled "), "rollback pulled although the image was on the server:\n{rolled}");
    assert!(
        rolled.contains(&format!("migrations {head_b} newer than {sha_a} knows (up to {head_a}); each is declared backward-compatible")),
        "{rolled}"
    );
    h.assert_serving(&sha_a);
    h.xtask_ok(&["rollback", "--sha", &sha_b]);
    h.assert_serving(&sha_b);

    assert_eq!(
        h.history(),
        vec![
            entry("deploy", &sha_a, "ok"),
            entry("deploy", &sha_b, "ok"),
            entry("rollback", &sha_a, "ok"),
            entry("rollback", &sha_b, "ok")
        ],
        "history:\n{}",
        h.server_file("deploys.log")
    );
    let status = h.xtask_ok(&["status"]);
    assert_eq!(status.matches(" ok ").count(), 4, "status lists the four history entries:\n{status}");
}

/// A second deploy fails at once and names the holder; the lock dies with the holder's session.
fn e2e_a_held_lock_refuses_a_second_deploy_and_dies_with_its_session(h: &mut Harness) {
    let other = h.hold_lock("ann@laptop deploy 1234567");
    let out = h.xtask(&["rollback", "--sha", &h.fact("a")]);
    let text = show(&out);
    assert!(!out.status.success(), "a deploy ran although another held the lock:\n{text}");
    assert!(text.contains("locked by another deploy: ann@laptop deploy 1234567 since"), "{text}");
    let status = h.xtask_ok(&["status"]);
    assert!(status.contains("lock:     ann@laptop deploy 1234567"), "{status}");
    drop(other);
    let status = h.xtask_ok(&["status"]);
    assert!(status.contains("lock:     free"), "the lock outlived its session:\n{status}");
    h.assert_serving(&h.fact("b"));
}

/// A failing migration: nothing is switched, B keeps serving, the migration's error is shown.
fn e2e_a_failing_migration_switches_nothing(h: &mut Harness) {
    let sha_b = h.fact("b");
    let head_b = h.schema_head();
    let broken = h.clone.join("bot/migrations").join(format!("{:04}_e2e_broken.sql", head_b + 1));
    std::fs::write(&broken, "select * from e2e_no_such_table;\n").unwrap();
    h.git(&["add", "bot/migrations"]);
    h.git(&["commit", "--quiet", "-m", "C: a migration that fails"]);
    let sha_c = h.git(&["rev-parse", "HEAD"]);
    let out = h.xtask(&["release"]);
    let text = show(&out);
    assert!(!out.status.success(), "a release with a failing migration succeeded:\n{text}");
    assert!(text.contains("migrations failed") && text.contains("e2e_no_such_table"), "{text}");
    h.assert_serving(&sha_b);
    assert_eq!(h.applied_schema_head(), head_b.to_string());
    assert!(
        !h.history().iter().any(|(_, sha, _)| *sha == sha_c),
        "a release that never switched is in the history"
    );
}

/// An unhealthy release: switched back to B automatically, both recorded, the command fails
/// showing the new container's last log lines.
fn e2e_an_unhealthy_release_is_switched_back(h: &mut Harness) {
    let sha_b = h.fact("b");
    h.git(&["reset", "--quiet", "--hard", &sha_b]);
    // A bot that refuses its configuration never becomes a standby (`healthcheck --wait standby`
    // reads the same setting), while its migrations still run: the switch is where it fails.
    let dockerfile = h.clone.join("bot/Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let cmd = "CMD [\"run\"]";
    assert!(text.contains(cmd), "bot/Dockerfile's CMD changed shape; update this test");
    std::fs::write(&dockerfile, text.replace(cmd, &["ENV HTTP_PORT=0\n", cmd].concat())).unwrap();
    h.git(&["commit", "--quiet", "-am", "D: an image whose bot never stands by"]);
    let sha_d = h.git(&["rev-parse", "HEAD"]);
    let out = h.xtask_with(&["release"], &[("LATTICE_HEALTH_TIMEOUT_SECS", "60")]);
    let text = show(&out);
    assert!(!out.status.success(), "an unhealthy release succeeded:\n{text}");
    assert!(text.contains(&format!("switched back to {sha_b}, which serves again")), "{text}");
    let last_lines = text.split("last log lines:").nth(1).unwrap_or("");
    assert!(last_lines.lines().any(|l| l.contains("HTTP_PORT")), "no container log lines shown:\n{text}");
    h.assert_serving(&sha_b);
    let history = h.history();
    assert_eq!(
        history[history.len() - 2..],
        [entry("deploy", &sha_d, "unhealthy"), entry("switch-back", &sha_b, "ok")],
        "history:\n{}",
        h.server_file("deploys.log")
    );
}

/// Schema-aware rollback: once a migration that is not declared backward-compatible is applied,
/// going back to an image that predates it is refused, unless --force.
fn e2e_a_rollback_below_the_schema_is_refused_unless_forced(h: &mut Harness) {
    let sha_b = h.fact("b");
    h.git(&["reset", "--quiet", "--hard", &sha_b]);
    let head_e = h.schema_head() + 1;
    std::fs::write(
        h.clone.join("bot/migrations").join(format!("{head_e:04}_e2e_release_e.sql")),
        "create table e2e_release_e (id bigint primary key);\n",
    )
    .unwrap();
    h.git(&["add", "bot/migrations"]);
    h.git(&["commit", "--quiet", "-m", "E: a migration the old code may not cope with"]);
    let sha_e = h.git(&["rev-parse", "HEAD"]);
    h.xtask_ok(&["release"]);
    h.assert_serving(&sha_e);
    h.facts.insert("e", sha_e.clone());
    let out = h.xtask(&["rollback", "--sha", &sha_b]);
    let text = show(&out);
    assert!(!out.status.success(), "rolled back below the database's schema:\n{text}");
    assert!(
        text.contains(&format!("migrations {head_e} applied that are not declared backward-compatible")),
        "{text}"
    );
    assert!(text.contains("--force"), "{text}");
    h.assert_serving(&sha_e);
    let forced = h.xtask_ok(&["rollback", "--sha", &sha_b, "--force"]);
    assert!(forced.contains(&format!("WARNING (--force): rolling back to {sha_b}")), "{forced}");
    h.assert_serving(&sha_b);
}

/// --lock-wait: a deploy waits for the holder, then proceeds; with a shorter bound it gives up
/// naming the holder.
fn e2e_lock_wait_waits_for_the_holder_or_gives_up_naming_it(h: &mut Harness) {
    let (sha_b, sha_e) = (h.fact("b"), h.fact("e"));
    let other = h.hold_lock("bob@ci deploy 7654321");
    let text = h.refused(
        &["deploy", "--sha", &sha_e, "--lock-wait", "2"],
        &[],
        "locked by another deploy after waiting 2 s: bob@ci deploy 7654321 since",
    );
    assert!(text.contains("--lock-wait"), "{text}");
    let waiter = h
        .command(&["deploy", "--sha", &sha_e, "--lock-wait", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    h.assert_serving(&sha_b);
    drop(other);
    let out = waiter.wait_with_output().unwrap();
    h.transcript.push_str(&format!("$ cargo xtask deploy --sha {sha_e} --lock-wait 120\n{}\n", show(&out)));
    assert!(out.status.success(), "the waiting deploy did not proceed:\n{}", show(&out));
    h.assert_serving(&sha_e);
}

/// Bad input: each refused before the server changes, saying what to do.
fn e2e_bad_input_is_refused_with_the_server_unchanged(h: &mut Harness) {
    let sha_e = h.fact("e");
    h.refused(
        &["deploy", "--sha", "xyz-not-hex"],
        &[],
        "is not a git sha: expected 7 to 40 lowercase hex digits",
    );
    std::fs::write(h.clone.join("e2e-release.txt"), "never built\n").unwrap();
    h.git(&["add", "e2e-release.txt"]);
    h.git(&["commit", "--quiet", "-m", "G: a commit with no image"]);
    let sha_g = h.git(&["rev-parse", "HEAD"]);
    h.refused(&["deploy", "--sha", &sha_g], &[], "is not in the registry: build and push it first");
    h.refused(&["rollback", "--sha", &sha_g], &[], &format!("{sha_g} is not a release on the server"));
    let text = h.refused(
        &["deploy", "--sha", &sha_e],
        &[("SSH_USER", ""), ("SSH_PRIVATE_KEY", "")],
        "missing environment variables: SSH_USER, SSH_PRIVATE_KEY",
    );
    assert!(text.contains("nothing on the server was touched"), "{text}");
    h.refused(
        &["deploy", "--sha", &sha_e],
        &[("SSH_PORT", "1")],
        &format!("cannot reach {}@127.0.0.1 on port 1", h.env_var("SSH_USER")),
    );
    h.refused(
        &["deploy", "--sha", &sha_e],
        &[("SSH_KNOWN_HOSTS", &h.fact("wrong_key"))],
        "SSH_KNOWN_HOSTS does not hold this server's key",
    );
    let prod = h.clone.join("compose/prod.yml");
    let good_prod = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(&prod, format!("{good_prod}\nservices:\n  bot: [this is not a service]\n")).unwrap();
    h.git(&["commit", "--quiet", "-am", "H: a broken prod overlay"]);
    let sha_h = h.git(&["rev-parse", "HEAD"]);
    h.refused(&["deploy", "--sha", &sha_h], &[], &format!("the compose overlays of {sha_h} are not valid"));
    std::fs::write(&prod, &good_prod).unwrap();
    h.git(&["commit", "--quiet", "-am", "back to a valid prod overlay"]);
    h.assert_serving(&sha_e);
}

/// Interrupted deploys: the xtask (and its ssh clients) killed at `step`. The server is left
/// running exactly one consistent release, and the same deploy then completes. The release is E's
/// image retagged: no build.
fn killed_at(h: &mut Harness, step: &str) {
    let base = format!("lattice-e2e-base:{}", std::process::id());
    run(Command::new("docker").args(["tag", &format!("{}:{}", h.image, h.fact("e")), &base]));
    let before = h.assert_consistent();
    let sha = h.retagged_release(&base, &format!("F: interrupted at {step}"));
    h.xtask_killed_at(&["deploy", "--sha", &sha], step);
    h.wait_for_free_lock();
    let now = h.assert_consistent();
    let history = h.history();
    if step == "pulled" || step == "migrate" {
        assert_eq!(now, before, "killed before the switch, yet current moved");
        assert!(
            !history.iter().any(|(_, s, _)| *s == sha),
            "a release that never switched is in the history"
        );
        // The lock died with the killed deploy.
        let status = h.xtask_ok(&["status"]);
        assert!(status.contains("lock:     free"), "a killed deploy left the lock held:\n{status}");
    } else {
        // The switch runs detached on the server: it finished and recorded itself.
        assert_eq!(
            now,
            sha,
            "the detached switch did not complete; its log:\n{}",
            h.server_file(".switch.log")
        );
        assert_eq!(
            history.last().unwrap(),
            &entry("deploy", &sha, "ok"),
            "history:\n{}",
            h.server_file("deploys.log")
        );
    }
    h.xtask_ok(&["deploy", "--sha", &sha, "--lock-wait", "120"]);
    h.assert_serving(&sha);
    h.assert_consistent();
}

fn e2e_a_deploy_killed_after_pull_switches_nothing_and_completes_on_rerun(h: &mut Harness) {
    killed_at(h, "pulled");
}

fn e2e_a_deploy_killed_during_migrate_switches_nothing_and_completes_on_rerun(h: &mut Harness) {
    killed_at(h, "migrate");
}

fn e2e_a_deploy_killed_during_the_switch_still_switches_and_records(h: &mut Harness) {
    killed_at(h, "switch");
}

fn e2e_a_deploy_killed_during_the_health_wait_still_switches_and_records(h: &mut Harness) {
    killed_at(h, "health");
}

/// `sql` run in the server's database, its rows printed unaligned.
fn psql(h: &Harness, sql: &str) -> String {
    stdout(Command::new("docker").args([
        "exec",
        &h.container("postgres"),
        "psql",
        "-U",
        "lattice",
        "-d",
        "lattice",
        "-tAc",
        sql,
    ]))
}

/// A release whose migration the previous code does not know (it empties a table), and whose bot
/// never takes over: the deploy snapshots the database before migrating, does not start the old
/// code again on the new schema, and names the snapshot and the two commands that bring it back;
/// `restore` (refused without --yes, printed by --dry-run, the bot stopped meanwhile) and
/// `rollback` do. A release whose migrations the database already has takes neither snapshot nor
/// migration; `backup` keeps the newest `snapshots_kept`.
fn e2e_a_bad_migration_is_kept_from_the_old_code_and_undone_from_its_snapshot(h: &mut Harness) {
    let before = h.assert_consistent();
    let root = h.home.join(&h.deploy_path);
    psql(
        h,
        "create table if not exists e2e_kept (note text); insert into e2e_kept values ('written before F')",
    );
    let head_before = h.applied_schema_head();
    let head_f = h.schema_head() + 1;
    std::fs::write(
        h.clone.join("bot/migrations").join(format!("{head_f:04}_e2e_release_f.sql")),
        "create table e2e_release_f (id bigint primary key);\ndelete from e2e_kept;\n",
    )
    .unwrap();
    let dockerfile = h.clone.join("bot/Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let cmd = "CMD [\"run\"]";
    assert!(text.contains(cmd), "bot/Dockerfile's CMD changed shape; update this test");
    std::fs::write(&dockerfile, text.replace(cmd, &["ENV HTTP_PORT=0\n", cmd].concat())).unwrap();
    h.git(&["add", "bot"]);
    h.git(&[
        "commit",
        "--quiet",
        "-m",
        "F: a migration the old code cannot run on, and a bot that never stands by",
    ]);
    let sha_f = h.git(&["rev-parse", "HEAD"]);
    let out = h.xtask_with(&["release"], &[("LATTICE_HEALTH_TIMEOUT_SECS", "30")]);
    let text = show(&out);
    assert!(!out.status.success(), "a release that never took over succeeded:\n{text}");
    assert!(text.contains(&format!("{before} was NOT started again")), "{text}");
    let snapshot = text
        .split("`cargo xtask restore ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("the error names no snapshot to restore:\n{text}"))
        .to_string();
    assert!(text.contains(&format!("`cargo xtask restore {snapshot} --yes`")), "{text}");
    assert!(text.contains(&format!("then `cargo xtask rollback --sha {before}`")), "{text}");
    // The snapshot is on the server, owner-only, and nowhere in the repository.
    let file = root.join("snapshots").join(&snapshot);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(root.join("snapshots")).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(h.git(&["ls-files", "*.dump"]), "");
    // The old code was not started on the new schema: no bot runs, both recorded.
    let bots = stdout(Command::new("docker").args([
        "ps",
        "--quiet",
        "--filter",
        &format!("label=com.docker.compose.project={}", h.project),
        "--filter",
        "label=com.docker.compose.service=bot",
    ]));
    assert_eq!(bots, "", "a bot runs on a schema its code does not know");
    let history = h.history();
    assert_eq!(
        history[history.len() - 2..],
        [entry("deploy", &sha_f, "unhealthy"), entry("switch-back", &before, "refused")],
        "history:\n{}",
        h.server_file("deploys.log")
    );
    assert_eq!(h.applied_schema_head(), head_f.to_string());
    assert_eq!(psql(h, "select count(*) from e2e_kept"), "0");

    let text = h.refused(&["restore", &snapshot], &[], "pass --yes to do it");
    assert!(!text.contains("pg_restore"), "{text}");
    let dry = h.xtask_ok(&["--dry-run", "restore", &snapshot, "--yes"]);
    for step in ["flock", "docker stop", "drop schema public cascade", "pg_restore", "docker start"] {
        assert!(dry.contains(step), "the dry-run restore lacks {step:?}:\n{dry}");
    }
    h.xtask_ok(&["restore", &snapshot, "--yes"]);
    assert_eq!(h.applied_schema_head(), head_before, "the schema is the snapshot's again");
    assert_eq!(psql(h, "select note from e2e_kept"), "written before F");
    assert_eq!(psql(h, "select to_regclass('e2e_release_f') is null"), "t");
    h.xtask_ok(&["rollback", "--sha", &before]);
    h.assert_serving(&before);
    // With the bot running, restore stops it meanwhile and starts it again.
    let restored = h.xtask_ok(&["restore", &snapshot, "--yes"]);
    assert!(restored.contains("docker stop") && restored.contains("docker start"), "{restored}");
    h.assert_serving(&before);
    assert_eq!(psql(h, "select note from e2e_kept"), "written before F");

    // The database already has every migration of this release: no snapshot, no migrate container.
    let image = format!("{}:{before}", h.image);
    let sha_g = h.retagged_release(&image, "G: the running code again, nothing to migrate");
    let snapshots = || std::fs::read_dir(root.join("snapshots")).unwrap().count();
    let count = snapshots();
    let deployed = h.xtask_ok(&["deploy", "--sha", &sha_g]);
    assert!(
        deployed.lines().any(|l| l.trim_start().starts_with("migrate")
            && l.contains("skipped: the database has every migration")),
        "{deployed}"
    );
    assert!(!deployed.contains("bot migrate") && !deployed.contains("pg_dump"), "{deployed}");
    assert_eq!(snapshots(), count);
    h.assert_serving(&sha_g);

    for _ in 0..4 {
        let out = h.xtask_ok(&["backup"]);
        assert!(out.contains("cargo xtask restore ") && out.contains(&format!("-{sha_g}.dump")), "{out}");
    }
    assert_eq!(snapshots(), 3, "backup keeps the newest snapshots_kept (3)");
}

/// A deploy whose client stops answering — its process group, ssh included, SIGSTOPped at the
/// pause after pull, as a suspended laptop or a half-open connection looks to the server — holds
/// the lock no longer than the server's silence bound; resumed, it finds the lock lost and does
/// nothing more.
fn e2e_a_silent_client_loses_the_lock_within_the_bound(h: &mut Harness) {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let before = h.assert_consistent();
    let image = format!("{}:{before}", h.image);
    let sha = h.retagged_release(&image, "H: deployed by a client that falls silent");
    let history = h.server_file("deploys.log");
    let mut child = h
        .command(&["deploy", "--sha", &sha])
        .env("LATTICE_TEST_PAUSE_AT", "pulled")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = format!("-{}", child.id());
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut text = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the deploy never paused after pull:\n{text}");
        text.push_str(&line);
        if line.trim() == "lattice test pause: pulled" {
            break;
        }
    }
    run(Command::new("kill").args(["-STOP", "--", &group]));
    let lock = h.home.join(&h.deploy_path).join(".lock");
    let free = || Command::new("flock").args(["-n"]).arg(&lock).arg("true").status().unwrap().success();
    assert!(!free(), "the lock is not held by the deploy that paused");
    let stopped = Instant::now();
    // The bound: the server's 30 s of silence, plus slack for a loaded machine.
    while !free() {
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "the silent client still holds the lock after 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("    the lock was free {:.0} s after the client fell silent", stopped.elapsed().as_secs_f64());
    run(Command::new("kill").args(["-CONT", "--", &group]));
    let reader = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let status = child.wait().unwrap();
    text.push_str(&reader.join().unwrap());
    h.transcript.push_str(&format!("$ cargo xtask deploy --sha {sha} (stopped at pulled)\n{text}\n"));
    assert!(!status.success(), "a deploy that lost its lock went on:\n{text}");
    assert!(text.contains("the deploy lock was lost"), "{text}");
    assert_eq!(h.assert_consistent(), before, "a deploy that lost its lock switched");
    assert_eq!(h.server_file("deploys.log"), history);
}

/// Deploys go forward: a commit that is an ancestor of the running release is refused, pointing at
/// rollback, unless --allow-older.
fn e2e_an_older_commit_is_refused_unless_allowed(h: &mut Harness) {
    let (now, older) = (h.assert_consistent(), h.fact("a"));
    h.git(&["merge-base", "--is-ancestor", &older, &now]);
    let text = h.refused(
        &["deploy", "--sha", &older],
        &[],
        &format!("{older} is older than {now}, which the server runs"),
    );
    assert!(
        text.contains(&format!("`cargo xtask rollback --sha {older}`")) && text.contains("--allow-older"),
        "{text}"
    );
    h.xtask_ok(&["deploy", "--sha", &older, "--allow-older"]);
    h.assert_serving(&older);
    h.xtask_ok(&["deploy", "--sha", &now]);
    h.assert_serving(&now);
}

/// Production hardening as it runs: Postgres with a read-only root, no-new-privileges and only the
/// capabilities its entrypoint needs; both services with a pids limit.
fn e2e_postgres_and_the_bot_run_hardened(h: &mut Harness) {
    let postgres = h.container("postgres");
    assert_eq!(h.inspect(&postgres, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_eq!(h.inspect(&postgres, "{{.HostConfig.SecurityOpt}}"), "[no-new-privileges:true]");
    assert_eq!(h.inspect(&postgres, "{{.HostConfig.CapDrop}}"), "[ALL]");
    let mut caps: Vec<String> = h
        .inspect(&postgres, "{{range .HostConfig.CapAdd}}{{println .}}{{end}}")
        .lines()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    caps.sort();
    assert_eq!(caps, ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]);
    assert_eq!(h.inspect(&postgres, "{{.HostConfig.PidsLimit}}"), "200");
    let status =
        stdout(Command::new("docker").args(["exec", &postgres, "grep", "NoNewPrivs", "/proc/1/status"]));
    assert!(status.ends_with('1'), "{status}");
    let wrote = Command::new("docker").args(["exec", &postgres, "touch", "/e2e-written"]).output().unwrap();
    assert!(!wrote.status.success(), "Postgres's root file system is writable");
    assert_eq!(h.inspect(&h.container("bot"), "{{.HostConfig.PidsLimit}}"), "1024");
}

/// A deploy with a registry login: the server pulls with a Docker config of that pull alone,
/// removed right after; the server user's ~/.docker keeps no credentials and the deploy directory
/// no config. (The test's registry takes any login, and Docker stores it as it would a real one.)
fn e2e_registry_credentials_do_not_linger_on_the_server(h: &mut Harness) {
    let before = h.assert_consistent();
    let image = format!("{}:{before}", h.image);
    let sha = h.retagged_release(&image, "I: pulled with a registry login");
    let (user, password) = ("e2e-puller", "e2e-registry-pass-Qw93xT");
    // The client's own login goes to a config of the test's, not root's ~/.docker.
    let client = h.dir.join("docker-client");
    std::fs::create_dir_all(&client).unwrap();
    let out = h.xtask_with(
        &["deploy", "--verbose", "--sha", &sha],
        &[
            ("REGISTRY_USER", user),
            ("REGISTRY_PASSWORD", password),
            ("DOCKER_CONFIG", client.to_str().unwrap()),
        ],
    );
    let text = show(&out);
    assert!(out.status.success(), "the deploy with a registry login failed:\n{text}");
    assert!(text.contains("pull.sh"), "the server did not pull with its own login:\n{text}");
    h.assert_serving(&sha);
    let encoded = stdout(Command::new("sh").arg("-c").arg(format!("printf %s '{user}:{password}' | base64")));
    let config = std::fs::read_to_string(h.home.join(".docker/config.json")).unwrap_or_default();
    for value in [password, encoded.as_str()] {
        assert!(!text.contains(value), "the registry password is in the output");
        assert!(
            !config.contains(value),
            "the registry login lingers in the server user's ~/.docker:\n{config}"
        );
    }
    let left: Vec<String> = std::fs::read_dir(h.home.join(&h.deploy_path))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".docker-pull."))
        .collect();
    assert!(left.is_empty(), "the pull's Docker config was left on the server: {left:?}");
}

/// Settings that used to send the user the wrong way: each is named for what it is, all at once,
/// before the server is touched.
fn e2e_key_known_hosts_and_login_problems_are_named_for_what_they_are(h: &mut Harness) {
    let sha = h.assert_consistent();
    let crlf = h.private_key.replace('\n', "\r\n");
    let text = h.refused(
        &["deploy", "--sha", &sha],
        &[("SSH_PRIVATE_KEY", &crlf)],
        "SSH_PRIVATE_KEY has Windows line endings (CRLF)",
    );
    assert!(!text.contains("authorized_keys"), "{text}");
    let path = h.dir.join("client_key").display().to_string();
    h.refused(&["deploy", "--sha", &sha], &[("SSH_PRIVATE_KEY", &path)], "SSH_PRIVATE_KEY holds a file path");
    let text = h.refused(&["status"], &[("SSH_KNOWN_HOSTS", "")], "SSH_KNOWN_HOSTS is empty");
    assert_eq!(text.matches("SSH_KNOWN_HOSTS is empty").count(), 1, "{text}");
    assert!(!text.contains("missing environment variables"), "said twice:\n{text}");
    // A failed `docker login` is one of the problems, listed with the others.
    let client = h.dir.join("docker-client");
    std::fs::create_dir_all(&client).unwrap();
    let text = h.refused(
        &["deploy", "--sha", &sha],
        &[
            ("LATTICE_IMAGE", "127.0.0.1:1/lattice-bot"),
            ("REGISTRY_USER", "e2e-puller"),
            ("REGISTRY_PASSWORD", "e2e-registry-pass-Qw93xT"),
            ("DOCKER_CONFIG", client.to_str().unwrap()),
            ("SSH_USER", ""),
        ],
        "docker login to 127.0.0.1:1 failed",
    );
    assert!(text.contains("missing environment variables: SSH_USER"), "{text}");
    assert!(!text.contains("e2e-registry-pass-Qw93xT"), "{text}");
}

/// The xtask `pid`'s ssh ControlMaster (the one ssh process of its connection that is not its
/// child: it runs detached), killed as a dropped connection would end it.
fn kill_ssh_master(pid: u32) {
    let dir = std::env::temp_dir().join(format!("lattice-ssh-{pid}-"));
    let dir = dir.to_string_lossy().to_string();
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(proc_pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).unwrap_or("");
        if cmdline.starts_with("ssh") && cmdline.contains(&dir) && ppid != pid.to_string() {
            run(Command::new("kill").args(["-KILL", &proc_pid.to_string()]));
            killed += 1;
        }
    }
    assert_eq!(killed, 1, "expected one ssh ControlMaster of xtask {pid}");
}

/// Runs the xtask with `LATTICE_TEST_PAUSE_AT=<step>`, kills its ssh ControlMaster at the pause
/// marker, and returns its exit status and everything it printed.
fn xtask_disconnected_at(h: &mut Harness, args: &[&str], step: &str) -> (bool, String) {
    xtask_acting_at(h, args, step, &mut kill_ssh_master)
}

/// Runs the xtask with `LATTICE_TEST_PAUSE_AT=<step>`, calls `act` with its pid at the pause
/// marker, and returns its exit status and everything it printed.
fn xtask_acting_at(h: &mut Harness, args: &[&str], step: &str, act: &mut dyn FnMut(u32)) -> (bool, String) {
    use std::io::BufRead;
    let mut child = h
        .command(args)
        .env("LATTICE_TEST_PAUSE_AT", step)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let marker = format!("lattice test pause: {step}");
    let mut text = String::new();
    let mut cut = false;
    for line in rx.iter() {
        if !cut && line.trim() == marker {
            act(child.id());
            cut = true;
        }
        text.push_str(&line);
        text.push('\n');
    }
    let status = child.wait().unwrap();
    h.transcript.push_str(&format!("$ cargo xtask {} (interrupted at {step})\n{text}\n", args.join(" ")));
    assert!(cut, "the xtask never reached the pause at {step} ({status}):\n{text}");
    (status.success(), text)
}

/// A connection that drops during the migration is said to have dropped (not "migrations
/// failed"), nothing is switched, and the same deploy then completes; one that drops while the
/// client follows the detached switch is opened again and the result read: the deploy succeeds.
fn e2e_a_dropped_connection_is_said_and_a_switch_is_followed_to_its_end(h: &mut Harness) {
    let before = h.assert_consistent();
    let image = format!("{}:{before}", h.image);
    // An image whose label names a migration the database lacks (its own migrate then finds
    // nothing to do): this deploy snapshots and migrates. No build: a label on the running image.
    let context = h.dir.join("ahead");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), format!("FROM {image}\nLABEL lattice.schema.head=999999\n"))
        .unwrap();
    let ahead = format!("lattice-e2e-ahead:{}", std::process::id());
    run(Command::new("docker").args(["build", "--quiet", "--tag", &ahead]).arg(&context));
    let sha = h.retagged_release(&ahead, "J: deployed over a connection that drops");
    let (ok, text) = xtask_disconnected_at(h, &["deploy", "--sha", &sha], "migrate");
    assert!(!ok, "{text}");
    assert!(text.contains("the connection to the server dropped during the migration"), "{text}");
    assert!(!text.contains("migrations failed"), "{text}");
    h.wait_for_free_lock();
    assert_eq!(h.assert_consistent(), before, "a deploy cut off in the migration switched");
    h.xtask_ok(&["deploy", "--sha", &sha]);
    h.assert_serving(&sha);
    run(Command::new("docker").args(["rmi", "--no-prune", &ahead]));

    let sha = h.retagged_release(&image, "K: followed over a connection that drops");
    let (ok, text) = xtask_disconnected_at(h, &["deploy", "--sha", &sha], "health");
    assert!(ok, "the switch succeeded, yet the deploy failed:\n{text}");
    assert!(text.contains("the connection to the server dropped: connect again"), "{text}");
    assert!(text.contains(&format!("deployed {sha}")), "{text}");
    h.assert_serving(&sha);
}

/// Killed runs leave nothing behind: a deploy interrupted with Ctrl-C (SIGINT to its process group)
/// or SIGKILL after connecting leaves no key, no connection directory and, promptly, no logged-in
/// ControlMaster; a dead run's directory is removed by the next run; no file in /tmp holds the key.
fn e2e_a_killed_run_leaves_no_key_directory_or_connection(h: &mut Harness) {
    let before = h.assert_consistent();
    let image = format!("{}:{before}", h.image);
    let tmp = std::env::temp_dir();
    let ours = |pid: u32| {
        let prefix = format!("lattice-ssh-{pid}-");
        let dirs = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count();
        let masters = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline).to_string();
                cmdline.starts_with("ssh") && cmdline.contains(&prefix)
            })
            .count();
        (dirs, masters)
    };
    for signal in ["INT", "KILL"] {
        let sha = h.retagged_release(&image, &format!("L: interrupted with SIG{signal}"));
        let pid = h.xtask_signalled_at(&["deploy", "--sha", &sha], "pulled", signal);
        let gone = Instant::now();
        while ours(pid) != (0, 0) {
            assert!(
                gone.elapsed() < Duration::from_secs(30),
                "SIG{signal}: xtask {pid} left (dirs, ssh processes) = {:?}",
                ours(pid)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        println!("    SIG{signal}: nothing of the run left after {:.1} s", gone.elapsed().as_secs_f64());
        h.wait_for_free_lock();
        assert_eq!(h.assert_consistent(), before);
    }
    // A run killed so hard that even its watchdog went: the next run removes what it left.
    let stale = tmp.join("lattice-ssh-4194399-0");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("config"), "Host lattice-server\n").unwrap();
    h.xtask_ok(&["status"]);
    assert!(!stale.exists(), "the next run kept a dead run's directory");
    // No file in /tmp (the test's own key files aside) holds the private key.
    let key_lines: Vec<&str> =
        h.private_key.lines().filter(|l| l.len() > 20 && !l.starts_with("-----")).collect();
    let listing = stdout(Command::new("find").arg(&tmp).args(["-xdev", "-type", "f", "-size", "-1M"]));
    for file in listing.lines().filter(|f| !Path::new(f).starts_with(&h.dir)) {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        assert!(!key_lines.iter().any(|l| text.contains(l)), "{file} holds the private key");
    }
}

/// A switch cut off between its steps — its detached script SIGKILLed right after it pointed
/// `current` at the new release, as a reboot would stop it: `status` reports the unfinished switch;
/// the next deploy sets `current` back to the release before it, records the switch as
/// interrupted, and completes.
fn e2e_an_unfinished_switch_is_reported_and_settled_by_the_next_deploy(h: &mut Harness) {
    let before = h.assert_consistent();
    let image = format!("{}:{before}", h.image);
    let sha = h.retagged_release(&image, "M: its switch is cut off");
    let script = format!("sh .switch.sh {sha} ");
    let (ok, text) = xtask_acting_at(h, &["deploy", "--sha", &sha], "switch", &mut |_| {
        let mut killed = 0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).replace('\0', " ").starts_with(&script) {
                // setsid made it the leader of its own group: the group goes, sleep and all.
                let group = format!("-{}", entry.file_name().to_string_lossy());
                run(Command::new("kill").args(["-KILL", "--", &group]));
                killed += 1;
            }
        }
        assert_eq!(killed, 1, "expected one switch script for {sha}");
    });
    assert!(!ok, "{text}");
    assert!(text.contains("ended without a result"), "{text}");
    h.wait_for_free_lock();
    let status = h.xtask_ok(&["status"]);
    assert!(
        status.contains(&format!("UNFINISHED: the deploy to {sha} from {before}, started")),
        "status does not report the unfinished switch:\n{status}"
    );
    let next = h.retagged_release(&image, "N: deployed after an unfinished switch");
    let deployed = h.xtask_ok(&["deploy", "--sha", &next]);
    assert!(
        deployed.contains(&format!(
            "did not finish (its script was killed or the server rebooted); `current` goes back to {before}"
        )),
        "{deployed}"
    );
    h.assert_serving(&next);
    h.assert_consistent();
    assert!(h.history().contains(&entry("deploy", &sha, "interrupted")), "{}", h.server_file("deploys.log"));
    let status = h.xtask_ok(&["status"]);
    assert!(!status.contains("UNFINISHED"), "{status}");
}

/// A Discord webhook on loopback: it answers every POST with 204, as Discord does, and keeps the
/// `content` of each.
struct WebhookReceiver {
    url: String,
    messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl WebhookReceiver {
    fn start() -> WebhookReceiver {
        use std::io::{BufRead, BufReader, Read};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url =
            format!("http://{}/api/webhooks/1/e2e-webhook-token-Wq93nLs", listener.local_addr().unwrap());
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = messages.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line.trim() != "" {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok() {
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    kept.lock().unwrap().push(json["content"].as_str().unwrap_or("").to_string());
                }
                let _ = reader.get_mut().write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        });
        WebhookReceiver { url, messages }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}

/// Deploy notifications: the webhook gets one line per deploy, rollback, failure and automatic
/// switch-back, with sha, who, seconds and outcome; with the receiver down a deploy still
/// succeeds, with a warning, and the webhook's URL is never printed. Self-contained: it deploys A
/// first on a server that runs nothing yet, and its releases are the running image retagged.
fn e2e_deploy_notifications_reach_the_webhook_and_never_block_a_deploy(h: &mut Harness) {
    if !h.home.join(&h.deploy_path).join("current").exists() {
        h.xtask_ok(&["secrets", "--allow-dev-settings"]);
        h.xtask_ok(&["deploy", "--sha", &h.fact("a")]);
    }
    let before = h.assert_consistent();
    let running = h.inspect(&h.container("bot"), "{{.Config.Image}}");
    let receiver = WebhookReceiver::start();
    let hook = [("LATTICE_NOTIFY_WEBHOOK", receiver.url.as_str()), ("LATTICE_HEALTH_TIMEOUT_SECS", "30")];
    let short = |sha: &str| sha[..12].to_string();

    let sha = h.retagged_release(&running, "N: notified");
    let out = h.xtask_with(&["deploy", "--sha", &sha], &hook);
    assert!(out.status.success(), "{}", show(&out));
    let out = h.xtask_with(&["rollback", "--sha", &before], &hook);
    assert!(out.status.success(), "{}", show(&out));

    // An image whose bot refuses its configuration: it never stands by, the switch goes back.
    let probe = stdout(Command::new("docker").args(["create", &running]));
    let broken = format!("lattice-e2e-never-standby:{}", std::process::id());
    run(Command::new("docker").args(["commit", "--change", "ENV HTTP_PORT=0", probe.trim(), &broken]));
    run(Command::new("docker").args(["rm", probe.trim()]));
    let sha_broken = h.retagged_release(&broken, "N: never stands by");
    run(Command::new("docker").args(["rmi", "--no-prune", &broken]));
    let out = h.xtask_with(&["deploy", "--sha", &sha_broken], &hook);
    assert!(!out.status.success(), "the unhealthy release succeeded:\n{}", show(&out));
    h.assert_serving(&before);

    let messages = receiver.messages();
    let who = "@"; // user@host, or actor@github-actions
    let expected = [
        ("deploy", short(&sha), ": ok ("),
        ("rollback", short(&before), ": ok ("),
        ("deploy", short(&sha_broken), ": FAILED"),
        ("switch-back", short(&before), ": ok ("),
    ];
    assert_eq!(messages.len(), expected.len(), "one line per outcome, got:\n{}", messages.join("\n"));
    for (message, (action, sha, outcome)) in messages.iter().zip(expected) {
        let words = [format!("lattice: {action} {sha} by "), outcome.to_string(), " s)".to_string()];
        assert!(
            words.iter().all(|w| message.contains(w.as_str()))
                && message.contains(who)
                && !message.contains('\n'),
            "{message:?} is not one line saying {words:?}"
        );
    }

    // The receiver down: the deploy succeeds all the same, warning without the URL.
    let closed = format!("http://127.0.0.1:{}/api/webhooks/1/e2e-webhook-token-Wq93nLs", free_port());
    let sha = h.retagged_release(&running, "N: nobody listens");
    let out = h.xtask_with(&["deploy", "--sha", &sha], &[("LATTICE_NOTIFY_WEBHOOK", &closed)]);
    let text = show(&out);
    assert!(out.status.success(), "a deploy failed because its notification could not be sent:\n{text}");
    assert!(text.contains("warning: the deploy notification was not sent"), "{text}");
    assert!(!h.transcript.contains("e2e-webhook-token-Wq93nLs"), "the webhook URL was printed");
    h.assert_serving(&sha);

    // `status --json` for scripts: the same facts as the human output.
    let out = h.xtask(&["status", "--json"]);
    assert!(out.status.success(), "{}", show(&out));
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)));
    assert_eq!(status["current"], sha.as_str(), "{status}");
    assert!(status["lock"].is_null(), "{status}");
    let bot = status["containers"].as_array().unwrap().iter().find(|c| c["service"] == "bot").cloned();
    assert_eq!(bot.map(|b| b["health"].clone()), Some("healthy".into()), "{status}");
    let last = status["history"].as_array().unwrap().last().cloned().unwrap_or_default();
    assert_eq!(
        (&last["action"], &last["sha"], &last["result"]),
        (&"deploy".into(), &sha.as_str().into(), &"ok".into()),
        "{status}"
    );
    let human = h.xtask_ok(&["status"]);
    assert!(
        human.contains(&format!("current:  {sha}")) && human.contains(status["image"].as_str().unwrap()),
        "{human}"
    );
}

/// The secret scan: every byte the xtask printed, the containers' logs, the server's files.
fn e2e_no_secret_in_the_output_the_logs_or_the_servers_files(h: &mut Harness) {
    let mut haystack = h.transcript.clone();
    for service in ["bot", "postgres"] {
        let out = run(Command::new("docker").args(["logs", &h.container(service)]));
        haystack.push_str(&String::from_utf8_lossy(&out.stdout));
        haystack.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let out = run(Command::new("docker").args(["logs", &h.standin]));
    haystack.push_str(&String::from_utf8_lossy(&out.stderr));
    let root = h.home.join(&h.deploy_path);
    let listing = stdout(Command::new("find").arg(&root).args(["-type", "f", "!", "-name", ".env"]));
    for file in listing.lines() {
        haystack.push_str(&std::fs::read_to_string(file).unwrap_or_default());
    }
    let key_lines: Vec<&str> =
        h.private_key.lines().filter(|l| l.len() > 20 && !l.starts_with("-----")).collect();
    assert!(!key_lines.is_empty());
    for (name, value) in SECRETS.iter().copied().chain(key_lines.iter().map(|l| ("SSH_PRIVATE_KEY", *l))) {
        assert!(
            !haystack.contains(value),
            "the value of {name} leaked into the output, logs or server files"
        );
    }
}

/// The sandbox as a new operator meets it, in a clone of its own and with nothing but the
/// environment `sandbox up` printed: `up` again changes nothing (it is running), then `release`,
/// a second `release`, `rollback`, `status` and `logs --server` all succeed. Runs beside the other
/// scenarios, on the same sandbox (its own deploy directory and compose project); `sandbox down`
/// is checked once they are all done ([`the_sandbox_down_leaves_nothing`]).
fn e2e_the_sandbox_takes_a_release_a_rollback_and_status(h: &mut Harness) {
    let sandbox = h.dir.parent().unwrap().join("sandbox");
    assert_eq!(
        sandbox_up(&sandbox, &h.clone, &moved_ports()),
        h.env,
        "a second `sandbox up` changed the environment"
    );
    // Commits of its own (a README line each, so the image builds come from the cache): the
    // scenarios beside must still find commit A's image only in the registry.
    let sha_a = readme_commit(h, "Tried in the sandbox.");
    h.xtask_ok(&["release"]);
    h.assert_serving(&sha_a);
    let sha_b = readme_commit(h, "Tried in the sandbox again.");
    h.xtask_ok(&["release"]);
    h.assert_serving(&sha_b);
    h.xtask_ok(&["rollback"]);
    h.assert_serving(&sha_a);
    let status = h.xtask_ok(&["status"]);
    assert!(status.contains(&format!("current:  {sha_a}")), "{status}");
    let logs = h.xtask_ok(&["logs", "--server", "--tail", "50"]);
    assert!(logs.contains("holding the leader lock"), "the server's bot logs are not shown:\n{logs}");
}

/// A commit that adds `line` to the README: a release whose image differs from HEAD's by its labels.
fn readme_commit(h: &Harness, line: &str) -> String {
    let readme = h.clone.join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    std::fs::write(&readme, format!("{text}\n{line}\n")).unwrap();
    h.git(&["commit", "--quiet", "-am", line]);
    h.git(&["rev-parse", "HEAD"])
}

/// `sandbox down` removes everything `up` and the releases made: containers, volumes, network and
/// images, both processes (their ports are free again), the sandbox's directory, the deploy
/// directory, the user when `up` made it; and a second `down` changes nothing.
fn the_sandbox_down_leaves_nothing(sandbox: &Path, env: &[(String, String)]) {
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
    let (user, image, ssh_port) = (get("SSH_USER"), get("LATTICE_IMAGE"), get("SSH_PORT"));
    let project = get("LATTICE_COMPOSE_PROJECT");
    let home = home_of(&user);
    let made_user = sandbox.join("made-user").exists();
    let pids: Vec<String> = ["sshd.pid", "registry.pid"]
        .iter()
        .map(|f| std::fs::read_to_string(sandbox.join(f)).unwrap().trim().to_string())
        .collect();
    let out = sandbox_down(sandbox);
    assert!(out.status.success(), "cargo xtask sandbox down failed:\n{}", show(&out));
    for pid in &pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} outlived `sandbox down`");
    }
    let registry_port: u16 = image.split(['/', ':']).nth(1).unwrap().parse().unwrap();
    for port in [ssh_port.parse().unwrap(), registry_port] {
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "127.0.0.1:{port} still listens");
    }
    assert!(!sandbox.exists(), "{} is left", sandbox.display());
    let label = format!("label=com.docker.compose.project={project}");
    let standin = format!("{project}-standin");
    let standin_name = format!("name=^{standin}$");
    for (what, args) in [
        ("containers", vec!["ps", "--all", "--quiet", "--filter", &label]),
        ("containers", vec!["ps", "--all", "--quiet", "--filter", &standin_name]),
        ("volumes", vec!["volume", "ls", "--quiet", "--filter", &label]),
        ("networks", vec!["network", "ls", "--quiet", "--filter", &label]),
        ("images", vec!["image", "ls", "--quiet", &image]),
        ("images", vec!["image", "ls", "--quiet", &standin]),
    ] {
        let left = stdout(Command::new("docker").args(&args));
        if !left.is_empty() {
            // What is left, and what could hold it, to tell why.
            let images = stdout(Command::new("docker").args(["image", "ls", "--all", "--digests"]));
            let containers =
                stdout(Command::new("docker").args(["ps", "--all", "--format", "{{.Names}} {{.Image}}"]));
            panic!(
                "`sandbox down` left {what}: docker {} lists {left}\nimages:\n{images}\ncontainers:\n{containers}",
                args.join(" ")
            );
        }
    }
    if made_user {
        let exists = Command::new("id").arg(&user).output().unwrap().status.success();
        assert!(!exists, "`sandbox down` left the user {user} it made");
    }
    assert!(!home.join(&project).exists(), "`sandbox down` left {}", home.join(&project).display());
    let again = sandbox_down(sandbox);
    assert!(again.status.success(), "a second `sandbox down` failed:\n{}", show(&again));
}

type Scenario = (&'static str, fn(&mut Harness));

/// A scenario by its function's name.
macro_rules! scenario {
    ($f:ident) => {
        (stringify!($f), $f as fn(&mut Harness))
    };
}

/// In order: each scenario finds the server as the ones before left it.
const SCENARIOS: &[Scenario] = &[
    scenario!(e2e_an_unknown_commit_is_refused_before_the_server_is_touched),
    scenario!(e2e_secrets_writes_an_owner_only_env_on_a_fresh_server),
    scenario!(e2e_the_dry_run_prints_every_step),
    scenario!(e2e_a_wrong_host_key_and_an_unreachable_host_are_refused),
    scenario!(e2e_deploy_pulls_migrates_and_serves),
    scenario!(e2e_release_builds_pushes_and_deploys_head),
    scenario!(e2e_rollback_goes_to_the_previous_good_release_or_the_one_named),
    scenario!(e2e_a_held_lock_refuses_a_second_deploy_and_dies_with_its_session),
    scenario!(e2e_a_failing_migration_switches_nothing),
    scenario!(e2e_an_unhealthy_release_is_switched_back),
    scenario!(e2e_a_rollback_below_the_schema_is_refused_unless_forced),
    scenario!(e2e_lock_wait_waits_for_the_holder_or_gives_up_naming_it),
    scenario!(e2e_bad_input_is_refused_with_the_server_unchanged),
    scenario!(e2e_a_deploy_killed_after_pull_switches_nothing_and_completes_on_rerun),
    scenario!(e2e_a_deploy_killed_during_migrate_switches_nothing_and_completes_on_rerun),
    scenario!(e2e_a_deploy_killed_during_the_switch_still_switches_and_records),
    scenario!(e2e_a_deploy_killed_during_the_health_wait_still_switches_and_records),
    scenario!(e2e_a_bad_migration_is_kept_from_the_old_code_and_undone_from_its_snapshot),
    scenario!(e2e_a_silent_client_loses_the_lock_within_the_bound),
    scenario!(e2e_an_older_commit_is_refused_unless_allowed),
    scenario!(e2e_postgres_and_the_bot_run_hardened),
    scenario!(e2e_registry_credentials_do_not_linger_on_the_server),
    scenario!(e2e_key_known_hosts_and_login_problems_are_named_for_what_they_are),
    scenario!(e2e_a_dropped_connection_is_said_and_a_switch_is_followed_to_its_end),
    scenario!(e2e_a_killed_run_leaves_no_key_directory_or_connection),
    scenario!(e2e_an_unfinished_switch_is_reported_and_settled_by_the_next_deploy),
    scenario!(e2e_deploy_notifications_reach_the_webhook_and_never_block_a_deploy),
    scenario!(e2e_a_message_stream_is_answered_exactly_once_through_deploys_rollbacks_and_crashes),
    scenario!(e2e_no_secret_in_the_output_the_logs_or_the_servers_files),
];

/// Runs beside [`SCENARIOS`], on the same sandbox but a deploy directory of its own.
const BESIDE: Scenario = scenario!(e2e_the_sandbox_takes_a_release_a_rollback_and_status);

/// libtest's filters: positional NAMEs select by substring, `--skip NAME` leaves out; the other
/// flags cargo passes are accepted and ignored.
fn selected(args: &[String]) -> Vec<Scenario> {
    let mut filters = Vec::new();
    let mut skips = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--skip" => skips.extend(args.next().cloned()),
            flag if flag.starts_with('-') => {}
            name => filters.push(name.to_string()),
        }
    }
    SCENARIOS
        .iter()
        .chain([&BESIDE])
        .copied()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .filter(|(name, _)| !skips.iter().any(|s| name.contains(s.as_str())))
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in SCENARIOS.iter().chain([&BESIDE]) {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let mut scenarios = selected(&args);
    let beside = scenarios.iter().position(|(name, _)| *name == BESIDE.0).map(|i| scenarios.remove(i));
    let total = scenarios.len() + usize::from(beside.is_some());
    println!("\nrunning {total} scenarios over one sandbox");
    if total == 0 {
        println!("\ntest result: ok. 0 passed; 0 failed; {} filtered out\n", SCENARIOS.len() + 1);
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let base = std::env::temp_dir().join(format!("lattice-deploy-e2e-{}", std::process::id()));
    let sandbox = base.join("sandbox");
    let (mut h, printed) = match std::panic::catch_unwind(|| fixture(&base)) {
        Ok(fixture) => fixture,
        Err(_) => {
            println!(
                "\nthe fixture (the sandbox, commit A's image) could not be set up: see the panic above"
            );
            println!("\ntest result: FAILED. 0 passed; {total} not run\n");
            let _ = sandbox_down(&sandbox);
            let _ = std::fs::remove_dir_all(&base);
            return ExitCode::FAILURE;
        }
    };
    println!("fixture ready in {:.0} s", started.elapsed().as_secs_f64());
    let mut failed = Vec::new();
    let beside_outcome = std::thread::scope(|scope| {
        let lane = beside.map(|(name, scenario)| {
            let printed = printed.clone();
            let dir = base.join("beside");
            scope.spawn(move || {
                let start = Instant::now();
                let get = |name: &str| printed.iter().find(|(k, _)| k == name).unwrap().1.clone();
                let (path, project) = (get("LATTICE_DEPLOY_PATH"), get("LATTICE_COMPOSE_PROJECT"));
                let mut lane = Harness::new(dir, printed, &path, &project);
                lane.cleans_up = false;
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| scenario(&mut lane)));
                (name, outcome.is_ok(), start.elapsed())
            })
        });
        for (name, scenario) in &scenarios {
            let start = Instant::now();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| scenario(&mut h)));
            let verdict = if outcome.is_ok() { "ok" } else { "FAILED" };
            println!("test {name} ... {verdict} ({:.0} s)", start.elapsed().as_secs_f64());
            if outcome.is_err() {
                failed.push(*name);
            }
        }
        lane.map(|lane| lane.join().unwrap())
    });
    // LATTICE_E2E_TRANSCRIPT=<file> keeps every command and its output, to read what users see.
    if let Ok(path) = std::env::var("LATTICE_E2E_TRANSCRIPT") {
        std::fs::write(path, &h.transcript).unwrap();
    }
    drop(h);
    let down = std::panic::catch_unwind(|| the_sandbox_down_leaves_nothing(&sandbox, &printed));
    if down.is_err() {
        let _ = sandbox_down(&sandbox);
    }
    if let Some((name, ok, took)) = beside_outcome {
        let ok = ok && down.is_ok();
        println!(
            "test {name} (beside, then `sandbox down`) ... {} ({:.0} s)",
            if ok { "ok" } else { "FAILED" },
            took.as_secs_f64()
        );
        if !ok {
            failed.push(name);
        }
    } else if down.is_err() {
        failed.push("the_sandbox_down_leaves_nothing");
    }
    let _ = std::fs::remove_dir_all(&base);
    let passed = total - failed.len().min(total);
    if failed.is_empty() {
        println!(
            "\ntest result: ok. {passed} passed; 0 failed; finished in {:.0} s\n",
            started.elapsed().as_secs_f64()
        );
        return ExitCode::SUCCESS;
    }
    println!("\nfailures (their panics are above):");
    for name in &failed {
        println!("    {name}");
    }
    println!(
        "\ntest result: FAILED. {passed} passed; {} failed; finished in {:.0} s\n",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    ExitCode::FAILURE
}
