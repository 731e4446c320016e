//! `RetryPolicy`: how many attempts, how long between them, and which
//! outcomes are worth another try.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::backoff::Backoff;
use super::hint::{Hint, hint};
use crate::BoxError;
use crate::circuit_breaker::CircuitOpen;
use crate::error::ConfigError;
use crate::idempotency::IDEMPOTENCY_KEY;
use crate::rate_limit::RateLimited;
use crate::reject::GrpcCode;
use crate::trace::semconv::is_grpc;

/// The retry budget: retries may add at most `percent` of the
/// requests of the last `window`, plus `min_per_sec` retries per second
/// (tower's `TpsBudget`), so a struggling upstream is not hit harder.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Budget {
    /// Retries allowed as a percentage of requests.
    pub percent: f32,
    /// Retries allowed per second regardless of traffic.
    pub min_per_sec: u32,
    /// How far back requests count.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub window: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            percent: 20.0,
            min_per_sec: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// How a client retries. Defaults: 3 attempts in all, exponential back-off
/// with full jitter from 100 ms capped at 10 s, no per-try timeout, a 30 s
/// deadline over all attempts and waits, retries on 429/502/503/504 and
/// gRPC `UNAVAILABLE`, request bodies up to 64 KiB replayed, and a budget
/// of 20 % + 10/s.
///
/// ```
/// use std::time::Duration;
/// use battlement::retry::{Backoff, RetryPolicy};
///
/// let policy = RetryPolicy::default()
///     .max_attempts(4)
///     .backoff(Backoff::Decorrelated { base: Duration::from_millis(50), max: Duration::from_secs(2) })
///     .per_try_timeout(Duration::from_secs(1))
///     .deadline(Duration::from_secs(5));
/// assert!(policy.validate().is_ok());
///
/// let json = r#"{"max_attempts": 4, "backoff": {"exponential": {"base": "50ms", "max": "2s"}},
///                "statuses": [503], "budget": null}"#;
/// let parsed: RetryPolicy = serde_json::from_str(json).unwrap();
/// assert!(parsed.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub(crate) max_attempts: u32,
    /// The wait between attempts (default exponential from 100 ms,
    /// capped at 10 s).
    pub(crate) backoff: Backoff,
    /// Bounds each attempt (null: no bound).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub(crate) per_try_timeout: Option<Duration>,
    /// Bounds all attempts and waits (null: no bound).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub(crate) deadline: Option<Duration>,
    /// HTTP statuses retried.
    pub(crate) statuses: Vec<u16>,
    /// gRPC codes retried (14 is `UNAVAILABLE`).
    pub(crate) grpc_codes: Vec<i32>,
    /// Request bodies up to this many bytes are replayed.
    pub(crate) max_replay_body: usize,
    /// The retry budget (default 20 % + 10/s; null: none).
    pub(crate) budget: Option<Budget>,
    /// Retries requests that are neither idempotent nor keyed (POST,
    /// PATCH without an `Idempotency-Key`): a request whose response was
    /// lost may then run twice. Off by default.
    pub(crate) retry_non_idempotent: bool,
    /// Which outcomes are worth another try, instead of `statuses` and
    /// `grpc_codes` (set in code only).
    #[serde(skip)]
    #[schemars(skip)]
    pub(crate) retry_if: Option<RetryIf>,
}

/// An attempt's outcome as a [`RetryPolicy::retry_if`] predicate sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum AttemptOutcome<'a> {
    /// A response came back.
    Response {
        /// Its status.
        status: StatusCode,
        /// Its headers.
        headers: &'a HeaderMap,
        /// Its gRPC status code, when it is a trailers-only gRPC response.
        grpc_code: Option<i32>,
    },
    /// The attempt failed: a transport error, a timeout, or a layer below
    /// the retry refusing it (an open breaker, a spent client quota).
    Error(&'a (dyn std::error::Error + Send + Sync + 'static)),
}

