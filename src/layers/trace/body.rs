//! `TracedBody`: keeps the request's span open until the response body
//! ends, records a gRPC status that comes in trailers, and writes the
//! request's access-log entry when the body ends.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::Status;
use pin_project_lite::pin_project;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::access_log::Entry;
use crate::reject::GrpcCode;

pin_project! {
    /// The response body; the span ends when it ends (or is dropped).
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        open: Option<Open>,
        server: bool,
    }
}

/// The request's span while the body is read, and its access-log entry,
/// written in the span when the body ends, fails or is dropped.
struct Open {
    span: Span,
    log: Option<Box<Entry>>,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            let _entered = self.span.enter();
            log.write();
        }
    }
}

impl<B> TracedBody<B> {
    pub(crate) fn new(inner: B, span: Span, server: bool, log: Option<Box<Entry>>) -> Self {
        Self {
            inner,
            open: Some(Open { span, log }),
            server,
        }
    }
}

impl<B> std::fmt::Debug for TracedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        // Entered while the body is read: tracing-opentelemetry ends a
        // span at its last exit, so the span covers the whole body.
        let frame = {
            let _entered = this.open.as_ref().map(|open| open.span.enter());
            ready!(this.inner.as_mut().poll_frame(cx))
        };
        match &frame {
            Some(Ok(f)) => {
                if let (Some(trailers), Some(open)) = (f.trailers_ref(), this.open.as_mut())
                    && let Some(code) = GrpcCode::from_headers(trailers)
                {
                    open.span.record("rpc.grpc.status_code", code.as_i32());
                    if code != GrpcCode::Ok && (!*this.server || code.is_server_error()) {
                        let code = code.as_i32();
                        open.span
                            .set_status(Status::error(format!("grpc-status {code}")));
                    }
                    if let Some(log) = open.log.as_mut() {
                        log.grpc_status(code);
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(mut open) = this.open.take() {
                    open.span.record("error.type", "body");
                    open.span.set_status(Status::error("response body failed"));
                    if let Some(log) = open.log.as_mut() {
                        log.failed("body");
                    }
                }
            }
            None => {
                this.open.take();
            }
        }
        if this.inner.is_end_stream() {
            this.open.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
