//! `ForwardDeadline`: sends the inbound deadline on with outbound gRPC
//! calls.

use std::task::{Context, Poll};

use http::Request;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::context::inbound_deadline;
use super::grpc_timeout::{self, GRPC_TIMEOUT};
use crate::reject::Protocol;

/// Adds a `grpc-timeout` header with the time left of the
/// [inbound deadline](super::inbound_deadline) to outbound gRPC calls
/// that carry none (a timeout the caller set stays). Part of the
/// [`ClientStack`](crate::client::ClientStack), below the retry, so each
/// attempt sends what is left when it starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardDeadlineLayer;

impl ForwardDeadlineLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for ForwardDeadlineLayer {
    type Service = ForwardDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ForwardDeadline { inner }
    }
}

/// The service made by [`ForwardDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct ForwardDeadline<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ForwardDeadline<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(deadline) = inbound_deadline()
            && Protocol::of(&req) != Protocol::Http
            && !req.headers().contains_key(GRPC_TIMEOUT)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            req.headers_mut()
                .insert(GRPC_TIMEOUT, grpc_timeout::encode(left));
        }
        self.inner.call(req)
    }
}
