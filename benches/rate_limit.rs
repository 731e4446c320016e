//! Rate-limit cost next to governor and tower_governor, and Redis decision
//! throughput next to a raw `EVALSHA` of a trivial script, in one run.
//!
//! Run with: `cargo bench --features redis --bench rate_limit`
//!
//! - `decision/*`: one allowed decision on one of 1024 keys: battlement's
//!   `MemoryStore` vs governor's keyed limiter (`check_key`).
//! - `layer/*`: one request through the layer to a no-op service, keyed by
//!   peer IP: bare, tower_governor's `GovernorLayer` (without and with its
//!   `x-ratelimit-*` headers), battlement's
//!   `RateLimitLayer` on `MemoryStore`, the same in shadow mode (the same
//!   decisions, no headers rendered), and the same with its quota
//!   hot-reloaded from a config source.
//! - `redis/*`: time per decision with 32 concurrent tasks on one shared
//!   connection to a local `redis-server`: battlement's GCRA script vs
//!   `EVALSHA` of `return 1` through the same redis client, and of a script
//!   that only reads its key and writes it back (the floor of any
//!   read-compute-write limiter, one decision per call).
#![allow(missing_docs)] // criterion_group! makes undocumented items

#[path = "../tests/support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use battlement::backends::{MemoryStore, RedisStore};
use battlement::key::{PeerAddr, PeerIp};
use battlement::rate_limit::{Charge, Policy, Quota, RateLimitLayer, RateLimitStore};
use battlement::reload::{ConfigReloader, MemoryConfigSource};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use http::{Request, Response};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

const KEYS: usize = 1024;
const TASKS: u64 = 32;

fn ips() -> Vec<IpAddr> {
    (0..KEYS)
        .map(|i| IpAddr::from([10, 0, (i / 256) as u8, (i % 256) as u8]))
        .collect()
}

fn decision(c: &mut Criterion) {
    let ips = ips();
    let names: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let per_sec = NonZeroU32::new(1_000_000_000).unwrap_or(NonZeroU32::MIN);
    let governor = governor::RateLimiter::keyed(governor::Quota::per_second(per_sec));
    let mut i = 0;
    c.bench_function("rate_limit/decision/governor-keyed", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            governor.check_key(&ips[i]).is_ok()
        })
    });
    // The store evicts idle keys from a task on the caller's runtime, as
    // in a server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let _runtime = rt.enter();
    let store = MemoryStore::new();
    let quota = Quota::per_second(1_000_000_000).unwrap_or_else(|e| panic!("{e}"));
    c.bench_function("rate_limit/decision/battlement-memory", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            store
                .decide(Charge::new("p", &names[i], &quota, 1))
                .now_or_never()
        })
    });
}

type Body = axum::body::Body;

fn noop()
-> impl Service<Request<String>, Response = Response<Body>, Error = Infallible, Future = impl Send>
+ Clone {
    service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(Body::empty())) })
}

fn request(ip: IpAddr) -> Request<String> {
    let mut req = Request::new(String::new());
    let addr = SocketAddr::new(ip, 40000);
    // Where each layer reads the peer in production: tower_governor's
    // `PeerIpKeyExtractor` takes axum's `ConnectInfo` (and only that),
    // battlement its `PeerAddr`.
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    req.extensions_mut().insert(PeerAddr(addr));
    req
}

