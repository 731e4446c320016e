//! `Idempotency`: claim, execute once, store, replay.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use opentelemetry::context::FutureExt as _;
use tower_service::Service;
use tracing::Instrument as _;

use super::error::Rejection;
use super::future::ResponseFuture;
use super::key;
use super::layer::Settings;
use super::record::{ClaimToken, Fingerprint, StoredResponse};
use super::scope::scoped_id;
use super::store::{Claim, Claimant, Completion, IdempotencyStore};
use crate::BoxError;
use crate::backends::Guarded;
use crate::body::{LayerBody, Read, read_limited};
use crate::concurrency_limit::Slot;
use crate::deadline::Deadline;
use crate::error::{FailurePolicy, StoreError};
use crate::events::{Event, IdempotencyEvent};
use crate::key::{KeyError, RequestHead};
use crate::reject::{Problem, Protocol};
use crate::request_id::RequestId;

/// Marks a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The service made by [`IdempotencyLayer`](super::IdempotencyLayer).
#[derive(Clone)]
pub struct Idempotency<S, St> {
    inner: S,
    store: Guarded<St>,
    settings: Arc<Settings>,
}

impl<S, St> Idempotency<S, St> {
    pub(crate) fn new(inner: S, store: Guarded<St>, settings: Arc<Settings>) -> Self {
        Self {
            inner,
            store,
            settings,
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Idempotency<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S, St>
where
    S: Service<Request<LayerBody<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ResBody::Error: fmt::Display,
{
    type Response = Response<LayerBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let settings = &self.settings;
        if !settings.methods.contains(req.method()) || !settings.covers_route(&req) {
            return ResponseFuture::passthrough(self.inner.call(req.map(LayerBody::inner)));
        }
        let protocol = Protocol::of(&req);
        let key = match key::parse(req.headers(), settings.strict_keys) {
            Ok(Some(key)) => key,
            Ok(None) if !settings.required => {
                return ResponseFuture::passthrough(self.inner.call(req.map(LayerBody::inner)));
            }
            Ok(None) => return ResponseFuture::rejected(Rejection::MissingKey.into(), protocol),
            Err(rejection) => return ResponseFuture::rejected(rejection.into(), protocol),
        };
        // No shared fallback scope: a request whose client cannot be told
        // would replay, or be replayed to, every other such request.
        let scope = match settings.scope.extract(&RequestHead::of(&req)) {
            Ok(scope) => scope,
            Err(e) => {
                self.store
                    .guard
                    .events
                    .emit(Event::named(IdempotencyEvent::ScopeUnknown).with_detail(e.to_string()));
                if e == KeyError::MissingPeer {
                    crate::key::warn_missing_peer_once();
                }
                return ResponseFuture::rejected(Rejection::ScopeUnknown(e).into(), protocol);
            }
        };
        let run = Run {
            id: scoped_id(scope.as_str(), &key),
            store: self.store.clone(),
            settings: settings.clone(),
            protocol,
        };
        // The readied service goes into the future; a fresh clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::running(Box::pin(run.execute(inner, req)))
    }
}

/// One covered request with a key.
#[derive(Clone)]
struct Run<St> {
    id: String,
    store: Guarded<St>,
    settings: Arc<Settings>,
    protocol: Protocol,
}

/// What the inner service made of a won claim.
enum Handled<B> {
    /// A response that turned the request away before it ran (its status
    /// is one of the layer's release statuses): the key is free again.
    Released(Response<B>),
    /// Still running at the execution bound: cancelled, the key free again.
    Abandoned,
    /// The response head, and its body as read for keeping.
    Answered(http::response::Parts, Read<B>),
}

/// Attempts at storing a response when the store fails transiently (the
/// claim token makes a repeated write safe).
const COMPLETE_ATTEMPTS: u32 = 3;

impl<St: IdempotencyStore> Run<St> {
    async fn execute<S, ReqBody, ResBody>(
        self,
        mut inner: S,
        req: Request<ReqBody>,
    ) -> Result<Response<LayerBody<ResBody>>, S::Error>
    where
        S: Service<Request<LayerBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send,
        S::Error: Send + 'static,
        ReqBody: Body<Data = Bytes> + Send + 'static,
        ReqBody::Error: Into<BoxError>,
        ResBody: Body<Data = Bytes> + Send + Unpin + 'static,
        ResBody::Error: fmt::Display,
    {
        let (parts, body) = req.into_parts();
        let bytes = match read_request(body, self.settings.max_request_body).await {
            Ok(bytes) => bytes,
            Err(rejection) => return Ok(self.reject(rejection)),
        };
        let fingerprint = self.settings.fingerprint.fingerprint(&parts, &bytes);
        let token = ClaimToken::random();
        let (lock, id) = (self.settings.lock, self.id.as_str());
        let claim = match self
            .store
            .claim(id, Claimant::new(token, &fingerprint, lock))
            .await
        {
            Ok(claim) => claim,
            Err(_) if self.store.guard.failure == FailurePolicy::FailOpen => {
                let res = inner
                    .call(Request::from_parts(parts, LayerBody::full(bytes)))
                    .await?;
                return Ok(res.map(LayerBody::inner));
            }
            Err(_) => return Ok(self.reject(Rejection::StoreDown)),
        };
        match claim {
            Claim::Won => {}
            Claim::InFlight { fingerprint: f } | Claim::Completed { fingerprint: f, .. }
                if f != fingerprint =>
            {
                self.emit(IdempotencyEvent::Mismatch);
                return Ok(self.reject(Rejection::Mismatch));
            }
            Claim::InFlight { .. } => {
                self.emit(IdempotencyEvent::Conflict);
                return Ok(self.reject(Rejection::InFlight));
            }
            Claim::Completed { response, .. } => {
                self.emit(IdempotencyEvent::Replayed);
                return Ok(replay(response));
            }
        }
        self.emit(IdempotencyEvent::Executed);
        // From here the request runs to the end and its outcome is stored
        // even if the client goes away or a deadline answers first: a
        // retry must find the result, not run the request again. The task
        // carries what the handler would have had without it: the
        // request's span, OpenTelemetry context, request id and deadline.
        // It holds the request's concurrency-limit slot until it ends, so
        // the limit still bounds what runs.
        let slot = parts.extensions.get::<Slot>().cloned();
        let req = Request::from_parts(parts, LayerBody::full(bytes));
        let protocol = self.protocol;
        let claimed = self.run_claimed(inner, req, token, fingerprint);
        let running = crate::events::claim_running();
        let mut task: BoxFuture<'static, _> = Box::pin(
            async move {
                let _slot = slot;
                let _running = running;
                claimed.await
            }
            .with_context(opentelemetry::Context::current())
            .in_current_span(),
        );
        if let Some(deadline) = Deadline::current() {
            task = Box::pin(deadline.scope(task));
        }
        if let Some(id) = RequestId::current() {
            task = Box::pin(id.scope(task));
        }
        match tokio::spawn(task).await {
            Ok(result) => result,
            Err(e) => {
                // The panic's message stays in the log: it may say more
                // than a client should read.
                tracing::error!(error = %e, "idempotent request handler did not finish");
                let problem =
                    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                        .detail("the request handler did not finish");
                Ok(problem.into_response(protocol))
            }
        }
    }

    /// Runs a won claim within the execution bound, then stores the
    /// response (or a marker saying it was not kept) before handing it
    /// back. A handler still running at the bound is cancelled and its
    /// key released.
    async fn run_claimed<S, ReqBody, ResBody>(
        self,
        inner: S,
        req: Request<LayerBody<ReqBody>>,
        token: ClaimToken,
        fingerprint: Fingerprint,
    ) -> Result<Response<LayerBody<ResBody>>, S::Error>
    where
        S: Service<Request<LayerBody<ReqBody>>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: fmt::Display,
    {
        // A handler slower than the lock keeps its claim until the outcome
        // is stored: a duplicate must not run beside it.
        let (id, lock) = (self.id.clone(), self.settings.lock);
        let _renewal = renew_while_running(self.store.clone(), id, lock, token);
        let (parts, read) = match self.handle(inner, req, token).await? {
            Handled::Released(res) => return Ok(res.map(LayerBody::inner)),
            Handled::Abandoned => {
                let bound = self.settings.max_execution;
                let problem =
                    Problem::new(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout").detail(format!(
                        "the request handler did not finish within {} s and was cancelled",
                        bound.as_secs_f64()
                    ));
                return Ok(problem.into_response(self.protocol));
            }
            Handled::Answered(parts, read) => (parts, read),
        };
        match read {
            Read::Whole { data, trailers } => {
                let stored = StoredResponse {
                    status: parts.status,
                    headers: end_to_end(&parts.headers),
                    body: data.clone(),
                    trailers: trailers.clone(),
                };
                self.complete(token, &fingerprint, &stored).await;
                let body = match trailers {
                    Some(trailers) => LayerBody::with_trailers(data, trailers),
                    None => LayerBody::full(data),
                };
                Ok(Response::from_parts(parts, body))
            }
            Read::Partial { prefix, rest } => {
                self.emit(IdempotencyEvent::NotKept);
                tracing::warn!(
                    limit = self.settings.max_response_body,
                    "idempotent response not kept (over the limit, or an event stream); \
                     duplicates get 410"
                );
                let marker = self.not_kept();
                self.complete(token, &fingerprint, &marker).await;
                Ok(Response::from_parts(
                    parts,
                    LayerBody::resumed(prefix, rest),
                ))
            }
            Read::Failed(error) => {
                self.emit(IdempotencyEvent::NotKept);
                let marker = self.not_kept();
                self.complete(token, &fingerprint, &marker).await;
                let problem = Problem::new(StatusCode::BAD_GATEWAY, "Bad Gateway")
                    .detail(format!("the response body failed: {error}"));
                Ok(problem.into_response(self.protocol))
            }
        }
    }

