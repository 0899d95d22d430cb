//! Postgres: embedded migrations, episodic memory, reply claims and prompt audits.

use std::time::Duration;

use anyhow::{Context as _, Result};
use sqlx::{
    migrate::{Migrate, Migrator},
    postgres::{PgPool, PgPoolOptions},
    Connection, PgConnection, Row,
};

use crate::config::DbConfig;

/// The migrations in `bot/migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The marker line that declares a migration safe for code built before it.
pub const BACKWARD_COMPATIBLE_MARKER: &str = "-- lattice: backward-compatible";

/// The embedded migration head and the versions declared backward compatible.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchemaInfo {
    pub head: i64,
    pub backward_compatible: Vec<i64>,
}

pub fn schema_info() -> SchemaInfo {
    let head = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let backward_compatible = MIGRATOR
        .iter()
        .filter(|m| m.sql.lines().any(|l| l.trim() == BACKWARD_COMPATIBLE_MARKER))
        .map(|m| m.version)
        .collect();
    SchemaInfo { head, backward_compatible }
}

/// Applies pending migrations on a throwaway connection and returns `(version, description)` of each
/// one it applied. Two concurrent runs serialise on sqlx's advisory lock; the second applies nothing.
pub async fn migrate(db: &DbConfig) -> Result<Vec<(i64, String)>> {
    let mut conn = PgConnection::connect_with(&db.options)
        .await
        .with_context(|| format!("connecting to Postgres at {}", db.display))?;
    let result = migrate_on(&mut conn).await;
    // Closing the session also releases the advisory lock if sqlx left it held after an error.
    let _ = conn.close().await;
    result
}

async fn migrate_on(conn: &mut PgConnection) -> Result<Vec<(i64, String)>> {
    conn.lock().await.context("taking the migration lock")?;
    let result = async {
        conn.ensure_migrations_table().await?;
        let before: Vec<i64> = conn.list_applied_migrations().await?.into_iter().map(|m| m.version).collect();
        let mut migrator = sqlx::migrate!("./migrations");
        migrator.set_locking(false);
        migrator.run(&mut *conn).await?;
        let applied = MIGRATOR
            .iter()
            .filter(|m| !before.contains(&m.version))
            .map(|m| (m.version, m.description.to_string()))
            .collect();
        anyhow::Ok(applied)
    }
    .await;
    let _ = conn.unlock().await;
    result
}

/// A lazily connecting pool: the bot starts (and reports unhealthy) while Postgres is down, and
/// picks up again by itself when it is back.
pub fn pool(db: &DbConfig) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(db.options.clone())
}

/// The highest successfully applied migration, or 0 on an empty database.
pub async fn schema_version(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(0);
    }
    sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
}

/// What a stored message is to the conversation (the `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Anyone's message, other bots' included: context as a `user` turn with the author's name.
    Message,
    /// Lattice's own answer: context as an `assistant` turn.
    Answer,
    /// Lattice's apology or notice: never context.
    Notice,
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Message => "message",
            MessageKind::Answer => "answer",
            MessageKind::Notice => "notice",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "answer" => MessageKind::Answer,
            "notice" => MessageKind::Notice,
            _ => MessageKind::Message,
        }
    }
}

/// A message as the episodic memory holds it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: u64,
    pub channel_id: u64,
    pub author_id: u64,
    pub author_name: String,
    pub is_bot: bool,
    pub content: String,
    pub kind: MessageKind,
}

/// Stores a message; `false` when it was already stored. Storing Lattice's own post as an answer
/// or notice marks it so even when the gateway's echo of it was stored first.
pub async fn store_message(pool: &PgPool, m: &StoredMessage) -> Result<bool, sqlx::Error> {
    let inserted: Option<bool> = sqlx::query_scalar(
        "INSERT INTO messages (id, channel_id, author_id, author_name, is_bot, content, kind)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind
           WHERE messages.kind = 'message' AND EXCLUDED.kind <> 'message'
         RETURNING (xmax = 0)",
    )
    .bind(m.id as i64)
    .bind(m.channel_id as i64)
    .bind(m.author_id as i64)
    .bind(&m.author_name)
    .bind(m.is_bot)
    .bind(&m.content)
    .bind(m.kind.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(inserted == Some(true))
}

/// Whether an error may go away by itself (Postgres restarting, a lost connection, a full pool),
/// so retrying makes sense. Anything else (bad data, a constraint) fails the same way every time.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        // SQLSTATE classes: 08 connection exception, 53 insufficient resources, 57P operator
        // intervention (shutdown, starting up); 40001/40P01 serialization failure, deadlock.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") || c == "40001" || c == "40P01"
        }),
        _ => false,
    }
}

