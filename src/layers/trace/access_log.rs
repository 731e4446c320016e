//! The access log: one `tracing` event per server request, written by the
//! server [`TraceLayer`](super::TraceLayer) when the response ends.
//!
//! ```
//! use battlement::trace::{AccessLog, TraceLayer};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // Every error, and one success in ten; 4xx at `warn` instead of `info`.
//! let log = AccessLog::new()
//!     .sample_successes(0.1)
//!     .client_errors(tracing::Level::WARN);
//! let svc = ServiceBuilder::new()
//!     .layer(TraceLayer::server().access_log(Some(log)))
//!     .service(service_fn(|_: Request<String>| async {
//!         let mut res = Response::new(String::new());
//!         *res.status_mut() = StatusCode::NOT_FOUND;
//!         Ok::<_, std::convert::Infallible>(res)
//!     }));
//! // Logged (at `warn`, target `battlement::access`) once the body ends.
//! let res = svc.oneshot(Request::get("/nowhere").body(String::new()).unwrap()).await.unwrap();
//! assert_eq!(res.status(), 404);
//! # });
//! ```

use std::time::Instant;

use http::Request;
use opentelemetry::trace::{TraceContextExt, TraceId};
use tracing::Level;

use super::semconv::{OTHER, grpc_names, method, route};
use crate::RequestId;
use crate::reject::GrpcCode;

/// The target of access-log events: `RUST_LOG=battlement::access=off`
/// turns the access log off, `battlement::access=warn` keeps its errors.
pub const ACCESS_LOG_TARGET: &str = "battlement::access";

/// How the server [`TraceLayer`](super::TraceLayer) writes its access log
/// ([`TraceLayer::access_log`](super::TraceLayer::access_log)): one event,
/// target [`ACCESS_LOG_TARGET`], message `response`, per request when its
/// response ends (the body's end for a streamed body, or when the body is
/// dropped), inside the request's span, so the line carries the span's
/// request id and an OpenTelemetry log bridge gives it the trace and span
/// ids.
///
/// Fields: `http.request.method` (`_OTHER` for an unknown one),
/// `http.route` (axum's route template; `/{service}/{method}` for a gRPC
/// call, as far as recognized; `_OTHER` when no route matched, never the
/// raw path), `http.response.status_code`, `rpc.grpc.status_code` (gRPC,
/// from the head or the trailers), `duration_ms` (until the body ended),
/// `request.id`, `trace_id`, and `error.type` when the service or the body
/// failed.
///
/// Level: `warn` for 5xx, server-side gRPC errors and failures;
/// [`client_errors`](Self::client_errors) (default `info`) for 4xx and
/// other gRPC errors; `info` for successes, of which
/// [`sample_successes`](Self::sample_successes) keeps a share. Probes are
/// logged only when the layer traces them
/// ([`trace_probes`](super::TraceLayer::trace_probes)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccessLog {
    successes: f64,
    client_errors: Level,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self::new()
    }
}

impl AccessLog {
    /// Every request; 4xx at `info`.
    pub fn new() -> Self {
        Self {
            successes: 1.0,
            client_errors: Level::INFO,
        }
    }

    /// Logs this share of successful requests (clamped to `0.0..=1.0`);
    /// errors are always logged. The share is decided on the trace id, as
    /// the trace-id ratio sampler decides, so with the same ratio the
    /// successes logged are the ones traced.
    pub fn sample_successes(mut self, ratio: f64) -> Self {
        self.successes = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self
    }

    /// The level of 4xx answers and gRPC client errors (default `info`).
    pub fn client_errors(mut self, level: Level) -> Self {
        self.client_errors = level;
        self
    }

    /// What is known of `req` before the service sees it.
    pub(crate) fn start<B>(self, req: &Request<B>, grpc: Option<&str>) -> Option<Box<Entry>> {
        // Nothing is kept for a line no subscriber would write: under
        // `RUST_LOG=error`, say, the access log costs one interest check,
        // at the most severe level it may write (tracing orders levels by
        // verbosity: `min` is the most severe).
        if !enabled(Level::WARN.min(self.client_errors)) {
            return None;
        }
        Some(self.entry(req, grpc))
    }

    /// The entry of `req`, whose line is written when its response ends.
    fn entry<B>(self, req: &Request<B>, grpc: Option<&str>) -> Box<Entry> {
        let route = match grpc {
            Some(call) => Route::Grpc(call.into()),
            None => Route::Http(route(req).map(Box::from)),
        };
        Box::new(Entry {
            log: self,
            started: Instant::now(),
            method: method(req.method()),
            route,
            request_id: req.extensions().get::<RequestId>().cloned(),
            status: None,
            grpc: None,
            trace_id: TraceId::INVALID,
            error: None,
        })
    }
}

/// How the route is named.
enum Route {
    /// axum's template, when one matched.
    Http(Option<Box<str>>),
    /// The gRPC call (`pkg.Service/Method`), named from what is recognized
    /// when the entry is written.
    Grpc(Box<str>),
}

/// One request's access-log entry, written when dropped (the response
/// ended, failed or was dropped).
pub(crate) struct Entry {
    log: AccessLog,
    started: Instant,
    method: &'static str,
    route: Route,
    request_id: Option<RequestId>,
    status: Option<u16>,
    grpc: Option<GrpcCode>,
    trace_id: TraceId,
    error: Option<&'static str>,
}

impl Entry {
    /// The response's head arrived with `status` (and a gRPC status in it
    /// for a trailers-only answer); the request's context is current.
    pub(crate) fn answered(&mut self, status: u16, grpc: Option<GrpcCode>) {
        self.status = Some(status);
        self.grpc = grpc;
        self.trace_id =
            opentelemetry::Context::map_current(|cx| cx.span().span_context().trace_id());
    }

