//! `RateLimitConfig`: the rate limiter's policies and behaviour as a serde
//! document, the `[rate_limit]` section of the stack config.
//!
//! ```
//! use battlement::backends::MemoryStore;
//! use battlement::rate_limit::{RateLimitConfig, RateLimitLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let config: RateLimitConfig = toml::from_str(r#"
//!     legacy_headers = true
//!
//!     [[policies]]
//!     name = "global"
//!     quota = { count = 2, period = "1m" }
//! "#).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::from_config(MemoryStore::new(), &config).unwrap())
//!     .service(service_fn(|_: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//!     }));
//!
//! for _ in 0..2 {
//!     let res = svc.clone().oneshot(Request::new(String::new())).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::OK);
//! }
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["x-ratelimit-limit"], "2");
//! # });
//! ```

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::layer::RateLimitLayer;
use super::lease::SyncMode;
use super::policy::Policy;
use super::quota::Quota;
use super::store::RateLimitStore;
use crate::error::{ConfigError, FailurePolicy};
use crate::key::{ClientIp, DEFAULT_IPV6_PREFIX, GlobalKey, HeaderKey, PeerIp, header_name};

/// The rate limiter's policies and behaviour. The defaults: no policy
/// (every request passes), denials enforced (not shadow), fail open when
/// the store fails, no `X-RateLimit-*` headers. Unknown fields are errors.
///
/// ```
/// use battlement::rate_limit::{KeyConfig, RateLimitConfig, SyncMode};
///
/// let config: RateLimitConfig = serde_json::from_str(r#"{
///     "policies": [{
///         "name": "per-ip",
///         "quota": {"count": 100, "period": "1s"},
///         "key": {"by": "client_ip", "trusted_proxies": ["10.0.0.0/8"]},
///         "mode": "leased"
///     }],
///     "failure": "local_fallback"
/// }"#).unwrap();
/// assert_eq!(config.policies[0].mode, SyncMode::Leased);
/// assert_eq!(config.policies[0].key, Some(KeyConfig::client_ip(["10.0.0.0/8".parse().unwrap()])));
/// assert!(config.policies[0].policy().is_ok());
/// assert!(serde_json::from_str::<RateLimitConfig>(r#"{"shadw": true}"#).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Decided in order; a request must pass every one (default none).
    pub policies: Vec<PolicyConfig>,
    /// Count would-be denials, deny nothing (default false; see
    /// [`RateLimitLayer::shadow`]).
    pub shadow: bool,
    /// What to do when the store fails (default fail open).
    pub failure: FailurePolicy,
    /// Also send `X-RateLimit-*` (default false).
    pub legacy_headers: bool,
}

/// One named quota and what it counts per.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Sent in the `RateLimit` headers; the config source key.
    pub name: String,
    /// N per period with a burst.
    pub quota: Quota,
    /// What the quota is counted per. Left out, one bucket is shared by
    /// every client, and the preset warns at startup: write
    /// `key = { by = "global" }` when that is what is meant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyConfig>,
    /// `"exact"` (default) or `"leased"`: see [`SyncMode`].
    #[serde(default)]
    pub mode: SyncMode,
}

impl PolicyConfig {
    /// The policy this config describes.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        self.key
            .clone()
            .unwrap_or_default()
            .keyed(Policy::new(&self.name, self.quota)?.mode(self.mode))
    }
}

/// What a quota is counted per.
/// (Every variant has braces so that unknown fields are errors there too.)
///
/// IPv6 clients are counted per network of `ipv6_prefix` bits (default
/// 64, the smallest a host is usually given; 128 counts each address), so
/// one host cannot spread its requests over 2^64 keys. IPv4 clients, and
/// IPv4-mapped IPv6 ones, are counted per address.
///
/// ```
/// use battlement::stack::StackConfig;
///
/// let config = StackConfig::from_toml(r#"
///     [[rate_limit.policies]]
///     name = "per-site"
///     quota = { count = 1000, period = "1m" }
///     key = { by = "client_ip", trusted_proxies = ["10.0.0.0/8"], ipv6_prefix = 48 }
/// "#).unwrap();
/// # assert!(config.rate_limit.unwrap().policies[0].policy().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyConfig {
    /// One key for every request.
    Global {},
    /// The TCP peer's address.
    PeerIp {
        /// IPv6 addresses are grouped by this prefix length (1 to 128,
        /// default 64).
        #[serde(default = "default_ipv6_prefix")]
        ipv6_prefix: u8,
    },
    /// The client's address behind these trusted proxies.
    ClientIp {
        /// Proxies whose `X-Forwarded-For` / `Forwarded` is believed.
        #[serde(default)]
        #[schemars(with = "Vec<String>")]
        trusted_proxies: Vec<IpNet>,
        /// IPv6 addresses are grouped by this prefix length (1 to 128,
        /// default 64).
        #[serde(default = "default_ipv6_prefix")]
        ipv6_prefix: u8,
    },
    /// A request header's value (e.g. an API key), hashed.
    Header {
        /// The header name.
        name: String,
        /// The deployment secret the hash is keyed with (see
        /// [`HeaderKey::secret`]); default none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    },
}

