//! The JSON Schema of the config types whose serde forms are defined
//! beside their layers and backends: each is described here by a shape, a
//! private type with the same serde attributes that derives the schema,
//! and the public type's `JsonSchema` is its shape's. The tests below
//! check that every shape names the fields and variants its type's serde
//! form reads, so a field added to a type and not to its shape fails them.
//!
//! Durations are strings ("10s", "1h 30m": `humantime`); fields with a
//! default are optional (the defaults are the types' own, documented on
//! them).

// The shapes are described, never built.
#![allow(dead_code)]

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::backends::BackendConfig;
use crate::concurrency_limit::{ConcurrencyLimitConfig, GradientConfig, LimitConfig};
use crate::error::FailurePolicy;
use crate::hedge::{HedgeConfig, HedgeDelay};
use crate::idempotency::{IdempotencyConfig, ScopeConfig};
use crate::rate_limit::SyncMode;
use crate::retry::{Backoff, Budget, RetryPolicy};

/// `impl JsonSchema for Type` as its shape's schema.
macro_rules! described_by {
    ($($(#[$cfg:meta])* $ty:ty => $shape:ty),* $(,)?) => {$(
        $(#[$cfg])*
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                <$shape>::schema_name()
            }

            fn json_schema(generator: &mut SchemaGenerator) -> Schema {
                <$shape>::json_schema(generator)
            }
        }
    )*};
}

described_by! {
    BackendConfig => BackendShape,
    #[cfg(feature = "redis")]
    crate::backends::RedisConfig => RedisShape,
    #[cfg(feature = "etcd")]
    crate::backends::EtcdConfig => EtcdShape,
    crate::backends::MemoryConfig => MemoryShape,
    FailurePolicy => FailurePolicyShape,
    SyncMode => SyncModeShape,
    RetryPolicy => RetryPolicyShape,
    Budget => BudgetShape,
    Backoff => BackoffShape,
    HedgeConfig => HedgeConfigShape,
    HedgeDelay => HedgeDelayShape,
    IdempotencyConfig => IdempotencyConfigShape,
    ScopeConfig => ScopeConfigShape,
    ConcurrencyLimitConfig => ConcurrencyLimitConfigShape,
    LimitConfig => LimitConfigShape,
    GradientConfig => GradientConfigShape,
}

/// Turns a description taken from rustdoc into plain text for an editor's
/// hover: no code examples, links shown as their text, one line per
/// paragraph.
pub(super) fn plain_description(schema: &mut Schema) {
    if let Some(serde_json::Value::String(text)) = schema.get_mut("description") {
        *text = plain(text);
    }
}

fn plain(rustdoc: &str) -> String {
    let mut paragraphs: Vec<String> = vec![String::new()];
    let mut in_code = false;
    for line in rustdoc.lines().map(str::trim) {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if in_code {
        } else if line.is_empty() {
            paragraphs.push(String::new());
        } else if let Some(last) = paragraphs.last_mut() {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(&unlinked(line));
        }
    }
    paragraphs.retain(|p| !p.is_empty());
    paragraphs.join("\n\n")
}

/// `[`text`](target)` and `[`text`]` as `` `text` ``.
fn unlinked(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find("[`") {
        let Some(end) = rest[start..].find("`]").map(|e| start + e) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&rest[start + 1..end + 1]);
        rest = &rest[end + 2..];
        if rest.starts_with('(') {
            rest = rest.find(')').map_or("", |close| &rest[close + 1..]);
        }
    }
    out.push_str(rest);
    out
}

/// A `tracing` level by name, any case (or 1 for error to 5 for trace).
pub(super) struct Level;

impl JsonSchema for Level {
    fn schema_name() -> Cow<'static, str> {
        "Level".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A log level: \"error\", \"warn\", \"info\", \"debug\" or \"trace\" (any case).",
            "anyOf": [
                { "enum": ["error", "warn", "info", "debug", "trace"] },
                {
                    "type": "string",
                    "pattern": "^([Ee][Rr][Rr][Oo][Rr]|[Ww][Aa][Rr][Nn]|[Ii][Nn][Ff][Oo]|[Dd][Ee][Bb][Uu][Gg]|[Tt][Rr][Aa][Cc][Ee]|[1-5])$"
                }
            ]
        })
    }
}

