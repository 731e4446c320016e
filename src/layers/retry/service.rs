//! `Retry`: the attempt loop.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::Body;
use tower::ServiceExt;
use tower::retry::budget::{Budget as _, TpsBudget};
use tower_service::Service;

use super::policy::{MIN_ATTEMPT, Next, RetryPolicy, Safety, Stop, describe, is_connect_error};
use crate::BoxError;
use crate::body::{LayerBody, Read, read_limited, read_ready};
use crate::clock::SharedClock;
use crate::deadline::DeadlineExceeded;
use crate::events::{Events, RetryEvent};
use crate::idempotency::IDEMPOTENCY_KEY;

/// How many attempts a response took, in its extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts(pub u32);

/// On the request of a retry, in its extensions: how many times it was
/// sent before (`http.request.resend_count` of its client span).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendCount(pub u32);

/// The timed-out attempt or deadline error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTimedOut(pub Duration);

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attempt timed out after {} ms", self.0.as_millis())
    }
}

impl std::error::Error for AttemptTimedOut {}

/// What every clone of the service shares.
pub(crate) struct Shared {
    pub policy: RetryPolicy,
    pub budget: Option<Arc<TpsBudget>>,
    pub clock: SharedClock,
    pub events: Events,
    pub seed: Option<u64>,
}

/// The service made by [`RetryLayer`](super::RetryLayer).
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Retry<S>
where
    S: Service<Request<LayerBody<ReqBody>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes> + Send + Unpin + 'static,
    ReqBody::Error: fmt::Display,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<ResBody>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The readied service goes into the future; a fresh clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(run(inner, self.shared.clone(), req))
    }
}

/// Whether `body` says it holds at most `limit` bytes.
pub(crate) fn body_fits<B: Body>(body: &B, limit: usize) -> bool {
    body.is_end_stream() || body.size_hint().upper().is_some_and(|n| n <= limit as u64)
}

/// A request as it can be sent again.
enum Replay<B> {
    /// Kept whole: every attempt gets a copy.
    Kept {
        parts: http::request::Parts,
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// Sent once (not safe, or too large to keep); `None` once sent.
    Once(Option<Request<LayerBody<B>>>),
}

impl<B> Replay<B> {
    /// Reads a safe request's body whole, up to the limit.
    async fn prepare(
        req: Request<B>,
        policy: &RetryPolicy,
        safety: Safety,
    ) -> Result<Self, BoxError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: fmt::Display,
    {
        // A body of unknown size is streaming: sent at once, never held
        // back. gRPC's is kept when it is all there at once (a unary call's
        // one message): a stream whose next message is not ready yet is
        // sent at once, not replayable (it may wait for the server).
        let fits = body_fits(req.body(), policy.max_replay_body);
        let ready_only = !fits && safety == Safety::Unprocessed;
        if safety == Safety::Once || policy.max_attempts < 2 || !(fits || ready_only) {
            return Ok(Self::Once(Some(req.map(LayerBody::inner))));
        }
        let (parts, body) = req.into_parts();
        if body.is_end_stream() {
            return Ok(Self::Kept {
                parts,
                data: Bytes::new(),
                trailers: None,
            });
        }
        // Boxed: a body to read is the rarer case, and its state would
        // otherwise grow every request's future.
        let limit = policy.max_replay_body;
        let read = if ready_only {
            Box::pin(read_ready(body, limit)).await
        } else {
            Box::pin(read_limited(body, limit)).await
        };
        Ok(match read {
            Read::Whole { data, trailers } => Self::Kept {
                parts,
                data,
                trailers,
            },
            // Too large to keep, or a stream not all there: sent once,
            // whole.
            Read::Partial { prefix, rest } => Self::Once(Some(Request::from_parts(
                parts,
                LayerBody::resumed(prefix, rest),
            ))),
            Read::Failed(e) => return Err(format!("request body: {e}").into()),
        })
    }

