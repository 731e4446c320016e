//! Hedged requests: a second copy of a slow request, after the host's
//! usual latency, and the first response wins.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use battlement::body::LayerBody;
//! use battlement::hedge::{HedgeConfig, HedgeDelay, HedgeLayer, Hedged};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Empty;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! // An upstream whose first answer takes a second, every other one 5 ms.
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let upstream = service_fn(move |_req: Request<LayerBody<Empty<Bytes>>>| {
//!     let n = seen.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let ms = if n == 0 { 1000 } else { 5 };
//!         tokio::time::sleep(Duration::from_millis(ms)).await;
//!         Ok::<_, std::convert::Infallible>(Response::new(format!("answer {n}")))
//!     }
//! });
//! let config = HedgeConfig::default().delay(HedgeDelay::Fixed(Duration::from_millis(50)));
//! let client = ServiceBuilder::new()
//!     .layer(HedgeLayer::new(config).unwrap())
//!     .service(upstream);
//!
//! let req = Request::get("http://api.example/").body(LayerBody::inner(Empty::new())).unwrap();
//! let res = client.oneshot(req).await.unwrap();
//! // The hedge, sent after 50 ms, answered first.
//! assert_eq!(res.body(), "answer 1");
//! assert_eq!(res.extensions().get::<Hedged>(), Some(&Hedged));
//! # });
//! ```
//!
//! After "The Tail at Scale" (Dean and Barroso): hedging after the 95th
//! percentile latency costs about 5 % more requests and cuts the tail
//! that a few slow replicas, pauses or queues cause. Like tower's `hedge`
//! middleware the delay can be a percentile of the observed latency, kept
//! here per host (a ring of recent latencies per host, for a bounded
//! number of hosts); unlike it, only requests that are safe to send twice
//! are hedged, at most a set share of them, and hedges may draw on the
//! retry budget. [`ClientStack::hedge`](crate::client::ClientStack::hedge)
//! puts it between the retry and the per-attempt layers.

mod config;
mod latency;
mod layer;
mod service;

pub use config::{HedgeConfig, HedgeDelay};
pub use layer::HedgeLayer;
pub use service::{Hedge, Hedged};
