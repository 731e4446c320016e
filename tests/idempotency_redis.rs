//! The idempotency layer on a real Redis: a request whose process dies
//! mid-execution holds its key until the lock expires, then the key runs
//! once; Redis down -> 503 without executing.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use battlement::backends::{RedisConfig, RedisStore};
use battlement::body::LayerBody;
use battlement::idempotency::IdempotencyLayer;
use http::{Request, Response, StatusCode};
use support::{RedisServer, counting};
use tower::{ServiceBuilder, ServiceExt, service_fn};

async fn store(redis: &RedisServer) -> RedisStore {
    let config = RedisConfig::standalone(redis.url()).with_timeout(Duration::from_millis(200));
    RedisStore::from_config(config).await.unwrap()
}

fn post() -> Request<String> {
    Request::post("/orders")
        .header("idempotency-key", "\"crash-1\"")
        // Keys are kept per client: here, its address.
        .extension(battlement::key::PeerAddr(([192, 0, 2, 1], 40000).into()))
        .body(String::from("{}"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_killed_mid_execution_runs_once_after_the_lock_expires() {
    let redis = RedisServer::start();
    let lock = Duration::from_secs(1);
    // Instance A claims the key, starts executing, and dies: its runtime
    // stops with the handler (which never answers) and the lock renewal.
    let process_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let a = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store(&redis).await).lock(lock))
        .service(service_fn(move |_: Request<LayerBody<String>>| {
            if let Some(tx) = started_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            std::future::pending::<Result<Response<String>, Infallible>>()
        }));
    // A claims after this instant, so its lock (renewed or not) cannot
    // expire less than `lock` after it.
    let claimed_at = Instant::now();
    process_a.spawn(a.oneshot(post()));
    started.await.unwrap();
    process_a.shutdown_background();

    let calls = Arc::new(AtomicUsize::new(0));
    let b = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store(&redis).await).lock(lock))
        .service(counting(&calls, StatusCode::OK));
    let res = b.clone().oneshot(post()).await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT, "A's lock still holds");
    let executed = loop {
        let res = b.clone().oneshot(post()).await.unwrap();
        if res.status() == StatusCode::OK {
            break claimed_at.elapsed();
        }
        assert_eq!(res.status(), StatusCode::CONFLICT);
        assert!(
            claimed_at.elapsed() < Duration::from_secs(5),
            "the lock never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        executed >= lock - Duration::from_millis(150),
        "ran after {executed:?}"
    );
    for _ in 0..3 {
        let res = b.clone().oneshot(post()).await.unwrap();
        assert_eq!(res.headers()["idempotent-replayed"], "true");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_503_and_nothing_executes() {
    let mut redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store(&redis).await))
        .service(counting(&calls, StatusCode::OK));
    redis.stop();
    let started = Instant::now();
    let res = svc.clone().oneshot(post()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    redis.restart();
    let back = Instant::now();
    loop {
        if svc.clone().oneshot(post()).await.unwrap().status() == StatusCode::OK {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(3), "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// How a claim's answer fails to come back while Redis is frozen.
#[derive(Clone, Copy)]
enum Unanswered {
    /// The store's 200 ms timeout passes: the client gets 503.
    TimedOut,
    /// The client gives up after 50 ms and drops its request.
    Dropped,
}

/// A claim whose answer never came may still be taken once Redis runs
/// again: the layer frees it, so the retry runs within 3 s instead of
/// getting 409 until the 60 s lock expires.
async fn an_unanswered_claim_does_not_lock_out_the_retry(how: Unanswered) {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store(&redis).await))
        .service(counting(&calls, StatusCode::OK));
    // Loads the scripts, so the frozen call is the claim itself.
    let warm = Request::post("/orders")
        .header("idempotency-key", "\"warm\"")
        .extension(battlement::key::PeerAddr(([192, 0, 2, 1], 40000).into()))
        .body(String::from("{}"))
        .unwrap();
    assert_eq!(
        svc.clone().oneshot(warm).await.unwrap().status(),
        StatusCode::OK
    );
    redis.pause();
    match how {
        Unanswered::TimedOut => {
            let res = svc.clone().oneshot(post()).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        Unanswered::Dropped => {
            let gone =
                tokio::time::timeout(Duration::from_millis(50), svc.clone().oneshot(post())).await;
            assert!(gone.is_err(), "the request was still waiting for its claim");
        }
    }
    redis.resume();
    let back = Instant::now();
    let status = loop {
        let status = svc.clone().oneshot(post()).await.unwrap().status();
        if status == StatusCode::OK || back.elapsed() > Duration::from_secs(3) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status,
        StatusCode::OK,
        "the retry ran (the claim was freed)"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_timed_out_does_not_lock_out_the_retry() {
    an_unanswered_claim_does_not_lock_out_the_retry(Unanswered::TimedOut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_dropped_with_its_request_does_not_lock_out_the_retry() {
    an_unanswered_claim_does_not_lock_out_the_retry(Unanswered::Dropped).await;
}

// A frozen Redis costs one timeout: once a claim timed out with no call
// answered since, the next claims fail at once (Down, so the
// failure policy applies without waiting) until Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_on_a_frozen_redis_fail_at_once_after_one_timeout() {
    use battlement::StoreError;
    use battlement::idempotency::{ClaimToken, Claimant, Fingerprint, IdempotencyStore};
    let redis = RedisServer::start();
    let s = store(&redis).await;
    let fp = Fingerprint::of(&[b"{}"]);
    let lock = Duration::from_secs(10);
    s.claim("warm", Claimant::new(ClaimToken::random(), &fp, lock))
        .await
        .unwrap();
    redis.pause();
    let first = s
        .claim("first", Claimant::new(ClaimToken::random(), &fp, lock))
        .await;
    assert!(matches!(first, Err(StoreError::Timeout(_))), "{first:?}");
    for i in 0..20 {
        let id = format!("down-{i}");
        let claim = s.claim(&id, Claimant::new(ClaimToken::random(), &fp, lock));
        let err = claim.await.expect_err("Redis is frozen");
        assert!(matches!(err, StoreError::Down), "{err:?}");
    }
    redis.resume();
    let mut tries = 0;
    while s
        .claim("after", Claimant::new(ClaimToken::random(), &fp, lock))
        .await
        .is_err()
    {
        tries += 1;
        assert!(tries < 100, "no claim after the resume");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `EVALSHA` calls the server has run so far.
fn evalsha_calls(redis: &RedisServer) -> u64 {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

// While Redis is known down, a request's claim is not sent, so nothing
// frees it later: only the claim that timed out (it may have been taken)
// is released once Redis is back, not one per request turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_not_sent_while_redis_is_down_are_never_released() {
    let redis = RedisServer::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store(&redis).await))
        .service(counting(&calls, StatusCode::OK));
    let post = |key: &str| {
        Request::post("/orders")
            .header("idempotency-key", format!("\"{key}\""))
            .extension(battlement::key::PeerAddr(([192, 0, 2, 1], 40000).into()))
            .body(String::from("{}"))
            .unwrap()
    };
    let warm = svc.clone().oneshot(post("warm")).await.unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    redis.pause();
    for i in 0..21 {
        let res = svc
            .clone()
            .oneshot(post(&format!("down-{i}")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    redis.resume();
    let before = evalsha_calls(&redis);
    // Releases are tried 0.1 s to 1.6 s apart, five times: give them all
    // their tries.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent = evalsha_calls(&redis) - before;
    assert!(sent <= 2, "{sent} claims or releases reached Redis");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// Under the local fallback, a key that ran in the fallback while Redis
// was down is answered by the fallback after Redis is back: a replay, not
// a second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_run_in_the_local_fallback_is_replayed_after_the_outage() {
    use battlement::FailurePolicy;
    use battlement::backends::Backend;

    let mut redis = RedisServer::start();
    let store = store(&redis).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store.clone()).failure_policy(FailurePolicy::LocalFallback))
        .service(counting(&calls, StatusCode::OK));
    redis.stop();
    let res = svc.clone().oneshot(post()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "run in the fallback");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    redis.restart();
    let back = Instant::now();
    while store.ping().await.is_err() {
        assert!(back.elapsed() < Duration::from_secs(5), "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let res = svc.oneshot(post()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "ran once across the outage"
    );
}

// A server that may evict keys under memory pressure is named at connect:
// an evicted claim would let a duplicate run.
#[tokio::test]
async fn a_server_that_may_evict_keys_is_warned_about_at_connect() {
    let redis = RedisServer::start();
    let (lines, _log) = support::capture_logs(tracing::Level::WARN);
    let quiet = store(&redis).await;
    assert_eq!(quiet.eviction_policy().await.as_deref(), Some("noeviction"));
    assert!(!lines.text().contains("maxmemory"), "{}", lines.text());
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    store(&redis).await;
    let text = lines.text();
    assert!(
        text.contains("WARN") && text.contains("maxmemory_policy=allkeys-lru"),
        "{text}"
    );
}

// The first idempotency claim on a server without an append-only file
// warns, once: a restart would forget the claims and run replayed keys
// again. With `appendonly yes`, nothing is said.
#[tokio::test]
async fn the_first_claim_warns_once_when_redis_keeps_no_append_only_file() {
    use battlement::idempotency::{ClaimToken, Claimant, Fingerprint, IdempotencyStore};

    let (lines, _log) = support::capture_logs(tracing::Level::WARN);
    let claim = |store: RedisStore, key: &'static str| async move {
        let fp = Fingerprint::of(&[b"{}"]);
        let claimant = Claimant::new(ClaimToken::random(), &fp, Duration::from_secs(5));
        store.claim(key, claimant).await.unwrap();
    };
    let durable = RedisServer::start();
    durable.cli(&["CONFIG", "SET", "appendonly", "yes"]);
    let kept = store(&durable).await;
    assert_eq!(kept.appendonly().await, Some(true));
    claim(kept, "a").await;
    assert!(!lines.text().contains("appendonly"), "{}", lines.text());

    let volatile = RedisServer::start();
    let forgetful = store(&volatile).await;
    assert_eq!(forgetful.appendonly().await, Some(false));
    for key in ["a", "b", "c"] {
        claim(forgetful.clone(), key).await;
    }
    let text = lines.text();
    assert_eq!(text.matches("appendonly is off").count(), 1, "{text}");
}
