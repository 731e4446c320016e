//! `StackConfig`: the whole stack in one serde document.

use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use serde::Deserialize;

use crate::backends::BackendConfig;
use crate::circuit_breaker::BreakerConfig;
use crate::error::{ConfigError, FailurePolicy};
use crate::idempotency::{AuthorizationScope, IdempotencyLayer, IdempotencyStore};
use crate::key::{ClientIp, DEFAULT_IPV6_PREFIX, GlobalKey, HeaderKey, PeerIp};
use crate::rate_limit::{Policy, Quota, SyncMode};
use crate::retry::RetryPolicy;

/// Every layer of the server and client presets, and the backend they
/// share. Unknown fields are errors naming their path; a missing section
/// takes its defaults (the request id, trace and metrics layers on, the
/// others off, in-memory state).
///
/// ```
/// use battlement::stack::StackConfig;
///
/// let config = StackConfig::from_toml(r#"
///     [backend]
///     kind = "memory"
///
///     [[rate_limit.policies]]
///     name = "per-ip"
///     quota = { count = 100, period = "1s" }
///     key = { by = "client_ip", trusted_proxies = ["10.0.0.0/8"] }
///     mode = "leased"
///
///     [idempotency]
///     routes = ["/orders"]
///     required = true
///
///     [client.breaker]
///     failure_rate = 50.0
///     open_for = "5s"
/// "#).unwrap();
/// assert_eq!(config.rate_limit.as_ref().unwrap().policies.len(), 1);
/// let policy = config.rate_limit.as_ref().unwrap().policies[0].policy().unwrap();
/// assert_eq!(policy.sync_mode(), battlement::rate_limit::SyncMode::Leased);
///
/// let typo = StackConfig::from_toml("[rate_limit]\nshadw = true").unwrap_err();
/// assert!(typo.to_string().contains("rate_limit"), "{typo}");
/// assert!(typo.to_string().contains("shadw"), "{typo}");
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StackConfig {
    /// Where rate limits, breakers and idempotency records live.
    pub backend: BackendConfig,
    /// The request id layer (on by default).
    pub request_id: Switch,
    /// The OpenTelemetry trace layer (on by default).
    pub trace: Switch,
    /// The OpenTelemetry metrics layer (on by default).
    pub metrics: Switch,
    /// The access log the trace layer writes (on by default; none when
    /// the trace layer is off).
    pub access_log: AccessLogSettings,
    /// Rate limiting (off unless present).
    pub rate_limit: Option<RateLimitSettings>,
    /// A server-side breaker that sheds load while the service fails
    /// (off unless present).
    pub circuit_breaker: Option<ServerBreakerSettings>,
    /// Idempotency keys (off unless present).
    pub idempotency: Option<IdempotencySettings>,
    /// A concurrency limit that sheds load at once, fixed or adaptive
    /// (off unless present; probes are never shed).
    pub concurrency_limit: Option<crate::concurrency_limit::ConcurrencyLimitConfig>,
    /// The server timeout, per route and from an inbound `grpc-timeout`
    /// (off unless present).
    pub deadline: Option<crate::deadline::DeadlineConfig>,
    /// The health routes.
    pub health: HealthSettings,
    /// OpenTelemetry export.
    pub telemetry: TelemetrySettings,
    /// Hot reload of quotas and breaker thresholds (off unless present).
    pub config_source: Option<ConfigSourceSettings>,
    /// The client preset.
    pub client: ClientSettings,
}

/// A layer that is on or off: `trace = false`, or `[trace]` with
/// `enabled = false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    /// Whether the layer is in the stack (default true).
    pub enabled: bool,
}

