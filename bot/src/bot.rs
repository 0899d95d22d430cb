//! `lattice-bot run`: the gateway loop, message handling and graceful shutdown.
//!
//! Work flows through bounded stages, so a flood costs bounded memory and money:
//! the gateway loop only decides (per-user limit, empty messages, repeats) and hands messages on
//! without waiting; a reply queue of `REPLY_QUEUE` messages feeds `LLM_CONCURRENCY` workers (the
//! only place the LLM is called); everything not answered goes to a store queue, written by one task.
//! A full reply queue drops the answer (the message is still stored) and says so in the dream channel.

use std::{
    collections::{HashMap, HashSet, VecDeque},
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
    db::{self, MessageKind, PromptAudit, StoredMessage},
    discord::{AllowedMentions, DiscordRest},
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

/// What every message handler needs.
struct Ctx {
    cfg: Config,
    discord: DiscordRest,
    llm: Llm,
    health: Arc<Health>,
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
    msg: Message,
    answer: Answer,
}

/// Runs until SIGTERM/SIGINT, then stops taking events, lets in-flight replies finish within
/// `SHUTDOWN_TIMEOUT_SECS`, stores the gateway session for a successor and returns.
pub async fn run(cfg: Config) -> Result<()> {
    let pool = db::pool(&cfg.db);
    let health = Health::new(pool.clone(), cfg.git_sha.clone());
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", cfg.http_port))
        .await
        .with_context(|| format!("binding the HTTP port 0.0.0.0:{} (HTTP_PORT)", cfg.http_port))?;
    let app = crate::http::router(health.clone());
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
        user_rate_limit = cfg.user_rate_limit,
        user_rate_window_secs = cfg.user_rate_window.as_secs(),
        "lattice-bot starting"
    );

    let discord = DiscordRest::new(&cfg.discord_token, cfg.discord.api_url.as_deref(), health.clone())?;
    let ctx = Arc::new(Ctx {
        discord,
        llm: Llm::new(&cfg)?,
        health,
        cfg,
        drops: Mutex::default(),
        dropped: Notify::new(),
    });
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let standby = ctx.health.clone();
    let leadership = tokio::select! {
        l = Leadership::acquire(&ctx.cfg.db, move || standby.set_gateway(GatewayState::Standby)) => l,
        () = &mut shutdown => {
            tracing::info!("stopped while standing by");
            return Ok(());
        }
    };
    ctx.health.set_gateway(GatewayState::Connecting);
    tracing::info!("holding the leader lock; connecting to the gateway");
    let shard = connect_shard(&ctx).await;
    gateway_loop(ctx, shard, leadership, shutdown).await
}

async fn connect_shard(ctx: &Ctx) -> Shard {
    let cfg = &ctx.cfg;
    let intents = Intents::GUILDS | Intents::GUILD_MESSAGES | Intents::MESSAGE_CONTENT;
    let mut builder = ConfigBuilder::new(cfg.discord_token.clone(), intents);
    if let Some(url) = &cfg.discord.gateway_url {
        builder = builder.proxy_url(url.clone());
    }
    // A predecessor that shut down cleanly left its session: resume it so Discord replays what we
    // missed instead of starting a new session with a gap.
    if let Ok(Ok(Some((id, seq, url)))) =
        tokio::time::timeout(Duration::from_secs(3), db::take_session(&ctx.health.pool, 0)).await
    {
        tracing::info!(sequence = seq, "resuming the stored gateway session");
        builder = builder.session(Session::new(seq, id));
        if let Some(url) = url {
            builder = builder.resume_url(url);
        }
    }
    Shard::with_config(ShardId::ONE, builder.build())
}

