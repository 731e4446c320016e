//! Tracing with the OpenTelemetry SDK's in-memory exporter.
#![cfg(feature = "axum")]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::get;
use battlement::request_id::RequestIdLayer;
use battlement::trace::TraceLayer;
use battlement::trace::W3cBaggage;
use bytes::Bytes;
use http_body_util::BodyExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanKind, Status, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use support::{record_spans_with, traced};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing_subscriber::layer::SubscriberExt;

/// Spans end up in the returned exporter while the guard lives.
fn collect() -> (InMemorySpanExporter, tracing::subscriber::DefaultGuard) {
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(W3cBaggage::new()),
    ]));
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    record_spans_with(&provider);
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    (exporter, tracing::subscriber::set_default(subscriber))
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn app() -> Router {
    Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/limited", get(|| async { StatusCode::TOO_MANY_REQUESTS }))
        .route(
            "/broken",
            get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .layer(traced(TraceLayer::server()))
}

async fn send(app: Router, req: http::Request<Body>) -> http::Response<Body> {
    let res = app.oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    http::Response::from_parts(parts, Body::from(bytes))
}

fn get_req(uri: &str) -> http::Request<Body> {
    http::Request::get(uri)
        .header("user-agent", "test/1")
        .body(Body::empty())
        .unwrap()
}

fn server_span(exporter: &InMemorySpanExporter) -> SpanData {
    let spans = exporter.get_finished_spans().unwrap();
    spans
        .into_iter()
        .find(|s| s.span_kind == SpanKind::Server)
        .expect("a server span")
}

#[tokio::test]
async fn span_is_named_by_route_template_with_semconv_attributes() {
    let (exporter, _guard) = collect();
    send(app(), get_req("/items/42")).await;
    let span = server_span(&exporter);
    assert_eq!(span.name, "GET /items/{id}");
    assert_eq!(attr(&span, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(&span, "http.route").as_deref(), Some("/items/{id}"));
    assert_eq!(
        attr(&span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(attr(&span, "url.scheme").as_deref(), Some("http"));
    assert_eq!(
        attr(&span, "network.protocol.version").as_deref(),
        Some("1.1")
    );
    assert_eq!(
        attr(&span, "user_agent.original").as_deref(),
        Some("test/1")
    );
    assert_eq!(span.status, Status::Unset);
}

// No matched route, no raw path in the name.
#[tokio::test]
async fn unmatched_requests_are_named_by_method_only() {
    let (exporter, _guard) = collect();
    send(app(), get_req("/no/such/path")).await;
    let span = server_span(&exporter);
    assert_eq!(span.name, "GET");
    assert_eq!(attr(&span, "http.route"), None);
}

// 4xx (our own 429 included) leave the status unset; 5xx error.
#[tokio::test]
async fn client_errors_are_unset_and_server_errors_are_errors() {
    let (exporter, _guard) = collect();
    send(app(), get_req("/limited")).await;
    assert_eq!(server_span(&exporter).status, Status::Unset);
    exporter.reset();
    send(app(), get_req("/broken")).await;
    let span = server_span(&exporter);
    assert!(
        matches!(span.status, Status::Error { .. }),
        "{:?}",
        span.status
    );
    assert_eq!(attr(&span, "error.type").as_deref(), Some("500"));
}

// A valid traceparent is the parent; an invalid one starts anew.
#[tokio::test]
async fn incoming_traceparent_is_the_parent() {
    let (exporter, _guard) = collect();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = get_req("/items/1");
    req.headers_mut().insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    send(app(), req).await;
    let span = server_span(&exporter);
    assert_eq!(
        span.span_context.trace_id(),
        TraceId::from_hex(trace).unwrap()
    );
    assert_eq!(span.parent_span_id.to_string(), "00f067aa0ba902b7");

    exporter.reset();
    let mut req = get_req("/items/1");
    req.headers_mut()
        .insert("traceparent", "00-not-a-trace-id-01".parse().unwrap());
    send(app(), req).await;
    let span = server_span(&exporter);
    assert_ne!(
        span.span_context.trace_id(),
        TraceId::from_hex(trace).unwrap()
    );
    assert_ne!(span.span_context.trace_id(), TraceId::INVALID);
}

// The request id is on the span.
#[tokio::test]
async fn the_request_id_is_recorded() {
    let (exporter, _guard) = collect();
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .layer(traced(TraceLayer::server()))
        .layer(RequestIdLayer::new().span(false));
    let mut req = get_req("/items/1");
    req.headers_mut()
        .insert("x-request-id", "req-7".parse().unwrap());
    send(app, req).await;
    let span = server_span(&exporter);
    assert_eq!(attr(&span, "request.id").as_deref(), Some("req-7"));
    assert_eq!(attr(&span, "http.request.id"), None, "recorded once");
}

// The span lasts until a slow streamed body ends.
#[tokio::test]
async fn the_span_covers_a_slow_streamed_body() {
    let (exporter, _guard) = collect();
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                let chunks = async_stream_body();
                Body::from_stream(chunks)
            }),
        )
        .layer(traced(TraceLayer::server()));
    send(app, get_req("/slow")).await;
    let span = server_span(&exporter);
    let took = span.end_time.duration_since(span.start_time).unwrap();
    assert!(took >= Duration::from_millis(150), "{took:?}");
}

fn async_stream_body() -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    futures_util::stream::unfold(0, |n| async move {
        if n == 3 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        Some((Ok(Bytes::from_static(b"chunk")), n + 1))
    })
}

