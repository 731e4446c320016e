//! The log level filters log lines only: spans are exported and the
//! caller's trace is passed downstream whatever `RUST_LOG` says, even when
//! a global filter turns the trace layer's own spans off.
#![cfg(all(feature = "axum", feature = "prometheus"))]

mod support;

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use battlement::backends::MemoryStore;
use battlement::body::LayerBody;
use battlement::client::ClientStack;
use battlement::telemetry::tracing_layer;
use battlement::trace::{HeadSampler, TraceLayer};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use opentelemetry::trace::{SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use support::Lines;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Layer, SubscriberExt};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A server whose `/proxy` calls a downstream through the client stack
/// and answers with the `traceparent` the downstream received.
fn proxy(head: Option<HeadSampler>) -> Router {
    let downstream = service_fn(|req: http::Request<LayerBody<Empty<Bytes>>>| async move {
        let seen = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok::<_, Infallible>(http::Response::new(Body::from(seen)))
    });
    let stack = ClientStack::new("downstream", MemoryStore::new())
        .build()
        .unwrap();
    let client = ServiceBuilder::new().layer(stack).service(downstream);
    let handler = move || {
        let client = client.clone();
        async move {
            tracing::info_span!("work").in_scope(|| tracing::info!("working"));
            tracing::debug_span!("detail").in_scope(|| tracing::warn!("slow"));
            let req = http::Request::get("http://downstream.test/")
                .body(Empty::new())
                .unwrap();
            let res = client.oneshot(req).await.unwrap();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8(body.to_vec()).unwrap()
        }
    };
    Router::new()
        .route("/proxy", get(handler))
        .layer(support::traced(TraceLayer::server().head_sampler(head)))
}

/// The `traceparent` the downstream received for a `/proxy` call with
/// `traceparent`.
async fn forwarded(app: Router, traceparent: &str) -> String {
    let req = http::Request::get("/proxy")
        .header("traceparent", traceparent)
        .body(Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn provider(exporter: &InMemorySpanExporter) -> SdkTracerProvider {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    support::record_spans_with(&provider);
    provider
}

// A global `warn` filter, the way many subscribers are composed: no
// application span of the request is recorded, yet the server span is
// (it does not go through `tracing`), and the downstream call continues
// the caller's trace, sampled or not.
#[tokio::test]
async fn a_global_warn_filter_keeps_the_callers_trace() {
    let exporter = InMemorySpanExporter::default();
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::new("warn"))
        .with(tracing_subscriber::fmt::layer().with_writer(Lines::default))
        .with(tracing_layer(provider(&exporter).tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let cases = [
        (None, "01"),
        (Some(HeadSampler::always_on().parent_based()), "01"),
        (Some(HeadSampler::always_on().parent_based()), "00"),
    ];
    for (head, flags) in cases {
        let inbound = format!("00-{TRACE}-00f067aa0ba902b7-{flags}");
        let seen = forwarded(proxy(head), &inbound).await;
        assert!(
            seen.starts_with(&format!("00-{TRACE}-")) && seen.ends_with(flags),
            "{head:?}, {inbound}: downstream saw {seen:?}"
        );
    }
    let spans = exporter.get_finished_spans().unwrap();
    let names: Vec<_> = spans.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(names, ["GET /proxy", "GET /proxy"], "the sampled ones");
}

// `warn` on the fmt layer alone: log lines below it are dropped, and the
// request's spans (info and above) are exported in the caller's trace.
#[tokio::test]
async fn a_warn_filter_on_the_log_layer_leaves_spans_exported() {
    let global = support::global_spans();
    // Its own trace: the global provider's spans are shared by the tests.
    const OWN_TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
    let exporter = InMemorySpanExporter::default();
    let lines = Lines::default();
    let writer = lines.clone();
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .with_filter(EnvFilter::new("warn"));
    let subscriber = battlement::telemetry::subscriber(provider(&exporter).tracer("test"), logs);
    let _guard = tracing::subscriber::set_default(subscriber);

    let inbound = format!("00-{OWN_TRACE}-00f067aa0ba902b7-01");
    let seen = forwarded(proxy(None), &inbound).await;

    let trace = TraceId::from_hex(OWN_TRACE).unwrap();
    let mut spans = exporter.get_finished_spans().unwrap();
    // The client preset's spans go to the global provider.
    spans.extend(support::spans_in(&global, trace));
    let mut names: Vec<_> = spans.iter().map(|s| s.name.as_ref()).collect();
    names.sort_unstable();
    assert_eq!(names, ["GET", "GET /proxy", "work"], "no debug span");
    assert!(spans.iter().all(|s| s.span_context.trace_id() == trace));
    let client = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .expect("a client span");
    assert_eq!(
        seen,
        format!("00-{OWN_TRACE}-{}-01", client.span_context.span_id())
    );
    let text = lines.text();
    assert!(text.contains("slow") && !text.contains("working"), "{text}");
}

// The request id's own `request` span (the preset opens it when the trace
// layer is off) is for log lines only: never an exported span, whatever
// the log level. With the trace layer on, one span per request, and the
// access log is a log line, not an event on that span.
#[tokio::test]
async fn only_the_server_span_is_exported_and_it_carries_no_access_log_event() {
    use battlement::stack::{self, StackConfig};

    // The preset's trace layer takes the global provider.
    let global = support::global_spans();
    for level in ["warn", "info"] {
        for trace in [false, true] {
            let exporter = InMemorySpanExporter::default();
            let logs = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(Lines::default)
                .with_filter(EnvFilter::new(level));
            let subscriber =
                battlement::telemetry::subscriber(provider(&exporter).tracer("test"), logs);
            let _guard = tracing::subscriber::set_default(subscriber);
            let config = StackConfig::from_toml(&format!("trace = {trace}")).unwrap();
            let server = stack::server(&config).await.unwrap();
            let app = server.router(Router::new().route("/hello", get(|| async { "hello" })));
            let trace_id = opentelemetry::trace::TraceId::from(fastrand::u128(1..));
            let req = http::Request::get("/hello")
                .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
                .body(Body::empty())
                .unwrap();
            let res = app.oneshot(req).await.unwrap();
            assert!(res.headers().contains_key("x-request-id"));
            res.into_body().collect().await.unwrap();
            let mut spans = exporter.get_finished_spans().unwrap();
            spans.extend(support::spans_in(&global, trace_id));
            let names: Vec<_> = spans.iter().map(|s| s.name.as_ref()).collect();
            let expected: &[&str] = if trace { &["GET /hello"] } else { &[] };
            assert_eq!(names, expected, "RUST_LOG={level}, trace = {trace}");
            for span in &spans {
                assert!(
                    span.events.is_empty(),
                    "RUST_LOG={level}: {:?}",
                    span.events
                );
            }
        }
    }
}
