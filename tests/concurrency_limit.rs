//! The concurrency limit: immediate rejection at the limit (HTTP and gRPC),
//! priority shares, the adaptive limit under rising and falling latency,
//! and slots given back on cancellation and at the end of the body.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use battlement::clock::Clock;
use battlement::concurrency_limit::{
    ConcurrencyLimitConfig, ConcurrencyLimitHandle, ConcurrencyLimitLayer, GradientConfig,
    LimitConfig, Priority,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::sync::{Semaphore, mpsc};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, service_fn};

/// Time from tokio's clock, so paused tests move it.
#[derive(Debug)]
struct TokioClock(tokio::time::Instant);

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

fn tokio_clock() -> Arc<dyn Clock> {
    Arc::new(TokioClock(tokio::time::Instant::now()))
}

/// An inner service whose calls wait for a permit of `gate` and count
/// themselves in `calls`.
fn gated(
    gate: Arc<Semaphore>,
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<String>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send {
    service_fn(move |_req: Request<String>| {
        let gate = gate.clone();
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    })
}

fn get(path: &str) -> Request<String> {
    Request::get(path).body(String::new()).unwrap()
}

async fn wait_in_flight(handle: &ConcurrencyLimitHandle, n: usize) {
    while handle.in_flight() != n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn at_the_limit_the_next_request_is_rejected_at_once() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = ConcurrencyLimitLayer::fixed(2).unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(gated(gate.clone(), calls.clone()));

    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/work"))))
        .collect();
    wait_in_flight(&handle, 2).await;

    // Answered without waiting for any slot: the gate is still closed.
    let res = svc.clone().oneshot(get("/work")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let doc: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(doc["status"], 503);
    assert_eq!(doc["priority"], "normal");
    assert_eq!(doc["limit"], 2);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the inner service was called"
    );

    gate.add_permits(2);
    for h in held {
        let res = h.await.unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    }
    assert_eq!(handle.in_flight(), 0);
    // Slots are free again.
    gate.add_permits(1);
    let res = svc.oneshot(get("/work")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn grpc_rejection_is_resource_exhausted() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = ConcurrencyLimitLayer::fixed(1).unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(gated(gate.clone(), Arc::default()));
    let held = tokio::spawn(svc.clone().oneshot(get("/work")));
    wait_in_flight(&handle, 1).await;

    let req = Request::post("/pkg.Svc/Method")
        .header("content-type", "application/grpc+proto")
        .body(String::new())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "8");
    assert_eq!(res.headers()["retry-after"], "1");
    assert!(
        res.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains("concurrency limit")
    );
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );

    gate.add_permits(1);
    held.await.unwrap().unwrap();
}

