//! One request being measured: recorded once, when its response body ends
//! or when it is dropped (a cancelled request still leaves the active
//! count).

use std::time::Instant;

use http::HeaderMap;
use opentelemetry::{KeyValue, Value};

use super::instruments::{Instruments, ServerKey};
use crate::body::{BodyEnd, BodyObserver};
use crate::reject::GrpcCode;
use crate::trace::semconv::{attr, grpc_names};

/// What is known of a request so far.
pub(crate) struct Recording {
    pub instruments: std::sync::Arc<Instruments>,
    pub kind: Kind,
    pub started: Instant,
    /// On a server (HTTP or gRPC), the first two are method and scheme,
    /// the attributes of `http.server.active_requests`; the duration
    /// metric's follow from [`Kind::duration_from`].
    pub attributes: Vec<KeyValue>,
    /// The method a gRPC call calls (`pkg.Service/Method`): its names are
    /// decided when it is recorded, after its answer may have recognized
    /// it.
    pub rpc: Option<Box<str>>,
    /// Set once the outcome is known; a recording dropped without one was
    /// cancelled and counts no duration.
    pub finished: bool,
    /// An HTTP server request's duration attributes packed (see
    /// [`ServerKey`]), once its status is known, and how many attributes
    /// that key says: attributes added later (a body error) turn it off.
    pub server_key: Option<(ServerKey, usize)>,
}

/// Which duration histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Server,
    Rpc,
    Client,
}

impl Kind {
    /// Whether the request counts in `http.server.active_requests`.
    pub(crate) fn counts_active(self) -> bool {
        self != Self::Client
    }

    /// Where the duration metric's attributes start: a gRPC call's leave
    /// out the HTTP method and scheme.
    fn duration_from(self) -> usize {
        match self {
            Self::Rpc => 2,
            Self::Server | Self::Client => 0,
        }
    }
}

impl Recording {
    /// Adds attributes known from the response.
    pub(crate) fn add(&mut self, kv: KeyValue) {
        self.attributes.push(kv);
    }

    /// Adds the gRPC status in `metadata` (headers or trailers), if any.
    pub(crate) fn add_grpc_status(&mut self, metadata: &HeaderMap) {
        if let Some(code) = GrpcCode::from_headers(metadata) {
            let code = i64::from(code.as_i32());
            self.add(KeyValue::new(attr::RPC_GRPC_STATUS_CODE, code));
        }
    }
}

/// A request's recording while its response body is read: written when
/// the body ends, fails or is dropped.
pub struct OpenRecording(pub(crate) Recording);

impl BodyObserver for OpenRecording {
    fn on_trailers(&mut self, trailers: &HeaderMap) {
        if self.0.kind == Kind::Rpc {
            self.0.add_grpc_status(trailers);
        }
    }

    fn on_end(mut self, end: BodyEnd) {
        if end == BodyEnd::Failed {
            self.0.add(KeyValue::new(attr::ERROR_TYPE, "body"));
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if self.kind.counts_active() {
            let active = self.attributes.get(..2).unwrap_or_default();
            self.instruments.add_active(-1, active);
        }
        if !self.finished {
            return;
        }
        if let Some(call) = self.rpc.take() {
            let (service, method) = grpc_names(&call);
            self.add(KeyValue::new(attr::RPC_SERVICE, service.to_owned()));
            self.add(KeyValue::new(attr::RPC_METHOD, method.to_owned()));
        }
        let seconds = self.started.elapsed().as_secs_f64();
        if let Some((key, covered)) = self.server_key
            && covered == self.attributes.len()
        {
            let route = self
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == attr::HTTP_ROUTE)
                .map_or("", |kv| match &kv.value {
                    Value::String(route) => route.as_str(),
                    _ => "",
                });
            let attributes = &self.attributes;
            self.instruments
                .record_server(seconds, route, key, attributes);
            return;
        }
        let histogram = match self.kind {
            Kind::Server => &self.instruments.server_duration,
            Kind::Rpc => &self.instruments.rpc_server_duration,
            Kind::Client => &self.instruments.client_duration,
        };
        let attributes = self
            .attributes
            .get(self.kind.duration_from()..)
            .unwrap_or_default();
        histogram.record(seconds, attributes);
    }
}
