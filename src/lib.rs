#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod backends;
pub mod body;
pub mod client;
pub mod clock;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod events;
pub mod key;
pub mod layers;
pub mod reject;
pub mod reload;
pub mod stack;
mod sync;
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
pub mod telemetry;

#[cfg(all(any(test, fuzzing), feature = "prometheus"))]
#[doc(hidden)]
pub mod parsers_fuzz;

pub use error::{BoxError, ConfigError, FailurePolicy, StoreError};

// The crates whose types are in battlement's public signatures, at the
// versions it was built with: name them through these paths and a
// version mismatch cannot arise (`battlement::opentelemetry::KeyValue`
// is the `KeyValue` an `ExtraAttributes` fills).
#[cfg(feature = "axum")]
pub use axum;
pub use bytes;
pub use http;
pub use http_body;
pub use ipnet;
pub use layers::circuit_breaker::{self, CircuitBreakerLayer};
pub use layers::concurrency_limit::{self, ConcurrencyLimitLayer};
pub use layers::deadline::{self, DeadlineLayer};
pub use layers::health::{self, HealthRegistry};
pub use layers::hedge::{self, HedgeLayer};
pub use layers::idempotency::{self, IdempotencyLayer};
pub use layers::metrics::{self, MetricsLayer};
pub use layers::rate_limit::{self, RateLimitLayer};
pub use layers::request_id::{self, RequestId, RequestIdLayer};
pub use layers::retry::{self, RetryLayer};
pub use layers::trace;
/// The trace layer. tower-http has a `TraceLayer` too: import one of
/// them under another name when both are in scope
/// (`use battlement::TraceLayer as OtelTraceLayer;`), or name this one
/// by its module, `battlement::trace::TraceLayer`.
#[doc(inline)]
pub use layers::trace::TraceLayer;
pub use opentelemetry;
/// The attribute an [`ExtraAttributes`](trace::ExtraAttributes) adds to a
/// span or a metric (`opentelemetry::KeyValue`).
pub use opentelemetry::KeyValue;
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
pub use opentelemetry_sdk;
pub use schemars;
pub use serde_json;
#[cfg(feature = "tonic")]
pub use tonic;
pub use tower;
pub use tracing;
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
pub use tracing_subscriber;
