//! Outcome classification: which responses and errors count as
//! failures. Pluggable through [`ClassifyResponse`].

use std::fmt;

use http::{HeaderMap, StatusCode};

use super::state::Outcome;
use crate::reject::GrpcCode;
use crate::retry::hint::asks_to_come_back;

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
        match trailers.and_then(|t| GrpcCode::from_headers(t).map(|code| (code, t))) {
            Some((code, trailers)) => grpc_outcome(code, trailers),
            // A gRPC response without a status is broken.
            None => Outcome::Failure,
        }
    }

    /// Classifies an error of the inner service.
    /// Default: a failure (timeouts included).
    fn classify_error(&self, error: &dyn fmt::Display) -> Outcome {
        let _ = error;
        Outcome::Failure
    }
}

/// The default classification: inner errors, 5xx, and gRPC `UNKNOWN`,
/// `DEADLINE_EXCEEDED`, `INTERNAL` and `UNAVAILABLE` are failures
/// ([`GrpcCode::is_upstream_failure`]; a number gRPC does not define reads
/// as `UNKNOWN`); 4xx and every other gRPC status are successes; a
/// cancelled call is ignored.
///
/// A failure that says when to come back (`Retry-After`, or gRPC's
/// `grpc-retry-pushback-ms`) is ignored too: the upstream is up and pacing
/// its clients, and the retry already waits as long as it asks. Counting
/// it would open the breaker for longer than the upstream asked to wait:
/// a server that answers each request's first attempt with `503` and
/// `Retry-After: 1` would see every third request held back for the
/// whole open time.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl ClassifyResponse for DefaultClassifier {
    fn classify_response(&self, status: StatusCode, headers: &HeaderMap) -> Option<Outcome> {
        if status.is_server_error() {
            return Some(unless_paced(Outcome::Failure, headers));
        }
        if let Some(code) = GrpcCode::from_headers(headers) {
            return Some(grpc_outcome(code, headers));
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

/// A code that says the upstream is unhealthy
/// ([`GrpcCode::is_upstream_failure`]) is a failure, unless paced.
fn grpc_outcome(code: GrpcCode, metadata: &HeaderMap) -> Outcome {
    if code.is_upstream_failure() {
        unless_paced(Outcome::Failure, metadata)
    } else {
        Outcome::Success
    }
}

/// `outcome`, or ignored when the upstream said when to come back.
fn unless_paced(outcome: Outcome, headers: &HeaderMap) -> Outcome {
    if asks_to_come_back(headers) {
        Outcome::Ignored
    } else {
        outcome
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

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
            // Server errors that say nothing of the upstream's health.
            ("12", Outcome::Success),
            ("15", Outcome::Success),
            // A number gRPC does not define reads as UNKNOWN.
            ("99", Outcome::Failure),
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
        // An upstream that says when to come back is pacing, not failing.
        let mut paced = HeaderMap::new();
        paced.insert("retry-after", HeaderValue::from_static("1"));
        assert_eq!(
            c.classify_response(StatusCode::SERVICE_UNAVAILABLE, &paced),
            Some(Outcome::Ignored)
        );
        let mut pushback = HeaderMap::new();
        pushback.insert("grpc-status", HeaderValue::from_static("14"));
        pushback.insert("grpc-retry-pushback-ms", HeaderValue::from_static("250"));
        assert_eq!(c.classify_trailers(Some(&pushback)), Outcome::Ignored);
        // A negative pushback means "do not retry": still a failure.
        pushback.insert("grpc-retry-pushback-ms", HeaderValue::from_static("-1"));
        assert_eq!(c.classify_trailers(Some(&pushback)), Outcome::Failure);
        assert_eq!(c.classify_error(&"boom"), Outcome::Failure);
    }
}
