//! One breaker's state machine, driven by explicit
//! times so tests run on a manual clock.
//!
//! A closed (or disabled) breaker admits with one atomic load; every other
//! step takes the breaker's mutex. Each transition bumps a generation, and
//! an outcome carries the generation it was admitted in: outcomes from
//! before the last transition are dropped, and since transitions happen
//! under the mutex, a burst of concurrent failures makes exactly one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::config::BreakerConfig;
use super::state::{Outcome, State};
use super::store::{SharedState, Versioned};
use super::window::{Outcomes, Totals};
use crate::key::Key;

/// When a rejected caller may try again while half-open probes run.
pub(crate) const HALF_OPEN_RETRY: Duration = Duration::from_secs(1);

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub from: State,
    pub to: State,
}

/// What an admitted call carries until its outcome is recorded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    generation: u64,
    kind: Kind,
    started: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Call,
    Probe,
    Untracked,
}

impl Ticket {
    /// When the call was admitted.
    pub(crate) fn started(&self) -> Duration {
        self.started
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub state: State,
    pub retry_after: Option<Duration>,
}

/// One breaker.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// The key this breaker guards.
    pub(crate) key: Key,
    /// `generation << 3 | state`, for the lock-free closed path.
    word: AtomicU64,
    /// Seconds on the breaker's clock of the last admission (eviction).
    last_used: AtomicU64,
    inner: Mutex<Inner>,
    /// Serializes publications to the store.
    pub(crate) publishing: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    generation: u64,
    outcomes: Outcomes,
    consecutive: u32,
    open_until: Duration,
    reopens: u32,
    /// When each probe still out was admitted.
    probes_out: Vec<Duration>,
    probes: Totals,
    /// The store version this state derives from.
    version: u64,
    /// The generation last written to the store.
    published: u64,
}

fn word(generation: u64, state: State) -> u64 {
    generation << 3 | state.code()
}

