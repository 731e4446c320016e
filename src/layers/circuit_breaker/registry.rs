//! The keyed breakers of one layer and their synchronization with the
//! store.
//!
//! One background task per layer (started by the first call, ended when
//! the layer is dropped) polls the store for every live key, writes
//! transitions a failed store call left unwritten, and evicts breakers
//! that are closed and idle.
//!
//! A poll reads the live keys in batches of [`LOAD_BATCH`], one
//! `load_many` each: 10,000 live keys cost 20 batched reads per poll (on
//! Redis one script call each, or one per Cluster node), not 10,000 store
//! calls. A new key is read once on its own when it is created.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use futures_util::future::BoxFuture;
use futures_util::{StreamExt, stream};

use super::breaker::{Breaker, Ticket, Transition};
use super::config::{BreakerConfig, Window};
use super::error::CircuitOpen;
use super::state::{Outcome, State};
use super::store::{CircuitBreakerStore, LOAD_BATCH, Loaded, Publication, Published, Versioned};
use crate::clock::SharedClock;
use crate::error::StoreError;
use crate::events::{CircuitBreakerEvent, Events, WarnLimiter};
use crate::key::Key;

/// The key calls share once a layer has `max_keys` breakers.
const OVERFLOW: &str = "~overflow";

/// Single-key store calls (writes of unwritten transitions) the sync task
/// runs at once.
const SYNC_CONCURRENCY: usize = 16;

/// Batched loads the sync task runs at once.
const LOAD_CONCURRENCY: usize = 4;

/// A [`CircuitBreakerStore`] behind a pointer (store calls are rare: one
/// per transition and one per batch of keys per poll).
pub(crate) trait DynStore: Send + Sync + 'static {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>>;
    fn load_many<'a>(
        &'a self,
        ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Loaded>, StoreError>>;
    fn publish<'a>(
        &'a self,
        id: &'a str,
        write: Publication,
    ) -> BoxFuture<'a, Result<Published, StoreError>>;
}

impl<St: CircuitBreakerStore> DynStore for St {
    fn load<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>> {
        Box::pin(CircuitBreakerStore::load(self, id))
    }

    fn load_many<'a>(
        &'a self,
        ids: &'a [&'a str],
    ) -> BoxFuture<'a, Result<Vec<Loaded>, StoreError>> {
        Box::pin(CircuitBreakerStore::load_many(self, ids))
    }

    fn publish<'a>(
        &'a self,
        id: &'a str,
        write: Publication,
    ) -> BoxFuture<'a, Result<Published, StoreError>> {
        Box::pin(CircuitBreakerStore::publish(self, id, write))
    }
}

/// What a registry is built from.
#[derive(Clone)]
pub(crate) struct Parts {
    pub name: Arc<str>,
    pub config: BreakerConfig,
    pub store: Arc<dyn DynStore>,
    pub clock: SharedClock,
    pub events: Events,
    pub sync_every: Duration,
    pub idle: Duration,
    pub max_keys: usize,
}

