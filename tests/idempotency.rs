//! The idempotency layer over the memory store: every rejection, replays, limits and store failures.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use battlement::FailurePolicy;
use battlement::backends::{Backend, MemoryStore};
use battlement::clock::ManualClock;
use battlement::idempotency::{AuthorizationScope, IdempotencyLayer};
use battlement::key::PeerAddr;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

/// An inner service answering `status` with a body naming its call
/// number, and a `set-cookie` pair.
fn counted(
    status: StatusCode,
    calls: &Arc<AtomicUsize>,
) -> impl Service<
    Request<battlement::body::LayerBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let calls = calls.clone();
    service_fn(
        move |req: Request<battlement::body::LayerBody<Full<Bytes>>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let res = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .header("set-cookie", "a=1")
                    .header("set-cookie", "b=2")
                    .header("connection", "close")
                    .body(Full::new(Bytes::from(format!(
                        "{{\"call\":{n},\"echo\":{}}}",
                        String::from_utf8_lossy(&body)
                    ))))
                    .unwrap();
                Ok::<_, Infallible>(res)
            }
        },
    )
}

/// A POST from 192.0.2.1, as a server with connect info sees it.
fn post(key: Option<&str>, body: &'static str) -> Request<Full<Bytes>> {
    let mut req = bare_post(key, body);
    req.extensions_mut()
        .insert(PeerAddr("192.0.2.1:40000".parse().unwrap()));
    req
}

