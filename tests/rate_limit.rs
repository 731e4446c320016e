//! The rate-limit layer over the memory store.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use battlement::FailurePolicy;
use battlement::backends::{Backend, MemoryStore};
use battlement::clock::ManualClock;
use battlement::key::{HeaderKey, PeerAddr, PeerIp};
use battlement::rate_limit::{Charge, Policy, Quota, RateLimitLayer, RateLimited};
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

// Several policies; any denial denies; headers of the strictest.
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

// A request the per-IP policy denies spends nothing of the global one
// decided before it: another client then still finds the global quota
// the admitted requests left.
#[tokio::test]
async fn a_request_denied_by_one_policy_spends_none_of_the_others() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (store, _clock) = clock_store();
    let layer = RateLimitLayer::new(store)
        .policy(Policy::new("global", quota(4, 60)).unwrap())
        .policy(Policy::new("per-ip", quota(2, 60)).unwrap().key(PeerIp));
    let svc = ServiceBuilder::new().layer(layer).service(counted(&calls));
    let send = |ip: &'static str| {
        let svc = svc.clone();
        async move {
            let res = svc.oneshot(from(ip)).await.unwrap();
            let limit = res.headers()["ratelimit"].to_str().unwrap().to_owned();
            (res.status(), limit)
        }
    };
    assert_eq!(send("192.0.2.1").await.0, StatusCode::OK);
    assert_eq!(send("192.0.2.1").await.0, StatusCode::OK);
    for _ in 0..3 {
        let (status, limit) = send("192.0.2.1").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limit, "\"per-ip\";r=0;t=30");
    }
    // Two of four global units spent, not five.
    assert_eq!(
        send("192.0.2.2").await,
        (StatusCode::OK, "\"global\";r=1;t=45".to_owned())
    );
    assert_eq!(
        send("192.0.2.3").await,
        (StatusCode::OK, "\"global\";r=0;t=60".to_owned())
    );
    let (status, limit) = send("192.0.2.4").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limit, "\"global\";r=0;t=15");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

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

// Shadow mode turns nothing away, not a failed store under
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

// Fail open (default), fail closed, local fallback.
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

#[tokio::test]
async fn a_policy_added_to_a_clone_leaves_the_original_alone() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (store, _clock) = clock_store();
    let base = RateLimitLayer::new(store)
        .policy(Policy::new("per-ip", quota(10, 60)).unwrap().key(PeerIp));
    let base_handle = base.handle();
    let strict = base
        .clone()
        .policy(Policy::new("per-ip", quota(1, 60)).unwrap().key(PeerIp))
        .policy(Policy::new("global", quota(1, 60)).unwrap());
    let svc = ServiceBuilder::new().layer(base).service(counted(&calls));
    for _ in 0..3 {
        let res = svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["ratelimit-policy"], "\"per-ip\";q=10;w=60");
    }
    assert_eq!(base_handle.quotas(), [("per-ip".to_owned(), quota(10, 60))]);
    let strict_handle = strict.handle();
    assert_eq!(strict_handle.quotas().len(), 2);
    // A handle changes the layer it came from (and its services), not the
    // clone's.
    strict_handle.set_quota("per-ip", quota(5, 60)).unwrap();
    assert_eq!(base_handle.quota("per-ip"), Some(quota(10, 60)));
}

