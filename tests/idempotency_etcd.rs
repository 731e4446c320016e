//! The idempotency layer on a real etcd, where a response can be too large
//! for the store (etcd refuses requests over 1.5 MiB by default).
#![cfg(feature = "etcd")]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use battlement::body::LayerBody;
use battlement::idempotency::IdempotencyLayer;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use support::{EtcdServer, etcd_store};
use tower::{ServiceBuilder, ServiceExt, service_fn};

fn post() -> Request<String> {
    Request::post("/exports")
        .header("idempotency-key", "\"big-1\"")
        // Keys are kept per client: here, its address.
        .extension(battlement::key::PeerAddr(([192, 0, 2, 1], 40000).into()))
        .body(String::from("{}"))
        .unwrap()
}

// A response the store refuses for good is recorded as not kept: the
// duplicate after the lock gets 410, and the request does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_too_large_for_etcd_is_not_kept_and_never_runs_twice() {
    let etcd = EtcdServer::start();
    let store = etcd_store(&etcd).await;
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

// A renewal that lands between the completion's read and its write moves
// the key's revision; the completion must still store the response (the
// claim is still its own), or a later duplicate would run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_racing_its_renewal_still_stores_the_response() {
    use battlement::idempotency::{
        Claim, ClaimToken, Claimant, Completion, Fingerprint, IdempotencyStore, StoredResponse,
    };

    let etcd = EtcdServer::start();
    let store = etcd_store(&etcd).await;
    let renewer = etcd_store(&etcd).await;
    let fingerprint = Fingerprint::of(&[b"POST", b"/orders"]);
    let response = StoredResponse {
        status: StatusCode::CREATED,
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::from_static(b"order 1"),
        trailers: None,
    };
    let lock = Duration::from_secs(30);
    for round in 0..40 {
        let id = format!("race-{round}");
        let token = ClaimToken::random();
        let claim = store
            .claim(&id, Claimant::new(token, &fingerprint, lock))
            .await
            .unwrap();
        assert!(matches!(claim, Claim::Won), "round {round}");
        let renewals = {
            let (renewer, id) = (renewer.clone(), id.clone());
            tokio::spawn(async move {
                for _ in 0..20 {
                    if !renewer.renew(&id, token, lock).await.unwrap() {
                        break;
                    }
                }
            })
        };
        tokio::task::yield_now().await;
        let stored = store
            .complete(&id, Completion::new(token, &fingerprint, &response, lock))
            .await
            .unwrap();
        renewals.await.unwrap();
        assert!(
            stored,
            "round {round}: the completion lost to its own renewal"
        );
        let again = store
            .claim(&id, Claimant::new(ClaimToken::random(), &fingerprint, lock))
            .await
            .unwrap();
        assert!(matches!(again, Claim::Completed { .. }), "round {round}");
    }
}
