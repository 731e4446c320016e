//! What one process knows per key in the leased mode: its lease, its
//! cached denial and its recent demand. Every step here is in process;
//! `leased.rs` makes the store calls.

use std::time::{Duration, Instant};

use crate::layers::rate_limit::{Decision, Quota};

/// A key whose demand, over a lease's life, is below this many units is
/// cold: its decisions are exact (and batched with other keys' on Redis),
/// since a lease would cost a give-back call for little saved.
pub(crate) const MIN_LEASE: u64 = 4;

/// Demand is measured over at least this long, so a first burst of
/// requests microseconds apart does not read as an unbounded rate.
const MIN_WINDOW: Duration = Duration::from_millis(1);

/// One key's local state.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The quota the lease was taken under.
    pub(crate) quota: Quota,
    /// Leased units not yet spent.
    pub(crate) units: u64,
    /// When the unspent units go back.
    pub(crate) lease_ends: Instant,
    /// A denial cached until then: no store call before it.
    pub(crate) denied_until: Option<Instant>,
    /// What the store said last: requests left after it, and when full.
    pub(crate) remaining: u64,
    pub(crate) reset: Duration,
    pub(crate) decided_at: Instant,
    /// Demand since `window_start`, in units (admitted or not).
    window_start: Instant,
    window_used: u64,
    /// The generation of the refill taking a lease now, if one is: other
    /// requests meanwhile decide exactly, and only that refill may end it.
    refill: Option<u64>,
    /// Refills started on this key (a reset keeps it), so a refill that
    /// ends late never ends, or adds its units to, a newer one.
    refills: u64,
    /// A lease was refused lately: lease no more than the request until
    /// the store shows room again.
    pub(crate) starved: bool,
    pub(crate) last_seen: Instant,
    /// No request was seen yet.
    new_key: bool,
    /// How long a lease is held (the demand is estimated over it).
    life: Duration,
}

/// What to do with a request, decided in process.
#[derive(Debug)]
pub(crate) enum Step {
    /// Answered from the lease or the cached denial.
    Decided(Decision),
    /// A cold key (or no room to track it): one exact decision, which may
    /// share a store call with other keys'.
    Cold,
    /// Another request is taking this key's lease: one exact decision now.
    Exact,
    /// Take a lease.
    Refill(Refill),
}

/// A lease to take: hold `want` units after the request's cost is spent,
/// of which `carry` are already held (an expired lease's rest), as refill
/// `generation` of the key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refill {
    pub(crate) want: u64,
    pub(crate) carry: u64,
    pub(crate) generation: u64,
}

impl Entry {
    pub(crate) fn new(quota: Quota, now: Instant, life: Duration) -> Self {
        Self {
            quota,
            units: 0,
            lease_ends: now,
            denied_until: None,
            remaining: quota.burst(),
            reset: Duration::ZERO,
            decided_at: now,
            window_start: now,
            window_used: 0,
            refill: None,
            refills: 0,
            starved: false,
            last_seen: now,
            new_key: true,
            life,
        }
    }

