//! Retries with back-off, budgets and server hints.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use battlement::clock::ManualClock;
//! use battlement::retry::{Attempts, RetryLayer, RetryPolicy};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // An upstream that answers 503 twice, then 200.
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let upstream = service_fn(move |_req: Request<_>| {
//!     let n = seen.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let status = if n < 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!         let mut res = Response::new(String::new());
//!         *res.status_mut() = status;
//!         Ok::<_, std::convert::Infallible>(res)
//!     }
//! });
//! let client = ServiceBuilder::new()
//!     // A manual clock: the back-offs take no real time here.
//!     .layer(RetryLayer::new(RetryPolicy::default()).unwrap().clock(ManualClock::default().shared()))
//!     .service(upstream);
//!
//! let res = client.oneshot(Request::get("/").body(String::new()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(3)));
//! # });
//! ```
//!
//! A [`RetryPolicy`] sets the attempts, the [`Backoff`], the per-try
//! timeout and overall deadline, the retryable statuses and gRPC codes, the
//! replay limit and the [`Budget`]; the [`RetryLayer`] runs it. Put it
//! outside a client-mode circuit breaker so each attempt asks the breaker.
//! [`TowerPolicy`] plugs the same policy into `tower::retry` for clonable
//! requests.

mod backoff;
pub(crate) mod hint;
mod layer;
mod policy;
mod service;
mod tower_policy;

pub use backoff::Backoff;
pub use layer::RetryLayer;
pub use policy::{AttemptOutcome, Budget, RetryPolicy};
pub use service::{AttemptTimedOut, Attempts, ResendCount, Retry};
pub use tower_policy::TowerPolicy;

pub(crate) use policy::is_idempotent;
pub(crate) use service::body_fits;
