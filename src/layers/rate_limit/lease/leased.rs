//! `Leased`: a store wrapped with the leased mode's local state.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use dashmap::DashMap;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use super::settings::LeaseSettings;
use super::table::{Entry, Step};
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
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    store: S,
    /// Gives the units of the last clone's leases back (set where the store
    /// is known to be a `RateLimitStore`).
    on_drop: Box<dyn Fn(Expired) + Send + Sync>,
    settings: LeaseSettings,
    /// `policy/key` -> its local state.
    entries: DashMap<Box<str>, Entry, foldhash::fast::RandomState>,
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
        if let Some(mut entry) = shared.entries.get_mut(id.as_str()) {
            return entry.step(quota, cost, max_lease, now, true);
        }
        if shared.live.load(Ordering::Relaxed) >= shared.settings.max_keys() {
            return Step::Cold;
        }
        self.ensure_sweeper();
        let life = shared.settings.life();
        let mut entry = shared
            .entries
            .entry(id.into_boxed_str())
            .or_insert_with(|| {
                shared.live.fetch_add(1, Ordering::Relaxed);
                Entry::new(*quota, now, life)
            });
        entry.step(quota, cost, max_lease, now, true)
    }

    /// Runs `f` on `id`'s entry, if it is still there.
    fn with_entry(&self, id: &str, f: impl FnOnce(&mut Entry)) {
        if let Some(mut entry) = self.shared.entries.get_mut(id) {
            f(&mut entry);
        }
    }

    /// Takes a lease of `want` units (`carry` of them already held) and
    /// spends `cost` of it.
    async fn refill(
        &self,
        (policy, key, id): (&str, &str, &str),
        quota: &Quota,
        cost: u64,
        want: u64,
        carry: u64,
    ) -> Result<Decision, StoreError> {
        let store = &self.shared.store;
        let life = self.shared.settings.life();
        // A refill whose request is dropped mid-call must not leave the key
        // marked as refilling (its units are then lost to this instance:
        // they drain on the store, never admit).
        let _refilling = RefillGuard { leased: self, id };
        // An expired lease with more than the demand: keep what is needed,
        // give back the rest.
        if carry >= want {
            let back = carry - want;
            let now = Instant::now();
            let mut answer = Decision::Allowed {
                remaining: want - cost,
                reset: quota.period(),
            };
            self.with_entry(id, |e| {
                e.units = want - cost;
                e.lease_ends = now + life;
                e.refilling = false;
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
                self.with_entry(id, |e| {
                    e.units += carry;
                    e.refilling = false;
                });
                return Err(err);
            }
        };
        if taken.is_allowed() {
            let units = carry + need - cost;
            self.with_entry(id, |e| {
                // Nothing left after it: the next free unit is predicted
                // (see `record`), and the key stays starved.
                e.record(&taken, now);
                e.units += units;
                e.lease_ends = now + life;
                e.refilling = false;
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
            self.with_entry(id, |e| {
                e.units += carry - cost;
                e.refilling = false;
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
        self.with_entry(id, |e| {
            e.refilling = false;
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
    /// keys, once, on the caller's runtime; it ends with the last clone.
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
        runtime.spawn(async move {
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

/// Clears an entry's `refilling` mark when its refill ends, however it
/// ends.
struct RefillGuard<'a, S> {
    leased: &'a Leased<S>,
    id: &'a str,
}

impl<S> Drop for RefillGuard<'_, S> {
    fn drop(&mut self) {
        if let Some(mut entry) = self.leased.shared.entries.get_mut(self.id) {
            entry.refilling = false;
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
            if e.refilling {
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
        // A peek, or never possible: exact, and nothing to remember.
        if cost == 0 || cost > quota.burst() {
            return store.decide(charge).await;
        }
        let id = state_id(policy, key);
        let now = Instant::now();
        match self.step(id.clone(), quota, cost, max_lease, now) {
            Step::Decided(decision) => Ok(decision),
            Step::Refill { want, carry } => {
                self.refill((policy, key, &id), quota, cost, want, carry)
                    .await
            }
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