impl Breaker {
    pub(crate) fn new(key: Key, config: &BreakerConfig, now: Duration) -> Self {
        Self {
            key,
            word: AtomicU64::new(word(0, State::Closed)),
            last_used: AtomicU64::new(now.as_secs()),
            inner: Mutex::new(Inner {
                state: State::Closed,
                generation: 0,
                outcomes: Outcomes::new(config.window),
                consecutive: 0,
                open_until: Duration::ZERO,
                reopens: 0,
                probes_out: Vec::new(),
                probes: Totals::default(),
                version: 0,
                published: 0,
            }),
            publishing: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state as last set (an open breaker whose time has passed reads
    /// `Open` until a call half-opens it).
    pub(crate) fn state(&self) -> State {
        State::from_code(self.word.load(Ordering::Acquire) & 7)
    }

    /// Seconds on the clock of the last admission.
    pub(crate) fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Admits a call at `now`, or says why not. May half-open the breaker.
    pub(crate) fn acquire(
        &self,
        config: &BreakerConfig,
        now: Duration,
    ) -> (Result<Ticket, Refusal>, Option<Transition>) {
        if self.last_used.load(Ordering::Relaxed) != now.as_secs() {
            self.last_used.store(now.as_secs(), Ordering::Relaxed);
        }
        let w = self.word.load(Ordering::Acquire);
        let ticket = |generation, kind| Ticket {
            generation,
            kind,
            started: now,
        };
        match State::from_code(w & 7) {
            State::Closed => return (Ok(ticket(w >> 3, Kind::Call)), None),
            State::Disabled => return (Ok(ticket(w >> 3, Kind::Untracked)), None),
            _ => {}
        }
        let mut inner = self.lock();
        let mut transition = None;
        if inner.state == State::Open && now >= inner.open_until {
            transition = self.transition(&mut inner, config, State::HalfOpen, now);
        } else if inner.state == State::HalfOpen
            && inner
                .probes_out
                .iter()
                .any(|&started| now.saturating_sub(started) >= config.probe_timeout)
        {
            // A probe that never answers (a long stream, a hung call)
            // counts as failed, so it cannot hold half-open forever.
            transition = self.transition(&mut inner, config, State::Open, now);
        }
        let result = match inner.state {
            State::Closed => Ok(ticket(inner.generation, Kind::Call)),
            State::Disabled => Ok(ticket(inner.generation, Kind::Untracked)),
            State::Open => Err(Refusal {
                state: State::Open,
                retry_after: Some(inner.open_until.saturating_sub(now)),
            }),
            State::ForcedOpen => Err(Refusal {
                state: State::ForcedOpen,
                retry_after: None,
            }),
            State::HalfOpen => {
                let started = inner.probes_out.len() as u64 + inner.probes.calls;
                if started < u64::from(config.half_open_probes) {
                    inner.probes_out.push(now);
                    Ok(ticket(inner.generation, Kind::Probe))
                } else {
                    Err(Refusal {
                        state: State::HalfOpen,
                        retry_after: Some(HALF_OPEN_RETRY),
                    })
                }
            }
        };
        (result, transition)
    }

    /// Records the outcome of an admitted call that took `elapsed`, at
    /// `now`.
    pub(crate) fn record(
        &self,
        config: &BreakerConfig,
        ticket: Ticket,
        outcome: Outcome,
        elapsed: Duration,
        now: Duration,
    ) -> Option<Transition> {
        if ticket.kind == Kind::Untracked {
            return None;
        }
        let mut inner = self.lock();
        if ticket.generation != inner.generation {
            // Admitted before the last transition.
            return None;
        }
        let failure = outcome == Outcome::Failure;
        let slow = outcome == Outcome::Success && elapsed > config.slow_call;
        match (ticket.kind, inner.state) {
            (Kind::Probe, State::HalfOpen) => {
                if let Some(i) = inner.probes_out.iter().position(|&t| t == ticket.started) {
                    inner.probes_out.swap_remove(i);
                }
                if outcome == Outcome::Ignored {
                    return None;
                }
                inner.probes.calls += 1;
                inner.probes.failures += u64::from(failure);
                inner.probes.slow += u64::from(slow);
                let probes = inner.probes;
                let next = if config.consecutive_failures.is_some() {
                    if failure {
                        Some(State::Open)
                    } else {
                        (probes.calls >= u64::from(config.half_open_probes))
                            .then_some(State::Closed)
                    }
                } else if probes.calls >= u64::from(config.half_open_probes) {
                    Some(if breached(config, probes) {
                        State::Open
                    } else {
                        State::Closed
                    })
                } else {
                    None
                };
                next.and_then(|to| self.transition(&mut inner, config, to, now))
            }
            (Kind::Call, State::Closed) => {
                if outcome == Outcome::Ignored {
                    return None;
                }
                if !inner.outcomes.is_for(config.window) {
                    // The window was changed at runtime: count afresh.
                    inner.outcomes = Outcomes::new(config.window);
                }
                inner.outcomes.record(now.as_secs(), failure, slow);
                inner.consecutive = if failure { inner.consecutive + 1 } else { 0 };
                let trip = match config.consecutive_failures {
                    Some(n) => inner.consecutive >= n,
                    None => {
                        let totals = inner.outcomes.totals(now.as_secs());
                        totals.calls >= u64::from(config.minimum_calls) && breached(config, totals)
                    }
                };
                if trip {
                    self.transition(&mut inner, config, State::Open, now)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Moves the breaker to `to` by hand (force open, disable, reset to
    /// closed).
    pub(crate) fn force(
        &self,
        config: &BreakerConfig,
        to: State,
        now: Duration,
    ) -> Option<Transition> {
        let mut inner = self.lock();
        if to == State::Closed {
            inner.reopens = 0;
        }
        self.transition(&mut inner, config, to, now)
    }

    /// Takes on a state another instance wrote to the store, if newer than
    /// what this breaker derives from.
    pub(crate) fn adopt(
        &self,
        config: &BreakerConfig,
        record: &Versioned,
        now: Duration,
    ) -> Option<Transition> {
        let mut inner = self.lock();
        if record.version <= inner.version {
            return None;
        }
        inner.version = record.version;
        let shared = record.shared;
        let to = match shared.state {
            // An open time that already passed elsewhere half-opens here.
            State::Open if shared.open_for.is_zero() => State::HalfOpen,
            state => state,
        };
        let transition = if to == inner.state {
            None
        } else {
            self.transition(&mut inner, config, to, now)
        };
        inner.reopens = shared.reopens;
        if to == State::Open {
            // A record out of range opens no longer than this breaker may.
            inner.open_until = now + shared.open_for.min(config.max_open_for);
        }
        // What came from the store needs no publishing.
        inner.published = inner.generation;
        transition
    }

    /// Notes that the store holds this breaker's own write as `version`
    /// (found after a call that timed out but applied).
    pub(crate) fn seen(&self, version: u64) {
        let mut inner = self.lock();
        inner.version = inner.version.max(version);
    }

    /// The state to write to the store, when it changed since the last
    /// write and other instances should follow it: `(generation, expected
    /// version, state)`. Half-open is local: every instance half-opens
    /// when the shared open time ends.
    pub(crate) fn unpublished(&self, now: Duration) -> Option<(u64, u64, SharedState)> {
        let inner = self.lock();
        if inner.published == inner.generation || inner.state == State::HalfOpen {
            return None;
        }
        let open_for = match inner.state {
            State::Open => inner.open_until.saturating_sub(now),
            _ => Duration::ZERO,
        };
        let shared = SharedState {
            state: inner.state,
            open_for,
            reopens: inner.reopens,
        };
        Some((inner.generation, inner.version, shared))
    }

    /// Notes that `generation` was written to the store as `version`.
    pub(crate) fn published(&self, generation: u64, version: u64) {
        let mut inner = self.lock();
        inner.version = inner.version.max(version);
        if inner.generation == generation {
            inner.published = generation;
        }
    }

    /// Whether the breaker may be forgotten: anything but an open breaker
    /// with open time left (a forced or disabled state is in the store and
    /// comes back from there).
    pub(crate) fn evictable(&self, now: Duration) -> bool {
        let inner = self.lock();
        !(inner.state == State::Open && inner.open_until > now)
    }

    /// Remaining open time, for `Retry-After` and the handle.
    pub(crate) fn open_remaining(&self, now: Duration) -> Option<Duration> {
        let inner = self.lock();
        (inner.state == State::Open).then(|| inner.open_until.saturating_sub(now))
    }

    fn transition(
        &self,
        inner: &mut Inner,
        config: &BreakerConfig,
        to: State,
        now: Duration,
    ) -> Option<Transition> {
        let from = inner.state;
        match (from, to) {
            (State::HalfOpen, State::Open) => inner.reopens = inner.reopens.saturating_add(1),
            (_, State::Closed) => inner.reopens = 0,
            _ => {}
        }
        if to == State::Open {
            inner.open_until = now + config.open_time(inner.reopens);
        }
        inner.state = to;
        inner.generation += 1;
        inner.outcomes = Outcomes::new(config.window);
        inner.consecutive = 0;
        inner.probes_out.clear();
        inner.probes = Totals::default();
        self.word
            .store(word(inner.generation, to), Ordering::Release);
        Some(Transition { from, to })
    }
}

/// Whether `totals` reach the failure-rate or slow-call-rate threshold.
fn breached(config: &BreakerConfig, totals: Totals) -> bool {
    let calls = totals.calls as f64;
    totals.calls > 0
        && (totals.failures as f64 * 100.0 >= config.failure_rate * calls
            || totals.slow as f64 * 100.0 >= config.slow_call_rate * calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A record out of range (an open time of years) opens no longer than
    // the breaker's own longest open time.
    #[test]
    fn an_adopted_open_time_is_at_most_max_open_for() {
        let config = BreakerConfig::default().open_backoff(2.0, Duration::from_secs(60));
        let now = Duration::from_secs(1_767_225_600);
        let breaker = Breaker::new(Key::from("upstream"), &config, now);
        let record = Versioned {
            version: 1,
            writer: 7,
            shared: SharedState {
                state: State::Open,
                open_for: Duration::from_secs(10 * 365 * 86_400),
                reopens: 0,
            },
        };
        breaker.adopt(&config, &record, now);
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.open_remaining(now), Some(Duration::from_secs(60)));
    }

    // A half-open breaker whose probes never answer opens again once the
    // oldest has been out for the probe timeout; its late answer counts for
    // nothing.
    #[test]
    fn a_probe_out_past_the_probe_timeout_reopens_the_breaker() {
        let config = BreakerConfig::default()
            .consecutive_failures(1)
            .half_open_probes(1)
            .open_for(Duration::from_secs(5))
            .probe_timeout(Duration::from_secs(30));
        let t0 = Duration::from_secs(1_767_225_600);
        let breaker = Breaker::new(Key::from("upstream"), &config, t0);
        let (ticket, _) = breaker.acquire(&config, t0);
        breaker.record(
            &config,
            ticket.unwrap(),
            Outcome::Failure,
            Duration::ZERO,
            t0,
        );
        assert_eq!(breaker.state(), State::Open);
        let half_open = t0 + Duration::from_secs(5);
        let (probe, _) = breaker.acquire(&config, half_open);
        let probe = probe.expect("the probe");
        assert_eq!(breaker.state(), State::HalfOpen);
        let (refused, _) = breaker.acquire(&config, half_open + Duration::from_secs(29));
        assert!(refused.is_err(), "one probe at a time");
        let late = half_open + Duration::from_secs(30);
        let (refused, transition) = breaker.acquire(&config, late);
        assert_eq!(transition.map(|t| t.to), Some(State::Open));
        assert!(refused.is_err());
        breaker.record(
            &config,
            probe,
            Outcome::Success,
            Duration::from_secs(31),
            late,
        );
        assert_eq!(breaker.state(), State::Open, "the late answer is stale");
    }
}
