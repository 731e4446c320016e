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

/// The largest structured-field integer (RFC 9651: at most 15 digits);
/// a larger one would make the whole header unreadable to clients.
const MAX_SF_INTEGER: u64 = 999_999_999_999_999;

/// Whole seconds, rounded up, so a client never retries early.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

/// The `RateLimit-Policy` value of a policy (constant until its quota
/// changes, so it is computed once).
///
/// `w` is whole seconds, so a sub-second period is stated per second
/// (1 per 100 ms is `q=10;w=1`).
pub(crate) fn policy_value(name: &str, quota: &super::quota::Quota) -> HeaderValue {
    let (q, w) = if quota.period_us() < 1_000_000 {
        let per_second = u128::from(quota.count()) * 1_000_000 / u128::from(quota.period_us());
        (u64::try_from(per_second).unwrap_or(u64::MAX), 1)
    } else {
        (quota.count(), ceil_secs(quota.period()))
    };
    let value = format!("\"{name}\";q={q};w={w}");
    HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The rate-limit headers of one decision, ready to insert.
#[derive(Debug, Clone)]
pub(crate) struct Rendered {
    policy: HeaderValue,
    limit: HeaderValue,
    retry_after: Option<HeaderValue>,
    /// Opt-in, so boxed: the headers ride in every allowed request's
    /// future, and a smaller future is cheaper to move.
    legacy: Option<Box<[HeaderValue; 3]>>,
}

impl Rendered {
    /// Inserts the headers into `headers`.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY, self.policy);
        headers.insert(RATELIMIT, self.limit);
        if let Some(v) = self.retry_after {
            headers.insert(RETRY_AFTER, v);
        }
        if let Some(legacy) = self.legacy {
            let [limit, remaining, reset] = *legacy;
            headers.insert(X_LIMIT, limit);
            headers.insert(X_REMAINING, remaining);
            headers.insert(X_RESET, reset);
        }
    }

    /// The headers as a map.
    pub(crate) fn into_map(self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(6);
        self.apply(&mut map);
        map
    }
}

/// The headers describing `decision` under `policy`.
pub(crate) fn render(policy: &Policy, decision: &Decision, legacy: bool) -> Rendered {
    let reset = match decision {
        Decision::Allowed { reset, .. } => ceil_secs(*reset),
        Decision::Denied {
            retry_after, reset, ..
        } => ceil_secs(retry_after.unwrap_or(*reset)),
    };
    // Exactly as long as its text: a `Bytes` made from it then needs no
    // second allocation. Written piece by piece (`concat` costs twice as
    // much on pieces this short).
    let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (r, t) = (
        r.format(decision.remaining().min(MAX_SF_INTEGER))
            .as_bytes(),
        t.format(reset.min(MAX_SF_INTEGER)).as_bytes(),
    );
    let name = policy.name.as_bytes();
    let mut limit = Vec::with_capacity(name.len() + r.len() + t.len() + 8);
    limit.push(b'"');
    limit.extend_from_slice(name);
    limit.extend_from_slice(b"\";r=");
    limit.extend_from_slice(r);
    limit.extend_from_slice(b";t=");
    limit.extend_from_slice(t);
    let retry_after = match decision {
        Decision::Denied {
            retry_after: Some(wait),
            ..
        } => Some(HeaderValue::from(ceil_secs(*wait).max(1))),
        _ => None,
    };
    Rendered {
        policy: policy.policy_header.clone(),
        limit: HeaderValue::try_from(limit).unwrap_or_else(|_| HeaderValue::from_static("")),
        retry_after,
        legacy: legacy.then(|| {
            Box::new([
                HeaderValue::from(policy.quota.count()),
                HeaderValue::from(decision.remaining()),
                HeaderValue::from(reset),
            ])
        }),
    }
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
        let h = render(&p, &d, true).into_map();
        assert_eq!(h["ratelimit-policy"], "\"per-ip\";q=50;w=60");
        assert_eq!(h["ratelimit"], "\"per-ip\";r=0;t=2");
        assert_eq!(h["retry-after"], "2");
        assert_eq!(h["x-ratelimit-limit"], "50");
        assert_eq!(h["x-ratelimit-reset"], "2");
    }

    #[test]
    fn sub_second_periods_are_stated_per_second() {
        let q = Quota::new(1, Duration::from_millis(100)).unwrap();
        assert_eq!(policy_value("fast", &q), "\"fast\";q=10;w=1");
    }

    #[test]
    fn allowed_headers_have_no_retry_after() {
        let p = Policy::new("api", Quota::per_second(10).unwrap()).unwrap();
        let d = Decision::Allowed {
            remaining: 9,
            reset: Duration::from_millis(100),
        };
        let h = render(&p, &d, false).into_map();
        assert_eq!(h["ratelimit"], "\"api\";r=9;t=1");
        assert!(!h.contains_key("retry-after"));
        assert!(!h.contains_key("x-ratelimit-limit"));
    }
}
