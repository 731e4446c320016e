//! Request metrics with the OpenTelemetry SDK's in-memory exporter
//!.
#![cfg(feature = "axum")]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use battlement::metrics::MetricsLayer;
use battlement::trace::DURATION_BUCKETS;
use http_body_util::BodyExt;
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, HistogramDataPoint, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use tower::ServiceExt;

/// One histogram series: its attributes, count and bucket bounds.
type Series = (Vec<KeyValue>, u64, Vec<f64>);

struct Meters {
    exporter: InMemoryMetricExporter,
    provider: SdkMeterProvider,
}

impl Meters {
    fn new() -> Self {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        Self { exporter, provider }
    }

    fn layer(&self) -> MetricsLayer {
        MetricsLayer::with_meter(&self.provider.meter("test"), false)
    }

    /// Flushes and finds `name`'s aggregation.
    fn histogram(&self, name: &str) -> (String, Vec<Series>) {
        self.provider.force_flush().unwrap();
        let all = self.exporter.get_finished_metrics().unwrap();
        let metric = all
            .iter()
            .rev()
            .flat_map(|rm| rm.scope_metrics())
            .flat_map(|sm| sm.metrics())
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no {name}"));
        let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() else {
            panic!("{name} is not an f64 histogram")
        };
        let points = h
            .data_points()
            .map(|p: &HistogramDataPoint<f64>| {
                let mut attrs: Vec<KeyValue> = p.attributes().cloned().collect();
                attrs.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
                (attrs, p.count(), p.bounds().collect())
            })
            .collect();
        (metric.unit().to_owned(), points)
    }

    fn active(&self) -> i64 {
        self.provider.force_flush().unwrap();
        let all = self.exporter.get_finished_metrics().unwrap();
        let Some(metric) = all
            .iter()
            .rev()
            .flat_map(|rm| rm.scope_metrics())
            .flat_map(|sm| sm.metrics())
            .find(|m| m.name() == "http.server.active_requests")
        else {
            return 0;
        };
        let AggregatedMetrics::I64(MetricData::Sum(sum)) = metric.data() else {
            panic!("active_requests is not an i64 sum")
        };
        sum.data_points().map(|p| p.value()).sum()
    }
}

fn app(m: &Meters) -> Router {
    Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/hang", get(std::future::pending::<&'static str>))
        .layer(m.layer())
}

