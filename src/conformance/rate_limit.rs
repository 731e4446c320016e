//! Cases every `RateLimitStore` must pass.
//!
//! Time comes from a [`ManualClock`] handed to the store (caller-clock mode
//! on Redis), so every case is exact and nothing sleeps.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Harness, StoredKey};
use crate::backends::Backend;
use crate::clock::{Clock, ManualClock};
use crate::rate_limit::{Charge, Decision, Quota, RateLimitStore};

/// 2026-01-01T00:00:00Z in µs: a realistic "now" (large numbers matter for
/// the Lua script's exactness).
const T0: Duration = Duration::from_secs(1_767_225_600);

fn quota(count: u64, period_ms: u64, burst: u64) -> Quota {
    Quota::new(count, Duration::from_millis(period_ms))
        .and_then(|q| q.with_burst(burst))
        .expect("valid quota")
}

async fn setup<H: Harness>(h: &H) -> (H::Store, ManualClock)
where
    H::Store: RateLimitStore,
{
    let clock = ManualClock::new(T0);
    (h.store_with_clock(clock.shared()).await, clock)
}

async fn decide<S: RateLimitStore>(s: &S, key: &str, q: &Quota, cost: u64) -> Decision {
    s.decide(Charge::new("p", key, q, cost))
        .await
        .expect("store answers")
}

/// What is left of key `k` under `policy` after a decision of `cost`.
async fn remaining<S: RateLimitStore>(s: &S, policy: &str, q: &Quota, cost: u64) -> u64 {
    s.decide(Charge::new(policy, "k", q, cost))
        .await
        .expect("answers")
        .remaining()
}

/// The burst is admitted at once, then the next request is denied.
pub async fn burst_is_admitted_then_denied<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let q = quota(5, 1_000, 5);
    for expected_remaining in (0..5).rev() {
        let d = decide(&s, "k", &q, 1).await;
        assert!(d.is_allowed(), "{d:?}");
        assert_eq!(d.remaining(), expected_remaining);
    }
    let d = decide(&s, "k", &q, 1).await;
    assert!(!d.is_allowed());
    assert_eq!(d.remaining(), 0);
}

/// 10/s burst 10: the 11th simultaneous request waits exactly 100 ms, and
/// the bucket is full again exactly 1 s after the burst.
pub async fn eleventh_request_waits_exactly_100ms<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let q = quota(10, 1_000, 10);
    for _ in 0..10 {
        assert!(decide(&s, "k", &q, 1).await.is_allowed());
    }
    let d = decide(&s, "k", &q, 1).await;
    assert_eq!(d.retry_after(), Some(Duration::from_millis(100)), "{d:?}");
    assert_eq!(d.reset(), Duration::from_secs(1));
}

/// Capacity comes back with the clock, one emission interval at a time.
pub async fn refill_follows_the_clock<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, clock) = setup(&h).await;
    let q = quota(10, 1_000, 10);
    for _ in 0..10 {
        decide(&s, "k", &q, 1).await;
    }
    clock.advance(Duration::from_micros(99_999));
    assert!(!decide(&s, "k", &q, 1).await.is_allowed(), "one µs early");
    clock.advance(Duration::from_micros(1));
    assert!(decide(&s, "k", &q, 1).await.is_allowed(), "on time");
    assert!(!decide(&s, "k", &q, 1).await.is_allowed());
    clock.advance(Duration::from_secs(5));
    let d = decide(&s, "k", &q, 1).await;
    assert_eq!(d.remaining(), 9, "full again after idling: {d:?}");
}

/// A request may cost more than one; the retry hint accounts for it.
pub async fn cost_above_one_counts_fully<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let q = quota(10, 1_000, 10);
    let d = decide(&s, "k", &q, 3).await;
    assert_eq!(d.remaining(), 7, "{d:?}");
    let d = decide(&s, "k", &q, 8).await;
    assert_eq!(d.retry_after(), Some(Duration::from_millis(100)), "{d:?}");
    let d = decide(&s, "k", &q, 7).await;
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 0);
}

