//! Back-off between attempts: exponential with full jitter, or
//! decorrelated jitter (both from the AWS architecture blog's "Exponential
//! Backoff and Jitter"), capped.

use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;

/// How long to wait before a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Backoff {
    /// Retry `n` (1-based) waits a uniform random time in
    /// `[0, min(max, base × 2^(n-1))]`.
    Exponential {
        /// The first retry's ceiling.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        base: Duration,
        /// The cap.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        max: Duration,
    },
    /// Each wait is uniform in `[base, min(max, previous × 3)]`.
    Decorrelated {
        /// The smallest wait.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        base: Duration,
        /// The cap.
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        max: Duration,
    },
}

impl Default for Backoff {
    fn default() -> Self {
        Self::Exponential {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The range the wait before retry `retry` (1 for the first) is drawn
    /// from, uniformly, after a wait of `previous` (zero before the
    /// first): full jitter up to the exponential ceiling, or from `base` up
    /// to three times the previous wait (decorrelated), capped at `max`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use battlement::retry::Backoff;
    ///
    /// let backoff = Backoff::Exponential { base: Duration::from_millis(100), max: Duration::from_secs(1) };
    /// assert_eq!(backoff.bounds(3, Duration::ZERO), Duration::ZERO..=Duration::from_millis(400));
    /// assert_eq!(*backoff.bounds(30, Duration::ZERO).end(), Duration::from_secs(1));
    /// ```
    pub fn bounds(&self, retry: u32, previous: Duration) -> RangeInclusive<Duration> {
        match *self {
            Self::Exponential { base, max } => {
                let ceiling = base
                    .checked_mul(1u32 << retry.saturating_sub(1).min(31))
                    .unwrap_or(max)
                    .min(max);
                Duration::ZERO..=ceiling
            }
            Self::Decorrelated { base, max } => {
                let ceiling = previous.max(base).saturating_mul(3).min(max);
                base.min(ceiling)..=ceiling
            }
        }
    }

    /// A wait drawn from [`bounds`](Self::bounds) with `rng`.
    pub(crate) fn delay(
        &self,
        retry: u32,
        previous: Duration,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        let bounds = self.bounds(retry, previous);
        uniform(rng, *bounds.start(), *bounds.end())
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let (Self::Exponential { base, max } | Self::Decorrelated { base, max }) = *self;
        if base.is_zero() || max < base {
            return Err(format!(
                "backoff needs 0 < base <= max, got {base:?} and {max:?}"
            ));
        }
        Ok(())
    }
}

/// A uniform random duration in `[low, high]`, to the microsecond.
fn uniform(rng: &mut fastrand::Rng, low: Duration, high: Duration) -> Duration {
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let (low, high) = (micros(low), micros(high));
    Duration::from_micros(rng.u64(low..=high.max(low)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    // Full jitter stays within the doubling ceiling and the cap.
    #[test]
    fn exponential_full_jitter_bounds_and_cap() {
        let b = Backoff::Exponential {
            base: 100 * MS,
            max: 1000 * MS,
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 1..=12u32 {
            let ceiling = (100 * MS * 2u32.pow(retry - 1)).min(1000 * MS);
            let delays: Vec<_> = (0..200)
                .map(|_| b.delay(retry, Duration::ZERO, &mut rng))
                .collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "retry {retry}");
            // Jittered: spread over the range, not stuck at one value.
            let max = delays.iter().max().unwrap();
            let min = delays.iter().min().unwrap();
            assert!(
                *max > ceiling * 3 / 4 && *min < ceiling / 4,
                "retry {retry}: {min:?}..{max:?}"
            );
        }
        // Huge retry counts neither overflow nor pass the cap.
        assert!(b.delay(u32::MAX, Duration::ZERO, &mut rng) <= 1000 * MS);
    }

    // Decorrelated jitter grows from the previous wait, capped.
    #[test]
    fn decorrelated_jitter_bounds_and_cap() {
        let b = Backoff::Decorrelated {
            base: 100 * MS,
            max: 2000 * MS,
        };
        let mut rng = fastrand::Rng::with_seed(11);
        let mut previous = Duration::ZERO;
        for retry in 1..=50 {
            let d = b.delay(retry, previous, &mut rng);
            let ceiling = (previous.max(100 * MS) * 3).min(2000 * MS);
            assert!(
                d >= 100 * MS && d <= ceiling,
                "retry {retry}: {d:?} after {previous:?}"
            );
            previous = d;
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_delays() {
        let b = Backoff::default();
        let run = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (1..=5)
                .map(|n| b.delay(n, Duration::ZERO, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }
}
