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

/// The last lease granted for each class of TTL, and when it expires here.
#[derive(Debug)]
pub(crate) struct LeaseCache {
    last: Mutex<[Option<(i64, Instant)>; CLASSES]>,
}

impl Default for LeaseCache {
    fn default() -> Self {
        Self {
            last: Mutex::new([None; CLASSES]),
        }
    }
}

/// TTL classes: up to 1 s, 2 s, 4 s, ... 2^63 s. Keys whose TTLs differ a
/// lot (a lock of a minute and a retention of a day; rate-limit keys of a
/// per-second and a per-hour policy) would otherwise take turns replacing
/// one cached lease, and grant a lease on almost every write.
const CLASSES: usize = 64;

/// The class of `ttl`: the power of two of seconds it rounds up to.
fn class(ttl: Duration) -> usize {
    ttl.as_secs()
        .max(1)
        .checked_next_power_of_two()
        .map_or(CLASSES - 1, |p| p.trailing_zeros() as usize)
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
    /// and at most `ttl` + [`SLACK`] later, cached per class of TTL. New
    /// leases are granted for twice the TTL so that keys written soon after
    /// can share them.
    pub(crate) async fn lease_for(&self, ttl: Duration) -> Result<i64, StoreError> {
        let now = Instant::now();
        let needed = now + ttl + MARGIN;
        let class = class(ttl);
        if let Ok(last) = self.inner.leases.last.lock()
            && let Some((id, expires)) = last[class]
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
            last[class] = Some((granted.id(), now + lifetime));
        }
        Ok(granted.id())
    }

    /// Forgets the cached leases (etcd no longer knows one of them).
    pub(crate) fn forget_lease(&self) {
        if let Ok(mut last) = self.inner.leases.last.lock() {
            *last = [None; CLASSES];
        }
    }
}
