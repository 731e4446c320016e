//! The `RateLimit` / `RateLimit-Policy` headers
//! (draft-ietf-httpapi-ratelimit-headers), `Retry-After`, and the legacy
//! `X-RateLimit-*` set.

use std::time::Duration;

use http::header::{HeaderName, RETRY_AFTER};
use http::{HeaderMap, HeaderValue};

use super::policy::Policy;
use super::store::Decision;

/// `RateLimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up, so a client never retries early.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

/// The headers describing `decision` under `policy`.
pub(crate) fn render(policy: &Policy, decision: &Decision, legacy: bool) -> HeaderMap {
    let quota = policy.quota;
    let reset = match decision {
        Decision::Allowed { reset, .. } => ceil_secs(*reset),
        Decision::Denied {
            retry_after, reset, ..
        } => ceil_secs(retry_after.unwrap_or(*reset)),
    };
    let mut headers = HeaderMap::with_capacity(6);
    let mut put = |name: HeaderName, value: String| {
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(name, v);
        }
    };
    put(
        RATELIMIT_POLICY,
        format!(
            "\"{}\";q={};w={}",
            policy.name,
            quota.count(),
            ceil_secs(quota.period())
        ),
    );
    put(
        RATELIMIT,
        format!("\"{}\";r={};t={}", policy.name, decision.remaining(), reset),
    );
    if let Decision::Denied {
        retry_after: Some(wait),
        ..
    } = decision
    {
        put(RETRY_AFTER, ceil_secs(*wait).max(1).to_string());
    }
    if legacy {
        put(X_LIMIT, quota.count().to_string());
        put(X_REMAINING, decision.remaining().to_string());
        put(X_RESET, reset.to_string());
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::Quota;

    #[test]
    fn denial_headers_round_up() {
        let p = Policy::new("per-ip", Quota::per_minute(50).unwrap()).unwrap();
        let d = Decision::Denied {
            retry_after: Some(Duration::from_millis(1_200)),
            remaining: 0,
            reset: Duration::from_secs(60),
        };
        let h = render(&p, &d, true);
        assert_eq!(h["ratelimit-policy"], "\"per-ip\";q=50;w=60");
        assert_eq!(h["ratelimit"], "\"per-ip\";r=0;t=2");
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["x-ratelimit-limit"], "50");
        assert_eq!(h["x-ratelimit-reset"], "2");
    }

    #[test]
    fn allowed_headers_have_no_retry_after() {
        let p = Policy::new("api", Quota::per_second(10).unwrap()).unwrap();
        let d = Decision::Allowed {
            remaining: 9,
            reset: Duration::from_millis(100),
        };
        let h = render(&p, &d, false);
        assert_eq!(h["ratelimit"], "\"api\";r=9;t=1");
        assert!(!h.contains_key("retry-after"));
        assert!(!h.contains_key("x-ratelimit-limit"));
    }
}
