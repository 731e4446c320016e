//! One-call OpenTelemetry setup: a tracer provider and a meter
//! provider, a Prometheus scrape endpoint and OTLP export both fed by that
//! one meter provider, W3C trace-context and baggage propagation, all from
//! the standard `OTEL_*` environment variables. The guard flushes and
//! shuts everything down when dropped.
//!
//! ```
//! # #[cfg(feature = "prometheus")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tracing_subscriber::util::SubscriberInitExt;
//! use tracing_subscriber::{EnvFilter, Layer, fmt};
//!
//! let telemetry = battlement::telemetry::init("my-service").unwrap();
//! // RUST_LOG filters the log lines (printed, and exported as OTLP logs),
//! // not the spans exported.
//! let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
//! telemetry
//!     .subscriber(telemetry.logs(fmt::layer()).with_filter(filter))
//!     .init();
//! // ... serve; `telemetry.prometheus_text()` renders the metrics.
//! assert!(telemetry.prometheus_text().is_ok());
//! # });
//! ```
//!
//! Environment: `OTEL_EXPORTER_OTLP_ENDPOINT` turns OTLP export on (spans,
//! metrics, and the `tracing` events that [`TelemetryGuard::logs`] passes
//! as logs carrying the trace and span ids of the span they were written
//! in); `OTEL_EXPORTER_OTLP_PROTOCOL`
//! is `http/protobuf` (the default, as the OpenTelemetry specification
//! recommends: port 4318, paths `/v1/traces`, `/v1/metrics` and
//! `/v1/logs`; needs the `otlp-http` feature, or `otlp`, its shorthand) or
//! `grpc` (port 4317; needs the `otlp-grpc` feature). A protocol whose
//! feature is off makes [`init`] return an error naming the feature, rather
//! than export over the other transport to a port that does not speak it;
//! `OTEL_SERVICE_NAME` overrides the service
//! name; `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` choose the
//! [`HeadSampler`] that both the server trace layer and the SDK apply (a
//! name it does not know, or a ratio outside `0..=1`, is an error);
//! `OTEL_METRIC_EXPORT_INTERVAL` and the other SDK variables apply as the
//! SDK defines them.

use std::fmt;

use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry};

use crate::error::ConfigError;
use crate::trace::{HeadSampler, W3cBaggage, W3cTraceContext};

mod ids;
mod spans;

pub use ids::TraceIds;
pub use spans::tracing_layer;

/// Sets up OpenTelemetry for `service_name` and registers it globally;
/// keep the guard for the life of the process.
pub fn init(service_name: &str) -> Result<TelemetryGuard, ConfigError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.to_owned());
    let resource = Resource::builder().with_service_name(service).build();
    // One sampler for the trace layer and the SDK, on the same ids.
    let head = HeadSampler::from_env()?;
    #[cfg_attr(not(feature = "_otlp"), allow(unused_mut))]
    let mut tracers = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_sampler(head.sdk_sampler())
        .with_id_generator(TraceIds);
    let mut meters = SdkMeterProvider::builder().with_resource(resource.clone());

    #[cfg(feature = "prometheus")]
    let registry = {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .build()
            .map_err(|e| ConfigError::new(format!("prometheus exporter: {e}")))?;
        meters = meters.with_reader(exporter);
        registry
    };

    let otlp = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    #[cfg(feature = "_otlp")]
    let mut loggers = None;
    if otlp {
        let protocol = OtlpProtocol::from_env(var("OTEL_EXPORTER_OTLP_PROTOCOL"))?;
        protocol.check_built(Transports::BUILT)?;
        #[cfg(feature = "_otlp")]
        {
            let (spans, metrics, logs) = otlp_exporters(protocol)?;
            tracers = tracers.with_batch_exporter(spans);
            meters = meters
                .with_reader(opentelemetry_sdk::metrics::PeriodicReader::builder(metrics).build());
            loggers = Some(
                opentelemetry_sdk::logs::SdkLoggerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(logs)
                    .build(),
            );
        }
    }

    let tracers = tracers.build();
    let meters = meters.build();
    opentelemetry::global::set_tracer_provider(tracers.clone());
    crate::trace::head::install(Some(head));
    opentelemetry::global::set_meter_provider(meters.clone());
    crate::events::meter_provider_changed();
    opentelemetry::global::set_text_map_propagator(w3c_propagator());
    Ok(TelemetryGuard {
        tracer: tracers.tracer("battlement"),
        tracers,
        meters,
        #[cfg(feature = "_otlp")]
        loggers,
        #[cfg(feature = "prometheus")]
        registry,
    })
}

