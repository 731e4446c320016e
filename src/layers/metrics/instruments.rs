//! The instruments: OpenTelemetry semconv names, unit
//! `s`, semconv bucket boundaries.

#[cfg(any(feature = "prometheus", feature = "_otlp"))]
use std::collections::HashMap;
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
use std::sync::RwLock;
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

#[cfg(any(feature = "prometheus", feature = "_otlp"))]
use foldhash::fast::RandomState;
use http::{Method, Version};

use opentelemetry::KeyValue;
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
use opentelemetry::metrics::{BoundHistogram, BoundUpDownCounter};
use opentelemetry::metrics::{Histogram, Meter, UpDownCounter};

use opentelemetry_semantic_conventions::metric;

use crate::trace::DURATION_BUCKETS;

/// The methods semconv names (see `semconv::method`), `_OTHER` last.
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "_OTHER",
];

/// The values of `url.scheme`.
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
const SCHEMES: [&str; 3] = ["http", "https", "_OTHER"];

/// A layer's instruments, shared by its services: made on the meter the
/// layer was given, or else on the global meter provider as it is at the
/// layer's first request, so that a layer built before the provider is
/// installed still records into it.
#[derive(Debug, Default)]
pub(crate) struct LazyInstruments(OnceLock<Arc<Instruments>>);

impl LazyInstruments {
    /// Instruments made on `meter` now.
    pub(crate) fn on(meter: &Meter) -> Self {
        Self(OnceLock::from(Arc::new(Instruments::new(meter))))
    }

    /// The instruments, made on the global meter provider at the first
    /// call if none were given (later calls cost one atomic load).
    pub(crate) fn get(&self) -> &Arc<Instruments> {
        self.0.get_or_init(|| {
            Arc::new(Instruments::new(&opentelemetry::global::meter(
                "battlement",
            )))
        })
    }
}

/// Every instrument the metrics layers record into.
#[derive(Debug, Clone)]
pub(crate) struct Instruments {
    pub server_duration: Histogram<f64>,
    pub active_requests: UpDownCounter<i64>,
    pub client_duration: Histogram<f64>,
    pub rpc_server_duration: Histogram<f64>,
    /// `http.server.active_requests` bound to each method and scheme, on
    /// first use: a request counts itself in and out without the SDK
    /// hashing its attributes twice.
    #[cfg(any(feature = "prometheus", feature = "_otlp"))]
    active_bound: Box<[OnceLock<BoundUpDownCounter<i64>>; METHODS.len() * SCHEMES.len()]>,
    /// `http.server.request.duration` bound to the attribute sets seen so
    /// far (at most [`MAX_BOUND_DURATIONS`]), by route and [`ServerKey`].
    #[cfg(any(feature = "prometheus", feature = "_otlp"))]
    server_bound: Arc<BoundDurations>,
}

/// Bound duration histograms: routes, each with the other attributes'
/// [`ServerKey`]s (a handful per route).
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
#[derive(Debug, Default)]
struct BoundDurations {
    routes: RwLock<HashMap<Box<str>, KeyedHistograms, RandomState>>,
    count: AtomicUsize,
}

/// One route's bound histograms, by [`ServerKey`].
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
type KeyedHistograms = Vec<(ServerKey, BoundHistogram<f64>)>;

/// Up to how many attribute sets of `http.server.request.duration` are
/// bound; others are recorded with their attributes.
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
const MAX_BOUND_DURATIONS: usize = 4_096;

/// A server request's duration attributes except the route, packed: method,
/// scheme, protocol version, whether a route matched, and the status code
/// (which decides `error.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ServerKey(u32);

impl ServerKey {
    /// The key of a request, before its status is known.
    pub(crate) fn new(
        method: &Method,
        scheme: Option<&str>,
        version: Version,
        route: bool,
    ) -> Self {
        let method = match *method {
            Method::GET => 0,
            Method::POST => 1,
            Method::PUT => 2,
            Method::DELETE => 3,
            Method::PATCH => 4,
            Method::HEAD => 5,
            Method::OPTIONS => 6,
            Method::CONNECT => 7,
            Method::TRACE => 8,
            _ => 9,
        };
        let scheme = match scheme {
            None | Some("http") => 0,
            Some("https") => 1,
            Some(_) => 2,
        };
        let version = match version {
            Version::HTTP_09 => 0,
            Version::HTTP_10 => 1,
            Version::HTTP_2 => 3,
            Version::HTTP_3 => 4,
            _ => 2,
        };
        Self(method | (scheme << 4) | (version << 6) | (u32::from(route) << 9))
    }

