//! `RateLimit`: the server-side service (rejections become responses).

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use tower_service::Service;

use super::decide::{Limiter, Verdict};
use super::future::ResponseFuture;
use super::store::RateLimitStore;
use crate::body::LayerBody;
use crate::key::RequestHead;
use crate::reject::Protocol;

/// The service made by [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimit<S, St> {
    inner: S,
    limiter: Arc<Limiter<St>>,
}

impl<S, St> RateLimit<S, St> {
    pub(crate) fn new(inner: S, limiter: Arc<Limiter<St>>) -> Self {
        Self { inner, limiter }
    }
}

impl<S: Clone, St> Clone for RateLimit<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

impl<S: std::fmt::Debug, St> std::fmt::Debug for RateLimit<S, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: RateLimitStore,
{
    type Response = Response<LayerBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let protocol = Protocol::of(&req);
        let job = match self.limiter.job(&RequestHead::of(&req)) {
            Ok(job) => job,
            Err(rejection) => return ResponseFuture::rejected(rejection, protocol),
        };
        // An in-process store decides at once, with no future to box.
        if let Some(verdict) = self.limiter.decide_now(&job) {
            return match verdict {
                Verdict::Allow(headers) => {
                    ResponseFuture::calling(self.inner.call(req), headers, protocol)
                }
                Verdict::Reject(rejection) => ResponseFuture::rejected(rejection, protocol),
            };
        }
        let limiter = self.limiter.clone();
        let mut decision = Box::pin(async move { limiter.decide(job).await });
        // A store that answers at once all the same: call the readied
        // service now. (A pending store future is polled again, with the
        // caller's waker, by the response future.)
        let mut cx = Context::from_waker(Waker::noop());
        match decision.as_mut().poll(&mut cx) {
            Poll::Ready(Verdict::Allow(headers)) => {
                ResponseFuture::calling(self.inner.call(req), headers, protocol)
            }
            Poll::Ready(Verdict::Reject(rejection)) => {
                ResponseFuture::rejected(rejection, protocol)
            }
            Poll::Pending => {
                // The readied service goes into the future; a fresh clone
                // stays.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::deciding(decision, inner, req, protocol)
            }
        }
    }
}
