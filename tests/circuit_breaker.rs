//! The circuit breaker on the memory store, on a manual clock: every
//! behaviour of the breaker, deterministically (no sleeping), plus the HTTP and gRPC
//! layers in server and client mode.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use battlement::backends::MemoryStore;
use battlement::circuit_breaker::{
    BreakerConfig, CircuitBreakerBuilder, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen,
    Outcome, State, Window,
};
use battlement::clock::ManualClock;
use battlement::events::Events;
use battlement::key::HostKey;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

const K: &str = "upstream";

fn clock() -> ManualClock {
    ManualClock::new(Duration::from_secs(1_767_225_600))
}

fn layer(config: BreakerConfig, clock: &ManualClock) -> CircuitBreakerLayer {
    builder(config, clock).build().unwrap()
}

fn builder(config: BreakerConfig, clock: &ManualClock) -> CircuitBreakerBuilder {
    let store = MemoryStore::new().with_clock(clock.shared());
    CircuitBreakerLayer::builder("test", store, config).clock(clock.shared())
}

fn breaker(config: BreakerConfig, clock: &ManualClock) -> CircuitBreakerHandle {
    layer(config, clock).handle()
}

fn calls(b: &CircuitBreakerHandle, outcome: Outcome, n: usize) {
    for _ in 0..n {
        b.acquire(K).unwrap().record(outcome);
    }
}

fn rate_config(minimum: u32) -> BreakerConfig {
    BreakerConfig::default()
        .window(Window::Count(100))
        .minimum_calls(minimum)
        .failure_rate(50.0)
        .open_for(Duration::from_secs(10))
}

// Minimum number of calls.
#[tokio::test]
async fn nine_failures_under_a_minimum_of_ten_stay_closed_the_tenth_opens() {
    let clock = clock();
    let b = breaker(rate_config(10), &clock);
    calls(&b, Outcome::Failure, 9);
    assert_eq!(b.state(K), State::Closed);
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Open);
    let open = b.acquire(K).unwrap_err();
    assert_eq!(open.state(), State::Open);
    assert_eq!(open.retry_after(), Some(Duration::from_secs(10)));
}

// The threshold itself opens.
#[tokio::test]
async fn a_failure_rate_equal_to_the_threshold_opens() {
    let clock = clock();
    let b = breaker(rate_config(10), &clock);
    calls(&b, Outcome::Success, 5);
    calls(&b, Outcome::Failure, 4);
    assert_eq!(b.state(K), State::Closed, "4 of 9 = 44 %");
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Open, "5 of 10 = 50 %");
}

// Ignored outcomes do not count.
#[tokio::test]
async fn ignored_and_cancelled_calls_are_not_counted() {
    let clock = clock();
    let b = breaker(rate_config(2), &clock);
    calls(&b, Outcome::Ignored, 10);
    drop(b.acquire(K).unwrap());
    calls(&b, Outcome::Success, 1);
    assert_eq!(b.state(K), State::Closed);
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Open, "1 of 2 counted calls failed");
}

// Count window evicts the oldest call.
#[tokio::test]
async fn count_window_forgets_the_oldest_calls() {
    let clock = clock();
    let config = rate_config(4).window(Window::Count(4));
    let b = breaker(config, &clock);
    calls(&b, Outcome::Failure, 1);
    calls(&b, Outcome::Success, 3);
    // Window: F S S S -> 25 %. One more failure evicts the first failure.
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Closed, "S S S F = 25 %");
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Open, "S S F F = 50 %");
}

// Time window drops seconds that fell out.
#[tokio::test]
async fn time_window_forgets_old_seconds() {
    let clock = clock();
    let config = rate_config(4).window(Window::Time(Duration::from_secs(10)));
    let b = breaker(config, &clock);
    calls(&b, Outcome::Failure, 3);
    clock.advance(Duration::from_secs(10));
    // The three failures are 10 s old: out of the window.
    calls(&b, Outcome::Success, 3);
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Closed, "1 of 4");
    clock.advance(Duration::from_secs(9));
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Closed, "2 of 5 within 10 s");
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Open, "3 of 6 within 10 s");
}

