//! The state gauges beside `battlement.events`: what the layers hold now
//! (breaker states, the concurrency limit and its requests in flight,
//! units held by leases, idempotency claims running, the stores' health).
//!
//! They are observable gauges: the meter provider reads them when it
//! collects (a Prometheus scrape, an OTLP export), through callbacks over
//! the live layers, which register themselves here when they are built.
//! A request pays at most one atomic add (an idempotent request's claim);
//! everything else is read at collection time. The instruments are made
//! on the global meter provider at the first registration, and again when
//! [`telemetry::init`](crate::telemetry::init) installs a provider.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{AsyncInstrument, ObservableGauge};

/// One state gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gauge {
    /// 1 for each breaker key, labelled with its state.
    BreakerState,
    /// The concurrency limit in force.
    ConcurrencyLimit,
    /// Requests holding a concurrency-limit slot.
    ConcurrencyInFlight,
    /// Units leased by this instance and not yet spent, per policy.
    LeasedUnits,
}

/// Something the gauges read at collection time: a layer's shared state,
/// held weakly so a dropped layer leaves the gauges.
pub(crate) trait Source: Send + Sync + 'static {
    /// Whether the state still exists.
    fn alive(&self) -> bool;

    /// Reports this source's readings of `gauge` (none if it has none).
    fn observe(&self, gauge: Gauge, emit: &mut dyn FnMut(i64, &[KeyValue]));
}

/// The live sources, each under the address of the state it reads (one
/// registration per state, however many services share it).
static SOURCES: Mutex<Vec<(usize, Arc<dyn Source>)>> = Mutex::new(Vec::new());

/// The instruments, once made on the provider that was global then.
static MADE: Mutex<Option<Instruments>> = Mutex::new(None);

/// Idempotency claims won and still running, over every layer.
static CLAIMS_IN_FLIGHT: AtomicI64 = AtomicI64::new(0);

/// The backends whose health is tracked: the built-in ones, and
/// `_OTHER` for any store of the user's (a bounded label).
const BACKENDS: [&str; 4] = ["memory", "redis", "etcd", "_OTHER"];

/// Each backend's health: 0 not seen yet, 1 up, 2 down.
static STORE_HEALTH: [AtomicU8; BACKENDS.len()] = [const { AtomicU8::new(0) }; BACKENDS.len()];

/// Registers `source` under `key` (the address of the state it reads);
/// a second registration of the same key is ignored. Makes the
/// instruments if they are not made yet.
pub(crate) fn register(key: usize, source: Arc<dyn Source>) {
    {
        let mut sources = SOURCES.lock().unwrap_or_else(PoisonError::into_inner);
        sources.retain(|(_, s)| s.alive());
        if sources.iter().any(|(k, _)| *k == key) {
            return;
        }
        sources.push((key, source));
    }
    ensure();
}

/// Makes the instruments on the global meter provider unless they are.
pub(crate) fn ensure() {
    let mut made = MADE.lock().unwrap_or_else(PoisonError::into_inner);
    if made.is_none() {
        *made = Some(Instruments::new());
    }
}

/// Makes the instruments again, on the meter provider global now.
#[cfg_attr(not(any(feature = "prometheus", feature = "_otlp")), allow(dead_code))]
pub(crate) fn remake() {
    let mut made = MADE.lock().unwrap_or_else(PoisonError::into_inner);
    *made = Some(Instruments::new());
}

/// An idempotency claim won: counted in `battlement.idempotency.in_flight`
/// until the returned guard drops.
pub(crate) fn claim_running() -> ClaimRunning {
    CLAIMS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
    ClaimRunning(())
}

/// Counts one running claim until dropped.
#[derive(Debug)]
pub(crate) struct ClaimRunning(());

impl Drop for ClaimRunning {
    fn drop(&mut self) {
        CLAIMS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Records that a call to the `backend` store (a [`Backend::kind`]) went
/// through (`up`) or failed. A load, and a store only when it changes.
///
/// [`Backend::kind`]: crate::backends::Backend::kind
pub(crate) fn store_seen(backend: &str, up: bool) {
    let slot = BACKENDS
        .iter()
        .position(|b| *b == backend)
        .unwrap_or(BACKENDS.len() - 1);
    let health = &STORE_HEALTH[slot];
    let now = if up { 1 } else { 2 };
    if health.load(Ordering::Relaxed) != now {
        health.store(now, Ordering::Relaxed);
    }
}

/// The observable gauges, kept for as long as they are the current ones.
struct Instruments {
    _i64: Vec<ObservableGauge<i64>>,
}

impl Instruments {
    fn new() -> Self {
        let meter = opentelemetry::global::meter("battlement");
        let from_sources = |name: &'static str, description: &'static str, gauge: Gauge| {
            meter
                .i64_observable_gauge(name)
                .with_description(description)
                .with_callback(move |out| observe(gauge, out))
                .build()
        };
        Self {
            _i64: vec![
                from_sources(
                    "battlement.circuit_breaker.state",
                    "1 for each breaker key, labelled with the state it is in",
                    Gauge::BreakerState,
                ),
                from_sources(
                    "battlement.concurrency_limit.limit",
                    "The concurrency limit in force",
                    Gauge::ConcurrencyLimit,
                ),
                from_sources(
                    "battlement.concurrency_limit.in_flight",
                    "Requests holding a concurrency-limit slot",
                    Gauge::ConcurrencyInFlight,
                ),
                from_sources(
                    "battlement.rate_limit.leased_units",
                    "Units leased from the shared store by this instance and not yet spent",
                    Gauge::LeasedUnits,
                ),
                meter
                    .i64_observable_gauge("battlement.idempotency.in_flight")
                    .with_description("Idempotency claims won and still running")
                    .with_callback(|out| out.observe(CLAIMS_IN_FLIGHT.load(Ordering::Relaxed), &[]))
                    .build(),
                meter
                    .i64_observable_gauge("battlement.store.up")
                    .with_description(
                        "1 when the backend's last call or health check went through, 0 when it failed",
                    )
                    .with_callback(observe_stores)
                    .build(),
            ],
        }
    }
}

/// Every live source's readings of `gauge`.
fn observe(gauge: Gauge, out: &dyn AsyncInstrument<i64>) {
    // Cloned out of the lock: a source reading its state never holds it.
    let sources: Vec<Arc<dyn Source>> = {
        let sources = SOURCES.lock().unwrap_or_else(PoisonError::into_inner);
        sources.iter().map(|(_, s)| s.clone()).collect()
    };
    for source in sources {
        source.observe(gauge, &mut |value, attributes| {
            out.observe(value, attributes)
        });
    }
}

/// `battlement.store.up{backend}` for each backend seen.
fn observe_stores(out: &dyn AsyncInstrument<i64>) {
    for (backend, health) in BACKENDS.iter().zip(&STORE_HEALTH) {
        let up = match health.load(Ordering::Relaxed) {
            1 => 1,
            2 => 0,
            _ => continue,
        };
        out.observe(up, &[KeyValue::new("backend", *backend)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_health_keeps_the_last_outcome_per_backend() {
        // A kind of the user's: `_OTHER`, which no test of the crate uses.
        store_seen("postgres", false);
        assert_eq!(STORE_HEALTH[3].load(Ordering::Relaxed), 2);
        store_seen("postgres", true);
        assert_eq!(STORE_HEALTH[3].load(Ordering::Relaxed), 1);
    }
}
