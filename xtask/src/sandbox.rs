//! NAME
//!     cargo xtask sandbox — a practice server on this machine, to try a release end to end.
//!
//! SYNOPSIS
//!     cargo xtask sandbox up   [--dir DIR] [--ssh-port PORT] [--registry-port PORT] [--dry-run]
//!     cargo xtask sandbox down [--dir DIR] [--registry-port PORT] [--dry-run]
//!
//! DESCRIPTION
//!     `up` makes this machine a server as `deploy` expects one, on loopback, with no real token
//!     and no secret:
//!       - OpenSSH's sshd on 127.0.0.1:2222 (--ssh-port) with a host key of its own (pinned in the printed
//!         SSH_KNOWN_HOSTS) and a client key made for it. It lets in one user: run as root, the
//!         user `lattice-deploy` (made for the purpose: no password, in the `docker` group); run by
//!         anyone else, that same user — sshd then runs as them, who must be able to use Docker;
//!       - Debian's `docker-registry` on 127.0.0.1:5000 (--registry-port), storing its images under DIR;
//!       - the Discord stand-in (`lattice-bot discord-standin`, run from the bot image of HEAD
//!         built here) on the docker0 bridge address, where the server's containers reach it;
//!       - the server's `.env` (`lattice-sandbox/.env` in the user's home): placeholder Discord
//!         values, the placeholder LLM, the stand-in's URLs, POSTGRES_IMAGE when set here.
//!     Then it prints the environment that points `cargo xtask` at it (SSH_*, LATTICE_IMAGE,
//!     LATTICE_DEPLOY_PATH, LATTICE_COMPOSE_PROJECT, DISCORD_API_URL, DISCORD_GATEWAY_URL) and
//!     writes it to DIR/env: `. target/sandbox/env` sets it in a shell. The private key is named by
//!     its file, never printed. Running `up` again starts only what is not running.
//!
//!     `down` removes everything `up` made: the sandbox's containers, volumes and network, the
//!     images of 127.0.0.1:<registry port>/lattice-bot and the stand-in's, the two processes, the deploy
//!     directory, DIR, and the user when `up` created it (unless another sandbox still logs in as
//!     it). Running it again changes nothing.
//!
//!     A DIR other than the default names its sandbox apart: the deploy directory, compose
//!     project, stand-in (container and image, `<name>-standin`) and authorized key file are
//!     `lattice-sandbox-<hash of DIR>` rather than `lattice-sandbox`, so that two sandboxes on
//!     other ports run side by side (the end-to-end tests' lanes do).
//!
//!     Nothing is pulled: the stand-in runs from the image built here (RUST_IMAGE as for `image
//!     build`), Postgres from POSTGRES_IMAGE when set (CI's local images). The end-to-end deploy
//!     test runs on this same sandbox.

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    flags::{self, ImageAction, ImageOpts, SandboxAction},
    plan::{shell_quote, Cmd, Plan},
    project::Project,
    remote::Server,
    settings::Settings,
};

/// The default sandbox's deploy directory and compose project; its stand-in is `<NAME>-standin`.
pub const NAME: &str = "lattice-sandbox";
/// The default `--dir`.
const DEFAULT_DIR: &str = "target/sandbox";
/// The server's user when the sandbox is made by root.
pub const DEDICATED_USER: &str = "lattice-deploy";
/// sshd re-executes itself and insists on an absolute path.
const SSHD: &str = "/usr/sbin/sshd";
/// Marks that `up` created the dedicated user, so that `down` removes it.
const MADE_USER: &str = "made-user";

/// The app's settings on the sandbox server: placeholders, no secret among them.
const APP_ENV: &[(&str, &str)] = &[
    ("DISCORD_TOKEN", "sandbox-placeholder-token"),
    ("DISCORD_GUILD_ID", "100000000000000001"),
    ("DISCORD_MAIN_CHANNEL_ID", "100000000000000002"),
    ("DISCORD_DREAM_CHANNEL_ID", "100000000000000003"),
    ("OPENROUTER_API_KEY", "sandbox-placeholder-key"),
    ("LLM_PROVIDER", "placeholder"),
    ("POSTGRES_USER", "lattice"),
    ("POSTGRES_PASSWORD", "sandbox-placeholder-password"),
    ("POSTGRES_DB", "lattice"),
];

