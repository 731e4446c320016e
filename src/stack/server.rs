//! `ServerStack`: every server layer built from one [`StackConfig`].

use std::fmt;

use super::config::StackConfig;
use crate::backends::AnyStore;
use crate::circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer};
use crate::concurrency_limit::{ConcurrencyLimitHandle, ConcurrencyLimitLayer};
use crate::deadline::DeadlineLayer;
use crate::error::{ConfigError, StoreError};
use crate::events::Events;
use crate::health::{HealthRegistry, durability_check, store_check};
use crate::idempotency::IdempotencyLayer;
use crate::metrics::MetricsLayer;
use crate::rate_limit::{RateLimitHandle, RateLimitLayer};
use crate::reject::{ShapeRejection, ShapeRejectionsLayer};
use crate::reload::{ConfigReloader, ConfigWatch};
use crate::request_id::RequestIdLayer;
use crate::trace::TraceLayer;

/// Why a stack could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// A value in the config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend (or the config source's etcd) could not be reached.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// The server layers of a [`StackConfig`], built and connected; see the
/// [module docs](super) for their order. Keep it as long as the server
/// runs: it owns the config source's watch, which stops when it drops.
///
/// ```
/// use battlement::stack::{self, StackConfig};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let config = StackConfig::from_toml(r#"
///     [[rate_limit.policies]]
///     name = "per-ip"
///     quota = { count = 100, period = "1s" }
///     key = { by = "peer_ip" }
/// "#).unwrap();
/// let stack = stack::server(&config).await.unwrap();
/// # #[cfg(feature = "axum")]
/// let app: axum::Router = stack.router(
///     axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" })),
/// );
/// # });
/// ```
#[must_use = "the config watch stops when the ServerStack is dropped"]
pub struct ServerStack {
    pub(crate) store: AnyStore,
    pub(crate) health: HealthRegistry,
    pub(crate) settings: super::config::HealthSettings,
    pub(crate) request_id: Option<RequestIdLayer>,
    pub(crate) trace: Option<TraceLayer>,
    pub(crate) metrics: Option<MetricsLayer>,
    pub(crate) rate_limit: Option<RateLimitLayer<AnyStore>>,
    pub(crate) breaker: Option<CircuitBreakerLayer>,
    pub(crate) idempotency: Option<IdempotencyLayer<AnyStore>>,
    pub(crate) concurrency_limit: Option<ConcurrencyLimitLayer>,
    pub(crate) deadline: Option<DeadlineLayer>,
    pub(crate) shape: Option<ShapeRejectionsLayer>,
    pub(crate) events: Events,
    pub(crate) config: Option<ConfigWatch>,
}