fn default_ipv6_prefix() -> u8 {
    DEFAULT_IPV6_PREFIX
}

impl Default for KeyConfig {
    fn default() -> Self {
        Self::Global {}
    }
}

impl KeyConfig {
    /// The peer's address, IPv6 grouped by the default /64.
    pub fn peer_ip() -> Self {
        Self::PeerIp {
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// The client's address behind `trusted_proxies`, IPv6 grouped by the
    /// default /64.
    pub fn client_ip(trusted_proxies: impl IntoIterator<Item = IpNet>) -> Self {
        Self::ClientIp {
            trusted_proxies: trusted_proxies.into_iter().collect(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// `policy` counted per this key.
    pub fn keyed(&self, policy: Policy) -> Result<Policy, ConfigError> {
        Ok(match self {
            Self::Global {} => policy.key(GlobalKey),
            Self::PeerIp { ipv6_prefix } => {
                policy.key(PeerIp::new().ipv6_prefix(checked_prefix(*ipv6_prefix)?))
            }
            Self::ClientIp {
                trusted_proxies,
                ipv6_prefix,
            } => policy.key(
                ClientIp::new(trusted_proxies.iter().copied())
                    .ipv6_prefix(checked_prefix(*ipv6_prefix)?),
            ),
            Self::Header { name, secret } => {
                let key = HeaderKey::new(header_name("key", name)?);
                policy.key(match secret {
                    Some(secret) => key.secret(secret),
                    None => key,
                })
            }
        })
    }
}

fn checked_prefix(bits: u8) -> Result<u8, ConfigError> {
    if (1..=128).contains(&bits) {
        Ok(bits)
    } else {
        Err(ConfigError::new(format!(
            "key ipv6_prefix {bits}: must be 1 to 128"
        )))
    }
}

impl<St: RateLimitStore> RateLimitLayer<St> {
    /// The layer `config` describes over `store`: its policies in order,
    /// shadow mode, failure policy and legacy headers. A policy with an
    /// invalid name, key or prefix is an error.
    pub fn from_config(store: St, config: &RateLimitConfig) -> Result<Self, ConfigError> {
        let mut layer = Self::new(store)
            .shadow(config.shadow)
            .failure_policy(config.failure)
            .legacy_headers(config.legacy_headers);
        for policy in &config.policies {
            layer = layer.policy(policy.policy()?);
        }
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_survives_a_round_trip_through_json() {
        let config = RateLimitConfig {
            policies: vec![
                PolicyConfig {
                    name: "per-ip".into(),
                    quota: Quota::per_second(10).unwrap().with_burst(3).unwrap(),
                    key: Some(KeyConfig::client_ip(["10.0.0.0/8".parse().unwrap()])),
                    mode: SyncMode::Leased,
                },
                PolicyConfig {
                    name: "per-key".into(),
                    quota: Quota::per_minute(5).unwrap(),
                    key: Some(KeyConfig::Header {
                        name: "x-api-key".into(),
                        secret: None,
                    }),
                    mode: SyncMode::Exact,
                },
            ],
            shadow: true,
            failure: FailurePolicy::LocalFallback,
            legacy_headers: true,
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<RateLimitConfig>(&json).unwrap(),
            config
        );
    }

    #[test]
    fn bad_prefixes_and_header_names_are_errors_naming_them() {
        let prefix = KeyConfig::PeerIp { ipv6_prefix: 0 };
        let policy = || Policy::new("p", Quota::per_second(1).unwrap()).unwrap();
        assert!(
            prefix
                .keyed(policy())
                .unwrap_err()
                .message()
                .contains("ipv6_prefix 0")
        );
        let header = KeyConfig::Header {
            name: "bad name".into(),
            secret: None,
        };
        assert!(
            header
                .keyed(policy())
                .unwrap_err()
                .message()
                .contains("\"bad name\"")
        );
    }
}
