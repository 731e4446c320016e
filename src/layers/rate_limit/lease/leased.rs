//! `Leased`: a store wrapped with the leased mode's local state.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::settings::LeaseSettings;
use super::table::{Entry, Refill, Step};
use crate::backends::{Backend, KeySpace};
use crate::error::StoreError;
use crate::layers::rate_limit::store::write_state_id;
use crate::layers::rate_limit::{Charge, Decision, Quota, RateLimitStore};

/// A [`RateLimitStore`] whose decisions are local-first: see the
/// [module docs](super) for how, and for the error bound.
///
/// Every clone shares one table of keys; one `Leased` stands for one
/// instance (a [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) keeps
/// one for its leased policies).
pub struct Leased<S> {
    pub(super) shared: Arc<Shared<S>>,
}

pub(super) struct Shared<S> {
    store: S,
    /// Gives the units of the last clone's leases back (set where the store
    /// is known to be a `RateLimitStore`).
    on_drop: Box<dyn Fn(Expired) + Send + Sync>,
    settings: LeaseSettings,
    /// `policy/key` -> its local state.
    pub(super) entries: DashMap<Box<str>, Entry, foldhash::fast::RandomState>,
    /// Keys in `entries` (its own `len` locks every shard).
    live: AtomicUsize,
    sweeper: AtomicBool,
}

impl<S> Clone for Leased<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for Leased<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leased")
            .field("store", &self.shared.store)
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

/// Whether a request of `cost` under `quota` goes through the local state:
/// a peek (cost 0) and a cost above the burst (never possible) are decided
/// by the store, exactly, as in the exact mode, and not remembered.
fn is_leasable(quota: &Quota, cost: u64) -> bool {
    cost > 0 && cost <= quota.burst()
}

/// `policy/key` (policy names never hold `/`).
fn state_id(policy: &str, key: &str) -> String {
    let mut id = String::with_capacity(policy.len() + key.len() + 1);
    write_state_id(&mut id, policy, key);
    id
}