/// Claims the right to answer a message for `lease`; `false` when it is answered or another
/// claim's lease still runs (a repeated event). An expired, unanswered claim is taken over: its
/// holder died mid-reply.
pub async fn claim_reply(
    pool: &PgPool,
    shard_id: u32,
    message_id: u64,
    lease: Duration,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO handled_messages (message_id, lease_until, shard_id)
         VALUES ($1, now() + make_interval(secs => $2), $3)
         ON CONFLICT (message_id) DO UPDATE SET lease_until = EXCLUDED.lease_until, handled_at = now()
           WHERE handled_messages.replied_at IS NULL AND handled_messages.lease_until < now()",
    )
    .bind(message_id as i64)
    .bind(lease.as_secs_f64())
    .bind(shard_id as i32)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Extends a claim this instance holds while its reply is still being worked on.
pub async fn renew_lease(pool: &PgPool, message_id: u64, lease: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE handled_messages SET lease_until = now() + make_interval(secs => $2)
         WHERE message_id = $1 AND replied_at IS NULL",
    )
    .bind(message_id as i64)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks a claim done: the reply is posted (or given up on for good).
pub async fn mark_replied(pool: &PgPool, message_id: u64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE handled_messages SET replied_at = now() WHERE message_id = $1")
        .bind(message_id as i64)
        .execute(pool)
        .await?;
    Ok(())
}

/// Stored messages of shard `shard_id` whose claim expired unanswered (their holder died), oldest first.
pub async fn expired_claims(
    pool: &PgPool,
    shard_id: u32,
    limit: i64,
) -> Result<Vec<StoredMessage>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT m.id, m.channel_id, m.author_id, m.author_name, m.is_bot, m.content, m.kind
         FROM handled_messages h JOIN messages m ON m.id = h.message_id
         WHERE h.shard_id = $2 AND h.replied_at IS NULL AND h.lease_until < now()
         ORDER BY h.message_id LIMIT $1",
    )
    .bind(limit)
    .bind(shard_id as i32)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(stored_row).collect())
}

fn stored_row(r: &sqlx::postgres::PgRow) -> StoredMessage {
    StoredMessage {
        id: r.get::<i64, _>(0) as u64,
        channel_id: r.get::<i64, _>(1) as u64,
        author_id: r.get::<i64, _>(2) as u64,
        author_name: r.get(3),
        is_bot: r.get(4),
        content: r.get(5),
        kind: MessageKind::parse(r.get(6)),
    }
}

/// The last `limit` messages of a channel up to and including `up_to`, oldest first, notices left out.
pub async fn recent_messages(
    pool: &PgPool,
    channel_id: u64,
    up_to: u64,
    limit: u32,
) -> Result<Vec<StoredMessage>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, channel_id, author_id, author_name, is_bot, content, kind FROM messages
         WHERE channel_id = $1 AND id <= $2 AND kind <> 'notice' ORDER BY id DESC LIMIT $3",
    )
    .bind(channel_id as i64)
    .bind(up_to as i64)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    let mut out: Vec<StoredMessage> = rows.iter().map(stored_row).collect();
    out.reverse();
    Ok(out)
}

/// One LLM call, as recorded in `prompt_audits`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PromptAudit {
    pub message_id: u64,
    pub provider: String,
    pub model: String,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub cost_usd: Option<f64>,
    pub latency_ms: i32,
    pub finish_reason: Option<String>,
    pub error: Option<String>,
}

