//! `lattice-bot run`: the gateway loop, message handling, handover and graceful shutdown.
//!
//! Work flows through bounded stages, so a flood costs bounded memory and money:
//! the gateway loop only decides (per-user limit, empty messages, repeats) and hands messages on
//! without waiting; a reply queue of `REPLY_QUEUE` messages feeds `LLM_CONCURRENCY` workers (the
//! only place the LLM is called); everything not answered goes to a store queue, written by one task.
//! A full reply queue drops the answer (the message is still stored) and says so in the dream channel.
//!
//! Nothing is lost or answered twice across a handover or a crash:
//! - the leader checkpoints its session every second, conservatively: the sequence and message id
//!   below which every message is stored ([`Progress`]); a successor RESUMEs from there and the
//!   replay is deduplicated on message id (`messages`, `handled_messages`);
//! - a claim to answer is a lease, renewed while the reply is worked on; the leader re-takes claims
//!   whose lease ran out unanswered, and every reply part carries a nonce Discord enforces, so a post
//!   retried after a crash returns the first message instead of a second;
//! - a session that cannot be resumed (READY instead of RESUMED) is followed by a backfill over REST
//!   of the main channel's messages after the checkpoint.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    future::Future,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    sync::{mpsc, Notify},
    task::JoinSet,
    time::Instant,
};
use twilight_gateway::{
    error::ReceiveMessageErrorType, CloseFrame, ConfigBuilder, Event, EventTypeFlags, Intents, Session,
    Shard, ShardId, StreamExt as _,
};
use twilight_model::{
    channel::Message,
    id::{
        marker::{ChannelMarker, MessageMarker},
        Id,
    },
};

use crate::{
    config::Config,
    db::{self, Checkpoint, MessageKind, PromptAudit, StoredMessage},
    discord::{reply_nonce, AllowedMentions, DiscordRest},
    http::{GatewayState, Health},
    leader::Leadership,
    llm::Llm,
    reply,
};

/// Messages waiting to be stored (not answered). One writer keeps up with hundreds a second.
const STORE_QUEUE: usize = 1000;
/// Message ids remembered to recognise a repeated event before it costs anything.
const RECENT_IDS: usize = 1024;
/// Dropped answers are summed up in one dream-channel line at most this often.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(2);
/// A backfill reads at most this many pages of 100 messages.
const BACKFILL_PAGES: usize = 20;

/// What every message handler needs.
struct Ctx {
    cfg: Config,
    /// The main channels of this shard's guilds: where it answers.
    channels: Vec<Id<ChannelMarker>>,
    discord: DiscordRest,
    llm: Llm,
    health: Arc<Health>,
    progress: Progress,
    drops: Mutex<Vec<u64>>,
    dropped: Notify,
}

/// What a worker does with a message taken from the reply queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Answer it (the LLM, or a command).
    Reply,
    /// Its author just went over the per-user limit: say so, once.
    LimitNotice,
}

struct Job {
    msg: StoredMessage,
    answer: Answer,
}

/// How far the gateway's messages are safely stored, for the checkpoint a successor starts from.
/// A message counts from the moment the gateway loop takes it until it is stored (or given up).
#[derive(Default)]
struct Progress(Mutex<ProgressState>);

#[derive(Default)]
struct ProgressState {
    session: Option<(String, Option<String>)>,
    /// The sequence of the last event received.
    latest_seq: u64,
    /// The newest main-channel message id received.
    latest_message: Option<u64>,
    /// Message id → the sequence it came with (`None`: an earlier session's, or a backfill's).
    in_flight: BTreeMap<u64, Option<u64>>,
    /// While a backfill runs: the id it reads after.
    backfill_floor: Option<u64>,
}

impl Progress {
    fn with<T>(&self, f: impl FnOnce(&mut ProgressState) -> T) -> T {
        f(&mut self.0.lock().expect("progress"))
    }

    fn begin(&self, id: u64, seq: Option<u64>) {
        self.with(|p| {
            p.in_flight.insert(id, seq);
            if seq.is_some() {
                p.latest_message = p.latest_message.max(Some(id));
            }
        });
    }

    fn done(&self, id: u64) {
        self.with(|p| p.in_flight.remove(&id));
    }

