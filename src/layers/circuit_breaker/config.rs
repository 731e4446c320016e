//! `BreakerConfig`: the thresholds of a breaker, serde-deserializable and
//! validated when a layer is built.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// What the breaker looks back on to compute its rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Window {
    /// The last N calls.
    Count(u32),
    /// The calls of the last N seconds, in one bucket per second.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    Time(Duration),
}

/// A breaker's settings.
///
/// # The defaults
///
/// The calls of the last 10 s, at least 5 of them; open at 50 % failures
/// or 100 % calls slower than 60 s; stay open 5 s, then let 1 probe
/// decide, within 60 s. Every breaker of the crate starts from these: the
/// client preset's, a `[client.breaker]` or `[circuit_breaker]` table's
/// missing fields, and a config source's fields not in its document.
///
/// They are made for the common breaker, one per upstream host, where
/// each host may see little traffic, as Envoy's outlier detection is (it
/// ejects a host after 5 consecutive 5xx): a time window lets old calls
/// age out, where resilience4j's default window (the last 100 calls, at
/// least 100 of them) would let a host called a few times a minute fail
/// for half an hour before it opens, and then judge it on calls made long
/// ago; 5 calls are enough to tell a dead host; a short open time with one
/// probe puts a recovered host back within seconds and costs a dead one a
/// call every 5 s. The failure and slow-call thresholds are
/// resilience4j's. For one busy dependency shared by the whole service, a
/// count window of more calls and a higher minimum give steadier rates.
///
/// ```
/// use std::time::Duration;
/// use battlement::circuit_breaker::{BreakerConfig, Window};
///
/// let config = BreakerConfig::default()
///     .window(Window::Time(Duration::from_secs(30)))
///     .minimum_calls(10)
///     .failure_rate(25.0)
///     .open_for(Duration::from_secs(5));
/// assert!(config.validate().is_ok());
///
/// // The same from JSON (or TOML / YAML through serde).
/// let json = r#"{"window": {"time": "30s"}, "minimum_calls": 10,
///                "failure_rate": 25.0, "open_for": "5s"}"#;
/// let parsed: BreakerConfig = serde_json::from_str(json).unwrap();
/// assert_eq!(parsed, config);
/// assert!(serde_json::from_str::<BreakerConfig>(r#"{"failure_rat": 1}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub(crate) window: Window,
    pub(crate) minimum_calls: u32,
    pub(crate) failure_rate: f64,
    pub(crate) slow_call_rate: f64,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub(crate) slow_call: Duration,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) half_open_probes: u32,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub(crate) open_for: Duration,
    pub(crate) open_backoff: f64,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub(crate) max_open_for: Duration,
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub(crate) probe_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: Window::Time(Duration::from_secs(10)),
            minimum_calls: 5,
            failure_rate: 50.0,
            slow_call_rate: 100.0,
            slow_call: Duration::from_secs(60),
            consecutive_failures: None,
            half_open_probes: 1,
            open_for: Duration::from_secs(5),
            open_backoff: 1.0,
            max_open_for: Duration::from_secs(600),
            probe_timeout: Duration::from_secs(60),
        }
    }
}

/// The longest time window: one hour of per-second buckets.
const MAX_WINDOW_SECS: u64 = 3600;

/// The longest open time.
const MAX_OPEN: Duration = Duration::from_secs(24 * 3600);

impl BreakerConfig {
    /// The window the rates are computed over.
    pub fn window(mut self, window: Window) -> Self {
        self.window = window;
        self
    }

    /// Calls the window must hold before a rate can open the breaker:
    /// with 10, nine failures stay closed and the tenth opens it.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// Failure percentage (0 < p ≤ 100) at or above which the breaker opens.
    pub fn failure_rate(mut self, percent: f64) -> Self {
        self.failure_rate = percent;
        self
    }

    /// Percentage of slow calls (0 < p ≤ 100) at or above which the
    /// breaker opens.
    pub fn slow_call_rate(mut self, percent: f64) -> Self {
        self.slow_call_rate = percent;
        self
    }

    /// A call is slow when it takes strictly longer than this.
    pub fn slow_call(mut self, duration: Duration) -> Self {
        self.slow_call = duration;
        self
    }

