//! `ConcurrencyLimitConfig`: a fixed or adaptive limit and the shares of
//! each priority class, serde-deserializable and validated when a layer is
//! built.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// How the limit is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LimitConfig {
    /// At most N requests in flight, always.
    Fixed(u32),
    /// A limit that follows latency (see [`GradientConfig`]).
    Adaptive(GradientConfig),
}

/// The parameters of the adaptive (gradient) limit; the defaults are
/// Envoy's adaptive concurrency filter's.
///
/// Every `sample_window` the `sample_percentile` of the latencies seen in
/// the window is compared with the minimum latency (`min_rtt`, plus
/// `min_rtt_buffer` of it): the limit is multiplied by that ratio (kept
/// within 0.5 and 2), and `sqrt(limit)` is added as headroom. Every
/// `min_rtt_interval` (± `min_rtt_jitter`) the limit drops to `min_limit`
/// until `min_rtt_samples` requests have completed; their latency is the
/// new `min_rtt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GradientConfig {
    /// The limit once the first minimum latency is measured (default 20).
    pub initial_limit: u32,
    /// The lowest limit, and the limit while the minimum latency is
    /// measured (default 3).
    pub min_limit: u32,
    /// The highest limit (default 1000).
    pub max_limit: u32,
    /// How often the limit is recomputed (default 100 ms).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub sample_window: Duration,
    /// The percentile of a window's latencies compared with the minimum
    /// latency, in (0, 100] (default 50).
    pub sample_percentile: f64,
    /// The latency above the minimum taken as "no queueing", as a fraction
    /// of the minimum (default 0.25).
    pub min_rtt_buffer: f64,
    /// How often the minimum latency is measured again (default 60 s).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub min_rtt_interval: Duration,
    /// A random extra of up to this fraction of `min_rtt_interval`, so that
    /// replicas do not measure at once (default 0.15).
    pub min_rtt_jitter: f64,
    /// How many requests measure the minimum latency (default 50).
    pub min_rtt_samples: u32,
}

impl Default for GradientConfig {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 3,
            max_limit: 1000,
            sample_window: Duration::from_millis(100),
            sample_percentile: 50.0,
            min_rtt_buffer: 0.25,
            min_rtt_interval: Duration::from_secs(60),
            min_rtt_jitter: 0.15,
            min_rtt_samples: 50,
        }
    }
}

impl GradientConfig {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError::new(format!("concurrency limit: {m}")));
        if self.min_limit == 0 {
            return err("min_limit must be at least 1");
        }
        if self.max_limit < self.min_limit {
            return err("max_limit must be at least min_limit");
        }
        if !(self.min_limit..=self.max_limit).contains(&self.initial_limit) {
            return err("initial_limit must be within min_limit and max_limit");
        }
        if self.sample_window.is_zero() {
            return err("sample_window must be above zero");
        }
        if !(self.sample_percentile > 0.0 && self.sample_percentile <= 100.0) {
            return err("sample_percentile must be in (0, 100]");
        }
        if !(self.min_rtt_buffer >= 0.0 && self.min_rtt_buffer.is_finite()) {
            return err("min_rtt_buffer must be a finite fraction of at least 0");
        }
        if self.min_rtt_interval.is_zero() {
            return err("min_rtt_interval must be above zero");
        }
        if !(0.0..=1.0).contains(&self.min_rtt_jitter) {
            return err("min_rtt_jitter must be in [0, 1]");
        }
        if self.min_rtt_samples == 0 {
            return err("min_rtt_samples must be at least 1");
        }
        Ok(())
    }
}