    /// Where a successor should start: before the oldest message not yet stored.
    fn checkpoint(&self) -> Option<Checkpoint> {
        self.with(|p| {
            let (session_id, resume_url) = p.session.clone()?;
            let oldest_seq = p.in_flight.values().flatten().min().copied();
            let sequence = oldest_seq.map_or(p.latest_seq, |s| s.saturating_sub(1));
            let oldest_id = p.in_flight.keys().next().map(|id| id - 1);
            let last_message_id =
                [oldest_id.or(p.latest_message), p.backfill_floor].into_iter().flatten().min();
            Some(Checkpoint { session_id, sequence, resume_url, last_message_id })
        })
    }
}

/// Runs until SIGTERM/SIGINT: stands by while another instance leads, leads when it can (and
/// stands by again if it loses the lock), then hands over: stops taking events, stores the session
/// for a successor, releases the lock and lets in-flight replies finish within `SHUTDOWN_TIMEOUT_SECS`.
pub async fn run(cfg: Config) -> Result<()> {
    let pool = db::pool(&cfg.db);
    let health = Health::new(pool.clone(), cfg.git_sha.clone(), cfg.gateway_grace, cfg.shard.id);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", cfg.http_port))
        .await
        .with_context(|| format!("binding the HTTP port 0.0.0.0:{} (HTTP_PORT)", cfg.http_port))?;
    let app = crate::http::router(health.clone());
    if let Some(webhook) = cfg.alert_webhook.clone() {
        tokio::spawn(crate::alert::run(health.clone(), webhook, cfg.alert_after));
    }
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    tracing::info!(
        port = cfg.http_port,
        sha = %cfg.git_sha,
        provider = cfg.llm_provider.as_str(),
        standin = cfg.discord.gateway_url.is_some(),
        llm_concurrency = cfg.llm_concurrency,
        reply_queue = cfg.reply_queue,
        shard_id = cfg.shard.id,
        shard_count = cfg.shard.count,
        user_rate_limit = cfg.user_rate_limit,
        user_rate_window_secs = cfg.user_rate_window.as_secs(),
        "lattice-bot starting"
    );

    let discord = DiscordRest::new(&cfg.discord_token, cfg.discord.api_url.as_deref(), health.clone())?;
    let ctx = Arc::new(Ctx {
        discord,
        channels: cfg.own_channels(),
        llm: Llm::new(&cfg)?,
        health,
        cfg,
        progress: Progress::default(),
        drops: Mutex::default(),
        dropped: Notify::new(),
    });
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let standby = ctx.health.clone();
        let leadership = tokio::select! {
            l = Leadership::acquire(&ctx.cfg.db, (ctx.cfg.shard.id, ctx.cfg.shard.count), move || standby.set_gateway(GatewayState::Standby)) => l,
            () = &mut shutdown => {
                tracing::info!("stopped while standing by");
                return Ok(());
            }
        };
        ctx.health.set_gateway(GatewayState::Connecting);
        tracing::info!("holding the leader lock; connecting to the gateway");
        match lead(ctx.clone(), leadership, &mut shutdown).await? {
            Led::Shutdown => return Ok(()),
            Led::SteppedDown => {
                ctx.health.set_gateway(GatewayState::Standby);
                tracing::warn!("stepped down; standing by to lead again");
            }
        }
    }
}

/// How a term as leader ended.
enum Led {
    Shutdown,
    /// The lock could not be confirmed: this instance stopped handling events and stands by again.
    SteppedDown,
}

/// The stored checkpoint at the start of a term: the shard resumes its session when Discord still
/// can; its message id is where a backfill starts if it cannot.
async fn connect_shard(ctx: &Ctx) -> Shard {
    let cfg = &ctx.cfg;
    let intents = Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::MESSAGE_CONTENT;
    let mut builder = ConfigBuilder::new(cfg.discord_token.clone(), intents);
    if let Some(url) = &cfg.discord.gateway_url {
        builder = builder.proxy_url(url.clone());
    }
    let stored = tokio::time::timeout(
        Duration::from_secs(3),
        db::load_checkpoint(&ctx.health.pool, (cfg.shard.id, cfg.shard.count)),
    )
    .await;
    // Without a stored one, this process's own last checkpoint (a term that ended before its first write).
    let own = ctx.progress.checkpoint().map(|c| (c, true));
    let stored = match stored {
        Ok(Ok(c)) => c.or(own),
        _ => {
            tracing::warn!("could not read the stored gateway session");
            own
        }
    };
    ctx.progress.with(|p| *p = ProgressState::default());
    if let Some((c, resumable)) = stored {
        ctx.progress.with(|p| p.latest_message = c.last_message_id);
        if resumable {
            tracing::info!(sequence = c.sequence, "resuming the stored gateway session");
            ctx.progress.with(|p| {
                p.session = Some((c.session_id.clone(), c.resume_url.clone()));
                p.latest_seq = c.sequence;
            });
            builder = builder.session(Session::new(c.sequence, c.session_id));
            if let Some(url) = c.resume_url {
                builder = builder.resume_url(url);
            }
        }
    }
    let id = ShardId::new_checked(cfg.shard.id, cfg.shard.count)
        .expect("the config checks SHARD_ID < SHARD_COUNT");
    Shard::with_config(id, builder.build())
}

