//! `IdempotencyLayer`: configuration.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use tower_layer::Layer;

use super::fingerprint::{DefaultFingerprint, MakeFingerprint};
use super::scope::AuthorizationScope;
use super::service::Idempotency;
use super::store::IdempotencyStore;
use crate::backends::{Guard, Guarded};
use crate::error::FailurePolicy;
use crate::events::Events;
use crate::key::KeyExtractor;

/// Default lock of an executing request.
pub const DEFAULT_LOCK: Duration = Duration::from_secs(60);
/// Default retention of a completed response.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default limit of a request body read for the fingerprint.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;
/// Default limit of a response body stored for replay.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 1 << 20;
/// Default bound on how long a won claim's handler runs.
pub const DEFAULT_MAX_EXECUTION: Duration = Duration::from_secs(5 * 60);
/// Default statuses that turn a request away before it runs: not kept.
pub const DEFAULT_RELEASE_STATUSES: [StatusCode; 4] = [
    StatusCode::UNAUTHORIZED,
    StatusCode::FORBIDDEN,
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::SERVICE_UNAVAILABLE,
];

const MAX_LOCK: Duration = Duration::from_secs(24 * 3600);
const MAX_RETENTION: Duration = Duration::from_secs(366 * 24 * 3600);
const MAX_BODY: usize = 64 << 20;

/// Executes each `Idempotency-Key` once and replays its response
/// (draft-ietf-httpapi-idempotency-key-header, with Stripe's semantics).
///
/// For the methods it covers (POST and PATCH by default), a request with a
/// key is read whole (up to [`max_request_body`](Self::max_request_body),
/// else 413), fingerprinted, and claimed in the store under its principal
/// ([`scope`](Self::scope)):
/// - the first claim executes; its response (any status, 5xx included) is
///   read whole and stored for [`retention`](Self::retention) before it is
///   sent, so a duplicate arriving after the response gets the replay;
/// - a duplicate while it executes gets 409 (gRPC `ABORTED`) with
///   `Retry-After: 1`; after, the stored status, headers, body and
///   trailers byte for byte plus `Idempotent-Replayed: true`;
/// - the same key with another fingerprint gets 422;
/// - a missing key gets 400 when [`required`](Self::required), else the
///   request passes untouched; a malformed key always gets 400;
/// - a key whose principal cannot be told gets 400 "idempotency scope
///   unknown" and does not run: by default, a request with neither
///   `Authorization` nor a known peer address (see [`AuthorizationScope`]).
///   No scope is shared by default, but clients sending one `Authorization`
///   value share its scope: scope by a verified
///   [`Principal`](super::Principal) where the application authenticates.
///
/// Once a claim is won, the request runs to the end and its response is
/// stored even if the client disconnects or a deadline layer answers
/// first, so its retry finds the result. It runs on its own task, which
/// keeps the request's span, request id and [deadline](crate::deadline)
/// and holds its [concurrency-limit slot](crate::concurrency_limit::Slot)
/// until it ends, and is bounded by
/// [`max_execution`](Self::max_execution) (5 min by default): a handler
/// still running then is cancelled and its key released (an
/// `idempotency`/`abandoned` event). A response whose status says the
/// request was turned away before it ran (401, 403, 429 and 503 by
/// default, [`release_statuses`](Self::release_statuses)) is not kept
/// either: the key is released and a retry runs. A
/// response body over [`max_response_body`](Self::max_response_body), one
/// that fails, or a server-sent event stream (`text/event-stream`, passed
/// through event by event) is not kept: duplicates get 410 Gone and the
/// request does not run again. An inner error (no response at all) or a
/// handler that panics releases the key, so a retry runs. A handler slower
/// than the [`lock`](Self::lock) keeps its claim: it is renewed every third
/// of the lock while the request runs. A renewal that fails is tried again
/// at the next third; if none lands for a whole lock (the store slower
/// than the lock, or cut off), the claim lapses: a duplicate that comes
/// then runs too, and the first run's response still goes to its caller
/// but is not stored (an `idempotency`/`lock_lost` event and a warning).
/// Keep the lock well above the store's per-call timeout. A process killed
/// while executing keeps the lock until it expires; then the key can run
/// once more. If
/// the store fails the default is fail-closed (503), since
/// exactly-once cannot be promised. Apply it to unary routes: bodies are
/// read whole.
///
/// ```
/// use std::time::Duration;
/// use battlement::backends::MemoryStore;
/// use battlement::idempotency::IdempotencyLayer;
///
/// let layer = IdempotencyLayer::new(MemoryStore::new())
///     .required(true)
///     .lock(Duration::from_secs(30))
///     .retention(Duration::from_secs(3600));
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer<St> {
    store: St,
    settings: Settings,
    /// The failure policy and the events; one per layer, shared by every
    /// service it makes (with the fallback store and the log's rate).
    guard: Guard,
}