/// Every breaker of one layer.
pub(crate) struct Registry {
    pub(crate) name: Arc<str>,
    /// Read without a lock by every call; swapped by
    /// [`set_config`](Self::set_config).
    config: ArcSwap<BreakerConfig>,
    pub(crate) clock: SharedClock,
    pub(crate) events: Events,
    pub(crate) sync_every: Duration,
    pub(crate) idle: Duration,
    pub(crate) max_keys: usize,
    pub(crate) store: Arc<dyn DynStore>,
    breakers: DashMap<Key, Arc<Breaker>, foldhash::fast::RandomState>,
    /// This layer's id in the store's records.
    writer: u64,
    task: AtomicBool,
    warn: WarnLimiter,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.name)
            .field("config", &self.config.load())
            .field("keys", &self.breakers.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            name,
            config,
            store,
            clock,
            events,
            sync_every,
            idle,
            max_keys,
        } = parts;
        Self {
            name,
            config: ArcSwap::from_pointee(config),
            clock,
            events,
            sync_every,
            idle,
            max_keys,
            store,
            breakers: DashMap::default(),
            writer: fastrand::u64(1..u64::MAX >> 12),
            task: AtomicBool::new(false),
            warn: WarnLimiter::new(Duration::from_secs(10)),
        }
    }

    /// The thresholds in force.
    pub(crate) fn config(&self) -> BreakerConfig {
        BreakerConfig::clone(&self.config.load())
    }

    /// Puts `config` in force from the next call on, keeping every
    /// breaker's state (a changed window starts empty).
    pub(crate) fn set_config(&self, config: BreakerConfig) -> Result<(), crate::ConfigError> {
        config.validate()?;
        self.config.store(Arc::new(config));
        Ok(())
    }

    fn id(&self, key: &Key) -> String {
        format!("{}/{}", self.name, key.as_str())
    }

    /// The breaker of `key`, created closed (and then synced from the
    /// store at once) if there is none; past `max_keys`, the overflow
    /// breaker.
    fn breaker(self: &Arc<Self>, key: &Key) -> Arc<Breaker> {
        if let Some(b) = self.breakers.get(key) {
            return b.clone();
        }
        if self.breakers.len() >= self.max_keys && key.as_str() != OVERFLOW {
            return self.breaker(&Key::from(OVERFLOW));
        }
        let mut created = false;
        let breaker = self
            .breakers
            .entry(key.clone())
            .or_insert_with(|| {
                created = true;
                Arc::new(Breaker::new(
                    key.clone(),
                    &self.config.load(),
                    self.clock.now(),
                ))
            })
            .clone();
        if created {
            let this = self.clone();
            let b = breaker.clone();
            spawn(async move { this.sync_one(&b).await });
        }
        breaker
    }

    /// Admits a call on `key`'s breaker, or rejects it.
    pub(crate) fn acquire(self: &Arc<Self>, key: Key) -> Result<Permit, CircuitOpen> {
        self.ensure_task();
        let breaker = self.breaker(&key);
        let (result, transition) = breaker.acquire(&self.config.load(), self.clock.now());
        if let Some(t) = transition {
            self.transitioned(&breaker, t, true);
        }
        match result {
            Ok(ticket) => Ok(Permit {
                registry: self.clone(),
                breaker,
                ticket: Some(ticket),
            }),
            Err(refusal) => {
                self.emit(CircuitBreakerEvent::Rejected, None);
                Err(CircuitOpen::new(
                    self.name.clone(),
                    key.as_str().to_owned(),
                    refusal.state,
                    refusal.retry_after,
                ))
            }
        }
    }

    /// The state of `key`'s breaker (`Closed` if it has none).
    pub(crate) fn state(&self, key: &str) -> State {
        self.breakers
            .get(&Key::new(key))
            .map_or(State::Closed, |b| b.state())
    }

    /// Every live key with its state.
    pub(crate) fn states(&self) -> Vec<(String, State)> {
        self.breakers
            .iter()
            .map(|e| (e.key().as_str().to_owned(), e.value().state()))
            .collect()
    }

    /// The open time left on `key`'s breaker.
    pub(crate) fn open_remaining(&self, key: &str) -> Option<Duration> {
        let breaker = self.breakers.get(&Key::new(key))?;
        breaker.open_remaining(self.clock.now())
    }

    /// Forces `key`'s breaker to `to`; shared through the store.
    pub(crate) fn force(self: &Arc<Self>, key: &str, to: State) {
        let key = Key::new(key);
        let breaker = self.breaker(&key);
        if let Some(t) = breaker.force(&self.config.load(), to, self.clock.now()) {
            self.transitioned(&breaker, t, true);
        }
    }

    fn settle(
        self: &Arc<Self>,
        breaker: &Arc<Breaker>,
        ticket: Ticket,
        outcome: Outcome,
        elapsed: Option<Duration>,
    ) {
        let now = self.clock.now();
        let elapsed = elapsed.unwrap_or_else(|| now.saturating_sub(ticket.started()));
        let transition = breaker.record(&self.config.load(), ticket, outcome, elapsed, now);
        // An outcome is not a decision: to the stream, not the metric.
        self.events.notify(outcome_event(outcome), &self.name);
        if let Some(t) = transition {
            self.transitioned(breaker, t, true);
        }
    }

    fn emit(&self, event: CircuitBreakerEvent, detail: Option<String>) {
        self.events.report(event, Some(&self.name), || detail);
    }

    /// Reports a transition; `publish`: this instance made it, so the
    /// others must learn it.
    fn transitioned(self: &Arc<Self>, breaker: &Arc<Breaker>, t: Transition, publish: bool) {
        let key = &breaker.key;
        tracing::info!(
            breaker = %self.name,
            key = key.as_str(),
            from = t.from.as_str(),
            to = t.to.as_str(),
            "circuit breaker state changed"
        );
        self.emit(
            CircuitBreakerEvent::Transition,
            Some(format!("{} -> {} (key {})", t.from, t.to, key.as_str())),
        );
        if publish && t.to != State::HalfOpen {
            let (this, b) = (self.clone(), breaker.clone());
            spawn(async move { this.publish(&b).await });
        }
    }

    /// Writes `breaker`'s state if it changed since the last write; on a
    /// lost race takes the winner's state.
    async fn publish(self: &Arc<Self>, breaker: &Arc<Breaker>) {
        let _one_at_a_time = breaker.publishing.lock().await;
        self.publish_locked(breaker).await;
    }

    async fn publish_locked(self: &Arc<Self>, breaker: &Arc<Breaker>) {
        // Twice at most: once more after finding our own earlier write.
        for _ in 0..2 {
            let Some((generation, expected, next)) = breaker.unpublished(self.clock.now()) else {
                return;
            };
            let id = self.id(&breaker.key);
            match self
                .store
                .publish(&id, Publication::new(expected, self.writer, next))
                .await
            {
                Ok(Published::Applied(version)) => return breaker.published(generation, version),
                // A write of ours that timed out but applied: build on it.
                Ok(Published::Conflict(Some(record))) if record.writer == self.writer => {
                    breaker.seen(record.version);
                }
                Ok(Published::Conflict(Some(record))) => return self.adopt(breaker, &record),
                Ok(Published::Conflict(None)) => return,
                Err(e) => return self.store_failed(&e),
            }
        }
    }

    fn adopt(self: &Arc<Self>, breaker: &Arc<Breaker>, record: &Versioned) {
        if let Some(t) = breaker.adopt(&self.config.load(), record, self.clock.now()) {
            self.transitioned(breaker, t, false);
        }
    }

    /// Writes an unwritten transition, or takes a newer stored state; one
    /// at a time with this breaker's publications, so a poll never mistakes
    /// this instance's own write for another's.
    async fn sync_one(self: &Arc<Self>, breaker: &Arc<Breaker>) {
        let _one_at_a_time = breaker.publishing.lock().await;
        if breaker.unpublished(self.clock.now()).is_some() {
            return self.publish_locked(breaker).await;
        }
        let loaded = self.store.load(&self.id(&breaker.key)).await;
        self.learn(breaker, loaded);
    }

    /// Takes what the store holds for `breaker`: another instance's newer
    /// state, or the version of this instance's own write.
    fn learn(self: &Arc<Self>, breaker: &Arc<Breaker>, loaded: Loaded) {
        match loaded {
            Ok(Some(record)) if record.writer != self.writer => self.adopt(breaker, &record),
            Ok(Some(record)) => breaker.seen(record.version),
            Ok(None) => {}
            Err(e) => self.store_failed(&e),
        }
    }

    /// Reads a batch of breakers with one `load_many` and takes what the
    /// store holds for each, one at a time with each breaker's
    /// publications. A breaker that changed since the read is left to its
    /// publication, which learns the stored state from its compare-and-set,
    /// so a poll never mistakes this instance's own write for another's.
    async fn sync_batch(self: &Arc<Self>, batch: &[Arc<Breaker>]) {
        let ids: Vec<String> = batch.iter().map(|b| self.id(&b.key)).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let loaded = match self.store.load_many(&ids).await {
            Ok(loaded) if loaded.len() == batch.len() => loaded,
            Ok(loaded) => {
                let e = StoreError::Protocol(format!(
                    "{} breaker states for {} ids",
                    loaded.len(),
                    batch.len()
                ));
                return self.store_failed(&e);
            }
            Err(e) => return self.store_failed(&e),
        };
        for (breaker, loaded) in batch.iter().zip(loaded) {
            // After a publication in flight: what it wrote is newer than
            // this read, and a stored version older than the breaker's is
            // never adopted. Skipping instead would drop a read made after
            // another instance's write (an explicit sync racing the poll).
            let _one_at_a_time = breaker.publishing.lock().await;
            if breaker.unpublished(self.clock.now()).is_none() {
                self.learn(breaker, loaded);
            }
        }
    }

    fn store_failed(&self, e: &StoreError) {
        self.emit(CircuitBreakerEvent::StoreError, Some(e.to_string()));
        self.warn.warn(|suppressed| {
            tracing::warn!(
                breaker = %self.name,
                error = %e,
                suppressed,
                "circuit breaker store failed; deciding locally"
            );
        });
    }

    /// One round of the background task: evict idle breakers (but not
    /// open ones with open time left), write transitions a failed store
    /// call left unwritten (one call each; rare), read the others in
    /// batches.
    pub(crate) async fn sync_all(self: &Arc<Self>) {
        let now = self.clock.now();
        // At least one second, and at least the time window in force (it
        // may have been set at runtime): no counted outcome is thrown away.
        let idle = match self.config.load().window {
            Window::Time(window) => self.idle.max(window),
            Window::Count(_) => self.idle,
        }
        .max(Duration::from_secs(1))
        .as_secs();
        self.breakers
            .retain(|_, b| now.as_secs().saturating_sub(b.last_used()) < idle || !b.evictable(now));
        let (unwritten, written): (Vec<_>, Vec<_>) = self
            .breakers
            .iter()
            .map(|e| e.value().clone())
            .partition(|b| b.unpublished(now).is_some());
        stream::iter(unwritten)
            .for_each_concurrent(SYNC_CONCURRENCY, |b| async move {
                self.sync_one(&b).await;
            })
            .await;
        stream::iter(written.chunks(LOAD_BATCH))
            .for_each_concurrent(LOAD_CONCURRENCY, |batch| self.sync_batch(batch))
            .await;
    }

    /// Number of live breakers.
    pub(crate) fn len(&self) -> usize {
        self.breakers.len()
    }

    /// Starts the background task once, on the caller's runtime.
    fn ensure_task(self: &Arc<Self>) {
        if self.task.load(Ordering::Relaxed) || self.task.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.task.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            let _restart = TaskFlag(weak.clone());
            let every = match weak.upgrade() {
                Some(registry) => registry.sync_every,
                None => return,
            };
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(registry) = weak.upgrade() else {
                    break;
                };
                registry.sync_all().await;
            }
        });
    }
}

