//! `TonicBodyLayer`: hands a tonic `Channel` the `tonic::body::Body` it
//! needs, whatever body the layers above produced.

use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use tower_layer::Layer;
use tower_service::Service;

use crate::BoxError;

/// Wraps request bodies in `tonic::body::Body`; put it innermost, over a
/// tonic `Channel`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TonicBodyLayer;

impl<S> Layer<S> for TonicBodyLayer {
    type Service = TonicBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TonicBody(inner)
    }
}

/// The service made by [`TonicBodyLayer`].
#[derive(Debug, Clone)]
pub struct TonicBody<S>(S);

impl<S, B> Service<Request<B>> for TonicBody<S>
where
    S: Service<Request<tonic::body::Body>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.0.call(req.map(tonic::body::Body::new))
    }
}