/// A `retry_if` predicate.
#[derive(Clone)]
pub(crate) struct RetryIf(Arc<dyn Fn(AttemptOutcome<'_>) -> bool + Send + Sync>);

impl fmt::Debug for RetryIf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryIf(..)")
    }
}

impl PartialEq for RetryIf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            per_try_timeout: None,
            deadline: Some(Duration::from_secs(30)),
            statuses: vec![429, 502, 503, 504],
            grpc_codes: vec![14],
            max_replay_body: 64 * 1024,
            budget: Some(Budget::default()),
            retry_non_idempotent: false,
            retry_if: None,
        }
    }
}

/// How freely a request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Safety {
    /// Idempotent method or `Idempotency-Key`: any retryable outcome.
    Any,
    /// gRPC without a key: only the configured gRPC codes (which mean the
    /// server did not process the call) and connection failures (the
    /// request never left).
    Unprocessed,
    /// Never sent twice.
    Once,
}

/// Whether `method` is idempotent (RFC 9110 §9.2.2): sending it twice
/// does what sending it once does.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl Safety {
    pub(crate) fn of<B>(req: &Request<B>) -> Self {
        if is_idempotent(req.method()) || req.headers().contains_key(IDEMPOTENCY_KEY) {
            Self::Any
        } else if is_grpc(req.headers()) {
            Self::Unprocessed
        } else {
            Self::Once
        }
    }
}

/// Whether `error` says the connection was never made (the request did
/// not leave): a refused, unreachable or unresolvable peer.
pub(crate) fn is_connect_error(error: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// The longest server hint followed when there is no deadline.
const MAX_HINT: Duration = Duration::from_secs(300);

/// The least time worth starting another attempt with.
pub(crate) const MIN_ATTEMPT: Duration = Duration::from_millis(10);

/// The least wait between two asks for a keyed request's stored response
/// (a `Retry-After: 0` must not become a busy loop).
const MIN_IN_FLIGHT_WAIT: Duration = Duration::from_millis(100);

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Return this outcome.
    Stop(Stop),
    /// Try again after this long.
    Retry(Duration),
}

/// Why retrying stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// All attempts used.
    Exhausted,
    /// The server's hint or the back-off passes the deadline, or the
    /// server said not to retry.
    Deadline,
}

