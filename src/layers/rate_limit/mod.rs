//! Rate limiting: keyed integer GCRA with shared state.
//!
//! ```
//! use battlement::backends::MemoryStore;
//! use battlement::rate_limit::{Policy, Quota, RateLimitLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         RateLimitLayer::new(MemoryStore::new())
//!             .policy(Policy::new("global", Quota::per_second(2).unwrap()).unwrap()),
//!     )
//!     .service(service_fn(|_: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("ok")))
//!     }));
//!
//! for _ in 0..2 {
//!     let res = svc.clone().oneshot(Request::new(String::new())).await.unwrap();
//!     assert_eq!(res.status(), StatusCode::OK);
//! }
//! let res = svc.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["retry-after"], "1");
//! assert_eq!(res.headers()["ratelimit"], "\"global\";r=0;t=1");
//! # });
//! ```
//!
//! The same from a document users write, with [`RateLimitConfig`] (the
//! `[rate_limit]` section of the stack config):
//!
//! ```
//! use battlement::backends::MemoryStore;
//! use battlement::rate_limit::{RateLimitConfig, RateLimitLayer};
//!
//! let config: RateLimitConfig = toml::from_str(r#"
//!     [[policies]]
//!     name = "global"
//!     quota = { count = 2, period = "1s" }
//! "#).unwrap();
//! let layer = RateLimitLayer::from_config(MemoryStore::new(), &config).unwrap();
//! assert_eq!(layer.handle().quotas()[0].1.count(), 2);
//! ```
//!
//! A [`Quota`] is N per period with a burst; a [`Policy`] applies it per
//! key (peer IP, client IP behind proxies, header, route, closure) with a
//! cost per request; the [`RateLimitLayer`] decides every policy against a
//! [`RateLimitStore`] before calling the inner service.
//!
//! Several policies are all or nothing: a request one policy denies spends
//! nothing of the others. A request under one policy costs one store
//! decision as before; under several, one
//! [`decide_all`](RateLimitStore::decide_all): on `MemoryStore` every key
//! is read first and spent only if all admit (a key a concurrent request
//! emptied in between gives back what was spent), on a standalone Redis
//! one script call, on etcd one read and one write transaction guarded on
//! every key, and on a Redis Cluster one script call per slot, with the
//! other slots' charges given back when one denies (see `RedisStore`'s
//! "Several policies" for the exact bound). `MemoryStore`,
//! `RedisStore` and `EtcdStore` all run the same integer GCRA and pass the
//! same conformance suite, so a sequence of (time, key, cost) gets the
//! same decisions on each.

mod client;
mod config;
mod decide;
mod error;
mod future;
pub(crate) mod gcra;
pub(crate) mod headers;
mod layer;
pub mod lease;
mod policy;
mod quota;
mod service;
pub(crate) mod store;

pub use client::{ClientRateLimit, ClientRateLimitLayer};
pub use config::{KeyConfig, PolicyConfig, RateLimitConfig};
pub use error::RateLimited;
pub use future::ResponseFuture;
pub use headers::{RATELIMIT, RATELIMIT_POLICY};
pub use layer::{RateLimitHandle, RateLimitLayer};
pub use lease::{LeaseSettings, Leased, SyncMode};
pub use policy::Policy;
pub use quota::Quota;
pub use service::RateLimit;
pub use store::{Charge, Decision, RateLimitStore};
