//! Closed-state overhead of the circuit breaker next to tower-resilience's
//! circuit breaker, in one run.
//!
//! Run with: `cargo bench --bench circuit_breaker`
//!
//! One GET through each layer to a service answering 200 at once: the bare
//! service, tower-resilience's `CircuitBreakerLayer` (count window of 100,
//! 50 %), battlement's `CircuitBreakerLayer` (the same thresholds, on
//! `MemoryStore`, HTTP/gRPC-aware classifier, the outcome taken when the
//! response head arrives). `single/*` runs on one thread; `two-threads/*`
//! runs two tasks on a two-worker runtime and reports the time per call.
#![allow(missing_docs)] // criterion_group! makes undocumented items

use std::convert::Infallible;
use std::time::Instant;

use battlement::backends::MemoryStore;
use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerLayer, Window};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

type Body = Full<Bytes>;

fn get() -> Request<Body> {
    Request::get("http://upstream/items/1")
        .body(Body::default())
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn ok(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::default()))
}

fn bench<S>(c: &mut Criterion, name: &str, svc: S)
where
    S: Service<Request<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Response: Send,
    S::Error: std::fmt::Debug + Send,
{
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    c.bench_function(&format!("circuit_breaker/closed/single/{name}"), |b| {
        b.to_async(&single).iter(|| svc.clone().oneshot(get()))
    });
    let two = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    c.bench_function(&format!("circuit_breaker/closed/two-threads/{name}"), |b| {
        b.to_async(&two).iter_custom(|iters| {
            let svc = svc.clone();
            async move {
                let started = Instant::now();
                let tasks: Vec<_> = (0..2)
                    .map(|t| {
                        let svc = svc.clone();
                        tokio::spawn(async move {
                            for _ in (t..iters).step_by(2) {
                                let _ = svc.clone().oneshot(get()).await;
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    let _ = task.await;
                }
                started.elapsed()
            }
        })
    });
}

fn closed(c: &mut Criterion) {
    bench(c, "bare", service_fn(ok));
    let resilience = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .failure_rate_threshold(0.5)
        .sliding_window_size(100)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    bench(
        c,
        "tower-resilience",
        ServiceBuilder::new()
            .layer(resilience)
            .service(service_fn(ok)),
    );
    let config = BreakerConfig::default()
        .window(Window::Count(100))
        .failure_rate(50.0);
    // The breaker's background sync task needs a runtime to start in.
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let _guard = rt.enter();
    let layer = CircuitBreakerLayer::new("bench", MemoryStore::new(), config)
        .unwrap_or_else(|e| panic!("{e}"));
    bench(
        c,
        "battlement",
        ServiceBuilder::new().layer(layer).service(service_fn(ok)),
    );
}

criterion_group!(benches, closed);
criterion_main!(benches);
