//! `ServiceBuilderExt`: battlement's layers on a `tower::ServiceBuilder`.

use tower::ServiceBuilder;
use tower_layer::Stack;

use crate::circuit_breaker::CircuitBreakerLayer;
use crate::idempotency::IdempotencyLayer;
use crate::metrics::MetricsLayer;
use crate::rate_limit::RateLimitLayer;
use crate::request_id::RequestIdLayer;
use crate::retry::RetryLayer;
use crate::trace::TraceLayer;

/// Adds battlement's layers to a hand-assembled `ServiceBuilder`, under
/// names that do not collide with tower's or tower-http's. Call them in
/// the order of the [module docs](super) (outermost first).
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::rate_limit::{Policy, Quota, RateLimitLayer};
/// use battlement::stack::ServiceBuilderExt;
/// use tower::ServiceBuilder;
///
/// let limit = RateLimitLayer::new(MemoryStore::new())
///     .policy(Policy::new("global", Quota::per_second(100).unwrap()).unwrap());
/// let svc = ServiceBuilder::new()
///     .with_request_id()
///     .with_server_trace()
///     .with_server_metrics()
///     .with_rate_limit(limit)
///     .service_fn(|_: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// # drop(svc);
/// ```
pub trait ServiceBuilderExt<L>: Sized {
    /// [`RequestIdLayer`] without its own span: put
    /// [`with_server_trace`](Self::with_server_trace) after it, whose span
    /// records the id (`.layer(RequestIdLayer::new())` for a stack with no
    /// trace layer).
    fn with_request_id(self) -> ServiceBuilder<Stack<RequestIdLayer, L>>;
    /// [`TraceLayer::server`].
    fn with_server_trace(self) -> ServiceBuilder<Stack<TraceLayer, L>>;
    /// [`MetricsLayer::server`].
    fn with_server_metrics(self) -> ServiceBuilder<Stack<MetricsLayer, L>>;
    /// A rate limiter.
    fn with_rate_limit<St>(
        self,
        layer: RateLimitLayer<St>,
    ) -> ServiceBuilder<Stack<RateLimitLayer<St>, L>>;
    /// A circuit breaker.
    fn with_circuit_breaker(
        self,
        layer: CircuitBreakerLayer,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>>;
    /// Idempotency keys.
    fn with_idempotency<St>(
        self,
        layer: IdempotencyLayer<St>,
    ) -> ServiceBuilder<Stack<IdempotencyLayer<St>, L>>;
    /// Retries (client side).
    fn with_retry(self, layer: RetryLayer) -> ServiceBuilder<Stack<RetryLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn with_request_id(self) -> ServiceBuilder<Stack<RequestIdLayer, L>> {
        self.layer(RequestIdLayer::new().span(false))
    }

    fn with_server_trace(self) -> ServiceBuilder<Stack<TraceLayer, L>> {
        self.layer(TraceLayer::server())
    }

    fn with_server_metrics(self) -> ServiceBuilder<Stack<MetricsLayer, L>> {
        self.layer(MetricsLayer::server())
    }

    fn with_rate_limit<St>(
        self,
        layer: RateLimitLayer<St>,
    ) -> ServiceBuilder<Stack<RateLimitLayer<St>, L>> {
        self.layer(layer)
    }

    fn with_circuit_breaker(
        self,
        layer: CircuitBreakerLayer,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>> {
        self.layer(layer)
    }

    fn with_idempotency<St>(
        self,
        layer: IdempotencyLayer<St>,
    ) -> ServiceBuilder<Stack<IdempotencyLayer<St>, L>> {
        self.layer(layer)
    }

    fn with_retry(self, layer: RetryLayer) -> ServiceBuilder<Stack<RetryLayer, L>> {
        self.layer(layer)
    }
}
