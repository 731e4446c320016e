//! `CircuitBreakerStore` for `MemoryStore`: breaker states shared by every
//! layer that holds a clone of the store.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::MemoryStore;
use crate::error::StoreError;
use crate::layers::circuit_breaker::store::next_version;
use crate::layers::circuit_breaker::{
    CircuitBreakerStore, Loaded, Publication, Published, SharedState, State, Versioned,
};

/// The written states, by id.
#[derive(Debug, Default)]
pub(crate) struct Records(Mutex<HashMap<Box<str>, Record>>);

impl Records {
    /// The states, locked (a panic elsewhere leaves them consistent:
    /// every change is one insert or removal).
    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Record>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    state: State,
    version: u64,
    writer: u64,
    open_until_us: u64,
    reopens: u32,
    expires_us: u64,
}

impl Record {
    fn versioned(&self, now_us: u64) -> Versioned {
        Versioned {
            version: self.version,
            writer: self.writer,
            shared: SharedState {
                state: self.state,
                open_for: std::time::Duration::from_micros(
                    self.open_until_us.saturating_sub(now_us),
                ),
                reopens: self.reopens,
            },
        }
    }
}

/// The live record of `id`; an expired one is removed.
fn read(records: &mut HashMap<Box<str>, Record>, id: &str, now_us: u64) -> Option<Versioned> {
    match records.get(id) {
        Some(r) if r.expires_us > now_us => Some(r.versioned(now_us)),
        Some(_) => {
            records.remove(id);
            None
        }
        None => None,
    }
}

impl CircuitBreakerStore for MemoryStore {
    async fn load(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        self.check_open()?;
        let now_us = self.inner.clock.now_micros();
        let mut records = self.inner.breakers.lock();
        Ok(read(&mut records, id, now_us))
    }

    /// A plain loop under one lock.
    async fn load_many(&self, ids: &[&str]) -> Result<Vec<Loaded>, StoreError> {
        self.check_open()?;
        let now_us = self.inner.clock.now_micros();
        let mut records = self.inner.breakers.lock();
        Ok(ids
            .iter()
            .map(|id| Ok(read(&mut records, id, now_us)))
            .collect())
    }

    async fn publish(&self, id: &str, write: Publication) -> Result<Published, StoreError> {
        self.check_open()?;
        let now_us = self.inner.clock.now_micros();
        let mut records = self.inner.breakers.lock();
        records.retain(|_, r| r.expires_us > now_us);
        let current = records.get(id).copied();
        if let Some(r) = current
            && r.version != write.expected
        {
            return Ok(Published::Conflict(Some(r.versioned(now_us))));
        }
        let version = next_version(write.expected, now_us);
        let open_for_us = u64::try_from(write.next.open_for.as_micros()).unwrap_or(u64::MAX);
        let ttl_us = u64::try_from(write.next.ttl().as_micros()).unwrap_or(u64::MAX);
        records.insert(
            id.into(),
            Record {
                state: write.next.state,
                version,
                writer: write.writer,
                open_until_us: now_us.saturating_add(open_for_us),
                reopens: write.next.reopens,
                expires_us: now_us.saturating_add(ttl_us),
            },
        );
        Ok(Published::Applied(version))
    }
}

impl MemoryStore {
    #[cfg(any(test, feature = "conformance"))]
    /// Every written breaker state's key (namespaced as on the servers)
    /// with its time to live.
    pub fn circuit_breaker_entries(&self) -> Vec<(String, std::time::Duration)> {
        let now_us = self.inner.clock.now_micros();
        let records = self.inner.breakers.lock();
        records
            .iter()
            .filter(|(_, r)| r.expires_us > now_us)
            .map(|(id, r)| {
                (
                    crate::layers::circuit_breaker::store::state_key(&self.inner.keys, id),
                    std::time::Duration::from_micros(r.expires_us - now_us),
                )
            })
            .collect()
    }
}
