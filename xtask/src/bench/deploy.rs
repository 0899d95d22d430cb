//! `bench deploy`: `cargo xtask deploy` and `rollback` beside the original flow, on one local
//! server, with a message stream running through the Discord stand-in.
//!
//! The server is built as the deploy end-to-end test builds it, on ports of its own: OpenSSH's
//! sshd on a free loopback port as a non-root user in the `docker` group (`lattice-bench`), and
//! Debian's docker-registry on another. Two images: A is a clone of HEAD built and pushed with
//! `cargo xtask image push`, B the same after a commit that adds a static to bot/src (a code-only
//! change: its binary, so its release layer, differs). Their local tags are removed, so the
//! server pulls.
//!
//! Two deploy directories and compose projects on that server, each with its own Postgres and its
//! own stand-in (a container of image A on the host network, reached by the bots through the
//! docker0 address): ours, driven by this very xtask (`deploy --sha B`, `rollback --sha A`), and
//! the original flow (bench/original.sh over one ssh session: pull, `compose run --rm` migrate,
//! `up -d`, Docker health polled every 5 s), which rolls back by running itself with A. Each
//! round runs both flows' deploy then rollback, the flow that goes first alternating; before
//! every deploy B's image is removed from the server, so every deploy pulls it.
//!
//! While each run goes, messages go into the main channel at 20/s, and the bench watches:
//! - serving: the stand-in's control state, polled every 20 ms: serving again = a new gateway
//!   session (IDENTIFY or RESUME) live after the start;
//! - no serving bot: the time the stand-in had no live gateway session (its own gap count);
//! - gateway gap: the longest time between two replies while the stream ran (steady: 0.05 s), i.e.
//!   from the last message the old bot handled to the first the new one did;
//! - lost / twice: every message sent from 2 s before to 2 s after the run, answered never / more
//!   than once (the stand-in records every post);
//! - server CPU-seconds, from the start until the run exited and the new bot served: the sshd the
//!   bench started runs in a cpuacct cgroup of its own, so its sessions and everything they start
//!   (shells, docker and compose clients, the detached switch script) are counted, exited
//!   processes included; plus each container of the flow's compose
//!   project (its cgroup under /sys/fs/cgroup/cpuacct/docker, sampled every 100 ms, so a container
//!   removed mid-run loses at most its last 100 ms). dockerd, containerd and the shims are shown
//!   apart (their /proc utime+stime): they serve the whole machine, so that figure is an upper bound;
//! - bytes pulled: what the registry served (`http.response.written` of its blob GETs in its log).

