//! Discord's REST API as the bot uses it: Create Message (with `nonce` + `enforce_nonce`, so a post
//! retried after a crash cannot appear twice) and Get Channel Messages (the backfill), with Discord's
//! rate limits kept.
//!
//! A small client over reqwest instead of twilight-http, because twilight-http maps a global 429 and
//! a 429 without rate-limit headers to "no wait" and retries at once, without bound. Here:
//! - every request passes a process-wide gate of [`GLOBAL_PER_SECOND`] requests in any second;
//! - each route's bucket (`X-RateLimit-Remaining` / `X-RateLimit-Reset-After`) is honoured before
//!   sending, so a busy channel waits instead of collecting 429s;
//! - a 429 is retried after its `retry_after` (body) or `Retry-After` (header); a global one
//!   (`X-RateLimit-Global`, or `"global": true`) pauses every request; one without any rate-limit
//!   information (a proxy or Cloudflare) pauses everything with a doubling back-off;
//! - at most [`MAX_TRIES`] attempts per request, and a wait longer than [`MAX_WAIT`] is not waited.
//!
//! Every post carries `allowed_mentions` that allow no `@everyone`, role or user ping, except
//! (when asked) the author of the message replied to.

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use reqwest::{header::HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use twilight_model::id::{
    marker::{ChannelMarker, MessageMarker, UserMarker},
    Id,
};

use crate::http::Health;

/// Discord's global limit for a bot: requests in any one second, all routes together.
pub const GLOBAL_PER_SECOND: usize = 50;
/// Attempts per request, the first included.
pub const MAX_TRIES: u32 = 4;
/// A rate limit asking for a longer wait than this is reported, not waited out.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The first back-off for a 429 that says nothing about how long to wait; doubles each time.
pub const BARE_429_BACKOFF: Duration = Duration::from_secs(1);

/// A message as Create Message returns it: what the bot stores of its own posts.
#[derive(Debug, Clone, Deserialize)]
pub struct PostedMessage {
    pub id: Id<MessageMarker>,
    pub channel_id: Id<ChannelMarker>,
    pub author: Author,
    #[serde(default)]
    pub content: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Author {
    pub id: Id<UserMarker>,
    pub username: String,
    pub global_name: Option<String>,
    #[serde(default)]
    pub bot: bool,
}

/// Which mentions in a post may notify anyone: nothing parsed from the text, ever.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AllowedMentions {
    parse: [&'static str; 0],
    users: [u64; 0],
    roles: [u64; 0],
    /// Whether a reply notifies the author of the message it answers.
    replied_user: bool,
}

impl AllowedMentions {
    pub const NONE: AllowedMentions =
        AllowedMentions { parse: [], users: [], roles: [], replied_user: false };
    pub const REPLIED_USER: AllowedMentions =
        AllowedMentions { parse: [], users: [], roles: [], replied_user: true };
}

#[derive(Serialize)]
struct CreateMessage<'a> {
    content: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_reference: Option<Reference>,
    allowed_mentions: &'a AllowedMentions,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    /// With a nonce: a second post with it within a few minutes returns the first message.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    enforce_nonce: bool,
}

/// Discord's limit on a nonce's length.
pub const NONCE_MAX_LEN: usize = 25;

/// The nonce of part `part` of the reply to message `to`: the same on every attempt, by any instance.
pub fn reply_nonce(to: Id<MessageMarker>, part: usize) -> String {
    let n = format!("{to}-{part}");
    debug_assert!(n.len() <= NONCE_MAX_LEN);
    n
}

#[derive(Serialize)]
struct Reference {
    message_id: Id<MessageMarker>,
    /// Still post when the message answered was deleted meanwhile.
    fail_if_not_exists: bool,
}

/// Why a post failed, for logs (never contains the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostError(pub String);

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PostError {}

/// What a 429 says about itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimited {
    pub scope: Scope,
    /// `None` when the response said nothing about how long to wait.
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The bot's own per-route bucket (`X-RateLimit-Scope: user`).
    User,
    /// A per-resource bucket shared with others (`X-RateLimit-Scope: shared`).
    Shared,
    /// The bot's global limit (`X-RateLimit-Global: true`).
    Global,
    /// No rate-limit headers and no Discord body: something in front of Discord (Cloudflare).
    Unknown,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Shared => "shared",
            Scope::Global => "global",
            Scope::Unknown => "unknown",
        }
    }

    /// Whether waiting applies to every request rather than one route.
    fn pauses_everything(self) -> bool {
        matches!(self, Scope::Global | Scope::Unknown)
    }
}

