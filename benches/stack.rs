//! The full server preset under load next to bare axum, in one run.
//!
//! Run with: `cargo bench --bench stack` (add `--features redis` for the
//! Redis-backed run; it starts its own `redis-server`).
//!
//! Both apps serve the axum example's `/hello` route on loopback, in this
//! process: *bare* is the route alone; *full* is the same route behind
//! `battlement::stack::server` (request id, trace sampled as
//! `OTEL_TRACES_SAMPLER` says — every request by default;
//! `OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1`
//! for 10 % — and metrics recorded by the OpenTelemetry SDK, a per-IP rate limit that
//! admits everything but decides every request, idempotency on `/orders`,
//! health routes). A client drives each with the same load — `CONNECTIONS`
//! HTTP/1.1 keep-alive connections sending requests back to back for
//! `SECONDS` — alternating bare and full three times; the table shows
//! requests per second, p50 and p99 latency, and full/bare (median of the
//! three rounds). The in-memory run alternates a third app, *peers*: the
//! route behind what the other crates offer (tower-http's request id,
//! opentelemetry-instrumentation-tower, tower_governor; see
//! `common/apps.rs`), as a yardstick. `STACK_WITHOUT=trace,metrics,request_id,rate_limit,idempotency`
//! (any subset) leaves layers out, `STACK_SECONDS` changes the run length,
//! `STACK_PROFILE=bare`, `=full` or `=peers` loads only that app (for a profiler).
//! Allocations per request: `cargo bench --bench stack_allocations` (a
//! counting allocator would slow this run down).
//!
//! `STACK_SERVE=bare`, `=full` or `=peers` with `STACK_PORT` only serves that app on
//! `127.0.0.1:STACK_PORT` for `STACK_SECONDS` (one worker thread), for an
//! outside load generator: `scripts/bench_pinned.sh` runs both apps pinned
//! to CPU 0 and `wrk` on CPU 1 (side by side on one core), which measures
//! the servers alone.
#![allow(missing_docs)]

#[path = "common/apps.rs"]
mod apps;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 16;
const SECONDS: u64 = 5;

fn seconds() -> u64 {
    std::env::var("STACK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SECONDS)
}
const ROUNDS: usize = 3;

/// Serves `app` on `127.0.0.1:port` (0: any free port).
async fn serve_on(app: Router, port: u16) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    addr
}

/// One round: requests per second and every latency in µs.
async fn load(addr: SocketAddr) -> (f64, Vec<u64>) {
    load_as(addr, 0).await
}

