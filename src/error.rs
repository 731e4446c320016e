//! Errors shared by every layer and backend.
//!
//! ```
//! use std::time::Duration;
//! use battlement::{FailurePolicy, StoreError};
//!
//! let err = StoreError::Timeout(Duration::from_millis(50));
//! assert!(err.is_transient());
//! assert_eq!(err.to_string(), "store call timed out after 50ms");
//! assert_eq!(FailurePolicy::default(), FailurePolicy::FailOpen);
//! ```
//!
//! A [`StoreError`] means the *infrastructure* failed; what a store decides
//! (allowed, denied, in flight, ...) is an ordinary value, never an error.
//! Backends map their client errors into these variants, so raw
//! `redis::RedisError` or etcd errors never leak through the API.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The boxed error used by layers in error mode (clients, non-HTTP).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A backend could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The call did not finish within the store's per-call timeout.
    #[error("store call timed out after {0:?}")]
    Timeout(Duration),
    /// The server could not be reached or the connection dropped.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The server is known to be down (a call failed and none succeeded
    /// since): the call was not sent, and a background probe reconnects.
    #[error("store down: not sent until the server answers again")]
    Down,
    /// The store was closed with `close()`.
    #[error("store closed")]
    Closed,
    /// The server answered with an error.
    #[error("store error: {0}")]
    Backend(String),
    /// The server answered with something the backend did not expect.
    #[error("unexpected store reply: {0}")]
    Protocol(String),
    /// The store was configured with invalid values.
    #[error("invalid store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether trying again later may succeed (timeouts, lost connections).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unavailable(_) | Self::Down)
    }

    /// Whether the call may have reached the server: not when the store
    /// knew it was down, or was closed, and did not send it.
    pub fn may_have_been_sent(&self) -> bool {
        !matches!(self, Self::Down | Self::Closed)
    }
}

/// What a layer does when its store fails.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Let the request through as if the store had allowed it.
    #[default]
    FailOpen,
    /// Reject the request (503 / `UNAVAILABLE`).
    FailClosed,
    /// Decide with a process-local fallback (e.g. an in-memory limiter).
    LocalFallback,
}

/// A configuration value was rejected when a layer or store was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// A configuration error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// What was wrong.
    pub fn message(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_timeouts_and_lost_connections_are_transient() {
        assert!(StoreError::Unavailable("refused".into()).is_transient());
        assert!(StoreError::Down.is_transient());
        assert!(!StoreError::Down.may_have_been_sent());
        assert!(!StoreError::Closed.is_transient());
        assert!(!StoreError::Backend("WRONGTYPE".into()).is_transient());
        assert!(!StoreError::Config("bad".into()).is_transient());
    }

    #[test]
    fn failure_policy_deserializes_snake_case() {
        let p: FailurePolicy = serde_json::from_str("\"local_fallback\"").unwrap();
        assert_eq!(p, FailurePolicy::LocalFallback);
    }
}
