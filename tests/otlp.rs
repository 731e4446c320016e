//! OTLP export end to end (SPEC MT-3, TR-1): the axum example, started
//! with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a gRPC receiver run by
//! this test, sends the spans and metrics of a request, with the request's
//! trace id.
#![cfg(all(feature = "otlp", feature = "axum", feature = "prometheus"))]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
use support::{Process, free_port};
use tonic::{Request, Response, Status};

/// What the receiver got: `(trace id hex, span name)` and metric names.
#[derive(Clone, Default)]
struct Received {
    spans: Arc<Mutex<Vec<(String, String)>>>,
    metrics: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        req: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    spans.push((id, span.name));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Received {
    async fn export(
        &self,
        req: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let mut metrics = self.metrics.lock().unwrap();
        for rm in req.into_inner().resource_metrics {
            for sm in rm.scope_metrics {
                metrics.extend(sm.metrics.into_iter().map(|m| m.name));
            }
        }
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The axum example, built with the same features as this test (cargo
/// only needs to link it: the library is already built).
fn example_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--all-features", "--example", "axum"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success(), "building the axum example failed");
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile.join("examples").join("axum")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_example_exports_spans_and_metrics_over_otlp() {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .add_service(MetricsServiceServer::new(received.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let port = free_port();
    let binary = example_binary();
    let _app = Process::spawn("axum example", move || {
        let mut cmd = Command::new(&binary);
        cmd.env("BIND", format!("127.0.0.1:{port}"))
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{receiver}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "300")
            .env_remove("REDIS_URL")
            .env_remove("ETCD_ENDPOINTS");
        cmd
    });
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while client.get(format!("{base}/livez")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the example never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

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
        let span = received
            .spans
            .lock()
            .unwrap()
            .iter()
            .any(|(id, name)| id == trace && name == "GET /items/{id}");
        let metric = received
            .metrics
            .lock()
            .unwrap()
            .iter()
            .any(|m| m == "http.server.request.duration");
        if span && metric {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(15),
            "spans {:?}, metrics {:?}",
            received.spans.lock().unwrap(),
            received.metrics.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
