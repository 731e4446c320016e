//! `MemoryStore`: process-local state, no server.

mod circuit_breaker;
mod idempotency;
mod rate_limit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Deserialize;

use super::{Backend, DEFAULT_PREFIX, Durability, KeySpace};
use crate::clock::{SharedClock, SystemClock};
use crate::error::StoreError;
use crate::events::Events;
use circuit_breaker::Records;
use idempotency::{Limits as IdempotencyLimits, Records as IdempotencyRecords};
use rate_limit::{Cells, DEFAULT_MAX_KEYS};

/// Settings of a [`MemoryStore`].
///
/// ```
/// use battlement::backends::{MemoryConfig, MemoryStore};
///
/// let config: MemoryConfig = serde_json::from_str(
///     r#"{"idempotency_max_records": 50000, "idempotency_max_scope_bytes": 8388608}"#,
/// )
/// .unwrap();
/// let store = MemoryStore::from_config(config).unwrap();
/// let zero = MemoryConfig::default().idempotency_max_bytes(0);
/// assert!(MemoryStore::from_config(zero).is_err());
/// let keys: MemoryConfig = serde_json::from_str(r#"{"rate_limit_max_keys": 200000}"#).unwrap();
/// let store = MemoryStore::from_config(keys).unwrap();
/// let zero = MemoryConfig::default().rate_limit_max_keys(0);
/// assert!(MemoryStore::from_config(zero).is_err());
/// ```
///
/// The idempotency caps (`idempotency_max_records`, `idempotency_max_bytes`,
/// `idempotency_max_scope_records`, `idempotency_max_scope_bytes`) and the
/// rate-limit key cap (`rate_limit_max_keys`) are described on
/// [`MemoryStore`]; a 0 is a configuration error.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// The key namespace.
    #[serde(default = "default_prefix")]
    prefix: String,
    /// Idempotency records kept at most.
    #[serde(default = "default_max_records")]
    #[schemars(range(min = 1))]
    idempotency_max_records: usize,
    /// Bytes of idempotency records kept at most.
    #[serde(default = "default_max_bytes")]
    #[schemars(range(min = 1))]
    idempotency_max_bytes: usize,
    /// Idempotency records one scope may keep.
    #[serde(default = "default_max_scope_records")]
    #[schemars(range(min = 1))]
    idempotency_max_scope_records: usize,
    /// Bytes of idempotency records one scope may keep.
    #[serde(default = "default_max_scope_bytes")]
    #[schemars(range(min = 1))]
    idempotency_max_scope_bytes: usize,
    /// Rate-limit keys kept at most.
    #[serde(default = "default_max_keys")]
    #[schemars(range(min = 1))]
    rate_limit_max_keys: usize,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

fn default_max_records() -> usize {
    IdempotencyLimits::DEFAULT.records
}

fn default_max_bytes() -> usize {
    IdempotencyLimits::DEFAULT.bytes
}

fn default_max_scope_records() -> usize {
    IdempotencyLimits::DEFAULT.scope_records
}

fn default_max_scope_bytes() -> usize {
    IdempotencyLimits::DEFAULT.scope_bytes
}

