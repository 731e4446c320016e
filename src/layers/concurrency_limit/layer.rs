//! `ConcurrencyLimitLayer`: configuration, and a handle to read the limit.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use tower_layer::Layer;

use super::config::ConcurrencyLimitConfig;
use super::gauge::observed;
use super::limit::Limiter;
use super::priority::{Classifier, Priority, default_priority};
use super::service::ConcurrencyLimit;
use crate::clock::{SharedClock, SystemClock};
use crate::error::ConfigError;
use crate::events::Events;

/// Limits how many requests are in flight in the inner service, and
/// rejects the rest at once instead of queueing them.
///
/// The limit is fixed or adaptive (see the [module docs](super)); every
/// service the layer makes shares it. A request holds its slot from
/// admission until its response body ends (or is dropped). A shed request
/// gets a 503 with `Retry-After` and a problem+json body, or a
/// trailers-only `RESOURCE_EXHAUSTED` for gRPC; the inner service is not
/// called. Sheds and limit changes are reported as `concurrency_limit`
/// events (`shed_batch`, `shed_normal`, `shed_critical`,
/// `limit_increased`, `limit_decreased`, `min_rtt_probe`,
/// `min_rtt_measured`).
///
/// ```
/// use battlement::concurrency_limit::{ConcurrencyLimitLayer, Priority};
///
/// let layer = ConcurrencyLimitLayer::fixed(100)
///     .unwrap()
///     .classify(|parts: &http::request::Parts| {
///         if parts.uri.path().starts_with("/reports") { Priority::Batch } else { Priority::Normal }
///     });
/// let handle = layer.handle();
/// assert_eq!((handle.limit(), handle.in_flight()), (100, 0));
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    config: ConcurrencyLimitConfig,
    limiter: Arc<Limiter>,
    classify: Classifier,
    clock: SharedClock,
    events: Events,
}

impl ConcurrencyLimitLayer {
    /// A layer from a configuration, validated.
    pub fn from_config(config: &ConcurrencyLimitConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let clock = SystemClock::shared();
        let events = Events::new();
        Ok(Self {
            limiter: observed(Limiter::new(config, clock.clone(), events.clone())),
            config: config.clone(),
            classify: Arc::new(default_priority),
            clock,
            events,
        })
    }

    /// At most `limit` requests in flight, with the default shares.
    pub fn fixed(limit: u32) -> Result<Self, ConfigError> {
        Self::from_config(&ConcurrencyLimitConfig::fixed(limit))
    }

    /// An adaptive limit with the default shares.
    pub fn adaptive(gradient: super::GradientConfig) -> Result<Self, ConfigError> {
        Self::from_config(&ConcurrencyLimitConfig::adaptive(gradient))
    }

    /// Sets the classifier (default [`default_priority`]: health probes
    /// are critical, the rest normal).
    pub fn classify<F>(mut self, classify: F) -> Self
    where
        F: Fn(&Parts) -> Priority + Send + Sync + 'static,
    {
        self.classify = Arc::new(classify);
        self
    }

    /// Reports sheds and limit changes to `events` (share one stream
    /// between layers). Starts a new limit.
    pub fn events(mut self, events: Events) -> Self {
        self.events = events;
        self.rebuild()
    }

    /// Takes time from `clock` (default the system clock). Starts a new
    /// limit.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self.rebuild()
    }

    /// The event stream sheds are reported to.
    pub fn event_stream(&self) -> &Events {
        &self.events
    }

    /// Reads the limit and the number of requests in flight.
    pub fn handle(&self) -> ConcurrencyLimitHandle {
        ConcurrencyLimitHandle {
            limiter: self.limiter.clone(),
        }
    }

    fn rebuild(mut self) -> Self {
        self.limiter = observed(Limiter::new(
            &self.config,
            self.clock.clone(),
            self.events.clone(),
        ));
        self
    }
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("config", &self.config)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit::new(inner, self.limiter.clone(), self.classify.clone())
    }
}

/// Reads a layer's current limit and in-flight count.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimitHandle {
    limiter: Arc<Limiter>,
}

impl ConcurrencyLimitHandle {
    /// The limit in force (the minimum limit while the minimum latency is
    /// measured).
    pub fn limit(&self) -> usize {
        self.limiter.limit()
    }

    /// How many admitted requests have not finished yet.
    pub fn in_flight(&self) -> usize {
        self.limiter.in_flight()
    }
}