// Slow = strictly longer than the slow-call duration.
#[tokio::test]
async fn slow_calls_open_at_the_slow_call_rate() {
    let clock = clock();
    let config = rate_config(4)
        .slow_call(Duration::from_secs(1))
        .slow_call_rate(50.0);
    let b = breaker(config, &clock);
    let slow = |by: Duration| {
        let permit = b.acquire(K).unwrap();
        clock.advance(by);
        permit.record(Outcome::Success);
    };
    slow(Duration::from_secs(1));
    slow(Duration::from_secs(1));
    slow(Duration::from_secs(1));
    assert_eq!(b.state(K), State::Closed, "exactly 1 s is not slow");
    slow(Duration::from_millis(1001));
    assert_eq!(b.state(K), State::Closed, "1 slow of 4");
    slow(Duration::from_millis(1001));
    assert_eq!(b.state(K), State::Closed, "2 slow of 5 = 40 %");
    slow(Duration::from_millis(1001));
    assert_eq!(b.state(K), State::Open, "3 slow of 6 = 50 %");
}

// Consecutive-failures mode.
#[tokio::test]
async fn consecutive_failures_mode_opens_on_a_run_of_failures() {
    let clock = clock();
    let b = breaker(BreakerConfig::default().consecutive_failures(3), &clock);
    calls(&b, Outcome::Failure, 2);
    calls(&b, Outcome::Success, 1);
    calls(&b, Outcome::Failure, 2);
    assert_eq!(b.state(K), State::Closed);
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Open);
}

fn opened(config: BreakerConfig, clock: &ManualClock) -> CircuitBreakerHandle {
    let b = breaker(config.consecutive_failures(1), clock);
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Open);
    b
}

// Exactly K probes, even under 50 concurrent callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_admits_exactly_k_probes_under_50_concurrent_callers() {
    let clock = clock();
    let config = BreakerConfig::default()
        .half_open_probes(3)
        .open_for(Duration::from_secs(5));
    let b = opened(config, &clock);
    clock.advance(Duration::from_secs(5));
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (b, barrier) = (b.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                b.acquire(K)
            })
        })
        .collect();
    let mut permits = Vec::new();
    let mut rejected = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(p) => permits.push(p),
            Err(e) => rejected.push(e),
        }
    }
    assert_eq!(permits.len(), 3);
    assert_eq!(rejected.len(), 47);
    assert!(rejected.iter().all(|e| e.state() == State::HalfOpen));
    assert_eq!(b.state(K), State::HalfOpen);
}

// A cancelled probe gives its permit back.
#[tokio::test]
async fn a_cancelled_probe_returns_its_permit() {
    let clock = clock();
    let b = opened(BreakerConfig::default().half_open_probes(1), &clock);
    clock.advance(Duration::from_secs(60));
    let probe = b.acquire(K).unwrap();
    assert!(b.acquire(K).is_err(), "the only probe is taken");
    drop(probe);
    let probe = b.acquire(K).expect("the permit came back");
    probe.record(Outcome::Success);
    assert_eq!(b.state(K), State::Closed);
}

// Probes decide; re-opens back off.
#[tokio::test]
async fn probe_failure_reopens_with_backoff_and_success_closes() {
    let clock = clock();
    let config = BreakerConfig::default()
        .half_open_probes(1)
        .open_for(Duration::from_secs(5))
        .open_backoff(2.0, Duration::from_secs(15));
    let b = opened(config, &clock);
    for expected in [10, 15, 15] {
        clock.advance(b.open_remaining(K).unwrap());
        b.acquire(K).unwrap().record(Outcome::Failure);
        assert_eq!(b.state(K), State::Open);
        let wait = b.acquire(K).unwrap_err().retry_after().unwrap();
        assert_eq!(wait, Duration::from_secs(expected));
    }
    clock.advance(Duration::from_secs(15));
    b.acquire(K).unwrap().record(Outcome::Success);
    assert_eq!(b.state(K), State::Closed);
    // Closing resets the backoff.
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.open_remaining(K), Some(Duration::from_secs(5)));
}

