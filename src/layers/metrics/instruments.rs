//! The instruments: OpenTelemetry semconv names, unit
//! `s`, semconv bucket boundaries.

use opentelemetry::metrics::{Histogram, Meter, UpDownCounter};

use crate::trace::DURATION_BUCKETS;

/// Every instrument the metrics layers record into.
#[derive(Debug, Clone)]
pub(crate) struct Instruments {
    pub server_duration: Histogram<f64>,
    pub active_requests: UpDownCounter<i64>,
    pub client_duration: Histogram<f64>,
    pub rpc_server_duration: Histogram<f64>,
}

impl Instruments {
    pub(crate) fn new(meter: &Meter) -> Self {
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BUCKETS.to_vec())
                .build()
        };
        Self {
            server_duration: histogram(
                "http.server.request.duration",
                "Duration of HTTP server requests",
            ),
            active_requests: meter
                .i64_up_down_counter("http.server.active_requests")
                .with_unit("{request}")
                .with_description("Number of active HTTP server requests")
                .build(),
            client_duration: histogram(
                "http.client.request.duration",
                "Duration of HTTP client requests",
            ),
            rpc_server_duration: histogram("rpc.server.call.duration", "Duration of RPCs served"),
        }
    }
}
