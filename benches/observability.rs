//! Per-request cost of the trace and metrics layers next to
//! opentelemetry-instrumentation-tower, in one run.
//!
//! Run with: `cargo bench --all-features --bench observability`
//!
//! One `GET /items/42` through an axum router (route `/items/{id}`), with
//! the same SDK tracer provider (always sampled; a processor counts the
//! spans that end and drops them) and meter provider, and the subscriber
//! the axum example installs (battlement's `telemetry::tracing_layer`
//! beside a fmt log layer filtered at `warn`): bare;
//! opentelemetry-instrumentation-tower's server layer; battlement's
//! `TraceLayer` + `MetricsLayer`. Both build their spans on the raw
//! OpenTelemetry API. Before it is timed, each row is checked to record a
//! span and a duration point into those providers. Two floors: a bare
//! `tracing` span with no attributes through that layer, and a raw SDK
//! span with none, each around the bare router.
#![allow(missing_docs)] // criterion_group! makes undocumented items

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use battlement::metrics::MetricsLayer;
use battlement::trace::TraceLayer;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt;
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;

/// Counts the spans that end, and keeps none.
#[derive(Debug, Clone, Default)]
struct Ended(Arc<AtomicUsize>);

impl SpanProcessor for Ended {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}
    fn on_end(&self, _: SpanData) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// What a row must record per request, checked before it is timed.
struct Live {
    ended: Ended,
    metrics: InMemoryMetricExporter,
    meters: SdkMeterProvider,
}

impl Live {
    /// Sends one request to `app` and checks that it ended `spans` spans
    /// and recorded a `http.server.request.duration` point when `metrics`.
    fn check(
        &self,
        rt: &tokio::runtime::Runtime,
        name: &str,
        app: &Router,
        spans: usize,
        metrics: bool,
    ) {
        let before = self.ended.0.load(Ordering::Relaxed);
        rt.block_on(send(app.clone()));
        let ended = self.ended.0.load(Ordering::Relaxed) - before;
        assert_eq!(ended, spans, "{name}: spans ended per request");
        self.metrics.reset();
        self.meters.force_flush().unwrap_or_else(|e| panic!("{e}"));
        let exported = self
            .metrics
            .get_finished_metrics()
            .unwrap_or_else(|e| panic!("{e}"));
        let recorded = exported.iter().any(|rm| {
            rm.scope_metrics()
                .flat_map(|sm| sm.metrics())
                .any(|m| m.name() == "http.server.request.duration")
        });
        assert_eq!(recorded, metrics, "{name}: the duration histogram");
    }
}

async fn send(app: Router) {
    let req = http::Request::get("/items/42")
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    let Ok(res) = app.oneshot(req).await;
    assert_eq!(res.status(), 200);
    let _ = res.into_body().collect().await;
}

fn routes() -> Router {
    Router::new().route("/items/{id}", get(|| async { "item" }))
}

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, app: Router) {
    c.bench_function(&format!("observability/request/{name}"), |b| {
        b.to_async(rt).iter(|| send(app.clone()))
    });
}

fn request(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let ended = Ended::default();
    let tracers = SdkTracerProvider::builder()
        .with_span_processor(ended.clone())
        .build();
    let metrics = InMemoryMetricExporter::default();
    let meters = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(metrics.clone())
                .with_interval(Duration::from_secs(3600))
                .build(),
        )
        .build();
    opentelemetry::global::set_tracer_provider(tracers.clone());
    opentelemetry::global::set_meter_provider(meters.clone());
    let logs =
        tracing_subscriber::fmt::layer().with_filter(tracing_subscriber::EnvFilter::new("warn"));
    let subscriber = tracing_subscriber::registry()
        .with(battlement::telemetry::tracing_layer(
            tracers.tracer("bench"),
        ))
        .with(logs);
    tracing::subscriber::set_global_default(subscriber).unwrap_or_else(|e| panic!("{e}"));
    let live = Live {
        ended,
        metrics,
        meters: meters.clone(),
    };

    let bare = routes();
    live.check(&rt, "bare", &bare, 0, false);
    bench(c, &rt, "bare", bare);
    let peer = routes().layer(opentelemetry_instrumentation_tower::http::server::Layer::new());
    live.check(&rt, "peer", &peer, 1, true);
    bench(c, &rt, "opentelemetry-instrumentation-tower", peer);
    let ours = routes().layer(
        ServiceBuilder::new()
            .layer(TraceLayer::server())
            .layer(MetricsLayer::server()),
    );
    live.check(&rt, "battlement", &ours, 1, true);
    bench(c, &rt, "battlement-trace+metrics", ours);

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
