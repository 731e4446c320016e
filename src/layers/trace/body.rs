//! `TracedBody`: keeps the request's span open until the response body
//! ends, with the request's context current while the body is read,
//! records a gRPC status that comes in trailers, and writes the request's
//! access-log entry when the body ends.

use http::HeaderMap;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Status, TraceContextExt};

use super::access_log::Entry;
use super::semconv::attr;
use super::traced::Traced;
use crate::body::{BodyEnd, BodyObserver, ObservedBody};
use crate::reject::GrpcCode;

/// The response body; the span ends when it ends (or is dropped).
pub type TracedBody<B> = ObservedBody<B, OpenSpan>;

/// The request's context while the body is read, and its access-log entry,
/// written in that context when the body ends, fails or is dropped.
pub struct OpenSpan {
    request: Traced,
    log: Option<Box<Entry>>,
    server: bool,
}

impl<B> TracedBody<B> {
    pub(crate) fn in_span(
        inner: B,
        request: Traced,
        server: bool,
        log: Option<Box<Entry>>,
    ) -> Self {
        Self::new(
            inner,
            Some(OpenSpan {
                request,
                log,
                server,
            }),
        )
    }
}

impl BodyObserver for OpenSpan {
    fn poll_within<R>(&self, poll: impl FnOnce() -> R) -> R {
        let _attached = self.request.cx.clone().attach();
        poll()
    }

    fn on_trailers(&mut self, trailers: &HeaderMap) {
        let Some(code) = GrpcCode::from_headers(trailers) else {
            return;
        };
        if let Some(log) = self.log.as_mut() {
            log.grpc_status(code);
        }
        if !self.request.recording {
            return;
        }
        let span = self.request.cx.span();
        span.set_attribute(KeyValue::new(
            attr::RPC_GRPC_STATUS_CODE,
            i64::from(code.as_i32()),
        ));
        if code != GrpcCode::Ok && (!self.server || code.is_server_error()) {
            let code = code.as_i32();
            span.set_status(Status::error(format!("grpc-status {code}")));
        }
    }

    fn on_end(mut self, end: BodyEnd) {
        if end == BodyEnd::Failed {
            if self.request.recording {
                let span = self.request.cx.span();
                span.set_attribute(KeyValue::new(attr::ERROR_TYPE, "body"));
                span.set_status(Status::error("response body failed"));
            }
            if let Some(log) = self.log.as_mut() {
                log.failed("body");
            }
        }
        if let Some(log) = self.log.take() {
            let _attached = self.request.cx.clone().attach();
            log.write();
        }
        // The span ends as `self.request` drops.
    }
}
