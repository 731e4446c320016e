//! `CircuitBreakerStore` for `EtcdStore`: a read, then a write guarded by
//! the key's revision (a failed guard returns the winner's state). Written
//! states carry a lease as their TTL.
//!
//! etcd has no server clock: open times use the store's clock (the system
//! clock by default), so keep instances NTP-synchronised.

use etcd_client::GetResponse;

use super::EtcdStore;
use super::txn::Guarded;
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::circuit_breaker::store::{decode, encode, next_version, state_key};
use crate::layers::circuit_breaker::{CircuitBreakerStore, Published, SharedState, Versioned};

/// The state and revision of a key (revision 0: absent).
fn read(resp: &GetResponse, now_us: u64) -> Result<(Option<Versioned>, i64), StoreError> {
    let Some(kv) = resp.kvs().first() else {
        return Ok((None, 0));
    };
    let value = kv.value_str().unwrap_or_default();
    let state = decode(value, now_us)
        .ok_or_else(|| StoreError::Protocol(format!("unreadable breaker state {value:?}")))?;
    Ok((Some(state), kv.mod_revision()))
}

impl CircuitBreakerStore for EtcdStore {
    async fn load(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        let key = state_key(self.keyspace(), id);
        Ok(read(&self.get(&key).await?, self.clock().now_micros())?.0)
    }

    async fn publish(
        &self,
        id: &str,
        expected: u64,
        writer: u64,
        next: SharedState,
    ) -> Result<Published, StoreError> {
        let key = state_key(self.keyspace(), id);
        let now_us = self.clock().now_micros();
        let (current, revision) = read(&self.get(&key).await?, now_us)?;
        if let Some(current) = current
            && current.version != expected
        {
            return Ok(Published::Conflict(Some(current)));
        }
        let version = next_version(expected, now_us);
        let value = encode(version, writer, &next, now_us);
        match self
            .put_at(&key, revision, value.as_bytes(), next.ttl())
            .await?
        {
            Guarded::Applied => Ok(Published::Applied(version)),
            Guarded::Moved(get) => Ok(Published::Conflict(
                read(&get, self.clock().now_micros())?.0,
            )),
        }
    }
}