/// A POST with no peer address: a server without connect info, a Unix
/// socket.
fn bare_post(key: Option<&str>, body: &'static str) -> Request<Full<Bytes>> {
    let mut b = Request::post("/orders");
    if let Some(key) = key {
        b = b.header("idempotency-key", key);
    }
    b.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn read(
    res: Response<impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug>>,
) -> (StatusCode, http::HeaderMap, String) {
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn layer() -> IdempotencyLayer<MemoryStore> {
    IdempotencyLayer::new(MemoryStore::new()).required(true)
}

// Missing, empty, too long, not a structured-field string.
#[tokio::test]
async fn bad_or_missing_keys_are_400_and_never_reach_the_inner_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service(counted(StatusCode::CREATED, &calls));
    let long = format!("\"{}\"", "k".repeat(256));
    for key in [
        None,
        Some("\"\""),
        Some(long.as_str()),
        Some("bare token"),
        Some("\"a\", \"b\""),
    ] {
        let res = svc.clone().oneshot(post(key, "{}")).await.unwrap();
        let (status, headers, body) = read(res).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key:?}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(body.contains("Idempotency-Key"), "{body}");
    }
    let ok = svc
        .oneshot(post(Some(&format!("\"{}\"", "k".repeat(255))), "{}"))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// Replay byte for byte, marked; hop-by-hop headers not stored.
#[tokio::test]
async fn a_completed_key_replays_status_headers_and_body() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service(counted(StatusCode::CREATED, &calls));
    let (s1, h1, b1) = read(
        svc.clone()
            .oneshot(post(Some("\"o-1\""), "{\"tea\":1}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s1, b1.as_str()),
        (StatusCode::CREATED, "{\"call\":1,\"echo\":{\"tea\":1}}")
    );
    assert!(!h1.contains_key("idempotent-replayed"));
    for _ in 0..3 {
        let (s, h, b) = read(
            svc.clone()
                .oneshot(post(Some("\"o-1\""), "{\"tea\":1}"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((s, b.as_str()), (s1, b1.as_str()));
        assert_eq!(h["idempotent-replayed"], "true");
        assert_eq!(h["content-type"], "application/json");
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(!h.contains_key("connection"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// 5xx responses are replayed too.
#[tokio::test]
async fn server_errors_are_replayed_too() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service(counted(StatusCode::INTERNAL_SERVER_ERROR, &calls));
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(post(Some("\"o-5\""), "{}"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// Same key, other request -> 422.
#[tokio::test]
async fn the_same_key_with_another_body_is_422() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service(counted(StatusCode::CREATED, &calls));
    svc.clone()
        .oneshot(post(Some("\"o-2\""), "{\"a\":1}"))
        .await
        .unwrap();
    let (status, headers, body) = read(
        svc.oneshot(post(Some("\"o-2\""), "{\"a\":2}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// A duplicate while the first runs -> 409, inner not called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_in_flight_is_409_with_retry_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let (finish_tx, finish_rx) = tokio::sync::watch::channel(false);
    let counter = calls.clone();
    let slow = service_fn(
        move |_req: Request<battlement::body::LayerBody<Full<Bytes>>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            if let Some(tx) = started_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            let mut finish = finish_rx.clone();
            async move {
                let _ = finish.wait_for(|done| *done).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
            }
        },
    );
    let svc = ServiceBuilder::new().layer(layer()).service(slow);
    let first = tokio::spawn(svc.clone().oneshot(post(Some("\"o-3\""), "{}")));
    started_rx.await.unwrap();
    let (status, headers, _) = read(
        svc.clone()
            .oneshot(post(Some("\"o-3\""), "{}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(headers["retry-after"], "1");
    finish_tx.send(true).unwrap();
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    let again = svc.oneshot(post(Some("\"o-3\""), "{}")).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// Other methods and keyless requests (when optional) pass.
#[tokio::test]
async fn get_and_optional_keyless_requests_pass_untouched() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service(counted(StatusCode::OK, &calls));
    for _ in 0..2 {
        let get = Request::get("/orders")
            .header("idempotency-key", "\"g\"")
            .body(Full::default())
            .unwrap();
        let res = svc.clone().oneshot(get).await.unwrap();
        assert!(!res.headers().contains_key("idempotent-replayed"));
        let res = svc.clone().oneshot(post(None, "{}")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

// Request body over the limit -> 413; a response over the
// limit is sent whole but not kept: duplicates get 410, nothing runs twice.
#[tokio::test]
async fn body_limits() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer().max_request_body(8).max_response_body(16))
        .service(counted(StatusCode::CREATED, &calls));
    let (status, _, body) = read(
        svc.clone()
            .oneshot(post(Some("\"big\""), "{\"123456789\":1}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The response (`{"call":1,"echo":{}}`, 21 bytes) is over 16.
    let (status, _, body) = read(
        svc.clone()
            .oneshot(post(Some("\"r\""), "{}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::CREATED, "{\"call\":1,\"echo\":{}}"),
        "sent whole"
    );
    let (status, headers, body) = read(svc.oneshot(post(Some("\"r\""), "{}")).await.unwrap()).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A streamed body of 8-byte chunks, possibly ending in an error.
type Chunks = http_body_util::StreamBody<tokio_stream::Iter<std::vec::IntoIter<ChunkResult>>>;
type ChunkResult = Result<http_body::Frame<Bytes>, std::io::Error>;

/// An inner service streaming `chunks` of 8 bytes (no size hint), then
/// failing if `fail`.
fn streaming(
    chunks: usize,
    fail: bool,
    calls: &Arc<AtomicUsize>,
) -> impl Service<
    Request<battlement::body::LayerBody<Full<Bytes>>>,
    Response = Response<Chunks>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let calls = calls.clone();
    service_fn(
        move |_req: Request<battlement::body::LayerBody<Full<Bytes>>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut frames: Vec<ChunkResult> = (0..chunks)
                .map(|_| Ok(http_body::Frame::data(Bytes::from_static(b"12345678"))))
                .collect();
            if fail {
                frames.push(Err(std::io::Error::other("upstream reset")));
            }
            let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
            async move { Ok::<_, Infallible>(Response::new(body)) }
        },
    )
}

// A streamed response crossing the limit mid-way is sent whole
// and not kept; a failing body is a 502 and not kept either.
#[tokio::test]
async fn streamed_responses_over_the_limit_or_failing_are_not_kept() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer().max_response_body(20))
        .service(streaming(4, false, &calls));
    let (status, _, body) = read(
        svc.clone()
            .oneshot(post(Some("\"s\""), "{}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body.len()),
        (StatusCode::OK, 32),
        "all 32 bytes sent"
    );
    let (status, _, _) = read(svc.oneshot(post(Some("\"s\""), "{}")).await.unwrap()).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let failing = ServiceBuilder::new()
        .layer(layer())
        .service(streaming(1, true, &calls));
    let (status, _, body) = read(
        failing
            .clone()
            .oneshot(post(Some("\"f\""), "{}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let (status, _, _) = read(failing.oneshot(post(Some("\"f\""), "{}")).await.unwrap()).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// A client that goes away mid-request does not lose the
// result: its retry gets the replay, and nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_still_stores_its_response() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let slow = service_fn(
        move |_req: Request<battlement::body::LayerBody<Full<Bytes>>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"placed"))))
            }
        },
    );
    let svc = ServiceBuilder::new().layer(layer()).service(slow);
    let gone = tokio::time::timeout(
        Duration::from_millis(50),
        svc.clone().oneshot(post(Some("\"c\""), "{}")),
    )
    .await;
    assert!(gone.is_err(), "the client gave up");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, headers, body) = read(
            svc.clone()
                .oneshot(post(Some("\"c\""), "{}"))
                .await
                .unwrap(),
        )
        .await;
        if status == StatusCode::OK {
            assert_eq!(
                (
                    headers["idempotent-replayed"].to_str().unwrap(),
                    body.as_str()
                ),
                ("true", "placed")
            );
            break;
        }
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(std::time::Instant::now() < deadline, "never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// Store down -> 503 by default, inner not called; fail-open
// executes; local fallback stays idempotent in this process.
#[tokio::test]
async fn store_failures_follow_the_failure_policy() {
    let calls = Arc::new(AtomicUsize::new(0));
    let down = MemoryStore::new();
    down.close();
    let closed = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(down.clone()))
        .service(counted(StatusCode::CREATED, &calls));
    let (status, headers, _) = read(closed.oneshot(post(Some("\"s\""), "{}")).await.unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    let open = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(down.clone()).failure_policy(FailurePolicy::FailOpen))
        .service(counted(StatusCode::CREATED, &calls));
    for _ in 0..2 {
        open.clone()
            .oneshot(post(Some("\"s\""), "{}"))
            .await
            .unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "fail-open executes every time"
    );

    let local = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(down).failure_policy(FailurePolicy::LocalFallback))
        .service(counted(StatusCode::CREATED, &calls));
    let mut replayed = Vec::new();
    for _ in 0..2 {
        let res = local
            .clone()
            .oneshot(post(Some("\"s\""), "{}"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        replayed.push(res.headers().contains_key("idempotent-replayed"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the fallback replays");
    assert_eq!(
        replayed,
        [false, true],
        "the second is the fallback's replay"
    );
}

// Two principals, one key: two executions.
#[tokio::test]
async fn keys_are_scoped_per_authorization() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service(counted(StatusCode::CREATED, &calls));
    for token in ["Bearer alice", "Bearer bob", "Bearer alice"] {
        let mut req = post(Some("\"shared\""), "{}");
        req.headers_mut()
            .insert("authorization", token.parse().unwrap());
        svc.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// A crashed request's lock expires, then the key runs once.
#[tokio::test]
async fn an_abandoned_claim_expires_after_the_lock() {
    let calls = Arc::new(AtomicUsize::new(0));
    let clock = ManualClock::new(Duration::from_secs(1_767_225_600));
    let store = MemoryStore::new().with_clock(clock.shared());
    let counter = calls.clone();
    // The first call never finishes: its future is dropped, as if the
    // process had died mid-request.
    let hang = service_fn(
        move |_req: Request<battlement::body::LayerBody<Full<Bytes>>>| {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
        },
    );
    let svc = ServiceBuilder::new()
        .layer(layer_on(store.clone()))
        .service(hang);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(50),
        svc.oneshot(post(Some("\"c\""), "{}")),
    )
    .await;
    assert!(abandoned.is_err());
    let ok = ServiceBuilder::new()
        .layer(layer_on(store))
        .service(counted(StatusCode::CREATED, &calls));
    let res = ok.clone().oneshot(post(Some("\"c\""), "{}")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT, "still locked");
    clock.advance(Duration::from_secs(30));
    let res = ok.clone().oneshot(post(Some("\"c\""), "{}")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = ok.oneshot(post(Some("\"c\""), "{}")).await.unwrap();
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

fn layer_on(store: MemoryStore) -> IdempotencyLayer<MemoryStore> {
    IdempotencyLayer::new(store)
        .required(true)
        .lock(Duration::from_secs(30))
}

// The handler runs in a task of its own (so a cancelled request still
// stores its response), yet sees the request's id and span as it would
// without the layer.
#[tokio::test]
async fn the_handler_keeps_the_request_id_and_span() {
    use battlement::request_id::{RequestId, RequestIdLayer};
    use tracing::Instrument;
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
    let seen = Arc::new(std::sync::Mutex::new(None));
    let handler = {
        let seen = seen.clone();
        service_fn(
            move |_req: Request<battlement::body::LayerBody<Full<Bytes>>>| {
                *seen.lock().unwrap() = Some((RequestId::current(), tracing::Span::current().id()));
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
            },
        )
    };
    let svc = ServiceBuilder::new()
        .layer(RequestIdLayer::new().span(false))
        .layer(layer())
        .service(handler);
    let span = tracing::info_span!("request");
    let res = svc
        .oneshot(post(Some("\"k\""), "{}"))
        .instrument(span.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let (id, span_id) = seen.lock().unwrap().take().expect("the handler ran");
    assert_eq!(
        id.as_ref().map(|id| id.as_str().to_owned()),
        Some(res.headers()["x-request-id"].to_str().unwrap().to_owned()),
        "the request id inside the handler"
    );
    assert!(
        span_id.is_some() && span_id == span.id(),
        "the request's span"
    );
}

// A handler that panics gets a 500 that does not repeat the panic's
// message, and frees the key: a retry runs again instead of waiting out
// the lock behind a 409.
#[tokio::test]
async fn a_panicking_handler_frees_its_key_and_keeps_its_message() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        service_fn(
            move |_req: Request<battlement::body::LayerBody<Full<Bytes>>>| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    assert!(!first, "secret: db password rejected");
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"created"))))
                }
            },
        )
    };
    let svc = ServiceBuilder::new().layer(layer()).service(handler);
    let (status, _, body) = read(
        svc.clone()
            .oneshot(post(Some("\"k\""), "{}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!body.contains("secret"), "{body}");
    let (status, _, body) = read(svc.oneshot(post(Some("\"k\""), "{}")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "created"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// An event stream (a POST answered with server-sent events) goes through
// at once, event by event, and is not kept: duplicates get 410.
#[tokio::test]
async fn an_event_stream_goes_through_at_once_and_is_not_kept() {
    type Events =
        tokio_stream::wrappers::ReceiverStream<Result<http_body::Frame<Bytes>, Infallible>>;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let handler = service_fn(
        move |_req: Request<battlement::body::LayerBody<Full<Bytes>>>| {
            let events = rx.lock().unwrap().take().expect("called once");
            async move {
                let res = Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(http_body_util::StreamBody::new(
                        tokio_stream::wrappers::ReceiverStream::new(events),
                    ) as http_body_util::StreamBody<Events>)
                    .unwrap();
                Ok::<_, Infallible>(res)
            }
        },
    );
    let svc = ServiceBuilder::new().layer(layer()).service(handler);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(
        b"data: 1\n\n",
    ))))
    .await
    .unwrap();
    let res = tokio::time::timeout(
        Duration::from_secs(2),
        svc.clone().oneshot(post(Some("\"k\""), "{}")),
    )
    .await
    .expect("the stream's head came before its end")
    .unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: 1\n\n");
    drop(tx);
    assert!(body.frame().await.is_none());
    let (status, _, _) = read(svc.oneshot(post(Some("\"k\""), "{}")).await.unwrap()).await;
    assert_eq!(status, StatusCode::GONE);
}

// A handler slower than the lock keeps its claim (renewed while it runs):
// a duplicate after the first lock is still 409, and the request runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_lock_keeps_its_claim() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        service_fn(
            move |_req: Request<battlement::body::LayerBody<Full<Bytes>>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"created"))))
                }
            },
        )
    };
    let svc = ServiceBuilder::new()
        .layer(layer().lock(Duration::from_secs(1)))
        .service(handler);
    let first = tokio::spawn(svc.clone().oneshot(post(Some("\"slow\""), "{}")));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _, _) = read(
        svc.clone()
            .oneshot(post(Some("\"slow\""), "{}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "the first is still running");
    let (status, _, body) = read(first.await.unwrap().unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "created"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// Without `Authorization` and without a peer address nothing tells two
// clients apart: rather than share one scope (where one would be replayed
// the other's response, `Set-Cookie` included), each is turned away, and
// nothing runs.
#[tokio::test]
async fn clients_with_no_credential_and_no_address_never_share_a_response() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service(counted(StatusCode::CREATED, &calls));
    for _client in ["alice", "mallory"] {
        let (status, headers, body) = read(
            svc.clone()
                .oneshot(bare_post(Some("\"order-1\""), "{}"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert!(headers.get("set-cookie").is_none());
        assert!(headers.get("idempotent-replayed").is_none());
        assert!(body.contains("idempotency scope unknown"), "{body}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Without a key the request is not the layer's business.
    let res = svc.clone().oneshot(bare_post(None, "{}")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    // With a credential it has a scope of its own.
    for token in ["Bearer alice", "Bearer mallory"] {
        let mut req = bare_post(Some("\"order-1\""), "{}");
        req.headers_mut()
            .insert("authorization", token.parse().unwrap());
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED, "{token}");
        assert!(res.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// gRPC gets the same refusal as a status.
#[tokio::test]
async fn a_grpc_call_with_no_scope_is_invalid_argument() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service(counted(StatusCode::OK, &calls));
    let mut req = bare_post(Some("\"call-1\""), "");
    req.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    let (status, headers, _) = read(svc.oneshot(req).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "3");
    assert!(
        headers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("idempotency scope unknown"),
        "{headers:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// A request from `peer` forwarded for `client`.
fn forwarded(peer: &str, client: &str) -> Request<Full<Bytes>> {
    let mut req = bare_post(Some("\"order-1\""), "{}");
    req.headers_mut()
        .insert("x-forwarded-for", client.parse().unwrap());
    req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
    req
}

// Behind a load balancer every peer is the balancer: unauthenticated
// clients are told apart by the address it forwards for.
#[tokio::test]
async fn behind_trusted_proxies_unauthenticated_clients_are_scoped_apart() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(
            IdempotencyLayer::new(MemoryStore::new())
                .scope(AuthorizationScope::new().trusted_proxies(["10.0.0.0/8".parse().unwrap()])),
        )
        .service(counted(StatusCode::CREATED, &calls));
    let a = svc
        .clone()
        .oneshot(forwarded("10.0.0.1:1", "203.0.113.7"))
        .await
        .unwrap();
    assert!(a.headers().get("idempotent-replayed").is_none());
    let b = svc
        .clone()
        .oneshot(forwarded("10.0.0.2:1", "203.0.113.8"))
        .await
        .unwrap();
    assert!(b.headers().get("idempotent-replayed").is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // The same client through another balancer gets its replay.
    let again = svc
        .oneshot(forwarded("10.0.0.2:1", "203.0.113.7"))
        .await
        .unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// The scope is part of the stack config: a header, the client address
// behind proxies, or (the default) `Authorization` then the address.
#[tokio::test]
async fn the_scope_is_chosen_in_the_stack_config() {
    use battlement::idempotency::ScopeConfig;
    use battlement::stack::{self, StackConfig};
    let default = StackConfig::from_toml("[idempotency]").unwrap();
    assert_eq!(
        default.idempotency.unwrap().scope,
        ScopeConfig::Authorization {
            trusted_proxies: vec![]
        }
    );

    /// The stack of `toml` around a counted `POST /orders`.
    async fn app(toml: &str, calls: &Arc<AtomicUsize>) -> (stack::ServerStack, axum::Router) {
        let stack = stack::server(&StackConfig::from_toml(toml).unwrap())
            .await
            .unwrap();
        let calls = calls.clone();
        let api = axum::Router::new().route(
            "/orders",
            axum::routing::post(move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::CREATED }
            }),
        );
        let app = stack.router(api);
        (stack, app)
    }
    fn order(headers: &[(&str, &str)], peer: Option<&str>) -> Request<axum::body::Body> {
        let mut b = Request::post("/orders").header("idempotency-key", "\"k\"");
        for (name, value) in headers {
            b = b.header(*name, *value);
        }
        let mut req = b.body(axum::body::Body::empty()).unwrap();
        if let Some(peer) = peer {
            let peer: std::net::SocketAddr = peer.parse().unwrap();
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
        }
        req
    }

    let calls = Arc::new(AtomicUsize::new(0));
    let (_stack, svc) = app(
        "[idempotency]\nscope = { by = \"header\", name = \"x-client-id\" }",
        &calls,
    )
    .await;
    for client in ["c-1", "c-2", "c-1"] {
        let req = order(&[("x-client-id", client)], None);
        svc.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let res = svc.oneshot(order(&[], Some("192.0.2.1:1"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "no x-client-id");

    let calls = Arc::new(AtomicUsize::new(0));
    let (_stack, svc) = app(
        "[idempotency]\nscope = { by = \"authorization\", trusted_proxies = [\"10.0.0.0/8\"] }",
        &calls,
    )
    .await;
    for client in ["203.0.113.7", "203.0.113.8", "203.0.113.7"] {
        let req = order(&[("x-forwarded-for", client)], Some("10.0.0.1:1"));
        svc.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let res = svc.oneshot(order(&[], None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "no address");

    let calls = Arc::new(AtomicUsize::new(0));
    let (_stack, svc) = app("[idempotency]\nscope = { by = \"client_ip\" }", &calls).await;
    for token in ["Bearer a", "Bearer b"] {
        let req = order(&[("authorization", token)], Some("192.0.2.1:1"));
        svc.clone().oneshot(req).await.unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one address, one scope");

    let typo = StackConfig::from_toml("[idempotency]\nscope = { by = \"cookie\" }").unwrap_err();
    assert!(typo.to_string().contains("idempotency.scope"), "{typo}");
    let bad = StackConfig::from_toml("[idempotency]\nscope = { by = \"header\", name = \"a b\" }")
        .unwrap();
    assert!(stack::server(&bad).await.is_err());
}

// One client posting many keys fills only its own scope: its oldest
// records go first, and another client's records stay.
#[tokio::test]
async fn one_client_cannot_evict_another_clients_records() {
    let store = MemoryStore::new().idempotency_max_scope_records(3);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store.clone()).required(true))
        .service(counted(StatusCode::CREATED, &calls));
    let from = |key: &str, auth: &'static str| {
        let mut req = post(Some(key), "{}");
        req.headers_mut()
            .insert("authorization", http::HeaderValue::from_static(auth));
        req
    };
    let res = svc
        .clone()
        .oneshot(from("\"b-1\"", "Bearer b"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    for n in 0..10 {
        let key = format!("\"a-{n}\"");
        let res = svc.clone().oneshot(from(&key, "Bearer a")).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    assert_eq!(
        store.idempotency_records(),
        3 + 1,
        "three of a's, one of b's"
    );
    let (status, headers, _) = read(svc.oneshot(from("\"b-1\"", "Bearer b")).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        headers.contains_key("idempotent-replayed"),
        "b's response was kept"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 11);
}

/// A keyed POST from `auth`, as a server with connect info sees it.
fn post_as(key: &str, auth: &'static str) -> Request<Full<Bytes>> {
    let mut req = post(Some(key), "{}");
    req.headers_mut()
        .insert("authorization", http::HeaderValue::from_static(auth));
    req
}

// A handler that outlives the deadline's 504 keeps running to store its
// response, and with it keeps its concurrency-limit slot and sees its
// deadline: the limit still bounds what runs.
#[tokio::test]
async fn a_handler_past_its_deadline_keeps_its_slot_and_sees_its_deadline() {
    use battlement::concurrency_limit::ConcurrencyLimitLayer;
    use battlement::deadline::{DeadlineLayer, inbound_deadline};

    let limit = ConcurrencyLimitLayer::fixed(1).unwrap();
    let in_flight = limit.handle();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let wait = Arc::new(tokio::sync::Mutex::new(Some(wait)));
    let handler = {
        let seen = seen.clone();
        service_fn(
            move |_: Request<battlement::body::LayerBody<Full<Bytes>>>| {
                seen.lock().unwrap().push(inbound_deadline().is_some());
                let wait = wait.clone();
                async move {
                    if let Some(rx) = wait.lock().await.take() {
                        let _ = rx.await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"placed"))))
                }
            },
        )
    };
    let svc = ServiceBuilder::new()
        .layer(limit)
        .layer(DeadlineLayer::new(Duration::from_millis(100)).unwrap())
        .layer(layer())
        .service(handler);
    let res = svc
        .clone()
        .oneshot(post_as("\"slow\"", "Bearer a"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    drop(res);
    assert_eq!(in_flight.in_flight(), 1, "the handler still runs");
    let other = svc
        .clone()
        .oneshot(post_as("\"other\"", "Bearer b"))
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "its slot is still taken"
    );
    drop(other);
    release.send(()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while in_flight.in_flight() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, headers, body) =
        read(svc.oneshot(post_as("\"slow\"", "Bearer a")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "placed"));
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(*seen.lock().unwrap(), [true], "one run, with its deadline");
}

// A handler still running at the execution bound is cancelled: its key
// is released (a retry runs), with an event.
#[tokio::test(start_paused = true)]
async fn a_handler_past_the_execution_bound_is_cancelled_and_its_key_released() {
    let events = battlement::events::Events::new();
    let mut seen = events.subscribe();
    let calls = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (calls, cancelled) = (calls.clone(), cancelled.clone());
        service_fn(
            move |_: Request<battlement::body::LayerBody<Full<Bytes>>>| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                let on_drop = CountOnDrop(cancelled.clone());
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    drop(on_drop);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"placed"))))
                }
            },
        )
    };
    let svc = ServiceBuilder::new()
        .layer(
            layer()
                .max_execution(Duration::from_secs(2))
                .events(events.clone()),
        )
        .service(handler);
    let (status, _, _) = read(
        svc.clone()
            .oneshot(post_as("\"hung\"", "Bearer a"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        1,
        "the handler was dropped"
    );
    let names: Vec<_> = std::iter::from_fn(|| seen.try_recv().ok())
        .map(|e| e.event())
        .collect();
    assert!(names.contains(&"abandoned"), "{names:?}");
    let (status, _, body) = read(svc.oneshot(post_as("\"hung\"", "Bearer a")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "placed"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

struct CountOnDrop(Arc<AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

// A service that panics in `call`, before its future exists, frees the
// key like a handler that panics: the retry runs at once.
#[tokio::test]
async fn a_panic_in_call_frees_the_key() {
    #[derive(Clone)]
    struct PanicsOnce(Arc<AtomicUsize>);
    impl Service<Request<battlement::body::LayerBody<Full<Bytes>>>> for PanicsOnce {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<battlement::body::LayerBody<Full<Bytes>>>) -> Self::Future {
            assert!(self.0.fetch_add(1, Ordering::SeqCst) > 0, "call panicked");
            std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"created")))))
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service(PanicsOnce(calls.clone()));
    let res = svc
        .clone()
        .oneshot(post_as("\"p\"", "Bearer a"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _, body) = read(svc.oneshot(post_as("\"p\"", "Bearer a")).await.unwrap()).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "created"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// A response that turned the request away before it ran (an inner auth
// or rate-limit layer's 401 / 403 / 429 / 503) is not kept: the retry
// runs. Other statuses, 500 included, are kept.
#[tokio::test]
async fn responses_that_turned_the_request_away_are_not_kept() {
    for turned_away in [401, 403, 429, 503] {
        let calls = Arc::new(AtomicUsize::new(0));
        let handler = {
            let calls = calls.clone();
            service_fn(
                move |_: Request<battlement::body::LayerBody<Full<Bytes>>>| {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    let status = if n == 0 { turned_away } else { 201 };
                    async move {
                        let mut res = Response::new(Full::new(Bytes::from_static(b"")));
                        *res.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(res)
                    }
                },
            )
        };
        let svc = ServiceBuilder::new().layer(layer()).service(handler);
        let first = svc
            .clone()
            .oneshot(post_as("\"r\"", "Bearer a"))
            .await
            .unwrap();
        assert_eq!(first.status().as_u16(), turned_away);
        let again = svc.oneshot(post_as("\"r\"", "Bearer a")).await.unwrap();
        assert_eq!(again.status(), StatusCode::CREATED, "after {turned_away}");
        assert!(!again.headers().contains_key("idempotent-replayed"));
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service(counted(StatusCode::INTERNAL_SERVER_ERROR, &calls));
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(post_as("\"e\"", "Bearer a"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a 500 is kept");
}

// Two clients that send the same `Authorization` value (a client library's
// `Bearer undefined`) but are two principals to the application's
// authentication layer get their own scopes: neither replays the other's
// response.
#[tokio::test]
async fn a_shared_credential_does_not_merge_verified_principals() {
    use battlement::idempotency::Principal;

    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer())
        .service(counted(StatusCode::CREATED, &calls));
    let as_user = |user: &'static str| {
        let mut req = post_as("\"order-1\"", "Bearer undefined");
        req.extensions_mut().insert(Principal::new(user));
        req
    };
    for user in ["alice", "bob"] {
        let res = svc.clone().oneshot(as_user(user)).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        assert!(
            !res.headers().contains_key("idempotent-replayed"),
            "{user} got another principal's response"
        );
    }
    let again = svc.oneshot(as_user("alice")).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// A scope header set by a gateway is believed only from the gateway: a
// client that reaches the server directly cannot pick a scope with it.
#[tokio::test]
async fn a_gateway_scope_header_is_believed_only_from_the_gateway() {
    use battlement::stack::StackConfig;

    let config = StackConfig::from_toml(
        "[idempotency]\nscope = { by = \"header\", name = \"x-client-id\", \
         trusted_proxies = [\"10.0.0.0/8\"] }",
    )
    .unwrap();
    let layer =
        IdempotencyLayer::from_config(MemoryStore::new(), &config.idempotency.unwrap()).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(counted(StatusCode::CREATED, &calls));
    let from = |peer: &str| {
        let mut req = bare_post(Some("\"k\""), "{}");
        req.headers_mut()
            .insert("x-client-id", http::HeaderValue::from_static("victim"));
        req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        req
    };
    let res = svc.clone().oneshot(from("10.1.2.3:5000")).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let (status, _, body) = read(svc.oneshot(from("192.0.2.9:5000")).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("gateway"), "{body}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// A handler that answered but whose body is still coming at the execution
// bound has done its work: the body is not kept (duplicates get 410) and
// the key is not released, so a retry never runs it twice.
#[tokio::test(start_paused = true)]
async fn a_body_still_coming_at_the_bound_is_not_kept_and_the_handler_never_runs_again() {
    type Endless = http_body_util::StreamBody<
        futures_util::stream::Pending<Result<http_body::Frame<Bytes>, std::io::Error>>,
    >;
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = calls.clone();
        service_fn(
            move |_: Request<battlement::body::LayerBody<Full<Bytes>>>| {
                calls.fetch_add(1, Ordering::SeqCst);
                let body: Endless =
                    http_body_util::StreamBody::new(futures_util::stream::pending());
                async move { Ok::<_, Infallible>(Response::new(body)) }
            },
        )
    };
    let svc = ServiceBuilder::new()
        .layer(layer().max_execution(Duration::from_secs(2)))
        .service(handler);
    let first = svc
        .clone()
        .oneshot(post_as("\"slow-body\"", "Bearer a"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::BAD_GATEWAY);
    let again = svc
        .oneshot(post_as("\"slow-body\"", "Bearer a"))
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::GONE);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
