//! `lattice-bot discord-standin`: a small Discord for development and tests.
//!
//! It speaks the real v10 protocol to the real twilight clients: the REST calls the bot makes
//! (`/api/v10/...`) and a gateway websocket (Hello, Identify → Ready, heartbeats, Resume → replay +
//! Resumed, MESSAGE_CREATE dispatch). A control API under `/control/` lets people and tests post
//! user messages and read what the bot posted.
//!
//! Sharding as Discord does it: IDENTIFY carries `shard: [id, count]` (default `[0, 1]`; an id not
//! below the count is closed with 4010 Invalid shard), and a session gets only the events of guilds
//! with `(guild_id >> 22) % count == id` (events without a guild go to shard 0), each session with
//! its own sequence. A RESUME keeps the shard the session was identified with.
//!
//! Control API (JSON):
//! - `GET  /control/info` → guild, main and dream channel ids, bot user id
//! - `POST /control/messages {"content", "channel_id"?, "guild_id"?, "author"?, "bot"?, "repeat"?}` →
//!   `{"id"}`: a user's (or with `bot`, another bot's) message, dispatched `repeat` times (default 1)
//!   as MESSAGE_CREATE. A channel belongs to the guild it was first posted in (default: the world's).
//! - `GET  /control/posted?after=SEQ&wait=SECS` → `{"messages":[…], "next": SEQ}`: what the bot
//!   posted, long-polling up to `wait` seconds for something new
//! - `POST /control/drop` drops every gateway connection without a close frame (network loss);
//!   `POST /control/reconnect` asks clients to reconnect (opcode 7)
//! - `GET  /control/state` → connection, identify and resume counts, live sessions now (`live`: an
//!   identified or resumed connection still open) and at most (`max_live`), each time with no live
//!   session between two (`session_gaps_ms`: the gateway gap of a handover); REST requests, 429s
//!   served and the most REST requests seen in any one second; and per shard (`shards`, keyed by
//!   shard id) its live sessions now and at most, identifies and resumes
//! - `POST /control/invalidate` forgets every session and drops every connection: the next RESUME
//!   gets opcode 9 `d:false` and the client must IDENTIFY (a gap only a backfill closes)
//! - `POST /control/outage {"secs"}` drops every connection and refuses gateway connections for
//!   `secs` seconds (HTTP 503), as during a Discord outage
//! - `POST /control/ratelimit {"shape", "count"?, "retry_after"?}` → the next `count` (default 1)
//!   Create Message calls answer 429 in one of Discord's shapes: `user` or `shared` (bucket headers,
//!   `X-RateLimit-Scope`, JSON body), `global` (`X-RateLimit-Global: true`), or `bare` (no headers,
//!   a non-JSON body, as Cloudflare sends). `{"bucket_limit", "bucket_reset_after"}` instead makes
//!   every channel a bucket of that many messages per that many seconds, with Discord's headers.
//!   Like Discord, more than 50 REST requests in one second always get a global 429.
//! - `GET  /control/rest` → `{"requests": [{"at_ms", "channel_id", "status"}…]}`, every Create Message
//! - `POST /control/raw {"t", "d"}` dispatches an arbitrary event (e.g. one that cannot be read)
//! - REST as the bot uses it: `POST /api/v10/channels/{id}/messages` (with `nonce` + `enforce_nonce`:
//!   the same nonce from the same author within a few minutes returns the first message and creates
//!   none, as Discord documents) and `GET /api/v10/channels/{id}/messages?after=&limit=`
//! - `GET  /health` → 200, so the image's `lattice-bot healthcheck` works for the stand-in too

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{
        ws::{Message as WsMessage, WebSocket, WebSocketUpgrade},
        Path, Query, State,
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::watch;
use twilight_model::{
    channel::message::{Message, MessageFlags, MessageReference, MessageReferenceType, MessageType},
    gateway::{
        payload::incoming::{Hello, Ready},
        CloseCode, OpCode, ShardId,
    },
    guild::UnavailableGuild,
    id::Id,
    oauth::{ApplicationFlags, PartialApplication},
    user::{CurrentUser, User},
    util::Timestamp,
};

/// Ids the stand-in's world uses. Defaults match the dev stack's `.env.example`-style values and
/// can be overridden with the same variables the bot reads.
#[derive(Clone, Debug, clap::Args)]
pub struct World {
    /// Guild (server) id.
    #[arg(long, env = "DISCORD_GUILD_ID", default_value_t = 100_000_000_000_000_001)]
    pub guild_id: u64,
    /// The channel the bot talks in.
    #[arg(long, env = "DISCORD_MAIN_CHANNEL_ID", default_value_t = 100_000_000_000_000_002)]
    pub main_channel_id: u64,
    /// The channel that receives audit lines.
    #[arg(long, env = "DISCORD_DREAM_CHANNEL_ID", default_value_t = 100_000_000_000_000_003)]
    pub dream_channel_id: u64,
    /// Gateway heartbeat interval sent in Hello, in milliseconds.
    #[arg(long, default_value_t = 41_250)]
    pub heartbeat_interval_ms: u64,
}

impl Default for World {
    fn default() -> Self {
        Self {
            guild_id: 100_000_000_000_000_001,
            main_channel_id: 100_000_000_000_000_002,
            dream_channel_id: 100_000_000_000_000_003,
            heartbeat_interval_ms: 41_250,
        }
    }
}

pub const BOT_USER_ID: u64 = 100_000_000_000_000_010;
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// A message the bot posted through the REST API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Posted {
    pub seq: u64,
    pub id: String,
    pub channel_id: String,
    pub content: String,
    pub reply_to: Option<String>,
    /// Posted to the dream channel.
    pub dream: bool,
    /// The post's `allowed_mentions`, as sent.
    #[serde(default)]
    pub allowed_mentions: Option<Value>,
}

