//! One folder per concern; each is a `tower::Layer`.

pub mod circuit_breaker;
pub mod concurrency_limit;
pub mod deadline;
pub mod edit;
pub mod health;
pub mod hedge;
pub mod idempotency;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
pub mod retry;
pub mod trace;
