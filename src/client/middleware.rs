//! `ClientStackMiddleware`: the client stack as one
//! `reqwest_middleware::Middleware`.
//!
//! The stack's layers run as they are; only the innermost step changes:
//! each attempt (each retry, each hedge) goes on down the
//! reqwest-middleware chain with `next.run`. The attempts are sent from
//! the `handle` call itself, which owns `next`, while the stack's future
//! runs beside them and hands them over through a channel.

use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use http::{Extensions, Request, Response};
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::error::ClientError;
use super::stack::ClientStackLayer;
use crate::BoxError;
use crate::rate_limit::RateLimitStore;

/// The client stack ([`ClientStackLayer`]) as a
/// `reqwest_middleware::Middleware`: request-id forwarding, the
/// `Idempotency-Key` when turned on, retry, hedging, a span and metrics per
/// attempt, the per-host breaker and the client rate limit, around the
/// rest of the middleware chain and the `reqwest::Client`.
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::client::{ClientError, ClientStack, ClientStackMiddleware};
/// use reqwest_middleware::ClientBuilder;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let stack = ClientStack::new("upstream", MemoryStore::new()).build().unwrap();
/// let breakers = stack.breakers();
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(ClientStackMiddleware::new(stack))
///     .build();
///
/// breakers.force_open("example.com");
/// let err = client.get("http://example.com/").send().await.unwrap_err();
/// assert!(matches!(ClientError::of(&err), Some(ClientError::CircuitOpen(_))));
/// # });
/// ```
///
/// Errors: the stack's own ([`ClientError::CircuitOpen`],
/// [`RateLimited`](ClientError::RateLimited),
/// [`AttemptTimedOut`](ClientError::AttemptTimedOut),
/// [`DeadlineExceeded`](ClientError::DeadlineExceeded)) come as
/// `reqwest_middleware::Error::Middleware` holding the [`ClientError`]
/// ([`ClientError::of`] borrows it); a transport failure stays
/// `reqwest_middleware::Error::Reqwest`, as without the middleware.
/// `ClientError::from` sorts either. The response carries
/// [`Attempts`](crate::retry::Attempts) (and
/// [`Hedged`](crate::hedge::Hedged) when the hedge won) in its
/// extensions.
///
/// Every attempt goes down the chain with a copy of the request's
/// extensions; what a later middleware adds to them is not seen here. A
/// request body is replayed on retries when the retry policy keeps it
/// (up to its `max_replay_body`); a streamed body is sent once.
pub struct ClientStackMiddleware<St> {
    layer: ClientStackLayer<St>,
}

impl<St> ClientStackMiddleware<St> {
    /// Runs `layer` (from [`ClientStack::build`](super::ClientStack::build))
    /// for every request.
    pub fn new(layer: ClientStackLayer<St>) -> Self {
        Self { layer }
    }
}

impl<St> std::fmt::Debug for ClientStackMiddleware<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientStackMiddleware")
            .field("layer", &self.layer)
            .finish()
    }
}

/// An attempt for `handle` to send down the chain.
type Attempt = (
    reqwest::Request,
    oneshot::Sender<reqwest_middleware::Result<reqwest::Response>>,
);

/// The innermost service of the stack: hands each attempt to `handle`.
#[derive(Clone)]
struct ToChain {
    attempts: mpsc::UnboundedSender<Attempt>,
    /// The request's own `timeout`, set again on every attempt.
    timeout: Option<Duration>,
}

/// The final URL of a response, kept across the conversion to `http`.
#[derive(Clone)]
struct FinalUrl(reqwest::Url);

impl<B> Service<Request<B>> for ToChain
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<reqwest::Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (attempts, timeout) = (self.attempts.clone(), self.timeout);
        Box::pin(async move {
            let mut req = reqwest::Request::try_from(req.map(reqwest::Body::wrap))?;
            *req.timeout_mut() = timeout;
            let (reply, answer) = oneshot::channel();
            attempts
                .send((req, reply))
                .map_err(|_| "the middleware call ended")?;
            let res = answer.await.map_err(|_| "the middleware call ended")?;
            match res {
                Ok(res) => {
                    let url = FinalUrl(res.url().clone());
                    let mut res = Response::from(res);
                    res.extensions_mut().insert(url);
                    Ok(res)
                }
                Err(reqwest_middleware::Error::Reqwest(e)) => Err(Box::new(e) as BoxError),
                Err(reqwest_middleware::Error::Middleware(e)) => Err(e.into()),
            }
        })
    }
}

/// Sends one attempt down the chain, unless the stack gives up on it
/// first (a per-try timeout, a hedge that won).
async fn send(next: Next<'_>, mut extensions: Extensions, (req, mut reply): Attempt) {
    let out = tokio::select! {
        out = next.run(req, &mut extensions) => out,
        () = reply.closed() => return,
    };
    let _ = reply.send(out);
}

#[async_trait::async_trait]
impl<St> Middleware for ClientStackMiddleware<St>
where
    St: RateLimitStore + Send + Sync + 'static,
    ClientStackLayer<St>: Send + Sync,
{
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let timeout = req.timeout().copied();
        let req = http::Request::<reqwest::Body>::try_from(req)?;
        // Bounded by the retry's attempts and hedges.
        let (attempts, mut pending) = mpsc::unbounded_channel();
        let stack = self.layer.layer(ToChain { attempts, timeout });
        let mut call = pin!(stack.oneshot(req));
        let mut sending = FuturesUnordered::new();
        let out = loop {
            tokio::select! {
                out = &mut call => break out,
                Some(attempt) = pending.recv() => {
                    sending.push(send(next.clone(), extensions.clone(), attempt));
                }
                Some(()) = sending.next(), if !sending.is_empty() => {}
            }
        };
        match out {
            Ok(res) => Ok(into_reqwest(res)),
            Err(e) => Err(into_middleware_error(e)),
        }
    }
}

/// The stack's response as a `reqwest::Response`, its URL kept.
fn into_reqwest<B>(res: Response<B>) -> reqwest::Response
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = res.into_parts();
    if let Some(FinalUrl(url)) = parts.extensions.remove::<FinalUrl>()
        && let Ok(with_url) = http::Response::builder().url(url).body(())
    {
        parts.extensions.extend(with_url.into_parts().0.extensions);
    }
    reqwest::Response::from(Response::from_parts(parts, reqwest::Body::wrap(body)))
}

/// reqwest's own errors as they are; the stack's as a [`ClientError`].
fn into_middleware_error(error: BoxError) -> reqwest_middleware::Error {
    match error.downcast::<reqwest::Error>() {
        Ok(e) => reqwest_middleware::Error::Reqwest(*e),
        Err(e) => reqwest_middleware::Error::middleware(ClientError::from_box(e)),
    }
}
