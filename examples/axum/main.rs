//! The battlement demo server: every route behind the server preset
//! (`battlement::stack::server`), configured from the environment.
//!
//! Run with: `cargo run --example axum` (then `curl -i 127.0.0.1:3000/hello`).
//!
//! Its routes (`/hello`, `/items/{id}`, `/slow`, `/orders`, `/proxy`, health,
//! `/metrics`) and environment variables (`RATE_LIMIT`, `RATE_LIMIT_MODE`,
//! `REDIS_URL`, `REDIS_CLUSTER_URLS`, `ETCD_ENDPOINTS`, `CONCURRENCY_LIMIT`,
//! `REQUEST_TIMEOUT`, `LAYERS=none`, ...) are described in `examples/README.md`; `tests/example_axum.rs`
//! checks them against the built example.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use battlement::FailurePolicy;
use battlement::backends::AnyStore;
use battlement::body::LayerBody;
use battlement::circuit_breaker::BreakerConfig;
use battlement::client::{ClientBody, ClientError, ClientStackLayer};
use battlement::concurrency_limit::ConcurrencyLimitConfig;
use battlement::deadline::DeadlineConfig;
use battlement::health::{HealthRegistry, HealthRoutes};
use battlement::idempotency::{IdempotencyConfig, ScopeConfig};
use battlement::rate_limit::{KeyConfig, PolicyConfig, Quota, RateLimitConfig, SyncMode};
use battlement::reload::ConfigWatch;
use battlement::retry::RetryPolicy;
use battlement::stack::{self, StackConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt};
use tracing_subscriber::Layer;
use tracing_subscriber::util::SubscriberInitExt;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the environment asks for.
#[derive(Debug, Clone)]
struct Settings {
    bind: SocketAddr,
    downstream: Uri,
    layers: bool,
    drain: Duration,
    breaker_open: Duration,
    rate_limit: Quota,
    rate_limit_mode: SyncMode,
    trusted_proxies: Vec<ipnet::IpNet>,
    redis_url: Option<String>,
    redis_cluster_urls: Option<Vec<String>>,
    redis_timeout: Duration,
    rate_limit_failure: FailurePolicy,
    etcd_endpoints: Option<Vec<String>>,
    concurrency_limit: Option<ConcurrencyLimitConfig>,
    request_timeout: Duration,
}

