//! Request IDs: keep or make one per request, echo it, log it, forward it.
//!
//! ```
//! use battlement::{RequestId, RequestIdLayer};
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestIdLayer::new())
//!     .service(service_fn(|req: Request<()>| async move {
//!         let id = req.extensions().get::<RequestId>().unwrap().clone();
//!         assert_eq!(RequestId::current(), Some(id));
//!         Ok::<_, std::convert::Infallible>(Response::new(()))
//!     }));
//!
//! // A valid incoming id is kept and echoed.
//! let res = svc.clone().oneshot(
//!     Request::get("/").header("x-request-id", "abc-123").body(()).unwrap(),
//! ).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], "abc-123");
//!
//! // A missing or invalid one is replaced with a UUIDv7.
//! let res = svc.oneshot(
//!     Request::get("/").header("x-request-id", "no spaces allowed").body(()).unwrap(),
//! ).await.unwrap();
//! let id = res.headers()["x-request-id"].to_str().unwrap();
//! assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
//! # });
//! ```
//!
//! Server side, [`RequestIdLayer`] implements; client side,
//! [`ForwardRequestIdLayer`] puts the id of the request being handled on
//! outbound HTTP requests and gRPC calls.

mod forward;
mod future;
mod id;
mod layer;
mod service;

pub use forward::{ForwardRequestId, ForwardRequestIdLayer};
pub use future::ResponseFuture;
pub use id::{DefaultMakeRequestId, MakeRequestId, RequestId};
pub use layer::{RequestIdConfig, RequestIdLayer, X_REQUEST_ID};
pub use service::{REQUEST_SPAN_TARGET, RequestIdService};