impl fmt::Debug for ServerStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerStack")
            .field("store", &self.store)
            .field("request_id", &self.request_id.is_some())
            .field("trace", &self.trace.is_some())
            .field("metrics", &self.metrics.is_some())
            .field("rate_limit", &self.rate_limit.is_some())
            .field("circuit_breaker", &self.breaker.is_some())
            .field("idempotency", &self.idempotency.is_some())
            .field("concurrency_limit", &self.concurrency_limit.is_some())
            .field("deadline", &self.deadline.is_some())
            .field("shape_rejections", &self.shape.is_some())
            .field("config_source", &self.config.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds the server layers `config` describes: connects the backend (a
/// wrong or unreachable address fails here, not at the first request),
/// registers its readiness check, validates every policy and threshold,
/// and starts the config source when one is set.
pub async fn server(config: &StackConfig) -> Result<ServerStack, StackError> {
    config.health.validate()?;
    let store = AnyStore::connect(&config.backend).await?;
    let health = HealthRegistry::new();
    health.register(store_check(store.clone()));
    health.register(durability_check(store.clone()));
    let events = Events::new();
    let rate_limit = match &config.rate_limit {
        Some(settings) => {
            Some(RateLimitLayer::from_config(store.clone(), settings)?.events(events.clone()))
        }
        None => None,
    };
    let breaker = match &config.circuit_breaker {
        Some(settings) => Some(
            CircuitBreakerLayer::builder(
                &settings.name,
                store.clone(),
                settings.thresholds.clone(),
            )
            .events(events.clone())
            .build()?,
        ),
        None => None,
    };
    let idempotency = match &config.idempotency {
        Some(settings) => {
            Some(IdempotencyLayer::from_config(store.clone(), settings)?.events(events.clone()))
        }
        None => None,
    };
    let concurrency_limit = match &config.concurrency_limit {
        Some(settings) => {
            Some(ConcurrencyLimitLayer::from_config(settings)?.events(events.clone()))
        }
        None => None,
    };
    let deadline = match &config.deadline {
        Some(settings) => Some(DeadlineLayer::from_config(settings)?.events(events.clone())),
        None => None,
    };
    let access_log = config.access_log.access_log()?;
    let mut stack = ServerStack {
        store,
        health,
        settings: config.health.clone(),
        // The request id's own span only without the trace span (which is
        // then the root and records the id).
        request_id: config.request_id.layer()?,
        trace: config.trace.layer(access_log),
        metrics: config.metrics.layer(),
        rate_limit,
        breaker,
        idempotency,
        concurrency_limit,
        deadline,
        shape: None,
        events,
        config: None,
    };
    if let Some(source) = &config.config_source {
        stack.config = Some(stack.reload_from(source).await?);
    }
    super::resolved::log(config, &stack);
    Ok(stack)
}

impl ServerStack {
    /// Gives every HTTP rejection of the stack (and every
    /// [`Problem`](crate::reject::Problem) a handler returns) the body and
    /// content type `hook` makes of it, outside every layer: see
    /// [`ShapeRejectionsLayer`]. gRPC rejections are left as they are.
    ///
    /// ```
    /// use battlement::reject::{Problem, Shaped};
    /// use battlement::stack::{self, StackConfig};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let stack = stack::server(&StackConfig::default()).await.unwrap().shape_rejections(
    ///     |problem: &Problem| Some(Shaped::json(&serde_json::json!({ "error": problem.title() }))),
    /// );
    /// # drop(stack);
    /// # });
    /// ```
    pub fn shape_rejections(mut self, hook: impl ShapeRejection) -> Self {
        self.shape = Some(ShapeRejectionsLayer::new(hook));
        self
    }

    /// The connected backend (hand clones to other layers).
    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// The health registry (the backend's check is registered).
    pub fn health(&self) -> &HealthRegistry {
        &self.health
    }

    /// The health route paths of the config.
    pub fn health_paths(&self) -> &super::config::HealthSettings {
        &self.settings
    }

    /// The event stream every layer reports to.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// The rate limiter's quota handle, when it is on.
    pub fn rate_limit(&self) -> Option<RateLimitHandle> {
        self.rate_limit.as_ref().map(RateLimitLayer::handle)
    }

    /// The server breaker's handle, when it is on.
    pub fn circuit_breaker(&self) -> Option<CircuitBreakerHandle> {
        self.breaker.as_ref().map(CircuitBreakerLayer::handle)
    }

    /// The concurrency limit's handle (current limit, requests in
    /// flight), when it is on.
    pub fn concurrency_limit(&self) -> Option<ConcurrencyLimitHandle> {
        self.concurrency_limit
            .as_ref()
            .map(ConcurrencyLimitLayer::handle)
    }

    /// Binds the rate limiter and breaker to a config source.
    #[cfg(feature = "etcd")]
    async fn reload_from(
        &self,
        settings: &super::config::ConfigSourceSettings,
    ) -> Result<ConfigWatch, StackError> {
        let etcd = crate::backends::EtcdStore::from_config(settings.etcd.clone()).await?;
        // Readiness covers the config source's etcd too.
        self.health.register(store_check(etcd.clone()));
        let source = crate::reload::EtcdConfigSource::new(&etcd)
            .prefix(&settings.prefix)?
            .events(self.events.clone());
        Ok(self.reloader(ConfigReloader::new(source)).start()?)
    }

    #[cfg(not(feature = "etcd"))]
    async fn reload_from(
        &self,
        _: &super::config::ConfigSourceSettings,
    ) -> Result<ConfigWatch, StackError> {
        Err(ConfigError::new("config_source needs the `etcd` feature").into())
    }

    /// Binds this stack's rate limiter and breaker to `reloader`.
    pub fn reloader(&self, mut reloader: ConfigReloader) -> ConfigReloader {
        if let Some(handle) = self.rate_limit() {
            reloader = reloader.rate_limit(handle);
        }
        if let Some(handle) = self.circuit_breaker() {
            reloader = reloader.circuit_breaker(handle);
        }
        reloader.events(self.events.clone())
    }

    /// The config watch, when a config source is set: wait for its first
    /// load with [`ConfigWatch::loaded`].
    pub fn config_watch(&self) -> Option<&ConfigWatch> {
        self.config.as_ref()
    }
}
