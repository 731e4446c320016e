//! The client stack as a reqwest-middleware `Middleware`, against the demo
//! server (`examples/axum`) running as its own process: a POST whose
//! response is lost runs once and gets its stored response, and the
//! stack's refusals come back as typed `ClientError`s.
#![cfg(all(
    feature = "reqwest-middleware",
    feature = "axum",
    feature = "prometheus"
))]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use battlement::backends::MemoryStore;
use battlement::circuit_breaker::BreakerConfig;
use battlement::client::{ClientError, ClientStack, ClientStackMiddleware};
use battlement::key::HostKey;
use battlement::rate_limit::Policy;
use battlement::retry::{Attempts, RetryPolicy};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use support::{Example, LossyProxy, free_port};

fn client(stack: ClientStack<MemoryStore>) -> ClientWithMiddleware {
    let stack = stack.build().expect("a valid stack");
    ClientBuilder::new(reqwest::Client::new())
        .with(ClientStackMiddleware::new(stack))
        .build()
}

fn addr(example: &Example) -> SocketAddr {
    example
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("the example's address")
}

async fn order(client: &ClientWithMiddleware, url: &str) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"item":"tea"}"#)
        .send()
        .await
        .expect("the order's response")
}

// The first response of a POST is lost after the server ran it: the
// retry, with the same Idempotency-Key, gets the stored response, and the
// order was placed once (the next order is number 2).
#[tokio::test]
async fn a_lost_response_is_replayed_not_run_again() {
    let server = Example::start("axum", &[]);
    let proxy = LossyProxy::start(addr(&server), 1).await;
    let client = client(
        ClientStack::new("orders", MemoryStore::new())
            .retry(RetryPolicy::default().deadline(Duration::from_secs(10)))
            .idempotency_keys(true),
    );
    let url = proxy.url("/orders");
    let res = order(&client, &url).await;
    assert_eq!(proxy.lost(), 1, "the first response was lost");
    assert_eq!(res.status(), 201);
    assert_eq!(res.url().as_str(), url);
    assert!(res.extensions().get::<Attempts>().is_some_and(|a| a.0 >= 2));
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let body = json(res).await;
    assert_eq!(body["order"], 1);
    // A new order (a new key) is the second one the handler placed.
    let next = json(order(&client, &url).await).await;
    assert_eq!(next["order"], 2);
}

async fn json(res: reqwest::Response) -> serde_json::Value {
    let text = res.text().await.expect("the body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

async fn error_of(client: &ClientWithMiddleware, url: &str) -> reqwest_middleware::Error {
    client.get(url).send().await.expect_err("an error")
}

// The breaker, the client quota, the retry's deadline and the per-try
// timeout each come back as their own ClientError; a connection failure
// stays reqwest's error, sorted as Transport.
#[tokio::test]
async fn the_stacks_refusals_are_typed() {
    let server = Example::start("axum", &[]);

    // Nothing listens: the breaker counts the failures and opens.
    let dead = format!("http://127.0.0.1:{}/hello", free_port());
    let breaking = client(
        ClientStack::new("dead", MemoryStore::new())
            .retry(RetryPolicy::default().deadline(Duration::from_secs(5)))
            .breaker(
                BreakerConfig::default()
                    .minimum_calls(2)
                    .open_for(Duration::from_secs(60)),
            ),
    );
    let err = error_of(&breaking, &dead).await;
    assert!(
        matches!(ClientError::of(&err), Some(ClientError::CircuitOpen(_))),
        "{err:?}"
    );
    let plain = client(
        ClientStack::new("dead", MemoryStore::new()).retry(RetryPolicy::default().max_attempts(1)),
    );
    let err = error_of(&plain, &dead).await;
    assert!(
        matches!(err, reqwest_middleware::Error::Reqwest(_)),
        "{err:?}"
    );
    assert!(matches!(ClientError::from(err), ClientError::Transport(_)));

    // One call a minute to the host: the second is refused here.
    let limited = client(
        ClientStack::new("hello", MemoryStore::new()).rate_limit(
            Policy::new("client", "1/m".parse().expect("a quota"))
                .expect("a policy")
                .key(HostKey),
        ),
    );
    let hello = server.url("/hello");
    let res = limited.get(&hello).send().await.expect("the first call");
    assert_eq!(res.status(), 200);
    match ClientError::from(error_of(&limited, &hello).await) {
        ClientError::RateLimited(e) => assert!(e.retry_after().is_some()),
        other => panic!("{other:?}"),
    }

    // The handler sleeps 5 s.
    let slow = server.url("/slow?ms=5000");
    let deadline = client(
        ClientStack::new("slow", MemoryStore::new())
            .retry(RetryPolicy::default().deadline(Duration::from_millis(300))),
    );
    match ClientError::from(error_of(&deadline, &slow).await) {
        ClientError::DeadlineExceeded(e) => assert_eq!(e.source(), "retry"),
        other => panic!("{other:?}"),
    }
    let per_try = client(
        ClientStack::new("slow", MemoryStore::new()).retry(
            RetryPolicy::default()
                .max_attempts(1)
                .per_try_timeout(Duration::from_millis(200)),
        ),
    );
    let err = error_of(&per_try, &slow).await;
    assert!(
        matches!(
            ClientError::of(&err),
            Some(ClientError::AttemptTimedOut(t)) if t.0 == Duration::from_millis(200)
        ),
        "{err:?}"
    );
}
