//! `IdempotencyConfig`: the idempotency layer's settings as a serde
//! document, the `[idempotency]` section of the stack config.
//!
//! ```
//! use battlement::backends::MemoryStore;
//! use battlement::idempotency::{IdempotencyConfig, IdempotencyLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let config: IdempotencyConfig = toml::from_str(r#"
//!     routes = ["/orders"]
//!     required = true
//!     retention = "1h"
//!     scope = { by = "header", name = "x-tenant-id" }
//! "#).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(IdempotencyLayer::from_config(MemoryStore::new(), &config).unwrap())
//!     .service(service_fn(|_: Request<_>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("placed")))
//!     }));
//!
//! // A POST to a covered route without a key: 400, the handler does not run.
//! let req = Request::post("/orders").header("x-tenant-id", "acme").body(String::new()).unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), StatusCode::BAD_REQUEST);
//! // Other routes pass untouched.
//! let req = Request::post("/search").body(String::new()).unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), StatusCode::OK);
//! # });
//! ```

use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::layer::{
    DEFAULT_LOCK, DEFAULT_MAX_EXECUTION, DEFAULT_RELEASE_STATUSES, DEFAULT_RETENTION,
    IdempotencyLayer,
};
use super::scope::{AuthorizationScope, PrincipalScope, TrustedHeaderScope};
use super::store::IdempotencyStore;
use crate::error::{ConfigError, FailurePolicy};
use crate::key::{ClientIp, HeaderKey, header_name};

/// The idempotency layer's settings. The defaults are the layer's: every
/// route, POST and PATCH, key optional, bare-token keys accepted, a 60 s
/// lock, 24 h retention, fail closed, scoped by `Authorization` else the
/// peer's address. Unknown fields are errors.
///
/// ```
/// use std::time::Duration;
/// use battlement::idempotency::{IdempotencyConfig, ScopeConfig};
///
/// let config: IdempotencyConfig = serde_json::from_str(r#"{
///     "methods": ["post"],
///     "lock": "30s",
///     "scope": {"by": "client_ip", "trusted_proxies": ["10.0.0.0/8"]}
/// }"#).unwrap();
/// assert_eq!(config.lock, Duration::from_secs(30));
/// assert_eq!(config.retention, IdempotencyConfig::default().retention);
/// assert!(matches!(config.scope, ScopeConfig::ClientIp { .. }));
/// assert!(serde_json::from_str::<IdempotencyConfig>(r#"{"requird": true}"#).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// The route templates covered (`/orders`, `/orders/{id}`); empty
    /// (the default): every route. See [`IdempotencyLayer::routes`].
    pub routes: Vec<String>,
    /// Methods covered, any case (default POST and PATCH; not empty).
    pub methods: Vec<String>,
    /// A covered request without a key gets 400 (default false).
    pub required: bool,
    /// Only the draft's quoted keys are accepted, not bare tokens
    /// (default false).
    pub strict_keys: bool,
    /// How long a claim is held while its request runs (default 60 s;
    /// 1 s to 1 day).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub lock: Duration,
    /// How long a completed response is replayed (default 24 h; 1 s to
    /// 1 year).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub retention: Duration,
    /// The longest a won claim's handler runs before it is cancelled and
    /// its key released (default 5 min; 1 s to 1 day). See
    /// [`IdempotencyLayer::max_execution`].
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_execution: Duration,
    /// Statuses whose responses are not kept, the key released (default
    /// 401, 403, 429, 503). See [`IdempotencyLayer::release_statuses`].
    pub release_statuses: Vec<u16>,
    /// What to do when the store fails (default fail closed).
    pub failure: FailurePolicy,
    /// Whose keys they are (default `Authorization`, else the peer's
    /// address); a request with no scope gets 400.
    pub scope: ScopeConfig,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            methods: vec!["POST".into(), "PATCH".into()],
            required: false,
            strict_keys: false,
            lock: DEFAULT_LOCK,
            retention: DEFAULT_RETENTION,
            max_execution: DEFAULT_MAX_EXECUTION,
            release_statuses: DEFAULT_RELEASE_STATUSES
                .iter()
                .map(|s| s.as_u16())
                .collect(),
            failure: FailurePolicy::FailClosed,
            scope: ScopeConfig::default(),
        }
    }
}

/// Whose idempotency keys they are: a stored response is replayed only to
/// requests of the same scope, so a scope must tell clients apart. A
/// request whose scope cannot be told (no credential and no known
/// address, a missing header) gets 400 "idempotency scope unknown" and
/// does not run; there is no scope shared by default, but clients that
/// send the same `Authorization` value share its scope (see [which scope
/// fits](crate::idempotency#which-scope-fits)). Addresses are scopes each
/// on its own (IPv6 is not grouped by prefix here).
///
/// ```
/// use battlement::stack::StackConfig;
///
/// // Behind a load balancer: without `Authorization`, the client it
/// // forwards for, not the balancer.
/// let config = StackConfig::from_toml(r#"
///     [idempotency]
///     scope = { by = "authorization", trusted_proxies = ["10.0.0.0/8"] }
/// "#).unwrap();
/// # assert!(config.idempotency.is_some());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScopeConfig {
    /// The hashed `Authorization` header; without one, the client's
    /// address: the peer's, or the client behind these trusted proxies.
    Authorization {
        /// Proxies whose `X-Forwarded-For` is believed (default none: the
        /// peer is the client).
        #[serde(default)]
        #[schemars(with = "Vec<String>")]
        trusted_proxies: Vec<IpNet>,
    },
    /// The client's address alone, `Authorization` or not (for
    /// credentials that change between a request and its retry).
    ClientIp {
        /// Proxies whose `X-Forwarded-For` is believed.
        #[serde(default)]
        #[schemars(with = "Vec<String>")]
        trusted_proxies: Vec<IpNet>,
    },
    /// The verified [`Principal`](super::Principal) an authentication
    /// layer put in the extensions; 400 without one.
    Principal {},
    /// A request header's value (a client or tenant id a gateway sets).
    Header {
        /// The header name.
        name: String,
        /// The gateways the header is believed from (default none: from
        /// any peer). Set them, unless nothing but the gateway can reach
        /// the server: a request from another peer then gets 400.
        #[serde(default)]
        #[schemars(with = "Vec<String>")]
        trusted_proxies: Vec<IpNet>,
    },
}

