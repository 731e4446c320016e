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

/// A cached lease is reused when it outlives the key by at most this much.
const SLACK: Duration = Duration::from_secs(2);

impl EtcdStore {
    /// A lease that expires no earlier than `ttl` from now and at most
    /// [`SLACK`] later (etcd rounds TTLs up to whole seconds).
    pub(crate) async fn lease_for(&self, ttl: Duration) -> Result<i64, StoreError> {
        let now = self.clock().now_micros();
        let needed = now.saturating_add(ttl.as_micros() as u64);
        let slack = SLACK.as_micros() as u64;
        if let Ok(last) = self.inner.leases.last.lock()
            && let Some((id, expires)) = *last
            && expires >= needed
            && expires <= needed + slack
        {
            return Ok(id);
        }
        let seconds = i64::try_from(ttl.as_secs() + 2).unwrap_or(i64::MAX);
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
