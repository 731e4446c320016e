//! Cases every `CircuitBreakerStore` must pass: the version
//! compare-and-set, the shared open time, TTLs, and two breaker layers on
//! one store acting as two instances.

use std::time::{Duration, Instant};

use super::{Harness, StoredKey};
use crate::backends::Backend;
use crate::circuit_breaker::store::{CONCERN, RETENTION};
use crate::circuit_breaker::{
    BreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitBreakerStore, Outcome,
    Publication, Published, SharedState, State,
};
use crate::clock::ManualClock;

const T0: Duration = Duration::from_secs(1_767_225_600);
const K: &str = "upstream";

fn open_for(secs: u64) -> SharedState {
    SharedState {
        state: State::Open,
        open_for: Duration::from_secs(secs),
        reopens: 0,
    }
}

const CLOSED: SharedState = SharedState {
    state: State::Closed,
    open_for: Duration::ZERO,
    reopens: 0,
};

/// The version `write` got on `id`; a write refused fails, naming `what`
/// it was written on.
async fn applied<S: CircuitBreakerStore>(s: &S, id: &str, write: Publication, what: &str) -> u64 {
    match s.publish(id, write).await.expect("store answers") {
        Published::Applied(version) => version,
        other => panic!("a write on {what} refused: {other:?}"),
    }
}

/// Writing needs the stored version; a stale writer gets the winner's
/// state back (and its writer id); versions only grow, even after a
/// record expired.
pub async fn publish_is_a_compare_and_set<H: Harness>(h: H)
where
    H::Store: CircuitBreakerStore,
{
    let clock = ManualClock::new(T0);
    let s = h.store_with_clock(clock.shared()).await;
    assert_eq!(s.load("b/k").await.unwrap(), None);
    let v1 = applied(
        &s,
        "b/k",
        Publication::new(0, 7, open_for(30)),
        "first write",
    )
    .await;
    match s
        .publish("b/k", Publication::new(0, 8, CLOSED))
        .await
        .unwrap()
    {
        Published::Conflict(Some(winner)) => {
            assert_eq!((winner.version, winner.writer), (v1, 7));
            assert_eq!(winner.shared, open_for(30));
        }
        other => panic!("stale write accepted: {other:?}"),
    }
    let v2 = applied(
        &s,
        "b/k",
        Publication::new(v1, 8, CLOSED),
        "current version",
    )
    .await;
    assert!(v2 > v1);
    let stored = s.load("b/k").await.unwrap().unwrap();
    assert_eq!(
        (stored.version, stored.writer, stored.shared),
        (v2, 8, CLOSED)
    );
    // Nothing stored: any expected version writes, and the version still
    // grows past it.
    let v = applied(&s, "b/other", Publication::new(v2, 9, CLOSED), "absent key").await;
    assert!(v > v2);
    // A writer that never saw a record (it expired, or this instance is
    // new) still writes above every earlier version: versions are store
    // times.
    clock.advance(Duration::from_secs(1));
    let fresh = applied(&s, "b/new", Publication::new(0, 9, CLOSED), "new key").await;
    assert!(fresh > v2, "{fresh} <= {v2}");
}

/// Concurrent writers of one version: exactly one wins.
pub async fn concurrent_publishes_have_one_winner<H: Harness>(h: H)
where
    H::Store: CircuitBreakerStore,
{
    let s = h.store().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.publish("b/k", Publication::new(0, i, open_for(10 + i)))
                    .await
            })
        })
        .collect();
    let mut applied = Vec::new();
    let mut conflicts = Vec::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            Published::Applied(v) => applied.push(v),
            Published::Conflict(Some(v)) => conflicts.push(v.version),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(applied.len(), 1);
    assert!(conflicts.iter().all(|v| *v == applied[0]));
}

/// The open time left runs on the store's clock.
pub async fn open_time_runs_on_the_store_clock<H: Harness>(h: H)
where
    H::Store: CircuitBreakerStore,
{
    let clock = ManualClock::new(T0);
    let s = h.store_with_clock(clock.shared()).await;
    s.publish("b/k", Publication::new(0, 1, open_for(30)))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(10));
    let stored = s.load("b/k").await.unwrap().unwrap();
    assert_eq!(stored.shared.open_for, Duration::from_secs(20));
    clock.advance(Duration::from_secs(25));
    let stored = s.load("b/k").await.unwrap().unwrap();
    assert_eq!(stored.shared.open_for, Duration::ZERO);
    assert_eq!(stored.shared.state, State::Open);
}

