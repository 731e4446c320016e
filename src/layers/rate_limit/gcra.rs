//! The integer GCRA every backend runs.
//!
//! State per key is `(debt, at)`: `debt` is the outstanding cost scaled to
//! microseconds × `count` (each unit of cost adds `period_us`, and debt
//! drains by `count` per microsecond), `at` is when it was last written, in
//! microseconds since the UNIX epoch. A request of cost `c` is allowed when
//! `debt_now + c·period_us ≤ burst·period_us`. All arithmetic is on
//! integers below 2^53 (see [`Quota`]), so the Redis Lua script, the etcd
//! and the memory backends compute exactly the same decisions. The Lua copy
//! in `backends/redis/scripts/gcra.lua` computes only the debt;
//! [`allowed`] and [`denied`] turn a debt into the decision's numbers for
//! every backend.
//!
//! A quota change keeps the outstanding cost: the debt is rescaled from the
//! old period to the new one, in whole units of cost rounded up. The state
//! records the whole quota it was written under (period, count, burst): a
//! give-back under any other quota changes nothing, and the first decision
//! under a new quota restates the key under it, denied or not.

use std::time::Duration;

use super::quota::Quota;
use super::store::Decision;

/// What a store keeps per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraState {
    /// Outstanding cost × `period_us` of the quota it was written with.
    pub debt: u64,
    /// When it was written (µs since the UNIX epoch).
    pub at: u64,
    /// The `period_us` the debt is expressed in.
    pub period_us: u64,
    /// The count of the quota it was written under (0: not known, a state
    /// written before the count was kept).
    pub count: u64,
    /// The burst of that quota (0: not known).
    pub burst: u64,
}

impl GcraState {
    /// `debt` at `at`, written under `quota`.
    pub fn under(quota: &Quota, debt: u64, at: u64) -> Self {
        Self {
            debt,
            at,
            period_us: quota.period_us(),
            count: quota.count(),
            burst: quota.burst(),
        }
    }

    /// `(period_us, count, burst)` of the quota it was written under.
    pub fn quota_parts(&self) -> (u64, u64, u64) {
        (self.period_us, self.count, self.burst)
    }

    /// Whether it was written under `quota`: period, count and burst.
    pub fn is_under(&self, quota: &Quota) -> bool {
        self.quota_parts() == (quota.period_us(), quota.count(), quota.burst())
    }
}

#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
impl GcraState {
    /// `debt:at:period_us:count:burst`, the stored form on etcd (Redis
    /// stores packed doubles, see the script).
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.debt, self.at, self.period_us, self.count, self.burst
        )
    }

    /// Parses [`encode`](Self::encode)'s output, or the
    /// `debt:at:period_us` of a state written before the count and burst
    /// were kept (they read as not known).
    pub fn decode(s: &str) -> Option<Self> {
        let parts: Vec<u64> = s
            .split(':')
            .map(str::parse::<u64>)
            .collect::<Result<_, _>>()
            .ok()?;
        match parts[..] {
            [debt, at, period_us] => Some(Self {
                debt,
                at,
                period_us,
                count: 0,
                burst: 0,
            }),
            [debt, at, period_us, count, burst] => Some(Self {
                debt,
                at,
                period_us,
                count,
                burst,
            }),
            _ => None,
        }
    }
}

/// The outcome of one decision: the decision and the state to write (none
/// on denial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The decision.
    pub decision: Decision,
    /// The new state, `None` when nothing is written (denials).
    pub write: Option<GcraState>,
}

impl Step {
    /// How long the written state must live: until the bucket is full
    /// again, which is the decision's `reset`, in microseconds.
    pub fn ttl_us(&self) -> u64 {
        u64::try_from(self.decision.reset().as_micros()).unwrap_or(u64::MAX)
    }
}