/// The subscriber to install: `logs`, the log layer with the log filter
/// on it (`fmt::layer().with_filter(EnvFilter::from_default_env())`),
/// beside [`tracing_layer`] for `tracer`, which exports spans at `INFO` and
/// above whatever the log level is.
///
/// A filter composed as a layer of its own
/// (`registry().with(EnvFilter::..)`) applies to every layer: with it,
/// `RUST_LOG=warn` would turn the exported spans off too.
pub fn subscriber<L>(
    tracer: Tracer,
    logs: L,
) -> impl tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync + use<L>
where
    L: Layer<Registry> + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(logs)
        .with(tracing_layer(tracer))
}

/// The OTLP transports `OTEL_EXPORTER_OTLP_PROTOCOL` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

/// The OTLP transports compiled in.
#[derive(Debug, Clone, Copy)]
struct Transports {
    http: bool,
    grpc: bool,
}

impl Transports {
    /// This build's: the `otlp-http` and `otlp-grpc` features.
    const BUILT: Self = Self {
        http: cfg!(feature = "otlp-http"),
        grpc: cfg!(feature = "otlp-grpc"),
    };
}

impl OtlpProtocol {
    /// `http/protobuf` when unset (the specification's default);
    /// `http/json` is not supported.
    fn from_env(value: Option<String>) -> Result<Self, ConfigError> {
        match value.as_deref().map(str::trim) {
            None | Some("http/protobuf") => Ok(Self::HttpProtobuf),
            Some("grpc") => Ok(Self::Grpc),
            Some(other) => Err(ConfigError::new(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: supported are grpc and http/protobuf"
            ))),
        }
    }

    /// The variable's value naming this protocol.
    fn name(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }

    /// The cargo feature that compiles this transport in.
    fn feature(self) -> &'static str {
        match self {
            Self::Grpc => "otlp-grpc",
            Self::HttpProtobuf => "otlp-http",
        }
    }

    /// `Ok` when `built` has this transport; else an error naming the
    /// feature to turn on (and the transport built instead, if any). No
    /// fallback: an exporter on the other transport would send to a
    /// collector port that speaks the requested one.
    fn check_built(self, built: Transports) -> Result<(), ConfigError> {
        let (wanted, other) = match self {
            Self::Grpc => (built.grpc, built.http.then_some(Self::HttpProtobuf)),
            Self::HttpProtobuf => (built.http, built.grpc.then_some(Self::Grpc)),
        };
        if wanted {
            return Ok(());
        }
        let mut message = format!(
            "OTLP export over {} (OTEL_EXPORTER_OTLP_PROTOCOL={}{}) needs battlement's `{}` feature, \
             which this build lacks",
            self.name(),
            self.name(),
            if self == Self::HttpProtobuf {
                ", the default when unset"
            } else {
                ""
            },
            self.feature(),
        );
        if let Some(other) = other {
            message.push_str(&format!(
                "; it has `{}`: set OTEL_EXPORTER_OTLP_PROTOCOL={} to use it",
                other.feature(),
                other.name()
            ));
        }
        Err(ConfigError::new(message))
    }
}

/// A span, a metric and a log exporter.
#[cfg(feature = "_otlp")]
type Exporters = (
    opentelemetry_otlp::SpanExporter,
    opentelemetry_otlp::MetricExporter,
    opentelemetry_otlp::LogExporter,
);

/// The span, metric and log exporters for `protocol`, configured
/// (endpoint, headers, timeout) from the `OTEL_EXPORTER_OTLP_*` variables.
#[cfg(feature = "_otlp")]
fn otlp_exporters(protocol: OtlpProtocol) -> Result<Exporters, ConfigError> {
    match protocol {
        OtlpProtocol::Grpc => grpc_exporters(),
        OtlpProtocol::HttpProtobuf => http_exporters(),
    }
}

