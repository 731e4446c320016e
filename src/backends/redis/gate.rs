//! Failing fast while a standalone server is known to be down.
//!
//! A call that times out or loses its connection, while no other call
//! succeeded since it started, marks the server down. Until it is reached
//! again every call fails at once with [`StoreError::Down`], so the
//! caller's failure policy applies without waiting: no request sits
//! behind a frozen server or a reconnect, and nothing queues on a
//! connection that cannot answer. One background probe per store tries
//! every [`PROBE_EVERY`] to reach the server: a `PING` on the current
//! connection (a frozen server that wakes up keeps it) and, beside it, a
//! fresh connection, both bounded by the per-call timeout. The first that
//! answers is kept and calls go through again.
//!
//! ```no_run
//! # async fn run() -> Result<(), battlement::StoreError> {
//! use battlement::backends::{Backend, RedisStore};
//! let redis = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! // Redis is killed: the call that sees it fails, and the next ones fail
//! // at once (`StoreError::Down`) until the background probe reconnects.
//! assert!(redis.ping().await.is_err());
//! assert!(redis.ping().await.is_err());
//! # Ok(()) }
//! ```
//!
//! A Cluster is not gated: its client reaches each node on its own, and
//! one node down must not fail the keys of the others.

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::{Connection, Inner, map_error, open_standalone};
use crate::error::StoreError;

/// How long the probe waits between two attempts at reaching the server.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(100);

/// Whether the server is known down, and the count of successful calls
/// (to tell a call's failure from a failure of one call among many).
#[derive(Debug, Default)]
pub(super) struct Gate {
    down: AtomicBool,
    successes: AtomicU64,
}

/// What a call saw of the gate when it started.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ticket(u64);

impl Gate {
    /// A ticket for a call, or the error it fails with at once.
    pub(super) fn enter(&self) -> Result<Ticket, StoreError> {
        if self.down.load(Ordering::Acquire) {
            return Err(StoreError::Down);
        }
        Ok(Ticket(self.successes.load(Ordering::Relaxed)))
    }

    /// A call answered.
    pub(super) fn succeeded(&self) {
        self.successes.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `err`, from a call that started with `ticket`, marks the
    /// server down: a timeout or a lost connection, with no success since.
    fn trips(&self, ticket: Ticket, err: &StoreError) -> bool {
        err.is_transient() && self.successes.load(Ordering::Relaxed) == ticket.0
    }
}

/// Marks `inner`'s server down after `err` if it says so, starting the
/// probe (one per store) on the caller's runtime.
pub(super) fn on_error(inner: &std::sync::Arc<Inner>, ticket: Ticket, err: &StoreError) {
    let gate = &inner.gate;
    if inner.config.is_cluster() || !gate.trips(ticket, err) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if gate
        .down
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        tracing::warn!(error = %err, "redis down: calls fail at once until it answers again");
        runtime.spawn(probe(std::sync::Arc::downgrade(inner)));
    }
}

/// Tries to reach the server until it answers (then lifts the gate), the
/// store is dropped, or it is closed.
async fn probe(store: Weak<Inner>) {
    loop {
        let Some(inner) = store.upgrade() else { return };
        let current = match inner.conn.read() {
            Ok(conn) => conn.clone(),
            Err(_) => return,
        };
        // Closed: calls fail with `Closed` before they reach the gate.
        let Some(current) = current else { return };
        let timeout = inner.timeout;
        let fresh = async {
            let conn = tokio::time::timeout(timeout, open_standalone(&inner.config, timeout))
                .await
                .map_err(|_| StoreError::Timeout(timeout))??;
            ping(conn.clone(), timeout).await.map(|()| conn)
        };
        let (kept, fresh) = tokio::join!(ping(current, timeout), fresh);
        let reached = match (kept, fresh) {
            (Ok(()), _) => true,
            (Err(_), Ok(conn)) => match inner.conn.write() {
                Ok(mut slot) if slot.is_some() => {
                    *slot = Some(conn);
                    true
                }
                _ => return,
            },
            (Err(_), Err(_)) => false,
        };
        if reached {
            inner.gate.succeeded();
            inner.gate.down.store(false, Ordering::Release);
            tracing::info!("redis reached again");
            return;
        }
        drop(inner);
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// One `PING` on `conn`, within `timeout`.
async fn ping(mut conn: Connection, timeout: Duration) -> Result<(), StoreError> {
    let cmd = redis::cmd("PING");
    match tokio::time::timeout(timeout, cmd.query_async::<String>(&mut conn)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(map_error(e, timeout)),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}
