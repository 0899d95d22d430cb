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

/// Claims the right to answer a message; `false` when it was claimed before (a repeated event).
pub async fn claim_reply(pool: &PgPool, message_id: u64) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("INSERT INTO handled_messages (message_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(message_id as i64)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
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
    let mut out: Vec<StoredMessage> = rows
        .into_iter()
        .map(|r| StoredMessage {
            id: r.get::<i64, _>(0) as u64,
            channel_id: r.get::<i64, _>(1) as u64,
            author_id: r.get::<i64, _>(2) as u64,
            author_name: r.get(3),
            is_bot: r.get(4),
            content: r.get(5),
            kind: MessageKind::parse(r.get(6)),
        })
        .collect();
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

/// Stores the gateway session on shutdown so a successor can resume it.
pub async fn store_session(
    pool: &PgPool,
    shard_id: u32,
    session_id: &str,
    sequence: u64,
    resume_url: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO gateway_sessions (shard_id, session_id, sequence, resume_url, stored_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (shard_id) DO UPDATE SET session_id = EXCLUDED.session_id,
           sequence = EXCLUDED.sequence, resume_url = EXCLUDED.resume_url, stored_at = now()",
    )
    .bind(shard_id as i32)
    .bind(session_id)
    .bind(sequence as i64)
    .bind(resume_url)
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes (and removes) a session stored by a predecessor in the last few minutes.
pub async fn take_session(
    pool: &PgPool,
    shard_id: u32,
) -> Result<Option<(String, u64, Option<String>)>, sqlx::Error> {
    let row = sqlx::query(
        "DELETE FROM gateway_sessions WHERE shard_id = $1 AND stored_at > now() - interval '5 minutes'
         RETURNING session_id, sequence, resume_url",
    )
    .bind(shard_id as i32)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| (r.get(0), r.get::<i64, _>(1) as u64, r.get(2))))
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
        assert!(!info.backward_compatible.contains(&1));
    }
}
