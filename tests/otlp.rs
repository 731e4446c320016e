//! OTLP export end to end: the axum example, started
//! with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a receiver run by this
//! test (HTTP/protobuf by default, gRPC with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`),
//! sends the spans, metrics and access-log record of a request, with the
//! request's trace id;
//! `OTEL_TRACES_SAMPLER` decides which requests are traced.
//!
//! Both transports are exercised, so this needs both `otlp-http` and
//! `otlp-grpc` (as `--all-features` has).
#![cfg(all(
    feature = "otlp-http",
    feature = "otlp-grpc",
    feature = "axum",
    feature = "prometheus"
))]

mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use support::{Example, example_binary, free_port};
use tonic::{Request, Response, Status};

/// A span's name and its attributes.
type NamedAttributes = (String, Vec<KeyValue>);

/// A log record: trace id and span id (hex), and its attributes.
type LogRecord = (String, String, Vec<KeyValue>);

/// A span's trace id, name, span id and parent span id (hex).
type Spanned = (String, String, String, String);

/// What the receiver got: `(trace id hex, span name)`, each span's
/// attributes as decoded, each span's `(name, span id hex)`, metric
/// names, and log records.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<(String, String)>>>,
    attributes: Arc<Mutex<Vec<NamedAttributes>>>,
    span_ids: Arc<Mutex<Vec<(String, String)>>>,
    tree: Arc<Mutex<Vec<Spanned>>>,
    messages: Arc<Mutex<Vec<(String, String, String)>>>,
    metrics: Arc<Mutex<Vec<String>>>,
    logs: Arc<Mutex<Vec<LogRecord>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Received {
    fn add_spans(&self, req: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let id = hex(&span.trace_id);
                    self.tree.lock().unwrap().push((
                        id.clone(),
                        span.name.clone(),
                        hex(&span.span_id),
                        hex(&span.parent_span_id),
                    ));
                    self.span_ids
                        .lock()
                        .unwrap()
                        .push((span.name.clone(), hex(&span.span_id)));
                    self.attributes
                        .lock()
                        .unwrap()
                        .push((span.name.clone(), span.attributes));
                    spans.push((id, span.name));
                }
            }
        }
    }

    fn add_logs(&self, req: ExportLogsServiceRequest) {
        let mut logs = self.logs.lock().unwrap();
        for rl in req.resource_logs {
            for sl in rl.scope_logs {
                for record in sl.log_records {
                    let ids = (hex(&record.trace_id), hex(&record.span_id));
                    if let Some(any_value::Value::StringValue(body)) =
                        record.body.as_ref().and_then(|b| b.value.as_ref())
                    {
                        let message = (ids.0.clone(), ids.1.clone(), body.clone());
                        self.messages.lock().unwrap().push(message);
                    }
                    logs.push((ids.0, ids.1, record.attributes));
                }
            }
        }
    }

    fn add_metrics(&self, req: ExportMetricsServiceRequest) {
        let mut metrics = self.metrics.lock().unwrap();
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                metrics.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
    }
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.add_spans(req.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Received {
    async fn export(
        &self,
        req: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.add_logs(req.into_inner());
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        req: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.add_metrics(req.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// An OTLP/HTTP receiver (binary protobuf on `/v1/traces`, `/v1/metrics`
/// and `/v1/logs`) on a free loopback port.
async fn http_receiver(received: Received) -> std::net::SocketAddr {
    use axum::body::Bytes;
    use axum::http::{StatusCode, header};
    use axum::routing::post;
    use prost::Message;

    fn reply(message: impl Message) -> impl axum::response::IntoResponse {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            message.encode_to_vec(),
        )
    }
    let traces = received.clone();
    let logs = received.clone();
    let app = axum::Router::new()
        .route(
            "/v1/logs",
            post(move |body: Bytes| async move {
                let req =
                    ExportLogsServiceRequest::decode(body).map_err(|_| StatusCode::BAD_REQUEST)?;
                logs.add_logs(req);
                Ok::<_, StatusCode>(reply(ExportLogsServiceResponse::default()))
            }),
        )
        .route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                let req =
                    ExportTraceServiceRequest::decode(body).map_err(|_| StatusCode::BAD_REQUEST)?;
                traces.add_spans(req);
                Ok::<_, StatusCode>(reply(ExportTraceServiceResponse::default()))
            }),
        )
        .route(
            "/v1/metrics",
            post(move |body: Bytes| async move {
                let req = ExportMetricsServiceRequest::decode(body)
                    .map_err(|_| StatusCode::BAD_REQUEST)?;
                received.add_metrics(req);
                Ok::<_, StatusCode>(reply(ExportMetricsServiceResponse::default()))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_example_exports_spans_and_metrics_over_otlp_grpc() {
    let received = Received::default();
    let receiver = grpc_receiver(received.clone()).await;
    the_example_exports_to(&format!("http://{receiver}"), "grpc", &received).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_example_exports_spans_and_metrics_over_otlp_http_by_default() {
    let received = Received::default();
    let receiver = http_receiver(received.clone()).await;
    // No OTEL_EXPORTER_OTLP_PROTOCOL: HTTP/protobuf is the default.
    the_example_exports_to(&format!("http://{receiver}"), "", &received).await;
}

/// The axum example, exporting to `endpoint` over `protocol` (empty: the
/// variable unset) with `env` set too, once it listens: its process and
/// base URL.
fn start_example(endpoint: &str, protocol: &str, env: &[(&str, &str)]) -> (Example, String) {
    let mut vars = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info"),
    ];
    if !protocol.is_empty() {
        vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", protocol));
    }
    vars.extend_from_slice(env);
    let app = Example::start("axum", &vars);
    let base = app.base.clone();
    (app, base)
}

/// A receiver of OTLP over gRPC: its address.
async fn grpc_receiver(received: Received) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .add_service(MetricsServiceServer::new(received.clone()))
            .add_service(LogsServiceServer::new(received))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    receiver
}

/// Starts the axum example exporting to `endpoint` over `protocol`, sends
/// one request with a known trace id, and waits (15 s at most) until
/// `received` holds its server span, the duration metric and its access
/// log record, which carries the server span's trace and span ids.
async fn the_example_exports_to(endpoint: &str, protocol: &str, received: &Received) {
    let (_app, base) = start_example(endpoint, protocol, &[]);
    let client = reqwest::Client::new();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = client
        .get(format!("{base}/items/42"))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let waited = Instant::now();
    loop {
        let in_trace = |span: &str| {
            let spans = received.spans.lock().unwrap();
            spans.iter().any(|(id, name)| id == trace && name == span)
        };
        let (span, application) = (in_trace("GET /items/{id}"), in_trace("load item"));
        let metric = received
            .metrics
            .lock()
            .unwrap()
            .iter()
            .any(|m| m == "http.server.request.duration");
        let access = received.logs.lock().unwrap().iter().any(|(_, _, attrs)| {
            attrs.iter().any(|kv| {
                kv.key == "http.route"
                    && kv.value.as_ref().and_then(|v| v.value.as_ref())
                        == Some(&any_value::Value::StringValue("/items/{id}".into()))
            })
        });
        if span && application && metric && access {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(15),
            "spans {:?}, metrics {:?}, logs {:?}",
            received.spans.lock().unwrap(),
            received.metrics.lock().unwrap(),
            received.logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The access-log record belongs to the server span.
    let server_span = received
        .span_ids
        .lock()
        .unwrap()
        .iter()
        .find(|(name, _)| name == "GET /items/{id}")
        .map(|(_, id)| id.clone())
        .expect("the server span's id");
    let logs = received.logs.lock().unwrap().clone();
    let (trace_id, span_id, record) = logs
        .iter()
        .find(|(_, _, attrs)| attrs.iter().any(|kv| kv.key == "http.route"))
        .expect("the access-log record");
    assert_eq!((trace_id.as_str(), span_id), (trace, &server_span));
    let status = record
        .iter()
        .find(|kv| kv.key == "http.response.status_code")
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value);
    assert_eq!(status, Some(any_value::Value::IntValue(200)), "{record:?}");

    // One server span for the request, and the handler's own span under
    // it; the handler's log record belongs to the handler's span.
    let tree: Vec<_> = received
        .tree
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, ..)| id == trace)
        .cloned()
        .collect();
    let mut names: Vec<_> = tree.iter().map(|(_, name, ..)| name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["GET /items/{id}", "load item"], "{tree:?}");
    let (_, _, handler_span, parent) = tree
        .iter()
        .find(|(_, name, ..)| name == "load item")
        .expect("the handler's span");
    assert_eq!(
        parent, &server_span,
        "the handler's span is the server span's child"
    );
    let messages = received.messages.lock().unwrap().clone();
    let loaded = messages
        .iter()
        .find(|(.., body)| body == "item loaded")
        .expect("the handler's log record");
    assert_eq!(
        (&loaded.0, &loaded.1),
        (&trace.to_owned(), handler_span),
        "{loaded:?}"
    );

    // As the semantic conventions type them: numbers are ints, and the
    // request id is recorded once.
    let attributes = received.attributes.lock().unwrap().clone();
    let (_, server) = attributes
        .iter()
        .find(|(name, _)| name == "GET /items/{id}")
        .expect("the server span's attributes");
    let get = |key: &str| {
        server
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
    };
    assert_eq!(
        get("http.response.status_code").and_then(|v| v.value),
        Some(any_value::Value::IntValue(200))
    );
    assert_eq!(
        server
            .iter()
            .filter(|kv| kv.key.ends_with("request.id"))
            .count(),
        1,
        "{server:?}"
    );
    for (name, attrs) in &attributes {
        for kv in attrs {
            if let Some(any_value::Value::StringValue(text)) =
                kv.value.as_ref().and_then(|v| v.value.as_ref())
            {
                assert!(
                    text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()),
                    "{name}: {} is the string {text:?}, not an int",
                    kv.key
                );
            }
        }
    }
}

// The sampler `OTEL_TRACES_SAMPLER` names reaches the preset's trace layer:
// at a ratio of 0 new traces export nothing and a caller's "not sampled"
// is followed, while a caller's "sampled" is followed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environments_sampler_decides_which_requests_are_traced() {
    let received = Received::default();
    let receiver = grpc_receiver(received.clone()).await;
    let env = [
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ];
    let (_app, base) = start_example(&format!("http://{receiver}"), "grpc", &env);
    let client = reqwest::Client::new();
    let get = |traceparent: Option<String>| {
        let mut req = client.get(format!("{base}/items/42"));
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        req.send()
    };
    for _ in 0..5 {
        assert_eq!(get(None).await.unwrap().status(), 200);
    }
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let res = get(Some(format!("00-{unsampled}-b7ad6b7169203331-00")));
    assert_eq!(res.await.unwrap().status(), 200);
    let sampled = "4bf92f3577b34da6a3ce929d0e0e4736";
    let res = get(Some(format!("00-{sampled}-00f067aa0ba902b7-01")));
    assert_eq!(res.await.unwrap().status(), 200);

    // The sampled request came last; once its span is in, so is every
    // span exported before it (one batch every 100 ms).
    let waited = Instant::now();
    while !received
        .spans
        .lock()
        .unwrap()
        .iter()
        .any(|(id, _)| id == sampled)
    {
        assert!(
            waited.elapsed() < Duration::from_secs(15),
            "no span of the sampled request"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans = received.spans.lock().unwrap().clone();
    assert!(
        spans.iter().all(|(id, _)| id == sampled),
        "only the sampled request is traced: {spans:?}"
    );
}

// A sampler name the SDK does not know is an error at startup, naming the
// variable, not a silent fall back to tracing every request.
#[test]
fn an_unknown_sampler_stops_the_example_at_startup() {
    let mut child = Command::new(example_binary("axum"))
        .env_clear()
        .env("BIND", format!("127.0.0.1:{}", free_port()))
        .env("OTEL_TRACES_SAMPLER", "traceidratoi")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the example started with an unknown sampler");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("OTEL_TRACES_SAMPLER"), "{stderr}");
    assert!(stderr.contains("traceidratoi"), "{stderr}");
}
