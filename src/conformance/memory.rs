//! The harness of the in-memory backend.

use super::{Harness, StoredKey, unique_prefix};
use crate::backends::{MemoryConfig, MemoryStore};
use crate::clock::SharedClock;
use crate::error::StoreError;

/// Builds [`MemoryStore`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryHarness;

impl Harness for MemoryHarness {
    type Store = MemoryStore;

    async fn store_with_prefix(&self, prefix: &str) -> Result<MemoryStore, StoreError> {
        MemoryStore::from_config(MemoryConfig::default().prefix(prefix))
    }

    /// A memory store's state is its own: another instance is a clone.
    async fn another_handle(&self, store: &MemoryStore) -> MemoryStore {
        store.clone()
    }

    async fn store_with_clock(&self, clock: SharedClock) -> MemoryStore {
        let store = self.store_with_prefix(&unique_prefix()).await;
        store.expect("valid prefix").with_clock(clock)
    }

    async fn stored_keys(&self, store: &MemoryStore) -> Vec<StoredKey> {
        store
            .rate_limit_entries()
            .into_iter()
            .chain(store.circuit_breaker_entries())
            .chain(store.idempotency_entries())
            .map(|(key, ttl)| StoredKey {
                key,
                ttl: Some(ttl),
            })
            .collect()
    }
}