/// A cost above the burst can never pass; it writes nothing.
pub async fn cost_above_burst_is_never_allowed<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let q = quota(10, 1_000, 10);
    let d = decide(&s, "fresh", &q, 11).await;
    assert!(!d.is_allowed());
    assert_eq!(d.retry_after(), None, "never: {d:?}");
    assert_eq!(d.remaining(), 10);
    assert!(h.stored_keys(&s).await.is_empty(), "a denial wrote a key");
}

/// Keys and policies never share state.
pub async fn keys_and_policies_are_isolated<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let q = quota(2, 1_000, 2);
    for _ in 0..2 {
        decide(&s, "a", &q, 1).await;
    }
    assert!(!decide(&s, "a", &q, 1).await.is_allowed());
    assert!(decide(&s, "b", &q, 1).await.is_allowed());
    assert!(
        s.decide(Charge::new("other-policy", "a", &q, 1))
            .await
            .expect("answers")
            .is_allowed()
    );
    // Keys that differ only in characters the key encoding escapes.
    assert!(decide(&s, "a:b", &q, 1).await.is_allowed());
    assert!(decide(&s, "a/b", &q, 1).await.is_allowed());
    let other = h.store_with_clock(ManualClock::new(T0).shared()).await;
    assert!(
        decide(&other, "a", &q, 1).await.is_allowed(),
        "prefixes isolate stores"
    );
}

/// 64 concurrent tasks on one key admit exactly the burst.
pub async fn concurrent_tasks_admit_exactly_the_burst<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let q = quota(20, 60_000, 20);
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.decide(Charge::new("p", "hot", &q, 1)).await })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        if t.await.expect("task").expect("store answers").is_allowed() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 20);
}

/// Cost 0 reports the state without consuming or writing.
pub async fn zero_cost_peeks_without_writing<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let q = quota(5, 1_000, 5);
    let d = decide(&s, "k", &q, 0).await;
    assert_eq!((d.is_allowed(), d.remaining()), (true, 5));
    assert!(h.stored_keys(&s).await.is_empty());
    decide(&s, "k", &q, 2).await;
    assert_eq!(decide(&s, "k", &q, 0).await.remaining(), 3);
}

/// Denials write nothing; every written key has a TTL no longer than the
/// time until its bucket is full again (checked on the real server).
pub async fn denials_write_nothing_and_keys_expire<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let q = quota(10, 1_000, 3);
    for _ in 0..3 {
        decide(&s, "k", &q, 1).await;
    }
    let before = h.stored_keys(&s).await;
    assert_eq!(before.len(), 1, "{before:?}");
    for _ in 0..5 {
        assert!(!decide(&s, "k", &q, 1).await.is_allowed());
    }
    assert!(!decide(&s, "other", &q, 4).await.is_allowed());
    let after = h.stored_keys(&s).await;
    assert_eq!(after.len(), 1, "denials created keys: {after:?}");
    assert_eq!(after[0].key, before[0].key);
    let prefix = s
        .keyspace()
        .concern_prefix(crate::layers::rate_limit::store::CONCERN);
    for StoredKey { key, ttl } in &after {
        assert!(key.starts_with(&prefix), "{key} outside {prefix}");
        let ttl = ttl.unwrap_or_else(|| panic!("{key} has no TTL"));
        assert!(
            ttl > Duration::ZERO && ttl <= Duration::from_millis(300) + LEASE_ROUNDING,
            "{key}: {ttl:?}"
        );
    }
}

/// etcd leases have whole-second TTLs and a shared-lease slack.
const LEASE_ROUNDING: Duration = Duration::from_secs(5);

/// Retry-after is never early and exactly enough.
pub async fn retry_after_is_exact<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, clock) = setup(&h).await;
    let q = quota(3, 1_000, 2);
    decide(&s, "k", &q, 1).await;
    decide(&s, "k", &q, 1).await;
    let wait = decide(&s, "k", &q, 1).await.retry_after().expect("finite");
    assert_eq!(wait, Duration::from_micros(333_334), "1/3 s rounded up");
    clock.advance(wait - Duration::from_micros(1));
    assert!(!decide(&s, "k", &q, 1).await.is_allowed());
    clock.advance(Duration::from_micros(1));
    assert!(decide(&s, "k", &q, 1).await.is_allowed());
}

