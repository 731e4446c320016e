//! `RateLimitStore` for `MemoryStore`: one lock-free cell per key.
//!
//! governor's limiter cannot be used here: its GCRA rounds the emission
//! interval to nanoseconds and has no cost-above-burst or quota-rescaling
//! semantics, and battlement's memory, Redis and etcd backends must decide
//! identically. The cell follows governor's design instead: the
//! state is one 128-bit word updated with compare-and-swap.
//!
//! The store holds at most `max_keys` cells (see `MemoryStore`'s "Rate-limit
//! key cap"). Only a new key checks the cap, against a counter kept beside
//! the map (the map's own `len` locks every shard): a decision on a key
//! already held costs what it did without one. A new key that finds the map
//! full first sweeps idle keys, at most every [`FULL_SWEEP_EVERY`] and by one
//! caller at a time, and otherwise is decided on its policy's overflow
//! cell, which every key the map had no room for shares: limited together,
//! never unlimited. Each such decision is a `rate_limit`/`overflow` event.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::MemoryStore;
use crate::error::StoreError;
use crate::events::{Events, RateLimitEvent};
use crate::layers::rate_limit::gcra::{self, GcraState};
use crate::layers::rate_limit::store::{Charge, write_state_id};
use crate::layers::rate_limit::{Decision, Quota, RateLimitStore};
// The cell's atomics are loom's under `--cfg battlement_loom` (see `loom_models`).
use crate::sync::{AtomicU64, AtomicU128, Ordering, yield_now};

/// How often idle keys are evicted.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How often, at most, a new key that finds the map full sweeps idle keys
/// before it falls to the overflow cell. A flood of new keys, where nothing
/// is idle, then costs at most four extra sweeps a second: a sweep of a
/// million keys none of which is idle takes ~15 ms on a 2-core machine
/// (release build), so ~6 % of one core at the default cap.
const FULL_SWEEP_EVERY: Duration = Duration::from_millis(250);

/// The default of [`Cells::max_keys`]: see `MemoryStore`'s "Rate-limit key
/// cap".
pub(crate) const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// `full_at_us` is only rewritten when it moves by more than this (and then
/// set this much later), to keep the hot path to one atomic write; it may
/// thus lag the true time by up to this much, so eviction waits this much
/// longer.
const FULL_AT_SLACK_US: u64 = 100_000;

/// The rate-limit cells of one memory store.
#[derive(Debug)]
pub(crate) struct Cells {
    map: DashMap<StateId, Cell, foldhash::fast::RandomState>,
    /// Keys in `map`: raised before an insert and lowered after a sweep
    /// removed keys, so never below the map's length.
    live: AtomicUsize,
    /// The most keys `map` holds.
    max_keys: usize,
    /// One cell per policy, shared by the keys `map` had no room for (not
    /// counted in `live`).
    overflow: DashMap<Box<str>, Overflow, foldhash::fast::RandomState>,
    sweeper: AtomicBool,
    /// When a sweep last started (by the sweeper, a decision outside a
    /// runtime or a new key that found the map full).
    swept_at_us: AtomicU64,
}

/// The overflow cell of one policy, with the policy's name for its events.
#[derive(Debug)]
struct Overflow {
    policy: Arc<str>,
    cell: Cell,
}

/// `(debt, at)` in one word, plus the quota the debt was written under
/// and when the bucket is full again (for eviction).
#[derive(Debug, Default)]
struct Cell {
    state: AtomicU128,
    /// The period the debt is expressed in (low [`PERIOD_BITS`] bits) and
    /// how many times the cell changed quota (the bits above), or
    /// [`REQUOTING`].
    period: AtomicU64,
    /// The count (high half) and burst (low half) of the quota the debt
    /// was written under.
    rate: AtomicU128,
    full_at_us: AtomicU64,
}

/// `period` while a decision rewrites the cell under another quota: the
/// debt, its period and its rate are three words, so the rewrite holds the
/// period until all are written, and concurrent decisions wait instead of
/// reading the new debt with the old quota.
const REQUOTING: u64 = u64::MAX;

/// Every period is below 2^52 µs (see `Quota`); the 11 bits above count
/// quota changes, so a decision that read the three words around one sees
/// the period word change even when the period itself did not.
const PERIOD_BITS: u32 = 53;
const PERIOD_MASK: u64 = (1 << PERIOD_BITS) - 1;

