//! The circuit breaker on a real Redis: a closed breaker costs no command
//! per request, and an outage leaves every instance deciding locally
//! (SPEC CB-6, C-5).
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use battlement::backends::{RedisConfig, RedisStore};
use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerLayer, Outcome, State};
use battlement::events::Events;
use http::{Request, Response, StatusCode};
use support::RedisServer;
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

// SPEC CB-6: the closed hot path stays local.
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

// SPEC C-5: with Redis down, breakers keep deciding locally, report the
// store failure, and share again once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_leaves_breakers_local_and_sharing_resumes_after() {
    let mut redis = RedisServer::start();
    let events = Events::new();
    let mut rx = events.subscribe();
    let config = BreakerConfig::default()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(30));
    let a = CircuitBreakerLayer::new("up", store(&redis).await, config.clone())
        .unwrap()
        .events(events)
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
