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
        // One `Router::layer` call for the layers present: each call boxes
        // the route once more (a few allocations per request).
        let (limit, breaker, idempotency) = (&self.rate_limit, &self.breaker, &self.idempotency);
        let api = match (limit.clone(), breaker.clone(), idempotency.clone()) {
            (Some(l), Some(b), Some(i)) => {
                api.layer(ServiceBuilder::new().layer(l).layer(b).layer(i))
            }
            (Some(l), Some(b), None) => api.layer(ServiceBuilder::new().layer(l).layer(b)),
            (Some(l), None, Some(i)) => api.layer(ServiceBuilder::new().layer(l).layer(i)),
            (None, Some(b), Some(i)) => api.layer(ServiceBuilder::new().layer(b).layer(i)),
            (Some(l), None, None) => api.layer(l),
            (None, Some(b), None) => api.layer(b),
            (None, None, Some(i)) => api.layer(i),
            (None, None, None) => api,
        };
        let health = HealthRoutes::new(self.health.clone())
            .liveness_path(self.settings.livez.clone())
            .readiness_path(self.settings.readyz.clone())
            .startup_path(self.settings.startupz.clone())
            .router();
        let app = api.merge(health).merge(unlimited);
        // The request id's own span only without the trace span (which is
        // then the root and records the id).
        let request_id = self
            .request_id
            .clone()
            .map(|l| l.span(self.trace.is_none()));
        match (request_id, self.trace, self.metrics.clone()) {
            (Some(r), Some(t), Some(m)) => {
                app.layer(ServiceBuilder::new().layer(r).layer(t).layer(m))
            }
            (Some(r), Some(t), None) => app.layer(ServiceBuilder::new().layer(r).layer(t)),
            (Some(r), None, Some(m)) => app.layer(ServiceBuilder::new().layer(r).layer(m)),
            (None, Some(t), Some(m)) => app.layer(ServiceBuilder::new().layer(t).layer(m)),
            (Some(r), None, None) => app.layer(r),
            (None, Some(t), None) => app.layer(t),
            (None, None, Some(m)) => app.layer(m),
            (None, None, None) => app,
        }
    }
}
