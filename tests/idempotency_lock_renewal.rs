//! An idempotent handler slower than its lock, with its store reached
//! through a fault proxy: while renewals land it keeps its claim; when the
//! store is cut off for longer than the lock, the claim lapses as the
//! lock's docs say. On Redis and on etcd. Apart from the network-fault
//! tests, which bound answer times, so that neither loads the other.
#![cfg(all(feature = "redis", feature = "etcd", feature = "axum"))]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use battlement::backends::{BackendConfig, EtcdConfig, RedisConfig};
use battlement::idempotency::IdempotencyConfig;
use battlement::stack::{self, StackConfig};
use support::{EtcdServer, Fault, FaultProxy, RedisServer};
use tokio::sync::Notify;

/// The preset on `backend` with `POST /slow` idempotent under a 1 s lock,
/// its handler running `run_for`; each run answers `run N` and, as it
/// starts (its claim won), notifies the returned `Notify`.
async fn serve_slow(
    backend: BackendConfig,
    run_for: Duration,
) -> (stack::ServerStack, String, Arc<Notify>) {
    let config = StackConfig {
        backend,
        idempotency: Some(IdempotencyConfig {
            routes: vec!["/slow".into()],
            required: true,
            lock: Duration::from_secs(1),
            ..IdempotencyConfig::default()
        }),
        ..StackConfig::default()
    };
    let server = stack::server(&config).await.expect("the server stack");
    let runs = Arc::new(AtomicU64::new(0));
    let started = Arc::new(Notify::new());
    let notify = started.clone();
    let api = Router::new().route(
        "/slow",
        post(move || async move {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            notify.notify_one();
            tokio::time::sleep(run_for).await;
            format!("run {run}")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(stack::serve(listener, server.router(api)).into_future());
    (server, base, started)
}

/// A handler slower than the lock keeps its claim while renewals land: a
/// duplicate gets 409 and the one response is replayed. When no renewal
/// lands for a whole lock (the store cut off), the claim lapses as the
/// lock documents: the next duplicate runs again, the first caller still
/// gets its own response, but it is not stored (a `lock_lost` event), and
/// later duplicates replay the second run's.
async fn renewals_slower_than_the_lock(proxy: &FaultProxy, backend: BackendConfig) {
    let (server, base, started) = serve_slow(backend, Duration::from_millis(2500)).await;
    // Times count from the moment a handler starts: its claim was won
    // just before.
    let handler_started = || async {
        tokio::time::timeout(Duration::from_secs(10), started.notified())
            .await
            .expect("the handler starts");
    };
    let mut events = server.events().subscribe();
    let client = reqwest::Client::new();
    let post = |key: &'static str| {
        let request = client
            .post(format!("{base}/slow"))
            .header("idempotency-key", key);
        async move {
            let res = request.send().await.expect("an answer");
            (res.status().as_u16(), res.text().await.unwrap_or_default())
        }
    };

    // Renewals land.
    let first = tokio::spawn(post("renewed"));
    handler_started().await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(post("renewed").await.0, 409, "past the lock, still claimed");
    assert_eq!(first.await.unwrap(), (200, "run 1".to_owned()));
    assert_eq!(post("renewed").await, (200, "run 1".to_owned()));

    // No renewal lands for longer than the lock.
    let first = tokio::spawn(post("lapsed"));
    handler_started().await;
    proxy.set(Fault::Blackhole);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    proxy.set(Fault::None);
    let healed = Instant::now();
    let second = loop {
        let (status, body) = post("lapsed").await;
        if status != 503 {
            break (status, body);
        }
        assert!(
            healed.elapsed() < Duration::from_secs(5),
            "the store is back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        second,
        (200, "run 3".to_owned()),
        "the lapsed key runs again"
    );
    assert_eq!(first.await.unwrap(), (200, "run 2".to_owned()));
    assert_eq!(post("lapsed").await, (200, "run 3".to_owned()));
    let mut lost = 0;
    while let Ok(e) = events.try_recv() {
        lost += usize::from((e.layer(), e.event()) == ("idempotency", "lock_lost"));
    }
    assert_eq!(lost, 1, "the first run's response was not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_renewals_slower_than_the_lock_let_the_claim_lapse_as_documented() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let backend = BackendConfig::Redis(
        RedisConfig::standalone(format!("redis://{}", proxy.addr()))
            .with_timeout(Duration::from_millis(200)),
    );
    renewals_slower_than_the_lock(&proxy, backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_renewals_slower_than_the_lock_let_the_claim_lapse_as_documented() {
    let etcd = EtcdServer::start();
    let proxy = FaultProxy::start(etcd.addr()).await;
    let backend = BackendConfig::Etcd(
        EtcdConfig::new([format!("http://{}", proxy.addr())])
            .with_timeout(Duration::from_millis(500)),
    );
    renewals_slower_than_the_lock(&proxy, backend).await;
}