/// Clears the "task running" flag when the task ends, so the next call
/// starts a new one.
struct TaskFlag(Weak<Registry>);

impl Drop for TaskFlag {
    fn drop(&mut self) {
        if let Some(registry) = self.0.upgrade() {
            registry.task.store(false, Ordering::Release);
        }
    }
}

fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
}

/// The right to make one call through a breaker. Record how the call went
/// with [`record`](Self::record); dropping the permit unrecorded counts the
/// call as cancelled ([`Outcome::Ignored`]), which gives a half-open
/// probe's slot back.
pub struct Permit {
    registry: Arc<Registry>,
    breaker: Arc<Breaker>,
    ticket: Option<Ticket>,
}

impl Permit {
    /// Records the call's outcome; its duration is the time since the
    /// permit was taken (for the slow-call rate).
    pub fn record(self, outcome: Outcome) {
        self.settle(outcome, None);
    }

    /// Records the outcome of a call that took `elapsed` (a streamed
    /// response whose outcome came with its trailers is timed to its head).
    pub(crate) fn record_timed(self, outcome: Outcome, elapsed: Duration) {
        self.settle(outcome, Some(elapsed));
    }

    fn settle(mut self, outcome: Outcome, elapsed: Option<Duration>) {
        if let Some(ticket) = self.ticket.take() {
            self.registry
                .settle(&self.breaker, ticket, outcome, elapsed);
        }
    }

    /// How long ago the permit was taken.
    pub fn elapsed(&self) -> Duration {
        let started = self.ticket.map_or(Duration::ZERO, |t| t.started());
        self.registry.clock.now().saturating_sub(started)
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.registry.name)
            .field("key", &self.breaker.key)
            .finish_non_exhaustive()
    }
}

/// A call's outcome, as its event names it.
fn outcome_event(outcome: Outcome) -> CircuitBreakerEvent {
    match outcome {
        Outcome::Success => CircuitBreakerEvent::Success,
        Outcome::Failure => CircuitBreakerEvent::Failure,
        Outcome::Ignored => CircuitBreakerEvent::Ignored,
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.registry
                .settle(&self.breaker, ticket, Outcome::Ignored, None);
        }
    }
}