/// A quota change applies to the next decision and keeps the outstanding
/// cost of that key; other keys are untouched.
pub async fn quota_changes_keep_state<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let small = quota(10, 1_000, 10);
    for _ in 0..4 {
        decide(&s, "a", &small, 1).await;
    }
    decide(&s, "b", &small, 1).await;
    let big = quota(100, 60_000, 100);
    assert_eq!(decide(&s, "a", &big, 1).await.remaining(), 95);
    assert_eq!(decide(&s, "b", &small, 1).await.remaining(), 8);

    // Spent under a fast quota, then slowed down: a denial rewrites the key
    // with the slow quota's lifetime, so it cannot expire and refill early.
    for _ in 0..10 {
        decide(&s, "c", &small, 1).await;
    }
    let slow = quota(10, 60_000, 10);
    assert!(!decide(&s, "c", &slow, 1).await.is_allowed());
    let stored = h.stored_keys(&s).await;
    let c = stored
        .iter()
        .find(|k| k.key.ends_with("%2Fc}"))
        .expect("key c stored");
    let ttl = c.ttl.expect("key c has a TTL");
    assert!(
        ttl > Duration::from_secs(30),
        "lifetime of the slow quota: {ttl:?}"
    );
}

/// A give-back under a quota the key no longer runs (same period, another
/// count and burst: a reload from 1,000/s to 10/s) changes nothing once
/// the key was decided under the new quota: units leased under the old
/// quota do not drain the bucket at the old rate.
pub async fn give_back_under_a_replaced_quota_changes_nothing<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, clock) = setup(&h).await;
    let old = quota(1_000, 1_000, 1_000);
    let new = quota(10, 1_000, 10);
    let give_back = |key, units| {
        let s = &s;
        async move {
            s.give_back(Charge::new("p", key, &old, units))
                .await
                .expect("store answers")
        }
    };
    // A lease of 500 under the old quota; the new one finds the key full.
    assert!(decide(&s, "a", &old, 500).await.is_allowed());
    assert!(!decide(&s, "a", &new, 1).await.is_allowed());
    clock.advance(Duration::from_millis(10));
    give_back("a", 500).await;
    let d = decide(&s, "a", &new, 1).await;
    assert!(!d.is_allowed(), "{d:?}");
    assert_eq!(d.retry_after(), Some(Duration::from_millis(90)));
    // 5 spent under the old quota, 1 under the new: 4 left, given back
    // or not.
    assert!(decide(&s, "b", &old, 5).await.is_allowed());
    assert_eq!(decide(&s, "b", &new, 1).await.remaining(), 4);
    give_back("b", 5).await;
    assert_eq!(decide(&s, "b", &new, 0).await.remaining(), 4);
}

/// Two instances whose clocks are 50 ms apart, taking turns on one key
/// (simulated by moving one clock back and forth), admit the quota and
/// not the skew again on every swap.
pub async fn skewed_clocks_do_not_over_admit<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, clock) = setup(&h).await;
    let q = quota(100, 1_000, 100);
    let mut allowed = 0;
    for i in 0..2_000u64 {
        let skew = if i % 2 == 0 { 0 } else { 50_000 };
        clock.set(T0 + Duration::from_micros(i * 1_000 - skew.min(i * 1_000)));
        if decide(&s, "k", &q, 1).await.is_allowed() {
            allowed += 1;
        }
    }
    // burst 100 + 2 s at 100/s + at most the 50 ms skew once (5).
    assert!(allowed <= 100 + 200 + 5, "admitted {allowed}");
    assert!(allowed >= 100 + 190, "admitted {allowed}");
}

