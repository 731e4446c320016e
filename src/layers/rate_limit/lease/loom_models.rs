//! loom models of the lease table over the memory store's rate-limit cell:
//! every interleaving (up to `LOOM_MAX_PREEMPTIONS` preemptions) of
//! requests that take, spend and share a key's lease, the sweep that
//! gives expired leases back, and a quota change.
//!
//! ```text
//! RUSTFLAGS="--cfg battlement_loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --lib loom
//! ```
//!
//! The table's steps run under its map's shard lock; the model switches
//! threads at the cell's atomics, between a refill's step and its end.
//! The first model fails when the sweep stops skipping a key whose lease
//! is being taken (`if e.is_refilling() { return true; }` in
//! `Shared::sweep`): the sweep then forgets the key mid-refill and the
//! refill's units are lost.

use std::time::{Duration, Instant};

use loom::future::block_on;
use loom::thread;

use super::{LeaseSettings, Leased};
use crate::backends::MemoryStore;
use crate::clock::ManualClock;
use crate::rate_limit::{Charge, Quota, RateLimitStore};

/// A store whose clock stands still (nothing drains), a `Leased` over it
/// whose leases hold two units of a burst of four and outlive the model,
/// and the quota.
fn fleet() -> (MemoryStore, Leased<MemoryStore>, Quota) {
    let clock = ManualClock::new(Duration::from_secs(1_000));
    let store = MemoryStore::new().with_clock(clock.shared());
    let settings = LeaseSettings::default()
        .with_interval(Duration::from_secs(10))
        .and_then(|s| s.with_max_burst_fraction(0.5))
        .unwrap_or_else(|e| panic!("{e}"));
    let leased = Leased::new(store.clone(), settings);
    let quota = Quota::per_minute(4).unwrap_or_else(|e| panic!("{e}"));
    (store, leased, quota)
}

/// One request of cost 1 on the model's key: 1 when admitted.
fn request(leased: &Leased<MemoryStore>, quota: &Quota) -> u64 {
    let decision = block_on(leased.decide(Charge::new("p", "k", quota, 1)));
    u64::from(decision.is_ok_and(|d| d.is_allowed()))
}

/// Later than every lease of the model ends.
fn after_the_leases() -> Instant {
    Instant::now() + Duration::from_secs(3_600)
}

/// What the shared state has left for `quota`, nothing taken.
fn left(store: &MemoryStore, quota: &Quota) -> u64 {
    store
        .decide_at_once("p", "k", quota, 0)
        .map_or(0, |d| d.remaining())
}

// A key's first request is decided exactly; then two requests race, one of
// them taking a lease of two units, while the sweep gives expired leases
// back and forgets idle keys. Whatever the order: at most the burst is
// admitted, no refill is left marked, and once the rest of every lease is
// back the shared state has lost no unit and spent none twice (what it has
// left is the burst less what was admitted).
#[test]
fn loom_leases_refill_spend_and_give_back_every_unit_once() {
    loom::model(|| {
        let (store, leased, quota) = fleet();
        let mut admitted = request(&leased, &quota);
        let requests: Vec<_> = (0..2)
            .map(|_| {
                let leased = leased.clone();
                thread::spawn(move || request(&leased, &quota))
            })
            .collect();
        let sweeper = {
            let leased = leased.clone();
            thread::spawn(move || block_on(leased.sweep_at(after_the_leases())))
        };
        for r in requests {
            admitted += r.join().unwrap_or(0);
        }
        let _ = sweeper.join();
        assert!(admitted <= quota.burst(), "{admitted} admitted");
        assert_eq!(leased.refilling(), 0, "a refill flag was left set");
        block_on(leased.sweep_at(after_the_leases()));
        assert_eq!(leased.leased_units(), 0);
        assert_eq!(
            left(&store, &quota),
            quota.burst() - admitted,
            "a unit was lost or spent twice ({admitted} admitted)"
        );
    });
}

// A quota change (same rate and burst, another period) races a refill
// under the old quota: the units leased under it are never spent under the
// new one, so never more than the burst is admitted, and no refill is left
// marked.
#[test]
fn loom_a_quota_change_mid_refill_never_admits_past_the_burst() {
    loom::model(|| {
        let (store, leased, quota) = fleet();
        let other = Quota::new(8, Duration::from_secs(120))
            .and_then(|q| q.with_burst(4))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut admitted = request(&leased, &quota);
        let refill = {
            let leased = leased.clone();
            thread::spawn(move || request(&leased, &quota) + request(&leased, &quota))
        };
        admitted += request(&leased, &other) + request(&leased, &other);
        admitted += refill.join().unwrap_or(0);
        assert!(admitted <= quota.burst(), "{admitted} admitted");
        assert_eq!(leased.refilling(), 0, "a refill flag was left set");
        block_on(leased.sweep_at(after_the_leases()));
        assert!(left(&store, &other) <= other.burst() - admitted);
    });
}