    /// Calls the inner service for a won claim and reads its response,
    /// both within the execution bound. A call that fails, panics (in
    /// `call` itself or in its future) or is still running at the bound,
    /// or a response that says the request was turned away before it
    /// ran, releases the key: a retry may run it. A body still coming at
    /// the bound is not kept (the handler answered: it must not run again).
    async fn handle<S, ReqBody, ResBody>(
        &self,
        mut inner: S,
        req: Request<LayerBody<ReqBody>>,
        token: ClaimToken,
    ) -> Result<Handled<ResBody>, S::Error>
    where
        S: Service<Request<LayerBody<ReqBody>>, Response = Response<ResBody>>,
        ResBody: Body<Data = Bytes> + Unpin,
        ResBody::Error: fmt::Display,
    {
        let bound = self.settings.max_execution;
        let until = tokio::time::Instant::now() + bound;
        let called = std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(req)));
        let outcome = match called {
            Ok(future) => {
                let answered =
                    tokio::time::timeout_at(until, AssertUnwindSafe(future).catch_unwind());
                match answered.await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        self.release(token).await;
                        self.emit(IdempotencyEvent::Abandoned);
                        tracing::warn!(
                            max_execution = ?bound,
                            "idempotent request handler cancelled at its execution bound; \
                             its key is released"
                        );
                        return Ok(Handled::Abandoned);
                    }
                }
            }
            Err(panic) => Err(panic),
        };
        let res = match outcome {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                // Nothing answered: the request may run again.
                self.release(token).await;
                return Err(e);
            }
            Err(panic) => {
                // Nor did a handler that panicked.
                self.release(token).await;
                std::panic::resume_unwind(panic);
            }
        };
        if self.settings.release_statuses.contains(&res.status()) {
            self.release(token).await;
            self.emit(IdempotencyEvent::Released);
            return Ok(Handled::Released(res));
        }
        let (parts, body) = res.into_parts();
        // An event stream may never end, and its client waits for each
        // event: it goes through at once and is not kept.
        let read = if is_event_stream(&parts.headers) {
            Read::Partial {
                prefix: Bytes::new(),
                rest: body,
            }
        } else {
            let limit = self.settings.max_response_body;
            tokio::time::timeout_at(until, read_limited(body, limit))
                .await
                .unwrap_or_else(|_| {
                    Read::Failed(format!(
                        "the body did not end within the execution bound ({} s)",
                        bound.as_secs_f64()
                    ))
                })
        };
        Ok(Handled::Answered(parts, read))
    }

    /// What duplicates of a request whose response was not kept get: 410.
    fn not_kept(&self) -> StoredResponse {
        let problem = Problem::from(Rejection::NotKept);
        let json = serde_json::to_vec(&problem.to_json()).unwrap_or_default();
        let res = problem.into_response::<http_body_util::Empty<Bytes>>(self.protocol);
        let body = match self.protocol {
            Protocol::Http => Bytes::from(json),
            _ => Bytes::new(),
        };
        StoredResponse {
            status: res.status(),
            headers: res.headers().clone(),
            body,
            trailers: None,
        }
    }

    fn reject<B>(&self, rejection: Rejection) -> Response<LayerBody<B>> {
        Problem::from(rejection).into_response(self.protocol)
    }

    fn emit(&self, event: IdempotencyEvent) {
        self.store.guard.events.emit(Event::named(event));
    }

    /// Stores `stored` as the claim's outcome. A store that refuses it for
    /// good (etcd's request size limit) gets the small "not kept" marker
    /// instead: duplicates then get 410 rather than run the request again
    /// once the lock expires.
    async fn complete(
        &self,
        token: ClaimToken,
        fingerprint: &Fingerprint,
        stored: &StoredResponse,
    ) {
        if let Err(e) = self.store_outcome(token, fingerprint, stored).await
            && !e.is_transient()
        {
            self.emit(IdempotencyEvent::NotKept);
            let marker = self.not_kept();
            // A failure is reported by the store's guard.
            let _ = self.store_outcome(token, fingerprint, &marker).await;
        }
    }

    /// One outcome, tried again on transient failures; `Ok` also when the
    /// lock was lost (logged).
    async fn store_outcome(
        &self,
        token: ClaimToken,
        fingerprint: &Fingerprint,
        stored: &StoredResponse,
    ) -> Result<(), StoreError> {
        let done = Completion::new(token, fingerprint, stored, self.settings.retention);
        for attempt in 1..=COMPLETE_ATTEMPTS {
            match self.store.complete(&self.id, done).await {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    self.emit(IdempotencyEvent::LockLost);
                    tracing::warn!(
                        lock = ?self.settings.lock,
                        "idempotency lock expired before the response was stored; raise the lock"
                    );
                    return Ok(());
                }
                Err(e) if e.is_transient() && attempt < COMPLETE_ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Frees the claim; a failure is reported by the store's guard.
    async fn release(&self, token: ClaimToken) {
        let _ = self.store.release(&self.id, token).await;
    }
}

/// Renews the claim `token` every third of the lock, in the background,
/// until the returned guard is dropped or the claim is lost.
fn renew_while_running<S: IdempotencyStore>(
    store: S,
    id: String,
    lock: std::time::Duration,
    token: ClaimToken,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut every = tokio::time::interval(lock / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            // A failed renewal is tried again at the next tick.
            if let Ok(false) = store.renew(&id, token, lock).await {
                return;
            }
        }
    }))
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The whole request body, or 413 / 400.
async fn read_request<B>(body: B, limit: usize) -> Result<Bytes, Rejection>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(Rejection::TooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Rejection::TooLarge(limit)),
        Err(e) => Err(Rejection::BadBody(e.to_string())),
    }
}

/// `headers` without the hop-by-hop ones (RFC 9110 §7.6.1), which belong
/// to one connection, not to the response.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    const HOP_BY_HOP: [&str; 6] = [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    let mut kept = headers.clone();
    // Headers named in `Connection` are hop-by-hop too.
    for listed in headers.get_all(header::CONNECTION) {
        for name in listed.to_str().unwrap_or_default().split(',') {
            kept.remove(name.trim());
        }
    }
    kept.remove(header::CONNECTION);
    for name in HOP_BY_HOP {
        kept.remove(name);
    }
    kept
}

/// The stored response, marked as a replay.
fn replay<B>(stored: StoredResponse) -> Response<LayerBody<B>> {
    let body = match stored.trailers {
        Some(trailers) => LayerBody::with_trailers(stored.body, trailers),
        None => LayerBody::full(stored.body),
    };
    let mut res = Response::new(body);
    *res.status_mut() = stored.status;
    *res.headers_mut() = stored.headers;
    res.headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    res
}

/// Whether the response is a server-sent event stream.
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"))
}