/// Decides a request of `cost` at `now_us` on a key in `state`.
///
/// A clock behind the state's `at` (another instance's clock ran ahead)
/// drains nothing, and the state keeps its later `at`: otherwise instances
/// with skewed clocks would each drain the skew again on every swap.
pub fn decide(state: Option<GcraState>, quota: &Quota, cost: u64, now_us: u64) -> Step {
    let p = quota.period_us();
    let (debt, at) = match state {
        Some(s) => (current_debt(s, quota, now_us), now_us.max(s.at)),
        None => (0, now_us),
    };
    // A cost over the burst is denied before it is multiplied: it may come
    // from the request and overflow.
    let after = (cost <= quota.burst()).then(|| debt + cost * p);
    if let Some(after) = after.filter(|after| *after <= quota.burst() * p) {
        return Step {
            decision: allowed(quota, after),
            write: (cost > 0).then(|| GcraState::under(quota, after, at)),
        };
    }
    // Denied: nothing is written, unless the state was written under
    // another quota: then it is rewritten under this one, in its units and
    // with its lifetime, so the key cannot expire early and refill, and a
    // give-back under the old quota changes nothing.
    let restated = state.is_some_and(|s| s.period_us != 0 && !s.is_under(quota));
    Step {
        decision: denied(quota, cost, debt),
        write: (restated && debt > 0).then(|| GcraState::under(quota, debt, at)),
    }
}

/// Gives `units` of cost back to a key in `state` at `now_us`: a lease's
/// unused units, or a charge spent by a request another policy denied.
/// Its decision reports the state as it stands afterwards; its write is
/// `None` when nothing changes (no state, nothing owed, or a state written
/// under another quota, whose units and rate are not this quota's: then
/// nothing is given back, which can only admit less).
///
/// The debt drains to `now_us` first, then drops by `units × period_us`
/// (`units` at most a full bucket), never below zero: capacity given back
/// can never make the bucket fuller than full, so a give-back never admits
/// more than the quota. Debt drains linearly and stops at zero, so giving
/// a charge back at any later time leaves the state the charge would have
/// left had it never been spent (requests decided in between aside).
pub fn give_back(state: Option<GcraState>, quota: &Quota, units: u64, now_us: u64) -> Step {
    let p = quota.period_us();
    let unchanged = |debt| Step {
        decision: allowed(quota, debt),
        write: None,
    };
    let Some(s) = state else {
        return unchanged(0);
    };
    let debt = current_debt(s, quota, now_us);
    if !s.is_under(quota) || units == 0 || debt == 0 {
        return unchanged(debt);
    }
    let left = debt.saturating_sub(units.min(quota.burst()) * p);
    Step {
        decision: allowed(quota, left),
        write: Some(GcraState::under(quota, left, now_us.max(s.at))),
    }
}

/// The decision for an allowed request that leaves `after` of debt (in
/// `quota`'s units).
pub fn allowed(quota: &Quota, after: u64) -> Decision {
    let capacity = quota.burst() * quota.period_us();
    Decision::Allowed {
        remaining: capacity.saturating_sub(after) / quota.period_us(),
        reset: Duration::from_micros(after.div_ceil(quota.count())),
    }
}

/// The decision for a request of `cost` denied while `debt` was
/// outstanding (in `quota`'s units).
pub fn denied(quota: &Quota, cost: u64, debt: u64) -> Decision {
    let (n, p) = (quota.count(), quota.period_us());
    let capacity = quota.burst() * p;
    let retry_after = (cost <= quota.burst())
        .then(|| Duration::from_micros((debt + cost * p).saturating_sub(capacity).div_ceil(n)));
    Decision::Denied {
        retry_after,
        remaining: capacity.saturating_sub(debt) / p,
        reset: Duration::from_micros(debt.div_ceil(n)),
    }
}