use std::{
    collections::HashMap,
    io::Write as _,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Child,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use xshell::{Shell, TempDir};

use super::{
    bot::{longest_gap, ReplyWatch, Sender, REPLY_DEADLINE},
    clone_head, http, median, Report,
};
use crate::{
    plan::{Cmd, Line, Mode, Plan},
    project::Project,
};

/// The server's ssh user.
const SERVER_USER: &str = "lattice-bench";
/// The stream: one message every 50 ms.
const PACE: Duration = Duration::from_millis(50);
/// Stream before and after each run.
const MARGIN: Duration = Duration::from_secs(2);
/// How long one deploy or rollback may take.
const RUN_DEADLINE: Duration = Duration::from_secs(300);
/// Not secrets: the stand-in accepts any token, and these exist only on the bench's server.
const APP_ENV: &[(&str, &str)] = &[
    ("DISCORD_TOKEN", "bench-discord-token"),
    ("OPENROUTER_API_KEY", "bench-openrouter-key"),
    ("POSTGRES_PASSWORD", "bench-postgres-password"),
    ("POSTGRES_USER", "lattice"),
    ("POSTGRES_DB", "lattice"),
    ("DISCORD_GUILD_ID", "100000000000000001"),
    ("DISCORD_MAIN_CHANNEL_ID", "100000000000000002"),
    ("DISCORD_DREAM_CHANNEL_ID", "100000000000000003"),
    ("LLM_PROVIDER", "placeholder"),
    ("USER_RATE_LIMIT", "100000"),
];
/// The original flow (see the script's header).
const ORIGINAL_SH: &str = include_str!("original.sh");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Flow {
    Ours,
    Original,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Deploy,
    Rollback,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
struct Run {
    flow: Flow,
    kind: Kind,
    round: usize,
    start_to_serving_s: f64,
    start_to_exit_s: f64,
    no_serving_bot_s: f64,
    gateway_gap_s: f64,
    sent: usize,
    lost: usize,
    answered_twice: usize,
    server_cpu_s: f64,
    sshd_cpu_s: f64,
    containers_cpu_s: f64,
    docker_daemons_cpu_s: f64,
    bytes_pulled: u64,
    /// The step lines `cargo xtask deploy` printed (ours only).
    steps: Vec<String>,
}

pub fn run(plan: &Plan, project: &Project, report: &mut Report, rounds: u64) -> Result<()> {
    let rounds = rounds as usize;
    let postgres_image = project.env.get("POSTGRES_IMAGE").unwrap_or("lattice-local/postgres:15").to_string();
    if !plan.is_dry_run() {
        require_tools(plan, &postgres_image)?;
    }
    let server = Server::start(plan)?;
    let (_clone_dir, clone) = clone_head(plan, project)?;
    let images = Images::build(plan, &clone, &server.registry)?;
    let Some(images) = images else {
        plan.note(&format!(
            "then: a stand-in container per flow, `secrets` and a first deploy of A for each; {rounds} rounds of \
             [ours: deploy B, rollback A] and [original: original.sh B, original.sh A] (alternating which goes \
             first, B's image removed before each deploy) with 20 messages/s through the stand-in; medians, \
             ratios, a table and JSON"
        ));
        return Ok(());
    };
    let mut flows = Vec::new();
    for flow in [Flow::Ours, Flow::Original] {
        flows.push(FlowSetup::start(plan, &server, &clone, &images, flow, &postgres_image)?);
    }
    let mut runs = Vec::new();
    for round in 1..=rounds {
        let order: Vec<usize> = if round % 2 == 1 { vec![0, 1] } else { vec![1, 0] };
        for i in order {
            let flow = &flows[i];
            for kind in [Kind::Deploy, Kind::Rollback] {
                if kind == Kind::Deploy {
                    plan.cleanup(Cmd::of("docker image rm").arg(images.reference(&images.b)));
                }
                let run = measure(plan, &server, flow, &images, kind, round)?;
                eprintln!(
                    "  round {round} {:?} {:?}: serving after {:.2} s, exit after {:.2} s, no bot {:.2} s, gap {:.2} s, \
                     lost {}, twice {}, server CPU {:.2} s, pulled {:.1} MB",
                    run.flow,
                    run.kind,
                    run.start_to_serving_s,
                    run.start_to_exit_s,
                    run.no_serving_bot_s,
                    run.gateway_gap_s,
                    run.lost,
                    run.answered_twice,
                    run.server_cpu_s,
                    run.bytes_pulled as f64 / 1e6
                );
                runs.push(run);
            }
        }
    }
    let table = summary(&runs, rounds, report);
    println!("{table}");
    let json = project.root.join("target/bench-deploy.json");
    std::fs::create_dir_all(project.root.join("target"))?;
    let body = serde_json::json!({ "rounds": rounds, "pace_ms": PACE.as_millis() as u64, "runs": runs, "table": table });
    std::fs::write(&json, serde_json::to_string_pretty(&body)?)
        .with_context(|| format!("writing {}", json.display()))?;
    println!("runs written to {}", json.display());
    drop(flows);
    Ok(())
}

fn require_tools(plan: &Plan, postgres_image: &str) -> Result<()> {
    let missing: Vec<&str> = ["/usr/sbin/sshd", "/usr/bin/docker-registry", "/usr/bin/ssh-keygen"]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found: install them (`apt-get install openssh-server docker-registry`; .ci/run does it)",
            missing.join(", ")
        );
    }
    if plan.read(Cmd::of("id -u"))? != "0" {
        bail!("bench deploy runs as root: it creates the server's ssh user {SERVER_USER} and a cgroup for its sshd");
    }
    if !plan.check(Cmd::of("docker image inspect").arg(postgres_image))? {
        bail!(
            "the Postgres image {postgres_image} is not on this machine: build it with `.ci/local-images.sh postgres`, \
             or set POSTGRES_IMAGE to one that is"
        );
    }
    Ok(())
}

// ---- the server: sshd and the registry ----

struct Server<'p, 'a> {
    plan: &'p Plan<'a>,
    /// Keys, configs and logs; removed with the server.
    _dir: TempDir,
    registry: String,
    registry_log: PathBuf,
    home: PathBuf,
    children: Vec<Child>,
    /// The sshd's cpuacct cgroup.
    cgroup: PathBuf,
    /// The SSH_* variables as CI secrets would hold them.
    ssh_env: Vec<(String, String)>,
    /// ssh options for the original flow's sessions.
    ssh_options: Vec<String>,
}

