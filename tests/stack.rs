//! The server and client presets built from one config (issue: the
//! assembled stack): config errors name the field, the backend is checked
//! at startup, and the layers run in the documented order.
#![cfg(feature = "axum")]

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use battlement::stack::{self, StackConfig};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn call(app: &Router, mut req: Request<Body>) -> (StatusCode, http::HeaderMap, String) {
    let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

const CONFIG: &str = r#"
[[rate_limit.policies]]
name = "per-ip"
quota = { count = 3, period = "1m" }
key = { by = "peer_ip" }

[circuit_breaker]
thresholds = { consecutive_failures = 2, open_for = "30s" }

[idempotency]
routes = ["/orders"]
required = true
"#;

async fn app() -> Router {
    let config = StackConfig::from_toml(CONFIG).unwrap();
    let server = stack::server(&config).await.unwrap();
    let orders = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let api = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
        .route(
            "/orders",
            post(move || {
                let n = orders.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                async move { (StatusCode::CREATED, format!("order {n}")) }
            }),
        )
        .route("/other", post(|| async { "no key needed" }));
    server.router(api)
}

#[test]
fn a_typo_names_the_field_and_its_path() {
    let err = StackConfig::from_toml(
        r#"
        [[rate_limit.policies]]
        name = "per-ip"
        quota = { count = 3, perod = "1m" }
        "#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("rate_limit.policies[0].quota"), "{err}");
    assert!(err.contains("perod"), "{err}");
    let err = StackConfig::from_json(r#"{"trace": {"enabld": false}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("trace") && err.contains("enabld"), "{err}");
    let err = StackConfig::from_toml("[circuit_breaker.thresholds]\nfailure_rate = 0.0")
        .map(drop)
        .err();
    // A value out of range is caught when the stack is built (below).
    assert!(err.is_none());
}

#[tokio::test]
async fn invalid_values_fail_when_the_stack_is_built() {
    let config =
        StackConfig::from_toml("[circuit_breaker.thresholds]\nfailure_rate = 0.0").unwrap();
    let err = stack::server(&config).await.unwrap_err().to_string();
    assert!(err.contains("failure_rate"), "{err}");
    let config = StackConfig::from_toml(
        "[[rate_limit.policies]]\nname = \"bad name\"\nquota = { count = 1, period = \"1s\" }",
    )
    .unwrap();
    let err = stack::server(&config).await.unwrap_err().to_string();
    assert!(err.contains("bad name"), "{err}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_missing_or_dead_backend_fails_at_startup() {
    let err = StackConfig::from_toml("[backend]\nkind = \"redis\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("backend") && err.contains("urls"), "{err}");
    // A dead server: it holds its port (so no other test can take it) and
    // closes every connection at once.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = dead.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((conn, _)) = dead.accept().await {
            drop(conn);
        }
    });
    let config = StackConfig::from_toml(&format!(
        "[backend]\nkind = \"redis\"\nurls = [\"redis://127.0.0.1:{port}\"]"
    ))
    .unwrap();
    let err = stack::server(&config).await.unwrap_err().to_string();
    assert!(err.starts_with("store:"), "{err}");
}

#[tokio::test]
async fn every_layer_runs_in_the_documented_order() {
    let app = app().await;
    let (status, headers, body) = call(&app, get_req("/hello")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(headers["ratelimit-policy"], "\"per-ip\";q=3;w=60");

    // Idempotency on /orders only, inside the rate limit.
    let order = |key: Option<&str>| {
        let mut b = Request::post("/orders");
        if let Some(key) = key {
            b = b.header("idempotency-key", format!("\"{key}\""));
        }
        b.body(Body::empty()).unwrap()
    };
    assert_eq!(call(&app, order(None)).await.0, StatusCode::BAD_REQUEST);
    let (status, headers, body) = call(&app, order(Some("k1"))).await;
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "order 1"));
    assert!(!headers.contains_key("idempotent-replayed"));
    // The fourth request of the minute: denied before idempotency, with
    // the request id (outside the rate limit) on the rejection.
    let (status, headers, _) = call(&app, order(Some("k1"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("x-request-id"));
    assert!(headers.contains_key("retry-after"));
    // Health is not rate limited.
    for path in ["/livez", "/readyz", "/startupz"] {
        assert_eq!(call(&app, get_req(path)).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn idempotency_covers_only_its_routes_even_nested() {
    let config =
        StackConfig::from_toml("[idempotency]\nroutes = [\"/v1/orders/{id}\"]\nrequired = true")
            .unwrap();
    let server = stack::server(&config).await.unwrap();
    let v1 = Router::new()
        .route("/orders/{id}", post(|| async { "paid" }))
        .route("/other", post(|| async { "no key needed" }));
    let app = server.router(Router::new().nest("/v1", v1));
    let post_to = |uri: &str| Request::post(uri).body(Body::empty()).unwrap();
    assert_eq!(
        call(&app, post_to("/v1/orders/7")).await.0,
        StatusCode::BAD_REQUEST,
        "a key is required on the nested route"
    );
    let (status, _, body) = call(&app, post_to("/v1/other")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "no key needed"));
}

#[tokio::test]
async fn layers_switched_off_leave_the_routes_and_health_served() {
    let hello = || Router::new().route("/hello", get(|| async { "hello" }));
    let off = "request_id = false\ntrace = false\nmetrics = false";
    let server = stack::server(&StackConfig::from_toml(off).unwrap())
        .await
        .unwrap();
    let app = server.router(hello());
    let (status, headers, body) = call(&app, get_req("/hello")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    assert!(!headers.contains_key("x-request-id"));
    assert_eq!(call(&app, get_req("/readyz")).await.0, StatusCode::OK);

    // Only the rate limit on: the API is limited, health is not wrapped.
    let limited = format!(
        "{off}\n[[rate_limit.policies]]\nname = \"per-ip\"\nquota = {{ count = 1, period = \"1m\" }}\nkey = {{ by = \"peer_ip\" }}"
    );
    let server = stack::server(&StackConfig::from_toml(&limited).unwrap())
        .await
        .unwrap();
    let app = server.router(hello());
    assert_eq!(call(&app, get_req("/hello")).await.0, StatusCode::OK);
    let (status, headers, _) = call(&app, get_req("/hello")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!headers.contains_key("x-request-id"));
    for _ in 0..3 {
        let (status, headers, _) = call(&app, get_req("/livez")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!headers.contains_key("ratelimit"));
    }
}

#[test]
fn unknown_fields_in_key_settings_and_switches_as_booleans() {
    let err = StackConfig::from_toml(
        "[[rate_limit.policies]]\nname = \"a\"\nquota = { count = 1, period = \"1s\" }\nkey = { by = \"peer_ip\", trusted_proxies = [] }",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("trusted_proxies"), "{err}");
    let config = StackConfig::from_toml("trace = false\n[metrics]\nenabled = false").unwrap();
    assert!(!config.trace.enabled && !config.metrics.enabled && config.request_id.enabled);
}

#[tokio::test]
async fn replays_and_the_server_breaker() {
    let app = app().await;
    let order = Request::post("/orders")
        .header("idempotency-key", "\"same\"")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, order).await.0, StatusCode::CREATED);
    let again = Request::post("/orders")
        .header("idempotency-key", "\"same\"")
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = call(&app, again).await;
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "order 1"));
    assert_eq!(headers["idempotent-replayed"], "true");
    // Two 500s in a row open the server breaker: the next is a 503.
    let app = self::app().await;
    assert_eq!(
        call(&app, get_req("/fail")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        call(&app, get_req("/fail")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let (status, headers, _) = call(&app, get_req("/hello")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "30");
    // Probes are not shed by the open breaker.
    assert_eq!(call(&app, get_req("/readyz")).await.0, StatusCode::OK);
}

// Overload protection from the same document: a fixed concurrency limit
// and a server timeout on the API routes (never on the health routes),
// and hedging in the client preset.
#[tokio::test]
async fn overload_settings_come_from_the_config() {
    let config = StackConfig::from_toml(
        r#"
        concurrency_limit = { limit = { fixed = 1 } }
        deadline = { timeout = "50ms" }

        [client.hedge]
        delay = { fixed = "20ms" }
        max_hedged_fraction = 0.05
        "#,
    )
    .unwrap();
    let server = stack::server(&config).await.unwrap();
    assert_eq!(server.concurrency_limit().map(|h| h.limit()), Some(1));
    let app = server.router(Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            "late"
        }),
    ));
    let (status, headers, _) = call(&app, get_req("/slow")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(call(&app, get_req("/readyz")).await.0, StatusCode::OK);
    stack::client("upstream", &config.client, server.store().clone()).unwrap();

    let bad = StackConfig::from_toml("[client.hedge]\nmax_hedged_fraction = 2.0\n").unwrap();
    assert!(stack::client("upstream", &bad.client, server.store().clone()).is_err());
}

// The `[rate_limit]` and `[idempotency]` sections of a stack document are
// the layers' own configs: built by the preset or by `from_config` by
// hand, the same requests get the same answers.
#[tokio::test]
async fn the_stack_sections_build_the_layers_from_config() {
    use battlement::backends::MemoryStore;
    use battlement::idempotency::{IdempotencyConfig, IdempotencyLayer};
    use battlement::rate_limit::{RateLimitConfig, RateLimitLayer};

    const DOCUMENT: &str = r#"
        [rate_limit]
        legacy_headers = true
        failure = "fail_closed"

        [[rate_limit.policies]]
        name = "per-key"
        quota = { count = 4, period = "1m" }
        key = { by = "header", name = "x-api-key" }

        [idempotency]
        routes = ["/orders"]
        methods = ["post"]
        required = true
        strict_keys = true
        retention = "1h"
        scope = { by = "header", name = "x-api-key" }
    "#;
    let config = StackConfig::from_toml(DOCUMENT).unwrap();
    // Each section read on its own is the layer's config.
    let document: toml::Table = toml::from_str(DOCUMENT).unwrap();
    let rate_limit: RateLimitConfig = document["rate_limit"].clone().try_into().unwrap();
    let idempotency: IdempotencyConfig = document["idempotency"].clone().try_into().unwrap();
    assert_eq!(config.rate_limit.as_ref(), Some(&rate_limit));
    assert_eq!(config.idempotency.as_ref(), Some(&idempotency));

    let api = || {
        let orders = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        Router::new().route(
            "/orders",
            post(move || {
                let n = orders.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                async move { (StatusCode::CREATED, format!("order {n}")) }
            })
            .patch(|| async { "patched" }),
        )
    };
    let server = stack::server(&config).await.unwrap();
    let preset = server.router(api());
    let by_hand = api().layer(
        tower::ServiceBuilder::new()
            .layer(RateLimitLayer::from_config(MemoryStore::new(), &rate_limit).unwrap())
            .layer(IdempotencyLayer::from_config(MemoryStore::new(), &idempotency).unwrap()),
    );

    let order = |api_key: &str, key: Option<&str>| {
        let mut req = Request::post("/orders").header("x-api-key", api_key);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        req.body(Body::empty()).unwrap()
    };
    let patch = || {
        Request::patch("/orders")
            .header("x-api-key", "b")
            .body(Body::empty())
            .unwrap()
    };
    for app in [&preset, &by_hand] {
        let mut seen = Vec::new();
        for req in [
            order("a", Some("k1")),     // strict keys: a bare token is refused
            order("a", Some("\"k1\"")), // executes
            order("a", Some("\"k1\"")), // replayed
            patch(),                    // PATCH is not covered: no key needed
            order("a", None),           // required: refused
            order("a", Some("\"k2\"")), // the fifth of a quota of four
        ] {
            let (status, headers, body) = call(app, req).await;
            let header = |name: &str| {
                headers
                    .get(name)
                    .map_or("-", |v| v.to_str().unwrap())
                    .to_owned()
            };
            seen.push((
                status.as_u16(),
                header("x-ratelimit-remaining"),
                header("idempotent-replayed"),
                header("retry-after"),
                if status.is_success() {
                    body
                } else {
                    String::new()
                },
            ));
        }
        let row = |status: u16, remaining: &str, replayed: &str, retry: &str, body: &str| {
            let s = |v: &str| v.to_owned();
            (status, s(remaining), s(replayed), s(retry), s(body))
        };
        assert_eq!(
            seen,
            [
                row(400, "3", "-", "-", ""),
                row(201, "2", "-", "-", "order 1"),
                row(201, "1", "true", "-", "order 1"),
                row(200, "3", "-", "-", "patched"),
                row(400, "0", "-", "-", ""),
                row(429, "0", "-", "15", ""),
            ]
        );
    }
}

// One breaker default: the client preset without `[client.breaker]`, with
// a partial table, and `BreakerConfig::default()` agree on every field
// the table leaves out.
#[tokio::test]
async fn a_partial_client_breaker_table_keeps_the_one_default() {
    use battlement::backends::MemoryStore;
    use battlement::circuit_breaker::BreakerConfig;
    use battlement::client::ClientStack;

    let breaker = |document: &str| {
        let config = StackConfig::from_toml(document).unwrap();
        stack::client("upstream", &config.client, MemoryStore::new())
            .unwrap()
            .breakers()
            .config()
    };
    assert_eq!(breaker(""), BreakerConfig::default());
    assert_eq!(
        breaker("[client.breaker]\nfailure_rate = 25.0"),
        BreakerConfig::default().failure_rate(25.0)
    );
    let built = ClientStack::new("upstream", MemoryStore::new())
        .build()
        .unwrap();
    assert_eq!(built.breakers().config(), BreakerConfig::default());
    let server = StackConfig::from_toml("[circuit_breaker]").unwrap();
    assert_eq!(
        server.circuit_breaker.unwrap().thresholds,
        BreakerConfig::default()
    );
}

// By hand, `ServiceBuilderExt` assembles every layer of the server preset
// in its order: the concurrency limit sheds what the only slot cannot
// take, and the deadline answers a slow handler, both under the request
// id; a client's attempts can be hedged.
#[tokio::test]
async fn the_ext_methods_assemble_the_preset_order_by_hand() {
    use battlement::backends::MemoryStore;
    use battlement::concurrency_limit::ConcurrencyLimitLayer;
    use battlement::deadline::DeadlineLayer;
    use battlement::rate_limit::{Policy, Quota, RateLimitLayer};
    use battlement::stack::ServiceBuilderExt;
    use std::time::Duration;

    let limit = ConcurrencyLimitLayer::fixed(1).unwrap();
    let slots = limit.handle();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .layer(
            tower::ServiceBuilder::new()
                .with_request_id()
                .with_server_trace()
                .with_server_metrics()
                .with_concurrency_limit(limit)
                .with_deadline(DeadlineLayer::new(Duration::from_millis(300)).unwrap())
                .with_rate_limit(
                    RateLimitLayer::new(MemoryStore::new())
                        .policy(Policy::new("global", Quota::per_second(100).unwrap()).unwrap()),
                ),
        );
    let first = tokio::spawn({
        let app = app.clone();
        async move { call(&app, get_req("/slow")).await }
    });
    while slots.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, headers, _) = call(&app, get_req("/slow")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("x-request-id"));
    assert!(headers.contains_key("retry-after"));
    let (status, headers, _) = first.await.unwrap();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(slots.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_ext_hedge_sends_a_second_copy_of_a_slow_attempt() {
    use battlement::body::LayerBody;
    use battlement::hedge::{HedgeConfig, HedgeDelay, HedgeLayer, Hedged};
    use battlement::stack::ServiceBuilderExt;
    use bytes::Bytes;
    use http_body_util::Full;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let hedge = HedgeConfig::default().delay(HedgeDelay::Fixed(Duration::from_millis(20)));
    let client = tower::ServiceBuilder::new()
        .with_hedge(HedgeLayer::new(hedge).unwrap())
        .service_fn({
            let calls = calls.clone();
            move |_: Request<LayerBody<Full<Bytes>>>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(n.to_string()))
                }
            }
        });
    let req = Request::get("http://api.example/item")
        .body(LayerBody::inner(Full::default()))
        .unwrap();
    let res = client.oneshot(req).await.unwrap();
    assert_eq!(res.extensions().get::<Hedged>(), Some(&Hedged));
    assert_eq!(res.into_body(), "1");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
