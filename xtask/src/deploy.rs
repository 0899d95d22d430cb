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
//!     untouched), switch `current` and hand the bot over make-before-break until the new one
//!     leads (it never did: switch back to the previous release, whose bot serves again, record
//!     both, fail with the new container's last log lines), record in
//!     `deploys.log`, prune releases beyond `releases_kept`. The server never builds.
//!
//!     The switch, handover, switch-back and record are one script (`.switch.sh`) that the lock's
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

use crate::{
    compose, flags, notify,
    plan::{Cmd, Line, Plan},
    project::Project,
    registry,
    remote::{history, pause_at, who, Action, Server, Sha, Switch},
};

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

/// Everything checked before the server is touched; every problem is collected, and the server
/// is opened only when there is none.
fn preflight<'p, 'a>(
    plan: &'p Plan<'a>,
    project: &Project,
    sha: &str,
) -> Result<(Server<'p, 'a>, Option<ReleaseFiles>)> {
    plan.note("preflight: nothing on the server changes until every check passes");
    let mut problems = Vec::new();
    let sha = Sha::parse(sha).map_err(|e| problems.push(format!("{e:#}"))).ok();
    let files = match sha {
        Some(sha) => release_files(plan, &sha, &mut problems)?,
        None => None,
    };
    if let Some(files) = &files {
        let repository = &project.settings.image;
        if let Some(login) = registry::login(&project.env, repository) {
            plan.run(login)?;
        }
        let image = format!("{repository}:{}", files.sha);
        let mut inspect = Cmd::of("docker manifest inspect");
        if registry::is_loopback(repository) {
            inspect = inspect.arg("--insecure");
        }
        if let Err(stderr) = plan.attempt(inspect.arg(&image))? {
            problems.push(registry::manifest_problem(&image, &stderr));
        }
        validate_overlays(plan, project, files, &mut problems)?;
    }
    let server = Server::open(plan, project, problems)?;
    Ok((server, files))
}

/// The commit's own `compose/base.yml` and `compose/prod.yml`: the files must match the sha, not
/// the work tree.
fn release_files(plan: &Plan, sha: &Sha, problems: &mut Vec<String>) -> Result<Option<ReleaseFiles>> {
    let full = if sha.as_str().len() == 40 {
        sha.as_str().to_string()
    } else {
        let spec = format!("{}^{{commit}}", sha.as_str());
        if !plan.check(Cmd::of("git rev-parse --verify --quiet").arg(&spec))? {
            problems
                .push(format!("{} is not a commit of this repository: `git fetch` it first", sha.as_str()));
            return Ok(None);
        }
        let full = plan.read(Cmd::of("git rev-parse --verify --quiet").arg(&spec))?;
        if plan.is_dry_run() {
            sha.as_str().to_string()
        } else {
            full
        }
    };
    if !plan.check(Cmd::of("git cat-file -e").arg(format!("{full}^{{commit}}")))? {
        problems.push(format!(
            "{full} is not a commit of this repository: `git fetch` it first (its compose files are shipped with it)"
        ));
        return Ok(None);
    }
    let show = |file: &str| -> Result<String> {
        Ok(format!("{}\n", plan.read(Cmd::of("git show").arg(format!("{full}:{file}")))?))
    };
    Ok(Some(ReleaseFiles { base: show(compose::BASE)?, prod: show(compose::PROD)?, sha: full.clone() }))
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
    let stack = compose::Stack {
        project: project.settings.compose_project.clone(),
        files: vec![base.display().to_string(), prod.display().to_string()],
        env_files: vec![release_env.display().to_string()],
    };
    if !plan.check(stack.cmd().args(["config", "--quiet"]))? {
        problems.push(format!(
            "the compose overlays of {} are not valid: run `docker compose -f compose/base.yml -f compose/prod.yml \
             config` on that commit (with BOT_IMAGE set) to see why",
            files.sha
        ));
    }
    Ok(())
}

/// The deploy, and its notification (`LATTICE_NOTIFY_WEBHOOK`) whatever the outcome.
pub fn deploy(plan: &Plan, project: &Project, sha: &str, lock_wait: Option<u64>) -> Result<()> {
    let started = Instant::now();
    let result = deploy_steps(plan, project, sha, lock_wait, started);
    notify::outcome(plan, &project.env, Action::Deploy, sha, started, &result);
    result
}

