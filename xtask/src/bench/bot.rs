//! `bench memory` and `bench handover`: the release bot against the Discord stand-in and a real
//! Postgres container, with the placeholder LLM (no network, no secrets).
//!
//! One bench author sends the steady streams, so those bots run with the per-user limit raised;
//! the flood figure runs a fresh bot with the default limits, as a guild would.
//!
//! The bots and the stand-in are long-running children started through `Plan::start` (their
//! environment is never printed), their output in log files. Every container and process here is
//! removed by a guard when it goes out of scope, through the plan too.

use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use xshell::TempDir;

use super::{http, median, mib, Report};
use crate::{
    plan::{Cmd, Plan},
    project::Project,
};

/// The stand-in's default world (`lattice-bot discord-standin` without flags).
const GUILD_ID: &str = "100000000000000001";
const MAIN_CHANNEL_ID: &str = "100000000000000002";
const DREAM_CHANNEL_ID: &str = "100000000000000003";
/// Not a secret: the stand-in accepts any non-empty token.
const STANDIN_TOKEN: &str = "bench-token-for-the-stand-in";
/// Messages for the memory figure, and their pace.
const MEMORY_MESSAGES: usize = 300;
const PACE: Duration = Duration::from_millis(100);
/// How long anything may take to come up (two busy cores).
const START_DEADLINE: Duration = Duration::from_secs(90);
/// How long after the last message its reply may still come.
pub(super) const REPLY_DEADLINE: Duration = Duration::from_secs(30);
/// The flood: this many messages from one user, as fast as the control API takes them, while
/// a few others talk.
const FLOOD_MESSAGES: usize = 500;
const FLOOD_OTHERS: &[&str] = &["ada", "bob", "cy"];
/// The per-user limit for the steady streams, where one author sends everything.
const STREAM_USER_LIMIT: &str = "100000";

const DRY_RUN_NOTE: &str = "then: docker run lattice-bench-pg-* ($POSTGRES_IMAGE), lattice-bot migrate, \
     lattice-bot discord-standin, lattice-bot run (placeholder LLM), messages through the control API";

// ---- the groups ----

/// What both groups start from: the release bot built, a temp dir for logs, a migrated Postgres.
/// `None` in a dry run, which says what would follow.
fn prepare<'p, 'a>(
    plan: &'p Plan<'a>,
    project: &Project,
) -> Result<Option<(PathBuf, TempDir, Postgres<'p, 'a>)>> {
    let bin = bot_binary(plan, project)?;
    if plan.is_dry_run() {
        plan.note(DRY_RUN_NOTE);
        return Ok(None);
    }
    let temp = plan.sh().create_temp_dir()?;
    let pg = Postgres::start(plan, project, &bin)?;
    Ok(Some((bin, temp, pg)))
}