/// The debt takes the low 53 bits of its half of the word (every debt is
/// below 2^53, see `Quota`); the 11 above count quota changes. A change
/// back can write the very debt a change away replaced (a full bucket,
/// denied in turn under two periods), and without the count a decision
/// that read the word before both would still swap it, with the wrong
/// quota.
const DEBT_BITS: u32 = 53;
const DEBT_MASK: u64 = (1 << DEBT_BITS) - 1;
const EPOCH_MASK: u64 = u64::MAX >> DEBT_BITS;

impl Cell {
    /// Whether the bucket is full again at `now_us` (then the cell can go).
    fn is_idle(&self, now_us: u64) -> bool {
        self.full_at_us.load(Ordering::Relaxed) + FULL_AT_SLACK_US <= now_us
    }

    fn decide(&self, quota: &Quota, cost: u64, now_us: u64) -> Decision {
        self.update(now_us, |state| {
            gcra::decide(Some(state), quota, cost, now_us)
        })
    }

    /// Gives back `units` spent at or before `now_us` (a spent charge, a
    /// lease's unused units; see [`gcra::give_back`]): a cell under
    /// another quota is left alone.
    fn give_back(&self, quota: &Quota, units: u64, now_us: u64) -> Decision {
        self.update(now_us, |state| {
            gcra::give_back(Some(state), quota, units, now_us)
        })
    }

    /// What [`decide`](Self::decide) would answer, writing nothing.
    fn peek(&self, quota: &Quota, cost: u64, now_us: u64) -> Decision {
        let (_, _, state) = self.load();
        gcra::decide(Some(state), quota, cost, now_us).decision
    }

    /// A consistent view: the state word and the period word, with the
    /// state they hold; the rate and the state word are read between two
    /// equal reads of the period word (a quota change sets REQUOTING
    /// before it writes, and counts itself after).
    #[inline]
    fn load(&self) -> (u128, u64, GcraState) {
        loop {
            let period = self.period.load(Ordering::Acquire);
            if period == REQUOTING {
                yield_now();
                continue;
            }
            let rate = self.rate.load(Ordering::Acquire);
            let current = self.state.load(Ordering::Acquire);
            if self.period.load(Ordering::Acquire) != period {
                continue;
            }
            let high = (current >> 64) as u64;
            let state = GcraState {
                debt: high & DEBT_MASK,
                at: current as u64,
                period_us: period & PERIOD_MASK,
                count: (rate >> 64) as u64,
                burst: rate as u64,
            };
            return (current, period, state);
        }
    }

