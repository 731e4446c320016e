//! The circuit breaker on a real Redis: a closed breaker costs no command
//! per request, a poll reads its keys in batches, and an outage leaves
//! every instance deciding locally.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use battlement::backends::{Backend, RedisConfig, RedisStore};
use battlement::circuit_breaker::{
    BreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitBreakerStore, Outcome,
    Publication, SharedState, State,
};
use battlement::events::Events;
use http::{Request, Response, StatusCode};
use support::{RedisCluster, RedisServer};
use tower::{ServiceBuilder, ServiceExt, service_fn};

async fn store(redis: &RedisServer) -> RedisStore {
    let config = RedisConfig::standalone(redis.url()).with_timeout(Duration::from_millis(200));
    RedisStore::from_config(config).await.unwrap()
}

/// Commands the server has run so far, `INFO` itself excluded.
fn commands(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            let calls = l.split("calls=").nth(1)?.split(',').next()?;
            calls.parse::<u64>().ok()
        })
        .sum()
}

/// Calls of the given commands (`cmdstat_` names) a server has run so far.
fn calls_of(redis: &RedisServer, names: &[&str]) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            if !names.contains(&name) {
                return None;
            }
            stats
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// With 1,000 breakers live on instance B, the commands `count` sees
/// during one second of B's background polls (and the most polls that
/// is); then instance A trips keys of both batches, and B follows within a
/// second.
async fn poll_a_thousand_keys(store: RedisStore, count: impl Fn() -> u64) -> (u64, u64) {
    let config = BreakerConfig::default()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(30));
    let layer = |config| -> CircuitBreakerHandle {
        CircuitBreakerLayer::new("up", store.clone(), config)
            .unwrap()
            .handle()
    };
    let (a, b) = (layer(config.clone()), layer(config));
    let keys: Vec<String> = (0..1_000).map(|i| format!("k{i}")).collect();
    for key in &keys {
        drop(b.acquire(key).unwrap());
    }
    assert_eq!(b.len(), 1_000);
    // A new key is read once on its own: let those reads end first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = count();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = count() - before;
    let polls = started.elapsed().as_millis() as u64 / 250 + 1;

    let tripped = ["k0", "k499", "k500", "k999"];
    for key in tripped {
        a.acquire(key).unwrap().record(Outcome::Failure);
    }
    let started = Instant::now();
    while tripped.iter().any(|k| b.state(k) != State::Open) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "B did not follow A's trips"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.state("k1"), State::Closed);
    (sent, polls)
}

// A poll reads its live keys in batches of 500, one script call each:
// with 1,000 keys, a handful of commands per poll, not three per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_of_a_thousand_keys_costs_a_handful_of_commands() {
    let redis = RedisServer::start();
    let (sent, polls) = poll_a_thousand_keys(store(&redis).await, || commands(&redis)).await;
    eprintln!("{sent} Redis commands in at most {polls} polls of 1,000 keys");
    // Per poll: two batches of EVALSHA + TIME + MGET.
    assert!(sent >= 3, "no poll ran");
    assert!(sent <= polls * 8, "{sent} commands in {polls} polls");
}

// On a Cluster the keys of a batch live on every node: a poll costs one
// script call per node and batch, not one per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_on_a_cluster_costs_a_script_call_per_node_and_batch() {
    let cluster = RedisCluster::start();
    let config = RedisConfig::cluster(cluster.urls()).with_timeout(Duration::from_millis(200));
    let store = RedisStore::from_config(config).await.unwrap();
    let scripts = || {
        cluster
            .nodes()
            .iter()
            .map(|n| calls_of(n, &["evalsha", "eval"]))
            .sum()
    };
    let (sent, polls) = poll_a_thousand_keys(store, scripts).await;
    eprintln!("{sent} script calls on 3 nodes in at most {polls} polls of 1,000 keys");
    // Per poll: two batches on three nodes.
    assert!(sent >= 1, "no poll ran");
    assert!(sent <= polls * 8, "{sent} script calls in {polls} polls");
}

