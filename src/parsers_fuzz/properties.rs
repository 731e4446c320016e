//! Property tests of every parser fed by clients or backends: arbitrary
//! input never panics, and what is written is read back the same.
//!
//! Each property runs `FUZZ_CASES` cases (default 2,000; the CI's run);
//! raise it for a longer search: `FUZZ_CASES=200000 cargo test --lib fuzz`.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use crate::idempotency::{ClaimToken, Fingerprint, Record, StoredResponse};
use crate::rate_limit::{Decision, Policy, Quota};
use crate::request_id::RequestId;

fn config() -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Header values as a client can send them: any visible ASCII and spaces,
/// with the characters the parsers split on made frequent.
fn header_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,300}",
        "[0-9a-fA-F\\-=,;:\"@. ]{0,120}",
        "[0-9]{0,25}",
    ]
}

fn headers(name: &'static str, values: &[String]) -> HeaderMap {
    super::headers(name, values.iter().map(String::as_bytes))
}

fn hex(n: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(b"0123456789abcdef".to_vec()), n)
        .prop_map(|b| String::from_utf8(b).unwrap_or_default())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_ids_are_kept_only_when_valid(value in header_text()) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            let valid = (1..=128).contains(&value.len())
                && value.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
            let parsed = RequestId::parse(&v);
            prop_assert_eq!(parsed.is_some(), valid, "{:?}", value);
            if let Some(id) = parsed {
                prop_assert_eq!(id.as_str(), value.as_str());
            }
        }
    }

    #[test]
    fn idempotency_keys_never_panic(values in proptest::collection::vec(header_text(), 0..3)) {
        let map = headers("idempotency-key", &values);
        for strict in [true, false] {
            if let Ok(Some(key)) = crate::layers::idempotency::key::parse(&map, strict) {
                prop_assert!((1..=crate::idempotency::MAX_KEY_LEN).contains(&key.chars().count()));
            }
        }
    }

    #[test]
    fn retry_hints_never_panic(
        retry_after in header_text(),
        pushback in header_text(),
    ) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let mut map = headers("retry-after", std::slice::from_ref(&retry_after));
        let _ = crate::layers::retry::hint::hint(&map, now);
        if !retry_after.is_empty() && retry_after.bytes().all(|b| b.is_ascii_digit()) {
            let secs = retry_after.parse().unwrap_or(u64::MAX);
            prop_assert_eq!(
                crate::layers::retry::hint::hint(&map, now),
                Some(crate::layers::retry::hint::Hint::After(Duration::from_secs(secs)))
            );
        }
        if let Ok(v) = HeaderValue::from_str(&pushback) {
            map.insert("grpc-retry-pushback-ms", v);
            prop_assert!(crate::layers::retry::hint::hint(&map, now).is_some());
        }
    }

    #[test]
    fn trace_context_never_panics_and_valid_parents_are_continued(
        parent in header_text(),
        state in proptest::collection::vec(header_text(), 0..3),
        baggage in header_text(),
        trace_id in hex(32),
        span_id in hex(16),
    ) {
        super::w3c_propagators();
        let mut map = headers("tracestate", &state);
        for (name, v) in [("traceparent", &parent), ("baggage", &baggage)] {
            if let Ok(v) = HeaderValue::from_str(v) {
                map.insert(name, v);
            }
        }
        let _ = crate::layers::trace::propagation::extract(&map, true);
        let valid = format!("00-{trace_id}-{span_id}-01");
        map.insert("traceparent", HeaderValue::from_str(&valid).unwrap_or(HeaderValue::from_static("")));
        let cx = crate::layers::trace::propagation::extract(&map, true);
        use opentelemetry::trace::TraceContextExt;
        let span = cx.span().span_context().clone();
        let zero = trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0');
        prop_assert_eq!(span.is_valid(), !zero, "{}", valid);
        if !zero {
            prop_assert_eq!(span.trace_id().to_string(), trace_id);
        }
    }

    #[test]
    fn forwarded_client_addresses_never_panic(
        values in proptest::collection::vec(header_text(), 0..4),
        forwarded in any::<bool>(),
    ) {
        // A key is an address (or an IPv6 network), never header text,
        // and an untrusted peer's headers are not read.
        let mut data = vec![u8::from(forwarded)];
        data.extend_from_slice(values.join("\n").as_bytes());
        super::forwarded(&data);
    }

    #[test]
    fn grpc_timeouts_never_panic_and_round_trip(
        value in header_text(),
        nanos in 1u64..u64::MAX / 2,
    ) {
        use crate::layers::deadline::grpc_timeout::{encode, parse_value};
        let _ = parse_value(value.as_bytes());
        // What is sent is read back no shorter than the time left, and
        // longer by at most one unit of its encoding (8 digits of the
        // finest unit that fits: under 1/100,000 of it).
        let left = Duration::from_nanos(nanos);
        let read = parse_value(encode(left).as_bytes())
            .map_err(|_| TestCaseError::fail(format!("{left:?} did not parse back")))?;
        prop_assert!(read >= left, "{:?} read back as {:?}", left, read);
        prop_assert!(read - left <= left / 100_000 + Duration::from_nanos(1), "{:?} read back as {:?}", left, read);
    }

    #[test]
    fn quotas_and_durations_never_panic(text in "[ -~]{0,40}", doc in "[ -~]{0,120}") {
        let _ = text.parse::<Quota>();
        let _ = humantime::parse_duration(&text);
        let _ = crate::reload::document::quota(doc.as_bytes());
        let _ = crate::reload::document::breaker(
            doc.as_bytes(),
            &crate::circuit_breaker::BreakerConfig::default(),
        );
        let _ = toml::from_str::<crate::stack::StackConfig>(&doc);
    }

    #[test]
    fn quota_strings_round_trip(count in 1u64..1_000_000, unit in 0usize..3) {
        let text = format!("{count}/{}", ["s", "m", "h"][unit]);
        let quota: Quota = text.parse().map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(quota.count(), count);
        prop_assert_eq!(quota.period(), Duration::from_secs([1, 60, 3600][unit]));
    }

    #[test]
    fn ratelimit_headers_round_trip(
        name in "[A-Za-z0-9._-]{1,64}",
        remaining in any::<u64>(),
        reset_ms in 0u64..10_000_000_000,
    ) {
        let quota = Quota::per_second(10).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let policy = Policy::new(&name, quota).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decision = Decision::Allowed { remaining, reset: Duration::from_millis(reset_ms) };
        let map = crate::layers::rate_limit::headers::render(&policy, &decision, false).into_map();
        let value = map.get("ratelimit").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        let list: sfv::List = sfv::Parser::new(&value)
            .parse()
            .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&value))))?;
        let Some(sfv::ListEntry::Item(item)) = list.first() else {
            return Err(TestCaseError::fail("no item"));
        };
        prop_assert_eq!(item.bare_item.as_string().map(|s| s.as_str().to_owned()), Some(name));
        let param = |k: &str| item.params.iter().find(|(key, _)| key.as_str() == k).and_then(|(_, v)| v.as_integer()).map(i64::from);
        prop_assert_eq!(param("r").map(|r| r as u64), Some(remaining.min(999_999_999_999_999)));
        prop_assert_eq!(param("t").map(|t| t as u64), Some(reset_ms.div_ceil(1_000)));
    }

    #[test]
    fn stored_records_never_panic_and_round_trip(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
        status in 100u16..1000,
        body in proptest::collection::vec(any::<u8>(), 0..200),
        header in "[a-z-]{1,20}",
        value in "[ -~]{0,40}",
        expires_us in any::<u64>(),
    ) {
        let _ = Record::decode(&bytes);
        let _ = crate::layers::rate_limit::gcra::GcraState::decode(&String::from_utf8_lossy(&bytes));
        let _ = crate::layers::circuit_breaker::store::decode(&String::from_utf8_lossy(&bytes), 0);
        let mut headers = HeaderMap::new();
        if let (Ok(name), Ok(v)) = (http::HeaderName::from_bytes(header.as_bytes()), HeaderValue::from_str(&value)) {
            headers.insert(name, v);
        }
        let record = Record::Completed {
            expires_us,
            fingerprint: Fingerprint::of(&[&body]),
            response: StoredResponse {
                status: http::StatusCode::from_u16(status).unwrap_or_default(),
                headers,
                body: body.into(),
                trailers: None,
            },
        };
        prop_assert_eq!(Record::decode(&record.encode()), Some(record));
        let claim = Record::InFlight { expires_us, token: ClaimToken::random(), fingerprint: Fingerprint::of(&[b"x"]) };
        prop_assert_eq!(Record::decode(&claim.encode()), Some(claim));
    }
}
