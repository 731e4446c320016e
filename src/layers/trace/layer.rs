//! `TraceLayer`: server and client tracing.

use std::sync::{Arc, OnceLock};

use tower_layer::Layer;

use super::access_log::AccessLog;
use super::custom::{Custom, ExtraAttributes};
use super::head::HeadSampler;
use super::service::Trace;
use super::traced::{LayerTracer, scope};

/// One OpenTelemetry span per request, built on the OpenTelemetry API
/// (the global tracer provider's tracer, or the one given to
/// [`tracer_provider`](Self::tracer_provider)), whose context is current
/// while the request and its response body are polled: application
/// `tracing` spans (through `tracing-opentelemetry`) and log records
/// (through the OpenTelemetry log bridge) created inside the handler nest
/// under it; a task the handler spawns takes it along with
/// `opentelemetry::context::FutureExt::with_current_context` (a `tracing`
/// span's `in_current_span` does not carry it). No `tracing` span is made
/// for the request, so the export
/// does not depend on `RUST_LOG`, and none is exported twice.
///
/// Server mode ([`server`](Self::server)): the caller's W3C `traceparent`
/// / `tracestate` / `baggage` become the parent (an invalid one starts a
/// new trace); the span is named `{method} {route}` from axum's
/// `MatchedPath` (`{method}` when no route matched; `service/method` for
/// gRPC), carries the semconv attributes (and `request.id`, with a
/// [`RequestIdLayer`](crate::RequestIdLayer) outside), and lasts until the
/// response body ends. 5xx (and gRPC UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS) set Error; 4xx do not.
///
/// Client mode ([`client`](Self::client)): a span per attempt, child of
/// the current context (inside a
/// [`RetryLayer`](crate::retry::RetryLayer) it records
/// `http.request.resend_count`), whose context is injected into the
/// outbound headers; 4xx and 5xx set Error. Without a tracer provider, or
/// with a span the SDK drops, the caller's trace still goes on downstream.
///
/// Sampling: with a [`HeadSampler`] (the one
/// [`telemetry::init`](crate::telemetry::init) installed, whether before
/// or after the layer was built, or
/// [`head_sampler`](Self::head_sampler)), a server request the sampler
/// leaves out gets no span at all: its unsampled context (same trace, not
/// sampled) is current instead, so spans and outbound calls under it are
/// not sampled either. Without one, every request builds its span and the
/// SDK's sampler decides. To propagate by hand, inject
/// `opentelemetry::Context::current()`; battlement's client layers do that
/// already.
///
/// ```
/// use battlement::trace::TraceLayer;
/// use tower::ServiceBuilder;
///
/// let server = ServiceBuilder::new().layer(TraceLayer::server());
/// let client = ServiceBuilder::new().layer(TraceLayer::client());
/// # let _ = (server, client);
/// ```
///
/// Customisation: [`attributes`](Self::attributes) adds attributes from
/// the request and the response, [`span_name`](Self::span_name) names
/// spans, [`filter`](Self::filter) leaves requests untraced (see
/// [`ExtraAttributes`] for an example).
#[derive(Debug, Clone)]
pub struct TraceLayer {
    client: bool,
    head: Sampler,
    tracer: LayerTracer,
    options: Options,
    custom: Custom,
}

/// What a [`TraceLayer`] takes from requests besides the trace context.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// Server: the caller's `baggage` is believed (and so passed on).
    pub(crate) baggage: bool,
    /// Client: `url.full` keeps the query's values.
    pub(crate) query: bool,
    /// Server: probes (health checks, metric scrapes) get spans too.
    pub(crate) probes: bool,
    /// Server: the access log, when one is written.
    pub(crate) access_log: Option<AccessLog>,
}

/// A layer's head sampler, shared by its services: the one given, or else
/// the one installed when the layer's first request comes.
pub(crate) type Sampler = Arc<OnceLock<Option<HeadSampler>>>;

