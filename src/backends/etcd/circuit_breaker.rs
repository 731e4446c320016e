//! `CircuitBreakerStore` for `EtcdStore`: a read, then a transaction that
//! writes only if the key's revision is unchanged (its else-branch returns
//! the winner's state). Written states carry a lease as their TTL.
//!
//! etcd has no server clock: open times use the store's clock (the system
//! clock by default), so keep instances NTP-synchronised.

use etcd_client::{Compare, CompareOp, GetResponse, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::EtcdStore;
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::circuit_breaker::store::{decode, encode, state_key, ttl};
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
        let resp = self
            .call(|mut c| async move { c.get(key, None).await })
            .await?;
        Ok(read(&resp, self.clock().now_micros())?.0)
    }

    async fn publish(
        &self,
        id: &str,
        expected: u64,
        next: SharedState,
    ) -> Result<Published, StoreError> {
        let key = state_key(self.keyspace(), id);
        let k = key.clone();
        let first = self
            .call(|mut c| async move { c.get(k, None).await })
            .await?;
        let now_us = self.clock().now_micros();
        let (current, revision) = read(&first, now_us)?;
        if let Some(current) = current
            && current.version != expected
        {
            return Ok(Published::Conflict(Some(current)));
        }
        let version = expected + 1;
        let open_until =
            now_us.saturating_add(u64::try_from(next.open_for.as_micros()).unwrap_or(0));
        let value = encode(next.state, version, open_until, next.reopens);
        let guard = if revision == 0 {
            Compare::create_revision(key.as_str(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.as_str(), CompareOp::Equal, revision)
        };
        let mut forgot = false;
        loop {
            let lease = self.lease_for(ttl(&next)).await?;
            let txn = Txn::new()
                .when([guard.clone()])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = match self.call(|mut c| async move { c.txn(txn).await }).await {
                Ok(resp) => resp,
                // The cached lease expired on the server: get a new one once.
                Err(StoreError::Backend(msg)) if msg.contains("lease not found") && !forgot => {
                    self.forget_lease();
                    forgot = true;
                    continue;
                }
                Err(err) => return Err(err),
            };
            if resp.succeeded() {
                return Ok(Published::Applied(version));
            }
            return match resp.op_responses().first() {
                Some(TxnOpResponse::Get(get)) => {
                    Ok(Published::Conflict(read(get, self.clock().now_micros())?.0))
                }
                _ => Err(StoreError::Protocol(
                    "etcd: txn else-branch without get".into(),
                )),
            };
        }
    }
}
