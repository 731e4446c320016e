//! Per-request cost of the trace and metrics layers next to
//! opentelemetry-instrumentation-tower, in one run.
//!
//! Run with: `cargo bench --all-features --bench observability`
//!
//! One `GET /items/42` through an axum router (route `/items/{id}`), with
//! the same SDK tracer provider (always sampled, spans dropped after they
//! end) and meter provider: bare; opentelemetry-instrumentation-tower's
//! server layer (spans and metrics on the raw OTel API); battlement's
//! `TraceLayer` + `MetricsLayer` (spans through `tracing` and
//! `tracing-opentelemetry`, so application spans nest under them), with the
//! `tracing` layer battlement ships (`telemetry::tracing_layer`, as
//! `telemetry::init` users have it). Two floors: a bare `tracing` span
//! with no attributes through that layer, and a raw SDK span with none, each
//! around the bare router.
#![allow(missing_docs)] // criterion_group! makes undocumented items

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use battlement::metrics::MetricsLayer;
use battlement::trace::TraceLayer;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::layer::SubscriberExt;

fn routes() -> Router {
    Router::new().route("/items/{id}", get(|| async { "item" }))
}

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, app: Router) {
    c.bench_function(&format!("observability/request/{name}"), |b| {
        b.to_async(rt).iter(|| {
            let app = app.clone();
            async move {
                let req = http::Request::get("/items/42")
                    .body(Body::empty())
                    .unwrap_or_else(|e| panic!("{e}"));
                let Ok(res) = app.oneshot(req).await;
                let _ = res.into_body().collect().await;
            }
        })
    });
}

fn request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let tracers = SdkTracerProvider::builder().build();
    let meters = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(InMemoryMetricExporter::default())
                .with_interval(Duration::from_secs(3600))
                .build(),
        )
        .build();
    opentelemetry::global::set_tracer_provider(tracers.clone());
    opentelemetry::global::set_meter_provider(meters.clone());
    let subscriber = tracing_subscriber::registry().with(battlement::telemetry::tracing_layer(
        tracers.tracer("bench"),
    ));
    tracing::subscriber::set_global_default(subscriber).unwrap_or_else(|e| panic!("{e}"));

    bench(c, &rt, "bare", routes());
    let peer = opentelemetry_instrumentation_tower::http::server::Layer::new();
    bench(
        c,
        &rt,
        "opentelemetry-instrumentation-tower",
        routes().layer(peer),
    );
    let ours = ServiceBuilder::new()
        .layer(TraceLayer::server())
        .layer(MetricsLayer::server());
    bench(c, &rt, "battlement-trace+metrics", routes().layer(ours));

    // The floors: one span, no attributes, no metrics, no propagation.
    let tracer = tracers.tracer("floor");
    let raw = tower::util::MapRequestLayer::new(move |req: http::Request<Body>| {
        let mut span = tracer.start("request");
        span.end();
        req
    });
    bench(c, &rt, "floor/raw-sdk-span", routes().layer(raw));
    let traced = tower::util::MapRequestLayer::new(|req: http::Request<Body>| {
        let span = tracing::info_span!("request");
        span.in_scope(|| req)
    });
    bench(c, &rt, "floor/tracing-span", routes().layer(traced));
}

criterion_group!(benches, request);
criterion_main!(benches);
