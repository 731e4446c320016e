//! The client-side stack: request-id forwarding, retry,
//! a span and a duration metric per attempt, a circuit breaker per
//! upstream host and an optional client rate limit, in that order, for
//! hyper-util's client, tonic `Channel` and reqwest.
//!
//! ```
//! use battlement::backends::MemoryStore;
//! use battlement::client::ClientStack;
//! use battlement::body::LayerBody;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::ServiceBuilder;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let stack = ClientStack::new("upstream", MemoryStore::new()).build().unwrap();
//! let breakers = stack.breakers();
//! // The transport receives `LayerBody<B>` request bodies.
//! let http = Client::builder(TokioExecutor::new()).build_http::<LayerBody<Full<Bytes>>>();
//! let client = ServiceBuilder::new().layer(stack).service(http);
//! # let _ = (client, breakers);
//! # });
//! ```
//!
//! Why this order: the request id goes on first, so every attempt carries
//! the same id; each attempt gets its own client span (with
//! `http.request.resend_count`) and its context goes out with it; retry
//! wraps the breaker, so each attempt asks the breaker
//! and an open breaker's remaining time becomes the retry's wait (or ends
//! the retries when it passes the deadline); the rate limit is innermost,
//! so every attempt counts against the quota. On a tonic `Channel` add
//! [`TonicBodyLayer`] innermost; with reqwest use `ReqwestService` as
//! the transport (feature `reqwest`), or keep a reqwest-middleware client
//! and add the whole stack to it as one `ClientStackMiddleware` (feature
//! `reqwest-middleware`).
//!
//! # Errors
//!
//! The stack's service errors are `BoxError`s; [`ClientError::from_box`]
//! sorts one into [`ClientError`]: `CircuitOpen` and `RateLimited` (the
//! call was not sent), `AttemptTimedOut` (the per-try timeout),
//! `DeadlineExceeded` (the retry's or the inbound request's deadline) and
//! `Transport`, each keeping the original error. The middleware's
//! `reqwest_middleware::Error` converts into the same enum.
//!
//! # Exactly once
//!
//! [`ClientStack::idempotency_keys`] gives each request that is not
//! idempotent an `Idempotency-Key`, once, outside the retry: every
//! attempt carries the same key, and a server that honours it (battlement's
//! [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer)) runs the
//! request once and answers the retries with the stored response. Without
//! a key, a POST is sent once (unless the retry policy opts in with
//! [`retry_non_idempotent`](crate::retry::RetryPolicy::retry_non_idempotent)).

mod error;
#[cfg(feature = "reqwest-middleware")]
mod middleware;
#[cfg(feature = "reqwest")]
mod reqwest;
mod stack;
#[cfg(feature = "tonic")]
mod tonic;

pub use error::ClientError;
#[cfg(feature = "reqwest-middleware")]
pub use middleware::ClientStackMiddleware;
#[cfg(feature = "reqwest")]
pub use reqwest::ReqwestService;
pub use stack::{BoxErrors, ClientBody, ClientStack, ClientStackLayer, ClientStackService};
#[cfg(feature = "tonic")]
pub use tonic::{TonicBody, TonicBodyLayer};
