//! Retry-layer overhead on the success path, next to tower-resilience's
//! retry, in one run.
//!
//! Run with: `cargo bench --bench retry`
//!
//! One GET (empty body) through each layer to a service answering 200 at
//! once: the bare service, tower-resilience's `RetryLayer` (3 attempts,
//! exponential back-off; it needs clonable requests), and battlement's
//! `RetryLayer` with its defaults (3 attempts, budget on, a 30 s deadline
//! timer per request, body kept for replay) and without the deadline.
#![allow(missing_docs)] // criterion_group! makes undocumented items

use std::convert::Infallible;
use std::time::Duration;

use battlement::retry::{RetryLayer, RetryPolicy};
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

async fn ok<B>(_: Request<B>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Body::default()))
}

fn bench<S>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, svc: S)
where
    S: Service<Request<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    c.bench_function(&format!("retry/success/{name}"), |b| {
        b.to_async(rt).iter(|| svc.clone().oneshot(get()))
    });
}

fn success(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    bench(c, &rt, "bare", service_fn(ok::<Body>));
    let resilience =
        tower_resilience::retry::RetryLayer::<Request<Body>, Response<Body>, Infallible>::builder()
            .max_attempts(3)
            .exponential_backoff(Duration::from_millis(100))
            .build();
    bench(
        c,
        &rt,
        "tower-resilience",
        ServiceBuilder::new()
            .layer(resilience)
            .service(service_fn(ok::<Body>)),
    );
    for (name, policy) in [
        ("battlement", RetryPolicy::default()),
        (
            "battlement-no-deadline",
            RetryPolicy::default().no_deadline(),
        ),
    ] {
        let layer = RetryLayer::new(policy).unwrap_or_else(|e| panic!("{e}"));
        bench(
            c,
            &rt,
            name,
            ServiceBuilder::new()
                .layer(layer)
                .service(service_fn(ok::<battlement::body::LayerBody<Body>>)),
        );
    }
}

criterion_group!(benches, success);
criterion_main!(benches);