/// A concurrency limit's settings: the limit, the share of it each
/// priority class may fill, and the `Retry-After` of a rejection.
///
/// Critical requests may fill the whole limit; normal ones are admitted
/// while fewer than `normal_share` × limit requests are in flight, batch
/// ones while fewer than `batch_share` × limit are. The rest is reserved
/// for the classes above.
///
/// ```
/// use battlement::concurrency_limit::{ConcurrencyLimitConfig, ConcurrencyLimitLayer};
///
/// let json = r#"{"name": "api", "limit": {"adaptive": {"max_limit": 200, "sample_window": "250ms"}},
///                "normal_share": 0.8, "batch_share": 0.4, "retry_after": "2s"}"#;
/// let config: ConcurrencyLimitConfig = serde_json::from_str(json).unwrap();
/// assert!(ConcurrencyLimitLayer::from_config(&config).is_ok());
///
/// let fixed: ConcurrencyLimitConfig = serde_json::from_str(r#"{"limit": {"fixed": 64}}"#).unwrap();
/// assert!(ConcurrencyLimitLayer::from_config(&fixed).is_ok());
///
/// let bad: ConcurrencyLimitConfig = serde_json::from_str(r#"{"batch_share": 1.5}"#).unwrap();
/// assert!(ConcurrencyLimitLayer::from_config(&bad).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ConcurrencyLimitConfig {
    /// The name in events and rejections (default `"concurrency"`).
    pub name: String,
    /// The limit (default adaptive with [`GradientConfig::default`]).
    pub limit: LimitConfig,
    /// The share of the limit normal requests may fill, in (0, 1]
    /// (default 0.9).
    pub normal_share: f64,
    /// The share of the limit batch requests may fill, in (0, 1] and at
    /// most `normal_share` (default 0.5).
    pub batch_share: f64,
    /// The `Retry-After` of a rejection, rounded up to whole seconds
    /// (default 1 s).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retry_after: Duration,
}

impl Default for ConcurrencyLimitConfig {
    fn default() -> Self {
        Self {
            name: "concurrency".into(),
            limit: LimitConfig::Adaptive(GradientConfig::default()),
            normal_share: 0.9,
            batch_share: 0.5,
            retry_after: Duration::from_secs(1),
        }
    }
}

impl ConcurrencyLimitConfig {
    /// A fixed limit of `limit` with the default shares.
    pub fn fixed(limit: u32) -> Self {
        Self {
            limit: LimitConfig::Fixed(limit),
            ..Self::default()
        }
    }

    /// An adaptive limit with the default shares.
    pub fn adaptive(gradient: GradientConfig) -> Self {
        Self {
            limit: LimitConfig::Adaptive(gradient),
            ..Self::default()
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError::new(format!("concurrency limit: {m}")));
        if self.name.is_empty() {
            return err("name must not be empty");
        }
        match &self.limit {
            LimitConfig::Fixed(0) => return err("a fixed limit must be at least 1"),
            LimitConfig::Fixed(_) => {}
            LimitConfig::Adaptive(g) => g.validate()?,
        }
        if !(self.normal_share > 0.0 && self.normal_share <= 1.0) {
            return err("normal_share must be in (0, 1]");
        }
        if !(self.batch_share > 0.0 && self.batch_share <= self.normal_share) {
            return err("batch_share must be in (0, normal_share]");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_errors() {
        assert!(ConcurrencyLimitConfig::default().validate().is_ok());
        assert!(ConcurrencyLimitConfig::fixed(0).validate().is_err());
        let g = GradientConfig {
            min_limit: 10,
            initial_limit: 5,
            ..GradientConfig::default()
        };
        assert!(ConcurrencyLimitConfig::adaptive(g).validate().is_err());
        let c = ConcurrencyLimitConfig {
            normal_share: 0.4,
            ..ConcurrencyLimitConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<ConcurrencyLimitConfig>(r#"{"limt": 1}"#).is_err());
        let c: ConcurrencyLimitConfig =
            serde_json::from_str(r#"{"limit": {"adaptive": {"min_rtt_interval": "30s"}}}"#)
                .unwrap();
        let LimitConfig::Adaptive(g) = c.limit else {
            panic!("adaptive expected")
        };
        assert_eq!(g.min_rtt_interval, Duration::from_secs(30));
    }
}
