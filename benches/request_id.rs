//! Request-id layer cost next to tower-http's, in the same run.
//!
//! Run with: `cargo bench --bench request_id`
//!
//! Each case sends one request through the layer to a no-op service:
//! `bare` (no layer), `tower-http` (`SetRequestIdLayer` with UUIDv4 +
//! `PropagateRequestIdLayer`), `battlement` (`RequestIdLayer`, UUIDv7, span
//! off) and `battlement+span` (the default, with the `request` span; no
//! subscriber installed, as in a service that filters it out). Each case is
//! measured with and without a valid incoming id.

#![allow(missing_docs)] // criterion_group! makes undocumented items

use std::convert::Infallible;

use battlement::RequestIdLayer;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

fn noop()
-> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future = impl Send> + Clone
{
    service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) })
}

fn request(incoming: bool) -> Request<()> {
    let mut b = Request::get("/hello");
    if incoming {
        b = b.header("x-request-id", "0192f5d2-8f3a-7cc1-9a35-4f5b3f0e6a11");
    }
    b.body(()).unwrap_or_default()
}

fn bench<S>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, svc: S)
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone,
{
    for incoming in [false, true] {
        let label = if incoming { "incoming" } else { "generated" };
        c.bench_function(&format!("request_id/{label}/{name}"), |b| {
            b.to_async(rt)
                .iter(|| svc.clone().oneshot(request(incoming)))
        });
    }
}

fn request_id(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    bench(c, &rt, "bare", noop());
    bench(
        c,
        &rt,
        "tower-http",
        ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .service(noop()),
    );
    bench(
        c,
        &rt,
        "battlement",
        ServiceBuilder::new()
            .layer(RequestIdLayer::new().span(false))
            .service(noop()),
    );
    bench(
        c,
        &rt,
        "battlement+span",
        ServiceBuilder::new()
            .layer(RequestIdLayer::new())
            .service(noop()),
    );
}

criterion_group!(benches, request_id);
criterion_main!(benches);
