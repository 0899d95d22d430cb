//! The swarm target (`target = "swarm"` in `[workspace.metadata.lattice]`, or `LATTICE_TARGET=swarm`):
//! the same tasks — `deploy --sha`, `rollback`, `status`, `logs --server`, `migrate --server` —
//! drive a Docker Swarm stack instead of one server's Compose project.
//!
//! Everything else is shared with the one-server target: the ssh connection to a manager node
//! ([`Server`]), preflight, the deploy lock, the deploy directory (`releases/<sha>/`, `current`,
//! `deploys.log`) and the printed plan. What differs is how a release is put in place:
//!
//! 1. `secrets.sh`: the app secrets of the manager's `.env` become Docker secrets, named after a
//!    salted hash of their value (a changed secret is a new one), listed in `releases/<sha>/secrets.env`;
//! 2. `render.sh`: Compose renders base.yml + prod.yml + swarm.yml (interpolation, `!reset`) into the
//!    one file `docker stack deploy` takes, `releases/<sha>/stack.yml`; it holds no secret;
//! 3. first deploy only: the stack with no bot replica, so Postgres and the stack's network exist;
//! 4. `migrate.sh`: the new image's `migrate` once, as a one-off Swarm job, before any bot task
//!    changes; a failed migration stops here and the stack is left as it was;
//! 5. `rollout.sh`: `docker stack deploy`, then follow the bot's rolling update (one shard at a
//!    time, start-first: the new task is a standby for its shard until the old one stops) until
//!    it completes or Swarm rolls it back, and record the outcome (`current`, `deploys.log`).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::{
    deploy::{preflight, ReleaseFiles},
    plan::{Cmd, Plan, Steps},
    project::Project,
    remote::{history, who, Action, Lock, Server},
};

/// The swarm overlay, over base.yml and prod.yml.
pub const SWARM: &str = "compose/swarm.yml";

const SECRETS_SH: &str = include_str!("secrets.sh");
const RENDER_SH: &str = include_str!("render.sh");
const MIGRATE_SH: &str = include_str!("migrate.sh");
const ROLLOUT_SH: &str = include_str!("rollout.sh");

/// The stack's services, as Swarm names them.
fn service(project: &Project, name: &str) -> String {
    format!("{}_{name}", project.settings.compose_project)
}

/// Seconds a rollout may take: each shard in turn gets the health timeout.
fn rollout_timeout(project: &Project) -> u64 {
    project.settings.health_timeout_secs * 4
}

/// `deploy --sha` on a swarm.
pub fn deploy(
    plan: &Plan,
    project: &Project,
    sha: &str,
    lock_wait: Option<u64>,
    started: Instant,
) -> Result<()> {
    plan.note("target swarm: the stack on the manager reached over ssh, one bot replica per shard");
    let mut steps = Steps::since(plan, started);
    let (server, files) = preflight(plan, project, sha, &mut steps)?;
    let Some(files) = files else { bail!("preflight failed") };
    // Read before anything on the server changes (the connection only said `true` so far).
    let swarm_file =
        plan.read(Cmd::of("git show").arg(format!("{}:{SWARM}", files.sha))).with_context(|| {
            format!("{} has no {SWARM}: deploy a commit that ships the swarm overlay", files.sha)
        })?;
    let swarm_file = format!("{swarm_file}\n");
    let sha = files.sha.clone();
    server.require_app_env()?;
    let mut lock = server.lock(&format!("{} deploy {sha}", who(&project.env)), lock_wait)?;
    let previous = server.current()?;
    ship(&server, &mut lock, project, &files, &swarm_file)?;
    prepare(&server, project, &sha)?;
    migrate_job(&server, project, &sha).context(
        "migrations failed (their output is above); nothing was updated, the stack runs as it did",
    )?;
    rollout(&server, project, &sha, previous.as_deref(), Action::Deploy)
        .with_context(|| format!("deploy {sha}"))?;
    if !plan.is_dry_run() {
        println!("deployed {sha} to the swarm: every shard healthy after {} s", started.elapsed().as_secs());
    }
    Ok(())
}

/// The release's own files in `releases/<sha>/`, swarm.yml among them, through the lock's own
/// session (as a one-server deploy ships them).
fn ship(
    server: &Server,
    lock: &mut Lock,
    project: &Project,
    files: &ReleaseFiles,
    swarm_file: &str,
) -> Result<()> {
    let plan = server.plan();
    let dir = server.layout.release_dir(&files.sha);
    plan.note(&format!(
        "ship {dir}: the compose files of {} itself, swarm.yml too, and its image name",
        files.sha
    ));
    for (name, content) in [
        ("base.yml", files.base.as_str()),
        ("prod.yml", files.prod.as_str()),
        ("swarm.yml", swarm_file),
        ("release.env", &files.release_env(project)),
    ] {
        lock.write(plan, &format!("{dir}/{name}"), content)?;
    }
    Ok(())
}

