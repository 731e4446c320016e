//! `DeadlineService`: the service made by the layer.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::config::MalformedGrpcTimeout;
use super::context::Deadline;
use super::error::MalformedTimeout;
use super::future::ResponseFuture;
use super::grpc_timeout;
use super::layer::Shared;
use crate::body::LayerBody;
use crate::events::DeadlineEvent;
use crate::reject::Protocol;

/// Timeouts beyond this are taken as this (no `Instant` overflow).
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The service made by [`DeadlineLayer`](super::DeadlineLayer): an
/// expired request is answered with a 504 / `DEADLINE_EXCEEDED` response,
/// so the error type stays the inner service's.
#[derive(Clone)]
pub struct DeadlineService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> DeadlineService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S: fmt::Debug> fmt::Debug for DeadlineService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The route a configured timeout is looked up by.
fn route(parts: &Parts) -> &str {
    #[cfg(feature = "axum")]
    if let Some(path) = parts.extensions.get::<axum::extract::MatchedPath>() {
        return path.as_str();
    }
    parts.uri.path()
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for DeadlineService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<LayerBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let now = Instant::now();
        let shared = &self.shared;
        let (mut parts, body) = req.into_parts();
        let protocol = Protocol::of_headers(&parts.headers);
        let (mut timeout, mut source) = match shared.route_fn.as_ref().and_then(|f| f(&parts)) {
            Some(t) => (t, "route"),
            None => match shared.routes.get(route(&parts)) {
                Some(&t) => (t, "route"),
                None => (shared.timeout, "default"),
            },
        };
        if protocol != Protocol::Http {
            match grpc_timeout::parse(&parts.headers) {
                Ok(Some(t)) if t < timeout => (timeout, source) = (t, "grpc-timeout"),
                Ok(_) => {}
                Err(bad) => match shared.malformed {
                    MalformedGrpcTimeout::Ignore => {
                        shared
                            .events
                            .report(DeadlineEvent::MalformedGrpcTimeout, None, || Some(bad.0));
                    }
                    MalformedGrpcTimeout::Reject => {
                        shared
                            .events
                            .report(DeadlineEvent::MalformedGrpcTimeout, None, || {
                                Some(bad.0.clone())
                            });
                        return ResponseFuture::rejected(MalformedTimeout::new(bad.0), protocol);
                    }
                },
            }
        }
        let mut deadline = now + timeout.min(FAR);
        if let Some(outer) = parts.extensions.get::<Deadline>()
            && outer.0 < deadline
        {
            deadline = outer.0;
            timeout = outer.0.saturating_duration_since(now);
            source = "outer";
        }
        let deadline = Deadline(deadline);
        parts.extensions.insert(deadline);
        let req = Request::from_parts(parts, body);
        let future = deadline.sync_scope(|| self.inner.call(req));
        ResponseFuture::running(
            deadline,
            future,
            timeout,
            source,
            protocol,
            self.shared.clone(),
        )
    }
}