/// Discord's shapes of a 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    User,
    Shared,
    Global,
    Bare,
}

/// One Create Message call as the stand-in saw it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RestHit {
    /// Milliseconds since the stand-in started.
    pub at_ms: u64,
    pub channel_id: String,
    pub status: u16,
}

/// Discord's global limit, enforced like Discord does.
const GLOBAL_LIMIT_PER_SECOND: usize = 50;

#[derive(Default)]
struct Inner {
    last_id: u64,
    /// Every dispatch ever made, in order: `(event type, data)`.
    events: Vec<(&'static str, Value)>,
    /// Session id → index into `events` at READY, and the session's shard.
    sessions: HashMap<String, (usize, ShardOf)>,
    /// Channel → the guild it belongs to (channels not listed are the world guild's).
    channels: HashMap<u64, u64>,
    /// Shard id → its counts.
    shards: std::collections::BTreeMap<u32, ShardCounts>,
    posted: Vec<Posted>,
    users: HashMap<String, u64>,
    connections: u64,
    /// Connections with an identified or resumed session, now and at most.
    live: u64,
    max_live: u64,
    /// When the last live session ended with none left, and each gap until the next one, in ms.
    none_live_since: Option<std::time::Instant>,
    session_gaps_ms: Vec<u64>,
    identifies: u64,
    resumes: u64,
    /// Bumped to drop (`drops`) or reconnect (`reconnects`) every live connection.
    drops: u64,
    reconnects: u64,
    /// 429s to answer next, in order.
    armed: VecDeque<(Shape, f64)>,
    /// `(limit, seconds)` of an emulated per-channel bucket.
    bucket: Option<(u32, f64)>,
    /// Channel → (messages in the current bucket window, when it resets).
    buckets: HashMap<u64, (u32, std::time::Instant)>,
    /// REST requests of the last second, for the global limit.
    last_second: VecDeque<std::time::Instant>,
    rest: Vec<RestHit>,
    /// Nonce → (the message it created, when), for `enforce_nonce`.
    nonces: HashMap<String, (Value, std::time::Instant)>,
    /// Gateway connections are refused until then.
    outage_until: Option<std::time::Instant>,
}

/// `[id, count]` of a gateway session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardOf {
    pub id: u32,
    pub count: u32,
}

impl ShardOf {
    /// Whether an event (its data `d`) goes to this shard: by its guild, as Discord routes.
    fn gets(&self, d: &Value) -> bool {
        let guild = d["guild_id"].as_str().and_then(|g| g.parse::<u64>().ok());
        match guild {
            Some(g) => (g >> 22) % u64::from(self.count) == u64::from(self.id),
            None => self.id == 0,
        }
    }
}

/// What the stand-in counted for one shard.
#[derive(Clone, Debug, Default, Serialize)]
struct ShardCounts {
    live: u64,
    max_live: u64,
    identifies: u64,
    resumes: u64,
}

impl Inner {
    fn guild_of(&self, world: &World, channel: u64) -> u64 {
        self.channels.get(&channel).copied().unwrap_or(world.guild_id)
    }

    fn snowflake(&mut self) -> u64 {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let id = (now_ms.saturating_sub(DISCORD_EPOCH_MS) << 22).max(self.last_id + 1);
        self.last_id = id;
        id
    }
}

struct Shared {
    world: World,
    started: std::time::Instant,
    inner: Mutex<Inner>,
    /// Bumped on every change, so connections and long polls wake up.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn update<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let out = f(&mut self.inner.lock().expect("stand-in state"));
        self.changed.send_modify(|v| *v += 1);
        out
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        f(&self.inner.lock().expect("stand-in state"))
    }
}

