//! The server preset as one plain tower [`Layer`], for hyper, hyper-util
//! or any tower HTTP service: the same layers in the same order as
//! [`ServerStack::router`], and the health probes answered under the
//! request id, trace and metrics layers only.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use pin_project_lite::pin_project;
use tower_layer::{Layer, Stack};
use tower_service::Service;

use super::optional::{Optional, OptionalService};
use super::server::ServerStack;
use crate::backends::AnyStore;
use crate::body::LayerBody;
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::concurrency_limit::ConcurrencyLimitLayer;
use crate::deadline::DeadlineLayer;
use crate::health::{HealthEndpoint, HealthRoutes};
use crate::idempotency::IdempotencyLayer;
use crate::metrics::MetricsLayer;
use crate::rate_limit::RateLimitLayer;
use crate::reject::ShapeRejectionsLayer;
use crate::request_id::RequestIdLayer;
use crate::trace::TraceLayer;

/// The layers every request passes, probes included, outermost first.
type OuterLayers = Stack<
    Optional<MetricsLayer>,
    Stack<Optional<TraceLayer>, Stack<Optional<RequestIdLayer>, Optional<ShapeRejectionsLayer>>>,
>;

/// The layers only the service's own requests pass, outermost first.
type InnerLayers = Stack<
    IdempotencyOrWrap,
    Stack<
        Optional<CircuitBreakerLayer>,
        Stack<
            Optional<RateLimitLayer<AnyStore>>,
            Stack<Optional<DeadlineLayer>, Optional<ConcurrencyLimitLayer>>,
        >,
    >,
>;

/// `S` behind every layer of the preset.
type Calls<S> = <OuterLayers as Layer<<InnerLayers as Layer<S>>::Service>>::Service;

/// The health probes behind the request id, trace and metrics layers.
type ProbeChain = <OuterLayers as Layer<Probes>>::Service;

/// The server preset as a tower layer, from [`ServerStack::layer`].
#[derive(Clone, Debug)]
pub struct ServerStackLayer {
    outer: OuterLayers,
    inner: InnerLayers,
    probes: Probes,
}

impl ServerStack {
    /// The preset as one plain tower [`Layer`] over any HTTP service (a
    /// `tower::service_fn`, hyper's service through hyper-util's
    /// `TowerToHyperService`, ...): the same layers in the same order as
    /// [`router`](Self::router), with the health paths of the config
    /// answered by the stack itself, under the request id, trace and
    /// metrics layers only. The service takes `Request<LayerBody<B>>`
    /// for a server's `Request<B>` (the idempotency layer hands on the
    /// bytes it read, then the rest: [`LayerBody`] is an `http_body::Body`
    /// whatever the config), and answers any `http_body::Body`. A rate-limit policy or idempotency scope keyed
    /// by the client's address reads it from a
    /// [`PeerAddr`](crate::key::PeerAddr) extension: insert one in each
    /// request where the connection is accepted.
    ///
    /// ```
    /// use battlement::stack::{self, StackConfig};
    /// use http_body_util::Full;
    /// use tower::{Layer, ServiceExt};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let stack = stack::server(&StackConfig::default()).await.unwrap();
    /// use battlement::body::LayerBody;
    ///
    /// let svc = stack.layer().layer(tower::service_fn(|_: http::Request<LayerBody<String>>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from("hello"))))
    /// }));
    /// let res = svc.clone().oneshot(http::Request::new(String::new())).await.unwrap();
    /// assert!(res.headers().contains_key("x-request-id"));
    /// let ready = svc.oneshot(http::Request::get("/readyz").body(String::new()).unwrap()).await.unwrap();
    /// assert_eq!(ready.status(), 200);
    /// # });
    /// ```
    pub fn layer(&self) -> ServerStackLayer {
        let outer = Stack::new(
            Optional(self.metrics.clone()),
            Stack::new(
                Optional(self.trace.clone()),
                Stack::new(
                    Optional(self.request_id.clone()),
                    Optional(self.shape.clone()),
                ),
            ),
        );
        let inner = Stack::new(
            IdempotencyOrWrap(self.idempotency.clone()),
            Stack::new(
                Optional(self.breaker.clone()),
                Stack::new(
                    Optional(self.rate_limit.clone()),
                    Stack::new(
                        Optional(self.deadline.clone()),
                        Optional(self.concurrency_limit.clone()),
                    ),
                ),
            ),
        );
        let routes = HealthRoutes::new(self.health.clone())
            .liveness_path(self.settings.livez.clone())
            .readiness_path(self.settings.readyz.clone())
            .startup_path(self.settings.startupz.clone());
        let probes = Probes {
            endpoints: routes
                .endpoints()
                .map(|(path, endpoint)| (path.to_owned(), endpoint))
                .collect::<Vec<_>>()
                .into(),
        };
        ServerStackLayer {
            outer,
            inner,
            probes,
        }
    }
}