/// Everything but the store.
#[derive(Clone)]
pub(crate) struct Settings {
    pub methods: Vec<Method>,
    /// The route templates covered; `None`: every route.
    pub routes: Option<Arc<[String]>>,
    pub required: bool,
    pub strict_keys: bool,
    pub scope: Arc<dyn KeyExtractor>,
    pub fingerprint: Arc<dyn MakeFingerprint>,
    pub lock: Duration,
    pub retention: Duration,
    pub max_request_body: usize,
    pub max_response_body: usize,
    pub max_execution: Duration,
    pub release_statuses: Vec<StatusCode>,
}

impl Settings {
    /// Whether `req`'s route is one this layer covers.
    pub(crate) fn covers_route<B>(&self, req: &http::Request<B>) -> bool {
        let Some(routes) = &self.routes else {
            return true;
        };
        #[cfg(feature = "axum")]
        if let Some(path) = req.extensions().get::<axum::extract::MatchedPath>() {
            return routes.iter().any(|r| r == path.as_str());
        }
        // No template to compare (a layer outside a nested router, or no
        // axum): match the path against each template.
        let path = req.uri().path();
        routes.iter().any(|r| template_matches(r, path))
    }
}

/// Whether `path` fits the route `template`: `{name}` stands for one
/// non-empty segment, a final `{*name}` for the rest.
fn template_matches(template: &str, path: &str) -> bool {
    let mut segments = path.split('/');
    for part in template.split('/') {
        if part.starts_with("{*") && part.ends_with('}') {
            return segments.next().is_some_and(|s| !s.is_empty());
        }
        let Some(segment) = segments.next() else {
            return false;
        };
        let param = part.starts_with('{') && part.ends_with('}');
        if (param && segment.is_empty()) || (!param && part != segment) {
            return false;
        }
    }
    segments.next().is_none()
}

impl<St> std::fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("methods", &self.settings.methods)
            .field("routes", &self.settings.routes)
            .field("required", &self.settings.required)
            .field("lock", &self.settings.lock)
            .field("retention", &self.settings.retention)
            .finish_non_exhaustive()
    }
}

impl<St: IdempotencyStore> IdempotencyLayer<St> {
    /// A layer over `store` with the defaults: POST and PATCH, key
    /// optional, scoped by `Authorization` else the peer's address
    /// ([`AuthorizationScope`]), 60 s lock, 24 h retention, 1 MiB body
    /// limits, fail-closed.
    pub fn new(store: St) -> Self {
        // `battlement.idempotency.in_flight` reads a counter: made now.
        crate::events::ensure_gauges();
        Self {
            store,
            settings: Settings {
                methods: vec![Method::POST, Method::PATCH],
                routes: None,
                required: false,
                strict_keys: false,
                scope: Arc::new(AuthorizationScope::new()),
                fingerprint: Arc::new(DefaultFingerprint),
                lock: DEFAULT_LOCK,
                retention: DEFAULT_RETENTION,
                max_request_body: DEFAULT_MAX_REQUEST_BODY,
                max_response_body: DEFAULT_MAX_RESPONSE_BODY,
                max_execution: DEFAULT_MAX_EXECUTION,
                release_statuses: DEFAULT_RELEASE_STATUSES.to_vec(),
            },
            guard: Guard::new(FailurePolicy::FailClosed),
        }
    }

    /// Covers only these routes: templates such as `/orders/{id}` compared
    /// with axum's matched route, or matched against the request path
    /// where there is none (a layer outside a nested router); others pass
    /// untouched, so one layer over a whole router can require keys on
    /// some routes.
    pub fn routes<I, R>(mut self, routes: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        self.settings.routes = Some(routes.into_iter().map(Into::into).collect());
        self
    }

