//! `ReqwestService`: a `reqwest::Client` as a tower service over `http`
//! types, so the same layers serve reqwest, hyper-util and tonic.
//!
//! A tower `Service` over `reqwest::Client` reuses the layers as they are
//! and keeps reqwest's connection pool, TLS and proxies. A client already
//! built with reqwest-middleware takes the same stack as one `Middleware`
//! instead (`ClientStackMiddleware`, feature `reqwest-middleware`).

use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower_service::Service;

use crate::BoxError;

/// Sends `http::Request`s with a `reqwest::Client`; the response body is
/// `reqwest::Body` (an `http_body::Body`).
///
/// ```
/// use battlement::client::ReqwestService;
/// use battlement::retry::{RetryLayer, RetryPolicy};
/// use tower::ServiceBuilder;
///
/// let client = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::default()).unwrap())
///     .service(ReqwestService::new(reqwest::Client::new()));
/// # let _ = client;
/// ```
#[derive(Debug, Clone, Default)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Sends with `client`.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }
}

impl<B> Service<Request<B>> for ReqwestService
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let client = self.client.clone();
        Box::pin(async move {
            let req = reqwest::Request::try_from(req.map(reqwest::Body::wrap))?;
            client.execute(req).await.map(Response::from)
        })
    }
}