    /// Consecutive-failures mode (as Envoy's outlier detection): open after
    /// `n` failures in a row, instead of on rates. Half-open then closes
    /// after all probes succeed and re-opens on the first failure.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = Some(n);
        self
    }

    /// Probes admitted in half-open state; they decide whether it closes.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes;
        self
    }

    /// How long a half-open probe may run (default 60 s, the slow-call
    /// time). A probe still out after it counts as failed and the breaker
    /// opens again, so a long stream or a hung call cannot hold the
    /// breaker half-open; raise it for upstreams whose calls are long
    /// streams by design.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout;
        self
    }

    /// How long the breaker stays open before it half-opens.
    pub fn open_for(mut self, duration: Duration) -> Self {
        self.open_for = duration;
        self
    }

    /// Each re-open after failed probes multiplies the open time by
    /// `multiplier` (≥ 1), up to `max`.
    pub fn open_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.open_backoff = multiplier;
        self.max_open_for = max;
        self
    }

    /// Checks every value; the layer constructors call it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let percent = |name: &str, p: f64| {
            if p > 0.0 && p <= 100.0 {
                Ok(())
            } else {
                Err(ConfigError::new(format!(
                    "{name} must be a percentage in (0, 100], got {p}"
                )))
            }
        };
        percent("failure_rate", self.failure_rate)?;
        percent("slow_call_rate", self.slow_call_rate)?;
        match self.window {
            Window::Count(0) => return Err(ConfigError::new("window count must be at least 1")),
            Window::Time(d) if d.as_secs() == 0 || d.as_secs() > MAX_WINDOW_SECS => {
                return Err(ConfigError::new(format!(
                    "window time must be 1 s to {MAX_WINDOW_SECS} s (whole seconds), got {d:?}"
                )));
            }
            _ => {}
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls must be at least 1"));
        }
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new("consecutive_failures must be at least 1"));
        }
        if self.half_open_probes == 0 {
            return Err(ConfigError::new("half_open_probes must be at least 1"));
        }
        if self.open_for.is_zero() {
            return Err(ConfigError::new("open_for must be longer than zero"));
        }
        if self.probe_timeout.is_zero() {
            return Err(ConfigError::new("probe_timeout must be longer than zero"));
        }
        if !(self.open_backoff >= 1.0 && self.open_backoff.is_finite()) {
            return Err(ConfigError::new(format!(
                "open_backoff must be a finite multiplier >= 1, got {}",
                self.open_backoff
            )));
        }
        if self.max_open_for < self.open_for {
            return Err(ConfigError::new("max_open_for must be at least open_for"));
        }
        if self.max_open_for > MAX_OPEN {
            return Err(ConfigError::new(format!(
                "open_for and max_open_for must be at most {MAX_OPEN:?}"
            )));
        }
        if let (Window::Count(size), None) = (self.window, self.consecutive_failures)
            && self.minimum_calls > size
        {
            return Err(ConfigError::new(format!(
                "minimum_calls ({}) above the window count ({size}) could never open the breaker",
                self.minimum_calls
            )));
        }
        Ok(())
    }

    /// The open time after `reopens` failed half-open rounds.
    pub(crate) fn open_time(&self, reopens: u32) -> Duration {
        let factor = self.open_backoff.powi(reopens.min(64) as i32);
        let secs = self.open_for.as_secs_f64() * factor;
        if secs >= self.max_open_for.as_secs_f64() {
            self.max_open_for
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        let cases = [
            (BreakerConfig::default().failure_rate(0.0), "failure_rate"),
            (
                BreakerConfig::default().slow_call_rate(101.0),
                "slow_call_rate",
            ),
            (BreakerConfig::default().window(Window::Count(0)), "window"),
            (
                BreakerConfig::default().window(Window::Time(Duration::from_millis(500))),
                "window",
            ),
            (BreakerConfig::default().minimum_calls(0), "minimum_calls"),
            (
                BreakerConfig::default().half_open_probes(0),
                "half_open_probes",
            ),
            (
                BreakerConfig::default().consecutive_failures(0),
                "consecutive_failures",
            ),
            (
                BreakerConfig::default().open_for(Duration::ZERO),
                "open_for",
            ),
            (
                BreakerConfig::default().probe_timeout(Duration::ZERO),
                "probe_timeout",
            ),
            (
                BreakerConfig::default().open_backoff(0.5, Duration::from_secs(600)),
                "open_backoff",
            ),
            (
                BreakerConfig::default().open_backoff(2.0, Duration::from_secs(1)),
                "max_open_for",
            ),
            (
                BreakerConfig::default().open_backoff(2.0, Duration::from_secs(90_000)),
                "max_open_for",
            ),
            (
                BreakerConfig::default().window(Window::Count(4)),
                "minimum_calls",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.message().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn open_time_backs_off_up_to_the_cap() {
        let config = BreakerConfig::default()
            .open_for(Duration::from_secs(5))
            .open_backoff(2.0, Duration::from_secs(30));
        let times: Vec<_> = (0..5).map(|n| config.open_time(n).as_secs()).collect();
        assert_eq!(times, [5, 10, 20, 30, 30]);
    }
}
