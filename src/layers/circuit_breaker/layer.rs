//! `CircuitBreakerLayer`: configuration, the client-mode layer and the
//! operator handle.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::classify::{ClassifyResponse, DefaultClassifier};
use super::config::BreakerConfig;
use super::error::CircuitOpen;
use super::registry::{Parts, Permit, Registry};
use super::service::{CircuitBreaker, ClientCircuitBreaker, Shared};
use super::state::State;
use super::store::CircuitBreakerStore;
use crate::clock::{SharedClock, SystemClock};
use crate::error::ConfigError;
use crate::events::Events;
use crate::key::{GlobalKey, Key, KeyExtractor};

/// How often instances read each other's breaker states from the store.
pub const DEFAULT_SYNC_EVERY: Duration = Duration::from_millis(250);

/// How long a breaker may go unused before it is evicted.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(600);

/// The default cap on the number of breakers of one layer.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// Stops calls to a failing dependency.
///
/// One breaker per key (by default one for everything; [`HostKey`] gives
/// one per upstream host). A closed breaker counts outcomes in its window
/// and opens when the failure or slow-call rate reaches its threshold; an
/// open one rejects without calling the inner service (503
/// `application/problem+json` or gRPC `UNAVAILABLE`, with `Retry-After`
/// the open time left); after the open time, half-open admits a fixed
/// number of probes that decide whether it closes or re-opens. Instances
/// sharing a store share their breakers' states: a trip on one opens the
/// breaker everywhere within
/// [`sync_every`](CircuitBreakerBuilder::sync_every), and a closed
/// breaker makes no store call per request.
///
/// [`HostKey`]: crate::key::HostKey
///
/// ```
/// use std::time::Duration;
/// use battlement::backends::MemoryStore;
/// use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerLayer};
/// use battlement::key::HostKey;
///
/// let layer = CircuitBreakerLayer::new(
///     "upstream",
///     MemoryStore::new(),
///     BreakerConfig::default().minimum_calls(10).open_for(Duration::from_secs(5)),
/// )
/// .unwrap()
/// .key(HostKey);
/// let handle = layer.handle();
/// handle.force_open("api.example.com");
/// ```
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    shared: Shared,
}

impl fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.shared.registry.name)
            .field("config", &self.shared.registry.config())
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A breaker named `name` (its metric and event label, and its key
    /// prefix in the store) with `config`, sharing state through `store`;
    /// [`builder`](Self::builder) with the defaults.
    pub fn new<St: CircuitBreakerStore>(
        name: &str,
        store: St,
        config: BreakerConfig,
    ) -> Result<Self, ConfigError> {
        Self::builder(name, store, config).build()
    }

    /// The same, with the settings that shape the breakers themselves
    /// (clock, events, sync interval, eviction, key cap) still to set.
    ///
    /// ```
    /// use std::time::Duration;
    /// use battlement::backends::MemoryStore;
    /// use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerLayer};
    /// use battlement::events::Events;
    ///
    /// let events = Events::new();
    /// let layer = CircuitBreakerLayer::builder("upstream", MemoryStore::new(), BreakerConfig::default())
    ///     .events(events.clone())
    ///     .sync_every(Duration::from_millis(100))
    ///     .max_keys(1_000)
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn builder<St: CircuitBreakerStore>(
        name: &str,
        store: St,
        config: BreakerConfig,
    ) -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            parts: Parts {
                name: name.into(),
                config,
                store: Arc::new(store),
                clock: SystemClock::shared(),
                events: Events::new(),
                sync_every: DEFAULT_SYNC_EVERY,
                idle: DEFAULT_IDLE,
                max_keys: DEFAULT_MAX_KEYS,
            },
        }
    }

    /// Keeps one breaker per key; default: one for all calls.
    pub fn key(mut self, key: impl KeyExtractor) -> Self {
        self.shared.key = Arc::new(key);
        self
    }

    /// Classifies outcomes with `classifier`.
    pub fn classifier(mut self, classifier: impl ClassifyResponse) -> Self {
        self.shared.classifier = Arc::new(classifier);
        self
    }

    /// Client mode: rejections are [`CircuitOpen`] errors.
    pub fn client_mode(self) -> ClientCircuitBreakerLayer {
        ClientCircuitBreakerLayer {
            shared: self.shared,
        }
    }

    /// A handle to read and steer this layer's breakers, the same ones
    /// every service of the layer (and of its clones) uses.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            registry: self.shared.registry.clone(),
        }
    }
}

/// Builds a [`CircuitBreakerLayer`] (see
/// [`CircuitBreakerLayer::builder`]). The breakers are made once, by
/// [`build`](Self::build), so every handle and service of the layer share
/// them.
pub struct CircuitBreakerBuilder {
    parts: Parts,
}

