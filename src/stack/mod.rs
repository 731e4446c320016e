//! The assembled stack: server and client presets built from one
//! [`StackConfig`], and [`ServiceBuilderExt`] for hand-made stacks.
//!
//! ```
//! use battlement::stack::{self, StackConfig};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let config = StackConfig::from_toml(r#"
//!     [backend]
//!     kind = "memory"          # or "redis" with urls = [...], or "etcd"
//!
//!     [[rate_limit.policies]]
//!     name = "per-ip"
//!     quota = { count = 100, period = "1s" }
//!     key = { by = "peer_ip" }
//!
//!     [idempotency]
//!     routes = ["/orders"]
//! "#).unwrap();
//! let server = stack::server(&config).await.unwrap();
//! # #[cfg(feature = "axum")]
//! let app: axum::Router = server.router(axum::Router::new());
//! let client = stack::client("upstream", &config.client, server.store().clone()).unwrap();
//! # drop(client);
//! # });
//! ```
//!
//! # Server order, outermost first
//!
//! 1. **Request id**: first, so every log line, span, metric exemplar and
//!    rejection below it carries the id, and the response echoes it even
//!    when a later layer rejects the request.
//! 2. **Trace**: the server span covers everything after it, so a 429 or
//!    503 from a later layer shows in the trace (with status unset for 4xx,
//!    error for 5xx), and it records the request id. Whether a request is
//!    traced is decided before its span is built, by the sampler
//!    [`telemetry::init`](crate::telemetry::init) read from
//!    `OTEL_TRACES_SAMPLER`: an unsampled request costs a plain `tracing`
//!    span, not an OpenTelemetry one. The trace and metrics layers take
//!    the installed sampler and meter provider at their first request, so
//!    the stack may be built before `telemetry::init` runs.
//! 3. **Metrics**: counts every response, rejections included, under the
//!    route template.
//! 4. **Concurrency limit** (optional): sheds what the server cannot take
//!    at once, with a compare-and-swap and no store call, so overload is
//!    refused before any other work; its adaptive limit measures the
//!    latency of everything below it.
//! 5. **Deadline** (optional): the request's time runs from here, so the
//!    store calls of the layers below count against it; a request cut at
//!    its deadline gives its concurrency slot back at once, unless an
//!    idempotent handler runs on to store its outcome (it keeps the slot
//!    until it ends).
//! 6. **Rate limit**: the cheapest refusal that needs the store, before any
//!    work; before idempotency so that a client retrying one key in a loop
//!    is limited too, and a denied request never claims a key.
//! 7. **Circuit breaker** (server side, optional): sheds load while the
//!    service itself fails; after the rate limiter so that denials do not
//!    count as outcomes.
//! 8. **Idempotency**: innermost, around the handler: only admitted
//!    requests claim keys, and a replay is what the handler answered.
//!
//! Health routes (and extra routes such as `/metrics`) sit under the first
//! three only: probes are never shed, timed out or rate limited. They get a
//! request id, but are neither traced nor counted in the request metrics
//! unless the config says so (`[trace] trace_probes = true`,
//! `[metrics] count_probes = true`): a probe every few seconds would bury
//! the traffic the traces and metrics are for.
//! [`ServiceBuilderExt`] has a method for each layer, to assemble the same
//! order by hand.
//!
//! # Client order, outermost first
//!
//! Request id forwarding, then **retry** (it wraps everything per attempt),
//! the **hedge** when configured (a second copy of a slow attempt), then
//! per attempt (and per copy) the client **trace** span and **metrics**, the
//! **breaker** per upstream host (an open breaker fails an attempt at once,
//! and retry honours its `retry_after`), and the client **rate limit**
//! innermost (a denied attempt never reaches the network).

mod client;
mod config;
mod ext;
#[cfg(feature = "tonic")]
mod grpc;
mod optional;
mod plain;
mod resolved;
#[cfg(feature = "axum")]
mod router;
mod server;

pub use client::client;
pub use config::{
    AccessLogSettings, ClientSettings, ConfigSourceSettings, HealthSettings, MetricsSettings,
    PathPattern, RequestIdSettings, ServerBreakerSettings, SpanNameRule, StackConfig,
    TelemetrySettings, TraceSettings,
};
pub use ext::ServiceBuilderExt;
#[cfg(feature = "tonic")]
pub use grpc::{GrpcService, GrpcStackLayer, GrpcStackService};
pub use plain::{Probes, ServerStackLayer, ServerStackService, StackFuture};
#[cfg(feature = "axum")]
pub use router::{Served, serve};
pub use server::{ServerStack, StackError, server};
