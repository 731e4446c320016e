//! The server timeout: a deadline per request (default, per route, and an
//! inbound gRPC `grpc-timeout`, the smallest wins), answered with a 504 /
//! `DEADLINE_EXCEEDED` when it passes, and handed on to the handler and
//! to outbound calls.
//!
//! ```
//! use std::time::Duration;
//! use battlement::deadline::{Deadline, DeadlineLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let svc = ServiceBuilder::new()
//!     .layer(DeadlineLayer::new(Duration::from_secs(1)).unwrap())
//!     .service(service_fn(|req: Request<String>| async move {
//!         // The handler sees its deadline...
//!         let deadline = *req.extensions().get::<Deadline>().unwrap();
//!         assert_eq!(Deadline::current(), Some(deadline));
//!         // ...and takes too long.
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("late")))
//!     }));
//!
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! # });
//! ```
//!
//! # What the deadline covers
//!
//! The time from the call of the layer's service until the inner
//! service's response head is ready, as in tower-http's `TimeoutLayer`:
//! the body is not covered (a download or a server stream may take much
//! longer than a handler should take to answer), nor is waiting in
//! `poll_ready`. On expiry the inner future is dropped at once, which
//! cancels the handler at its next `.await`; work it spawned keeps
//! running unless it watches its [`Deadline`]. One exception by design:
//! an idempotent request that won its key runs on after the 504 (its
//! outcome is stored so that the retry finds it, not a second run),
//! inside its [`Deadline`] scope and holding its concurrency-limit slot,
//! until the idempotency layer's `max_execution` bound cancels it.
//!
//! # Which deadline
//!
//! The request's timeout is taken from
//! [`DeadlineLayer::route_timeout`] if it gives one, else from the
//! configured routes (keyed by axum's `MatchedPath` when the layer runs
//! inside a `Router` via `Router::layer`, else by the path; gRPC paths are
//! `/package.Service/Method`), else the default (30 s). A gRPC or gRPC-Web
//! call's `grpc-timeout` header (1 to 8 digits and a unit `H`, `M`, `S`,
//! `m`, `u`, `n`, as the gRPC over HTTP/2 protocol defines) replaces it
//! when smaller, and so does an enclosing deadline layer's [`Deadline`].
//! Plain HTTP requests' `grpc-timeout` headers are not read.
//!
//! A malformed `grpc-timeout` is ignored by default, as tonic's server and
//! gRPC C-core do (counted as a `malformed_grpc_timeout` event); grpc-go
//! instead fails the call with `INTERNAL`, which
//! [`MalformedGrpcTimeout::Reject`] selects.
//!
//! # Handing the deadline on
//!
//! The [`Deadline`] is in the request's extensions, and while the inner
//! service's future runs it is also [`Deadline::current`] (a tokio
//! task-local, read by [`inbound_deadline`]). The client stack reads it:
//! the [retry layer](crate::retry) stops retrying when the inbound
//! deadline would pass before the next attempt and bounds each attempt by
//! it, and [`ForwardDeadline`] sends the time left as `grpc-timeout` on
//! gRPC calls that carry none.

mod config;
mod context;
mod error;
mod forward;
mod future;
pub(crate) mod grpc_timeout;
mod layer;
mod service;

pub use config::{DeadlineConfig, MalformedGrpcTimeout, RouteDeadline};
pub use context::{Deadline, inbound_deadline};
pub use error::{DeadlineExceeded, MalformedTimeout};
pub use forward::{ForwardDeadline, ForwardDeadlineLayer};
pub use future::ResponseFuture;
pub use layer::DeadlineLayer;
pub use service::DeadlineService;
