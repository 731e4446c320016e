//! The axum form of the server preset.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::middleware::AddExtension;
use http::Response;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_layer::Layer;
use tower_service::Service;

use super::optional::Optional;
use super::server::ServerStack;
use crate::health::HealthRoutes;

/// What [`serve`] returns: axum's server for `app`, with connect info.
/// Await it, or chain `.with_graceful_shutdown(..)`.
pub type Served = axum::serve::Serve<
    TcpListener,
    IntoMakeServiceWithConnectInfo<Router, SocketAddr>,
    AddExtension<Router, ConnectInfo<SocketAddr>>,
>;

/// Serves `app` on `listener` with connect info on, which the per-client
/// rate limits and the idempotency scopes read: served without it
/// (`axum::serve(listener, app)`), every request keyed by the client's
/// address gets 500. See [`ServerStack::serve`] for the preset's drain.
///
/// ```no_run
/// # async fn run(app: axum::Router) -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// battlement::stack::serve(listener, app).await
/// # }
/// ```
pub fn serve(listener: TcpListener, app: Router) -> Served {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
}

impl ServerStack {
    /// Serves `app` (from [`router`](Self::router) or
    /// [`router_with`](Self::router_with)) on `listener`, with connect
    /// info on (see [`serve`]), until SIGINT or SIGTERM: readiness then
    /// fails at once, the listener closes `grace` later (time for load
    /// balancers to see it), and requests in flight finish.
    ///
    /// ```no_run
    /// # async fn run(stack: battlement::stack::ServerStack, api: axum::Router) -> std::io::Result<()> {
    /// use std::time::Duration;
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// stack.serve(listener, stack.router(api), Duration::from_secs(5)).await
    /// # }
    /// ```
    pub async fn serve(
        &self,
        listener: TcpListener,
        app: Router,
        grace: Duration,
    ) -> std::io::Result<()> {
        serve(listener, app)
            .with_graceful_shutdown(self.health.clone().shutdown_on_signal(grace))
            .await
    }

    /// `api` behind the whole stack, with the health routes merged in.
    pub fn router(&self, api: Router) -> Router {
        self.router_with(api, Router::new())
    }

    /// `api` behind the whole stack; the health routes and `unlimited`
    /// (e.g. the Prometheus `/metrics` router) only behind the request id,
    /// trace and metrics layers: probes and scrapes are never shed, timed
    /// out or rate limited, and are neither traced nor counted unless the
    /// config's `trace_probes` / `count_probes` say so.
    pub fn router_with(&self, api: Router, unlimited: Router) -> Router {
        // One `Router::layer` call per group of routes: each call boxes the
        // routes once more, and each box costs allocations per request.
        let outer = ServiceBuilder::new()
            .layer(Optional(self.shape.clone()))
            .layer(Optional(self.request_id.clone()))
            .layer(Optional(self.trace.clone()))
            .layer(Optional(self.metrics.clone()));
        // A group with every layer off is left unboxed.
        let outer_on = self.shape.is_some()
            || self.request_id.is_some()
            || self.trace.is_some()
            || self.metrics.is_some();
        let api_on = outer_on
            || self.concurrency_limit.is_some()
            || self.deadline.is_some()
            || self.rate_limit.is_some()
            || self.breaker.is_some()
            || self.idempotency.is_some();
        let api = if api_on {
            api.layer(
                outer
                    .clone()
                    .layer(BoxInner)
                    .layer(Optional(self.concurrency_limit.clone()))
                    .layer(Optional(self.deadline.clone()))
                    .layer(Optional(self.rate_limit.clone()))
                    .layer(Optional(self.breaker.clone()))
                    .layer(Optional(self.idempotency.clone())),
            )
        } else {
            api
        };
        let health = HealthRoutes::new(self.health.clone())
            .liveness_path(self.settings.livez.clone())
            .readiness_path(self.settings.readyz.clone())
            .startup_path(self.settings.startupz.clone())
            .router()
            .merge(unlimited);
        api.merge(if outer_on {
            health.layer(outer)
        } else {
            health
        })
    }
}

/// Boxes the inner service's response future and body, once, between the
/// outer and inner groups of the preset: the layers above then move a
/// pointer, not the whole nested future and body, at each level.
#[derive(Debug, Clone, Copy)]
struct BoxInner;

impl<S> Layer<S> for BoxInner {
    type Service = BoxedInner<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BoxedInner(inner)
    }
}

/// The service of [`BoxInner`].
#[derive(Debug, Clone)]
struct BoxedInner<S>(S);

impl<S, Req, B> Service<Req> for BoxedInner<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::BoxError>,
{
    type Response = Response<axum::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let future = self.0.call(req);
        Box::pin(async move { future.await.map(|res| res.map(axum::body::Body::new)) })
    }
}
