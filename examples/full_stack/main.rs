//! The full stack in one config: the README's example, compiled.
//!
//! Run with: `cargo run --example full_stack`, then
//! `curl -i 127.0.0.1:3000/hello` (an `x-request-id`, `RateLimit` headers),
//! `curl -i -X POST 127.0.0.1:3000/orders` (400: no `Idempotency-Key`),
//! `curl 127.0.0.1:3000/readyz` and `curl 127.0.0.1:3000/metrics`.
//! Listens on `BIND` (default `127.0.0.1:3000`).

use axum::Router;
use axum::routing::{get, post};
use battlement::stack::{self, StackConfig};
use tracing_subscriber::{EnvFilter, Layer, fmt, util::SubscriberInitExt};

const CONFIG: &str = r#"
    [backend]                 # kind = "redis", urls = [...]: shared by every instance
    kind = "memory"

    [[rate_limit.policies]]   # 100/s per client behind the load balancer
    name = "per-ip"
    quota = { count = 100, period = "1s" }
    key = { by = "client_ip", trusted_proxies = ["10.0.0.0/8"] }

    [idempotency]             # Idempotency-Key required on POST /orders
    routes = ["/orders"]
    required = true

    [client.breaker]          # the client preset: one breaker per upstream host
    failure_rate = 50.0
    open_for = "5s"

    [telemetry]               # OTEL_SERVICE_NAME overrides it
    service_name = "shop"
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = StackConfig::from_toml(CONFIG)?;
    // OpenTelemetry (and its head sampler) from the OTEL_* variables.
    let telemetry = config.telemetry.init()?;
    // RUST_LOG filters log lines (printed, and OTLP logs), never spans.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = telemetry.logs(fmt::layer()).with_filter(filter);
    telemetry.subscriber(logs).init();
    let server = stack::server(&config).await?;
    let api = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/orders", post(|| async { "created" }));
    // Health routes and /metrics: not rate limited.
    let app = server.router_with(api, telemetry.metrics_router());

    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(bind).await?;
    // With connect info (per-IP keys need the client's address); on
    // SIGINT or SIGTERM readiness fails first, then the listener closes.
    server
        .serve(listener, app, std::time::Duration::from_secs(1))
        .await?;
    Ok(())
}