/// The table form of a [`Switch`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchTable {
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Switch;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or a table with `enabled`")
            }

            fn visit_bool<E: serde::de::Error>(self, enabled: bool) -> Result<Switch, E> {
                Ok(Switch { enabled })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Switch, A::Error> {
                let table =
                    SwitchTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Switch {
                    enabled: table.enabled,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Default for Switch {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The rate limiter's policies and behaviour.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Decided in order; a request must pass every one.
    pub policies: Vec<PolicySettings>,
    /// Count would-be denials, deny nothing.
    pub shadow: bool,
    /// What to do when the store fails (default fail open).
    pub failure: FailurePolicy,
    /// Also send `X-RateLimit-*`.
    pub legacy_headers: bool,
}

/// One named quota and what it counts per.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    /// Sent in the `RateLimit` headers; the config source key.
    pub name: String,
    /// N per period with a burst.
    pub quota: Quota,
    /// What the quota is counted per (default: one global key).
    #[serde(default)]
    pub key: KeySettings,
    /// `"exact"` (default) or `"leased"`: see
    /// [`SyncMode`](crate::rate_limit::SyncMode).
    #[serde(default)]
    pub mode: SyncMode,
}

impl PolicySettings {
    /// The policy these settings describe.
    pub fn policy(&self) -> Result<Policy, ConfigError> {
        self.key
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySettings {
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
        #[serde(default)]
        secret: Option<String>,
    },
}

fn default_ipv6_prefix() -> u8 {
    DEFAULT_IPV6_PREFIX
}

impl Default for KeySettings {
    fn default() -> Self {
        Self::Global {}
    }
}

impl KeySettings {
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

fn header_name(what: &str, name: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::try_from(name).map_err(|e| ConfigError::new(format!("{what} header {name:?}: {e}")))
}

/// The server-side breaker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerBreakerSettings {
    /// Its name (default `server`): metric label, store prefix, config
    /// source key.
    #[serde(default = "server_breaker_name")]
    pub name: String,
    /// Its thresholds.
    #[serde(default)]
    pub thresholds: BreakerConfig,
}

fn server_breaker_name() -> String {
    "server".into()
}

/// Idempotency keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencySettings {
    /// The route templates covered (`/orders`, `/orders/{id}`); empty:
    /// every route.
    pub routes: Vec<String>,
    /// Methods covered (default POST and PATCH).
    pub methods: Vec<String>,
    /// A covered request without a key gets 400.
    pub required: bool,
    /// Only the draft's quoted keys are accepted, not bare tokens.
    pub strict_keys: bool,
    /// How long a claim is held while its request runs.
    #[serde(with = "humantime_serde")]
    pub lock: Duration,
    /// How long a completed response is replayed.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// What to do when the store fails (default fail closed).
    pub failure: FailurePolicy,
    /// Whose keys they are (default `Authorization`, else the peer's
    /// address); a request with no scope gets 400.
    pub scope: ScopeSettings,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            methods: vec!["POST".into(), "PATCH".into()],
            required: false,
            strict_keys: false,
            lock: Duration::from_secs(60),
            retention: Duration::from_secs(24 * 3600),
            failure: FailurePolicy::FailClosed,
            scope: ScopeSettings::default(),
        }
    }
}

/// Whose idempotency keys they are: a stored response is replayed only to
/// requests of the same scope, so a scope must tell clients apart. A
/// request whose scope cannot be told (no credential and no known
/// address, a missing header) gets 400 "idempotency scope unknown" and
/// does not run; no two clients share a scope by default. Addresses are
/// scopes each on its own (IPv6 is not grouped by prefix here).
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScopeSettings {
    /// The hashed `Authorization` header; without one, the client's
    /// address: the peer's, or the client behind these trusted proxies.
    Authorization {
        /// Proxies whose `X-Forwarded-For` is believed (default none: the
        /// peer is the client).
        #[serde(default)]
        trusted_proxies: Vec<IpNet>,
    },
    /// The client's address alone, `Authorization` or not (for
    /// credentials that change between a request and its retry).
    ClientIp {
        /// Proxies whose `X-Forwarded-For` is believed.
        #[serde(default)]
        trusted_proxies: Vec<IpNet>,
    },
    /// A request header's value (a client or tenant id a gateway sets).
    Header {
        /// The header name.
        name: String,
    },
}

impl Default for ScopeSettings {
    fn default() -> Self {
        Self::Authorization {
            trusted_proxies: Vec::new(),
        }
    }
}

impl ScopeSettings {
    /// `layer` scoped by these settings.
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
            Self::Header { name } => {
                layer.scope(HeaderKey::new(header_name("idempotency scope", name)?))
            }
        })
    }
}

/// The health routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// Liveness path.
    pub livez: String,
    /// Readiness path (includes the backend's check).
    pub readyz: String,
    /// Startup path.
    pub startupz: String,
}

impl HealthSettings {
    /// Each path starts with `/` and differs from the others.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let paths = [&self.livez, &self.readyz, &self.startupz];
        for path in paths {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(ConfigError::new(format!(
                    "health path {path:?} must start with / and name a route"
                )));
            }
        }
        if paths[0] == paths[1] || paths[0] == paths[2] || paths[1] == paths[2] {
            return Err(ConfigError::new("the three health paths must differ"));
        }
        Ok(())
    }
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            livez: "/livez".into(),
            readyz: "/readyz".into(),
            startupz: "/startupz".into(),
        }
    }
}