#[tokio::test]
async fn batch_is_shed_before_normal_and_normal_before_critical() {
    let gate = Arc::new(Semaphore::new(0));
    let layer =
        ConcurrencyLimitLayer::fixed(10)
            .unwrap()
            .classify(|parts: &http::request::Parts| match parts.uri.path() {
                "/batch" => Priority::Batch,
                "/healthz" => Priority::Critical,
                _ => Priority::Normal,
            });
    let handle = layer.handle();
    let mut events = layer.event_stream().subscribe();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(gated(gate.clone(), Arc::default()));
    let mut held = Vec::new();
    let mut hold = |path: &'static str| held.push(tokio::spawn(svc.clone().oneshot(get(path))));

    // Batch fills half of the limit, then is shed.
    for _ in 0..5 {
        hold("/batch");
    }
    wait_in_flight(&handle, 5).await;
    let res = svc.clone().oneshot(get("/batch")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let shed = events.recv().await.unwrap();
    assert_eq!(
        (shed.event(), shed.policy()),
        ("shed_batch", Some("concurrency"))
    );

    // Normal traffic still gets in, up to 90 %.
    for _ in 0..4 {
        hold("/orders");
    }
    wait_in_flight(&handle, 9).await;
    let res = svc.clone().oneshot(get("/orders")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(events.recv().await.unwrap().event(), "shed_normal");

    // Critical traffic has the last slot to itself.
    hold("/healthz");
    wait_in_flight(&handle, 10).await;
    let res = svc.clone().oneshot(get("/healthz")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(events.recv().await.unwrap().event(), "shed_critical");

    gate.add_permits(10);
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test]
async fn shares_come_from_the_config() {
    let gate = Arc::new(Semaphore::new(0));
    let config: ConcurrencyLimitConfig = serde_json::from_str(
        r#"{"name": "api", "limit": {"fixed": 4}, "normal_share": 0.5, "batch_share": 0.25, "retry_after": "3s"}"#,
    )
    .unwrap();
    let layer = ConcurrencyLimitLayer::from_config(&config).unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(gated(gate.clone(), Arc::default()));
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/orders"))))
        .collect();
    wait_in_flight(&handle, 2).await;
    let res = svc.clone().oneshot(get("/orders")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "3");
    // The default classifier: health probes are critical.
    let probe = tokio::spawn(svc.clone().oneshot(get("/healthz")));
    wait_in_flight(&handle, 3).await;
    gate.add_permits(3);
    for h in held {
        h.await.unwrap().unwrap();
    }
    assert_eq!(probe.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[test]
fn invalid_configs_are_errors() {
    for json in [
        r#"{"limit": {"fixed": 0}}"#,
        r#"{"batch_share": 0.95}"#,
        r#"{"normal_share": 0}"#,
        r#"{"limit": {"adaptive": {"min_limit": 0}}}"#,
        r#"{"limit": {"adaptive": {"initial_limit": 5000}}}"#,
        r#"{"limit": {"adaptive": {"sample_percentile": 0}}}"#,
    ] {
        let config: ConcurrencyLimitConfig = serde_json::from_str(json).unwrap();
        assert!(
            ConcurrencyLimitLayer::from_config(&config).is_err(),
            "{json} should be rejected"
        );
    }
}

#[tokio::test]
async fn dropped_response_futures_give_their_slots_back() {
    let gate = Arc::new(Semaphore::new(0));
    let layer = ConcurrencyLimitLayer::fixed(3).unwrap();
    let handle = layer.handle();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(gated(gate.clone(), Arc::default()));

    // Aborted while the inner service runs.
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/work"))))
        .collect();
    wait_in_flight(&handle, 3).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        assert!(t.await.unwrap_err().is_cancelled());
    }
    assert_eq!(handle.in_flight(), 0);

    // Dropped before it was ever polled.
    let fut = svc.ready().await.unwrap().call(get("/work"));
    assert_eq!(handle.in_flight(), 1);
    drop(fut);
    assert_eq!(handle.in_flight(), 0);
}

type Chunks = StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

#[tokio::test]
async fn the_slot_is_held_until_the_response_body_ends() {
    // Each call hands the sender of its body's chunks to the test.
    let (body_tx, mut body_rx) = mpsc::channel(4);
    let layer = ConcurrencyLimitLayer::fixed(1).unwrap();
    let handle = layer.handle();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |_: Request<String>| {
            let body_tx = body_tx.clone();
            async move {
                let (chunks_tx, chunks_rx) = mpsc::channel(4);
                body_tx.send(chunks_tx).await.unwrap();
                let body: Chunks =
                    StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(chunks_rx));
                Ok::<_, Infallible>(Response::new(body))
            }
        }));

    // Read to the end.
    let res = svc.clone().oneshot(get("/stream")).await.unwrap();
    let chunks = body_rx.recv().await.unwrap();
    assert_eq!(
        handle.in_flight(),
        1,
        "the head alone does not free the slot"
    );
    let shed = svc.clone().oneshot(get("/stream")).await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let mut body = res.into_body();
    chunks
        .send(Ok(Frame::data(Bytes::from_static(b"a"))))
        .await
        .unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "a");
    assert_eq!(handle.in_flight(), 1);
    drop(chunks);
    assert!(body.frame().await.is_none());
    assert_eq!(handle.in_flight(), 0, "the end of the body frees the slot");
    drop(body);

    // Dropped halfway.
    let res = svc.clone().oneshot(get("/stream")).await.unwrap();
    let chunks = body_rx.recv().await.unwrap();
    chunks
        .send(Ok(Frame::data(Bytes::from_static(b"a"))))
        .await
        .unwrap();
    let mut body = res.into_body();
    body.frame().await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 1);
    drop(body);
    assert_eq!(handle.in_flight(), 0, "dropping the body frees the slot");
}

