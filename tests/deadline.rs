//! The deadline layer: expiry answers, which deadline wins, the deadline
//! seen by handlers, and the client stack bounded by it. Time is tokio's,
//! paused: timers fire in order without real waiting.
#![cfg(feature = "axum")]

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Extension;
use axum::routing::get;
use battlement::backends::MemoryStore;
use battlement::body::LayerBody;
use battlement::client::ClientStack;
use battlement::deadline::{Deadline, DeadlineConfig, DeadlineLayer, RouteDeadline};
use battlement::events::Events;
use battlement::retry::{Attempts, Backoff, RetryPolicy};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer as _, ServiceBuilder, ServiceExt, service_fn};

/// Sets its flag when dropped: tells whether a handler's future was
/// dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn grpc(path: &str, timeout: Option<&str>) -> Request<String> {
    let mut req = Request::post(path).header("content-type", "application/grpc");
    if let Some(t) = timeout {
        req = req.header("grpc-timeout", t);
    }
    req.body(String::new()).unwrap()
}

async fn json<B>(res: Response<B>) -> serde_json::Value
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// A handler that takes `take`, noting whether it finished and whether its
/// future was dropped, and the time it had left when it started.
#[derive(Clone, Default)]
struct Slow {
    finished: Arc<AtomicBool>,
    dropped: Arc<AtomicBool>,
    left: Arc<Mutex<Option<Duration>>>,
}