impl<'p, 'a> Server<'p, 'a> {
    fn start(plan: &'p Plan<'a>) -> Result<Server<'p, 'a>> {
        let sh = plan.sh();
        let dir = sh.create_temp_dir()?;
        let d = dir.path().to_path_buf();
        // sshd reads authorized_keys as the user: the directory must be traversable.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        let ssh_port = super::bot::free_port()?;
        let registry_port = super::bot::free_port()?;
        let registry = format!("127.0.0.1:{registry_port}");
        let cgroup = PathBuf::from(format!("/sys/fs/cgroup/cpuacct/lattice-bench-{}", std::process::id()));
        let mut server = Server {
            plan,
            registry: registry.clone(),
            registry_log: d.join("registry.log"),
            home: PathBuf::new(),
            children: Vec::new(),
            cgroup,
            ssh_env: Vec::new(),
            ssh_options: Vec::new(),
            _dir: dir,
        };
        plan.note(&format!(
            "the server: user {SERVER_USER} (docker group), sshd on 127.0.0.1:{ssh_port} in cpuacct cgroup {}, \
             docker-registry on {registry}",
            server.cgroup.display()
        ));
        if plan.is_dry_run() {
            plan.run(Cmd::of("useradd --create-home --shell /bin/sh --groups docker").arg(SERVER_USER))?;
            plan.run(Cmd::of("/usr/sbin/sshd -D -e -f").arg(d.join("sshd_config")))?;
            plan.run(Cmd::of("docker-registry serve").arg(d.join("registry.yml")))?;
            return Ok(server);
        }
        if !plan.check(Cmd::of("id -u").arg(SERVER_USER))? {
            plan.run(Cmd::of("useradd --create-home --shell /bin/sh --groups docker").arg(SERVER_USER))?;
        }
        plan.run(Cmd::of("usermod --append --groups docker").arg(SERVER_USER))?;
        // `*`, not the `!` useradd leaves: a locked account may not log in even by key.
        plan.run(Cmd::of("usermod --password *").arg(SERVER_USER))?;
        let passwd = plan.read(Cmd::of("getent passwd").arg(SERVER_USER))?;
        server.home = PathBuf::from(passwd.split(':').nth(5).context("getent passwd: no home")?);
        if !plan.check(Cmd::of("runuser -u").arg(SERVER_USER).args(["--", "docker", "compose", "version"]))? {
            bail!("Docker Compose v2 is not installed for every user (.ci/run installs it in /usr/local/lib/docker/cli-plugins)");
        }
        for (name, comment) in [("host_key", "bench-host"), ("client_key", "bench-client")] {
            plan.run(
                Cmd::of("ssh-keygen -q -t ed25519 -N")
                    .arg("")
                    .arg("-C")
                    .arg(comment)
                    .arg("-f")
                    .arg(d.join(name)),
            )?;
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
        std::fs::set_permissions(d.join("authorized_keys"), std::fs::Permissions::from_mode(0o644))?;
        let config = format!(
            "ListenAddress 127.0.0.1\nPort {ssh_port}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nAllowUsers {SERVER_USER}\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin no\nUsePAM no\nStrictModes no\nMaxSessions 50\n\
             MaxStartups 50\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config)?;
        std::fs::create_dir_all("/run/sshd")?;
        std::fs::create_dir_all(&server.cgroup)
            .with_context(|| format!("creating the cgroup {} for sshd", server.cgroup.display()))?;
        let sshd = plan
            .start(Cmd::of("/usr/sbin/sshd -D -e -f").arg(d.join("sshd_config")), &d.join("sshd.log"))?
            .context("sshd")?;
        std::fs::write(server.cgroup.join("cgroup.procs"), sshd.id().to_string())
            .context("moving sshd into its cgroup")?;
        server.children.push(sshd);
        let registry_config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}/registry\nhttp:\n  addr: {registry}\n",
            d.display()
        );
        std::fs::write(d.join("registry.yml"), registry_config)?;
        let registry_child =
            plan.start(Cmd::of("docker-registry serve").arg(d.join("registry.yml")), &server.registry_log)?;
        server.children.push(registry_child.context("docker-registry")?);
        wait_for_port(ssh_port, "sshd")?;
        wait_for_port(registry_port, "docker-registry")?;
        let host_key = std::fs::read_to_string(d.join("host_key.pub"))?;
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        let known = format!("[127.0.0.1]:{ssh_port} {}", host_key.join(" "));
        std::fs::write(d.join("known_hosts"), format!("{known}\n"))?;
        server.ssh_env = vec![
            ("SSH_HOST".into(), "127.0.0.1".into()),
            ("SSH_PORT".into(), ssh_port.to_string()),
            ("SSH_USER".into(), SERVER_USER.into()),
            ("SSH_PRIVATE_KEY".into(), std::fs::read_to_string(d.join("client_key"))?),
            ("SSH_KNOWN_HOSTS".into(), known),
        ];
        server.ssh_options = vec![
            "-i".into(),
            d.join("client_key").display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", d.join("known_hosts").display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-p".into(),
            ssh_port.to_string(),
            format!("{SERVER_USER}@127.0.0.1"),
        ];
        Ok(server)
    }

    /// `ssh … '<remote>'` as the original flow's workflow would run it.
    fn ssh(&self, remote: Line) -> Cmd {
        Cmd::of("ssh").args(&self.ssh_options).arg(remote.to_string())
    }