/// Where rate limits, breakers and idempotency records live, by `kind`.
#[derive(JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[schemars(rename = "BackendConfig")]
enum BackendShape {
    /// In process (the default).
    Memory(MemoryShape),
    /// Redis, standalone or Cluster (feature `redis`).
    Redis(RedisShape),
    /// etcd (feature `etcd`).
    Etcd(EtcdShape),
}

/// The in-process backend's caps (each at least 1).
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "MemoryConfig")]
struct MemoryShape {
    /// The key namespace (default "battlement").
    prefix: Option<String>,
    /// Idempotency records kept at most.
    idempotency_max_records: Option<usize>,
    /// Bytes of idempotency records kept at most.
    idempotency_max_bytes: Option<usize>,
    /// Idempotency records one scope may keep.
    idempotency_max_scope_records: Option<usize>,
    /// Bytes of idempotency records one scope may keep.
    idempotency_max_scope_bytes: Option<usize>,
    /// Rate-limit keys kept at most.
    rate_limit_max_keys: Option<usize>,
}

/// How to reach Redis.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RedisConfig")]
struct RedisShape {
    /// One server URL (`redis://:password@host:6379/0`), or the seeds of a
    /// Cluster.
    urls: Vec<String>,
    /// Whether the URLs are seeds of a Redis Cluster (default false).
    cluster: Option<bool>,
    /// The key namespace (default "battlement").
    prefix: Option<String>,
    /// Bounds every call (default "50ms").
    timeout: Option<String>,
    /// Bounds connecting (default "2s").
    connect_timeout: Option<String>,
    /// Whether concurrent rate-limit decisions share one script call on a
    /// standalone server (default true).
    batch_decisions: Option<bool>,
}

/// How to reach etcd.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "EtcdConfig")]
pub(super) struct EtcdShape {
    /// The endpoints, e.g. `http://127.0.0.1:2379`.
    endpoints: Vec<String>,
    /// The key namespace (default "battlement").
    prefix: Option<String>,
    /// Bounds every call (default "500ms").
    timeout: Option<String>,
    /// Bounds connecting (default "2s").
    connect_timeout: Option<String>,
    /// The user name.
    username: Option<String>,
    /// The password.
    password: Option<String>,
}

/// What a layer does when its store fails.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "FailurePolicy")]
enum FailurePolicyShape {
    /// Let the request through.
    FailOpen,
    /// Reject the request (503 / `UNAVAILABLE`).
    FailClosed,
    /// Decide with a process-local fallback.
    LocalFallback,
}

/// How a policy's decisions reach a shared store.
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "SyncMode")]
enum SyncModeShape {
    /// One store decision per request (the default).
    Exact,
    /// Capacity leased ahead of use and spent in process.
    Leased,
}

/// How a client retries.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "RetryPolicy")]
struct RetryPolicyShape {
    /// Attempts in all, the first included (default 3).
    max_attempts: Option<u32>,
    /// The wait between attempts.
    backoff: Option<Backoff>,
    /// Bounds each attempt (default none).
    per_try_timeout: Option<String>,
    /// Bounds all attempts and waits (default "30s").
    deadline: Option<String>,
    /// HTTP statuses retried (default 429, 502, 503, 504).
    statuses: Option<Vec<u16>>,
    /// gRPC codes retried (default 14, `UNAVAILABLE`).
    grpc_codes: Option<Vec<i32>>,
    /// Request bodies up to this many bytes are replayed (default 65536).
    max_replay_body: Option<usize>,
    /// The retry budget (null: none).
    budget: Option<Budget>,
}

/// The retry budget.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Budget")]
struct BudgetShape {
    /// Retries allowed as a percentage of requests (default 20).
    percent: Option<f32>,
    /// Retries allowed per second regardless of traffic (default 10).
    min_per_sec: Option<u32>,
    /// How far back requests count (default "10s").
    window: Option<String>,
}

/// How long to wait before a retry.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[schemars(rename = "Backoff")]
enum BackoffShape {
    /// Exponential with full jitter.
    Exponential {
        /// The first retry's ceiling.
        base: String,
        /// The cap.
        max: String,
    },
    /// Decorrelated jitter.
    Decorrelated {
        /// The smallest wait.
        base: String,
        /// The cap.
        max: String,
    },
}