// With rates, the K probes' rate decides.
#[tokio::test]
async fn probes_decide_by_the_failure_rate() {
    let clock = clock();
    let config = rate_config(2).half_open_probes(4);
    let b = breaker(config, &clock);
    calls(&b, Outcome::Failure, 2);
    clock.advance(Duration::from_secs(10));
    let probes: Vec<_> = (0..4).map(|_| b.acquire(K).unwrap()).collect();
    let mut probes = probes.into_iter();
    for outcome in [Outcome::Success, Outcome::Success, Outcome::Success] {
        probes.next().unwrap().record(outcome);
        assert_eq!(b.state(K), State::HalfOpen);
    }
    probes.next().unwrap().record(Outcome::Failure);
    assert_eq!(b.state(K), State::Closed, "1 failure of 4 probes = 25 %");
}

// Outcomes admitted before a transition are dropped, even when
// they land in a new closed period.
#[tokio::test]
async fn a_stale_outcome_after_a_transition_is_ignored() {
    let clock = clock();
    let b = breaker(
        BreakerConfig::default()
            .consecutive_failures(1)
            .half_open_probes(1),
        &clock,
    );
    let stale: Vec<_> = (0..3).map(|_| b.acquire(K).unwrap()).collect();
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Open);
    clock.advance(Duration::from_secs(60));
    b.acquire(K).unwrap().record(Outcome::Success);
    assert_eq!(b.state(K), State::Closed, "a new closed period");
    // One counted failure would open it again; these were admitted in the
    // old closed period and change nothing.
    for permit in stale {
        permit.record(Outcome::Failure);
    }
    assert_eq!(b.state(K), State::Closed);
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Open);
}

