//! Dynamic configuration from a real etcd: changes
//! written with the etcd client reach every instance, deletes restore the
//! defaults, bad documents are rejected, and the watch survives restarts,
//! cut connections (revision resume) and compaction (full reload).
#![cfg(feature = "etcd")]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use battlement::backends::{EtcdConfig, EtcdStore, MemoryStore};
use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer};
use battlement::events::{Event, Events};
use battlement::key::{PeerAddr, PeerIp};
use battlement::rate_limit::{Policy, Quota, RateLimitHandle, RateLimitLayer};
use battlement::reload::{ConfigReloader, ConfigWatch, EtcdConfigSource};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use support::{EtcdServer, TcpProxy};
use tokio::sync::broadcast;
use tower::{ServiceBuilder, ServiceExt, service_fn};

const QUOTA_KEY: &str = "/battlement/config/rate_limit/per-ip";
const BREAKER_KEY: &str = "/battlement/config/circuit_breaker/downstream";

fn hourly(n: u64) -> Quota {
    Quota::per_hour(n).unwrap()
}

/// One application instance: a rate limit (2/h per IP built in) and a
/// breaker, reloaded from etcd at `endpoint`.
struct App {
    limit: RateLimitLayer<MemoryStore>,
    quotas: RateLimitHandle,
    breaker: CircuitBreakerHandle,
    events: broadcast::Receiver<Event>,
    _watch: ConfigWatch,
}

impl App {
    async fn start(endpoint: String) -> Self {
        let etcd = EtcdStore::from_config(
            EtcdConfig::new([endpoint]).with_timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap();
        let limit = RateLimitLayer::new(MemoryStore::new())
            .policy(Policy::new("per-ip", hourly(2)).unwrap().key(PeerIp));
        let breaker =
            CircuitBreakerLayer::new("downstream", MemoryStore::new(), BreakerConfig::default())
                .unwrap()
                .handle();
        let events = Events::new();
        let rx = events.subscribe();
        let source = EtcdConfigSource::new(&etcd)
            .retry_every(Duration::from_millis(200))
            .events(events.clone());
        let watch = ConfigReloader::new(source)
            .rate_limit(limit.handle())
            .circuit_breaker(breaker.clone())
            .events(events)
            .start()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.loaded())
            .await
            .expect("the first load");
        Self {
            quotas: limit.handle(),
            limit,
            breaker,
            events: rx,
            _watch: watch,
        }
    }

    /// How many of `n` requests from `ip` pass.
    async fn admitted(&self, ip: &str, n: usize) -> usize {
        let svc = ServiceBuilder::new()
            .layer(self.limit.clone())
            .service(service_fn(|_| async {
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            }));
        let mut ok = 0;
        for _ in 0..n {
            let mut req = Request::get("/").body(Full::<Bytes>::default()).unwrap();
            req.extensions_mut()
                .insert(PeerAddr(SocketAddr::new(ip.parse().unwrap(), 40000)));
            ok += usize::from(svc.clone().oneshot(req).await.unwrap().status() == StatusCode::OK);
        }
        ok
    }

    /// Waits (at most `limit`) for the event named `name`; the events
    /// before it are returned too.
    async fn event(&mut self, name: &str, limit: Duration) -> Vec<&'static str> {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(limit, async {
            loop {
                match self.events.recv().await {
                    Ok(e) => {
                        seen.push(e.event());
                        if e.event() == name {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("events closed"),
                }
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "no {name:?} event within {limit:?}; saw {seen:?}"
        );
        seen
    }
}

async fn client(etcd: &EtcdServer) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap()
}