/// Times `svc` under `name`, once it has answered a request as in
/// production: status 200 with each of the `headers` (a layer that fails
/// to find its key answers otherwise, and would be timed on its error path).
fn bench_layer<S, B>(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    svc: S,
    headers: &[&str],
) where
    S: Service<Request<String>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
{
    let ips = ips();
    let res = rt
        .block_on(svc.clone().oneshot(request(ips[0])))
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    assert_eq!(res.status(), 200, "{name}");
    for header in headers {
        assert!(res.headers().contains_key(*header), "{name}: no {header}");
    }
    let mut i = 0;
    c.bench_function(&format!("rate_limit/layer/{name}"), |b| {
        b.to_async(rt).iter(|| {
            i = (i + 1) % KEYS;
            svc.clone().oneshot(request(ips[i]))
        })
    });
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    bench_layer(c, &rt, "bare", noop(), &[]);
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000)
        .finish()
        .unwrap_or_else(|| panic!("governor config"));
    let governed = ServiceBuilder::new()
        .layer(tower_governor::GovernorLayer::new(config))
        .service(noop());
    bench_layer(c, &rt, "tower_governor", governed, &[]);
    // tower_governor with its `x-ratelimit-*` headers on every response,
    // as battlement sends `RateLimit` and `RateLimit-Policy` by default.
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000)
        .use_headers()
        .finish()
        .unwrap_or_else(|| panic!("governor config"));
    let governed = ServiceBuilder::new()
        .layer(tower_governor::GovernorLayer::new(config))
        .service(noop());
    bench_layer(
        c,
        &rt,
        "tower_governor-headers",
        governed,
        &["x-ratelimit-limit", "x-ratelimit-remaining"],
    );
    let quota = Quota::per_second(1_000_000_000).unwrap_or_else(|e| panic!("{e}"));
    let policy = Policy::new("per-ip", quota)
        .unwrap_or_else(|e| panic!("{e}"))
        .key(PeerIp);
    let limited = rt.block_on(async {
        ServiceBuilder::new()
            .layer(RateLimitLayer::new(MemoryStore::new()).policy(policy.clone()))
            .service(noop())
    });
    bench_layer(
        c,
        &rt,
        "battlement-memory",
        limited,
        &["ratelimit", "ratelimit-policy"],
    );
    // The same decisions in shadow mode, which renders no headers: the
    // layer's floor without the `RateLimit` headers tower_governor does not
    // send.
    let shadow = rt.block_on(async {
        ServiceBuilder::new()
            .layer(
                RateLimitLayer::new(MemoryStore::new())
                    .policy(policy.clone())
                    .shadow(true),
            )
            .service(noop())
    });
    bench_layer(c, &rt, "battlement-memory-shadow", shadow, &[]);
    // The same with its quota hot-reloaded from a config source: the
    // hot path reads it without a lock, so this costs the same.
    let source = MemoryConfigSource::new();
    source.put(
        "rate_limit/per-ip",
        r#"{"count": 1000000000, "period": "1s"}"#,
    );
    let (reloaded, _watch) = rt.block_on(async {
        let layer = RateLimitLayer::new(MemoryStore::new()).policy(policy);
        let watch = ConfigReloader::new(source.clone())
            .rate_limit(layer.handle())
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        watch.loaded().await;
        (ServiceBuilder::new().layer(layer).service(noop()), watch)
    });
    bench_layer(
        c,
        &rt,
        "battlement-memory-config-source",
        reloaded,
        &["ratelimit", "ratelimit-policy"],
    );
}

/// Runs `iters` calls of `op` spread over [`TASKS`] tasks; the elapsed time.
async fn spread<F, Fut>(iters: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                for i in (t..iters).step_by(TASKS as usize) {
                    op(i).await;
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    started.elapsed()
}

fn redis(c: &mut Criterion) {
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let store = rt
        .block_on(RedisStore::connect(&server.url()))
        .unwrap_or_else(|e| panic!("{e}"));
    let raw = rt.block_on(async {
        let client = redis::Client::open(server.url()).unwrap_or_else(|e| panic!("{e}"));
        redis::aio::ConnectionManager::new(client)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    });
    // `return 1`, and the least any limiter's script does: read its key and
    // write it back.
    let scripts = [
        ("raw-evalsha-return-1", "return 1"),
        (
            "raw-evalsha-get-set",
            "redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], 'x', 'PX', 60000) return 1",
        ),
    ];
    let quota = Quota::per_second(1_000_000_000).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("rate_limit/redis");
    group.measurement_time(Duration::from_secs(5));
    for (name, script) in scripts {
        let script = Arc::new(redis::Script::new(script));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (raw, script) = (raw.clone(), script.clone());
                spread(iters, move |i| {
                    let (mut raw, script) = (raw.clone(), script.clone());
                    async move {
                        let _: Result<i64, _> =
                            script.key(i % KEYS as u64).invoke_async(&mut raw).await;
                    }
                })
            })
        });
    }
    group.bench_function("battlement-gcra", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            spread(iters, move |i| {
                let store = store.clone();
                async move {
                    let key = (i % KEYS as u64).to_string();
                    let _ = store.decide(Charge::new("p", &key, &quota, 1)).await;
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, decision, layer, redis);
criterion_main!(benches);
