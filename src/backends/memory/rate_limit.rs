//! `RateLimitStore` for `MemoryStore`: one lock-free cell per key.
//!
//! governor's limiter cannot be used here: its GCRA rounds the emission
//! interval to nanoseconds and has no cost-above-burst or quota-rescaling
//! semantics, and battlement's memory, Redis and etcd backends must decide
//! identically (SPEC RL-7). The cell follows governor's design instead: the
//! state is one 128-bit word updated with compare-and-swap.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use portable_atomic::AtomicU128;

use super::MemoryStore;
use crate::error::StoreError;
use crate::layers::rate_limit::gcra::{self, GcraState};
use crate::layers::rate_limit::store::{CONCERN, write_state_id};
use crate::layers::rate_limit::{Decision, Quota, RateLimitStore};

/// How often idle keys are evicted.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// `full_at_us` is only rewritten when it moves by more than this (and then
/// set this much later), to keep the hot path to one atomic write; it may
/// thus lag the true time by up to this much, so eviction waits this much
/// longer.
const FULL_AT_SLACK_US: u64 = 100_000;

/// The rate-limit cells of one memory store.
#[derive(Debug, Default)]
pub(crate) struct Cells {
    map: DashMap<StateId, Cell, foldhash::fast::RandomState>,
    sweeper: AtomicBool,
    /// When the decisions last swept, outside a tokio runtime.
    swept_at_us: AtomicU64,
}

/// `(debt, at)` in one word, plus the period the debt is expressed in and
/// when the bucket is full again (for eviction).
#[derive(Debug, Default)]
struct Cell {
    state: AtomicU128,
    period_us: AtomicU64,
    full_at_us: AtomicU64,
}

/// `period_us` while a decision rewrites the cell in another period's
/// units (a quota change): the debt and its period are two words, so the
/// rewrite holds the period until both are written, and concurrent
/// decisions wait instead of reading the new debt with the old period.
const RESCALING: u64 = u64::MAX;

/// The debt takes the low 53 bits of its half of the word (every debt is
/// below 2^53, see `Quota`); the 11 above count rescales. A rescale back
/// can write the very debt a rescale away replaced (a full bucket, denied
/// in turn under two periods), and without the count a decision that read
/// the word before both would still swap it, with the wrong period.
const DEBT_BITS: u32 = 53;
const DEBT_MASK: u64 = (1 << DEBT_BITS) - 1;
const EPOCH_MASK: u64 = u64::MAX >> DEBT_BITS;

impl Cell {
    fn decide(&self, quota: &Quota, cost: u64, now_us: u64) -> Decision {
        loop {
            // A consistent pair: the period, the word, and the period again
            // unchanged (a rescale sets RESCALING before it swaps the word).
            let period_us = self.period_us.load(Ordering::Acquire);
            if period_us == RESCALING {
                std::thread::yield_now();
                continue;
            }
            let current = self.state.load(Ordering::Acquire);
            if self.period_us.load(Ordering::Acquire) != period_us {
                continue;
            }
            let high = (current >> 64) as u64;
            let state = GcraState {
                debt: high & DEBT_MASK,
                at: current as u64,
                period_us,
            };
            let step = gcra::decide(Some(state), quota, cost, now_us);
            let Some(write) = step.write else {
                return step.decision;
            };
            let rescale = write.period_us != period_us;
            if rescale
                && self
                    .period_us
                    .compare_exchange(period_us, RESCALING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                continue;
            }
            let mut epoch = high >> DEBT_BITS;
            if rescale {
                epoch = epoch.wrapping_add(1) & EPOCH_MASK;
            }
            let high = (epoch << DEBT_BITS) | (write.debt & DEBT_MASK);
            let next = (u128::from(high) << 64) | u128::from(write.at);
            let swapped = self
                .state
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if rescale {
                // The new period with the new debt, or the old one back.
                let period = if swapped { write.period_us } else { period_us };
                self.period_us.store(period, Ordering::Release);
            }
            if swapped {
                let full_at = now_us.saturating_add(step.ttl_us());
                if full_at > self.full_at_us.load(Ordering::Relaxed) + FULL_AT_SLACK_US {
                    self.full_at_us
                        .fetch_max(full_at + FULL_AT_SLACK_US, Ordering::Relaxed);
                }
                return step.decision;
            }
        }
    }
}