    /// The methods this layer covers; others pass untouched.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings.methods = methods.into_iter().collect();
        self
    }

    /// Whether a covered request without a key is rejected with 400.
    pub fn required(mut self, required: bool) -> Self {
        self.settings.required = required;
        self
    }

    /// Whether only the draft's quoted keys (`Idempotency-Key: "k-1"`) are
    /// accepted. Off by default: bare tokens (`Idempotency-Key: k-1`), as
    /// Stripe's clients send them, are keys too.
    pub fn strict_keys(mut self, strict: bool) -> Self {
        self.settings.strict_keys = strict;
        self
    }

    /// Whose keys they are (default: [`AuthorizationScope`]: the hashed
    /// `Authorization`, else the peer's address). Two requests share a
    /// stored response only when their scope and key are equal, so a
    /// scope must tell clients apart; a request it returns an error for
    /// gets 400 "idempotency scope unknown" and does not run.
    ///
    /// ```
    /// use battlement::backends::MemoryStore;
    /// use battlement::idempotency::{AuthorizationScope, IdempotencyLayer};
    /// use battlement::key::{ClientIp, HeaderKey, Key, KeyError, RequestHead, key_fn};
    /// use http::HeaderName;
    ///
    /// // `Authorization`, else the client behind the load balancer.
    /// let lb = ["10.0.0.0/8".parse().unwrap()];
    /// IdempotencyLayer::new(MemoryStore::new())
    ///     .scope(AuthorizationScope::new().trusted_proxies(lb));
    /// // The client address alone (a credential that changes between a
    /// // request and its retry would otherwise run it twice).
    /// IdempotencyLayer::new(MemoryStore::new()).scope(ClientIp::new(lb).ipv6_prefix(128));
    /// // A tenant header set by the gateway.
    /// IdempotencyLayer::new(MemoryStore::new())
    ///     .scope(HeaderKey::new(HeaderName::from_static("x-tenant-id")));
    /// // A function, e.g. of what authentication put in the extensions.
    /// #[derive(Clone)]
    /// struct User(String);
    /// IdempotencyLayer::new(MemoryStore::new()).scope(key_fn(|head: &RequestHead<'_>| {
    ///     head.extensions.get::<User>().map(|u| Key::from(u.0.as_str()))
    ///         .ok_or_else(|| KeyError::Rejected("not signed in".into()))
    /// }));
    /// ```
    pub fn scope(mut self, scope: impl KeyExtractor) -> Self {
        self.settings.scope = Arc::new(scope);
        self
    }

    /// How requests are compared (default: [`DefaultFingerprint`]).
    pub fn fingerprint(mut self, fingerprint: impl MakeFingerprint) -> Self {
        self.settings.fingerprint = Arc::new(fingerprint);
        self
    }

    /// How long a claim holds its key before it may run again, should its
    /// process die (1 s to 1 day). A live process renews it every third
    /// of the lock while its handler runs; if no renewal reaches the store
    /// for a whole lock, the claim lapses and a duplicate may run.
    pub fn lock(mut self, lock: Duration) -> Self {
        self.settings.lock = lock.clamp(Duration::from_secs(1), MAX_LOCK);
        self
    }

    /// How long a completed response is replayed (1 s to 1 year).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.settings.retention = retention.clamp(Duration::from_secs(1), MAX_RETENTION);
        self
    }

    /// The largest request body read for the fingerprint (above: 413; at
    /// most 64 MiB).
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.settings.max_request_body = bytes.min(MAX_BODY);
        self
    }

    /// The largest response body kept (at most 64 MiB). A larger response
    /// is sent whole but not kept: duplicates get 410 and the request does
    /// not run again.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.settings.max_response_body = bytes.min(MAX_BODY);
        self
    }

    /// The longest a won claim's handler may run, detached from its client
    /// (1 s to 1 day; default 5 min). A handler still running then is
    /// cancelled, its key released (a retry runs it again) and an
    /// `idempotency`/`abandoned` event reported; its client, if still
    /// there, gets 504.
    pub fn max_execution(mut self, bound: Duration) -> Self {
        self.settings.max_execution = bound.clamp(Duration::from_secs(1), MAX_LOCK);
        self
    }

    /// Statuses that say a request was turned away before it ran (default
    /// 401, 403, 429 and 503, as inner authentication, rate-limit or
    /// overload layers answer): such a response is passed on but not
    /// kept, and the key is released so that a retry runs. Stripe saves a
    /// result only once the endpoint started executing. A handler that
    /// did work and answers one of these would run again on a retry:
    /// answer another status then (a 500 is kept). Only 4xx and 5xx
    /// statuses are taken: a success is always kept.
    pub fn release_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.settings.release_statuses = statuses
            .into_iter()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .collect();
        self
    }

    /// What to do when the store fails: fail-closed (503, the default),
    /// fail-open (execute without idempotency) or a local fallback store
    /// (idempotent within this process only).
    ///
    /// What the local fallback keeps across an outage: a key claimed in
    /// the fallback runs once on this process, and this process answers
    /// it from the fallback (409 while it runs, then the replay) until its
    /// lock or retention ends, after the store is back too. What it does
    /// not keep: a key claimed or completed in the store before the
    /// outage is unknown to the fallback, so a retry during the outage
    /// runs it again; and each process has its own fallback, so a key
    /// retried on another process during the outage runs there too. Only
    /// fail-closed keeps exactly-once through an outage.
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.guard.failure = policy;
        self
    }

    /// Reports executions, replays, conflicts and store failures to
    /// `events`.
    pub fn events(mut self, events: Events) -> Self {
        self.guard.events = events;
        self
    }
}

impl<S, St: Clone> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        let store = Guarded::new(self.store.clone(), self.guard.clone());
        Idempotency::new(inner, store, Arc::new(self.settings.clone()))
    }
}

#[cfg(test)]
mod route_tests {
    use super::template_matches;

    #[test]
    fn templates_match_paths_segment_by_segment() {
        assert!(template_matches("/orders", "/orders"));
        assert!(template_matches("/v1/orders/{id}", "/v1/orders/42"));
        assert!(template_matches("/files/{*rest}", "/files/a/b"));
        assert!(!template_matches("/orders", "/orders/1"));
        assert!(!template_matches("/orders/{id}", "/orders/"));
        assert!(!template_matches("/orders/{id}", "/orders"));
        assert!(!template_matches("/files/{*rest}", "/files/"));
        assert!(!template_matches("/v1/orders", "/v2/orders"));
    }
}
