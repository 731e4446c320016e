//! The service the W3C Trace Context test suite drives.
//!
//! Run with: `cargo run --example w3c` (then run the suite from
//! github.com/w3c/trace-context `test/`:
//! `python test.py http://127.0.0.1:5000/test`).
//!
//! `POST /test` takes a JSON array of `{"url", "arguments"}` and, for each
//! element, POSTs `arguments` as JSON to `url` through a client with the
//! client trace layer: the trace context the server trace layer read from
//! the request goes on to every call. Listens on `BIND` (default
//! `127.0.0.1:5000`).

use axum::routing::post;
use axum::{Json, Router};
use battlement::TraceLayer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::util::SubscriberInitExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One call the suite asks for.
#[derive(serde::Deserialize)]
struct Call {
    url: String,
    arguments: Value,
}

/// Makes each call in order, inside the request's trace.
async fn test(Json(calls): Json<Vec<Call>>) -> Result<&'static str, String> {
    let client = ServiceBuilder::new()
        .layer(TraceLayer::client())
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());
    for call in calls {
        let body = serde_json::to_vec(&call.arguments).map_err(|e| e.to_string())?;
        let req = http::Request::post(&call.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let res = client
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| e.to_string())?;
        let _ = res.into_body().collect().await;
    }
    Ok("ok")
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Installs the W3C propagator and a tracer, so each request gets a span.
    let telemetry = battlement::telemetry::init("w3c")?;
    let logs = tracing_subscriber::fmt::layer().with_filter(LevelFilter::WARN);
    telemetry.subscriber(logs).try_init()?;
    let app = Router::new()
        .route("/test", post(test))
        .layer(TraceLayer::server());
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    println!("listening on http://{}/test", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_empty_list_makes_no_calls() {
        let app = Router::new().route("/test", post(test));
        let req = http::Request::post("/test")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from("[]"))
            .unwrap();
        assert_eq!(app.oneshot(req).await.unwrap().status(), 200);
    }
}