    /// Decides in process if it can; with `commit`, also counts the demand
    /// and marks a refill as started (the caller then makes it).
    pub(crate) fn step(
        &mut self,
        quota: &Quota,
        cost: u64,
        max_lease: u64,
        now: Instant,
        commit: bool,
    ) -> Step {
        if self.quota != *quota {
            // Units leased under another quota are not this one's: they
            // are dropped (and drain on the store), never spent.
            if !commit || self.is_refilling() {
                return Step::Exact;
            }
            let refills = self.refills;
            *self = Self::new(*quota, now, self.life);
            self.refills = refills;
        }
        let fresh = self.new_key;
        if self.units >= cost && now < self.lease_ends {
            self.units -= cost;
            self.seen(cost, now);
            return Step::Decided(Decision::Allowed {
                remaining: self.remaining.saturating_add(self.units),
                reset: self.reset.saturating_sub(now - self.decided_at),
            });
        }
        if let Some(until) = self.denied_until.filter(|until| now < *until) {
            self.seen(cost, now);
            return Step::Decided(Decision::Denied {
                retry_after: Some(until - now),
                remaining: 0,
                reset: self.reset.saturating_sub(now - self.decided_at),
            });
        }
        if !commit {
            return Step::Exact;
        }
        if self.is_refilling() {
            self.seen(cost, now);
            // A key with no room left (its last lease was refused): the
            // call in flight takes what has freed up, so this request is
            // denied here, for one emission interval, rather than sent to
            // the store with every other request waiting on it.
            if self.starved {
                return Step::Decided(Decision::Denied {
                    retry_after: Some(self.quota.emission_interval()),
                    remaining: 0,
                    reset: self.reset.saturating_sub(now - self.decided_at),
                });
            }
            return Step::Exact;
        }
        let demand = self.demand(cost, now, max_lease);
        self.seen(cost, now);
        // Too small to lease: exact, with only the denial cache in front.
        if fresh || max_lease < 2 || demand < MIN_LEASE {
            // A lease's rest, if any, still goes back when it ends.
            return Step::Cold;
        }
        let want = if self.starved {
            cost
        } else {
            demand.max(cost).min(max_lease.max(cost))
        };
        self.refills += 1;
        self.refill = Some(self.refills);
        let carry = std::mem::take(&mut self.units);
        Step::Refill(Refill {
            want,
            carry,
            generation: self.refills,
        })
    }

    /// Whether a refill is taking a lease for this key now.
    pub(crate) fn is_refilling(&self) -> bool {
        self.refill.is_some()
    }

    /// Ends refill `generation`; whether it was the one in flight (when
    /// not, the key has moved on and the refill must leave it alone).
    pub(crate) fn end_refill(&mut self, generation: u64) -> bool {
        let current = self.refill == Some(generation);
        if current {
            self.refill = None;
        }
        current
    }

    /// Units this key is expected to use over one lease life, from its
    /// demand since the window started (this request included).
    fn demand(&self, cost: u64, now: Instant, max_lease: u64) -> u64 {
        let used = self.window_used.saturating_add(cost) as f64;
        let elapsed = (now - self.window_start).max(MIN_WINDOW).as_secs_f64();
        let life = self.life.as_secs_f64();
        let per_life = used * life / elapsed;
        (per_life.ceil() as u64).min(max_lease.max(1).saturating_mul(4))
    }

    fn seen(&mut self, cost: u64, now: Instant) {
        self.new_key = false;
        self.window_used = self.window_used.saturating_add(cost);
        self.last_seen = now;
    }

    /// A lease was taken (or the store decided): a new demand window.
    pub(crate) fn restart_window(&mut self, now: Instant) {
        self.window_start = now;
        self.window_used = 0;
    }

    /// Takes in a store decision made at `now`.
    pub(crate) fn record(&mut self, decision: &Decision, now: Instant) {
        self.remaining = decision.remaining();
        self.reset = decision.reset();
        self.decided_at = now;
        self.denied_until = match decision {
            Decision::Denied {
                retry_after: Some(wait),
                ..
            } => Some(now + *wait),
            Decision::Denied { .. } => None,
            // Nothing left after an admission: the next unit is free once
            // all but one of the burst has drained. The store decides
            // again then (a prediction a little early costs one call).
            Decision::Allowed {
                remaining: 0,
                reset,
            } => {
                let q = &self.quota;
                // (burst - 1) × period / count, rounded up, and 1 µs more
                // for `reset`'s own rounding: never later than the store.
                let drain_us = (u128::from(q.burst().saturating_sub(1))
                    * u128::from(q.period_us()))
                .div_ceil(u128::from(q.count()))
                    + 1;
                let wait = reset.as_micros().saturating_sub(drain_us);
                Some(now + Duration::from_micros(u64::try_from(wait).unwrap_or(0)))
            }
            Decision::Allowed { .. } => None,
        };
    }
}