impl TraceLayer {
    /// Server spans, sampled by the [`HeadSampler`] that
    /// [`telemetry::init`](crate::telemetry::init) installed, if it ran
    /// before the layer's first request (it may run after the layer is
    /// built).
    pub fn server() -> Self {
        Self {
            client: false,
            head: Arc::new(OnceLock::new()),
            tracer: LayerTracer::default(),
            options: Options::default(),
            custom: Custom::default(),
        }
    }

    /// Client spans, with the context injected into outbound requests.
    pub fn client() -> Self {
        Self {
            client: true,
            head: Arc::new(OnceLock::from(None)),
            tracer: LayerTracer::default(),
            options: Options::default(),
            custom: Custom::default(),
        }
    }

    /// Server: takes the caller's `baggage` into the request's context,
    /// from where client stacks pass it on to other hosts. Off by default:
    /// baggage from an untrusted caller would otherwise reach every
    /// service behind this one. Turn it on for callers inside your trust
    /// boundary.
    pub fn trust_baggage(mut self, trust: bool) -> Self {
        self.options.baggage = trust;
        self
    }

    /// Server: traces probes too (health checks and metric scrapes, as
    /// [`is_probe`](crate::health::is_probe) tells them). Off by default:
    /// a load balancer's probe every second would be most of the traces.
    pub fn trace_probes(mut self, trace: bool) -> Self {
        self.options.probes = trace;
        self
    }

    /// Server: writes an access log, one `tracing` event per request when
    /// its response ends, at a level that follows the status (see
    /// [`AccessLog`]); `None` (the default) writes none.
    pub fn access_log(mut self, log: Option<AccessLog>) -> Self {
        self.options.access_log = log;
        self
    }

    /// Adds the attributes `extra` computes from each request's head and
    /// its response's head to the request's span (server and client
    /// spans; not to the spans a sampler leaves out).
    pub fn attributes(mut self, extra: impl ExtraAttributes) -> Self {
        self.custom.attributes = Some(Arc::new(extra));
        self
    }

    /// Server: names each span `name(request)` when it returns a name (else
    /// `{method} {route}` as usual). Span names are grouped on by trace
    /// backends: derive them from a bounded set, never from the raw path.
    pub fn span_name<F>(mut self, name: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.custom.span_name = Some(Arc::new(name));
        self
    }

    /// Server: traces only the requests `traced` returns true for (on top
    /// of leaving probes out). A request left out gets no span and no
    /// access-log line, but runs in the caller's trace context, so its
    /// outbound calls still continue the caller's trace.
    pub fn filter<F>(mut self, traced: F) -> Self
    where
        F: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    {
        self.custom.filter = Some(Arc::new(traced));
        self
    }

    /// Client: records the query's values in `url.full`. Off by default:
    /// queries carry tokens and signatures, so each value is recorded as
    /// `REDACTED` (the names stay); user info is never recorded.
    pub fn record_query(mut self, record: bool) -> Self {
        self.options.query = record;
        self
    }

    /// Takes spans from `provider` (its tracer for battlement's scope)
    /// instead of the global tracer provider, as
    /// `opentelemetry::global::tracer_provider()` is at the layer's first
    /// request.
    pub fn tracer_provider<P>(mut self, provider: &P) -> Self
    where
        P: opentelemetry::trace::TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as opentelemetry::trace::Tracer>::Span: Send + Sync + 'static,
    {
        let tracer = provider.tracer_with_scope(scope());
        self.tracer = LayerTracer::given(opentelemetry::global::BoxedTracer::new(Box::new(tracer)));
        self
    }

    /// Decides with `sampler` before a server span is built (`None`: build
    /// every span and let the SDK decide). The tracer provider must sample
    /// with [`HeadSampler::sdk_sampler`] and take its ids from
    /// [`TraceIds`](crate::telemetry::TraceIds); otherwise new traces are
    /// sampled twice. Client spans follow their parent and ignore this.
    pub fn head_sampler(self, sampler: Option<HeadSampler>) -> Self {
        Self {
            head: Arc::new(OnceLock::from(sampler.filter(|_| !self.client))),
            ..self
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            inner,
            client: self.client,
            head: self.head.clone(),
            tracer: self.tracer.clone(),
            options: self.options,
            custom: self.custom.clone(),
        }
    }
}
