//! The demo server (`examples/axum`) from outside: the built example runs
//! as a child process on a free port, configured by its environment
//! variables, and each test talks HTTP to it (and to the Redis or etcd it
//! was pointed at).
#![cfg(all(feature = "axum", feature = "prometheus"))]

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use http::{Request, StatusCode};
use support::{Example, Reply, free_port, send};

/// The demo with `env` (nothing else: in-memory stores).
fn demo(env: &[(&str, &str)]) -> Example {
    Example::start("axum", env)
}

/// `GET path` on `app`.
async fn get_from(app: &Example, path: &str) -> Reply {
    support::get(&app.url(path)).await
}

/// `GET path` with `x-request-id: id`.
async fn get_with_id(app: &Example, path: &str, id: &str) -> Reply {
    let req = Request::get(app.url(path)).header("x-request-id", id);
    send(req.body(String::new()).unwrap()).await
}

/// `POST /orders` with a JSON `body` and, when given, an `Idempotency-Key`.
async fn order(app: &Example, key: Option<&str>, body: &str) -> Reply {
    let mut req = Request::post(app.url("/orders")).header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    send(req.body(body.to_owned()).unwrap()).await
}

/// Polls `path` until `done` holds for its reply; fails after `limit`.
async fn poll_until(
    app: &Example,
    path: &str,
    limit: Duration,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    let started = Instant::now();
    loop {
        let reply = get_from(app, path).await;
        if done(&reply) {
            return reply;
        }
        assert!(
            started.elapsed() < limit,
            "{path} not as expected within {limit:?}: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn hello_has_a_uuid_v7_request_id() {
    let app = demo(&[]);
    let reply = get_from(&app, "/hello").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello")
    );
    let id = uuid::Uuid::parse_str(reply.header("x-request-id")).unwrap();
    assert_eq!(id.get_version_num(), 7);
}

#[tokio::test]
async fn valid_ids_are_echoed_and_bad_ones_replaced() {
    let app = demo(&[]);
    let reply = get_with_id(&app, "/hello", "edge-42").await;
    assert_eq!(reply.header("x-request-id"), "edge-42");
    let long = "a".repeat(200);
    let reply = get_with_id(&app, "/hello", &long).await;
    assert_ne!(reply.header("x-request-id"), long.as_str());
    assert!(
        !reply.header("x-request-id").is_empty(),
        "replaced, not dropped"
    );
}

#[tokio::test]
async fn items_and_health_routes() {
    let app = demo(&[]);
    let reply = get_from(&app, "/items/42").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, r#"{"id":"42"}"#)
    );
    for path in ["/livez", "/readyz", "/startupz"] {
        let reply = get_from(&app, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(
            reply.header("content-type"),
            "application/health+json",
            "{path}"
        );
    }
}

// CONCURRENCY_LIMIT=2: a third slow request at once is shed with 503
// and Retry-After, while the health routes still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_limit_are_shed_but_not_probes() {
    let app = demo(&[("CONCURRENCY_LIMIT", "2")]);
    let url = app.url("/slow?ms=3000");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { support::get(&url).await })
        })
        .collect();
    // Both are in the handler once the server counts two active requests
    // (probes and /metrics are not counted).
    poll_until(&app, "/metrics", Duration::from_secs(10), |r| {
        r.body
            .lines()
            .any(|l| l.starts_with("http_server_active_requests{") && l.ends_with(" 2"))
    })
    .await;
    let reply = get_from(&app, "/slow?ms=1").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(get_from(&app, "/readyz").await.status, StatusCode::OK);
    for task in slow {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
}

// REQUEST_TIMEOUT: a request still running after it gets 504.
#[tokio::test]
async fn a_request_past_the_timeout_gets_504() {
    let app = demo(&[("REQUEST_TIMEOUT", "1s")]);
    let reply = get_from(&app, "/slow?ms=2000").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.header("content-type"), "application/problem+json");
    let reply = get_from(&app, "/slow?ms=1").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "slept 1 ms")
    );
}

