//! `Overloaded`: the typed rejection of a full concurrency limit.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode, header::RETRY_AFTER};

use super::priority::Priority;
use crate::reject::{GrpcCode, Problem};

/// A request was shed because its class's share of the concurrency limit
/// was full.
///
/// In server mode it becomes a 503 response with `Retry-After` and a
/// problem+json body, or a trailers-only `RESOURCE_EXHAUSTED` for gRPC.
#[derive(Debug, Clone)]
pub struct Overloaded {
    limiter: Arc<str>,
    priority: Priority,
    limit: usize,
    retry_after: Duration,
}

impl Overloaded {
    pub(crate) fn new(
        limiter: Arc<str>,
        priority: Priority,
        limit: usize,
        retry_after: Duration,
    ) -> Self {
        Self {
            limiter,
            priority,
            limit,
            retry_after,
        }
    }

    /// The name of the limit that shed the request.
    pub fn limiter(&self) -> &str {
        &self.limiter
    }

    /// The request's class.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The limit when the request was shed.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// When to try again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "concurrency limit {} reached for {} requests (limit {})",
            self.limiter, self.priority, self.limit
        )
    }
}

impl std::error::Error for Overloaded {}

impl From<Overloaded> for Problem {
    fn from(err: Overloaded) -> Self {
        // Whole seconds, rounded up, so a retry never comes early.
        let secs = u64::try_from(err.retry_after.as_micros().div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .max(1);
        let millis = u64::try_from(err.retry_after.as_micros().div_ceil(1_000))
            .unwrap_or(u64::MAX)
            .max(1);
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            .detail(err.to_string())
            .grpc_code(GrpcCode::ResourceExhausted)
            .extension("limiter", err.limiter.as_ref())
            .extension("priority", err.priority.as_str())
            .extension("limit", err.limit as u64)
            .extension("retry_after_ms", millis)
            .header(RETRY_AFTER, HeaderValue::from(secs))
    }
}
