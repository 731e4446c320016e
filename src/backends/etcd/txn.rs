//! Revision-guarded writes, shared by every concern: a write applies only
//! if the key is still at the revision the caller read (0: absent), and a
//! failed guard returns the key's current state in the same round trip.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetResponse, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::EtcdStore;
use crate::error::StoreError;

/// What a guarded write found.
pub(crate) enum Guarded {
    /// The write applied.
    Applied,
    /// The key moved on; its current state.
    Moved(GetResponse),
}

fn guard(key: &str, revision: i64) -> Compare {
    if revision == 0 {
        Compare::create_revision(key, CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key, CompareOp::Equal, revision)
    }
}

impl EtcdStore {
    /// Reads `key`.
    pub(crate) async fn get(&self, key: &str) -> Result<GetResponse, StoreError> {
        let k = key.to_owned();
        self.call(|mut c| async move { c.get(k, None).await }).await
    }

    /// Puts `value` with a lease of at least `ttl` if `key` is at
    /// `revision`.
    pub(crate) async fn put_at(
        &self,
        key: &str,
        revision: i64,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Guarded, StoreError> {
        let mut renewed = false;
        loop {
            let lease = self.lease_for(ttl).await?;
            let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
            match self.guarded(key, revision, put).await {
                // The cached lease expired on the server: get a new one, once.
                Err(StoreError::Backend(msg)) if msg.contains("lease not found") && !renewed => {
                    self.forget_lease();
                    renewed = true;
                }
                other => return other,
            }
        }
    }

    /// Deletes `key` if it is at `revision`.
    pub(crate) async fn delete_at(&self, key: &str, revision: i64) -> Result<Guarded, StoreError> {
        self.guarded(key, revision, TxnOp::delete(key, None)).await
    }

    async fn guarded(&self, key: &str, revision: i64, op: TxnOp) -> Result<Guarded, StoreError> {
        let txn = Txn::new()
            .when([guard(key, revision)])
            .and_then([op])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.call(|mut c| async move { c.txn(txn).await }).await?;
        if resp.succeeded() {
            return Ok(Guarded::Applied);
        }
        match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(get)) => Ok(Guarded::Moved(get)),
            _ => Err(StoreError::Protocol(
                "etcd: txn else-branch without get".into(),
            )),
        }
    }
}

/// What a write guarded on several keys found.
pub(crate) enum GuardedAll {
    /// Every write applied.
    Applied,
    /// Some key moved on; every key's current state, in order.
    Moved(Vec<GetResponse>),
}

impl EtcdStore {
    /// Reads every key of `keys` in one transaction (one revision).
    pub(crate) async fn get_all(&self, keys: &[String]) -> Result<Vec<GetResponse>, StoreError> {
        let txn = Txn::new().and_then(
            keys.iter()
                .map(|k| TxnOp::get(k.as_str(), None))
                .collect::<Vec<_>>(),
        );
        let resp = self.call(|mut c| async move { c.txn(txn).await }).await?;
        gets(resp.op_responses(), keys.len())
    }

    /// Puts every `(key, value, ttl)` of `writes`, each with a lease of at
    /// least its TTL, in one transaction that applies only if every key of
    /// `read` is still at the revision the caller read (0: absent).
    pub(crate) async fn put_all_at(
        &self,
        read: &[(&str, i64)],
        writes: &[(&str, String, Duration)],
    ) -> Result<GuardedAll, StoreError> {
        let mut renewed = false;
        loop {
            let mut puts = Vec::with_capacity(writes.len());
            for (key, value, ttl) in writes {
                let lease = self.lease_for(*ttl).await?;
                let options = Some(PutOptions::new().with_lease(lease));
                puts.push(TxnOp::put(*key, value.as_bytes(), options));
            }
            let txn = Txn::new()
                .when(
                    read.iter()
                        .map(|(key, revision)| guard(key, *revision))
                        .collect::<Vec<_>>(),
                )
                .and_then(puts)
                .or_else(
                    read.iter()
                        .map(|(key, _)| TxnOp::get(*key, None))
                        .collect::<Vec<_>>(),
                );
            match self.call(|mut c| async move { c.txn(txn).await }).await {
                // A cached lease expired on the server: get new ones, once.
                Err(StoreError::Backend(msg)) if msg.contains("lease not found") && !renewed => {
                    self.forget_lease();
                    renewed = true;
                }
                Err(err) => return Err(err),
                Ok(resp) if resp.succeeded() => return Ok(GuardedAll::Applied),
                Ok(resp) => return gets(resp.op_responses(), read.len()).map(GuardedAll::Moved),
            }
        }
    }
}

/// The `count` get responses of a transaction.
fn gets(responses: Vec<TxnOpResponse>, count: usize) -> Result<Vec<GetResponse>, StoreError> {
    let gets: Vec<GetResponse> = responses
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(get) => Some(get),
            _ => None,
        })
        .collect();
    if gets.len() != count {
        return Err(StoreError::Protocol(format!(
            "etcd: {} reads in a transaction of {count}",
            gets.len()
        )));
    }
    Ok(gets)
}
