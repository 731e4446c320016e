//! Run with: cargo run --example tonic
//!
//! Serves gRPC on `BIND` (default `127.0.0.1:50051`), every call behind
//! the server preset (`battlement::stack::server`, as a tonic layer): the
//! request id (a valid incoming `x-request-id` is kept,
//! otherwise a UUIDv7 is made; either way it is echoed in the response
//! metadata and carried by every log line of the call):
//!
//! - `helloworld.Greeter/SayHello`, answering `Hello <name>`;
//! - `grpc.health.v1.Health` (`Check` and `Watch`) from a
//!   [`battlement::HealthRegistry`]: `""` and `helloworld.Greeter` report
//!   readiness;
//! - rate limiting per peer IP: over the quota a call fails with
//!   `RESOURCE_EXHAUSTED` (a trailers-only response with `retry-after`).
//!
//! Environment:
//!
//! - `RATE_LIMIT` (`N/<duration>`: `100/s`, `50/m`, `5/10s`, `3/500ms`;
//!   default `100/s`) and `RATE_BURST` (default N): the per-IP quota;
//! - `REDIS_URL`: connect to Redis, keep the rate-limit state there (shared
//!   by every instance) and add Redis to readiness (build with
//!   `--features redis`);
//! - `ETCD_ENDPOINTS`: comma-separated etcd endpoints, added to readiness
//!   (build with `--features etcd`);
//! - `DRAIN_SECS` (default 0): on ctrl-c, readiness turns `NOT_SERVING`
//!   at once, then the server waits this long before shutting down
//!   gracefully, so load balancers stop sending traffic first;
//! - `RUST_LOG` (default `info`): the log lines written; spans are
//!   exported whatever it says.
//!
//! ```text
//! grpcurl -plaintext -import-path examples/tonic -proto helloworld.proto \
//!     -d '{"name":"Ferris"}' 127.0.0.1:50051 helloworld.Greeter/SayHello
//! ```

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use battlement::backends::BackendConfig;
use battlement::health::{Group, GrpcHealth, HealthRegistry};
use battlement::rate_limit::{KeyConfig, PolicyConfig, Quota, RateLimitConfig};
use battlement::stack::{self, GrpcStackLayer, ServerStack, StackConfig};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use helloworld::greeter_server::{Greeter, GreeterServer};
use helloworld::{HelloReply, HelloRequest};

/// The code generated from `helloworld.proto` (see the header of
/// `helloworld.rs` for how).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod helloworld {
    include!("helloworld.rs");
}

type BoxError = Box<dyn Error>;

/// `helloworld.Greeter`.
#[derive(Debug, Default)]
struct Hello;

#[tonic::async_trait]
impl Greeter for Hello {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        tracing::info!(%name, "SayHello");
        Ok(Response::new(HelloReply {
            message: format!("Hello {name}"),
        }))
    }
}

/// The gRPC services: the greeter and the health service over `registry`.
fn app(registry: HealthRegistry) -> Routes {
    let health = GrpcHealth::new(registry)
        .service(helloworld::greeter_server::SERVICE_NAME, Group::Readiness)
        .into_server();
    Routes::new(GreeterServer::new(Hello)).add_service(health)
}

