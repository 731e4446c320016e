//! What users add to the trace and metrics layers: attributes computed
//! from the request and the response ([`ExtraAttributes`]), a span-name
//! override and a filter of the requests traced.
//!
//! See [`ExtraAttributes`] for an example.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use opentelemetry::{Key, KeyValue, Value};

use super::semconv::OTHER;

/// Attributes a trace or metrics layer adds to each request's span or
/// duration metric, from the request's head (before the service runs) and
/// from the response's head.
///
/// On a metric, each distinct value makes a series: the values must come
/// from a small, bounded set (a tenant among a handful, a feature flag,
/// a cache verdict; never a user id, a path or a query), which you own.
/// [`MetricsLayer::max_attribute_values`](crate::metrics::MetricsLayer::max_attribute_values)
/// caps the values a key takes (100 by default); values beyond it are
/// recorded as `_OTHER`.
///
/// ```
/// use battlement::metrics::MetricsLayer;
/// use battlement::trace::{ExtraAttributes, TraceLayer};
/// use opentelemetry::KeyValue;
///
/// /// The tenant a request is for (a handful of values) and the cache's
/// /// verdict on the answer.
/// struct Tenant;
///
/// impl ExtraAttributes for Tenant {
///     fn request(&self, req: &http::request::Parts, attributes: &mut Vec<KeyValue>) {
///         if let Some(tenant) = req.headers.get("x-tenant").and_then(|v| v.to_str().ok()) {
///             attributes.push(KeyValue::new("app.tenant", tenant.to_owned()));
///         }
///     }
///
///     fn response(&self, res: &http::response::Parts, attributes: &mut Vec<KeyValue>) {
///         let hit = res.headers.get("x-cache").is_some_and(|v| v == "HIT");
///         attributes.push(KeyValue::new("app.cache_hit", hit));
///     }
/// }
///
/// let trace = TraceLayer::server()
///     .attributes(Tenant)
///     .span_name(|req| req.uri.path().starts_with("/admin/").then(|| "admin".to_owned()))
///     .filter(|req| req.headers.get("x-synthetic").is_none());
/// // At most 20 tenants become series; others are counted as `_OTHER`.
/// let metrics = MetricsLayer::server().attributes(Tenant).max_attribute_values(20);
/// # let _ = (trace, metrics);
/// ```
pub trait ExtraAttributes: Send + Sync + 'static {
    /// Attributes from the request's head.
    fn request(&self, req: &http::request::Parts, attributes: &mut Vec<KeyValue>) {
        let _ = (req, attributes);
    }

    /// Attributes from the response's head (not for a request the service
    /// failed).
    fn response(&self, res: &http::response::Parts, attributes: &mut Vec<KeyValue>) {
        let _ = (res, attributes);
    }
}

/// A span name from the request's head; `None` keeps the default.
pub(crate) type SpanName = dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync;

/// Whether a request is traced.
pub(crate) type Filter = dyn Fn(&http::request::Parts) -> bool + Send + Sync;

/// What a user added to a layer.
#[derive(Clone, Default)]
pub(crate) struct Custom {
    pub(crate) attributes: Option<Arc<dyn ExtraAttributes>>,
    pub(crate) span_name: Option<Arc<SpanName>>,
    pub(crate) filter: Option<Arc<Filter>>,
}

impl fmt::Debug for Custom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Custom")
            .field("attributes", &self.attributes.is_some())
            .field("span_name", &self.span_name.is_some())
            .field("filter", &self.filter.is_some())
            .finish()
    }
}

impl Custom {
    /// Whether nothing was added.
    pub(crate) fn is_empty(&self) -> bool {
        self.attributes.is_none() && self.span_name.is_none() && self.filter.is_none()
    }
}

/// Runs `f` on the head of `req` (taken apart and put back: no copy).
pub(crate) fn with_request_parts<B, R>(
    req: Request<B>,
    f: impl FnOnce(&http::request::Parts) -> R,
) -> (Request<B>, R) {
    let (parts, body) = req.into_parts();
    let out = f(&parts);
    (Request::from_parts(parts, body), out)
}

/// Runs `f` on the head of `res` (taken apart and put back: no copy).
pub(crate) fn with_response_parts<B, R>(
    res: Response<B>,
    f: impl FnOnce(&http::response::Parts) -> R,
) -> (Response<B>, R) {
    let (parts, body) = res.into_parts();
    let out = f(&parts);
    (Response::from_parts(parts, body), out)
}

/// Caps the distinct values each attribute key takes on a metric.
pub(crate) struct ValueCap {
    max: usize,
    seen: Mutex<HashMap<Key, HashSet<String>>>,
}

impl ValueCap {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `kv`, or `kv`'s key with `_OTHER` once the key has `max` other
    /// values.
    pub(crate) fn bound(&self, kv: KeyValue) -> KeyValue {
        let Ok(mut seen) = self.seen.lock() else {
            return KeyValue::new(kv.key, OTHER);
        };
        let value = kv.value.as_str();
        let values = seen.entry(kv.key.clone()).or_default();
        if values.contains(value.as_ref()) {
            return kv;
        }
        // Keys are the user's code, not the client's: bounded by it.
        if values.len() < self.max {
            values.insert(value.into_owned());
            return kv;
        }
        KeyValue::new(kv.key, Value::from(OTHER))
    }
}

impl fmt::Debug for ValueCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueCap")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_beyond_the_cap_are_other() {
        let cap = ValueCap::new(2);
        let kv = |v: &str| cap.bound(KeyValue::new("k", v.to_owned())).value;
        assert_eq!(kv("a"), Value::from("a"));
        assert_eq!(kv("b"), Value::from("b"));
        assert_eq!(kv("c"), Value::from(OTHER));
        assert_eq!(kv("a"), Value::from("a"));
        assert_eq!(cap.bound(KeyValue::new("other", 7)).value, Value::from(7));
    }
}