impl Settings {
    fn from_env() -> Result<Self, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let bind = var("BIND").unwrap_or_else(|| "127.0.0.1:3000".into());
        let downstream = var("DOWNSTREAM_URL").unwrap_or_else(|| "http://127.0.0.1:3001".into());
        let drain = var("DRAIN_SECS").unwrap_or_else(|| "0".into());
        let breaker_open = var("BREAKER_OPEN").unwrap_or_else(|| "5".into());
        let limit = var("RATE_LIMIT").unwrap_or_else(|| "100/s".into());
        let mut rate_limit: Quota = limit
            .parse()
            .map_err(|e| format!("RATE_LIMIT={limit:?}: {e}"))?;
        if let Some(burst) = var("RATE_BURST") {
            let n = burst
                .parse()
                .map_err(|e| format!("RATE_BURST={burst:?}: {e}"))?;
            rate_limit = rate_limit
                .with_burst(n)
                .map_err(|e| format!("RATE_BURST={burst:?}: {e}"))?;
        }
        let mode = var("RATE_LIMIT_MODE").unwrap_or_else(|| "exact".into());
        let rate_limit_mode = mode
            .parse()
            .map_err(|e| format!("RATE_LIMIT_MODE={mode:?}: {e}"))?;
        let concurrency_limit = match var("CONCURRENCY_LIMIT").as_deref() {
            None | Some("none") => None,
            Some("adaptive") => Some(ConcurrencyLimitConfig::default()),
            Some(n) => Some(ConcurrencyLimitConfig::fixed(n.parse().map_err(|e| {
                format!("CONCURRENCY_LIMIT={n:?}: adaptive, a number or none: {e}")
            })?)),
        };
        let timeout = var("REQUEST_TIMEOUT").unwrap_or_else(|| "30s".into());
        let request_timeout = humantime::parse_duration(&timeout)
            .map_err(|e| format!("REQUEST_TIMEOUT={timeout:?}: {e}"))?;
        let redis_timeout = var("REDIS_TIMEOUT").unwrap_or_else(|| "250ms".into());
        let redis_timeout = humantime::parse_duration(&redis_timeout)
            .map_err(|e| format!("REDIS_TIMEOUT={redis_timeout:?}: {e}"))?;
        let failure = var("RATE_LIMIT_FAILURE").unwrap_or_else(|| "fail_open".into());
        let rate_limit_failure = serde_json::from_value(serde_json::Value::String(failure.clone()))
            .map_err(|_| {
                format!("RATE_LIMIT_FAILURE={failure:?}: fail_open, fail_closed or local_fallback")
            })?;
        let trusted_proxies = var("TRUSTED_PROXIES")
            .map(|list| {
                list.split(',')
                    .map(|c| {
                        c.trim()
                            .parse()
                            .map_err(|e| format!("TRUSTED_PROXIES: {c:?}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            bind: bind.parse().map_err(|e| format!("BIND={bind:?}: {e}"))?,
            downstream: downstream
                .parse()
                .map_err(|e| format!("DOWNSTREAM_URL={downstream:?}: {e}"))?,
            layers: var("LAYERS").as_deref() != Some("none"),
            drain: Duration::from_secs(
                drain
                    .parse()
                    .map_err(|e| format!("DRAIN_SECS={drain:?}: {e}"))?,
            ),
            breaker_open: Duration::from_secs(
                breaker_open
                    .parse()
                    .map_err(|e| format!("BREAKER_OPEN={breaker_open:?}: {e}"))?,
            ),
            rate_limit,
            rate_limit_mode,
            trusted_proxies,
            redis_url: var("REDIS_URL"),
            redis_cluster_urls: var("REDIS_CLUSTER_URLS")
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect()),
            redis_timeout,
            rate_limit_failure,
            etcd_endpoints: var("ETCD_ENDPOINTS")
                .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect()),
            concurrency_limit,
            request_timeout,
        })
    }
}

/// The outbound HTTP client of `/proxy`: the client stack (request-id
/// forwarding, retry, a circuit breaker per host) over hyper-util's pooled
/// client.
type Downstream = tower::util::BoxCloneSyncService<
    http::Request<Empty<Bytes>>,
    http::Response<ClientBody<hyper::body::Incoming>>,
    Error,
>;

#[derive(Clone)]
struct AppState {
    downstream_url: Uri,
    downstream: Downstream,
    orders: Orders,
}

/// The order counter: one number per executed order.
#[derive(Clone)]
enum Orders {
    Local(Arc<AtomicU64>),
    #[cfg(feature = "redis")]
    Redis(redis::aio::ConnectionManager, Duration),
    #[cfg(feature = "redis")]
    Cluster(redis::cluster_async::ClusterConnection, Duration),
}

impl Orders {
    /// The Redis key `example:orders` when `REDIS_URL` (or
    /// `REDIS_CLUSTER_URLS`) is set.
    async fn connect(settings: &Settings) -> Result<Self, Error> {
        #[cfg(feature = "redis")]
        if let Some(urls) = &settings.redis_cluster_urls {
            let client = redis::cluster::ClusterClient::builder(urls.clone())
                .connection_timeout(settings.redis_timeout)
                .response_timeout(settings.redis_timeout)
                .build()?;
            return Ok(Self::Cluster(
                client.get_async_connection().await?,
                settings.redis_timeout,
            ));
        }
        #[cfg(feature = "redis")]
        if let Some(url) = &settings.redis_url {
            let client = redis::Client::open(url.as_str())?;
            let bounded = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(settings.redis_timeout))
                .set_response_timeout(Some(settings.redis_timeout));
            return Ok(Self::Redis(
                client.get_connection_manager_with_config(bounded).await?,
                settings.redis_timeout,
            ));
        }
        let _ = settings;
        Ok(Self::Local(Arc::new(AtomicU64::new(0))))
    }

    async fn next(&self) -> Result<u64, Error> {
        match self {
            Self::Local(n) => Ok(n.fetch_add(1, Ordering::SeqCst) + 1),
            #[cfg(feature = "redis")]
            Self::Redis(conn, timeout) => {
                // Bounded, reconnect included.
                let mut conn = conn.clone();
                let mut incr = redis::cmd("INCR");
                incr.arg("example:orders");
                let call = incr.query_async(&mut conn);
                Ok(tokio::time::timeout(*timeout, call)
                    .await
                    .map_err(|_| "timed out")??)
            }
            #[cfg(feature = "redis")]
            Self::Cluster(conn, timeout) => {
                let mut conn = conn.clone();
                let mut incr = redis::cmd("INCR");
                incr.arg("example:orders");
                let call = incr.query_async(&mut conn);
                Ok(tokio::time::timeout(*timeout, call)
                    .await
                    .map_err(|_| "timed out")??)
            }
        }
    }
}

/// The app and what has to live as long as it.
struct App {
    router: Router,
    /// Its readiness checks (drained on shutdown).
    health: HealthRegistry,
    /// The etcd config watch (it stops when dropped).
    config: Option<ConfigWatch>,
}

