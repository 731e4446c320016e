//! The preset adjusted from its config and code: each layer's options in
//! the stack config, one hook that shapes every rejection, and the preset
//! as a plain tower layer in front of a hyper server.
#![cfg(feature = "axum")]

mod support;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use battlement::key::PeerAddr;
use battlement::reject::{Problem, Shaped};
use battlement::stack::{self, StackConfig};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::SpanKind;
use tower::{Layer, ServiceExt};

/// Sends `req` from a client at 192.0.2.1.
async fn call(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    send(app, from("192.0.2.1", req)).await
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

async fn app_of(toml: &str) -> Router {
    let config = StackConfig::from_toml(toml).unwrap();
    let server = stack::server(&config).await.unwrap();
    server.router(Router::new().route("/hello", get(|| async { "hello" })))
}

#[tokio::test]
async fn the_request_id_section_sets_the_header_and_the_trust() {
    let app = app_of("[request_id]\nheader = \"x-correlation-id\"").await;
    let req = Request::get("/hello")
        .header("x-correlation-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = call(&app, req).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-correlation-id"], "abc-123");
    assert!(!headers.contains_key("x-request-id"), "{headers:?}");

    // An untrusted edge: a new id whatever the caller sent.
    let app = app_of("[request_id]\nheader = \"x-correlation-id\"\ntrust_incoming = false").await;
    let req = Request::get("/hello")
        .header("x-correlation-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = call(&app, req).await;
    let id = headers["x-correlation-id"].to_str().unwrap();
    assert_ne!(id, "abc-123");
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");

    // The bare switches still read.
    let (_, headers, _) = call(&app_of("request_id = false").await, get_req("/hello")).await;
    assert!(!headers.contains_key("x-request-id"), "{headers:?}");
    let (_, headers, _) = call(&app_of("request_id = true").await, get_req("/hello")).await;
    assert!(headers.contains_key("x-request-id"), "{headers:?}");

    // A header that is not one fails when the stack is built.
    let config = StackConfig::from_toml("[request_id]\nheader = \"not a header\"").unwrap();
    let err = stack::server(&config).await.unwrap_err().to_string();
    assert!(err.contains("request_id.header"), "{err}");
}

#[tokio::test]
async fn span_names_and_untraced_paths_come_from_the_trace_section() {
    let config = StackConfig::from_toml(
        r#"
        [trace]
        untraced = ["/internal/*", "/favicon.ico"]
        span_names = [{ path = "/admin/*", name = "admin" }]
        "#,
    )
    .unwrap();
    let server = stack::server(&config).await.unwrap();
    let app = server.router(
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/admin/{page}", get(|| async { "admin" }))
            .route("/internal/{job}", get(|| async { "job" }))
            .route("/favicon.ico", get(|| async { "icon" })),
    );
    // The preset's trace layer takes the global provider; the requests
    // carry a trace of their own to find their spans by.
    let global = support::global_spans();
    let trace_id = opentelemetry::trace::TraceId::from(0x5eed_u128 << 64 | 0xcafe);
    for path in [
        "/hello",
        "/admin/users",
        "/internal/jobs",
        "/favicon.ico",
        "/livez",
    ] {
        let mut req = get_req(path);
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        req.headers_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        let (status, _, _) = call(&app, req).await;
        assert_eq!(status, 200, "{path}");
    }
    let mut spans = support::spans_in(&global, trace_id);
    spans.sort_by_key(|s| s.start_time);
    let names: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Server)
        .map(|s| s.name.as_ref())
        .collect();
    assert_eq!(names, ["GET /hello", "admin"]);

    // A pattern with a `*` inside is refused when read.
    let err = StackConfig::from_toml("[trace]\nuntraced = [\"/a/*/b\"]").unwrap_err();
    assert!(err.to_string().contains("trace.untraced"), "{err}");
    // `trace = true` is still the layer with its defaults.
    assert_eq!(
        StackConfig::from_toml("trace = true").unwrap().trace,
        Default::default()
    );
}

const LIMITED: &str = r#"
[[rate_limit.policies]]
name = "per-ip"
quota = { count = 1, period = "1m" }
key = { by = "peer_ip" }

[idempotency]
routes = ["/orders"]
required = true
"#;

async fn limited_app(shape: bool) -> Router {
    let config = StackConfig::from_toml(LIMITED).unwrap();
    let mut server = stack::server(&config).await.unwrap();
    if shape {
        server = server.shape_rejections(|problem: &Problem| {
            Some(Shaped::json(&serde_json::json!({
                "error": { "status": problem.status().as_u16(), "message": problem.title() }
            })))
        });
    }
    server.router(
        Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/orders", post(|| async { "order" }))
            .route(
                "/teapot",
                get(|| async { Problem::new(StatusCode::IM_A_TEAPOT, "Teapot") }),
            )
            .route(
                "/broken",
                get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
            ),
    )
}

fn from(peer: &str, mut req: Request<Body>) -> Request<Body> {
    req.extensions_mut()
        .insert(PeerAddr(format!("{peer}:1000").parse().unwrap()));
    req
}

