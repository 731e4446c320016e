//! Trace layers whose spans go to the test's own tracer provider: the
//! provider [`record_spans_with`] set on this thread (a `tokio::test` runs
//! on a thread of its own), so tests running side by side never share the
//! global one.

use std::cell::RefCell;
use std::sync::OnceLock;

use battlement::trace::TraceLayer;
use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

thread_local! {
    static PROVIDER: RefCell<Option<SdkTracerProvider>> = const { RefCell::new(None) };
}

/// Makes `provider` the one [`traced`] gives layers on this thread.
pub fn record_spans_with(provider: &SdkTracerProvider) {
    PROVIDER.set(Some(provider.clone()));
}

/// `layer`, taking its spans from this thread's provider.
pub fn traced(layer: TraceLayer) -> TraceLayer {
    PROVIDER.with_borrow(|provider| match provider {
        Some(provider) => layer.tracer_provider(provider),
        None => layer,
    })
}

/// The exporter of the global tracer provider, set once for the test
/// binary: for presets, whose trace layers take the global provider.
/// Tests share it, so each finds its spans by trace id ([`spans_in`]),
/// which their requests carry in a `traceparent` (the W3C propagator is
/// set too).
pub fn global_spans() -> InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build();
            opentelemetry::global::set_tracer_provider(provider);
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            exporter
        })
        .clone()
}

/// The finished spans of trace `trace_id`.
pub fn spans_in(exporter: &InMemorySpanExporter, trace_id: TraceId) -> Vec<SpanData> {
    let spans = exporter.get_finished_spans().unwrap_or_default();
    spans
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .collect()
}
