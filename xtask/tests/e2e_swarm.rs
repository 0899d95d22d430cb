//! The swarm target end to end, on a single-node Docker Swarm of this engine (`docker swarm init`
//! on loopback, left again however the test ends) with the real parts of the deploy test: the
//! server is `cargo xtask sandbox` in a directory of its own (sshd and Debian's `docker-registry`
//! on free loopback ports, its own Discord stand-in), the real bot image built once from a clone
//! of this repository, Postgres, and `cargo xtask` driven only as a user drives it, with
//! `LATTICE_TARGET=swarm`: `secrets`, `deploy --sha`, `rollback`, `status`.
//!
//! Flow, with two shards and a steady stream of messages into one guild of each shard all along:
//! deploy A → update to B (A's image retagged under a new commit: no second build) → rollback to
//! A → a release that never becomes healthy (A's image with `HTTP_PORT=0`), which Swarm rolls back
//! and `cargo xtask` reports as failed. Every message is answered exactly once, no shard ever has
//! two live gateway sessions (the stand-in counts per shard), and `status` names each shard's
//! task, image and state right after each step.
//!
//! One test, whose fixture is most of it; what it set up is undone when it ends, passed or
//! failed (a guard's `Drop`, which also runs while a failed assertion unwinds). Needs
//! `openssh-server` and `docker-registry`, and an engine not in swarm mode (it refuses to start
//! otherwise, rather than leave a swarm it did not make).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

mod common;
use common::{free_port, git, run, sandbox_down, sandbox_up, show, stdout, workspace};
#[path = "common/standin.rs"]
mod standin;
use standin::{assert_answered_once, control, Stream};

/// One guild per shard: shard = (guild_id >> 22) % 2, as Discord routes them.
const GUILDS: [(&str, &str); 2] =
    [("100000000000000001", "100000000000000002"), ("100000000004194305", "100000000000000004")];

/// One message every 100 ms, alternating between the two guilds.
const PACE: Duration = Duration::from_millis(100);

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).stdin(Stdio::null()).output().unwrap()
}

