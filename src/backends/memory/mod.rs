//! `MemoryStore`: process-local state, no server.

mod circuit_breaker;
mod idempotency;
mod rate_limit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;

use super::{Backend, DEFAULT_PREFIX, KeySpace};
use crate::clock::{SharedClock, SystemClock};
use crate::error::StoreError;
use circuit_breaker::Records;
use idempotency::Records as IdempotencyRecords;
use rate_limit::Cells;

/// Settings of a [`MemoryStore`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    #[serde(default = "default_prefix")]
    prefix: String,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            prefix: default_prefix(),
        }
    }
}

impl MemoryConfig {
    /// Namespaces keys under `prefix` (keys matter for memory only in logs
    /// and metrics, but stay the same shape as on the servers).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// State in this process's memory. Clones share it.
///
/// ```
/// use battlement::backends::{Backend, MemoryStore};
/// let store = MemoryStore::new();
/// let clone = store.clone();
/// store.close();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert!(clone.ping().await.is_err());
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: KeySpace,
    clock: SharedClock,
    closed: AtomicBool,
    cells: Cells,
    breakers: Records,
    idempotency: IdempotencyRecords,
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::build(KeySpace::default(), SystemClock::shared())
    }

    /// A store from `config`.
    pub fn from_config(config: MemoryConfig) -> Result<Self, StoreError> {
        Ok(Self::build(
            KeySpace::new(&config.prefix)?,
            SystemClock::shared(),
        ))
    }

    /// This store on `clock` instead of the system clock (for tests).
    pub fn with_clock(self, clock: SharedClock) -> Self {
        Self::build(self.inner.keys.clone(), clock)
    }

    /// The clock the store decides with.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    fn build(keys: KeySpace, clock: SharedClock) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys,
                clock,
                closed: AtomicBool::new(false),
                cells: Cells::default(),
                breakers: Records::default(),
                idempotency: IdempotencyRecords::default(),
            }),
        }
    }

    /// `Err(Closed)` once the store was closed.
    pub(crate) fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Backend for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn keyspace(&self) -> &KeySpace {
        &self.inner.keys
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_open()
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}