// A batch goes to the node serving its first key; when the client's slot
// map is stale (a slot moving, or moved), that node answers the keys it
// serves, and the others are read on their own through the redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reads_every_key_while_cluster_slots_move() {
    let cluster = RedisCluster::start();
    // A new cluster on a loaded 2-core machine can take longer than 500 ms
    // to answer its first scripts; this test is about redirects, not time.
    let config = RedisConfig::cluster(cluster.urls()).with_timeout(Duration::from_secs(5));
    let store = RedisStore::from_config(config).await.unwrap();
    let ids: Vec<String> = (0..30).map(|i| format!("b/k{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let open = SharedState {
        state: State::Open,
        open_for: Duration::from_secs(60),
        reopens: 0,
    };
    for (writer, id) in ids.iter().enumerate().skip(1) {
        store
            .publish(id, Publication::new(0, writer as u64, open))
            .await
            .unwrap();
    }
    let read = |loaded: Vec<battlement::circuit_breaker::Loaded>| -> Vec<Option<u64>> {
        loaded
            .into_iter()
            .map(|l| l.unwrap().map(|v| v.writer))
            .collect()
    };
    let expected: Vec<Option<u64>> = (0..30u64).map(|w| (w > 0).then_some(w)).collect();
    assert_eq!(read(store.load_many(&ids).await.unwrap()), expected);

    // Move the slot of the first key (written now) to another node.
    store
        .publish(ids[0], Publication::new(0, 99, open))
        .await
        .unwrap();
    let key = store.keyspace().key("cb", ids[0]);
    let nodes = cluster.nodes();
    let slot = nodes[0]
        .cli(&["CLUSTER", "KEYSLOT", &key])
        .trim()
        .to_owned();
    let from = nodes
        .iter()
        .position(|n| n.cli(&["CLUSTER", "COUNTKEYSINSLOT", &slot]).trim() == "1")
        .expect("the key's node");
    let to = (from + 1) % nodes.len();
    let id = |n: usize| nodes[n].cli(&["CLUSTER", "MYID"]).trim().to_owned();
    let (from_id, to_id) = (id(from), id(to));
    nodes[to].cli(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
    nodes[from].cli(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
    let port = nodes[to].port().to_string();
    let migrated = nodes[from].cli(&["MIGRATE", "127.0.0.1", &port, &key, "0", "5000"]);
    assert_eq!(migrated.trim(), "OK");
    let mut expected = expected;
    expected[0] = Some(99);
    // Half moved: the old node redirects with ASK.
    assert_eq!(read(store.load_many(&ids).await.unwrap()), expected);
    for node in nodes {
        node.cli(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
    }
    // Moved: the old node redirects with MOVED.
    assert_eq!(read(store.load_many(&ids).await.unwrap()), expected);
    assert_eq!(read(store.load_many(&ids).await.unwrap()), expected);
}

// The closed hot path stays local.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_breaker_sends_no_redis_command_per_request() {
    let redis = RedisServer::start();
    let layer = CircuitBreakerLayer::new("upstream", store(&redis).await, BreakerConfig::default())
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("ok")))
        }));
    // The first request creates the breaker (one load); then measure.
    svc.clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = commands(&redis);
    let started = Instant::now();
    for _ in 0..10_000 {
        let res = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let elapsed = started.elapsed();
    let sent = commands(&redis) - before;
    eprintln!("{sent} Redis commands for 10,000 requests in {elapsed:?}");
    // Only the background poll talks to Redis: one script per 250 ms.
    let polls = elapsed.as_millis() as u64 / 250 + 2;
    assert!(
        sent <= polls,
        "{sent} commands for 10,000 requests in {elapsed:?}"
    );
}

// With Redis down, breakers keep deciding locally, report the store
// failure, and share again once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_leaves_breakers_local_and_sharing_resumes_after() {
    let mut redis = RedisServer::start();
    let events = Events::new();
    let mut rx = events.subscribe();
    let config = BreakerConfig::default()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(30));
    let a = CircuitBreakerLayer::builder("up", store(&redis).await, config.clone())
        .events(events)
        .build()
        .unwrap()
        .handle();
    let b = CircuitBreakerLayer::new("up", store(&redis).await, config)
        .unwrap()
        .handle();
    drop(b.acquire("k").unwrap());
    redis.stop();
    a.acquire("k").unwrap().record(Outcome::Failure);
    assert_eq!(a.state("k"), State::Open, "A decides locally");
    a.sync().await;
    let mut store_errors = 0;
    while let Ok(e) = rx.try_recv() {
        store_errors += usize::from(e.event() == "store_error");
    }
    assert!(store_errors >= 1, "the failed write is reported");
    assert!(b.acquire("k").is_ok(), "B never heard of it");

    redis.restart();
    // The unwritten trip is written by A's background sync; B reads it.
    let started = Instant::now();
    while b.state("k") != State::Open {
        assert!(started.elapsed() < Duration::from_secs(3), "B never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Breaker sync on a frozen Redis costs one timeout: once a poll timed out
// with no call answered since, the next polls and publications fail at
// once (Down: each breaker decides locally without waiting) until
// Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_sync_on_a_frozen_redis_fails_at_once_after_one_timeout() {
    use battlement::StoreError;
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let ids = ["a", "b", "c"];
    s.load_many(&ids).await.unwrap();
    redis.pause();
    let first = s.load_many(&ids).await;
    assert!(matches!(first, Err(StoreError::Timeout(_))), "{first:?}");
    for _ in 0..10 {
        let err = s.load_many(&ids).await.expect_err("Redis is frozen");
        assert!(matches!(err, StoreError::Down), "{err:?}");
        let err = s.load("a").await.expect_err("Redis is frozen");
        assert!(matches!(err, StoreError::Down), "{err:?}");
    }
    redis.resume();
    let mut tries = 0;
    while s.load_many(&ids).await.is_err() {
        tries += 1;
        assert!(tries < 100, "no poll after the resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
