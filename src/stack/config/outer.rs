//! The settings of the layers every request passes, probes included: the
//! request id, trace and metrics layers. Each reads as `true`, `false` (on
//! with its defaults, or off) or as a table of its options.

use std::sync::Arc;

use http::HeaderName;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::error::ConfigError;
use crate::metrics::MetricsLayer;
use crate::request_id::{RequestIdLayer, X_REQUEST_ID};
use crate::trace::TraceLayer;

/// The request id layer: `request_id = false`, or `[request_id]` with
/// `enabled`, `header` and `trust_incoming`.
///
/// ```
/// use battlement::stack::StackConfig;
///
/// let config = StackConfig::from_toml(r#"
///     [request_id]
///     header = "x-correlation-id"
///     trust_incoming = false   # the edge of the system: always a new id
/// "#).unwrap();
/// assert_eq!(config.request_id.header, "x-correlation-id");
/// assert!(StackConfig::from_toml("request_id = false").unwrap().request_id.layer().unwrap().is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIdSettings {
    /// Whether the layer is in the stack (default true).
    pub enabled: bool,
    /// The header that carries the id, in and out (default
    /// `x-request-id`).
    pub header: String,
    /// Whether a valid incoming id is kept (default true); switch it off
    /// at the edge of a system whose clients are not trusted.
    pub trust_incoming: bool,
}

/// The table form of [`RequestIdSettings`].
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RequestIdTable {
    /// Whether the layer is in the stack (default true).
    #[serde(default = "yes")]
    enabled: bool,
    /// The header that carries the id, in and out (default `x-request-id`).
    #[serde(default = "request_id_header")]
    header: String,
    /// Whether a valid incoming id is kept (default true).
    #[serde(default = "yes")]
    trust_incoming: bool,
}

fn request_id_header() -> String {
    X_REQUEST_ID.as_str().to_owned()
}

impl From<RequestIdTable> for RequestIdSettings {
    fn from(table: RequestIdTable) -> Self {
        Self {
            enabled: table.enabled,
            header: table.header,
            trust_incoming: table.trust_incoming,
        }
    }
}

impl From<bool> for RequestIdTable {
    fn from(enabled: bool) -> Self {
        Self {
            enabled,
            header: request_id_header(),
            trust_incoming: true,
        }
    }
}

impl Default for RequestIdSettings {
    fn default() -> Self {
        RequestIdTable::from(true).into()
    }
}

impl RequestIdSettings {
    /// The layer these settings describe (`None` when off), with its own
    /// log-only `request` span, so that every log line of the request
    /// carries the id (the span is never exported, and costs nothing where
    /// no log layer enables it); a header that is not a header name is an
    /// error.
    pub fn layer(&self) -> Result<Option<RequestIdLayer>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let header = HeaderName::try_from(self.header.as_str()).map_err(|_| {
            ConfigError::new(format!(
                "request_id.header = {:?} is not a header name",
                self.header
            ))
        })?;
        Ok(Some(
            RequestIdLayer::new()
                .header(header)
                .trust_incoming(self.trust_incoming),
        ))
    }
}

/// A request path: exact (`/favicon.ico`), or every path under a prefix
/// when it ends with `*` (`/internal/*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(try_from = "String")]
#[schemars(with = "String")]
pub struct PathPattern(String);

impl TryFrom<String> for PathPattern {
    type Error = ConfigError;

    fn try_from(pattern: String) -> Result<Self, ConfigError> {
        let body = pattern.strip_suffix('*').unwrap_or(&pattern);
        if !pattern.starts_with('/') || body.contains('*') {
            return Err(ConfigError::new(format!(
                "path pattern {pattern:?}: a path starting with /, with at most one * at its end"
            )));
        }
        Ok(Self(pattern))
    }
}

impl PathPattern {
    /// Whether `path` is this path, or under its prefix.
    pub fn matches(&self, path: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.0,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A span name for the requests to some paths: `{ path = "/admin/*",
/// name = "admin" }`. A fixed name per rule keeps span names a bounded
/// set, as trace backends group on them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpanNameRule {
    /// The paths the rule names.
    pub path: PathPattern,
    /// The span name of their requests.
    pub name: String,
}

/// The trace layer: `trace = false`, or `[trace]` with `enabled`,
/// `trace_probes`, `trust_baggage`, `span_names` and `untraced`.
///
/// ```
/// use battlement::stack::StackConfig;
///
/// let config = StackConfig::from_toml(r#"
///     [trace]
///     trust_baggage = true                  # callers inside the trust boundary
///     untraced = ["/favicon.ico", "/internal/*"]
///     span_names = [{ path = "/admin/*", name = "admin" }]
/// "#).unwrap();
/// assert!(config.trace.untraced[1].matches("/internal/jobs"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// Whether the layer is in the stack (default true).
    pub enabled: bool,
    /// Whether health probes and the routes beside them (`/metrics`) are
    /// traced too (default false: a probe every few seconds would bury
    /// the traces that matter).
    pub trace_probes: bool,
    /// Whether the caller's `baggage` is taken into the request's context
    /// and passed on by client stacks (default false: only for callers
    /// inside your trust boundary).
    pub trust_baggage: bool,
    /// Span names by path, the first rule that matches (default none: a
    /// span is named `{method} {route}`).
    pub span_names: Vec<SpanNameRule>,
    /// Paths whose requests get no span and no access-log line (default
    /// none); they still run in the caller's trace context.
    pub untraced: Vec<PathPattern>,
}