/// What the test set up on this machine, undone when dropped however the test ends: the stack,
/// its secrets and volume, the swarm (left), the sandbox (`sandbox down`) and the directory.
struct Machine {
    base: PathBuf,
    project: String,
    swarm: bool,
    sandbox: bool,
    /// Whether `docker_gwbridge` (which `swarm init` makes and `swarm leave` keeps) was there before.
    had_gwbridge: bool,
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.swarm {
            let p = &self.project;
            let _ = docker(&["stack", "rm", p]);
            let _ = docker(&["service", "rm", &format!("{p}_migrate")]);
            let label = format!("label=com.docker.stack.namespace={p}");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60)
                && !docker(&["ps", "--all", "--quiet", "--filter", &label]).stdout.is_empty()
            {
                std::thread::sleep(Duration::from_millis(500));
            }
            let secrets =
                docker(&["secret", "ls", "--quiet", "--filter", &format!("label=lattice.project={p}")]);
            let secrets = String::from_utf8_lossy(&secrets.stdout).to_string();
            for id in secrets.split_whitespace() {
                let _ = docker(&["secret", "rm", id]);
            }
            let left = docker(&["swarm", "leave", "--force"]);
            if !left.status.success() {
                eprintln!("`docker swarm leave --force` failed: leave the swarm by hand\n{}", show(&left));
            }
            let _ = docker(&["volume", "rm", &format!("{p}_pgdata")]);
            if !self.had_gwbridge {
                let _ = docker(&["network", "rm", "docker_gwbridge"]);
            }
        }
        if self.sandbox {
            let out = sandbox_down(&self.base.join("sandbox"));
            if !out.status.success() {
                eprintln!("cargo xtask sandbox down failed:\n{}", show(&out));
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

struct User {
    clone: PathBuf,
    env: Vec<(String, String)>,
    image: String,
}

impl User {
    fn get(&self, name: &str) -> String {
        self.env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    fn xtask(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(args).current_dir(&self.clone).stdin(Stdio::null());
        for name in ["REGISTRY_USER", "REGISTRY_PASSWORD", "GITHUB_ACTIONS"] {
            cmd.env_remove(name);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v))).output().unwrap()
    }

    fn xtask_ok(&self, args: &[&str]) -> String {
        let out = self.xtask(args);
        assert!(out.status.success(), "cargo xtask {} failed:\n{}", args.join(" "), show(&out));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    fn git(&self, args: &[&str]) -> String {
        git(&self.clone, args)
    }

    /// A new commit whose image is `from` retagged (no `dockerfile`) or built by `dockerfile` (from
    /// stdin, no context), pushed.
    fn release(&self, name: &str, from: &str, dockerfile: Option<&str>) -> String {
        std::fs::write(self.clone.join("e2e-release.txt"), format!("{name}\n")).unwrap();
        self.git(&["add", "e2e-release.txt"]);
        self.git(&["commit", "--quiet", "-m", name]);
        let sha = self.git(&["rev-parse", "HEAD"]);
        let tag = format!("{}:{sha}", self.image);
        let Some(dockerfile) = dockerfile else {
            run(Command::new("docker").args(["tag", from, &tag]));
            run(Command::new("docker").args(["push", "--quiet", &tag]));
            run(Command::new("docker").args(["rmi", "--no-prune", &tag]));
            return sha;
        };
        let mut build = Command::new("docker")
            .args(["build", "--quiet", "--tag", &tag, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        build.stdin.take().unwrap().write_all(dockerfile.as_bytes()).unwrap();
        assert!(build.wait().unwrap().success(), "docker build of {name} failed");
        run(Command::new("docker").args(["push", "--quiet", &tag]));
        run(Command::new("docker").args(["rmi", "--no-prune", &tag]));
        sha
    }

    /// `status --json` says `sha` is current and each of the two shards runs one task of its image.
    fn assert_status(&self, sha: &str, step: &str) {
        let out = self.xtask(&["status", "--json"]);
        let text = show(&out);
        assert!(out.status.success(), "{step}: cargo xtask status failed:\n{text}");
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{step}: status --json: {e}:\n{text}"));
        assert_eq!(report["current"], json!(sha), "{step}: status names another current release:\n{text}");
        let shards = report["shards"].as_array().unwrap();
        let seen: Vec<(u64, String, String, String)> = shards
            .iter()
            .map(|s| {
                let field = |k: &str| s[k].as_str().unwrap_or_default().to_string();
                (s["shard"].as_u64().unwrap(), field("task"), field("image"), field("state"))
            })
            .collect();
        let project = self.get("LATTICE_COMPOSE_PROJECT");
        let want: Vec<(u64, String, String, String)> = (0..2)
            .map(|n| {
                (
                    n,
                    format!("{project}_bot.{}", n + 1),
                    format!("{}:{sha}", self.image),
                    "Running".to_string(),
                )
            })
            .collect();
        assert_eq!(seen, want, "{step}: status shows other shards:\n{text}");
    }
}

/// The stand-in's per-shard counts: `(live, max_live)` by shard.
fn shard_sessions(addr: &str) -> BTreeMap<String, (u64, u64)> {
    let state = control(addr, "GET", "/control/state", None).unwrap();
    let shards = state["shards"].as_object().cloned().unwrap_or_default();
    shards
        .into_iter()
        .map(|(k, v)| (k, (v["live"].as_u64().unwrap_or(0), v["max_live"].as_u64().unwrap_or(0))))
        .collect()
}

/// Waits (bounded) until each shard has one live session; asserts none ever had two.
fn each_shard_serves(addr: &str, step: &str) {
    let start = Instant::now();
    loop {
        let shards = shard_sessions(addr);
        for (shard, (_, max_live)) in &shards {
            assert!(*max_live <= 1, "{step}: shard {shard} had {max_live} live gateway sessions at once");
        }
        let live: Vec<u64> = ["0", "1"].iter().map(|s| shards.get(*s).map_or(0, |c| c.0)).collect();
        if live == [1, 1] {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(90), "{step}: shards' live sessions {shards:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn scenario(base: &Path, machine: &mut Machine) {
    let clone = base.join("clone");
    run(Command::new("git").args(["clone", "--quiet", "--no-hardlinks"]).arg(workspace()).arg(&clone));
    machine.sandbox = true;
    let ports = ["--ssh-port", &free_port().to_string(), "--registry-port", &free_port().to_string()]
        .map(String::from);
    let mut env = sandbox_up(&base.join("sandbox"), &clone, &ports);
    let mut user = User { clone, image: String::new(), env: Vec::new() };
    user.env = env.clone();
    user.image = user.get("LATTICE_IMAGE");
    machine.project = user.get("LATTICE_COMPOSE_PROJECT");
    let standin = user.get("DISCORD_API_URL").trim_start_matches("http://").to_string();

    // The expensive part, once: commit A's image, built and pushed as CI's build job does.
    let sha_a = user.git(&["rev-parse", "HEAD"]);
    let pushed = user.xtask_ok(&["image", "push"]);
    assert!(pushed.contains(&sha_a), "{pushed}");
    let image_a = format!("{}:{sha_a}", user.image);
    let sha_b = user.release("B: A's image under a new commit", &image_a, None);
    let never_healthy = format!("FROM {image_a}\nENV HTTP_PORT=0\n");
    let sha_bad = user.release("C: never healthy", &image_a, Some(&never_healthy));
    run(Command::new("docker").args(["rmi", "--no-prune", &image_a, &format!("{}:latest", user.image)]));

    // The swarm, as the README has a user make it.
    machine.swarm = true;
    run(Command::new("docker").args(["swarm", "init", "--advertise-addr", "127.0.0.1"]));
    let node = stdout(Command::new("docker").args(["node", "ls", "--quiet"]));
    run(Command::new("docker").args(["node", "update", "--label-add", "lattice.postgres=true", &node]));

    let postgres_image = std::env::var("POSTGRES_IMAGE").unwrap_or_else(|_| "postgres:16-bookworm".into());
    let (guilds, channels): (Vec<&str>, Vec<&str>) = GUILDS.iter().copied().unzip();
    env.extend(
        [
            ("LATTICE_TARGET", "swarm".to_string()),
            ("DISCORD_TOKEN", "e2e-swarm-discord-token-Rt52".to_string()),
            ("OPENROUTER_API_KEY", "e2e-swarm-openrouter-key-Wm18".to_string()),
            ("POSTGRES_PASSWORD", "e2e-swarm-postgres-pass-Lc07".to_string()),
            ("DISCORD_GUILD_ID", guilds.join(",")),
            ("DISCORD_MAIN_CHANNEL_ID", channels.join(",")),
            ("DISCORD_DREAM_CHANNEL_ID", "100000000000000003".to_string()),
            ("POSTGRES_USER", "lattice".to_string()),
            ("POSTGRES_DB", "lattice".to_string()),
            ("POSTGRES_IMAGE", postgres_image),
            ("LLM_PROVIDER", "placeholder".to_string()),
            ("USER_RATE_LIMIT", "100000".to_string()),
            ("SHARD_COUNT", "2".to_string()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    user.env = env;

    // The stand-in lists a guild in READY once it has seen it, as Discord lists a bot's guilds: one
    // message in each before the bot connects (not counted: nothing was serving then).
    for (guild, channel) in GUILDS {
        let body = json!({ "content": "before the bot", "guild_id": guild, "channel_id": channel });
        control(&standin, "POST", "/control/messages", Some(&body)).unwrap();
    }
    user.xtask_ok(&["secrets", "--overwrite", "--allow-dev-settings"]);
    user.xtask_ok(&["deploy", "--sha", &sha_a]);
    user.assert_status(&sha_a, "deploy A");
    each_shard_serves(&standin, "deploy A");

    let stream = Stream::start(&standin, PACE, |i| {
        let (guild, channel) = GUILDS[i as usize % 2];
        json!({
            "content": format!("stream message {i}"),
            "author": format!("streamer{}", i % 5),
            "guild_id": guild,
            "channel_id": channel,
        })
    });
    std::thread::sleep(Duration::from_secs(2));

    user.xtask_ok(&["deploy", "--sha", &sha_b]);
    user.assert_status(&sha_b, "update to B");
    each_shard_serves(&standin, "update to B");

    user.xtask_ok(&["rollback"]);
    user.assert_status(&sha_a, "rollback to A");
    each_shard_serves(&standin, "rollback to A");

    let out = user.xtask(&["deploy", "--sha", &sha_bad]);
    let text = show(&out);
    assert!(!out.status.success(), "a release that never becomes healthy was deployed:\n{text}");
    assert!(
        text.contains(&format!("Swarm rolled every shard back to {sha_a}")),
        "the failed release is not reported as rolled back by Swarm:\n{text}"
    );
    user.assert_status(&sha_a, "the release Swarm rolled back");
    each_shard_serves(&standin, "the release Swarm rolled back");
    let status = user.xtask_ok(&["status"]);
    let history: Vec<Vec<&str>> =
        status.lines().map(|l| l.split_whitespace().skip(1).take(3).collect()).collect();
    for entry in [["deploy", &sha_bad[..12], "unhealthy"], ["switch-back", &sha_a[..12], "ok"]] {
        assert!(history.contains(&entry.to_vec()), "the history does not say {entry:?}:\n{status}");
    }

    std::thread::sleep(Duration::from_secs(2));
    let sent = stream.stop();
    let answered = std::panic::catch_unwind(|| assert_answered_once(&standin, &sent));
    if let Err(lost) = answered {
        // What the shards said, before the stack is removed with the swarm.
        let bot = format!("{}_bot", user.get("LATTICE_COMPOSE_PROJECT"));
        let running =
            docker(&["ps", "--quiet", "--filter", &format!("label=com.docker.swarm.service.name={bot}")]);
        for id in String::from_utf8_lossy(&running.stdout).split_whitespace() {
            let env = docker(&["inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}", id]);
            let logs = docker(&["logs", "--tail", "40", id]);
            eprintln!("bot task {id}:\n{}\n{}", String::from_utf8_lossy(&env.stdout), show(&logs));
        }
        let state = control(&standin, "GET", "/control/state", None);
        eprintln!("the stand-in's counts: {state:?}");
        std::panic::resume_unwind(lost);
    }
    let shards = shard_sessions(&standin);
    assert!(shards.values().all(|(_, max_live)| *max_live == 1), "per shard (live, max live): {shards:?}");
    println!(
        "    {} messages into both shards, each answered once; per shard (live, max live): {shards:?}",
        sent.len()
    );
}

/// The whole flow of the module docs, on a swarm this test makes and leaves (see [`Machine`]).
#[test]
fn e2e_a_two_shard_swarm_takes_an_update_a_rollback_and_a_release_swarm_rolls_back() {
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
    assert_eq!(
        state, "inactive",
        "the Docker Engine is in swarm mode already: this test makes a swarm of its own and leaves it at \
         the end, so it does not run on one it did not make. Leave it (`docker swarm leave --force`, if \
         nothing else uses it) and run the test again."
    );
    let started = Instant::now();
    let base = std::env::temp_dir().join(format!("lattice-swarm-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let had_gwbridge = docker(&["network", "inspect", "docker_gwbridge"]).status.success();
    let mut machine =
        Machine { base: base.clone(), project: String::new(), swarm: false, sandbox: false, had_gwbridge };
    scenario(&base, &mut machine);
    drop(machine);
    let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
    assert_eq!(
        state, "inactive",
        "the engine is still in swarm mode after the test: `docker swarm leave --force`"
    );
    println!("    finished in {:.0} s", started.elapsed().as_secs_f64());
}
