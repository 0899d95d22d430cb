//! `/health` and `/metrics`, and the `healthcheck` probe that the image's HEALTHCHECK runs.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Json, Router};
use serde_json::json;
use sqlx::PgPool;

/// The gateway connection as `/health` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GatewayState {
    Connecting = 0,
    Connected = 1,
    Disconnected = 2,
    ShuttingDown = 3,
    /// Another instance holds the leader lock; this one waits to take over.
    Standby = 4,
}

impl GatewayState {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayState::Connecting => "connecting",
            GatewayState::Connected => "connected",
            GatewayState::Disconnected => "disconnected",
            GatewayState::ShuttingDown => "shutting_down",
            GatewayState::Standby => "standby",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => GatewayState::Connected,
            2 => GatewayState::Disconnected,
            3 => GatewayState::ShuttingDown,
            4 => GatewayState::Standby,
            _ => GatewayState::Connecting,
        }
    }
}

/// Counters for `/metrics`. Costs are kept in micro-dollars so they fit an atomic integer.
#[derive(Default)]
pub struct Metrics {
    pub messages_stored: AtomicU64,
    pub duplicate_events: AtomicU64,
    pub replies: AtomicU64,
    pub reply_parts: AtomicU64,
    pub llm_ok: AtomicU64,
    pub llm_errors: AtomicU64,
    pub llm_latency: Histogram,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub cost_micro_usd: AtomicU64,
    pub reconnects: AtomicU64,
    /// Gateway sessions started afresh (READY) and resumed (RESUMED).
    pub identifies: AtomicU64,
    pub resumes: AtomicU64,
    /// Messages read back over REST after a session that could not be resumed.
    pub backfilled: AtomicU64,
    /// Reply claims re-taken after their holder died mid-reply.
    pub leases_retaken: AtomicU64,
    pub db_errors: AtomicU64,
    /// Messages not answered on purpose: empty, or their author over the per-user limit.
    pub ignored_empty: AtomicU64,
    pub ignored_user_limit: AtomicU64,
    /// Notices sent to users over the per-user limit.
    pub user_limit_notices: AtomicU64,
    /// Work dropped because a queue was full: answers not given, messages not stored.
    pub dropped_answers: AtomicU64,
    pub dropped_stores: AtomicU64,
    /// Gateway payloads that could not be read.
    pub gateway_unreadable: AtomicU64,
    pub rate_limited: crate::discord::RateLimitCounts,
}

/// Upper bounds of the LLM latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// A Prometheus histogram of durations (cumulative buckets are computed when rendered).
#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket of [`LATENCY_BUCKETS`], plus one for larger values.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    fn render(&self, s: &mut String, name: &str, help: &str) {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Relaxed);
            let le = LATENCY_BUCKETS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(s, "{name}_sum {:.6}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(s, "{name}_count {cumulative}");
    }
}

impl Metrics {
    pub fn discord_rate_limited(&self, scope: crate::discord::Scope) {
        self.rate_limited.add(scope);
    }