impl fmt::Debug for CircuitBreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("name", &self.parts.name)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerBuilder {
    /// Takes time from `clock` (tests use a `ManualClock`).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.parts.clock = clock;
        self
    }

    /// Reports outcomes, rejections and transitions to `events`.
    pub fn events(mut self, events: Events) -> Self {
        self.parts.events = events;
        self
    }

    /// How often other instances' states are read from the store (default
    /// 250 ms, at least 10 ms).
    pub fn sync_every(mut self, every: Duration) -> Self {
        self.parts.sync_every = every.max(Duration::from_millis(10));
        self
    }

    /// How long a breaker may go unused before it is evicted (never
    /// while open time is left; at least one second, and at least the
    /// time window, so no counted outcome is thrown away).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        // The registry applies the floors, with the window in force.
        self.parts.idle = idle;
        self
    }

    /// At most this many breakers (default 10,000); calls on further keys
    /// share one overflow breaker until idle ones are evicted, so a server
    /// keyed by a client-chosen value cannot grow without bound.
    pub fn max_keys(mut self, max: usize) -> Self {
        self.parts.max_keys = max.max(1);
        self
    }

    /// Validates the name and the config and makes the breakers.
    pub fn build(self) -> Result<CircuitBreakerLayer, ConfigError> {
        self.parts.config.validate()?;
        let name = &self.parts.name;
        if name.is_empty() || name.contains('/') {
            return Err(ConfigError::new(format!(
                "breaker name must be non-empty and without '/', got {name:?}"
            )));
        }
        Ok(CircuitBreakerLayer {
            shared: Shared {
                registry: super::gauge::observed(Registry::new(self.parts)),
                key: Arc::new(GlobalKey),
                classifier: Arc::new(DefaultClassifier),
            },
        })
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.shared.clone())
    }
}

/// [`CircuitBreakerLayer`] in client mode: the service error is `BoxError`
/// and a rejection is a [`CircuitOpen`].
#[derive(Clone)]
pub struct ClientCircuitBreakerLayer {
    shared: Shared,
}

impl ClientCircuitBreakerLayer {
    /// A handle to read and steer this layer's breakers.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            registry: self.shared.registry.clone(),
        }
    }
}

impl fmt::Debug for ClientCircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCircuitBreakerLayer")
            .field("name", &self.shared.registry.name)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ClientCircuitBreakerLayer {
    type Service = ClientCircuitBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientCircuitBreaker::new(inner, self.shared.clone())
    }
}

/// Reads and steers the breakers of one layer; also the way to guard any
/// call that is not an HTTP request ([`acquire`](Self::acquire)).
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerLayer, Outcome, State};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let config = BreakerConfig::default().consecutive_failures(2);
/// let breaker = CircuitBreakerLayer::new("db", MemoryStore::new(), config).unwrap().handle();
/// for _ in 0..2 {
///     let permit = breaker.acquire("primary").unwrap();
///     // ... the call fails:
///     permit.record(Outcome::Failure);
/// }
/// assert_eq!(breaker.state("primary"), State::Open);
/// let open = breaker.acquire("primary").unwrap_err();
/// assert!(open.retry_after().is_some());
/// # });
/// ```
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    registry: Arc<Registry>,
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("breaker", &self.registry.name)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerHandle {
    /// Admits one call on `key`'s breaker; record its outcome on the
    /// permit.
    pub fn acquire(&self, key: &str) -> Result<Permit, CircuitOpen> {
        self.registry.acquire(Key::new(key))
    }

    /// The state of `key`'s breaker (`Closed` when it has none).
    pub fn state(&self, key: &str) -> State {
        self.registry.state(key)
    }

    /// The open time left on `key`'s breaker, when open.
    pub fn open_remaining(&self, key: &str) -> Option<Duration> {
        self.registry.open_remaining(key)
    }

    /// Every live breaker's key and state.
    pub fn states(&self) -> Vec<(String, State)> {
        self.registry.states()
    }

    /// Number of live breakers (idle closed ones are evicted).
    pub fn len(&self) -> usize {
        self.registry.len()
    }

    /// Whether there is no live breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rejects every call on `key` until [`reset`](Self::reset); shared
    /// with the other instances through the store.
    pub fn force_open(&self, key: &str) {
        self.registry.force(key, State::ForcedOpen);
    }

    /// Lets every call on `key` through, counting nothing, until
    /// [`reset`](Self::reset); shared through the store.
    pub fn disable(&self, key: &str) {
        self.registry.force(key, State::Disabled);
    }

    /// Closes `key`'s breaker with an empty window; shared through the
    /// store.
    pub fn reset(&self, key: &str) {
        self.registry.force(key, State::Closed);
    }

    /// The breaker's name (its key under `circuit_breaker/` in a
    /// [`ConfigSource`](crate::reload::ConfigSource)).
    pub fn name(&self) -> &str {
        &self.registry.name
    }

    /// The thresholds in force.
    pub fn config(&self) -> BreakerConfig {
        self.registry.config()
    }

    /// Puts `config` in force for every key from the next call on, after
    /// the same validation as the constructor; states, open times and
    /// windows are kept (a window of another size starts empty). Calls
    /// read the config without a lock.
    pub fn set_config(&self, config: BreakerConfig) -> Result<(), ConfigError> {
        self.registry.set_config(config)
    }

    /// Runs one round of the background work now: reads the other
    /// instances' states, writes unwritten transitions, evicts idle
    /// breakers.
    pub async fn sync(&self) {
        self.registry.sync_all().await;
    }
}
