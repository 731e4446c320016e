//! [`RetryPolicy`] as a `tower::retry::Policy`, for stacks that already
//! use `tower::retry::Retry` with clonable requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use tokio::time::Instant;
use tower::retry::budget::{Budget as _, TpsBudget};

use super::policy::{Next, RetryPolicy, Safety};
use crate::error::ConfigError;

/// A [`RetryPolicy`] for `tower::retry::RetryLayer`: the same attempts,
/// back-off, hints, statuses, safety rule, budget and deadline (no retry
/// starts that the deadline leaves no time for). tower's retry does not
/// bound an attempt in time, so the per-try timeout does not apply: put a
/// `tower::timeout::TimeoutLayer` under the retry for that. One value per
/// request: clones share the budget but count attempts and time apart.
///
/// tower's retry hands over errors of any type, which cannot show that a
/// request never left, so a gRPC call without an `Idempotency-Key` is not
/// retried on an error (only on the configured gRPC codes); the
/// [`RetryLayer`](super::RetryLayer) retries it on connection failures.
///
/// ```
/// use battlement::retry::{RetryPolicy, TowerPolicy};
/// use tower::retry::RetryLayer;
///
/// let layer = RetryLayer::new(TowerPolicy::new(RetryPolicy::default())?);
/// # let _ = layer;
/// # Ok::<(), battlement::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TowerPolicy {
    policy: Arc<RetryPolicy>,
    budget: Option<Arc<TpsBudget>>,
    attempt: u32,
    previous: Duration,
    /// When the request's first attempt was prepared.
    started: Option<Instant>,
}

impl TowerPolicy {
    /// Wraps `policy`, once it is valid (see [`RetryPolicy::validate`]).
    pub fn new(policy: RetryPolicy) -> Result<Self, ConfigError> {
        policy.validate()?;
        let budget = policy
            .budget
            .map(|b| Arc::new(TpsBudget::new(b.window, b.min_per_sec, b.percent / 100.0)));
        Ok(Self {
            policy: Arc::new(policy),
            budget,
            attempt: 1,
            previous: Duration::ZERO,
            started: None,
        })
    }
}

impl<B: Clone, R, E> tower::retry::Policy<Request<B>, Response<R>, E> for TowerPolicy {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        req: &mut Request<B>,
        result: &mut Result<Response<R>, E>,
    ) -> Option<Self::Future> {
        let safety = self.policy.safety(req);
        let hint = match result {
            Ok(res) => self
                .policy
                .retryable_response(res, safety, SystemTime::now())?,
            Err(_) if safety == Safety::Unprocessed => return None,
            Err(_) => None,
        };
        let mut rng = fastrand::Rng::new();
        let elapsed = self.started.map_or(Duration::ZERO, |t| t.elapsed());
        let Next::Retry(delay) =
            self.policy
                .next(self.attempt, hint, self.previous, elapsed, &mut rng)
        else {
            return None;
        };
        if let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            return None;
        }
        self.attempt += 1;
        self.previous = delay;
        Some(Box::pin(tokio::time::sleep(delay)))
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        if self.attempt == 1 && self.started.is_none() {
            self.started = Some(Instant::now());
            if let Some(budget) = &self.budget {
                budget.deposit();
            }
        }
        (self.policy.safety(req) != Safety::Once).then(|| req.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use http::StatusCode;
    use tower::{ServiceBuilder, ServiceExt, service_fn};

    use super::*;
    use crate::retry::Backoff;

    #[tokio::test(start_paused = true)]
    async fn plugs_into_tower_retry() {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let svc = ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(
                TowerPolicy::new(RetryPolicy::default().backoff(Backoff::Exponential {
                    base: Duration::from_millis(10),
                    max: Duration::from_millis(10),
                }))
                .unwrap(),
            ))
            .service(service_fn(move |_: Request<String>| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move {
                    let mut res = Response::new(());
                    if n < 2 {
                        *res.status_mut() = StatusCode::BAD_GATEWAY;
                    }
                    Ok::<_, Infallible>(res)
                }
            }));
        let res = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(
            (res.status(), calls.load(Ordering::SeqCst)),
            (StatusCode::OK, 3)
        );
        // POST without a key: sent once.
        calls.store(0, Ordering::SeqCst);
        let post = Request::post("/").body(String::new()).unwrap();
        let res = svc.oneshot(post).await.unwrap();
        assert_eq!(
            (res.status(), calls.load(Ordering::SeqCst)),
            (StatusCode::BAD_GATEWAY, 1)
        );
    }

    #[test]
    fn an_invalid_policy_is_an_error_not_a_panic() {
        let policy = RetryPolicy::default().budget(Some(crate::retry::Budget {
            window: Duration::from_millis(500),
            ..crate::retry::Budget::default()
        }));
        let err = TowerPolicy::new(policy).unwrap_err().to_string();
        assert!(err.contains("window"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_call_without_a_key_is_not_retried_on_an_error() {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let svc = ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(
                TowerPolicy::new(RetryPolicy::default()).unwrap(),
            ))
            .service(service_fn(move |_: Request<String>| {
                seen.fetch_add(1, Ordering::SeqCst);
                async { Err::<Response<()>, _>("connection reset") }
            }));
        let call = Request::post("/pkg.Svc/Create")
            .header("content-type", "application/grpc")
            .body(String::new())
            .unwrap();
        assert!(svc.clone().oneshot(call).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The same error on a GET is retried.
        assert!(svc.oneshot(Request::new(String::new())).await.is_err());
        assert!(calls.load(Ordering::SeqCst) > 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_stops_retries() {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let policy = RetryPolicy::default()
            .max_attempts(10)
            .deadline(Duration::from_secs(1));
        let svc = ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(
                TowerPolicy::new(policy).unwrap(),
            ))
            .service(service_fn(move |_: Request<String>| {
                seen.fetch_add(1, Ordering::SeqCst);
                async {
                    // Each attempt takes 300 ms and asks for no wait.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut res = Response::new(());
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    res.headers_mut()
                        .insert("retry-after", http::HeaderValue::from_static("0"));
                    Ok::<_, Infallible>(res)
                }
            }));
        let res = svc.oneshot(Request::new(String::new())).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Attempts start at 0, 0.3, 0.6 and 0.9 s; none after the 1 s
        // deadline.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