/// The server preset (request id, trace, metrics, a per-peer-IP `quota`),
/// its state in Redis at `redis_url` when given (which readiness then
/// checks).
async fn preset(quota: Quota, redis_url: Option<String>) -> Result<ServerStack, BoxError> {
    let backend = match redis_url {
        None => BackendConfig::default(),
        #[cfg(feature = "redis")]
        Some(url) => {
            BackendConfig::Redis(battlement::backends::RedisConfig::standalone(url.as_str()))
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => return Err(rebuild_with("REDIS_URL", "redis")),
    };
    let config = StackConfig {
        backend,
        rate_limit: Some(RateLimitConfig {
            policies: vec![PolicyConfig {
                name: "per-ip".into(),
                quota,
                key: Some(KeyConfig::peer_ip()),
                mode: Default::default(),
            }],
            ..RateLimitConfig::default()
        }),
        ..StackConfig::default()
    };
    Ok(stack::server(&config)
        .await
        .map_err(|e| format!("server stack: {e}"))?)
}

/// Serves [`app`] behind the preset's layers on `listener` until
/// `shutdown` completes, then finishes the calls in flight.
async fn serve(
    listener: TcpListener,
    registry: HealthRegistry,
    layers: GrpcStackLayer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .layer(layers)
        .add_routes(app(registry))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()
        .map_err(|e| format!("RUST_LOG: {e}"))?;
    // OpenTelemetry from the OTEL_* variables, flushed when main returns.
    let telemetry = battlement::telemetry::init("battlement-example-tonic")?;
    {
        use tracing_subscriber::Layer;
        use tracing_subscriber::util::SubscriberInitExt;
        // The filter on the log layer only: spans are exported at any
        // log level.
        telemetry
            .subscriber(
                telemetry
                    .logs(tracing_subscriber::fmt::layer())
                    .with_filter(filter),
            )
            .init();
    }

    let bind: SocketAddr = env_var("BIND")?
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned())
        .parse()
        .map_err(|e| format!("BIND: expected an address like 127.0.0.1:50051: {e}"))?;
    let drain = match env_var("DRAIN_SECS")? {
        Some(secs) => Duration::from_secs(
            secs.parse()
                .map_err(|e| format!("DRAIN_SECS: expected whole seconds, got {secs:?}: {e}"))?,
        ),
        None => Duration::ZERO,
    };

    let mut quota: Quota = env_var("RATE_LIMIT")?
        .unwrap_or_else(|| "100/s".to_owned())
        .parse()
        .map_err(|e| format!("RATE_LIMIT: {e}"))?;
    if let Some(burst) = env_var("RATE_BURST")? {
        let burst = burst.parse().map_err(|e| format!("RATE_BURST: {e}"))?;
        quota = quota
            .with_burst(burst)
            .map_err(|e| format!("RATE_BURST: {e}"))?;
    }

    let server = preset(quota, env_var("REDIS_URL")?).await?;
    let registry = server.health().clone();
    register_backends(&registry).await?;

    let listener = TcpListener::bind(bind)
        .await
        .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving helloworld.Greeter and grpc.health.v1.Health");

    let shutdown = registry.clone().shutdown_on_signal(drain);
    serve(listener, registry, server.grpc_layer(), shutdown).await?;
    Ok(())
}

/// Adds etcd, when named by the environment, to readiness (the preset
/// checks its own backend).
async fn register_backends(registry: &HealthRegistry) -> Result<(), BoxError> {
    #[cfg(feature = "etcd")]
    if let Some(list) = env_var("ETCD_ENDPOINTS")? {
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        let store = battlement::backends::EtcdStore::connect(endpoints)
            .await
            .map_err(|e| format!("ETCD_ENDPOINTS: {e}"))?;
        registry.register(battlement::health::store_check(store));
        tracing::info!("readiness checks etcd");
    }
    #[cfg(not(feature = "etcd"))]
    if env_var("ETCD_ENDPOINTS")?.is_some() {
        return Err(rebuild_with("ETCD_ENDPOINTS", "etcd"));
    }

    #[cfg(not(any(feature = "redis", feature = "etcd")))]
    let _ = registry;
    Ok(())
}

#[cfg(not(all(feature = "redis", feature = "etcd")))]
fn rebuild_with(var: &str, feature: &str) -> BoxError {
    format!(
        "{var} is set but this example was built without the `{feature}` feature; \
         run it with `cargo run --example tonic --features {feature}`"
    )
    .into()
}

