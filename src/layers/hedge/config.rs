//! `HedgeConfig`: when a second attempt goes out, and how many may.

use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// How long the first attempt runs before the hedge is sent.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HedgeDelay {
    /// Always this long.
    Fixed(
        #[serde(with = "humantime_serde")]
        #[schemars(with = "String")]
        Duration,
    ),
    /// This percentile (0 < p < 100) of the recent latencies of the
    /// request's host. Until the host has `min_samples` of them, `fallback`
    /// if set, else no hedge.
    Percentile {
        /// The percentile, e.g. 95.0.
        percentile: f64,
        /// The delay while there are too few samples (default none: no
        /// hedge).
        #[serde(default, with = "humantime_serde")]
        #[schemars(with = "Option<String>")]
        fallback: Option<Duration>,
    },
}

impl Default for HedgeDelay {
    fn default() -> Self {
        Self::Percentile {
            percentile: 95.0,
            fallback: None,
        }
    }
}

/// How a client hedges. Defaults: hedge after the host's p95 latency
/// (nothing until 20 samples), at most 10 % of requests hedged, request
/// bodies up to 64 KiB kept for the hedge, latencies of at most 1,024
/// hosts remembered (the least recently used forgotten first).
///
/// ```
/// use std::time::Duration;
/// use battlement::hedge::{HedgeConfig, HedgeDelay};
///
/// let config = HedgeConfig::default()
///     .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
///     .max_hedged_fraction(0.05);
/// assert!(config.validate().is_ok());
///
/// let json = r#"{"delay": {"percentile": {"percentile": 99.0, "fallback": "20ms"}},
///                "max_hedged_fraction": 0.02, "min_samples": 50}"#;
/// let parsed: HedgeConfig = serde_json::from_str(json).unwrap();
/// assert!(parsed.validate().is_ok());
/// assert!(HedgeConfig::default().max_hedged_fraction(1.5).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct HedgeConfig {
    /// When the hedge goes out (default the host's p95).
    pub(crate) delay: HedgeDelay,
    /// At most this share of requests is hedged, 0 to 1.
    pub(crate) max_hedged_fraction: f64,
    /// Latencies a host needs before its percentile is used.
    pub(crate) min_samples: u32,
    /// Hosts whose latencies are kept.
    pub(crate) max_hosts: usize,
    /// Request bodies up to this many bytes are kept for the hedge.
    pub(crate) max_body: usize,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            delay: HedgeDelay::default(),
            max_hedged_fraction: 0.1,
            min_samples: 20,
            max_hosts: 1024,
            max_body: 64 * 1024,
        }
    }
}

/// Latencies kept per host (the most recent ones).
pub(crate) const SAMPLES_PER_HOST: usize = 256;

impl HedgeConfig {
    /// When the hedge goes out.
    pub fn delay(mut self, delay: HedgeDelay) -> Self {
        self.delay = delay;
        self
    }

    /// At most this share of requests (0 to 1) is hedged: over any run
    /// of `n` requests, at most `10 + fraction × n` hedges (10 saved up
    /// for a burst, available from the start).
    pub fn max_hedged_fraction(mut self, fraction: f64) -> Self {
        self.max_hedged_fraction = fraction;
        self
    }

    /// Latencies a host needs before its percentile is used.
    pub fn min_samples(mut self, samples: u32) -> Self {
        self.min_samples = samples;
        self
    }

    /// Hosts whose latencies are kept; the least recently used one is
    /// forgotten to make room.
    pub fn max_hosts(mut self, hosts: usize) -> Self {
        self.max_hosts = hosts;
        self
    }

    /// Request bodies up to this many bytes are kept for the hedge;
    /// larger ones are sent once, unhedged.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Checks every value; the layer constructor calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.delay {
            HedgeDelay::Fixed(d) if d.is_zero() => {
                return Err(ConfigError::new("hedge delay must be longer than zero"));
            }
            HedgeDelay::Percentile { percentile, .. }
                if !(percentile > 0.0 && percentile < 100.0) =>
            {
                return Err(ConfigError::new(
                    "hedge percentile must be above 0 and below 100",
                ));
            }
            HedgeDelay::Percentile {
                fallback: Some(d), ..
            } if d.is_zero() => {
                return Err(ConfigError::new(
                    "hedge fallback delay must be longer than zero",
                ));
            }
            _ => {}
        }
        if !(self.max_hedged_fraction >= 0.0 && self.max_hedged_fraction <= 1.0) {
            return Err(ConfigError::new(
                "max_hedged_fraction must be between 0 and 1",
            ));
        }
        if self.min_samples == 0 || self.min_samples as usize > SAMPLES_PER_HOST {
            return Err(ConfigError::new(format!(
                "min_samples must be between 1 and {SAMPLES_PER_HOST}"
            )));
        }
        if self.max_hosts == 0 || self.max_hosts > 1_000_000 {
            return Err(ConfigError::new(
                "max_hosts must be between 1 and 1,000,000",
            ));
        }
        Ok(())
    }
}
