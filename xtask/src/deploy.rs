//! NAME
//!     cargo xtask deploy — put a release that is already in the registry on the server.
//!
//! SYNOPSIS
//!     cargo xtask deploy --sha <git sha> [--lock-wait SECS] [--allow-older] [--verbose] [--dry-run]
//!
//! DESCRIPTION
//!     Preflight, locally and without touching the server: the sha names a commit, its image is in
//!     the registry, that commit's compose overlays are valid, the SSH settings are complete. Every
//!     problem is listed at once (the SSH connection opens meanwhile: it changes nothing on the
//!     server). Then, over that one connection: check the server's `.env` has every
//!     app variable (names only), take the lock, refuse a commit that is an ancestor of the running
//!     release (deploys go forward; `rollback` goes back, or `--allow-older`), upload the release's
//!     own compose files (through the lock's own session), pull unless the server has the image
//!     (a private registry's login only then, in a Docker config of that pull alone), compare the
//!     migrations the image carries (label `lattice.schema.head`) with those the database has: when
//!     it has them all, neither snapshot nor migration; otherwise snapshot the database
//!     (`pg_dump -Fc` into `<deploy_path>/snapshots`, the newest `snapshots_kept` kept) and migrate
//!     (`compose run --rm bot migrate`; a failure stops here and the running release is left
//!     untouched). Then switch `current` and hand the bot over make-before-break until the new one
//!     leads (it never did: switch back to the previous release, whose bot serves again, record
//!     both, fail with the new container's last log lines), record in `deploys.log`, prune
//!     releases beyond `releases_kept`. The server never builds.
//!
//!     The switch-back asks what rollback asks: when the database now has migrations the previous
//!     release's code does not know and that are not declared backward-compatible, that code is
//!     not started again (a bot of it still serving is stopped); the error names the snapshot and
//!     the way back: `cargo xtask restore <snapshot> --yes`, then
//!     `cargo xtask rollback --sha <previous>`.
//!
//!     It prints one line per step with its seconds — preflight, connect, lock, upload, pull,
//!     migrate, switch (the new bot a ready standby), healthy (it leads) — and a last line with
//!     the seconds until the new release served and until the end. `--verbose` prints every
//!     command and its output as well; `--dry-run` prints the commands and runs none.
//!
//!     The switch, handover, switch-back and record are one script (`.switch.sh`) that the lock's
//!     own ssh session starts detached (`setsid nohup`): it inherits the locked file descriptor, so
//!     a killed client can neither cut a switch in half nor free the lock before `current`, the
//!     running container and `deploys.log` agree again. The lock's session streams its log
//!     (`.switch.log`) back and then its result. Killed earlier (upload, pull, migrate), the lock
//!     dies with the ssh session and nothing was switched; running the same deploy again completes it.
//!
//!     Test hook: `LATTICE_TEST_PAUSE_AT=pulled|migrate|switch|health` prints
//!     `lattice test pause: <step>` at that point and sleeps 5 s, so the end-to-end test can kill
//!     the deploy exactly there.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{
    compose, flags, notify,
    plan::{Cmd, Line, Plan, Steps},
    project::Project,
    registry,
    remote::{
        connection_lost, history, pause_at,
        schema::{self, blocking_migrations, versions, LABEL_COMPATIBLE, LABEL_HEAD},
        who, Action, Server, Sha, State, Switch, SwitchBack,
    },
};

