//! The rate-limit layer over the memory store (SPEC RL-1..RL-9, C-2, C-5).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use battlement::FailurePolicy;
use battlement::backends::{Backend, MemoryStore};
use battlement::clock::ManualClock;
use battlement::key::{HeaderKey, PeerAddr, PeerIp};
use battlement::rate_limit::{Policy, Quota, RateLimitLayer, RateLimited};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

type Body = Full<Bytes>;

/// An inner service that counts its calls.
fn counted(
    calls: &Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    let calls = calls.clone();
    service_fn(move |_: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    })
}

fn quota(n: u64, secs: u64) -> Quota {
    Quota::new(n, Duration::from_secs(secs)).unwrap()
}

fn from(ip: &str) -> Request<Body> {
    let mut req = Request::get("/").body(Body::default()).unwrap();
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip.parse().unwrap(), 40000)));
    req
}

fn clock_store() -> (MemoryStore, ManualClock) {
    let clock = ManualClock::new(Duration::from_secs(1_767_225_600));
    (MemoryStore::new().with_clock(clock.shared()), clock)
}

// SPEC RL-1, RL-3
#[tokio::test]
async fn denial_is_429_problem_json_with_headers_and_skips_the_inner_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (store, _clock) = clock_store();
    let layer =
        RateLimitLayer::new(store).policy(Policy::new("per-ip", quota(10, 1)).unwrap().key(PeerIp));
    let svc = ServiceBuilder::new().layer(layer).service(counted(&calls));
    for i in 0..10 {
        let res = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()["ratelimit"],
            format!("\"per-ip\";r={};t=1", 9 - i).as_str()
        );
        assert_eq!(res.headers()["ratelimit-policy"], "\"per-ip\";q=10;w=1");
    }
    let res = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.headers()["retry-after"], "1", "100 ms rounds up to 1 s");
    assert_eq!(res.headers()["ratelimit"], "\"per-ip\";r=0;t=1");
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["policy"], "per-ip");
    assert_eq!(body["retry_after_ms"], 100);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10,
        "inner service never called on denial"
    );
    // Another client is unaffected.
    assert_eq!(
        svc.oneshot(from("192.0.2.2")).await.unwrap().status(),
        StatusCode::OK
    );
}

// SPEC C-2, RL-3
#[tokio::test]
async fn grpc_denial_is_resource_exhausted_trailers_only() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer =
        RateLimitLayer::new(MemoryStore::new()).policy(Policy::new("rpc", quota(1, 60)).unwrap());
    let svc = ServiceBuilder::new().layer(layer).service(counted(&calls));
    let grpc = || {
        Request::post("/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc")
            .body(Body::default())
            .unwrap()
    };
    assert_eq!(
        svc.clone().oneshot(grpc()).await.unwrap().status(),
        StatusCode::OK
    );
    let res = svc.oneshot(grpc()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "8");
    assert!(
        res.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains("rate limited by policy rpc")
    );
    assert_eq!(res.headers()["retry-after"], "60");
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// SPEC RL-2: several policies; any denial denies; headers of the strictest.
#[tokio::test]
async fn several_policies_report_the_most_restrictive() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (store, _clock) = clock_store();
    let layer = RateLimitLayer::new(store)
        .policy(Policy::new("per-ip", quota(100, 60)).unwrap().key(PeerIp))
        .policy(
            Policy::new("per-tenant", quota(3, 60))
                .unwrap()
                .key(HeaderKey::new(http::HeaderName::from_static("x-tenant"))),
        );
    let svc = ServiceBuilder::new().layer(layer).service(counted(&calls));
    let req = |ip: &str| {
        let mut r = from(ip);
        r.headers_mut().insert("x-tenant", "acme".parse().unwrap());
        r
    };
    let res = svc.clone().oneshot(req("192.0.2.1")).await.unwrap();
    assert_eq!(res.headers()["ratelimit"], "\"per-tenant\";r=2;t=20");
    svc.clone().oneshot(req("192.0.2.2")).await.unwrap();
    svc.clone().oneshot(req("192.0.2.3")).await.unwrap();
    let res = svc.clone().oneshot(req("192.0.2.4")).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "tenant quota spans IPs"
    );
    assert!(
        res.headers()["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"per-tenant\"")
    );
    // A request without the tenant header is a client error, not a 500.
    let res = svc.oneshot(from("192.0.2.5")).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// SPEC RL-8
#[tokio::test]
async fn shadow_mode_counts_but_lets_through() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::new(MemoryStore::new())
        .policy(Policy::new("g", quota(2, 60)).unwrap())
        .shadow(true);
    let mut events = layer.event_stream().subscribe();
    let svc = ServiceBuilder::new().layer(layer).service(counted(&calls));
    for _ in 0..5 {
        let res = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            !res.headers().contains_key("ratelimit"),
            "no headers in shadow mode"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    let mut names = Vec::new();
    while let Ok(e) = events.try_recv() {
        names.push(e.event());
    }
    assert_eq!(
        names,
        [
            "allowed",
            "allowed",
            "shadow_denied",
            "shadow_denied",
            "shadow_denied"
        ]
    );
}

