//! The axum form of the server preset.

use axum::Router;
use tower::ServiceBuilder;

use super::optional::Optional;
use super::server::ServerStack;
use crate::health::HealthRoutes;

impl ServerStack {
    /// `api` behind the whole stack, with the health routes merged in.
    pub fn router(&self, api: Router) -> Router {
        self.router_with(api, Router::new())
    }

    /// `api` behind the whole stack; the health routes and `unlimited`
    /// (e.g. the Prometheus `/metrics` router) only behind the request id,
    /// trace and metrics layers: probes and scrapes are never shed, timed
    /// out or rate limited.
    pub fn router_with(&self, api: Router, unlimited: Router) -> Router {
        // One `Router::layer` call per group of routes: each call boxes the
        // routes once more, and each box costs allocations per request.
        let outer = ServiceBuilder::new()
            .layer(Optional(self.request_id.clone()))
            .layer(Optional(self.trace.clone()))
            .layer(Optional(self.metrics.clone()));
        // A group with every layer off is left unboxed.
        let outer_on = self.request_id.is_some() || self.trace.is_some() || self.metrics.is_some();
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