/// The stand-in's HTTP app (REST, gateway and control API on one port).
pub fn router(world: World) -> Router {
    let shared = Arc::new(Shared {
        world,
        started: std::time::Instant::now(),
        inner: Mutex::default(),
        changed: watch::channel(0).0,
    });
    Router::new()
        .route("/", get(gateway))
        .route("/api/v10/gateway", get(gateway_info))
        .route("/api/v10/gateway/bot", get(gateway_info))
        .route("/api/v10/users/@me", get(current_user_route))
        .route("/api/v10/channels/{channel}/messages", post(create_message).get(channel_messages))
        // The image's HEALTHCHECK (`lattice-bot healthcheck`) probes /health in this role too.
        .route("/health", get(|| async { Json(json!({ "status": "ok", "service": "discord-standin" })) }))
        .route("/control/info", get(info))
        .route("/control/messages", post(control_post))
        .route("/control/posted", get(control_posted))
        .route("/control/drop", post(control_drop))
        .route("/control/reconnect", post(control_reconnect))
        .route("/control/state", get(control_state))
        .route("/control/ratelimit", post(control_ratelimit))
        .route("/control/rest", get(control_rest))
        .route("/control/raw", post(control_raw))
        .route("/control/invalidate", post(control_invalidate))
        .route("/control/outage", post(control_outage))
        .fallback(|| async { discord_error(StatusCode::NOT_FOUND, 0, "404: Not Found") })
        .with_state(shared)
}

/// Serves the stand-in on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, world: World) -> std::io::Result<()> {
    axum::serve(listener, router(world)).await
}

/// Binds `addr` (port 0 = any free port) and serves in the background; for tests.
pub async fn spawn(addr: &str, world: World) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, world));
    Ok(local)
}

fn discord_error(status: StatusCode, code: u32, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bot "))
        .is_some_and(|t| !t.trim().is_empty())
}

fn user(id: u64, name: &str, bot: bool) -> User {
    User {
        accent_color: None,
        avatar: None,
        avatar_decoration: None,
        avatar_decoration_data: None,
        banner: None,
        bot,
        discriminator: 0,
        email: None,
        flags: None,
        global_name: None,
        id: Id::new(id),
        locale: None,
        mfa_enabled: None,
        name: name.to_owned(),
        premium_type: None,
        primary_guild: None,
        public_flags: None,
        system: None,
        verified: None,
    }
}

fn current_user() -> CurrentUser {
    CurrentUser {
        accent_color: None,
        avatar: None,
        banner: None,
        bot: true,
        discriminator: 0,
        email: None,
        flags: None,
        global_name: None,
        id: Id::new(BOT_USER_ID),
        locale: None,
        mfa_enabled: false,
        name: "lattice".into(),
        premium_type: None,
        public_flags: None,
        verified: Some(true),
    }
}

#[allow(deprecated)] // `interaction` must still be set while the field exists
fn message(
    guild: u64,
    id: u64,
    channel: u64,
    author: User,
    content: String,
    reply_to: Option<u64>,
) -> Message {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    Message {
        activity: None,
        application: None,
        application_id: None,
        attachments: Vec::new(),
        author,
        call: None,
        channel_id: Id::new(channel),
        components: Vec::new(),
        content,
        edited_timestamp: None,
        embeds: Vec::new(),
        flags: Some(MessageFlags::empty()),
        guild_id: Some(Id::new(guild)),
        id: Id::new(id),
        interaction: None,
        interaction_metadata: None,
        kind: if reply_to.is_some() { MessageType::Reply } else { MessageType::Regular },
        member: None,
        mention_channels: Vec::new(),
        mention_everyone: false,
        mention_roles: Vec::new(),
        mentions: Vec::new(),
        message_snapshots: Vec::new(),
        pinned: false,
        poll: None,
        reactions: Vec::new(),
        reference: reply_to.map(|m| MessageReference {
            channel_id: Some(Id::new(channel)),
            guild_id: Some(Id::new(guild)),
            kind: MessageReferenceType::Default,
            message_id: Some(Id::new(m)),
            fail_if_not_exists: None,
        }),
        referenced_message: None,
        role_subscription_data: None,
        sticker_items: Vec::new(),
        timestamp: Timestamp::from_secs(secs).expect("current time is a valid timestamp"),
        thread: None,
        tts: false,
        webhook_id: None,
    }
}

// ---- REST ----