/// The access log: one `tracing` event per request when its response
/// ends (target `battlement::access`), written by the trace layer, so
/// there is none with `trace = false`. See
/// [`AccessLog`](crate::trace::AccessLog) for its fields and levels.
///
/// ```
/// use battlement::stack::StackConfig;
///
/// let config = StackConfig::from_toml(r#"
///     [access_log]
///     sample_successes = 0.1   # every error, one success in ten
///     client_errors = "warn"   # 4xx at warn (default info)
/// "#).unwrap();
/// assert!(config.access_log.enabled);
/// assert!(StackConfig::from_toml("access_log.sample_successes = 2.0")
///     .unwrap()
///     .access_log
///     .access_log()
///     .is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogSettings {
    /// Whether the access log is written (default true).
    pub enabled: bool,
    /// The share of successful requests logged, `0` to `1` (default 1);
    /// errors are always logged.
    pub sample_successes: f64,
    /// The level of 4xx answers and gRPC client errors: `"error"`,
    /// `"warn"`, `"info"` (the default), `"debug"` or `"trace"`.
    #[serde(deserialize_with = "level")]
    pub client_errors: tracing::Level,
}

impl Default for AccessLogSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_successes: 1.0,
            client_errors: tracing::Level::INFO,
        }
    }
}

impl AccessLogSettings {
    /// The access log these settings describe (`None` when off); a share
    /// outside `0..=1` is an error.
    pub fn access_log(&self) -> Result<Option<crate::trace::AccessLog>, ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_successes) {
            return Err(ConfigError::new(format!(
                "access_log.sample_successes = {}: a share from 0 to 1",
                self.sample_successes
            )));
        }
        Ok(self.enabled.then(|| {
            crate::trace::AccessLog::new()
                .sample_successes(self.sample_successes)
                .client_errors(self.client_errors)
        }))
    }
}

/// A `tracing` level from its name.
fn level<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<tracing::Level, D::Error> {
    let name = String::deserialize(deserializer)?;
    name.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{name:?}: a level is error, warn, info, debug or trace"
        ))
    })
}

/// OpenTelemetry export (the `OTEL_*` variables still apply).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `service.name`.
    pub service_name: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            service_name: "battlement".into(),
        }
    }
}

/// Where quotas and breaker thresholds are reloaded from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSourceSettings {
    /// The etcd cluster (feature `etcd`).
    #[cfg(feature = "etcd")]
    pub etcd: crate::backends::EtcdConfig,
    /// Without the `etcd` feature, any value here is an error saying so.
    #[cfg(not(feature = "etcd"))]
    pub etcd: crate::backends::FeatureOff,
    /// The key prefix (default `/battlement/config/`).
    #[serde(default = "config_prefix")]
    pub prefix: String,
}

fn config_prefix() -> String {
    "/battlement/config/".into()
}

/// The client preset: retry, per-host breaker, optional rate limit.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    /// Retries (default [`RetryPolicy::default`]).
    pub retry: Option<RetryPolicy>,
    /// The per-host breaker's thresholds (default
    /// [`BreakerConfig::default`]).
    pub breaker: Option<BreakerConfig>,
    /// A client-side quota.
    pub rate_limit: Option<PolicySettings>,
    /// Hedged requests (off unless present).
    pub hedge: Option<crate::hedge::HedgeConfig>,
}

impl StackConfig {
    /// Reads a JSON document.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::new(format!("stack config is not JSON: {e}")))?;
        Self::from_value(value)
    }

    /// Reads a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::new(format!("stack config is not TOML: {e}")))?;
        let value = serde_json::to_value(table)
            .map_err(|e| ConfigError::new(format!("stack config: {e}")))?;
        Self::from_value(value)
    }

    /// Reads a file: TOML for `.toml`, JSON otherwise.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("{}: {e}", path.display())))?;
        let config = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => Self::from_toml(&text),
            _ => Self::from_json(&text),
        };
        config.map_err(|e| ConfigError::new(format!("{}: {}", path.display(), e.message())))
    }

    /// Reads any serde document turned into a JSON value (YAML through
    /// `serde_yaml`, for instance); errors name the path of the field.
    pub fn from_value(value: serde_json::Value) -> Result<Self, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::new(format!("stack config at `{path}`: {}", e.into_inner()))
        })
    }
}
