//! The axum form of the server preset.

use axum::Router;
use tower::ServiceBuilder;

use super::server::ServerStack;
use crate::health::HealthRoutes;

impl ServerStack {
    /// `api` behind the whole stack, with the health routes merged in.
    pub fn router(&self, api: Router) -> Router {
        self.router_with(api, Router::new())
    }

    /// `api` behind the whole stack; the health routes and `unlimited`
    /// (e.g. the Prometheus `/metrics` router) only behind the request id,
    /// trace and metrics layers: probes and scrapes are never rate limited
    /// nor shed by the breaker.
    pub fn router_with(&self, api: Router, unlimited: Router) -> Router {
        let mut api = api;
        // Router::layer wraps what is there: innermost first.
        if let Some(layer) = &self.idempotency {
            api = api.layer(layer.clone());
        }
        if let Some(layer) = &self.breaker {
            api = api.layer(layer.clone());
        }
        if let Some(layer) = &self.rate_limit {
            api = api.layer(layer.clone());
        }
        let health = HealthRoutes::new(self.health.clone())
            .liveness_path(self.settings.livez.clone())
            .readiness_path(self.settings.readyz.clone())
            .startup_path(self.settings.startupz.clone())
            .router();
        let app = api.merge(health).merge(unlimited);
        match (&self.request_id, &self.trace, &self.metrics) {
            // The usual case in one layer (one boxed service, not three).
            // The request id's own span is off: the trace span is the root
            // and records the id.
            (Some(request_id), Some(trace), Some(metrics)) => app.layer(
                ServiceBuilder::new()
                    .layer(request_id.clone().span(false))
                    .layer(*trace)
                    .layer(metrics.clone()),
            ),
            (request_id, trace, metrics) => {
                let mut app = app;
                if let Some(metrics) = metrics {
                    app = app.layer(metrics.clone());
                }
                if let Some(trace) = trace {
                    app = app.layer(*trace);
                }
                if let Some(request_id) = request_id {
                    app = app.layer(request_id.clone().span(trace.is_none()));
                }
                app
            }
        }
    }
}
