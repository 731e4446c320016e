//! The idempotency layer on a real etcd, where a response can be too large
//! for the store (etcd refuses requests over 1.5 MiB by default).
#![cfg(feature = "etcd")]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use battlement::backends::EtcdStore;
use battlement::body::LayerBody;
use battlement::idempotency::IdempotencyLayer;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use support::EtcdServer;
use tower::{ServiceBuilder, ServiceExt, service_fn};

fn post() -> Request<String> {
    Request::post("/exports")
        .header("idempotency-key", "\"big-1\"")
        .body(String::from("{}"))
        .unwrap()
}

// A response the store refuses for good is recorded as not kept: the
// duplicate after the lock gets 410, and the request does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_too_large_for_etcd_is_not_kept_and_never_runs_twice() {
    let etcd = EtcdServer::start();
    let store = EtcdStore::connect([etcd.endpoint()]).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(
            IdempotencyLayer::new(store)
                .lock(Duration::from_secs(1))
                .max_response_body(4 << 20),
        )
        .service(service_fn(move |_: Request<LayerBody<String>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Infallible>(Response::new("x".repeat(2 << 20))) }
        }));
    let res = svc.clone().oneshot(post()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 2 << 20, "the client gets it whole");
    // Past the lock: without a record the duplicate would run again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let res = svc.oneshot(post()).await.unwrap();
    assert_eq!(res.status(), StatusCode::GONE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
