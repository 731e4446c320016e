//! OpenTelemetry tracing for servers and clients.
//!
//! ```
//! use battlement::trace::TraceLayer;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let svc = ServiceBuilder::new()
//!     .layer(TraceLayer::server())
//!     .service(service_fn(|_: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//!     }));
//! let res = svc.oneshot(Request::get("/items/42").body(String::new()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # });
//! ```
//!
//! See [`TraceLayer`] for what each span carries, [`AccessLog`] for the
//! access log it can write, and [`ExtraAttributes`] for attributes of your
//! own, with the span-name override and the filter of requests traced.

mod access_log;
pub(crate) mod baggage;
mod body;
pub(crate) mod custom;
pub(crate) mod head;
mod layer;
pub(crate) mod propagation;
pub(crate) mod semconv;
mod service;
mod traced;
mod w3c;

pub use access_log::{ACCESS_LOG_TARGET, AccessLog};
pub use baggage::W3cBaggage;
pub use body::TracedBody;
pub use custom::ExtraAttributes;
pub use head::HeadSampler;
pub use layer::TraceLayer;
pub use semconv::DURATION_BUCKETS;
pub use service::{ResponseFuture, Trace};
pub use w3c::W3cTraceContext;
