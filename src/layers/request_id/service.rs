//! `RequestIdService`.

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;
use tracing::Instrument;

use super::future::ResponseFuture;
use super::id::RequestId;
use super::layer::RequestIdLayer;
use crate::key::RequestHead;

/// The service made by [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestIdService<S> {
    inner: S,
    layer: RequestIdLayer,
}

/// The target of the request id's own `request` span: for log lines
/// only, so the OpenTelemetry layer of
/// [`telemetry::tracing_layer`](crate::telemetry::tracing_layer) never
/// exports it, and it costs nothing where no log layer enables it.
pub const REQUEST_SPAN_TARGET: &str = "battlement::request_id";

impl<S> RequestIdService<S> {
    pub(crate) fn new(inner: S, layer: RequestIdLayer) -> Self {
        Self { inner, layer }
    }

    /// The incoming id if it is trusted and valid.
    fn incoming<B>(&self, req: &Request<B>) -> Option<RequestId> {
        if !self.layer.trust_incoming {
            return None;
        }
        let mut values = req.headers().get_all(&self.layer.header).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => RequestId::parse(value),
            _ => None,
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let id = match self.incoming(&req) {
            Some(id) => id,
            None => {
                let id = self.layer.make.make_request_id(&RequestHead::of(&req));
                req.headers_mut()
                    .insert(self.layer.header.clone(), id.header_value().clone());
                id
            }
        };
        req.extensions_mut().insert(id.clone());
        tracing::Span::current().record("request.id", id.as_str());
        let span = if self.layer.span {
            tracing::info_span!(target: REQUEST_SPAN_TARGET, "request", request_id = %id)
        } else {
            tracing::Span::none()
        };
        // `call` itself runs inside the span and with the id in scope too.
        let call = span.in_scope(|| id.clone().sync_scope(|| self.inner.call(req)));
        let inner = id.scope(call).instrument(span);
        ResponseFuture::new(inner, self.layer.header.clone())
    }
}
