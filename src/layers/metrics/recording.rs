//! One request being measured: recorded once, when its response body ends
//! or when it is dropped (a cancelled request still leaves the active
//! count).

use std::time::Instant;

use opentelemetry::KeyValue;

use super::instruments::Instruments;

/// What is known of a request so far.
pub(crate) struct Recording {
    pub instruments: std::sync::Arc<Instruments>,
    pub kind: Kind,
    pub started: Instant,
    /// Attributes of the duration metric from `duration_from` on; on a
    /// server, the first two (method and scheme) are those of
    /// `http.server.active_requests` too.
    pub attributes: Vec<KeyValue>,
    /// Where the duration metric's attributes start (gRPC calls leave out
    /// the HTTP method and scheme).
    pub duration_from: usize,
    /// Counted in `http.server.active_requests` (server only).
    pub active: bool,
    /// Set once the outcome is known; a recording dropped without one was
    /// cancelled and counts no duration.
    pub finished: bool,
}

/// Which duration histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Server,
    Rpc,
    Client,
}

impl Recording {
    /// Adds attributes known from the response.
    pub(crate) fn add(&mut self, kv: KeyValue) {
        self.attributes.push(kv);
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if self.active {
            let active = self.attributes.get(..2).unwrap_or_default();
            self.instruments.active_requests.add(-1, active);
        }
        if !self.finished {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let histogram = match self.kind {
            Kind::Server => &self.instruments.server_duration,
            Kind::Rpc => &self.instruments.rpc_server_duration,
            Kind::Client => &self.instruments.client_duration,
        };
        let attributes = self
            .attributes
            .get(self.duration_from..)
            .unwrap_or_default();
        histogram.record(seconds, attributes);
    }
}