impl flags::Deploy {
    pub fn run(self, plan: &Plan, project: &Project) -> Result<()> {
        deploy(plan, project, &self.sha, self.lock_wait, self.allow_older)
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

/// Everything checked before the server is touched; every problem is collected, and nothing is
/// done on the server unless there is none. The connection opens while the checks run.
pub(crate) fn preflight<'p, 'a>(
    plan: &'p Plan<'a>,
    project: &Project,
    sha: &str,
    steps: &mut Steps,
) -> Result<(Server<'p, 'a>, Option<ReleaseFiles>)> {
    plan.note(
        "preflight: nothing on the server changes until every check passes (the connection opens meanwhile, \
         which changes nothing there)",
    );
    let mut files = None;
    let server = Server::open_beside(plan, project, || {
        let mut problems = Vec::new();
        files = local_checks(plan, project, sha, &mut problems)?;
        if problems.is_empty() {
            steps.done("preflight", "");
        }
        Ok(problems)
    })?;
    Ok((server, files))
}

/// The checks that need no server: the sha names a commit, its image is in the registry, its
/// compose overlays are valid. Problems go to `problems`; the release's files when the sha is good.
fn local_checks(
    plan: &Plan,
    project: &Project,
    sha: &str,
    problems: &mut Vec<String>,
) -> Result<Option<ReleaseFiles>> {
    let sha = Sha::parse(sha).map_err(|e| problems.push(format!("{e:#}"))).ok();
    let files = match sha {
        Some(sha) => release_files(plan, &sha, problems)?,
        None => None,
    };
    if let Some(files) = &files {
        let repository = &project.settings.image;
        let mut logged_in = true;
        if let Some(login) = registry::login(&project.env, repository) {
            if let Err(stderr) = plan.attempt(login)? {
                // One of the problems, not the end of preflight: the others are listed with it.
                let said = stderr.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("no output");
                problems.push(format!(
                    "docker login to {host} failed ({said}): check REGISTRY_USER and REGISTRY_PASSWORD (a token that \
                     may read the repository) and that {host} is reachable",
                    host = registry::host(repository)
                ));
                logged_in = false;
            }
        }
        let image = format!("{repository}:{}", files.sha);
        let mut inspect = Cmd::of("docker manifest inspect");
        if registry::is_loopback(repository) {
            inspect = inspect.arg("--insecure");
        }
        // Both at once: each is a round trip of its own (the registry; Compose's start-up).
        let (_dir, config) = overlays_check(plan, project, files)?;
        let mut checks = vec![config];
        if logged_in {
            checks.insert(0, inspect.arg(&image));
        }
        let mut answers = plan.attempt_all(checks)?;
        if logged_in {
            if let Err(stderr) = answers.remove(0) {
                problems.push(registry::manifest_problem(&image, &stderr));
            }
        }
        // The overlays' check is the last one (the manifest's, when asked, came first).
        if let Some(Err(_)) = answers.last() {
            problems.push(format!(
                "the compose overlays of {} are not valid: run `docker compose -f compose/base.yml -f compose/prod.yml \
                 config` on that commit (with BOT_IMAGE set) to see why",
                files.sha
            ));
        }
    }
    Ok(files)
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

/// `docker compose config -q` over the release's own files, with that release's BOT_IMAGE, written
/// to the returned temporary directory.
fn overlays_check(plan: &Plan, project: &Project, files: &ReleaseFiles) -> Result<(xshell::TempDir, Cmd)> {
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
    Ok((dir, stack.cmd().args(["config", "--quiet"])))
}

/// The deploy, and its notification (`LATTICE_NOTIFY_WEBHOOK`) whatever the outcome.
pub fn deploy(
    plan: &Plan,
    project: &Project,
    sha: &str,
    lock_wait: Option<u64>,
    allow_older: bool,
) -> Result<()> {
    let started = Instant::now();
    let result = deploy_steps(plan, project, sha, lock_wait, allow_older, started);
    notify::outcome(plan, &project.env, Action::Deploy, sha, started, &result);
    result
}

fn deploy_steps(
    plan: &Plan,
    project: &Project,
    sha: &str,
    lock_wait: Option<u64>,
    allow_older: bool,
    started: Instant,
) -> Result<()> {
    if project.settings.swarm() {
        return crate::swarm::deploy(plan, project, sha, lock_wait, started);
    }
    let mut steps = Steps::since(plan, started);
    let (server, files) = preflight(plan, project, sha, &mut steps)?;
    let Some(files) = files else { bail!("preflight failed") };
    let sha = files.sha.clone();
    (|| -> Result<()> {
        server.require_app_env()?;
        steps.done("connect", "");
        let holder = format!("{} deploy {sha}", who(&project.env));
        let mut lock = server.lock(&holder, lock_wait)?;
        server.settle_unfinished()?;
        let state = server.state()?;
        let previous = state.current.clone();
        refuse_older(plan, &sha, previous.as_deref(), allow_older)?;
        steps.done("lock", "");
        let layout = server.layout.clone();
        let dir = layout.release_dir(&sha);

        plan.note(&format!("ship {dir}: the compose files of {sha} itself, and its image name"));
        for (name, content) in
            [("base.yml", &files.base), ("prod.yml", &files.prod), ("release.env", &files.release_env(project))]
        {
            lock.write(plan, &format!("{dir}/{name}"), content)?;
        }
        // (Each write's answer shows the lock still held.)
        steps.done("upload", "");
        let pulled = server.pull(&project.env, &sha).context("pull")?;
        steps.done("pull", &pulled);
        let pause = pause_at(&project.env);
        if pause.as_deref() == Some("pulled") && !plan.is_dry_run() {
            eprintln!("lattice test pause: pulled");
            std::thread::sleep(std::time::Duration::from_secs(5));
        }

        lock.ensure_held()?;
        let (back, migrated) = migrate(&server, &sha, previous.as_deref(), pause.as_deref())?;
        steps.done("migrate", &migrated);

        Switch::new(&project.env, &layout, &sha, previous.as_deref(), Action::Deploy, started)
            .with_back(back)
            .run(&server, &mut lock, &mut steps)?;
        let serving = steps.at_last();
        if lock.ensure_held().is_ok() {
            prune(&server, project, &sha, &state)?;
        } else {
            // The connection dropped during the switch: the lock went with it, so nothing more.
            eprintln!("the deploy lock went with the dropped connection: old releases are pruned by the next deploy");
        }
        drop(lock);
        if !plan.is_dry_run() {
            println!("deployed {sha}: serving after {serving:.1} s, done in {:.1} s", steps.elapsed());
        }
        Ok(())
    })()
    .with_context(|| format!("deploy {sha}"))
}

/// Refuses a commit older than the running release (an ancestor of it) unless `allow_older`: a
/// deploy only goes forward (CI deploys that finish out of order cannot undo each other), and the
/// way back is `rollback`, which checks the schema.
fn refuse_older(plan: &Plan, sha: &str, current: Option<&str>, allow_older: bool) -> Result<()> {
    let Some(current) = current.filter(|c| !sha.starts_with(*c) && !allow_older) else { return Ok(()) };
    if plan.is_dry_run() {
        plan.note("refuse the sha if it is an ancestor of the running release (--allow-older skips this)");
        return Ok(());
    }
    if !plan.check(Cmd::of("git cat-file -e").arg(format!("{current}^{{commit}}")))? {
        bail!(
            "cannot tell whether {sha} is older than {current}, which the server runs: that commit is not in this \
             repository. `git fetch` it (a CI checkout needs `fetch-depth: 0`), or pass --allow-older to deploy \
             without this check"
        );
    }
    if plan.check(Cmd::of("git merge-base --is-ancestor").arg(sha).arg(current))? {
        bail!(
            "{sha} is older than {current}, which the server runs (an ancestor of it): a deploy only goes forward. \
             To go back, `cargo xtask rollback --sha {sha}` (it checks the database schema); to deploy it anyway, \
             pass --allow-older"
        );
    }
    Ok(())
}

/// Brings the database to `sha`'s schema: nothing when it already has every migration the image
/// carries (no snapshot, no migrate container); otherwise a snapshot first (when the database has
/// anything to keep), then the image's `migrate`. Returns what the schema then allows of a
/// switch-back to `previous` (rollback's check: the previous code's head against the applied
/// migrations and the new image's backward-compatible ones), and what was done, for the step line.
fn migrate(
    server: &Server,
    sha: &str,
    previous: Option<&str>,
    pause: Option<&str>,
) -> Result<(SwitchBack, String)> {
    let plan = server.plan();
    let layout = &server.layout;
    let has_all = |head: Option<i64>, applied: &[i64]| {
        head.is_some_and(|h| applied.last().is_some_and(|last| *last >= h))
    };
    // Every deploy but the first finds Postgres running: one round trip (docker alone, no Compose)
    // then tells whether there is anything to migrate.
    plan.note("the image's schema head and the database's migrations, when Postgres runs already");
    let quick = server.schema(sha, LABEL_HEAD, sha, LABEL_COMPATIBLE)?;
    let head = versions(&quick.head).first().copied();
    if let Some(applied) = quick.applied.as_deref().map(versions) {
        if has_all(head, &applied) {
            return nothing_to_migrate(server, sha, head, pause);
        }
    }
    plan.note("Postgres up (as it runs, or started) to read which migrations the database has");
    server.run(layout.compose(sha, &["up", "--detach", "--no-recreate", "--wait", "postgres"]))?;
    let head = server.schema_head(sha)?;
    let applied = server.applied_migrations(sha).context(
        "cannot read the database's applied migrations (psql's message is above): is Postgres healthy \
         (`cargo xtask status`, `cargo xtask logs --server`)?",
    )?;
    if has_all(head, &applied) && !plan.is_dry_run() {
        return nothing_to_migrate(server, sha, head, pause);
    }
    let snapshot = if applied.is_empty() && !plan.is_dry_run() {
        plan.note("the database has no migrations yet: nothing to snapshot");
        None
    } else {
        Some(server.snapshot(previous.unwrap_or(sha))?)
    };
    plan.note("migrate with the new image; on failure the running release is left untouched");
    let mut step: Line = layout.compose(sha, &["run", "--rm", "--no-TTY", "bot", "migrate"]).into();
    if pause == Some("migrate") {
        step = step.and(Cmd::of("echo").arg("lattice test pause: migrate")).and(Cmd::of("sleep 5"));
    }
    // The test hook's marker must be seen as it comes.
    let ran = if pause == Some("migrate") { server.run_shown(step) } else { server.run(step) };
    if let Err(err) = ran {
        if connection_lost(&err) {
            bail!(
                "the connection to the server dropped during the migration, so whether it finished is unknown; \
                 nothing was switched and the running release still serves. Run the same deploy again: migrations \
                 already applied are not applied twice"
            );
        }
        return Err(err
            .context("migrations failed (their output is above); nothing was switched, the running release still serves"));
    }
    let Some(previous) = previous.filter(|p| *p != sha) else {
        let detail = migrated(&snapshot);
        return Ok((SwitchBack { blocking: Vec::new(), snapshot }, detail));
    };
    let after = server.applied_migrations(sha)?;
    let compatible = versions(&server.image_label(sha, LABEL_COMPATIBLE)?);
    let blocking = match server.schema_head(previous)? {
        Some(previous_head) => blocking_migrations(previous_head, &compatible, &after),
        // An image without the label: every migration this deploy applied counts against it.
        None => after.iter().copied().filter(|v| !applied.contains(v)).collect(),
    };
    if !blocking.is_empty() {
        plan.note(&format!(
            "should {sha} fail, {previous} will not be started again: its code does not know migrations {}",
            schema::list(&blocking)
        ));
    }
    let detail = migrated(&snapshot);
    Ok((SwitchBack { blocking, snapshot }, detail))
}

/// The database has every migration of `sha` (up to `head`): no snapshot, no migration.
fn nothing_to_migrate(
    server: &Server,
    sha: &str,
    head: Option<i64>,
    pause: Option<&str>,
) -> Result<(SwitchBack, String)> {
    let head = head.unwrap_or_default();
    server.plan().note(&format!(
        "the database has every migration of {sha} (up to {head}): no snapshot, no migration"
    ));
    if pause == Some("migrate") {
        // The test hook still stops where the migration would have run (its marker seen as it
        // comes).
        server.run_shown(Cmd::of("echo").arg("lattice test pause: migrate").and(Cmd::of("sleep 5")))?;
    }
    Ok((SwitchBack::default(), format!("skipped: the database has every migration (up to {head})")))
}

/// The migrate step's detail: the snapshot taken first, if any.
fn migrated(snapshot: &Option<String>) -> String {
    snapshot.as_ref().map(|name| format!("snapshot {name} first")).unwrap_or_default()
}

/// The release directories beyond `releases_kept`: never `current` nor the newest good ones, and
/// never one the history does not mention — with `deploys.log` lost or cut short, nothing is
/// removed that the history does not prove older.
fn prunable(listed: &[String], history: &[history::Line], current: &str, keep: usize) -> Vec<String> {
    let kept = history::kept(history, current, keep);
    listed
        .iter()
        .filter(|d| !d.ends_with(".new") && !kept.contains(d) && history.iter().any(|l| &l.sha == *d))
        .cloned()
        .collect()
}

/// Removes release directories (and their images) beyond `releases_kept`, never `current` nor the
/// newest good ones, which rollback needs. `before`: what the server held before this deploy.
fn prune(server: &Server, project: &Project, current: &str, before: &State) -> Result<()> {
    let layout = &server.layout;
    if server.plan().is_dry_run() {
        server
            .plan()
            .note(&format!("prune: keep {} releases and their images", project.settings.releases_kept));
        return Ok(());
    }
    let stale = prunable(&before.releases, &before.history, current, project.settings.releases_kept);
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
        deploy(&plan, &project, sha, None, false).unwrap();
        let steps = plan.steps();
        let text = steps.join("\n");
        let order = [
            "ssh -F '$TMP/config' lattice-server true",
            "git cat-file -e",
            "git show 0123456789abcdef0123456789abcdef01234567:compose/base.yml",
            "docker login --username bot --password-stdin ghcr.io",
            "docker manifest inspect ghcr.io/lattice-bot/lattice-bot:0123456789abcdef0123456789abcdef01234567",
            "config --quiet",
            ".env",
            "flock -n -E 75 .lock",
            "readlink current",
            "write releases/0123456789abcdef0123456789abcdef01234567/base.yml",
            "write releases/0123456789abcdef0123456789abcdef01234567/release.env",
            "docker image inspect ghcr.io/lattice-bot/lattice-bot:0123456789abcdef0123456789abcdef01234567",
            "pull.sh ghcr.io bot",
            "up --detach --no-recreate --wait postgres",
            "lattice.schema.head",
            "exec --no-TTY postgres sh -c",
            "snapshot.sh 3",
            "pg_dump -Fc",
            "run --rm --no-TTY bot migrate",
            "ln -sfn releases/0123456789abcdef0123456789abcdef01234567 current.new && mv -T current.new current",
            "docker ps --quiet --filter label=com.docker.compose.project=lattice",
            "up --detach --no-recreate --remove-orphans --scale",
            "healthcheck --wait standby --timeout 90",
            "docker stop",
            "healthcheck --wait leader --timeout 90",
            ">> deploys.log",
            "write .switch.sh",
            "setsid nohup sh .switch.sh",
            "-f .switch.log",
            "cat .switch.result",
            "prune: keep",
        ];
        plan.assert_steps(&order, &["secret-key-material", "registry-secret-pw", "discord-secret-token"]);
        assert!(text.contains("Port 2222") && text.contains("StrictHostKeyChecking yes"), "{text}");
    }

    #[test]
    fn pruning_removes_only_releases_the_history_proves_older() {
        let log: String = ["a", "b", "c", "d"]
            .iter()
            .map(|s| format!("2026-01-01T00:00:00Z deploy {s} - ok 1s ci\n"))
            .collect();
        let listed: Vec<String> = ["a", "b", "c", "d", "x"].iter().map(|s| s.to_string()).collect();
        assert_eq!(prunable(&listed, &history::parse(&log), "d", 2), vec!["a", "b"]);
        // deploys.log lost: nothing can be proven old.
        assert!(prunable(&listed, &[], "d", 2).is_empty());
    }

    #[test]
    fn bad_input_is_all_listed_before_anything_runs() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, false);
        let mut project = fake_project(&[]);
        project.env = Env::from_pairs([("SSH_HOST", "h")]);
        let err = format!("{:#}", deploy(&plan, &project, "not-a-sha", None, false).unwrap_err());
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
        let err = format!("{:#}", deploy(&plan, &project, &"e".repeat(40), None, false).unwrap_err());
        assert!(err.contains("not a commit of this repository: `git fetch`"), "{err}");
    }
}
