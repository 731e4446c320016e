//! The rate-limit layer on a real Redis: one clock for every instance, and
//! behaviour while Redis is down.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use battlement::FailurePolicy;
use battlement::backends::{RedisConfig, RedisStore};
use battlement::clock::{Clock, SystemClock};
use battlement::rate_limit::{Charge, Policy, Quota, RateLimitLayer, RateLimitStore};
use http::{Request, Response, StatusCode};
use support::RedisServer;
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// How many `EVALSHA` calls the server has run.
fn evalsha_calls(redis: &RedisServer) -> usize {
    let stats = redis.cli(&["info", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stats}"))
}

async fn store(redis: &RedisServer) -> RedisStore {
    let config = RedisConfig::standalone(redis.url()).with_timeout(Duration::from_millis(200));
    RedisStore::from_config(config).await.unwrap()
}

/// A skewed application clock: the system clock plus an offset.
#[derive(Debug)]
struct Skewed(Duration);

impl Clock for Skewed {
    fn now(&self) -> Duration {
        SystemClock::new().now() + self.0
    }
}

// With Redis TIME (the default) two instances whose own clocks
// are 5 s apart decide as one; even with caller clocks, the skew is never
// drained more than once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_application_clocks_decide_identically_on_server_time() {
    let redis = RedisServer::start();
    let a = store(&redis).await;
    let b = store(&redis).await;
    let q = Quota::per_minute(10).unwrap();
    let mut allowed = 0;
    for i in 0..20 {
        let s = if i % 2 == 0 { &a } else { &b };
        if s.decide(Charge::new("p", "shared", &q, 1))
            .await
            .unwrap()
            .is_allowed()
        {
            allowed += 1;
        }
    }
    assert_eq!(
        allowed, 10,
        "server TIME: the two instances share one bucket exactly"
    );

    // The same with caller clocks 5 s apart: the late instance's clock is
    // never drained twice, so they admit at most the quota plus what 5 s
    // earn once (10/min: under one request).
    let early = store(&redis)
        .await
        .with_clock(Arc::new(Skewed(Duration::ZERO)));
    let late = store(&redis)
        .await
        .with_clock(Arc::new(Skewed(Duration::from_secs(5))));
    let mut allowed = 0;
    for i in 0..20 {
        let s = if i % 2 == 0 { &early } else { &late };
        if s.decide(Charge::new("p", "skewed", &q, 1))
            .await
            .unwrap()
            .is_allowed()
        {
            allowed += 1;
        }
    }
    assert!(
        (10..=11).contains(&allowed),
        "caller clocks skewed by 5 s must not over-admit, got {allowed}"
    );
}

fn service(
    store: RedisStore,
    failure: FailurePolicy,
    calls: &Arc<AtomicUsize>,
) -> (
    impl tower::Service<
        Request<String>,
        Response = Response<battlement::body::LayerBody<String>>,
        Error = Infallible,
    > + Clone,
    battlement::events::Events,
) {
    let calls = calls.clone();
    let layer = RateLimitLayer::new(store)
        .policy(Policy::new("g", Quota::per_minute(1_000).unwrap()).unwrap())
        .failure_policy(failure);
    let events = layer.event_stream().clone();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |_: Request<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        }));
    (svc, events)
}

