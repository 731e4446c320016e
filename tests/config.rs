//! Dynamic configuration through the in-process source: quotas and breaker thresholds change on running layers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use battlement::backends::MemoryStore;
use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerLayer, Outcome, State};
use battlement::clock::ManualClock;
use battlement::events::Events;
use battlement::key::{PeerAddr, PeerIp};
use battlement::rate_limit::{Policy, Quota, RateLimitHandle, RateLimitLayer};
use battlement::reload::{ConfigReloader, ConfigWatch, MemoryConfigSource};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Body = Full<Bytes>;
type Reply = battlement::body::LayerBody<Body>;

fn hourly(n: u64) -> Quota {
    Quota::per_hour(n).unwrap()
}

/// A rate-limited service (2 per hour per IP by default) on a stopped
/// clock, and its handle.
fn limited() -> (
    impl Service<Request<Body>, Response = Response<Reply>, Error = Infallible> + Clone,
    RateLimitHandle,
) {
    let clock = ManualClock::new(Duration::from_secs(1_767_225_600));
    let layer = RateLimitLayer::new(MemoryStore::new().with_clock(clock.shared()))
        .policy(Policy::new("per-ip", hourly(2)).unwrap().key(PeerIp));
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|_| async {
            Ok::<_, Infallible>(Response::new(Body::default()))
        }));
    (svc, handle)
}

async fn status<S>(svc: &S, ip: &str) -> StatusCode
where
    S: Service<Request<Body>, Response = Response<Reply>, Error = Infallible> + Clone,
{
    let mut req = Request::get("/").body(Body::default()).unwrap();
    req.extensions_mut()
        .insert(PeerAddr(SocketAddr::new(ip.parse().unwrap(), 40000)));
    svc.clone().oneshot(req).await.unwrap().status()
}

/// How many of `n` requests from `ip` pass.
async fn admitted<S>(svc: &S, ip: &str, n: usize) -> usize
where
    S: Service<Request<Body>, Response = Response<Reply>, Error = Infallible> + Clone,
{
    let mut ok = 0;
    for _ in 0..n {
        ok += usize::from(status(svc, ip).await == StatusCode::OK);
    }
    ok
}

/// Waits (at most 1 s) for `done`.
async fn within_a_second(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("not within 1 s: {what}");
}

async fn started(reloader: ConfigReloader) -> ConfigWatch {
    let watch = reloader.start().unwrap();
    tokio::time::timeout(Duration::from_secs(1), watch.loaded())
        .await
        .unwrap();
    watch
}