async fn send(app: &Router, uri: &str) {
    let res = app
        .clone()
        .oneshot(http::Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    res.into_body().collect().await.unwrap();
}

// Name, unit, buckets, attributes with the route template.
#[tokio::test]
async fn server_duration_histogram_follows_semconv() {
    let m = Meters::new();
    let app = app(&m);
    send(&app, "/items/42").await;
    send(&app, "/items/43").await;
    let (unit, points) = m.histogram("http.server.request.duration");
    assert_eq!(unit, "s");
    assert_eq!(points.len(), 1, "one series for one route");
    let (attrs, count, bounds) = &points[0];
    assert_eq!(*count, 2);
    assert_eq!(bounds, &DURATION_BUCKETS.to_vec());
    let expected = vec![
        KeyValue::new("http.request.method", "GET"),
        KeyValue::new("http.response.status_code", 200i64),
        KeyValue::new("http.route", "/items/{id}"),
        KeyValue::new("network.protocol.version", "1.1"),
        KeyValue::new("url.scheme", "http"),
    ];
    assert_eq!(attrs, &expected);
}

// Each route, method, scheme, version and status keeps its own series, on
// two layers sharing one meter too.
#[tokio::test]
async fn statuses_methods_and_schemes_of_one_route_are_separate_series() {
    let m = Meters::new();
    let status =
        |code: u16| move || async move { http::StatusCode::from_u16(code).unwrap_or_default() };
    let app = Router::new()
        .route("/ok", get(status(200)).post(status(200)))
        .route("/fail", get(status(503)))
        .layer(m.layer());
    let other = Router::new()
        .route("/ok", get(status(200)))
        .layer(m.layer());
    let call = |app: &Router, method: &str, uri: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let app = app.clone();
        async move {
            app.oneshot(req)
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
        }
    };
    for _ in 0..3 {
        call(&app, "GET", "/ok").await;
    }
    call(&other, "GET", "/ok").await;
    call(&app, "POST", "/ok").await;
    call(&app, "GET", "https://example.com/ok").await;
    call(&app, "GET", "/fail").await;
    call(&app, "GET", "/fail").await;
    let (_, points) = m.histogram("http.server.request.duration");
    let count = |method: &str, scheme: &str, route: &str, status: i64| {
        let found: Vec<&Series> = points
            .iter()
            .filter(|(attrs, _, _)| {
                attrs.contains(&KeyValue::new("http.request.method", method.to_owned()))
                    && attrs.contains(&KeyValue::new("url.scheme", scheme.to_owned()))
                    && attrs.contains(&KeyValue::new("http.route", route.to_owned()))
                    && attrs.contains(&KeyValue::new("http.response.status_code", status))
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{method} {scheme} {route} {status}: {points:?}"
        );
        found[0].clone()
    };
    assert_eq!(count("GET", "http", "/ok", 200).1, 4);
    assert_eq!(count("POST", "http", "/ok", 200).1, 1);
    assert_eq!(count("GET", "https", "/ok", 200).1, 1);
    let (attrs, n, _) = count("GET", "http", "/fail", 503);
    assert_eq!(n, 2);
    assert!(
        attrs.contains(&KeyValue::new("error.type", "503")),
        "{attrs:?}"
    );
    assert_eq!(points.len(), 4, "{points:?}");
    assert_eq!(m.active(), 0);
}

// Random unmatched paths and methods add no series.
#[tokio::test]
async fn unmatched_paths_and_odd_methods_create_no_series() {
    let m = Meters::new();
    let app = app(&m);
    send(&app, "/first-miss").await;
    let before = m.histogram("http.server.request.duration").1.len();
    for i in 0..10_000 {
        send(&app, &format!("/miss/{i}/{}", fastrand::u64(..))).await;
    }
    for method in ["PURGE", "FOO", "BAR"] {
        let req = http::Request::builder()
            .method(method)
            .uri("/x")
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(req).await.unwrap();
    }
    let (_, points) = m.histogram("http.server.request.duration");
    assert_eq!(points.len(), before + 1, "only one _OTHER series was added");
    let total: u64 = points.iter().map(|p| p.1).sum();
    assert_eq!(total, 10_004);
}

// Cancelled requests leave the active count.
#[tokio::test]
async fn active_requests_return_to_zero_after_cancellation() {
    let m = Meters::new();
    let app = app(&m);
    let mut pending = Vec::new();
    for _ in 0..5 {
        let app = app.clone();
        pending.push(tokio::spawn(async move {
            app.oneshot(http::Request::get("/hang").body(Body::empty()).unwrap())
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(m.active(), 5);
    for task in pending {
        task.abort();
        let _ = task.await;
    }
    assert_eq!(m.active(), 0);
}

// A gRPC call is timed in `rpc.server.call.duration` with the
// RPC attributes and its status, without the HTTP method and scheme; it
// still counts in (and leaves) the server's active requests.
#[tokio::test]
async fn grpc_calls_have_their_own_duration_series() {
    let m = Meters::new();
    let app = Router::new()
        .route(
            "/pkg.Greeter/Hello",
            axum::routing::post(|| async { ([("grpc-status", "5")], "") }),
        )
        .layer(m.layer());
    let req = http::Request::post("/pkg.Greeter/Hello")
        .header("content-type", "application/grpc")
        .body(Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
    let (unit, points) = m.histogram("rpc.server.call.duration");
    assert_eq!(unit, "s");
    assert_eq!(points.len(), 1);
    let (attrs, count, _) = &points[0];
    assert_eq!(*count, 1);
    let expected = vec![
        KeyValue::new("rpc.grpc.status_code", 5i64),
        KeyValue::new("rpc.method", "Hello"),
        KeyValue::new("rpc.service", "pkg.Greeter"),
        KeyValue::new("rpc.system", "grpc"),
    ];
    assert_eq!(attrs, &expected);
    assert_eq!(m.active(), 0, "the call left the active requests");
}

// `grpc-status` is what the other side sent: a number gRPC does not
// define reads as UNKNOWN (2), so no answer can add a series.
#[tokio::test]
async fn undefined_grpc_statuses_read_as_unknown() {
    let m = Meters::new();
    let app = Router::new()
        .route(
            "/pkg.Greeter/Hello",
            axum::routing::post(|headers: http::HeaderMap| async move {
                ([("grpc-status", headers["x-answer"].clone())], "")
            }),
        )
        .layer(m.layer());
    for code in (100..200).map(|c: i32| c.to_string()).chain(["14".into()]) {
        let req = http::Request::post("/pkg.Greeter/Hello")
            .header("content-type", "application/grpc")
            .header("x-answer", code)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    assert_eq!(
        m.rpc_series(),
        ["pkg.Greeter/Hello 14", "pkg.Greeter/Hello 2"]
    );
}

impl Meters {
    /// Every series of the last export, across all instruments.
    fn series(&self) -> usize {
        self.provider.force_flush().unwrap();
        let all = self.exporter.get_finished_metrics().unwrap();
        let Some(last) = all.last() else { return 0 };
        last.scope_metrics()
            .flat_map(|sm| sm.metrics())
            .map(|metric| match metric.data() {
                AggregatedMetrics::F64(MetricData::Histogram(h)) => h.data_points().count(),
                AggregatedMetrics::I64(MetricData::Sum(s)) => s.data_points().count(),
                _ => 0,
            })
            .sum()
    }

    /// The attributes of each `rpc.server.call.duration` series, as
    /// `service/method status`.
    fn rpc_series(&self) -> Vec<String> {
        let value = |attrs: &[KeyValue], key: &str| {
            attrs
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map_or("-".to_owned(), |kv| kv.value.to_string())
        };
        let mut names: Vec<String> = self
            .histogram("rpc.server.call.duration")
            .1
            .iter()
            .map(|(attrs, _, _)| {
                format!(
                    "{}/{} {}",
                    value(attrs, "rpc.service"),
                    value(attrs, "rpc.method"),
                    value(attrs, "rpc.grpc.status_code")
                )
            })
            .collect();
        names.sort();
        names
    }
}

/// A gRPC request to `path`.
fn grpc_call(path: &str) -> http::Request<Body> {
    http::Request::post(path)
        .header("content-type", "application/grpc")
        .body(Body::empty())
        .unwrap()
}

/// A stand-in for a tonic server, whose routing happens inside it: `path`
/// streams its answer (status in the trailers); every other path is
/// UNIMPLEMENTED and a call with `x-reject` is rejected (RESOURCE_EXHAUSTED),
/// both trailers-only.
fn grpc_server(
    path: &'static str,
) -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<Body>,
    Error = std::convert::Infallible,
> + Clone {
    tower::service_fn(move |req: http::Request<Body>| async move {
        let trailers_only = |code: &'static str| {
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code)
                .body(Body::empty())
                .unwrap()
        };
        let res = if req.headers().contains_key("x-reject") {
            trailers_only("8")
        } else if req.uri().path() == path {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = [
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::new())),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(Body::new(http_body_util::StreamBody::new(
                    futures_util::stream::iter(frames),
                )))
                .unwrap()
        } else {
            trailers_only("12")
        };
        Ok(res)
    })
}

/// Sends `req` to `svc` and reads the whole answer.
async fn call<S, B>(svc: &S, req: http::Request<Body>)
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    res.into_body().collect().await.unwrap();
}

// Issue 19: gRPC names, HTTP methods and schemes come from the client, so
// only recognized ones become labels: 1,000 gRPC calls to random services
// and methods and 1,000 requests with random methods and schemes add at most
// three series (their `_OTHER` ones).
#[tokio::test]
async fn random_grpc_paths_methods_and_schemes_add_at_most_three_series() {
    let m = Meters::new();
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route(
            "/pkg.Greeter/Hello",
            axum::routing::post(|| async {
                (
                    [("content-type", "application/grpc"), ("grpc-status", "0")],
                    "",
                )
            }),
        )
        .layer(m.layer());
    send(&app, "/items/1").await;
    let res = app.clone().oneshot(grpc_call("/pkg.Greeter/Hello")).await;
    res.unwrap().into_body().collect().await.unwrap();
    let before = m.series();
    for i in 0..1_000 {
        let n = fastrand::u32(..);
        let path = match i % 2 {
            0 => format!("/evil{n}.Svc/Method{n}"),
            _ => format!("/pkg.Greeter/Method{n}"),
        };
        let res = app.clone().oneshot(grpc_call(&path)).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    for _ in 0..1_000 {
        let n = fastrand::u32(..);
        let req = http::Request::builder()
            .method(format!("M{n}").as_str())
            .uri(format!("s{n}://host/items/1"))
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let added = m.series() - before;
    assert!(added <= 3, "{added} series added");
    assert_eq!(
        m.rpc_series(),
        ["_OTHER/_OTHER -", "pkg.Greeter/Hello 0"],
        "random gRPC paths share one series"
    );
}

// Issue 19: behind a server that routes inside (tonic), a gRPC method is
// named from the first call a handler answers (a streamed answer); an
// UNIMPLEMENTED answer or a rejection proves nothing, until the method has
// been answered once.
#[tokio::test]
async fn grpc_methods_are_named_once_a_handler_answers_them() {
    let m = Meters::new();
    let svc = tower::ServiceBuilder::new()
        .layer(m.layer())
        .service(grpc_server("/answered.Greeter/Hello"));
    let rejected = || {
        let mut req = grpc_call("/answered.Greeter/Hello");
        req.headers_mut()
            .insert("x-reject", http::HeaderValue::from_static("1"));
        req
    };
    call(&svc, rejected()).await;
    for _ in 0..100 {
        let n = fastrand::u32(..);
        call(&svc, grpc_call(&format!("/evil{n}.Svc/M{n}"))).await;
        call(&svc, grpc_call(&format!("/answered.Greeter/M{n}"))).await;
        let mut req = grpc_call(&format!("/evil{n}.Svc/M{n}"));
        req.headers_mut()
            .insert("x-reject", http::HeaderValue::from_static("1"));
        call(&svc, req).await;
    }
    call(&svc, grpc_call("/answered.Greeter/Hello")).await;
    call(&svc, rejected()).await;
    assert_eq!(
        m.rpc_series(),
        [
            "_OTHER/_OTHER 12",
            "_OTHER/_OTHER 8",
            "answered.Greeter/Hello 0",
            "answered.Greeter/Hello 8",
        ]
    );
}

// Issue 19: listed gRPC methods are named from their first call, rejected
// or not; a listed service names its service only.
#[tokio::test]
async fn listed_grpc_methods_and_services_are_named_from_the_first_call() {
    battlement::metrics::recognize_grpc(["listed.Greeter/Hello", "/listed.Health"]);
    let m = Meters::new();
    let svc = tower::ServiceBuilder::new()
        .layer(m.layer())
        .service(grpc_server("/listed.Greeter/Elsewhere"));
    call(&svc, grpc_call("/listed.Greeter/Hello")).await;
    call(&svc, grpc_call("/listed.Health/Check")).await;
    call(&svc, grpc_call("/listed.Greeter/Other")).await;
    assert_eq!(
        m.rpc_series(),
        [
            "_OTHER/_OTHER 12",
            "listed.Greeter/Hello 12",
            "listed.Health/_OTHER 12",
        ]
    );
}

// Health probes and scrapes are not requests the metrics are for: left
// out by default, counted with `count_probes(true)`.
#[tokio::test]
async fn probes_are_not_counted_unless_asked() {
    for count in [false, true] {
        let meters = Meters::new();
        let app = Router::new()
            .route("/readyz", get(|| async { "ok" }))
            .route("/metrics", get(|| async { "# nothing" }))
            .route("/orders", get(|| async { "[]" }))
            .layer(meters.layer().count_probes(count));
        for path in ["/readyz", "/metrics", "/orders"] {
            let req = http::Request::get(path).body(Body::empty()).unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            res.into_body().collect().await.unwrap();
        }
        let (_, series) = meters.histogram("http.server.request.duration");
        let routes: Vec<String> = series
            .iter()
            .filter_map(|(attrs, _, _)| {
                attrs
                    .iter()
                    .find(|kv| kv.key.as_str() == "http.route")
                    .map(|kv| kv.value.to_string())
            })
            .collect();
        let expected = if count { 3 } else { 1 };
        assert_eq!(routes.len(), expected, "count_probes({count}): {routes:?}");
        assert!(routes.contains(&"/orders".to_owned()));
    }
}

/// The tenant header and the answer's cache header, as attributes.
struct Tenant;

impl battlement::trace::ExtraAttributes for Tenant {
    fn request(&self, req: &http::request::Parts, attributes: &mut Vec<KeyValue>) {
        if let Some(tenant) = req.headers.get("x-tenant").and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("app.tenant", tenant.to_owned()));
        }
    }

    fn response(&self, res: &http::response::Parts, attributes: &mut Vec<KeyValue>) {
        let hit = res.headers.contains_key("x-cache");
        attributes.push(KeyValue::new("app.cache_hit", hit));
    }
}

// Attributes from the request and the response are on the duration
// metric; past the cap, new values of a key are `_OTHER`: 50 tenants at a
// cap of 3 make 4 series.
#[tokio::test]
async fn extra_attributes_are_recorded_and_capped() {
    let m = Meters::new();
    let app = Router::new()
        .route(
            "/items/{id}",
            get(|| async { ([("x-cache", "HIT")], "item") }),
        )
        .layer(m.layer().attributes(Tenant).max_attribute_values(3));
    for i in 0..50 {
        let req = http::Request::get("/items/1")
            .header("x-tenant", format!("tenant-{i}"))
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        res.into_body().collect().await.unwrap();
    }
    let (_, points) = m.histogram("http.server.request.duration");
    let tenant = |attrs: &Vec<KeyValue>| {
        attrs
            .iter()
            .find(|kv| kv.key.as_str() == "app.tenant")
            .map(|kv| kv.value.to_string())
    };
    let mut tenants: Vec<_> = points
        .iter()
        .map(|(attrs, count, _)| (tenant(attrs), *count))
        .collect();
    tenants.sort();
    assert_eq!(
        tenants,
        [
            (Some("_OTHER".to_owned()), 47),
            (Some("tenant-0".to_owned()), 1),
            (Some("tenant-1".to_owned()), 1),
            (Some("tenant-2".to_owned()), 1),
        ]
    );
    assert!(
        points
            .iter()
            .all(|(attrs, _, _)| attrs.contains(&KeyValue::new("app.cache_hit", true)))
    );
}