/// Units given back are admitted again, at once; giving back more than is
/// owed empties the bucket and no more; a key never written stays absent.
pub async fn give_back_returns_unused_units<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, clock) = setup(&h).await;
    let q = quota(10, 1_000, 10);
    assert_eq!(decide(&s, "k", &q, 6).await.remaining(), 4);
    s.give_back(Charge::new("p", "k", &q, 4))
        .await
        .expect("store answers");
    assert_eq!(decide(&s, "k", &q, 0).await.remaining(), 8);
    // 100 ms later one unit has drained as well.
    clock.advance(Duration::from_millis(100));
    s.give_back(Charge::new("p", "k", &q, 1))
        .await
        .expect("store answers");
    assert_eq!(decide(&s, "k", &q, 0).await.remaining(), 10);
    for _ in 0..10 {
        assert!(decide(&s, "k", &q, 1).await.is_allowed());
    }
    assert!(
        !decide(&s, "k", &q, 1).await.is_allowed(),
        "full, not fuller"
    );
    s.give_back(Charge::new("p", "k", &q, 100))
        .await
        .expect("store answers");
    assert_eq!(decide(&s, "k", &q, 0).await.remaining(), 10);
    s.give_back(Charge::new("p", "absent", &q, 3))
        .await
        .expect("store answers");
    assert!(
        !h.stored_keys(&s)
            .await
            .iter()
            .any(|k| k.key.ends_with("%2Fabsent}") || k.key.ends_with("/absent")),
        "a give-back wrote a key"
    );
    assert_eq!(decide(&s, "absent", &q, 0).await.remaining(), 10);
}

/// One charge of cost `cost` on key `k` of `policy`.
fn charge<'a>(policy: &'a str, q: &'a Quota, cost: u64) -> Charge<'a> {
    Charge {
        policy,
        key: "k",
        quota: q,
        cost,
    }
}

async fn decide_all<S: RateLimitStore>(s: &S, charges: &[Charge<'_>]) -> Vec<Decision> {
    let decisions = s.decide_all(charges).await.expect("store answers");
    assert_eq!(decisions.len(), charges.len(), "{decisions:?}");
    decisions
}

/// A request denied by one policy spends none of the others: the next
/// decisions and remaining counts are those of a state never touched,
/// whichever policy denies and wherever it stands in the list.
pub async fn a_denial_by_one_policy_spends_no_other<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let (a, b, c) = (
        quota(10, 1_000, 10),
        quota(2, 1_000, 2),
        quota(50, 1_000, 50),
    );
    let request = |cost_b| {
        [
            charge("a", &a, 1),
            charge("b", &b, cost_b),
            charge("c", &c, 1),
        ]
    };
    // Admitted: every policy spends.
    for (left_a, left_b, left_c) in [(9, 1, 49), (8, 0, 48)] {
        let d = decide_all(&s, &request(1)).await;
        assert!(d.iter().all(Decision::is_allowed), "{d:?}");
        let left: Vec<u64> = d.iter().map(Decision::remaining).collect();
        assert_eq!(left, [left_a, left_b, left_c]);
    }
    // Denied by b, between a and c: a and c report their state as it
    // stands, and keep it.
    for _ in 0..5 {
        let d = decide_all(&s, &request(1)).await;
        assert_eq!(
            d[1].retry_after(),
            Some(Duration::from_millis(500)),
            "{d:?}"
        );
        assert!(d[0].is_allowed() && d[2].is_allowed(), "{d:?}");
        assert_eq!((d[0].remaining(), d[2].remaining()), (8, 48), "{d:?}");
    }
    // A cost b can never admit spends nothing either.
    let d = decide_all(&s, &request(3)).await;
    assert_eq!((d[1].is_allowed(), d[1].retry_after()), (false, None));
    // Denied by the first policy.
    let d = decide_all(&s, &[charge("b", &b, 1), charge("a", &a, 1)]).await;
    assert!(!d[0].is_allowed() && d[1].is_allowed(), "{d:?}");
    // Each untouched state, read on its own: a peek, then a spend.
    assert_eq!(remaining(&s, "a", &a, 0).await, 8);
    assert_eq!(remaining(&s, "c", &c, 0).await, 48);
    assert_eq!(remaining(&s, "a", &a, 1).await, 7);
    assert_eq!(remaining(&s, "c", &c, 1).await, 47);
}