/// Every written state is namespaced and expires (open time + retention).
pub async fn written_states_have_a_ttl<H: Harness>(h: H)
where
    H::Store: CircuitBreakerStore,
{
    let s = h.store().await;
    s.publish("b/k", Publication::new(0, 1, open_for(30)))
        .await
        .unwrap();
    s.publish("b/k2", Publication::new(0, 1, CLOSED))
        .await
        .unwrap();
    let prefix = s.keyspace().concern_prefix(CONCERN);
    let keys: Vec<_> = h
        .stored_keys(&s)
        .await
        .into_iter()
        .filter(|k| k.key.starts_with(&prefix))
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for StoredKey { key, ttl } in keys {
        let ttl = ttl.unwrap_or_else(|| panic!("{key} has no TTL"));
        // etcd grants leases of twice the TTL so that later keys share them.
        let max = (RETENTION + Duration::from_secs(30)) * 2 + LEASE_ROUNDING;
        assert!(
            ttl > RETENTION - LEASE_ROUNDING && ttl <= max,
            "{key}: {ttl:?}"
        );
    }
}

/// etcd leases have whole-second TTLs.
const LEASE_ROUNDING: Duration = Duration::from_secs(5);

fn layer<S: CircuitBreakerStore + Clone>(s: &S, config: BreakerConfig) -> CircuitBreakerLayer {
    CircuitBreakerLayer::new("shared", s.clone(), config).expect("valid config")
}

/// A layer on `clock`.
fn layer_on<S: CircuitBreakerStore + Clone>(
    s: &S,
    config: BreakerConfig,
    clock: &ManualClock,
) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder("shared", s.clone(), config)
        .clock(clock.shared())
        .build()
        .expect("valid config")
}

fn fail(b: &CircuitBreakerHandle) {
    b.acquire(K).expect("admitted").record(Outcome::Failure);
}

/// Instance A trips; instance B rejects within a second, without any
/// call of its own failing (real time, background sync).
pub async fn a_trip_on_one_instance_opens_the_other_within_a_second<H: Harness>(h: H)
where
    H::Store: CircuitBreakerStore,
{
    let s = h.store().await;
    let config = BreakerConfig::default()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(30));
    let a = layer(&s, config.clone()).handle();
    let b = layer(&s, config).handle();
    drop(b.acquire(K).expect("B starts closed"));
    fail(&a);
    let tripped = Instant::now();
    let rejected = loop {
        if let Err(open) = b.acquire(K) {
            break open;
        }
        assert!(
            tripped.elapsed() < Duration::from_secs(1),
            "B still admits after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(rejected.state(), State::Open);
    let left = rejected.retry_after().expect("open time");
    assert!(
        left > Duration::from_secs(28) && left <= Duration::from_secs(30),
        "{left:?}"
    );
}

/// Whichever instance decides the half-open round, the other follows:
/// A's probe closes both; later B's failed probe re-opens both with the
/// backed-off open time.
pub async fn a_half_open_decision_is_seen_by_the_other_instance<H: Harness>(h: H)
where
    H::Store: CircuitBreakerStore,
{
    let clock = ManualClock::new(T0);
    let s = h.store_with_clock(clock.shared()).await;
    let config = BreakerConfig::default()
        .consecutive_failures(1)
        .half_open_probes(1)
        .open_for(Duration::from_secs(10))
        .open_backoff(2.0, Duration::from_secs(600));
    let a = layer_on(&s, config.clone(), &clock).handle();
    let b = layer_on(&s, config, &clock).handle();
    drop(b.acquire(K).expect("B starts closed"));

    fail(&a);
    a.sync().await;
    b.sync().await;
    assert_eq!(b.state(K), State::Open);
    assert_eq!(b.open_remaining(K), Some(Duration::from_secs(10)));

    clock.advance(Duration::from_secs(10));
    a.acquire(K).expect("probe").record(Outcome::Success);
    assert_eq!(a.state(K), State::Closed);
    a.sync().await;
    b.sync().await;
    assert_eq!(b.state(K), State::Closed, "A's probe closed B too");

    fail(&a);
    a.sync().await;
    b.sync().await;
    clock.advance(Duration::from_secs(10));
    // A half-opens (its probe is cancelled), B's probe fails first.
    drop(a.acquire(K).expect("A's probe"));
    assert_eq!(a.state(K), State::HalfOpen);
    b.acquire(K).expect("probe").record(Outcome::Failure);
    assert_eq!(
        b.open_remaining(K),
        Some(Duration::from_secs(20)),
        "backed off"
    );
    b.sync().await;
    a.sync().await;
    let open = a.acquire(K).expect_err("B's failed probe re-opened A");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(20)));
    // A took B's re-open count as it is: its next failed probe backs off
    // one step further (40 s), not two.
    clock.advance(Duration::from_secs(20));
    a.acquire(K).expect("probe").record(Outcome::Failure);
    assert_eq!(a.open_remaining(K), Some(Duration::from_secs(40)));
}