/// The stack the environment describes, in one config value: the backend
/// (`REDIS_URL`), the per-IP quota (`RATE_LIMIT`, `RATE_BURST`,
/// `TRUSTED_PROXIES`), idempotency on `POST /orders`, and the `/proxy`
/// client's retry and breaker (`BREAKER_OPEN`).
fn stack_config(settings: &Settings) -> Result<StackConfig, Error> {
    let mut config = StackConfig::default();
    #[cfg(not(feature = "redis"))]
    if let Some(url) = &settings.redis_url {
        return Err(
            format!("REDIS_URL={url} needs: cargo run --example axum --features redis").into(),
        );
    }
    #[cfg(not(feature = "redis"))]
    if settings.redis_cluster_urls.is_some() {
        return Err("REDIS_CLUSTER_URLS needs: cargo run --example axum --features redis".into());
    }
    #[cfg(feature = "redis")]
    if let Some(url) = &settings.redis_url {
        // A roomier per-call timeout than the 50 ms default by default:
        // the demo often shares a small machine with its load generator.
        config.backend = battlement::backends::BackendConfig::Redis(
            battlement::backends::RedisConfig::standalone(url.as_str())
                .with_timeout(settings.redis_timeout),
        );
    }
    #[cfg(feature = "redis")]
    if let Some(urls) = &settings.redis_cluster_urls {
        config.backend = battlement::backends::BackendConfig::Redis(
            battlement::backends::RedisConfig::cluster(urls.iter().map(String::as_str))
                .with_timeout(settings.redis_timeout),
        );
    }
    config.rate_limit = Some(RateLimitConfig {
        policies: vec![PolicyConfig {
            name: "per-ip".into(),
            quota: settings.rate_limit,
            key: Some(KeyConfig::client_ip(
                settings.trusted_proxies.iter().copied(),
            )),
            mode: settings.rate_limit_mode,
        }],
        failure: settings.rate_limit_failure,
        ..RateLimitConfig::default()
    });
    // Each Idempotency-Key executes once, even across instances, and
    // belongs to its client: `Authorization`, else the client's address
    // (behind `TRUSTED_PROXIES`, the one they forward for).
    config.idempotency = Some(IdempotencyConfig {
        routes: vec!["/orders".into()],
        required: true,
        scope: ScopeConfig::Authorization {
            trusted_proxies: settings.trusted_proxies.clone(),
        },
        ..IdempotencyConfig::default()
    });
    // Load is shed before it queues (health routes never are), and no
    // request runs past REQUEST_TIMEOUT.
    config.concurrency_limit = settings.concurrency_limit.clone();
    config.deadline = Some(DeadlineConfig::new(settings.request_timeout));
    config.client.breaker = Some(BreakerConfig::default().open_for(settings.breaker_open));
    // A deadline shorter than the breaker's open time: a caller waits at
    // most 3 s, never for an open breaker (/proxy answers 503 at once).
    config.client.retry = Some(
        RetryPolicy::default()
            .per_try_timeout(Duration::from_secs(2))
            .deadline(Duration::from_secs(3).min(settings.breaker_open)),
    );
    Ok(config)
}

/// The routes; `/proxy` calls the downstream through `client`.
fn routes(settings: &Settings, client: ClientStackLayer<AnyStore>, orders: Orders) -> Router {
    let http: Client<HttpConnector, LayerBody<Empty<Bytes>>> =
        Client::builder(TokioExecutor::new()).build_http();
    let state = AppState {
        downstream_url: settings.downstream.clone(),
        downstream: Downstream::new(ServiceBuilder::new().layer(client).service(http)),
        orders,
    };
    Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/items/{id}", get(item))
        .route("/orders", post(order))
        .route("/proxy", get(proxy))
        .route("/slow", get(slow))
        .with_state(state)
}

