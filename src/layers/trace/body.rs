//! `TracedBody`: keeps the request's span open until the response body
//! ends, and records a gRPC status that comes in trailers.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use opentelemetry::trace::Status;
use pin_project_lite::pin_project;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::reject::GrpcCode;

pin_project! {
    /// The response body; the span ends when it ends (or is dropped).
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Option<Span>,
        server: bool,
    }
}

impl<B> TracedBody<B> {
    pub(crate) fn new(inner: B, span: Span, server: bool) -> Self {
        Self {
            inner,
            span: Some(span),
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
            let _entered = this.span.as_ref().map(Span::enter);
            ready!(this.inner.as_mut().poll_frame(cx))
        };
        match &frame {
            Some(Ok(f)) => {
                if let (Some(trailers), Some(span)) = (f.trailers_ref(), this.span.as_ref())
                    && let Some(code) = GrpcCode::from_headers(trailers)
                {
                    span.record("rpc.grpc.status_code", code.as_i32());
                    if code != GrpcCode::Ok && (!*this.server || code.is_server_error()) {
                        let code = code.as_i32();
                        span.set_status(Status::error(format!("grpc-status {code}")));
                    }
                }
            }
            Some(Err(_)) => {
                if let Some(span) = this.span.take() {
                    span.record("error.type", "body");
                    span.set_status(Status::error("response body failed"));
                }
            }
            None => {
                this.span.take();
            }
        }
        if this.inner.is_end_stream() {
            this.span.take();
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
