//! The rejections of the deadline layer.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::reject::{GrpcCode, Problem};

/// A request's deadline passed before its response head was ready; the
/// inner service's future was dropped.
///
/// On the server it becomes a 504 (or 503, as configured) with a problem+json body, or a
/// trailers-only `DEADLINE_EXCEEDED` for gRPC. On the client it is the
/// retry's error when its deadline, or the deadline of the inbound request
/// the call serves, cut an attempt or left no time for one
/// ([`ClientError::DeadlineExceeded`](crate::client::ClientError::DeadlineExceeded)).
#[derive(Debug, Clone)]
pub struct DeadlineExceeded {
    timeout: Duration,
    source: &'static str,
    status: StatusCode,
}

impl DeadlineExceeded {
    pub(crate) fn new(timeout: Duration, source: &'static str, status: StatusCode) -> Self {
        Self {
            timeout,
            source,
            status,
        }
    }

    /// An outbound call's deadline: `retry` (the retry policy's) or
    /// `inbound` (the inbound request's).
    pub(crate) fn client(timeout: Duration, source: &'static str) -> Self {
        Self::new(timeout, source, StatusCode::GATEWAY_TIMEOUT)
    }

    /// The timeout that expired (the smallest of the request's).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Where the timeout came from: `default`, `route`, `grpc-timeout`
    /// or `outer` (an enclosing deadline layer's) on the server; `retry`
    /// (the retry policy's deadline) or `inbound` (the inbound request's)
    /// on an outbound call.
    pub fn source(&self) -> &'static str {
        self.source
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deadline of {} ms ({}) exceeded",
            self.timeout.as_millis(),
            self.source
        )
    }
}

impl std::error::Error for DeadlineExceeded {}

impl From<DeadlineExceeded> for Problem {
    fn from(err: DeadlineExceeded) -> Self {
        let title = err.status.canonical_reason().unwrap_or("Gateway Timeout");
        Problem::new(err.status, title)
            .detail(err.to_string())
            .grpc_code(GrpcCode::DeadlineExceeded)
            .extension(
                "timeout_ms",
                u64::try_from(err.timeout.as_millis()).unwrap_or(u64::MAX),
            )
            .extension("timeout_source", err.source)
    }
}

/// An inbound `grpc-timeout` header that does not follow the gRPC
/// protocol, when the layer is set to reject it.
///
/// It becomes a trailers-only `INTERNAL` (as grpc-go answers).
#[derive(Debug, Clone)]
pub struct MalformedTimeout {
    value: String,
}

impl MalformedTimeout {
    pub(crate) fn new(value: String) -> Self {
        Self { value }
    }

    /// The header's value.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for MalformedTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed grpc-timeout: {:?}", self.value)
    }
}

impl std::error::Error for MalformedTimeout {}

impl From<MalformedTimeout> for Problem {
    fn from(err: MalformedTimeout) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "Bad Request")
            .detail(err.to_string())
            .grpc_code(GrpcCode::Internal)
    }
}
