//! OpenTelemetry request metrics; resilience events are
//! counted in `battlement.events` (see [`events`](crate::events)).
//!
//! ```
//! use battlement::metrics::MetricsLayer;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let svc = ServiceBuilder::new()
//!     .layer(MetricsLayer::server())
//!     .service(service_fn(|_: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//!     }));
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # });
//! ```
//!
//! The state gauges (breakers, concurrency limits, leases, idempotency
//! claims, stores) live beside the [`events`](crate::events) counter;
//! every instrument is listed below.
//!
#![doc = include_str!("../../../docs/metrics.md")]

mod instruments;
mod layer;
mod recording;
mod service;

pub use crate::trace::ExtraAttributes;
pub use crate::trace::semconv::recognize_grpc;
pub use layer::MetricsLayer;
pub use service::{MeteredBody, Metrics, ResponseFuture};
