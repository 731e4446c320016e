//! Outcome classification (SPEC CB-3): which responses and errors count as
//! failures. Pluggable through [`ClassifyResponse`].

use std::fmt;

use http::{HeaderMap, StatusCode};

use super::state::Outcome;
use crate::trace::semconv::grpc_status;

/// Decides how a call counts.
///
/// ```
/// use battlement::circuit_breaker::{ClassifyResponse, DefaultClassifier, Outcome};
/// use http::{HeaderMap, StatusCode};
///
/// /// 429 from the upstream also means "back off".
/// struct TooManyIsFailure;
///
/// impl ClassifyResponse for TooManyIsFailure {
///     fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Outcome> {
///         if status == StatusCode::TOO_MANY_REQUESTS {
///             return Some(Outcome::Failure);
///         }
///         DefaultClassifier.classify_response(status, headers)
///     }
/// }
///
/// let h = HeaderMap::new();
/// assert_eq!(TooManyIsFailure.classify_response(StatusCode::TOO_MANY_REQUESTS, &h), Some(Outcome::Failure));
/// assert_eq!(DefaultClassifier.classify_response(StatusCode::NOT_FOUND, &h), Some(Outcome::Success));
/// ```
pub trait ClassifyResponse: Send + Sync + 'static {
    /// Classifies a response by its head; `None` waits for the end of the
    /// body (a gRPC status that comes in trailers).
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Outcome>;

    /// Classifies a deferred response at the end of its body, by its
    /// trailers (`None`: the body ended without any).
    fn classify_trailers(&self, trailers: Option<&HeaderMap>) -> Outcome {
        match trailers.and_then(grpc_status) {
            Some(code) => grpc_outcome(code),
            // A gRPC response without a status is broken.
            None => Outcome::Failure,
        }
    }

    /// Classifies an error of the inner service (or of the response body).
    /// Default: a failure (timeouts included).
    fn classify_error(&self, error: &dyn fmt::Display) -> Outcome {
        let _ = error;
        Outcome::Failure
    }
}

/// The default classification: inner errors, 5xx, and gRPC `UNKNOWN`,
/// `DEADLINE_EXCEEDED`, `INTERNAL` and `UNAVAILABLE` are failures; 4xx and
/// every other gRPC status are successes; a cancelled call is ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl ClassifyResponse for DefaultClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Outcome> {
        if status.is_server_error() {
            return Some(Outcome::Failure);
        }
        if let Some(code) = grpc_status(headers) {
            return Some(grpc_outcome(code));
        }
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            // The status comes in the trailers.
            return None;
        }
        Some(Outcome::Success)
    }
}

/// gRPC codes 2, 4, 13 and 14 are failures.
fn grpc_outcome(code: i32) -> Outcome {
    match code {
        2 | 4 | 13 | 14 => Outcome::Failure,
        _ => Outcome::Success,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    // SPEC CB-3
    #[test]
    fn default_classification() {
        let c = DefaultClassifier;
        let none = HeaderMap::new();
        assert_eq!(
            c.classify_response(StatusCode::OK, &none),
            Some(Outcome::Success)
        );
        assert_eq!(
            c.classify_response(StatusCode::NOT_FOUND, &none),
            Some(Outcome::Success)
        );
        assert_eq!(
            c.classify_response(StatusCode::BAD_GATEWAY, &none),
            Some(Outcome::Failure)
        );
        let mut grpc = HeaderMap::new();
        grpc.insert("content-type", HeaderValue::from_static("application/grpc"));
        assert_eq!(c.classify_response(StatusCode::OK, &grpc), None);
        for (code, outcome) in [
            ("0", Outcome::Success),
            ("5", Outcome::Success),
            ("8", Outcome::Success),
            ("2", Outcome::Failure),
            ("4", Outcome::Failure),
            ("13", Outcome::Failure),
            ("14", Outcome::Failure),
        ] {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static(code));
            assert_eq!(c.classify_trailers(Some(&trailers)), outcome, "{code}");
            // Trailers-only responses carry it in the head.
            let mut head = grpc.clone();
            head.insert("grpc-status", HeaderValue::from_static(code));
            assert_eq!(c.classify_response(StatusCode::OK, &head), Some(outcome));
        }
        assert_eq!(c.classify_trailers(None), Outcome::Failure);
        assert_eq!(c.classify_error(&"boom"), Outcome::Failure);
    }
}