impl<S: RateLimitStore> Leased<S> {
    /// `store` in the leased mode with `settings`.
    pub fn new(store: S, settings: LeaseSettings) -> Self {
        let returner = store.clone();
        let on_drop = Box::new(move |expired: Expired| {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let store = returner.clone();
                runtime.spawn(async move { give_back_all(&store, expired).await });
            }
        });
        Self {
            shared: Arc::new(Shared {
                store,
                on_drop,
                settings,
                entries: DashMap::default(),
                live: AtomicUsize::new(0),
                sweeper: AtomicBool::new(false),
            }),
        }
    }

    /// The wrapped store.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.shared.settings
    }

    /// Units leased by this instance and not yet spent, over every key.
    pub fn leased_units(&self) -> u64 {
        self.shared.entries.iter().map(|e| e.units).sum()
    }

    /// Keys tracked in process (at most the settings' `max_keys`).
    pub fn tracked_keys(&self) -> usize {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// The decision when it can be taken in process (from a lease or a
    /// cached denial), with no store call; `None` otherwise (and nothing
    /// is counted then).
    pub(crate) fn decide_local(
        &self,
        policy: &str,
        key: &str,
        quota: &Quota,
        cost: u64,
    ) -> Option<Decision> {
        if !is_leasable(quota, cost) {
            return None;
        }
        let id = state_id(policy, key);
        let mut entry = self.shared.entries.get_mut(id.as_str())?;
        let max_lease = self.shared.settings.max_lease(quota);
        match entry.step(quota, cost, max_lease, Instant::now(), false) {
            Step::Decided(decision) => Some(decision),
            _ => None,
        }
    }

    /// The local step for `id`, creating its entry if there is room.
    fn step(&self, id: String, quota: &Quota, cost: u64, max_lease: u64, now: Instant) -> Step {
        let shared = &self.shared;
        self.ensure_sweeper();
        if let Some(mut entry) = shared.entries.get_mut(id.as_str()) {
            return entry.step(quota, cost, max_lease, now, true);
        }
        if shared.live.load(Ordering::Relaxed) >= shared.settings.max_keys() {
            return Step::Cold;
        }
        match shared.entries.entry(id.into_boxed_str()) {
            MapEntry::Occupied(mut entry) => {
                entry.get_mut().step(quota, cost, max_lease, now, true)
            }
            MapEntry::Vacant(slot) => {
                // Counted before the insert, so concurrent new keys never
                // pass the cap together.
                if shared.live.fetch_add(1, Ordering::Relaxed) >= shared.settings.max_keys() {
                    shared.live.fetch_sub(1, Ordering::Relaxed);
                    return Step::Cold;
                }
                let life = shared.settings.life();
                let mut entry = slot.insert(Entry::new(*quota, now, life));
                entry.step(quota, cost, max_lease, now, true)
            }
        }
    }

    /// Runs `f` on `id`'s entry, if it is still there.
    fn with_entry(&self, id: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(mut entry) = self.shared.entries.get_mut(id) {
            f(&mut entry);
        }
    }

    /// Ends refill `generation` of `id` with `f`, if that refill is still
    /// the key's own: a key that moved on (reset under a new quota,
    /// forgotten) gets nothing from it, and a newer refill stays in flight.
    fn end_refill(&self, id: &str, generation: u64, f: impl FnOnce(&mut Entry)) {
        self.with_entry(id, |e| {
            if e.end_refill(generation) {
                f(e);
            }
        });
    }

    /// Takes a lease of `want` units (`carry` of them already held) and
    /// spends `cost` of it.
    async fn refill(
        &self,
        (policy, key, id): (&str, &str, &str),
        quota: &Quota,
        cost: u64,
        Refill {
            want,
            carry,
            generation,
        }: Refill,
    ) -> Result<Decision, StoreError> {
        let store = &self.shared.store;
        let life = self.shared.settings.life();
        // A refill whose request is dropped mid-call must not leave the key
        // marked as refilling (its units are then lost to this instance:
        // they drain on the store, never admit).
        let _refilling = RefillGuard {
            leased: self,
            id,
            generation,
        };
        // An expired lease with more than the demand: keep what is needed,
        // give back the rest.
        if carry >= want {
            let back = carry - want;
            let now = Instant::now();
            let mut answer = Decision::Allowed {
                remaining: want - cost,
                reset: quota.period(),
            };
            self.end_refill(id, generation, |e| {
                e.units = want - cost;
                e.lease_ends = now + life;
                e.restart_window(now);
                answer = Decision::Allowed {
                    remaining: e.remaining.saturating_add(e.units),
                    reset: e.reset.saturating_sub(now - e.decided_at),
                };
            });
            // Admitted from what was held: a failed give-back only leaves
            // those units to drain on the store.
            if back > 0
                && let Err(err) = store.give_back(Charge::new(policy, key, quota, back)).await
            {
                tracing::debug!(error = %err, "rate limit lease give-back failed");
            }
            return Ok(answer);
        }
        let need = want - carry;
        let taken = store.decide(Charge::new(policy, key, quota, need)).await;
        let now = Instant::now();
        let taken = match taken {
            Ok(decision) => decision,
            Err(err) => {
                self.end_refill(id, generation, |e| {
                    e.units += carry;
                });
                return Err(err);
            }
        };
        if taken.is_allowed() {
            let units = carry + need - cost;
            self.end_refill(id, generation, |e| {
                // Nothing left after it: the next free unit is predicted
                // (see `record`), and the key stays starved.
                e.record(&taken, now);
                e.units += units;
                e.lease_ends = now + life;
                e.starved = taken.remaining() == 0;
                e.restart_window(now);
            });
            return Ok(Decision::Allowed {
                remaining: taken.remaining().saturating_add(units),
                reset: taken.reset(),
            });
        }
        // The lease was refused: spend what is held, or decide exactly.
        if carry >= cost {
            self.end_refill(id, generation, |e| {
                e.units += carry - cost;
                e.starved = true;
            });
            return Ok(Decision::Allowed {
                remaining: carry - cost,
                reset: taken.reset(),
            });
        }
        let shortfall = cost - carry;
        let exact = if need > shortfall {
            store
                .decide(Charge::new(policy, key, quota, shortfall))
                .await
        } else {
            Ok(taken)
        };
        let now = Instant::now();
        self.end_refill(id, generation, |e| {
            e.starved = true;
            if let Ok(decision) = &exact {
                e.record(decision, now);
            }
            // Denied: the held units stay, and go back when the lease ends.
            if !matches!(&exact, Ok(d) if d.is_allowed()) {
                e.units += carry;
            }
        });
        exact
    }

    /// Starts the task that gives back expired leases and forgets idle
    /// keys, on the caller's runtime, unless it runs; it ends with the last
    /// clone. If it ends otherwise (its runtime shut down), the next
    /// decision starts it again.
    fn ensure_sweeper(&self) {
        let shared = &self.shared;
        if shared.sweeper.load(Ordering::Relaxed) || shared.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            shared.sweeper.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<Shared<S>> = Arc::downgrade(shared);
        let every = shared.settings.sweep_every();
        // Moved into the task, so it clears the flag even if the task is
        // dropped before it first runs.
        let restart = SweeperFlag(weak.clone());
        runtime.spawn(async move {
            let _restart = restart;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { break };
                let expired = shared.sweep(Instant::now());
                let store = shared.store.clone();
                // Not held across the calls: the last clone may go.
                drop(shared);
                give_back_all(&store, expired).await;
            }
        });
    }
}

