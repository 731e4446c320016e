//! `RetryLayer`: configuration.

use std::sync::Arc;

use tower::retry::budget::TpsBudget;
use tower_layer::Layer;

use super::policy::RetryPolicy;
use super::service::{Retry, Shared};
use crate::clock::{SharedClock, SystemClock};
use crate::error::ConfigError;
use crate::events::Events;

/// Retries failed requests per a [`RetryPolicy`].
///
/// Only safe requests are retried (idempotent methods, an
/// `Idempotency-Key`, or gRPC); their bodies are read up to the replay
/// limit first and every attempt gets a copy, while larger bodies are sent
/// once, whole. Retryable: any transport error or timeout, the policy's
/// statuses and gRPC codes (from a trailers-only response). `Retry-After`
/// (seconds or date) and `grpc-retry-pushback-ms` replace the back-off;
/// a hint past the deadline returns the response at once. A breaker's
/// [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) or a client
/// [`RateLimited`](crate::rate_limit::RateLimited) error below this layer
/// counts as a hint too. The response carries [`Attempts`](super::Attempts)
/// in its extensions; errors are `BoxError`.
///
/// A request with an `Idempotency-Key` that meets 409 (gRPC `ABORTED`)
/// with a `Retry-After` is asked again after the hint, within the
/// deadline, until the server replays the stored response: the key's
/// first request, perhaps this call's own attempt that timed out here, is
/// still running there, at least 100 ms apart. These sends spend neither
/// `max_attempts` nor the budget (the response's
/// [`Attempts`](super::Attempts) counts every send), and stop after 60,
/// or at a hint over 5 minutes.
///
/// ```
/// use std::time::Duration;
/// use battlement::retry::{RetryLayer, RetryPolicy};
///
/// let layer = RetryLayer::new(RetryPolicy::default().per_try_timeout(Duration::from_secs(2)))
///     .unwrap();
/// ```
#[derive(Clone)]
pub struct RetryLayer {
    policy: RetryPolicy,
    clock: SharedClock,
    events: Events,
    seed: Option<u64>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// A layer retrying per `policy`.
    pub fn new(policy: RetryPolicy) -> Result<Self, ConfigError> {
        policy.validate()?;
        let (clock, events) = (SystemClock::shared(), Events::new());
        let shared = Self::shared(&policy, &clock, &events, None);
        Ok(Self {
            policy,
            clock,
            events,
            seed: None,
            shared,
        })
    }

    fn shared(
        policy: &RetryPolicy,
        clock: &SharedClock,
        events: &Events,
        seed: Option<u64>,
    ) -> Arc<Shared> {
        let budget = policy
            .budget
            .map(|b| Arc::new(TpsBudget::new(b.window, b.min_per_sec, b.percent / 100.0)));
        Arc::new(Shared {
            policy: policy.clone(),
            budget,
            clock: clock.clone(),
            events: events.clone(),
            seed,
        })
    }

    fn rebuild(mut self) -> Self {
        self.shared = Self::shared(&self.policy, &self.clock, &self.events, self.seed);
        self
    }

    /// Waits and measures the deadline on `clock`; with a
    /// [`ManualClock`](crate::clock::ManualClock) back-offs take no real
    /// time (tests).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self.rebuild()
    }

    /// Reports retries, exhausted attempts and budget refusals to
    /// `events`.
    pub fn events(mut self, events: Events) -> Self {
        self.events = events;
        self.rebuild()
    }

    /// The retry budget every clone of this layer's services draws from
    /// (`None` when the policy has none): hand it to a
    /// [`HedgeLayer`](crate::hedge::HedgeLayer) below this one so hedges
    /// count against the same budget. Configuring the layer again
    /// (`clock`, `events`, `seed`) starts a new budget.
    pub fn shared_budget(&self) -> Option<Arc<TpsBudget>> {
        self.shared.budget.clone()
    }

    /// Draws the jitter of every request from a generator seeded with
    /// `seed` (reproducible delays in tests).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self.rebuild()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.shared.clone())
    }
}