async fn gateway_info(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Json<Value> {
    let _ = s;
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1:8090");
    Json(json!({
        "url": format!("ws://{host}"),
        "shards": 1,
        "session_start_limit": { "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1 }
    }))
}

async fn current_user_route(headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return discord_error(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized");
    }
    Json(current_user()).into_response()
}

#[derive(Deserialize)]
struct CreateMessageBody {
    content: Option<String>,
    message_reference: Option<ReferenceBody>,
    allowed_mentions: Option<Value>,
    /// An integer or a string of at most 25 characters.
    nonce: Option<Value>,
    #[serde(default)]
    enforce_nonce: bool,
}

/// How long Discord remembers a nonce for `enforce_nonce` ("a few minutes").
const NONCE_WINDOW: Duration = Duration::from_secs(300);

/// What the rate limits say about one Create Message call.
enum Limit {
    /// Go ahead; with the bucket's `(limit, remaining, reset_after)` when one is emulated.
    Pass(Option<(u32, u32, f64)>),
    Limited(Shape, f64),
}

fn rate_limit(i: &mut Inner, channel: u64) -> Limit {
    let now = std::time::Instant::now();
    while i.last_second.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
        i.last_second.pop_front();
    }
    if i.last_second.len() >= GLOBAL_LIMIT_PER_SECOND {
        let wait = Duration::from_secs(1) - now.duration_since(i.last_second[0]);
        return Limit::Limited(Shape::Global, wait.as_secs_f64());
    }
    i.last_second.push_back(now);
    if let Some((shape, retry_after)) = i.armed.pop_front() {
        return Limit::Limited(shape, retry_after);
    }
    let Some((limit, per)) = i.bucket else {
        return Limit::Pass(None);
    };
    let (used, reset) = i.buckets.entry(channel).or_insert((0, now + Duration::from_secs_f64(per)));
    if *reset <= now {
        *used = 0;
        *reset = now + Duration::from_secs_f64(per);
    }
    let reset_after = reset.duration_since(now).as_secs_f64();
    if *used >= limit {
        return Limit::Limited(Shape::User, reset_after);
    }
    *used += 1;
    Limit::Pass(Some((limit, limit - *used, reset_after)))
}

/// A 429 in Discord's `shape`.
fn too_many_requests(shape: Shape, retry_after: f64) -> Response {
    let mut headers = HeaderMap::new();
    let mut set = |k: &'static str, v: String| {
        headers.insert(k, v.parse().expect("header value"));
    };
    let retry_header = format!("{}", retry_after.ceil() as u64);
    match shape {
        Shape::Bare => {
            return (StatusCode::TOO_MANY_REQUESTS, "error code: 1015").into_response();
        }
        Shape::Global => {
            set("x-ratelimit-global", "true".into());
            set("x-ratelimit-scope", "global".into());
            set("retry-after", retry_header);
        }
        Shape::User | Shape::Shared => {
            set("x-ratelimit-limit", "5".into());
            set("x-ratelimit-remaining", "0".into());
            set("x-ratelimit-reset-after", format!("{retry_after:.3}"));
            set("x-ratelimit-bucket", "standin-create-message".into());
            set("x-ratelimit-scope", if shape == Shape::User { "user" } else { "shared" }.into());
            set("retry-after", retry_header);
        }
    }
    let body = json!({
        "message": "You are being rate limited.",
        "retry_after": retry_after,
        "global": shape == Shape::Global,
    });
    (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response()
}

#[derive(Deserialize)]
struct ReferenceBody {
    message_id: Option<Id<twilight_model::id::marker::MessageMarker>>,
}

async fn create_message(
    State(s): State<Arc<Shared>>,
    Path(channel): Path<u64>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&headers) {
        return discord_error(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized");
    }
    let at_ms = s.started.elapsed().as_millis() as u64;
    let limit = s.update(|i| {
        let limit = rate_limit(i, channel);
        let status = if matches!(limit, Limit::Limited(..)) { 429 } else { 200 };
        i.rest.push(RestHit { at_ms, channel_id: channel.to_string(), status });
        limit
    });
    let bucket = match limit {
        Limit::Limited(shape, retry_after) => return too_many_requests(shape, retry_after),
        Limit::Pass(bucket) => bucket,
    };
    let Ok(body) = serde_json::from_slice::<CreateMessageBody>(&body) else {
        return discord_error(StatusCode::BAD_REQUEST, 50109, "The request body contains invalid JSON.");
    };
    let content = body.content.unwrap_or_default();
    if content.is_empty() {
        return discord_error(StatusCode::BAD_REQUEST, 50006, "Cannot send an empty message");
    }
    if content.chars().count() > 2000 {
        return discord_error(
            StatusCode::BAD_REQUEST,
            50035,
            "Invalid Form Body: content: Must be 2000 or fewer in length.",
        );
    }
    let nonce = match &body.nonce {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) if n.chars().count() <= 25 => Some(n.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return discord_error(
                StatusCode::BAD_REQUEST,
                50035,
                "Invalid Form Body: nonce: Must be 25 or fewer in length.",
            )
        }
    };
    let reply_to = body.message_reference.and_then(|r| r.message_id).map(|m| m.get());
    let world = s.world.clone();
    let enforce = body.enforce_nonce;
    let msg = s.update(|i| {
        // Every message here is the bot's: the same author, as `enforce_nonce` requires.
        if let (true, Some(n)) = (enforce, &nonce) {
            i.nonces.retain(|_, (_, at)| at.elapsed() < NONCE_WINDOW);
            if let Some((first, _)) = i.nonces.get(n) {
                return first.clone();
            }
        }
        let id = i.snowflake();
        let guild = i.guild_of(&world, channel);
        let msg = message(guild, id, channel, user(BOT_USER_ID, "lattice", true), content.clone(), reply_to);
        let seq = i.posted.len() as u64 + 1;
        i.posted.push(Posted {
            seq,
            id: id.to_string(),
            channel_id: channel.to_string(),
            content,
            reply_to: reply_to.map(|r| r.to_string()),
            dream: channel == world.dream_channel_id,
            allowed_mentions: body.allowed_mentions.clone(),
        });
        // Discord echoes the bot's own messages on the gateway too.
        let value = serde_json::to_value(&msg).expect("message serializes");
        i.events.push(("MESSAGE_CREATE", value.clone()));
        if let Some(n) = nonce {
            i.nonces.insert(n, (value.clone(), std::time::Instant::now()));
        }
        value
    });
    let mut headers = HeaderMap::new();
    if let Some((limit, remaining, reset_after)) = bucket {
        for (k, v) in [
            ("x-ratelimit-limit", limit.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset-after", format!("{reset_after:.3}")),
            ("x-ratelimit-bucket", "standin-create-message".to_owned()),
        ] {
            headers.insert(k, v.parse().expect("header value"));
        }
    }
    (headers, Json(msg)).into_response()
}

// ---- gateway ----

async fn gateway(State(s): State<Arc<Shared>>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    if s.read(|i| i.outage_until.is_some_and(|t| t > std::time::Instant::now())) {
        return discord_error(StatusCode::SERVICE_UNAVAILABLE, 0, "503: Service Unavailable");
    }
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1:8090").to_owned();
    ws.on_upgrade(move |socket| async move {
        s.update(|i| i.connections += 1);
        let mut live = None;
        let _ = connection(&s, socket, format!("ws://{host}"), &mut live).await;
        s.update(|i| {
            i.connections -= 1;
            leave(i, &mut live);
        });
    })
}

/// Counts a connection's session as live (identified or resumed), once.
fn go_live(i: &mut Inner, live: &mut Option<ShardOf>, shard: ShardOf) {
    if live.is_none() {
        *live = Some(shard);
        i.live += 1;
        i.max_live = i.max_live.max(i.live);
        let counts = i.shards.entry(shard.id).or_default();
        counts.live += 1;
        counts.max_live = counts.max_live.max(counts.live);
        if let Some(since) = i.none_live_since.take() {
            i.session_gaps_ms.push(since.elapsed().as_millis() as u64);
        }
    }
}

/// A connection's session is no longer live: its client closed it or the connection is gone.
fn leave(i: &mut Inner, live: &mut Option<ShardOf>) {
    if let Some(shard) = live.take() {
        i.live -= 1;
        i.shards.entry(shard.id).or_default().live -= 1;
        if i.live == 0 {
            i.none_live_since = Some(std::time::Instant::now());
        }
    }
}

fn frame(op: OpCode, d: Value, s: Option<u64>, t: Option<&str>) -> WsMessage {
    WsMessage::Text(json!({ "op": op, "d": d, "s": s, "t": t }).to_string().into())
}

fn close(code: CloseCode, reason: &'static str) -> WsMessage {
    WsMessage::Close(Some(axum::extract::ws::CloseFrame { code: code as u16, reason: reason.into() }))
}

/// A session on one connection: it gets the events of the world from its READY on that go to its
/// shard (READY, the first dispatch, carries sequence 1); `next` is the next event to look at and
/// `sent` the dispatches sent so far, READY included.
struct Session {
    next: usize,
    shard: ShardOf,
    sent: u64,
}

impl Session {
    /// The sequence number of the next dispatch.
    fn next_seq(&self) -> u64 {
        self.sent + 1
    }

    /// A session resumed after sequence `seq`: what follows it is sent next.
    fn resumed(events: &[(&'static str, Value)], base: usize, shard: ShardOf, seq: u64) -> Self {
        let mut session = Session { next: base, shard, sent: 1 };
        while session.sent < seq.max(1) {
            match events.get(session.next) {
                Some((_, d)) => {
                    if shard.gets(d) {
                        session.sent += 1;
                    }
                    session.next += 1;
                }
                None => break,
            }
        }
        session
    }
}

/// One gateway connection; returns when the client leaves or the control API drops it.
/// `live` becomes true once the connection has a session (counted in `Inner::live`).
async fn connection(
    s: &Shared,
    mut socket: WebSocket,
    resume_url: String,
    live: &mut Option<ShardOf>,
) -> Result<(), axum::Error> {
    let mut changed = s.changed.subscribe();
    let (drops_at_start, reconnects_at_start) = s.read(|i| (i.drops, i.reconnects));
    socket
        .send(frame(
            OpCode::Hello,
            serde_json::to_value(Hello { heartbeat_interval: s.world.heartbeat_interval_ms })
                .expect("hello serializes"),
            None,
            None,
        ))
        .await?;
    let mut session: Option<Session> = None;
    let mut asked_reconnect = false;
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(WsMessage::Text(t))) => t.to_string(),
                    Some(Ok(WsMessage::Close(frame))) => {
                        // The session ends with the client's close frame, as at Discord; then the
                        // close handshake is answered so the client sees a clean close.
                        s.update(|i| leave(i, live));
                        let _ = socket.send(WsMessage::Close(frame)).await;
                        return Ok(());
                    }
                    None | Some(Err(_)) => return Ok(()),
                    Some(Ok(_)) => continue,
                };
                let Ok(payload) = serde_json::from_str::<Value>(&text) else {
                    socket.send(close(CloseCode::DecodeError, "Error while decoding payload.")).await?;
                    return Ok(());
                };
                let op = payload["op"].as_u64().and_then(|op| u8::try_from(op).ok()).and_then(OpCode::from);
                match op {
                    Some(OpCode::Heartbeat) => socket.send(frame(OpCode::HeartbeatAck, Value::Null, None, None)).await?,
                    Some(OpCode::Identify) => {
                        let token_ok = payload["d"]["token"].as_str().is_some_and(|t| !t.trim().is_empty());
                        if !token_ok {
                            socket.send(close(CloseCode::AuthenticationFailed, "Authentication failed.")).await?;
                            return Ok(());
                        }
                        let Some(shard) = identify_shard(&payload["d"]["shard"]) else {
                            socket.send(close(CloseCode::InvalidShard, "Invalid shard.")).await?;
                            return Ok(());
                        };
                        let (id, base, guilds) = s.update(|i| {
                            go_live(i, live, shard);
                            i.identifies += 1;
                            i.shards.entry(shard.id).or_default().identifies += 1;
                            let id = format!("standin-{:x}", i.snowflake());
                            let base = i.events.len();
                            i.sessions.insert(id.clone(), (base, shard));
                            let mut guilds: Vec<u64> =
                                std::iter::once(s.world.guild_id).chain(i.channels.values().copied()).collect();
                            guilds.sort_unstable();
                            guilds.dedup();
                            guilds.retain(|g| shard.gets(&json!({ "guild_id": g.to_string() })));
                            (id, base, guilds)
                        });
                        let ready = Ready {
                            application: PartialApplication { flags: ApplicationFlags::empty(), id: Id::new(BOT_USER_ID) },
                            guilds: guilds.into_iter().map(|g| UnavailableGuild { id: Id::new(g), unavailable: true }).collect(),
                            resume_gateway_url: resume_url.clone(),
                            session_id: id.clone(),
                            shard: ShardId::new_checked(shard.id, shard.count),
                            user: current_user(),
                            version: 10,
                        };
                        socket.send(frame(OpCode::Dispatch, serde_json::to_value(&ready).expect("ready serializes"), Some(1), Some("READY"))).await?;
                        session = Some(Session { next: base, shard, sent: 1 });
                    }
                    Some(OpCode::Resume) => {
                        let id = payload["d"]["session_id"].as_str().unwrap_or_default().to_owned();
                        let seq = payload["d"]["seq"].as_u64().unwrap_or(0);
                        match s.read(|i| i.sessions.get(&id).copied()) {
                            Some((base, shard)) => {
                                s.update(|i| {
                                    go_live(i, live, shard);
                                    i.resumes += 1;
                                    i.shards.entry(shard.id).or_default().resumes += 1;
                                });
                                let mut resumed = s.read(|i| Session::resumed(&i.events, base, shard, seq));
                                send_pending(s, &mut socket, &mut resumed).await?;
                                let last_seq = resumed.next_seq() - 1;
                                socket.send(frame(OpCode::Dispatch, json!({}), Some(last_seq), Some("RESUMED"))).await?;
                                session = Some(resumed);
                            }
                            None => socket.send(frame(OpCode::InvalidSession, Value::Bool(false), None, None)).await?,
                        }
                    }
                    _ => {}
                }
            }
            res = changed.changed() => {
                if res.is_err() {
                    return Ok(());
                }
                let (drops, reconnects) = s.read(|i| (i.drops, i.reconnects));
                if drops != drops_at_start {
                    // Abrupt loss: no close frame.
                    return Ok(());
                }
                if reconnects != reconnects_at_start && !asked_reconnect {
                    asked_reconnect = true;
                    socket.send(frame(OpCode::Reconnect, Value::Null, None, None)).await?;
                }
                if let Some(session) = session.as_mut() {
                    send_pending(s, &mut socket, session).await?;
                }
            }
        }
    }
}

