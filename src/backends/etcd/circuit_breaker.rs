//! `CircuitBreakerStore` for `EtcdStore`: a read, then a write guarded by
//! the key's revision (a failed guard returns the winner's state). Written
//! states carry a lease as their TTL. A poll reads its batch with one
//! read-only transaction per [`TXN_READS`] keys.
//!
//! etcd has no server clock: open times use the store's clock (the system
//! clock by default), so keep instances NTP-synchronised.

use etcd_client::{GetResponse, Txn, TxnOp, TxnOpResponse};

use super::EtcdStore;
use super::txn::Guarded;
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::circuit_breaker::store::{decode, encode, next_version, state_key};
use crate::layers::circuit_breaker::{
    CircuitBreakerStore, Loaded, Publication, Published, Versioned,
};

/// Reads in one transaction: etcd's default `--max-txn-ops`.
const TXN_READS: usize = 128;

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

    async fn load_many(&self, ids: &[&str]) -> Result<Vec<Loaded>, StoreError> {
        let mut loaded = Vec::with_capacity(ids.len());
        for batch in ids.chunks(TXN_READS) {
            let reads: Vec<TxnOp> = batch
                .iter()
                .map(|id| TxnOp::get(state_key(self.keyspace(), id), None))
                .collect();
            let txn = Txn::new().and_then(reads);
            let resp = self.call(|mut c| async move { c.txn(txn).await }).await?;
            let now_us = self.clock().now_micros();
            let answers = resp.op_responses();
            if answers.len() != batch.len() {
                return Err(StoreError::Protocol(format!(
                    "etcd: {} reads answered for {}",
                    answers.len(),
                    batch.len()
                )));
            }
            for answer in answers {
                let TxnOpResponse::Get(get) = answer else {
                    return Err(StoreError::Protocol(
                        "etcd: a read answered as a write".into(),
                    ));
                };
                loaded.push(read(&get, now_us).map(|(state, _)| state));
            }
        }
        Ok(loaded)
    }

    async fn publish(&self, id: &str, write: Publication) -> Result<Published, StoreError> {
        let key = state_key(self.keyspace(), id);
        let now_us = self.clock().now_micros();
        let (current, revision) = read(&self.get(&key).await?, now_us)?;
        if let Some(current) = current
            && current.version != write.expected
        {
            return Ok(Published::Conflict(Some(current)));
        }
        let version = next_version(write.expected, now_us);
        let value = encode(version, write.writer, &write.next, now_us);
        match self
            .put_at(&key, revision, value.as_bytes(), write.next.ttl())
            .await?
        {
            Guarded::Applied => Ok(Published::Applied(version)),
            Guarded::Moved(get) => Ok(Published::Conflict(
                read(&get, self.clock().now_micros())?.0,
            )),
        }
    }
}