impl flags::Sandbox {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        let dir = project.root.join(&self.dir);
        let mut sandbox = Sandbox::new(plan, dir.clone())?;
        if dir != project.root.join(DEFAULT_DIR) {
            sandbox.name = named_apart(&dir);
        }
        sandbox.ssh_port = self.ssh_port;
        sandbox.registry = format!("127.0.0.1:{}", self.registry_port);
        match self.action {
            SandboxAction::Up => sandbox.up(project),
            SandboxAction::Down => sandbox.down(),
        }
    }
}

struct Sandbox<'p, 'a> {
    plan: &'p Plan<'a>,
    dir: PathBuf,
    /// Run by root: a dedicated user; otherwise the user running it.
    root: bool,
    user: String,
    ssh_port: u16,
    /// `127.0.0.1:<port>`: where the registry listens, the image repository under it.
    registry: String,
    /// Deploy directory and compose project; the stand-in is `<name>-standin`.
    name: String,
}

impl<'p, 'a> Sandbox<'p, 'a> {
    fn new(plan: &'p Plan<'a>, dir: PathBuf) -> Result<Sandbox<'p, 'a>> {
        let root = plan.read_fact(Cmd::of("id -u"))? == "0";
        let user = if root { DEDICATED_USER.to_string() } else { plan.read_fact(Cmd::of("id -un"))? };
        Ok(Sandbox {
            plan,
            dir,
            root,
            user,
            ssh_port: 2222,
            registry: "127.0.0.1:5000".into(),
            name: NAME.into(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The stand-in's container and image.
    fn standin(&self) -> String {
        format!("{}-standin", self.name)
    }

    /// The user's authorized key file (in its home) when the sandbox is run by root.
    fn key_file(&self) -> String {
        if self.name == NAME {
            ".ssh/authorized_keys".into()
        } else {
            format!(".ssh/authorized_keys.{}", self.name)
        }
    }

    fn registry_port(&self) -> u16 {
        self.registry.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(5000)
    }

    fn image(&self) -> String {
        format!("{}/lattice-bot", self.registry)
    }

    fn up(&self, project: &Project) -> Result<()> {
        let plan = self.plan;
        self.require_tools()?;
        plan.note(&format!("sandbox in {}", self.dir.display()));
        if !plan.is_dry_run() {
            std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
            // sshd reads the sandbox's files as the server's user.
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let home = self.ensure_user()?;
        self.ensure_keys(&home)?;
        self.ensure_sshd()?;
        self.ensure_registry()?;
        let discord = self.ensure_standin(project)?;
        let env = self.environment(&discord);
        let sandbox_project = self.project(project, &env);
        plan.note("the server's .env: placeholders and the stand-in, no real token");
        let server = Server::open(plan, &sandbox_project, Vec::new())?;
        server.write_env(&self.app_env(project, &discord), true)?;
        drop(server);
        let text = env_file(&env, &self.path("client_key"));
        let env_path = self.path("env");
        if plan.is_dry_run() {
            plan.note(&format!("{} would hold:\n{}", env_path.display(), text.trim_end()));
            return Ok(());
        }
        std::fs::write(&env_path, &text)?;
        eprintln!(
            "sandbox up: sshd on 127.0.0.1:{} (user {}), registry on {}, Discord stand-in on {discord}",
            self.ssh_port, self.user, self.registry
        );
        println!("# The sandbox's environment (`. {}` sets it in a shell):", env_path.display());
        print!("{text}");
        Ok(())
    }

    fn require_tools(&self) -> Result<()> {
        let mut missing = Vec::new();
        if !Path::new(SSHD).exists() {
            missing.push("sshd (openssh-server)");
        }
        if which::which("docker-registry").is_err() {
            missing.push("docker-registry");
        }
        if which::which("ssh-keygen").is_err() {
            missing.push("ssh-keygen (openssh-client)");
        }
        if !missing.is_empty() {
            bail!(
                "{} not found: install them (`apt-get install openssh-server docker-registry`; the packages' own \
                 services are not needed, the sandbox starts its own on loopback ports)",
                missing.join(", ")
            );
        }
        if !self.plan.check(Cmd::of("docker info --format {{.ServerVersion}}"))? {
            bail!(
                "cannot use the Docker Engine as {}: start it, or add the user to the `docker` group (or run as root)",
                self.user
            );
        }
        Ok(())
    }

    /// The server's user and its home: as root, the dedicated user (made if missing, able to log
    /// in by key only, with Compose v2); otherwise the user running this.
    fn ensure_user(&self) -> Result<PathBuf> {
        let plan = self.plan;
        let user = &self.user;
        if !self.root {
            return Ok(PathBuf::from(plan.read_fact(Cmd::of("sh -c").arg("echo \"$HOME\""))?));
        }
        if !plan.check(Cmd::of("id -u").arg(user))? || plan.is_dry_run() {
            let made = plan.run(Cmd::of("useradd --create-home --shell /bin/sh --groups docker").arg(user));
            match made {
                Ok(()) => write(plan, &self.path(MADE_USER), "")?,
                // A sandbox beside may have made it meanwhile: then it is that one's to remove.
                Err(e) if !plan.check(Cmd::of("id -u").arg(user))? => return Err(e),
                Err(_) => {}
            }
        }
        // `*`, not the `!` useradd leaves: a locked account may not log in even by key.
        plan.run(Cmd::of("usermod --append --groups docker --password *").arg(user))?;
        let home = plan.read_fact(Cmd::of("getent passwd").arg(user))?;
        let home = PathBuf::from(home.split(':').nth(5).unwrap_or_default());
        if !plan.check(Cmd::of("runuser -u").arg(user).args(["--", "docker", "compose", "version"]))? {
            let plugin = plan
                .read(Cmd::of("docker info --format").arg(
                    "{{range .ClientInfo.Plugins}}{{if eq .Name \"compose\"}}{{.Path}}{{end}}{{end}}",
                ))?;
            if plugin.is_empty() {
                bail!("Docker Compose v2 is not installed: install the docker-compose-plugin package");
            }
            let plugins = home.join(".docker/cli-plugins");
            let owner = user.to_string();
            plan.run(Cmd::of("install -d -o").arg(&owner).arg(home.join(".docker")).arg(&plugins))?;
            plan.run(
                Cmd::of("install -m 0755 -o").arg(&owner).arg(plugin).arg(plugins.join("docker-compose")),
            )?;
        }
        Ok(home)
    }

    /// The host key and the client's key pair, made once; the client key is authorized for the user.
    fn ensure_keys(&self, home: &Path) -> Result<()> {
        let plan = self.plan;
        for (name, comment) in
            [("host_key", "lattice-sandbox-host"), ("client_key", "lattice-sandbox-client")]
        {
            let key = self.path(name);
            if !key.exists() {
                plan.run(
                    Cmd::of("ssh-keygen -q -t ed25519 -N").arg("").args(["-C", comment, "-f"]).arg(key),
                )?;
            }
        }
        // As root the user may not be able to enter DIR (under /root, say): the key goes in its home.
        if self.root {
            let ssh = home.join(".ssh");
            let owner = self.user.clone();
            plan.run(Cmd::of("install -d -m 0700 -o").arg(&owner).arg(&ssh))?;
            plan.run(
                Cmd::of("install -m 0600 -o")
                    .arg(&owner)
                    .arg(self.path("client_key.pub"))
                    .arg(home.join(self.key_file())),
            )?;
        }
        Ok(())
    }

    fn authorized_keys(&self) -> String {
        if self.root {
            self.key_file()
        } else {
            self.path("client_key.pub").display().to_string()
        }
    }

    fn ensure_sshd(&self) -> Result<()> {
        let plan = self.plan;
        let config = self.path("sshd_config");
        if self.running("sshd.pid", &config) {
            plan.note(&format!("sshd is running on 127.0.0.1:{}", self.ssh_port));
            return Ok(());
        }
        port_free(self.ssh_port, "sshd")?;
        let text = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nPidFile {pid}\n\
             AuthorizedKeysFile {keys}\nAllowUsers {user}\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin no\nUsePAM no\nStrictModes no\n",
            port = self.ssh_port,
            host_key = self.path("host_key").display(),
            pid = self.path("sshd.pid").display(),
            keys = self.authorized_keys(),
            user = self.user,
        );
        write(plan, &config, &text)?;
        if self.root {
            plan.run(Cmd::of("mkdir -p /run/sshd"))?;
        }
        // Without -D, sshd detaches itself once it listens and writes its pid file.
        plan.run(Cmd::new(SSHD).arg("-f").arg(&config).arg("-E").arg(self.path("sshd.log")))?;
        wait_for_port(plan, self.ssh_port, "sshd", &self.path("sshd.log"))
    }

    fn ensure_registry(&self) -> Result<()> {
        let plan = self.plan;
        let config = self.path("registry.yml");
        if self.running("registry.pid", &config) {
            plan.note(&format!("the registry is running on {}", self.registry));
            return Ok(());
        }
        port_free(self.registry_port(), "the registry")?;
        let text = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {}\n",
            self.path("registry").display(),
            self.registry
        );
        write(plan, &config, &text)?;
        let log = self.path("registry.log");
        // Its own session, so that it outlives this command and a Ctrl-C of the terminal.
        let child = plan.start(Cmd::of("setsid docker-registry serve").arg(&config), &log)?;
        if let Some(child) = child {
            write(plan, &self.path("registry.pid"), &format!("{}\n", child.id()))?;
        }
        wait_for_port(plan, self.registry_port(), "docker-registry", &log)
    }

    /// Whether the process in the pid file `name` runs, started with `config` (so it is ours).
    /// sshd rewrites its command line into one title, which still names its configuration.
    fn running(&self, name: &str, config: &Path) -> bool {
        let Some(pid) = self.pid(name) else { return false };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let config = config.display().to_string();
        cmdline.windows(config.len()).any(|w| w == config.as_bytes())
    }

    fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.path(name)).ok()?.trim().parse().ok()
    }

    /// The stand-in, from the bot image of HEAD (built here, then only the stand-in's tag kept, so
    /// a release still pulls its image from the registry). Returns its address.
    fn ensure_standin(&self, project: &Project) -> Result<String> {
        let plan = self.plan;
        let addr_file = self.path("standin.addr");
        let standin = self.standin();
        let running = plan.probe(Cmd::of("docker inspect --format {{.State.Running}}").arg(&standin));
        if let (Some("true"), Ok(addr)) = (running.as_deref(), std::fs::read_to_string(&addr_file)) {
            plan.note(&format!("the Discord stand-in is running on {}", addr.trim()));
            return Ok(addr.trim().to_string());
        }
        plan.cleanup(Cmd::of("docker rm --force").arg(&standin));
        if !plan.check(Cmd::of("docker image inspect --format {{.Id}}").arg(&standin))? || plan.is_dry_run() {
            plan.note("the stand-in runs from the bot image: building it from the work tree");
            let build = self.project(project, &[]);
            let build_opts = ImageOpts { allow_dirty: true };
            flags::Image { action: ImageAction::Build(build_opts) }.run(plan, &build)?;
            let sha = plan.read_fact(Cmd::of("git rev-parse HEAD"))?;
            let (sha_ref, latest) = (format!("{}:{sha}", self.image()), format!("{}:latest", self.image()));
            plan.run(Cmd::of("docker tag").arg(&sha_ref).arg(&standin))?;
            plan.run(Cmd::of("docker rmi --no-prune").arg(sha_ref).arg(latest))?;
        }
        let bridge = plan.read_fact(Cmd::of("ip -4 -o addr show dev docker0")).unwrap_or_default();
        let ip = docker0_address(&bridge);
        let port = TcpListener::bind((ip, 0)).map(|l| l.local_addr().map(|a| a.port()));
        let port = port.and_then(|p| p).with_context(|| format!("no free port on {ip} (docker0)"))?;
        let addr = format!("{ip}:{port}");
        plan.run(
            Cmd::of("docker run --detach --network host --name")
                .arg(&standin)
                .arg(&standin)
                .args(["discord-standin", "--listen"])
                .arg(&addr),
        )?;
        write(plan, &addr_file, &addr)?;
        if !plan.is_dry_run() {
            let start = Instant::now();
            while TcpStream::connect(&addr).is_err() {
                if start.elapsed() > Duration::from_secs(20) {
                    bail!("the Discord stand-in does not listen on {addr} after 20 s: see `docker logs {standin}`");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(addr)
    }

    /// What `cargo xtask` needs to use the sandbox, in order.
    fn environment(&self, discord: &str) -> Vec<(&'static str, String)> {
        let host_key = std::fs::read_to_string(self.path("host_key.pub")).unwrap_or_default();
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        vec![
            ("SSH_HOST", "127.0.0.1".into()),
            ("SSH_PORT", self.ssh_port.to_string()),
            ("SSH_USER", self.user.clone()),
            ("SSH_KNOWN_HOSTS", format!("[127.0.0.1]:{} {}", self.ssh_port, host_key.join(" "))),
            ("LATTICE_IMAGE", self.image()),
            ("LATTICE_DEPLOY_PATH", self.name.clone()),
            ("LATTICE_COMPOSE_PROJECT", self.name.clone()),
            ("DISCORD_API_URL", format!("http://{discord}")),
            ("DISCORD_GATEWAY_URL", format!("ws://{discord}")),
        ]
    }

    /// The project as the sandbox's environment sees it (`env` over the caller's, the private key
    /// read from its file, no registry login: the sandbox's registry has none).
    fn project(&self, project: &Project, env: &[(&'static str, String)]) -> Project {
        let key = std::fs::read_to_string(self.path("client_key")).unwrap_or_default();
        let mut vars = project.env.clone().with("SSH_PRIVATE_KEY", &key);
        for (name, value) in env {
            vars = vars.with(name, value);
        }
        for name in ["REGISTRY_USER", "REGISTRY_PASSWORD"] {
            vars = vars.with(name, "");
        }
        let settings = Settings {
            image: self.image(),
            deploy_path: self.name.clone(),
            compose_project: self.name.clone(),
            ..project.settings.clone()
        };
        Project { root: project.root.clone(), env: vars, settings }
    }

    /// The server's `.env`: `NAME=value` lines (the values are plain words and URLs).
    fn app_env(&self, project: &Project, discord: &str) -> String {
        let mut lines: Vec<String> = APP_ENV.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        lines.push(format!("DISCORD_API_URL=http://{discord}\n"));
        lines.push(format!("DISCORD_GATEWAY_URL=ws://{discord}\n"));
        if let Some(image) = project.env.get("POSTGRES_IMAGE") {
            lines.push(format!("POSTGRES_IMAGE={image}\n"));
        }
        lines.concat()
    }

    fn down(&self) -> Result<()> {
        let plan = self.plan;
        let project_label = format!("label=com.docker.compose.project={}", self.name);
        let containers = plan.read(Cmd::of("docker ps --all --quiet --filter").arg(&project_label))?;
        let containers: Vec<&str> = containers.split_whitespace().collect();
        if !containers.is_empty() && !plan.is_dry_run() {
            plan.cleanup(Cmd::of("docker rm --force --volumes").args(containers));
        }
        let standin = self.standin();
        plan.cleanup(Cmd::of("docker rm --force --volumes").arg(&standin));
        let volumes = plan.read(Cmd::of("docker volume ls --quiet --filter").arg(&project_label))?;
        let volumes: Vec<&str> = volumes.split_whitespace().collect();
        if !volumes.is_empty() && !plan.is_dry_run() {
            plan.cleanup(Cmd::of("docker volume rm").args(volumes));
        }
        let networks = plan.read(Cmd::of("docker network ls --quiet --filter").arg(&project_label))?;
        let networks: Vec<&str> = networks.split_whitespace().collect();
        if !networks.is_empty() && !plan.is_dry_run() {
            plan.cleanup(Cmd::of("docker network rm").args(networks));
        }
        // The repository `up` printed, whatever --registry-port says now.
        let env = std::fs::read_to_string(self.path("env")).unwrap_or_default();
        let recorded = env.lines().find_map(|l| l.strip_prefix("export LATTICE_IMAGE="));
        let image = recorded.map(|v| v.trim_matches('\'').to_string()).unwrap_or_else(|| self.image());
        // An image a later pull took the tag from keeps only its digest (`<repo>:<none>` cannot be
        // removed by that name): such an image goes by `<repo>@<digest>`, or by its id without one.
        let listed = plan.read(
            Cmd::of("docker image ls --format")
                .arg("{{.Repository}}:{{.Tag}} {{.Repository}}@{{.Digest}} {{.ID}}")
                .arg(image),
        )?;
        let mut images: Vec<&str> = listed.lines().filter_map(image_ref).collect();
        images.push(&standin);
        if !plan.is_dry_run() {
            // The build cache stays: --no-prune keeps the parent layers.
            plan.cleanup(Cmd::of("docker rmi --no-prune").args(images));
        }
        for (pid_file, config) in [("sshd.pid", "sshd_config"), ("registry.pid", "registry.yml")] {
            if let (true, Some(pid)) = (self.running(pid_file, &self.path(config)), self.pid(pid_file)) {
                plan.cleanup(Cmd::of("kill").arg(pid.to_string()));
                let gone = || !Path::new(&format!("/proc/{pid}")).exists();
                let start = Instant::now();
                while !gone() && start.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        let made_user = self.root && self.path(MADE_USER).exists();
        let home = plan.read_fact(Cmd::of("sh -c").arg("echo \"$HOME\""));
        let home = if self.root {
            let entry = plan.read_fact(Cmd::of("getent passwd").arg(&self.user)).unwrap_or_default();
            entry.split(':').nth(5).unwrap_or_default().to_string()
        } else {
            home?
        };
        let mut shared = false;
        if !home.is_empty() {
            plan.cleanup(Cmd::of("rm -rf").arg(Path::new(&home).join(&self.name)));
            if self.root {
                plan.cleanup(Cmd::of("rm -f").arg(Path::new(&home).join(self.key_file())));
                // Another sandbox's key: that sandbox still logs in as the user.
                let own = Path::new(&self.key_file()).file_name().map(|n| n.to_os_string());
                shared = std::fs::read_dir(Path::new(&home).join(".ssh")).is_ok_and(|entries| {
                    entries.flatten().any(|e| {
                        e.file_name().to_string_lossy().starts_with("authorized_keys")
                            && Some(e.file_name()) != own
                    })
                });
            }
        }
        if made_user && !shared {
            plan.cleanup(Cmd::of("userdel --remove").arg(&self.user));
        } else if made_user {
            plan.note(&format!("the user {} stays: another sandbox logs in as it", self.user));
        }
        plan.cleanup(Cmd::of("rm -rf").arg(&self.dir));
        if !plan.is_dry_run() {
            eprintln!("sandbox down: nothing of it is left");
        }
        Ok(())
    }
}

/// `lattice-sandbox-<8 hex digits>`: a name of its own for the sandbox in `dir` (FNV-1a of its path).
fn named_apart(dir: &Path) -> String {
    let hash = dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("{NAME}-{:08x}", hash >> 32)
}

/// `export NAME='value'` lines; the private key is read from its file by the shell.
fn env_file(env: &[(&str, String)], key: &Path) -> String {
    let mut text: String = env.iter().map(|(k, v)| format!("export {k}={}\n", shell_quote(v))).collect();
    text.push_str(&format!(
        "export SSH_PRIVATE_KEY=\"$(cat {})\"\n",
        shell_quote(&key.display().to_string())
    ));
    text.push_str("unset REGISTRY_USER REGISTRY_PASSWORD\n");
    text
}

/// The IPv4 address of `ip -4 -o addr show dev docker0`, Docker's default when unreadable.
fn docker0_address(ip_output: &str) -> Ipv4Addr {
    ip_output
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next()?.parse().ok())
        .unwrap_or(Ipv4Addr::new(172, 17, 0, 1))
}

/// The name `docker rmi` removes one line of `docker image ls --format "<repo>:<tag>
/// <repo>@<digest> <id>"` by: its tag, else its digest, else its id.
fn image_ref(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    let (tagged, digested, id) = (words.next()?, words.next()?, words.next()?);
    if !tagged.ends_with(":<none>") {
        Some(tagged)
    } else if !digested.ends_with("@<none>") {
        Some(digested)
    } else {
        Some(id)
    }
}

/// Writes one of the sandbox's files (noted, not written, in a dry run).
fn write(plan: &Plan, path: &Path, text: &str) -> Result<()> {
    if plan.is_dry_run() {
        plan.note(&format!("write {}", path.display()));
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn port_free(port: u16, what: &str) -> Result<()> {
    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
        bail!(
            "127.0.0.1:{port} is taken by something else, but the sandbox runs {what} there: stop what listens \
             on it (a sandbox with another --dir: `cargo xtask sandbox down --dir <it>`)"
        );
    }
    Ok(())
}

fn wait_for_port(plan: &Plan, port: u16, what: &str, log: &Path) -> Result<()> {
    if plan.is_dry_run() {
        return Ok(());
    }
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("{what} is not listening on 127.0.0.1:{port} after 20 s: see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_file_quotes_values_and_reads_the_key_from_its_file() {
        let env = [("SSH_KNOWN_HOSTS", "[127.0.0.1]:2222 ssh-ed25519 AAAA".to_string())];
        let text = env_file(&env, Path::new("/tmp/sand box/client_key"));
        assert_eq!(
            text,
            "export SSH_KNOWN_HOSTS='[127.0.0.1]:2222 ssh-ed25519 AAAA'\n\
             export SSH_PRIVATE_KEY=\"$(cat '/tmp/sand box/client_key')\"\n\
             unset REGISTRY_USER REGISTRY_PASSWORD\n"
        );
    }

    #[test]
    fn a_sandbox_in_another_directory_has_names_of_its_own() {
        let (a, b) = (named_apart(Path::new("/tmp/one/sandbox")), named_apart(Path::new("/tmp/two/sandbox")));
        assert_ne!(a, b);
        assert_eq!(a, named_apart(Path::new("/tmp/one/sandbox")));
        assert!(a.starts_with("lattice-sandbox-") && a.len() == "lattice-sandbox-".len() + 8, "{a}");
    }

    #[test]
    fn the_stand_in_listens_on_the_docker0_address() {
        let out = "4: docker0    inet 172.18.0.1/16 brd 172.18.255.255 scope global docker0\\       valid_lft forever";
        assert_eq!(docker0_address(out), Ipv4Addr::new(172, 18, 0, 1));
        assert_eq!(docker0_address(""), Ipv4Addr::new(172, 17, 0, 1));
    }

    #[test]
    fn an_image_without_its_tag_is_removed_by_digest_or_id() {
        let r = "127.0.0.1:5000/lattice-bot";
        assert_eq!(image_ref(&format!("{r}:abc {r}@sha256:1 0f")), Some("127.0.0.1:5000/lattice-bot:abc"));
        assert_eq!(
            image_ref(&format!("{r}:<none> {r}@sha256:1 0f")),
            Some("127.0.0.1:5000/lattice-bot@sha256:1")
        );
        assert_eq!(image_ref(&format!("{r}:<none> {r}@<none> 0f")), Some("0f"));
        assert_eq!(image_ref(""), None);
    }
}
