//! `IdempotencyStore` for `EtcdStore`: a read, then a write guarded by the
//! key's revision (a failed guard returns the winner's record). Records
//! carry a lease that outlives their logical expiry, which runs on the
//! store's clock (keep instances NTP-synchronised).

use std::time::Duration;

use etcd_client::GetResponse;

use super::EtcdStore;
use super::txn::Guarded;
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::idempotency::store::{micros, state_key};
use crate::layers::idempotency::{
    Claim, ClaimToken, Fingerprint, IdempotencyStore, Record, StoredResponse,
};

/// Claims retried when the key changes between the read and the write.
const MAX_ATTEMPTS: u32 = 16;

/// The live record and the revision of a key (revision 0: absent).
fn read(resp: &GetResponse, now_us: u64) -> Result<(Option<Record>, i64), StoreError> {
    let Some(kv) = resp.kvs().first() else {
        return Ok((None, 0));
    };
    let record = Record::decode(kv.value())
        .ok_or_else(|| StoreError::Protocol("unreadable idempotency record".into()))?;
    let live = (record.expires_us() > now_us).then_some(record);
    Ok((live, kv.mod_revision()))
}

fn owned(record: &Option<Record>, token: ClaimToken) -> bool {
    matches!(record, Some(Record::InFlight { token: t, .. }) if *t == token)
}

impl EtcdStore {
    async fn record(&self, key: &str) -> Result<(Option<Record>, i64), StoreError> {
        read(&self.get(key).await?, self.clock().now_micros())
    }
}

impl IdempotencyStore for EtcdStore {
    async fn claim(
        &self,
        id: &str,
        fingerprint: &Fingerprint,
        lock: Duration,
        token: ClaimToken,
    ) -> Result<Claim, StoreError> {
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
            let record = Record::InFlight {
                expires_us: self.clock().now_micros().saturating_add(micros(lock)),
                token,
                fingerprint: *fingerprint,
            };
            match self.put_at(&key, revision, &record.encode(), lock).await? {
                Guarded::Applied => return Ok(Claim::Won),
                Guarded::Moved(get) => (current, revision) = read(&get, self.clock().now_micros())?,
            }
        }
        Err(StoreError::Backend(format!(
            "etcd: {MAX_ATTEMPTS} conflicting writes on one idempotency key"
        )))
    }

    async fn complete(
        &self,
        id: &str,
        token: ClaimToken,
        fingerprint: &Fingerprint,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        let key = state_key(self.keyspace(), id);
        let (current, revision) = self.record(&key).await?;
        if !owned(&current, token) {
            return Ok(false);
        }
        let record = Record::Completed {
            expires_us: self.clock().now_micros().saturating_add(micros(retention)),
            fingerprint: *fingerprint,
            response: response.clone(),
        };
        let written = self
            .put_at(&key, revision, &record.encode(), retention)
            .await?;
        Ok(matches!(written, Guarded::Applied))
    }

    async fn renew(&self, id: &str, token: ClaimToken, lock: Duration) -> Result<bool, StoreError> {
        let key = state_key(self.keyspace(), id);
        let (current, revision) = self.record(&key).await?;
        let Some(Record::InFlight {
            token: t,
            fingerprint,
            ..
        }) = current
        else {
            return Ok(false);
        };
        if t != token {
            return Ok(false);
        }
        let record = Record::InFlight {
            expires_us: self.clock().now_micros().saturating_add(micros(lock)),
            token,
            fingerprint,
        };
        let written = self.put_at(&key, revision, &record.encode(), lock).await?;
        Ok(matches!(written, Guarded::Applied))
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), StoreError> {
        let key = state_key(self.keyspace(), id);
        let (current, revision) = self.record(&key).await?;
        if owned(&current, token) {
            self.delete_at(&key, revision).await?;
        }
        Ok(())
    }
}