fn deploy_steps(
    plan: &Plan,
    project: &Project,
    sha: &str,
    lock_wait: Option<u64>,
    started: Instant,
) -> Result<()> {
    let (server, files) = preflight(plan, project, sha)?;
    let Some(files) = files else { bail!("preflight failed") };
    let sha = files.sha.clone();
    (|| -> Result<()> {
        server.require_app_env()?;
        let holder = format!("{} deploy {sha}", who(&project.env));
        let mut lock = server.lock(&holder, lock_wait)?;
        let previous = server.current()?;
        let layout = server.layout.clone();
        let dir = layout.release_dir(&sha);

        plan.note(&format!("ship {dir}: the compose files of {sha} itself, and its image name"));
        for (name, content) in
            [("base.yml", files.base.clone()), ("prod.yml", files.prod.clone()), ("release.env", files.release_env(project))]
        {
            let path = format!("{dir}/{name}");
            let upload = Cmd::of("mkdir -p")
                .arg(&dir)
                .and(Cmd::of("cat").write_to(&format!("{path}.new")))
                .and(Cmd::of("mv").arg(format!("{path}.new")).arg(&path));
            server.run_with_input(upload, content)?;
        }
        if let Some(mut login) = registry::login(&project.env, &project.settings.image) {
            // The server pulls from a private registry with the same login, the password on stdin.
            let password = login.take_input().unwrap_or_default();
            server.run_with_input(login, password)?;
        }
        server.run(layout.compose(&sha, &["pull", "--policy", "missing", "--quiet"])).context("pull")?;
        let pause = pause_at(&project.env);
        if pause.as_deref() == Some("pulled") && !plan.is_dry_run() {
            eprintln!("lattice test pause: pulled");
            std::thread::sleep(std::time::Duration::from_secs(5));
        }

        plan.note("migrate with the new image; on failure the running release is left untouched");
        let mut migrate: Line = layout.compose(&sha, &["run", "--rm", "--no-TTY", "bot", "migrate"]).into();
        if pause.as_deref() == Some("migrate") {
            migrate = migrate.and(Cmd::of("echo").arg("lattice test pause: migrate")).and(Cmd::of("sleep 5"));
        }
        server
            .run(migrate)
            .context("migrations failed (their output is above); nothing was switched, the running release still serves")?;

        Switch::new(&project.env, &layout, &sha, previous.as_deref(), Action::Deploy, started).run(&server, &mut lock)?;
        prune(&server, project, &sha)?;
        Ok(())
    })()
    .with_context(|| format!("deploy {sha}"))?;
    if !plan.is_dry_run() {
        println!("deployed {sha}: healthy after {} s", started.elapsed().as_secs());
    }
    Ok(())
}

/// Removes release directories (and their images) beyond `releases_kept`, never `current` nor the
/// newest good ones, which rollback needs.
fn prune(server: &Server, project: &Project, current: &str) -> Result<()> {
    let layout = &server.layout;
    let listed = server.releases()?;
    let history = server.history()?;
    if server.plan().is_dry_run() {
        server
            .plan()
            .note(&format!("prune: keep {} releases and their images", project.settings.releases_kept));
        return Ok(());
    }
    let kept = history::kept(&history, current, project.settings.releases_kept);
    let stale: Vec<&String> =
        listed.iter().filter(|d| !d.ends_with(".new") && !kept.iter().any(|k| k == *d)).collect();
    if stale.is_empty() {
        return Ok(());
    }
    let dirs = stale.iter().map(|s| layout.release_dir(s));
    let images = stale.iter().map(|s| layout.image(s));
    server.run(
        Cmd::of("rm -rf")
            .args(dirs)
            .then(Cmd::of("docker image rm").args(images).silent().or(Cmd::of("true"))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{env::Env, project::tests::fake_project};
    use xshell::Shell;

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
            "docker ps --quiet --filter label=com.docker.compose.project=lattice",
            "up --detach --no-recreate --remove-orphans --scale",
            "healthcheck --wait standby --timeout 90",
            "docker stop",
            "healthcheck --wait leader --timeout 90",
            ">> deploys.log",
            "setsid nohup sh .switch.sh",
            "-f .switch.log",
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
}
