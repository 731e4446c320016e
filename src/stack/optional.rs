//! `Optional`: a layer that may be off, so that the preset's layers, each
//! optional, still make one typed stack (one `Router::layer` call, one box
//! for tonic) instead of one boxed service per layer present.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use http_body_util::Either;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// `L` when it is `Some`, else nothing: the inner service alone.
#[derive(Debug, Clone)]
pub struct Optional<L>(pub(crate) Option<L>);

impl<L: Layer<S>, S> Layer<S> for Optional<L> {
    type Service = OptionalService<L::Service, S>;

    fn layer(&self, inner: S) -> Self::Service {
        match &self.0 {
            Some(layer) => OptionalService::On(layer.layer(inner)),
            None => OptionalService::Off(inner),
        }
    }
}

/// The service of [`Optional`]: the layer's service or the inner one; the
/// response body is the one or the other. A layer that is on has its
/// response future boxed: the layers above then move a pointer instead of
/// the whole nested future (pinned, the moves cost more than the
/// allocation).
#[derive(Debug, Clone)]
pub enum OptionalService<A, S> {
    On(A),
    Off(S),
}

impl<A, S, Req, B1, B2> Service<Req> for OptionalService<A, S>
where
    A: Service<Req, Response = Response<B1>>,
    S: Service<Req, Response = Response<B2>, Error = A::Error>,
{
    type Response = Response<Either<B1, B2>>;
    type Error = A::Error;
    type Future = OptionalFuture<Pin<Box<A::Future>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Self::On(svc) => svc.poll_ready(cx),
            Self::Off(svc) => svc.poll_ready(cx),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self {
            Self::On(svc) => OptionalFuture::On {
                future: Box::pin(svc.call(req)),
            },
            Self::Off(svc) => OptionalFuture::Off {
                future: svc.call(req),
            },
        }
    }
}

pin_project! {
    /// The response future of [`OptionalService`].
    #[project = OptionalProj]
    pub enum OptionalFuture<F1, F2> {
        On { #[pin] future: F1 },
        Off { #[pin] future: F2 },
    }
}

impl<F1, F2, B1, B2, E> Future for OptionalFuture<F1, F2>
where
    F1: Future<Output = Result<Response<B1>, E>>,
    F2: Future<Output = Result<Response<B2>, E>>,
{
    type Output = Result<Response<Either<B1, B2>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            OptionalProj::On { future } => future
                .poll(cx)
                .map(|res| res.map(|res| res.map(Either::Left))),
            OptionalProj::Off { future } => future
                .poll(cx)
                .map(|res| res.map(|res| res.map(Either::Right))),
        }
    }
}