/// The debt left at `now_us`, in the current quota's units.
///
/// After a period change the outstanding cost is kept in whole units,
/// rounded up, and at most a full bucket: `min(ceil(debt / old_period),
/// burst) × period`, so every value stays below 2^52 and the Lua copy
/// computes the same. A stored debt is never more than a full bucket
/// either: a value the store hands back out of range (or written under a
/// larger burst) reads as a full bucket, so it cannot overflow or lock
/// the key out for longer than one refill.
fn current_debt(s: GcraState, quota: &Quota, now_us: u64) -> u64 {
    let p = quota.period_us();
    let debt = if s.period_us == p || s.period_us == 0 {
        s.debt.min(quota.burst() * p)
    } else {
        s.debt.div_ceil(s.period_us).min(quota.burst()) * p
    };
    let drained = now_us.saturating_sub(s.at).saturating_mul(quota.count());
    debt.saturating_sub(drained)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state after `n` admitted units at time 0.
    fn spent(q: &Quota, n: u64) -> Option<GcraState> {
        let mut state = None;
        for _ in 0..n {
            run(q, &mut state, 1, 0);
        }
        state
    }

    fn run(q: &Quota, state: &mut Option<GcraState>, cost: u64, now: u64) -> Decision {
        let step = decide(*state, q, cost, now);
        if let Some(w) = step.write {
            *state = Some(w);
        }
        step.decision
    }

    // A stored debt out of range reads as a full bucket: no overflow, and
    // the next unit is free one emission interval later.
    #[test]
    fn a_stored_debt_beyond_a_full_bucket_reads_as_one() {
        let q = Quota::per_second(10).unwrap();
        let t0 = 1_700_000_000_000_000;
        let stored = GcraState::decode(&format!("{}:{t0}:{}", u64::MAX, q.period_us()));
        let d = decide(stored, &q, 1, t0).decision;
        assert_eq!(d.retry_after(), Some(Duration::from_millis(100)));
        assert!(decide(stored, &q, 1, t0 + 100_000).decision.is_allowed());
    }

    // 10/s burst 10 -> 10 pass, the 11th waits exactly 100 ms.
    #[test]
    fn burst_then_exact_retry_after() {
        let q = Quota::per_second(10).unwrap();
        let mut s = None;
        let t0 = 1_700_000_000_000_000;
        for i in 0..10 {
            assert!(run(&q, &mut s, 1, t0).is_allowed(), "request {i}");
        }
        let d = run(&q, &mut s, 1, t0);
        assert_eq!(d.retry_after(), Some(Duration::from_millis(100)));
        assert!(!run(&q, &mut s, 1, t0 + 99_999).is_allowed());
        assert!(run(&q, &mut s, 1, t0 + 100_000).is_allowed());
    }

    #[test]
    fn thirds_of_a_second_are_exact() {
        let q = Quota::per_second(3).unwrap().with_burst(1).unwrap();
        let mut s = None;
        assert!(run(&q, &mut s, 1, 0).is_allowed());
        // 1/3 s = 333_333.33 µs: denied one µs early, allowed on time.
        assert_eq!(
            run(&q, &mut s, 1, 333_333).retry_after(),
            Some(Duration::from_micros(1))
        );
        assert!(run(&q, &mut s, 1, 333_334).is_allowed());
    }

    #[test]
    fn cost_above_burst_is_never_allowed_and_writes_nothing() {
        let q = Quota::per_second(10).unwrap();
        let step = decide(None, &q, 11, 0);
        assert_eq!(step.decision.retry_after(), None);
        assert!(!step.decision.is_allowed());
        assert_eq!(step.write, None);
        // A cost that would overflow once multiplied (it may come from the
        // request) is denied the same way, with no panic.
        let step = decide(None, &q, u64::MAX / 3, 0);
        assert!(!step.decision.is_allowed());
        assert_eq!(step.write, None);
    }

    #[test]
    fn quota_change_keeps_outstanding_cost() {
        let q = Quota::per_second(10).unwrap();
        let mut s = spent(&q, 4);
        let bigger = Quota::per_minute(100).unwrap();
        // 4 units were spent; the new period keeps them.
        match run(&bigger, &mut s, 1, 0) {
            Decision::Allowed { remaining, .. } => assert_eq!(remaining, 95),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_clock_behind_drains_nothing_and_keeps_the_later_time() {
        let q = Quota::per_second(100).unwrap();
        let ahead = GcraState::under(&q, 50 * q.period_us(), 1_000_000);
        let step = decide(Some(ahead), &q, 1, 950_000);
        assert_eq!(step.write.unwrap().at, 1_000_000);
        assert_eq!(step.write.unwrap().debt, 51 * q.period_us());
    }

    #[test]
    fn a_denial_after_a_period_change_rewrites_the_state_with_the_new_lifetime() {
        let fast = Quota::per_second(10).unwrap();
        let s = spent(&fast, 10);
        let slow = Quota::per_minute(10).unwrap();
        let step = decide(s, &slow, 1, 0);
        assert!(!step.decision.is_allowed());
        let w = step.write.expect("rescaled state is written");
        assert_eq!(
            (w.debt, w.period_us),
            (10 * slow.period_us(), slow.period_us())
        );
        assert_eq!(
            step.ttl_us(),
            60_000_000,
            "full again after a minute, not a second"
        );
        // Once rewritten, further denials write nothing.
        assert_eq!(decide(Some(w), &slow, 1, 1).write, None);
    }

    #[test]
    fn give_back_undoes_an_allowed_cost_and_never_goes_below_empty() {
        let q = Quota::per_second(10).unwrap();
        let t0 = 1_700_000_000_000_000;
        let mut s = None;
        assert!(run(&q, &mut s, 6, t0).is_allowed());
        let step = give_back(s, &q, 4, t0);
        let back = step.write.expect("debt drops");
        assert_eq!(back.debt, 2 * q.period_us());
        assert_eq!(step.decision.remaining(), 8, "reports the state after");
        s = Some(back);
        assert_eq!(run(&q, &mut s, 0, t0).remaining(), 8);
        // More than owed: an empty bucket, not a fuller one.
        let back = give_back(s, &q, 100, t0).write.expect("debt drops");
        assert_eq!(back.debt, 0);
        // Units that would overflow once multiplied are a full bucket.
        let step = give_back(s, &q, u64::MAX, t0);
        assert_eq!(step.write.map(|w| w.debt), Some(0));
        assert_eq!(step.decision.remaining(), 10);
        // Drained first: 100 ms later 1 unit of the 2 was already paid.
        let two = GcraState::under(&q, 2 * q.period_us(), t0);
        let back = give_back(Some(two), &q, 1, t0 + 100_000).write.unwrap();
        assert_eq!((back.debt, back.at), (0, t0 + 100_000));
        // Nothing changes: no state, nothing owed, another period.
        let none = give_back(None, &q, 1, t0);
        assert_eq!((none.write, none.decision.remaining()), (None, 10));
        let paid = give_back(Some(two), &q, 1, t0 + 200_000);
        assert_eq!((paid.write, paid.decision.remaining()), (None, 10));
        let other = GcraState {
            period_us: 1,
            ..two
        };
        assert_eq!(
            give_back(Some(other), &q, 1, t0).write,
            None,
            "another period"
        );
        for other in [Quota::per_second(20).unwrap(), q.with_burst(20).unwrap()] {
            let under_other = GcraState::under(&other, 2 * q.period_us(), t0);
            assert_eq!(
                give_back(Some(under_other), &q, 1, t0).write,
                None,
                "another count or burst"
            );
        }
    }

    // A charge spent and given back at any later time leaves the state
    // the charge would have left had it never been spent.
    #[test]
    fn a_charge_given_back_later_is_as_if_never_spent() {
        let q = Quota::per_second(10).unwrap();
        let t0 = 1_700_000_000_000_000;
        let mut spent = None;
        let mut never = None;
        run(&q, &mut spent, 3, t0);
        run(&q, &mut never, 3, t0);
        run(&q, &mut spent, 5, t0 + 50_000);
        if let Some(w) = give_back(spent, &q, 5, t0 + 120_000).write {
            spent = Some(w);
        }
        for t in [t0 + 120_000, t0 + 250_000] {
            assert_eq!(
                decide(spent, &q, 0, t).decision,
                decide(never, &q, 0, t).decision
            );
        }
    }

    #[test]
    fn state_round_trips() {
        let s = GcraState {
            debt: 12,
            at: 34,
            period_us: 56,
            count: 7,
            burst: 8,
        };
        assert_eq!(GcraState::decode(&s.encode()), Some(s));
        let before = GcraState::decode("12:34:56").expect("the older form");
        assert_eq!(
            before.quota_parts(),
            (56, 0, 0),
            "count and burst not known"
        );
        assert_eq!(GcraState::decode("1:2"), None);
        assert_eq!(GcraState::decode("1:2:3:4"), None);
        assert_eq!(GcraState::decode("1:2:3:4:5:6"), None);
        assert_eq!(GcraState::decode("a:2:3"), None);
    }
}
