//! The sync modes end to end: two axum example processes on one Redis,
//! `RATE_LIMIT=50/h` per client IP, 100 requests alternating between
//! them. Exact mode admits exactly the quota; leased mode admits the quota
//! and never more (leases are taken before they are spent), and the
//! requests denied past it cost no store call until their retry-after.
#![cfg(all(feature = "axum", feature = "prometheus", feature = "redis"))]

mod support;

use support::{Example, RedisServer, get};

/// The statuses of 100 `GET /hello` alternating between two instances of
/// the example in `mode` on one Redis; and the scripts Redis ran.
async fn hundred_requests_over_two_instances(mode: &str) -> (usize, usize, u64) {
    let redis = RedisServer::start();
    let env = [
        ("REDIS_URL", redis.url()),
        ("RATE_LIMIT", "50/h".to_owned()),
        ("RATE_LIMIT_MODE", mode.to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Example::start("axum", &env);
    let b = Example::start("axum", &env);
    let before = redis.command_calls(&["evalsha", "eval"]);
    let (mut ok, mut limited) = (0, 0);
    for i in 0..100 {
        let instance = if i % 2 == 0 { &a } else { &b };
        match get(&instance.url("/hello")).await.status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    (
        ok,
        limited,
        redis.command_calls(&["evalsha", "eval"]) - before,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_mode_admits_exactly_the_quota_over_two_instances() {
    let (ok, limited, _) = hundred_requests_over_two_instances("exact").await;
    assert_eq!((ok, limited), (50, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_mode_admits_the_quota_and_no_more_over_two_instances() {
    let (ok, limited, scripts) = hundred_requests_over_two_instances("leased").await;
    assert!((50..=52).contains(&ok), "{ok} x 200, {limited} x 429");
    assert_eq!(ok + limited, 100);
    // Past the quota, each instance asks Redis about once, then answers
    // from its cached denial (a retry-after of 72 s outlasts the run).
    assert!(scripts <= 50, "{scripts} scripts for 100 requests");
}