#[tokio::test]
async fn layers_none_serves_bare_routes() {
    let app = demo(&[("LAYERS", "none"), ("RATE_LIMIT", "1/h")]);
    for _ in 0..2 {
        let reply = get_from(&app, "/hello").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "hello")
        );
        assert!(!reply.headers.contains_key("x-request-id"));
        assert!(!reply.headers.contains_key("ratelimit"));
    }
    assert_eq!(get_from(&app, "/readyz").await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_forwards_the_request_id_downstream() {
    // A downstream that answers with the id it received.
    let downstream = Router::new().route(
        "/",
        get(|headers: http::HeaderMap| async move {
            headers
                .get("x-request-id")
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .unwrap_or_default()
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, downstream).await });
    let app = demo(&[("DOWNSTREAM_URL", &format!("http://{addr}/"))]);
    let reply = get_with_id(&app, "/proxy", "hop-1").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hop-1")
    );
    assert_eq!(reply.header("x-request-id"), "hop-1");
    server.abort();
}

#[tokio::test]
async fn proxy_to_a_dead_downstream_is_502_then_its_breaker_opens() {
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let app = demo(&[("DOWNSTREAM_URL", &dead)]);
    // Three attempts (connection refused), then 502.
    assert_eq!(
        get_from(&app, "/proxy").await.status,
        StatusCode::BAD_GATEWAY
    );
    // Two more failed attempts make five: the breaker opens, and its
    // open time (5 s) passes the retry deadline (3 s): 503 at once.
    assert_eq!(
        get_from(&app, "/proxy").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let reply = get_from(&app, "/proxy").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert_eq!(reply.header("retry-after"), "5");
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert!(
        reply.body.contains("\"breaker\":\"downstream\""),
        "{}",
        reply.body
    );
}

/// Readiness shows how Redis keeps what it acknowledged (the test server
/// keeps neither snapshots nor an append-only file). Redis stopped ->
/// /readyz 503 naming the redis check within 2 s while /livez stays 200;
/// Redis back -> 200 within 2 s.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_redis() {
    let mut redis = support::RedisServer::start();
    let app = demo(&[("REDIS_URL", &redis.url())]);
    let reply = get_from(&app, "/readyz").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let doc: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(doc["checks"]["redis:responseTime"][0]["status"], "pass");
    let durability = &doc["checks"]["redis:durability"][0];
    assert_eq!(
        (&durability["observedValue"], &durability["status"]),
        (&"volatile".into(), &"pass".into()),
        "{}",
        reply.body
    );

    redis.stop();
    // Check results are reused for up to 1 s, so poll until it shows.
    let limit = Duration::from_secs(2);
    let reply = poll_until(&app, "/readyz", limit, |r| {
        r.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let doc: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(doc["checks"]["redis:responseTime"][0]["status"], "fail");
    assert_eq!(get_from(&app, "/livez").await.status, StatusCode::OK);

    redis.restart();
    poll_until(&app, "/readyz", limit, |r| r.status == StatusCode::OK).await;
}

#[tokio::test]
async fn requests_over_the_quota_get_429_but_health_does_not() {
    let app = demo(&[("RATE_LIMIT", "2/m")]);
    for _ in 0..2 {
        assert_eq!(get_from(&app, "/hello").await.status, StatusCode::OK);
    }
    let reply = get_from(&app, "/items/1").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), "30");
    assert_eq!(reply.header("content-type"), "application/problem+json");
    assert!(
        reply.headers.contains_key("x-request-id"),
        "rejections carry the request id"
    );
    for path in ["/livez", "/readyz", "/startupz"] {
        assert_eq!(get_from(&app, path).await.status, StatusCode::OK, "{path}");
    }
}