/// A cell's name, `policy/key` in one allocation. Lookups go through
/// [`IdParts`], so a request finds its cell by the two parts without
/// building the name.
#[derive(Debug)]
struct StateId {
    text: Box<str>,
    policy_len: usize,
}

impl StateId {
    fn new(policy: &str, key: &str) -> Self {
        let mut text = String::with_capacity(policy.len() + 1 + key.len());
        write_state_id(&mut text, policy, key);
        Self {
            text: text.into(),
            policy_len: policy.len(),
        }
    }
}

/// A policy name and a key, owned ([`StateId`]) or borrowed (`(&str, &str)`),
/// as bytes: hashing and comparing them needs no UTF-8 boundary checks.
trait IdParts {
    fn policy(&self) -> &[u8];
    fn key(&self) -> &[u8];
}

impl IdParts for StateId {
    fn policy(&self) -> &[u8] {
        self.text
            .as_bytes()
            .get(..self.policy_len)
            .unwrap_or_default()
    }
    fn key(&self) -> &[u8] {
        self.text
            .as_bytes()
            .get(self.policy_len + 1..)
            .unwrap_or_default()
    }
}

impl IdParts for (&str, &str) {
    fn policy(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn key(&self) -> &[u8] {
        self.1.as_bytes()
    }
}

impl Hash for dyn IdParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // 0xff never occurs in UTF-8, so it separates the two parts.
        state.write(self.policy());
        state.write_u8(0xff);
        state.write(self.key());
    }
}

impl PartialEq for dyn IdParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.policy() == other.policy() && self.key() == other.key()
    }
}

impl Eq for dyn IdParts + '_ {}

impl<'a> Borrow<dyn IdParts + 'a> for StateId {
    fn borrow(&self) -> &(dyn IdParts + 'a) {
        self
    }
}

// Hashed and compared as its parts, as `Borrow` requires.
impl Hash for StateId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrow::<dyn IdParts>::borrow(self).hash(state);
    }
}

impl PartialEq for StateId {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.policy_len == other.policy_len
    }
}

impl Eq for StateId {}

impl Cells {
    /// Number of keys held.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// [`sweep`](Self::sweep)s when the last sweep by this method is
    /// [`SWEEP_EVERY`] old (one caller of many wins).
    fn sweep_if_due(&self, now_us: u64) {
        let last = self.swept_at_us.load(Ordering::Relaxed);
        if now_us.saturating_sub(last) >= SWEEP_EVERY.as_micros() as u64
            && self
                .swept_at_us
                .compare_exchange(last, now_us, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(now_us);
        }
    }

    /// Removes every key whose bucket is full again at `now_us`.
    pub(crate) fn sweep(&self, now_us: u64) {
        self.map
            .retain(|_, cell| cell.full_at_us.load(Ordering::Relaxed) + FULL_AT_SLACK_US > now_us);
    }

    fn decide(&self, policy: &str, key: &str, quota: &Quota, cost: u64, now_us: u64) -> Decision {
        let id: &dyn IdParts = &(policy, key);
        if let Some(cell) = self.map.get(id) {
            return cell.decide(quota, cost, now_us);
        }
        // A new key: write only when the request is allowed.
        let fresh = gcra::decide(None, quota, cost, now_us);
        if fresh.write.is_none() {
            return fresh.decision;
        }
        let cell = self.map.entry(StateId::new(policy, key)).or_default();
        cell.decide(quota, cost, now_us)
    }
}

impl MemoryStore {
    /// Number of rate-limit keys held; keys idle until their bucket is full
    /// again are evicted every second by a background task, without any
    /// call by the user (SPEC RL-4).
    pub fn rate_limit_keys(&self) -> usize {
        self.inner.cells.len()
    }