// The client layer injects its span's context; a 503
// answer is an error on the client span.
#[tokio::test]
async fn the_client_layer_injects_traceparent() {
    let (exporter, _guard) = collect();
    let upstream = service_fn(|req: http::Request<Body>| async move {
        let traceparent = req.headers().get("traceparent").cloned();
        let mut res = http::Response::new(Body::empty());
        *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        if let Some(tp) = traceparent {
            res.headers_mut().insert("seen-traceparent", tp);
        }
        Ok::<_, Infallible>(res)
    });
    let client = ServiceBuilder::new()
        .layer(traced(TraceLayer::client()))
        .service(upstream);
    let req = http::Request::get("http://upstream.test:8080/x")
        .body(Body::empty())
        .unwrap();
    let res = client.oneshot(req).await.unwrap();
    let seen = res.headers()["seen-traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    res.into_body().collect().await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let span = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .expect("client span");
    assert_eq!(span.name, "GET");
    let expected = format!(
        "00-{}-{}-01",
        span.span_context.trace_id(),
        span.span_context.span_id()
    );
    assert_eq!(seen, expected);
    assert_eq!(
        attr(span, "server.address").as_deref(),
        Some("upstream.test")
    );
    assert_eq!(attr(span, "server.port").as_deref(), Some("8080"));
    assert!(matches!(span.status, Status::Error { .. }));
}

// Each retry attempt is its own client span, child of the same
// parent, with `http.request.resend_count` on the resends, and each
// attempt carries its own span's context.
#[tokio::test]
async fn each_retry_attempt_is_its_own_client_span() {
    use battlement::clock::ManualClock;
    use battlement::retry::{Backoff, RetryLayer, RetryPolicy};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (exporter, _guard) = collect();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let upstream = {
        let (calls, seen) = (calls.clone(), seen.clone());
        service_fn(move |req: http::Request<_>| {
            let (calls, seen) = (calls.clone(), seen.clone());
            async move {
                if let Some(tp) = req.headers().get("traceparent") {
                    seen.lock().unwrap().push(tp.to_str().unwrap().to_owned());
                }
                let mut res = http::Response::new(Body::empty());
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok::<_, Infallible>(res)
            }
        })
    };
    let policy = RetryPolicy::default()
        .max_attempts(3)
        .backoff(Backoff::Exponential {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        });
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).unwrap().clock(clock.shared()))
        .layer(traced(TraceLayer::client()))
        .service(upstream);
    let parent = tracing::info_span!("caller");
    let req = http::Request::get("http://upstream.test/x")
        .body(Body::empty())
        .unwrap();
    let res = tracing::Instrument::instrument(client.oneshot(req), parent.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.into_body().collect().await.unwrap();
    drop(parent);

    let spans = exporter.get_finished_spans().unwrap();
    let caller = spans
        .iter()
        .find(|s| s.name == "caller")
        .expect("caller span");
    let mut attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    attempts.sort_by_key(|s| s.start_time);
    assert_eq!(attempts.len(), 3, "one client span per attempt");
    let counts: Vec<_> = attempts
        .iter()
        .map(|s| attr(s, "http.request.resend_count"))
        .collect();
    assert_eq!(counts, vec![None, Some("1".into()), Some("2".into())]);
    for span in &attempts {
        assert_eq!(span.parent_span_id, caller.span_context.span_id());
        assert_eq!(span.span_context.trace_id(), caller.span_context.trace_id());
    }
    let expected: Vec<_> = attempts
        .iter()
        .map(|s| {
            format!(
                "00-{}-{}-01",
                s.span_context.trace_id(),
                s.span_context.span_id()
            )
        })
        .collect();
    assert_eq!(
        *seen.lock().unwrap(),
        expected,
        "each attempt's own context"
    );
}

