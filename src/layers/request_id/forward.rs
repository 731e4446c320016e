//! `ForwardRequestIdLayer`: puts the current request id on outbound calls.

use http::{HeaderName, Request};
use tower_layer::Layer;

use super::id::RequestId;
use super::layer::X_REQUEST_ID;
use crate::layers::edit::{EditRequest, RequestEdit};

/// Forwards the request id on outbound requests made by a client stack
/// (hyper-util, tonic `Channel`, any tower HTTP client).
///
/// The id is, in order: the outbound request's own header if it already has
/// one; its [`RequestId`] extension; [`RequestId::current`] (the inbound
/// request being handled by this task); or, if enabled with
/// [`generate_missing`](Self::generate_missing), a new UUIDv7. gRPC
/// metadata are HTTP/2 headers, so tonic calls carry it as
/// `x-request-id` metadata.
///
/// ```
/// use battlement::request_id::{ForwardRequestIdLayer, RequestId};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let client = ServiceBuilder::new()
///     .layer(ForwardRequestIdLayer::new())
///     .service(service_fn(|req: http::Request<()>| async move {
///         Ok::<_, std::convert::Infallible>(req.headers()["x-request-id"].clone())
///     }));
/// let id = RequestId::new_v7();
/// let sent = id.clone().scope(client.oneshot(http::Request::new(()))).await.unwrap();
/// assert_eq!(sent, id.as_str());
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct ForwardRequestIdLayer {
    header: HeaderName,
    generate_missing: bool,
}

impl ForwardRequestIdLayer {
    /// Forwards as `x-request-id`.
    pub fn new() -> Self {
        Self {
            header: X_REQUEST_ID,
            generate_missing: false,
        }
    }

    /// Uses `header` instead of `x-request-id`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// Gives outbound requests made outside any inbound request a new id.
    pub fn generate_missing(mut self, generate: bool) -> Self {
        self.generate_missing = generate;
        self
    }
}

impl Default for ForwardRequestIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ForwardRequestIdLayer {
    type Service = ForwardRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EditRequest::new(inner, self.clone())
    }
}

/// The service made by [`ForwardRequestIdLayer`].
pub type ForwardRequestId<S> = EditRequest<S, ForwardRequestIdLayer>;

impl RequestEdit for ForwardRequestIdLayer {
    fn edit<B>(&self, req: &mut Request<B>) {
        if !req.headers().contains_key(&self.header) {
            let id = req
                .extensions()
                .get::<RequestId>()
                .cloned()
                .or_else(RequestId::current)
                .or_else(|| self.generate_missing.then(RequestId::new_v7));
            if let Some(id) = id {
                req.headers_mut()
                    .insert(self.header.clone(), id.header_value().clone());
            }
        }
    }
}
