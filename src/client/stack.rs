//! `ClientStack`: one value that builds the client layers in order.

use std::task::{Context, Poll};

use futures_util::TryFutureExt;
use tower_service::Service;

use tower::util::Either;
use tower_layer::Layer;

use crate::BoxError;
use crate::circuit_breaker::{
    BreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitBreakerStore,
    ClientCircuitBreaker, ClientCircuitBreakerLayer,
};
use crate::clock::SharedClock;
use crate::deadline::{ForwardDeadline, ForwardDeadlineLayer};
use crate::error::ConfigError;
use crate::events::Events;
use crate::hedge::{Hedge, HedgeConfig, HedgeLayer};
use crate::idempotency::{IdempotencyKeyLayer, SetIdempotencyKey};
use crate::key::HostKey;
use crate::metrics::{Metrics, MetricsLayer};
use crate::rate_limit::{
    ClientRateLimit, ClientRateLimitLayer, Policy, RateLimitLayer, RateLimitStore,
};
use crate::request_id::{ForwardRequestId, ForwardRequestIdLayer};
use crate::retry::{Retry, RetryLayer, RetryPolicy};
use crate::trace::{Trace, TraceLayer};

/// Builds a [`ClientStackLayer`]: request-id forwarding, retry, a
/// circuit breaker per upstream host, and optionally an
/// `Idempotency-Key` per request, hedging and a client rate limit.
///
/// The breaker starts from [`BreakerConfig::default`], whose defaults are
/// made for a breaker per upstream host.
pub struct ClientStack<St> {
    name: String,
    store: St,
    retry: RetryPolicy,
    breaker: BreakerConfig,
    rate_limit: Option<Policy>,
    hedge: Option<HedgeConfig>,
    idempotency_keys: bool,
    events: Events,
    clock: Option<SharedClock>,
}

impl<St: CircuitBreakerStore + RateLimitStore> ClientStack<St> {
    /// A stack named `name` (its breaker's and rate limit's name) keeping
    /// breaker and rate-limit state in `store`.
    pub fn new(name: impl Into<String>, store: St) -> Self {
        Self {
            name: name.into(),
            store,
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
            rate_limit: None,
            hedge: None,
            idempotency_keys: false,
            events: Events::new(),
            clock: None,
        }
    }

    /// The retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The breaker thresholds (default [`BreakerConfig::default`]).
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = config;
        self
    }

    /// Limits outbound calls with `policy` (client mode: over the quota is
    /// a `RateLimited` error, which the retry waits out when it can).
    pub fn rate_limit(mut self, policy: Policy) -> Self {
        self.rate_limit = Some(policy);
        self
    }

    /// Hedges slow attempts per `config` (off by default): each attempt
    /// of the retry may get a second copy, with its own span, metrics and
    /// breaker call. Hedges draw on the retry's budget, when the policy
    /// has one.
    pub fn hedge(mut self, config: HedgeConfig) -> Self {
        self.hedge = Some(config);
        self
    }

    /// Gives each request that is not idempotent (POST, PATCH, ...) and
    /// has no `Idempotency-Key` a new one (a UUIDv7), outside the retry
    /// and hedge, so all its attempts carry the same key (off by
    /// default). The retry then sends it again like a GET, and a server
    /// that honours the key runs it once: on a lost response, the retry
    /// gets the stored response instead of a second execution. Turn it
    /// on for upstreams that honour the header (battlement's
    /// [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer), Stripe-style
    /// APIs); to one that ignores it, a keyed POST is retried as if it
    /// were safe. See [`IdempotencyKeyLayer`].
    pub fn idempotency_keys(mut self, on: bool) -> Self {
        self.idempotency_keys = on;
        self
    }

    /// Reports every layer's decisions to `events`.
    pub fn events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// Times back-offs and the breaker on `clock` (tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Validates everything and builds the layer.
    pub fn build(self) -> Result<ClientStackLayer<St>, ConfigError> {
        let mut retry = RetryLayer::new(self.retry)?.events(self.events.clone());
        let mut breaker =
            CircuitBreakerLayer::builder(&self.name, self.store.clone(), self.breaker)
                .events(self.events.clone());
        if let Some(clock) = self.clock {
            retry = retry.clock(clock.clone());
            breaker = breaker.clock(clock);
        }
        let breaker = breaker.build()?.key(HostKey);
        // After the retry's last rebuild, so both use the same budget.
        let hedge = match self.hedge {
            Some(config) => Some(
                HedgeLayer::new(config)?
                    .events(self.events.clone())
                    .budget(retry.shared_budget()),
            ),
            None => None,
        };
        let rate_limit = self.rate_limit.map(|policy| {
            RateLimitLayer::new(self.store)
                .policy(policy)
                .events(self.events)
                .client_mode()
        });
        let keys = match self.idempotency_keys {
            true => IdempotencyKeyLayer::new(),
            false => IdempotencyKeyLayer::off(),
        };
        Ok(ClientStackLayer {
            forward: ForwardRequestIdLayer::new(),
            keys,
            retry,
            hedge,
            trace: TraceLayer::client(),
            metrics: MetricsLayer::client(),
            breaker: breaker.client_mode(),
            rate_limit,
        })
    }
}