/// Answers after `ms` milliseconds (at most a minute).
async fn slow(axum::extract::Query(q): axum::extract::Query<SlowQuery>) -> String {
    let ms = q.ms.min(60_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slept {ms} ms")
}

#[derive(serde::Deserialize)]
struct SlowQuery {
    #[serde(default)]
    ms: u64,
}

/// The item `id`. Its application span and log record belong to the
/// request's trace, under the server span.
async fn item(Path(id): Path<String>) -> axum::Json<serde_json::Value> {
    let _span = tracing::info_span!("load item").entered();
    tracing::info!(item = %id, "item loaded");
    axum::Json(serde_json::json!({ "id": id }))
}

/// Places an order: the next number of the counter and the request body.
async fn order(
    State(state): State<AppState>,
    headers: http::HeaderMap,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    tracing::info!(key, "order executed");
    match state.orders.next().await {
        Ok(n) => (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({ "order": n, "body": body })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("order counter: {e}"),
        )
            .into_response(),
    }
}

/// Calls the downstream and relays its status and body (at most 1 MiB);
/// 503 with `Retry-After` while its breaker is open.
async fn proxy(State(state): State<AppState>) -> Response {
    let request = match http::Request::get(state.downstream_url.clone()).body(Empty::new()) {
        Ok(request) => request,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let response = match state.downstream.oneshot(request).await {
        Ok(response) => response,
        Err(e) => {
            return match ClientError::from_box(e) {
                ClientError::CircuitOpen(open) => battlement::reject::Problem::from(open)
                    .into_response::<Body>(battlement::reject::Protocol::Http)
                    .map(Body::new),
                ClientError::AttemptTimedOut(_) | ClientError::DeadlineExceeded(_) => {
                    (StatusCode::GATEWAY_TIMEOUT, "downstream timed out").into_response()
                }
                other => (StatusCode::BAD_GATEWAY, format!("downstream: {other}")).into_response(),
            };
        }
    };
    let (parts, body) = response.into_parts();
    match Limited::new(body, 1 << 20).collect().await {
        Ok(body) => (parts.status, Body::from(body.to_bytes())).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("downstream body: {e}")).into_response(),
    }
}

/// Builds the app: the server preset from [`stack_config`] (connecting
/// the backend and registering its readiness check), the `/proxy` client
/// preset on the same store, and the etcd config watch when
/// `ETCD_ENDPOINTS` is set; with `LAYERS=none`, the bare routes.
async fn build(settings: &Settings, metrics: Router) -> Result<App, Error> {
    let config = stack_config(settings)?;
    let server = stack::server(&config).await?;
    let client = stack::client("downstream", &config.client, server.store().clone())?;
    let watch = match &settings.etcd_endpoints {
        None => None,
        #[cfg(feature = "etcd")]
        Some(endpoints) => {
            let etcd = battlement::backends::EtcdStore::connect(endpoints.clone()).await?;
            server
                .health()
                .register(battlement::health::store_check(etcd.clone()));
            // Quotas and breaker thresholds under /battlement/config/:
            // rate_limit/per-ip and circuit_breaker/downstream.
            let source = battlement::reload::EtcdConfigSource::new(&etcd);
            let reloader = server
                .reloader(battlement::reload::ConfigReloader::new(source))
                .circuit_breaker(client.breakers());
            Some(reloader.start()?)
        }
        #[cfg(not(feature = "etcd"))]
        Some(endpoints) => {
            return Err(format!(
                "ETCD_ENDPOINTS={endpoints:?} needs: cargo run --example axum --features etcd"
            )
            .into());
        }
    };
    let orders = Orders::connect(settings).await?;
    let api = routes(settings, client, orders);
    let router = match settings.layers {
        true => server.router_with(api, metrics),
        false => api
            .merge(HealthRoutes::new(server.health().clone()).router())
            .merge(metrics),
    };
    Ok(App {
        router,
        health: server.health().clone(),
        config: watch,
    })
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // OpenTelemetry from the OTEL_* variables; flushed when `telemetry`
    // drops at the end of main.
    let telemetry = battlement::telemetry::init("battlement-example-axum")?;
    // RUST_LOG filters the log lines only (printed, and exported as OTLP
    // logs with their trace ids when OTEL_EXPORTER_OTLP_ENDPOINT is set):
    // spans are exported and the caller's trace is passed downstream at
    // any log level. At `info`, the preset's access log writes one line
    // per request (`RUST_LOG=info,battlement::access=warn` keeps only
    // its errors).
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    telemetry
        .subscriber(
            telemetry
                .logs(tracing_subscriber::fmt::layer())
                .with_filter(filter),
        )
        .init();
    let settings = Settings::from_env()?;
    let app = build(&settings, telemetry.metrics_router()).await?;
    if let Some(config) = &app.config {
        // Serve on the built-in values if etcd does not answer at once; the
        // watch keeps trying and applies the documents when it does.
        if tokio::time::timeout(Duration::from_secs(2), config.loaded())
            .await
            .is_err()
        {
            tracing::warn!("config not loaded from etcd yet; serving the built-in values");
        }
    }
    let listener = tokio::net::TcpListener::bind(settings.bind).await?;
    tracing::info!(addr = %settings.bind, layers = settings.layers, "listening");
    // With connect info (per-client keys read the peer address); on
    // SIGINT or SIGTERM readiness fails, and the listener closes after
    // DRAIN_SECS.
    stack::serve(listener, app.router.clone())
        .with_graceful_shutdown(app.health.shutdown_on_signal(settings.drain))
        .await?;
    Ok(())
}