impl Default for ScopeConfig {
    fn default() -> Self {
        Self::Authorization {
            trusted_proxies: Vec::new(),
        }
    }
}

impl ScopeConfig {
    /// `layer` scoped by this config.
    pub fn scoped<St: IdempotencyStore>(
        &self,
        layer: IdempotencyLayer<St>,
    ) -> Result<IdempotencyLayer<St>, ConfigError> {
        Ok(match self {
            Self::Authorization { trusted_proxies } => layer
                .scope(AuthorizationScope::new().trusted_proxies(trusted_proxies.iter().copied())),
            Self::ClientIp { trusted_proxies } => {
                layer.scope(ClientIp::new(trusted_proxies.iter().copied()).ipv6_prefix(128))
            }
            Self::Principal {} => layer.scope(PrincipalScope),
            Self::Header {
                name,
                trusted_proxies,
            } => {
                let name = header_name("idempotency scope", name)?;
                if trusted_proxies.is_empty() {
                    layer.scope(HeaderKey::new(name))
                } else {
                    layer.scope(TrustedHeaderScope::new(
                        name,
                        trusted_proxies.iter().copied(),
                    ))
                }
            }
        })
    }
}

impl<St: IdempotencyStore> IdempotencyLayer<St> {
    /// The layer `config` describes over `store`. No method, a method
    /// that is not one, or a bad scope header name is an error; the lock
    /// and retention are clamped as [`lock`](Self::lock) and
    /// [`retention`](Self::retention) do.
    pub fn from_config(store: St, config: &IdempotencyConfig) -> Result<Self, ConfigError> {
        if config.methods.is_empty() {
            return Err(ConfigError::new("idempotency methods must not be empty"));
        }
        let methods = config
            .methods
            .iter()
            .map(|m| {
                // Method names are case-sensitive: `post` would be an
                // extension method no request uses.
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|e| ConfigError::new(format!("idempotency method {m:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let release_statuses = config
            .release_statuses
            .iter()
            .map(|&code| {
                http::StatusCode::from_u16(code)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .ok_or_else(|| {
                        ConfigError::new(format!(
                            "idempotency release status {code} is not a 4xx or 5xx status"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut layer = Self::new(store)
            .methods(methods)
            .required(config.required)
            .strict_keys(config.strict_keys)
            .lock(config.lock)
            .retention(config.retention)
            .max_execution(config.max_execution)
            .release_statuses(release_statuses)
            .failure_policy(config.failure);
        layer = config.scope.scoped(layer)?;
        if !config.routes.is_empty() {
            layer = layer.routes(config.routes.iter().cloned());
        }
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::MemoryStore;

    #[test]
    fn a_config_survives_a_round_trip_through_json() {
        let config = IdempotencyConfig {
            routes: vec!["/orders/{id}".into()],
            methods: vec!["POST".into()],
            required: true,
            strict_keys: true,
            lock: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
            max_execution: Duration::from_secs(30),
            release_statuses: vec![401, 429],
            failure: FailurePolicy::LocalFallback,
            scope: ScopeConfig::Header {
                name: "x-tenant-id".into(),
                trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            },
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<IdempotencyConfig>(&json).unwrap(),
            config
        );
        let defaults = serde_json::to_string(&IdempotencyConfig::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<IdempotencyConfig>(&defaults).unwrap(),
            IdempotencyConfig::default()
        );
    }

    #[test]
    fn bad_methods_and_scope_headers_are_errors_naming_them() {
        let build = |config: IdempotencyConfig| {
            IdempotencyLayer::from_config(MemoryStore::new(), &config)
                .unwrap_err()
                .to_string()
        };
        let none = IdempotencyConfig {
            methods: Vec::new(),
            ..IdempotencyConfig::default()
        };
        assert!(build(none).contains("methods must not be empty"));
        let bad = IdempotencyConfig {
            methods: vec!["PO ST".into()],
            ..IdempotencyConfig::default()
        };
        assert!(build(bad).contains("\"PO ST\""));
        let header = IdempotencyConfig {
            scope: ScopeConfig::Header {
                name: "bad name".into(),
                trusted_proxies: Vec::new(),
            },
            ..IdempotencyConfig::default()
        };
        assert!(build(header).contains("idempotency scope header \"bad name\""));
    }
}
