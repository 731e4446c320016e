//! Retries end to end against a real HTTP server on loopback, through
//! hyper-util's client. Back-offs run on a manual clock:
//! the observed delays are exact and nothing sleeps.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use battlement::body::LayerBody;
use battlement::client::ClientError;
use battlement::clock::{Clock, ManualClock};
use battlement::retry::{
    AttemptOutcome, AttemptTimedOut, Attempts, Backoff, Budget, RetryLayer, RetryPolicy,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// Counts the requests each route got.
#[derive(Clone, Default)]
struct Hits(Arc<AtomicUsize>);

impl Hits {
    fn next(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn unavailable(headers: &[(&str, String)]) -> axum::response::Response {
    let mut res = StatusCode::SERVICE_UNAVAILABLE.into_response();
    for (name, value) in headers {
        res.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    res
}

/// Serves the flaky routes; the address.
async fn server(hits: Hits) -> std::net::SocketAddr {
    let app = Router::new()
        // Fails the first two attempts with 503.
        .route(
            "/flaky",
            get(|State(h): State<Hits>| async move {
                if h.next() <= 2 {
                    unavailable(&[])
                } else {
                    "ok".into_response()
                }
            }),
        )
        .route(
            "/retry-after",
            get(|State(h): State<Hits>| async move {
                if h.next() == 1 {
                    unavailable(&[("retry-after", "1".into())])
                } else {
                    "ok".into_response()
                }
            }),
        )
        .route(
            "/retry-after-date",
            get(|State(h): State<Hits>| async move {
                let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3));
                if h.next() == 1 {
                    unavailable(&[("retry-after", date)])
                } else {
                    "ok".into_response()
                }
            }),
        )
        .route(
            "/retry-after-60",
            get(|State(h): State<Hits>| async move {
                h.next();
                unavailable(&[("retry-after", "60".into())])
            }),
        )
        .route(
            "/always-503",
            get(|State(h): State<Hits>| async move {
                h.next();
                unavailable(&[])
            }),
        )
        .route(
            "/slow-once",
            get(|State(h): State<Hits>| async move {
                if h.next() == 1 {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                "ok"
            }),
        )
        .route(
            "/order",
            post(
                |State(h): State<Hits>, headers: HeaderMap, body: Bytes| async move {
                    h.next();
                    let _ = (headers, body.len());
                    unavailable(&[])
                },
            ),
        )
        .route(
            "/upload",
            put(|State(h): State<Hits>, body: Bytes| async move {
                h.next();
                (StatusCode::SERVICE_UNAVAILABLE, body.len().to_string())
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(hits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

type ClientBody = LayerBody<Full<Bytes>>;

fn client(
    policy: RetryPolicy,
    clock: &ManualClock,
) -> impl tower::Service<
    http::Request<Full<Bytes>>,
    Response = http::Response<hyper::body::Incoming>,
    Error = BoxError,
> + Clone {
    let http: Client<HttpConnector, ClientBody> =
        Client::builder(TokioExecutor::new()).build_http();
    ServiceBuilder::new()
        .layer(
            RetryLayer::new(policy)
                .unwrap()
                .clock(clock.shared())
                .seed(7),
        )
        .service(http)
}

fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(4)
        .backoff(Backoff::Exponential {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
        .deadline(Duration::from_secs(10))
}

fn get_req(addr: std::net::SocketAddr, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

fn attempts<B>(res: &http::Response<B>) -> u32 {
    res.extensions().get::<Attempts>().unwrap().0
}

/// A manual clock standing at the real wall time (`Retry-After` dates are
/// read against it).
fn clock() -> ManualClock {
    ManualClock::new(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    )
}

// Two 503s, then 200: three attempts, jittered back-offs
// within their ceilings.
#[tokio::test]
async fn failing_attempts_are_retried_with_backoff() {
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let clock = clock();
    let start = clock.now();
    let res = client(policy(), &clock)
        .oneshot(get_req(addr, "/flaky"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!((attempts(&res), hits.get()), (3, 3));
    let waited = clock.now() - start;
    assert!(
        waited <= Duration::from_millis(300),
        "100 ms + 200 ms ceilings: {waited:?}"
    );
}

// Retry-After in seconds replaces the back-off.
#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let clock = clock();
    let start = clock.now();
    let res = client(policy(), &clock)
        .oneshot(get_req(addr, "/retry-after"))
        .await
        .unwrap();
    assert_eq!((res.status(), attempts(&res)), (StatusCode::OK, 2));
    assert_eq!(clock.now() - start, Duration::from_secs(1));
}

// Retry-After as an HTTP-date.
#[tokio::test]
async fn retry_after_dates_are_honoured() {
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let clock = clock();
    let start = clock.now();
    let res = client(policy(), &clock)
        .oneshot(get_req(addr, "/retry-after-date"))
        .await
        .unwrap();
    assert_eq!((res.status(), attempts(&res)), (StatusCode::OK, 2));
    let waited = clock.now() - start;
    assert!(
        waited > Duration::from_secs(1) && waited <= Duration::from_secs(3),
        "{waited:?}"
    );
}

// A hint past the deadline returns the response at once.
#[tokio::test]
async fn a_hint_past_the_deadline_gives_up_at_once() {
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let clock = clock();
    let start = clock.now();
    let res = client(policy(), &clock)
        .oneshot(get_req(addr, "/retry-after-60"))
        .await
        .unwrap();
    assert_eq!(
        (res.status(), attempts(&res), hits.get()),
        (StatusCode::SERVICE_UNAVAILABLE, 1, 1)
    );
    assert_eq!(res.headers()["retry-after"], "60");
    assert_eq!(clock.now(), start, "no wait");
}

// Attempts are bounded; the last response is returned.
#[tokio::test]
async fn attempts_are_bounded() {
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let res = client(policy(), &clock())
        .oneshot(get_req(addr, "/always-503"))
        .await
        .unwrap();
    assert_eq!(
        (res.status(), attempts(&res), hits.get()),
        (StatusCode::SERVICE_UNAVAILABLE, 4, 4)
    );
}

// An empty budget returns the first outcome at once.
#[tokio::test]
async fn an_exhausted_budget_stops_retries_at_once() {
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let empty = Budget {
        percent: 0.0,
        min_per_sec: 0,
        window: Duration::from_secs(10),
    };
    let clock = clock();
    let start = clock.now();
    let res = client(policy().budget(Some(empty)), &clock)
        .oneshot(get_req(addr, "/always-503"))
        .await
        .unwrap();
    assert_eq!(
        (res.status(), attempts(&res), hits.get()),
        (StatusCode::SERVICE_UNAVAILABLE, 1, 1)
    );
    assert_eq!(clock.now(), start);
}

// A per-try timeout cuts a slow attempt; the next one runs.
#[tokio::test]
async fn a_slow_attempt_times_out_and_is_retried() {
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let policy = policy().per_try_timeout(Duration::from_millis(200));
    let res = client(policy.clone(), &clock())
        .oneshot(get_req(addr, "/slow-once"))
        .await
        .unwrap();
    assert_eq!((res.status(), attempts(&res)), (StatusCode::OK, 2));
    // With one attempt only, the timeout is the error.
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let err = client(policy.max_attempts(1), &clock())
        .oneshot(get_req(addr, "/slow-once"))
        .await
        .unwrap_err();
    assert!(err.is::<AttemptTimedOut>(), "{err}");
}

// POST is retried only with an Idempotency-Key.
#[tokio::test]
async fn post_is_retried_only_with_an_idempotency_key() {
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let post = |key: Option<&str>| {
        let mut b = http::Request::post(format!("http://{addr}/order"));
        if let Some(key) = key {
            b = b.header("idempotency-key", key);
        }
        b.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    };
    let res = client(policy(), &clock())
        .oneshot(post(None))
        .await
        .unwrap();
    assert_eq!((attempts(&res), hits.get()), (1, 1));
    let res = client(policy(), &clock())
        .oneshot(post(Some("\"k\"")))
        .await
        .unwrap();
    assert_eq!((attempts(&res), hits.get()), (4, 5));
}

// The opt-in retries a POST without a key; a retry_if predicate decides
// in place of the statuses.
#[tokio::test]
async fn the_opt_in_and_a_predicate_decide_what_is_retried() {
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let post = || {
        http::Request::post(format!("http://{addr}/order"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let unkeyed = policy().retry_non_idempotent(true);
    let res = client(unkeyed.clone(), &clock())
        .oneshot(post())
        .await
        .unwrap();
    assert_eq!((attempts(&res), hits.get()), (4, 4));
    let only_502 = unkeyed.retry_if(
        |outcome| matches!(outcome, AttemptOutcome::Response { status, .. } if status == 502),
    );
    let res = client(only_502, &clock()).oneshot(post()).await.unwrap();
    assert_eq!((attempts(&res), hits.get()), (1, 5));
    // No status listed, and a predicate that retries 503.
    let only_503 = policy().statuses([]).retry_if(
        |outcome| matches!(outcome, AttemptOutcome::Response { status, .. } if status == 503),
    );
    let res = client(only_503, &clock())
        .oneshot(get_req(addr, "/always-503"))
        .await
        .unwrap();
    assert_eq!((attempts(&res), hits.get()), (4, 9));
}

// A 2 MiB streaming body is sent once, whole, and not retried.
#[tokio::test]
async fn a_large_streaming_body_is_sent_once_and_whole() {
    let hits = Hits::default();
    let addr = server(hits.clone()).await;
    let chunks = (0..32)
        .map(|_| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))));
    let body = StreamBody::new(tokio_stream::iter(chunks));
    let req = http::Request::put(format!("http://{addr}/upload"))
        .body(body)
        .unwrap();
    let http: Client<HttpConnector, LayerBody<StreamBody<_>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(policy()).unwrap().clock(clock().shared()))
        .service(http);
    let res = client.oneshot(req).await.unwrap();
    assert_eq!(
        (res.status(), attempts(&res), hits.get()),
        (StatusCode::SERVICE_UNAVAILABLE, 1, 1)
    );
    let received = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(received, (2 * 1024 * 1024).to_string());
}

// A connection reset is retried.
#[tokio::test]
async fn a_reset_connection_is_retried() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Hits::default();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            if count.next() == 1 {
                // Close without answering: the client sees a reset.
                drop(stream);
                continue;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    });
    let res = client(policy(), &clock())
        .oneshot(get_req(addr, "/"))
        .await
        .unwrap();
    assert_eq!(
        (res.status(), attempts(&res), accepted.get()),
        (StatusCode::OK, 2, 2)
    );
}

// A gRPC stream that sends a message and then waits for
// the server (bidi, or client streaming that pauses) is sent at once,
// never held back waiting for its end; what was read is sent first.
#[tokio::test]
async fn a_grpc_stream_waiting_for_the_server_is_not_held_back() {
    type Frames =
        tokio_stream::wrappers::ReceiverStream<Result<http_body::Frame<Bytes>, Infallible>>;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (got_tx, mut got) = tokio::sync::mpsc::channel::<LayerBody<StreamBody<Frames>>>(1);
    // The server answers as soon as the call starts, then reads the stream.
    let inner = tower::service_fn(move |req: http::Request<LayerBody<StreamBody<Frames>>>| {
        let got_tx = got_tx.clone();
        async move {
            let _ = got_tx.send(req.into_body()).await;
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
        }
    });
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::default()).unwrap())
        .service(inner);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"first "))))
        .await
        .unwrap();
    let call = http::Request::post("/chat.Chat/Talk")
        .header("content-type", "application/grpc")
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(2), svc.oneshot(call))
        .await
        .expect("the call started before its stream ended")
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"second"))))
        .await
        .unwrap();
    drop(tx);
    let body = got
        .recv()
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"first second");
}

