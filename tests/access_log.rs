//! The access log: one line per request when its response ends, at a
//! level that follows the status, with the route (never an unmatched
//! request's raw path), the request id and the trace id; successes
//! sampled, errors always written; probes left out; on in the preset.
#![cfg(all(feature = "axum", feature = "prometheus"))]

mod support;

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::get;
use battlement::RequestIdLayer;
use battlement::stack::{self, StackConfig};
use battlement::trace::{AccessLog, TraceLayer};
use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use support::Lines;
use tower::ServiceExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::Layer;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Routes answering 200, 500, a streamed body, and a gRPC call that
/// fails in its trailers.
fn api() -> Router {
    let streamed = || async {
        let chunks = futures_util::stream::iter(["a", "b"].map(Ok::<_, Infallible>));
        Body::from_stream(chunks)
    };
    let grpc = || async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        let body = http_body_util::Full::new(Bytes::new())
            .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
        http::Response::builder()
            .header("content-type", "application/grpc")
            .body(Body::new(body))
            .unwrap()
    };
    Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/boom", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route("/stream", get(streamed))
        .route("/unit.Svc/Call", axum::routing::post(grpc))
}

/// `app` behind the request id and a trace layer writing `log`.
fn logged(log: AccessLog) -> Router {
    api()
        .layer(support::traced(TraceLayer::server().access_log(Some(log))))
        .layer(RequestIdLayer::new().span(false))
}

/// A subscriber printing with `filter` (RUST_LOG's syntax) into `lines`,
/// and recording spans, so requests have trace ids.
fn subscriber(filter: &str, lines: &Lines) -> impl tracing::Subscriber + Send + Sync {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(InMemorySpanExporter::default())
        .build();
    support::record_spans_with(&provider);
    let writer = lines.clone();
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .with_filter(EnvFilter::new(filter));
    battlement::telemetry::subscriber(provider.tracer("test"), logs)
}

/// Sends `req` to `app` and reads the whole body.
async fn send(app: &Router, req: http::Request<Body>) -> StatusCode {
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    res.into_body().collect().await.unwrap();
    status
}

fn get_req(path: &str) -> http::Request<Body> {
    http::Request::get(path)
        .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
        .header("x-request-id", "req-1")
        .body(Body::empty())
        .unwrap()
}

/// The access lines among `text`.
fn access_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.contains("battlement::access"))
        .collect()
}

// `info`, as RUST_LOG=info: one line per request, success at INFO with
// route, status, request id and trace id; 5xx at WARN; an unmatched path
// is `_OTHER`; a probe writes none.
#[tokio::test]
async fn one_line_per_request_at_info_and_5xx_at_warn() {
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(subscriber("info", &lines));
    let app = logged(AccessLog::new());

    assert_eq!(send(&app, get_req("/items/42")).await, 200);
    assert_eq!(send(&app, get_req("/boom")).await, 500);
    assert_eq!(send(&app, get_req("/secret-token-123")).await, 404);
    send(&app, get_req("/readyz")).await;

    let text = lines.text();
    let access = access_lines(&text);
    assert_eq!(access.len(), 3, "{text}");
    let ok = access[0];
    assert!(ok.contains(" INFO "), "{ok}");
    for field in [
        "http.request.method=\"GET\"",
        "http.route=\"/items/{id}\"",
        "http.response.status_code=200",
        "request.id=\"req-1\"",
        &format!("trace_id={TRACE}"),
        "duration_ms=",
    ] {
        assert!(ok.contains(field), "{field} in {ok}");
    }
    assert!(access[1].contains(" WARN "), "{}", access[1]);
    assert!(access[1].contains("status_code=500"), "{}", access[1]);
    assert!(access[2].contains(" INFO "), "{}", access[2]);
    assert!(access[2].contains("http.route=\"_OTHER\""), "{}", access[2]);
    assert!(!text.contains("secret-token-123"), "{text}");
    assert!(!text.contains("/readyz"), "{text}");
}

// `warn` (the usual production level) keeps the errors only; 4xx can be
// raised to warn.
#[tokio::test]
async fn at_warn_only_errors_are_written() {
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(subscriber("warn", &lines));
    let app = logged(AccessLog::new().client_errors(tracing::Level::WARN));
    send(&app, get_req("/items/42")).await;
    send(&app, get_req("/boom")).await;
    send(&app, get_req("/nope")).await;
    let text = lines.text();
    let access = access_lines(&text);
    assert_eq!(access.len(), 2, "{text}");
    assert!(access.iter().all(|l| l.contains(" WARN ")), "{text}");
    assert!(access[1].contains("status_code=404"), "{text}");
}

// A sampled share of the successes; every error.
#[tokio::test]
async fn successes_are_sampled_errors_always_written() {
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(subscriber("info", &lines));
    let none = logged(AccessLog::new().sample_successes(0.0));
    for _ in 0..20 {
        let req = http::Request::get("/items/1").body(Body::empty()).unwrap();
        send(&none, req).await;
    }
    send(&none, get_req("/boom")).await;
    send(&none, get_req("/nope")).await;
    let text = lines.text();
    let access = access_lines(&text);
    assert_eq!(access.len(), 2, "{text}");

    let half = logged(AccessLog::new().sample_successes(0.5));
    for _ in 0..400 {
        // A new trace each: the share is decided on the trace id.
        let req = http::Request::get("/items/1").body(Body::empty()).unwrap();
        send(&half, req).await;
    }
    let text = lines.text();
    let written = access_lines(&text).len() - 2;
    assert!((120..=280).contains(&written), "{written} of 400");
}

// A streamed body is logged when it ends, not when its head is sent; a
// gRPC status in the trailers sets the level (INTERNAL: warn).
#[tokio::test]
async fn streamed_bodies_are_logged_when_they_end() {
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(subscriber("info", &lines));
    let app = logged(AccessLog::new());
    let res = app.clone().oneshot(get_req("/stream")).await.unwrap();
    assert!(access_lines(&lines.text()).is_empty());
    res.into_body().collect().await.unwrap();
    assert_eq!(access_lines(&lines.text()).len(), 1);

    let req = http::Request::post("/unit.Svc/Call")
        .header("content-type", "application/grpc")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    let text = lines.text();
    let grpc = access_lines(&text)[1];
    assert!(grpc.contains(" WARN "), "{grpc}");
    assert!(grpc.contains("rpc.grpc.status_code=13"), "{grpc}");
    assert!(grpc.contains("http.route=\"/unit.Svc/Call\""), "{grpc}");
}

// The preset writes the access log by default; `[access_log]` samples it
// or turns it off.
#[tokio::test]
async fn the_preset_writes_the_access_log_by_default() {
    let lines = Lines::default();
    let _guard = tracing::subscriber::set_default(subscriber("info", &lines));
    for (toml, expected) in [
        ("", 1),
        ("[access_log]\nenabled = false", 0),
        ("[access_log]\nsample_successes = 0.0", 0),
    ] {
        let before = access_lines(&lines.text()).len();
        let config = StackConfig::from_toml(toml).unwrap();
        let server = stack::server(&config).await.unwrap();
        let app = server.router(api());
        assert_eq!(send(&app, get_req("/items/7")).await, 200);
        assert_eq!(send(&app, get_req("/readyz")).await, 200);
        let text = lines.text();
        assert_eq!(
            access_lines(&text).len() - before,
            expected,
            "{toml}: {text}"
        );
    }
    let err = StackConfig::from_toml("[access_log]\nclient_errors = \"loud\"").unwrap_err();
    assert!(err.to_string().contains("loud"), "{err}");
}