// Redis stopped mid-test. Fail-open passes and counts; fail-closed
// answers 503; after the restart decisions resume within 1 s, same app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_follows_the_failure_policy_and_recovers() {
    let mut redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let (open, open_events) = service(store(&redis).await, FailurePolicy::FailOpen, &calls);
    let (closed, _) = service(store(&redis).await, FailurePolicy::FailClosed, &calls);
    let mut events = open_events.subscribe();
    let get = || Request::new(String::new());

    let res = open.clone().oneshot(get()).await.unwrap();
    assert!(res.headers().contains_key("ratelimit"), "decided by Redis");

    redis.stop();
    for _ in 0..5 {
        let res = open.clone().oneshot(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            !res.headers().contains_key("ratelimit"),
            "fail-open: no decision to report"
        );
        let res = closed.clone().oneshot(get()).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let mut fail_open = 0;
    while let Ok(e) = events.try_recv() {
        fail_open += usize::from(e.event() == "fail_open");
    }
    assert_eq!(fail_open, 5);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "1 before + 5 fail-open; fail-closed never calls"
    );

    redis.restart();
    let back = Instant::now();
    for svc in [&closed, &open] {
        loop {
            let res = svc.clone().oneshot(get()).await.unwrap();
            if res.status() == StatusCode::OK && res.headers().contains_key("ratelimit") {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(1),
                "decisions did not resume within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// A flushed script cache (NOSCRIPT) is reloaded transparently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_scripts_are_reloaded() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let q = Quota::per_minute(3).unwrap();
    assert_eq!(
        s.decide(Charge::new("p", "k", &q, 1))
            .await
            .unwrap()
            .remaining(),
        2
    );
    assert_eq!(redis.cli(&["script", "flush"]).trim(), "OK");
    assert_eq!(
        s.decide(Charge::new("p", "k", &q, 1))
            .await
            .unwrap()
            .remaining(),
        1,
        "state kept, script reloaded"
    );
    // Each of the two loads was an EVALSHA answered NOSCRIPT, then one that ran.
    let stats = redis.cli(&["info", "commandstats"]);
    assert!(stats.contains("cmdstat_evalsha:calls=4,"), "{stats}");
    assert!(stats.contains("failed_calls=2"), "{stats}");
    // Steady state: one EVALSHA per decision, nothing else.
    s.decide(Charge::new("p", "k", &q, 1)).await.unwrap();
    let stats = redis.cli(&["info", "commandstats"]);
    assert!(stats.contains("cmdstat_evalsha:calls=5,"), "{stats}");
}

// Two processes' worth of stores on one Redis admit exactly the
// quota between them under concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_instances_admit_exactly_the_quota() {
    let redis = RedisServer::start();
    let stores = [
        store(&redis).await,
        store(&redis).await,
        store(&redis).await,
    ];
    let q = Quota::per_hour(100).unwrap();
    let tasks: Vec<_> = (0..300)
        .map(|i| {
            let s = stores[i % 3].clone();
            tokio::spawn(async move {
                s.decide(Charge::new("p", "k", &q, 1))
                    .await
                    .unwrap()
                    .is_allowed()
            })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap());
    }
    assert_eq!(allowed, 100);
}

// Concurrent decisions on a standalone server share script calls, and each
// caller still gets the answer for its own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_share_script_calls() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let q = Quota::per_hour(10).unwrap();
    let (keys, per_key) = (16, 16);
    let tasks: Vec<_> = (0..keys * per_key)
        .map(|i| {
            let s = s.clone();
            let key = format!("k{}", i % keys);
            tokio::spawn(async move {
                (
                    i % keys,
                    s.decide(Charge::new("p", &key, &q, 1)).await.unwrap(),
                )
            })
        })
        .collect();
    let mut allowed = vec![0; keys];
    let mut denied = vec![0; keys];
    for t in tasks {
        let (key, decision) = t.await.unwrap();
        if decision.is_allowed() {
            allowed[key] += 1;
        } else {
            assert!(decision.retry_after().is_some(), "{decision:?}");
            denied[key] += 1;
        }
    }
    assert_eq!(allowed, vec![10; keys], "the quota of each key, exactly");
    assert_eq!(denied, vec![per_key - 10; keys]);
    let calls = evalsha_calls(&redis);
    // The first call loads the script (NOSCRIPT, then EVALSHA again).
    assert!(
        calls < keys * per_key,
        "{calls} script calls for {} decisions",
        keys * per_key
    );
}

