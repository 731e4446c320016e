//! `ResponseFuture` of the concurrency-limit service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::body::LimitedBody;
use super::error::Overloaded;
use super::limit::Slot;
use crate::body::LayerBody;
use crate::reject::{Problem, Protocol};

pin_project! {
    /// Runs an admitted request, or yields the rejection as a response.
    /// Dropped before the response head arrives, the request's slot is
    /// given back (and its latency not sampled).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling {
            #[pin]
            future: F,
            slot: Option<Slot>,
        },
        Rejected {
            rejection: Option<(Overloaded, Protocol)>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn calling(future: F, slot: Slot) -> Self {
        Self {
            state: State::Calling {
                future,
                slot: Some(slot),
            },
        }
    }

    pub(crate) fn rejected(rejection: Overloaded, protocol: Protocol) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some((rejection, protocol)),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<LayerBody<LimitedBody<B>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling { future, slot } => {
                let result = ready!(future.poll(cx));
                let Some(slot) = slot.take() else {
                    unreachable!("concurrency limit future polled after completion")
                };
                Poll::Ready(match result {
                    Ok(res) => {
                        // Latency is time to the response head (as in
                        // Envoy); the slot is held until the body ends.
                        slot.record_latency();
                        Ok(res.map(|body| LayerBody::inner(LimitedBody::holding(body, slot))))
                    }
                    // Errors are not latency samples; the slot is freed
                    // (once no detached work holds it).
                    Err(e) => Err(e),
                })
            }
            StateProj::Rejected { rejection } => {
                let Some((rejection, protocol)) = rejection.take() else {
                    unreachable!("concurrency limit future polled after completion")
                };
                Poll::Ready(Ok(Problem::from(rejection).into_response(protocol)))
            }
        }
    }
}
