//! Sliding windows of call outcomes: the last N calls, or the calls of the
//! last N seconds in per-second buckets. Both keep running
//! totals, so recording and reading a rate is O(1) (amortized for time).

use std::collections::VecDeque;

use super::config::Window;

/// Calls, failures and slow calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

impl Totals {
    fn add(&mut self, failure: bool, slow: bool) {
        self.calls += 1;
        self.failures += u64::from(failure);
        self.slow += u64::from(slow);
    }

    fn sub(&mut self, other: Totals) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }
}

/// The outcomes a closed breaker looks back on.
#[derive(Debug)]
pub(crate) enum Outcomes {
    /// The last `size` calls, oldest first: `(failure, slow)`.
    Count {
        size: usize,
        calls: VecDeque<(bool, bool)>,
        totals: Totals,
    },
    /// One bucket per second; `head` is the second of the newest bucket.
    Time {
        buckets: Vec<Totals>,
        head: u64,
        totals: Totals,
    },
}

impl Outcomes {
    pub(crate) fn new(window: Window) -> Self {
        match window {
            Window::Count(size) => Self::Count {
                size: size as usize,
                calls: VecDeque::with_capacity((size as usize).min(1024)),
                totals: Totals::default(),
            },
            Window::Time(d) => Self::Time {
                buckets: vec![Totals::default(); d.as_secs().max(1) as usize],
                head: 0,
                totals: Totals::default(),
            },
        }
    }

    /// Whether this was built for `window` (a config change may swap it).
    pub(crate) fn is_for(&self, window: Window) -> bool {
        match (self, window) {
            (Self::Count { size, .. }, Window::Count(n)) => *size == n as usize,
            (Self::Time { buckets, .. }, Window::Time(d)) => {
                buckets.len() as u64 == d.as_secs().max(1)
            }
            _ => false,
        }
    }

    /// Records one call at `now_s` (seconds on the breaker's clock).
    pub(crate) fn record(&mut self, now_s: u64, failure: bool, slow: bool) {
        self.advance(now_s);
        match self {
            Self::Count {
                size,
                calls,
                totals,
            } => {
                if calls.len() == *size
                    && let Some((f, s)) = calls.pop_front()
                {
                    totals.sub(Totals {
                        calls: 1,
                        failures: u64::from(f),
                        slow: u64::from(s),
                    });
                }
                calls.push_back((failure, slow));
            }
            Self::Time { buckets, head, .. } => {
                let len = buckets.len() as u64;
                buckets[(*head % len) as usize].add(failure, slow);
            }
        }
        match self {
            Self::Count { totals, .. } | Self::Time { totals, .. } => totals.add(failure, slow),
        }
    }

    /// The totals of the window at `now_s`.
    pub(crate) fn totals(&mut self, now_s: u64) -> Totals {
        self.advance(now_s);
        match self {
            Self::Count { totals, .. } | Self::Time { totals, .. } => *totals,
        }
    }

    /// Drops the buckets that fell out of the window by `now_s`. A clock
    /// that went back keeps recording into the newest bucket.
    fn advance(&mut self, now_s: u64) {
        let Self::Time {
            buckets,
            head,
            totals,
        } = self
        else {
            return;
        };
        if now_s <= *head {
            return;
        }
        let len = buckets.len() as u64;
        let steps = (now_s - *head).min(len);
        for second in now_s - steps + 1..=now_s {
            let bucket = &mut buckets[(second % len) as usize];
            totals.sub(*bucket);
            *bucket = Totals::default();
        }
        *head = now_s;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn totals(calls: u64, failures: u64, slow: u64) -> Totals {
        Totals {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn count_window_evicts_the_oldest_call() {
        let mut w = Outcomes::new(Window::Count(3));
        w.record(0, true, false);
        w.record(0, false, true);
        w.record(0, false, false);
        assert_eq!(w.totals(0), totals(3, 1, 1));
        w.record(0, false, false);
        assert_eq!(w.totals(0), totals(3, 0, 1));
    }

    #[test]
    fn time_window_forgets_seconds_that_fell_out() {
        let mut w = Outcomes::new(Window::Time(Duration::from_secs(3)));
        w.record(100, true, false);
        w.record(101, true, true);
        w.record(102, false, false);
        assert_eq!(w.totals(102), totals(3, 2, 1));
        // At 103 the call of second 100 is 3 s old: out.
        assert_eq!(w.totals(103), totals(2, 1, 1));
        assert_eq!(w.totals(104), totals(1, 0, 0));
        // A long gap clears everything, in at most `len` steps.
        assert_eq!(w.totals(1_000_000), Totals::default());
        w.record(1_000_000, true, false);
        assert_eq!(w.totals(1_000_000).failures, 1);
        // A clock that went back records into the newest bucket.
        w.record(999_999, true, false);
        assert_eq!(w.totals(1_000_000).failures, 2);
    }
}
