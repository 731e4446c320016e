//! `TraceLayer`: server and client tracing.

use tower_layer::Layer;

use super::service::Trace;

/// One OpenTelemetry span per request (SPEC TR-1..TR-5), through
/// `tracing` and `tracing-opentelemetry`, so application spans nest under
/// it.
///
/// Server mode ([`server`](Self::server)): the caller's W3C `traceparent`
/// / `tracestate` / `baggage` become the parent (an invalid one starts a
/// new trace); the span is named `{method} {route}` from axum's
/// `MatchedPath` (`{method}` when no route matched; `service/method` for
/// gRPC), carries the semconv attributes, and lasts until the response
/// body ends. 5xx (and gRPC UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS) set Error; 4xx do not.
///
/// Client mode ([`client`](Self::client)): a span per attempt (inside a
/// [`RetryLayer`](crate::retry::RetryLayer) it records
/// `http.request.resend_count`), whose context is injected into the
/// outbound headers; 4xx and 5xx set Error.
///
/// The spans reach OpenTelemetry when the subscriber has a
/// `tracing_opentelemetry` layer. With a [`RequestIdLayer`](crate::RequestIdLayer)
/// outside, the id is recorded as `http.request.id`; turn that layer's own
/// span off so this span is the request's root.
///
/// ```
/// use battlement::trace::TraceLayer;
/// use tower::ServiceBuilder;
///
/// let server = ServiceBuilder::new().layer(TraceLayer::server());
/// let client = ServiceBuilder::new().layer(TraceLayer::client());
/// # let _ = (server, client);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TraceLayer {
    client: bool,
}

impl TraceLayer {
    /// Server spans.
    pub fn server() -> Self {
        Self { client: false }
    }

    /// Client spans, with the context injected into outbound requests.
    pub fn client() -> Self {
        Self { client: true }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace::new(inner, self.client)
    }
}
