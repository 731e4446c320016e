//! Network faults between an instance and its store, under load: the
//! server preset (rate limit fail-open, idempotency on `/orders`) served
//! in process on Redis or etcd reached through a fault proxy, which adds
//! latency, limits bandwidth, resets connections mid-reply, blackholes
//! them and forgets them (a half-open peer). For each fault: every request
//! is answered within the per-call timeout (plus the slack of a loaded
//! debug build), every answer is a documented one, the fail-open
//! admissions equal the `fail_open` events, no order runs twice, and once
//! the fault ends decisions resume and the connections and tasks are back
//! to what they were.
//!
//! `FAULT_PHASE_MS` (default 1200) sets how long each fault lasts under
//! load; `scripts/soak.sh` runs it longer, in release.
#![cfg(all(feature = "redis", feature = "etcd", feature = "axum"))]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use battlement::FailurePolicy;
use battlement::backends::{BackendConfig, EtcdConfig, RedisConfig};
use battlement::idempotency::IdempotencyConfig;
use battlement::rate_limit::{PolicyConfig, Quota, RateLimitConfig};
use battlement::stack::{self, StackConfig};
use support::load::{Load, Route, Sample, Summary, TABLE_HEADER, decisions_resumed};
use support::{EtcdServer, Fault, FaultProxy, RedisServer, env_number};

fn phase() -> Duration {
    Duration::from_millis(env_number("FAULT_PHASE_MS", 1200))
}

/// The faults, in order, each with a name for the table.
fn faults() -> Vec<(&'static str, Fault)> {
    vec![
        ("latency 20 ms", Fault::Latency(Duration::from_millis(20))),
        ("latency 1 s", Fault::Latency(Duration::from_secs(1))),
        ("bandwidth 2 KB/s", Fault::Bandwidth(2_000)),
        ("reset mid-reply", Fault::ResetMidReply),
        ("blackhole", Fault::Blackhole),
        ("half-open peer", Fault::HalfOpen),
    ]
}

/// The preset on `backend`: every request rate limited (fail-open, a
/// quota it never reaches), `POST /orders` idempotent (fail-closed).
async fn serve(backend: BackendConfig) -> (stack::ServerStack, String, Arc<AtomicU64>) {
    let config = StackConfig {
        backend,
        rate_limit: Some(RateLimitConfig {
            policies: vec![PolicyConfig {
                name: "all".into(),
                quota: Quota::per_second(1_000_000).unwrap(),
                key: None,
                mode: Default::default(),
            }],
            failure: FailurePolicy::FailOpen,
            ..RateLimitConfig::default()
        }),
        idempotency: Some(IdempotencyConfig {
            routes: vec!["/orders".into()],
            required: true,
            ..IdempotencyConfig::default()
        }),
        ..StackConfig::default()
    };
    let server = stack::server(&config).await.expect("the server stack");
    let orders = Arc::new(AtomicU64::new(0));
    let api = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route(
            "/orders",
            post({
                let orders = orders.clone();
                move || async move {
                    orders.fetch_add(1, Ordering::SeqCst);
                    (http::StatusCode::CREATED, "created")
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(stack::serve(listener, server.router(api)).into_future());
    (server, base, orders)
}

/// Counts the rate limiter's `fail_open` events as they come; fails the
/// test if the stream lagged (some were lost to the count).
fn count_fail_open(server: &stack::ServerStack) -> Arc<AtomicU64> {
    let count = Arc::new(AtomicU64::new(0));
    let mut rx = server.events().subscribe();
    let counted = count.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(e) if (e.layer(), e.event()) == ("rate_limit", "fail_open") => {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    counted.fetch_add(1 << 40, Ordering::SeqCst);
                    eprintln!("event stream lagged by {n}");
                }
                Err(_) => return,
            }
        }
    });
    count
}