/// The variable `name`, `None` when unset or empty.
fn env_var(name: &str) -> Result<Option<String>, BoxError> {
    match std::env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(None),
        Ok(value) => Ok(Some(value)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(err) => Err(format!("{name}: {err}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::transport::Channel;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    use helloworld::greeter_client::GreeterClient;

    /// Starts the example's server on an ephemeral loopback port.
    async fn start(registry: HealthRegistry) -> Channel {
        start_with(registry, Quota::per_second(100).unwrap()).await
    }

    async fn start_with(registry: HealthRegistry, quota: Quota) -> Channel {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let layers = preset(quota, None).await.unwrap().grpc_layer();
        tokio::spawn(serve(listener, registry, layers, std::future::pending()));
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn hello(name: &str) -> Request<HelloRequest> {
        Request::new(HelloRequest {
            name: name.to_owned(),
        })
    }

    fn request_id<T>(response: &Response<T>) -> &str {
        response
            .metadata()
            .get("x-request-id")
            .expect("x-request-id in the response metadata")
            .to_str()
            .unwrap()
    }

    #[tokio::test]
    async fn say_hello_answers_with_a_uuid_v7_request_id() {
        let mut client = GreeterClient::new(start(HealthRegistry::new()).await);
        let response = client.say_hello(hello("Ferris")).await.unwrap();
        assert_eq!(response.get_ref().message, "Hello Ferris");
        let id = uuid::Uuid::parse_str(request_id(&response)).unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    #[tokio::test]
    async fn a_valid_incoming_request_id_is_echoed() {
        let mut client = GreeterClient::new(start(HealthRegistry::new()).await);
        let mut request = hello("Ferris");
        request
            .metadata_mut()
            .insert("x-request-id", "abc-123_X.y:z".parse().unwrap());
        let response = client.say_hello(request).await.unwrap();
        assert_eq!(request_id(&response), "abc-123_X.y:z");

        let mut request = hello("Ferris");
        request
            .metadata_mut()
            .insert("x-request-id", "not;valid".parse().unwrap());
        let response = client.say_hello(request).await.unwrap();
        let id = uuid::Uuid::parse_str(request_id(&response)).unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    #[tokio::test]
    async fn calls_over_the_quota_are_resource_exhausted() {
        let quota = Quota::per_minute(2).unwrap();
        let channel = start_with(HealthRegistry::new(), quota).await;
        let mut client = GreeterClient::new(channel.clone());
        for _ in 0..2 {
            client.say_hello(hello("Ferris")).await.unwrap();
        }
        let status = client.say_hello(hello("Ferris")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("rate limited by policy per-ip"),
            "{status:?}"
        );
        assert_eq!(status.metadata().get("retry-after").unwrap(), "30");
        assert!(status.metadata().get("x-request-id").is_some());
        // Health probes are not rate limited.
        let mut health = HealthClient::new(channel);
        for _ in 0..3 {
            let probe = HealthCheckRequest {
                service: String::new(),
            };
            let reply = health.check(probe).await.unwrap().into_inner();
            assert_eq!(reply.status(), ServingStatus::Serving);
        }
    }

    #[tokio::test]
    async fn health_reports_the_greeter_from_readiness() {
        let registry = HealthRegistry::new();
        let mut health = HealthClient::new(start(registry.clone()).await);
        let check = |service: &str| HealthCheckRequest {
            service: service.to_owned(),
        };
        for service in ["", "helloworld.Greeter"] {
            let status = health
                .check(check(service))
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
        }
        registry.drain();
        let status = health
            .check(check("helloworld.Greeter"))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::NotServing as i32);
    }

    /// Issue acceptance: a call makes a server span named after the RPC
    /// with `rpc.*` attributes, and the `rpc.server.call.duration` metric.
    #[tokio::test]
    async fn a_call_makes_an_rpc_span_and_duration_metric() {
        use opentelemetry::metrics::MeterProvider as _;
        use opentelemetry_sdk::metrics::{
            InMemoryMetricExporter, PeriodicReader, SdkMeterProvider,
        };
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

        // The trace layer takes the global tracer provider at its first
        // request.
        let spans = InMemorySpanExporter::default();
        let tracers = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        opentelemetry::global::set_tracer_provider(tracers.clone());
        let metrics = InMemoryMetricExporter::default();
        let meters = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(metrics.clone()).build())
            .build();
        opentelemetry::global::set_meter_provider(meters.clone());
        let _ = meters.meter("warm-up");

        let mut client = GreeterClient::new(start(HealthRegistry::new()).await);
        client.say_hello(hello("Ferris")).await.unwrap();

        let span = {
            let started = std::time::Instant::now();
            loop {
                let found = spans
                    .get_finished_spans()
                    .unwrap()
                    .into_iter()
                    .find(|s| s.name == "helloworld.Greeter/SayHello");
                if let Some(span) = found {
                    break span;
                }
                assert!(started.elapsed() < Duration::from_secs(5), "no rpc span");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let attr = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attr("rpc.service").as_deref(), Some("helloworld.Greeter"));
        assert_eq!(attr("rpc.method").as_deref(), Some("SayHello"));
        assert_eq!(attr("rpc.grpc.status_code").as_deref(), Some("0"));

        meters.force_flush().unwrap();
        let names: Vec<String> = metrics
            .get_finished_metrics()
            .unwrap()
            .iter()
            .flat_map(|rm| rm.scope_metrics())
            .flat_map(|sm| sm.metrics())
            .map(|m| m.name().to_owned())
            .collect();
        assert!(
            names.iter().any(|n| n == "rpc.server.call.duration"),
            "{names:?}"
        );
    }
}