async fn send_pending(s: &Shared, socket: &mut WebSocket, session: &mut Session) -> Result<(), axum::Error> {
    let pending: Vec<(&'static str, Value)> =
        s.read(|i| i.events.get(session.next..).map(<[_]>::to_vec).unwrap_or_default());
    for (t, d) in pending {
        session.next += 1;
        if session.shard.gets(&d) {
            socket.send(frame(OpCode::Dispatch, d, Some(session.next_seq()), Some(t))).await?;
            session.sent += 1;
        }
    }
    Ok(())
}

/// The `shard` of an IDENTIFY (`[id, count]`, `[0, 1]` when absent); `None` when it is invalid.
fn identify_shard(v: &Value) -> Option<ShardOf> {
    if v.is_null() {
        return Some(ShardOf { id: 0, count: 1 });
    }
    let pair = v.as_array().filter(|a| a.len() == 2)?;
    let id = u32::try_from(pair[0].as_u64()?).ok()?;
    let count = u32::try_from(pair[1].as_u64()?).ok()?;
    (count > 0 && id < count).then_some(ShardOf { id, count })
}

// ---- control API ----

async fn info(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "guild_id": s.world.guild_id.to_string(),
        "main_channel_id": s.world.main_channel_id.to_string(),
        "dream_channel_id": s.world.dream_channel_id.to_string(),
        "bot_user_id": BOT_USER_ID.to_string(),
    }))
}

