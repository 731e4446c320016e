//! `DeadlineConfig`: the default timeout, per-route timeouts, the expiry
//! status and the handling of a malformed `grpc-timeout`; serde
//! deserializable and validated when a layer is built.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// What a malformed inbound `grpc-timeout` header does.
///
/// The gRPC implementations differ: tonic's server and gRPC C-core ignore
/// the header, grpc-go fails the call with `INTERNAL`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MalformedGrpcTimeout {
    /// The header is ignored (the layer's own timeout applies) and a
    /// `malformed_grpc_timeout` event is counted: what tonic does.
    #[default]
    Ignore,
    /// The call is rejected at once with a trailers-only `INTERNAL`,
    /// without calling the inner service: what grpc-go does.
    Reject,
}

/// A route's own timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteDeadline {
    /// The route: axum's matched route template (`/items/{id}`) when the
    /// layer runs inside a `Router`, otherwise the request path. For gRPC,
    /// `/package.Service/Method`.
    pub route: String,
    /// Its timeout.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

/// The settings of a [`DeadlineLayer`](super::DeadlineLayer).
///
/// ```
/// use battlement::deadline::{DeadlineConfig, DeadlineLayer};
///
/// let config: DeadlineConfig = serde_json::from_value(serde_json::json!({
///     "timeout": "10s",
///     "routes": [{ "route": "/reports/{id}", "timeout": "60s" }],
///     "status": 503,
///     "malformed_grpc_timeout": "reject",
/// }))
/// .unwrap();
/// let layer = DeadlineLayer::from_config(&config).unwrap();
///
/// let bad: DeadlineConfig = serde_json::from_value(serde_json::json!({ "status": 500 })).unwrap();
/// assert!(DeadlineLayer::from_config(&bad).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DeadlineConfig {
    /// The timeout of a request whose route has none of its own
    /// (default 30 s).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Routes with their own timeout (default none).
    pub routes: Vec<RouteDeadline>,
    /// The HTTP status of an expired request: 504 (default) or 503.
    pub status: u16,
    /// What a malformed `grpc-timeout` does (default: ignored).
    pub malformed_grpc_timeout: MalformedGrpcTimeout,
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            routes: Vec::new(),
            status: 504,
            malformed_grpc_timeout: MalformedGrpcTimeout::Ignore,
        }
    }
}

impl DeadlineConfig {
    /// The defaults with `timeout` for every route.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            ..Self::default()
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::new(format!("deadline: {m}")));
        if self.timeout.is_zero() {
            return err("timeout must be above zero".into());
        }
        if !matches!(self.status, 503 | 504) {
            return err(format!("status must be 503 or 504, not {}", self.status));
        }
        let mut seen = HashSet::new();
        for r in &self.routes {
            if !r.route.starts_with('/') {
                return err(format!("route {:?} must start with '/'", r.route));
            }
            if r.timeout.is_zero() {
                return err(format!("timeout of route {} must be above zero", r.route));
            }
            if !seen.insert(r.route.as_str()) {
                return err(format!("route {} is listed twice", r.route));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c: DeadlineConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, DeadlineConfig::default());
        assert!(c.validate().is_ok());
        let bad = [
            serde_json::json!({ "timeout": "0s" }),
            serde_json::json!({ "status": 500 }),
            serde_json::json!({ "routes": [{ "route": "x", "timeout": "1s" }] }),
            serde_json::json!({ "routes": [{ "route": "/x", "timeout": "0s" }] }),
            serde_json::json!({ "routes": [
                { "route": "/x", "timeout": "1s" }, { "route": "/x", "timeout": "2s" }
            ] }),
        ];
        for v in bad {
            let c: DeadlineConfig = serde_json::from_value(v.clone()).unwrap();
            assert!(c.validate().is_err(), "{v}");
        }
        assert!(serde_json::from_value::<DeadlineConfig>(serde_json::json!({ "x": 1 })).is_err());
    }
}
