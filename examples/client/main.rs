//! The battlement client stack, from the command line.
//!
//! Run with: `cargo run --example client -- http://127.0.0.1:3000/hello 20`
//! (start `cargo run --example axum` first).
//!
//! Sends `count` GET requests (default 10) through the client stack —
//! request-id forwarding, retry with back-off, `Retry-After` and a budget,
//! a circuit breaker per host, and a client-side rate limit (`CLIENT_RATE`,
//! default `50/s`) — and prints one line per request: status, attempts,
//! breaker state and request id.

use std::time::Duration;

use battlement::RequestId;
use battlement::backends::MemoryStore;
use battlement::body::LayerBody;
use battlement::client::{ClientError, ClientStack};
use battlement::key::HostKey;
use battlement::rate_limit::{Policy, Quota};
use battlement::retry::{Attempts, RetryPolicy};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Sends `count` GETs to `url`; one line per request.
async fn run(url: &str, count: usize, rate: Quota) -> Result<Vec<String>, Error> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let host = uri
        .authority()
        .ok_or_else(|| format!("{url:?}: expected an absolute http:// URL"))?
        .as_str()
        .to_ascii_lowercase();
    let stack = ClientStack::new("cli", MemoryStore::new())
        .retry(RetryPolicy::default().per_try_timeout(Duration::from_secs(5)))
        .rate_limit(Policy::new("client", rate)?.key(HostKey))
        .build()?;
    let breakers = stack.breakers();
    let http: Client<HttpConnector, LayerBody<Empty<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let client = ServiceBuilder::new().layer(stack).service(http);
    let mut lines = Vec::with_capacity(count);
    for n in 1..=count {
        let id = RequestId::new_v7();
        let req = http::Request::get(uri.clone()).body(Empty::new())?;
        let outcome = id.clone().scope(client.clone().oneshot(req)).await;
        let (status, attempts) = match outcome {
            Ok(res) => {
                let attempts = res.extensions().get::<Attempts>().map_or(1, |a| a.0);
                let status = res.status();
                // Read the body so the connection is reused.
                let _ = res.into_body().collect().await;
                (status.as_u16().to_string(), attempts.to_string())
            }
            Err(e) => match ClientError::from_box(e) {
                ClientError::CircuitOpen(_) => ("breaker-open".into(), "-".into()),
                ClientError::RateLimited(_) => ("rate-limited".into(), "-".into()),
                other => (format!("error ({other})"), "-".into()),
            },
        };
        lines.push(format!(
            "{n:>3} status={status} attempts={attempts} breaker={} request_id={id}",
            breakers.state(&host)
        ));
    }
    Ok(lines)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: cargo run --example client -- <url> [count]")?;
    let count = match args.next() {
        Some(n) => n.parse().map_err(|e| format!("count {n:?}: {e}"))?,
        None => 10,
    };
    let rate = std::env::var("CLIENT_RATE").unwrap_or_else(|_| "50/s".into());
    let rate: Quota = rate
        .parse()
        .map_err(|e| format!("CLIENT_RATE={rate:?}: {e}"))?;
    for line in run(&url, count, rate).await? {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::get;

    use super::*;

    /// A server whose every third request fails with 503.
    async fn server() -> String {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Router::new().route(
            "/hello",
            get(move || {
                let n = hits.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n % 3 == 0 {
                        (StatusCode::SERVICE_UNAVAILABLE, "busy")
                    } else {
                        (StatusCode::OK, "hello")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hello")
    }

    #[tokio::test]
    async fn one_line_per_request_with_status_attempts_breaker_and_id() {
        let url = server().await;
        let lines = run(&url, 4, "100/s".parse().unwrap()).await.unwrap();
        assert_eq!(lines.len(), 4);
        // The first request meets a 503, then succeeds on its second try.
        assert!(
            lines[0].contains("status=200 attempts=2 breaker=closed"),
            "{}",
            lines[0]
        );
        for line in &lines {
            let id = line.split("request_id=").nth(1).unwrap();
            assert_eq!(
                uuid::Uuid::parse_str(id).unwrap().get_version_num(),
                7,
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn the_client_rate_limit_answers_locally() {
        let url = server().await;
        // Two attempts use the quota of 2 per hour (the first met a 503);
        // the next request is refused without being sent.
        let lines = run(&url, 2, "2/h".parse().unwrap()).await.unwrap();
        assert!(lines[0].contains("status=200 attempts=2"), "{}", lines[0]);
        assert!(lines[1].contains("status=rate-limited"), "{}", lines[1]);
    }
}