#[cfg(feature = "otlp-grpc")]
fn grpc_exporters() -> Result<Exporters, ConfigError> {
    use opentelemetry_otlp::{LogExporter, MetricExporter, SpanExporter};
    built(
        SpanExporter::builder().with_tonic().build(),
        MetricExporter::builder().with_tonic().build(),
        LogExporter::builder().with_tonic().build(),
    )
}

#[cfg(all(feature = "_otlp", not(feature = "otlp-grpc")))]
fn grpc_exporters() -> Result<Exporters, ConfigError> {
    // `init` refused the protocol already; kept for the match's sake.
    Err(ConfigError::new("OTLP over gRPC is not built"))
}

#[cfg(feature = "otlp-http")]
fn http_exporters() -> Result<Exporters, ConfigError> {
    use opentelemetry_otlp::{
        LogExporter, MetricExporter, Protocol, SpanExporter, WithExportConfig,
    };
    built(
        SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
        MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
        LogExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build(),
    )
}

#[cfg(all(feature = "_otlp", not(feature = "otlp-http")))]
fn http_exporters() -> Result<Exporters, ConfigError> {
    // `init` refused the protocol already; kept for the match's sake.
    Err(ConfigError::new("OTLP over HTTP is not built"))
}

/// The three exporters, or the first one's build error.
#[cfg(feature = "_otlp")]
fn built(
    spans: Result<opentelemetry_otlp::SpanExporter, opentelemetry_otlp::ExporterBuildError>,
    metrics: Result<opentelemetry_otlp::MetricExporter, opentelemetry_otlp::ExporterBuildError>,
    logs: Result<opentelemetry_otlp::LogExporter, opentelemetry_otlp::ExporterBuildError>,
) -> Result<Exporters, ConfigError> {
    let spans = spans.map_err(|e| ConfigError::new(format!("OTLP span exporter: {e}")))?;
    let metrics = metrics.map_err(|e| ConfigError::new(format!("OTLP metric exporter: {e}")))?;
    let logs = logs.map_err(|e| ConfigError::new(format!("OTLP log exporter: {e}")))?;
    Ok((spans, metrics, logs))
}

/// The providers [`init`] set up; dropping it flushes and shuts them down.
pub struct TelemetryGuard {
    tracer: Tracer,
    tracers: SdkTracerProvider,
    meters: SdkMeterProvider,
    /// OTLP log export, when an endpoint is set.
    #[cfg(feature = "_otlp")]
    loggers: Option<opentelemetry_sdk::logs::SdkLoggerProvider>,
    #[cfg(feature = "prometheus")]
    registry: prometheus::Registry,
}

impl fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryGuard").finish_non_exhaustive()
    }
}

impl TelemetryGuard {
    /// The `tracing` layer that turns spans (battlement's and the
    /// application's) into OpenTelemetry spans: [`tracing_layer`] with this
    /// guard's tracer.
    pub fn tracing_layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        tracing_layer(self.tracer.clone())
    }

    /// [`subscriber`] with this guard's tracer: the subscriber to install,
    /// `logs` being the log layer with the log filter on it (made with
    /// [`logs`](Self::logs) to export the log lines over OTLP too).
    pub fn subscriber<L>(
        &self,
        logs: L,
    ) -> impl tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync + use<L>
    where
        L: Layer<Registry> + Send + Sync + 'static,
    {
        subscriber(self.tracer.clone(), logs)
    }

    /// The log layer to install: `output` (the fmt layer, say) and, when
    /// OTLP export is on, the OpenTelemetry log bridge, which exports each
    /// `tracing` event as an OTLP log record carrying the trace and span
    /// ids of the span it was written in. Put the log filter on what this
    /// returns, so that it filters the exported logs as it filters the
    /// printed ones, and hand it to [`subscriber`](Self::subscriber):
    /// `telemetry.subscriber(telemetry.logs(fmt::layer()).with_filter(filter))`.
    pub fn logs<S, L>(&self, output: L) -> impl Layer<S> + use<S, L>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
        L: Layer<S>,
    {
        #[cfg(feature = "_otlp")]
        let bridge = self
            .loggers
            .as_ref()
            .map(opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new);
        #[cfg(not(feature = "_otlp"))]
        let bridge: Option<tracing_subscriber::layer::Identity> = None;
        output.and_then(bridge)
    }

    /// The tracer spans are exported with.
    pub fn tracer(&self) -> Tracer {
        self.tracer.clone()
    }

    /// The meter provider (also the global one).
    pub fn meter_provider(&self) -> &SdkMeterProvider {
        &self.meters
    }

    /// Every metric in the Prometheus text exposition format.
    #[cfg(feature = "prometheus")]
    pub fn prometheus_text(&self) -> Result<String, ConfigError> {
        render(&self.registry).map_err(ConfigError::new)
    }

    /// `GET /metrics` serving [`prometheus_text`](Self::prometheus_text).
    #[cfg(all(feature = "prometheus", feature = "axum"))]
    pub fn metrics_router(&self) -> axum::Router {
        use axum::http::{StatusCode, header};
        use axum::response::IntoResponse;
        let registry = self.registry.clone();
        axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let text = render(&registry);
                async move {
                    match text {
                        Ok(text) => (
                            [(
                                header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            text,
                        )
                            .into_response(),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
                    }
                }
            }),
        )
    }
}

