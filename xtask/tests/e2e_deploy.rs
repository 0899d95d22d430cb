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
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Output, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::{show, workspace};

/// The sandbox's Discord stand-in container (`cargo xtask sandbox`).
const STANDIN: &str = "lattice-sandbox-standin";

/// Distinctive fake secrets: if any of them shows up anywhere, it leaked.
const SECRETS: &[(&str, &str)] = &[
    ("DISCORD_TOKEN", "e2e-discord-token-Zq81xVb"),
    ("OPENROUTER_API_KEY", "e2e-openrouter-key-Kp42mWd"),
    ("POSTGRES_PASSWORD", "e2e-postgres-pass-Hy77rTn"),
];

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", show(&out));
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run(cmd).stdout).trim().to_string()
}

/// The sandbox's environment as a user gets it: `cargo xtask sandbox up` prints it, and a shell
/// reads the file it names (`. <dir>/env`, which also reads the private key from its file).
fn sandbox_up(dir: &Path, clone: &Path) -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["sandbox", "up", "--dir"])
        .arg(dir)
        .args(moved_ports())
        .current_dir(clone)
        .env_remove("GITHUB_ACTIONS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo xtask sandbox up failed:\n{}", show(&out));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let env_file = dir.join("env");
    assert!(
        printed.contains(&format!(". {}", env_file.display())),
        "up does not name its env file:\n{printed}"
    );
    let text = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        printed.contains(&text),
        "up printed another environment than {}:\n{printed}",
        env_file.display()
    );
    let names: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("export ")?.split('=').next()).collect();
    assert!(names.contains(&"SSH_PRIVATE_KEY"), "no SSH_PRIVATE_KEY in {}:\n{text}", env_file.display());
    let shell = run(Command::new("sh").args(["-c", ". \"$1\" && env -0", "sh"]).arg(&env_file).env_clear());
    String::from_utf8_lossy(&shell.stdout)
        .split('\0')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| names.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

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

fn sandbox_down(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["sandbox", "down", "--dir"])
        .arg(dir)
        .current_dir(workspace())
        .stdin(Stdio::null())
        .output()
        .unwrap()
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
        Harness {
            home: home_of(&get("SSH_USER")),
            image: get("LATTICE_IMAGE"),
            private_key: get("SSH_PRIVATE_KEY"),
            clone,
            dir,
            deploy_path: deploy_path.to_string(),
            project: project.to_string(),
            standin: STANDIN.to_string(),
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
        stdout(
            Command::new("git")
                .args(["-c", "user.name=e2e", "-c", "user.email=e2e@example.invalid"])
                .args(args)
                .current_dir(&self.clone),
        )
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
        let postgres = self.container("postgres");
        stdout(Command::new("docker").args([
            "exec",
            &postgres,
            "psql",
            "-U",
            "lattice",
            "-d",
            "lattice",
            "-tAc",
            "select max(version) from _sqlx_migrations where success",
        ]))
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
    let printed = sandbox_up(&base.join("sandbox"), &clone);
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
    assert!(deployed.contains("Pulled"), "the server did not pull A from the registry:\n{deployed}");
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
    assert!(!rolled.contains("Pulled"), "rollback pulled although the image was on the server:\n{rolled}");
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
    assert_eq!(sandbox_up(&sandbox, &h.clone), h.env, "a second `sandbox up` changed the environment");
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
    for (what, args) in [
        ("containers", vec!["ps", "--all", "--quiet", "--filter", &label]),
        ("containers", vec!["ps", "--all", "--quiet", "--filter", "name=^lattice-sandbox-standin$"]),
        ("volumes", vec!["volume", "ls", "--quiet", "--filter", &label]),
        ("networks", vec!["network", "ls", "--quiet", "--filter", &label]),
        ("images", vec!["image", "ls", "--quiet", &image]),
        ("images", vec!["image", "ls", "--quiet", STANDIN]),
    ] {
        let left = stdout(Command::new("docker").args(&args));
        assert!(left.is_empty(), "`sandbox down` left {what}: docker {} lists {left}", args.join(" "));
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
