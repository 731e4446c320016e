//! `IdempotencyStore` for `MemoryStore`: records in one locked map.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::MemoryStore;
use crate::error::StoreError;
use crate::layers::idempotency::store::{micros, state_key};
use crate::layers::idempotency::{
    Claim, ClaimToken, Fingerprint, IdempotencyStore, Record, StoredResponse,
};

/// The records, by id.
#[derive(Debug, Default)]
pub(crate) struct Records(Mutex<Map>);

#[derive(Debug, Default)]
struct Map {
    records: HashMap<Box<str>, Record>,
    /// The size at which a claim next drops expired records: twice the
    /// size after the last purge, so purging costs O(1) per claim.
    purge_at: usize,
}

/// The smallest map that is purged.
const PURGE_FROM: usize = 1024;

impl Records {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<Box<str>, Record>) -> T) -> T {
        f(&mut self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .records)
    }

    /// Drops expired records when the map has doubled since the last purge.
    fn purge(&self, now_us: u64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.records.len() >= map.purge_at.max(PURGE_FROM) {
            map.records.retain(|_, r| r.expires_us() > now_us);
            map.purge_at = map.records.len() * 2;
        }
    }
}

impl IdempotencyStore for MemoryStore {
    async fn claim(
        &self,
        id: &str,
        fingerprint: &Fingerprint,
        lock: Duration,
        token: ClaimToken,
    ) -> Result<Claim, StoreError> {
        self.check_open()?;
        let now = self.inner.clock.now_micros();
        self.inner.idempotency.purge(now);
        Ok(self
            .inner
            .idempotency
            .with(|records| match records.get(id) {
                Some(Record::InFlight {
                    expires_us,
                    fingerprint,
                    ..
                }) if *expires_us > now => Claim::InFlight {
                    fingerprint: *fingerprint,
                },
                Some(Record::Completed {
                    expires_us,
                    fingerprint,
                    response,
                }) if *expires_us > now => Claim::Completed {
                    fingerprint: *fingerprint,
                    response: response.clone(),
                },
                _ => {
                    let record = Record::InFlight {
                        expires_us: now.saturating_add(micros(lock)),
                        token,
                        fingerprint: *fingerprint,
                    };
                    records.insert(id.into(), record);
                    Claim::Won
                }
            }))
    }

    async fn complete(
        &self,
        id: &str,
        token: ClaimToken,
        fingerprint: &Fingerprint,
        response: &StoredResponse,
        retention: Duration,
    ) -> Result<bool, StoreError> {
        self.check_open()?;
        let now = self.inner.clock.now_micros();
        Ok(self
            .inner
            .idempotency
            .with(|records| match records.get_mut(id) {
                Some(record @ Record::InFlight { .. }) if owned(record, token) => {
                    *record = Record::Completed {
                        expires_us: now.saturating_add(micros(retention)),
                        fingerprint: *fingerprint,
                        response: response.clone(),
                    };
                    true
                }
                _ => false,
            }))
    }

    async fn renew(&self, id: &str, token: ClaimToken, lock: Duration) -> Result<bool, StoreError> {
        self.check_open()?;
        let now = self.inner.clock.now_micros();
        Ok(self
            .inner
            .idempotency
            .with(|records| match records.get_mut(id) {
                Some(Record::InFlight {
                    expires_us,
                    token: t,
                    ..
                }) if *t == token && *expires_us > now => {
                    *expires_us = now.saturating_add(micros(lock));
                    true
                }
                _ => false,
            }))
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), StoreError> {
        self.check_open()?;
        self.inner.idempotency.with(|records| {
            if records.get(id).is_some_and(|r| owned(r, token)) {
                records.remove(id);
            }
        });
        Ok(())
    }
}

fn owned(record: &Record, token: ClaimToken) -> bool {
    matches!(record, Record::InFlight { token: t, .. } if *t == token)
}

impl MemoryStore {
    /// Every idempotency record's key (namespaced as on the servers) with
    /// the time until it expires.
    pub fn idempotency_entries(&self) -> Vec<(String, Duration)> {
        let now = self.inner.clock.now_micros();
        self.inner.idempotency.with(|records| {
            records
                .iter()
                .filter(|(_, r)| r.expires_us() > now)
                .map(|(id, r)| {
                    (
                        state_key(&self.inner.keys, id),
                        Duration::from_micros(r.expires_us() - now),
                    )
                })
                .collect()
        })
    }
}