#[derive(Deserialize, Default)]
struct RateLimitBody {
    retry_after: Option<f64>,
    #[serde(default)]
    global: bool,
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn seconds(raw: &str) -> Option<Duration> {
    raw.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
}

/// Reads a 429 response's headers and body the way Discord documents them.
pub fn classify_429(headers: &HeaderMap, body: &[u8]) -> RateLimited {
    let parsed: Option<RateLimitBody> = serde_json::from_slice(body).ok();
    let global = header(headers, "x-ratelimit-global").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || header(headers, "x-ratelimit-scope") == Some("global")
        || parsed.as_ref().is_some_and(|b| b.global);
    let retry_after = parsed
        .as_ref()
        .and_then(|b| b.retry_after)
        .and_then(|s| seconds(&s.to_string()))
        .or_else(|| header(headers, "retry-after").and_then(seconds))
        .or_else(|| header(headers, "x-ratelimit-reset-after").and_then(seconds));
    let scope = if global {
        Scope::Global
    } else if header(headers, "x-ratelimit-scope") == Some("shared") {
        Scope::Shared
    } else if header(headers, "x-ratelimit-bucket").is_some()
        || header(headers, "x-ratelimit-scope").is_some()
        || parsed.is_some()
    {
        Scope::User
    } else {
        Scope::Unknown
    };
    RateLimited { scope, retry_after }
}

/// At most [`GLOBAL_PER_SECOND`] requests start in any one second.
#[derive(Debug, Default)]
pub struct GlobalGate {
    /// Start times of the last [`GLOBAL_PER_SECOND`] requests, oldest first.
    starts: VecDeque<Instant>,
}

impl GlobalGate {
    /// Reserves the earliest start at or after `now` that keeps the limit; returns it.
    pub fn reserve(&mut self, now: Instant) -> Instant {
        let mut at = now.max(self.starts.back().copied().unwrap_or(now));
        if self.starts.len() >= GLOBAL_PER_SECOND {
            let oldest = self.starts[self.starts.len() - GLOBAL_PER_SECOND];
            at = at.max(oldest + Duration::from_secs(1));
        }
        self.starts.push_back(at);
        while self.starts.len() > GLOBAL_PER_SECOND {
            self.starts.pop_front();
        }
        at
    }
}

/// A route's bucket as its last response described it.
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    remaining: Option<u32>,
    reset_at: Option<Instant>,
}

#[derive(Default)]
struct Limits {
    gate: GlobalGate,
    /// Every request waits until then (a global or unexplained 429).
    paused_until: Option<Instant>,
    buckets: HashMap<u64, Bucket>,
}

/// The bot's Discord REST client.
pub struct DiscordRest {
    http: reqwest::Client,
    /// `https://discord.com/api/v10`, or a stand-in's `http://host:port/api/v10`.
    base: String,
    /// `Bot <token>`; kept out of `Debug`, URLs and errors.
    authorization: String,
    limits: Mutex<Limits>,
    health: Arc<Health>,
}