// Issue 19: gRPC span names are bounded like metric labels: a call to a
// random path is `_OTHER/_OTHER` (its path stays in `url.path`), and behind
// a server that routes inside (tonic) a method is named on the first call a
// handler answers (a streamed answer).
#[tokio::test]
async fn grpc_spans_are_named_only_for_recognized_methods() {
    let (exporter, _guard) = collect();
    let svc = ServiceBuilder::new()
        .layer(traced(TraceLayer::server()))
        .service(service_fn(|req: http::Request<Body>| async move {
            let res = if req.uri().path() == "/traced.Greeter/Hello" {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let frames = [
                    Ok::<_, Infallible>(http_body::Frame::data(Bytes::new())),
                    Ok(http_body::Frame::trailers(trailers)),
                ];
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(Body::new(http_body_util::StreamBody::new(
                        futures_util::stream::iter(frames),
                    )))
                    .unwrap()
            } else {
                http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "12")
                    .body(Body::empty())
                    .unwrap()
            };
            Ok::<_, Infallible>(res)
        }));
    let grpc = |path: &str| {
        http::Request::post(path)
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .unwrap()
    };
    for path in [
        "/evil1.Svc/M1",
        "/traced.Greeter/Nope",
        "/traced.Greeter/Hello",
    ] {
        let res = svc.clone().oneshot(grpc(path)).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let spans = exporter.get_finished_spans().unwrap();
    let named: Vec<_> = spans
        .iter()
        .map(|s| {
            format!(
                "{} {} {} {}",
                s.name,
                attr(s, "rpc.service").unwrap_or_default(),
                attr(s, "rpc.method").unwrap_or_default(),
                attr(s, "url.path").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        named,
        [
            "_OTHER/_OTHER _OTHER _OTHER /evil1.Svc/M1",
            "_OTHER/_OTHER _OTHER _OTHER /traced.Greeter/Nope",
            "traced.Greeter/Hello traced.Greeter Hello /traced.Greeter/Hello",
        ]
    );
}

fn value(span: &SpanData, key: &str) -> Option<opentelemetry::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

// Numbers are recorded as the semantic conventions type them (ints, not
// strings); `url.full` has no user info and no query values; no empty
// `tracestate` goes downstream.
#[tokio::test]
async fn client_spans_redact_the_url_type_numbers_and_send_no_empty_tracestate() {
    let (exporter, _guard) = collect();
    let upstream = service_fn(|req: http::Request<Body>| async move {
        let mut res = http::Response::new(Body::empty());
        for name in ["traceparent", "tracestate", "baggage"] {
            if let Some(v) = req.headers().get(name) {
                res.headers_mut().insert(
                    format!("seen-{name}").parse::<http::HeaderName>().unwrap(),
                    v.clone(),
                );
            }
        }
        Ok::<_, Infallible>(res)
    });
    let client = ServiceBuilder::new()
        .layer(traced(TraceLayer::client()))
        .service(upstream);
    let req = http::Request::get("http://user:secret@upstream.test:8080/x?token=abc&flag")
        .body(Body::empty())
        .unwrap();
    let res = client.oneshot(req).await.unwrap();
    assert!(res.headers().contains_key("seen-traceparent"));
    assert!(
        !res.headers().contains_key("seen-tracestate"),
        "empty tracestate sent"
    );
    res.into_body().collect().await.unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let span = spans
        .iter()
        .find(|s| s.span_kind == SpanKind::Client)
        .expect("client span");
    assert_eq!(
        attr(span, "url.full").as_deref(),
        Some("http://upstream.test:8080/x?token=REDACTED&flag")
    );
    assert_eq!(
        value(span, "server.port"),
        Some(opentelemetry::Value::I64(8080))
    );
    assert_eq!(
        value(span, "http.response.status_code"),
        Some(opentelemetry::Value::I64(200))
    );

    let (exporter, _guard) = collect();
    send(app(), get_req("/items/1")).await;
    assert_eq!(
        value(&server_span(&exporter), "http.response.status_code"),
        Some(opentelemetry::Value::I64(200))
    );
}

// A caller's baggage stays out of the request's context unless the server
// trusts it, so client stacks do not pass it on to other hosts.
#[tokio::test]
async fn inbound_baggage_is_passed_on_only_when_trusted() {
    let (_exporter, _guard) = collect();
    for trust in [false, true] {
        let handler = || async {
            let outbound = ServiceBuilder::new()
                .layer(traced(TraceLayer::client()))
                .service(service_fn(|req: http::Request<Body>| async move {
                    let baggage = req.headers().get("baggage").cloned();
                    Ok::<_, Infallible>(http::Response::new(Body::from(
                        baggage
                            .map(|b| b.to_str().unwrap().to_owned())
                            .unwrap_or_default(),
                    )))
                }));
            let res = outbound
                .oneshot(
                    http::Request::get("http://other.test/")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            res.into_body().collect().await.unwrap().to_bytes()
        };
        let app = Router::new()
            .route("/", get(handler))
            .layer(traced(TraceLayer::server().trust_baggage(trust)));
        let mut req = get_req("/");
        req.headers_mut()
            .insert("baggage", "user=alice".parse().unwrap());
        let res = send(app, req).await;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let expected: &[u8] = if trust { b"user=alice" } else { b"" };
        assert_eq!(&body[..], expected, "trust_baggage({trust})");
    }
}

// Health probes get no span by default; `trace_probes(true)` traces them.
#[tokio::test]
async fn probes_are_not_traced_unless_asked() {
    for trace in [false, true] {
        let (exporter, _guard) = collect();
        let app = Router::new()
            .route("/readyz", get(|| async { "ok" }))
            .route("/items/{id}", get(|| async { "item" }))
            .layer(traced(TraceLayer::server().trace_probes(trace)));
        send(app.clone(), get_req("/readyz")).await;
        send(app, get_req("/items/1")).await;
        let names: Vec<String> = exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .filter(|s| s.span_kind == SpanKind::Server)
            .map(|s| s.name.into_owned())
            .collect();
        let expected: &[&str] = if trace {
            &["GET /readyz", "GET /items/{id}"]
        } else {
            &["GET /items/{id}"]
        };
        assert_eq!(names, expected, "trace_probes({trace})");
    }
}

/// The tenant header and the answer's cache header, as attributes.
struct Tenant;

impl battlement::trace::ExtraAttributes for Tenant {
    fn request(&self, req: &http::request::Parts, attributes: &mut Vec<opentelemetry::KeyValue>) {
        if let Some(tenant) = req.headers.get("x-tenant").and_then(|v| v.to_str().ok()) {
            attributes.push(opentelemetry::KeyValue::new(
                "app.tenant",
                tenant.to_owned(),
            ));
        }
    }

    fn response(&self, res: &http::response::Parts, attributes: &mut Vec<opentelemetry::KeyValue>) {
        let hit = res.headers.contains_key("x-cache");
        attributes.push(opentelemetry::KeyValue::new("app.cache_hit", hit));
    }
}

// Attributes from the request and the response reach the exported span.
#[tokio::test]
async fn extra_attributes_come_from_the_request_and_the_response() {
    let (exporter, _guard) = collect();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(|| async { ([("x-cache", "HIT")], "item") }),
        )
        .layer(traced(TraceLayer::server().attributes(Tenant)));
    let req = http::Request::get("/items/1")
        .header("x-tenant", "acme")
        .body(Body::empty())
        .unwrap();
    send(app, req).await;
    let span = server_span(&exporter);
    assert_eq!(attr(&span, "app.tenant").as_deref(), Some("acme"));
    assert_eq!(
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == "app.cache_hit")
            .map(|kv| kv.value.clone()),
        Some(opentelemetry::Value::Bool(true))
    );
    assert_eq!(attr(&span, "http.route").as_deref(), Some("/items/{id}"));
}

// The span name override wins where it returns a name; elsewhere the
// default `{method} {route}` stays.
#[tokio::test]
async fn the_span_name_can_be_overridden() {
    let (exporter, _guard) = collect();
    let layer = traced(TraceLayer::server()).span_name(|req| {
        req.uri
            .path()
            .starts_with("/items/")
            .then(|| format!("item {}", req.method))
    });
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/other", get(|| async { "other" }))
        .layer(layer);
    send(app.clone(), get_req("/items/1")).await;
    send(app, get_req("/other")).await;
    let mut names: Vec<_> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .map(|s| s.name.into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["GET /other", "item GET"]);
}

// The filter leaves requests untraced; an untraced request still runs in
// the caller's trace context, so what it calls continues that trace.
#[tokio::test]
async fn a_filter_decides_which_requests_are_traced() {
    let (exporter, _guard) = collect();
    let layer = traced(TraceLayer::server()).filter(|req| req.headers.get("x-synthetic").is_none());
    let seen = || async {
        use opentelemetry::trace::TraceContextExt;
        let cx = opentelemetry::Context::current();
        cx.span().span_context().trace_id().to_string()
    };
    let app = Router::new().route("/items/{id}", get(seen)).layer(layer);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = http::Request::get("/items/1")
        .header("x-synthetic", "1")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(Body::empty())
        .unwrap();
    let res = send(app.clone(), req).await;
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, trace, "the caller's context is current");
    assert!(exporter.get_finished_spans().unwrap().is_empty());

    send(app, get_req("/items/2")).await;
    assert_eq!(server_span(&exporter).name, "GET /items/{id}");
}