impl RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The back-off between attempts.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Bounds each attempt; a timed-out attempt is retried.
    pub fn per_try_timeout(mut self, timeout: Duration) -> Self {
        self.per_try_timeout = Some(timeout);
        self
    }

    /// Bounds all attempts and waits together.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// No overall deadline (attempts and back-off caps still bound it).
    pub fn no_deadline(mut self) -> Self {
        self.deadline = None;
        self
    }

    /// HTTP statuses worth a retry (default 429, 502, 503, 504).
    pub fn statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.statuses = statuses.into_iter().collect();
        self
    }

    /// gRPC status codes worth a retry (default 14, `UNAVAILABLE`).
    pub fn grpc_codes(mut self, codes: impl IntoIterator<Item = i32>) -> Self {
        self.grpc_codes = codes.into_iter().collect();
        self
    }

    /// Request bodies up to this many bytes are kept for replay; larger
    /// ones are sent once, whole, and never retried.
    pub fn max_replay_body(mut self, bytes: usize) -> Self {
        self.max_replay_body = bytes;
        self
    }

    /// The retry budget; `None` turns it off.
    pub fn budget(mut self, budget: Option<Budget>) -> Self {
        self.budget = budget;
        self
    }

    /// Decides which outcomes are worth another try, in place of
    /// [`statuses`](Self::statuses) and [`grpc_codes`](Self::grpc_codes)
    /// (by default every error is). Which requests may be sent again
    /// does not change: idempotent methods, keyed requests, and gRPC
    /// calls on a response with a gRPC code or a connection failure.
    /// `Retry-After` and the other hints still set the wait.
    ///
    /// ```
    /// use battlement::retry::{AttemptOutcome, RetryPolicy};
    ///
    /// // Retry 500 too, and no error except a connection failure.
    /// let policy = RetryPolicy::default().retry_if(|outcome| match outcome {
    ///     AttemptOutcome::Response { status, .. } => {
    ///         matches!(status.as_u16(), 500 | 502 | 503 | 504)
    ///     }
    ///     AttemptOutcome::Error(e) => e.to_string().contains("connect"),
    ///     _ => false,
    /// });
    /// # let _ = policy;
    /// ```
    ///
    /// With a `TowerPolicy`, tower's retry hands over errors of any type,
    /// so the predicate sees responses only there.
    pub fn retry_if<F>(mut self, predicate: F) -> Self
    where
        F: Fn(AttemptOutcome<'_>) -> bool + Send + Sync + 'static,
    {
        self.retry_if = Some(RetryIf(Arc::new(predicate)));
        self
    }

    /// Retries requests that are neither idempotent nor keyed: a POST or
    /// PATCH without an `Idempotency-Key` (off by default).
    ///
    /// Dangerous: a retry follows a lost response as well as a lost
    /// request, and a lost response (a reset connection, a timeout, a
    /// proxy's 502 or 504) often means the server *did* run the request.
    /// Retrying it runs it again: a second order, a second payment. Turn
    /// this on only for endpoints that are safe to repeat although their
    /// method does not say so. For the others, give the request an
    /// `Idempotency-Key` instead
    /// ([`ClientStack::idempotency_keys`](crate::client::ClientStack::idempotency_keys)
    /// adds one to each): a server that honours it (battlement's
    /// [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer)) runs it
    /// once and replays its response to the retries.
    pub fn retry_non_idempotent(mut self, allow: bool) -> Self {
        self.retry_non_idempotent = allow;
        self
    }

    /// How freely this policy sends `req` again.
    pub(crate) fn safety<B>(&self, req: &Request<B>) -> Safety {
        match Safety::of(req) {
            _ if self.retry_non_idempotent => Safety::Any,
            safety => safety,
        }
    }

    /// Whether the predicate, if any, retries `error`.
    pub(crate) fn retries_error(&self, error: &BoxError) -> bool {
        self.retry_if
            .as_ref()
            .is_none_or(|f| (f.0)(AttemptOutcome::Error(error.as_ref())))
    }

    /// Checks every value; the layer constructor calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(ConfigError::new("max_attempts must be at least 1"));
        }
        self.backoff.validate().map_err(ConfigError::new)?;
        if self.per_try_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new("per_try_timeout must be longer than zero"));
        }
        if self.deadline.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::new("deadline must be longer than zero"));
        }
        if let Some(b) = self.budget
            && !(b.percent >= 0.0
                && b.percent <= 1000.0
                && b.window >= Duration::from_secs(1)
                && b.window <= Duration::from_secs(60)
                && b.min_per_sec < 1_000_000)
        {
            return Err(ConfigError::new(
                "budget needs a percent in [0, 1000], a window of 1 s to 60 s and \
                 min_per_sec below 1,000,000",
            ));
        }
        Ok(())
    }

    /// Whether `req` may be sent more than once: an idempotent
    /// method, an `Idempotency-Key`, or gRPC (retried only on its
    /// configured codes and on connection failures). A policy with
    /// [`retry_non_idempotent`](Self::retry_non_idempotent) sends any
    /// request again.
    pub fn is_safe<B>(req: &Request<B>) -> bool {
        Safety::of(req) != Safety::Once
    }

    /// The server's hint if `res` is worth a retry, `None` if it is final;
    /// `now` is the wall-clock time for `Retry-After` dates.
    pub(crate) fn retryable_response<B>(
        &self,
        res: &Response<B>,
        safety: Safety,
        now: SystemTime,
    ) -> Option<Option<Hint>> {
        let headers = res.headers();
        let code = GrpcCode::from_headers(headers);
        let retry = match (&self.retry_if, code, safety) {
            (Some(f), _, _) if code.is_some() || safety == Safety::Any => {
                (f.0)(AttemptOutcome::Response {
                    status: res.status(),
                    headers,
                    grpc_code: code.map(GrpcCode::as_i32),
                })
            }
            (Some(_), _, _) => false,
            (None, Some(code), _) => self.grpc_codes.contains(&code.as_i32()),
            (None, None, Safety::Any) => self.statuses.contains(&res.status().as_u16()),
            (None, None, _) => false,
        };
        retry.then(|| hint(headers, now))
    }

    /// How long to wait before asking again when the server says that a
    /// keyed request is in flight under its key: 409 (gRPC `ABORTED`)
    /// with a `Retry-After`, as an idempotency layer answers while the
    /// key's first request runs. That request may be this call's own
    /// earlier attempt (timed out here, still running there): asking
    /// again after the hint gets its stored response, where giving up
    /// would report a conflict for a request that succeeded. At least
    /// 100 ms; a hint over 5 minutes makes the 409 final.
    pub(crate) fn in_flight_wait<B>(res: &Response<B>, now: SystemTime) -> Option<Duration> {
        let headers = res.headers();
        let conflict = match GrpcCode::from_headers(headers) {
            Some(code) => code == GrpcCode::Aborted,
            None => res.status() == http::StatusCode::CONFLICT,
        };
        match hint(headers, now) {
            Some(Hint::After(wait)) if conflict && wait <= MAX_HINT => {
                Some(wait.max(MIN_IN_FLIGHT_WAIT))
            }
            _ => None,
        }
    }

    /// The hint carried by an error: a client-side breaker or rate limiter
    /// says when to come back (`Never` when it never will). Every other
    /// error (connect, reset, timeout) is retryable at once.
    pub(crate) fn error_hint(error: &BoxError) -> Option<Hint> {
        if let Some(open) = error.downcast_ref::<CircuitOpen>() {
            return Some(open.retry_after().map_or(Hint::Never, Hint::After));
        }
        if let Some(limited) = error.downcast_ref::<RateLimited>() {
            return Some(limited.retry_after().map_or(Hint::Never, Hint::After));
        }
        None
    }

    /// After attempt `attempt` (1-based) with this outcome's hint, `elapsed`
    /// into the deadline: stop, or retry after how long.
    pub(crate) fn next(
        &self,
        attempt: u32,
        hint: Option<Hint>,
        previous: Duration,
        elapsed: Duration,
        rng: &mut fastrand::Rng,
    ) -> Next {
        if attempt >= self.max_attempts {
            return Next::Stop(Stop::Exhausted);
        }
        let delay = match hint {
            Some(Hint::Never) => return Next::Stop(Stop::Deadline),
            Some(Hint::After(d)) if self.deadline.is_none() && d > MAX_HINT => {
                return Next::Stop(Stop::Deadline);
            }
            Some(Hint::After(d)) => d,
            None => self.backoff.delay(attempt, previous, rng),
        };
        // Give up when the wait leaves no useful time for the attempt.
        if let Some(deadline) = self.deadline
            && elapsed.saturating_add(delay).saturating_add(MIN_ATTEMPT) >= deadline
        {
            return Next::Stop(Stop::Deadline);
        }
        Next::Retry(delay)
    }
}