/// One term as leader: the gateway loop, until shutdown or a lock that cannot be confirmed.
async fn lead(
    ctx: Arc<Ctx>,
    leadership: Leadership,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Led> {
    let mut shard = connect_shard(&ctx).await;
    let wanted = EventTypeFlags::READY
        | EventTypeFlags::RESUMED
        | EventTypeFlags::MESSAGE_CREATE
        | EventTypeFlags::GATEWAY_INVALIDATE_SESSION;
    let health = ctx.health.clone();
    let (mut intake, mut workers) = Intake::start(ctx.clone());
    let reporter = tokio::spawn(report_drops(ctx.clone()));
    let sweeper = tokio::spawn(retake_expired(ctx.clone(), intake.replies.clone()));
    let (backfill_tx, mut backfilled) = mpsc::channel::<Option<Message>>(100);
    let mut backfill: Option<tokio::task::JoinHandle<()>> = None;
    let mut sessions = 0u64;
    let (cp, live) = (ctx.clone(), ctx.clone());
    let mut leader = leadership.keep(
        Arc::new(move || cp.progress.checkpoint()),
        Arc::new(move || live.health.gateway() == GatewayState::Connected),
    );
    let outcome = loop {
        tokio::select! {
            () = &mut *shutdown => break Led::Shutdown,
            _ = leader.lost.changed() => break Led::SteppedDown,
            Some(m) = backfilled.recv() => match m {
                Some(m) => intake.accept(m, None),
                None => ctx.progress.with(|p| p.backfill_floor = None),
            },
            event = shard.next_event(wanted) => {
                let Some(event) = event else { break Led::Shutdown };
                if let Some(session) = shard.session() {
                    let (id, seq, url) = (session.id().to_owned(), session.sequence(), shard.resume_url().map(str::to_owned));
                    ctx.progress.with(|p| {
                        p.latest_seq = seq;
                        p.session = Some((id, url));
                    });
                }
                match event {
                    Err(e) => match e.kind() {
                        // The payload is a user's message: log what it was, never what it said.
                        ReceiveMessageErrorType::Deserializing { event } => {
                            health.metrics.gateway_unreadable.fetch_add(1, Relaxed);
                            tracing::warn!(
                                event_type = %event_type(event),
                                bytes = event.len(),
                                "a gateway event could not be deserialised; skipped"
                            );
                        }
                        _ => {
                            health.set_gateway(GatewayState::Disconnected);
                            tracing::warn!(error = %e, "gateway error; twilight reconnects");
                        }
                    },
                    Ok(Event::Ready(ready)) => {
                        sessions += 1;
                        health.metrics.identifies.fetch_add(1, Relaxed);
                        if sessions > 1 {
                            health.metrics.reconnects.fetch_add(1, Relaxed);
                        }
                        // A new session: what was in flight keeps its place by id, not by sequence.
                        let after = ctx.progress.with(|p| {
                            p.in_flight.values_mut().for_each(|s| *s = None);
                            let after = p.in_flight.keys().next().map(|id| id - 1).or(p.latest_message);
                            p.backfill_floor = after;
                            after
                        });
                        if let Some(after) = after {
                            tracing::warn!(after, "new gateway session (READY): backfilling the main channel");
                            if let Some(old) = backfill.replace(tokio::spawn(read_back(ctx.clone(), after, backfill_tx.clone()))) {
                                old.abort();
                            }
                        }
                        health.set_gateway(GatewayState::Connected);
                        tracing::info!(user = %ready.user.name, "gateway ready");
                    }
                    Ok(Event::Resumed) => {
                        // The first session of a process resuming its predecessor's is a start, not a reconnect.
                        if sessions > 0 {
                            health.metrics.reconnects.fetch_add(1, Relaxed);
                        }
                        sessions += 1;
                        health.metrics.resumes.fetch_add(1, Relaxed);
                        health.set_gateway(GatewayState::Connected);
                        tracing::info!("gateway session resumed");
                    }
                    Ok(Event::GatewayClose(frame)) => {
                        health.set_gateway(GatewayState::Disconnected);
                        tracing::warn!(code = frame.map(|f| f.code), "gateway connection closed; reconnecting");
                    }
                    Ok(Event::GatewayInvalidateSession(resumable)) => {
                        tracing::warn!(resumable, "gateway session invalidated");
                    }
                    Ok(Event::MessageCreate(m)) => {
                        if ctx.channels.contains(&m.channel_id) {
                            let seq = shard.session().map(|s| s.sequence());
                            intake.accept(m.message, seq);
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
    };
    if let Some(b) = backfill {
        b.abort();
    }
    sweeper.abort();

    if let Led::SteppedDown = outcome {
        // Another instance may lead already: stop at once. Whatever was unfinished is re-taken by
        // the next leader (replay, backfill or expired lease); nonces keep re-posted parts single.
        health.set_gateway(GatewayState::ShuttingDown);
        shard.close(CloseFrame::RESUME);
        flush_close(&ctx, &mut shard, wanted, None).await;
        drop(shard);
        drop(intake);
        workers.abort_all();
        reporter.abort();
        return Ok(Led::SteppedDown);
    }

    tracing::info!(queued = intake.queued(), "shutting down: no new events");
    health.set_gateway(GatewayState::ShuttingDown);
    shard.close(CloseFrame::RESUME);
    flush_close(&ctx, &mut shard, wanted, Some(&mut intake)).await;
    // The connection is gone before the lock is: had the close handshake not finished, the
    // successor's session would overlap this one.
    drop(shard);
    // Hand over first: the successor resumes before what is still queued here (so it is replayed
    // to it too); whoever claims a message first answers it, the other sees the claim.
    leader.release(ctx.progress.checkpoint()).await;
    tracing::info!("leader lock released");
    // Closing the queues lets the workers finish what is queued, then stop.
    drop(intake);
    let drained = tokio::time::timeout(ctx.cfg.shutdown_timeout, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("in-flight replies finished; bye"),
        Err(_) => {
            tracing::warn!(abandoned = workers.len(), "shutdown bound reached; abandoning in-flight replies");
            workers.abort_all();
        }
    }
    reporter.abort();
    Ok(Led::Shutdown)
}

/// Lets the shard send the close frame (a resumable close keeps the session valid for a
/// successor); stops at the close, as the shard would reconnect on the next poll. Messages that
/// still arrive count in the stored sequence, so they are taken into `intake` when given.
async fn flush_close(ctx: &Ctx, shard: &mut Shard, wanted: EventTypeFlags, mut intake: Option<&mut Intake>) {
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(ev) = shard.next_event(wanted).await {
            match ev {
                Ok(Event::GatewayClose(_)) => break,
                Ok(Event::MessageCreate(m)) if ctx.channels.contains(&m.channel_id) => {
                    let seq = shard.session().map(|s| s.sequence());
                    if let Some(intake) = intake.as_deref_mut() {
                        intake.accept(m.message, seq);
                    }
                }
                _ => {}
            }
        }
    })
    .await;
}

/// Reads the messages of this shard's main channels after `from` over REST and hands them to the
/// gateway loop (`None` last). The loop's dedupe and the reply claims skip what was handled already.
async fn read_back(ctx: Arc<Ctx>, from: u64, to: mpsc::Sender<Option<Message>>) {
    let mut total = 0usize;
    for channel in ctx.channels.clone() {
        match read_back_channel(&ctx, channel, from, &to).await {
            Some(n) => total += n,
            None => return,
        }
    }
    ctx.health.metrics.backfilled.fetch_add(total as u64, Relaxed);
    tracing::info!(messages = total, "backfill done");
    let _ = to.send(None).await;
}

/// One channel of [`read_back`]: how many messages it read; `None` when the loop is gone.
async fn read_back_channel(
    ctx: &Ctx,
    channel: Id<ChannelMarker>,
    from: u64,
    to: &mpsc::Sender<Option<Message>>,
) -> Option<usize> {
    let mut after = from;
    let mut total = 0usize;
    for _ in 0..BACKFILL_PAGES {
        let page = match ctx.discord.messages_after(channel, Id::new(after.max(1))).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "backfill failed; messages since the last session may go unanswered");
                break;
            }
        };
        let full = page.len() == 100;
        total += page.len();
        for m in page {
            after = after.max(m.id.get());
            if to.send(Some(m)).await.is_err() {
                return None;
            }
        }
        if !full {
            break;
        }
    }
    Some(total)
}

/// Re-takes claims whose holder died before replying (their lease expired): queued like new ones.
async fn retake_expired(ctx: Arc<Ctx>, replies: mpsc::Sender<Job>) {
    let every = (ctx.cfg.reply_lease / 3).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        let Ok(expired) = db::expired_claims(&ctx.health.pool, ctx.cfg.shard.id, 20).await else { continue };
        for msg in expired {
            tracing::warn!(message_id = msg.id, "a reply claim expired unanswered; answering it");
            ctx.health.metrics.leases_retaken.fetch_add(1, Relaxed);
            if replies.send(Job { msg, answer: Answer::Reply }).await.is_err() {
                return;
            }
        }
    }
}

