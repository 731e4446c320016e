//! `ResponseFuture` of the server-side rate-limit service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::decide::{Rejection, Verdict};
use super::headers::Rendered;
use crate::body::LayerBody;
use crate::reject::Protocol;

pin_project! {
    /// Decides, then calls the inner service or answers the rejection.
    pub struct ResponseFuture<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody>,
        protocol: Protocol,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody>
    where
        S: Service<Request<ReqBody>>,
    {
        Deciding {
            decision: BoxFuture<'static, Verdict>,
            call: Option<(S, Request<ReqBody>)>,
        },
        Calling {
            #[pin]
            future: S::Future,
            headers: Option<Rendered>,
        },
        Rejected {
            rejection: Option<Rejection>,
        },
    }
}

impl<S, ReqBody> ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn deciding(
        decision: BoxFuture<'static, Verdict>,
        inner: S,
        req: Request<ReqBody>,
        protocol: Protocol,
    ) -> Self {
        Self {
            state: State::Deciding {
                decision,
                call: Some((inner, req)),
            },
            protocol,
        }
    }

    /// The decision is made: the inner service was called.
    pub(crate) fn calling(
        future: S::Future,
        headers: Option<Rendered>,
        protocol: Protocol,
    ) -> Self {
        Self {
            state: State::Calling { future, headers },
            protocol,
        }
    }

    pub(crate) fn rejected(rejection: Rejection, protocol: Protocol) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
            protocol,
        }
    }
}

impl<S, ReqBody, ResBody> Future for ResponseFuture<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Output = Result<Response<LayerBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Deciding { decision, call } => {
                    let verdict = ready!(decision.as_mut().poll(cx));
                    let Some((mut inner, req)) = call.take() else {
                        unreachable!("rate limit future polled after completion")
                    };
                    match verdict {
                        Verdict::Allow(headers) => {
                            let future = inner.call(req);
                            this.state.set(State::Calling { future, headers });
                        }
                        Verdict::Reject(rejection) => {
                            this.state.set(State::Rejected {
                                rejection: Some(rejection),
                            });
                        }
                    }
                }
                StateProj::Calling { future, headers } => {
                    let mut res = ready!(future.poll(cx))?;
                    if let Some(headers) = headers.take() {
                        headers.apply(res.headers_mut());
                    }
                    return Poll::Ready(Ok(res.map(LayerBody::inner)));
                }
                StateProj::Rejected { rejection } => {
                    let Some(rejection) = rejection.take() else {
                        unreachable!("rate limit future polled after completion")
                    };
                    return Poll::Ready(Ok(rejection.into_problem().into_response(*this.protocol)));
                }
            }
        }
    }
}