/// The status (or gRPC status, or error) of an outcome, for events.
pub(crate) fn describe<B>(result: &Result<Response<B>, BoxError>) -> String {
    match result {
        Ok(res) => match GrpcCode::from_headers(res.headers()) {
            Some(code) => format!("grpc-status {}", code.as_i32()),
            None => res.status().as_u16().to_string(),
        },
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
            .max_attempts(4)
            .backoff(Backoff::Exponential {
                base: 100 * MS,
                max: 400 * MS,
            })
            .deadline(Duration::from_secs(2))
    }

    #[test]
    fn attempts_hints_and_the_deadline_decide() {
        let p = policy();
        let mut rng = fastrand::Rng::with_seed(1);
        let z = Duration::ZERO;
        assert!(matches!(p.next(1, None, z, z, &mut rng), Next::Retry(d) if d <= 100 * MS));
        assert_eq!(p.next(4, None, z, z, &mut rng), Next::Stop(Stop::Exhausted));
        let hinted = Some(Hint::After(Duration::from_secs(1)));
        assert_eq!(
            p.next(1, hinted, z, z, &mut rng),
            Next::Retry(Duration::from_secs(1))
        );
        // A hint past the deadline gives up at once.
        assert_eq!(
            p.next(1, hinted, z, 1500 * MS, &mut rng),
            Next::Stop(Stop::Deadline)
        );
        assert_eq!(
            p.next(1, Some(Hint::Never), z, z, &mut rng),
            Next::Stop(Stop::Deadline)
        );
    }

    #[test]
    fn safe_requests() {
        let req = |m: Method| Request::builder().method(m).body(()).unwrap();
        assert!(RetryPolicy::is_safe(&req(Method::GET)));
        assert!(RetryPolicy::is_safe(&req(Method::PUT)));
        assert!(!RetryPolicy::is_safe(&req(Method::POST)));
        let keyed = Request::post("/")
            .header("idempotency-key", "\"k\"")
            .body(())
            .unwrap();
        assert!(RetryPolicy::is_safe(&keyed));
        let grpc = Request::post("/a.B/C")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        assert!(RetryPolicy::is_safe(&grpc));
    }

    #[test]
    fn grpc_without_a_key_retries_only_unprocessed_calls() {
        let grpc = Request::post("/a.B/C")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        assert_eq!(Safety::of(&grpc), Safety::Unprocessed);
        let p = RetryPolicy::default();
        let now = SystemTime::now();
        let res = |status: u16, grpc: Option<&str>| {
            let mut b = Response::builder().status(status);
            if let Some(code) = grpc {
                b = b.header("grpc-status", code);
            }
            b.body(()).unwrap()
        };
        assert!(
            p.retryable_response(&res(200, Some("14")), Safety::Unprocessed, now)
                .is_some()
        );
        assert!(
            p.retryable_response(&res(200, Some("13")), Safety::Unprocessed, now)
                .is_none()
        );
        // A proxy's 503 may come after the call was processed.
        assert!(
            p.retryable_response(&res(503, None), Safety::Unprocessed, now)
                .is_none()
        );
        assert!(
            p.retryable_response(&res(503, None), Safety::Any, now)
                .is_some()
        );
        let refused: BoxError =
            Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let reset: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(is_connect_error(&refused));
        assert!(!is_connect_error(&reset));
    }

    #[test]
    fn hints_without_a_deadline_are_capped() {
        let p = RetryPolicy::default().no_deadline();
        let mut rng = fastrand::Rng::with_seed(1);
        let z = Duration::ZERO;
        let year = Some(Hint::After(Duration::from_secs(365 * 24 * 3600)));
        assert_eq!(p.next(1, year, z, z, &mut rng), Next::Stop(Stop::Deadline));
        let short = Some(Hint::After(Duration::from_secs(2)));
        assert_eq!(
            p.next(1, short, z, z, &mut rng),
            Next::Retry(Duration::from_secs(2))
        );
    }

    #[test]
    fn bad_policies_are_rejected() {
        assert!(RetryPolicy::default().max_attempts(0).validate().is_err());
        let zero = Backoff::Exponential {
            base: Duration::ZERO,
            max: MS,
        };
        assert!(RetryPolicy::default().backoff(zero).validate().is_err());
        assert!(
            RetryPolicy::default()
                .deadline(Duration::ZERO)
                .validate()
                .is_err()
        );
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"max_attempt": 3}"#).is_err());
        let short = Budget {
            window: Duration::from_millis(500),
            ..Budget::default()
        };
        assert!(
            RetryPolicy::default()
                .budget(Some(short))
                .validate()
                .is_err()
        );
    }
}
