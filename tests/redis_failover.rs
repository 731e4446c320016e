//! Redis Cluster failover (3 masters, 3 replicas): under load through two
//! instances of the axum example, a replica takes over its master, first
//! as planned (`CLUSTER FAILOVER`), then after the master is killed
//! (SIGKILL). Nothing fails beyond the failure policy, the fail-open
//! admissions are counted exactly, no order runs twice, and decisions come
//! from the cluster again once the replica is promoted. And what
//! asynchronous replication loses: a claim acknowledged by a master that
//! dies before its replica has it, unless the claim waits for the replica.
//!
//! `FAILOVER_PHASE_SECS` (default 3) sets how long each phase of the load
//! runs; `scripts/soak.sh` runs it longer, in release.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use battlement::backends::{RedisConfig, RedisStore};
use battlement::idempotency::IdempotencyLayer;
use http::{Request, Response, StatusCode};
use support::load::{Load, Summary, TABLE_HEADER};
use support::{Example, RedisCluster, counting, env_number, get};
use tower::{ServiceBuilder, ServiceExt};

fn phase() -> Duration {
    Duration::from_secs(env_number("FAILOVER_PHASE_SECS", 3))
}

/// Waits until node `i` says it is a master (at most 30 s).
fn await_master(cluster: &RedisCluster, i: usize) {
    let started = Instant::now();
    while !cluster.nodes()[i].cli(&["role"]).starts_with("master") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "replica not promoted after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sum over `instances` of `battlement_events_total` for
/// `layer`/`event`.
async fn events(instances: &[&Example], layer: &str, event: &str) -> u64 {
    let (layer, event) = (format!("layer=\"{layer}\""), format!("event=\"{event}\""));
    let mut total = 0;
    for instance in instances {
        let text = get(&instance.url("/metrics")).await.body;
        total += text
            .lines()
            .filter(|l| l.starts_with("battlement_events_total{"))
            .filter(|l| l.contains(&layer) && l.contains(&event))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_under_load_follows_the_failure_policy_and_runs_no_order_twice() {
    let mut cluster = RedisCluster::start_with_replicas();
    let seeds = cluster.urls().join(",");
    let env = [
        ("REDIS_CLUSTER_URLS", seeds.as_str()),
        ("RATE_LIMIT", "1000000/s"),
        ("REDIS_TIMEOUT", "250ms"),
        ("RATE_LIMIT_FAILURE", "fail_open"),
        ("RUST_LOG", "warn"),
    ];
    let (a, b) = (Example::start("axum", &env), Example::start("axum", &env));
    let load = Load::start(
        &[a.base.clone(), b.base.clone()],
        6,
        Duration::from_millis(2),
    );
    let phase = phase();
    tokio::time::sleep(phase).await;

    // Planned: the replica of the master of `example:orders` takes over.
    let (master, replica) = cluster.master_and_replica_of("example:orders", 0);
    let replica = replica.expect("a replica");
    let planned = load.now();
    cluster.nodes()[replica].cli(&["cluster", "failover"]);
    await_master(&cluster, replica);
    let planned_done = load.now();
    tokio::time::sleep(phase).await;

    // Unplanned: the new master is killed; the old one, now its replica,
    // takes over once the others see it fail.
    let killed = load.now();
    cluster.node_mut(replica).stop();
    await_master(&cluster, master);
    let promoted = load.now();
    tokio::time::sleep(phase * 2).await;
    let end = load.now();
    let samples = load.stop().await;

    let window = |from: Duration, to: Duration| {
        Summary::of(
            samples
                .iter()
                .filter(move |s| s.sent >= from && s.sent < to),
        )
    };
    let after = |from, to| support::load::decisions_resumed(&samples, from, to);
    println!("\nRedis Cluster failover, 2 instances, store timeout 250 ms\n{TABLE_HEADER}");
    println!("{}", window(Duration::ZERO, planned).row("steady"));
    println!("{}", window(planned, killed).row("CLUSTER FAILOVER"));
    println!("{}", window(killed, end).row("SIGKILL master"));
    println!(
        "planned failover: promoted in {:?}, decisions from the cluster again {:?} after it began",
        planned_done - planned,
        after(planned, killed),
    );
    println!(
        "kill: replica promoted after {:?}, decisions from the cluster again after {:?}",
        promoted - killed,
        after(killed, end),
    );

    // Every answer is a documented one: /hello 200 (decided, or admitted
    // by fail-open), /orders 201, 409 (its twin in flight) or 503 (the
    // claim failed: idempotency is fail-closed).
    let undocumented = support::load::beyond_policy(&samples);
    assert!(
        undocumented.is_empty(),
        "{} answers beyond the failure policy, e.g. {:?}",
        undocumented.len(),
        undocumented.first()
    );
    // Fail-open counted exactly: one event per answer let through without
    // a decision.
    let admitted = support::load::undecided(&samples);
    let counted = events(&[&a, &b], "rate_limit", "fail_open").await;
    assert_eq!(
        counted, admitted,
        "fail_open events vs answers without a decision"
    );
    // Idempotency: both instances race on every key; none ran twice.
    let twice = support::load::executed_twice(&samples);
    assert!(twice.is_empty(), "orders executed twice: {twice:?}");
    // Decisions come from the cluster again once the replica is promoted.
    let resumed = after(killed, end);
    assert!(
        resumed < end - killed,
        "no decision from the cluster after the kill ({resumed:?})"
    );
}

fn post(key: &str) -> Request<String> {
    Request::post("/orders")
        .header("idempotency-key", format!("\"{key}\""))
        .extension(battlement::key::PeerAddr(([192, 0, 2, 1], 40000).into()))
        .body(String::from("{}"))
        .unwrap()
}

/// Script calls each of `masters` served so far.
fn script_calls(cluster: &RedisCluster, masters: &[usize]) -> Vec<u64> {
    masters
        .iter()
        .map(|&i| cluster.nodes()[i].command_calls(&["evalsha", "eval"]))
        .collect()
}

/// Sends `post(key)` until it is answered by other than 503 (the cluster
/// client finding the new master), at most 30 s.
async fn until_served<S>(svc: &S, key: &str) -> Response<battlement::body::LayerBody<String>>
where
    S: tower::Service<
            Request<String>,
            Response = Response<battlement::body::LayerBody<String>>,
            Error = Infallible,
        > + Clone,
{
    let started = Instant::now();
    loop {
        let res = svc.clone().oneshot(post(key)).await.unwrap();
        if res.status() != StatusCode::SERVICE_UNAVAILABLE {
            return res;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let body = http_body_util::BodyExt::collect(res.into_body()).await;
            panic!(
                "no answer from the new master: {:?}",
                body.map(|b| b.to_bytes())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// The replicas are frozen and cut off while a key is claimed, so only its
// master has the claim; the master is killed and its replica takes over. Without
// `wait_for_replicas` the claim was acknowledged and lost: the retry runs
// the request a second time. With it, the claim is refused (503, nothing
// ran), and the retry after the failover runs it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_only_the_dead_master_had_runs_again_unless_it_waited_for_a_replica() {
    for wait in [false, true] {
        let mut cluster = RedisCluster::start_with_replicas();
        let mut config = RedisConfig::cluster(cluster.urls())
            .prefix(format!("wait-{wait}"))
            .with_timeout(Duration::from_millis(500));
        if wait {
            config = config.wait_for_replicas(1, Duration::from_millis(200));
        }
        let runs = Arc::new(AtomicUsize::new(0));
        let store = RedisStore::from_config(config).await.unwrap();
        let layer = IdempotencyLayer::new(store).lock(Duration::from_secs(60));
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service(counting(&runs, StatusCode::CREATED));
        let (masters, replicas): (Vec<usize>, Vec<usize>) = (0..cluster.nodes().len())
            .partition(|&i| cluster.nodes()[i].cli(&["role"]).starts_with("master"));

        // The replicas are frozen and their links cut (what a frozen
        // replica's socket already received, it would still apply): the
        // masters keep their writes to themselves. (A frozen node answers
        // no redis-cli: only masters are asked.)
        for &r in &replicas {
            cluster.nodes()[r].pause();
        }
        for &m in &masters {
            cluster.nodes()[m].cli(&["client", "kill", "type", "replica"]);
        }
        let before = script_calls(&cluster, &masters);
        let first = svc.clone().oneshot(post("k")).await.unwrap();
        let after = script_calls(&cluster, &masters);
        let master = (0..after.len())
            .find(|&i| after[i] > before[i])
            .map(|i| masters[i])
            .expect("the master that ran the claim");
        let replica = cluster.replica_of(master);
        cluster.node_mut(master).stop();
        for &r in &replicas {
            cluster.nodes()[r].resume();
        }
        cluster.nodes()[replica].cli(&["cluster", "failover", "takeover"]);
        await_master(&cluster, replica);
        // The dead master comes back as the new master's replica: with
        // `wait_for_replicas`, claims need one.
        cluster.node_mut(master).restart();
        let started = Instant::now();
        while !cluster.nodes()[master]
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
        {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "old master not in sync"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let retry = until_served(&svc, "k").await;
        if wait {
            assert_eq!(
                first.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "not acknowledged"
            );
            assert_eq!(retry.status(), StatusCode::CREATED);
            assert_eq!(
                runs.load(Ordering::SeqCst),
                1,
                "ran once, after the failover"
            );
        } else {
            assert_eq!(first.status(), StatusCode::CREATED);
            assert_eq!(retry.status(), StatusCode::CREATED);
            assert!(
                !retry.headers().contains_key("idempotent-replayed"),
                "the claim was lost with the master"
            );
            assert_eq!(
                runs.load(Ordering::SeqCst),
                2,
                "the window asynchronous replication leaves"
            );
        }
    }
}
