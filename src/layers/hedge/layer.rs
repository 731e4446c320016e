//! `HedgeLayer`: configuration.

use std::sync::Arc;

use tower::retry::budget::TpsBudget;
use tower_layer::Layer;

use super::config::HedgeConfig;
use super::service::{Hedge, Shared};
use crate::error::ConfigError;
use crate::events::Events;

/// Sends a second attempt of a slow request and takes whichever response
/// comes first.
///
/// Only requests of an idempotent method (GET, HEAD, OPTIONS, PUT,
/// DELETE, TRACE) are hedged: not gRPC calls nor POSTs, `Idempotency-Key`
/// or not (the server answers a keyed hedge with 409 for its own key
/// while the first attempt runs, and that 409 would win). Their
/// body, up to [`HedgeConfig::max_body`], is kept for the copy. Every
/// other request goes out once, as it is. The hedge leaves after the
/// configured [`HedgeDelay`](super::HedgeDelay) if the first attempt has
/// not answered, when the share of hedged requests and the retry budget
/// (if one is shared) allow; the first successful response wins, and the
/// other attempt is dropped (cancelled). If one attempt fails, the other
/// is awaited. The winning hedge's response carries
/// [`Hedged`](super::Hedged) in its extensions. Delays and latencies are
/// measured on tokio's clock, so paused time drives them in tests.
///
/// The service takes and sends [`LayerBody`](crate::body::LayerBody)
/// requests, as the [`RetryLayer`](crate::retry::RetryLayer) above it
/// hands them on; put it below the retry (each attempt may be hedged) and
/// above the per-attempt span, metrics and breaker, so each copy is
/// traced, measured and judged on its own.
///
/// ```
/// use std::time::Duration;
/// use battlement::hedge::{HedgeConfig, HedgeDelay, HedgeLayer};
/// use battlement::retry::{RetryLayer, RetryPolicy};
///
/// let retry = RetryLayer::new(RetryPolicy::default()).unwrap();
/// let hedge = HedgeLayer::new(HedgeConfig::default().delay(HedgeDelay::Fixed(Duration::from_millis(20))))
///     .unwrap()
///     .budget(retry.shared_budget());
/// ```
#[derive(Clone)]
pub struct HedgeLayer {
    config: HedgeConfig,
    budget: Option<Arc<TpsBudget>>,
    events: Events,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HedgeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("config", &self.config)
            .field("budget", &self.budget.is_some())
            .finish_non_exhaustive()
    }
}

impl HedgeLayer {
    /// A layer hedging per `config`, with no retry budget.
    pub fn new(config: HedgeConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let events = Events::new();
        let shared = Arc::new(Shared::new(config.clone(), None, events.clone()));
        Ok(Self {
            config,
            budget: None,
            events,
            shared,
        })
    }

    fn rebuild(mut self) -> Self {
        self.shared = Arc::new(Shared::new(
            self.config.clone(),
            self.budget.clone(),
            self.events.clone(),
        ));
        self
    }

    /// Every hedge also withdraws from `budget` (none is sent when it is
    /// empty); pass [`RetryLayer::shared_budget`](crate::retry::RetryLayer::shared_budget)
    /// so retries and hedges share one. This layer only withdraws: the
    /// layer that owns the budget deposits for every request.
    pub fn budget(mut self, budget: Option<Arc<TpsBudget>>) -> Self {
        self.budget = budget;
        self.rebuild()
    }

    /// Reports hedges (`hedged`), hedges that won (`hedge_won`) and
    /// refusals (`max_fraction`, `budget_exhausted`) to `events`, layer
    /// `hedge`, the host as detail.
    pub fn events(mut self, events: Events) -> Self {
        self.events = events;
        self.rebuild()
    }
}

impl<S> Layer<S> for HedgeLayer {
    type Service = Hedge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge::new(inner, self.shared.clone())
    }
}
