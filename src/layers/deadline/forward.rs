//! `ForwardDeadline`: sends the inbound deadline on with outbound gRPC
//! calls.

use http::Request;
use tokio::time::Instant;
use tower_layer::Layer;

use super::context::inbound_deadline;
use super::grpc_timeout::{self, GRPC_TIMEOUT};
use crate::layers::edit::{EditRequest, RequestEdit};
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
        EditRequest::new(inner, *self)
    }
}

/// The service made by [`ForwardDeadlineLayer`].
pub type ForwardDeadline<S> = EditRequest<S, ForwardDeadlineLayer>;

impl RequestEdit for ForwardDeadlineLayer {
    fn edit<B>(&self, req: &mut Request<B>) {
        if let Some(deadline) = inbound_deadline()
            && Protocol::of(req) != Protocol::Http
            && !req.headers().contains_key(GRPC_TIMEOUT)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            req.headers_mut()
                .insert(GRPC_TIMEOUT, grpc_timeout::encode(left));
        }
    }
}
