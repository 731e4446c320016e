//! `DeadlineLayer`: configuration.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http::request::Parts;
use tower_layer::Layer;

use super::config::{DeadlineConfig, MalformedGrpcTimeout};
use super::service::DeadlineService;
use crate::error::ConfigError;
use crate::events::Events;

/// A per-request timeout computed from the request.
pub(crate) type RouteFn = Arc<dyn Fn(&Parts) -> Option<Duration> + Send + Sync>;

/// What every service made by one layer shares.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) timeout: Duration,
    pub(crate) routes: HashMap<String, Duration>,
    pub(crate) route_fn: Option<RouteFn>,
    pub(crate) status: StatusCode,
    pub(crate) malformed: MalformedGrpcTimeout,
    pub(crate) events: Events,
}

/// The server timeout: answers for the inner service when a request's
/// deadline passes before its response head is ready, and drops (cancels)
/// the inner service's future.
///
/// Named apart from `tower::timeout::TimeoutLayer`, which fails with an
/// error instead of answering. The deadline of a request is the smallest
/// of
/// - its route's timeout ([`route_timeout`](Self::route_timeout), else the
///   configured routes, else the default),
/// - the `grpc-timeout` header of a gRPC call,
/// - an enclosing deadline layer's [`Deadline`](super::Deadline).
///
/// An expired request gets a 504 (or 503) with a problem+json body, or a
/// trailers-only `DEADLINE_EXCEEDED` for gRPC, and is counted as a
/// `deadline` event `timed_out` whose policy is where the timeout came
/// from (`default`, `route`, `grpc-timeout`, `outer`). See the
/// [module docs](super) for what the deadline covers.
///
/// ```
/// use std::time::Duration;
/// use battlement::deadline::DeadlineLayer;
///
/// let layer = DeadlineLayer::new(Duration::from_secs(10))
///     .unwrap()
///     .route_timeout(|parts: &http::request::Parts| {
///         parts.uri.path().starts_with("/reports").then(|| Duration::from_secs(60))
///     });
/// ```
#[derive(Clone)]
pub struct DeadlineLayer {
    shared: Arc<Shared>,
}

impl DeadlineLayer {
    /// Every request gets `timeout`; the other settings are the defaults.
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        Self::from_config(&DeadlineConfig::new(timeout))
    }

    /// A layer from a configuration, validated.
    pub fn from_config(config: &DeadlineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let status = StatusCode::from_u16(config.status)
            .map_err(|e| ConfigError::new(format!("deadline: status: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                timeout: config.timeout,
                routes: config
                    .routes
                    .iter()
                    .map(|r| (r.route.clone(), r.timeout))
                    .collect(),
                route_fn: None,
                status,
                malformed: config.malformed_grpc_timeout,
                events: Events::new(),
            }),
        })
    }

    /// Computes a request's timeout; `None` falls back to the configured
    /// routes and the default. A zero timeout expires at once.
    pub fn route_timeout<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<Duration> + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.shared).route_fn = Some(Arc::new(f));
        self
    }

    /// Answers expired requests with 503 instead of 504.
    pub fn service_unavailable(mut self) -> Self {
        Arc::make_mut(&mut self.shared).status = StatusCode::SERVICE_UNAVAILABLE;
        self
    }

    /// Reports timeouts to `events` (share one stream between layers).
    pub fn events(mut self, events: Events) -> Self {
        Arc::make_mut(&mut self.shared).events = events;
        self
    }

    /// The event stream timeouts are reported to.
    pub fn event_stream(&self) -> &Events {
        &self.shared.events
    }
}

impl fmt::Debug for DeadlineLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadlineLayer")
            .field("timeout", &self.shared.timeout)
            .field("routes", &self.shared.routes)
            .field("route_fn", &self.shared.route_fn.is_some())
            .field("status", &self.shared.status)
            .field("malformed_grpc_timeout", &self.shared.malformed)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService::new(inner, self.shared.clone())
    }
}
