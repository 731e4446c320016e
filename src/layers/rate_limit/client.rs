//! Client mode: rejections are typed errors.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use super::decide::{Limiter, Verdict};
use super::layer::RateLimitLayer;
use super::store::RateLimitStore;
use crate::BoxError;
use crate::key::RequestHead;

/// A [`RateLimitLayer`] whose denials are [`RateLimited`](super::RateLimited)
/// errors (client mode): for outbound calls, where the caller
/// should wait `retry_after` rather than receive a made-up response.
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::rate_limit::{Policy, Quota, RateLimitLayer, RateLimited};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let layer = RateLimitLayer::new(MemoryStore::new())
///     .policy(Policy::new("upstream", Quota::per_second(1).unwrap()).unwrap())
///     .client_mode();
/// let client = ServiceBuilder::new().layer(layer).service(service_fn(|_: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// }));
/// client.clone().oneshot(http::Request::new(())).await.unwrap();
/// let err = client.oneshot(http::Request::new(())).await.unwrap_err();
/// let limited = err.downcast_ref::<RateLimited>().unwrap();
/// assert!(limited.retry_after().unwrap() <= std::time::Duration::from_secs(1));
/// # });
/// ```
pub struct ClientRateLimitLayer<St> {
    layer: RateLimitLayer<St>,
}

impl<St: RateLimitStore> ClientRateLimitLayer<St> {
    pub(crate) fn new(layer: RateLimitLayer<St>) -> Self {
        Self { layer }
    }
}

impl<St: Clone> Clone for ClientRateLimitLayer<St> {
    fn clone(&self) -> Self {
        Self {
            layer: self.layer.clone(),
        }
    }
}

impl<St: std::fmt::Debug> std::fmt::Debug for ClientRateLimitLayer<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientRateLimitLayer")
            .field(&self.layer)
            .finish()
    }
}

impl<S, St: RateLimitStore> Layer<S> for ClientRateLimitLayer<St> {
    type Service = ClientRateLimit<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientRateLimit {
            inner,
            limiter: self.layer.limiter(),
        }
    }
}

/// The service made by [`ClientRateLimitLayer`].
pub struct ClientRateLimit<S, St> {
    inner: S,
    limiter: Arc<Limiter<St>>,
}

impl<S: Clone, St> Clone for ClientRateLimit<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
        }
    }
}

impl<S: std::fmt::Debug, St> std::fmt::Debug for ClientRateLimit<S, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, St, ReqBody> Service<Request<ReqBody>> for ClientRateLimit<S, St>
where
    S: Service<Request<ReqBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    St: RateLimitStore,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let job = self.limiter.job(&RequestHead::of(&req));
        let limiter = self.limiter.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let job = job.map_err(|r| r.into_error())?;
            match limiter.decide(job).await {
                Verdict::Allow(_) => inner.call(req).await.map_err(Into::into),
                Verdict::Reject(rejection) => Err(rejection.into_error()),
            }
        })
    }
}