fn default_max_keys() -> usize {
    DEFAULT_MAX_KEYS
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            prefix: default_prefix(),
            idempotency_max_records: default_max_records(),
            idempotency_max_bytes: default_max_bytes(),
            idempotency_max_scope_records: default_max_scope_records(),
            idempotency_max_scope_bytes: default_max_scope_bytes(),
            rate_limit_max_keys: default_max_keys(),
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

    /// See [`MemoryStore::idempotency_max_records`].
    pub fn idempotency_max_records(mut self, records: usize) -> Self {
        self.idempotency_max_records = records;
        self
    }

    /// See [`MemoryStore::idempotency_max_bytes`].
    pub fn idempotency_max_bytes(mut self, bytes: usize) -> Self {
        self.idempotency_max_bytes = bytes;
        self
    }

    /// See [`MemoryStore::idempotency_max_scope_records`].
    pub fn idempotency_max_scope_records(mut self, records: usize) -> Self {
        self.idempotency_max_scope_records = records;
        self
    }

    /// See [`MemoryStore::idempotency_max_scope_bytes`].
    pub fn idempotency_max_scope_bytes(mut self, bytes: usize) -> Self {
        self.idempotency_max_scope_bytes = bytes;
        self
    }

    /// See [`MemoryStore::rate_limit_max_keys`].
    pub fn rate_limit_max_keys(mut self, keys: usize) -> Self {
        self.rate_limit_max_keys = keys;
        self
    }

    fn checked_max_keys(&self) -> Result<usize, StoreError> {
        match self.rate_limit_max_keys {
            0 => Err(StoreError::Config(
                "rate_limit_max_keys must be at least 1".to_owned(),
            )),
            keys => Ok(keys),
        }
    }

    fn idempotency_limits(&self) -> Result<IdempotencyLimits, StoreError> {
        let limits = IdempotencyLimits {
            records: self.idempotency_max_records,
            bytes: self.idempotency_max_bytes,
            scope_records: self.idempotency_max_scope_records,
            scope_bytes: self.idempotency_max_scope_bytes,
        };
        let zero = [
            ("idempotency_max_records", limits.records),
            ("idempotency_max_bytes", limits.bytes),
            ("idempotency_max_scope_records", limits.scope_records),
            ("idempotency_max_scope_bytes", limits.scope_bytes),
        ]
        .into_iter()
        .find(|(_, value)| *value == 0);
        match zero {
            Some((name, _)) => Err(StoreError::Config(format!("{name} must be at least 1"))),
            None => Ok(limits),
        }
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
///
/// # Idempotency caps
///
/// Idempotency records are kept for their whole retention (24 h by
/// default), so a client sending random keys would grow memory without
/// bound. The store caps them instead:
///
/// | cap | default | builder / serde field |
/// |---|---|---|
/// | records per store | 100,000 | `idempotency_max_records` |
/// | bytes per store | 256 MiB | `idempotency_max_bytes` |
/// | records per scope | 1,000 | `idempotency_max_scope_records` |
/// | bytes per scope | 16 MiB | `idempotency_max_scope_bytes` |
///
/// Why these: 100,000 records is more than a day of one keyed request per
/// second; at about 2 KiB a record (a small JSON response, its headers and
/// the record's own ~400 bytes) that is ~200 MiB, just under the byte cap,
/// and 256 MiB bounds the worst case (large responses) to what a small
/// service can spare. A scope gets 1 % of the records and 1/16 of the
/// bytes, and at the store-wide cap the scope holding the most completed
/// records loses its oldest first, so a client flooding keys, even under
/// many scopes, pushes out its own records before a scope with a few
/// loses one; 1,000 keys and 16 MiB (sixteen responses at the layer's
/// default 1 MiB limit) is far more than a well-behaved client retries at
/// once. Larger deployments keep records in Redis or etcd.
///
/// Bytes are an estimate: each record's id, response body, header and
/// trailer names and values, plus a fixed overhead per record and per
/// header. A record's scope is the part of its id before the first `/`
/// (the idempotency layer's ids are `{hashed scope}/{hashed key}`); an id
/// without one is under the store caps only, and is evicted only once no
/// scope has a completed record left.
///
/// To make room the store evicts *completed* records: a scope at its cap
/// loses its oldest; at the store's cap the largest scope loses its
/// oldest. Each step is `O(log n)`; expired records go first and are not
/// counted as evictions.
/// In-flight claims are never evicted (that would let a duplicate run
/// beside the request): when claims alone fill a cap, a new claim, or a
/// response too large for the room left, is refused with a
/// non-transient [`StoreError::Backend`] ("store full"), which the
/// idempotency layer handles by its failure policy (a claim) or by
/// answering duplicates 410 (a response). Every eviction is an
/// `idempotency`/`evicted` event and every refusal a `store_full` event, on
/// the store's [`events`](Self::events) and in `battlement.events`.
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::events::Events;
///
/// let events = Events::new();
/// let store = MemoryStore::new()
///     .idempotency_max_records(10_000)
///     .idempotency_max_bytes(64 << 20)
///     .idempotency_max_scope_records(100)
///     .idempotency_max_scope_bytes(4 << 20)
///     .events(events.clone());
/// let mut rx = events.subscribe();
/// // ... hand `events` to the layers too; `rx` then sees the evictions.
/// ```
///
/// # Rate-limit key cap
///
/// A rate-limit key stays until its bucket is full again, so a flood of
/// distinct keys (random API keys, spoofed addresses) within one period
/// would grow memory until the sweeper, once a second, finds them idle.
/// The store holds at most [`rate_limit_max_keys`](Self::rate_limit_max_keys)
/// keys instead (default 1,000,000; serde field `rate_limit_max_keys`).
/// A new key that finds the store full first sweeps the idle keys (at
/// most every 250 ms, one caller at a time, the others do not wait); if
/// that frees no room it is decided on its policy's *overflow key*, one
/// per policy, which every key without room shares: those keys are still
/// limited, together, by the policy's quota, never unlimited and never
/// refused with an error. Keys already held are unaffected, and a decision
/// on one costs the same as without a cap: only a new key checks it.
/// Every decision on an overflow key is a `rate_limit`/`overflow` event,
/// with the policy, on the store's [`events`](Self::events) and in
/// `battlement.events`.
///
/// Why 1,000,000: a key takes about 180 to 200 bytes (measured: its
/// 64-byte slot in a map between 7/16 and 7/8 full, plus the `policy/key`
/// text in its own allocation, 48 bytes for an IPv6 /64 key), so a full
/// store holds some 190 MiB, the order of the idempotency caps' 256 MiB.
/// Without the cap, 100,000 new keys a second under a per-minute quota
/// would hold 6 million keys (over 1 GiB) before the first could go. A
/// million distinct clients within one period is more than one instance
/// limiting in process usually sees; larger deployments limit in Redis or
/// etcd, whose memory the server bounds.
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::rate_limit::{Charge, Quota, RateLimitStore};
///
/// let store = MemoryStore::new().rate_limit_max_keys(2);
/// let quota = Quota::per_minute(1).unwrap();
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// for key in ["a", "b", "c", "d"] {
///     store.decide(Charge::new("per-key", key, &quota, 1)).await.unwrap();
/// }
/// // "a" and "b" have their own keys; "c" and "d" share one overflow key,
/// // whose one request a minute "c" took.
/// assert_eq!(store.rate_limit_keys(), 3);
/// assert!(!store.decide(Charge::new("per-key", "e", &quota, 1)).await.unwrap().is_allowed());
/// # });
/// ```
///
/// The builder methods ([`with_clock`](Self::with_clock),
/// [`events`](Self::events), the caps) return a new, empty store: set them
/// before the store is used or cloned.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: KeySpace,
    clock: SharedClock,
    events: Events,
    closed: AtomicBool,
    cells: Cells,
    breakers: Records,
    idempotency: IdempotencyRecords,
}

/// What a store is built from.
struct Parts {
    keys: KeySpace,
    clock: SharedClock,
    events: Events,
    limits: IdempotencyLimits,
    max_keys: usize,
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::build(Parts {
            keys: KeySpace::default(),
            clock: SystemClock::shared(),
            events: Events::new(),
            limits: IdempotencyLimits::DEFAULT,
            max_keys: DEFAULT_MAX_KEYS,
        })
    }

    /// A store from `config`.
    pub fn from_config(config: MemoryConfig) -> Result<Self, StoreError> {
        Ok(Self::build(Parts {
            keys: KeySpace::new(&config.prefix)?,
            clock: SystemClock::shared(),
            events: Events::new(),
            limits: config.idempotency_limits()?,
            max_keys: config.checked_max_keys()?,
        }))
    }

    /// This store on `clock` instead of the system clock (for tests).
    pub fn with_clock(self, clock: SharedClock) -> Self {
        self.rebuild(|parts| parts.clock = clock)
    }

    /// Reports the store's own incidents (idempotency evictions and
    /// refusals, rate-limit decisions on an overflow key) on `events`,
    /// usually the stream the layers report to. Without it they are still
    /// counted in `battlement.events`.
    pub fn events(self, events: Events) -> Self {
        self.rebuild(|parts| parts.events = events)
    }

    /// Caps the idempotency records of the whole store (default 100,000;
    /// 0 counts as 1). See [Idempotency caps](Self#idempotency-caps).
    pub fn idempotency_max_records(self, records: usize) -> Self {
        self.rebuild(|parts| parts.limits.records = records.max(1))
    }

    /// Caps the approximate bytes of the whole store's idempotency records
    /// (default 256 MiB; 0 counts as 1). See
    /// [Idempotency caps](Self#idempotency-caps).
    pub fn idempotency_max_bytes(self, bytes: usize) -> Self {
        self.rebuild(|parts| parts.limits.bytes = bytes.max(1))
    }

    /// Caps the idempotency records of one scope (default 1,000; 0 counts
    /// as 1). See [Idempotency caps](Self#idempotency-caps).
    pub fn idempotency_max_scope_records(self, records: usize) -> Self {
        self.rebuild(|parts| parts.limits.scope_records = records.max(1))
    }

    /// Caps the approximate bytes of one scope's idempotency records
    /// (default 16 MiB; 0 counts as 1). A response larger than this is
    /// never kept. See [Idempotency caps](Self#idempotency-caps).
    pub fn idempotency_max_scope_bytes(self, bytes: usize) -> Self {
        self.rebuild(|parts| parts.limits.scope_bytes = bytes.max(1))
    }

    /// Caps the rate-limit keys of the whole store, besides one overflow
    /// key per policy (default 1,000,000; 0 counts as 1). See
    /// [Rate-limit key cap](Self#rate-limit-key-cap).
    pub fn rate_limit_max_keys(self, keys: usize) -> Self {
        self.rebuild(|parts| parts.max_keys = keys.max(1))
    }

    /// The clock the store decides with.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    fn rebuild(self, change: impl FnOnce(&mut Parts)) -> Self {
        let mut parts = Parts {
            keys: self.inner.keys.clone(),
            clock: self.inner.clock.clone(),
            events: self.inner.events.clone(),
            limits: self.inner.idempotency.limits(),
            max_keys: self.inner.cells.max_keys(),
        };
        change(&mut parts);
        Self::build(parts)
    }

    fn build(parts: Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys: parts.keys,
                clock: parts.clock,
                events: parts.events,
                closed: AtomicBool::new(false),
                cells: Cells::new(parts.max_keys),
                breakers: Records::default(),
                idempotency: IdempotencyRecords::new(parts.limits),
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

    async fn durability(&self) -> Durability {
        Durability::Process
    }
}
