//! The tonic form of the server preset.

use bytes::Bytes;
use http::{Request, Response};
use tonic::body::Body;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_layer::Layer;
use tower_service::Service;

use super::optional::Optional;
use super::server::ServerStack;
use crate::BoxError;
use crate::backends::AnyStore;
use crate::body::LayerBody;
use crate::circuit_breaker::CircuitBreakerLayer;
use crate::concurrency_limit::ConcurrencyLimitLayer;
use crate::deadline::DeadlineLayer;
use crate::idempotency::IdempotencyLayer;
use crate::metrics::MetricsLayer;
use crate::rate_limit::RateLimitLayer;
use crate::request_id::RequestIdLayer;
use crate::trace::TraceLayer;

/// A gRPC service behind the preset, its types erased (the preset's
/// layers are each optional).
pub type GrpcService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// The server preset for a tonic `Server` (`Server::builder().layer(..)`):
/// the same layers in the same order as [`ServerStack::router`], with
/// `grpc.health.v1.Health` under the request id, trace and metrics only.
#[derive(Clone, Debug)]
pub struct GrpcStackLayer {
    request_id: Option<RequestIdLayer>,
    trace: Option<TraceLayer>,
    metrics: Option<MetricsLayer>,
    concurrency_limit: Option<ConcurrencyLimitLayer>,
    deadline: Option<DeadlineLayer>,
    rate_limit: Option<RateLimitLayer<AnyStore>>,
    breaker: Option<CircuitBreakerLayer>,
    idempotency: Option<IdempotencyLayer<AnyStore>>,
}

impl ServerStack {
    /// The preset as one layer for tonic's `Server::builder().layer(..)`.
    pub fn grpc_layer(&self) -> GrpcStackLayer {
        GrpcStackLayer {
            request_id: self.request_id.clone(),
            trace: self.trace.clone(),
            metrics: self.metrics.clone(),
            concurrency_limit: self.concurrency_limit.clone(),
            deadline: self.deadline.clone(),
            rate_limit: self.rate_limit.clone(),
            breaker: self.breaker.clone(),
            idempotency: self.idempotency.clone(),
        }
    }
}

/// Erases `svc`'s types.
fn boxed<S, B>(svc: S) -> GrpcService
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        svc.map_response(|res| res.map(Body::new))
            .map_err(Into::into),
    )
}

/// The gRPC health service's path prefix: its calls are probes.
const HEALTH: &str = "/grpc.health.v1.Health/";

/// The service of [`GrpcStackLayer`]: `grpc.health.v1.Health` calls pass
/// the request id, trace and metrics layers only (probes are never rate
/// limited or shed); every other call passes the whole preset.
#[derive(Clone)]
pub struct GrpcStackService {
    probes: GrpcService,
    calls: GrpcService,
}

impl std::fmt::Debug for GrpcStackService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcStackService").finish_non_exhaustive()
    }
}

impl Service<Request<Body>> for GrpcStackService {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = <GrpcService as Service<Request<Body>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::ready!(self.calls.poll_ready(cx))?;
        self.probes.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        match req.uri().path().starts_with(HEALTH) {
            true => self.probes.call(req),
            false => self.calls.call(req),
        }
    }
}

impl<S, B> Layer<S> for GrpcStackLayer
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Service = GrpcStackService;

    fn layer(&self, inner: S) -> GrpcStackService {
        // Two typed stacks, each boxed once.
        let inner = boxed(inner);
        let outer = ServiceBuilder::new()
            .layer(Optional(self.request_id.clone()))
            .layer(Optional(self.trace.clone()))
            .layer(Optional(self.metrics.clone()));
        let probes = boxed(outer.clone().service(inner.clone()));
        let calls = outer
            .layer(Optional(self.concurrency_limit.clone()))
            .layer(Optional(self.deadline.clone()))
            .layer(Optional(self.rate_limit.clone()))
            .layer(Optional(self.breaker.clone()))
            .layer(Optional(self.idempotency.clone().map(|idempotency| {
                // It hands the body on as a LayerBody (what it read, then
                // the rest).
                ServiceBuilder::new()
                    .layer(idempotency)
                    .map_request(|req: Request<LayerBody<Body>>| req.map(Body::new))
            })))
            .service(inner);
        GrpcStackService {
            probes,
            calls: boxed(calls),
        }
    }
}
