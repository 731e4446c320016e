//! The `tracing` layer that turns application spans into OpenTelemetry
//! spans.

use opentelemetry_sdk::trace::Tracer;
use tracing::{Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;

use crate::request_id::REQUEST_SPAN_TARGET;

/// The `tracing` layer for `tracer`: every span at `INFO` or above becomes
/// an OpenTelemetry span (without code location, thread, target or
/// busy/idle attributes, which cost on every span and poll). A span with
/// no `tracing` parent that OpenTelemetry sees takes the current
/// OpenTelemetry context as its parent: inside a request, the request's
/// span that [`TraceLayer`](crate::trace::TraceLayer) made current. It
/// does not export the request id's own span, which is for log lines only
/// ([`REQUEST_SPAN_TARGET`](crate::request_id::REQUEST_SPAN_TARGET)).
///
/// The access log's target
/// ([`ACCESS_LOG_TARGET`](crate::trace::ACCESS_LOG_TARGET)) is left
/// enabled here on purpose: its lines are written outside any `tracing`
/// span, so none becomes a span event, and a target this layer turned off
/// while the log layer turned it on would make the access log's
/// "would this line be written" check leave `tracing-subscriber`'s
/// per-layer filter state behind for the next span, which this layer
/// would then miss.
///
/// The level is this layer's own, not the log level: put the log filter on
/// the log layer (see [`subscriber`](super::subscriber)), so that
/// `RUST_LOG=warn` drops log lines but no spans, and `RUST_LOG=debug` does
/// not export every library's debug spans.
pub fn tracing_layer<S>(tracer: Tracer) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(
            Targets::new()
                .with_default(Level::INFO)
                // The request id's log-only span.
                .with_target(REQUEST_SPAN_TARGET, LevelFilter::OFF),
        )
}