// While Redis does not answer, the decision queue stays bounded (a decision
// beyond it fails at once, as Unavailable) and decisions whose callers gave
// up are never sent: they would spend quota nobody asked for, and delay
// the decisions after Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_neither_grows_the_queue_nor_gets_stale_decisions() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let q = Quota::per_hour(10).unwrap();
    s.decide(Charge::new("p", "warm", &q, 1)).await.unwrap();
    redis.pause();
    let tasks: Vec<_> = (0..6000)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.decide(Charge::new("p", &format!("k{i}"), &q, 1)).await })
        })
        .collect();
    let (mut full, mut timed_out, mut known_down) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Err(battlement::StoreError::Unavailable(msg)) if msg.contains("already wait") => {
                full += 1;
            }
            Err(battlement::StoreError::Timeout(_)) => timed_out += 1,
            // Sent after a decision timed out: Redis is known down.
            Err(battlement::StoreError::Down) => {
                known_down += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        full > 1000,
        "{full} refused at once, {timed_out} timed out, {known_down} known down"
    );
    redis.resume();
    let resumed = Instant::now();
    loop {
        if s.decide(Charge::new("p", "after", &q, 1)).await.is_ok() {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(1),
            "no decision 1 s after resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Only calls on the wire while their callers still waited reached
    // Redis (4 batches of at most 128, and once those timed out, a few
    // more for callers whose own timeout had not fired yet: about 550
    // keys); the thousands queued behind them were dropped (sent, they
    // would write about 4,200).
    let keys: usize = redis.cli(&["dbsize"]).trim().parse().unwrap();
    assert!(keys < 2_000, "{keys} keys written");
}

// Behind a slot-enforcing proxy batching must be off: then every decision
// is a script call of its own, with the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_batching_off_each_decision_is_its_own_call() {
    let redis = RedisServer::start();
    let config = RedisConfig::standalone(redis.url()).batch_decisions(false);
    let s = RedisStore::from_config(config).await.unwrap();
    let q = Quota::per_hour(10).unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.decide(Charge::new("p", &format!("k{}", i % 4), &q, 1))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut allowed = 0;
    for t in tasks {
        allowed += usize::from(t.await.unwrap().is_allowed());
    }
    assert_eq!(allowed, 40, "10 per key");
    let calls = evalsha_calls(&redis);
    // Every decision once, plus the calls that found the script not yet
    // loaded (NOSCRIPT) and were sent again.
    assert!(calls >= 64, "{calls} script calls for 64 decisions");
}

// A stored debt far beyond a full bucket (a corrupt or foreign value)
// reads as a full bucket: the key frees one unit an emission interval
// later instead of staying locked until the value expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_debt_out_of_range_reads_as_a_full_bucket() {
    use redis::AsyncCommands;

    let redis = RedisServer::start();
    let clock = battlement::clock::ManualClock::new(Duration::from_secs(1_767_225_600));
    let s = store(&redis).await.with_clock(clock.shared());
    let q = Quota::per_second(10).unwrap();
    assert!(
        s.decide(Charge::new("p", "k", &q, 1))
            .await
            .unwrap()
            .is_allowed()
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = conn.keys("*").await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let mut raw: Vec<u8> = conn.get(&keys[0]).await.unwrap();
    // Debt, time, period, expiry, then the quota's count and burst.
    assert_eq!(raw.len(), 48);
    // The packed state starts with the debt, a little-endian double.
    raw[..8].copy_from_slice(&1e300_f64.to_le_bytes());
    // Stored in the form written before the count and burst were kept,
    // which still reads.
    raw.truncate(32);
    let _: () = redis::cmd("SET")
        .arg(&keys[0])
        .arg(raw)
        .arg("KEEPTTL")
        .query_async(&mut conn)
        .await
        .unwrap();
    let denied = s.decide(Charge::new("p", "k", &q, 1)).await.unwrap();
    assert_eq!(denied.retry_after(), Some(Duration::from_millis(100)));
    clock.advance(Duration::from_millis(100));
    assert!(
        s.decide(Charge::new("p", "k", &q, 1))
            .await
            .unwrap()
            .is_allowed()
    );
}

// An API key a policy counts by reaches neither a Redis key name nor a
// log line in clear: the key is its hash.
#[tokio::test]
async fn an_api_key_is_in_no_redis_key_and_no_log_line() {
    use battlement::key::HeaderKey;

    let lines = support::Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(
            RateLimitLayer::new(store(&redis).await).policy(
                Policy::new("per-key", Quota::per_minute(2).unwrap())
                    .unwrap()
                    .key(HeaderKey::new(http::HeaderName::from_static("x-api-key"))),
            ),
        )
        .service(service_fn(move |_: Request<String>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        }));
    let secret = "sk_live_TOPSECRET4242";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let req = Request::get("/")
            .header("x-api-key", secret)
            .body(String::new())
            .unwrap();
        statuses.push(svc.clone().oneshot(req).await.unwrap().status());
    }
    assert_eq!(
        statuses,
        [200, 200, 429, 429].map(|s| StatusCode::from_u16(s).unwrap())
    );
    let keys = redis.cli(&["keys", "*"]);
    assert!(!keys.trim().is_empty(), "the policy wrote its key");
    assert!(!keys.contains("TOPSECRET"), "{keys}");
    assert!(!lines.text().contains("TOPSECRET"), "{}", lines.text());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// The errors of `n` decisions, one after another, on new keys.