#[derive(Deserialize)]
struct PostBody {
    content: String,
    channel_id: Option<String>,
    /// The guild of the channel (default: the guild the channel was first posted in, or the world's).
    guild_id: Option<String>,
    author: Option<String>,
    repeat: Option<u32>,
    /// The author is a bot (another one than Lattice).
    #[serde(default)]
    bot: bool,
}

async fn control_post(State(s): State<Arc<Shared>>, Json(body): Json<PostBody>) -> Response {
    let channel = match body.channel_id.as_deref().map(str::parse::<u64>) {
        None => s.world.main_channel_id,
        Some(Ok(c)) if c > 0 => c,
        Some(_) => return (StatusCode::BAD_REQUEST, "channel_id must be a positive integer").into_response(),
    };
    let guild = match body.guild_id.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(g)) if g > 0 => Some(g),
        Some(_) => return (StatusCode::BAD_REQUEST, "guild_id must be a positive integer").into_response(),
    };
    // Empty content is allowed: Discord delivers it for a message with only an attachment.
    let author = body.author.unwrap_or_else(|| "tester".into());
    let world = s.world.clone();
    let id = s.update(|i| {
        let next = 100_000_000_000_000_100 + i.users.len() as u64;
        let uid = *i.users.entry(author.clone()).or_insert(next);
        let id = i.snowflake();
        if let Some(g) = guild {
            i.channels.entry(channel).or_insert(g);
        }
        let guild = i.guild_of(&world, channel);
        let msg = message(guild, id, channel, user(uid, &author, body.bot), body.content, None);
        let value = serde_json::to_value(&msg).expect("message serializes");
        for _ in 0..body.repeat.unwrap_or(1).clamp(1, 10) {
            i.events.push(("MESSAGE_CREATE", value.clone()));
        }
        id
    });
    Json(json!({ "id": id.to_string() })).into_response()
}