/// Tasks alive on this runtime.
fn tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits until `f` holds, at most `limit`; whether it did.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while !f() {
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Runs every fault under load against the store behind `proxy`.
/// `timeout`: the store's per-call timeout; `recovery`: the documented
/// bound on decisions resuming once a fault ends.
async fn faults_under_load(
    name: &str,
    proxy: &FaultProxy,
    backend: BackendConfig,
    timeout: Duration,
    recovery: impl Fn(Fault) -> Duration,
) {
    let (server, base, _orders) = serve(backend).await;
    let fail_open = count_fail_open(&server);
    // Warm up, then the baseline: connections at the proxy, tasks.
    let warm = Load::start(std::slice::from_ref(&base), 4, Duration::from_millis(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut samples = warm.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (connections, alive) = (proxy.live_connections(), tasks());

    let load = Load::start(std::slice::from_ref(&base), 6, Duration::from_millis(2));
    let mut phases = Vec::new();
    for (fault, what) in faults() {
        let start = load.now();
        proxy.set(what);
        tokio::time::sleep(phase()).await;
        let healed = load.now();
        proxy.set(Fault::None);
        tokio::time::sleep(recovery(what) + Duration::from_secs(1)).await;
        phases.push((fault, what, start, healed, load.now()));
    }
    let run = load.stop().await;

    println!("\n{name}: store timeout {timeout:?}\n{TABLE_HEADER}");
    // Every broken check, reported together.
    let mut broken = Vec::new();
    let slack = Duration::from_secs(1);
    for &(fault, what, start, healed, end) in &phases {
        let during: Vec<&Sample> = run
            .iter()
            .filter(|s| s.sent >= start && s.sent < healed)
            .collect();
        println!("{}", Summary::of(during.iter().copied()).row(fault));
        let after = Summary::of(run.iter().filter(|s| s.sent >= healed && s.sent < end));
        let resumed = decisions_resumed(&run, healed, end);
        println!(
            "{}  decisions again {resumed:?} after it ended",
            after.row("  healed")
        );
        // The per-call timeout holds: a /hello waits for one decision.
        let slowest = during
            .iter()
            .filter(|s| s.route == Route::Hello)
            .map(|s| s.latency)
            .max()
            .unwrap_or_default();
        if slowest > timeout + slack {
            broken.push(format!(
                "{fault}: a /hello took {slowest:?}, over the {timeout:?} timeout"
            ));
        }
        // Bytes already on the wire still take the fault's latency.
        let bound = recovery(what)
            + match what {
                Fault::Latency(d) => d,
                _ => Duration::ZERO,
            };
        if resumed > bound {
            broken.push(format!(
                "{fault}: decisions resumed {resumed:?} after the fault ended (> {bound:?})"
            ));
        }
    }
    samples.extend(run);

    let undocumented = support::load::beyond_policy(&samples);
    if !undocumented.is_empty() {
        broken.push(format!(
            "{} answers beyond the failure policy, e.g. {:?}",
            undocumented.len(),
            undocumented.first()
        ));
    }
    let admitted = support::load::undecided(&samples);
    if !eventually(Duration::from_secs(2), || {
        fail_open.load(Ordering::SeqCst) == admitted
    })
    .await
    {
        broken.push(format!(
            "{} fail_open events, {admitted} answers without a decision",
            fail_open.load(Ordering::SeqCst)
        ));
    }
    let twice = support::load::executed_twice(&samples);
    if !twice.is_empty() {
        broken.push(format!("orders executed twice: {twice:?}"));
    }
    // Nothing leaked: the connections held through the proxy and the
    // tasks alive come back to the baseline.
    let settled = eventually(Duration::from_secs(5), || {
        proxy.live_connections() <= connections && tasks() <= alive
    })
    .await;
    println!(
        "connections at the proxy: {connections} before, {} after ({} accepted in all); tasks: {alive} before, {} after",
        proxy.live_connections(),
        proxy.accepted(),
        tasks()
    );
    if !settled {
        broken.push("connections or tasks leaked".into());
    }
    println!(
        "{admitted} answers without a decision, {} fail_open events; {} orders run",
        fail_open.load(Ordering::SeqCst),
        samples
            .iter()
            .filter(|s| s.status == 201 && !s.replayed)
            .count()
    );
    assert!(broken.is_empty(), "{name}: {broken:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_behind_network_faults_keeps_the_timeout_policy_and_recovers() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let timeout = Duration::from_millis(200);
    let backend = BackendConfig::Redis(
        RedisConfig::standalone(format!("redis://{}", proxy.addr())).with_timeout(timeout),
    );
    // A down server is probed every 100 ms, each probe bounded by the
    // timeout: decisions resume within 1 s.
    faults_under_load("Redis", &proxy, backend, timeout, |_| {
        Duration::from_secs(1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_behind_network_faults_keeps_the_timeout_policy_and_recovers() {
    let etcd = EtcdServer::start();
    let proxy = FaultProxy::start(etcd.addr()).await;
    let timeout = Duration::from_millis(500);
    let backend = BackendConfig::Etcd(
        EtcdConfig::new([format!("http://{}", proxy.addr())]).with_timeout(timeout),
    );
    // A connection that stops answering without closing (a half-open
    // peer) is found dead by the HTTP/2 keep-alive: a ping every 10 s, 5 s
    // for its answer.
    let recovery = |fault| match fault {
        Fault::HalfOpen => Duration::from_secs(15),
        _ => Duration::from_secs(1),
    };
    faults_under_load("etcd", &proxy, backend, timeout, recovery).await;
}
