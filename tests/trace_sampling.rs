//! Head sampling: the server trace layer decides before
//! it builds a span, agrees with the SDK on the trace id, and keeps an
//! unsampled request's children, tasks and outbound calls in its
//! (unsampled) trace.
#![cfg(all(feature = "axum", feature = "prometheus"))]

mod support;

use std::collections::HashSet;
use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use battlement::request_id::RequestIdLayer;
use battlement::telemetry::{TraceIds, tracing_layer};
use battlement::trace::{HeadSampler, TraceLayer};
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    InMemorySpanExporter, SamplingDecision, SdkTracerProvider, ShouldSample, SpanData,
};
use support::Lines;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Spans sampled by `sampler` end up in the exporter, log lines in
/// `Lines`, while the guard lives.
fn collect(
    sampler: HeadSampler,
) -> (
    InMemorySpanExporter,
    Lines,
    tracing::subscriber::DefaultGuard,
) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_sampler(sampler.sdk_sampler())
        .with_id_generator(TraceIds)
        .build();
    support::record_spans_with(&provider);
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_layer(provider.tracer("test")))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
    (
        exporter,
        lines,
        tracing::subscriber::set_default(subscriber),
    )
}

/// A handler that works in a child span, in a task it spawns with its
/// span, and calls upstream through the client trace layer; it answers
/// with the `traceparent` upstream saw.
async fn work() -> String {
    async {
        tracing::info!("working");
    }
    .instrument(tracing::info_span!("work"))
    .await;
    // A spawned task takes the request's context along, as with any
    // OpenTelemetry instrumentation.
    let task = tokio::spawn(opentelemetry::context::FutureExt::with_current_context(
        async {
            let _span = tracing::info_span!("spawned").entered();
        },
    ));
    let _ = task.await;
    let upstream = service_fn(|req: http::Request<Body>| async move {
        let seen = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok::<_, Infallible>(http::Response::new(seen))
    });
    let client = ServiceBuilder::new()
        .layer(support::traced(TraceLayer::client()))
        .service(upstream);
    let req = http::Request::get("http://upstream.test/x")
        .body(Body::empty())
        .unwrap();
    let res = client.oneshot(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn app(sampler: HeadSampler) -> Router {
    Router::new()
        .route("/work", get(work))
        .layer(support::traced(
            TraceLayer::server().head_sampler(Some(sampler)),
        ))
        .layer(RequestIdLayer::new())
}

/// The `traceparent` upstream saw, and the request id.
async fn send(app: &Router, traceparent: Option<&str>) -> (String, String) {
    let mut req = http::Request::get("/work");
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), id)
}

fn trace_id_of(traceparent: &str) -> TraceId {
    TraceId::from_hex(traceparent.split('-').nth(1).unwrap()).unwrap()
}

fn of_kind(spans: &[SpanData], kind: SpanKind) -> Vec<&SpanData> {
    spans.iter().filter(|s| s.span_kind == kind).collect()
}

// A 50 % ratio: half the new traces are recorded whole (server, child,
// spawned and client spans, on the trace id the decision was taken on);
// the other half export nothing and tell upstream "not sampled" in their
// own trace.
#[tokio::test]
async fn a_ratio_is_applied_once_on_the_decided_trace_id() {
    let sampler = HeadSampler::ratio(0.5).parent_based();
    let (exporter, _lines, _guard) = collect(sampler);
    let app = app(sampler);
    let mut sampled = HashSet::new();
    let mut unsampled = HashSet::new();
    for _ in 0..200 {
        let (seen, _) = send(&app, None).await;
        let set = match seen.rsplit('-').next() {
            Some("01") => &mut sampled,
            Some("00") => &mut unsampled,
            _ => panic!("upstream saw {seen:?}"),
        };
        set.insert(trace_id_of(&seen));
    }
    // Binomial(200, 0.5): 70..=130 is more than four deviations wide; a
    // ratio applied twice would give about 50.
    assert!((70..=130).contains(&sampled.len()), "{}", sampled.len());
    assert_eq!(
        sampled.len() + unsampled.len(),
        200,
        "one trace per request"
    );

    let spans = exporter.get_finished_spans().unwrap();
    let servers = of_kind(&spans, SpanKind::Server);
    assert_eq!(servers.len(), sampled.len());
    let exported: HashSet<TraceId> = spans.iter().map(|s| s.span_context.trace_id()).collect();
    assert_eq!(exported, sampled, "sampled traces only, and all of them");
    assert_eq!(
        spans.len(),
        4 * sampled.len(),
        "server, work, spawned, client"
    );
    let sdk = HeadSampler::ratio(0.5).sdk_sampler();
    for server in servers {
        let id = server.span_context.trace_id();
        let decision = sdk
            .should_sample(None, id, "", &SpanKind::Server, &[], &[])
            .decision;
        assert_eq!(decision, SamplingDecision::RecordAndSample);
        let children = spans
            .iter()
            .filter(|s| s.parent_span_id == server.span_context.span_id())
            .count();
        assert_eq!(
            children, 3,
            "work, spawned and client under the server span"
        );
    }
}

// A caller's flag decides: "not sampled" exports nothing and is passed on
// in the caller's trace; "sampled" records the request under the caller.
#[tokio::test]
async fn a_callers_sampled_flag_is_followed() {
    let sampler = HeadSampler::always_on().parent_based();
    let (exporter, _lines, _guard) = collect(sampler);
    let app = app(sampler);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (seen, _) = send(&app, Some(&format!("00-{trace}-00f067aa0ba902b7-00"))).await;
    assert!(seen.starts_with(&format!("00-{trace}-")), "{seen}");
    assert!(seen.ends_with("-00"), "{seen}");
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 0);

    let (seen, _) = send(&app, Some(&format!("00-{trace}-00f067aa0ba902b7-01"))).await;
    assert!(seen.ends_with("-01"), "{seen}");
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 4);
    let server = of_kind(&spans, SpanKind::Server)[0];
    assert_eq!(server.span_context.trace_id(), trace_id_of(&seen));
    assert_eq!(server.parent_span_id.to_string(), "00f067aa0ba902b7");
}

// An unsampled request's log lines carry its id too.
#[tokio::test]
async fn log_lines_of_an_unsampled_request_carry_the_id() {
    let sampler = HeadSampler::always_off();
    let (exporter, lines, _guard) = collect(sampler);
    let (seen, id) = send(&app(sampler), None).await;
    assert!(seen.ends_with("-00"), "{seen}");
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 0);
    let text = lines.text();
    let line = text
        .lines()
        .find(|l| l.contains("working"))
        .unwrap_or_else(|| panic!("no log line in {text:?}"));
    assert!(
        line.contains(&format!("request{{request_id={id}}}")),
        "{line}"
    );
}
