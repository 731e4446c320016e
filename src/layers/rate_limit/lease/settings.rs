//! `LeaseSettings`: how large leases are and how long they live.

use std::time::Duration;

use crate::error::ConfigError;
use crate::layers::rate_limit::Quota;

/// How the leased mode sizes and returns leases.
///
/// ```
/// use std::time::Duration;
/// use battlement::rate_limit::LeaseSettings;
///
/// let s = LeaseSettings::default();
/// assert_eq!(s.interval(), Duration::from_millis(100));
/// assert_eq!(s.max_burst_fraction(), 0.1);
/// let s = s
///     .with_interval(Duration::from_millis(50))
///     .unwrap()
///     .with_max_burst_fraction(0.25)
///     .unwrap();
/// assert_eq!(s.max_keys(), 100_000);
/// assert!(LeaseSettings::default().with_max_burst_fraction(1.5).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseSettings {
    interval: Duration,
    max_burst_fraction: f64,
    max_keys: usize,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(100),
            max_burst_fraction: 0.1,
            max_keys: 100_000,
        }
    }
}

/// A lease is sized for, and held at most, this share of the interval;
/// the sweep that gives back what expired runs every
/// [`SWEEPS_PER_INTERVAL`]th of it, so unused units are back within
/// 7/8 of the interval (plus one store call) of being taken.
pub(crate) const LIFE_NUM: u32 = 3;
pub(crate) const LIFE_DEN: u32 = 4;
pub(crate) const SWEEPS_PER_INTERVAL: u32 = 8;

impl LeaseSettings {
    /// Every unused unit of a lease is back in the shared state within
    /// this time of being taken (default 100 ms, 10 ms to 10 s).
    pub fn with_interval(self, interval: Duration) -> Result<Self, ConfigError> {
        if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&interval) {
            return Err(ConfigError::new(
                "lease interval must be between 10 ms and 10 s",
            ));
        }
        Ok(Self { interval, ..self })
    }

    /// The largest lease, as a fraction of the quota's burst (default 0.1,
    /// above 0 and at most 1). A quota whose largest lease would be one
    /// unit is decided exactly.
    pub fn with_max_burst_fraction(self, fraction: f64) -> Result<Self, ConfigError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(ConfigError::new(
                "lease max_burst_fraction must be above 0 and at most 1",
            ));
        }
        Ok(Self {
            max_burst_fraction: fraction,
            ..self
        })
    }

    /// The most keys tracked in process (leases, cached denials, rates;
    /// default 100,000); keys beyond it are decided exactly.
    pub fn with_max_keys(self, max_keys: usize) -> Self {
        Self { max_keys, ..self }
    }

    /// See [`with_interval`](Self::with_interval).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// See [`with_max_burst_fraction`](Self::with_max_burst_fraction).
    pub fn max_burst_fraction(&self) -> f64 {
        self.max_burst_fraction
    }

    /// See [`with_max_keys`](Self::with_max_keys).
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// How long a lease is held before its unused units go back.
    pub(crate) fn life(&self) -> Duration {
        self.interval * LIFE_NUM / LIFE_DEN
    }

    /// How often expired leases are given back.
    pub(crate) fn sweep_every(&self) -> Duration {
        self.interval / SWEEPS_PER_INTERVAL
    }

    /// The largest lease for `quota`, in units.
    pub(crate) fn max_lease(&self, quota: &Quota) -> u64 {
        (quota.burst() as f64 * self.max_burst_fraction).floor() as u64
    }
}
