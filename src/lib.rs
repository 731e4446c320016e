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
pub use layers::trace::{self, TraceLayer};
