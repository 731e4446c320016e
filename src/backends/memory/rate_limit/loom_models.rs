//! loom models of the rate-limit cell: every interleaving of a few
//! decisions (up to `LOOM_MAX_PREEMPTIONS` preemptions) is run.
//!
//! ```text
//! RUSTFLAGS="--cfg battlement_loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --lib loom
//! ```
//!
//! Each model fails when the race it covers is let back in:
//!
//! - decisions under two quotas: drop the second read of the period word in
//!   `Cell::load` (`if self.period.load(..) != period { continue; }`), and
//!   a decision under the old quota reads a debt rescaled to the new one as
//!   if it were in its own units, and admits past the burst;
//! - the idle check: write `full_at_us` with `store` instead of
//!   `fetch_max`, and a decision that swapped first can publish its earlier
//!   full time over a later one: the cell reads idle, and would be swept,
//!   while its bucket still holds debt.

use loom::sync::Arc;
use loom::thread;

use super::{Cell, FULL_AT_SLACK_US};
use crate::layers::rate_limit::Quota;

/// One instant (µs since the epoch) every decision of a model is made at.
const NOW: u64 = 1_000_000_000_000;

/// `loom::model`, with room for the waits on a quota change in progress.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.max_branches = 100_000;
    builder.check(f);
}

fn quota(q: Result<Quota, crate::ConfigError>) -> Quota {
    q.unwrap_or_else(|e| panic!("{e}"))
}

// Two quotas of one rate and burst in different periods: a debt changes
// units with each quota change. One unit of the burst of two is spent
// under one quota before the threads start; then two decisions at one
// instant, one under each quota, admit exactly one more, and the cell is
// left with nothing: never more than the burst, no unit lost.
#[test]
fn loom_decisions_under_two_quotas_admit_exactly_the_burst() {
    model(|| {
        let per_second = quota(Quota::per_second(2));
        let per_minute = quota(quota(Quota::per_minute(120)).with_burst(2));
        let cell = Arc::new(Cell::default());
        assert!(cell.decide(&per_minute, 1, NOW).is_allowed());
        let decide = |q: Quota| {
            let cell = cell.clone();
            thread::spawn(move || u64::from(cell.decide(&q, 1, NOW).is_allowed()))
        };
        let other = decide(per_second);
        let mut admitted = 1 + u64::from(cell.decide(&per_minute, 1, NOW).is_allowed());
        admitted += other.join().unwrap_or(0);
        assert_eq!(admitted, 2, "admitted past the burst, or lost a unit");
        for q in [&per_second, &per_minute] {
            assert_eq!(cell.peek(q, 1, NOW).remaining(), 0, "{q:?}");
        }
        let (_, period, state) = cell.load();
        assert_ne!(period, super::REQUOTING, "the quota change was ended");
        assert_eq!(
            state.period_us & super::PERIOD_MASK,
            period & super::PERIOD_MASK
        );
    });
}

// A sweep removes a cell only when it reads idle (the sweep holds the
// map's shard for writing, so no decision is half done then): after two
// decisions that swapped in either order, the cell reads idle only once
// its bucket is full again, whatever order their full times were written
// in.
#[test]
fn loom_a_cell_reads_idle_only_once_its_bucket_is_full() {
    model(|| {
        let q = quota(Quota::per_second(2));
        let cell = Arc::new(Cell::default());
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let cell = cell.clone();
                thread::spawn(move || cell.decide(&q, 1, NOW).is_allowed())
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap_or(false));
        }
        // Probes every 50 ms over the two seconds after the decisions.
        for step in 0..=40u64 {
            let at = NOW + step * 50_000;
            if cell.is_idle(at) {
                assert!(
                    cell.peek(&q, q.burst(), at).is_allowed(),
                    "idle at +{} ms with debt left (slack {} ms)",
                    step * 50,
                    FULL_AT_SLACK_US / 1_000
                );
            }
        }
    });
}