impl DiscordRest {
    /// `api_url` is a stand-in's `http://host:port`; `None` means discord.com.
    pub fn new(token: &str, api_url: Option<&str>, health: Arc<Health>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!(
                "DiscordBot (https://github.com/lattice-bot/lattice, ",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .build()?;
        let base = format!("{}/api/v10", api_url.unwrap_or("https://discord.com").trim_end_matches('/'));
        Ok(Self { http, base, authorization: format!("Bot {token}"), limits: Mutex::default(), health })
    }

    /// Posts `content` in `channel`, as a reply to `reply_to` when given. With a `nonce`, Discord
    /// returns the message an earlier post with the same nonce created instead of a second one.
    pub async fn create_message(
        &self,
        channel: Id<ChannelMarker>,
        content: &str,
        reply_to: Option<Id<MessageMarker>>,
        mentions: &AllowedMentions,
        nonce: Option<&str>,
    ) -> Result<PostedMessage, PostError> {
        let body = CreateMessage {
            content,
            message_reference: reply_to.map(|message_id| Reference { message_id, fail_if_not_exists: false }),
            allowed_mentions: mentions,
            nonce,
            enforce_nonce: nonce.is_some(),
        };
        let url = format!("{}/channels/{channel}/messages", self.base);
        let bytes = self.send(reqwest::Method::POST, &url, channel.get(), Some(&body)).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| PostError(format!("Discord answered Create Message with an unexpected body: {e}")))
    }

    /// Up to 100 messages of `channel` after `after`, oldest first.
    pub async fn messages_after(
        &self,
        channel: Id<ChannelMarker>,
        after: Id<MessageMarker>,
    ) -> Result<Vec<twilight_model::channel::Message>, PostError> {
        let url = format!("{}/channels/{channel}/messages?after={after}&limit=100", self.base);
        // Reads have their own bucket at Discord: keep them apart from the channel's posts.
        let bytes = self.send::<()>(reqwest::Method::GET, &url, !channel.get(), None).await?;
        let mut messages: Vec<twilight_model::channel::Message> =
            serde_json::from_slice(&bytes).map_err(|e| {
                PostError(format!("Discord answered Get Channel Messages with an unexpected body: {e}"))
            })?;
        messages.sort_by_key(|m| m.id);
        Ok(messages)
    }

    /// One request with the rate limits kept; the body of a 2xx answer.
    async fn send<B: Serialize>(
        &self,
        method: reqwest::Method,
        url: &str,
        bucket: u64,
        body: Option<&B>,
    ) -> Result<Vec<u8>, PostError> {
        let mut bare_backoff = BARE_429_BACKOFF;
        for attempt in 1..=MAX_TRIES {
            self.wait_turn(bucket).await;
            let mut req = self.http.request(method.clone(), url).header("authorization", &self.authorization);
            if let Some(body) = body {
                req = req.json(body);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return Err(PostError(format!("request failed: {}", e.without_url()))),
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            self.note_bucket(bucket, &headers);
            let bytes = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            if status.is_success() {
                return Ok(bytes);
            }
            if status != StatusCode::TOO_MANY_REQUESTS {
                let text = String::from_utf8_lossy(&bytes);
                return Err(PostError(format!("Discord answered {status}: {}", truncate(&text, 200))));
            }
            let limited = classify_429(&headers, &bytes);
            self.health.metrics.discord_rate_limited(limited.scope);
            let wait = match limited.retry_after {
                Some(w) => w,
                None => {
                    let w = bare_backoff;
                    bare_backoff *= 2;
                    w
                }
            };
            tracing::warn!(
                scope = limited.scope.as_str(),
                retry_after_ms = wait.as_millis() as u64,
                attempt,
                "Discord rate limit (429)"
            );
            if wait > MAX_WAIT {
                return Err(PostError(format!(
                    "rate limited ({}) for {} s, longer than {} s: not retried",
                    limited.scope.as_str(),
                    wait.as_secs(),
                    MAX_WAIT.as_secs()
                )));
            }
            self.note_429(bucket, limited.scope, wait);
        }
        Err(PostError(format!("still rate limited after {MAX_TRIES} attempts; gave up")))
    }

    /// Waits until no global pause holds, this route's bucket has room, and the global gate
    /// gives a start slot.
    async fn wait_turn(&self, bucket: u64) {
        loop {
            let blocked_until = {
                let mut l = self.limits.lock().expect("rate limits");
                let now = Instant::now();
                let paused = l.paused_until.filter(|p| *p > now);
                let b = l.buckets.entry(bucket).or_default();
                if b.reset_at.is_some_and(|r| r <= now) {
                    *b = Bucket::default();
                }
                match (paused, b.remaining, b.reset_at) {
                    (Some(p), _, _) => Some(p),
                    (None, Some(0), Some(reset)) => Some(reset),
                    (None, Some(n), _) => {
                        b.remaining = Some(n.saturating_sub(1));
                        None
                    }
                    (None, _, _) => None,
                }
            };
            match blocked_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => break,
            }
        }
        let slot = self.limits.lock().expect("rate limits").gate.reserve(Instant::now());
        tokio::time::sleep_until(slot).await;
    }

