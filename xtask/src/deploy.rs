//! NAME
//!     cargo xtask deploy — put a release that is already in the registry on the server.
//!
//! SYNOPSIS
//!     cargo xtask deploy --sha <git sha> [--lock-wait SECS] [--dry-run]
//!
//! DESCRIPTION
//!     Preflight, locally and without touching the server: the sha names a commit, its image is in
//!     the registry, that commit's compose overlays are valid, the SSH settings are complete. Every
//!     problem is listed at once. Then, over one SSH connection: check the server's `.env` has every
//!     app variable (names only), take the lock, upload the release's own compose files, pull,
//!     migrate (`compose run --rm bot migrate`; a failure stops here and the running release is left
//!     untouched), switch `current` and wait until healthy (unhealthy: switch back to the previous
//!     release, record both, fail with the new container's last log lines), record in
//!     `deploys.log`, prune releases beyond `releases_kept`. The server never builds.
//!
//!     The switch, health wait, switch-back and record are one script (`.switch.sh`) that the lock's
//!     own ssh session starts detached (`setsid nohup`): it inherits the locked file descriptor, so
//!     a killed client can neither cut a switch in half nor free the lock before `current`, the
//!     running container and `deploys.log` agree again. The client follows its log (`.switch.log`).
//!     Killed earlier (upload, pull, migrate), the lock dies with the ssh session and nothing was
//!     switched; running the same deploy again completes it.
//!
//!     Test hook: `LATTICE_TEST_PAUSE_AT=pulled|migrate|switch|health` prints
//!     `lattice test pause: <step>` at that point and sleeps 5 s, so the end-to-end test can kill
//!     the deploy exactly there.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::{
    env::APP_VARS,
    flags,
    history::{self, Action},
    plan::Plan,
    project::Project,
    server::{
        shell_quote, shell_words, who, Lock, Server, Switch, SWITCH_BOT_LOGS, SWITCH_LOG, SWITCH_RESULT,
        SWITCH_SCRIPT,
    },
};

/// A git commit id as used for image tags: 7 to 40 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha(String);

