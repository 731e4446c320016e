//! Concurrency limiting: a fixed or adaptive cap on requests in flight,
//! with priority classes, that sheds load at once instead of queueing.
//!
//! ```
//! use battlement::concurrency_limit::ConcurrencyLimitLayer;
//! use http::{Request, Response, StatusCode};
//! use tokio::sync::oneshot;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let layer = ConcurrencyLimitLayer::fixed(1).unwrap();
//! let handle = layer.handle();
//! let (release, wait) = oneshot::channel::<()>();
//! let wait = std::sync::Arc::new(tokio::sync::Mutex::new(Some(wait)));
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(move |_: Request<String>| {
//!     let wait = wait.clone();
//!     async move {
//!         if let Some(rx) = wait.lock().await.take() {
//!             let _ = rx.await;
//!         }
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//!     }
//! }));
//!
//! // The first request takes the only slot and waits...
//! let first = tokio::spawn(svc.clone().oneshot(Request::new(String::new())));
//! while handle.in_flight() == 0 {
//!     tokio::task::yield_now().await;
//! }
//! // ...so the next one is shed at once.
//! let res = svc.clone().oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(res.headers()["retry-after"], "1");
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//!
//! release.send(()).unwrap();
//! let res = first.await.unwrap().unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! drop(res); // the slot is held until the response body ends or is dropped
//! assert_eq!(handle.in_flight(), 0);
//! # });
//! ```
//!
//! # Admission
//!
//! One atomic counter holds the requests in flight; admitting a request is
//! a compare-and-swap on it against the current limit, so the limit is
//! never exceeded and nothing waits. A request keeps its slot until its
//! response body ends, fails or is dropped (a streamed response occupies
//! the server as long as it streams); a response future dropped before
//! the head arrives gives the slot back at once, unless work the request
//! detached still holds its [`Slot`]: an idempotent request's handler runs
//! on after a deadline's 504 or a client's reset, and keeps the slot until
//! it ends.
//!
//! # Priority classes
//!
//! A classifier ([`ConcurrencyLimitLayer::classify`], default
//! [`default_priority`]) puts each request in a [`Priority`]. With the
//! default shares, batch requests are admitted only while fewer than 50 %
//! of the limit is in flight, normal ones below 90 %, critical ones (health
//! probes) up to the full limit: under overload batch work is shed first
//! and health checks keep answering. The shares are set in
//! [`ConcurrencyLimitConfig`] (`batch_share`, `normal_share`).
//!
//! # The adaptive limit
//!
//! The adaptive limit is a gradient controller in the style of Envoy's
//! adaptive concurrency filter, which itself follows Netflix's
//! concurrency-limits (Gradient2). The idea: while a server is not
//! queueing, latency stays near its minimum however many requests are in
//! flight; once it queues, latency grows with concurrency. So the ratio of
//! the minimum latency to the latency now tells how far over (or under)
//! the useful concurrency the limit is.
//!
//! - The latency of a request is the time from admission to its response
//!   head. Samples are collected per window (`sample_window`, 100 ms by
//!   default) under a small mutex; the hot path only touches the counter.
//! - At the end of each window the window's latency (`sample_percentile`,
//!   the median by default) is compared with the minimum latency plus a
//!   buffer (25 %): `gradient = minRTT × (1 + buffer) / sampleRTT`, kept
//!   within 0.5 and 2 so that one window never more than halves or doubles
//!   the limit. The new limit is `limit × gradient + √(limit × gradient)`:
//!   the square root is headroom for bursts, and lets the limit keep
//!   growing when latency stays at its minimum. It is kept within
//!   `min_limit` and `max_limit`.
//! - As in Gradient2, a window in which fewer than half the limit were in
//!   flight never raises the limit: the load, not the server, was the
//!   bottleneck, and nothing was learned about where queueing starts.
//!   Such a window still lowers it when latency rose (Gradient2 skips
//!   the window altogether; then a limit that grew past twice the
//!   number of clients would never come down).
//! - The minimum latency is measured, not guessed: at start and then every
//!   `min_rtt_interval` (60 s, plus up to 15 % random jitter so replicas
//!   do not measure together), the limit drops to `min_limit` until
//!   `min_rtt_samples` requests admitted during the probe have completed;
//!   their latency is the new minimum, and the limit returns to where it
//!   was. With hardly any queueing during the probe, the minimum stays
//!   honest even if the server's no-load latency drifts upwards. A window
//!   faster than the minimum lowers it at once, and five windows in a row
//!   at `min_limit` start a new probe (the minimum may be stale).
//!
//! At equilibrium, with a server whose latency grows linearly with
//! concurrency past its capacity `C`, the limit settles near
//! `1.25 C + √(1.25 C)`: the server stays saturated (goodput at capacity)
//! while the latency of admitted requests stays within the buffer plus
//! headroom of the minimum. Requests beyond it are rejected at once, and
//! a client can retry elsewhere.

mod body;
mod config;
mod error;
mod future;
mod gauge;
mod layer;
mod limit;
mod priority;
mod service;

pub use body::LimitedBody;
pub use config::{ConcurrencyLimitConfig, GradientConfig, LimitConfig};
pub use error::Overloaded;
pub use future::ResponseFuture;
pub use layer::{ConcurrencyLimitHandle, ConcurrencyLimitLayer};
pub use limit::Slot;
pub use priority::{Priority, default_priority};
pub use service::ConcurrencyLimit;
