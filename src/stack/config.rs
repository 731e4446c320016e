//! `StackConfig`: the whole stack in one serde document.

use std::path::Path;

use schemars::JsonSchema;
use serde::Deserialize;

use crate::backends::BackendConfig;
use crate::circuit_breaker::BreakerConfig;
use crate::error::ConfigError;
use crate::idempotency::IdempotencyConfig;
use crate::rate_limit::{PolicyConfig, RateLimitConfig};
use crate::retry::RetryPolicy;

mod outer;
mod schema;

pub use outer::{MetricsSettings, PathPattern, RequestIdSettings, SpanNameRule, TraceSettings};

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
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct StackConfig {
    /// Where rate limits, breakers and idempotency records live.
    pub backend: BackendConfig,
    /// The request id layer (on by default): its header and whether
    /// incoming ids are kept.
    pub request_id: RequestIdSettings,
    /// The OpenTelemetry trace layer (on by default; probes not traced):
    /// baggage trust, span names and the requests left untraced.
    pub trace: TraceSettings,
    /// The OpenTelemetry metrics layer (on by default; probes not
    /// counted).
    pub metrics: MetricsSettings,
    /// The access log the trace layer writes (on by default; none when
    /// the trace layer is off).
    pub access_log: AccessLogSettings,
    /// Rate limiting (off unless present): a
    /// [`RateLimitConfig`], as [`RateLimitLayer::from_config`] reads it.
    ///
    /// [`RateLimitLayer::from_config`]: crate::RateLimitLayer::from_config
    pub rate_limit: Option<RateLimitConfig>,
    /// A server-side breaker that sheds load while the service fails
    /// (off unless present).
    pub circuit_breaker: Option<ServerBreakerSettings>,
    /// Idempotency keys (off unless present): an
    /// [`IdempotencyConfig`], as [`IdempotencyLayer::from_config`] reads
    /// it.
    ///
    /// [`IdempotencyLayer::from_config`]: crate::IdempotencyLayer::from_config
    pub idempotency: Option<IdempotencyConfig>,
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

/// The server-side breaker.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerBreakerSettings {
    /// Its name (default `server`): metric label, store prefix, config
    /// source key.
    #[serde(default = "server_breaker_name")]
    pub name: String,
    /// Its thresholds: the fields a table leaves out are
    /// [`BreakerConfig::default`]'s.
    #[serde(default)]
    pub thresholds: BreakerConfig,
}

fn server_breaker_name() -> String {
    "server".into()
}

/// The health routes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, JsonSchema)]
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
    #[schemars(with = "schema::Level")]
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

/// OpenTelemetry export (the `OTEL_*` variables still apply), set up by
/// [`init`](Self::init).
///
/// ```
/// # #[cfg(feature = "prometheus")]
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use battlement::stack::{self, StackConfig};
///
/// let config = StackConfig::from_toml(r#"
///     [telemetry]
///     service_name = "shop"
/// "#).unwrap();
/// // The stack may be built first: its layers take the providers at
/// // their first request.
/// let server = stack::server(&config).await.unwrap();
/// let telemetry = config.telemetry.init().unwrap();
/// assert!(telemetry.prometheus_text().unwrap().contains("service_name=\"shop\""));
/// # drop(server);
/// # });
/// ```
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `service.name` of every span, metric and log (default
    /// `battlement`; `OTEL_SERVICE_NAME` overrides it).
    pub service_name: String,
}

#[cfg(any(feature = "prometheus", feature = "_otlp"))]
impl TelemetrySettings {
    /// [`telemetry::init`](crate::telemetry::init) for
    /// [`service_name`](Self::service_name); keep the guard for the life
    /// of the process.
    pub fn init(&self) -> Result<crate::telemetry::TelemetryGuard, ConfigError> {
        crate::telemetry::init(&self.service_name)
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            service_name: "battlement".into(),
        }
    }
}

/// Where quotas and breaker thresholds are reloaded from.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    /// Retries (default [`RetryPolicy::default`]).
    pub retry: Option<RetryPolicy>,
    /// The per-host breaker's thresholds: the fields a table leaves out
    /// are [`BreakerConfig::default`]'s.
    pub breaker: Option<BreakerConfig>,
    /// A client-side quota.
    pub rate_limit: Option<PolicyConfig>,
    /// Hedged requests (off unless present).
    pub hedge: Option<crate::hedge::HedgeConfig>,
    /// Gives each request that is not idempotent and has no
    /// `Idempotency-Key` a new one, reused by all its attempts (default
    /// false). See [`ClientStack::idempotency_keys`](crate::client::ClientStack::idempotency_keys).
    pub idempotency_keys: bool,
}

impl StackConfig {
    /// The JSON Schema (draft 2020-12) of the documents this type reads:
    /// every section and field with its description, unknown fields
    /// refused where they are errors, quotas as strings or tables and
    /// durations as strings. The repository ships it as
    /// `schema/battlement.schema.json`; a TOML file whose first line is
    /// `#:schema <path to it>` is completed and checked by editors (taplo,
    /// VS Code's Even Better TOML).
    ///
    /// ```
    /// use battlement::stack::StackConfig;
    ///
    /// let schema = serde_json::to_value(StackConfig::schema()).unwrap();
    /// assert_eq!(schema["title"], "StackConfig");
    /// assert_eq!(schema["additionalProperties"], false);
    /// assert!(schema["properties"]["rate_limit"].is_object());
    /// ```
    pub fn schema() -> schemars::Schema {
        schemars::generate::SchemaSettings::draft2020_12()
            .with_transform(schemars::transform::RecursiveTransform(
                schema::plain_description,
            ))
            .into_generator()
            .into_root_schema_for::<StackConfig>()
    }

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