/// Docker secrets and the rendered stack file of release `sha`; on a first deploy, the stack
/// without bot replicas, so Postgres and the network exist for the migration.
fn prepare(server: &Server, project: &Project, sha: &str) -> Result<()> {
    let plan = server.plan();
    let compose_project = &project.settings.compose_project;
    let dir = server.layout.release_dir(sha);
    plan.note("the app secrets of the manager's .env as Docker secrets (values never leave the server)");
    server.run(Cmd::script("secrets.sh", SECRETS_SH).arg(compose_project).arg(&dir))?;
    plan.note(
        "render base.yml + prod.yml + swarm.yml with Compose into the file `docker stack deploy` takes",
    );
    let stack_file = format!("{dir}/stack.yml");
    server.run(Cmd::script("render.sh", RENDER_SH).arg(compose_project).arg(&dir).arg(&stack_file))?;
    let bot = service(project, "bot");
    let exists =
        Cmd::of("docker service inspect").arg(&bot).silent().and(Cmd::of("echo yes")).or(Cmd::of("echo no"));
    if server.read(exists)?.trim() == "no" || plan.is_dry_run() {
        plan.note("first deploy (no bot service yet): Postgres and the network first, no bot replica");
        let db_file = format!("{dir}/stack-db.yml");
        server.run(
            Cmd::script("render.sh", RENDER_SH).arg(compose_project).arg(&dir).arg(&db_file).arg("0").and(
                Cmd::of("docker stack deploy --with-registry-auth -c").arg(&db_file).arg(compose_project),
            ),
        )?;
    }
    Ok(())
}

/// `lattice-bot migrate` of release `sha`'s image, once, as a one-off Swarm job.
fn migrate_job(server: &Server, project: &Project, sha: &str) -> Result<()> {
    server.plan().note("migrate once, a one-off job with the new image, before any bot task changes");
    server.run(
        Cmd::script("migrate.sh", MIGRATE_SH)
            .arg(&project.settings.compose_project)
            .arg(server.layout.image(sha))
            .arg(server.layout.release_dir(sha))
            .arg(project.settings.health_timeout_secs.to_string()),
    )
}

/// `docker stack deploy` of release `sha`'s rendered file, followed until Swarm says how it
/// ended; a rollout Swarm rolled back is an error that says so.
fn rollout(
    server: &Server,
    project: &Project,
    sha: &str,
    previous: Option<&str>,
    action: Action,
) -> Result<()> {
    let plan = server.plan();
    plan.note("update the stack: one shard at a time, the new task stands by until the old one hands over");
    let out = server.read(
        Cmd::script("rollout.sh", ROLLOUT_SH)
            .arg(&project.settings.compose_project)
            .arg(sha)
            .arg(previous.unwrap_or(""))
            .arg(action.as_str())
            .arg(who(&project.env))
            .arg(rollout_timeout(project).to_string()),
    )?;
    if plan.is_dry_run() {
        return Ok(());
    }
    let (tasks, result) = match out.trim_end().rsplit_once('\n') {
        Some((tasks, last)) => (tasks, last),
        None => ("", out.trim_end()),
    };
    let tasks = crate::remote::printable(tasks.trim());
    match result.trim() {
        "result ok" => Ok(()),
        "result rolled-back" => bail!(
            "the new tasks never became healthy: Swarm rolled every shard back to {} (recorded in deploys.log). \
             Its tasks:\n{tasks}",
            previous.unwrap_or("the previous release")
        ),
        "result paused" => bail!(
            "Swarm paused the update (a rollback that failed too): `cargo xtask status` shows each shard. Its tasks:\n{tasks}"
        ),
        "result timeout" => bail!(
            "the update did not finish in {} s: `cargo xtask status` shows each shard. Its tasks:\n{tasks}",
            rollout_timeout(project)
        ),
        other => bail!("docker stack deploy failed ({}); the output is above", crate::remote::printable(other)),
    }
}