/// The `t` of a raw gateway payload, without keeping anything else of it.
fn event_type(raw: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Kind {
        t: Option<String>,
        op: Option<u8>,
    }
    match serde_json::from_str::<Kind>(raw) {
        Ok(Kind { t: Some(t), .. }) => {
            t.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect()
        }
        Ok(Kind { op: Some(op), .. }) => format!("op {op}"),
        _ => "unparseable".into(),
    }
}

/// The gateway loop's side of the queues: decides what each message gets, never waits.
struct Intake {
    ctx: Arc<Ctx>,
    replies: mpsc::Sender<Job>,
    store: mpsc::Sender<StoredMessage>,
    limiter: UserLimiter,
    recent: VecDeque<u64>,
    recent_set: HashSet<u64>,
}

impl Intake {
    /// The intake and the tasks behind it: `LLM_CONCURRENCY` reply workers and one store writer.
    fn start(ctx: Arc<Ctx>) -> (Self, JoinSet<()>) {
        let (replies, reply_rx) = mpsc::channel::<Job>(ctx.cfg.reply_queue);
        let (to_store, mut store_rx) = mpsc::channel::<StoredMessage>(STORE_QUEUE);
        let reply_rx = Arc::new(tokio::sync::Mutex::new(reply_rx));
        let mut workers = JoinSet::new();
        for _ in 0..ctx.cfg.llm_concurrency {
            let (ctx, rx) = (ctx.clone(), reply_rx.clone());
            workers.spawn(async move {
                loop {
                    let job = rx.lock().await.recv().await;
                    match job {
                        Some(job) => handle(&ctx, job).await,
                        None => break,
                    }
                }
            });
        }
        let writer = ctx.clone();
        workers.spawn(async move {
            while let Some(msg) = store_rx.recv().await {
                save(&writer, &msg).await;
                writer.progress.done(msg.id);
            }
        });
        let limiter = UserLimiter::new(ctx.cfg.user_rate_limit, ctx.cfg.user_rate_window);
        let intake = Intake {
            ctx,
            replies,
            store: to_store,
            limiter,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
        };
        (intake, workers)
    }