    /// A gRPC status from the trailers.
    pub(crate) fn grpc_status(&mut self, code: GrpcCode) {
        self.grpc = Some(code);
    }

    /// The service (`_OTHER`) or the body (`body`) failed.
    pub(crate) fn failed(&mut self, error: &'static str) {
        self.error = Some(error);
        if self.trace_id == TraceId::INVALID {
            self.trace_id =
                opentelemetry::Context::map_current(|cx| cx.span().span_context().trace_id());
        }
    }

    /// The level this entry is written at.
    fn level(&self) -> Level {
        let grpc = self.grpc.filter(|&code| code != GrpcCode::Ok);
        let status = self.status.unwrap_or(500);
        if self.error.is_some() || status >= 500 || grpc.is_some_and(GrpcCode::is_server_error) {
            Level::WARN
        } else if status >= 400 || grpc.is_some() {
            self.log.client_errors
        } else {
            Level::INFO
        }
    }

    /// Whether a success is in the logged share.
    fn sampled(&self) -> bool {
        let ratio = self.log.successes;
        if ratio >= 1.0 {
            return true;
        }
        if self.trace_id == TraceId::INVALID {
            return fastrand::f64() < ratio;
        }
        // The trace-id ratio sampler's rule: the low 64 bits, shifted to 63.
        let bound = (ratio * (1u64 << 63) as f64) as u64;
        let low = u128::from_be_bytes(self.trace_id.to_bytes()) as u64;
        (low >> 1) < bound
    }

    /// Writes the entry (in the current span).
    pub(crate) fn write(&self) {
        let level = self.level();
        if !enabled(level) {
            return;
        }
        let success = level == Level::INFO && self.error.is_none() && self.is_success();
        if success && !self.sampled() {
            return;
        }
        let grpc_route;
        let route = match &self.route {
            Route::Http(Some(route)) => route,
            Route::Http(None) => OTHER,
            Route::Grpc(call) => match grpc_names(call) {
                (OTHER, OTHER) => OTHER,
                (service, method) => {
                    grpc_route = ["/", service, "/", method].concat();
                    grpc_route.as_str()
                }
            },
        };
        let trace_id = (self.trace_id != TraceId::INVALID).then_some(self.trace_id);
        let trace_id = trace_id.map(tracing::field::display);
        let request_id = self.request_id.as_ref().map(RequestId::as_str);
        let duration_ms = self.started.elapsed().as_secs_f64() * 1_000.0;
        macro_rules! write_at {
            ($level:expr) => {
                tracing::event!(
                    target: ACCESS_LOG_TARGET,
                    $level,
                    http.request.method = self.method,
                    http.route = route,
                    http.response.status_code = self.status.map(i64::from),
                    rpc.grpc.status_code = self.grpc.map(|code| i64::from(code.as_i32())),
                    duration_ms,
                    request.id = request_id,
                    trace_id,
                    error.type = self.error,
                    "response"
                )
            };
        }
        match level {
            Level::ERROR => write_at!(Level::ERROR),
            Level::WARN => write_at!(Level::WARN),
            Level::INFO => write_at!(Level::INFO),
            Level::DEBUG => write_at!(Level::DEBUG),
            _ => write_at!(Level::TRACE),
        }
    }

    fn is_success(&self) -> bool {
        self.status.is_some_and(|s| s < 400) && self.grpc.is_none_or(|code| code == GrpcCode::Ok)
    }
}

/// Whether a subscriber would write an access-log line at `level`.
fn enabled(level: Level) -> bool {
    match level {
        Level::ERROR => tracing::enabled!(target: ACCESS_LOG_TARGET, Level::ERROR),
        Level::WARN => tracing::enabled!(target: ACCESS_LOG_TARGET, Level::WARN),
        Level::INFO => tracing::enabled!(target: ACCESS_LOG_TARGET, Level::INFO),
        Level::DEBUG => tracing::enabled!(target: ACCESS_LOG_TARGET, Level::DEBUG),
        _ => tracing::enabled!(target: ACCESS_LOG_TARGET, Level::TRACE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status: u16, grpc: Option<i32>, log: AccessLog) -> Box<Entry> {
        let mut entry = log.entry(&Request::get("/x").body(()).unwrap(), None);
        entry.status = Some(status);
        entry.grpc = grpc.map(GrpcCode::from_i32);
        entry
    }

    #[test]
    fn the_level_follows_the_status() {
        let log = AccessLog::new();
        assert_eq!(entry(200, None, log).level(), Level::INFO);
        assert_eq!(entry(404, None, log).level(), Level::INFO);
        assert_eq!(entry(503, None, log).level(), Level::WARN);
        assert_eq!(entry(200, Some(13), log).level(), Level::WARN);
        assert_eq!(entry(200, Some(5), log).level(), Level::INFO);
        let warn = log.client_errors(Level::WARN);
        assert_eq!(entry(404, None, warn).level(), Level::WARN);
        assert_eq!(entry(200, Some(3), warn).level(), Level::WARN);
        let mut failed = entry(200, None, log);
        failed.failed("body");
        assert_eq!(failed.level(), Level::WARN);
    }

    #[test]
    fn successes_are_sampled_on_the_trace_id() {
        let log = AccessLog::new().sample_successes(0.25);
        let sampled = (0..4_000u128)
            .filter(|&i| {
                let mut e = entry(200, None, log);
                e.trace_id =
                    TraceId::from(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) | 1);
                e.sampled()
            })
            .count();
        assert!((800..1_200).contains(&sampled), "{sampled}");
        assert!(!entry(200, None, AccessLog::new().sample_successes(f64::NAN)).sampled());
    }
}
