//! A stack built before `telemetry::init` still records into the provider
//! it installs: the layers take the global meter and sampler at their
//! first request, and the events counter again after `init`. One test in
//! its own binary, since it installs the global providers.
#![cfg(all(feature = "axum", feature = "prometheus"))]

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use battlement::events::{Event, Events};
use battlement::stack::{self, ServiceBuilderExt, StackConfig};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};

const CONFIG: &str = r#"
[telemetry]
service_name = "built-first"

[[rate_limit.policies]]
name = "one-a-minute"
quota = { count = 1, period = "1m" }
key = { by = "peer_ip" }
"#;

/// The target of the `tracing` span the handler runs in: the trace
/// layer's OpenTelemetry span, or the plain span of a request its head
/// sampler left out.
async fn span_target() -> String {
    tracing::Span::current()
        .metadata()
        .map_or("none", |m| m.target())
        .to_owned()
}

/// `uri` from one peer, as the continuation of a caller's trace that the
/// caller did not sample.
async fn call(app: &Router, uri: &str) -> (StatusCode, String) {
    let mut req = Request::get(uri)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        )
        .body(Body::empty())
        .unwrap();
    let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The lines of `text` that name `metric` and contain every label of `labels`.
fn series<'a>(text: &'a str, metric: &str, labels: &[&str]) -> Vec<&'a str> {
    text.lines()
        .filter(|line| line.starts_with(metric) && labels.iter().all(|l| line.contains(l)))
        .collect()
}

#[tokio::test]
async fn a_stack_built_before_telemetry_init_records_into_its_provider() {
    let config = StackConfig::from_toml(CONFIG).unwrap();
    // Everything built before the providers exist: the preset, the same
    // outer layers by hand, and an event (as a config source's first
    // load reports one at startup).
    let server = stack::server(&config).await.unwrap();
    let preset = server.router(Router::new().route("/preset", get(span_target)));
    let by_hand = Router::new().route("/by-hand", get(span_target)).layer(
        ServiceBuilder::new()
            .with_request_id()
            .with_server_trace()
            .with_server_metrics(),
    );
    Events::new().emit(Event::new("startup", "before_init"));

    let telemetry = config.telemetry.init().unwrap();
    let _subscriber = tracing::subscriber::set_default(
        telemetry.subscriber(tracing_subscriber::fmt::layer().with_writer(std::io::sink)),
    );

    // The installed head sampler follows the caller's "not sampled": no
    // OpenTelemetry span is built; the handler runs in the request id's
    // log-only span.
    for (app, uri) in [(&preset, "/preset"), (&by_hand, "/by-hand")] {
        assert_eq!(
            call(app, uri).await,
            (StatusCode::OK, "battlement::request_id".to_owned()),
            "{uri}"
        );
    }
    assert_eq!(
        call(&preset, "/preset").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );

    let text = telemetry.prometheus_text().unwrap();
    for route in ["/preset", "/by-hand"] {
        let route = format!("http_route=\"{route}\"");
        let seen = series(
            &text,
            "http_server_request_duration_seconds_count",
            &[&route],
        );
        assert!(!seen.is_empty(), "no duration of {route} in:\n{text}");
    }
    let denied = series(
        &text,
        "battlement_events_total",
        &["layer=\"rate_limit\"", "event=\"denied\""],
    );
    assert!(!denied.is_empty(), "no denial counted in:\n{text}");
    assert!(
        text.contains("service_name=\"built-first\""),
        "the configured service name is the resource's:\n{text}"
    );
}
