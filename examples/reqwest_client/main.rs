//! The client stack on reqwest, as a reqwest-middleware `Middleware`:
//! request-id forwarding, an `Idempotency-Key` per POST, retry with
//! back-off and `Retry-After`, and a circuit breaker per upstream host.
//!
//! Run with: `cargo run --example reqwest_client --features reqwest-middleware -- http://127.0.0.1:3000/hello 5`
//! (start `cargo run --example axum` first). Sends the GETs one after the
//! other and prints, for each, its status, the attempts it took, the
//! breaker's state and the request id the upstream received. With
//! `METHOD=POST` (and the URL `http://127.0.0.1:3000/orders`) it sends
//! POSTs instead, each with its own `Idempotency-Key`, retried safely.

use std::time::Duration;

use battlement::RequestId;
use battlement::backends::MemoryStore;
use battlement::client::{ClientError, ClientStack, ClientStackMiddleware};
use battlement::retry::{Attempts, RetryPolicy};
use reqwest_middleware::ClientBuilder;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let usage =
        "usage: cargo run --example reqwest_client --features reqwest-middleware -- <url> [count]";
    let url: reqwest::Url = args.next().ok_or(usage)?.parse()?;
    let count: usize = args.next().map_or(Ok(1), |n| n.parse())?;
    let host = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => return Err(usage.into()),
    };
    let post = std::env::var("METHOD").is_ok_and(|m| m.eq_ignore_ascii_case("post"));

    // Breaker and retry budget state in memory (a `RedisStore` shares the
    // breakers between processes). The breaker opens when half the calls
    // of the last 10 s to a host failed, at least 5 of them. Each POST
    // gets an Idempotency-Key, the same on all its attempts, so the demo
    // server runs it once even when a response is lost.
    let stack = ClientStack::new("upstream", MemoryStore::new())
        .retry(RetryPolicy::default().per_try_timeout(Duration::from_secs(2)))
        .idempotency_keys(true)
        .build()?;
    let breakers = stack.breakers();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(ClientStackMiddleware::new(stack))
        .build();

    for n in 1..=count {
        // The id goes out as `x-request-id` on every attempt; inside a
        // server, the incoming request's id is forwarded instead.
        let id = RequestId::new_v7();
        let request = match post {
            true => client
                .post(url.clone())
                .header("content-type", "application/json")
                .body(format!(r#"{{"item":"tea","n":{n}}}"#)),
            false => client.get(url.clone()),
        };
        let status = match id.clone().scope(request.send()).await {
            Ok(response) => {
                let attempts = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
                format!("{} attempts={attempts}", response.status().as_u16())
            }
            Err(e) => match ClientError::from(e) {
                ClientError::CircuitOpen(open) => format!("breaker-open ({open})"),
                ClientError::RateLimited(limited) => format!("rate-limited ({limited})"),
                ClientError::AttemptTimedOut(t) => format!("timed-out ({t})"),
                ClientError::DeadlineExceeded(d) => format!("deadline ({d})"),
                other => format!("error ({other})"),
            },
        };
        println!(
            "{n} status={status} breaker={} request_id={id}",
            breakers.state(&host)
        );
    }
    Ok(())
}