/// Waits at most `limit` for `done`; returns how long it took.
async fn within(limit: Duration, what: &str, done: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

// Two instances, one etcd.
#[tokio::test]
async fn changes_reach_two_instances_within_a_second_and_deletes_restore_defaults() {
    let etcd = EtcdServer::start();
    let a = App::start(etcd.endpoint()).await;
    let b = App::start(etcd.endpoint()).await;
    let mut kv = client(&etcd).await;
    assert_eq!(a.admitted("192.0.2.1", 3).await, 2, "built-in 2/h");

    let written = Instant::now();
    kv.put(QUOTA_KEY, r#"{"count": 4, "period": "1h"}"#, None)
        .await
        .unwrap();
    within(Duration::from_secs(1), "4/h on both", || {
        a.quotas.quota("per-ip") == Some(hourly(4)) && b.quotas.quota("per-ip") == Some(hourly(4))
    })
    .await;
    eprintln!(
        "quota change in force on both instances {:?} after the put was sent",
        written.elapsed()
    );
    assert_eq!(
        a.admitted("192.0.2.1", 4).await,
        2,
        "state kept: 2 of 4 left"
    );
    assert_eq!(b.admitted("192.0.2.9", 5).await, 4);

    kv.put(
        BREAKER_KEY,
        r#"{"failure_rate": 25, "open_for": "7s"}"#,
        None,
    )
    .await
    .unwrap();
    let wanted = BreakerConfig::default()
        .failure_rate(25.0)
        .open_for(Duration::from_secs(7));
    within(Duration::from_secs(1), "breaker thresholds on both", || {
        a.breaker.config() == wanted && b.breaker.config() == wanted
    })
    .await;

    kv.delete(QUOTA_KEY, None).await.unwrap();
    kv.delete(BREAKER_KEY, None).await.unwrap();
    within(Duration::from_secs(1), "defaults on both", || {
        [&a, &b].iter().all(|app| {
            app.quotas.quota("per-ip") == Some(hourly(2))
                && app.breaker.config() == BreakerConfig::default()
        })
    })
    .await;
}

// A bad value is rejected; the last good one stays.
#[tokio::test]
async fn invalid_json_and_a_zero_quota_are_rejected() {
    let etcd = EtcdServer::start();
    let mut app = App::start(etcd.endpoint()).await;
    let mut kv = client(&etcd).await;
    kv.put(QUOTA_KEY, r#"{"count": 3, "period": "1h"}"#, None)
        .await
        .unwrap();
    app.event("applied", Duration::from_secs(1)).await;
    for bad in ["{\"count\": ", r#"{"count": 0, "period": "1h"}"#] {
        kv.put(QUOTA_KEY, bad, None).await.unwrap();
        app.event("rejected", Duration::from_secs(1)).await;
        assert_eq!(app.quotas.quota("per-ip"), Some(hourly(3)), "{bad}");
    }
    kv.put(BREAKER_KEY, r#"{"half_open_probes": 0}"#, None)
        .await
        .unwrap();
    app.event("rejected", Duration::from_secs(1)).await;
    assert_eq!(app.breaker.config(), BreakerConfig::default());
    assert_eq!(app.admitted("192.0.2.1", 4).await, 3);
}

// Etcd stopped and restarted; no app restart. The app's
// connection stays cut until the change is written, so it can only arrive
// by resuming from the last revision seen before the outage.
#[tokio::test]
async fn the_watch_resumes_after_etcd_restarts() {
    let mut etcd = EtcdServer::start();
    let proxy = TcpProxy::start(etcd.addr()).await;
    let mut app = App::start(proxy.url()).await;
    app.event("loaded", Duration::from_secs(1)).await;
    proxy.cut();
    etcd.stop();
    app.event("watch_error", Duration::from_secs(5)).await;
    etcd.restart();
    client(&etcd)
        .await
        .put(QUOTA_KEY, r#"{"count": 6, "period": "1h"}"#, None)
        .await
        .unwrap();
    proxy.restore();
    let seen = app.event("applied", Duration::from_secs(5)).await;
    assert!(seen.contains(&"resumed"), "{seen:?}");
    assert!(!seen.contains(&"loaded"), "resumed, not reloaded: {seen:?}");
    assert_eq!(app.quotas.quota("per-ip"), Some(hourly(6)));
}

// A change made while the app's connection is down arrives by
// resuming from the last revision.
#[tokio::test]
async fn a_change_made_while_the_connection_was_cut_is_not_missed() {
    let etcd = EtcdServer::start();
    let proxy = TcpProxy::start(etcd.addr()).await;
    let mut app = App::start(proxy.url()).await;
    app.event("loaded", Duration::from_secs(1)).await;
    proxy.cut();
    app.event("watch_error", Duration::from_secs(5)).await;
    let mut kv = client(&etcd).await;
    kv.put(QUOTA_KEY, r#"{"count": 7, "period": "1h"}"#, None)
        .await
        .unwrap();
    kv.put(BREAKER_KEY, r#"{"minimum_calls": 8}"#, None)
        .await
        .unwrap();
    kv.delete(BREAKER_KEY, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.quotas.quota("per-ip"), Some(hourly(2)), "cut off");
    proxy.restore();
    let seen = app.event("reverted", Duration::from_secs(5)).await;
    assert!(seen.contains(&"resumed"), "{seen:?}");
    assert!(!seen.contains(&"loaded"), "resumed, not reloaded: {seen:?}");
    // Every change, in order: put, put, delete.
    let changes: Vec<_> = seen
        .iter()
        .filter(|e| ["applied", "reverted"].contains(e))
        .collect();
    assert_eq!(changes, [&"applied", &"applied", &"reverted"]);
    assert_eq!(app.quotas.quota("per-ip"), Some(hourly(7)));
    assert_eq!(app.breaker.config(), BreakerConfig::default());
}

// The revision to resume from was compacted -> full reload.
#[tokio::test]
async fn after_compaction_the_source_reloads_everything() {
    let etcd = EtcdServer::start();
    let proxy = TcpProxy::start(etcd.addr()).await;
    let mut kv = client(&etcd).await;
    kv.put(BREAKER_KEY, r#"{"minimum_calls": 8}"#, None)
        .await
        .unwrap();
    let mut app = App::start(proxy.url()).await;
    assert_eq!(
        app.breaker.config(),
        BreakerConfig::default().minimum_calls(8)
    );
    app.event("loaded", Duration::from_secs(1)).await;
    proxy.cut();
    app.event("watch_error", Duration::from_secs(5)).await;
    kv.put(QUOTA_KEY, r#"{"count": 8, "period": "1h"}"#, None)
        .await
        .unwrap();
    let deleted = kv.delete(BREAKER_KEY, None).await.unwrap();
    let revision = deleted.header().unwrap().revision();
    kv.compact(revision, None).await.unwrap();
    proxy.restore();
    let seen = app.event("loaded", Duration::from_secs(5)).await;
    assert!(seen.contains(&"compacted"), "{seen:?}");
    within(Duration::from_secs(1), "the reload is in force", || {
        app.quotas.quota("per-ip") == Some(hourly(8))
            && app.breaker.config() == BreakerConfig::default()
    })
    .await;
}

// Behind the same address now stands another cluster, whose
// revisions are past the ones seen: resuming from them would silently skip
// its history, so the source loads everything afresh.
#[tokio::test]
async fn another_cluster_behind_the_address_is_loaded_afresh() {
    let first = EtcdServer::start();
    let proxy = TcpProxy::start(first.addr()).await;
    client(&first)
        .await
        .put(BREAKER_KEY, r#"{"minimum_calls": 8}"#, None)
        .await
        .unwrap();
    let mut app = App::start(proxy.url()).await;
    app.event("loaded", Duration::from_secs(1)).await;
    assert_eq!(
        app.breaker.config(),
        BreakerConfig::default().minimum_calls(8)
    );

    // The other cluster: its quota document is written first, then enough
    // other writes that its revision passes the first cluster's.
    let other = EtcdServer::start();
    let mut kv = client(&other).await;
    kv.put(QUOTA_KEY, r#"{"count": 9, "period": "1h"}"#, None)
        .await
        .unwrap();
    for i in 0..10 {
        kv.put(format!("/elsewhere/{i}"), "x", None).await.unwrap();
    }
    proxy.cut();
    app.event("watch_error", Duration::from_secs(5)).await;
    proxy.retarget(other.addr());
    proxy.restore();
    let seen = app.event("loaded", Duration::from_secs(5)).await;
    assert!(seen.contains(&"cluster_changed"), "{seen:?}");
    within(
        Duration::from_secs(1),
        "the other cluster's documents",
        || {
            app.quotas.quota("per-ip") == Some(hourly(9))
                && app.breaker.config() == BreakerConfig::default()
        },
    )
    .await;
}

// The preset's `config_source`: the stack follows etcd and its readiness
// checks that etcd.
#[cfg(feature = "axum")]
#[tokio::test]
async fn the_stack_preset_follows_its_config_source() {
    let etcd = EtcdServer::start();
    let config = battlement::stack::StackConfig::from_toml(&format!(
        r#"
        [[rate_limit.policies]]
        name = "per-ip"
        quota = {{ count = 2, period = "1h" }}

        [config_source.etcd]
        endpoints = ["{}"]
        "#,
        etcd.endpoint()
    ))
    .unwrap();
    let server = battlement::stack::server(&config).await.unwrap();
    let watch = server.config_watch().expect("a config watch");
    tokio::time::timeout(Duration::from_secs(5), watch.loaded())
        .await
        .unwrap();
    client(&etcd)
        .await
        .put(QUOTA_KEY, r#"{"count": 5, "period": "1h"}"#, None)
        .await
        .unwrap();
    let quotas = server.rate_limit().unwrap();
    within(Duration::from_secs(1), "5/h from etcd", || {
        quotas.quota("per-ip") == Some(hourly(5))
    })
    .await;
    let app = server.router(axum::Router::new());
    let res = app
        .oneshot(
            Request::get("/readyz")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("\"etcd:responseTime\""), "{body}");
}