// Exactly one transition under a concurrent burst of failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrent_burst_of_failures_makes_exactly_one_transition() {
    let clock = clock();
    let events = Events::new();
    let mut rx = events.subscribe();
    let b = builder(rate_config(10), &clock)
        .events(events)
        .build()
        .unwrap()
        .handle();
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (b, barrier) = (b.clone(), barrier.clone());
            tokio::spawn(async move {
                let permit = b.acquire(K);
                barrier.wait().await;
                if let Ok(permit) = permit {
                    permit.record(Outcome::Failure);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(b.state(K), State::Open);
    let mut transitions = Vec::new();
    let mut failures = 0;
    while let Ok(e) = rx.try_recv() {
        match e.event() {
            "transition" => transitions.push(e.detail().unwrap().to_owned()),
            "failure" => failures += 1,
            _ => {}
        }
    }
    assert_eq!(transitions, ["closed -> open (key upstream)"]);
    assert_eq!(failures, 64, "every outcome is reported, stale or not");
}

// Forced open and disabled.
#[tokio::test]
async fn forced_open_rejects_and_disabled_admits_until_reset() {
    let clock = clock();
    let b = breaker(BreakerConfig::default().consecutive_failures(1), &clock);
    b.force_open(K);
    let err = b.acquire(K).unwrap_err();
    assert_eq!((err.state(), err.retry_after()), (State::ForcedOpen, None));
    clock.advance(Duration::from_secs(3600));
    assert!(b.acquire(K).is_err(), "forced open does not time out");
    b.disable(K);
    calls(&b, Outcome::Failure, 10);
    assert_eq!(b.state(K), State::Disabled);
    b.reset(K);
    assert_eq!(b.state(K), State::Closed);
    calls(&b, Outcome::Failure, 1);
    assert_eq!(b.state(K), State::Open);
}

// One breaker per key; idle closed ones are evicted.
#[tokio::test]
async fn breakers_are_per_key_and_idle_ones_are_evicted() {
    let clock = clock();
    let config = BreakerConfig::default()
        .consecutive_failures(1)
        .open_for(Duration::from_secs(600));
    let b = builder(config, &clock)
        .idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .handle();
    b.acquire("a").unwrap().record(Outcome::Failure);
    b.acquire("b").unwrap().record(Outcome::Success);
    assert_eq!(b.state("a"), State::Open);
    assert_eq!(b.state("b"), State::Closed);
    assert_eq!(b.len(), 2);
    clock.advance(Duration::from_secs(61));
    b.sync().await;
    // "b" is idle: gone. "a" has open time left: kept, until it has not.
    assert_eq!(b.states(), [("a".to_owned(), State::Open)]);
    clock.advance(Duration::from_secs(600));
    b.sync().await;
    assert!(b.is_empty());
}

/// An inner HTTP service answering `status`, counting its calls.
fn upstream(
    status: StatusCode,
    hits: &Arc<AtomicUsize>,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
{
    let hits = hits.clone();
    service_fn(move |_: Request<Full<Bytes>>| {
        hits.fetch_add(1, Ordering::SeqCst);
        let mut res = Response::new(Full::new(Bytes::from_static(b"upstream")));
        *res.status_mut() = status;
        async move { Ok::<_, Infallible>(res) }
    })
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).unwrap()
}

// Open -> 503 problem+json with Retry-After, inner not called.
#[tokio::test]
async fn open_answers_503_problem_json_with_retry_after_and_skips_the_inner_service() {
    let clock = clock();
    let hits = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer(rate_config(4), &clock))
        .service(upstream(StatusCode::INTERNAL_SERVER_ERROR, &hits));
    for _ in 0..4 {
        let res = svc.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    clock.advance(Duration::from_millis(2500));
    for _ in 0..5 {
        let res = svc.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "8", "7.5 s rounded up");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["status"], 503);
        assert_eq!(body["breaker"], "test");
        assert_eq!(body["state"], "open");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

// 4xx are successes.
#[tokio::test]
async fn client_errors_do_not_open_the_breaker() {
    let clock = clock();
    let hits = Arc::new(AtomicUsize::new(0));
    let layer = layer(rate_config(4), &clock);
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(upstream(StatusCode::NOT_FOUND, &hits));
    for _ in 0..20 {
        let res = svc.clone().oneshot(get("/")).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(handle.state("global"), State::Closed);
}

/// A gRPC server answering with `grpc-status` in trailers after a message.
fn grpc_upstream(
    code: &'static str,
) -> impl Service<Request<Full<Bytes>>, Response = Response<BoxBody>, Error = Infallible> + Clone {
    service_fn(move |_: Request<Full<Bytes>>| async move {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(code));
        let frames = vec![
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(tokio_stream::iter(frames)).boxed();
        let res = Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap();
        Ok::<_, Infallible>(res)
    })
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn grpc_request() -> Request<Full<Bytes>> {
    Request::post("/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .body(Full::default())
        .unwrap()
}

// GRPC statuses in trailers count; open is UNAVAILABLE.
#[tokio::test]
async fn grpc_trailer_status_counts_and_open_is_unavailable_trailers_only() {
    let clock = clock();
    let layer = layer(BreakerConfig::default().consecutive_failures(2), &clock);
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(grpc_upstream("14"));
    // The outcome is known only once the body (and its trailers) is read.
    let res = svc.clone().oneshot(grpc_request()).await.unwrap();
    let res2 = svc.clone().oneshot(grpc_request()).await.unwrap();
    assert_eq!(handle.state("global"), State::Closed, "bodies not read yet");
    let trailers = res.into_body().collect().await.unwrap();
    assert_eq!(trailers.trailers().unwrap()["grpc-status"], "14");
    res2.into_body().collect().await.unwrap();
    assert_eq!(handle.state("global"), State::Open);
    let res = svc.oneshot(grpc_request()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert!(res.headers().contains_key("grpc-message"));
}

// A gRPC OK in trailers is a success; a body dropped early is
// not counted.
#[tokio::test]
async fn grpc_ok_counts_as_success_and_dropped_bodies_as_nothing() {
    let clock = clock();
    let layer = layer(BreakerConfig::default().consecutive_failures(1), &clock);
    let handle = layer.handle();
    let ok = ServiceBuilder::new()
        .layer(layer.clone())
        .service(grpc_upstream("0"));
    ok.oneshot(grpc_request())
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap();
    let failing = ServiceBuilder::new()
        .layer(layer)
        .service(grpc_upstream("13"));
    drop(failing.oneshot(grpc_request()).await.unwrap());
    assert_eq!(handle.state("global"), State::Closed);
}

// A gRPC body that ends without a status is a failure, also when the
// reader stops at the body's word that it has ended, as hyper does.
#[tokio::test]
async fn a_grpc_body_that_ends_without_trailers_counts_as_a_failure() {
    let clock = clock();
    let layer = layer(BreakerConfig::default().consecutive_failures(1), &clock);
    let handle = layer.handle();
    let no_trailers = service_fn(|_: Request<Full<Bytes>>| async {
        let res = Response::builder()
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        Ok::<_, Infallible>(res)
    });
    let svc = ServiceBuilder::new().layer(layer).service(no_trailers);
    let mut body = svc.oneshot(grpc_request()).await.unwrap().into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    assert!(body.is_end_stream());
    assert_eq!(handle.state("global"), State::Open);
    drop(body);
    assert_eq!(handle.state("global"), State::Open);
}

// Client mode returns a typed CircuitOpen error; keyed per host.
#[tokio::test]
async fn client_mode_is_keyed_per_host_and_fails_with_circuit_open() {
    let clock = clock();
    let hits = Arc::new(AtomicUsize::new(0));
    let config = BreakerConfig::default()
        .consecutive_failures(2)
        .open_for(Duration::from_secs(60));
    let layer = layer(config, &clock).key(HostKey).client_mode();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(upstream(StatusCode::BAD_GATEWAY, &hits));
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(get("http://a.example:8080/x"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }
    let err: BoxError = svc
        .clone()
        .oneshot(get("http://a.example:8080/x"))
        .await
        .unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("a CircuitOpen");
    assert_eq!((open.breaker(), open.key()), ("test", "a.example:8080"));
    assert_eq!(open.retry_after(), Some(Duration::from_secs(60)));
    // Another host has its own breaker.
    let res = svc.oneshot(get("http://b.example/x")).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(handle.state("b.example"), State::Closed);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

// An inner error is a failure and stays the service error.
#[tokio::test]
async fn inner_errors_count_as_failures() {
    let clock = clock();
    let layer = layer(BreakerConfig::default().consecutive_failures(1), &clock);
    let handle = layer.handle();
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service(service_fn(|_: Request<Full<Bytes>>| async {
                Err::<Response<Full<Bytes>>, BoxError>("connect refused".into())
            }));
    let err = svc.clone().oneshot(get("/")).await.unwrap_err();
    assert_eq!(err.to_string(), "connect refused");
    assert_eq!(handle.state("global"), State::Open);
}

#[test]
fn bad_config_fails_at_build_time() {
    let err = CircuitBreakerLayer::new(
        "x",
        MemoryStore::new(),
        BreakerConfig::default().failure_rate(150.0),
    )
    .unwrap_err();
    assert!(err.to_string().contains("failure_rate"), "{err}");
    assert!(CircuitBreakerLayer::new("a/b", MemoryStore::new(), BreakerConfig::default()).is_err());
}

// On an axum Router, no HandleErrorLayer needed.
#[cfg(feature = "axum")]
#[tokio::test]
async fn works_as_an_axum_router_layer() {
    use axum::Router;
    use axum::routing::get;
    let clock = clock();
    let config = BreakerConfig::default()
        .consecutive_failures(2)
        .open_for(Duration::from_secs(60));
    let layer = layer(config, &clock);
    let app = Router::new()
        .route(
            "/flaky",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .layer(layer);
    let req = || {
        Request::get("/flaky")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    for _ in 0..2 {
        let res = app.clone().oneshot(req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    let res = app.oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "60");
}

// Keys beyond the cap share one overflow breaker.
#[tokio::test]
async fn keys_beyond_the_cap_share_an_overflow_breaker() {
    let clock = clock();
    let b = builder(BreakerConfig::default().consecutive_failures(1), &clock)
        .max_keys(2)
        .build()
        .unwrap()
        .handle();
    b.acquire("a").unwrap().record(Outcome::Success);
    b.acquire("b").unwrap().record(Outcome::Success);
    b.acquire("c").unwrap().record(Outcome::Failure);
    assert_eq!(b.len(), 3, "a, b and the overflow breaker");
    assert_eq!(b.state("~overflow"), State::Open);
    assert!(
        b.acquire("d").is_err(),
        "d shares the open overflow breaker"
    );
    assert!(b.acquire("a").is_ok());
}
