//! Allocations per request of the full server preset next to bare axum,
//! counted in process (`stats_alloc` around the system allocator).
//!
//! Run with: `cargo bench --bench stack_allocations`
//!
//! The same apps as `benches/stack.rs` (the `/hello` route bare, and behind
//! `battlement::stack::server` with trace, metrics, rate limit and
//! idempotency), and behind the peers' stack (see `common/apps.rs`), each turned into services once (`with_state`, as
//! `axum::serve` does) and called with `tower::ServiceExt::oneshot`; the response
//! body is read to its end.
#![allow(missing_docs)]

#[path = "common/apps.rs"]
mod apps;

use std::alloc::System;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
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
    if !apps::measuring() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let telemetry = apps::telemetry();
        // `with_state` turns every route into a service once, as
        // `axum::serve` does; without it each call would build the route's
        // layers again.
        let full = apps::full(battlement::backends::BackendConfig::default())
            .await
            .with_state(());
        let bare = per_request(&apps::routes().with_state(())).await;
        let full = per_request(&full).await;
        let peers = per_request(&apps::peers().with_state(())).await;
        println!(
            "allocations per request: bare {bare:.1}, full stack {full:.1}, peers' stack {peers:.1}"
        );
        drop(telemetry);
    });
}