    pub fn render(&self, gateway: GatewayState) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in samples {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        let g = |a: &AtomicU64| a.load(Relaxed).to_string();
        counter(
            "lattice_messages_stored_total",
            "Messages stored in episodic memory.",
            &[("", g(&self.messages_stored))],
        );
        counter(
            "lattice_duplicate_events_total",
            "Repeated events recognised and not handled again.",
            &[("", g(&self.duplicate_events))],
        );
        counter("lattice_replies_total", "Messages answered.", &[("", g(&self.replies))]);
        counter(
            "lattice_reply_parts_total",
            "Discord messages posted for replies.",
            &[("", g(&self.reply_parts))],
        );
        counter(
            "lattice_llm_requests_total",
            "LLM calls by result.",
            &[("{result=\"ok\"}", g(&self.llm_ok)), ("{result=\"error\"}", g(&self.llm_errors))],
        );
        counter(
            "lattice_llm_tokens_total",
            "Tokens used by kind.",
            &[
                ("{kind=\"prompt\"}", g(&self.prompt_tokens)),
                ("{kind=\"completion\"}", g(&self.completion_tokens)),
            ],
        );
        counter(
            "lattice_llm_cost_usd_total",
            "LLM cost in US dollars.",
            &[("", format!("{:.6}", self.cost_micro_usd.load(Relaxed) as f64 / 1e6))],
        );
        counter(
            "lattice_gateway_reconnects_total",
            "Gateway sessions re-established.",
            &[("", g(&self.reconnects))],
        );
        counter(
            "lattice_gateway_sessions_total",
            "Gateway sessions by how they started: identify (READY) or resume (RESUMED).",
            &[("{how=\"identify\"}", g(&self.identifies)), ("{how=\"resume\"}", g(&self.resumes))],
        );
        counter(
            "lattice_backfilled_messages_total",
            "Messages read back over REST after a session that could not be resumed.",
            &[("", g(&self.backfilled))],
        );
        counter(
            "lattice_reply_leases_retaken_total",
            "Reply claims re-taken after their holder died before replying.",
            &[("", g(&self.leases_retaken))],
        );
        counter("lattice_db_errors_total", "Failed database operations.", &[("", g(&self.db_errors))]);
        counter(
            "lattice_messages_ignored_total",
            "Messages deliberately not answered, by reason.",
            &[
                ("{reason=\"empty\"}", g(&self.ignored_empty)),
                ("{reason=\"user_rate_limit\"}", g(&self.ignored_user_limit)),
            ],
        );
        counter(
            "lattice_user_limit_notices_total",
            "Notices telling a user they are over the per-user limit.",
            &[("", g(&self.user_limit_notices))],
        );
        counter(
            "lattice_dropped_total",
            "Work dropped because a queue was full, by kind.",
            &[("{kind=\"answer\"}", g(&self.dropped_answers)), ("{kind=\"store\"}", g(&self.dropped_stores))],
        );
        counter(
            "lattice_gateway_unreadable_total",
            "Gateway payloads that could not be deserialised (skipped).",
            &[("", g(&self.gateway_unreadable))],
        );
        let r = &self.rate_limited;
        counter(
            "lattice_discord_rate_limited_total",
            "429 answers from Discord's REST API, by scope.",
            &[
                ("{scope=\"user\"}", g(&r.user)),
                ("{scope=\"shared\"}", g(&r.shared)),
                ("{scope=\"global\"}", g(&r.global)),
                ("{scope=\"unknown\"}", g(&r.unknown)),
            ],
        );
        self.llm_latency.render(&mut s, "lattice_llm_latency_seconds", "LLM call latency.");
        let _ = writeln!(
            s,
            "# HELP lattice_gateway_connected 1 while the gateway session is live.\n# TYPE lattice_gateway_connected gauge\n\
             lattice_gateway_connected {}",
            u8::from(gateway == GatewayState::Connected)
        );
        s
    }
}

/// What the HTTP server and the gateway loop share.
pub struct Health {
    pub pool: PgPool,
    pub metrics: Metrics,
    gateway: AtomicU8,
    /// Milliseconds after `started` when the gateway state last changed.
    gateway_since_ms: AtomicU64,
    /// Whether this instance's gateway was ever live (a first connect is not a reconnect).
    was_connected: std::sync::atomic::AtomicBool,
    started: std::time::Instant,
    pub sha: String,
    pub schema_head: i64,
    /// How long the gateway may be down (or a standby see no live leader) and still be healthy.
    pub grace: Duration,
    /// The shard this instance serves (or stands by for).
    pub shard_id: u32,
}

