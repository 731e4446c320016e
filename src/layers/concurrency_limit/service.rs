//! `ConcurrencyLimit`: the service made by the layer.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::body::LimitedBody;
use super::future::ResponseFuture;
use super::limit::{Limiter, Slot};
use super::priority::Classifier;
use crate::body::LayerBody;
use crate::reject::Protocol;

/// The service made by [`ConcurrencyLimitLayer`](super::ConcurrencyLimitLayer):
/// a request over its class's share of the limit is answered at once with
/// a 503 / `RESOURCE_EXHAUSTED` response, so the error type stays the
/// inner service's.
#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
    classify: Classifier,
}

impl<S> ConcurrencyLimit<S> {
    pub(crate) fn new(inner: S, limiter: Arc<Limiter>, classify: Classifier) -> Self {
        Self {
            inner,
            limiter,
            classify,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ConcurrencyLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ConcurrencyLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<LayerBody<LimitedBody<ResBody>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Never waits for a slot: a full limit rejects in `call`.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let priority = (self.classify)(&parts);
        match self.limiter.acquire(priority) {
            Ok(permit) => {
                let slot = Slot::new(permit);
                parts.extensions.insert(slot.clone());
                let req = Request::from_parts(parts, body);
                ResponseFuture::calling(self.inner.call(req), slot)
            }
            Err(overloaded) => {
                ResponseFuture::rejected(overloaded, Protocol::of_headers(&parts.headers))
            }
        }
    }
}
