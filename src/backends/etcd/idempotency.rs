//! `IdempotencyStore` for `EtcdStore`: a read, then a write guarded by the
//! key's revision (a failed guard returns the winner's record). Records
//! carry a lease that outlives their logical expiry, which runs on the
//! store's clock (keep instances NTP-synchronised).

use std::borrow::Cow;
use std::time::Duration;

use etcd_client::GetResponse;

use super::EtcdStore;
use super::txn::Guarded;
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::idempotency::record::Unreadable;
use crate::layers::idempotency::store::state_key;
use crate::layers::idempotency::{
    Claim, ClaimToken, Claimant, Completion, Fingerprint, IdempotencyStore, Record,
};

/// Claims retried when the key changes between the read and the write.
const MAX_ATTEMPTS: u32 = 16;

/// The live record and the revision of a key (revision 0: absent).
fn read(resp: &GetResponse, now_us: u64) -> Result<(Option<Record>, i64), StoreError> {
    let Some(kv) = resp.kvs().first() else {
        return Ok((None, 0));
    };
    let record = Record::read(kv.value()).map_err(Unreadable::into_store_error)?;
    let live = (record.expires_us() > now_us).then_some(record);
    Ok((live, kv.mod_revision()))
}

impl EtcdStore {
    async fn record(&self, key: &str) -> Result<(Option<Record>, i64), StoreError> {
        read(&self.get(key).await?, self.clock().now_micros())
    }
}

impl IdempotencyStore for EtcdStore {
    async fn claim(&self, id: &str, claimant: Claimant<'_>) -> Result<Claim, StoreError> {
        let key = state_key(self.keyspace(), id);
        let (mut current, mut revision) = self.record(&key).await?;
        for _ in 0..MAX_ATTEMPTS {
            match current {
                Some(Record::InFlight { fingerprint, .. }) => {
                    return Ok(Claim::InFlight { fingerprint });
                }
                Some(Record::Completed {
                    fingerprint,
                    response,
                    ..
                }) => {
                    return Ok(Claim::Completed {
                        fingerprint,
                        response,
                    });
                }
                None => {}
            }
            let record = claimant.record(self.clock().now_micros());
            match self
                .put_at(&key, revision, &record.encode(), claimant.lock)
                .await?
            {
                Guarded::Applied => return Ok(Claim::Won),
                Guarded::Moved(get) => (current, revision) = read(&get, self.clock().now_micros())?,
            }
        }
        Err(conflicts())
    }

    async fn complete(&self, id: &str, done: Completion<'_>) -> Result<bool, StoreError> {
        let value = done.record(self.clock().now_micros()).encode();
        let key = state_key(self.keyspace(), id);
        self.change_own(&key, done.token, |_| {
            Change::Put(Cow::Borrowed(&value), done.retention)
        })
        .await
    }

    async fn renew(&self, id: &str, token: ClaimToken, lock: Duration) -> Result<bool, StoreError> {
        let now = self.clock().now_micros();
        let key = state_key(self.keyspace(), id);
        self.change_own(&key, token, |fingerprint| {
            let record = Claimant::new(token, &fingerprint, lock).record(now);
            Change::Put(Cow::Owned(record.encode()), lock)
        })
        .await
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), StoreError> {
        let key = state_key(self.keyspace(), id);
        self.change_own(&key, token, |_| Change::Delete).await?;
        Ok(())
    }
}

/// A write over a claim.
enum Change<'a> {
    /// The encoded record, kept for at least this long.
    Put(Cow<'a, [u8]>, Duration),
    Delete,
}

impl EtcdStore {
    /// Applies `change(fingerprint)` to the caller's in-flight claim of
    /// `key`. A concurrent write of that same claim (its renewal racing
    /// the completion) moves the revision: then the claim is read again
    /// and, while it is still the caller's, written again. `Ok(false)`:
    /// the claim is not (or no longer) the caller's.
    async fn change_own<'a>(
        &self,
        key: &str,
        token: ClaimToken,
        change: impl Fn(Fingerprint) -> Change<'a>,
    ) -> Result<bool, StoreError> {
        let (mut current, mut revision) = self.record(key).await?;
        for _ in 0..MAX_ATTEMPTS {
            let fingerprint = match current {
                Some(Record::InFlight {
                    token: t,
                    fingerprint,
                    ..
                }) if t == token => fingerprint,
                _ => return Ok(false),
            };
            let written = match change(fingerprint) {
                Change::Put(value, ttl) => self.put_at(key, revision, &value, ttl).await?,
                Change::Delete => self.delete_at(key, revision).await?,
            };
            match written {
                Guarded::Applied => return Ok(true),
                Guarded::Moved(get) => (current, revision) = read(&get, self.clock().now_micros())?,
            }
        }
        Err(conflicts())
    }
}

fn conflicts() -> StoreError {
    StoreError::Backend(format!(
        "etcd: {MAX_ATTEMPTS} conflicting writes on one idempotency key"
    ))
}
