//! Leases shared by keys that expire at about the same time, so that a
//! write does not cost a `LeaseGrant` each time.

use std::sync::Mutex;
use std::time::Duration;

use super::EtcdStore;
use crate::error::StoreError;

/// The last lease granted and when it expires (µs since the UNIX epoch).
#[derive(Debug, Default)]
pub(crate) struct LeaseCache {
    last: Mutex<Option<(i64, u64)>>,
}

/// A cached lease is reused when it outlives the key by at most this much
/// plus the key's own TTL: a key living somewhat longer than needed only
/// costs space, and it keeps the number of live leases small.
const SLACK: Duration = Duration::from_secs(2);

impl EtcdStore {
    /// A lease that expires no earlier than `ttl` from now and at most
    /// `ttl` + [`SLACK`] later. New leases are granted for twice the TTL
    /// so that keys written soon after can share them.
    pub(crate) async fn lease_for(&self, ttl: Duration) -> Result<i64, StoreError> {
        let now = self.clock().now_micros();
        let needed = now.saturating_add(ttl.as_micros() as u64);
        let slack = (SLACK + ttl).as_micros() as u64;
        if let Ok(last) = self.inner.leases.last.lock()
            && let Some((id, expires)) = *last
            && expires >= needed
            && expires <= needed.saturating_add(slack)
        {
            return Ok(id);
        }
        let seconds = i64::try_from(ttl.as_secs() * 2 + 2).unwrap_or(i64::MAX);
        let granted = self
            .call(|mut c| async move { c.lease_grant(seconds, None).await })
            .await?;
        let expires = now.saturating_add(u64::try_from(granted.ttl()).unwrap_or(0) * 1_000_000);
        if let Ok(mut last) = self.inner.leases.last.lock() {
            *last = Some((granted.id(), expires));
        }
        Ok(granted.id())
    }
}
