//! The `tracing` side of head sampling: OpenTelemetry spans for every span
//! but an unsampled request's, whose context is made current instead.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry::{Context, ContextGuard};
use opentelemetry_sdk::trace::Tracer;
use tracing::span;
use tracing::{Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::Context as LayerContext;
use tracing_subscriber::registry::LookupSpan;

use crate::request_id::REQUEST_SPAN_TARGET;
use crate::trace::ACCESS_LOG_TARGET;
use crate::trace::head::{UNSAMPLED_TARGET, take_unsampled_context};

/// The `tracing` layer for `tracer`: every span at `INFO` or above becomes
/// an OpenTelemetry span (without code location, thread, target or
/// busy/idle attributes, which cost on every span and poll), except the
/// span of a request the [`HeadSampler`](crate::trace::HeadSampler) left
/// out. That one only makes the request's unsampled OpenTelemetry context
/// current while it is entered, so spans created under it (also in tasks
/// it instruments) and outbound calls belong to the request's trace and
/// are not sampled. Nor does it export what is for log lines only: the
/// access log's events (target
/// [`ACCESS_LOG_TARGET`](crate::trace::ACCESS_LOG_TARGET)), which would
/// repeat the server span's attributes as span events, and the request id's
/// own span ([`REQUEST_SPAN_TARGET`](crate::request_id::REQUEST_SPAN_TARGET)).
///
/// The level is this layer's own, not the log level: put the log filter on
/// the log layer (see [`subscriber`](super::subscriber)), so that
/// `RUST_LOG=warn` drops log lines but no spans, and `RUST_LOG=debug` does
/// not export every library's debug spans.
pub fn tracing_layer<S>(tracer: Tracer) -> impl Layer<S>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(
            Targets::new()
                .with_default(Level::INFO)
                .with_target(UNSAMPLED_TARGET, LevelFilter::OFF)
                // Log lines and log-only spans: the server span already
                // holds what the access log says.
                .with_target(REQUEST_SPAN_TARGET, LevelFilter::OFF)
                .with_target(ACCESS_LOG_TARGET, LevelFilter::OFF),
        );
    spans.and_then(UnsampledContexts)
}

/// Keeps an unsampled request's context in its span and attaches it on
/// every enter. Not a filtered layer: a per-layer filter looks the span up
/// on every callback of every span, while this layer looks spans up only
/// while some span carries a context (none when every request is sampled).
struct UnsampledContexts;

/// The context an unsampled request's span carries.
struct Carried(Context);

/// How many spans carry a context now, in every subscriber: with none, no
/// enter or exit needs a look at its span.
static CARRIED: AtomicUsize = AtomicUsize::new(0);

impl Carried {
    fn new(cx: Context) -> Self {
        CARRIED.fetch_add(1, Ordering::Relaxed);
        Self(cx)
    }
}

/// Dropped with its span's extensions when the span closes.
impl Drop for Carried {
    fn drop(&mut self) {
        CARRIED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether some span carries a context. A span being entered or exited
/// that carries one is alive, so this is true for it.
fn any_carried() -> bool {
    CARRIED.load(Ordering::Relaxed) > 0
}

thread_local! {
    /// The contexts attached by entered spans on this thread.
    static ATTACHED: RefCell<Vec<(span::Id, ContextGuard)>> = const { RefCell::new(Vec::new()) };
}

impl<S> Layer<S> for UnsampledContexts
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: LayerContext<'_, S>) {
        if attrs.metadata().target() != UNSAMPLED_TARGET {
            return;
        }
        if let (Some(cx), Some(span)) = (take_unsampled_context(), ctx.span(id)) {
            span.extensions_mut().insert(Carried::new(cx));
        }
    }

    fn on_enter(&self, id: &span::Id, ctx: LayerContext<'_, S>) {
        if !any_carried() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        if span.metadata().target() != UNSAMPLED_TARGET {
            return;
        }
        let Some(cx) = span.extensions().get::<Carried>().map(|c| c.0.clone()) else {
            return;
        };
        let guard = cx.attach();
        ATTACHED.with_borrow_mut(|attached| attached.push((id.clone(), guard)));
    }

    fn on_exit(&self, id: &span::Id, _: LayerContext<'_, S>) {
        if !any_carried() {
            return;
        }
        let guard = ATTACHED.with_borrow_mut(|attached| {
            let at = attached.iter().rposition(|(entered, _)| entered == id)?;
            Some(attached.remove(at))
        });
        drop(guard);
    }
}
