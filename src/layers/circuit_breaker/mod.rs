//! Circuit breaking: keyed breakers with shared state.
//!
//! ```
//! use std::time::Duration;
//! use battlement::backends::MemoryStore;
//! use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let config = BreakerConfig::default()
//!     .minimum_calls(4)
//!     .failure_rate(50.0)
//!     .open_for(Duration::from_secs(30));
//! let svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new("upstream", MemoryStore::new(), config).unwrap())
//!     .service(service_fn(|_: Request<String>| async {
//!         let mut res = Response::new(String::from("down"));
//!         *res.status_mut() = StatusCode::BAD_GATEWAY;
//!         Ok::<_, std::convert::Infallible>(res)
//!     }));
//!
//! for _ in 0..4 {
//!     let res = svc.clone().oneshot(Request::new(String::new())).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
//! }
//! // Four failures of four calls: open. The inner service is not called.
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(res.headers()["retry-after"], "30");
//! # });
//! ```
//!
//! A [`BreakerConfig`] sets the window (last N calls or last N seconds),
//! the minimum number of calls, the failure-rate and slow-call-rate
//! thresholds (or consecutive-failures mode), the open time and its
//! backoff, and the number of half-open probes. [`ClassifyResponse`]
//! decides what a failure is. The [`CircuitBreakerLayer`] keeps one breaker
//! per key and shares their states through a [`CircuitBreakerStore`]
//! (`MemoryStore`, `RedisStore`, `EtcdStore`); [`CircuitBreakerHandle`]
//! reads and forces them and guards calls that are not HTTP requests.

mod body;
mod breaker;
mod classify;
mod config;
mod error;
mod future;
mod gauge;
mod layer;
mod registry;
mod service;
mod state;
pub(crate) mod store;
mod window;

pub use body::ClassifiedBody;
pub use classify::{ClassifyResponse, DefaultClassifier};
pub use config::{BreakerConfig, Window};
pub use error::CircuitOpen;
pub use future::{ClientResponseFuture, ResponseFuture};
pub use layer::{
    CircuitBreakerBuilder, CircuitBreakerHandle, CircuitBreakerLayer, ClientCircuitBreakerLayer,
    DEFAULT_IDLE, DEFAULT_MAX_KEYS, DEFAULT_SYNC_EVERY,
};
pub use registry::Permit;
pub use service::{CircuitBreaker, ClientCircuitBreaker};
pub use state::{Outcome, State};
pub use store::{
    CircuitBreakerStore, FORCED_RETENTION, LOAD_BATCH, Loaded, Publication, Published, RETENTION,
    SharedState, Versioned,
};
