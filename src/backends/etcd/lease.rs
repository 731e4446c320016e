//! Leases shared by keys that expire at about the same time, so that a
//! write does not cost a `LeaseGrant` each time.
//!
//! etcd expires leases on its own clock, so the cache tracks them with this
//! process's monotonic clock, never with the (possibly injected or skewed)
//! decision clock, and keeps a margin for the round trip.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::EtcdStore;
use crate::error::StoreError;

/// The last lease granted and when it expires here.
#[derive(Debug, Default)]
pub(crate) struct LeaseCache {
    last: Mutex<Option<(i64, Instant)>>,
}

/// A cached lease is reused when it outlives the key by at most this much
/// plus the key's own TTL: a key living somewhat longer than needed only
/// costs space, and it keeps the number of live leases small.
const SLACK: Duration = Duration::from_secs(2);

/// A cached lease must outlive the key by at least this much, so it cannot
/// expire between this check and the write that uses it.
const MARGIN: Duration = Duration::from_secs(1);

impl EtcdStore {
    /// A lease that expires no earlier than `ttl` (+ [`MARGIN`]) from now
    /// and at most `ttl` + [`SLACK`] later. New leases are granted for
    /// twice the TTL so that keys written soon after can share them.
    pub(crate) async fn lease_for(&self, ttl: Duration) -> Result<i64, StoreError> {
        let now = Instant::now();
        let needed = now + ttl + MARGIN;
        if let Ok(last) = self.inner.leases.last.lock()
            && let Some((id, expires)) = *last
            && expires >= needed
            && expires <= needed + SLACK + ttl
        {
            return Ok(id);
        }
        let seconds = i64::try_from(ttl.as_secs() * 2 + 2 + MARGIN.as_secs()).unwrap_or(i64::MAX);
        let granted = self
            .call(|mut c| async move { c.lease_grant(seconds, None).await })
            .await?;
        let lifetime = Duration::from_secs(u64::try_from(granted.ttl()).unwrap_or(0));
        if let Ok(mut last) = self.inner.leases.last.lock() {
            *last = Some((granted.id(), now + lifetime));
        }
        Ok(granted.id())
    }

    /// Forgets the cached lease (etcd no longer knows it).
    pub(crate) fn forget_lease(&self) {
        if let Ok(mut last) = self.inner.leases.last.lock() {
            *last = None;
        }
    }
}
