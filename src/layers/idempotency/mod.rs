//! Idempotency keys: each key executes once, across processes, and its
//! response is replayed.
//!
//! ```
//! use battlement::backends::MemoryStore;
//! use battlement::idempotency::IdempotencyLayer;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::BodyExt;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let orders = Arc::new(AtomicU64::new(0));
//! let counter = orders.clone();
//! let svc = ServiceBuilder::new()
//!     .layer(IdempotencyLayer::new(MemoryStore::new()).required(true))
//!     .service(service_fn(move |_req: Request<_>| {
//!         let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
//!         async move {
//!             let mut res = Response::new(format!("order {n}"));
//!             *res.status_mut() = StatusCode::CREATED;
//!             Ok::<_, std::convert::Infallible>(res)
//!         }
//!     }));
//!
//! let post = || {
//!     Request::post("/orders")
//!         // Keys are kept per client: by `Authorization`, else by address.
//!         .header("authorization", "Bearer alice")
//!         .header("idempotency-key", "\"order-7\"")
//!         .body(String::from(r#"{"item": "tea"}"#))
//!         .unwrap()
//! };
//! let first = svc.clone().oneshot(post()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! let again = svc.oneshot(post()).await.unwrap();
//! assert_eq!(again.status(), StatusCode::CREATED);
//! assert_eq!(again.headers()["idempotent-replayed"], "true");
//! assert_eq!(again.into_body().collect().await.unwrap().to_bytes(), "order 1");
//! assert_eq!(orders.load(Ordering::SeqCst), 1);
//! # });
//! ```
//!
//! The [`IdempotencyLayer`] reads the `Idempotency-Key` header (an RFC 9651
//! string; gRPC metadata `idempotency-key` is the same header), scopes it
//! to the caller ([`AuthorizationScope`] or any key extractor; a request
//! whose caller cannot be told is rejected, never filed under a scope
//! shared with others),
//! fingerprints the request ([`DefaultFingerprint`] or a
//! [`MakeFingerprint`]), and claims it in an [`IdempotencyStore`]:
//! `MemoryStore`, `RedisStore` (one script per step) or `EtcdStore`
//! (revision-guarded transactions), which all pass one conformance suite.
//!
//! # Which scope fits
//!
//! - **The application authenticates** (it verifies a token or a
//!   session): its authentication layer inserts the verified [`Principal`]
//!   into the request's extensions, and the default [`AuthorizationScope`]
//!   uses it. [`PrincipalScope`] requires it (400 without). The
//!   authentication layer must run before the idempotency layer. The
//!   preset puts idempotency innermost, around the routes it is given, so
//!   either wrap the preset's router (`stack.router(api).layer(auth)`,
//!   which puts the health routes behind authentication too: let the auth
//!   layer pass them), or assemble the server layers by hand with
//!   [`ServiceBuilderExt`](crate::stack::ServiceBuilderExt), auth just
//!   outside `with_idempotency`.
//! - **Each client holds its own credential, unverified here**: the
//!   default, the hashed `Authorization`. Two clients that send the same
//!   value (one token shared by a gateway, a client library's
//!   `Bearer undefined`) share a scope, and may replay each other's
//!   responses.
//! - **A gateway authenticates and names the client in a header**:
//!   [`TrustedHeaderScope`], which believes the header only from the
//!   gateway's addresses, so a client that reaches the server another way
//!   cannot choose its scope.
//! - **No credential at all**: the client's address
//!   ([`ClientIp`](crate::key::ClientIp)), behind trusted proxies if any.
//!
//! [`IdempotencyConfig`] is the same settings as a serde document (the
//! `[idempotency]` section of the stack config):
//!
//! ```
//! use battlement::backends::MemoryStore;
//! use battlement::idempotency::{IdempotencyConfig, IdempotencyLayer};
//!
//! let config: IdempotencyConfig =
//!     serde_json::from_str(r#"{"routes": ["/orders"], "required": true, "lock": "30s"}"#).unwrap();
//! let layer = IdempotencyLayer::from_config(MemoryStore::new(), &config).unwrap();
//! # drop(layer);
//! ```

mod client;
mod config;
mod error;
mod fingerprint;
mod future;
pub(crate) mod key;
mod layer;
pub(crate) mod record;
mod scope;
mod service;
pub(crate) mod store;

pub use client::{IdempotencyKeyLayer, SetIdempotencyKey};
pub use config::{IdempotencyConfig, ScopeConfig};
pub use fingerprint::{DefaultFingerprint, MakeFingerprint};
pub use future::ResponseFuture;
pub use key::{IDEMPOTENCY_KEY, MAX_KEY_LEN};
pub use layer::{
    DEFAULT_LOCK, DEFAULT_MAX_EXECUTION, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_RESPONSE_BODY,
    DEFAULT_RELEASE_STATUSES, DEFAULT_RETENTION, IdempotencyLayer,
};
pub use record::{ClaimToken, Fingerprint, Record, StoredResponse};
pub use scope::{AuthorizationScope, Principal, PrincipalScope, TrustedHeaderScope};
pub use service::{IDEMPOTENT_REPLAYED, Idempotency};
pub use store::{Claim, Claimant, Completion, IdempotencyStore};

/// The store id of `key` under `scope`, for the conformance suite.
#[cfg(feature = "conformance")]
pub(crate) fn scope_id_for_tests(scope: &str, key: &str) -> String {
    scope::scoped_id(scope, key)
}
