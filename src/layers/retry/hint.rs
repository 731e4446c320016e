//! Server hints on when to retry: `Retry-After` (delay-seconds
//! or an HTTP-date, RFC 9110 §10.2.3) and gRPC's `grpc-retry-pushback-ms`
//! (a negative or malformed pushback means "do not retry").

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName};

/// gRPC's retry pushback, in milliseconds (gRFC A6).
const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// What the server said about retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hint {
    /// Retry after this long.
    After(Duration),
    /// Do not retry (gRPC pushback).
    Never,
}

/// The hint in `headers`, if any; `now` is the wall-clock time for dates.
pub(crate) fn hint(headers: &HeaderMap, now: SystemTime) -> Option<Hint> {
    if let Some(value) = headers.get(&GRPC_RETRY_PUSHBACK_MS) {
        let ms = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok());
        return Some(match ms {
            Some(ms) if ms >= 0 => Hint::After(Duration::from_millis(ms as u64)),
            _ => Hint::Never,
        });
    }
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Delay-seconds, digits only; absurdly large ones saturate.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Hint::After(Duration::from_secs(secs)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(Hint::After(
        date.duration_since(now).unwrap_or(Duration::ZERO),
    ))
}

/// Whether `headers` ask the client to come back later (a `Retry-After`
/// or a non-negative gRPC pushback): the server is pacing its clients.
pub(crate) fn asks_to_come_back(headers: &HeaderMap) -> bool {
    matches!(hint(headers, SystemTime::UNIX_EPOCH), Some(Hint::After(_)))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_seconds_dates_and_grpc_pushback() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(
            hint(&with("retry-after", "3"), now),
            Some(Hint::After(Duration::from_secs(3)))
        );
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            hint(&with("retry-after", &date), now),
            Some(Hint::After(Duration::from_secs(90)))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(
            hint(&with("retry-after", &past), now),
            Some(Hint::After(Duration::ZERO))
        );
        assert_eq!(hint(&with("retry-after", "soon"), now), None);
        assert_eq!(hint(&with("retry-after", "+5"), now), None);
        assert_eq!(
            hint(&with("retry-after", "99999999999999999999999"), now),
            Some(Hint::After(Duration::from_secs(u64::MAX)))
        );
        assert_eq!(
            hint(&with("grpc-retry-pushback-ms", "250"), now),
            Some(Hint::After(Duration::from_millis(250)))
        );
        assert_eq!(
            hint(&with("grpc-retry-pushback-ms", "-1"), now),
            Some(Hint::Never)
        );
        assert_eq!(
            hint(&with("grpc-retry-pushback-ms", "x"), now),
            Some(Hint::Never)
        );
        assert_eq!(hint(&HeaderMap::new(), now), None);
    }
}
