//! `ResponseFuture` of the idempotency service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::Response;
use pin_project_lite::pin_project;

use crate::body::LayerBody;
use crate::reject::{Problem, Protocol};

pin_project! {
    /// Passes a request through, runs a keyed one, or answers a rejection.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        state: State<F, B, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Passthrough { #[pin] future: F },
        Running { future: BoxFuture<'static, Result<Response<LayerBody<B>>, E>> },
        // Boxed: a rejection is rare, and the problem is large enough to
        // grow every request's future.
        Rejected { problem: Option<Box<(Problem, Protocol)>> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            state: State::Passthrough { future },
        }
    }

    pub(crate) fn running(future: BoxFuture<'static, Result<Response<LayerBody<B>>, E>>) -> Self {
        Self {
            state: State::Running { future },
        }
    }

    pub(crate) fn rejected(problem: Problem, protocol: Protocol) -> Self {
        Self {
            state: State::Rejected {
                problem: Some(Box::new((problem, protocol))),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<LayerBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Passthrough { future } => future
                .poll(cx)
                .map(|r| r.map(|res| res.map(LayerBody::inner))),
            StateProj::Running { future } => future.as_mut().poll(cx),
            StateProj::Rejected { problem } => {
                let Some(rejected) = problem.take() else {
                    unreachable!("idempotency future polled after completion")
                };
                let (problem, protocol) = *rejected;
                Poll::Ready(Ok(problem.into_response(protocol)))
            }
        }
    }
}