/// `rollback [--sha] [--force]` on a swarm: the target release's own files, rendered again (with
/// the current secrets), rolled out like a deploy, without a migration; refused, as on one
/// server, when the database has migrations the target's image does not know that are not
/// declared backward-compatible, unless `force`.
pub fn rollback(
    plan: &Plan,
    project: &Project,
    sha: Option<&str>,
    lock_wait: Option<u64>,
    force: bool,
    started: Instant,
    chosen: &mut Option<String>,
) -> Result<()> {
    plan.note("target swarm: roll the stack back to an earlier release's files and image");
    let server = Server::open(plan, project, Vec::new())?;
    let _lock =
        server.lock(&format!("{} rollback {}", who(&project.env), sha.unwrap_or("previous")), lock_wait)?;
    let state = server.state()?;
    let (now, lines, releases) = (state.current, state.history, state.releases);
    let target = if plan.is_dry_run() {
        sha.map_or_else(|| "<previous good release>".to_string(), str::to_string)
    } else {
        let releases: Vec<&str> = releases.iter().map(String::as_str).collect();
        crate::rollback::pick_target(sha, now.as_deref(), &lines, &releases)?
    };
    *chosen = Some(target.clone());
    if now.as_deref() == Some(target.as_str()) {
        println!("{target} is already the current release; nothing to do");
        return Ok(());
    }
    if let Some(now) = now.as_deref() {
        plan.note("the schema check reads both images' labels on the manager: each is pulled if it is not there by tag");
        for sha in [target.as_str(), now] {
            server
                .pull(&project.env, sha)
                .with_context(|| format!("the image of {sha} could not be pulled"))?;
        }
        crate::rollback::schema_check(&server, &target, now, force)?;
    }
    prepare(&server, project, &target)?;
    rollout(&server, project, &target, now.as_deref(), Action::Rollback)
        .with_context(|| format!("rollback to {target}"))?;
    if !plan.is_dry_run() {
        println!("rolled back to {target}: every shard healthy after {} s", started.elapsed().as_secs());
    }
    Ok(())
}

/// `migrate --server` on a swarm: the current release's migrations, as the one-off job.
pub fn migrate(plan: &Plan, project: &Project) -> Result<()> {
    let server = Server::open(plan, project, Vec::new())?;
    server.require_app_env()?;
    let _lock = server.lock(&format!("{} migrate", who(&project.env)), None)?;
    let Some(sha) = server.current()? else {
        bail!("nothing is deployed on the swarm yet: `cargo xtask deploy --sha <sha>` migrates as it deploys")
    };
    migrate_job(&server, project, &sha).context("migrations failed on the swarm (their output is above)")
}

/// `logs --server` on a swarm: every shard's task, each line prefixed with its task.
pub fn logs(plan: &Plan, project: &Project, tail: usize, follow: bool) -> Result<()> {
    let server = Server::open(plan, project, Vec::new())?;
    let mut cmd = Cmd::of("docker service logs --no-task-ids --tail").arg(tail.to_string());
    if follow {
        cmd = cmd.arg("--follow");
    }
    server.run(cmd.arg(service(project, "bot")))
}

/// One shard's task as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub shard: u32,
    pub task: String,
    pub image: String,
    pub state: String,
    pub since: String,
    pub node: String,
}

/// The running tasks of the bot service, one per shard: task slot N is shard N - 1.
/// `lines` are `docker service ps --format '{{.Name}}\t{{.Image}}\t{{.CurrentState}}\t{{.Node}}'`.
pub fn shards(lines: &str) -> Vec<Shard> {
    let mut shards: Vec<Shard> = lines
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let (task, image, current, node) = (f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
            let slot: u32 = task.rsplit_once('.')?.1.parse().ok()?;
            let (state, since) = current.split_once(' ').unwrap_or((current, ""));
            let shown = crate::remote::printable;
            Some(Shard {
                shard: slot.checked_sub(1)?,
                task: shown(task),
                image: shown(image.split('@').next().unwrap_or(image)),
                state: shown(state),
                since: shown(since.trim()),
                node: shown(node),
            })
        })
        .collect();
    shards.sort_by_key(|s| s.shard);
    shards
}

#[derive(Debug, Serialize)]
struct Report {
    server: String,
    target: &'static str,
    current: Option<String>,
    since: Option<String>,
    shards: Vec<Shard>,
    postgres: Vec<Shard>,
    lock: Option<String>,
    history: Vec<String>,
}

