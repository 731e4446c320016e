//! `ResponseFuture` of the request-id service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderName, Response};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tracing::instrument::Instrumented;

use super::id::RequestId;

pin_project! {
    /// Runs the inner service with the id in scope, then echoes it (the
    /// scope hands the id back when the call is done).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Instrumented<TaskLocalFuture<RequestId, F>>,
        header: HeaderName,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(
        inner: Instrumented<TaskLocalFuture<RequestId, F>>,
        header: HeaderName,
    ) -> Self {
        Self { inner, header }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut res = ready!(this.inner.as_mut().poll(cx))?;
        if let Some(id) = this.inner.inner_pin_mut().take_value() {
            res.headers_mut()
                .insert(this.header.clone(), id.into_header_value());
        }
        Poll::Ready(Ok(res))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}
