//! A fleet of 16 instances on one Redis, hot key: decisions per second in
//! the exact and the leased mode, in one run.
//!
//! Run with: `cargo bench --features redis --bench lease_fleet`
//!
//! Each instance is a `RedisStore` with a connection of its own (and, in
//! the leased mode, its own `Leased`), driven by `TASKS` tasks deciding
//! back to back on one key whose quota is far above the load, for
//! `FLEET_SECONDS` (default 3) per mode. Printed per mode: decisions/s
//! measured, Redis commands per decision (`INFO commandstats`), Redis CPU
//! per decision (`used_cpu_user + used_cpu_sys`), and the decisions/s one
//! Redis core would sustain at that cost (1 s / CPU per decision): on this
//! 2-core machine the fleet's own CPU, not Redis, caps the measured rate,
//! so the sustainable rate is the figure to compare across modes.
#![allow(missing_docs)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use battlement::backends::{RedisConfig, RedisStore};
use battlement::rate_limit::{Charge, LeaseSettings, Leased, Quota, RateLimitStore};
use support::RedisServer;

const INSTANCES: usize = 16;
const TASKS: usize = 4;

fn seconds() -> u64 {
    std::env::var("FLEET_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// Every command Redis served (`INFO` itself left out) and its CPU seconds.
fn redis_counters(server: &RedisServer) -> (u64, f64) {
    let commands = server
        .cli(&["info", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            (name != "info").then_some(())?;
            stats
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse::<u64>()
                .ok()
        })
        .sum();
    let cpu = server
        .cli(&["info", "cpu"])
        .lines()
        .filter_map(|line| {
            let (name, value) = line.trim().split_once(':')?;
            matches!(name, "used_cpu_user" | "used_cpu_sys").then_some(())?;
            value.parse::<f64>().ok()
        })
        .sum();
    (commands, cpu)
}

/// Decides for `seconds()` on every instance; decisions made.
async fn drive<S: RateLimitStore>(instances: Vec<S>, quota: Quota) -> u64 {
    let until = Instant::now() + Duration::from_secs(seconds());
    let tasks: Vec<_> = instances
        .into_iter()
        .flat_map(|store| (0..TASKS).map(move |_| store.clone()))
        .map(|store| {
            tokio::spawn(async move {
                let mut made = 0u64;
                while Instant::now() < until {
                    // 64 decisions per clock read, then a yield: a decision
                    // from a lease never waits, and would otherwise starve
                    // the connection tasks (a server yields on its sockets).
                    tokio::task::yield_now().await;
                    for _ in 0..64 {
                        match store.decide(Charge::new("fleet", "hot", &quota, 1)).await {
                            Ok(d) if d.is_allowed() => {}
                            other => panic!("{other:?}"),
                        }
                        made += 1;
                    }
                }
                made
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or_else(|e| panic!("{e}"));
    }
    total
}

async fn connect(server: &RedisServer) -> Vec<RedisStore> {
    let mut stores = Vec::new();
    for _ in 0..INSTANCES {
        let config = RedisConfig::standalone(server.url().as_str())
            .prefix("fleet")
            .with_timeout(Duration::from_secs(1));
        stores.push(
            RedisStore::from_config(config)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    stores
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let server = RedisServer::start();
        let quota = Quota::per_second(1_000_000_000).unwrap_or_else(|e| panic!("{e}"));
        println!(
            "\n{INSTANCES} instances × {TASKS} tasks on one redis-server, one hot key, {} s per mode",
            seconds()
        );
        println!(
            "| mode | decisions/s | Redis commands / decision | Redis CPU / decision | decisions/s one Redis core sustains |"
        );
        println!("|---|---|---|---|---|");
        let mut sustained = Vec::new();
        for mode in ["exact", "leased"] {
            let stores = connect(&server).await;
            let (commands, cpu) = redis_counters(&server);
            let started = Instant::now();
            let made = if mode == "exact" {
                drive(stores, quota).await
            } else {
                let leased = stores
                    .into_iter()
                    .map(|s| Leased::new(s, LeaseSettings::default()))
                    .collect();
                drive(leased, quota).await
            };
            let rate = made as f64 / started.elapsed().as_secs_f64();
            let (commands_after, cpu_after) = redis_counters(&server);
            let per_decision = (commands_after - commands) as f64 / made as f64;
            let cpu_per = (cpu_after - cpu) / made as f64;
            let capacity = if cpu_per > 0.0 { 1.0 / cpu_per } else { f64::INFINITY };
            sustained.push(capacity);
            println!(
                "| {mode} | {rate:.0} | {per_decision:.5} | {:.3} µs | {capacity:.0} |",
                cpu_per * 1e6
            );
        }
        if let [exact, leased] = sustained[..] {
            println!("leased / exact, decisions one Redis sustains: {:.0}×", leased / exact);
        }
    });
}
