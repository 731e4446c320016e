//! Starting the preset: the resolved stack is logged, and a policy that
//! counts every client in one bucket by default is warned about; with
//! `stack::serve` a per-client limit sees each client's address; without
//! connect info, every keyed request gets a 500 whose body and one log
//! line name the fix.
#![cfg(feature = "axum")]

mod support;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use battlement::stack::{self, StackConfig};
use http::{Request, StatusCode};
use support::{Lines, send};

const PER_IP: &str = r#"
[[rate_limit.policies]]
name = "per-ip"
quota = { count = 100, period = "1m" }
key = { by = "peer_ip" }
"#;

async fn app() -> (stack::ServerStack, Router) {
    let config = StackConfig::from_toml(PER_IP).unwrap();
    let server = stack::server(&config).await.unwrap();
    let app = server.router(Router::new().route("/hello", get(|| async { "hello" })));
    (server, app)
}

async fn hello(addr: std::net::SocketAddr) -> support::Reply {
    send(
        Request::get(format!("http://{addr}/hello"))
            .body(String::new())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn served_by_the_stack_every_client_has_an_address() {
    let (_server, app) = app().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { stack::serve(listener, app).await });
    let reply = hello(addr).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "hello")
    );
    assert_eq!(reply.header("ratelimit-policy"), "\"per-ip\";q=100;w=60");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn served_without_connect_info_the_500_names_the_fix_once_in_the_log() {
    let lines = Lines::default();
    let writer = lines.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();
    let (_server, app) = app().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    for _ in 0..3 {
        let reply = hello(addr).await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            reply.body.contains("connect info") && reply.body.contains("ServerStack::serve"),
            "{}",
            reply.body
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = lines.text();
    assert_eq!(
        text.matches("connect info").count(),
        1,
        "one warning naming the fix: {text}"
    );
}

// The resolved stack at `info`, once; a policy left without a key (one
// bucket for every client) gets a `warn`, a deliberate global one does not.
#[tokio::test]
async fn the_resolved_stack_is_logged_and_a_default_global_key_warned_about() {
    let (lines, _log) = support::capture_logs(tracing::Level::INFO);
    let config = StackConfig::from_toml(
        r#"
        [[rate_limit.policies]]
        name = "forgot-the-key"
        quota = "5/10s"

        [[rate_limit.policies]]
        name = "site-wide"
        quota = "1000/s"
        key = { by = "global" }

        [idempotency]
        routes = ["/orders"]
        "#,
    )
    .unwrap();
    let _server = stack::server(&config).await.unwrap();
    let text = lines.text();
    assert!(
        text.contains("layers=request_id > trace > metrics > rate_limit > idempotency"),
        "{text}"
    );
    assert!(text.contains("backend=\"memory\""), "{text}");
    assert!(
        text.contains("policy=forgot-the-key") && text.contains("key=\"global (no key set)\""),
        "{text}"
    );
    assert!(text.contains("scope=\"authorization\""), "{text}");
    let warnings: Vec<_> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert!(warnings[0].contains("policy=forgot-the-key"), "{text}");
}