/// Clears the "sweeper running" flag when the sweeper task ends.
struct SweeperFlag<S>(Weak<Shared<S>>);

impl<S> Drop for SweeperFlag<S> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared.sweeper.store(false, Ordering::Release);
        }
    }
}

/// Ends an entry's refill when the refill ends, however it ends; a newer
/// refill of the key is left in flight.
struct RefillGuard<'a, S> {
    leased: &'a Leased<S>,
    id: &'a str,
    generation: u64,
}

impl<S> Drop for RefillGuard<'_, S> {
    fn drop(&mut self) {
        if let Some(mut entry) = self.leased.shared.entries.get_mut(self.id) {
            entry.end_refill(self.generation);
        }
    }
}

/// Units to give back: `(policy/key, quota, units)`.
type Expired = Vec<(Box<str>, Quota, u64)>;

impl<S: RateLimitStore> Shared<S> {
    /// Takes the unspent units of every expired lease, and forgets keys
    /// idle for ten intervals that hold nothing.
    fn sweep(&self, now: Instant) -> Expired {
        let idle_after = self.settings.interval() * 10;
        let mut expired = Vec::new();
        let mut removed = 0;
        self.entries.retain(|id, e| {
            if e.is_refilling() {
                return true;
            }
            if e.units > 0 && e.lease_ends <= now {
                expired.push((id.clone(), e.quota, std::mem::take(&mut e.units)));
            }
            let idle = e.units == 0
                && e.denied_until.is_none_or(|until| until <= now)
                && e.last_seen + idle_after <= now;
            removed += usize::from(idle);
            !idle
        });
        self.live.fetch_sub(removed, Ordering::Relaxed);
        expired
    }
}

#[cfg(all(test, battlement_loom))]
impl<S: RateLimitStore> Leased<S> {
    /// The sweeper's pass at `now`, its give-backs made.
    pub(super) async fn sweep_at(&self, now: Instant) {
        let expired = self.shared.sweep(now);
        give_back_all(&self.shared.store, expired).await;
    }

    /// Keys whose refill flag is set.
    pub(super) fn refilling(&self) -> usize {
        self.shared
            .entries
            .iter()
            .filter(|e| e.is_refilling())
            .count()
    }
}

/// Gives every expired lease back, concurrently. A failed give-back loses
/// nothing but time: those units drain on the store at the quota's rate.
async fn give_back_all<S: RateLimitStore>(store: &S, expired: Expired) {
    let mut calls: FuturesUnordered<_> = expired
        .iter()
        .filter_map(|(id, quota, units)| {
            let (policy, key) = id.split_once('/')?;
            Some(store.give_back(Charge::new(policy, key, quota, *units)))
        })
        .collect();
    while let Some(result) = calls.next().await {
        if let Err(err) = result {
            tracing::debug!(error = %err, "rate limit lease give-back failed");
        }
    }
}

impl<S> Drop for Shared<S> {
    /// The last clone gives every lease back, on the current runtime.
    fn drop(&mut self) {
        let expired: Expired = self
            .entries
            .iter_mut()
            .filter(|e| e.units > 0)
            .map(|mut e| (e.key().clone(), e.quota, std::mem::take(&mut e.units)))
            .collect();
        if !expired.is_empty() {
            (self.on_drop)(expired);
        }
    }
}

impl<S: RateLimitStore> Backend for Leased<S> {
    fn kind(&self) -> &'static str {
        self.shared.store.kind()
    }

    fn keyspace(&self) -> &KeySpace {
        self.shared.store.keyspace()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.shared.store.ping().await
    }

    fn close(&self) {
        self.shared.store.close();
    }
}

impl<S: RateLimitStore> RateLimitStore for Leased<S> {
    async fn decide(&self, charge: Charge<'_>) -> Result<Decision, StoreError> {
        let (policy, key, quota, cost) = (charge.policy, charge.key, charge.quota, charge.cost);
        let store = &self.shared.store;
        let max_lease = self.shared.settings.max_lease(quota);
        if !is_leasable(quota, cost) {
            return store.decide(charge).await;
        }
        let id = state_id(policy, key);
        let now = Instant::now();
        match self.step(id.clone(), quota, cost, max_lease, now) {
            Step::Decided(decision) => Ok(decision),
            Step::Refill(refill) => self.refill((policy, key, &id), quota, cost, refill).await,
            step @ (Step::Cold | Step::Exact) => {
                let decision = if matches!(step, Step::Cold) {
                    store.decide_batched(charge).await?
                } else {
                    store.decide(charge).await?
                };
                let now = Instant::now();
                self.with_entry(&id, |e| e.record(&decision, now));
                Ok(decision)
            }
        }
    }

    async fn give_back(&self, charge: Charge<'_>) -> Result<(), StoreError> {
        self.shared.store.give_back(charge).await
    }
}