    /// The key with the response's status code.
    pub(crate) fn with_status(self, status: u16) -> Self {
        Self((self.0 & 0x3ff) | (u32::from(status) << 10))
    }
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
                metric::HTTP_SERVER_REQUEST_DURATION,
                "Duration of HTTP server requests",
            ),
            active_requests: meter
                .i64_up_down_counter(metric::HTTP_SERVER_ACTIVE_REQUESTS)
                .with_unit("{request}")
                .with_description("Number of active HTTP server requests")
                .build(),
            client_duration: histogram(
                metric::HTTP_CLIENT_REQUEST_DURATION,
                "Duration of HTTP client requests",
            ),
            rpc_server_duration: histogram(
                metric::RPC_SERVER_CALL_DURATION,
                "Duration of RPCs served",
            ),
            #[cfg(any(feature = "prometheus", feature = "_otlp"))]
            active_bound: Box::new(std::array::from_fn(|_| OnceLock::new())),
            #[cfg(any(feature = "prometheus", feature = "_otlp"))]
            server_bound: Default::default(),
        }
    }

    /// Records a server request's duration: `attributes` are the
    /// request's, `route` and `key` say the same (see [`ServerKey`]), and
    /// find the histogram bound to them, without the SDK hashing them.
    #[cfg_attr(
        not(any(feature = "prometheus", feature = "_otlp")),
        allow(unused_variables)
    )]
    pub(crate) fn record_server(
        &self,
        seconds: f64,
        route: &str,
        key: ServerKey,
        attributes: &[KeyValue],
    ) {
        #[cfg(any(feature = "prometheus", feature = "_otlp"))]
        {
            let bound = &self.server_bound;
            if let Ok(routes) = bound.routes.read()
                && let Some((_, histogram)) = routes
                    .get(route)
                    .and_then(|keys| keys.iter().find(|(k, _)| *k == key))
            {
                histogram.record(seconds);
                return;
            }
            if bound.count.load(Ordering::Relaxed) < MAX_BOUND_DURATIONS
                && let Ok(mut routes) = bound.routes.write()
            {
                let keys = routes.entry(route.into()).or_default();
                if let Some((_, histogram)) = keys.iter().find(|(k, _)| *k == key) {
                    histogram.record(seconds);
                } else {
                    let histogram = self.server_duration.bind(attributes);
                    histogram.record(seconds);
                    keys.push((key, histogram));
                    bound.count.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
        self.server_duration.record(seconds, attributes);
    }

    /// Adds `delta` to `http.server.active_requests` for `attributes`
    /// (method and scheme).
    pub(crate) fn add_active(&self, delta: i64, attributes: &[KeyValue]) {
        #[cfg(any(feature = "prometheus", feature = "_otlp"))]
        if let Some(bound) = active_slot(attributes).and_then(|slot| self.active_bound.get(slot)) {
            bound
                .get_or_init(|| self.active_requests.bind(attributes))
                .add(delta);
            return;
        }
        self.active_requests.add(delta, attributes);
    }
}

/// Where the counter bound to `attributes` (a method and a scheme, as
/// semconv names them) is kept.
#[cfg(any(feature = "prometheus", feature = "_otlp"))]
fn active_slot(attributes: &[KeyValue]) -> Option<usize> {
    use opentelemetry::Value;
    let [method, scheme] = attributes else {
        return None;
    };
    let (Value::String(method), Value::String(scheme)) = (&method.value, &scheme.value) else {
        return None;
    };
    let method = METHODS.iter().position(|m| *m == method.as_str())?;
    let scheme = SCHEMES.iter().position(|s| *s == scheme.as_str())?;
    Some(method * SCHEMES.len() + scheme)
}
