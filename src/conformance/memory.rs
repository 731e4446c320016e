//! The harness of the in-memory backend.

use super::Harness;
use crate::backends::{MemoryConfig, MemoryStore};
use crate::error::StoreError;

/// Builds [`MemoryStore`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryHarness;

impl Harness for MemoryHarness {
    type Store = MemoryStore;

    async fn store_with_prefix(&self, prefix: &str) -> Result<MemoryStore, StoreError> {
        MemoryStore::from_config(MemoryConfig::default().prefix(prefix))
    }
}
