//! Allocations per request of the full server preset next to bare axum,
//! counted in process (`stats_alloc` around the system allocator).
//!
//! Run with: `cargo bench --bench stack_allocations`
//!
//! The same apps as `benches/stack.rs` (the `/hello` route bare, and behind
//! `battlement::stack::server` with trace, metrics, rate limit and
//! idempotency), called with `tower::ServiceExt::oneshot`; the response
//! body is read to its end.
#![allow(missing_docs)]

use std::alloc::System;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use battlement::stack::{
    self, IdempotencySettings, KeySettings, PolicySettings, RateLimitSettings, StackConfig,
};
use http_body_util::BodyExt;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tower::ServiceExt;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: u64 = 10_000;

fn allocated() -> u64 {
    let stats = GLOBAL.stats();
    (stats.allocations + stats.reallocations) as u64
}

fn routes() -> Router {
    Router::new().route("/hello", get(|| async { "hello" }))
}

async fn per_request(app: &Router) -> f64 {
    let request = || {
        let mut req = http::Request::get("/hello")
            .body(Body::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(SocketAddr::from((
                [127, 0, 0, 1],
                40000,
            ))));
        req
    };
    let mut before = 0;
    for i in 0..REQUESTS + 100 {
        // The first 100 warm up (lazy statics, first series).
        if i == 100 {
            before = allocated();
        }
        let res = app
            .clone()
            .oneshot(request())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = res.into_body().collect().await;
    }
    (allocated() - before) as f64 / REQUESTS as f64
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let telemetry = battlement::telemetry::init("bench").unwrap_or_else(|e| panic!("{e}"));
        {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            tracing_subscriber::registry()
                .with(telemetry.tracing_layer())
                .init();
        }
        let config = StackConfig {
            rate_limit: Some(RateLimitSettings {
                policies: vec![PolicySettings {
                    name: "per-ip".into(),
                    quota: battlement::rate_limit::Quota::per_second(10_000_000)
                        .unwrap_or_else(|e| panic!("{e}")),
                    key: KeySettings::ClientIp {
                        trusted_proxies: Vec::new(),
                    },
                }],
                ..RateLimitSettings::default()
            }),
            idempotency: Some(IdempotencySettings {
                routes: vec!["/orders".into()],
                required: true,
                ..IdempotencySettings::default()
            }),
            ..StackConfig::default()
        };
        // STACK_WITHOUT=trace,metrics,... as in benches/stack.rs.
        let without = std::env::var("STACK_WITHOUT").unwrap_or_default();
        let off = |name: &str| without.split(',').any(|w| w.trim() == name);
        let config = StackConfig {
            request_id: battlement::stack::Switch {
                enabled: !off("request_id"),
            },
            trace: battlement::stack::Switch {
                enabled: !off("trace"),
            },
            metrics: battlement::stack::Switch {
                enabled: !off("metrics"),
            },
            rate_limit: config.rate_limit.filter(|_| !off("rate_limit")),
            idempotency: config.idempotency.filter(|_| !off("idempotency")),
            ..config
        };
        let full = stack::server(&config)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .router(routes());
        let bare = per_request(&routes()).await;
        let full = per_request(&full).await;
        println!("allocations per request: bare {bare:.1}, full stack {full:.1}");
        drop(telemetry);
    });
}
