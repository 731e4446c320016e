//! `LimitedBody`: a response body that holds its request's slot until it
//! ends.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::limit::Permit;

pin_project! {
    /// The inner response body; the request's slot is given back when the
    /// body ends, fails, or is dropped.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

impl<B> LimitedBody<B> {
    pub(crate) fn new(inner: B, permit: Permit) -> Self {
        Self {
            inner,
            permit: Some(permit),
        }
    }
}

impl<B> std::fmt::Debug for LimitedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedBody")
            .field("holds_slot", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for LimitedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let done = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if done {
            this.permit.take();
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