async fn gateway_loop(
    ctx: Arc<Ctx>,
    mut shard: Shard,
    leadership: Leadership,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let wanted = EventTypeFlags::READY
        | EventTypeFlags::RESUMED
        | EventTypeFlags::MESSAGE_CREATE
        | EventTypeFlags::GATEWAY_INVALIDATE_SESSION;
    let health = ctx.health.clone();
    let (mut intake, mut workers) = Intake::start(ctx.clone());
    let reporter = tokio::spawn(report_drops(ctx.clone()));
    let mut sessions = 0u64;
    let mut lost_lock = false;
    let mut leader = leadership.keep();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Ok(()) = &mut leader.lost => {
                tracing::error!("another instance took the leader lock; stepping down");
                lost_lock = true;
                break;
            }
            event = shard.next_event(wanted) => match event {
                None => break,
                Some(Err(e)) => match e.kind() {
                    // The payload is a user's message: log what it was, never what it said.
                    ReceiveMessageErrorType::Deserializing { event } => {
                        health.metrics.gateway_unreadable.fetch_add(1, Relaxed);
                        tracing::warn!(
                            event_type = %event_type(event),
                            bytes = event.len(),
                            "a gateway event could not be deserialised; skipped"
                        );
                    }
                    _ => tracing::warn!(error = %e, "gateway error; twilight reconnects"),
                },
                Some(Ok(Event::Ready(ready))) => {
                    sessions += 1;
                    if sessions > 1 {
                        health.metrics.reconnects.fetch_add(1, Relaxed);
                        tracing::warn!("gateway READY after a lost session: events may have been missed");
                    }
                    health.set_gateway(GatewayState::Connected);
                    tracing::info!(user = %ready.user.name, "gateway ready");
                }
                Some(Ok(Event::Resumed)) => {
                    // The first session of a process resuming its predecessor's is a start, not a reconnect.
                    if sessions > 0 {
                        health.metrics.reconnects.fetch_add(1, Relaxed);
                    }
                    sessions += 1;
                    health.set_gateway(GatewayState::Connected);
                    tracing::info!("gateway session resumed");
                }
                Some(Ok(Event::GatewayClose(frame))) => {
                    health.set_gateway(GatewayState::Disconnected);
                    tracing::warn!(code = frame.map(|f| f.code), "gateway connection closed; reconnecting");
                }
                Some(Ok(Event::GatewayInvalidateSession(resumable))) => {
                    tracing::warn!(resumable, "gateway session invalidated");
                }
                Some(Ok(Event::MessageCreate(m))) => {
                    if m.channel_id == ctx.cfg.main_channel_id {
                        intake.accept(m.message);
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }

    tracing::info!(queued = intake.queued(), "shutting down: no new events");
    health.set_gateway(GatewayState::ShuttingDown);
    shard.close(CloseFrame::RESUME);
    // Let the shard send the close frame; a resumable close keeps the session valid for a successor.
    // Polling stops at the close: the shard would reconnect on the next poll.
    // Messages that still arrive before the close count in the stored sequence, so a successor
    // resumes after them: handle them here (they join the queued replies) or they are lost.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(ev) = shard.next_event(wanted).await {
            match ev {
                Ok(Event::GatewayClose(_)) => break,
                Ok(Event::MessageCreate(m)) if m.channel_id == ctx.cfg.main_channel_id => {
                    intake.accept(m.message)
                }
                _ => {}
            }
        }
    })
    .await;
    if let Some(session) = shard.session() {
        let stored = tokio::time::timeout(
            Duration::from_secs(2),
            db::store_session(&health.pool, 0, session.id(), session.sequence(), shard.resume_url()),
        )
        .await;
        if !matches!(stored, Ok(Ok(()))) {
            tracing::warn!("could not store the gateway session; the next start identifies afresh");
        }
    }
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
    // Last: a standby takes over only once the session is stored.
    leader.release().await;
    if lost_lock {
        anyhow::bail!("lost the leader lock to another instance; exiting so this one restarts as a standby");
    }
    Ok(())
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
    store: mpsc::Sender<Message>,
    limiter: UserLimiter,
    recent: VecDeque<u64>,
    recent_set: HashSet<u64>,
}

impl Intake {
    /// The intake and the tasks behind it: `LLM_CONCURRENCY` reply workers and one store writer.
    fn start(ctx: Arc<Ctx>) -> (Self, JoinSet<()>) {
        let (replies, reply_rx) = mpsc::channel::<Job>(ctx.cfg.reply_queue);
        let (to_store, mut store_rx) = mpsc::channel::<Message>(STORE_QUEUE);
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
                store(&writer, &msg, MessageKind::Message).await;
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

    fn accept(&mut self, msg: Message) {
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
        if let Err(e) =
            ctx.discord.create_message(ctx.cfg.dream_channel_id, &line, None, &AllowedMentions::NONE).await
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

/// Stores a message and counts it when it is new; `None` when the database failed.
async fn store(ctx: &Ctx, m: &Message, kind: MessageKind) -> Option<StoredMessage> {
    let name = m.author.global_name.as_deref().unwrap_or(&m.author.name);
    let memory =
        stored_from(m.id.get(), m.channel_id.get(), m.author.id.get(), name, m.author.bot, &m.content, kind);
    save(ctx, &memory).await.then_some(memory)
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

async fn handle(ctx: &Ctx, job: Job) {
    let metrics = &ctx.health.metrics;
    let pool = &ctx.health.pool;
    let msg = job.msg;
    let Some(memory) = store(ctx, &msg, MessageKind::Message).await else {
        return;
    };
    let Some(claimed) = with_db(ctx, "claiming a reply", || db::claim_reply(pool, memory.id)).await else {
        return;
    };
    if !claimed {
        metrics.duplicate_events.fetch_add(1, Relaxed);
        tracing::info!(message_id = memory.id, "repeated event; already handled");
        return;
    }
    if job.answer == Answer::LimitNotice {
        metrics.user_limit_notices.fetch_add(1, Relaxed);
        tracing::info!(
            message_id = memory.id,
            user = memory.author_id,
            "over the per-user limit; one notice"
        );
        let text = reply::user_limit_notice(ctx.cfg.user_rate_limit, ctx.cfg.user_rate_window.as_secs());
        post_reply(ctx, msg.channel_id, msg.id, &text, MessageKind::Notice).await;
        return;
    }
    tracing::info!(message_id = memory.id, "answering");
    if msg.content.trim() == "!version" {
        let schema =
            db::schema_version(pool).await.map(|v| v.to_string()).unwrap_or_else(|_| "unknown".into());
        let text = format!(
            "lattice-bot {} · sha {} · schema {schema} (built for {})",
            env!("CARGO_PKG_VERSION"),
            ctx.cfg.git_sha,
            ctx.health.schema_head
        );
        post_reply(ctx, msg.channel_id, msg.id, &text, MessageKind::Notice).await;
        return;
    }

    let limit = ctx.cfg.context_messages;
    let history =
        with_db(ctx, "reading context", || db::recent_messages(pool, memory.channel_id, memory.id, limit))
            .await
            .unwrap_or_else(|| vec![memory.clone()]);
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
        Some(text) => post_reply(ctx, msg.channel_id, msg.id, text, MessageKind::Answer).await,
        None => post_reply(ctx, msg.channel_id, msg.id, reply::LLM_FAILURE_REPLY, MessageKind::Notice).await,
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
        ctx.discord.create_message(ctx.cfg.dream_channel_id, &line, None, &AllowedMentions::NONE).await
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
    for part in reply::split_message(text, reply::DISCORD_MESSAGE_LIMIT) {
        match ctx.discord.create_message(channel, &part, Some(to), &mentions).await {
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
