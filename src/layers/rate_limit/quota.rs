//! `Quota`: N per period with a burst.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Largest value the integer GCRA state may reach. Every number a store
/// keeps or computes stays below 2^53, so the Redis Lua script (which
/// computes in doubles) is exact.
pub(crate) const MAX_EXACT: u64 = 1 << 53;

/// `count` requests per `period`, with up to `burst` at once.
///
/// ```
/// use std::time::Duration;
/// use battlement::rate_limit::Quota;
///
/// let q = Quota::per_second(10).unwrap();
/// assert_eq!(q.burst(), 10);
/// assert_eq!(q.emission_interval(), Duration::from_millis(100));
/// let q: Quota = "50/m".parse().unwrap();
/// assert_eq!((q.count(), q.period()), (50, Duration::from_secs(60)));
/// assert_eq!(q.with_burst(5).unwrap().burst(), 5);
/// assert!(Quota::new(0, Duration::from_secs(1)).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "QuotaConfig", into = "QuotaConfig")]
pub struct Quota {
    count: u64,
    period_us: u64,
    burst: u64,
}

impl Quota {
    /// `count` per `period`, burst = `count`.
    pub fn new(count: u64, period: Duration) -> Result<Self, ConfigError> {
        let period_us = u64::try_from(period.as_micros())
            .map_err(|_| ConfigError::new("rate limit period is too long"))?;
        Self::validated(count, period_us, count)
    }

    /// `count` per second.
    pub fn per_second(count: u64) -> Result<Self, ConfigError> {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` per minute.
    pub fn per_minute(count: u64) -> Result<Self, ConfigError> {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` per hour.
    pub fn per_hour(count: u64) -> Result<Self, ConfigError> {
        Self::new(count, Duration::from_secs(3600))
    }

    /// The same rate with a burst of `burst` (at least 1).
    pub fn with_burst(self, burst: u64) -> Result<Self, ConfigError> {
        Self::validated(self.count, self.period_us, burst)
    }

    fn validated(count: u64, period_us: u64, burst: u64) -> Result<Self, ConfigError> {
        if count == 0 {
            return Err(ConfigError::new("rate limit count must be at least 1"));
        }
        if period_us == 0 {
            return Err(ConfigError::new("rate limit period must be at least 1 µs"));
        }
        if burst == 0 {
            return Err(ConfigError::new("rate limit burst must be at least 1"));
        }
        let capacity = burst
            .checked_mul(period_us)
            .filter(|c| c.saturating_add(period_us) < MAX_EXACT / 2);
        if capacity.is_none() || count >= MAX_EXACT / 4 {
            return Err(ConfigError::new(
                "rate limit burst × period is too large (keep it below 2^52 µs)",
            ));
        }
        Ok(Self {
            count,
            period_us,
            burst,
        })
    }

    /// Requests per period.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_micros(self.period_us)
    }

    /// The period in microseconds.
    pub fn period_us(&self) -> u64 {
        self.period_us
    }

    /// Requests allowed at once.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Time between two requests at the sustained rate.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.period_us.saturating_mul(1_000) / self.count)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?} burst {}", self.count, self.period(), self.burst)
    }
}

/// `N/s`, `N/m` or `N/h` (the `RATE_LIMIT` syntax of the examples).
impl FromStr for Quota {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::new(format!("rate limit {s:?} is not N/s, N/m or N/h"));
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        Self::new(count, period)
    }
}

/// Serde form of a [`Quota`]: `{"count": 100, "period": "1s", "burst": 20}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaConfig {
    count: u64,
    #[serde(with = "humantime_serde")]
    period: Duration,
    #[serde(default)]
    burst: Option<u64>,
}

impl TryFrom<QuotaConfig> for Quota {
    type Error = ConfigError;

    fn try_from(c: QuotaConfig) -> Result<Self, ConfigError> {
        let q = Quota::new(c.count, c.period)?;
        match c.burst {
            Some(b) => q.with_burst(b),
            None => Ok(q),
        }
    }
}

impl From<Quota> for QuotaConfig {
    fn from(q: Quota) -> Self {
        Self {
            count: q.count,
            period: q.period(),
            burst: Some(q.burst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_validate() {
        assert_eq!(
            "100/s".parse::<Quota>().unwrap(),
            Quota::per_second(100).unwrap()
        );
        assert_eq!(
            "3/h".parse::<Quota>().unwrap().period(),
            Duration::from_secs(3600)
        );
        for bad in ["", "10", "x/s", "10/d", "0/s", "-1/s"] {
            assert!(bad.parse::<Quota>().is_err(), "{bad}");
        }
        assert!(Quota::per_second(1).unwrap().with_burst(0).is_err());
        assert!(
            Quota::per_hour(1).unwrap().with_burst(10_000_000).is_err(),
            "too large"
        );
    }

    #[test]
    fn serde_round_trip_and_errors() {
        let q: Quota =
            serde_json::from_str(r#"{"count": 10, "period": "1s", "burst": 20}"#).unwrap();
        assert_eq!(q.burst(), 20);
        let back: Quota = serde_json::from_str(&serde_json::to_string(&q).unwrap()).unwrap();
        assert_eq!(back, q);
        assert!(serde_json::from_str::<Quota>(r#"{"count": 0, "period": "1s"}"#).is_err());
    }
}
