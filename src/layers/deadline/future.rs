//! `ResponseFuture` of the deadline service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Sleep, sleep_until};

use super::context::Deadline;
use super::error::{DeadlineExceeded, MalformedTimeout};
use super::layer::Shared;
use crate::body::LayerBody;
use crate::events::DeadlineEvent;
use crate::reject::{Problem, Protocol};

pin_project! {
    /// Runs the inner service's future (with its [`Deadline`] as the
    /// task's) until its response head is ready or the deadline passes;
    /// then the inner future is dropped at once and the rejection is the
    /// response.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            future: TaskLocalFuture<Deadline, F>,
            #[pin]
            sleep: Sleep,
            expiry: Expiry,
        },
        Rejected {
            rejection: Option<(MalformedTimeout, Protocol)>,
        },
        Done,
    }
}

/// What an expiry reports.
struct Expiry {
    timeout: Duration,
    source: &'static str,
    protocol: Protocol,
    shared: Arc<Shared>,
}

impl<F: Future> ResponseFuture<F> {
    pub(crate) fn running(
        deadline: Deadline,
        future: F,
        timeout: Duration,
        source: &'static str,
        protocol: Protocol,
        shared: Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Running {
                future: deadline.scope(future),
                sleep: sleep_until(deadline.0),
                expiry: Expiry {
                    timeout,
                    source,
                    protocol,
                    shared,
                },
            },
        }
    }

    pub(crate) fn rejected(rejection: MalformedTimeout, protocol: Protocol) -> Self {
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
    type Output = Result<Response<LayerBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::Running {
                future,
                sleep,
                expiry,
            } => {
                if let Poll::Ready(result) = future.poll(cx) {
                    return Poll::Ready(result.map(|res| res.map(LayerBody::inner)));
                }
                ready!(sleep.poll(cx));
                let shared = &expiry.shared;
                let err = DeadlineExceeded::new(expiry.timeout, expiry.source, shared.status);
                let source: Arc<str> = Arc::from(expiry.source);
                shared
                    .events
                    .report(DeadlineEvent::TimedOut, Some(&source), || {
                        Some(err.to_string())
                    });
                let protocol = expiry.protocol;
                // Cancels the inner service's work now, not when the
                // response future is dropped.
                state.set(State::Done);
                Poll::Ready(Ok(Problem::from(err).into_response(protocol)))
            }
            StateProj::Rejected { rejection } => {
                let Some((rejection, protocol)) = rejection.take() else {
                    unreachable!("deadline future polled after completion")
                };
                Poll::Ready(Ok(Problem::from(rejection).into_response(protocol)))
            }
            StateProj::Done => unreachable!("deadline future polled after completion"),
        }
    }
}