    /// Every rate-limit key (namespaced as on the servers) with the time
    /// until its bucket is full again.
    pub fn rate_limit_entries(&self) -> Vec<(String, Duration)> {
        let now = self.inner.clock.now_micros();
        self.inner
            .cells
            .map
            .iter()
            .map(|e| {
                let ttl = e.full_at_us.load(Ordering::Relaxed).saturating_sub(now);
                (
                    self.inner.keys.key(CONCERN, &e.key().text),
                    Duration::from_micros(ttl),
                )
            })
            .collect()
    }

    /// Starts the background sweeper once, on the caller's runtime. It ends
    /// when the store is dropped. Outside a tokio runtime the caller sweeps
    /// instead, once a second at most.
    fn ensure_sweeper(&self, now_us: u64) {
        let cells = &self.inner.cells;
        if cells.sweeper.load(Ordering::Relaxed) || cells.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            cells.sweeper.store(false, Ordering::Release);
            // No runtime to sweep in: the decisions sweep instead.
            cells.sweep_if_due(now_us);
            return;
        };
        let weak: Weak<super::Inner> = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            // If this task ends for any reason (store dropped, runtime shut
            // down), the next decision starts a new sweeper.
            let _restart = SweeperFlag(weak.clone());
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                inner.cells.sweep(inner.clock.now_micros());
            }
        });
    }
}

/// Clears the "sweeper running" flag when the sweeper task ends.
struct SweeperFlag(Weak<super::Inner>);

impl Drop for SweeperFlag {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.cells.sweeper.store(false, Ordering::Release);
        }
    }
}

impl MemoryStore {
    /// [`RateLimitStore::decide`], taken at once.
    pub(crate) fn decide_at_once(
        &self,
        policy: &str,
        key: &str,
        quota: &Quota,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        self.check_open()?;
        let now_us = self.inner.clock.now_micros();
        self.ensure_sweeper(now_us);
        Ok(self.inner.cells.decide(policy, key, quota, cost, now_us))
    }
}

impl RateLimitStore for MemoryStore {
    async fn decide(
        &self,
        policy: &str,
        key: &str,
        quota: &Quota,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        self.decide_at_once(policy, key, quota, cost)
    }

    fn in_process(&self) -> Option<&MemoryStore> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two quotas of one rate and burst in different periods (10/s and
    // 600/min, burst 10), decided at once on one key at one instant: the
    // debt changes units on almost every decision. A decision that read it
    // with the other quota's period would cut a per-second debt to one
    // per-minute unit and admit more than the burst.
    #[test]
    fn a_quota_change_under_contention_never_admits_more_than_the_burst() {
        let per_second = Quota::per_second(10).unwrap();
        let per_minute = Quota::per_minute(600).unwrap().with_burst(10).unwrap();
        for round in 0..2_000u64 {
            let cell = Cell::default();
            let allowed = AtomicU64::new(0);
            std::thread::scope(|s| {
                for t in 0..4u64 {
                    let (cell, allowed) = (&cell, &allowed);
                    let (a, b) = (&per_second, &per_minute);
                    s.spawn(move || {
                        for i in 0..40u64 {
                            let quota = if (i + t) % 2 == 0 { a } else { b };
                            if cell.decide(quota, 1, 1_000_000_000).is_allowed() {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
            });
            let allowed = allowed.load(Ordering::Relaxed);
            assert!(allowed <= 10, "round {round}: {allowed} admitted");
        }
    }

    #[test]
    fn outside_a_runtime_the_decisions_sweep_idle_keys() {
        let clock = crate::clock::ManualClock::new(Duration::from_secs(1_000));
        let store = MemoryStore::new().with_clock(clock.shared());
        let quota = Quota::per_second(10).unwrap();
        for i in 0..1_000 {
            let key = i.to_string();
            assert!(
                store
                    .decide_at_once("p", &key, &quota, 1)
                    .unwrap()
                    .is_allowed()
            );
        }
        assert_eq!(store.rate_limit_keys(), 1_000);
        clock.advance(Duration::from_secs(2));
        store.decide_at_once("p", "late", &quota, 1).unwrap();
        assert_eq!(store.rate_limit_keys(), 1, "only the key just written");
    }
}