    /// CPU nanoseconds of everything that ran in the sshd's cgroup so far.
    fn sshd_cpu_ns(&self) -> u64 {
        read_u64(&self.cgroup.join("cpuacct.usage"))
    }

    /// Bytes the registry has served of blobs so far (its log).
    fn bytes_served(&self) -> u64 {
        let log = std::fs::read_to_string(&self.registry_log).unwrap_or_default();
        blob_bytes(&log)
    }
}

impl Drop for Server<'_, '_> {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.plan.is_dry_run() {
            // Empty once sshd and its sessions have ended.
            for _ in 0..50 {
                if std::fs::remove_dir(&self.cgroup).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn wait_for_port(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} is not listening on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// The bytes of blob GETs in a docker-registry log (`http.response.written=N` of each
/// `response completed` line for a GET of `/v2/…/blobs/…`).
fn blob_bytes(log: &str) -> u64 {
    log.lines()
        .filter(|l| {
            l.contains("response completed") && l.contains("http.request.method=GET") && l.contains("/blobs/")
        })
        .filter_map(|l| {
            let at = l.find("http.response.written=")? + "http.response.written=".len();
            l[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok()
        })
        .sum()
}

// ---- the images ----

struct Images<'p, 'a> {
    plan: &'p Plan<'a>,
    repository: String,
    a: String,
    b: String,
    /// A's image under a name of the bench's own, for the stand-ins: its layers stay.
    standin: String,
}

impl<'p, 'a> Images<'p, 'a> {
    /// A (the clone's HEAD) and B (a one-line commit to bot/src) built and pushed by this xtask,
    /// their local tags then removed. `None` in a dry run.
    fn build(plan: &'p Plan<'a>, clone: &Path, registry: &str) -> Result<Option<Images<'p, 'a>>> {
        let repository = format!("{registry}/lattice-bot");
        let clone_sh = Shell::new()?;
        clone_sh.change_dir(clone);
        let clone_plan = Plan::new(&clone_sh, plan.is_dry_run());
        let exe = std::env::current_exe().context("finding the running xtask")?;
        plan.note(&format!("in {}: LATTICE_IMAGE={repository} cargo xtask image push (A)", clone.display()));
        let push = || -> Result<String> {
            let sha = clone_plan.read(Cmd::of("git rev-parse HEAD"))?;
            clone_plan
                .run(Cmd::new(&exe).args(["image", "push"]).env("LATTICE_IMAGE", &repository))
                .with_context(|| format!("building and pushing {sha}"))?;
            Ok(sha)
        };
        let a = push()?;
        let main_rs = clone.join("bot/src/main.rs");
        plan.note(
            "B: a commit adding a static to bot/src/main.rs (a code change), built and pushed the same way",
        );
        if plan.is_dry_run() {
            return Ok(None);
        }
        let mut file = std::fs::OpenOptions::new().append(true).open(&main_rs)?;
        // Code, not a comment: the binary, and so the release layer, differ from A's.
        writeln!(file, "#[used]\nstatic BENCH_RELEASE: [u8; 9] = *b\"release B\";")?;
        clone_plan.run(
            Cmd::of(
                "git -c user.name=lattice-bench -c user.email=bench@localhost commit --quiet --all --message",
            )
            .arg("bench deploy: release B"),
        )?;
        let b = push()?;
        let standin = format!("lattice-bench-standin:{}", std::process::id());
        let images = Images { plan, a: a.clone(), b: b.clone(), standin: standin.clone(), repository };
        plan.run(Cmd::of("docker tag").arg(images.reference(&a)).arg(&standin))?;
        plan.run(Cmd::of("docker rmi --no-prune").arg(images.reference(&a)))?;
        // B with the build's intermediate images, which hold its layers: the server must pull them.
        plan.run(
            Cmd::of("docker rmi").arg(format!("{}:latest", images.repository)).arg(images.reference(&b)),
        )?;
        Ok(Some(images))
    }

    fn reference(&self, sha: &str) -> String {
        format!("{}:{sha}", self.repository)
    }
}

/// The tags the bench made or pulled go (their layers stay in the cache, for the next run).
impl Drop for Images<'_, '_> {
    fn drop(&mut self) {
        let tags = [self.reference(&self.a), self.reference(&self.b), self.standin.clone()];
        for tag in tags {
            self.plan.cleanup(Cmd::of("docker rmi --no-prune").arg(tag));
        }
    }
}

// ---- a flow's deploy directory, compose project and stand-in ----

struct FlowSetup<'p, 'a> {
    plan: &'p Plan<'a>,
    flow: Flow,
    deploy_path: String,
    project: String,
    standin: String,
    standin_addr: String,
    clone: PathBuf,
    home: PathBuf,
    /// SSH_*, LATTICE_* and the app's variables, for this xtask in the clone.
    env: Vec<(String, String)>,
}

impl<'p, 'a> FlowSetup<'p, 'a> {
    fn start(
        plan: &'p Plan<'a>,
        server: &Server,
        clone: &Path,
        images: &Images,
        flow: Flow,
        postgres_image: &str,
    ) -> Result<FlowSetup<'p, 'a>> {
        let id = std::process::id();
        let name = match flow {
            Flow::Ours => "ours",
            Flow::Original => "original",
        };
        let port = super::bot::free_port()?;
        let standin = format!("lattice-bench-{name}-standin-{id}");
        plan.run(
            Cmd::of("docker run --detach --name")
                .arg(&standin)
                .args(["--network", "host"])
                .arg(&images.standin)
                .args(["discord-standin", "--listen"])
                .arg(format!("0.0.0.0:{port}")),
        )?;
        let discord = format!("{}:{port}", docker0_address(plan));
        let deploy_path = format!("lattice-bench-{name}-{id}");
        let mut env = server.ssh_env.clone();
        env.extend(APP_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env.extend([
            ("POSTGRES_IMAGE".to_string(), postgres_image.to_string()),
            ("DISCORD_API_URL".into(), format!("http://{discord}")),
            ("DISCORD_GATEWAY_URL".into(), format!("ws://{discord}")),
            ("LATTICE_IMAGE".into(), images.repository.clone()),
            ("LATTICE_DEPLOY_PATH".into(), deploy_path.clone()),
            ("LATTICE_COMPOSE_PROJECT".into(), format!("lattice-bench-{name}-{id}")),
        ]);
        let setup = FlowSetup {
            plan,
            flow,
            project: format!("lattice-bench-{name}-{id}"),
            deploy_path,
            standin,
            standin_addr: format!("127.0.0.1:{port}"),
            clone: clone.to_path_buf(),
            home: server.home.clone(),
            env,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http::get_json(&setup.standin_addr, "/control/state", Duration::from_secs(2)).is_err() {
            if Instant::now() > deadline {
                bail!("the stand-in {} did not come up on {}", setup.standin, setup.standin_addr);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        plan.note(&format!("{name}: secrets, then a first release of A (not measured)"));
        setup.xtask(&["secrets", "--allow-dev-settings"])?;
        match flow {
            Flow::Ours => setup.xtask(&["deploy", "--sha", &images.a]).map(drop)?,
            Flow::Original => {
                for file in ["base.yml", "prod.yml"] {
                    let text = std::fs::read_to_string(clone.join("compose").join(file))?;
                    plan.run(
                        server
                            .ssh(Cmd::of("cat").write_to(&format!("{}/{file}", setup.deploy_path)))
                            .stdin(text),
                    )?;
                }
                plan.run(server.ssh(setup.original(&images.reference(&images.a))))?;
            }
        }
        Ok(setup)
    }

    /// This xtask in the clone with the flow's variables (never printed); its output.
    fn xtask(&self, args: &[&str]) -> Result<String> {
        let exe = std::env::current_exe()?;
        let mut cmd = Cmd::new(exe).args(args);
        for (k, v) in &self.env {
            cmd = cmd.env(k, v);
        }
        for name in ["REGISTRY_USER", "REGISTRY_PASSWORD", "GITHUB_ACTIONS"] {
            cmd = cmd.env_remove(name);
        }
        let sh = Shell::new()?;
        sh.change_dir(&self.clone);
        let plan = Plan::new(&sh, self.plan.is_dry_run());
        let out = plan.output(cmd, Mode::Quiet)?.context("dry run")?;
        let text = [String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)].concat();
        if !out.status.success() {
            bail!("cargo xtask {} failed ({}):\n{text}", args.join(" "), out.status);
        }
        Ok(text)
    }

    /// The original flow's remote line for `image`.
    fn original(&self, image: &str) -> Line {
        Cmd::of("cd")
            .arg(&self.deploy_path)
            .and(Cmd::script("original.sh", ORIGINAL_SH).arg(&self.project).arg(image))
    }
}

impl Drop for FlowSetup<'_, '_> {
    fn drop(&mut self) {
        let plan = self.plan;
        plan.cleanup(Cmd::of("docker rm --force").arg(&self.standin));
        // Every container and volume of the project, whichever release started it.
        let ids = plan
            .probe(
                Cmd::of("docker ps --all --quiet --filter")
                    .arg(format!("label=com.docker.compose.project={}", self.project)),
            )
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            plan.cleanup(Cmd::of("docker rm --force --volumes").args(&ids));
        }
        plan.cleanup(Cmd::of("docker volume rm").arg(format!("{}_pgdata", self.project)));
        plan.cleanup(Cmd::of("docker network rm").arg(format!("{}_default", self.project)));
        if !plan.is_dry_run() && !self.home.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(self.home.join(&self.deploy_path));
        }
    }
}

/// The docker0 bridge's address: the host as the containers reach it (Docker's own network
/// inspect names no gateway on every engine).
fn docker0_address(plan: &Plan) -> String {
    let text = plan.probe(Cmd::of("ip -4 -o addr show dev docker0")).unwrap_or_default();
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .map(str::to_string)
        .unwrap_or_else(|| "172.17.0.1".to_string())
}

// ---- one measured run ----

fn measure(
    plan: &Plan,
    server: &Server,
    flow: &FlowSetup,
    images: &Images,
    kind: Kind,
    round: usize,
) -> Result<Run> {
    let target = match kind {
        Kind::Deploy => &images.b,
        Kind::Rollback => &images.a,
    };
    let addr = &flow.standin_addr;
    let before = standin_state(addr)?;
    let watch = ReplyWatch::start(addr);
    let sender = Sender::start(addr, PACE);
    let sessions = SessionWatch::start(addr);
    std::thread::sleep(MARGIN);

    let sshd_before = server.sshd_cpu_ns();
    let daemons_before = daemons_cpu_ticks();
    let bytes_before = server.bytes_served();
    let containers = ContainerCpu::start(&flow.project);
    let started = Instant::now();
    let output = match flow.flow {
        Flow::Ours => {
            let args = match kind {
                Kind::Deploy => vec!["deploy", "--sha", target.as_str()],
                Kind::Rollback => vec!["rollback", "--sha", target.as_str()],
            };
            flow.xtask(&args)?
        }
        Flow::Original => {
            let out = plan
                .output(server.ssh(flow.original(&images.reference(target))), Mode::Quiet)?
                .context("dry run")?;
            let text = [String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)].concat();
            if !out.status.success() {
                bail!("the original flow failed ({}):\n{text}", out.status);
            }
            text
        }
    };
    let exited = started.elapsed();
    if exited > RUN_DEADLINE {
        eprintln!("  (the run took {} s)", exited.as_secs());
    }
    // Wait for the new bot's session (the original flow may exit before it is live).
    let deadline = Instant::now() + Duration::from_secs(60);
    let serving = loop {
        if let Some(at) = sessions.serving_after(started, before.sessions()) {
            break at;
        }
        if Instant::now() > deadline {
            bail!("no new gateway session after the {kind:?} of {:?}:\n{output}", flow.flow);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // What the deploy cost the server: from its start until it exited and the new bot served.
    let containers_ns = containers.stop();
    let sshd_ns = server.sshd_cpu_ns().saturating_sub(sshd_before);
    let daemons_ticks = daemons_cpu_ticks().saturating_sub(daemons_before);
    std::thread::sleep(MARGIN);
    let sent = sender.stop();
    let deadline = Instant::now() + REPLY_DEADLINE;
    while watch.answered(&sent) < sent.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let replies = watch.stop();
    sessions.stop();
    let after = standin_state(addr)?;
    let answered = sent.iter().filter(|id| replies.by_message.contains_key(*id)).count();
    let twice = sent.iter().filter(|id| replies.by_message.get(*id).is_some_and(|r| r.len() > 1)).count();
    let gaps: u64 = after.gaps_ms.iter().skip(before.gaps_ms.len()).sum();
    let window: Vec<Instant> = replies.arrivals.iter().copied().filter(|t| *t >= started).collect();
    let steps = output.lines().filter(|l| l.starts_with("  ")).map(str::to_string).collect();
    let ticks = clock_ticks(plan);
    Ok(Run {
        flow: flow.flow,
        kind,
        round,
        start_to_serving_s: serving.saturating_duration_since(started).as_secs_f64(),
        start_to_exit_s: exited.as_secs_f64(),
        no_serving_bot_s: gaps as f64 / 1000.0,
        gateway_gap_s: longest_gap(&window).as_secs_f64(),
        sent: sent.len(),
        lost: sent.len() - answered,
        answered_twice: twice,
        server_cpu_s: (sshd_ns + containers_ns) as f64 / 1e9,
        sshd_cpu_s: sshd_ns as f64 / 1e9,
        containers_cpu_s: containers_ns as f64 / 1e9,
        docker_daemons_cpu_s: daemons_ticks as f64 / ticks,
        bytes_pulled: server.bytes_served().saturating_sub(bytes_before),
        steps,
    })
}

/// The stand-in's counts that matter here.
struct StandinState {
    identifies: u64,
    resumes: u64,
    gaps_ms: Vec<u64>,
}

impl StandinState {
    fn sessions(&self) -> u64 {
        self.identifies + self.resumes
    }
}

fn standin_state(addr: &str) -> Result<StandinState> {
    let state = http::get_json(addr, "/control/state", Duration::from_secs(5))?;
    Ok(parse_state(&state))
}

fn parse_state(state: &Value) -> StandinState {
    let count = |key: &str| state.get(key).and_then(Value::as_u64).unwrap_or(0);
    StandinState {
        identifies: count("identifies"),
        resumes: count("resumes"),
        gaps_ms: state
            .get("session_gaps_ms")
            .and_then(Value::as_array)
            .map(|gaps| gaps.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default(),
    }
}

/// The stand-in's session count and live sessions, polled every 20 ms from a thread.
struct SessionWatch {
    samples: Arc<Mutex<Vec<(Instant, u64, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SessionWatch {
    fn start(addr: &str) -> SessionWatch {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, flag, addr) = (samples.clone(), stop.clone(), addr.to_string());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                if let Ok(state) = http::get_json(&addr, "/control/state", Duration::from_secs(2)) {
                    let parsed = parse_state(&state);
                    let live = state.get("live").and_then(Value::as_u64).unwrap_or(0);
                    shared.lock().expect("samples").push((Instant::now(), parsed.sessions(), live));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        SessionWatch { samples, stop, thread: Some(thread) }
    }

    /// The first moment after `started` at which a session newer than the first `sessions` was live.
    fn serving_after(&self, started: Instant, sessions: u64) -> Option<Instant> {
        let samples = self.samples.lock().expect("samples");
        samples.iter().find(|(at, count, live)| *at >= started && *count > sessions && *live > 0).map(|s| s.0)
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// CPU of a compose project's containers, from their cpuacct cgroups (sampled every 100 ms: a
/// container removed in between loses its last 100 ms at most). Which project a container is of
/// comes from its config file in Docker's data directory.
struct ContainerCpu {
    total: Arc<Mutex<HashMap<String, (u64, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const DOCKER_CGROUPS: &str = "/sys/fs/cgroup/cpuacct/docker";

impl ContainerCpu {
    fn start(project: &str) -> ContainerCpu {
        let total: Arc<Mutex<HashMap<String, (u64, u64)>>> = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, flag, project) = (total.clone(), stop.clone(), project.to_string());
        let mut first = true;
        let mut theirs: HashMap<String, bool> = HashMap::new();
        let mut sample = move |shared: &Mutex<HashMap<String, (u64, u64)>>| {
            let Ok(dir) = std::fs::read_dir(DOCKER_CGROUPS) else { return };
            for entry in dir.flatten() {
                let id = entry.file_name().to_string_lossy().to_string();
                if !entry.path().is_dir() {
                    continue;
                }
                let ours = *theirs
                    .entry(id.clone())
                    .or_insert_with(|| container_project(&id).as_deref() == Some(&project));
                if !ours {
                    continue;
                }
                let usage = read_u64(&entry.path().join("cpuacct.usage"));
                let mut t = shared.lock().expect("cpu");
                // (usage when first seen, last usage): a container already running counts from now.
                let e = t.entry(id).or_insert((if first { usage } else { 0 }, usage));
                e.1 = e.1.max(usage);
            }
            first = false;
        };
        sample(&total);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                sample(&shared);
            }
        });
        ContainerCpu { total, stop, thread: Some(thread) }
    }

    /// CPU nanoseconds of the project's containers since the start.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.total.lock().expect("cpu").values().map(|(from, to)| to.saturating_sub(*from)).sum()
    }
}

/// The compose project a container belongs to, from Docker's own record of it.
fn container_project(id: &str) -> Option<String> {
    let path = format!("/var/lib/docker/containers/{id}/config.v2.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    config.pointer("/Config/Labels/com.docker.compose.project")?.as_str().map(str::to_string)
}

/// utime + stime (clock ticks) of dockerd, containerd and the containerd shims, machine-wide.
fn daemons_cpu_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim();
            if !(comm == "dockerd" || comm == "containerd" || comm.starts_with("containerd-shim")) {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// Clock ticks per second (`getconf CLK_TCK`).
fn clock_ticks(plan: &Plan) -> f64 {
    plan.probe(Cmd::of("getconf CLK_TCK")).and_then(|s| s.parse().ok()).unwrap_or(100.0)
}

// ---- the summary ----

/// The medians side by side, into the report and as a table.
fn summary(runs: &[Run], rounds: usize, report: &mut Report) -> String {
    type Get = fn(&Run) -> f64;
    let figures: &[(&str, &str, &str, Get)] = &[
        ("start_to_serving", "start -> serving", "s", |r| r.start_to_serving_s),
        ("start_to_exit", "start -> exit", "s", |r| r.start_to_exit_s),
        ("no_serving_bot", "no serving bot", "s", |r| r.no_serving_bot_s),
        ("gateway_gap", "gateway gap", "s", |r| r.gateway_gap_s),
        ("lost", "messages lost", "", |r| r.lost as f64),
        ("answered_twice", "answered twice", "", |r| r.answered_twice as f64),
        ("server_cpu", "server CPU", "s", |r| r.server_cpu_s),
        ("server_cpu_sshd", "  sshd session", "s", |r| r.sshd_cpu_s),
        ("server_cpu_containers", "  containers", "s", |r| r.containers_cpu_s),
        ("docker_daemons_cpu", "dockerd+containerd*", "s", |r| r.docker_daemons_cpu_s),
        ("pulled", "pulled", "MB", |r| r.bytes_pulled as f64 / 1e6),
    ];
    let med = |flow: Flow, kind: Kind, get: Get| -> f64 {
        let values: Vec<f64> = runs.iter().filter(|r| r.flow == flow && r.kind == kind).map(get).collect();
        median(&values).unwrap_or(f64::NAN)
    };
    let mut out = format!(
        "deploy A->B and rollback B->A, local server (sshd + registry on loopback), medians of {rounds} interleaved runs, \
         {} msg/s through the stand-in\n",
        1000 / PACE.as_millis()
    );
    out.push_str(&format!(
        "{:<22}{:>9}{:>10}{:>8}   {:>9}{:>10}{:>8}\n",
        "", "deploy", "", "", "rollback", "", ""
    ));
    out.push_str(&format!(
        "{:<22}{:>9}{:>10}{:>8}   {:>9}{:>10}{:>8}\n",
        "figure", "ours", "original", "ratio", "ours", "original", "ratio"
    ));
    for (key, label, unit, get) in figures {
        let mut line =
            format!("{:<22}", if unit.is_empty() { label.to_string() } else { format!("{label} ({unit})") });
        for kind in [Kind::Deploy, Kind::Rollback] {
            let (ours, original) = (med(Flow::Ours, kind, *get), med(Flow::Original, kind, *get));
            let ratio = if original > 0.0 { format!("{:.2}", ours / original) } else { "-".into() };
            line.push_str(&format!("{:>9.2}{:>10.2}{:>8}   ", ours, original, ratio));
            let k = match kind {
                Kind::Deploy => "deploy",
                Kind::Rollback => "rollback",
            };
            let how = format!("median of {rounds}; see the table below and bench/deploy.rs");
            report.number("deploy", &format!("{k}_{key}_ours"), ours, unit, &how);
            report.number("deploy", &format!("{k}_{key}_original"), original, unit, &how);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(
        "server CPU = the bench's sshd cgroup (sessions, shells, docker/compose clients, the switch script) + the \
         project's containers' cgroups;\n* dockerd+containerd(+shims): machine-wide /proc CPU while the run went, an \
         upper bound (other work on the daemon counts too)",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulled_bytes_are_the_registry_blob_gets() {
        let log = "time=\"x\" level=info msg=\"response completed\" http.request.method=GET \
                   http.request.uri=\"/v2/lattice-bot/blobs/sha256:ab\" http.response.status=200 http.response.written=1500 \n\
                   time=\"x\" level=info msg=\"response completed\" http.request.method=GET \
                   http.request.uri=\"/v2/lattice-bot/manifests/abc\" http.response.written=700\n\
                   time=\"x\" level=info msg=\"response completed\" http.request.method=PUT \
                   http.request.uri=\"/v2/lattice-bot/blobs/uploads/x\" http.response.written=0\n\
                   time=\"x\" level=info msg=\"response completed\" http.request.method=GET \
                   http.request.uri=\"/v2/lattice-bot/blobs/sha256:cd\" http.response.written=25";
        assert_eq!(blob_bytes(log), 1525);
    }

    #[test]
    fn the_summary_puts_medians_and_ratios_side_by_side() {
        let run = |flow, kind, serving: f64| Run {
            flow,
            kind,
            round: 1,
            start_to_serving_s: serving,
            start_to_exit_s: serving + 1.0,
            no_serving_bot_s: 0.0,
            gateway_gap_s: 0.1,
            sent: 100,
            lost: 0,
            answered_twice: 0,
            server_cpu_s: 1.0,
            sshd_cpu_s: 0.5,
            containers_cpu_s: 0.5,
            docker_daemons_cpu_s: 0.2,
            bytes_pulled: 2_000_000,
            steps: vec![],
        };
        let runs = [
            run(Flow::Ours, Kind::Deploy, 4.0),
            run(Flow::Original, Kind::Deploy, 8.0),
            run(Flow::Ours, Kind::Rollback, 2.0),
            run(Flow::Original, Kind::Rollback, 8.0),
        ];
        let mut report = Report::default();
        let table = summary(&runs, 1, &mut report);
        let serving = table.lines().find(|l| l.starts_with("start -> serving")).unwrap();
        let words: Vec<&str> = serving.split_whitespace().collect();
        assert_eq!(&words[4..], ["4.00", "8.00", "0.50", "2.00", "8.00", "0.25"], "{table}");
        assert!(report.figures.iter().any(|f| f.name == "rollback_start_to_serving_ours"));
    }
}