#[tokio::test]
async fn a_handle_taken_before_a_builder_call_sees_the_finished_layer() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (store, _clock) = clock_store();
    let layer = RateLimitLayer::new(store);
    let handle = layer.handle();
    let layer = layer.policy(Policy::new("per-ip", quota(2, 60)).unwrap().key(PeerIp));
    assert_eq!(handle.quotas(), [("per-ip".to_owned(), quota(2, 60))]);
    let svc = ServiceBuilder::new().layer(layer).service(counted(&calls));
    handle.set_quota("per-ip", quota(1, 60)).unwrap();
    svc.clone().oneshot(from("192.0.2.1")).await.unwrap();
    let res = svc.oneshot(from("192.0.2.1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

// Legacy headers are opt-in.
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

// Client mode returns a typed error with the retry hint.
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

// A million keys touched once are evicted once idle, with no
// call by the user (virtual time drives the background sweeper).
#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted_automatically() {
    use battlement::rate_limit::RateLimitStore;
    let (store, clock) = clock_store();
    let q = quota(1, 1);
    for i in 0..1_000_000u32 {
        let key = i.to_string();
        assert!(
            store
                .decide(Charge::new("p", &key, &q, 1))
                .await
                .unwrap()
                .is_allowed()
        );
    }
    assert_eq!(store.rate_limit_keys(), 1_000_000);
    clock.advance(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(store.rate_limit_keys(), 0);
}

/// How many of `requests`, each from its own address, `key` admits under
/// a quota of 10 a minute.
async fn admitted(key: impl battlement::key::KeyExtractor, addrs: &[std::net::IpAddr]) -> usize {
    admitted_by(
        Policy::new("per-ip", quota(10, 60)).unwrap().key(key),
        addrs,
    )
    .await
}

async fn admitted_by(policy: Policy, addrs: &[std::net::IpAddr]) -> usize {
    let calls = Arc::new(AtomicUsize::new(0));
    let (store, _clock) = clock_store();
    let layer = RateLimitLayer::new(store).policy(policy);
    let svc = ServiceBuilder::new().layer(layer).service(counted(&calls));
    for ip in addrs {
        svc.clone().oneshot(from(&ip.to_string())).await.unwrap();
    }
    calls.load(Ordering::SeqCst)
}

/// 1,000 random addresses in 2001:db8:7:7::/64.
fn one_64() -> Vec<std::net::IpAddr> {
    let net = u128::from("2001:db8:7:7::".parse::<std::net::Ipv6Addr>().unwrap());
    (0..1000)
        .map(|_| std::net::Ipv6Addr::from(net | u128::from(fastrand::u64(..))).into())
        .collect()
}

// One host holds a whole /64: its addresses share one key, so it cannot
// spread its requests over 2^64 budgets.
#[tokio::test]
async fn ipv6_addresses_in_one_64_share_one_key() {
    let addrs = one_64();
    assert_eq!(admitted(PeerIp, &addrs).await, 10);
    let lb = battlement::key::ClientIp::new(["10.0.0.0/8".parse().unwrap()]);
    assert_eq!(admitted(lb, &addrs).await, 10);
    // A wider prefix on request; 128 keys each address on its own.
    assert_eq!(admitted(PeerIp.ipv6_prefix(128), &addrs).await, 1000);
    let other_64s: Vec<std::net::IpAddr> = (0..20u16)
        .map(|i| std::net::Ipv6Addr::new(0x2001, 0xdb8, 7, i, 0, 0, 0, 1).into())
        .collect();
    assert_eq!(admitted(PeerIp, &other_64s).await, 20);
    assert_eq!(admitted(PeerIp.ipv6_prefix(48), &other_64s).await, 10);
}

// IPv4 stays per address, IPv4-mapped IPv6 included.
#[tokio::test]
async fn ipv4_and_mapped_addresses_are_keyed_each_on_its_own() {
    let v4: Vec<std::net::IpAddr> = (1..=20u8)
        .map(|i| std::net::Ipv4Addr::new(192, 0, 2, i).into())
        .collect();
    assert_eq!(admitted(PeerIp, &v4).await, 20);
    let mapped: Vec<std::net::IpAddr> = (1..=20u8)
        .map(|i| {
            std::net::Ipv4Addr::new(192, 0, 2, i)
                .to_ipv6_mapped()
                .into()
        })
        .collect();
    assert_eq!(admitted(PeerIp, &mapped).await, 20);
    // A mapped address and its IPv4 form are one client.
    let same: Vec<std::net::IpAddr> = (0..20)
        .map(|i| {
            let v4 = std::net::Ipv4Addr::new(192, 0, 2, 1);
            if i % 2 == 0 {
                v4.into()
            } else {
                v4.to_ipv6_mapped().into()
            }
        })
        .collect();
    assert_eq!(admitted(PeerIp, &same).await, 10);
}

// The prefix is a key setting of the stack config.
#[tokio::test]
async fn the_ipv6_prefix_is_configurable_per_policy_key() {
    use battlement::rate_limit::KeyConfig;
    use battlement::stack::StackConfig;
    let config = StackConfig::from_toml(
        r#"
        [[rate_limit.policies]]
        name = "per-64"
        quota = { count = 10, period = "1m" }
        key = { by = "peer_ip" }
        [[rate_limit.policies]]
        name = "per-address"
        quota = { count = 10, period = "1m" }
        key = { by = "client_ip", trusted_proxies = ["10.0.0.0/8"], ipv6_prefix = 128 }
        "#,
    )
    .unwrap();
    let policies = &config.rate_limit.unwrap().policies;
    assert_eq!(policies[0].key, Some(KeyConfig::peer_ip()));
    assert_eq!(
        policies[1].key,
        Some(KeyConfig::ClientIp {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ipv6_prefix: 128
        })
    );
    let addrs = one_64();
    assert_eq!(admitted_by(policies[0].policy().unwrap(), &addrs).await, 10);
    assert_eq!(
        admitted_by(policies[1].policy().unwrap(), &addrs).await,
        1000
    );
    for bad in [0, 129] {
        let toml = format!(
            "[[rate_limit.policies]]\nname = \"p\"\nquota = {{ count = 1, period = \"1s\" }}\nkey = {{ by = \"peer_ip\", ipv6_prefix = {bad} }}"
        );
        let config = StackConfig::from_toml(&toml).unwrap();
        let err = config.rate_limit.unwrap().policies[0].policy().unwrap_err();
        assert!(err.to_string().contains("ipv6_prefix"), "{err}");
    }
}
