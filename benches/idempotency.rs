//! Idempotency costs on memory and Redis, next to the bare service, in one
//! run.
//!
//! Run with: `cargo bench --features redis --bench idempotency`
//!
//! - `replay/*`: a POST whose key completed earlier, through the layer to
//!   a service answering 1 KiB: the bare service (no layer, executes), the
//!   layer on `MemoryStore` and on a local `redis-server` (replays).
//! - `claim+complete/*`: one new key claimed and its 1 KiB response stored,
//!   straight on the store.
#![allow(missing_docs)] // criterion_group! makes undocumented items

#[path = "../tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::time::Duration;

use battlement::backends::{MemoryStore, RedisStore};
use battlement::body::LayerBody;
use battlement::idempotency::{
    Claim, ClaimToken, Claimant, Completion, Fingerprint, IdempotencyLayer, IdempotencyStore,
    StoredResponse,
};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

const KIB: &[u8] = &[b'x'; 1024];

fn post() -> Request<Full<Bytes>> {
    Request::post("/orders")
        .header("idempotency-key", "\"bench-order\"")
        // Keys are kept per client: here, its address.
        .extension(battlement::key::PeerAddr(([192, 0, 2, 1], 40000).into()))
        .body(Full::new(Bytes::from_static(b"{\"item\":\"tea\"}")))
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn kib<B>(_: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(KIB))))
}

fn bench_replay<S>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, svc: S)
where
    S: Service<Request<Full<Bytes>>, Response = Response<LayerBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    c.bench_function(&format!("idempotency/replay/{name}"), |b| {
        b.to_async(rt).iter(|| {
            let svc = svc.clone();
            async move {
                if let Ok(res) = svc.oneshot(post()).await {
                    let _ = res.into_body().collect().await;
                }
            }
        })
    });
}

fn replay(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let bare = service_fn(|req: Request<Full<Bytes>>| async move {
        kib(req).await.map(|r| r.map(LayerBody::inner))
    });
    bench_replay(c, &rt, "bare-service", bare);

    let memory = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service(service_fn(kib::<LayerBody<Full<Bytes>>>));
    rt.block_on(memory.clone().oneshot(post()))
        .unwrap_or_else(|e| match e {});
    bench_replay(c, &rt, "battlement-memory", memory);

    let server = support::RedisServer::start();
    let redis = rt
        .block_on(RedisStore::connect(&server.url()))
        .unwrap_or_else(|e| panic!("{e}"));
    let over_redis = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(redis))
        .service(service_fn(kib::<LayerBody<Full<Bytes>>>));
    rt.block_on(over_redis.clone().oneshot(post()))
        .unwrap_or_else(|e| match e {});
    bench_replay(c, &rt, "battlement-redis", over_redis);
}

fn response() -> StoredResponse {
    StoredResponse {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from_static(KIB),
        trailers: None,
    }
}

fn bench_claim<St: IdempotencyStore>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    store: St,
) {
    let fingerprint = Fingerprint::of(&[b"POST", b"/orders", b"{}"]);
    let stored = response();
    let mut n = 0u64;
    c.bench_function(&format!("idempotency/claim+complete/{name}"), |b| {
        b.to_async(rt).iter(|| {
            n += 1;
            let id = format!("bench-{n}");
            let (store, stored) = (store.clone(), stored.clone());
            async move {
                let token = ClaimToken::random();
                if let Ok(Claim::Won) = store
                    .claim(
                        &id,
                        Claimant::new(token, &fingerprint, Duration::from_secs(60)),
                    )
                    .await
                {
                    let _ = store
                        .complete(
                            &id,
                            Completion::new(token, &fingerprint, &stored, Duration::from_secs(60)),
                        )
                        .await;
                }
            }
        })
    });
}

fn claim_complete(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    bench_claim(c, &rt, "memory", MemoryStore::new());
    let server = support::RedisServer::start();
    let redis = rt
        .block_on(RedisStore::connect(&server.url()))
        .unwrap_or_else(|e| panic!("{e}"));
    bench_claim(c, &rt, "redis", redis);
}

criterion_group!(benches, replay, claim_complete);
criterion_main!(benches);
