//! The client stack on reqwest: request-id forwarding, retry with
//! back-off and `Retry-After`, and a circuit breaker per upstream host.
//!
//! Run with: `cargo run --example reqwest_client --features reqwest -- http://127.0.0.1:3000/hello 5`
//! (start `cargo run --example axum` first). Sends the GETs one after the
//! other and prints, for each, its status, the attempts it took, the
//! breaker's state and the request id the upstream received.

use std::time::Duration;

use battlement::RequestId;
use battlement::backends::MemoryStore;
use battlement::client::{ClientStack, ReqwestService};
use battlement::retry::{Attempts, RetryPolicy};
use tower::{ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: cargo run --example reqwest_client --features reqwest -- <url> [count]";
    let url: http::Uri = args.next().ok_or(usage)?.parse()?;
    let count: usize = args.next().map_or(Ok(1), |n| n.parse())?;
    let host = url.authority().ok_or(usage)?.as_str().to_ascii_lowercase();

    // Breaker and retry budget state in memory (a `RedisStore` shares the
    // breakers between processes). The breaker opens when half the calls
    // of the last 10 s to a host failed, at least 5 of them.
    let stack = ClientStack::new("upstream", MemoryStore::new())
        .retry(RetryPolicy::default().per_try_timeout(Duration::from_secs(2)))
        .build()?;
    let breakers = stack.breakers();
    let client = ServiceBuilder::new()
        .layer(stack)
        .service(ReqwestService::new(reqwest::Client::new()));

    for n in 1..=count {
        // The id goes out as `x-request-id` on every attempt; inside a
        // server, the incoming request's id is forwarded instead.
        let id = RequestId::new_v7();
        let request = http::Request::get(url.clone()).body(String::new())?;
        let status = match id.clone().scope(client.clone().oneshot(request)).await {
            Ok(response) => {
                let attempts = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
                format!("{} attempts={attempts}", response.status().as_u16())
            }
            // `CircuitOpen`, `RateLimited`, a timeout or a connection error.
            Err(e) => format!("error ({e})"),
        };
        println!(
            "{n} status={status} breaker={} request_id={id}",
            breakers.state(&host)
        );
    }
    Ok(())
}