    /// Applies `step` to the state until its write swaps in (or it writes
    /// nothing); its decision.
    #[inline]
    fn update(&self, now_us: u64, step: impl Fn(GcraState) -> gcra::Step) -> Decision {
        loop {
            let (current, period, state) = self.load();
            let high = (current >> 64) as u64;
            let step = step(state);
            let Some(write) = step.write else {
                return step.decision;
            };
            let requote = write.quota_parts() != state.quota_parts();
            if requote
                && self
                    .period
                    .compare_exchange(period, REQUOTING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                continue;
            }
            let mut epoch = high >> DEBT_BITS;
            if requote {
                epoch = epoch.wrapping_add(1) & EPOCH_MASK;
            }
            let high = (epoch << DEBT_BITS) | (write.debt & DEBT_MASK);
            let next = (u128::from(high) << 64) | u128::from(write.at);
            let swapped = self
                .state
                .compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if requote {
                self.end_requote(period, swapped.then_some(&write));
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

    /// Ends a quota change that held the period word (`before` it): the
    /// quota of `written`, or the old one back when the swap failed; the
    /// change is counted either way.
    fn end_requote(&self, before: u64, written: Option<&GcraState>) {
        let changes = ((before >> PERIOD_BITS) + 1) & (u64::MAX >> PERIOD_BITS);
        let period_us = match written {
            Some(w) => {
                self.rate.store(
                    (u128::from(w.count) << 64) | u128::from(w.burst),
                    Ordering::Release,
                );
                w.period_us
            }
            None => before & PERIOD_MASK,
        };
        self.period
            .store((changes << PERIOD_BITS) | period_us, Ordering::Release);
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
    fn new(policy: &str, key: &[u8]) -> Self {
        // Always the bytes of a `&str`: nothing is lost.
        let key = String::from_utf8_lossy(key);
        let mut text = String::with_capacity(policy.len() + 1 + key.len());
        write_state_id(&mut text, policy, &key);
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

impl IdParts for (&str, &[u8]) {
    fn policy(&self) -> &[u8] {
        self.0.as_bytes()
    }
    fn key(&self) -> &[u8] {
        self.1
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
    /// No cells yet; at most `max_keys` keys (at least 1) besides the
    /// overflow cells.
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            map: DashMap::default(),
            live: AtomicUsize::new(0),
            max_keys: max_keys.max(1),
            overflow: DashMap::default(),
            sweeper: AtomicBool::new(false),
            swept_at_us: AtomicU64::new(0),
        }
    }

    /// The most keys held besides the overflow cells.
    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Number of keys held, the overflow cells included.
    pub(crate) fn len(&self) -> usize {
        self.map.len() + self.overflow.len()
    }

    /// [`sweep`](Self::sweep)s when the last sweep started at least
    /// `every` ago (one caller of many wins); whether it swept.
    fn sweep_if_due(&self, now_us: u64, every: Duration) -> bool {
        let last = self.swept_at_us.load(Ordering::Relaxed);
        let due = now_us.saturating_sub(last) >= every.as_micros() as u64
            && self
                .swept_at_us
                .compare_exchange(last, now_us, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if due {
            self.remove_idle(now_us);
        }
        due
    }

    /// Removes every key whose bucket is full again at `now_us`.
    pub(crate) fn sweep(&self, now_us: u64) {
        self.swept_at_us.store(now_us, Ordering::Relaxed);
        self.remove_idle(now_us);
    }

    fn remove_idle(&self, now_us: u64) {
        let mut removed = 0;
        self.map.retain(|_, cell| {
            let idle = cell.is_idle(now_us);
            removed += usize::from(idle);
            !idle
        });
        self.live.fetch_sub(removed, Ordering::Relaxed);
        self.overflow.retain(|_, o| !o.cell.is_idle(now_us));
    }

    fn decide(
        &self,
        policy: &str,
        key: &[u8],
        quota: &Quota,
        cost: u64,
        now_us: u64,
        events: &Events,
    ) -> Decision {
        let id: &dyn IdParts = &(policy, key);
        if let Some(cell) = self.map.get(id) {
            return cell.decide(quota, cost, now_us);
        }
        // A new key: write only when the request is allowed.
        let fresh = gcra::decide(None, quota, cost, now_us);
        if fresh.write.is_none() {
            return fresh.decision;
        }
        if self.live.load(Ordering::Relaxed) >= self.max_keys && !self.make_room(now_us) {
            return self.overflow(policy, quota, cost, now_us, events);
        }
        match self.map.entry(StateId::new(policy, key)) {
            Entry::Occupied(cell) => cell.get().decide(quota, cost, now_us),
            Entry::Vacant(slot) => {
                // Taken before the insert, so concurrent new keys never
                // pass the cap together.
                if self.live.fetch_add(1, Ordering::Relaxed) >= self.max_keys {
                    self.live.fetch_sub(1, Ordering::Relaxed);
                    drop(slot);
                    return self.overflow(policy, quota, cost, now_us, events);
                }
                slot.insert(Cell::default()).decide(quota, cost, now_us)
            }
        }
    }

    /// What [`decide`](Self::decide) would answer, writing nothing.
    fn peek(&self, c: &Charge<'_>, now_us: u64) -> Decision {
        let id: &dyn IdParts = &(c.policy, c.key);
        match self.map.get(id) {
            Some(cell) => cell.peek(c.quota, c.cost, now_us),
            None => gcra::decide(None, c.quota, c.cost, now_us).decision,
        }
    }

    /// Returns a charge spent at or before `now_us` to the cell that took
    /// it (the key's, or the policy's overflow cell).
    fn give_back(&self, c: &Charge<'_>, now_us: u64) {
        let id: &dyn IdParts = &(c.policy, c.key);
        if let Some(cell) = self.map.get(id) {
            cell.give_back(c.quota, c.cost, now_us);
        } else if let Some(o) = self.overflow.get(c.policy) {
            o.cell.give_back(c.quota, c.cost, now_us);
        }
    }

    /// Decides every charge of one request at `now_us`, all or nothing.
    ///
    /// Every charge is first read without a write, so a request that one
    /// of them denies touches no other. Then each is spent in order; one
    /// that a concurrent request emptied meanwhile is denied, and the
    /// charges spent before it are given back.
    fn decide_all(&self, charges: &[Charge<'_>], now_us: u64, events: &Events) -> Vec<Decision> {
        let mut decisions: Vec<Decision> = charges.iter().map(|c| self.peek(c, now_us)).collect();
        if decisions.iter().any(|d| !d.is_allowed()) {
            for (c, d) in charges.iter().zip(&mut decisions) {
                if d.is_allowed() {
                    *d = self.standing(c, now_us);
                    continue;
                }
                // The denial as a decision of its own, which rewrites a
                // state left under another quota.
                let key = c.key.as_bytes();
                *d = self.decide(c.policy, key, c.quota, c.cost, now_us, events);
                if d.is_allowed() {
                    // Room was given back meanwhile: this request spends
                    // nothing all the same.
                    self.give_back(c, now_us);
                    *d = self.standing(c, now_us);
                }
            }
            return decisions;
        }
        for (i, c) in charges.iter().enumerate() {
            let key = c.key.as_bytes();
            let decision = self.decide(c.policy, key, c.quota, c.cost, now_us, events);
            if !decision.is_allowed() {
                for spent in &charges[..i] {
                    self.give_back(spent, now_us);
                }
                for (j, (c, d)) in charges.iter().zip(&mut decisions).enumerate() {
                    *d = match self.peek(c, now_us) {
                        _ if j == i => decision,
                        denied if !denied.is_allowed() => denied,
                        _ => self.standing(c, now_us),
                    };
                }
                return decisions;
            }
            decisions[i] = decision;
        }
        decisions
    }

    /// The numbers of a charge's state as it stands, nothing taken.
    fn standing(&self, c: &Charge<'_>, now_us: u64) -> Decision {
        self.peek(&Charge { cost: 0, ..*c }, now_us)
    }

    /// Sweeps a full map if no sweep started in the last
    /// [`FULL_SWEEP_EVERY`]; whether a key fits now.
    fn make_room(&self, now_us: u64) -> bool {
        self.sweep_if_due(now_us, FULL_SWEEP_EVERY)
            && self.live.load(Ordering::Relaxed) < self.max_keys
    }

    /// Decides on `policy`'s overflow cell and reports it.
    fn overflow(
        &self,
        policy: &str,
        quota: &Quota,
        cost: u64,
        now_us: u64,
        events: &Events,
    ) -> Decision {
        let decide = |o: &Overflow| {
            let decision = o.cell.decide(quota, cost, now_us);
            events.report(RateLimitEvent::Overflow, Some(&o.policy), || {
                Some(format!(
                    "the store holds its maximum of {} keys: decided on the \
                     policy's shared overflow key",
                    self.max_keys
                ))
            });
            decision
        };
        if let Some(o) = self.overflow.get(policy) {
            return decide(&o);
        }
        let o = self
            .overflow
            .entry(policy.into())
            .or_insert_with(|| Overflow {
                policy: policy.into(),
                cell: Cell::default(),
            });
        decide(&o)
    }
}

impl MemoryStore {
    /// Number of rate-limit keys held, the overflow keys included (at most
    /// [`rate_limit_max_keys`](Self::rate_limit_max_keys) plus one per
    /// policy); keys idle until their bucket is full again are evicted
    /// every second by a background task, without any call by the user
    ///.
    pub fn rate_limit_keys(&self) -> usize {
        self.inner.cells.len()
    }

    #[cfg(any(test, feature = "conformance"))]
    /// Every rate-limit key (namespaced as on the servers) with the time
    /// until its bucket is full again. A policy's overflow key is listed
    /// as the key of `{policy}#overflow`.
    pub fn rate_limit_entries(&self) -> Vec<(String, Duration)> {
        let now = self.inner.clock.now_micros();
        let cells = &self.inner.cells;
        let entry = |id: &str, cell: &Cell| {
            let ttl = cell.full_at_us.load(Ordering::Relaxed).saturating_sub(now);
            (
                self.inner
                    .keys
                    .key(crate::layers::rate_limit::store::CONCERN, id),
                Duration::from_micros(ttl),
            )
        };
        let overflow = cells
            .overflow
            .iter()
            .map(|e| entry(&format!("{}#overflow", e.key()), &e.cell));
        cells
            .map
            .iter()
            .map(|e| entry(&e.key().text, e.value()))
            .chain(overflow)
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
            cells.sweep_if_due(now_us, SWEEP_EVERY);
            return;
        };
        let weak: Weak<super::Inner> = Arc::downgrade(&self.inner);
        // If this task ends for any reason (store dropped, runtime shut
        // down, even before it first ran), the next decision starts a new
        // sweeper: the flag is cleared when the task's future drops.
        let restart = SweeperFlag(weak.clone());
        runtime.spawn(async move {
            let _restart = restart;
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
        self.decide_bytes_at_once(policy, key.as_bytes(), quota, cost)
    }

    /// [`decide_at_once`](Self::decide_at_once) for a key given as the
    /// bytes of its text (a [`Key`](crate::key::Key)'s, read without a
    /// UTF-8 check).
    pub(crate) fn decide_bytes_at_once(
        &self,
        policy: &str,
        key: &[u8],
        quota: &Quota,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        self.check_open()?;
        let now_us = self.inner.clock.now_micros();
        self.ensure_sweeper(now_us);
        let events = &self.inner.events;
        Ok(self
            .inner
            .cells
            .decide(policy, key, quota, cost, now_us, events))
    }
}

impl MemoryStore {
    /// [`RateLimitStore::decide_all`], taken at once.
    pub(crate) fn decide_all_at_once(
        &self,
        charges: &[Charge<'_>],
    ) -> Result<Vec<Decision>, StoreError> {
        self.check_open()?;
        let now_us = self.inner.clock.now_micros();
        self.ensure_sweeper(now_us);
        Ok(self
            .inner
            .cells
            .decide_all(charges, now_us, &self.inner.events))
    }
}

impl RateLimitStore for MemoryStore {
    async fn decide(&self, charge: Charge<'_>) -> Result<Decision, StoreError> {
        self.decide_at_once(charge.policy, charge.key, charge.quota, charge.cost)
    }

    async fn give_back(&self, charge: Charge<'_>) -> Result<(), StoreError> {
        self.check_open()?;
        let now_us = self.inner.clock.now_micros();
        self.inner.cells.give_back(&charge, now_us);
        Ok(())
    }

    async fn decide_all(&self, charges: &[Charge<'_>]) -> Result<Vec<Decision>, StoreError> {
        self.decide_all_at_once(charges)
    }
}

#[cfg(all(test, battlement_loom))]
mod loom_models;

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

    /// Decisions of `store` on `keys` distinct new keys of policy `p`,
    /// with the `rate_limit`/`overflow` events they reported: `(allowed,
    /// overflow events)`.
    fn flood(
        store: &MemoryStore,
        rx: &mut tokio::sync::broadcast::Receiver<crate::events::Event>,
        keys: std::ops::Range<u32>,
        quota: &Quota,
    ) -> (usize, usize) {
        use std::fmt::Write;
        let (mut allowed, mut overflowed) = (0, 0);
        let mut key = String::new();
        for i in keys {
            key.clear();
            let _ = write!(key, "{i}");
            allowed += usize::from(
                store
                    .decide_at_once("p", &key, quota, 1)
                    .unwrap()
                    .is_allowed(),
            );
            if i % 512 == 0 {
                overflowed += overflow_events(rx);
            }
        }
        (allowed, overflowed + overflow_events(rx))
    }

    fn overflow_events(rx: &mut tokio::sync::broadcast::Receiver<crate::events::Event>) -> usize {
        let mut n = 0;
        while let Ok(e) = rx.try_recv() {
            assert_eq!((e.layer(), e.policy()), ("rate_limit", Some("p")));
            n += usize::from(e.event() == "overflow");
        }
        n
    }

    /// A store holding at most `max_keys` keys, on a manual clock, and
    /// its events.
    fn capped(
        max_keys: usize,
    ) -> (
        crate::clock::ManualClock,
        MemoryStore,
        tokio::sync::broadcast::Receiver<crate::events::Event>,
    ) {
        let clock = crate::clock::ManualClock::new(Duration::from_secs(1_000));
        let events = Events::new();
        let rx = events.subscribe();
        let store = MemoryStore::new()
            .rate_limit_max_keys(max_keys)
            .with_clock(clock.shared())
            .events(events);
        (clock, store, rx)
    }

    // A million distinct keys within one period on a store capped at 10,000:
    // the first 10,000 get their own keys, the rest share the policy's one
    // overflow key, which admits its burst and then denies them, each
    // decision reported.
    #[test]
    fn a_key_flood_is_capped_and_shares_one_limited_overflow_key() {
        let (clock, store, mut rx) = capped(10_000);
        let quota = Quota::per_minute(5).unwrap();
        let (allowed, overflowed) = flood(&store, &mut rx, 0..1_000_000, &quota);
        assert_eq!(
            store.rate_limit_keys(),
            10_001,
            "10,000 keys + the overflow key"
        );
        assert_eq!(overflowed, 990_000, "every overflowed decision is an event");
        assert_eq!(allowed, 10_000 + 5, "own keys + the overflow key's burst");
        // Still limited: a new key is denied, a held one keeps its own count.
        let late = store.decide_at_once("p", "late", &quota, 1).unwrap();
        assert!(!late.is_allowed());
        assert!(late.retry_after().is_some());
        let held = store.decide_at_once("p", "0", &quota, 1).unwrap();
        assert_eq!((held.is_allowed(), held.remaining()), (true, 3));
        // One overflow key per policy.
        let other = store.decide_at_once("q", "x", &quota, 1).unwrap();
        assert!(other.is_allowed());
        assert_eq!(store.rate_limit_keys(), 10_002);
        // The overflow keys are listed, and swept once idle.
        let names: Vec<String> = store
            .rate_limit_entries()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(names.iter().filter(|k| k.contains("overflow")).count(), 2);
        clock.advance(Duration::from_secs(120));
        store.inner.cells.sweep(store.clock().now_micros());
        assert_eq!(store.rate_limit_keys(), 0);
    }

    // Once the held keys are idle, a new key on a full store sweeps them
    // and gets its own key instead of the overflow key.
    #[test]
    fn a_full_store_sweeps_idle_keys_before_it_overflows() {
        // A runtime that never runs its sweeper task: only a full store
        // sweeps.
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _in_runtime = rt.enter();
        let (clock, store, mut rx) = capped(100);
        let quota = Quota::per_second(1).unwrap();
        assert_eq!(flood(&store, &mut rx, 0..100, &quota), (100, 0));
        assert_eq!(flood(&store, &mut rx, 100..101, &quota), (1, 1));
        // The keys are idle only after a second: the full store sweeps
        // again (100 ms after the last sweep) but finds no room yet.
        clock.advance(Duration::from_millis(500));
        assert_eq!(flood(&store, &mut rx, 101..102, &quota), (0, 1));
        clock.advance(Duration::from_secs(2));
        assert_eq!(flood(&store, &mut rx, 200..300, &quota), (100, 0));
        assert_eq!(store.rate_limit_keys(), 100, "the idle keys made room");
    }

    // A sweeper whose runtime shut down before it first ran is started
    // again by the next decision on another runtime.
    #[test]
    fn a_sweeper_that_never_ran_is_started_again() {
        let store = MemoryStore::new();
        let quota = Quota::per_second(1).unwrap();
        let decide = |key: &str| {
            store
                .decide_at_once("p", key, &quota, 1)
                .unwrap()
                .is_allowed()
        };
        let first = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        first.block_on(async { assert!(decide("a")) });
        drop(first);
        assert!(
            !store.inner.cells.sweeper.load(Ordering::Acquire),
            "the unrun sweeper's flag is cleared"
        );
        let second = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        second.block_on(async { assert!(decide("b")) });
        assert!(store.inner.cells.sweeper.load(Ordering::Acquire));
    }

    #[test]
    fn the_key_cap_is_configurable() {
        let config: crate::backends::MemoryConfig =
            serde_json::from_str(r#"{"rate_limit_max_keys": 7}"#).unwrap();
        let store = MemoryStore::from_config(config).unwrap();
        assert_eq!(store.inner.cells.max_keys(), 7);
        assert_eq!(MemoryStore::new().inner.cells.max_keys(), DEFAULT_MAX_KEYS);
        let zero = crate::backends::MemoryConfig::default().rate_limit_max_keys(0);
        assert!(MemoryStore::from_config(zero).is_err());
        let kept = MemoryStore::new()
            .rate_limit_max_keys(3)
            .events(Events::new());
        assert_eq!(kept.inner.cells.max_keys(), 3, "kept by the other builders");
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