    fn note_bucket(&self, bucket: u64, headers: &HeaderMap) {
        let remaining = header(headers, "x-ratelimit-remaining").and_then(|v| v.parse::<u32>().ok());
        let reset_after = header(headers, "x-ratelimit-reset-after").and_then(seconds);
        if let (Some(remaining), Some(reset_after)) = (remaining, reset_after) {
            let mut l = self.limits.lock().expect("rate limits");
            let b = l.buckets.entry(bucket).or_default();
            b.remaining = Some(remaining);
            b.reset_at = Some(Instant::now() + reset_after);
        }
    }

    fn note_429(&self, bucket: u64, scope: Scope, wait: Duration) {
        let until = Instant::now() + wait;
        let mut l = self.limits.lock().expect("rate limits");
        if scope.pauses_everything() {
            l.paused_until = Some(l.paused_until.map_or(until, |p| p.max(until)));
        } else {
            let b = l.buckets.entry(bucket).or_default();
            b.remaining = Some(0);
            b.reset_at = Some(b.reset_at.map_or(until, |r| r.max(until)));
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Counts 429s by scope, for `/metrics`.
#[derive(Default)]
pub struct RateLimitCounts {
    pub user: std::sync::atomic::AtomicU64,
    pub shared: std::sync::atomic::AtomicU64,
    pub global: std::sync::atomic::AtomicU64,
    pub unknown: std::sync::atomic::AtomicU64,
}

impl RateLimitCounts {
    pub fn add(&self, scope: Scope) {
        let c = match scope {
            Scope::User => &self.user,
            Scope::Shared => &self.shared,
            Scope::Global => &self.global,
            Scope::Unknown => &self.unknown,
        };
        c.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn each_shape_of_429_is_recognised() {
        let user = classify_429(
            &headers(&[("x-ratelimit-bucket", "abc"), ("x-ratelimit-scope", "user"), ("retry-after", "2")]),
            br#"{"message":"You are being rate limited.","retry_after":1.5,"global":false}"#,
        );
        assert_eq!(user, RateLimited { scope: Scope::User, retry_after: Some(Duration::from_millis(1500)) });
        let shared = classify_429(
            &headers(&[("x-ratelimit-scope", "shared"), ("retry-after", "3")]),
            br#"{"retry_after":3,"global":false}"#,
        );
        assert_eq!(shared.scope, Scope::Shared);
        let global = classify_429(
            &headers(&[("x-ratelimit-global", "true"), ("retry-after", "4")]),
            br#"{"message":"You are being rate limited.","global":true}"#,
        );
        assert_eq!(global, RateLimited { scope: Scope::Global, retry_after: Some(Duration::from_secs(4)) });
        let bare = classify_429(&HeaderMap::new(), b"<html>error 1015</html>");
        assert_eq!(bare, RateLimited { scope: Scope::Unknown, retry_after: None });
    }

    #[test]
    fn the_gate_lets_at_most_50_requests_start_in_any_second() {
        let mut gate = GlobalGate::default();
        let t0 = Instant::now();
        let starts: Vec<Instant> = (0..175).map(|_| gate.reserve(t0)).collect();
        assert!(starts.windows(2).all(|w| w[0] <= w[1]));
        for (i, s) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().take_while(|t| **t < *s + Duration::from_secs(1)).count();
            assert!(in_window <= GLOBAL_PER_SECOND, "{in_window} requests within a second of #{i}");
        }
        assert!(starts[174] >= t0 + Duration::from_secs(3), "175 requests need more than 3 s");
        assert_eq!(starts[49], t0, "the first 50 go at once");
    }
}