#[derive(Deserialize)]
struct PostedQuery {
    after: Option<u64>,
    wait: Option<u64>,
}

async fn control_posted(State(s): State<Arc<Shared>>, Query(q): Query<PostedQuery>) -> Json<Value> {
    let after = q.after.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.unwrap_or(0).min(60));
    let mut changed = s.changed.subscribe();
    loop {
        let new: Vec<Posted> = s.read(|i| i.posted.iter().filter(|p| p.seq > after).cloned().collect());
        if !new.is_empty() || tokio::time::Instant::now() >= deadline {
            let next = new.last().map(|p| p.seq).unwrap_or(after);
            return Json(json!({ "messages": new, "next": next }));
        }
        let _ = tokio::time::timeout_at(deadline, changed.changed()).await;
    }
}

async fn control_drop(State(s): State<Arc<Shared>>) -> Json<Value> {
    let n = s.update(|i| {
        i.drops += 1;
        i.connections
    });
    Json(json!({ "dropped": n }))
}

async fn control_reconnect(State(s): State<Arc<Shared>>) -> Json<Value> {
    let n = s.update(|i| {
        i.reconnects += 1;
        i.connections
    });
    Json(json!({ "asked": n }))
}

async fn control_state(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(s.read(|i| {
        json!({
            "connections": i.connections,
            "live": i.live,
            "max_live": i.max_live,
            "session_gaps_ms": i.session_gaps_ms,
            "identifies": i.identifies,
            "resumes": i.resumes,
            "posted": i.posted.len(),
            "events": i.events.len(),
            "rest_requests": i.rest.len(),
            "rate_limited": i.rest.iter().filter(|r| r.status == 429).count(),
            "max_rest_per_second": max_per_second(&i.rest),
            "shards": i.shards.iter().map(|(id, c)| (id.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        })
    }))
}

/// The most requests that started within any one second.
fn max_per_second(hits: &[RestHit]) -> usize {
    let mut start = 0;
    let mut best = 0;
    for (end, hit) in hits.iter().enumerate() {
        while hit.at_ms - hits[start].at_ms >= 1000 {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[derive(Deserialize)]
struct RateLimitRequest {
    shape: Option<Shape>,
    count: Option<u32>,
    retry_after: Option<f64>,
    bucket_limit: Option<u32>,
    bucket_reset_after: Option<f64>,
}

async fn control_ratelimit(State(s): State<Arc<Shared>>, Json(body): Json<RateLimitRequest>) -> Response {
    if let (Some(limit), Some(per)) = (body.bucket_limit, body.bucket_reset_after) {
        if limit == 0 || per.is_nan() || per <= 0.0 {
            return (StatusCode::BAD_REQUEST, "bucket_limit and bucket_reset_after must be positive")
                .into_response();
        }
        s.update(|i| i.bucket = Some((limit, per)));
    }
    if let Some(shape) = body.shape {
        let retry_after = body.retry_after.unwrap_or(1.0).max(0.0);
        s.update(|i| i.armed.extend((0..body.count.unwrap_or(1)).map(|_| (shape, retry_after))));
    }
    Json(json!({ "armed": s.read(|i| i.armed.len()) })).into_response()
}

async fn control_rest(State(s): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({ "requests": s.read(|i| i.rest.clone()) }))
}

#[derive(Deserialize)]
struct RawEvent {
    t: String,
    d: Value,
}

async fn control_raw(State(s): State<Arc<Shared>>, Json(body): Json<RawEvent>) -> Json<Value> {
    // Event types are static strings in the log; the few a test needs are listed here.
    let t: &'static str = match body.t.as_str() {
        "MESSAGE_CREATE" => "MESSAGE_CREATE",
        "MESSAGE_UPDATE" => "MESSAGE_UPDATE",
        _ => "UNKNOWN_EVENT",
    };
    s.update(|i| i.events.push((t, body.d)));
    Json(json!({ "dispatched": t }))
}

#[derive(Deserialize)]
struct MessagesQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// Get Channel Messages with `after`: the `limit` (1–100, default 50) oldest messages after that id,
/// newest first, as Discord returns them.
async fn channel_messages(
    State(s): State<Arc<Shared>>,
    Path(channel): Path<u64>,
    Query(q): Query<MessagesQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return discord_error(StatusCode::UNAUTHORIZED, 0, "401: Unauthorized");
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 100);
    let after = q.after.unwrap_or(0);
    let mut found: Vec<(u64, Value)> = s.read(|i| {
        i.events
            .iter()
            .filter(|(t, d)| *t == "MESSAGE_CREATE" && d["channel_id"].as_str() == Some(&channel.to_string()))
            .filter_map(|(_, d)| d["id"].as_str()?.parse::<u64>().ok().map(|id| (id, d.clone())))
            .filter(|(id, _)| *id > after)
            .collect()
    });
    found.sort_by_key(|(id, _)| *id);
    found.dedup_by_key(|(id, _)| *id);
    found.truncate(limit);
    found.reverse();
    Json(found.into_iter().map(|(_, d)| d).collect::<Vec<_>>()).into_response()
}

async fn control_invalidate(State(s): State<Arc<Shared>>) -> Json<Value> {
    let n = s.update(|i| {
        i.sessions.clear();
        i.drops += 1;
        i.connections
    });
    Json(json!({ "dropped": n }))
}

#[derive(Deserialize)]
struct OutageBody {
    secs: f64,
}

async fn control_outage(State(s): State<Arc<Shared>>, Json(body): Json<OutageBody>) -> Response {
    if !(body.secs.is_finite() && body.secs >= 0.0) {
        return (StatusCode::BAD_REQUEST, "secs must be a non-negative number").into_response();
    }
    let n = s.update(|i| {
        i.outage_until = Some(std::time::Instant::now() + Duration::from_secs_f64(body.secs));
        i.drops += 1;
        i.connections
    });
    Json(json!({ "dropped": n })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_names_a_shard_below_its_count_or_none_at_all() {
        assert_eq!(identify_shard(&Value::Null), Some(ShardOf { id: 0, count: 1 }));
        assert_eq!(identify_shard(&json!([1, 2])), Some(ShardOf { id: 1, count: 2 }));
        for bad in [json!([2, 2]), json!([0, 0]), json!([0]), json!("0,1"), json!([-1, 2])] {
            assert_eq!(identify_shard(&bad), None, "{bad}");
        }
    }

    #[test]
    fn each_shard_gets_its_guilds_events_numbered_on_their_own() {
        let on = |g: u64| ("MESSAGE_CREATE", json!({ "guild_id": g.to_string() }));
        // Guild 1 << 22 is on shard 1 of 2, guild 2 << 22 on shard 0; no guild: shard 0.
        let events = vec![on(1 << 22), on(2 << 22), on(1 << 22), ("X", json!({})), on(1 << 22)];
        let shard1 = ShardOf { id: 1, count: 2 };
        let shard0 = ShardOf { id: 0, count: 2 };
        assert_eq!(events.iter().filter(|(_, d)| shard1.gets(d)).count(), 3);
        assert_eq!(events.iter().filter(|(_, d)| shard0.gets(d)).count(), 2);
        // Shard 1 resumed after sequence 3 (READY, then its first two events): next is event 4.
        let s = Session::resumed(&events, 0, shard1, 3);
        assert_eq!((s.next, s.next_seq()), (3, 4));
        let s = Session::resumed(&events, 0, shard0, 1);
        assert_eq!((s.next, s.next_seq()), (0, 2));
    }
}
