//! `CircuitBreaker` (server mode) and `ClientCircuitBreaker` (client mode).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::body::ClassifiedBody;
use super::classify::ClassifyResponse;
use super::future::{Call, ClientResponseFuture, ResponseFuture};
use super::registry::Registry;
use crate::BoxError;
use crate::body::LayerBody;
use crate::key::{Key, KeyExtractor, RequestHead};
use crate::reject::Protocol;

/// What both services share: the breakers, the key and the classifier.
#[derive(Clone)]
pub(crate) struct Shared {
    pub registry: Arc<Registry>,
    pub key: Arc<dyn KeyExtractor>,
    pub classifier: Arc<dyn ClassifyResponse>,
}

impl Shared {
    /// Admits `req` and calls it with `call`, or rejects it.
    fn admit<B, F>(&self, req: Request<B>, call: impl FnOnce(Request<B>) -> F) -> Call<F> {
        // A request the key extractor cannot key shares one breaker.
        let key = self
            .key
            .extract(&RequestHead::of(&req))
            .unwrap_or_else(|_| Key::from("unknown"));
        match self.registry.acquire(key) {
            Ok(permit) => Call::calling(call(req), permit, self.classifier.clone()),
            Err(open) => Call::rejected(open),
        }
    }
}

/// The service made by [`CircuitBreakerLayer`](super::CircuitBreakerLayer):
/// rejections are 503 / `UNAVAILABLE` responses, so the error type stays
/// the inner service's.
#[derive(Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Shared,
}

impl<S> CircuitBreaker<S> {
    pub(crate) fn new(inner: S, shared: Shared) -> Self {
        Self { inner, shared }
    }
}

impl<S: fmt::Debug> fmt::Debug for CircuitBreaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.shared.registry.name)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CircuitBreaker<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
{
    type Response = Response<LayerBody<ClassifiedBody<ResBody>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let protocol = Protocol::of(&req);
        let inner = &mut self.inner;
        let call = self.shared.admit(req, |req| inner.call(req));
        ResponseFuture::new(call, protocol)
    }
}

/// The service made by
/// [`CircuitBreakerLayer::client_mode`](super::CircuitBreakerLayer::client_mode):
/// a rejection is a [`CircuitOpen`](super::CircuitOpen) error (downcast it from `BoxError`).
#[derive(Clone)]
pub struct ClientCircuitBreaker<S> {
    inner: S,
    shared: Shared,
}

impl<S> ClientCircuitBreaker<S> {
    pub(crate) fn new(inner: S, shared: Shared) -> Self {
        Self { inner, shared }
    }
}

impl<S: fmt::Debug> fmt::Debug for ClientCircuitBreaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.shared.registry.name)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ClientCircuitBreaker<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display + Into<BoxError>,
{
    type Response = Response<ClassifiedBody<ResBody>>;
    type Error = BoxError;
    type Future = ClientResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let inner = &mut self.inner;
        ClientResponseFuture::new(self.shared.admit(req, |req| inner.call(req)))
    }
}
