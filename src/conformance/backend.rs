//! Cases every backend must pass: connecting, pinging, closing,
//! namespacing, health semantics, and (for servers) behaviour under faults.

use std::time::{Duration, Instant};

use super::{FaultHarness, Harness, unique_prefix};
use crate::backends::Backend;
use crate::error::StoreError;
use crate::health::{Group, HealthRegistry, Status, store_check};

/// Generous bound for one call on a loaded CI machine; every harness's
/// per-call timeout must be well below it.
const CALL_BOUND: Duration = Duration::from_secs(5);

/// A fresh store answers a ping, many times, concurrently.
pub async fn ping_answers<H: Harness>(h: H) {
    let store = h.store().await;
    store.ping().await.expect("first ping");
    let pings = (0..50).map(|_| {
        let store = store.clone();
        async move { store.ping().await }
    });
    for result in futures_util::future::join_all(pings).await {
        result.expect("concurrent ping");
    }
}

/// Clones keep working when the original is dropped.
pub async fn clones_share_one_connection<H: Harness>(h: H) {
    let store = h.store().await;
    let clone = store.clone();
    drop(store);
    clone
        .ping()
        .await
        .expect("clone pings after the original is dropped");
}

/// `close` on one clone stops all of them, with a non-transient error.
pub async fn close_stops_every_clone<H: Harness>(h: H) {
    let store = h.store().await;
    let clone = store.clone();
    store.close();
    let err = clone
        .ping()
        .await
        .expect_err("closed store must not answer");
    assert_eq!(err, StoreError::Closed);
    assert!(!err.is_transient());
    let other = h.store().await;
    other.ping().await.expect("other stores are not affected");
}

/// Keys carry the prefix, escape client input and carry one hash tag.
pub async fn keys_are_namespaced_and_escaped<H: Harness>(h: H) {
    let prefix = unique_prefix();
    let store = h.store_with_prefix(&prefix).await.expect("valid prefix");
    assert_eq!(store.keyspace().prefix(), prefix);
    let key = store.keyspace().key("rl", "evil}{:key\n");
    assert!(key.starts_with(&format!("{prefix}:rl:{{")), "{key}");
    assert_eq!(key.matches('{').count(), 1, "{key}");
    assert_eq!(key.matches('}').count(), 1, "{key}");
    assert!(!key.contains('\n'));
    let other = h
        .store_with_prefix(&unique_prefix())
        .await
        .expect("valid prefix");
    assert_ne!(
        other.keyspace().key("rl", "a"),
        store.keyspace().key("rl", "a")
    );
}

/// Prefixes that could break the key layout are configuration errors.
pub async fn invalid_prefix_is_rejected<H: Harness>(h: H) {
    for bad in ["", "has:colon", "br{ace}", "sp ace"] {
        match h.store_with_prefix(bad).await {
            Err(StoreError::Config(_)) => {}
            other => panic!("prefix {bad:?} gave {other:?}"),
        }
    }
}

/// The built-in health check passes with a latency and names the backend.
pub async fn health_check_passes_with_latency<H: Harness>(h: H) {
    let store = h.store().await;
    let registry = HealthRegistry::new();
    registry.register(store_check(store.clone()));
    let report = registry.run(&Group::Readiness).await;
    assert_eq!(report.status(), Status::Pass, "{report:?}");
    let doc = report.to_health_json();
    let key = format!("{}:responseTime", store.kind());
    let entry = &doc["checks"][&key][0];
    assert_eq!(entry["status"], "pass", "{doc}");
    assert_eq!(entry["observedUnit"], "ms");
    assert!(
        entry["observedValue"].as_f64().is_some_and(|v| v >= 0.0),
        "{doc}"
    );
    let live = registry.run(&Group::Liveness).await;
    assert!(live.checks().is_empty(), "store checks are readiness only");
}

/// `Debug` of a store never shows credentials.
pub async fn debug_output_has_no_secrets<H: Harness>(h: H) {
    let store = h.store().await;
    let text = format!("{store:?}");
    assert!(!text.to_lowercase().contains("password\":"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

/// A frozen server makes calls fail with a timeout, bounded, and the store
/// answers again once the server wakes up.
pub async fn hung_server_times_out<H: FaultHarness>(mut h: H) {
    let store = h.store().await;
    store.ping().await.expect("ping before pause");
    h.pause();
    let started = Instant::now();
    let calls = (0..20).map(|_| {
        let store = store.clone();
        async move { store.ping().await }
    });
    let results = futures_util::future::join_all(calls).await;
    let took = started.elapsed();
    h.resume();
    assert!(took < CALL_BOUND, "calls to a hung server took {took:?}");
    for result in results {
        let err = result.expect_err("a frozen server cannot answer");
        assert!(matches!(err, StoreError::Timeout(_)), "{err:?}");
        assert!(err.is_transient());
    }
    eventually(|| store.ping(), "ping after resume").await;
}

/// A dead server gives transient errors quickly; after a restart the same
/// store answers again without being rebuilt.
pub async fn outage_fails_fast_and_recovers<H: FaultHarness>(mut h: H) {
    let store = h.store().await;
    store.ping().await.expect("ping before stop");
    h.stop();
    for _ in 0..5 {
        let started = Instant::now();
        let err = store
            .ping()
            .await
            .expect_err("a stopped server cannot answer");
        assert!(err.is_transient(), "{err:?}");
        assert!(started.elapsed() < CALL_BOUND);
    }
    h.restart().await;
    eventually(|| store.ping(), "ping after restart").await;
}

/// The store's health check fails while the server is down and passes
/// again after it is back (readiness 503 -> 200 in the HTTP routes).
pub async fn health_check_fails_then_recovers<H: FaultHarness>(mut h: H) {
    let store = h.store().await;
    // No result cache: every probe below pings the store.
    let registry = HealthRegistry::new().cache_for(Duration::ZERO);
    registry.register(store_check(store.clone()));
    assert_eq!(registry.run(&Group::Readiness).await.status(), Status::Pass);
    h.stop();
    let report = registry.run(&Group::Readiness).await;
    assert_eq!(report.status(), Status::Fail, "{report:?}");
    let failing = report
        .check(store.kind())
        .expect("check named after the backend");
    assert!(failing.output().is_some_and(|o| !o.is_empty()));
    assert!(failing.took() < CALL_BOUND);
    h.restart().await;
    let mut passed = false;
    for _ in 0..40 {
        if registry.run(&Group::Readiness).await.status() == Status::Pass {
            passed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        passed,
        "readiness did not recover within 2 s of the restart"
    );
}

/// Retries `f` for up to 2 s until it succeeds.
async fn eventually<F, Fut>(f: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut last = None;
    for _ in 0..40 {
        match f().await {
            Ok(()) => return,
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: still failing after 2 s: {last:?}");
}