async fn decide_n(s: &RedisStore, prefix: &str, n: usize) -> Vec<battlement::StoreError> {
    let q = Quota::per_hour(10).unwrap();
    let mut errors = Vec::new();
    for i in 0..n {
        if let Err(e) = s
            .decide(Charge::new("p", &format!("{prefix}{i}"), &q, 1))
            .await
        {
            errors.push(e);
        }
    }
    errors
}

// A frozen Redis costs one timeout, not one per decision: once a decision
// timed out with none answered since, the next ones fail at once
// (Down, so the failure policy applies without waiting) and never
// reach Redis, until a probe finds it awake again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_known_down_after_one_timeout() {
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let q = Quota::per_hour(10).unwrap();
    s.decide(Charge::new("p", "warm", &q, 1)).await.unwrap();
    redis.pause();
    let first = decide_n(&s, "first", 1).await;
    assert!(
        matches!(first[..], [battlement::StoreError::Timeout(_)]),
        "{first:?}"
    );
    let errors = decide_n(&s, "down", 20).await;
    assert_eq!(errors.len(), 20);
    for e in &errors {
        assert!(
            matches!(e, battlement::StoreError::Down),
            "failed at once, not after a timeout: {e:?}"
        );
    }
    redis.resume();
    let mut tries = 0;
    while s.decide(Charge::new("p", "after", &q, 1)).await.is_err() {
        tries += 1;
        assert!(tries < 100, "no decision after the resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = redis.cli(&["--scan", "--pattern", "*down*"]);
    assert_eq!(sent.trim(), "", "decisions made while down reached Redis");
}

// A killed Redis: every decision fails at once, the first as Unavailable
// (the connection is lost), the next as Down (never a timeout behind a
// reconnect), and after the restart the same store
// decides again on one new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_fails_at_once_and_one_probe_reconnects() {
    let mut redis = RedisServer::start();
    let s = store(&redis).await;
    let q = Quota::per_hour(10).unwrap();
    s.decide(Charge::new("p", "warm", &q, 1)).await.unwrap();
    redis.stop();
    let errors = decide_n(&s, "down", 50).await;
    assert_eq!(errors.len(), 50);
    let timeouts = errors
        .iter()
        .filter(|e| !e.is_transient() || matches!(e, battlement::StoreError::Timeout(_)))
        .count();
    assert_eq!(timeouts, 0, "{errors:?}");
    redis.restart();
    let mut tries = 0;
    while s.decide(Charge::new("p", "after", &q, 1)).await.is_err() {
        tries += 1;
        assert!(tries < 100, "no decision after the restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The store's connection, and redis-cli's own.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    assert_eq!(clients.lines().count(), 2, "{clients}");
}

// Two policies on Redis: one script call per request, and a request the
// per-tenant policy denies spends nothing of the global one before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_policies_are_one_script_call_all_or_nothing() {
    use battlement::key::HeaderKey;

    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(
            RateLimitLayer::new(store(&redis).await)
                .policy(Policy::new("global", Quota::per_hour(4).unwrap()).unwrap())
                .policy(
                    Policy::new("per-tenant", Quota::per_hour(2).unwrap())
                        .unwrap()
                        .key(HeaderKey::new(http::HeaderName::from_static("x-tenant"))),
                ),
        )
        .service(service_fn(move |_: Request<String>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("ok"))) }
        }));
    let send = |tenant: &'static str| {
        let svc = svc.clone();
        async move {
            let req = Request::get("/")
                .header("x-tenant", tenant)
                .body(String::new())
                .unwrap();
            let res = svc.oneshot(req).await.unwrap();
            let limit = res.headers()["ratelimit"].to_str().unwrap().to_owned();
            (res.status().as_u16(), limit)
        }
    };
    // The first call loads the script.
    assert_eq!(send("acme").await.0, 200);
    let before = evalsha_calls(&redis);
    assert_eq!(send("acme").await.0, 200);
    for _ in 0..3 {
        let (status, limit) = send("acme").await;
        assert_eq!(status, 429);
        assert!(limit.starts_with("\"per-tenant\";r=0;"), "{limit}");
    }
    assert_eq!(evalsha_calls(&redis) - before, 4, "one call per request");
    // Two of four global units spent, not five.
    let (status, limit) = send("globex").await;
    assert_eq!(status, 200);
    assert!(limit.starts_with("\"global\";r=1;"), "{limit}");
    assert_eq!(send("initech").await.0, 200);
    let (status, limit) = send("umbrella").await;
    assert_eq!(status, 429);
    assert!(limit.starts_with("\"global\";r=0;"), "{limit}");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}
