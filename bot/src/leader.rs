//! The leader lock: only one instance per shard talks to the gateway, so two running bots never
//! answer twice. Each shard (`SHARD_ID`) has a lock of its own, so each shard hands over on its own.
//!
//! A session-level Postgres advisory lock on a dedicated connection (not the pool). A second
//! instance stands by, asking for the lock every [`STANDBY_POLL`] on its own connection (it never
//! waits inside Postgres, so it cannot take the lock by surprise), and takes over when the holder
//! exits or dies; the successor then resumes the stored session.
//!
//! **Fencing.** The holder confirms the lock every [`CONFIRM_EVERY`] on the lock connection and
//! writes its session checkpoint there (a write that succeeds proves the session, hence the lock,
//! is alive). One confirmation that fails or takes longer than [`CONFIRM_TIMEOUT`] means the lock
//! may be gone: the holder steps down at once and stands by again. The lock connection asks the
//! server for TCP keepalives, so a holder that vanished (host down, network cut) frees the lock
//! within [`KEEPALIVE_LOSS`] even though no FIN ever arrives.

use std::{sync::Arc, time::Duration};

use sqlx::{Connection, PgConnection};
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{config::DbConfig, db};

/// "lattice" + 1 in ASCII; distinct from sqlx's migration lock, which hashes the database name.
/// Shard 0's key (the only shard of a bot that does not shard, and of releases built before sharding).
pub const LEADER_LOCK_KEY: i64 = 0x6c61_7474_6963_6501;

/// The advisory lock key of shard `shard_id`: shard 0 keeps [`LEADER_LOCK_KEY`], so a handover
/// between a release built before sharding and one after it still excludes the two.
pub fn lock_key(shard_id: u32) -> i64 {
    LEADER_LOCK_KEY + (i64::from(shard_id) << 8)
}
/// How often a standby asks for the lock.
pub const STANDBY_POLL: Duration = Duration::from_millis(50);
/// How often the holder confirms the lock.
pub const CONFIRM_EVERY: Duration = Duration::from_millis(250);
/// A confirmation slower than this counts as failed.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the holder writes its checkpoint (and heartbeat).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Server-side keepalive: idle seconds, probe interval, probes. A vanished holder's session (and
/// lock) ends after about idle + interval × probes.
const KEEPALIVE: [(&str, &str); 3] =
    [("tcp_keepalives_idle", "5"), ("tcp_keepalives_interval", "2"), ("tcp_keepalives_count", "3")];
pub const KEEPALIVE_LOSS: Duration = Duration::from_secs(11);

async fn connect(db: &DbConfig) -> Result<PgConnection, sqlx::Error> {
    let options = db.options.clone().options(KEEPALIVE);
    tokio::time::timeout(Duration::from_secs(3), PgConnection::connect_with(&options))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
}

async fn try_lock(conn: &mut PgConnection, shard_id: u32) -> Result<bool, sqlx::Error> {
    let q = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(lock_key(shard_id)).fetch_one(conn);
    tokio::time::timeout(CONFIRM_TIMEOUT, q).await.map_err(|_| sqlx::Error::PoolTimedOut)?
}

/// This instance holds the leader lock of its shard.
pub struct Leadership {
    conn: PgConnection,
    /// `(shard id, shard count)`.
    shard: (u32, u32),
}

impl Leadership {
    /// Waits until this instance holds shard `shard_id`'s lock. `on_standby` runs each time another
    /// instance is found holding it.
    pub async fn acquire(db: &DbConfig, shard: (u32, u32), mut on_standby: impl FnMut()) -> Self {
        let shard_id = shard.0;
        let mut told = false;
        let mut conn: Option<PgConnection> = None;
        loop {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match connect(db).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach Postgres for the leader lock; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            match try_lock(c, shard_id).await {
                Ok(true) => return Self { conn: conn.take().expect("connected"), shard },
                Ok(false) => {
                    on_standby();
                    if !told {
                        told = true;
                        tracing::info!("another instance holds the gateway; standing by");
                    }
                    tokio::time::sleep(STANDBY_POLL).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach Postgres for the leader lock; retrying");
                    conn = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Keeps confirming the lock in the background, writing `checkpoint()` every
    /// [`CHECKPOINT_EVERY`] (with the leader heartbeat while `live()`); `lost` fires on the first
    /// confirmation that fails.
    pub fn keep(
        mut self,
        checkpoint: Arc<dyn Fn() -> Option<db::Checkpoint> + Send + Sync>,
        live: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> LeaderGuard {
        let (release_tx, mut release_rx) = oneshot::channel::<Option<db::Checkpoint>>();
        let (lost_tx, lost) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CONFIRM_EVERY);
            let mut last_write = Instant::now() - CHECKPOINT_EVERY;
            let mut written_session: Option<String> = None;
            loop {
                tokio::select! {
                    last = &mut release_rx => {
                        if let Ok(Some(c)) = last {
                            let stored = tokio::time::timeout(
                                Duration::from_secs(2),
                                db::store_checkpoint(&mut self.conn, self.shard, &c, false),
                            )
                            .await;
                            if !matches!(stored, Ok(Ok(()))) {
                                tracing::warn!("could not store the gateway session; the next leader identifies afresh");
                            }
                        }
                        self.release().await;
                        return;
                    }
                    _ = tick.tick() => {
                        let current = checkpoint();
                        // A new session is written at once: a successor must not miss it.
                        let new_session = current.as_ref().map(|c| &c.session_id) != written_session.as_ref();
                        let confirmed = if new_session || last_write.elapsed() >= CHECKPOINT_EVERY {
                            last_write = Instant::now();
                            written_session = current.as_ref().map(|c| c.session_id.clone());
                            let beat = live();
                            let write = async {
                                match current {
                                    Some(c) => db::store_checkpoint(&mut self.conn, self.shard, &c, beat).await,
                                    None if beat => db::leader_beat(&mut self.conn, self.shard.0).await,
                                    None => sqlx::query("SELECT 1").execute(&mut self.conn).await.map(drop),
                                }
                            };
                            tokio::time::timeout(CONFIRM_TIMEOUT, write).await
                        } else {
                            let ping = sqlx::query("SELECT 1").execute(&mut self.conn);
                            tokio::time::timeout(CONFIRM_TIMEOUT, ping).await.map(|r| r.map(drop))
                        };
                        if !matches!(confirmed, Ok(Ok(()))) {
                            tracing::error!("cannot confirm the leader lock; stepping down");
                            let _ = lost_tx.send(true);
                            // Dropping the connection ends the session, so the lock is surely gone.
                            return;
                        }
                    }
                }
            }
        });
        LeaderGuard { release: release_tx, task, lost }
    }

    /// Releases the lock so a standby takes over at once.
    async fn release(mut self) {
        let key = lock_key(self.shard.0);
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut self.conn).await;
        let _ = self.conn.close().await;
    }
}

/// The lock held in the background; `lost` turns true when it can no longer be confirmed.
pub struct LeaderGuard {
    release: oneshot::Sender<Option<db::Checkpoint>>,
    task: JoinHandle<()>,
    pub lost: watch::Receiver<bool>,
}

impl LeaderGuard {
    /// Stores the final checkpoint (when given), releases the lock and waits until it is gone.
    pub async fn release(self, last: Option<db::Checkpoint>) {
        let _ = self.release.send(last);
        let _ = self.task.await;
    }
}
