//! `RateLimited`: the typed rejection of client mode.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode};

use crate::reject::Problem;

/// A request was denied by a rate-limit policy.
///
/// In client mode it is the service error (downcast it from `BoxError`);
/// in server mode it becomes a 429 / `RESOURCE_EXHAUSTED` response.
#[derive(Debug, Clone)]
pub struct RateLimited {
    policy: Arc<str>,
    retry_after: Option<Duration>,
    headers: HeaderMap,
}

impl RateLimited {
    pub(crate) fn new(policy: Arc<str>, retry_after: Option<Duration>, headers: HeaderMap) -> Self {
        Self {
            policy,
            retry_after,
            headers,
        }
    }

    /// The policy that denied the request.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// When a retry can succeed; `None` if it never can (cost above burst).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The `RateLimit`, `RateLimit-Policy` and `Retry-After` headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited by policy {}", self.policy)?;
        match self.retry_after {
            Some(d) => write!(f, "; retry in {} ms", d.as_millis().max(1)),
            None => f.write_str("; the request costs more than the burst"),
        }
    }
}

impl std::error::Error for RateLimited {}

impl From<RateLimited> for Problem {
    fn from(err: RateLimited) -> Self {
        let mut problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
            .detail(err.to_string())
            .extension("policy", err.policy.as_ref());
        if let Some(d) = err.retry_after {
            problem = problem.extension("retry_after_ms", d.as_millis().max(1) as u64);
        }
        for (name, value) in &err.headers {
            problem = problem.header(name.clone(), value.clone());
        }
        problem
    }
}