    /// The request of attempt `attempt` (1-based).
    fn take(&mut self, attempt: u32) -> Option<Request<LayerBody<B>>> {
        match self {
            Self::Kept {
                parts,
                data,
                trailers,
            } => {
                let body = match trailers {
                    Some(t) => LayerBody::with_trailers(data.clone(), t.clone()),
                    None => LayerBody::full(data.clone()),
                };
                let mut req = Request::from_parts(parts.clone(), body);
                if attempt > 1 {
                    req.extensions_mut().insert(ResendCount(attempt - 1));
                }
                Some(req)
            }
            Self::Once(req) => req.take(),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Self::Kept { .. })
    }
}

async fn run<S, ReqBody, ResBody>(
    mut inner: S,
    shared: Arc<Shared>,
    req: Request<ReqBody>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Request<LayerBody<ReqBody>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes> + Unpin,
    ReqBody::Error: fmt::Display,
{
    let policy = &shared.policy;
    if let Some(budget) = &shared.budget {
        budget.deposit();
    }
    let started = shared.clock.now();
    // The deadline of the inbound request this call serves, if any: no
    // attempt outlives it, and no retry starts that would end after it.
    let inbound = crate::layers::deadline::inbound_deadline();
    let safety = policy.safety(&req);
    let keyed = req.headers().contains_key(IDEMPOTENCY_KEY);
    let mut replay = Replay::prepare(req, policy, safety).await?;
    // Drawn only when a retry needs a back-off.
    let mut rng = None;
    let mut previous = Duration::ZERO;
    let mut attempt = 0;
    // Sends that only asked for a keyed request's stored response: they
    // spend neither attempts nor the budget.
    let mut polls = 0;
    loop {
        attempt += 1;
        let Some(req) = replay.take(attempt) else {
            return Err("retry: no request left to send".into());
        };
        if attempt > 1 {
            // Waiting for the service (a full buffer, a concurrency limit)
            // counts against the deadline too.
            let left = time_left(policy, shared.clock.now().saturating_sub(started), inbound);
            match left {
                Some(left) => tokio::time::timeout(left.time, ServiceExt::ready(&mut inner))
                    .await
                    .map_err(|_| left.exceeded())?,
                None => ServiceExt::ready(&mut inner).await,
            }
            .map_err(Into::into)?;
        }
        let elapsed = shared.clock.now().saturating_sub(started);
        let result = send(&mut inner, req, policy, elapsed, inbound).await;
        let hint = match &result {
            Ok(res) => {
                let now = SystemTime::UNIX_EPOCH + shared.clock.now();
                let in_flight = keyed && replay.replayable() && polls < MAX_POLLS;
                if let Some(wait) = in_flight
                    .then(|| RetryPolicy::in_flight_wait(res, now))
                    .flatten()
                {
                    let elapsed = shared.clock.now().saturating_sub(started);
                    if !fits(wait, time_left(policy, elapsed, inbound).map(|l| l.time)) {
                        emit(&shared.events, RetryEvent::GaveUp, || describe(&result));
                        return finish(result, attempt);
                    }
                    emit(&shared.events, RetryEvent::InFlight, || describe(&result));
                    drop(result);
                    shared.clock.sleep(wait).await;
                    polls += 1;
                    continue;
                }
                match policy.retryable_response(res, safety, now) {
                    Some(hint) => hint,
                    None => return finish(result, attempt),
                }
            }
            // gRPC without a key: only when the call never left.
            Err(e) if safety == Safety::Unprocessed && !is_connect_error(e) => {
                return finish(result, attempt);
            }
            Err(e) if !policy.retries_error(e) => return finish(result, attempt),
            Err(e) => RetryPolicy::error_hint(e),
        };
        if !replay.replayable() {
            return finish(result, attempt);
        }
        let elapsed = shared.clock.now().saturating_sub(started);
        let rng = rng.get_or_insert_with(|| match shared.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        });
        let delay = match policy.next(attempt - polls, hint, previous, elapsed, rng) {
            Next::Retry(delay)
                if inbound.is_some_and(|d| {
                    tokio::time::Instant::now()
                        .checked_add(delay)
                        .is_none_or(|at| at >= d)
                }) =>
            {
                emit(&shared.events, RetryEvent::GaveUp, || describe(&result));
                return finish(result, attempt);
            }
            Next::Retry(delay) => delay,
            Next::Stop(stop) => {
                let event = match stop {
                    Stop::Exhausted => RetryEvent::Exhausted,
                    Stop::Deadline => RetryEvent::GaveUp,
                };
                emit(&shared.events, event, || describe(&result));
                return finish(result, attempt);
            }
        };
        if let Some(budget) = &shared.budget
            && !budget.withdraw()
        {
            emit(&shared.events, RetryEvent::BudgetExhausted, || {
                describe(&result)
            });
            return finish(result, attempt);
        }
        emit(&shared.events, RetryEvent::Retry, || describe(&result));
        drop(result);
        shared.clock.sleep(delay).await;
        previous = delay;
    }
}

/// One attempt, bounded by the per-try timeout and what is left of the
/// deadline.
async fn send<S, B, R>(
    inner: &mut S,
    req: Request<B>,
    policy: &RetryPolicy,
    elapsed: Duration,
    inbound: Option<tokio::time::Instant>,
) -> Result<Response<R>, BoxError>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Error: Into<BoxError>,
{
    let left = time_left(policy, elapsed, inbound);
    if let Some(left) = left
        && left.time.is_zero()
    {
        return Err(left.exceeded().into());
    }
    let call = inner.call(req);
    match (policy.per_try_timeout, left) {
        (Some(per_try), left) if left.is_none_or(|l| per_try <= l.time) => {
            tokio::time::timeout(per_try, call)
                .await
                .map_err(|_| AttemptTimedOut(per_try))?
        }
        (_, Some(left)) => tokio::time::timeout(left.time, call)
            .await
            .map_err(|_| left.exceeded())?,
        (_, None) => call.await,
    }
    .map_err(Into::into)
}

/// Asks for a keyed request's stored response at most this often (a
/// minute of the idempotency layer's `Retry-After: 1`, its default lock).
const MAX_POLLS: u32 = 60;

/// Whether waiting `wait` leaves time for one more send within `left`.
fn fits(wait: Duration, left: Option<Duration>) -> bool {
    left.is_none_or(|left| wait.saturating_add(MIN_ATTEMPT) < left)
}

/// The time left before the nearer deadline.
#[derive(Debug, Clone, Copy)]
struct Left {
    time: Duration,
    /// `retry` or `inbound`.
    source: &'static str,
    /// The deadline's length.
    timeout: Duration,
}

impl Left {
    /// The error when it passes.
    fn exceeded(self) -> DeadlineExceeded {
        DeadlineExceeded::client(self.timeout, self.source)
    }
}

/// What is left of the deadline after `elapsed`, or of the inbound
/// request's deadline when that is nearer, if there is a deadline.
fn time_left(
    policy: &RetryPolicy,
    elapsed: Duration,
    inbound: Option<tokio::time::Instant>,
) -> Option<Left> {
    let own = policy.deadline.map(|d| Left {
        time: d.saturating_sub(elapsed),
        source: "retry",
        timeout: d,
    });
    let inbound = inbound.map(|d| {
        let time = d.saturating_duration_since(tokio::time::Instant::now());
        Left {
            time,
            source: "inbound",
            timeout: time,
        }
    });
    match (own, inbound) {
        (Some(a), Some(b)) => Some(if b.time < a.time { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn finish<R>(
    result: Result<Response<R>, BoxError>,
    attempts: u32,
) -> Result<Response<R>, BoxError> {
    result.map(|mut res| {
        res.extensions_mut().insert(Attempts(attempts));
        res
    })
}

fn emit(events: &Events, event: RetryEvent, detail: impl FnOnce() -> String) {
    events.report(event, None, || Some(detail()));
}