/// A server that does `capacity` requests at a time without queueing: a
/// request's latency is 10 ms × max(1, in flight / capacity).
#[derive(Clone)]
struct Saturating {
    capacity: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
}

impl Saturating {
    fn service(
        self,
    ) -> impl Service<
        Request<String>,
        Response = Response<Full<Bytes>>,
        Error = BoxError,
        Future = impl Send,
    > + Clone
    + Send {
        let this = self;
        service_fn(move |_: Request<String>| {
            let this = this.clone();
            async move {
                let n = this.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                let capacity = this.capacity.load(Ordering::SeqCst);
                let factor = (n as f64 / capacity as f64).max(1.0);
                tokio::time::sleep(Duration::from_millis(10).mul_f64(factor)).await;
                this.in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn adaptive_limit_falls_when_latency_rises_and_recovers_when_it_drops() {
    let gradient = GradientConfig {
        initial_limit: 10,
        min_limit: 2,
        max_limit: 500,
        sample_window: Duration::from_millis(100),
        min_rtt_samples: 10,
        min_rtt_interval: Duration::from_secs(600),
        min_rtt_jitter: 0.0,
        ..GradientConfig::default()
    };
    let config = ConcurrencyLimitConfig {
        limit: LimitConfig::Adaptive(gradient),
        ..ConcurrencyLimitConfig::default()
    };
    let layer = ConcurrencyLimitLayer::from_config(&config)
        .unwrap()
        .clock(tokio_clock());
    let handle = layer.handle();
    let mut events = layer.event_stream().subscribe();
    let seen = tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        loop {
            match events.recv().await {
                Ok(e) => {
                    seen.insert(e.event());
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return seen,
            }
        }
    });
    let server = Saturating {
        capacity: Arc::new(AtomicUsize::new(1000)),
        in_flight: Arc::default(),
    };
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(server.clone().service());
    assert_eq!(handle.limit(), 2, "the minimum latency is measured first");

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..80)
        .map(|_| {
            let svc = svc.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let res = svc.clone().oneshot(get("/work")).await.unwrap();
                    if res.status() == StatusCode::SERVICE_UNAVAILABLE {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let _ = res.into_body().collect().await;
                }
            })
        })
        .collect();

    // Flat latency: the limit grows.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let flat = handle.limit();
    assert!(flat >= 40, "limit with flat latency: {flat}");

    // Capacity 5: latency grows with concurrency past 5, the limit falls.
    server.capacity.store(5, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let saturated = handle.limit();
    assert!(
        saturated <= 16 && saturated * 3 <= flat,
        "limit at capacity 5: {saturated} (was {flat})"
    );

    // Capacity back: latency drops, the limit recovers.
    server.capacity.store(1000, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let recovered = handle.limit();
    assert!(
        recovered >= 40 && recovered >= 2 * saturated,
        "limit after recovery: {recovered} (was {saturated})"
    );

    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(handle.in_flight(), 0);

    drop(svc);
    drop(handle);
    let seen = seen.await.unwrap();
    for want in [
        "min_rtt_measured",
        "limit_increased",
        "limit_decreased",
        "shed_normal",
    ] {
        assert!(seen.contains(&want), "no {want} event in {seen:?}");
    }
}