pub fn memory(plan: &Plan, project: &Project, report: &mut Report) -> Result<()> {
    let Some((bin, temp, pg)) = prepare(plan, project)? else { return Ok(()) };
    let discord = StandIn::start(plan, &bin, &temp, "standin")?;
    let bot = BotProcess::spawn(plan, &bin, &pg, &discord, &temp, "bot", Limits::Stream)?;
    bot.wait_gateway("connected", START_DEADLINE)?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = bot.process.memory().context("reading the bot's /proc status")?;
    report.number(
        "memory",
        "rss_idle",
        mib(idle.rss),
        "MiB",
        "VmRSS of `lattice-bot run` (release), 2 s after the gateway READY",
    );

    plan.note(&format!(
        "sending {MEMORY_MESSAGES} messages at {:.0}/s through the stand-in's control API",
        1.0 / PACE.as_secs_f64()
    ));
    let watch = ReplyWatch::start(&discord.addr);
    let mut peak_sampled = idle.rss;
    let start = Instant::now();
    let mut sent = Vec::new();
    let mut sent_at = Vec::new();
    for i in 0..MEMORY_MESSAGES {
        sleep_until(start + PACE * i as u32);
        let (id, at) = discord.say(&format!("bench message {i}: how are you today?"))?;
        sent.push(id.clone());
        sent_at.push((id, at));
        if let Some(m) = bot.process.memory() {
            peak_sampled = peak_sampled.max(m.rss);
        }
        if i % 50 == 49 {
            eprintln!("  memory: {} messages sent, {} answered", i + 1, watch.answered(&sent));
        }
    }
    let deadline = Instant::now() + REPLY_DEADLINE;
    while watch.answered(&sent) < sent.len() && Instant::now() < deadline {
        if let Some(m) = bot.process.memory() {
            peak_sampled = peak_sampled.max(m.rss);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let replies = watch.stop();
    let end = bot.process.memory().context("reading the bot's /proc status")?;
    let answered = sent.iter().filter(|id| replies.by_message.contains_key(*id)).count();
    report.number(
        "memory",
        "rss_under_load",
        mib(peak_sampled),
        "MiB",
        &format!(
            "highest VmRSS sampled after each of {MEMORY_MESSAGES} messages sent at 10/s and until answered"
        ),
    );
    report.number("memory", "rss_after_load", mib(end.rss), "MiB", "VmRSS once the stream is answered");
    report.number(
        "memory",
        "peak_hwm",
        mib(end.hwm),
        "MiB",
        "VmHWM (kernel's peak RSS) of the bot over the whole run",
    );
    report.number(
        "memory",
        "replies",
        answered as f64,
        "",
        &format!("messages answered of {} sent", sent.len()),
    );
    if let Some(m) = median(&replies.latencies(&sent_at)) {
        report.number(
            "memory",
            "reply_latency_median",
            m,
            "s",
            "send (control API) to reply posted (long-poll of /control/posted)",
        );
    }
    drop(bot);
    flood(plan, &bin, &pg, &temp, report)
}

/// A fresh bot with the default limits; one user sends [`FLOOD_MESSAGES`] at once, others talk.
fn flood(plan: &Plan, bin: &Path, pg: &Postgres<'_, '_>, temp: &TempDir, report: &mut Report) -> Result<()> {
    let discord = StandIn::start(plan, bin, temp, "flood-standin")?;
    let bot = BotProcess::spawn(plan, bin, pg, &discord, temp, "flood-bot", Limits::Default)?;
    bot.wait_gateway("connected", START_DEADLINE)?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = bot.process.memory().context("reading the bot's /proc status")?;
    plan.note(&format!(
        "flood: {FLOOD_MESSAGES} messages from one user as fast as the control API takes them, {} others talking",
        FLOOD_OTHERS.len()
    ));
    let watch = ReplyWatch::start(&discord.addr);
    let mut peak = idle.rss;
    let mut flood_ids = Vec::new();
    let mut others = Vec::new();
    let started = Instant::now();
    for i in 0..FLOOD_MESSAGES {
        let (id, _) = say_as(&discord.addr, "mallory", &format!("spam {i} @everyone"))?;
        flood_ids.push(id);
        // The others talk at even spots within the flood.
        if others.len() < FLOOD_OTHERS.len()
            && i == (others.len() + 1) * FLOOD_MESSAGES / (FLOOD_OTHERS.len() + 1)
        {
            let who = FLOOD_OTHERS[others.len()];
            others.push(say_as(&discord.addr, who, &format!("hi, {who} here"))?.0);
        }
        if i % 10 == 0 {
            if let Some(m) = bot.process.memory() {
                peak = peak.max(m.rss);
            }
        }
    }
    let sent_in = started.elapsed();
    let deadline = Instant::now() + REPLY_DEADLINE;
    while watch.answered(&others) < others.len() && Instant::now() < deadline {
        if let Some(m) = bot.process.memory() {
            peak = peak.max(m.rss);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The flooder's answers and notice come within the same time; let them, then count.
    std::thread::sleep(Duration::from_secs(3));
    let replies = watch.stop();
    let end = bot.process.memory().context("reading the bot's /proc status")?;
    let state = http::get_json(&discord.addr, "/control/state", Duration::from_secs(5))?;
    let to_flooder: usize = flood_ids.iter().map(|id| replies.by_message.get(id).map_or(0, Vec::len)).sum();
    let g = "memory";
    report.number(
        g,
        "flood_rss_idle",
        mib(idle.rss),
        "MiB",
        "VmRSS of a fresh bot (default limits) 2 s after READY, before the flood",
    );
    report.number(
        g,
        "flood_rss_peak",
        mib(peak.max(end.hwm)),
        "MiB",
        &format!("VmHWM of that bot over {FLOOD_MESSAGES} messages from one user and until the others were answered"),
    );
    report.number(g, "flood_rss_after", mib(end.rss), "MiB", "VmRSS once the flood is handled");
    report.seconds(g, "flood_sent_in", sent_in, &format!("time to send the {FLOOD_MESSAGES} messages"));
    report.number(
        g,
        "flood_others_answered",
        watch_count(&replies, &others) as f64,
        "",
        &format!("of {} other users talking during the flood", others.len()),
    );
    report.number(
        g,
        "flood_replies_to_flooder",
        to_flooder as f64,
        "",
        "replies to the flooding user (USER_RATE_LIMIT=6 answers, then one notice)",
    );
    report.number(
        g,
        "flood_discord_429s",
        state.get("rate_limited").and_then(Value::as_u64).unwrap_or(0) as f64,
        "",
        "429s the stand-in answered during the flood",
    );
    report.number(
        g,
        "flood_max_rest_per_second",
        state.get("max_rest_per_second").and_then(Value::as_u64).unwrap_or(0) as f64,
        "",
        "most REST requests the stand-in saw within one second (Discord's global limit: 50)",
    );
    Ok(())
}

fn watch_count(replies: &Replies, ids: &[String]) -> usize {
    ids.iter().filter(|id| replies.by_message.contains_key(*id)).count()
}

pub fn handover(plan: &Plan, project: &Project, report: &mut Report) -> Result<()> {
    let Some((bin, temp, pg)) = prepare(plan, project)? else { return Ok(()) };
    for switch in [Switch::LeaderLock, Switch::KillWithStandby, Switch::KillThenStart, Switch::StopThenStart]
    {
        plan.note(&format!("handover: {}", switch.describe()));
        let run = switch_over(plan, &bin, &pg, &temp, switch)?;
        let g = "handover";
        let n = switch.name();
        let how_serving = match switch {
            Switch::LeaderLock => {
                "SIGTERM to the leader -> the standby's /health says gateway connected (polled every 10 ms)"
            }
            Switch::KillWithStandby => {
                "SIGKILL to the leader -> the standby's /health says gateway connected (polled every 10 ms)"
            }
            Switch::KillThenStart => {
                "SIGKILL to the bot, new process started at once -> its /health says gateway connected"
            }
            Switch::StopThenStart => {
                "SIGTERM, wait for exit, start a new process -> its /health says gateway connected"
            }
        };
        report.seconds(g, &format!("{n}_serving_again"), run.serving_again, how_serving);
        report.seconds(g, &format!("{n}_old_exit"), run.old_exit, "signal to the old process having exited");
        report.seconds(
            g,
            &format!("{n}_gateway_gap"),
            run.gateway_gap,
            "stand-in: the old session gone -> the new one live (IDENTIFY/RESUME done)",
        );
        report.number(
            g,
            &format!("{n}_max_live_sessions"),
            run.max_live as f64,
            "",
            "stand-in: most gateway sessions live at once (2 = two bots handling events)",
        );
        report.text(
            g,
            &format!("{n}_session"),
            run.session,
            "stand-in identify/resume counts across the switch",
        );
        report.seconds(
            g,
            &format!("{n}_reply_gap"),
            run.reply_gap,
            "longest time without any reply while messages arrived every 100 ms (steady: ~0.1 s)",
        );
        report.number(
            g,
            &format!("{n}_sent"),
            run.sent as f64,
            "",
            "messages sent at 10/s from 3 s before to 3 s after the switch",
        );
        report.number(
            g,
            &format!("{n}_lost"),
            run.lost as f64,
            "",
            &format!("messages never answered (waited {} s after the last)", REPLY_DEADLINE.as_secs()),
        );
        report.number(
            g,
            &format!("{n}_answered_twice"),
            run.duplicated as f64,
            "",
            "messages with more than one reply",
        );
    }
    Ok(())
}

// ---- the switch-over scenarios ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// Ours: a standby waits on the Postgres leader lock; SIGTERM the leader.
    LeaderLock,
    /// Ours, crashing: SIGKILL the leader; the standby resumes its checkpointed session.
    KillWithStandby,
    /// Naive: kill the running bot, start a new one.
    KillThenStart,
    /// Naive with a graceful stop: SIGTERM, wait until it exits, start a new one.
    StopThenStart,
}

impl Switch {
    fn name(self) -> &'static str {
        match self {
            Switch::LeaderLock => "leader_lock",
            Switch::KillWithStandby => "kill_standby",
            Switch::KillThenStart => "kill_start",
            Switch::StopThenStart => "stop_start",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Switch::LeaderLock => "two bots on one database, SIGTERM the leader, the standby takes over",
            Switch::KillWithStandby => "two bots on one database, SIGKILL the leader, the standby takes over",
            Switch::KillThenStart => "naive: kill the bot, then start a new one",
            Switch::StopThenStart => "naive, graceful: stop the bot (SIGTERM, wait), then start a new one",
        }
    }
}

struct SwitchRun {
    serving_again: Duration,
    /// From the signal until the old process had exited.
    old_exit: Duration,
    session: &'static str,
    reply_gap: Duration,
    gateway_gap: Duration,
    max_live: u64,
    sent: usize,
    lost: usize,
    duplicated: usize,
}

fn switch_over(
    plan: &Plan,
    bin: &Path,
    pg: &Postgres<'_, '_>,
    temp: &TempDir,
    switch: Switch,
) -> Result<SwitchRun> {
    let n = switch.name();
    // A fresh stand-in per scenario: its counts start at zero and no session of another run applies.
    let discord = StandIn::start(plan, bin, temp, &format!("{n}-standin"))?;
    let mut old = BotProcess::spawn(plan, bin, pg, &discord, temp, &format!("{n}-old"), Limits::Stream)?;
    old.wait_gateway("connected", START_DEADLINE)?;
    let with_standby = matches!(switch, Switch::LeaderLock | Switch::KillWithStandby);
    let mut new = if with_standby {
        let standby =
            BotProcess::spawn(plan, bin, pg, &discord, temp, &format!("{n}-standby"), Limits::Stream)?;
        standby.wait_gateway("standby", START_DEADLINE)?;
        Some(standby)
    } else {
        None
    };

    let watch = ReplyWatch::start(&discord.addr);
    let sender = Sender::start(&discord.addr, PACE);
    std::thread::sleep(Duration::from_secs(3));
    let before = discord.counts()?;
    let pid = old.process.pid().to_string();
    let signal =
        if matches!(switch, Switch::KillThenStart | Switch::KillWithStandby) { "-KILL" } else { "-TERM" };
    let switched_at = Instant::now();
    plan.run(Cmd::of("kill").arg(signal).arg(pid))?;
    let (new, old_exit) = if with_standby {
        let standby = new.take().expect("a standby");
        // Both at once: when the old leader is gone, and when the standby serves.
        let deadline = switched_at + START_DEADLINE;
        let mut old_exit = None;
        while standby.gateway().as_deref() != Some("connected") {
            if old_exit.is_none() && old.process.exited() {
                old_exit = Some(switched_at.elapsed());
            }
            if Instant::now() > deadline {
                bail!(
                    "the standby did not take over within {} s:\n{}",
                    START_DEADLINE.as_secs(),
                    standby.process.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = old.process.wait_exit(Duration::from_secs(30))?;
        if switch == Switch::LeaderLock && !status.success() {
            bail!(
                "the old leader exited with {status} after SIGTERM; its log: {}",
                old.process.log.display()
            );
        }
        (standby, old_exit.unwrap_or_else(|| switched_at.elapsed()))
    } else {
        old.process.wait_exit(Duration::from_secs(30))?;
        let old_exit = switched_at.elapsed();
        let successor =
            BotProcess::spawn(plan, bin, pg, &discord, temp, &format!("{n}-new"), Limits::Stream)?;
        successor.wait_gateway("connected", START_DEADLINE)?;
        (successor, old_exit)
    };
    let serving_again = switched_at.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let sent = sender.stop();
    let deadline = Instant::now() + REPLY_DEADLINE;
    while watch.answered(&sent) < sent.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let replies = watch.stop();
    let after = discord.counts()?;
    let (max_live, gaps) = discord.sessions()?;
    let answered = sent.iter().filter(|id| replies.by_message.contains_key(*id)).count();
    let duplicated =
        sent.iter().filter(|id| replies.by_message.get(*id).is_some_and(|r| r.len() > 1)).count();
    drop(new);
    Ok(SwitchRun {
        serving_again,
        old_exit,
        session: session_kind(before, after),
        reply_gap: longest_gap(&replies.arrivals),
        gateway_gap: gaps.last().copied().map(Duration::from_millis).unwrap_or_default(),
        max_live,
        sent: sent.len(),
        lost: sent.len() - answered,
        duplicated,
    })
}

/// `RESUMED` when the stand-in saw a resume and no new identify, from `(identifies, resumes)`.
fn session_kind(before: (u64, u64), after: (u64, u64)) -> &'static str {
    match (after.0 > before.0, after.1 > before.1) {
        (false, true) => "RESUMED",
        (true, _) => "re-IDENTIFIED",
        (false, false) => "unknown (no new session seen)",
    }
}

/// The longest interval between consecutive instants (sorted here).
pub(super) fn longest_gap(instants: &[Instant]) -> Duration {
    let mut sorted = instants.to_vec();
    sorted.sort();
    sorted.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

// ---- the pieces ----

/// Builds the release bot on the host (the image's binary is the same code) and returns its path.
fn bot_binary(plan: &Plan, project: &Project) -> Result<PathBuf> {
    plan.run(Cmd::of("cargo build --release --locked -p lattice-bot")).context("building the release bot")?;
    let target =
        project.env.get("CARGO_TARGET_DIR").map_or_else(|| project.root.join("target"), PathBuf::from);
    let target = if target.is_relative() { project.root.join(target) } else { target };
    Ok(target.join("release/lattice-bot"))
}

pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// A throwaway Postgres container (`$POSTGRES_IMAGE`), migrated; removed when dropped.
struct Postgres<'p, 'a> {
    plan: &'p Plan<'a>,
    name: String,
    port: u16,
    password: String,
}

impl<'p, 'a> Postgres<'p, 'a> {
    fn start(plan: &'p Plan<'a>, project: &Project, bin: &Path) -> Result<Postgres<'p, 'a>> {
        let image = project.env.get("POSTGRES_IMAGE").unwrap_or("postgres:16-bookworm");
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let name = format!("lattice-bench-pg-{}-{}", std::process::id(), nanos % 1_000_000);
        let port = free_port()?;
        let pg = Postgres { plan, name: name.clone(), port, password: format!("bench-{nanos:x}") };
        let publish = format!("127.0.0.1:{port}:5432");
        // The password reaches docker through its environment (`-e NAME` without a value), never argv.
        plan.run(
            Cmd::of("docker run --detach --name")
                .arg(&name)
                .args([
                    "-e",
                    "POSTGRES_USER=lattice",
                    "-e",
                    "POSTGRES_PASSWORD",
                    "-e",
                    "POSTGRES_DB=lattice",
                    "--publish",
                ])
                .arg(publish)
                .arg(image)
                .env("POSTGRES_PASSWORD", &pg.password),
        )
        .with_context(|| {
            format!(
                "starting Postgres from {image} (set POSTGRES_IMAGE to a local image if it cannot be pulled)"
            )
        })?;
        // Over TCP: the official entrypoint's first, temporary server listens on the socket only.
        let ready = Cmd::of("docker exec")
            .arg(&name)
            .args("pg_isready -q -h 127.0.0.1 -U lattice -d lattice".split(' '));
        if !plan.poll(ready, Duration::from_millis(500), START_DEADLINE)? {
            bail!("Postgres in {name} did not accept connections within {} s", START_DEADLINE.as_secs());
        }
        let mut migrate = Cmd::new(bin).arg("migrate");
        for (key, value) in pg.env() {
            migrate = migrate.env(key, value);
        }
        plan.run(migrate).context("migrating the bench database")?;
        Ok(pg)
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("POSTGRES_HOST", "127.0.0.1".into()),
            ("POSTGRES_PORT", self.port.to_string()),
            ("POSTGRES_USER", "lattice".into()),
            ("POSTGRES_PASSWORD", self.password.clone()),
            ("POSTGRES_DB", "lattice".into()),
        ]
    }
}

impl Drop for Postgres<'_, '_> {
    fn drop(&mut self) {
        self.plan.cleanup(Cmd::of("docker rm -f -v").arg(&self.name));
    }
}

/// A child process, its output in a log file; killed when dropped.
struct Process {
    child: Child,
    log: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Memory {
    /// VmRSS, bytes.
    rss: u64,
    /// VmHWM (peak RSS), bytes.
    hwm: u64,
}

impl Process {
    /// Starts `program` with a clean environment plus `env` (printed by name only), its output
    /// in `log`.
    fn spawn(
        plan: &Plan,
        program: &Path,
        args: &[&str],
        env: &[(&'static str, String)],
        log: PathBuf,
    ) -> Result<Process> {
        let mut cmd = Cmd::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info");
        for (key, value) in env {
            cmd = cmd.env(key, value);
        }
        let child = plan.start(cmd, &log)?.context("a bench process cannot start in a dry run")?;
        Ok(Process { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        parse_memory(&status)
    }

    fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "process {} did not exit within {} s (log: {})",
                    self.pid(),
                    within.as_secs(),
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` and `VmHWM` (kB in the file) of a `/proc/<pid>/status`, in bytes.
fn parse_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    Some(Memory { rss: field("VmRSS:")?, hwm: field("VmHWM:")? })
}

/// `lattice-bot discord-standin` on a free loopback port.
struct StandIn {
    addr: String,
    _process: Process,
}

impl StandIn {
    fn start(plan: &Plan, bin: &Path, temp: &TempDir, label: &str) -> Result<StandIn> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let mut process = Process::spawn(
            plan,
            bin,
            &["discord-standin", "--listen", &addr],
            &[],
            temp.path().join(format!("{label}.log")),
        )?;
        let deadline = Instant::now() + START_DEADLINE;
        while !matches!(
            crate::http::request(&addr, "GET", "/health", None, Duration::from_secs(2)),
            Ok((200, _))
        ) {
            if process.exited() || Instant::now() > deadline {
                bail!("the Discord stand-in did not come up on {addr}:\n{}", process.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(StandIn { addr, _process: process })
    }

    /// Posts a user message in the main channel; its id and when it was sent.
    fn say(&self, content: &str) -> Result<(String, Instant)> {
        say(&self.addr, content)
    }

    /// `(most live sessions at once, each gap with none live in ms)` so far.
    fn sessions(&self) -> Result<(u64, Vec<u64>)> {
        let state = http::get_json(&self.addr, "/control/state", Duration::from_secs(5))?;
        let gaps = state
            .get("session_gaps_ms")
            .and_then(Value::as_array)
            .map(|gaps| gaps.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        Ok((state.get("max_live").and_then(Value::as_u64).unwrap_or(0), gaps))
    }

    /// `(identifies, resumes)` so far.
    fn counts(&self) -> Result<(u64, u64)> {
        let state = http::get_json(&self.addr, "/control/state", Duration::from_secs(5))?;
        let count = |key: &str| state.get(key).and_then(Value::as_u64).unwrap_or(0);
        Ok((count("identifies"), count("resumes")))
    }
}

fn say(addr: &str, content: &str) -> Result<(String, Instant)> {
    say_as(addr, "bench", content)
}

fn say_as(addr: &str, author: &str, content: &str) -> Result<(String, Instant)> {
    let body = serde_json::json!({ "content": content, "author": author });
    let at = Instant::now();
    let answer = http::post_json(addr, "/control/messages", &body)?;
    let id =
        answer.get("id").and_then(Value::as_str).context("the stand-in answered without an id")?.to_string();
    Ok((id, at))
}

/// The per-user limit a bench bot runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limits {
    /// Raised: one bench author sends the whole stream.
    Stream,
    /// The bot's defaults, as a guild runs it.
    Default,
}

/// `lattice-bot run` against the stand-in and the bench database, placeholder LLM.
struct BotProcess {
    process: Process,
    http: String,
}

impl BotProcess {
    fn spawn(
        plan: &Plan,
        bin: &Path,
        pg: &Postgres<'_, '_>,
        discord: &StandIn,
        temp: &TempDir,
        label: &str,
        limits: Limits,
    ) -> Result<BotProcess> {
        let port = free_port()?;
        let mut env = pg.env();
        if limits == Limits::Stream {
            env.push(("USER_RATE_LIMIT", STREAM_USER_LIMIT.into()));
        }
        env.extend([
            ("DISCORD_TOKEN", STANDIN_TOKEN.to_string()),
            ("DISCORD_GUILD_ID", GUILD_ID.into()),
            ("DISCORD_MAIN_CHANNEL_ID", MAIN_CHANNEL_ID.into()),
            ("DISCORD_DREAM_CHANNEL_ID", DREAM_CHANNEL_ID.into()),
            ("DISCORD_API_URL", format!("http://{}", discord.addr)),
            ("DISCORD_GATEWAY_URL", format!("ws://{}", discord.addr)),
            ("LLM_PROVIDER", "placeholder".into()),
            ("HTTP_PORT", port.to_string()),
            ("LATTICE_GIT_SHA", "bench".into()),
        ]);
        let process = Process::spawn(plan, bin, &["run"], &env, temp.path().join(format!("{label}.log")))?;
        Ok(BotProcess { process, http: format!("127.0.0.1:{port}") })
    }

    /// The `gateway` of `/health` (any status code), `None` while nothing answers.
    fn gateway(&self) -> Option<String> {
        let (_, body) =
            crate::http::request(&self.http, "GET", "/health", None, Duration::from_secs(5)).ok()?;
        let health: Value = serde_json::from_str(&body).ok()?;
        health.get("gateway")?.as_str().map(str::to_string)
    }

    fn wait_gateway(&self, want: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.gateway().as_deref() == Some(want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the bot's /health did not report gateway {want} within {} s:\n{}",
                    within.as_secs(),
                    self.process.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Messages every `pace` from a thread until stopped (at most 6000 of them).
pub(super) struct Sender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<String>>>,
}

impl Sender {
    pub(super) fn start(addr: &str, pace: Duration) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = addr.to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut sent = Vec::new();
            for i in 0..6000u32 {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                sleep_until(start + pace * i);
                match say(&addr, &format!("handover message {i}")) {
                    Ok((id, _)) => sent.push(id),
                    Err(e) => eprintln!("  sending message {i} failed: {e:#}"),
                }
            }
            sent
        });
        Sender { stop, thread: Some(thread) }
    }

    pub(super) fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

/// A bench that fails midway stops sending too.
impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The bot's replies as the stand-in records them, with when this side saw each (a long poll of
/// `/control/posted`, so within milliseconds of the post).
#[derive(Default, Clone)]
pub(super) struct Replies {
    /// Message id → arrival of each reply to it.
    pub(super) by_message: HashMap<String, Vec<Instant>>,
    /// Every reply's arrival.
    pub(super) arrivals: Vec<Instant>,
}

impl Replies {
    /// Seconds from sending each message to its first reply.
    fn latencies(&self, sent: &[(String, Instant)]) -> Vec<f64> {
        sent.iter()
            .filter_map(|(id, at)| {
                let first = self.by_message.get(id)?.first()?;
                Some(first.saturating_duration_since(*at).as_secs_f64())
            })
            .collect()
    }
}

pub(super) struct ReplyWatch {
    replies: Arc<Mutex<Replies>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ReplyWatch {
    pub(super) fn start(addr: &str) -> ReplyWatch {
        let replies = Arc::new(Mutex::new(Replies::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared, flag, addr) = (replies.clone(), stop.clone(), addr.to_string());
        let thread = std::thread::spawn(move || {
            let mut after = 0u64;
            while !flag.load(Ordering::SeqCst) {
                let path = format!("/control/posted?after={after}&wait=1");
                let Ok(page) = http::get_json(&addr, &path, Duration::from_secs(5)) else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let now = Instant::now();
                let mut r = shared.lock().expect("replies");
                for posted in page.get("messages").and_then(Value::as_array).into_iter().flatten() {
                    if posted.get("dream").and_then(Value::as_bool) == Some(false) {
                        if let Some(to) = posted.get("reply_to").and_then(Value::as_str) {
                            r.by_message.entry(to.to_string()).or_default().push(now);
                            r.arrivals.push(now);
                        }
                    }
                }
                after = page.get("next").and_then(Value::as_u64).unwrap_or(after);
            }
        });
        ReplyWatch { replies, stop, thread: Some(thread) }
    }

    pub(super) fn answered(&self, sent: &[String]) -> usize {
        let r = self.replies.lock().expect("replies");
        sent.iter().filter(|id| r.by_message.contains_key(*id)).count()
    }

    pub(super) fn stop(mut self) -> Replies {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let replies = self.replies.lock().expect("replies").clone();
        replies
    }
}

impl Drop for ReplyWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_comes_from_proc_status_in_bytes() {
        let status = "Name:\tlattice-bot\nVmPeak:\t  300000 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(parse_memory(status), Some(Memory { rss: 10_485_760, hwm: 20_971_520 }));
        assert_eq!(parse_memory("Name:\tzombie\n"), None);
    }

    #[test]
    fn the_session_kind_comes_from_identify_and_resume_counts() {
        assert_eq!(session_kind((1, 0), (1, 1)), "RESUMED");
        assert_eq!(session_kind((1, 0), (2, 0)), "re-IDENTIFIED");
        assert_eq!(session_kind((1, 2), (1, 2)), "unknown (no new session seen)");
    }

    #[test]
    fn the_longest_gap_ignores_order() {
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        assert_eq!(longest_gap(&[at(300), at(0), at(100), at(1500)]), Duration::from_millis(1200));
        assert_eq!(longest_gap(&[at(5)]), Duration::ZERO);
    }
}