pub async fn record_audit(pool: &PgPool, a: &PromptAudit) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO prompt_audits
           (message_id, provider, model, prompt_tokens, completion_tokens, cost_usd, latency_ms,
            finish_reason, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(a.message_id as i64)
    .bind(&a.provider)
    .bind(&a.model)
    .bind(a.prompt_tokens)
    .bind(a.completion_tokens)
    .bind(a.cost_usd)
    .bind(a.latency_ms)
    .bind(&a.finish_reason)
    .bind(&a.error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Where a gateway session stands: what a successor needs to resume it, or to backfill.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub session_id: String,
    /// The last sequence below which every event is stored (a successor resumes after it).
    pub sequence: u64,
    pub resume_url: Option<String>,
    /// The newest main-channel message id below which every message is stored.
    pub last_message_id: Option<u64>,
}

/// Stores the session checkpoint. The leader writes it on its lock connection, so a write that
/// succeeds also proves the lock is still held; `leader_live` also records the leader's heartbeat.
pub async fn store_checkpoint(
    conn: &mut PgConnection,
    (shard_id, shard_count): (u32, u32),
    c: &Checkpoint,
    leader_live: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH beat AS (
           INSERT INTO gateway_leader (id, seen_at) SELECT $1 + 1, now() WHERE $6
           ON CONFLICT (id) DO UPDATE SET seen_at = now()
         )
         INSERT INTO gateway_sessions
           (shard_id, session_id, sequence, resume_url, last_message_id, stored_at, shard_count)
         VALUES ($1, $2, $3, $4, $5, now(), $7)
         ON CONFLICT (shard_id) DO UPDATE SET session_id = EXCLUDED.session_id,
           shard_count = EXCLUDED.shard_count,
           sequence = EXCLUDED.sequence, resume_url = EXCLUDED.resume_url,
           last_message_id = COALESCE(EXCLUDED.last_message_id, gateway_sessions.last_message_id),
           stored_at = now()",
    )
    .bind(shard_id as i32)
    .bind(&c.session_id)
    .bind(c.sequence as i64)
    .bind(&c.resume_url)
    .bind(c.last_message_id.map(|v| v as i64))
    .bind(leader_live)
    .bind(shard_count as i32)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the leader's heartbeat alone (no session yet, gateway live). Shard N's row is id N + 1.
pub async fn leader_beat(conn: &mut PgConnection, shard_id: u32) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO gateway_leader (id, seen_at) VALUES ($1 + 1, now()) ON CONFLICT (id) DO UPDATE SET seen_at = now()")
        .bind(shard_id as i32)
        .execute(conn)
        .await?;
    Ok(())
}

/// The stored checkpoint of shard `shard_id` of `shard_count`: `(checkpoint, resumable)`; a session
/// older than a few minutes is no longer resumable at Discord, nor one of another shard count (its
/// guilds were another set), but its `last_message_id` still says where to backfill from.
pub async fn load_checkpoint(
    pool: &PgPool,
    (shard_id, shard_count): (u32, u32),
) -> Result<Option<(Checkpoint, bool)>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT session_id, sequence, resume_url, last_message_id,
           stored_at > now() - interval '5 minutes' AND shard_count = $2
         FROM gateway_sessions WHERE shard_id = $1",
    )
    .bind(shard_id as i32)
    .bind(shard_count as i32)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| {
        let c = Checkpoint {
            session_id: r.get(0),
            sequence: r.get::<i64, _>(1) as u64,
            resume_url: r.get(2),
            last_message_id: r.get::<Option<i64>, _>(3).map(|v| v as u64),
        };
        (c, r.get(4))
    }))
}

/// Seconds since shard `shard_id`'s leader last said its gateway was live; `None` when none ever did.
pub async fn leader_silent_secs(pool: &PgPool, shard_id: u32) -> Result<Option<f64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM now() - seen_at)::float8 FROM gateway_leader WHERE id = $1 + 1",
    )
    .bind(shard_id as i32)
    .fetch_optional(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_that_can_pass_are_transient() {
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(is_transient(&sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into())));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
        assert!(!is_transient(&sqlx::Error::ColumnNotFound("kind".into())));
    }

    #[test]
    fn schema_info_reports_head_and_marked_migrations() {
        let info = schema_info();
        assert_eq!(info.head, MIGRATOR.iter().map(|m| m.version).max().unwrap());
        assert!(info.backward_compatible.contains(&2));
        assert!(info.backward_compatible.contains(&3));
        assert!(info.backward_compatible.contains(&4));
        assert!(info.backward_compatible.contains(&5));
        assert!(!info.backward_compatible.contains(&1));
    }
}
