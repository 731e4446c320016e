//! The leased mode at its edges: refills that overlap, a sweeper whose
//! runtime went away, and new keys racing for the last tracked slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{LeaseSettings, Leased};
use crate::backends::{Backend, KeySpace, MemoryStore};
use crate::error::StoreError;
use crate::rate_limit::{Charge, Decision, Quota, RateLimitStore};

/// A memory store whose calls wait, while the gate is closed, for a
/// permit each: a test holds a store call in flight and lets it go.
#[derive(Debug, Clone, Default)]
struct Gated {
    inner: MemoryStore,
    gate: Arc<Gate>,
}

#[derive(Debug)]
struct Gate {
    closed: AtomicBool,
    permits: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            closed: AtomicBool::new(false),
            permits: Semaphore::new(0),
        }
    }
}

impl Gated {
    async fn pass(&self) {
        if self.gate.closed.load(Ordering::Acquire) {
            self.gate.permits.acquire().await.expect("open").forget();
        }
    }

    fn close(&self) {
        self.gate.closed.store(true, Ordering::Release);
    }

    fn open(&self) {
        self.gate.closed.store(false, Ordering::Release);
    }

    /// Lets one waiting call through.
    fn release_one(&self) {
        self.gate.permits.add_permits(1);
    }
}

impl Backend for Gated {
    fn kind(&self) -> &'static str {
        "gated"
    }

    fn keyspace(&self) -> &KeySpace {
        self.inner.keyspace()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    fn close(&self) {
        Backend::close(&self.inner);
    }
}

impl RateLimitStore for Gated {
    async fn decide(&self, charge: Charge<'_>) -> Result<Decision, StoreError> {
        self.pass().await;
        self.inner.decide(charge).await
    }

    async fn give_back(&self, charge: Charge<'_>) -> Result<(), StoreError> {
        self.pass().await;
        self.inner.give_back(charge).await
    }
}

type Call<'a> = Pin<Box<dyn Future<Output = Result<Decision, StoreError>> + Send + 'a>>;

/// A decision on key `k` of policy `p`, to poll by hand.
fn call<'a, S: RateLimitStore>(leased: &'a Leased<S>, quota: &'a Quota, cost: u64) -> Call<'a> {
    Box::pin(leased.decide(Charge::new("p", "k", quota, cost)))
}

fn poll(call: &mut Call<'_>) -> Poll<Decision> {
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => Poll::Ready(result.expect("the store answers")),
        Poll::Pending => Poll::Pending,
    }
}

/// A decision that needs no waiting.
fn decide_now<S: RateLimitStore>(leased: &Leased<S>, quota: &Quota, cost: u64) -> Decision {
    match poll(&mut call(leased, quota, cost)) {
        Poll::Ready(decision) => decision,
        Poll::Pending => panic!("a decision waited on a closed gate"),
    }
}

// A refill that ends while a newer one of the same key is in flight leaves
// the newer one in flight: a quota reload meanwhile cannot reset the key,
// and the newer lease (taken under the old quota) is never spent under
// the new one. Futures are polled by hand, outside any runtime, so no
// sweeper takes the expired lease away.
#[test]
fn a_refill_that_ends_late_never_ends_a_newer_one() {
    let store = Gated::default();
    let settings = LeaseSettings::default()
        .with_interval(Duration::from_secs(1))
        .unwrap()
        .with_max_burst_fraction(1.0)
        .unwrap();
    let leased = Leased::new(store.clone(), settings);
    let fast = Quota::per_second(1_000).unwrap();
    // The key turns hot, takes a lease of the burst and spends from it.
    for _ in 0..100 {
        assert!(decide_now(&leased, &fast, 1).is_allowed());
    }
    assert!(leased.leased_units() > 100, "{}", leased.leased_units());
    // The lease expires with most of it unspent.
    std::thread::sleep(settings.interval());
    store.close();
    // A keeps what the demand needs and gives the rest back (held).
    let mut a = call(&leased, &fast, 1);
    assert!(poll(&mut a).is_pending());
    // B needs more than A kept: a new refill (held).
    let mut b = call(&leased, &fast, 500);
    assert!(poll(&mut b).is_pending());
    store.release_one();
    assert!(poll(&mut a).is_ready());
    store.open();
    // The quota is reloaded: one unit an hour.
    let slow = Quota::per_hour(1).unwrap();
    let mut admitted_slow = u32::from(decide_now(&leased, &slow, 1).is_allowed());
    store.release_one();
    assert!(matches!(poll(&mut b), Poll::Ready(d) if d.is_allowed()));
    for _ in 0..10 {
        admitted_slow += u32::from(decide_now(&leased, &slow, 1).is_allowed());
    }
    assert!(
        admitted_slow <= 1,
        "{admitted_slow} admitted under one an hour"
    );
}

// The sweeper runs on the runtime of the decision that started it; when
// that runtime shuts down, the next decision starts it again, so unused
// leases still go back within an interval.
#[test]
fn the_sweeper_starts_again_after_its_runtime_shut_down() {
    let store = MemoryStore::new();
    let settings = LeaseSettings::default();
    let leased = Leased::new(store.clone(), settings);
    let q = Quota::per_hour(1).unwrap().with_burst(1_000).unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    runtime().block_on(async {
        let first = leased.decide(Charge::new("p", "first", &q, 1)).await;
        assert!(first.unwrap().is_allowed());
    });
    runtime().block_on(async {
        let mut spent = 0;
        while spent < 30 || (leased.leased_units() == 0 && spent < 300) {
            let d = leased.decide(Charge::new("p", "hot", &q, 1)).await;
            assert!(d.unwrap().is_allowed());
            spent += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(leased.leased_units() > 0, "no lease taken");
        tokio::time::sleep(settings.interval() * 2).await;
        let left = store.decide(Charge::new("p", "hot", &q, 0)).await.unwrap();
        assert_eq!(left.remaining(), 1_000 - spent, "the unspent lease is back");
        assert_eq!(leased.leased_units(), 0);
    });
}

// New keys that arrive together never track more keys than `max_keys`.
#[test]
fn new_keys_arriving_together_never_pass_max_keys() {
    const THREADS: usize = 4;
    let q = Quota::per_second(100).unwrap();
    for round in 0..500 {
        let settings = LeaseSettings::default().with_max_keys(1);
        let leased = Leased::new(MemoryStore::new(), settings);
        let start = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let (leased, start, q) = (&leased, &start, &q);
                s.spawn(move || {
                    let key = t.to_string();
                    start.wait();
                    let mut decision = Box::pin(leased.decide(Charge::new("p", &key, q, 1)));
                    let polled = decision
                        .as_mut()
                        .poll(&mut Context::from_waker(Waker::noop()));
                    assert!(matches!(polled, Poll::Ready(Ok(d)) if d.is_allowed()));
                });
            }
        });
        assert!(
            leased.tracked_keys() <= 1,
            "round {round}: {} keys tracked",
            leased.tracked_keys()
        );
    }
}
