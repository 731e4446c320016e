//! `CircuitBreakerStore`: where instances share their breakers' state.
//!
//! Each instance counts its own calls; what is shared is the decision. An
//! instance whose breaker trips writes `open` (with the open time) under a
//! version compare-and-set; the others read it on their next poll and open
//! too. Half-open is not written: the open time ends at the same moment
//! everywhere, each instance probes, and the first to decide (close or
//! re-open) writes it; a later writer loses the compare-and-set and takes
//! the winner's state (so N instances send up to N × K probes in one
//! half-open round). A closed breaker makes no store call per request; if
//! the store fails, every instance keeps deciding locally and writes its
//! last transition once the store is back.
//!
//! A poll reads every live key of a layer with
//! [`load_many`](CircuitBreakerStore::load_many), [`LOAD_BATCH`] ids per
//! call: Redis answers a batch with one script call (one per Cluster node
//! holding its keys), etcd with one read-only transaction per 128 keys.

use std::future::Future;
use std::time::Duration;

use super::state::State;
use crate::backends::{Backend, KeySpace};
use crate::error::StoreError;

/// The concern name of breaker keys in a [`KeySpace`].
pub const CONCERN: &str = "cb";

/// How long a written closed or open state outlives its open time: a
/// breaker last written longer ago than this reads as closed.
pub const RETENTION: Duration = Duration::from_secs(3600);

/// How long a forced-open or disabled state lasts without a reset.
pub const FORCED_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A breaker state as shared between instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedState {
    /// `Closed`, `Open`, `ForcedOpen` or `Disabled` (never `HalfOpen`).
    pub state: State,
    /// For `Open`: how much open time is left (on the store's clock when
    /// read, the writer's remaining time when written).
    pub open_for: Duration,
    /// Re-opens in a row so far (for the open-time backoff).
    pub reopens: u32,
}

/// A [`SharedState`] with the version it was written as and its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versioned {
    /// Grows with every write (the store's time of the write in µs, or
    /// one more than the version it replaced): it never goes back, even
    /// after the record expired.
    pub version: u64,
    /// Who wrote it: each layer has a random id, so a writer recognises
    /// its own write after a timed-out call that did apply.
    pub writer: u64,
    /// The state.
    pub shared: SharedState,
}

/// A state to write with [`CircuitBreakerStore::publish`]: `next`, by
/// `writer`, if the stored version is still `expected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publication {
    /// The version the writer last saw (0: none).
    pub expected: u64,
    /// The instance writing.
    pub writer: u64,
    /// The state to write.
    pub next: SharedState,
}

impl Publication {
    /// `next` by `writer` over version `expected`.
    pub fn new(expected: u64, writer: u64, next: SharedState) -> Self {
        Self {
            expected,
            writer,
            next,
        }
    }
}

/// The outcome of [`CircuitBreakerStore::publish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Written as this version.
    Applied(u64),
    /// Someone else wrote first: the stored state (`None` if there is
    /// none, which cannot conflict and so only appears from a racing
    /// expiry).
    Conflict(Option<Versioned>),
}

/// What [`CircuitBreakerStore::load_many`] answers for one id: what
/// [`CircuitBreakerStore::load`] would.
pub type Loaded = Result<Option<Versioned>, StoreError>;

/// The most ids a layer passes to one [`CircuitBreakerStore::load_many`]
/// call.
pub const LOAD_BATCH: usize = 500;

/// Shared breaker state. Ids are `breaker/key`; stores keep
/// them under the `cb` concern of their key space with a TTL of
/// [`ttl`](SharedState::ttl).
pub trait CircuitBreakerStore: Backend {
    /// The state of `id`, if written and not expired; `open_for` is the
    /// open time left now.
    fn load(&self, id: &str) -> impl Future<Output = Result<Option<Versioned>, StoreError>> + Send;

    /// The states of `ids`, in their order: for each, what
    /// [`load`](Self::load) answers. The outer `Err` means the store could
    /// not be asked (nothing is known); an inner `Err` is one record the
    /// store could not read, which leaves the others readable.
    ///
    /// A layer polls all its live keys with this, at most [`LOAD_BATCH`]
    /// ids per call, so a store should answer a batch in a few round trips
    /// whatever its size. The default calls `load` once per id and stops
    /// at the first error that is not about one record (a timeout, an
    /// unreachable or closed store).
    fn load_many(
        &self,
        ids: &[&str],
    ) -> impl Future<Output = Result<Vec<Loaded>, StoreError>> + Send {
        async move {
            let mut loaded = Vec::with_capacity(ids.len());
            for id in ids {
                match self.load(id).await {
                    Err(e) if !is_per_record(&e) => return Err(e),
                    answer => loaded.push(answer),
                }
            }
            Ok(loaded)
        }
    }

    /// Writes `next` by `writer` if the stored version is `expected`
    /// (absent or expired counts as any version), as version
    /// `max(expected + 1, store time in µs)`.
    fn publish(
        &self,
        id: &str,
        write: Publication,
    ) -> impl Future<Output = Result<Published, StoreError>> + Send;
}

impl SharedState {
    /// How long the store keeps it: the open time plus [`RETENTION`], or
    /// [`FORCED_RETENTION`] for forced states.
    pub fn ttl(&self) -> Duration {
        match self.state {
            State::ForcedOpen | State::Disabled => FORCED_RETENTION,
            _ => self.open_for + RETENTION,
        }
    }
}

/// Whether `e` is about one record (unreadable, or refused by the server
/// for that key) rather than about the store: a batched load answers it
/// for that id and goes on.
pub(crate) fn is_per_record(e: &StoreError) -> bool {
    matches!(e, StoreError::Protocol(_) | StoreError::Backend(_))
}

/// The version a write replacing `expected` gets at store time `now_us`.
pub(crate) fn next_version(expected: u64, now_us: u64) -> u64 {
    expected.saturating_add(1).max(now_us)
}

/// `state:version:open_until_us:reopens:writer`, the stored form on Redis
/// and etcd (the Redis script writes it itself).
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn encode(version: u64, writer: u64, next: &SharedState, now_us: u64) -> String {
    let open_until = now_us.saturating_add(u64::try_from(next.open_for.as_micros()).unwrap_or(0));
    format!(
        "{}:{version}:{open_until}:{}:{writer}",
        next.state.as_str(),
        next.reopens
    )
}

/// Parses [`encode`]'s output, with the open time left at `now_us`.
#[cfg_attr(not(any(feature = "redis", feature = "etcd")), allow(dead_code))]
pub(crate) fn decode(s: &str, now_us: u64) -> Option<Versioned> {
    let mut parts = s.split(':');
    let state = State::parse(parts.next()?)?;
    let version = parts.next()?.parse().ok()?;
    let open_until_us: u64 = parts.next()?.parse().ok()?;
    let reopens = parts.next()?.parse().ok()?;
    let writer = parts.next()?.parse().ok()?;
    if parts.next().is_some() || state == State::HalfOpen {
        return None;
    }
    Some(Versioned {
        version,
        writer,
        shared: SharedState {
            state,
            open_for: Duration::from_micros(open_until_us.saturating_sub(now_us)),
            reopens,
        },
    })
}

/// The stored key of `id`.
#[cfg_attr(not(any(feature = "redis", feature = "etcd")), allow(dead_code))]
pub(crate) fn state_key(keys: &KeySpace, id: &str) -> String {
    keys.key(CONCERN, id)
}
