//! [`EditRequest`]: the service of the client layers that only change a
//! request's headers before sending it on (the request id, the deadline,
//! the idempotency key).
//!
//! ```
//! use battlement::layers::edit::{EditRequest, RequestEdit};
//! use http::Request;
//! use tower::{ServiceExt, service_fn};
//!
//! #[derive(Clone)]
//! struct Tag;
//!
//! impl RequestEdit for Tag {
//!     fn edit<B>(&self, req: &mut Request<B>) {
//!         req.headers_mut().insert("x-tag", http::HeaderValue::from_static("1"));
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let svc = EditRequest::new(
//!     service_fn(|req: Request<()>| async move {
//!         Ok::<_, std::convert::Infallible>(req.headers().contains_key("x-tag"))
//!     }),
//!     Tag,
//! );
//! assert!(svc.oneshot(Request::new(())).await.unwrap());
//! # });
//! ```

use std::task::{Context, Poll};

use http::Request;
use tower_service::Service;

/// A change made to each request before it is sent on.
pub trait RequestEdit {
    /// Changes `req`.
    fn edit<B>(&self, req: &mut Request<B>);
}

/// Edits each request with `E`, then calls the inner service.
#[derive(Debug, Clone)]
pub struct EditRequest<S, E> {
    inner: S,
    edit: E,
}

impl<S, E> EditRequest<S, E> {
    /// `inner`, its requests edited by `edit`.
    pub fn new(inner: S, edit: E) -> Self {
        Self { inner, edit }
    }
}

impl<S, E, B> Service<Request<B>> for EditRequest<S, E>
where
    S: Service<Request<B>>,
    E: RequestEdit,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        self.edit.edit(&mut req);
        self.inner.call(req)
    }
}