impl Health {
    pub fn new(pool: PgPool, sha: String, grace: Duration, shard_id: u32) -> Arc<Self> {
        Arc::new(Self {
            pool,
            metrics: Metrics::default(),
            gateway: AtomicU8::new(GatewayState::Connecting as u8),
            gateway_since_ms: AtomicU64::new(0),
            was_connected: false.into(),
            started: std::time::Instant::now(),
            sha,
            schema_head: crate::db::schema_info().head,
            grace,
            shard_id,
        })
    }

    pub fn set_gateway(&self, s: GatewayState) {
        if self.gateway.swap(s as u8, Relaxed) != s as u8 {
            self.gateway_since_ms.store(self.started.elapsed().as_millis() as u64, Relaxed);
        }
        if s == GatewayState::Connected {
            self.was_connected.store(true, Relaxed);
        }
    }

    /// How long the gateway has been in its current state.
    pub fn gateway_for(&self) -> Duration {
        let since = Duration::from_millis(self.gateway_since_ms.load(Relaxed));
        self.started.elapsed().saturating_sub(since)
    }

    /// `leader` once this instance holds the leader lock, `standby` while another one does.
    pub fn role(&self) -> &'static str {
        if self.gateway() == GatewayState::Standby {
            "standby"
        } else {
            "leader"
        }
    }

    pub fn gateway(&self) -> GatewayState {
        GatewayState::from_u8(self.gateway.load(Relaxed))
    }

    /// `(healthy, body)`: healthy only when Postgres answers with a schema this build can use and
    /// the gateway session is live (or this instance stands by, ready to take over).
    pub async fn check(&self) -> (bool, serde_json::Value) {
        let gateway = self.gateway();
        let db = tokio::time::timeout(Duration::from_secs(3), crate::db::schema_version(&self.pool)).await;
        let (db_text, schema_version) = match db {
            Ok(Ok(v)) => ("ok".to_owned(), Some(v)),
            Ok(Err(e)) => (format!("unreachable: {e}"), None),
            Err(_) => ("unreachable: timed out".to_owned(), None),
        };
        let mut problems = Vec::new();
        match schema_version {
            None => problems.push(db_text.clone()),
            Some(v) if v < self.schema_head => {
                problems.push(format!("schema {v} is behind {}: run `lattice-bot migrate`", self.schema_head))
            }
            Some(_) => {}
        }
        // A standby can take over: the database answers with a schema this build can use.
        let ready_as_standby = gateway == GatewayState::Standby && problems.is_empty();
        let down_for = self.gateway_for();
        let grace = self.grace.as_secs_f64();
        match gateway {
            GatewayState::Connected => {}
            GatewayState::Standby => {
                // Someone holds the lock; but is anyone serving? The leader beats while its gateway is live.
                if schema_version.is_some() {
                    let silent = tokio::time::timeout(
                        Duration::from_secs(3),
                        crate::db::leader_silent_secs(&self.pool, self.shard_id),
                    )
                    .await;
                    let silent = match silent {
                        Ok(Ok(Some(s))) => s.min(down_for.as_secs_f64()),
                        _ => down_for.as_secs_f64(),
                    };
                    if silent > grace {
                        problems.push(format!(
                            "no instance has led with a live gateway for {silent:.0} s (grace {grace:.0} s)"
                        ));
                    }
                }
            }
            // A short reconnect is normal; longer than the grace, nobody is answering.
            GatewayState::Disconnected | GatewayState::Connecting
                if self.was_connected.load(Relaxed) && down_for < self.grace => {}
            _ => problems.push(format!(
                "gateway {} for {:.1} s (grace {grace:.0} s)",
                gateway.as_str(),
                down_for.as_secs_f64()
            )),
        }
        let healthy = problems.is_empty();
        let body = json!({
            "status": if healthy { "ok" } else { "unhealthy" },
            "role": self.role(),
            "sha": self.sha,
            "shard": self.shard_id,
            "schema_version": schema_version,
            "schema_head": self.schema_head,
            "gateway": gateway.as_str(),
            "gateway_for_secs": (down_for.as_secs_f64() * 10.0).round() / 10.0,
            "ready_as_standby": ready_as_standby,
            "database": db_text,
            "problems": problems,
        });
        (healthy, body)
    }
}