/// The client layers, outermost first: [`ForwardRequestIdLayer`],
/// [`IdempotencyKeyLayer`] when turned on (one key for all attempts),
/// [`RetryLayer`] (bounded by the inbound request's deadline, if any),
/// [`HedgeLayer`] when configured (a second copy of a slow attempt),
/// then per attempt (and per copy) [`ForwardDeadlineLayer`] (the inbound deadline's time
/// left as `grpc-timeout` on gRPC calls without one), a client span ([`TraceLayer`], its
/// context injected into the request) and `http.client.request.duration`
/// ([`MetricsLayer`]), [`CircuitBreakerLayer`] (client mode, per host),
/// and a client-mode rate limit when configured.
pub struct ClientStackLayer<St> {
    forward: ForwardRequestIdLayer,
    keys: IdempotencyKeyLayer,
    retry: RetryLayer,
    hedge: Option<HedgeLayer>,
    trace: TraceLayer,
    metrics: MetricsLayer,
    breaker: ClientCircuitBreakerLayer,
    rate_limit: Option<ClientRateLimitLayer<St>>,
}

impl<St: Clone> Clone for ClientStackLayer<St> {
    fn clone(&self) -> Self {
        Self {
            forward: self.forward.clone(),
            keys: self.keys,
            retry: self.retry.clone(),
            hedge: self.hedge.clone(),
            trace: self.trace.clone(),
            metrics: self.metrics.clone(),
            breaker: self.breaker.clone(),
            rate_limit: self.rate_limit.clone(),
        }
    }
}

impl<St> std::fmt::Debug for ClientStackLayer<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStackLayer")
            .field("retry", &self.retry)
            .field("hedge", &self.hedge)
            .field("breaker", &self.breaker)
            .field("rate_limit", &self.rate_limit.is_some())
            .finish()
    }
}

impl<St> ClientStackLayer<St> {
    /// The breakers' handle (state per host, force open, reset).
    pub fn breakers(&self) -> CircuitBreakerHandle {
        self.breaker.handle()
    }
}

/// The response body of a [`ClientStackService`] over a transport whose
/// responses have body `B`.
pub type ClientBody<B> = crate::trace::TracedBody<
    crate::metrics::MeteredBody<crate::circuit_breaker::ClassifiedBody<B>>,
>;

/// The service a [`ClientStackLayer`] makes over `S`.
pub type ClientStackService<S, St> = ForwardRequestId<
    SetIdempotencyKey<
        Retry<
            Either<
                Hedge<
                    ForwardDeadline<
                        Trace<
                            Metrics<
                                ClientCircuitBreaker<Either<ClientRateLimit<S, St>, BoxErrors<S>>>,
                            >,
                        >,
                    >,
                >,
                ForwardDeadline<
                    Trace<
                        Metrics<ClientCircuitBreaker<Either<ClientRateLimit<S, St>, BoxErrors<S>>>>,
                    >,
                >,
            >,
        >,
    >,
>;

/// `S` with its errors boxed (the transport under the stack when no rate
/// limit is configured).
#[derive(Debug, Clone)]
pub struct BoxErrors<S>(S);

impl<S, R> Service<R> for BoxErrors<S>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures_util::future::MapErr<S::Future, fn(S::Error) -> BoxError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: R) -> Self::Future {
        self.0.call(req).map_err(Into::into)
    }
}

impl<S, St: RateLimitStore> Layer<S> for ClientStackLayer<St> {
    type Service = ClientStackService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        let limited = match &self.rate_limit {
            Some(layer) => Either::Left(layer.layer(inner)),
            None => Either::Right(BoxErrors(inner)),
        };
        let attempt = ForwardDeadlineLayer.layer(
            self.trace
                .layer(self.metrics.layer(self.breaker.layer(limited))),
        );
        let attempt = match &self.hedge {
            Some(hedge) => Either::Left(hedge.layer(attempt)),
            None => Either::Right(attempt),
        };
        self.forward
            .layer(self.keys.layer(self.retry.layer(attempt)))
    }
}