/// One round, each request from one of `clients` addresses in
/// `X-Forwarded-For` (0: none, the peer address alone); 429s count as
/// answered requests.
async fn load_as(addr: SocketAddr, clients: u32) -> (f64, Vec<u64>) {
    let until = Instant::now() + Duration::from_secs(seconds());
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|connection| {
            tokio::spawn(async move {
                let mut client = connection as u32 * 7_919;
                let stream = TcpStream::connect(addr)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let _ = stream.set_nodelay(true);
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                tokio::spawn(conn);
                let mut latencies = Vec::new();
                while Instant::now() < until {
                    let mut req = http::Request::get("/hello").header("host", "127.0.0.1");
                    if clients > 0 {
                        client = (client + 1) % clients;
                        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + client);
                        req = req.header("x-forwarded-for", ip.to_string());
                    }
                    let req = req
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap_or_else(|e| panic!("{e}"));
                    let sent = Instant::now();
                    let res = sender
                        .send_request(req)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert!(
                        matches!(res.status().as_u16(), 200 | 429),
                        "{}",
                        res.status()
                    );
                    let _ = res.into_body().collect().await;
                    latencies.push(sent.elapsed().as_micros() as u64);
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort_unstable();
    (rate, all)
}

/// The head sampler the environment chose (see `telemetry::init`).
fn sampler() -> String {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    match (var("OTEL_TRACES_SAMPLER"), var("OTEL_TRACES_SAMPLER_ARG")) {
        (name, _) if name.is_empty() => "parentbased_always_on (the default)".into(),
        (name, arg) if arg.is_empty() => name,
        (name, arg) => format!("{name} {arg}"),
    }
}

/// `STACK_PROFILE=bare`, `=full` or `=peers` loads only that app (to profile it).
fn profiling() -> Option<String> {
    std::env::var("STACK_PROFILE").ok()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0)
}

/// Loads bare, full and (when given) the peers' stack in turn, `ROUNDS`
/// times, and prints a row per round and app.
async fn compare(name: &str, full: Router, peers: Option<Router>) {
    let mut apps = vec![("bare", serve_on(apps::routes(), 0).await)];
    apps.push(("full", serve_on(full, 0).await));
    if let Some(peers) = peers {
        apps.push(("peers", serve_on(peers, 0).await));
    }
    println!(
        "\n{name}: {CONNECTIONS} connections, {} s per run, apps alternating, traces sampled by {}",
        seconds(),
        sampler()
    );
    if let Some(only) = profiling() {
        let addr = apps.iter().find(|(app, _)| *app == only).map(|(_, a)| *a);
        let addr = addr.unwrap_or_else(|| panic!("STACK_PROFILE={only}: bare, full or peers"));
        for round in 1..=ROUNDS {
            let (rate, _) = load(addr).await;
            println!("| {round} | {only} only: {rate:.0} req/s |");
        }
        return;
    }
    println!("| round | app | req/s | p50 / p99 | /bare |");
    println!("|---|---|---|---|---|");
    let mut ratios: Vec<Vec<f64>> = apps.iter().map(|_| Vec::new()).collect();
    for round in 1..=ROUNDS {
        let mut bare_rate = 0.0;
        for ((app, addr), ratios) in apps.iter().zip(&mut ratios) {
            let (rate, latencies) = load(*addr).await;
            if *app == "bare" {
                bare_rate = rate;
            }
            ratios.push(rate / bare_rate);
            println!(
                "| {round} | {app} | {rate:.0} | {} / {} µs | {:.2} |",
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                rate / bare_rate,
            );
        }
    }
    for ((app, _), mut ratios) in apps.iter().zip(ratios).skip(1) {
        ratios.sort_by(f64::total_cmp);
        if let Some(median) = ratios.get(ROUNDS / 2) {
            println!("median {app}/bare: {median:.2}");
        }
    }
}

/// A runtime with `workers` worker threads.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Checks, before any load, that `app` does its real work: 200, and the
/// request id and rate-limit headers where its layers set them.
async fn answers_as_in_production(addr: SocketAddr, app: &str) {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(conn);
    let req = http::Request::get("/hello")
        .header("host", "127.0.0.1")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let res = sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res.status(), 200, "{app}");
    let mut headers = Vec::new();
    if app == "full" {
        let config = apps::config(battlement::backends::BackendConfig::default());
        if config.request_id.enabled {
            headers.push("x-request-id");
        }
        if config.rate_limit.is_some() {
            headers.extend(["ratelimit", "ratelimit-policy"]);
        }
    }
    if app == "peers" {
        headers.extend(["x-request-id", "x-ratelimit-limit", "x-ratelimit-remaining"]);
    }
    for name in headers {
        assert!(res.headers().contains_key(name), "{app}: no {name}");
    }
}

/// `STACK_SERVE=bare|full|peers`: serves that app alone on `STACK_PORT` for
/// `STACK_SECONDS`, on one worker thread.
fn serve_only(app: &str) {
    let port = std::env::var("STACK_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("STACK_SERVE needs STACK_PORT"));
    runtime(1).block_on(async {
        // Each app with the telemetry its users install: battlement's for
        // the preset (and bare axum), the peers' own for theirs.
        let (telemetry, peers_telemetry) = match app {
            "peers" => (None, Some(apps::peers_telemetry())),
            _ => (Some(apps::telemetry()), None),
        };
        let router = match app {
            "bare" => apps::routes(),
            "full" => apps::full(battlement::backends::BackendConfig::default()).await,
            "peers" => apps::peers(),
            other => panic!("STACK_SERVE={other}: bare, full or peers"),
        };
        let addr = serve_on(router, port).await;
        answers_as_in_production(addr, app).await;
        println!("serving {app} on {addr} for {} s", seconds());
        tokio::time::sleep(Duration::from_secs(seconds())).await;
        drop((telemetry, peers_telemetry));
    });
}

fn main() {
    if !apps::measuring() {
        return;
    }
    if let Ok(app) = std::env::var("STACK_SERVE") {
        serve_only(&app);
        return;
    }
    runtime(2).block_on(async {
        let telemetry = apps::telemetry();
        compare(
            "in-memory stores",
            apps::full(battlement::backends::BackendConfig::default()).await,
            Some(apps::peers()),
        )
        .await;
        redis_run().await;
        drop(telemetry);
    });
}

#[cfg(feature = "redis")]
#[path = "../tests/support/mod.rs"]
mod support;

#[cfg(feature = "redis")]
async fn redis_run() {
    let server = support::RedisServer::start();
    let backend = battlement::backends::BackendConfig::Redis(
        battlement::backends::RedisConfig::standalone(server.url().as_str()),
    );
    compare(
        "Redis-backed stores (local redis-server)",
        apps::full(backend.clone()).await,
        None,
    )
    .await;
    leased_run(&server, backend).await;
}

/// Commands Redis served so far: all of them (`INFO` left out; the `GET`,
/// `SET` and `TIME` scripts run included), and the scripts (`EVALSHA`).
#[cfg(feature = "redis")]
fn redis_commands(server: &support::RedisServer) -> (u64, u64) {
    let stats = server.cli(&["info", "commandstats"]);
    let calls = |line: &str| -> Option<(String, u64)> {
        let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
        let calls = stats.split(',').find_map(|f| f.strip_prefix("calls="))?;
        Some((name.to_owned(), calls.parse().ok()?))
    };
    let all = stats.lines().filter_map(calls).filter(|(n, _)| n != "info");
    let (mut total, mut scripts) = (0, 0);
    for (name, n) in all {
        total += n;
        if name == "evalsha" || name == "eval" {
            scripts += n;
        }
    }
    (total, scripts)
}

/// The leased mode: the full stack on Redis next to the same stack in
/// memory, per load shape, alternating; Redis commands per request.
#[cfg(feature = "redis")]
async fn leased_run(server: &support::RedisServer, backend: battlement::backends::BackendConfig) {
    use battlement::rate_limit::Quota;
    let quota = |n: u64| Quota::per_second(n).unwrap_or_else(|e| panic!("{e}"));
    // (name, quota, clients)
    let shapes = [
        (
            "one hot key, quota far above the load",
            quota(10_000_000),
            0,
        ),
        ("an abusive client at ~100× its quota", quota(200), 0),
        ("10,000 distinct keys", quota(10_000_000), 10_000),
    ];
    println!(
        "\nleased mode, Redis-backed vs memory-backed full stack: {CONNECTIONS} connections, {} s per run, alternating",
        seconds()
    );
    println!(
        "| load | round | memory req/s | Redis req/s | Redis/memory | Redis commands / request |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, quota, clients) in shapes {
        let memory = serve_on(
            apps::full_leased(battlement::backends::BackendConfig::default(), quota).await,
            0,
        )
        .await;
        let redis = serve_on(apps::full_leased(backend.clone(), quota).await, 0).await;
        let mut ratios = Vec::new();
        let mut per_request = Vec::new();
        for round in 1..=ROUNDS {
            let (memory_rate, _) = load_as(memory, clients).await;
            let (commands_before, scripts_before) = redis_commands(server);
            let started = Instant::now();
            let (redis_rate, _) = load_as(redis, clients).await;
            let requests = redis_rate * started.elapsed().as_secs_f64();
            let (commands_after, scripts_after) = redis_commands(server);
            let commands = (commands_after - commands_before) as f64 / requests;
            let scripts = (scripts_after - scripts_before) as f64 / requests;
            ratios.push(redis_rate / memory_rate);
            per_request.push((commands, scripts));
            println!(
                "| {name} | {round} | {memory_rate:.0} | {redis_rate:.0} | {:.2} | {commands:.4} ({scripts:.4}) |",
                redis_rate / memory_rate
            );
        }
        ratios.sort_by(f64::total_cmp);
        per_request.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (commands, scripts) = per_request[ROUNDS / 2];
        println!(
            "median {name}: Redis/memory {:.2}, {commands:.4} Redis commands ({scripts:.4} scripts) per request",
            ratios[ROUNDS / 2],
        );
    }
}

#[cfg(not(feature = "redis"))]
async fn redis_run() {
    println!("\n(Redis-backed run: cargo bench --features redis --bench stack)");
}