#[tokio::test]
async fn a_quota_change_is_in_force_on_the_next_request_and_keeps_every_key() {
    let (svc, handle) = limited();
    let source = MemoryConfigSource::new();
    let _watch = started(ConfigReloader::new(source.clone()).rate_limit(handle.clone())).await;
    assert_eq!(admitted(&svc, "192.0.2.1", 3).await, 2, "built-in 2/h");
    assert_eq!(admitted(&svc, "192.0.2.2", 1).await, 1);

    source.put("rate_limit/per-ip", r#"{"count": 4, "period": "1h"}"#);
    within_a_second("4/h", || handle.quota("per-ip") == Some(hourly(4))).await;
    // Nothing was reset: .1 spent 2 of 4, .2 spent 1.
    assert_eq!(admitted(&svc, "192.0.2.1", 4).await, 2);
    assert_eq!(admitted(&svc, "192.0.2.2", 4).await, 3);
    assert_eq!(admitted(&svc, "192.0.2.3", 5).await, 4, "a new key gets 4");
}

// Delete -> built-in default
#[tokio::test]
async fn deleting_the_document_restores_the_built_in_quota() {
    let (svc, handle) = limited();
    let source = MemoryConfigSource::new();
    source.put("rate_limit/per-ip", r#"{"count": 10, "period": "1h"}"#);
    let _watch = started(ConfigReloader::new(source.clone()).rate_limit(handle.clone())).await;
    assert_eq!(handle.quota("per-ip"), Some(hourly(10)), "loaded at start");
    source.delete("rate_limit/per-ip");
    within_a_second("back to 2/h", || handle.quota("per-ip") == Some(hourly(2))).await;
    assert_eq!(admitted(&svc, "192.0.2.1", 3).await, 2);
}

// A bad value is rejected with a log and a metric
#[tokio::test]
async fn bad_documents_are_rejected_and_the_last_good_value_stays() {
    let (svc, handle) = limited();
    let source = MemoryConfigSource::new();
    let events = Events::new();
    let mut rx = events.subscribe();
    let watch = started(
        ConfigReloader::new(source.clone())
            .rate_limit(handle.clone())
            .events(events),
    )
    .await;
    source.put("rate_limit/per-ip", r#"{"count": 3, "period": "1h"}"#);
    within_a_second("3/h", || handle.quota("per-ip") == Some(hourly(3))).await;
    let bad = [
        "{not json",
        r#"{"count": 0, "period": "1h"}"#,
        r#"{"count": 5, "period": "1h", "brust": 5}"#,
        r#"{"count": 5, "period": "1h", "burst": 0}"#,
    ];
    for document in bad {
        let before = watch.updates();
        source.put("rate_limit/per-ip", document);
        within_a_second("the update is read", || watch.updates() > before).await;
        assert_eq!(handle.quota("per-ip"), Some(hourly(3)), "{document}");
    }
    assert_eq!(admitted(&svc, "192.0.2.1", 4).await, 3);
    let mut seen = Vec::new();
    while let Ok(e) = rx.try_recv() {
        assert_eq!(e.layer(), "config");
        assert_eq!(e.policy(), Some("rate_limit/per-ip"));
        seen.push(e.event());
    }
    assert_eq!(
        seen,
        ["applied", "rejected", "rejected", "rejected", "rejected"]
    );
}

/// Records `n` outcomes on `key`.
fn record(
    breaker: &battlement::circuit_breaker::CircuitBreakerHandle,
    key: &str,
    n: usize,
    outcome: Outcome,
) {
    for _ in 0..n {
        breaker.acquire(key).unwrap().record(outcome);
    }
}

// Breaker thresholds
#[tokio::test]
async fn breaker_thresholds_reload_without_touching_breaker_states() {
    let built_in = BreakerConfig::default().consecutive_failures(3);
    let layer = CircuitBreakerLayer::new("db", MemoryStore::new(), built_in.clone()).unwrap();
    let breaker = layer.handle();
    record(&breaker, "open", 3, Outcome::Failure);
    assert_eq!(breaker.state("open"), State::Open);
    record(&breaker, "closed", 1, Outcome::Failure);

    let source = MemoryConfigSource::new();
    let events = Events::new();
    let mut rx = events.subscribe();
    let watch = started(
        ConfigReloader::new(source.clone())
            .circuit_breaker(breaker.clone())
            .events(events),
    )
    .await;
    source.put(
        "circuit_breaker/db",
        r#"{"consecutive_failures": 2, "open_for": "5s"}"#,
    );
    let two = built_in
        .clone()
        .consecutive_failures(2)
        .open_for(Duration::from_secs(5));
    within_a_second("2 failures", || breaker.config() == two).await;
    assert_eq!(
        breaker.state("open"),
        State::Open,
        "an open breaker stays open"
    );
    assert_eq!(breaker.state("closed"), State::Closed);
    record(&breaker, "closed", 1, Outcome::Failure);
    assert_eq!(
        breaker.state("closed"),
        State::Open,
        "its earlier failure counts"
    );
    record(&breaker, "fresh", 2, Outcome::Failure);
    assert_eq!(breaker.state("fresh"), State::Open);
    assert!(breaker.open_remaining("fresh").unwrap() <= Duration::from_secs(5));
    assert_eq!(rx.try_recv().unwrap().event(), "applied");

    for bad in [r#"{"failure_rate": 0}"#, r#"{"consecutive_failure": 9}"#] {
        let before = watch.updates();
        source.put("circuit_breaker/db", bad);
        within_a_second("the update is read", || watch.updates() > before).await;
        assert_eq!(rx.try_recv().unwrap().event(), "rejected", "{bad}");
        assert_eq!(breaker.config(), two, "{bad}");
    }

    source.delete("circuit_breaker/db");
    within_a_second("built-in again", || breaker.config() == built_in).await;
    record(&breaker, "later", 2, Outcome::Failure);
    assert_eq!(breaker.state("later"), State::Closed, "3 failures again");
}

// Every instance bound to the source follows it.
#[tokio::test]
async fn every_instance_follows_the_source() {
    let (a, handle_a) = limited();
    let (b, handle_b) = limited();
    let source = MemoryConfigSource::new();
    let _wa = started(ConfigReloader::new(source.clone()).rate_limit(handle_a.clone())).await;
    let _wb = started(ConfigReloader::new(source.clone()).rate_limit(handle_b.clone())).await;
    source.put("rate_limit/per-ip", r#"{"count": 1, "period": "1h"}"#);
    within_a_second("both at 1/h", || {
        handle_a.quota("per-ip") == Some(hourly(1)) && handle_b.quota("per-ip") == Some(hourly(1))
    })
    .await;
    assert_eq!(admitted(&a, "192.0.2.1", 2).await, 1);
    assert_eq!(admitted(&b, "192.0.2.1", 2).await, 1);
}
