//! `ShapeRejectionsLayer`: one hook that gives every HTTP rejection of the
//! layers under it the body and content type of your API's errors.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::Problem;
use crate::body::LayerBody;

/// The body and content type a rejection is sent with instead of its
/// `application/problem+json` document.
#[derive(Debug, Clone)]
pub struct Shaped {
    content_type: HeaderValue,
    body: Bytes,
}

impl Shaped {
    /// `body`, sent as `content_type`.
    pub fn new(content_type: HeaderValue, body: impl Into<Bytes>) -> Self {
        Self {
            content_type,
            body: body.into(),
        }
    }

    /// A JSON document, sent as `application/json`.
    pub fn json(document: &serde_json::Value) -> Self {
        Self::new(
            HeaderValue::from_static("application/json"),
            document.to_string(),
        )
    }
}

/// How the rejections under a [`ShapeRejectionsLayer`] look: the [`Shaped`]
/// body of a rejection from its [`Problem`] (its status, title, detail and
/// extension members), or `None` to keep the problem+json document. A
/// closure `Fn(&Problem) -> Option<Shaped>` is one.
pub trait ShapeRejection: Send + Sync + 'static {
    /// The body of the rejection `problem`.
    fn shape(&self, problem: &Problem) -> Option<Shaped>;
}

impl<F> ShapeRejection for F
where
    F: Fn(&Problem) -> Option<Shaped> + Send + Sync + 'static,
{
    fn shape(&self, problem: &Problem) -> Option<Shaped> {
        self(problem)
    }
}

/// Shapes every HTTP rejection of the layers under it (rate limit,
/// breaker, concurrency limit, deadline, idempotency, key extraction) and
/// every [`Problem`] a handler returns, with one [`ShapeRejection`] hook.
/// The status and headers (`Retry-After`, ...) stay; the body and
/// content type are the hook's. gRPC rejections carry their status in
/// `grpc-status` and have no body: they pass unchanged. Put it outermost.
///
/// An HTTP rejection carries its [`Problem`] in the response's
/// extensions, which is how this layer tells it from a handler's answer
/// (and how middleware of your own may read it).
///
/// ```
/// use battlement::reject::{Problem, ShapeRejectionsLayer, Shaped};
/// use battlement::rate_limit::{Policy, Quota, RateLimitLayer};
/// use battlement::backends::MemoryStore;
/// use http_body_util::BodyExt;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// // Every rejection as `{"error": {"code": 429, "message": "..."}}`.
/// let shape = ShapeRejectionsLayer::new(|problem: &Problem| {
///     Some(Shaped::json(&serde_json::json!({
///         "error": { "code": problem.status().as_u16(), "message": problem.title() }
///     })))
/// });
/// let limit = RateLimitLayer::new(MemoryStore::new())
///     .policy(Policy::new("global", Quota::per_second(1).unwrap()).unwrap());
/// let svc = ServiceBuilder::new().layer(shape).layer(limit).service_fn(|_: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))))
/// });
/// let _ = svc.clone().oneshot(http::Request::new(String::new())).await.unwrap();
/// let denied = svc.oneshot(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(denied.status(), 429);
/// assert_eq!(denied.headers()["content-type"], "application/json");
/// let body = denied.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, r#"{"error":{"code":429,"message":"Too Many Requests"}}"#);
/// # });
/// ```
#[derive(Clone)]
pub struct ShapeRejectionsLayer {
    hook: Arc<dyn ShapeRejection>,
}

impl ShapeRejectionsLayer {
    /// Shapes rejections with `hook`.
    pub fn new(hook: impl ShapeRejection) -> Self {
        Self {
            hook: Arc::new(hook),
        }
    }
}

impl std::fmt::Debug for ShapeRejectionsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShapeRejectionsLayer")
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ShapeRejectionsLayer {
    type Service = ShapeRejections<S>;

    fn layer(&self, inner: S) -> ShapeRejections<S> {
        ShapeRejections {
            inner,
            hook: self.hook.clone(),
        }
    }
}

/// The service of [`ShapeRejectionsLayer`].
#[derive(Clone)]
pub struct ShapeRejections<S> {
    inner: S,
    hook: Arc<dyn ShapeRejection>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for ShapeRejections<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShapeRejections")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req, B> Service<Req> for ShapeRejections<S>
where
    S: Service<Req, Response = Response<B>>,
{
    type Response = Response<LayerBody<B>>;
    type Error = S::Error;
    type Future = ShapeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ShapeFuture {
            future: self.inner.call(req),
            hook: self.hook.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`ShapeRejections`].
    pub struct ShapeFuture<F> {
        #[pin]
        future: F,
        hook: Arc<dyn ShapeRejection>,
    }
}

impl<F, B, E> Future for ShapeFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<LayerBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.future.poll(cx))?;
        let shaped = res
            .extensions()
            .get::<Problem>()
            .and_then(|problem| this.hook.shape(problem));
        Poll::Ready(Ok(match shaped {
            None => res.map(LayerBody::inner),
            Some(shaped) => {
                let (mut parts, _) = res.into_parts();
                parts.headers.insert(CONTENT_TYPE, shaped.content_type);
                parts.headers.remove(CONTENT_LENGTH);
                Response::from_parts(parts, LayerBody::full(shaped.body))
            }
        }))
    }
}
