//! The leader lock: only one instance talks to the gateway, so two running bots never answer twice.
//!
//! A session-level Postgres advisory lock on a dedicated connection (not the pool). A second
//! instance stands by until the holder exits, then takes over and resumes the stored session.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::{sync::oneshot, task::JoinHandle};

use crate::config::DbConfig;

/// "lattice" + 1 in ASCII; distinct from sqlx's migration lock, which hashes the database name.
pub const LEADER_LOCK_KEY: i64 = 0x6c61_7474_6963_6501;

pub struct Leadership {
    db: DbConfig,
    conn: Option<PgConnection>,
}

/// What a periodic check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    Held,
    /// Postgres is unreachable: no one can take the lock from us meanwhile.
    Unknown,
    /// Our session died and another instance took the lock.
    Lost,
}

async fn try_lock(db: &DbConfig) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = tokio::time::timeout(Duration::from_secs(3), PgConnection::connect_with(&db.options))
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEADER_LOCK_KEY)
        .fetch_one(&mut conn)
        .await?;
    if got {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

impl Leadership {
    /// Waits until this instance holds the lock. `on_standby` runs once if another instance holds it.
    pub async fn acquire(db: &DbConfig, mut on_standby: impl FnMut()) -> Self {
        let mut told = false;
        loop {
            match try_lock(db).await {
                Ok(Some(conn)) => return Self { db: db.clone(), conn: Some(conn) },
                Ok(None) => {
                    if !told {
                        told = true;
                        tracing::info!("another instance holds the gateway; standing by");
                        on_standby();
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach Postgres for the leader lock; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    pub async fn check(&mut self) -> Check {
        if let Some(conn) = self.conn.as_mut() {
            let alive =
                tokio::time::timeout(Duration::from_secs(3), sqlx::query("SELECT 1").execute(&mut *conn))
                    .await;
            if matches!(alive, Ok(Ok(_))) {
                return Check::Held;
            }
            tracing::warn!("the leader lock's connection is gone; re-acquiring");
            self.conn = None;
        }
        match try_lock(&self.db).await {
            Ok(Some(conn)) => {
                tracing::info!("leader lock re-acquired");
                self.conn = Some(conn);
                Check::Held
            }
            Ok(None) => Check::Lost,
            Err(_) => Check::Unknown,
        }
    }

    /// Keeps checking the lock in the background (so a slow database never stalls the gateway).
    pub fn keep(mut self) -> LeaderGuard {
        let (release_tx, mut release_rx) = oneshot::channel();
        let (lost_tx, lost) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = &mut release_rx => break,
                    _ = tick.tick() => {
                        if self.check().await == Check::Lost {
                            let _ = lost_tx.send(());
                            break;
                        }
                    }
                }
            }
            self.release().await;
        });
        LeaderGuard { release: release_tx, task, lost }
    }

    /// Releases the lock so a standby takes over at once.
    async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ =
                sqlx::query("SELECT pg_advisory_unlock($1)").bind(LEADER_LOCK_KEY).execute(&mut conn).await;
            let _ = conn.close().await;
        }
    }
}

/// The lock held in the background; `lost` fires if another instance took it.
pub struct LeaderGuard {
    release: oneshot::Sender<()>,
    task: JoinHandle<()>,
    pub lost: oneshot::Receiver<()>,
}

impl LeaderGuard {
    /// Releases the lock and waits until it is gone.
    pub async fn release(self) {
        let _ = self.release.send(());
        let _ = self.task.await;
    }
}