/// 64 concurrent requests over two policies, the second with room for
/// 10: exactly 10 are admitted, and each policy spent exactly those.
pub async fn concurrent_requests_spend_every_policy_or_none<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, _clock) = setup(&h).await;
    let (a, b) = (quota(100, 60_000, 100), quota(10, 60_000, 10));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move {
                let charges = [charge("a", &a, 1), charge("b", &b, 1)];
                s.decide_all(&charges).await
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        let d = t.await.expect("task").expect("store answers");
        admitted += usize::from(d.iter().all(Decision::is_allowed));
    }
    assert_eq!(admitted, 10);
    let b_left = s
        .decide(Charge::new("b", "k", &b, 0))
        .await
        .expect("answers")
        .remaining();
    assert_eq!(b_left, 0);
    let a_left = s
        .decide(Charge::new("a", "k", &a, 0))
        .await
        .expect("answers")
        .remaining();
    assert_eq!(a_left, 90, "a spent only for the admitted requests");
}

/// An exact model in a different formulation: a theoretical arrival time in
/// units of 1/count µs, in u128.
#[derive(Default)]
struct Reference {
    tat: BTreeMap<(u8, u8), u128>,
}

impl Reference {
    fn decide(
        &mut self,
        key: (u8, u8),
        q: &Quota,
        cost: u64,
        now_us: u64,
    ) -> (bool, Option<u64>, u64) {
        let n = u128::from(q.count());
        let p = u128::from(q.period_us());
        let cap = u128::from(q.burst()) * p;
        let now = u128::from(now_us) * n;
        let tat = self.tat.get(&key).copied().unwrap_or(0).max(now);
        let remaining = ((cap - (tat - now).min(cap)) / p) as u64;
        if u128::from(cost) > u128::from(q.burst()) {
            return (false, None, remaining);
        }
        let next = tat + u128::from(cost) * p;
        if next - now <= cap {
            if cost > 0 {
                self.tat.insert(key, next);
            }
            (true, None, ((cap - (next - now)) / p) as u64)
        } else {
            let wait = (next - now - cap).div_ceil(n) as u64;
            (false, Some(wait), remaining)
        }
    }
}

/// 10,000 random steps, biased to land on decision boundaries, give the
/// reference model's decisions, retry hints and remaining counts.
pub async fn random_sequences_match_the_reference<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let (s, clock) = setup(&h).await;
    let mut rng = fastrand::Rng::with_seed(0x0ba7_71e5);
    let quotas = [
        quota(3, 1_000, 2),
        quota(10, 1_000, 10),
        quota(7, 60_000, 3),
        quota(1, 250, 1),
    ];
    let mut reference = Reference::default();
    let mut last_wait: u64 = 0;
    for step in 0..10_000u32 {
        let phase = (step / 2_500) as u8;
        let q = quotas[usize::from(phase)];
        let key = rng.u8(0..3);
        let cost = match rng.u8(0..10) {
            0 => 0,
            1 => q.burst() + 1,
            2 => rng.u64(1..=q.burst()),
            _ => 1,
        };
        let advance = match rng.u8(0..4) {
            0 => 0,
            1 => last_wait,
            2 => last_wait.saturating_sub(1),
            _ => rng.u64(0..q.period_us() / q.count() * 2),
        };
        clock.advance(Duration::from_micros(advance));
        let now = clock.now_micros();
        let got = s
            .decide(Charge::new(
                &format!("q{phase}"),
                &key.to_string(),
                &q,
                cost,
            ))
            .await
            .expect("store answers");
        let want = reference.decide((phase, key), &q, cost, now);
        let got_tuple = (
            got.is_allowed(),
            got.retry_after().map(|d| d.as_micros() as u64),
            got.remaining(),
        );
        assert_eq!(
            got_tuple, want,
            "step {step}: key {key} cost {cost} at +{advance}µs with {q}"
        );
        last_wait = want.1.unwrap_or(0);
    }
}