    fn queued(&self) -> usize {
        self.replies.max_capacity() - self.replies.capacity()
    }

    /// Takes a main-channel message that came with gateway sequence `seq` (`None`: from a backfill).
    fn accept(&mut self, msg: Message, seq: Option<u64>) {
        let metrics = &self.ctx.health.metrics;
        let id = msg.id.get();
        if !self.recent_set.insert(id) {
            metrics.duplicate_events.fetch_add(1, Relaxed);
            tracing::info!(message_id = id, "repeated event; already handled");
            return;
        }
        self.recent.push_back(id);
        if self.recent.len() > RECENT_IDS {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        self.ctx.progress.begin(id, seq);
        let answer = if msg.author.bot || msg.webhook_id.is_some() {
            None
        } else if msg.content.trim().is_empty() {
            metrics.ignored_empty.fetch_add(1, Relaxed);
            None
        } else {
            match self.limiter.check(msg.author.id.get(), Instant::now()) {
                Verdict::Allow => Some(Answer::Reply),
                Verdict::Notice => Some(Answer::LimitNotice),
                Verdict::Silent => {
                    metrics.ignored_user_limit.fetch_add(1, Relaxed);
                    None
                }
            }
        };
        let msg = memory_of(&msg, MessageKind::Message);
        let unanswered = match answer {
            None => msg,
            Some(answer) => match self.replies.try_send(Job { msg, answer }) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job)) => {
                    metrics.dropped_answers.fetch_add(1, Relaxed);
                    tracing::warn!(
                        message_id = id,
                        queue = self.ctx.cfg.reply_queue,
                        "reply queue full; not answering"
                    );
                    self.ctx.drops.lock().expect("drops").push(id);
                    self.ctx.dropped.notify_one();
                    job.msg
                }
            },
        };
        if self.store.try_send(unanswered).is_err() {
            metrics.dropped_stores.fetch_add(1, Relaxed);
            self.ctx.progress.done(id);
            tracing::warn!(message_id = id, "store queue full; message not stored");
        }
    }
}

