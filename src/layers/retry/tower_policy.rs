//! [`RetryPolicy`] as a `tower::retry::Policy`, for stacks that already
//! use `tower::retry::Retry` with clonable requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{Request, Response};
use tower::retry::budget::{Budget as _, TpsBudget};

use super::policy::{Next, RetryPolicy, Safety};

/// A [`RetryPolicy`] for `tower::retry::RetryLayer`: the same attempts,
/// back-off, hints, statuses, safety rule and budget (no per-try timeout
/// or deadline: tower's retry does not bound attempts in time). One value
/// per request: clones share the budget but count attempts apart.
///
/// ```
/// use battlement::retry::{RetryPolicy, TowerPolicy};
/// use tower::retry::RetryLayer;
///
/// let layer = RetryLayer::new(TowerPolicy::new(RetryPolicy::default()));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct TowerPolicy {
    policy: Arc<RetryPolicy>,
    budget: Option<Arc<TpsBudget>>,
    attempt: u32,
    previous: Duration,
}

impl TowerPolicy {
    /// Wraps `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        let budget = policy
            .budget
            .map(|b| Arc::new(TpsBudget::new(b.window, b.min_per_sec, b.percent / 100.0)));
        Self {
            policy: Arc::new(policy),
            budget,
            attempt: 1,
            previous: Duration::ZERO,
        }
    }
}

impl<B: Clone, R, E> tower::retry::Policy<Request<B>, Response<R>, E> for TowerPolicy {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        req: &mut Request<B>,
        result: &mut Result<Response<R>, E>,
    ) -> Option<Self::Future> {
        let hint = match result {
            Ok(res) => self
                .policy
                .retryable_response(res, Safety::of(req), SystemTime::now())?,
            Err(_) => None,
        };
        let mut rng = fastrand::Rng::new();
        let Next::Retry(delay) =
            self.policy
                .next(self.attempt, hint, self.previous, Duration::ZERO, &mut rng)
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
        if self.attempt == 1
            && let Some(budget) = &self.budget
        {
            budget.deposit();
        }
        RetryPolicy::is_safe(req).then(|| req.clone())
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
            .layer(tower::retry::RetryLayer::new(TowerPolicy::new(
                RetryPolicy::default().backoff(Backoff::Exponential {
                    base: Duration::from_millis(10),
                    max: Duration::from_millis(10),
                }),
            )))
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
}
