//! `CircuitBreakerStore`: where instances share their breakers' state
//! (SPEC CB-6).
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

/// Shared breaker state (SPEC CB-6). Ids are `breaker/key`; stores keep
/// them under the `cb` concern of their key space with a TTL of
/// [`ttl`](SharedState::ttl).
pub trait CircuitBreakerStore: Backend {
    /// The state of `id`, if written and not expired; `open_for` is the
    /// open time left now.
    fn load(&self, id: &str) -> impl Future<Output = Result<Option<Versioned>, StoreError>> + Send;

    /// Writes `next` by `writer` if the stored version is `expected`
    /// (absent or expired counts as any version), as version
    /// `max(expected + 1, store time in µs)`.
    fn publish(
        &self,
        id: &str,
        expected: u64,
        writer: u64,
        next: SharedState,
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