/// `status` on a swarm: the current release, each shard's task (image, state, since when, node),
/// Postgres, the lock holder and the history.
pub fn status(plan: &Plan, project: &Project, history_len: usize, json: bool) -> Result<()> {
    let server = Server::open(plan, project, Vec::new())?;
    let now = server.current()?;
    let lines = server.history()?;
    let holder = server.lock_holder()?;
    let ps = |name: &str| {
        Cmd::of("docker service ps --no-trunc --filter desired-state=running --format")
            .arg("{{.Name}}\t{{.Image}}\t{{.CurrentState}}\t{{.Node}}")
            .arg(service(project, name))
            .without_errors()
            .or(Cmd::of("true"))
    };
    let bot = server.read(ps("bot"))?;
    let postgres = server.read(ps("postgres"))?;
    if plan.is_dry_run() {
        return Ok(());
    }
    let shown = crate::remote::printable;
    let report = Report {
        server: format!("{}@{}", server.target.user, server.target.host),
        target: "swarm",
        since: now.as_deref().and_then(|sha| history::since(&lines, sha)).map(shown),
        current: now,
        shards: shards(&bot),
        postgres: shards(&postgres),
        lock: holder.map(|h| h.trim().to_string()),
        history: lines[lines.len().saturating_sub(history_len)..].iter().map(ToString::to_string).collect(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("swarm:    {} (manager)", report.server);
    println!("current:  {}", report.current.as_deref().unwrap_or("nothing deployed"));
    if let Some(since) = &report.since {
        println!("since:    {since}");
    }
    println!("shards:");
    if report.shards.is_empty() {
        println!("  no bot task running");
    }
    for s in &report.shards {
        println!(
            "  shard {:<3} {:<16} {:<10} since {:<18} {}  on {}",
            s.shard, s.task, s.state, s.since, s.image, s.node
        );
    }
    for s in &report.postgres {
        println!("postgres: {} {} since {} on {}", s.task, s.state, s.since, s.node);
    }
    println!("lock:     {}", report.lock.as_deref().unwrap_or("free"));
    println!("history:");
    for line in &report.history {
        println!("  {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::tests::fake_project;
    use xshell::Shell;

    #[test]
    fn each_running_task_is_the_shard_of_its_slot() {
        let ps = "lattice_bot.2\treg/lattice-bot:bbb@sha256:00ff\tRunning 3 minutes ago\tnode-1\n\
                  lattice_bot.1\treg/lattice-bot:aaa\tStarting 2 seconds ago\tnode-2\n\
                  garbage line\n";
        let shards = shards(ps);
        assert_eq!(shards.len(), 2);
        assert_eq!(
            shards[0],
            Shard {
                shard: 0,
                task: "lattice_bot.1".into(),
                image: "reg/lattice-bot:aaa".into(),
                state: "Starting".into(),
                since: "2 seconds ago".into(),
                node: "node-2".into(),
            }
        );
        assert_eq!((shards[1].shard, shards[1].image.as_str()), (1, "reg/lattice-bot:bbb"));
    }

    #[test]
    fn the_dry_run_plan_migrates_once_before_the_stack_update_and_shows_no_secret() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let mut project = fake_project(&[]);
        project.settings.target = "swarm".into();
        let sha = "0123456789abcdef0123456789abcdef01234567";
        crate::deploy::deploy(&plan, &project, sha, None, false).unwrap();
        let steps = plan.steps();
        let text = steps.join("\n");
        let order = [
            "target swarm",
            "ssh -F '$TMP/config' lattice-server true",
            "docker manifest inspect ghcr.io/lattice-bot/lattice-bot:0123456789abcdef0123456789abcdef01234567",
            "config --quiet",
            "git show 0123456789abcdef0123456789abcdef01234567:compose/swarm.yml",
            ".env",
            "flock -n -E 75 .lock",
            "write releases/0123456789abcdef0123456789abcdef01234567/swarm.yml",
            "secrets.sh lattice releases/0123456789abcdef0123456789abcdef01234567",
            "render.sh lattice releases/0123456789abcdef0123456789abcdef01234567 releases/0123456789abcdef0123456789abcdef01234567/stack.yml",
            "docker service inspect lattice_bot",
            "docker stack deploy --with-registry-auth -c releases/0123456789abcdef0123456789abcdef01234567/stack-db.yml lattice",
            "migrate.sh lattice ghcr.io/lattice-bot/lattice-bot:0123456789abcdef0123456789abcdef01234567",
            "rollout.sh lattice 0123456789abcdef0123456789abcdef01234567",
        ];
        plan.assert_steps(&order, &["secret-key-material", "registry-secret-pw", "discord-secret-token"]);
        assert!(
            !text.contains("compose -p lattice --env-file .env --env-file releases"),
            "no one-server switch:\n{text}"
        );
    }

    #[test]
    fn the_dry_run_rollback_checks_the_schema_before_the_stack_update() {
        let sh = Shell::new().unwrap();
        let plan = Plan::new(&sh, true);
        let mut project = fake_project(&[]);
        project.settings.target = "swarm".into();
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let mut chosen = None;
        rollback(&plan, &project, Some(sha), None, false, Instant::now(), &mut chosen).unwrap();
        let order = [
            "target swarm",
            "flock -n -E 75 .lock",
            &format!("docker image inspect ghcr.io/lattice-bot/lattice-bot:{sha}"),
            "schema.sh ghcr.io/lattice-bot/lattice-bot:0123456789abcdef0123456789abcdef01234567 lattice.schema.head",
            "secrets.sh lattice releases/0123456789abcdef0123456789abcdef01234567",
            "rollout.sh lattice 0123456789abcdef0123456789abcdef01234567",
        ];
        plan.assert_steps(&order, &["secret-key-material", "registry-secret-pw", "discord-secret-token"]);
        assert!(!plan.steps().join("\n").contains("migrate.sh"), "a rollback migrates nothing");
    }
}