impl<S> Layer<S> for ServerStackLayer {
    type Service = ServerStackService<S>;

    fn layer(&self, inner: S) -> ServerStackService<S> {
        ServerStackService {
            calls: self.outer.layer(self.inner.layer(inner)),
            probes: self.outer.layer(self.probes.clone()),
            paths: self.probes.clone(),
        }
    }
}

/// The idempotency layer, or, when it is off, the body wrapped as it
/// would wrap it: the service takes one request type either way.
#[derive(Clone, Debug)]
pub struct IdempotencyOrWrap(Option<IdempotencyLayer<AnyStore>>);

impl<S> Layer<S> for IdempotencyOrWrap {
    type Service = OptionalService<<IdempotencyLayer<AnyStore> as Layer<S>>::Service, WrapBody<S>>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.0 {
            Some(layer) => OptionalService::On(layer.layer(inner)),
            None => OptionalService::Off(WrapBody(inner)),
        }
    }
}

/// Hands `S` the request body as a [`LayerBody`], as the idempotency
/// layer does.
#[derive(Clone, Debug)]
pub struct WrapBody<S>(S);

impl<S, B> Service<Request<B>> for WrapBody<S>
where
    S: Service<Request<LayerBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        self.0.call(req.map(LayerBody::inner))
    }
}

/// The health endpoints by path.
#[derive(Clone, Debug)]
pub struct Probes {
    endpoints: Arc<[(String, HealthEndpoint)]>,
}

impl Probes {
    fn find(&self, path: &str) -> Option<&HealthEndpoint> {
        self.endpoints
            .iter()
            .find_map(|(p, endpoint)| (p == path).then_some(endpoint))
    }
}

impl<B> Service<Request<B>> for Probes {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = <HealthEndpoint as Service<Request<B>>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.find(req.uri().path()) {
            Some(endpoint) => endpoint.clone().call(req),
            // Only the probe paths are routed here.
            None => Box::pin(async {
                let mut res = Response::new(Full::default());
                *res.status_mut() = http::StatusCode::NOT_FOUND;
                Ok(res)
            }),
        }
    }
}

/// The service of [`ServerStackLayer`]: the health paths answered by the
/// stack, every other request through the whole preset to `S`.
pub struct ServerStackService<S> {
    calls: Calls<S>,
    probes: ProbeChain,
    paths: Probes,
}

impl<S> Clone for ServerStackService<S>
where
    Calls<S>: Clone,
{
    fn clone(&self) -> Self {
        Self {
            calls: self.calls.clone(),
            probes: self.probes.clone(),
            paths: self.paths.clone(),
        }
    }
}

impl<S> std::fmt::Debug for ServerStackService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStackService").finish_non_exhaustive()
    }
}

impl<S, ReqB, B1, B2> Service<Request<ReqB>> for ServerStackService<S>
where
    Calls<S>: Service<Request<ReqB>, Response = Response<B1>>,
    ProbeChain: Service<Request<ReqB>, Response = Response<B2>, Error = Infallible>,
{
    type Response = Response<Either<B1, B2>>;
    type Error = <Calls<S> as Service<Request<ReqB>>>::Error;
    type Future = StackFuture<
        <Calls<S> as Service<Request<ReqB>>>::Future,
        <ProbeChain as Service<Request<ReqB>>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        std::task::ready!(self.calls.poll_ready(cx))?;
        self.probes.poll_ready(cx).map_err(|never| match never {})
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.paths.find(req.uri().path()).is_some() {
            StackFuture::Probe {
                future: self.probes.call(req),
            }
        } else {
            StackFuture::Call {
                future: self.calls.call(req),
            }
        }
    }
}

pin_project! {
    /// The response future of [`ServerStackService`].
    #[project = StackProj]
    #[allow(missing_docs)] // `future`, the response of either
    pub enum StackFuture<F1, F2> {
        /// A request to the service.
        Call { #[pin] future: F1 },
        /// A health probe.
        Probe { #[pin] future: F2 },
    }
}

impl<F1, F2, B1, B2, E> Future for StackFuture<F1, F2>
where
    F1: Future<Output = Result<Response<B1>, E>>,
    F2: Future<Output = Result<Response<B2>, Infallible>>,
{
    type Output = Result<Response<Either<B1, B2>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            StackProj::Call { future } => future
                .poll(cx)
                .map(|res| res.map(|res| res.map(Either::Left))),
            StackProj::Probe { future } => future.poll(cx).map(|res| match res {
                Ok(res) => Ok(res.map(Either::Right)),
                Err(never) => match never {},
            }),
        }
    }
}
