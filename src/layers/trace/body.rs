//! `TracedBody`: keeps the request's span open until the response body
//! ends, records a gRPC status that comes in trailers, and writes the
//! request's access-log entry when the body ends.

use http::HeaderMap;
use opentelemetry::trace::Status;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::access_log::Entry;
use crate::body::{BodyEnd, BodyObserver, ObservedBody};
use crate::reject::GrpcCode;

/// The response body; the span ends when it ends (or is dropped).
pub type TracedBody<B> = ObservedBody<B, OpenSpan>;

/// The request's span while the body is read, and its access-log entry,
/// written in the span when the body ends, fails or is dropped.
pub struct OpenSpan {
    span: Span,
    log: Option<Box<Entry>>,
    server: bool,
}

impl<B> TracedBody<B> {
    pub(crate) fn in_span(inner: B, span: Span, server: bool, log: Option<Box<Entry>>) -> Self {
        Self::new(inner, Some(OpenSpan { span, log, server }))
    }
}

impl BodyObserver for OpenSpan {
    fn poll_within<R>(&self, poll: impl FnOnce() -> R) -> R {
        // Entered while the body is read: tracing-opentelemetry ends a
        // span at its last exit, so the span covers the whole body.
        let _entered = self.span.enter();
        poll()
    }

    fn on_trailers(&mut self, trailers: &HeaderMap) {
        let Some(code) = GrpcCode::from_headers(trailers) else {
            return;
        };
        self.span.record("rpc.grpc.status_code", code.as_i32());
        if code != GrpcCode::Ok && (!self.server || code.is_server_error()) {
            let code = code.as_i32();
            self.span
                .set_status(Status::error(format!("grpc-status {code}")));
        }
        if let Some(log) = self.log.as_mut() {
            log.grpc_status(code);
        }
    }

    fn on_end(mut self, end: BodyEnd) {
        if end == BodyEnd::Failed {
            self.span.record("error.type", "body");
            self.span.set_status(Status::error("response body failed"));
            if let Some(log) = self.log.as_mut() {
                log.failed("body");
            }
        }
        if let Some(log) = self.log.take() {
            let _entered = self.span.enter();
            log.write();
        }
    }
}
