//! `ServiceBuilderExt`: battlement's layers on a `tower::ServiceBuilder`.

use tower::ServiceBuilder;
use tower_layer::Stack;

use crate::circuit_breaker::CircuitBreakerLayer;
use crate::concurrency_limit::ConcurrencyLimitLayer;
use crate::deadline::DeadlineLayer;
use crate::hedge::HedgeLayer;
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
/// use std::time::Duration;
/// use battlement::backends::MemoryStore;
/// use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerLayer};
/// use battlement::concurrency_limit::ConcurrencyLimitLayer;
/// use battlement::deadline::DeadlineLayer;
/// use battlement::idempotency::IdempotencyLayer;
/// use battlement::rate_limit::{Policy, Quota, RateLimitLayer};
/// use battlement::stack::ServiceBuilderExt;
/// use tower::ServiceBuilder;
///
/// let store = MemoryStore::new();
/// let limit = RateLimitLayer::new(store.clone())
///     .policy(Policy::new("global", Quota::per_second(100).unwrap()).unwrap());
/// let breaker = CircuitBreakerLayer::new("server", store.clone(), BreakerConfig::default()).unwrap();
/// let svc = ServiceBuilder::new()
///     .with_request_id()
///     .with_server_trace()
///     .with_server_metrics()
///     .with_concurrency_limit(ConcurrencyLimitLayer::fixed(64).unwrap())
///     .with_deadline(DeadlineLayer::new(Duration::from_secs(10)).unwrap())
///     .with_rate_limit(limit)
///     .with_circuit_breaker(breaker)
///     .with_idempotency(IdempotencyLayer::new(store))
///     .service_fn(|_: http::Request<String>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
///     });
/// # drop(svc);
/// ```
///
/// tower-http has a `ServiceBuilderExt` too. Both traits can be in scope
/// at once, imported as `_` (their methods do not clash):
///
/// ```
/// use battlement::stack::ServiceBuilderExt as _;
/// use tower_http::ServiceBuilderExt as _;
///
/// let builder = tower::ServiceBuilder::new()
///     .with_request_id()           // battlement
///     .propagate_x_request_id();   // tower-http
/// # let _ = builder;
/// ```
///
/// On the client side, [`with_retry`](Self::with_retry) then
/// [`with_hedge`](Self::with_hedge) (each attempt may be hedged), as
/// [`ClientStack`](crate::client::ClientStack) assembles them.
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
    /// A concurrency limit: after the metrics, so a shed request is
    /// counted, and before every other refusal, since shedding costs a
    /// compare-and-swap and no store call.
    fn with_concurrency_limit(
        self,
        layer: ConcurrencyLimitLayer,
    ) -> ServiceBuilder<Stack<ConcurrencyLimitLayer, L>>;
    /// The server deadline: inside the concurrency limit, whose slot a
    /// request cut at its deadline gives back then, once no idempotent
    /// handler runs on for it (and whose adaptive limit sees that latency), and around the rate limit and everything
    /// after it, whose store calls count against the request's time.
    fn with_deadline(self, layer: DeadlineLayer) -> ServiceBuilder<Stack<DeadlineLayer, L>>;
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
    /// Hedged attempts (client side): below the retry, above the
    /// per-attempt trace, metrics and breaker.
    fn with_hedge(self, layer: HedgeLayer) -> ServiceBuilder<Stack<HedgeLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn with_request_id(self) -> ServiceBuilder<Stack<RequestIdLayer, L>> {
        self.layer(RequestIdLayer::new())
    }

    fn with_server_trace(self) -> ServiceBuilder<Stack<TraceLayer, L>> {
        self.layer(TraceLayer::server())
    }

    fn with_server_metrics(self) -> ServiceBuilder<Stack<MetricsLayer, L>> {
        self.layer(MetricsLayer::server())
    }

    fn with_concurrency_limit(
        self,
        layer: ConcurrencyLimitLayer,
    ) -> ServiceBuilder<Stack<ConcurrencyLimitLayer, L>> {
        self.layer(layer)
    }

    fn with_deadline(self, layer: DeadlineLayer) -> ServiceBuilder<Stack<DeadlineLayer, L>> {
        self.layer(layer)
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

    fn with_hedge(self, layer: HedgeLayer) -> ServiceBuilder<Stack<HedgeLayer, L>> {
        self.layer(layer)
    }
}