/// What the per-user limit says about one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allow,
    /// The first message over the limit: tell the user, once.
    Notice,
    /// Over the limit and already told.
    Silent,
}

/// A sliding window per user: at most `limit` answered messages in any `window`.
struct UserLimiter {
    limit: usize,
    window: Duration,
    users: HashMap<u64, (VecDeque<Instant>, bool)>,
    last_prune: Option<Instant>,
}

impl UserLimiter {
    fn new(limit: u32, window: Duration) -> Self {
        Self { limit: limit as usize, window, users: HashMap::new(), last_prune: None }
    }

    fn check(&mut self, user: u64, now: Instant) -> Verdict {
        let window = self.window;
        // Forget users quiet for a whole window, so the map stays as small as the active crowd.
        if self.last_prune.is_none_or(|t| now.duration_since(t) >= window) {
            self.users.retain(|_, (times, _)| times.back().is_some_and(|t| now.duration_since(*t) < window));
            self.last_prune = Some(now);
        }
        let (times, told) = self.users.entry(user).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= window) {
            times.pop_front();
        }
        if times.len() < self.limit {
            times.push_back(now);
            *told = false;
            Verdict::Allow
        } else if !*told {
            *told = true;
            Verdict::Notice
        } else {
            Verdict::Silent
        }
    }
}

