//! The client stack end to end on loopback: hyper-util, reqwest and a
//! tonic `Channel`.
#![cfg(all(feature = "tonic", feature = "reqwest"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::any;
use battlement::RequestId;
use battlement::backends::MemoryStore;
use battlement::body::LayerBody;
use battlement::circuit_breaker::{BreakerConfig, CircuitOpen, State as BreakerState};
use battlement::client::{ClientStack, ReqwestService, TonicBodyLayer};
use battlement::clock::{Clock, ManualClock};
use battlement::retry::{Attempts, Backoff, RetryLayer, RetryPolicy};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use tower::{ServiceBuilder, ServiceExt};

#[allow(clippy::all, missing_docs)]
mod helloworld {
    include!("../examples/tonic/helloworld.rs");
}

use helloworld::greeter_client::GreeterClient;
use helloworld::greeter_server::{Greeter, GreeterServer};
use helloworld::{HelloReply, HelloRequest};

/// The header values each attempt carried, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

/// A server on `/` (any method) that records the `header` each attempt
/// carried (empty when none) and answers what `answer` makes of the values
/// seen so far (the current one last).
async fn recording_server(
    seen: Seen,
    header: &'static str,
    answer: impl Fn(&[String]) -> axum::response::Response + Clone + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let app = Router::new()
        .route(
            "/",
            any(
                move |State(seen): State<Seen>, headers: HeaderMap| async move {
                    let value = headers
                        .get(header)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let mut values = seen.0.lock().unwrap();
                    values.push(value);
                    answer(&values)
                },
            ),
        )
        .with_state(seen);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Fails the first `fail_first` attempts with 503, then answers 200.
async fn http_server(seen: Seen, fail_first: usize) -> std::net::SocketAddr {
    recording_server(seen, "x-request-id", move |ids| {
        if ids.len() <= fail_first {
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        } else {
            "ok".into_response()
        }
    })
    .await
}

fn clock() -> ManualClock {
    ManualClock::new(Duration::from_secs(1_767_225_600))
}

fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(3)
        .backoff(Backoff::Exponential {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
}

// Hyper-util through the whole stack: retried, and
// every attempt carries the id of the request being handled.
#[tokio::test]
async fn hyper_util_through_the_stack_retries_with_one_request_id() {
    let seen = Seen::default();
    let addr = http_server(seen.clone(), 2).await;
    let clock = clock();
    let stack = ClientStack::new("up", MemoryStore::new())
        .retry(policy())
        .clock(clock.shared())
        .build()
        .unwrap();
    let http: Client<HttpConnector, LayerBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let client = ServiceBuilder::new().layer(stack).service(http);
    let id = RequestId::new_v7();
    let req = http::Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap();
    let res = id.clone().scope(client.oneshot(req)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(3)));
    let ids = seen.0.lock().unwrap().clone();
    assert_eq!(ids, vec![id.as_str().to_owned(); 3]);
}

/// A server recording each attempt's `Idempotency-Key`, answering what
/// `answer` makes of how many it has seen.
async fn key_server(answer: fn(usize) -> StatusCode) -> (Seen, std::net::SocketAddr) {
    let seen = Seen::default();
    let addr = recording_server(seen.clone(), "idempotency-key", move |keys| {
        answer(keys.len()).into_response()
    })
    .await;
    (seen, addr)
}

// With idempotency keys on, a POST gets one key, the same on every
// attempt, and is retried like a GET; a key the caller set is kept.
#[tokio::test]
async fn every_attempt_of_a_post_carries_one_idempotency_key() {
    // Two failures, then a success.
    let (seen, addr) = key_server(|n| match n % 3 {
        0 => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    })
    .await;
    // A new stack (a new breaker) per call: two failures in each.
    let client = || {
        let stack = ClientStack::new("up", MemoryStore::new())
            .retry(policy())
            .idempotency_keys(true)
            .clock(clock().shared())
            .build()
            .unwrap();
        let http: Client<HttpConnector, LayerBody<Full<Bytes>>> =
            Client::builder(TokioExecutor::new()).build_http();
        ServiceBuilder::new().layer(stack).service(http)
    };
    let post = |key: Option<&str>| {
        let mut req = http::Request::post(format!("http://{addr}/"));
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        req.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    };
    let res = client().oneshot(post(None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(3)));
    let keys = std::mem::take(&mut *seen.0.lock().unwrap());
    assert_eq!(keys.len(), 3);
    assert!(keys[0].starts_with('"') && keys[0].len() == 38, "{keys:?}");
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    let res = client().oneshot(post(Some("\"mine\""))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(*seen.0.lock().unwrap(), vec!["\"mine\"".to_owned(); 3]);
}

// Once the host's breaker opens, the retry waits out
// the open time when the deadline allows, else fails with CircuitOpen.
#[tokio::test]
async fn an_open_breaker_ends_retries_that_cannot_wait() {
    let seen = Seen::default();
    let addr = http_server(seen.clone(), usize::MAX).await;
    let clock = clock();
    let stack = ClientStack::new("up", MemoryStore::new())
        .retry(policy().deadline(Duration::from_secs(2)))
        .breaker(
            BreakerConfig::default()
                .consecutive_failures(3)
                .open_for(Duration::from_secs(30)),
        )
        .clock(clock.shared())
        .build()
        .unwrap();
    let breakers = stack.breakers();
    let http: Client<HttpConnector, LayerBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let client = ServiceBuilder::new().layer(stack).service(http);
    let req = || {
        http::Request::get(format!("http://{addr}/"))
            .body(Full::default())
            .unwrap()
    };
    // Three attempts, three failures: the breaker opens; the last 503 is
    // the answer.
    let res = client.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let host = format!("127.0.0.1:{}", addr.port());
    assert_eq!(breakers.state(&host), BreakerState::Open);
    let err = client.oneshot(req()).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
    assert_eq!(open.key(), host);
    assert_eq!(
        seen.0.lock().unwrap().len(),
        3,
        "the open breaker sent nothing"
    );
}

/// Answers each request id's first attempt with 503 and `Retry-After: 1`,
/// and its second with 200.
async fn pacing_server(seen: Seen) -> std::net::SocketAddr {
    recording_server(seen, "x-request-id", |ids| {
        let id = ids.last();
        if ids.iter().filter(|seen| Some(*seen) == id).count() == 1 {
            (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")]).into_response()
        } else {
            "ok".into_response()
        }
    })
    .await
}

// Many sequential requests, each paced once by the server: every one
// takes two attempts and waits only the second the server asked for. The
// stack's default breaker does not count the paced 503s, so it never
// opens and holds a request back for its whole open time.
#[tokio::test]
async fn sequential_requests_paced_by_retry_after_wait_only_what_the_server_asks() {
    let seen = Seen::default();
    let addr = pacing_server(seen.clone()).await;
    let clock = clock();
    let stack = ClientStack::new("up", MemoryStore::new())
        .retry(RetryPolicy::default().per_try_timeout(Duration::from_secs(5)))
        .clock(clock.shared())
        .build()
        .unwrap();
    let breakers = stack.breakers();
    let http: Client<HttpConnector, LayerBody<Full<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let client = ServiceBuilder::new().layer(stack).service(http);
    let started = clock.now();
    let requests = 12;
    for n in 1..=requests {
        let id = RequestId::new_v7();
        let req = http::Request::get(format!("http://{addr}/"))
            .body(Full::default())
            .unwrap();
        let res = id.scope(client.clone().oneshot(req)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "request {n}");
        assert_eq!(
            res.extensions().get::<Attempts>(),
            Some(&Attempts(2)),
            "request {n}"
        );
    }
    assert_eq!(seen.0.lock().unwrap().len(), 2 * requests);
    let host = format!("127.0.0.1:{}", addr.port());
    assert_eq!(breakers.state(&host), BreakerState::Closed);
    // One second of waiting per request, as the server asked; each time
    // the breaker opened, it added its 5 s.
    let waited = clock.now() - started;
    assert!(
        waited <= Duration::from_secs(requests as u64),
        "waited {waited:?} on the clock for {requests} requests"
    );
}

// The same flaky server through reqwest.
#[tokio::test]
async fn reqwest_through_the_retry_layer() {
    let seen = Seen::default();
    let addr = http_server(seen.clone(), 2).await;
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(policy()).unwrap().clock(clock().shared()))
        .service(ReqwestService::new(reqwest::Client::new()));
    let req = http::Request::get(format!("http://{addr}/"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = client.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(3)));
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(seen.0.lock().unwrap().len(), 3);
}

/// UNAVAILABLE with a 250 ms pushback on the first call, then greets.
#[derive(Default)]
struct PushesBack(Arc<Mutex<u32>>);

#[tonic::async_trait]
impl Greeter for PushesBack {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let n = {
            let mut calls = self.0.lock().unwrap();
            *calls += 1;
            *calls
        };
        if n == 1 {
            let mut status = Status::unavailable("warming up");
            status
                .metadata_mut()
                .insert("grpc-retry-pushback-ms", "250".parse().unwrap());
            return Err(status);
        }
        Ok(Response::new(HelloReply {
            message: format!("Hello {}", req.into_inner().name),
        }))
    }
}

// A unary call on a Channel retries UNAVAILABLE after the
// server's pushback.
#[tokio::test]
async fn a_tonic_channel_retries_unavailable_after_the_pushback() {
    let calls = Arc::new(Mutex::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(GreeterServer::new(PushesBack(calls.clone())))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let clock = clock();
    let start = clock.now();
    let stack = ClientStack::new("greeter", MemoryStore::new())
        .retry(policy())
        .clock(clock.shared())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(stack)
        .layer(TonicBodyLayer)
        .service(channel);
    let mut client = GreeterClient::new(svc);
    let reply = client
        .say_hello(HelloRequest {
            name: "Ferris".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.get_ref().message, "Hello Ferris");
    assert_eq!(*calls.lock().unwrap(), 2);
    assert_eq!(clock.now() - start, Duration::from_millis(250));

    // The next call succeeds at once: no wait, one call.
    let before = clock.now();
    client
        .say_hello(HelloRequest {
            name: "Crab".into(),
        })
        .await
        .unwrap();
    assert_eq!((*calls.lock().unwrap(), clock.now()), (3, before));
}

// `[client] idempotency_keys = true` gives the preset's POSTs a key.
#[tokio::test]
async fn the_client_config_turns_idempotency_keys_on() {
    let (seen, addr) = key_server(|_| StatusCode::OK).await;
    for (toml, keyed) in [("[client]\nidempotency_keys = true", true), ("", false)] {
        let config = battlement::stack::StackConfig::from_toml(toml).unwrap();
        let stack = battlement::stack::client("up", &config.client, MemoryStore::new()).unwrap();
        let http: Client<HttpConnector, LayerBody<Full<Bytes>>> =
            Client::builder(TokioExecutor::new()).build_http();
        let req = http::Request::post(format!("http://{addr}/"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let res = ServiceBuilder::new()
            .layer(stack)
            .service(http)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let key = seen.0.lock().unwrap().pop().unwrap();
        assert_eq!(key.len() == 38, keyed, "{toml:?}: {key:?}");
    }
}
