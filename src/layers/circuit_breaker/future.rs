//! `ResponseFuture` of the breaker services.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::body::ClassifiedBody;
use super::classify::ClassifyResponse;
use super::error::CircuitOpen;
use super::registry::Permit;
use crate::BoxError;
use crate::body::LayerBody;
use crate::reject::{Problem, Protocol};

pin_project! {
    /// Runs an admitted call and records its outcome, or yields the
    /// rejection. Dropped before it completes: the call counts as
    /// cancelled (not counted; a probe's permit is given back).
    pub(crate) struct Call<F> {
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
            permit: Option<Permit>,
            classifier: Arc<dyn ClassifyResponse>,
        },
        Rejected {
            rejection: Option<CircuitOpen>,
        },
    }
}

impl<F> Call<F> {
    pub(crate) fn calling(
        future: F,
        permit: Permit,
        classifier: Arc<dyn ClassifyResponse>,
    ) -> Self {
        Self {
            state: State::Calling {
                future,
                permit: Some(permit),
                classifier,
            },
        }
    }

    pub(crate) fn rejected(rejection: CircuitOpen) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
        }
    }
}

/// What the future ends with: the classified response, or the rejection.
pub(crate) enum Finished<B, E> {
    Response(Response<ClassifiedBody<B>>),
    Error(E),
    Rejected(CircuitOpen),
}

impl<F, B, E> Call<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display,
{
    pub(crate) fn poll_finished(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Finished<B, E>> {
        match self.project().state.project() {
            StateProj::Calling {
                future,
                permit,
                classifier,
            } => {
                let result = ready!(future.poll(cx));
                let Some(permit) = permit.take() else {
                    unreachable!("circuit breaker future polled after completion")
                };
                Poll::Ready(match result {
                    Ok(res) => {
                        let (parts, body) = res.into_parts();
                        let body = match classifier.classify_response(parts.status, &parts.headers)
                        {
                            Some(outcome) => {
                                permit.record(outcome);
                                ClassifiedBody::settled(body)
                            }
                            None => ClassifiedBody::pending(body, permit, classifier.clone()),
                        };
                        Finished::Response(Response::from_parts(parts, body))
                    }
                    Err(e) => {
                        permit.record(classifier.classify_error(&e));
                        Finished::Error(e)
                    }
                })
            }
            StateProj::Rejected { rejection } => {
                let Some(rejection) = rejection.take() else {
                    unreachable!("circuit breaker future polled after completion")
                };
                Poll::Ready(Finished::Rejected(rejection))
            }
        }
    }
}

pin_project! {
    /// The future of [`CircuitBreaker`](super::CircuitBreaker): a rejection
    /// becomes a 503 / `UNAVAILABLE` response.
    pub struct ResponseFuture<F> {
        #[pin]
        call: Call<F>,
        protocol: Protocol,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(call: Call<F>, protocol: Protocol) -> Self {
        Self { call, protocol }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display,
{
    type Output = Result<Response<LayerBody<ClassifiedBody<B>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        Poll::Ready(match ready!(this.call.poll_finished(cx)) {
            Finished::Response(res) => Ok(res.map(LayerBody::inner)),
            Finished::Error(e) => Err(e),
            Finished::Rejected(open) => Ok(Problem::from(open).into_response(*this.protocol)),
        })
    }
}

pin_project! {
    /// The future of [`ClientCircuitBreaker`](super::ClientCircuitBreaker):
    /// a rejection is a [`CircuitOpen`] error.
    pub struct ClientResponseFuture<F> {
        #[pin]
        call: Call<F>,
    }
}

impl<F> ClientResponseFuture<F> {
    pub(crate) fn new(call: Call<F>) -> Self {
        Self { call }
    }
}

impl<F, B, E> Future for ClientResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display + Into<BoxError>,
{
    type Output = Result<Response<ClassifiedBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().call.poll_finished(cx)) {
            Finished::Response(res) => Ok(res),
            Finished::Error(e) => Err(e.into()),
            Finished::Rejected(open) => Err(Box::new(open)),
        })
    }
}
