//! The in-process event stream every layer reports its decisions to,
//! counted in the `battlement.events` metric, the state gauges beside it
//! (breaker states, concurrency limit and requests in flight, leased
//! units, idempotency claims running, store health; see the
//! [metric reference](crate::metrics#metric-reference)), and a
//! rate-limited warning log for store failures.
//!
//! ```
//! use battlement::events::{Event, Events};
//!
//! let events = Events::new();
//! let mut rx = events.subscribe();
//! events.emit(Event::new("rate_limit", "denied").with_policy("per-ip"));
//! let e = rx.try_recv().unwrap();
//! assert_eq!((e.layer(), e.event(), e.policy()), ("rate_limit", "denied", Some("per-ip")));
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use opentelemetry::metrics::Counter;
use opentelemetry::{KeyValue, Value};
use tokio::sync::broadcast;

mod gauges;
mod names;

pub(crate) use gauges::{
    Gauge, Source, claim_running, ensure as ensure_gauges, register as register_gauges, store_seen,
};
use names::Name;
pub(crate) use names::{
    CircuitBreakerEvent, ConcurrencyLimitEvent, ConfigEvent, DeadlineEvent, HedgeEvent,
    IdempotencyEvent, RateLimitEvent, RetryEvent,
};

/// One decision or incident of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    layer: &'static str,
    event: &'static str,
    policy: Option<Arc<str>>,
    detail: Option<String>,
}

impl Event {
    /// An event of `layer` (`rate_limit`, ...) named `event` (`denied`, ...).
    pub fn new(layer: &'static str, event: &'static str) -> Self {
        Self {
            layer,
            event,
            policy: None,
            detail: None,
        }
    }

    /// An event of this crate's layers.
    pub(crate) fn named(name: impl Into<Name>) -> Self {
        let Name { layer, event } = name.into();
        Self::new(layer, event)
    }

    /// Names the policy the event is about.
    pub fn with_policy(mut self, policy: impl Into<Arc<str>>) -> Self {
        self.policy = Some(policy.into());
        self
    }

    /// Adds a human-readable detail (e.g. the store error).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The layer.
    pub fn layer(&self) -> &'static str {
        self.layer
    }

    /// The event name.
    pub fn event(&self) -> &'static str {
        self.event
    }

    /// The policy name.
    pub fn policy(&self) -> Option<&str> {
        self.policy.as_deref()
    }

    /// The detail.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

/// A broadcast stream of [`Event`]s. Clones share the stream; emitting on
/// a stream nobody ever subscribed to costs one atomic load.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    /// Set by the first `subscribe`: until then no event is built.
    subscribed: Arc<AtomicBool>,
}

impl Events {
    /// A stream that buffers up to 1024 events per slow subscriber.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Self {
            tx,
            subscribed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Receives every event emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.subscribed.store(true, Ordering::Release);
        self.tx.subscribe()
    }

    /// Counts `event` in the `battlement.events` metric and sends it to
    /// the subscribers, if any.
    pub fn emit(&self, event: Event) {
        let name = Name {
            layer: event.layer,
            event: event.event,
        };
        count(name, event.policy.as_ref());
        if self.is_observed() {
            let _ = self.tx.send(event);
        }
    }

    /// Like [`emit`](Self::emit), building the event's detail only when
    /// someone listens (the metric never carries details).
    pub fn note(
        &self,
        layer: &'static str,
        event: &'static str,
        policy: Option<&Arc<str>>,
        detail: impl FnOnce() -> Option<String>,
    ) {
        self.report(Name { layer, event }, policy, detail);
    }

    /// [`note`](Self::note) for this crate's layers, by typed name.
    pub(crate) fn report(
        &self,
        name: impl Into<Name>,
        policy: Option<&Arc<str>>,
        detail: impl FnOnce() -> Option<String>,
    ) {
        let name = name.into();
        count(name, policy);
        if self.is_observed() {
            let mut e = Event::named(name);
            e.policy = policy.cloned();
            e.detail = detail();
            let _ = self.tx.send(e);
        }
    }

    /// Sends `event` to the subscribers without counting it in the
    /// metric: for outcomes that are not decisions (a breaker's successful
    /// call), which the request metrics count already.
    pub(crate) fn notify(&self, name: impl Into<Name>, policy: &Arc<str>) {
        if self.is_observed() {
            let _ = self.tx.send(Event::named(name).with_policy(policy.clone()));
        }
    }

    /// Whether anyone listens (to skip building events).
    pub fn is_observed(&self) -> bool {
        // `receiver_count` takes the channel's lock: skipped on a stream
        // nobody ever subscribed to.
        self.subscribed.load(Ordering::Acquire) && self.tx.receiver_count() > 0
    }
}

/// The `battlement.events` counter: made on the global meter provider at
/// the first event, and again at the first event after
/// [`telemetry::init`](crate::telemetry::init) installs a provider, so
/// events reported before (a config source's first load at startup) do
/// not tie it to the provider that was global then.
static EVENTS: ArcSwapOption<Counter<u64>> = ArcSwapOption::const_empty();

/// Makes the next event make the counter again, on the global meter
/// provider it finds then.
#[cfg_attr(not(any(feature = "prometheus", feature = "_otlp")), allow(dead_code))]
pub(crate) fn meter_provider_changed() {
    EVENTS.store(None);
    gauges::remake();
}

/// Every resilience decision, in one instrument:
/// `battlement.events{layer, event, policy}`.
fn count(Name { layer, event }: Name, policy: Option<&Arc<str>>) {
    let mut counter = EVENTS.load();
    if counter.is_none() {
        let made = opentelemetry::global::meter("battlement")
            .u64_counter("battlement.events")
            .with_description("Decisions and incidents of battlement's layers")
            .build();
        EVENTS.store(Some(Arc::new(made)));
        counter = EVENTS.load();
    }
    let Some(counter) = counter.as_deref() else {
        return;
    };
    let policy = policy.map_or(Value::from(""), |p| Value::from(p.clone()));
    counter.add(
        1,
        &[
            KeyValue::new("layer", layer),
            KeyValue::new("event", event),
            KeyValue::new("policy", policy),
        ],
    );
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

/// Logs at `warn` at most once per interval and counts what it held back.
#[derive(Debug)]
pub(crate) struct WarnLimiter {
    start: Instant,
    every: Duration,
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl WarnLimiter {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            start: Instant::now(),
            every,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Runs `log` with the number of warnings suppressed since the last
    /// one, or counts this one as suppressed.
    pub(crate) fn warn(&self, log: impl FnOnce(u64)) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.every.as_millis() as u64;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            log(self.suppressed.swap(0, Ordering::AcqRel));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited_and_counted() {
        let limiter = WarnLimiter::new(Duration::from_secs(3600));
        let mut logged = Vec::new();
        for _ in 0..5 {
            limiter.warn(|suppressed| logged.push(suppressed));
        }
        assert_eq!(logged, vec![0]);
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn unobserved_events_are_dropped() {
        let events = Events::new();
        assert!(!events.is_observed());
        events.emit(Event::new("x", "y"));
        let mut rx = events.subscribe();
        events.emit(Event::new("x", "z").with_detail("d"));
        assert_eq!(rx.try_recv().unwrap().detail(), Some("d"));
    }
}
