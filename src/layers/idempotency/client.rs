//! `IdempotencyKeyLayer`: an `Idempotency-Key` on each outbound request
//! that is not idempotent, the same one on every attempt.

use http::{HeaderValue, Request};
use tower_layer::Layer;

use super::key::IDEMPOTENCY_KEY;
use crate::layers::edit::{EditRequest, RequestEdit};
use crate::retry::is_idempotent;

/// Gives each request whose method is not idempotent (POST, PATCH, ...)
/// and that carries no `Idempotency-Key` a new one: a UUIDv7 as a quoted
/// structured-field string, `"0190b5c2-…"`.
///
/// Put it outside the retry and hedge layers (the
/// [`ClientStack`](crate::client::ClientStack) does, with
/// [`idempotency_keys`](crate::client::ClientStack::idempotency_keys)):
/// the key is set once per call, so every attempt carries the same key,
/// the retry treats the request as safe to send again, and a server that
/// honours the header (battlement's
/// [`IdempotencyLayer`](super::IdempotencyLayer)) runs it once and
/// replays its stored response to the later attempts. A key the caller
/// set is kept.
///
/// Only for upstreams that honour the header: to one that ignores it, a
/// keyed request is retried like any other, and a lost response means it
/// runs twice.
///
/// ```
/// use battlement::idempotency::IdempotencyKeyLayer;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let svc = ServiceBuilder::new()
///     .layer(IdempotencyKeyLayer::new())
///     .service(service_fn(|req: Request<()>| async move {
///         let key = req.headers().get("idempotency-key").cloned();
///         Ok::<_, std::convert::Infallible>(Response::new(key))
///     }));
/// let res = svc.clone().oneshot(Request::post("/orders").body(()).unwrap()).await.unwrap();
/// assert!(res.body().as_ref().is_some_and(|k| k.as_bytes().starts_with(b"\"")));
/// let res = svc.oneshot(Request::get("/orders").body(()).unwrap()).await.unwrap();
/// assert!(res.body().is_none());
/// # });
/// ```
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKeyLayer {
    enabled: bool,
}

impl IdempotencyKeyLayer {
    /// Keys every request that is not idempotent.
    pub fn new() -> Self {
        Self { enabled: true }
    }

    /// Leaves every request as it is (the client stack's default).
    pub(crate) fn off() -> Self {
        Self { enabled: false }
    }
}

impl Default for IdempotencyKeyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for IdempotencyKeyLayer {
    type Service = SetIdempotencyKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EditRequest::new(inner, *self)
    }
}

/// The service made by [`IdempotencyKeyLayer`].
pub type SetIdempotencyKey<S> = EditRequest<S, IdempotencyKeyLayer>;

impl RequestEdit for IdempotencyKeyLayer {
    fn edit<B>(&self, req: &mut Request<B>) {
        if self.enabled
            && !is_idempotent(req.method())
            && !req.headers().contains_key(IDEMPOTENCY_KEY)
        {
            // A hyphenated UUID is visible ASCII: always a valid value.
            let key = format!("\"{}\"", uuid::Uuid::now_v7());
            if let Ok(value) = HeaderValue::try_from(key) {
                req.headers_mut().insert(IDEMPOTENCY_KEY, value);
            }
        }
    }
}
