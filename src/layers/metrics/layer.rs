//! `MetricsLayer`: server and client request metrics.

use std::sync::Arc;

use opentelemetry::metrics::Meter;
use tower_layer::Layer;

use super::instruments::LazyInstruments;
use super::service::{Extra, Metrics};
use crate::trace::ExtraAttributes;
use crate::trace::custom::ValueCap;

/// Request metrics per the OpenTelemetry semantic conventions: `http.server.request.duration` and `http.server.active_requests`
/// on servers, `rpc.server.call.duration` for gRPC calls, and
/// `http.client.request.duration` on clients — unit `s`, semconv bucket
/// boundaries ([`DURATION_BUCKETS`](crate::trace::DURATION_BUCKETS)).
/// `http.route` is axum's route template; unknown methods, schemes other
/// than `http` and `https`, and gRPC services and methods not recognized
/// (by an axum route, a handler's answer or
/// [`recognize_grpc`](super::recognize_grpc)) are `_OTHER`, so clients
/// cannot create series at will.
/// [`attributes`](Self::attributes) adds attributes of your own to the
/// duration metric, capped per key by
/// [`max_attribute_values`](Self::max_attribute_values). A duration covers the response body
/// until it ends; a request cancelled mid-flight still leaves the active
/// count.
///
/// ```
/// use battlement::metrics::MetricsLayer;
/// use tower::ServiceBuilder;
///
/// // On the global meter provider installed by the first request (e.g.
/// // by `battlement::telemetry::init`, before or after this line).
/// let server = ServiceBuilder::new().layer(MetricsLayer::server());
/// # let _ = server;
/// ```
#[derive(Debug, Clone)]
pub struct MetricsLayer {
    instruments: Arc<LazyInstruments>,
    client: bool,
    probes: bool,
    extra: Extra,
}

/// At most how many values an attribute of the user's takes by default.
const MAX_ATTRIBUTE_VALUES: usize = 100;

impl MetricsLayer {
    /// Server metrics on the global meter provider, as it is when the
    /// layer's first request comes: a layer built before
    /// [`telemetry::init`](crate::telemetry::init) (or any other
    /// installation of a provider) records into the provider installed
    /// after it.
    pub fn server() -> Self {
        Self::new(LazyInstruments::default(), false)
    }

    /// Client metrics on the global meter provider, as it is when the
    /// layer's first request comes.
    pub fn client() -> Self {
        Self::new(LazyInstruments::default(), true)
    }

    /// Metrics on `meter`; `client` for client-side metrics.
    pub fn with_meter(meter: &Meter, client: bool) -> Self {
        Self::new(LazyInstruments::on(meter), client)
    }

    fn new(instruments: LazyInstruments, client: bool) -> Self {
        Self {
            instruments: Arc::new(instruments),
            client,
            probes: false,
            extra: Extra {
                attributes: None,
                cap: Arc::new(ValueCap::new(MAX_ATTRIBUTE_VALUES)),
            },
        }
    }

    /// Adds the attributes `extra` computes from each request's head and
    /// its response's head to the duration metric
    /// (`http.server.request.duration`, `rpc.server.call.duration` or
    /// `http.client.request.duration`; not to the active-requests count).
    /// Each distinct value is a series: the values must come from a small,
    /// bounded set, which is yours to keep; past
    /// [`max_attribute_values`](Self::max_attribute_values) (100 by
    /// default) values of a key, new values are recorded as `_OTHER`.
    pub fn attributes(mut self, extra: impl ExtraAttributes) -> Self {
        self.extra.attributes = Some(Arc::new(extra));
        self
    }

    /// At most `max` distinct values per key of the
    /// [`attributes`](Self::attributes) added (default 100), counted over
    /// every service this layer makes: past it, a new value is recorded
    /// as `_OTHER`, so a value that turns out unbounded costs one series,
    /// not one per value.
    pub fn max_attribute_values(mut self, max: usize) -> Self {
        self.extra.cap = Arc::new(ValueCap::new(max));
        self
    }

    /// Server: counts probes as requests too (health checks and metric
    /// scrapes, as [`is_probe`](crate::health::is_probe) tells them). Off
    /// by default: probes would dwarf the traffic the metrics are for.
    pub fn count_probes(mut self, count: bool) -> Self {
        self.probes = count;
        self
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(
            inner,
            self.instruments.clone(),
            self.client,
            self.probes,
            self.extra.clone(),
        )
    }
}
