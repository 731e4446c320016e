//! The focused examples (`full_stack`, `idempotency`, `redis_rate_limit`,
//! `reqwest_client`) run as their `//!` headers say, checked from outside.
#![cfg(all(feature = "axum", feature = "prometheus"))]

mod support;

use http::{Request, StatusCode};
use support::{Example, Reply, get, send};

/// `POST url` with a JSON `body` and, when given, an `Idempotency-Key`.
async fn post(url: &str, key: Option<&str>, body: &str) -> Reply {
    let mut req = Request::post(url).header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    send(req.body(body.to_owned()).unwrap()).await
}

/// The README shows `examples/full_stack` as it is compiled: its code
/// below the `//!` header is the README's "full stack" block.
#[test]
fn the_readme_shows_the_full_stack_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let section = readme
        .split("## The full stack in one config")
        .nth(1)
        .expect("the README's full stack section");
    let block = section
        .split("```rust,no_run\n")
        .nth(1)
        .and_then(|rest| rest.split("```\n").next())
        .expect("a rust block in the section");
    let example = std::fs::read_to_string(format!("{root}/examples/full_stack/main.rs")).unwrap();
    let code: Vec<&str> = example
        .lines()
        .skip_while(|l| l.starts_with("//!"))
        .skip_while(|l| l.is_empty())
        .collect();
    assert_eq!(block, code.join("\n") + "\n");
}

#[tokio::test]
async fn the_full_stack_example_serves_behind_every_layer() {
    let app = Example::start("full_stack", &[]);
    let hello = get(&app.url("/hello")).await;
    assert_eq!(
        (hello.status, hello.body.as_str()),
        (StatusCode::OK, "hello")
    );
    assert!(!hello.header("x-request-id").is_empty(), "{hello:?}");
    assert_eq!(hello.header("ratelimit-policy"), "\"per-ip\";q=100;w=1");
    let orders = app.url("/orders");
    assert_eq!(
        post(&orders, None, "").await.status,
        StatusCode::BAD_REQUEST
    );
    let first = post(&orders, Some("\"o-1\""), "").await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (StatusCode::OK, "created")
    );
    let again = post(&orders, Some("\"o-1\""), "").await;
    assert_eq!(again.header("idempotent-replayed"), "true");
    let ready = get(&app.url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert!(
        !ready.headers.contains_key("ratelimit"),
        "probes are not limited"
    );
    let metrics = get(&app.url("/metrics")).await;
    assert!(
        metrics
            .body
            .contains("http_server_request_duration_seconds"),
        "{}",
        metrics.body
    );
}

#[tokio::test]
async fn the_idempotency_example_replays_a_key_and_places_the_order_once() {
    let app = Example::start("idempotency", &[]);
    let orders = app.url("/orders");
    assert_eq!(
        post(&orders, None, "{}").await.status,
        StatusCode::BAD_REQUEST
    );
    let first = post(&orders, Some("\"order-1\""), r#"{"item":"tea"}"#).await;
    assert_eq!(
        (first.status, first.body.as_str()),
        (StatusCode::CREATED, r#"{"body":{"item":"tea"},"order":1}"#)
    );
    let again = post(&orders, Some("\"order-1\""), r#"{"item":"tea"}"#).await;
    assert_eq!(again.header("idempotent-replayed"), "true");
    assert_eq!(
        (again.status, again.body.as_str()),
        (StatusCode::CREATED, first.body.as_str())
    );
    let changed = post(&orders, Some("\"order-1\""), r#"{"item":"cake"}"#).await;
    assert_eq!(changed.status, StatusCode::UNPROCESSABLE_ENTITY);
    // A bare token is a key too; a new key is a new order.
    let next = post(&orders, Some("order-2"), r#"{"item":"cake"}"#).await;
    assert_eq!(next.body, r#"{"body":{"item":"cake"},"order":2}"#);
}

/// Two instances on one Redis share each client's quota: 10 requests
/// alternating between them under `RATE_LIMIT=5/m` get 5 × 200, 5 × 429.
#[cfg(feature = "redis")]
#[tokio::test]
async fn two_redis_rate_limit_instances_share_one_quota() {
    let redis = support::RedisServer::start();
    let env = [("REDIS_URL", redis.url()), ("RATE_LIMIT", "5/m".into())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let apps = [
        Example::start("redis_rate_limit", &env),
        Example::start("redis_rate_limit", &env),
    ];
    let mut statuses = Vec::new();
    for i in 0..10 {
        let reply = get(&apps[i % 2].url("/hello")).await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(!reply.header("retry-after").is_empty(), "{reply:?}");
        }
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
}

/// The `redis_rate_limit` example refuses to start without its Redis.
#[cfg(feature = "redis")]
#[test]
fn the_redis_rate_limit_example_stops_when_redis_is_down() {
    let dead = format!("redis://127.0.0.1:{}", support::free_port());
    let mut child = std::process::Command::new(support::example_binary("redis_rate_limit"))
        .env_clear()
        .env("REDIS_URL", dead)
        .env("BIND", format!("127.0.0.1:{}", support::free_port()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the example kept running without Redis");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
}

/// Through the client stack on reqwest, a 503 is retried, and every
/// attempt carries the request id the example prints.
#[cfg(feature = "reqwest-middleware")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reqwest_client_example_retries_and_forwards_its_request_id() {
    use std::sync::{Arc, Mutex};

    use axum::http::HeaderMap;
    use axum::routing::get as route_get;

    // The first request gets 503, the others 200; the ids seen are kept.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let ids = seen.clone();
    let upstream = axum::Router::new().route(
        "/hello",
        route_get(move |headers: HeaderMap| {
            let mut ids = ids.lock().unwrap();
            let id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
            ids.push(id.unwrap_or("").to_owned());
            let status = if ids.len() == 1 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            async move { status }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, upstream).await });

    let binary = support::example_binary("reqwest_client");
    let url = format!("http://{addr}/hello");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary)
            .env_clear()
            .args([url.as_str(), "2"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("1 status=200 attempts=2 breaker=closed request_id="),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("2 status=200 attempts=1 breaker=closed request_id="),
        "{stdout}"
    );
    let printed: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split("request_id=").nth(1))
        .collect();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, [printed[0], printed[0], printed[1]]);
}