// SPEC RL-8: shadow mode turns nothing away, not a failed store under
// fail-closed, not a request without the policy's key.
#[tokio::test]
async fn shadow_mode_lets_through_store_failures_and_missing_keys() {
    let calls = Arc::new(AtomicUsize::new(0));
    let broken = MemoryStore::new();
    broken.close();
    let closed = RateLimitLayer::new(broken)
        .policy(Policy::new("g", quota(2, 60)).unwrap())
        .failure_policy(FailurePolicy::FailClosed)
        .shadow(true);
    let mut events = closed.event_stream().subscribe();
    let svc = ServiceBuilder::new().layer(closed).service(counted(&calls));
    let res = svc.oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut names = Vec::new();
    while let Ok(e) = events.try_recv() {
        names.push(e.event());
    }
    assert_eq!(names, ["store_failure", "fail_closed"]);

    let tenant = Policy::new("per-tenant", quota(1, 60))
        .unwrap()
        .key(HeaderKey::new(http::HeaderName::from_static("x-tenant")));
    let keyed = RateLimitLayer::new(MemoryStore::new())
        .policy(tenant)
        .shadow(true);
    let mut events = keyed.event_stream().subscribe();
    let svc = ServiceBuilder::new().layer(keyed).service(counted(&calls));
    for _ in 0..2 {
        let res = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let mut names = Vec::new();
    while let Ok(e) = events.try_recv() {
        names.push(e.event());
    }
    assert_eq!(names, ["shadow_bad_key", "shadow_bad_key"]);
}

// SPEC C-5: fail open (default), fail closed, local fallback.
#[tokio::test]
async fn store_failures_follow_the_failure_policy() {
    let calls = Arc::new(AtomicUsize::new(0));
    let broken = MemoryStore::new();
    broken.close();
    let policy = || Policy::new("g", quota(2, 60)).unwrap();

    let open = RateLimitLayer::new(broken.clone()).policy(policy());
    let mut events = open.event_stream().subscribe();
    let svc = ServiceBuilder::new().layer(open).service(counted(&calls));
    for _ in 0..4 {
        assert_eq!(
            svc.clone()
                .oneshot(from("192.0.2.1"))
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    let mut fail_open = 0;
    while let Ok(e) = events.try_recv() {
        fail_open += usize::from(e.event() == "fail_open");
    }
    assert_eq!(fail_open, 4, "each fail-open decision is counted");

    let closed = RateLimitLayer::new(broken.clone())
        .policy(policy())
        .failure_policy(FailurePolicy::FailClosed);
    let svc = ServiceBuilder::new().layer(closed).service(counted(&calls));
    let res = svc.oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);

    let fallback = RateLimitLayer::new(broken)
        .policy(policy())
        .failure_policy(FailurePolicy::LocalFallback);
    let svc = ServiceBuilder::new()
        .layer(fallback)
        .service(counted(&calls));
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..3).map(|_| svc.clone().oneshot(from("192.0.2.1"))))
            .await
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

// SPEC RL-9
#[tokio::test]
async fn quotas_change_at_runtime_without_resetting_keys() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (store, _clock) = clock_store();
    let layer =
        RateLimitLayer::new(store).policy(Policy::new("per-ip", quota(2, 60)).unwrap().key(PeerIp));
    let handle = layer.handle();
    let svc = ServiceBuilder::new().layer(layer).service(counted(&calls));
    svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(
        svc.clone()
            .oneshot(from("192.0.2.1"))
            .await
            .unwrap()
            .status(),
        429
    );
    handle.set_quota("per-ip", quota(5, 60)).unwrap();
    assert_eq!(handle.quota("per-ip").unwrap().count(), 5);
    let res = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["ratelimit"],
        "\"per-ip\";r=2;t=36",
        "2 of 5 spent before the change"
    );
    assert!(handle.set_quota("nope", quota(1, 1)).is_err());
}

// SPEC RL-3: legacy headers are opt-in.
#[tokio::test]
async fn legacy_headers_are_opt_in() {
    let layer = RateLimitLayer::new(MemoryStore::new())
        .policy(Policy::new("g", quota(10, 1)).unwrap())
        .legacy_headers(true);
    let calls = Arc::new(AtomicUsize::new(0));
    let res = ServiceBuilder::new()
        .layer(layer)
        .service(counted(&calls))
        .oneshot(from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(res.headers()["x-ratelimit-limit"], "10");
    assert_eq!(res.headers()["x-ratelimit-remaining"], "9");
}

// SPEC C-2: client mode returns a typed error with the retry hint.
#[tokio::test]
async fn client_mode_returns_rate_limited() {
    let (store, _clock) = clock_store();
    let layer = RateLimitLayer::new(store)
        .policy(Policy::new("upstream", quota(1, 2)).unwrap())
        .client_mode();
    let calls = Arc::new(AtomicUsize::new(0));
    let client = ServiceBuilder::new().layer(layer).service(counted(&calls));
    client.clone().oneshot(from("192.0.2.1")).await.unwrap();
    let err: BoxError = client.oneshot(from("192.0.2.1")).await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    assert_eq!(limited.policy(), "upstream");
    assert_eq!(limited.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(limited.headers()["retry-after"], "2");
    assert_eq!(
        err.to_string(),
        "rate limited by policy upstream; retry in 2000 ms"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// SPEC RL-4: a million keys touched once are evicted once idle, with no
// call by the user (virtual time drives the background sweeper).
#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted_automatically() {
    use battlement::rate_limit::RateLimitStore;
    let (store, clock) = clock_store();
    let q = quota(1, 1);
    for i in 0..1_000_000u32 {
        let key = i.to_string();
        assert!(store.decide("p", &key, &q, 1).await.unwrap().is_allowed());
    }
    assert_eq!(store.rate_limit_keys(), 1_000_000);
    clock.advance(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(store.rate_limit_keys(), 0);
}
