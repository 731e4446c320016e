//! `[metrics] count_probes` and `[trace] trace_probes` in the stack config:
//! health probes stay out of the metrics unless the config counts them.
//! (A test binary of its own: it installs the global meter provider.)
#![cfg(feature = "axum")]

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use battlement::stack::{self, StackConfig};
use http_body_util::BodyExt;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use tower::ServiceExt;

/// The `http.route` of every `http.server.request.duration` series.
fn routes(provider: &SdkMeterProvider, exporter: &InMemoryMetricExporter) -> Vec<String> {
    provider.force_flush().unwrap();
    let all = exporter.get_finished_metrics().unwrap();
    let Some(metric) = all
        .iter()
        .rev()
        .flat_map(|rm| rm.scope_metrics())
        .flat_map(|sm| sm.metrics())
        .find(|m| m.name() == "http.server.request.duration")
    else {
        return Vec::new();
    };
    let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() else {
        panic!("not an f64 histogram")
    };
    h.data_points()
        .filter_map(|p| {
            p.attributes()
                .find(|kv| kv.key.as_str() == "http.route")
                .map(|kv| kv.value.to_string())
        })
        .collect()
}

#[tokio::test]
async fn probes_are_counted_only_when_the_config_says_so() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    for (toml, livez_counted) in [("", false), ("metrics = { count_probes = true }", true)] {
        let config = StackConfig::from_toml(toml).unwrap();
        let server = stack::server(&config).await.unwrap();
        let app = server.router(Router::new().route("/hello", get(|| async { "hello" })));
        for path in ["/livez", "/hello"] {
            let req = http::Request::get(path).body(Body::empty()).unwrap();
            let res = app.clone().oneshot(req).await.unwrap();
            res.into_body().collect().await.unwrap();
        }
        let routes = routes(&provider, &exporter);
        assert!(routes.contains(&"/hello".to_owned()), "{routes:?}");
        assert_eq!(
            routes.contains(&"/livez".to_owned()),
            livez_counted,
            "{toml:?}: {routes:?}"
        );
    }
}

#[test]
fn the_trace_layer_takes_trace_probes_and_both_take_a_bare_switch() {
    let config =
        StackConfig::from_toml("[trace]\ntrace_probes = true\n[metrics]\nenabled = false").unwrap();
    assert!(config.trace.enabled && config.trace.trace_probes);
    assert!(!config.metrics.enabled && !config.metrics.count_probes);
    let config = StackConfig::from_toml("trace = false\nmetrics = true").unwrap();
    assert!(!config.trace.enabled && config.metrics.enabled && !config.metrics.count_probes);
    let typo = StackConfig::from_toml("[metrics]\ncount_probe = true").unwrap_err();
    assert!(typo.to_string().contains("count_probe"), "{typo}");
}