/// Two instances sharing one Redis with `RATE_LIMIT=50/h`, 100 requests
/// alternating between them: exactly 50 × 200 and 50 × 429, every 429
/// with valid headers. (An hour, so that no unit comes back during the run
/// however slow the machine: `50/m` gives one back every 1.2 s.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_quota_through_redis() {
    let redis = support::RedisServer::start();
    let env = [("RATE_LIMIT", "50/h"), ("REDIS_URL", &redis.url())];
    let (a, b) = (demo(&env), demo(&env));
    let (mut ok, mut limited) = (0, 0);
    for i in 0..100 {
        let app = if i % 2 == 0 { &a } else { &b };
        let reply = get_from(app, "/hello").await;
        assert_eq!(reply.header("ratelimit-policy"), "\"per-ip\";q=50;w=3600");
        let ratelimit = reply.header("ratelimit");
        assert!(ratelimit.starts_with("\"per-ip\";r="), "{ratelimit}");
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                let wait: u64 = reply.header("retry-after").parse().unwrap();
                assert!((1..=72).contains(&wait), "one request per 72 s: {wait}");
                assert!(ratelimit.starts_with("\"per-ip\";r=0;t="), "{ratelimit}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, limited), (50, 50));
}

/// `ETCD_ENDPOINTS`: the per-IP quota and the `/proxy` breaker's
/// thresholds follow the documents under `/battlement/config/`.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_and_breaker_thresholds_reload_from_etcd() {
    let etcd = support::EtcdServer::start();
    let dead = format!("http://127.0.0.1:{}/", free_port());
    let app = demo(&[
        ("ETCD_ENDPOINTS", &etcd.endpoint()),
        ("DOWNSTREAM_URL", &dead),
    ]);
    let mut kv = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .unwrap();
    let key = "/battlement/config/rate_limit/per-ip";
    kv.put(key, r#"{"count": 2, "period": "1h"}"#, None)
        .await
        .unwrap();
    let limit = Duration::from_secs(5);
    poll_until(&app, "/hello", limit, |r| {
        r.header("ratelimit-policy") == "\"per-ip\";q=2;w=3600"
    })
    .await;
    let statuses = [
        get_from(&app, "/hello").await.status,
        get_from(&app, "/hello").await.status,
    ];
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // The /proxy breaker stays open 9 s instead of the built-in 5 s; the
    // documents apply in the order they were written, so once the delete
    // below is seen, so is this.
    let breaker = "/battlement/config/circuit_breaker/downstream";
    kv.put(breaker, r#"{"open_for": "9s"}"#, None)
        .await
        .unwrap();
    kv.delete(key, None).await.unwrap();
    poll_until(&app, "/hello", limit, |r| {
        r.status == StatusCode::OK && r.header("ratelimit-policy") == "\"per-ip\";q=100;w=1"
    })
    .await;
    assert_eq!(
        get_from(&app, "/proxy").await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        get_from(&app, "/proxy").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let reply = get_from(&app, "/proxy").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.header("retry-after"), "9");
}

#[tokio::test]
async fn orders_execute_once_per_idempotency_key() {
    let app = demo(&[]);
    let reply = order(&app, None, "{}").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    let first = order(&app, Some("\"a\""), r#"{"tea":1}"#).await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (StatusCode::CREATED, r#"{"body":{"tea":1},"order":1}"#)
    );
    assert!(!first.headers.contains_key("idempotent-replayed"));
    let again = order(&app, Some("\"a\""), r#"{"tea":1}"#).await;
    assert_eq!(
        (again.status, again.body.as_str()),
        (StatusCode::CREATED, first.body.as_str())
    );
    assert_eq!(again.header("idempotent-replayed"), "true");
    let other = order(&app, Some("\"a\""), r#"{"tea":2}"#).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    let next = order(&app, Some("\"b\""), r#"{"tea":2}"#).await;
    assert_eq!(next.body, r#"{"body":{"tea":2},"order":2}"#);
}

/// Two instances on one Redis, 100 concurrent orders with one key and one
/// body -> the counter moves by exactly one.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_execute_a_key_once_through_redis() {
    let redis = support::RedisServer::start();
    let env = [("RATE_LIMIT", "10000/s"), ("REDIS_URL", &redis.url())];
    let apps = std::sync::Arc::new([demo(&env), demo(&env)]);
    let before: i64 = redis
        .cli(&["GET", "example:orders"])
        .trim()
        .parse()
        .unwrap_or(0);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let apps = apps.clone();
            tokio::spawn(async move {
                order(&apps[i % 2], Some("\"order-42\""), r#"{"item":"tea"}"#).await
            })
        })
        .collect();
    let mut created = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        match reply.status {
            StatusCode::CREATED => created.push((
                reply.headers.contains_key("idempotent-replayed"),
                reply.body,
            )),
            StatusCode::CONFLICT => conflicts += 1,
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    let after: i64 = redis
        .cli(&["GET", "example:orders"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(after - before, 1, "exactly one execution");
    let executed = created.iter().filter(|(replayed, _)| !replayed).count();
    assert_eq!(executed, 1);
    assert!(
        created.iter().all(|(_, body)| *body == created[0].1),
        "byte-identical"
    );
    assert_eq!(created.len() + conflicts, 100);
    let reply = order(&apps[1], Some("\"order-42\""), r#"{"item":"cake"}"#).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// /metrics has the request duration histogram and the resilience event
/// counter after traffic.
#[tokio::test]
async fn metrics_route_exposes_request_durations_and_resilience_events() {
    let app = demo(&[("RATE_LIMIT", "1/m")]);
    assert_eq!(get_from(&app, "/items/1").await.status, StatusCode::OK);
    assert_eq!(
        get_from(&app, "/items/2").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let reply = get_from(&app, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.header("content-type").starts_with("text/plain"),
        "{reply:?}"
    );
    let text = &reply.body;
    assert!(
        text.contains("# TYPE http_server_request_duration_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("http_route=\"/items/{id}\""), "{text}");
    promtool_check(text);
    let denied = text
        .lines()
        .find(|l| l.starts_with("battlement_events_total{") && l.contains("event=\"denied\""));
    assert!(denied.is_some(), "{text}");
}

/// `promtool check metrics` accepts `text` (Debian package `prometheus`;
/// `scripts/test.sh` installs it). Without promtool the check fails under
/// CI and is skipped elsewhere.
fn promtool_check(text: &str) {
    use std::io::Write;
    let spawned = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) if std::env::var_os("CI").is_some() => panic!("promtool: {e}"),
        Err(e) => return eprintln!("skipping promtool check: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// A flood of keyed orders spread over 150 other clients, past the memory
// store's cap of 100,000 records, never evicts a client with one record:
// its retry is still a replay of its order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_keys_from_other_clients_never_evicts_a_clients_order() {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    const FLOOD: usize = 105_000;
    const CLIENTS: usize = 150;
    const WORKERS: usize = 32;
    let app = demo(&[("RATE_LIMIT", "1000000/s")]);
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let order = |auth: String, key: String| {
        Request::post(app.url("/orders"))
            .header("content-type", "application/json")
            .header("authorization", auth)
            .header("idempotency-key", key)
            .body(Full::new(bytes::Bytes::from_static(b"{\"item\":\"tea\"}")))
            .unwrap()
    };
    let victim = || order("Bearer victim".into(), "\"victim-1\"".into());
    let first = client.request(victim()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let placed = first.into_body().collect().await.unwrap().to_bytes();

    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let (client, next) = (client.clone(), next.clone());
        let url = app.url("/orders");
        workers.spawn(async move {
            let mut not_created = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= FLOOD {
                    return not_created;
                }
                let req = Request::post(url.as_str())
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer flood-{}", i % CLIENTS))
                    .header("idempotency-key", format!("\"k-{i}\""))
                    .body(Full::new(bytes::Bytes::from_static(b"{}")))
                    .unwrap();
                let res = client.request(req).await.unwrap();
                if res.status() != StatusCode::CREATED {
                    not_created += 1;
                }
                res.into_body().collect().await.unwrap();
            }
        });
    }
    let not_created: usize = workers.join_all().await.into_iter().sum();
    assert_eq!(not_created, 0, "every flood order was placed");

    let again = client.request(victim()).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let replayed = again.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(replayed, placed, "the same order");
}
