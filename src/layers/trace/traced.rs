//! A request's OpenTelemetry context while it is served, and the tracer
//! its span comes from.

use std::sync::{Arc, OnceLock};

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, InstrumentationScope};

/// The request's context: the caller's (or a new trace's) with the
/// request's span in it, when one was built. Attached while the request
/// and its response body are polled, so what runs inside (application
/// `tracing` spans through `tracing-opentelemetry`, log records through the
/// OpenTelemetry log bridge, outbound calls) belongs to the request's
/// trace. The span ends when this is dropped.
pub(crate) struct Traced {
    pub(crate) cx: Context,
    /// The span records (sampled, or the SDK records it): only then is
    /// anything set on it.
    pub(crate) recording: bool,
}

impl Traced {
    pub(crate) fn new(cx: Context) -> Self {
        let recording = cx.span().is_recording();
        Self { cx, recording }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if self.recording {
            self.cx.span().end();
        }
    }
}

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced")
            .field("span", &self.cx.span().span_context())
            .finish()
    }
}

/// A layer's tracer: the provider's given to the layer, or else the
/// global provider's, taken at the layer's first request (so
/// [`telemetry::init`](crate::telemetry::init) may run after the layer is
/// built).
#[derive(Clone, Default)]
pub(crate) struct LayerTracer(Arc<OnceLock<BoxedTracer>>);

impl LayerTracer {
    pub(crate) fn given(tracer: BoxedTracer) -> Self {
        Self(Arc::new(OnceLock::from(tracer)))
    }

    pub(crate) fn get(&self) -> &BoxedTracer {
        self.0.get_or_init(|| global::tracer_with_scope(scope()))
    }
}

impl std::fmt::Debug for LayerTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerTracer")
            .field("resolved", &self.0.get().is_some())
            .finish()
    }
}

/// The instrumentation scope of battlement's spans.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("battlement")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}
