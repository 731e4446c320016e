//! Load benchmark of the adaptive concurrency limit against a server that
//! saturates.
//!
//! Run with: `cargo bench --bench concurrency_limit`
//!
//! The inner service does `CAPACITY` requests at a time at `BASE` latency;
//! past that its latency grows with concurrency:
//! `BASE × max(1, in_flight / CAPACITY)`, so its throughput never exceeds
//! `CAPACITY / BASE` requests per second. Requests arrive open-loop (a new
//! one every tick whether or not earlier ones finished, as from many
//! independent clients) at twice that rate. Three runs of each setup:
//!
//! - `unloaded`: no limit, a quarter of capacity: the latency to beat.
//! - `adaptive`: `ConcurrencyLimitLayer` with the default gradient
//!   settings; shed requests are answered at once.
//! - `no limit`: every request goes in.
//!
//! For each run the table shows the p50 / p99 latency of the requests
//! served (arrival to end of body) that finished in the measured window,
//! p99 against the unloaded p99, goodput (requests served per second) as a
//! share of capacity (and counting only those served within a 100 ms
//! client deadline), the share shed, and the in-flight count at the end.
//! Targets: adaptive p99 within 2× unloaded and goodput ≥ 90 % of
//! capacity; with no limit, latency grows with the length of the run.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use battlement::concurrency_limit::{ConcurrencyLimitLayer, GradientConfig};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt, service_fn};

const BASE: Duration = Duration::from_millis(20);
const CAPACITY: usize = 16;
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(4);
const RUNS: usize = 3;
/// A client deadline: requests served later than this are wasted work.
const DEADLINE: Duration = Duration::from_millis(100);

type Svc = BoxCloneSyncService<Request<Full<Bytes>>, (StatusCode, Bytes), Infallible>;

fn capacity_rps() -> f64 {
    CAPACITY as f64 / BASE.as_secs_f64()
}

type Inner = BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// The saturating server, and its in-flight counter.
fn server() -> (Inner, Arc<AtomicUsize>) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counter = in_flight.clone();
    let svc = service_fn(move |_: Request<Full<Bytes>>| {
        let in_flight = counter.clone();
        async move {
            let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            let factor = (n as f64 / CAPACITY as f64).max(1.0);
            tokio::time::sleep(BASE.mul_f64(factor)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    (BoxCloneSyncService::new(svc), in_flight)
}

async fn finish(
    res: Response<impl http_body::Body<Data = Bytes> + Send + 'static>,
) -> Result<(StatusCode, Bytes), Infallible> {
    let status = res.status();
    let bytes = match res.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    Ok((status, bytes))
}

#[derive(Clone, Copy)]
enum Setup {
    Unloaded,
    Adaptive,
    NoLimit,
}

struct Run {
    p50: Duration,
    p99: Duration,
    goodput: f64,
    timely: f64,
    shed: f64,
    in_flight_end: usize,
}

fn build(setup: Setup) -> (Svc, Arc<AtomicUsize>) {
    let (inner, in_flight) = server();
    let svc = match setup {
        Setup::Adaptive => {
            let layer = ConcurrencyLimitLayer::adaptive(GradientConfig::default())
                .unwrap_or_else(|e| panic!("{e}"));
            BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .layer(layer)
                    .service(inner)
                    .and_then(finish),
            )
        }
        Setup::Unloaded | Setup::NoLimit => BoxCloneSyncService::new(inner.and_then(finish)),
    };
    (svc, in_flight)
}

async fn run(setup: Setup) -> Run {
    let (svc, in_flight) = build(setup);
    let rate = match setup {
        Setup::Unloaded => capacity_rps() / 4.0,
        _ => capacity_rps() * 2.0,
    };
    let start = Instant::now();
    let window = (start + WARMUP, start + WARMUP + MEASURE);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Instant, bool)>();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0.0f64;
    while Instant::now() < window.1 {
        tick.tick().await;
        let due = start.elapsed().as_secs_f64() * rate;
        while sent < due {
            sent += 1.0;
            let svc = svc.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let arrived = Instant::now();
                let req = Request::get("/work")
                    .body(Full::default())
                    .unwrap_or_default();
                let Ok((status, _)) = svc.oneshot(req).await;
                let _ = tx.send((arrived, Instant::now(), status == StatusCode::OK));
            });
        }
    }
    let in_flight_end = in_flight.load(Ordering::SeqCst);
    drop(tx);
    let mut served = Vec::new();
    let (mut arrived_in_window, mut shed) = (0usize, 0usize);
    while let Ok((arrived, done, ok)) = rx.try_recv() {
        if arrived >= window.0 {
            arrived_in_window += 1;
            shed += usize::from(!ok);
        }
        if ok && done >= window.0 && done < window.1 {
            served.push(done - arrived);
        }
    }
    served.sort_unstable();
    let pct = |p: f64| {
        served
            .get(((served.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    Run {
        p50: pct(0.50),
        p99: pct(0.99),
        goodput: served.len() as f64 / MEASURE.as_secs_f64() / capacity_rps(),
        timely: served.iter().filter(|d| **d <= DEADLINE).count() as f64
            / MEASURE.as_secs_f64()
            / capacity_rps(),
        shed: shed as f64 / arrived_in_window.max(1) as f64,
        in_flight_end,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs benches once with `--bench` absent: skip.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!(
        "server: base {} ms, capacity {CAPACITY} ({:.0} req/s); load 2x capacity, open loop; \
         warm-up {} s, measured {} s; {RUNS} runs each",
        BASE.as_millis(),
        capacity_rps(),
        WARMUP.as_secs(),
        MEASURE.as_secs()
    );
    let mut unloaded_p99 = Vec::new();
    let mut rows = Vec::new();
    for (name, setup) in [
        ("unloaded", Setup::Unloaded),
        ("adaptive", Setup::Adaptive),
        ("no limit", Setup::NoLimit),
    ] {
        for i in 0..RUNS {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            let r = rt.block_on(run(setup));
            // The no-limit run leaves its backlog behind.
            rt.shutdown_background();
            if let Setup::Unloaded = setup {
                unloaded_p99.push(r.p99.as_secs_f64());
            }
            rows.push((name, i, r));
        }
    }
    let base_p99 = median(unloaded_p99);
    println!(
        "{:<9} {:>3} {:>9} {:>9} {:>12} {:>8} {:>9} {:>6} {:>10}",
        "setup",
        "run",
        "p50 ms",
        "p99 ms",
        "p99/unloaded",
        "goodput",
        "in 100ms",
        "shed",
        "in flight"
    );
    for (name, i, r) in &rows {
        println!(
            "{:<9} {:>3} {:>9.1} {:>9.1} {:>12.2} {:>7.0}% {:>8.0}% {:>5.0}% {:>10}",
            name,
            i + 1,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() / base_p99,
            r.goodput * 100.0,
            r.timely * 100.0,
            r.shed * 100.0,
            r.in_flight_end
        );
    }
    for name in ["adaptive", "no limit"] {
        let of = |f: &dyn Fn(&Run) -> f64| {
            median(
                rows.iter()
                    .filter(|(n, ..)| *n == name)
                    .map(|(.., r)| f(r))
                    .collect(),
            )
        };
        println!(
            "median {name}: p99/unloaded {:.2}, goodput {:.0}% of capacity ({:.0}% within 100 ms)",
            of(&|r| r.p99.as_secs_f64() / base_p99),
            of(&|r| r.goodput * 100.0),
            of(&|r| r.timely * 100.0)
        );
    }
}
