//! The apps both stack benches compare: `/hello` bare, and behind the
//! server preset configured like the axum example.

use axum::Router;
use axum::routing::get;
use battlement::backends::BackendConfig;
use battlement::idempotency::IdempotencyConfig;
use battlement::rate_limit::{KeyConfig, PolicyConfig, RateLimitConfig};
use battlement::stack::{
    self, AccessLogSettings, MetricsSettings, RequestIdSettings, StackConfig, TraceSettings,
};

/// Whether to measure: `cargo bench` passes `--bench`, while `cargo test
/// --all-targets` runs bench binaries without it.
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// OpenTelemetry and logs as the example installs them: traces sampled as
/// `OTEL_TRACES_SAMPLER` says (every request by default), metrics
/// aggregated by the SDK for the Prometheus reader, nothing exported, and
/// a fmt log layer filtered by `RUST_LOG` (default `warn`, as in
/// production). Keep the guard for the whole run.
pub fn telemetry() -> battlement::telemetry::TelemetryGuard {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::util::SubscriberInitExt;
    let telemetry = battlement::telemetry::init("bench").unwrap_or_else(|e| panic!("{e}"));
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    telemetry
        .subscriber(
            telemetry
                .logs(tracing_subscriber::fmt::layer())
                .with_filter(filter),
        )
        .init();
    telemetry
}

/// What a team using the peers' crates installs, as their READMEs show,
/// with nothing from battlement: an `SdkTracerProvider` (its sampler from
/// `OTEL_TRACES_SAMPLER`, as the SDK reads it), a meter provider with the
/// Prometheus reader, the W3C trace-context propagator, and the same
/// subscriber as [`telemetry`] (tracing-opentelemetry beside a fmt layer
/// filtered by `RUST_LOG`, default `warn`). Keep the providers for the run.
#[allow(dead_code)]
pub fn peers_telemetry() -> (
    opentelemetry_sdk::trace::SdkTracerProvider,
    opentelemetry_sdk::metrics::SdkMeterProvider,
) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("bench")
        .build();
    let tracers = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .build();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(prometheus::Registry::new())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(exporter)
        .build();
    opentelemetry::global::set_tracer_provider(tracers.clone());
    opentelemetry::global::set_meter_provider(meters.clone());
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(tracers.tracer("bench")))
        .with(tracing_subscriber::fmt::layer().with_filter(filter))
        .init();
    (tracers, meters)
}

/// The bare app.
pub fn routes() -> Router {
    Router::new().route("/hello", get(|| async { "hello" }))
}

/// The example's stack on `backend`, with a quota no load here reaches;
/// `STACK_WITHOUT=trace,access_log,metrics,request_id,rate_limit,idempotency` (any
/// subset) leaves layers out, to see what each costs.
pub fn config(backend: BackendConfig) -> StackConfig {
    let without = std::env::var("STACK_WITHOUT").unwrap_or_default();
    let on = |name: &str| !without.split(',').any(|w| w.trim() == name);
    let quota =
        battlement::rate_limit::Quota::per_second(10_000_000).unwrap_or_else(|e| panic!("{e}"));
    StackConfig {
        backend,
        request_id: RequestIdSettings {
            enabled: on("request_id"),
            ..RequestIdSettings::default()
        },
        trace: TraceSettings {
            enabled: on("trace"),
            ..TraceSettings::default()
        },
        metrics: MetricsSettings {
            enabled: on("metrics"),
            ..MetricsSettings::default()
        },
        access_log: AccessLogSettings {
            enabled: on("access_log"),
            ..AccessLogSettings::default()
        },
        rate_limit: on("rate_limit").then(|| RateLimitConfig {
            policies: vec![PolicyConfig {
                name: "per-ip".into(),
                quota,
                key: Some(KeyConfig::client_ip([])),
                mode: Default::default(),
            }],
            ..RateLimitConfig::default()
        }),
        idempotency: on("idempotency").then(|| IdempotencyConfig {
            routes: vec!["/orders".into()],
            required: true,
            ..IdempotencyConfig::default()
        }),
        ..StackConfig::default()
    }
}

/// The bare app behind the preset.
pub async fn full(backend: BackendConfig) -> Router {
    let server = stack::server(&config(backend))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    server.router(routes())
}

/// The bare app behind the preset, its per-IP policy in the leased mode
/// with `quota`, keyed by the `X-Forwarded-For` of loopback peers (so a
/// load generator can stand for many clients).
#[allow(dead_code)]
pub async fn full_leased(backend: BackendConfig, quota: battlement::rate_limit::Quota) -> Router {
    let mut config = config(backend);
    if let Some(rate_limit) = config.rate_limit.as_mut() {
        for policy in &mut rate_limit.policies {
            policy.quota = quota;
            policy.mode = battlement::rate_limit::SyncMode::Leased;
            policy.key = Some(KeyConfig::client_ip(["127.0.0.1/32"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"))]));
        }
    }
    let server = stack::server(&config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    server.router(routes())
}

/// The bare app behind what users assemble from other crates today:
/// tower-http's request id (set and propagated),
/// opentelemetry-instrumentation-tower's server layer (spans and metrics
/// on the raw OpenTelemetry API, through the same global providers) and
/// tower_governor keyed by peer IP (same quota). No crate offers the rest.
pub fn peers() -> Router {
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let governor = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(100)
        .burst_size(10_000_000)
        .use_headers()
        .finish()
        .unwrap_or_else(|| panic!("governor config"));
    let stack = tower::ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(opentelemetry_instrumentation_tower::http::server::Layer::new())
        .layer(tower_governor::GovernorLayer::new(governor));
    routes().layer(stack)
}