/// Posts one dream-channel line for the answers dropped in the last moments.
async fn report_drops(ctx: Arc<Ctx>) {
    loop {
        ctx.dropped.notified().await;
        tokio::time::sleep(DROP_REPORT_EVERY).await;
        let ids = std::mem::take(&mut *ctx.drops.lock().expect("drops"));
        if ids.is_empty() {
            continue;
        }
        let line = reply::dropped_line(ids.len() as u64, ctx.cfg.reply_queue, &ids);
        if let Err(e) = ctx
            .discord
            .create_message(ctx.cfg.dream_channel_id, &line, None, &AllowedMentions::NONE, None)
            .await
        {
            tracing::warn!(error = %e, "could not post the dropped-work line to the dream channel");
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Runs a database operation, retrying while the error is transient (Postgres restarting, a lost
/// connection), up to two minutes. A permanent error (bad data) is reported at once, not retried.
async fn with_db<T, F, Fut>(ctx: &Ctx, what: &str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut delay = Duration::from_millis(250);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                ctx.health.metrics.db_errors.fetch_add(1, Relaxed);
                if !db::is_transient(&e) {
                    tracing::error!(error = %e, what, "database rejected the operation; not retrying");
                    return None;
                }
                if Instant::now() + delay > deadline {
                    tracing::error!(error = %e, what, "database unavailable; giving up");
                    return None;
                }
                tracing::warn!(error = %e, what, "database unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
        }
    }
}

/// Text as Postgres can store it: NUL characters removed (it rejects them), saying so in the log.
fn storable(text: &str, message_id: u64, field: &'static str) -> String {
    if !text.contains('\0') {
        return text.to_owned();
    }
    let nul = text.matches('\0').count();
    tracing::warn!(message_id, field, nul_bytes = nul, "removed NUL bytes before storing");
    text.replace('\0', "")
}

fn stored_from(
    id: u64,
    channel_id: u64,
    author_id: u64,
    name: &str,
    is_bot: bool,
    content: &str,
    kind: MessageKind,
) -> StoredMessage {
    StoredMessage {
        id,
        channel_id,
        author_id,
        author_name: storable(name, id, "author_name"),
        is_bot,
        content: storable(content, id, "content"),
        kind,
    }
}

/// A gateway (or backfilled) message as memory holds it.
fn memory_of(m: &Message, kind: MessageKind) -> StoredMessage {
    let name = m.author.global_name.as_deref().unwrap_or(&m.author.name);
    stored_from(m.id.get(), m.channel_id.get(), m.author.id.get(), name, m.author.bot, &m.content, kind)
}

async fn save(ctx: &Ctx, memory: &StoredMessage) -> bool {
    match with_db(ctx, "storing a message", || db::store_message(&ctx.health.pool, memory)).await {
        Some(new) => {
            if new {
                ctx.health.metrics.messages_stored.fetch_add(1, Relaxed);
            }
            true
        }
        None => false,
    }
}

/// Stores the message, claims it (a lease, renewed while working) and answers it; marks the
/// claim replied when done. A crash anywhere leaves a claim that expires and is re-taken.
async fn handle(ctx: &Ctx, job: Job) {
    let pool = &ctx.health.pool;
    let memory = job.msg;
    let stored = save(ctx, &memory).await;
    ctx.progress.done(memory.id);
    if !stored {
        return;
    }
    let lease = ctx.cfg.reply_lease;
    let Some(claimed) =
        with_db(ctx, "claiming a reply", || db::claim_reply(pool, ctx.cfg.shard.id, memory.id, lease)).await
    else {
        return;
    };
    if !claimed {
        ctx.health.metrics.duplicate_events.fetch_add(1, Relaxed);
        tracing::info!(message_id = memory.id, "repeated event; already handled");
        return;
    }
    let renew = async {
        loop {
            tokio::time::sleep(lease / 3).await;
            if let Err(e) = db::renew_lease(pool, memory.id, lease).await {
                tracing::warn!(message_id = memory.id, error = %e, "could not renew the reply lease");
            }
        }
    };
    tokio::select! {
        () = answer(ctx, &memory, job.answer) => {}
        () = renew => {}
    }
    with_db(ctx, "marking a reply done", || db::mark_replied(pool, memory.id)).await;
}

async fn answer(ctx: &Ctx, memory: &StoredMessage, answer: Answer) {
    let metrics = &ctx.health.metrics;
    let pool = &ctx.health.pool;
    let (channel, to) = (Id::new(memory.channel_id), Id::new(memory.id));
    if answer == Answer::LimitNotice {
        metrics.user_limit_notices.fetch_add(1, Relaxed);
        tracing::info!(
            message_id = memory.id,
            user = memory.author_id,
            "over the per-user limit; one notice"
        );
        let text = reply::user_limit_notice(ctx.cfg.user_rate_limit, ctx.cfg.user_rate_window.as_secs());
        post_reply(ctx, channel, to, &text, MessageKind::Notice).await;
        return;
    }
    tracing::info!(message_id = memory.id, "answering");
    if memory.content.trim() == "!version" {
        let schema =
            db::schema_version(pool).await.map(|v| v.to_string()).unwrap_or_else(|_| "unknown".into());
        let text = format!(
            "lattice-bot {} · sha {} · schema {schema} (built for {})",
            env!("CARGO_PKG_VERSION"),
            ctx.cfg.git_sha,
            ctx.health.schema_head
        );
        post_reply(ctx, channel, to, &text, MessageKind::Notice).await;
        return;
    }

    let limit = ctx.cfg.context_messages;
    let history =
        with_db(ctx, "reading context", || db::recent_messages(pool, memory.channel_id, memory.id, limit))
            .await
            .unwrap_or_else(|| vec![memory.clone()]);
    let memory = memory.clone();
    let completion = ctx.llm.complete(&reply::prompt(&history)).await;
    let latency_ms = completion.latency.as_millis().min(i32::MAX as u128) as i32;
    metrics.llm_latency.observe(completion.latency);
    if completion.error.is_some() {
        metrics.llm_errors.fetch_add(1, Relaxed);
    } else {
        metrics.llm_ok.fetch_add(1, Relaxed);
    }
    metrics.prompt_tokens.fetch_add(completion.prompt_tokens.unwrap_or(0).max(0) as u64, Relaxed);
    metrics.completion_tokens.fetch_add(completion.completion_tokens.unwrap_or(0).max(0) as u64, Relaxed);
    metrics
        .cost_micro_usd
        .fetch_add((completion.cost_usd.unwrap_or(0.0).max(0.0) * 1e6).round() as u64, Relaxed);
    if let Some(e) = &completion.error {
        tracing::warn!(message_id = memory.id, error = %e, "LLM call failed");
    }

    let parts = match &completion.content {
        Some(text) => post_reply(ctx, channel, to, text, MessageKind::Answer).await,
        None => post_reply(ctx, channel, to, reply::LLM_FAILURE_REPLY, MessageKind::Notice).await,
    };

    let audit = PromptAudit {
        message_id: memory.id,
        provider: ctx.llm.provider().as_str().to_owned(),
        model: completion.model.clone(),
        prompt_tokens: completion.prompt_tokens,
        completion_tokens: completion.completion_tokens,
        cost_usd: completion.cost_usd,
        latency_ms,
        finish_reason: completion.finish_reason.clone(),
        error: completion.error.clone(),
    };
    with_db(ctx, "recording the prompt audit", || db::record_audit(pool, &audit)).await;
    let line = reply::audit_line(&audit, parts);
    if let Err(e) =
        ctx.discord.create_message(ctx.cfg.dream_channel_id, &line, None, &AllowedMentions::NONE, None).await
    {
        tracing::warn!(error = %e, "could not post the audit line to the dream channel");
    }
}

/// Posts `text` as a reply, split to Discord's limit; stores each part as `kind`. Returns the parts
/// posted. Only an answer may notify the person answered; nothing in the text pings anyone.
async fn post_reply(
    ctx: &Ctx,
    channel: Id<ChannelMarker>,
    to: Id<MessageMarker>,
    text: &str,
    kind: MessageKind,
) -> usize {
    let mentions =
        if kind == MessageKind::Answer { AllowedMentions::REPLIED_USER } else { AllowedMentions::NONE };
    let mut posted = 0;
    for (i, part) in reply::split_message(text, reply::DISCORD_MESSAGE_LIMIT).into_iter().enumerate() {
        let nonce = reply_nonce(to, i);
        match ctx.discord.create_message(channel, &part, Some(to), &mentions, Some(&nonce)).await {
            Ok(m) => {
                posted += 1;
                ctx.health.metrics.reply_parts.fetch_add(1, Relaxed);
                let name = m.author.global_name.as_deref().unwrap_or(&m.author.username);
                let mem = stored_from(
                    m.id.get(),
                    m.channel_id.get(),
                    m.author.id.get(),
                    name,
                    m.author.bot,
                    &m.content,
                    kind,
                );
                save(ctx, &mem).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "posting the reply failed");
                break;
            }
        }
    }
    if posted > 0 {
        ctx.health.metrics.replies.fetch_add(1, Relaxed);
    }
    posted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_limit_allows_then_notices_once_then_stays_silent_until_the_window_has_room() {
        let mut l = UserLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(l.check(1, at(0)), Verdict::Allow);
        assert_eq!(l.check(1, at(1)), Verdict::Allow);
        assert_eq!(l.check(1, at(2)), Verdict::Notice);
        assert_eq!(l.check(1, at(3)), Verdict::Silent);
        assert_eq!(l.check(2, at(3)), Verdict::Allow, "another user is not limited");
        assert_eq!(l.check(1, at(60)), Verdict::Allow, "the first answer left the window");
        assert_eq!(l.check(1, at(61)), Verdict::Allow);
        assert_eq!(l.check(1, at(62)), Verdict::Notice, "a new episode gets a new notice");
    }

    #[test]
    fn the_event_type_is_read_without_the_payload() {
        assert_eq!(event_type(r#"{"op":0,"t":"MESSAGE_CREATE","d":{"content":"secret"}}"#), "MESSAGE_CREATE");
        assert_eq!(event_type(r#"{"op":10,"t":null,"d":{}}"#), "op 10");
        assert_eq!(event_type("not json"), "unparseable");
    }
}