/// How a client hedges.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "HedgeConfig")]
struct HedgeConfigShape {
    /// When the hedge goes out (default the host's p95).
    delay: Option<HedgeDelay>,
    /// At most this share of requests is hedged, 0 to 1 (default 0.1).
    max_hedged_fraction: Option<f64>,
    /// Latencies a host needs before its percentile is used (default 20).
    min_samples: Option<u32>,
    /// Hosts whose latencies are kept (default 1024).
    max_hosts: Option<usize>,
    /// Request bodies up to this many bytes are kept for the hedge
    /// (default 65536).
    max_body: Option<usize>,
}

/// How long the first attempt runs before the hedge is sent.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[schemars(rename = "HedgeDelay")]
enum HedgeDelayShape {
    /// Always this long.
    Fixed(String),
    /// This percentile of the host's recent latencies.
    Percentile {
        /// The percentile, e.g. 95.0.
        percentile: f64,
        /// The delay while there are too few samples (default: no hedge).
        fallback: Option<String>,
    },
}

/// The idempotency layer's settings.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "IdempotencyConfig")]
struct IdempotencyConfigShape {
    /// The route templates covered (default: every route).
    routes: Option<Vec<String>>,
    /// Methods covered, any case (default POST and PATCH).
    methods: Option<Vec<String>>,
    /// A covered request without a key gets 400 (default false).
    required: Option<bool>,
    /// Only quoted keys are accepted (default false).
    strict_keys: Option<bool>,
    /// How long a claim is held while its request runs (default "60s").
    lock: Option<String>,
    /// How long a completed response is replayed (default "24h").
    retention: Option<String>,
    /// The longest a handler runs before its key is released (default
    /// "5m").
    max_execution: Option<String>,
    /// Statuses whose responses are not kept (default 401, 403, 429, 503).
    release_statuses: Option<Vec<u16>>,
    /// What to do when the store fails (default fail closed).
    failure: Option<FailurePolicy>,
    /// Whose keys they are (default `Authorization`, else the peer).
    scope: Option<ScopeConfig>,
}

/// Whose idempotency keys they are, by `by`.
#[derive(JsonSchema)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
#[schemars(rename = "ScopeConfig")]
enum ScopeConfigShape {
    /// The hashed `Authorization` header, else the client's address.
    Authorization {
        /// Proxies whose `X-Forwarded-For` is believed.
        trusted_proxies: Option<Vec<String>>,
    },
    /// The client's address alone.
    ClientIp {
        /// Proxies whose `X-Forwarded-For` is believed.
        trusted_proxies: Option<Vec<String>>,
    },
    /// The verified principal an authentication layer set (serde reads,
    /// and ignores, any other field beside `by` here).
    #[schemars(extend("additionalProperties" = true))]
    Principal,
    /// A request header's value.
    Header {
        /// The header name.
        name: String,
        /// The gateways the header is believed from.
        trusted_proxies: Option<Vec<String>>,
    },
}

/// A concurrency limit's settings.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ConcurrencyLimitConfig")]
struct ConcurrencyLimitConfigShape {
    /// The name in events and rejections (default "concurrency").
    name: Option<String>,
    /// The limit (default adaptive).
    limit: Option<LimitConfig>,
    /// The share of the limit normal requests may fill (default 0.9).
    normal_share: Option<f64>,
    /// The share of the limit batch requests may fill (default 0.5).
    batch_share: Option<f64>,
    /// The `Retry-After` of a rejection (default "1s").
    retry_after: Option<String>,
}

/// How the limit is set.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[schemars(rename = "LimitConfig")]
enum LimitConfigShape {
    /// At most N requests in flight.
    Fixed(u32),
    /// A limit that follows latency.
    Adaptive(GradientConfig),
}

/// The parameters of the adaptive limit.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "GradientConfig")]
struct GradientConfigShape {
    /// The limit once the first minimum latency is measured (default 20).
    initial_limit: Option<u32>,
    /// The lowest limit (default 3).
    min_limit: Option<u32>,
    /// The highest limit (default 1000).
    max_limit: Option<u32>,
    /// How often the limit is recomputed (default "100ms").
    sample_window: Option<String>,
    /// The percentile of a window's latencies compared (default 50).
    sample_percentile: Option<f64>,
    /// The latency above the minimum taken as no queueing (default 0.25).
    min_rtt_buffer: Option<f64>,
    /// How often the minimum latency is measured again (default "60s").
    min_rtt_interval: Option<String>,
    /// A random extra share of `min_rtt_interval` (default 0.15).
    min_rtt_jitter: Option<f64>,
    /// How many requests measure the minimum latency (default 50).
    min_rtt_samples: Option<u32>,
}

#[cfg(test)]
mod tests;