pub fn router(state: Arc<Health>) -> Router {
    Router::new().route("/health", get(health)).route("/metrics", get(metrics)).with_state(state)
}

async fn health(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let (ok, body) = h.check().await;
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    ([("content-type", "text/plain; version=0.0.4")], h.metrics.render(h.gateway()))
}

/// What `lattice-bot healthcheck --wait` waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    /// A healthy standby: database reachable, schema at or above this build's head, not leading.
    Standby,
    /// The leader, with its gateway session READY or RESUMED.
    Leader,
}

/// Whether a `/health` body shows what `wait` waits for; `Err(reason)` when not (yet).
pub fn reached(wait: Wait, body: &serde_json::Value) -> Result<(), String> {
    let problems = || {
        body["problems"]
            .as_array()
            .map(|p| p.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("; "))
            .unwrap_or_default()
    };
    match wait {
        Wait::Standby if body["ready_as_standby"] == true => Ok(()),
        Wait::Standby if body["role"] == "leader" => Err("this instance leads; it is no standby".into()),
        Wait::Standby => Err(format!("not a ready standby: {}", problems())),
        Wait::Leader if body["role"] == "leader" && body["gateway"] == "connected" => Ok(()),
        Wait::Leader if body["role"] == "standby" => Err("still standing by: another instance leads".into()),
        Wait::Leader => Err(format!("leading, gateway {}: {}", body["gateway"], problems())),
    }
}

/// `lattice-bot healthcheck`: exit status 0 only when our own `/health` answers 200. With `wait`,
/// polls until `/health` shows that state (exit 0) or `timeout` passes (an error with the reason).
pub async fn probe(port: u16, wait: Option<(Wait, Duration)>) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/health");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(4)).build()?;
    let Some((wait, timeout)) = wait else {
        let resp = client.get(&url).send().await.map_err(|e| {
            anyhow::anyhow!("{url} is not answering ({}): is `lattice-bot run` up?", e.without_url())
        })?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        println!("{body}");
        return if status.is_success() { Ok(()) } else { anyhow::bail!("{url} answered {status}") };
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let reason = match client.get(&url).send().await {
            Err(e) => format!("{url} is not answering ({})", e.without_url()),
            Ok(resp) => match resp.json::<serde_json::Value>().await {
                Err(e) => format!("{url} answered something that is not JSON: {e}"),
                Ok(body) => match reached(wait, &body) {
                    Ok(()) => {
                        println!("{body}");
                        return Ok(());
                    }
                    Err(reason) => reason,
                },
            },
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("not {wait:?} after {} s: {reason}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_reads_role_and_gateway_from_the_health_body() {
        let standby =
            json!({"role": "standby", "gateway": "standby", "ready_as_standby": true, "problems": []});
        assert_eq!(reached(Wait::Standby, &standby), Ok(()));
        assert!(reached(Wait::Leader, &standby).unwrap_err().contains("standing by"));
        let old_schema = json!({"role": "standby", "ready_as_standby": false,
            "problems": ["schema 3 is behind 4: run `lattice-bot migrate`"]});
        assert!(reached(Wait::Standby, &old_schema).unwrap_err().contains("schema 3 is behind 4"));
        let leader =
            json!({"role": "leader", "gateway": "connected", "ready_as_standby": false, "problems": []});
        assert_eq!(reached(Wait::Leader, &leader), Ok(()));
        assert!(reached(Wait::Standby, &leader).unwrap_err().contains("leads"));
        let reconnecting = json!({"role": "leader", "gateway": "disconnected", "problems": []});
        assert!(reached(Wait::Leader, &reconnecting).is_err());
    }
}