impl Slow {
    fn service(
        &self,
        take: Duration,
    ) -> impl tower::Service<
        Request<String>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<String>, Infallible>> + Send,
    > + Clone
    + Send
    + 'static {
        let this = self.clone();
        service_fn(move |req: Request<String>| {
            let this = this.clone();
            async move {
                let _flag = DropFlag(this.dropped.clone());
                let deadline = req.extensions().get::<Deadline>().copied();
                *this.left.lock().unwrap() = deadline.map(|d| d.remaining());
                tokio::time::sleep(take).await;
                this.finished.store(true, Ordering::SeqCst);
                Ok(Response::new(String::from("done")))
            }
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_handler_gets_504_with_a_problem_and_is_dropped() {
    let events = Events::new();
    let mut rx = events.subscribe();
    let slow = Slow::default();
    let svc = ServiceBuilder::new()
        .layer(
            DeadlineLayer::new(Duration::from_secs(1))
                .unwrap()
                .events(events),
        )
        .service(slow.service(Duration::from_secs(10)));
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let doc = json(res).await;
    assert_eq!(doc["status"], 504);
    assert_eq!(doc["title"], "Gateway Timeout");
    assert_eq!(doc["timeout_ms"], 1000);
    assert_eq!(doc["timeout_source"], "default");
    assert!(slow.dropped.load(Ordering::SeqCst));
    assert!(!slow.finished.load(Ordering::SeqCst));
    let e = rx.try_recv().unwrap();
    assert_eq!(
        (e.layer(), e.event(), e.policy()),
        ("deadline", "timed_out", Some("default"))
    );
}

#[tokio::test(start_paused = true)]
async fn the_expiry_status_can_be_503_and_fast_handlers_pass() {
    let mut config = DeadlineConfig::new(Duration::from_secs(1));
    config.status = 503;
    let slow = Slow::default();
    let layer = DeadlineLayer::from_config(&config).unwrap();
    let res = layer
        .clone()
        .layer(slow.service(Duration::from_secs(2)))
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(res).await["status"], 503);

    let fast = Slow::default();
    let res = layer
        .layer(fast.service(Duration::from_millis(900)))
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(fast.finished.load(Ordering::SeqCst));
}

fn routed_layer() -> DeadlineLayer {
    let mut config = DeadlineConfig::new(Duration::from_secs(30));
    config.routes.push(RouteDeadline {
        route: "/pkg.Svc/Slow".into(),
        timeout: Duration::from_secs(1),
    });
    DeadlineLayer::from_config(&config).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_grpc_timeout_smaller_than_the_route_wins() {
    let slow = Slow::default();
    let svc = routed_layer().layer(slow.service(Duration::from_millis(500)));
    let res = svc
        .oneshot(grpc("/pkg.Svc/Slow", Some("100m")))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "4");
    assert_eq!(
        res.headers()["grpc-message"],
        "deadline of 100 ms (grpc-timeout) exceeded"
    );
    assert_eq!(*slow.left.lock().unwrap(), Some(Duration::from_millis(100)));
    assert!(slow.dropped.load(Ordering::SeqCst));

    // Without the header, the route's 1 s applies and 500 ms is in time.
    let slow = Slow::default();
    let svc = routed_layer().layer(slow.service(Duration::from_millis(500)));
    let res = svc.oneshot(grpc("/pkg.Svc/Slow", None)).await.unwrap();
    assert!(!res.headers().contains_key("grpc-status"));
    assert_eq!(*slow.left.lock().unwrap(), Some(Duration::from_secs(1)));

    // A larger grpc-timeout does not extend the route's.
    let slow = Slow::default();
    let svc = routed_layer().layer(slow.service(Duration::from_secs(2)));
    let res = svc
        .oneshot(grpc("/pkg.Svc/Slow", Some("5S")))
        .await
        .unwrap();
    assert_eq!(res.headers()["grpc-status"], "4");
    assert_eq!(*slow.left.lock().unwrap(), Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn a_malformed_grpc_timeout_is_ignored_or_rejected_with_internal() {
    let events = Events::new();
    let mut rx = events.subscribe();
    let slow = Slow::default();
    let svc = routed_layer()
        .events(events)
        .layer(slow.service(Duration::from_millis(10)));
    let res = svc
        .oneshot(grpc("/pkg.Svc/Slow", Some("1.5S")))
        .await
        .unwrap();
    assert!(!res.headers().contains_key("grpc-status"));
    assert!(slow.finished.load(Ordering::SeqCst));
    // The route's timeout applied.
    assert_eq!(*slow.left.lock().unwrap(), Some(Duration::from_secs(1)));
    let e = rx.try_recv().unwrap();
    assert_eq!(
        (e.event(), e.detail()),
        ("malformed_grpc_timeout", Some("1.5S"))
    );

    let mut config = DeadlineConfig::default();
    config.malformed_grpc_timeout = battlement::deadline::MalformedGrpcTimeout::Reject;
    let slow = Slow::default();
    let svc = DeadlineLayer::from_config(&config)
        .unwrap()
        .layer(slow.service(Duration::from_millis(10)));
    let res = svc
        .oneshot(grpc("/pkg.Svc/M", Some("123456789m")))
        .await
        .unwrap();
    assert_eq!(res.headers()["grpc-status"], "13");
    assert_eq!(
        slow.left.lock().unwrap().as_ref(),
        None,
        "inner never called"
    );
}

#[tokio::test(start_paused = true)]
async fn handlers_see_their_deadline_by_route_template() {
    async fn item(Extension(deadline): Extension<Deadline>) -> String {
        assert_eq!(Deadline::current(), Some(deadline));
        format!("{}", deadline.remaining().as_millis())
    }
    let mut config = DeadlineConfig::new(Duration::from_secs(30));
    config.routes.push(RouteDeadline {
        route: "/items/{id}".into(),
        timeout: Duration::from_millis(250),
    });
    let app = Router::new()
        .route("/items/{id}", get(item))
        .route("/other", get(item))
        .layer(DeadlineLayer::from_config(&config).unwrap());
    for (path, want) in [("/items/7", "250"), ("/other", "30000")] {
        let res = app
            .clone()
            .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, want, "{path}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_route_closure_and_an_outer_deadline_bound_the_request() {
    let slow = Slow::default();
    let inner = DeadlineLayer::new(Duration::from_secs(30))
        .unwrap()
        .route_timeout(|parts: &http::request::Parts| {
            (parts.uri.path() == "/quick").then_some(Duration::from_millis(50))
        });
    let outer = DeadlineLayer::new(Duration::from_secs(2)).unwrap();
    let svc = ServiceBuilder::new()
        .layer(outer)
        .layer(inner)
        .service(slow.service(Duration::from_secs(5)));
    let res = svc
        .clone()
        .oneshot(Request::get("/quick").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(*slow.left.lock().unwrap(), Some(Duration::from_millis(50)));
    let res = svc
        .oneshot(Request::get("/slow").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(json(res).await["timeout_source"], "outer");
    assert_eq!(*slow.left.lock().unwrap(), Some(Duration::from_secs(2)));
}

/// An upstream gRPC service that takes 150 ms and answers UNAVAILABLE
/// (trailers-only), noting the `grpc-timeout` of every attempt.
#[allow(clippy::type_complexity)]
fn upstream(
    seen: Arc<Mutex<Vec<String>>>,
) -> impl tower::Service<
    Request<LayerBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: Request<LayerBody<Full<Bytes>>>| {
        let seen = seen.clone();
        async move {
            let t = req
                .headers()
                .get("grpc-timeout")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            seen.lock().unwrap().push(t);
            tokio::time::sleep(Duration::from_millis(150)).await;
            Ok(Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "14")
                .body(Full::default())
                .unwrap())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_client_stack_forwards_the_time_left_and_retries_within_it() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stack = ClientStack::new("up", MemoryStore::new())
        .retry(
            RetryPolicy::default()
                .max_attempts(20)
                .deadline(Duration::from_secs(30))
                .backoff(Backoff::Decorrelated {
                    base: Duration::from_millis(200),
                    max: Duration::from_millis(200),
                }),
        )
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(stack)
        .service(upstream(seen.clone()));
    let handler = service_fn(move |_: Request<String>| {
        let client = client.clone();
        async move {
            let call = Request::post("http://upstream/pkg.Svc/M")
                .header("content-type", "application/grpc")
                .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
                .unwrap();
            let res = client.oneshot(call).await.unwrap();
            let attempts = res.extensions().get::<Attempts>().map_or(0, |a| a.0);
            Ok::<_, Infallible>(Response::new(format!(
                "attempts={attempts} grpc-status={}",
                res.headers()["grpc-status"].to_str().unwrap()
            )))
        }
    });
    let svc = DeadlineLayer::new(Duration::from_secs(1))
        .unwrap()
        .layer(handler);
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    // The retry gave up before the inbound deadline (no 504): attempts at
    // 0, 350 and 700 ms; the next would end past 1 s.
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "attempts=3 grpc-status=14");
    assert_eq!(
        *seen.lock().unwrap(),
        vec!["1000000u", "650000u", "300000u"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_set_grpc_timeout_is_kept_and_plain_http_gets_none() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stack = ClientStack::new("up", MemoryStore::new())
        .retry(RetryPolicy::default().max_attempts(1))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(stack)
        .service(upstream(seen.clone()));
    let handler = service_fn(move |_: Request<String>| {
        let client = client.clone();
        async move {
            let kept = Request::post("http://upstream/pkg.Svc/M")
                .header("content-type", "application/grpc")
                .header("grpc-timeout", "20m")
                .body(Full::default())
                .unwrap();
            client.clone().oneshot(kept).await.unwrap();
            let plain = Request::get("http://upstream/x")
                .body(Full::default())
                .unwrap();
            client.oneshot(plain).await.unwrap();
            Ok::<_, Infallible>(Response::new(String::new()))
        }
    });
    let svc = DeadlineLayer::new(Duration::from_secs(1))
        .unwrap()
        .layer(handler);
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), vec!["20m", ""]);
}
