//! `lattice-bot run`: the gateway loop, message handling and graceful shutdown.

use std::{
    future::Future,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::task::JoinSet;
use twilight_gateway::{
    CloseFrame, ConfigBuilder, Event, EventTypeFlags, Intents, Session, Shard, ShardId, StreamExt as _,
};
use twilight_http::Client as DiscordHttp;
use twilight_model::{
    channel::Message,
    id::{
        marker::{ChannelMarker, MessageMarker},
        Id,
    },
};

use crate::{
    config::Config,
    db::{self, PromptAudit, StoredMessage},
    http::{GatewayState, Health},
    leader::Leadership,
    llm::Llm,
    reply,
};

/// What every message handler needs.
struct Ctx {
    cfg: Config,
    http: DiscordHttp,
    llm: Llm,
    health: Arc<Health>,
}

/// Builds the Discord REST client, pointed at the stand-in when `DISCORD_API_URL` is set.
pub fn discord_http(cfg: &Config) -> DiscordHttp {
    let mut builder =
        DiscordHttp::builder().token(cfg.discord_token.clone()).timeout(Duration::from_secs(15));
    if let Some(url) = &cfg.discord.api_url {
        let (use_http, host) = match url.strip_prefix("http://") {
            Some(host) => (true, host),
            None => (false, url.trim_start_matches("https://")),
        };
        builder = builder.proxy(host.to_owned(), use_http);
    }
    builder.build()
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
        "lattice-bot starting"
    );

    let ctx = Arc::new(Ctx { http: discord_http(&cfg), llm: Llm::new(&cfg)?, health, cfg });
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
    let mut tasks = JoinSet::new();
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
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            event = shard.next_event(wanted) => match event {
                None => break,
                Some(Err(e)) => tracing::warn!(error = %e, "gateway error; twilight reconnects"),
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
                    sessions += 1;
                    health.metrics.reconnects.fetch_add(1, Relaxed);
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
                        tasks.spawn(handle_message(ctx.clone(), m.0));
                    }
                }
                Some(Ok(_)) => {}
            },
        }
    }

    tracing::info!(in_flight = tasks.len(), "shutting down: no new events");
    health.set_gateway(GatewayState::ShuttingDown);
    shard.close(CloseFrame::RESUME);
    // Let the shard send the close frame; a resumable close keeps the session valid for a successor.
    // The shard reconnects by itself once the socket is gone, but only after a 1 s back-off, so
    // polling for half a second flushes the close without starting a new connection.
    // Messages that still arrive before the close count in the stored sequence, so a successor
    // resumes after them: handle them here (they join the in-flight replies) or they are lost.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(ev) = shard.next_event(wanted).await {
            match ev {
                Ok(Event::GatewayClose(_)) => break,
                Ok(Event::MessageCreate(m)) if m.channel_id == ctx.cfg.main_channel_id => {
                    tasks.spawn(handle_message(ctx.clone(), m.0));
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
    let drained =
        tokio::time::timeout(ctx.cfg.shutdown_timeout, async { while tasks.join_next().await.is_some() {} })
            .await;
    match drained {
        Ok(()) => tracing::info!("in-flight replies finished; bye"),
        Err(_) => {
            tracing::warn!(abandoned = tasks.len(), "shutdown bound reached; abandoning in-flight replies");
            tasks.abort_all();
        }
    }
    // Last: a standby takes over only once the session is stored.
    leader.release().await;
    if lost_lock {
        anyhow::bail!("lost the leader lock to another instance; exiting so this one restarts as a standby");
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Retries a database operation until Postgres answers (it may be restarting), up to two minutes.
async fn with_db<T, F, Fut>(ctx: &Ctx, what: &str, mut op: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut delay = Duration::from_millis(250);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                ctx.health.metrics.db_errors.fetch_add(1, Relaxed);
                if tokio::time::Instant::now() + delay > deadline {
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

fn stored(m: &Message) -> StoredMessage {
    StoredMessage {
        id: m.id.get(),
        channel_id: m.channel_id.get(),
        author_id: m.author.id.get(),
        author_name: m.author.global_name.clone().unwrap_or_else(|| m.author.name.clone()),
        is_bot: m.author.bot,
        content: m.content.clone(),
    }
}

async fn handle_message(ctx: Arc<Ctx>, msg: Message) {
    let metrics = &ctx.health.metrics;
    let pool = &ctx.health.pool;
    let memory = stored(&msg);
    let Some(new) = with_db(&ctx, "storing a message", || db::store_message(pool, &memory)).await else {
        return;
    };
    if new {
        metrics.messages_stored.fetch_add(1, Relaxed);
    }
    if msg.author.bot || msg.webhook_id.is_some() {
        return;
    }
    let Some(claimed) = with_db(&ctx, "claiming a reply", || db::claim_reply(pool, memory.id)).await else {
        return;
    };
    if !claimed {
        metrics.duplicate_events.fetch_add(1, Relaxed);
        tracing::info!(message_id = memory.id, "repeated event; already handled");
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
        post_reply(&ctx, msg.channel_id, msg.id, &text).await;
        return;
    }

    let limit = ctx.cfg.context_messages;
    let history =
        with_db(&ctx, "reading context", || db::recent_messages(pool, memory.channel_id, memory.id, limit))
            .await
            .unwrap_or_else(|| vec![memory.clone()]);
    let completion = ctx.llm.complete(&reply::prompt(&history)).await;
    let latency_ms = completion.latency.as_millis().min(i32::MAX as u128) as i32;
    metrics.llm_latency_ms_sum.fetch_add(latency_ms as u64, Relaxed);
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

    let text = completion.content.clone().unwrap_or_else(|| reply::LLM_FAILURE_REPLY.to_owned());
    let parts = post_reply(&ctx, msg.channel_id, msg.id, &text).await;

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
    with_db(&ctx, "recording the prompt audit", || db::record_audit(pool, &audit)).await;
    let line = reply::audit_line(&audit, parts);
    if let Err(e) = ctx.http.create_message(ctx.cfg.dream_channel_id).content(&line).await {
        tracing::warn!(error = %e, "could not post the audit line to the dream channel");
    }
}

/// Posts `text` as a reply, split to Discord's limit; stores each part. Returns the parts posted.
async fn post_reply(ctx: &Ctx, channel: Id<ChannelMarker>, to: Id<MessageMarker>, text: &str) -> usize {
    let mut posted = 0;
    for part in reply::split_message(text, reply::DISCORD_MESSAGE_LIMIT) {
        let sent = match ctx.http.create_message(channel).content(&part).reply(to).await {
            Ok(resp) => resp.model().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(m) => {
                posted += 1;
                ctx.health.metrics.reply_parts.fetch_add(1, Relaxed);
                let mem = stored(&m);
                with_db(ctx, "storing the reply", || db::store_message(&ctx.health.pool, &mem)).await;
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
