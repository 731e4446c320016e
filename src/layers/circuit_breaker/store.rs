//! `CircuitBreakerStore`: where instances share their breakers' state
//! (SPEC CB-6).
//!
//! Each instance counts its own calls; what is shared is the decision. An
//! instance whose breaker trips writes `open` (with the open time) under a
//! version compare-and-set; the others read it on their next poll and open
//! too. Half-open is not written: the open time ends at the same moment
//! everywhere, each instance probes, and the first to decide (close or
//! re-open) writes it; a later writer loses the compare-and-set and takes
//! the winner's state. A closed breaker makes no store call per request.

use std::future::Future;
use std::time::Duration;

use super::state::State;
use crate::backends::{Backend, KeySpace};
use crate::error::StoreError;

/// The concern name of breaker keys in a [`KeySpace`].
pub const CONCERN: &str = "cb";

/// How long a written state outlives its open time: a breaker that was
/// last written longer ago than this reads as closed.
pub const RETENTION: Duration = Duration::from_secs(3600);

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

/// A [`SharedState`] with the version it was written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versioned {
    /// Increases by one with every write; 0 when nothing was written.
    pub version: u64,
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
/// them under the `cb` concern of their key space with a TTL of the open time plus [`RETENTION`].
pub trait CircuitBreakerStore: Backend {
    /// The state of `id`, if written and not expired; `open_for` is the
    /// open time left now.
    fn load(&self, id: &str) -> impl Future<Output = Result<Option<Versioned>, StoreError>> + Send;

    /// Writes `next` as version `expected + 1` if the stored version is
    /// `expected` (absent or expired counts as any version).
    fn publish(
        &self,
        id: &str,
        expected: u64,
        next: SharedState,
    ) -> impl Future<Output = Result<Published, StoreError>> + Send;
}

/// `state:version:open_until_us:reopens`, the stored form on Redis and
/// etcd (the Redis script writes it itself).
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) fn encode(state: State, version: u64, open_until_us: u64, reopens: u32) -> String {
    format!("{}:{version}:{open_until_us}:{reopens}", state.as_str())
}

/// Parses [`encode`]'s output into `(versioned, open_until_us)`, with the
/// open time left at `now_us`.
#[cfg_attr(not(any(feature = "redis", feature = "etcd")), allow(dead_code))]
pub(crate) fn decode(s: &str, now_us: u64) -> Option<Versioned> {
    let mut parts = s.split(':');
    let state = State::parse(parts.next()?)?;
    let version = parts.next()?.parse().ok()?;
    let open_until_us: u64 = parts.next()?.parse().ok()?;
    let reopens = parts.next()?.parse().ok()?;
    if parts.next().is_some() || state == State::HalfOpen {
        return None;
    }
    Some(Versioned {
        version,
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

/// The TTL of a written state.
pub(crate) fn ttl(shared: &SharedState) -> Duration {
    shared.open_for + RETENTION
}