/// The table form of [`TraceSettings`].
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TraceTable {
    /// Whether the layer is in the stack (default true).
    #[serde(default = "yes")]
    enabled: bool,
    /// Whether health probes and `/metrics` are traced too (default false).
    #[serde(default)]
    trace_probes: bool,
    /// Whether the caller's `baggage` is believed and passed on (default
    /// false).
    #[serde(default)]
    trust_baggage: bool,
    /// Span names by path (`[{ path = "/admin/*", name = "admin" }]`), the
    /// first rule that matches; default `{method} {route}`.
    #[serde(default)]
    span_names: Vec<SpanNameRule>,
    /// Paths left untraced: exact, or a prefix ending with `*`.
    #[serde(default)]
    untraced: Vec<PathPattern>,
}

impl From<TraceTable> for TraceSettings {
    fn from(table: TraceTable) -> Self {
        Self {
            enabled: table.enabled,
            trace_probes: table.trace_probes,
            trust_baggage: table.trust_baggage,
            span_names: table.span_names,
            untraced: table.untraced,
        }
    }
}

impl From<bool> for TraceTable {
    fn from(enabled: bool) -> Self {
        Self {
            enabled,
            trace_probes: false,
            trust_baggage: false,
            span_names: Vec::new(),
            untraced: Vec::new(),
        }
    }
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceTable::from(true).into()
    }
}

impl TraceSettings {
    /// The server trace layer these settings describe (`None` when off),
    /// writing `access_log`.
    pub fn layer(&self, access_log: Option<crate::trace::AccessLog>) -> Option<TraceLayer> {
        if !self.enabled {
            return None;
        }
        let mut layer = TraceLayer::server()
            .access_log(access_log)
            .trace_probes(self.trace_probes)
            .trust_baggage(self.trust_baggage);
        if !self.span_names.is_empty() {
            let rules: Arc<[SpanNameRule]> = self.span_names.clone().into();
            layer = layer.span_name(move |req| {
                let path = req.uri.path();
                rules
                    .iter()
                    .find(|rule| rule.path.matches(path))
                    .map(|rule| rule.name.clone())
            });
        }
        if !self.untraced.is_empty() {
            let untraced: Arc<[PathPattern]> = self.untraced.clone().into();
            layer = layer.filter(move |req| {
                let path = req.uri.path();
                !untraced.iter().any(|pattern| pattern.matches(path))
            });
        }
        Some(layer)
    }
}

/// The metrics layer: `metrics = false`, or `[metrics]` with `enabled` and
/// `count_probes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSettings {
    /// Whether the layer is in the stack (default true).
    pub enabled: bool,
    /// Whether health probes and the routes beside them (`/metrics`)
    /// count as requests too (default false: they would dwarf the traffic
    /// the metrics are for).
    pub count_probes: bool,
}

/// The table form of [`MetricsSettings`].
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct MetricsTable {
    /// Whether the layer is in the stack (default true).
    #[serde(default = "yes")]
    enabled: bool,
    /// Whether health probes and `/metrics` count as requests too
    /// (default false).
    #[serde(default)]
    count_probes: bool,
}

impl From<MetricsTable> for MetricsSettings {
    fn from(table: MetricsTable) -> Self {
        Self {
            enabled: table.enabled,
            count_probes: table.count_probes,
        }
    }
}

impl From<bool> for MetricsTable {
    fn from(enabled: bool) -> Self {
        Self {
            enabled,
            count_probes: false,
        }
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsTable::from(true).into()
    }
}

impl MetricsSettings {
    /// The server metrics layer these settings describe (`None` when off).
    pub fn layer(&self) -> Option<MetricsLayer> {
        self.enabled
            .then(|| MetricsLayer::server().count_probes(self.count_probes))
    }
}

fn yes() -> bool {
    true
}

/// A layer's settings read as `true`, `false` (the layer on with its
/// defaults, or off) or as its table `T`.
macro_rules! bool_or_table {
    ($settings:ty, $table:ty, $expecting:literal, $description:literal) => {
        impl<'de> Deserialize<'de> for $settings {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl<'de> serde::de::Visitor<'de> for Visitor {
                    type Value = $settings;

                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_bool<E: serde::de::Error>(self, enabled: bool) -> Result<Self::Value, E> {
                        Ok(<$settings>::from(<$table>::from(enabled)))
                    }

                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        map: A,
                    ) -> Result<Self::Value, A::Error> {
                        let table = <$table>::deserialize(
                            serde::de::value::MapAccessDeserializer::new(map),
                        )?;
                        Ok(table.into())
                    }
                }
                deserializer.deserialize_any(Visitor)
            }
        }

        impl JsonSchema for $settings {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($settings).into()
            }

            fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "description": $description,
                    "anyOf": [{ "type": "boolean" }, <$table>::json_schema(generator)]
                })
            }
        }
    };
}

bool_or_table!(
    RequestIdSettings,
    RequestIdTable,
    "true, false or a table with `enabled`, `header` and `trust_incoming`",
    "The request id layer on (true) or off (false), or a table with `enabled`, `header` and `trust_incoming`."
);
bool_or_table!(
    TraceSettings,
    TraceTable,
    "true, false or a table with `enabled`, `trace_probes`, `trust_baggage`, `span_names` and `untraced`",
    "The trace layer on (true) or off (false), or a table with `enabled`, `trace_probes`, `trust_baggage`, `span_names` and `untraced`."
);
bool_or_table!(
    MetricsSettings,
    MetricsTable,
    "true, false or a table with `enabled` and `count_probes`",
    "The metrics layer on (true) or off (false), or a table with `enabled` and `count_probes`."
);