/// Answers 503 once, then is never ready again (a full buffer or
/// concurrency limit that does not drain).
#[derive(Clone)]
struct StuckAfterOne(Arc<AtomicUsize>);

impl tower::Service<http::Request<LayerBody<String>>> for StuckAfterOne {
    type Response = http::Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        if self.0.load(Ordering::SeqCst) == 0 {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _: http::Request<LayerBody<String>>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        let mut res = http::Response::new(String::new());
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        std::future::ready(Ok(res))
    }
}

// Waiting for the inner service to be ready before a retry
// counts against the deadline; it does not hang past it.
#[tokio::test]
async fn waiting_for_a_stuck_service_ends_at_the_deadline() {
    let calls = Arc::new(AtomicUsize::new(0));
    let policy = RetryPolicy::default()
        .backoff(Backoff::Exponential {
            base: Duration::from_millis(10),
            max: Duration::from_millis(10),
        })
        .deadline(Duration::from_millis(300));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).unwrap())
        .service(StuckAfterOne(calls.clone()));
    let call = svc.oneshot(http::Request::get("/").body(String::new()).unwrap());
    let err = tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .expect("the retry gave up at its deadline")
        .unwrap_err();
    assert!(
        matches!(ClientError::from_box(err), ClientError::DeadlineExceeded(d) if d.source() == "retry")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// A keyed POST whose attempt times out here while the server still runs
// it meets the server's 409 for its own key on the retry: the retry layer
// waits out the `Retry-After` and asks again until the stored response
// comes back, instead of reporting a conflict for a request that
// succeeded.
#[tokio::test]
async fn a_keyed_retry_that_meets_its_own_key_in_flight_waits_for_the_stored_response() {
    use battlement::backends::MemoryStore;
    use battlement::idempotency::IdempotencyLayer;

    let runs = Arc::new(AtomicUsize::new(0));
    let handler = {
        let runs = runs.clone();
        tower::service_fn(move |_: http::Request<LayerBody<LayerBody<Full<Bytes>>>>| {
            runs.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut res = http::Response::new(Full::new(Bytes::from_static(b"paid")));
                *res.status_mut() = StatusCode::CREATED;
                Ok::<_, Infallible>(res)
            }
        })
    };
    let events = battlement::events::Events::new();
    let mut seen = events.subscribe();
    let client = ServiceBuilder::new()
        .layer(
            RetryLayer::new(
                RetryPolicy::default()
                    .per_try_timeout(Duration::from_millis(100))
                    .deadline(Duration::from_secs(5)),
            )
            .unwrap()
            .events(events),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service(handler);
    let req = http::Request::post("http://api.example/payments")
        .header("authorization", "Bearer alice")
        .header("idempotency-key", "\"pay-1\"")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let res = client.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "paid");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let names: Vec<_> = std::iter::from_fn(|| seen.try_recv().ok())
        .map(|e| e.event())
        .collect();
    assert!(names.contains(&"in_flight"), "{names:?}");
}
