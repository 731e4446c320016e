//! `CircuitOpen`: the typed rejection of an open breaker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode, header::RETRY_AFTER};

use super::state::State;
use crate::reject::{GrpcCode, Problem};

/// A call was rejected because its breaker is open, forced open, or
/// half-open with every probe taken.
///
/// In client mode it is the service error (downcast it from `BoxError`);
/// in server mode it becomes a 503 / `UNAVAILABLE` response with
/// `Retry-After`.
#[derive(Debug, Clone)]
pub struct CircuitOpen {
    breaker: Arc<str>,
    key: String,
    state: State,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    pub(crate) fn new(
        breaker: Arc<str>,
        key: String,
        state: State,
        retry_after: Option<Duration>,
    ) -> Self {
        Self {
            breaker,
            key,
            state,
            retry_after,
        }
    }

    /// The breaker's name.
    pub fn breaker(&self) -> &str {
        &self.breaker
    }

    /// The key of the breaker that rejected the call (e.g. the host).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `Open`, `ForcedOpen` or `HalfOpen`.
    pub fn state(&self) -> State {
        self.state
    }

    /// The open time left (for `HalfOpen`, a short wait for the probes);
    /// `None` when forced open.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker {} is {}", self.breaker, self.state)?;
        if let Some(d) = self.retry_after {
            write!(f, "; retry in {} ms", d.as_millis().max(1))?;
        }
        Ok(())
    }
}

impl std::error::Error for CircuitOpen {}

impl From<CircuitOpen> for Problem {
    fn from(err: CircuitOpen) -> Self {
        let mut problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            .detail(err.to_string())
            .grpc_code(GrpcCode::Unavailable)
            .extension("breaker", err.breaker.as_ref())
            .extension("state", err.state.as_str());
        if let Some(d) = err.retry_after {
            // Whole seconds, rounded up, so a retry never comes early.
            let secs = d.as_micros().div_ceil(1_000_000).max(1);
            problem = problem
                .extension("retry_after_ms", d.as_millis().max(1) as u64)
                .header(RETRY_AFTER, HeaderValue::from(secs as u64));
        }
        problem
    }
}
