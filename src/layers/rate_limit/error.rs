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
            Some(d) => write!(f, "; retry in {} ms", whole_millis(d)),
            None => f.write_str("; the request costs more than the burst"),
        }
    }
}

impl std::error::Error for RateLimited {}

/// `d` in milliseconds, rounded up (at least 1): a client that waits this
/// long is not early.
fn whole_millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1)
}

impl From<RateLimited> for Problem {
    fn from(err: RateLimited) -> Self {
        let mut problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
            .detail(err.to_string())
            .extension("policy", err.policy.as_ref());
        if let Some(d) = err.retry_after {
            problem = problem.extension("retry_after_ms", whole_millis(d));
        }
        for (name, value) in &err.headers {
            problem = problem.header(name.clone(), value.clone());
        }
        problem
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn retry_after_ms_rounds_up() {
        // 3/s with burst 1: the next request is 333,334 µs away.
        let limited = RateLimited::new(
            "p".into(),
            Some(Duration::from_micros(333_334)),
            HeaderMap::new(),
        );
        assert_eq!(
            limited.to_string(),
            "rate limited by policy p; retry in 334 ms"
        );
        let problem = Problem::from(limited);
        assert_eq!(problem.to_json()["retry_after_ms"], 334);
    }
}