impl Sha {
    pub fn parse(text: &str) -> Result<Sha> {
        let text = text.trim();
        let hex = text.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
        if !(7..=40).contains(&text.len()) || !hex {
            bail!(
                "{text:?} is not a git sha: expected 7 to 40 lowercase hex digits, e.g. `--sha $(git rev-parse HEAD)`"
            );
        }
        Ok(Sha(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl flags::Deploy {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        deploy(plan, project, &self.sha, self.lock_wait)
    }
}

/// A release as shipped by one commit: its full sha and its own compose files.
pub struct ReleaseFiles {
    pub sha: String,
    pub base: String,
    pub prod: String,
}

impl ReleaseFiles {
    pub fn release_env(&self, project: &Project) -> String {
        format!("BOT_IMAGE={}:{}\n", project.settings.image, self.sha)
    }
}

/// Everything checked before the server is touched; every problem is collected.
pub fn preflight<'p, 'a>(
    plan: &'p Plan<'a>,
    project: &Project,
    sha: &str,
) -> Result<(Server<'p, 'a>, Option<ReleaseFiles>)> {
    plan.note("preflight: nothing on the server changes until every check passes");
    let mut problems = Vec::new();
    let sha = Sha::parse(sha).map_err(|e| problems.push(format!("{e:#}"))).ok();
    let server = Server::prepare(plan, project, &mut problems)?;
    let files = match sha {
        Some(sha) => release_files(plan, &sha, &mut problems)?,
        None => None,
    };
    if let Some(files) = &files {
        login_locally(plan, project)?;
        let image = format!("{}:{}", project.settings.image, files.sha);
        let mut inspect = cmd!(plan.sh(), "docker manifest inspect");
        if is_loopback_registry(&project.settings.image) {
            inspect = inspect.arg("--insecure");
        }
        if !plan.check(inspect.arg(&image))? {
            problems.push(format!(
                "the image {image} is not in the registry: build and push it first (`cargo xtask image push` on \
                 that commit, or `cargo xtask release`), and check `docker login` to the registry"
            ));
        }
        validate_overlays(plan, project, files, &mut problems)?;
    }
    if !problems.is_empty() {
        let list = problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n");
        if plan.is_dry_run() {
            plan.note(&format!("preflight would fail:\n{list}"));
        } else {
            bail!(
                "preflight found {} problem(s); nothing on the server was touched:\n{list}",
                problems.len()
            );
        }
    }
    Ok((server, files))
}

/// The commit's own `compose/base.yml` and `compose/prod.yml`: the files must match the sha, not
/// the work tree.
fn release_files(plan: &Plan, sha: &Sha, problems: &mut Vec<String>) -> Result<Option<ReleaseFiles>> {
    let sh = plan.sh();
    let full = if sha.as_str().len() == 40 {
        sha.as_str().to_string()
    } else {
        let spec = format!("{}^{{commit}}", sha.as_str());
        if !plan.check(cmd!(sh, "git rev-parse --verify --quiet {spec}"))? {
            problems
                .push(format!("{} is not a commit of this repository: `git fetch` it first", sha.as_str()));
            return Ok(None);
        }
        let full = plan.read(cmd!(sh, "git rev-parse --verify --quiet {spec}"))?;
        if plan.is_dry_run() {
            sha.as_str().to_string()
        } else {
            full
        }
    };
    let spec = format!("{full}^{{commit}}");
    if !plan.check(cmd!(sh, "git cat-file -e {spec}"))? {
        problems.push(format!(
            "{full} is not a commit of this repository: `git fetch` it first (its compose files are shipped with it)"
        ));
        return Ok(None);
    }
    let show = |file: &str| -> Result<String> {
        let spec = format!("{full}:{file}");
        Ok(format!("{}\n", plan.read(cmd!(sh, "git show {spec}"))?))
    };
    Ok(Some(ReleaseFiles {
        base: show(crate::compose::BASE)?,
        prod: show(crate::compose::PROD)?,
        sha: full.clone(),
    }))
}

/// `docker compose config -q` over the release's own files, with that release's BOT_IMAGE.
fn validate_overlays(
    plan: &Plan,
    project: &Project,
    files: &ReleaseFiles,
    problems: &mut Vec<String>,
) -> Result<()> {
    let sh = plan.sh();
    let dir = sh.create_temp_dir()?;
    let base = dir.path().join("base.yml");
    let prod = dir.path().join("prod.yml");
    let release_env = dir.path().join("release.env");
    sh.write_file(&base, &files.base)?;
    sh.write_file(&prod, &files.prod)?;
    sh.write_file(&release_env, files.release_env(project))?;
    let project_name = &project.settings.compose_project;
    let check = cmd!(
        sh,
        "docker compose -p {project_name} --env-file {release_env} -f {base} -f {prod} config --quiet"
    );
    if !plan.check(check)? {
        problems.push(format!(
            "the compose overlays of {} are not valid: run `docker compose -f compose/base.yml -f compose/prod.yml \
             config` on that commit (with BOT_IMAGE set) to see why",
            files.sha
        ));
    }
    Ok(())
}

/// Registries on 127.0.0.0/8 speak plain HTTP; Docker trusts them, `docker manifest` must be told.
fn is_loopback_registry(image: &str) -> bool {
    let host = image.split('/').next().unwrap_or("");
    host.starts_with("127.") || host.starts_with("localhost")
}

fn registry_host(image: &str) -> Option<&str> {
    let first = image.split('/').next()?;
    (image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost"))
        .then_some(first)
}

/// With REGISTRY_USER/REGISTRY_PASSWORD set, log this machine in (password on stdin).
fn login_locally(plan: &Plan, project: &Project) -> Result<()> {
    if let (Some(user), Some(password), Some(host)) = (
        project.env.get("REGISTRY_USER"),
        project.env.get("REGISTRY_PASSWORD"),
        registry_host(&project.settings.image),
    ) {
        plan.run(cmd!(plan.sh(), "docker login --username {user} --password-stdin {host}").stdin(password))?;
    }
    Ok(())
}

/// The same login on the server, so that it can pull from a private registry.
fn login_on_server(server: &Server, project: &Project) -> Result<()> {
    if let (Some(user), Some(password), Some(host)) = (
        project.env.get("REGISTRY_USER"),
        project.env.get("REGISTRY_PASSWORD"),
        registry_host(&project.settings.image),
    ) {
        let script = shell_words(&["docker", "login", "--username", user, "--password-stdin", host]);
        server.run_with_input(&script, password.as_bytes())?;
    }
    Ok(())
}

/// Refuses to go on when the server's `.env` lacks an app variable (checked by name; values never
/// leave the server).
pub fn check_server_env(server: &Server) -> Result<()> {
    let compose = server.read_at_home("docker compose version --short 2>/dev/null || echo none")?;
    if compose.trim() == "none" || compose.trim().starts_with('1') {
        bail!(
            "the server has no Docker Compose v2 for user {}: install it there (`apt-get install docker-compose-plugin` \
             from Docker's apt repository) and make sure the user is in the `docker` group",
            server.target.user
        );
    }
    let hint = "write it with `cargo xtask secrets` (from your environment or CI secrets)";
    match server.env_names()? {
        None => bail!("the server has no {}/.env: {hint}", server.layout.root),
        Some(names) => {
            let missing: Vec<&str> =
                APP_VARS.iter().copied().filter(|n| !names.iter().any(|m| m == n)).collect();
            if !missing.is_empty() {
                bail!("the server's .env lacks {}: {hint}", missing.join(", "));
            }
        }
    }
    Ok(())
}

/// The sha `current` points at on the server, if any.
pub fn current(server: &Server) -> Result<Option<String>> {
    let out = server.read_at_home(&server.layout.read_current())?;
    if server.plan().is_dry_run() {
        return Ok(Some("<current sha>".into()));
    }
    Ok(out.trim().strip_prefix("releases/").map(str::to_string).filter(|s| !s.is_empty()))
}

pub fn deploy(plan: &Plan, project: &Project, sha: &str, lock_wait: Option<u64>) -> Result<()> {
    let started = Instant::now();
    let (mut server, files) = preflight(plan, project, sha)?;
    let Some(files) = files else { bail!("preflight failed") };
    let sha = files.sha.clone();
    (|| -> Result<()> {
        server.connect()?;
        check_server_env(&server)?;
        let holder = format!("{} deploy {sha}", who(&project.env));
        let mut lock = server.lock(&holder, lock_wait)?;
        let previous = current(&server)?;
        let layout = server.layout.clone();
        let dir = layout.release_dir(&sha);

        plan.note(&format!("ship {dir}: the compose files of {sha} itself, and its image name"));
        for (name, content) in
            [("base.yml", files.base.clone()), ("prod.yml", files.prod.clone()), ("release.env", files.release_env(project))]
        {
            let path = format!("{dir}/{name}");
            let script = format!("mkdir -p {d} && cat > {p}.new && mv {p}.new {p}", d = shell_quote(&dir), p = shell_quote(&path));
            server.run_with_input(&script, content.as_bytes())?;
        }
        login_on_server(&server, project)?;
        server.run(&layout.compose(&sha, &["pull", "--policy", "missing", "--quiet"])).context("pull")?;
        let pause = pause_at(project);
        if pause.as_deref() == Some("pulled") && !plan.is_dry_run() {
            eprintln!("lattice test pause: pulled");
            std::thread::sleep(std::time::Duration::from_secs(5));
        }

        plan.note("migrate with the new image; on failure the running release is left untouched");
        let mut migrate = layout.compose(&sha, &["run", "--rm", "--no-TTY", "bot", "migrate"]);
        if pause.as_deref() == Some("migrate") {
            migrate.push_str(" && echo 'lattice test pause: migrate' && sleep 5");
        }
        server
            .run(&migrate)
            .context("migrations failed (their output is above); nothing was switched, the running release still serves")?;

        switch_to(&server, &mut lock, project, &sha, previous.as_deref(), Action::Deploy, started)?;
        prune(&server, project, &sha)?;
        Ok(())
    })()
    .with_context(|| format!("deploy {sha}"))?;
    if !plan.is_dry_run() {
        println!("deployed {sha}: healthy after {} s", started.elapsed().as_secs());
    }
    Ok(())
}

/// Points `current` at `sha`, brings its containers up and waits until healthy; records the
/// outcome. Unhealthy: the new container's last log lines are kept, `previous` is switched back and
/// recorded, and the error carries the log lines. All of it is one script run detached on the
/// server under the deploy lock ([`Layout::switch_script`]); this side uploads it, starts it and
/// follows its log, so killing this process mid-switch changes nothing about the outcome.
pub fn switch_to(
    server: &Server,
    lock: &mut Lock,
    project: &Project,
    sha: &str,
    previous: Option<&str>,
    action: Action,
    started: Instant,
) -> Result<()> {
    let plan = server.plan();
    let layout = &server.layout;
    let timeout = project.settings.health_timeout_secs;
    let switch = Switch {
        sha: sha.to_string(),
        previous: previous.map(str::to_string),
        action,
        timeout_secs: timeout,
        who: who(&project.env),
        elapsed_secs: started.elapsed().as_secs(),
        pause_at: pause_at(project),
    };
    let script = layout.switch_script(&switch);
    plan.note(&format!(
        "switch current to {sha} and wait up to {timeout} s for it to be healthy, by this script ({SWITCH_SCRIPT}):\n{}",
        script.trim_end()
    ));
    server.run_with_input(
        &format!(
            "cat > {SWITCH_SCRIPT}.new && mv {SWITCH_SCRIPT}.new {SWITCH_SCRIPT} && rm -f {SWITCH_RESULT} {SWITCH_BOT_LOGS}"
        ),
        script.as_bytes(),
    )?;
    let pid = lock.detach(plan)?;
    // Follows the script's output until it exits; a dead connection here does not stop it.
    server.run(&format!("tail -n +1 --pid={pid} -f {SWITCH_LOG}"))?;
    let result = server.read(&format!("cat {SWITCH_RESULT} 2>/dev/null || echo none"))?;
    if plan.is_dry_run() {
        return Ok(());
    }
    let back = match (result.trim(), previous) {
        ("healthy", _) => return Ok(()),
        ("back-ok", Some(previous)) => format!("switched back to {previous}, which serves again"),
        ("back-unhealthy", Some(previous)) => format!(
            "switched back to {previous}, but it is not healthy either: look at `cargo xtask logs --server`"
        ),
        ("no-previous", _) => "there is no previous release to switch back to".to_string(),
        (other, _) => bail!(
            "the switch script on the server ended without a result ({other:?}): read {root}/{SWITCH_LOG} there, \
             then `cargo xtask status`",
            root = layout.root
        ),
    };
    let logs = server.read(&format!("tail -n 40 {SWITCH_BOT_LOGS} 2>/dev/null || true")).unwrap_or_default();
    bail!("{sha} did not become healthy within {timeout} s; {back}. Its last log lines:\n{logs}")
}

/// The test hook `LATTICE_TEST_PAUSE_AT=pulled|migrate|switch|health`: the deploy prints
/// `lattice test pause: <step>` there and sleeps a few seconds, so an end-to-end test can kill it
/// at that exact point. Unset in real use.
pub fn pause_at(project: &Project) -> Option<String> {
    project.env.get("LATTICE_TEST_PAUSE_AT").map(str::to_string)
}

/// Removes release directories (and their images) beyond `releases_kept`, never `current` nor the
/// newest good ones, which rollback needs.
pub fn prune(server: &Server, project: &Project, current: &str) -> Result<()> {
    let layout = &server.layout;
    let listed = server.read("ls -1 releases")?;
    let log = server.read(&format!("cat {} 2>/dev/null || true", crate::server::HISTORY))?;
    if server.plan().is_dry_run() {
        server
            .plan()
            .note(&format!("prune: keep {} releases and their images", project.settings.releases_kept));
        return Ok(());
    }
    let kept = history::kept(&history::parse(&log), current, project.settings.releases_kept);
    let stale: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|d| !d.is_empty() && !d.ends_with(".new") && !kept.iter().any(|k| k == d))
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let dirs: Vec<String> = stale.iter().map(|s| layout.release_dir(s)).collect();
    let images: Vec<String> = stale.iter().map(|s| layout.image(s)).collect();
    server.run(&format!(
        "rm -rf {}; docker image rm {} >/dev/null 2>&1 || true",
        shell_words(&dirs),
        shell_words(&images)
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{env::Env, settings::Settings};
    use xshell::Shell;

    #[test]
    fn a_sha_is_seven_to_forty_lowercase_hex_digits() {
        assert!(Sha::parse("abc").unwrap_err().to_string().contains("not a git sha"));
        assert!(Sha::parse("ABCDEF1").is_err());
        assert!(Sha::parse("abcdefg").is_err());
        assert!(Sha::parse(&"a".repeat(41)).is_err());
        assert_eq!(Sha::parse("0123abc").unwrap().as_str(), "0123abc");
        assert!(Sha::parse(&"f".repeat(40)).is_ok());
    }

    pub(crate) fn fake_project(extra: &[(&str, &str)]) -> Project {
        let mut pairs = vec![
            ("SSH_HOST", "203.0.113.7"),
            ("SSH_PORT", "2222"),
            ("SSH_USER", "deploy"),
            ("SSH_PRIVATE_KEY", "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-key-material\n-----END"),
            ("SSH_KNOWN_HOSTS", "[203.0.113.7]:2222 ssh-ed25519 AAAA"),
            ("REGISTRY_USER", "bot"),
            ("REGISTRY_PASSWORD", "registry-secret-pw"),
            ("DISCORD_TOKEN", "discord-secret-token"),
        ];
        pairs.extend_from_slice(extra);
        let mut env = Env::from_pairs([]);
        for (k, v) in pairs {
            env = env.with(k, v);
        }
        Project { root: crate::project::root().unwrap(), env, settings: Settings::default() }
    }

    #[test]
    fn the_dry_run_plan_lists_local_and_remote_steps_in_order_without_secrets() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let project = fake_project(&[]);
        let sha = "0123456789abcdef0123456789abcdef01234567";
        deploy(&plan, &project, sha, None).unwrap();
        let steps = plan.steps();
        let text = steps.join("\n");
        let order = [
            "git cat-file -e",
            "git show 0123456789abcdef0123456789abcdef01234567:compose/base.yml",
            "docker login --username bot --password-stdin ghcr.io",
            "docker manifest inspect ghcr.io/lattice-bot/lattice-bot:0123456789abcdef0123456789abcdef01234567",
            "config --quiet",
            "ssh -F '$TMP/config' lattice-server true",
            ".env",
            "flock -n -E 75 .lock",
            "releases/0123456789abcdef0123456789abcdef01234567/base.yml.new",
            "releases/0123456789abcdef0123456789abcdef01234567/release.env.new",
            "pull --policy missing",
            "run --rm --no-TTY bot migrate",
            "ln -sfn releases/0123456789abcdef0123456789abcdef01234567 current.new && mv -T current.new current",
            "up --detach --wait --wait-timeout 90",
            ">> deploys.log",
            "setsid nohup sh .switch.sh",
            "tail -n +1 --pid=<pid> -f .switch.log",
            "cat .switch.result",
            "ls -1 releases",
        ];
        let mut at = 0;
        for needle in order {
            let found = steps[at..].iter().position(|s| s.contains(needle));
            assert!(found.is_some(), "{needle:?} missing after step {at} in:\n{text}");
            at += found.unwrap();
        }
        for secret in ["secret-key-material", "registry-secret-pw", "discord-secret-token"] {
            assert!(!text.contains(secret), "{secret} leaked into the plan:\n{text}");
        }
        assert!(text.contains("Port 2222") && text.contains("StrictHostKeyChecking yes"), "{text}");
    }

    #[test]
    fn bad_input_is_all_listed_before_anything_runs() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, false);
        let mut project = fake_project(&[]);
        project.env = Env::from_pairs([("SSH_HOST", "h")]);
        let err = format!("{:#}", deploy(&plan, &project, "not-a-sha", None).unwrap_err());
        assert!(err.contains("not a git sha"), "{err}");
        assert!(err.contains("SSH_USER, SSH_PRIVATE_KEY, SSH_KNOWN_HOSTS"), "{err}");
        assert!(err.contains("nothing on the server was touched"), "{err}");
        assert!(plan.steps().iter().all(|s| !s.starts_with("ssh")), "{:?}", plan.steps());
    }

    #[test]
    fn an_unknown_commit_is_refused_with_what_to_do() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, false);
        let project = fake_project(&[]);
        let err = format!("{:#}", deploy(&plan, &project, &"e".repeat(40), None).unwrap_err());
        assert!(err.contains("not a commit of this repository: `git fetch`"), "{err}");
    }

    #[test]
    fn registry_hosts_are_recognised() {
        assert_eq!(registry_host("ghcr.io/o/bot"), Some("ghcr.io"));
        assert_eq!(registry_host("127.0.0.1:5000/bot"), Some("127.0.0.1:5000"));
        assert_eq!(registry_host("library/bot"), None);
        assert!(is_loopback_registry("127.0.0.1:5000/bot"));
        assert!(!is_loopback_registry("ghcr.io/o/bot"));
    }
}
