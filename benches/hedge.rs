//! Tail latency with and without hedging, against an upstream with a slow
//! tail.
//!
//! Run with: `cargo bench --bench hedge`
//!
//! The upstream answers 95 % of calls in 1 ms and 5 % in 100 ms (drawn at
//! random per call, so a hedge of a slow call is usually fast). 32
//! clients send 40,000 requests in all, each waiting for its answer
//! before the next. It runs twice: on tokio's paused clock, where time
//! is virtual, so the numbers are those of the algorithm alone (which
//! attempt wins, after which delay) and repeat exactly from the seed; then
//! on the real clock, timers, scheduler and all. Setups:
//!
//! - `no hedge`: the upstream as it is.
//! - `hedge p95`: `HedgeLayer` with the defaults (after the host's p95
//!   latency once it has 20 samples, at most 10 % of requests hedged).
//! - `hedge 10ms`: a fixed 10 ms delay.
//!
//! The table shows p50 / p99 / p99.9 of the latency the client saw, p99
//! against no hedging, and the extra calls the upstream got. Target:
//! p99 at least 10× lower for at most 10 % extra calls.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use battlement::body::LayerBody;
use battlement::hedge::{HedgeConfig, HedgeDelay, HedgeLayer};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt, service_fn};

const REQUESTS: usize = 40_000;
const CLIENTS: usize = 32;
const SLOW_SHARE: f64 = 0.05;
const FAST: Duration = Duration::from_millis(1);
const SLOW: Duration = Duration::from_millis(100);

type Body = LayerBody<Full<Bytes>>;
type Svc = BoxCloneSyncService<Request<Body>, Response<Full<Bytes>>, battlement::BoxError>;

/// The upstream, and the count of calls it got.
fn upstream(seed: u64) -> (Svc, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let rng = Arc::new(std::sync::Mutex::new(fastrand::Rng::with_seed(seed)));
    let svc = service_fn(move |_: Request<Body>| {
        counter.fetch_add(1, Ordering::Relaxed);
        let slow = rng
            .lock()
            .map(|mut r| r.f64() < SLOW_SHARE)
            .unwrap_or(false);
        async move {
            tokio::time::sleep(if slow { SLOW } else { FAST }).await;
            Ok::<_, battlement::BoxError>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    (BoxCloneSyncService::new(svc), calls)
}

struct Outcome {
    p50: Duration,
    p99: Duration,
    p999: Duration,
    extra: f64,
}

async fn run(hedge: Option<HedgeConfig>) -> Outcome {
    let (svc, calls) = upstream(7);
    let svc = match hedge {
        Some(config) => BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .layer(HedgeLayer::new(config).expect("valid config"))
                .service(svc),
        ),
        None => svc,
    };
    let per_client = REQUESTS / CLIENTS;
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let req = Request::get("http://upstream.example/")
                    .body(LayerBody::inner(Full::default()))
                    .expect("request");
                let started = Instant::now();
                let fut = svc.ready().await.expect("ready").call(req);
                fut.await.expect("response");
                latencies.push(started.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(REQUESTS);
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    all.sort_unstable();
    let at = |p: f64| all[((p * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1];
    let sent = all.len() as f64;
    Outcome {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        extra: (calls.load(Ordering::Relaxed) as f64 - sent) / sent,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    for paused in [true, false] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(paused)
            .build()
            .expect("runtime");
        table(&rt, if paused { "virtual time" } else { "real time" });
    }
}

fn table(rt: &tokio::runtime::Runtime, clock: &str) {
    let setups: [(&str, Option<HedgeConfig>); 3] = [
        ("no hedge", None),
        ("hedge p95", Some(HedgeConfig::default())),
        (
            "hedge 10ms",
            Some(HedgeConfig::default().delay(HedgeDelay::Fixed(Duration::from_millis(10)))),
        ),
    ];
    println!(
        "{REQUESTS} requests, {CLIENTS} clients, {:.0} % of calls {} and the rest {} ({clock})",
        SLOW_SHARE * 100.0,
        ms(SLOW),
        ms(FAST)
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>10} {:>8}",
        "setup", "p50", "p99", "p99.9", "p99 gain", "extra"
    );
    let mut base = None;
    for (name, config) in setups {
        let out = rt.block_on(run(config));
        let base_p99 = *base.get_or_insert(out.p99);
        println!(
            "{:<12} {:>9} {:>9} {:>9} {:>9.1}× {:>7.1} %",
            name,
            ms(out.p50),
            ms(out.p99),
            ms(out.p999),
            base_p99.as_secs_f64() / out.p99.as_secs_f64(),
            out.extra * 100.0
        );
    }
}