/// Forcing a breaker open on one instance forces it everywhere, and a
/// reset closes it everywhere.
pub async fn forced_states_are_shared<H: Harness>(h: H)
where
    H::Store: CircuitBreakerStore,
{
    let clock = ManualClock::new(T0);
    let s = h.store_with_clock(clock.shared()).await;
    let a = layer_on(&s, BreakerConfig::default(), &clock).handle();
    let b = layer_on(&s, BreakerConfig::default(), &clock).handle();
    drop(b.acquire(K).expect("B starts closed"));
    a.force_open(K);
    a.sync().await;
    b.sync().await;
    let open = b.acquire(K).expect_err("forced open everywhere");
    assert_eq!(
        (open.state(), open.retry_after()),
        (State::ForcedOpen, None)
    );
    a.reset(K);
    a.sync().await;
    b.sync().await;
    assert_eq!(b.state(K), State::Closed);
    assert!(b.acquire(K).is_ok());
}

/// A batched load answers, id by id and in order, what `load` answers:
/// for written (open, closed, forced), absent and expired records, for a
/// repeated id, and for more ids than one store call reads.
pub async fn load_many_answers_as_load<H: Harness>(h: H)
where
    H::Store: CircuitBreakerStore,
{
    let clock = ManualClock::new(T0);
    let s = h.store_with_clock(clock.shared()).await;
    assert_eq!(s.load_many(&[]).await.unwrap(), Vec::new());
    // Written first, so it is the first to expire (servers expire records
    // in real time, so there it is still present: the answers must agree
    // either way).
    s.publish("b/old", Publication::new(0, 1, CLOSED))
        .await
        .unwrap();
    clock.advance(RETENTION - Duration::from_secs(5));
    let forced = SharedState {
        state: State::ForcedOpen,
        open_for: Duration::ZERO,
        reopens: 0,
    };
    s.publish("b/open", Publication::new(0, 2, open_for(30)))
        .await
        .unwrap();
    s.publish("b/closed", Publication::new(0, 3, CLOSED))
        .await
        .unwrap();
    s.publish("b/forced", Publication::new(0, 4, forced))
        .await
        .unwrap();
    s.publish("b/odd key:{x}", Publication::new(0, 5, open_for(60)))
        .await
        .unwrap();
    let mut ids: Vec<String> = (0..600).map(|i| format!("b/k{i}")).collect();
    for i in (0..600).step_by(50) {
        s.publish(&ids[i], Publication::new(0, 6, open_for(100 + i as u64)))
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(10));
    // Spread over the batch, so that they fall into different store calls.
    let named = [
        "b/open",
        "b/absent",
        "b/closed",
        "b/old",
        "b/forced",
        "b/odd key:{x}",
        "b/open",
    ];
    for (n, id) in named.iter().enumerate() {
        ids.insert(n * 97, (*id).to_owned());
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();

    let many = s.load_many(&ids).await.unwrap();
    assert_eq!(many.len(), ids.len());
    for (id, answer) in ids.iter().zip(&many) {
        assert_eq!(*answer, s.load(id).await, "{id}");
    }
    let answer = |id: &str| {
        let at = ids.iter().position(|i| *i == id).unwrap();
        many[at].clone().unwrap().map(|v| (v.writer, v.shared))
    };
    assert_eq!(answer("b/open"), Some((2, open_for(20))));
    assert_eq!(answer("b/closed"), Some((3, CLOSED)));
    assert_eq!(answer("b/forced"), Some((4, forced)));
    assert_eq!(answer("b/odd key:{x}"), Some((5, open_for(50))));
    assert_eq!(answer("b/absent"), None);
    assert_eq!(answer("b/k550"), Some((6, open_for(640))));
    assert_eq!(answer("b/k551"), None);
}