/// `registry`'s metrics as Prometheus text.
#[cfg(feature = "prometheus")]
fn render(registry: &prometheus::Registry) -> Result<String, String> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .map_err(|e| format!("prometheus encoding: {e}"))?;
    String::from_utf8(out).map_err(|e| e.to_string())
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.tracers.shutdown() {
            tracing::warn!(error = %e, "tracer provider shutdown");
        }
        if let Err(e) = self.meters.shutdown() {
            tracing::warn!(error = %e, "meter provider shutdown");
        }
        #[cfg(feature = "_otlp")]
        if let Some(Err(e)) = self.loggers.as_ref().map(|l| l.shutdown()) {
            tracing::warn!(error = %e, "logger provider shutdown");
        }
    }
}

/// The propagator [`init`] installs: W3C Trace Context and W3C Baggage.
pub(crate) fn w3c_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(W3cTraceContext::new()),
        Box::new(W3cBaggage::new()),
    ])
}

#[cfg(test)]
mod tests {
    use super::{OtlpProtocol, Transports};

    #[test]
    fn the_otlp_protocol_defaults_to_http_protobuf() {
        let parse = |value: Option<&str>| OtlpProtocol::from_env(value.map(String::from));
        assert_eq!(parse(None).ok(), Some(OtlpProtocol::HttpProtobuf));
        assert_eq!(parse(Some(" grpc ")).ok(), Some(OtlpProtocol::Grpc));
        assert_eq!(
            parse(Some("http/protobuf")).ok(),
            Some(OtlpProtocol::HttpProtobuf)
        );
        let err = parse(Some("http/json")).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("http/json")));
    }

    // A protocol whose transport is not compiled in is an error naming the
    // feature to turn on, and the variable's value that works instead.
    #[test]
    fn a_protocol_not_built_is_an_error_naming_its_feature() {
        let (grpc, http) = (OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf);
        let built = |http, grpc| Transports { http, grpc };
        let err = |p: OtlpProtocol, b| p.check_built(b).err().map(|e| e.to_string());
        assert!(grpc.check_built(built(true, true)).is_ok());
        assert!(http.check_built(built(true, false)).is_ok());
        assert!(grpc.check_built(built(false, true)).is_ok());
        let e = err(grpc, built(true, false)).unwrap_or_default();
        assert!(e.contains("`otlp-grpc` feature"), "{e}");
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf to use it"),
            "{e}"
        );
        let e = err(http, built(false, true)).unwrap_or_default();
        assert!(e.contains("`otlp-http` feature"), "{e}");
        assert!(e.contains("the default when unset"), "{e}");
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc to use it"),
            "{e}"
        );
        let e = err(http, built(false, false)).unwrap_or_default();
        assert!(
            e.contains("`otlp-http` feature") && !e.contains("to use it"),
            "{e}"
        );
    }

    // This build's transports are the features it was built with.
    #[test]
    fn the_built_transports_follow_the_features() {
        let b = Transports::BUILT;
        assert_eq!(
            OtlpProtocol::Grpc.check_built(b).is_ok(),
            cfg!(feature = "otlp-grpc")
        );
        assert_eq!(
            OtlpProtocol::HttpProtobuf.check_built(b).is_ok(),
            cfg!(feature = "otlp-http")
        );
    }
}
