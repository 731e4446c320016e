//! `ClassifiedBody`: a response body that records the call's outcome when
//! it ends, for gRPC statuses that arrive in trailers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::classify::ClassifyResponse;
use super::registry::Permit;
use super::state::Outcome;

pin_project! {
    /// The inner response body; when the outcome waits for the trailers,
    /// it is recorded as the body ends (dropped before the end: cancelled,
    /// not counted).
    pub struct ClassifiedBody<B> {
        #[pin]
        inner: B,
        // Boxed: only streamed (gRPC) calls have one, and every response
        // moves this body a few times on its way out.
        pending: Option<Box<(Permit, Arc<dyn ClassifyResponse>, Duration)>>,
    }
}

impl<B> ClassifiedBody<B> {
    /// A body whose call is already recorded.
    pub(crate) fn settled(inner: B) -> Self {
        Self {
            inner,
            pending: None,
        }
    }

    /// A body whose outcome comes from its trailers; the call is timed
    /// to now, when its head arrived.
    pub(crate) fn pending(inner: B, permit: Permit, classifier: Arc<dyn ClassifyResponse>) -> Self {
        let elapsed = permit.elapsed();
        Self {
            inner,
            pending: Some(Box::new((permit, classifier, elapsed))),
        }
    }
}

impl<B> std::fmt::Debug for ClassifiedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassifiedBody")
            .field("pending", &self.pending.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for ClassifiedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(pending) = this.pending.take() {
            let (permit, classifier, elapsed) = *pending;
            let outcome = match &frame {
                Some(Ok(f)) => match f.trailers_ref() {
                    Some(trailers) => classifier.classify_trailers(Some(trailers)),
                    None => {
                        *this.pending = Some(Box::new((permit, classifier, elapsed)));
                        return Poll::Ready(frame);
                    }
                },
                Some(Err(_)) => Outcome::Failure,
                None => classifier.classify_trailers(None),
            };
            permit.record_timed(outcome, elapsed);
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