/// Sends `req` as it comes (its peer already set).
async fn send(app: &Router, req: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test]
async fn one_hook_shapes_the_rejections_of_every_layer_and_of_handlers() {
    let app = limited_app(true).await;
    // The rate limit's 429, its Retry-After kept.
    assert_eq!(
        send(&app, from("192.0.2.1", get_req("/hello"))).await.2,
        "hello"
    );
    let (status, headers, body) = send(&app, from("192.0.2.1", get_req("/hello"))).await;
    assert_eq!(status, 429);
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(headers.contains_key("x-request-id"), "{headers:?}");
    assert_eq!(
        body,
        r#"{"error":{"message":"Too Many Requests","status":429}}"#
    );
    // The idempotency layer's 400 for a missing key.
    let req = Request::post("/orders").body(Body::empty()).unwrap();
    let (status, headers, body) = send(&app, from("192.0.2.2", req)).await;
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, r#"{"error":{"message":"Bad Request","status":400}}"#);
    // A `Problem` a handler answers with.
    let (status, headers, body) = send(&app, from("192.0.2.3", get_req("/teapot"))).await;
    assert_eq!(status, 418);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body, r#"{"error":{"message":"Teapot","status":418}}"#);
    // A handler's own error is not a rejection.
    let (status, _, body) = send(&app, from("192.0.2.4", get_req("/broken"))).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "broken")
    );
    // gRPC rejections keep their trailers-only form.
    let grpc = || {
        Request::post("/hello")
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, body) = send(&app, from("192.0.2.1", grpc())).await;
    assert_eq!(headers["grpc-status"], "8");
    assert_eq!(headers["content-type"], "application/grpc");
    assert!(body.is_empty(), "{body}");
}

#[tokio::test]
async fn without_a_hook_rejections_and_handler_problems_are_problem_json() {
    let app = limited_app(false).await;
    send(&app, from("192.0.2.1", get_req("/hello"))).await;
    let (status, headers, body) = send(&app, from("192.0.2.1", get_req("/hello"))).await;
    assert_eq!(status, 429);
    assert_eq!(headers["content-type"], "application/problem+json");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["status"], 429);
    let (status, headers, body) = send(&app, from("192.0.2.3", get_req("/teapot"))).await;
    assert_eq!(status, 418);
    assert_eq!(headers["content-type"], "application/problem+json");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["title"], "Teapot");
}

/// The preset as a plain tower layer around a tower service, with no axum
/// in the path: the request id, the health probes, the rate limit and the
/// shaped rejections.
#[tokio::test]
async fn the_plain_layer_wraps_any_tower_service() {
    use battlement::body::LayerBody;

    let config = StackConfig::from_toml(
        r#"
        [[rate_limit.policies]]
        name = "per-ip"
        quota = { count = 2, period = "1m" }
        key = { by = "peer_ip" }
        "#,
    )
    .unwrap();
    let server = stack::server(&config)
        .await
        .unwrap()
        .shape_rejections(|problem: &Problem| {
            Some(Shaped::new(
                http::HeaderValue::from_static("text/plain"),
                format!("refused: {}", problem.title()),
            ))
        });
    let handler = tower::service_fn(|req: Request<LayerBody<Full<Bytes>>>| async move {
        let path = req.uri().path().to_owned();
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(format!(
            "hello from {path}"
        )))))
    });
    let svc = tower::util::BoxCloneService::new(server.layer().layer(handler).map_response(
        |res: http::Response<_>| {
            res.map(|body| http_body_util::BodyExt::map_err(body, |e| e.to_string()).boxed())
        },
    ));
    let get = |path: &str| {
        let mut req = Request::get(path).body(Full::<Bytes>::default()).unwrap();
        // The peer the per-ip policy keys by.
        req.extensions_mut()
            .insert(PeerAddr("192.0.2.1:4000".parse().unwrap()));
        let svc = svc.clone();
        async move {
            let res = svc.oneshot(req).await.unwrap();
            let (parts, body) = res.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (
                parts.status,
                parts.headers,
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
    };
    let (status, headers, body) = get("/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "hello from /hello")
    );
    assert!(headers.contains_key("x-request-id"), "{headers:?}");
    // Probes are answered by the stack and never rate limited.
    for _ in 0..3 {
        let (status, headers, body) = get("/readyz").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["content-type"], "application/health+json");
        assert!(headers.contains_key("x-request-id"), "{headers:?}");
    }
    assert_eq!(get("/hello").await.0, 200);
    let (status, headers, body) = get("/hello").await;
    assert_eq!(status, 429);
    assert_eq!(headers["content-type"], "text/plain");
    assert_eq!(body, "refused: Too Many Requests");
}

/// Every foreign type a user meets in the public signatures is reachable
/// through battlement, at the version battlement was built with.
#[test]
fn foreign_types_in_signatures_are_reexported() {
    use battlement::KeyValue;
    use battlement::metrics::MetricsLayer;
    use battlement::trace::ExtraAttributes;

    struct Tenant;
    impl ExtraAttributes for Tenant {
        fn request(&self, _: &battlement::http::request::Parts, attributes: &mut Vec<KeyValue>) {
            attributes.push(KeyValue::new("app.tenant", "a"));
        }
    }
    let meter = battlement::opentelemetry::global::meter("test");
    let _metrics = MetricsLayer::with_meter(&meter, false).attributes(Tenant);
    let proxies: Vec<battlement::ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    let _key = battlement::key::ClientIp::new(proxies);
    let _schema: battlement::schemars::Schema = StackConfig::schema();
    let _problem = Problem::new(StatusCode::CONFLICT, "Conflict")
        .extension("key", battlement::serde_json::json!("k"));
    let _level: battlement::tracing::Level = StackConfig::default().access_log.client_errors;
    let _sampler: battlement::opentelemetry_sdk::trace::Sampler =
        battlement::trace::HeadSampler::always_on().sdk_sampler();
}
