//! `EtcdStore` shares leases between keys that expire at about the same
//! time, even when keys of very different lifetimes are written in turn
//! (a per-second and a per-hour policy; an idempotency lock of a minute and
//! a retention of a day): a write must not grant a lease of its own, or
//! etcd would hold one live lease per write for up to two days.
#![cfg(feature = "etcd")]

mod support;

use std::time::Duration;

use battlement::idempotency::{
    Claim, ClaimToken, Claimant, Completion, Fingerprint, IdempotencyStore, StoredResponse,
};
use battlement::rate_limit::{Charge, Quota, RateLimitStore};
use support::{EtcdServer, etcd_store};

async fn live_leases(etcd: &EtcdServer) -> usize {
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    client.leases().await.unwrap().leases().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_different_lifetimes_share_leases() {
    let etcd = EtcdServer::start();
    let store = etcd_store(&etcd).await;
    let (fast, slow) = (Quota::per_second(10).unwrap(), Quota::per_hour(10).unwrap());
    for i in 0..20 {
        let key = format!("k{i}");
        assert!(
            store
                .decide(Charge::new("fast", &key, &fast, 1))
                .await
                .unwrap()
                .is_allowed()
        );
        assert!(
            store
                .decide(Charge::new("slow", &key, &slow, 1))
                .await
                .unwrap()
                .is_allowed()
        );
    }
    let after_rate_limit = live_leases(&etcd).await;
    // One lease per TTL class (two here), and a few more if the writes
    // outlast a lease's reuse window on a slow machine; one per write
    // without the classes.
    assert!(
        after_rate_limit <= 8,
        "{after_rate_limit} leases for 40 writes"
    );

    let fingerprint = Fingerprint::of(&[b"POST /orders"]);
    let response = StoredResponse {
        status: http::StatusCode::CREATED,
        headers: http::HeaderMap::new(),
        body: bytes::Bytes::from_static(b"created"),
        trailers: None,
    };
    for i in 0..10 {
        let id = format!("order-{i}");
        let token = ClaimToken::random();
        let claim = store
            .claim(
                &id,
                Claimant::new(token, &fingerprint, Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert_eq!(claim, Claim::Won, "a new key is won");
        let done = store
            .complete(
                &id,
                Completion::new(token, &fingerprint, &response, Duration::from_secs(86_400)),
            )
            .await
            .unwrap();
        assert!(done);
    }
    let leases = live_leases(&etcd).await - after_rate_limit;
    assert!(
        leases <= 5,
        "{leases} more leases for 10 claims and 10 completions"
    );
}
