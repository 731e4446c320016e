//! Every parser fed by clients or backends, each with the property it must
//! keep, on arbitrary bytes: the entry points of the cargo-fuzz targets in
//! `fuzz/` (the module is public, hidden, in builds with `--cfg fuzzing`)
//! and of the tests that run them over the seed corpus. A violated
//! property panics.
//!
//! ```text
//! scripts/fuzz.sh 10m            # every target, ten minutes each
//! ```
//!
//! The property tests in `properties` drive the same parsers with
//! generated inputs.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Request};
use opentelemetry::trace::TraceContextExt;

use crate::idempotency::{ClaimToken, Fingerprint, Record, StoredResponse};
use crate::key::{ClientIp, ForwardedHeader, KeyExtractor, PeerAddr, RequestHead};
use crate::layers::circuit_breaker::store as breaker_store;
use crate::layers::deadline::grpc_timeout;
use crate::layers::rate_limit::gcra::GcraState;
use crate::layers::retry::hint::{Hint, hint};
use crate::layers::trace::propagation;
use crate::rate_limit::Quota;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod seeds;

/// The `\n`-separated fields of an input, at most `n`.
fn fields(data: &[u8], n: usize) -> impl Iterator<Item = &[u8]> {
    data.splitn(n, |b| *b == b'\n')
}

/// `name: value` for each field that is a valid header value.
fn headers<'a>(name: &'static str, values: impl IntoIterator<Item = &'a [u8]>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for v in values {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            map.append(name, v);
        }
    }
    map
}

/// The W3C propagators `telemetry::init` installs.
fn w3c_propagators() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        opentelemetry::global::set_text_map_propagator(crate::telemetry::w3c_propagator());
    });
}

/// Whether `s` is `n` lowercase hex digits, not all zero.
fn is_id(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

/// `traceparent`, `tracestate` (twice) and `baggage`, one a line. A
/// version-00 traceparent of the exact form is continued with its ids (and
/// only a traceparent holding the ids is); a context is written out and
/// read back the same (trace and span ids, flags, tracestate, and every
/// baggage member with its properties).
pub fn trace_context(data: &[u8]) {
    w3c_propagators();
    let mut map = HeaderMap::new();
    for (name, part) in ["traceparent", "tracestate", "tracestate", "baggage"]
        .into_iter()
        .zip(fields(data, 4))
    {
        if let Ok(v) = HeaderValue::from_bytes(part) {
            map.append(name, v);
        }
    }
    let cx = propagation::extract(&map, true);
    let span = cx.span().span_context().clone();
    let parent = map.get("traceparent").and_then(|v| v.to_str().ok());
    let parts: Vec<&str> = parent.map(|p| p.split('-').collect()).unwrap_or_default();
    if let [version, trace_id, span_id, flags] = parts[..]
        && version == "00"
        && is_id(trace_id, 32)
        && is_id(span_id, 16)
        && flags.len() == 2
        && flags
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        assert!(span.is_valid(), "{parent:?} was not continued");
        assert_eq!(span.trace_id().to_string(), trace_id);
        assert_eq!(span.span_id().to_string(), span_id);
    }
    let mut out = HeaderMap::new();
    propagation::inject(&cx, &mut out);
    let back = propagation::extract(&out, true);
    let members = crate::layers::trace::baggage::members;
    assert_eq!(members(&back), members(&cx), "{out:?}");
    if !span.is_valid() {
        return;
    }
    let parent = parent.unwrap_or_default();
    assert!(parent.contains(&span.trace_id().to_string()), "{parent:?}");
    assert!(parent.contains(&span.span_id().to_string()), "{parent:?}");
    assert_eq!(back.span().span_context(), &span, "{out:?}");
}

/// A flag byte (bit 0: `Forwarded`, else `X-Forwarded-For`), then up to
/// four header values, one a line. Behind a trusted proxy the key is an
/// address or an IPv6 network, never header text; from an untrusted peer
/// it is the peer's address, whatever the headers say.
pub fn forwarded(data: &[u8]) {
    let Some((flag, rest)) = data.split_first() else {
        return;
    };
    let (name, header) = if flag & 1 == 1 {
        ("forwarded", ForwardedHeader::Forwarded)
    } else {
        ("x-forwarded-for", ForwardedHeader::XForwardedFor)
    };
    let proxy: ipnet::IpNet = "10.0.0.0/8".parse().unwrap();
    let extractor = ClientIp::new([proxy]).header(header);
    let mut req = Request::new(());
    *req.headers_mut() = headers(name, fields(rest, 4));
    for (peer, trusted) in [([10, 0, 0, 1], true), ([192, 0, 2, 7], false)] {
        req.extensions_mut().insert(PeerAddr((peer, 443).into()));
        let Ok(key) = extractor.extract(&RequestHead::of(&req)) else {
            continue;
        };
        let text = key.as_str();
        if trusted {
            assert!(
                text.parse::<std::net::IpAddr>().is_ok() || text.parse::<ipnet::IpNet>().is_ok(),
                "{text:?}"
            );
        } else {
            assert_eq!(text, "192.0.2.7", "an untrusted peer's header was read");
        }
    }
}

/// Up to three `Idempotency-Key` values, one a line. A key read is 1 to
/// 255 characters; quoted as a structured-field string it reads back the
/// same, strictly; read bare, it is the header's very text.
pub fn idempotency_key(data: &[u8]) {
    use crate::idempotency::MAX_KEY_LEN;
    use crate::layers::idempotency::key::parse;
    let map = headers("idempotency-key", fields(data, 3));
    for strict in [true, false] {
        let Ok(Some(key)) = parse(&map, strict) else {
            continue;
        };
        assert!((1..=MAX_KEY_LEN).contains(&key.chars().count()), "{key:?}");
        let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
        let again = headers("idempotency-key", [quoted.as_bytes()]);
        assert_eq!(parse(&again, true).ok().flatten().as_ref(), Some(&key));
        let value = map.get("idempotency-key").map(HeaderValue::as_bytes);
        if !strict && value.and_then(|v| v.first()) != Some(&b'"') {
            assert_eq!(value, Some(key.as_bytes()));
        }
    }
}

/// A `grpc-timeout` value: read when it is 1 to 8 digits and a unit of
/// `HMSmun`, as that many units; and the first 8 bytes as nanoseconds,
/// encoded, read back no shorter and longer by under 1/100,000.
pub fn grpc_timeout(data: &[u8]) {
    let parsed = grpc_timeout::parse_value(data);
    let model = data.split_last().and_then(|(unit, digits)| {
        let digits = std::str::from_utf8(digits).ok()?;
        if !(1..=8).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        let per = match unit {
            b'H' => Duration::from_secs(3600),
            b'M' => Duration::from_secs(60),
            b'S' => Duration::from_secs(1),
            b'm' => Duration::from_millis(1),
            b'u' => Duration::from_micros(1),
            b'n' => Duration::from_nanos(1),
            _ => return None,
        };
        per.checked_mul(u32::try_from(n).ok()?)
    });
    assert_eq!(parsed.ok(), model, "{:?}", String::from_utf8_lossy(data));
    let mut nanos = [0u8; 8];
    let n = data.len().min(8);
    nanos[..n].copy_from_slice(&data[..n]);
    let left = Duration::from_nanos(u64::from_le_bytes(nanos));
    let sent = grpc_timeout::encode(left);
    let read = grpc_timeout::parse_value(sent.as_bytes())
        .unwrap_or_else(|_| panic!("{left:?} sent as {sent:?} did not parse back"));
    assert!(read >= left, "{left:?} read back as {read:?}");
    assert!(
        read - left <= left / 100_000 + Duration::from_nanos(1),
        "{left:?} read back as {read:?}"
    );
}

/// A `Retry-After` value, or with a leading `p` a
/// `grpc-retry-pushback-ms` one. Delay-seconds read as that many seconds
/// (and written back, the same); a date as the time until it (written
/// back as a date, the same); a pushback always gives a hint.
pub fn retry_after(data: &[u8]) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    if let Some(pushback) = data.strip_prefix(b"p") {
        let map = headers("grpc-retry-pushback-ms", [pushback]);
        if !map.is_empty() {
            assert!(hint(&map, now).is_some());
        }
        return;
    }
    let map = headers("retry-after", [data]);
    let Some(found) = hint(&map, now) else {
        return;
    };
    let Hint::After(wait) = found else {
        panic!("a Retry-After read as {found:?}");
    };
    let text = std::str::from_utf8(data).unwrap_or_default().trim();
    let again = if text.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(secs) = text.parse::<u64>() {
            assert_eq!(wait, Duration::from_secs(secs));
        }
        wait.as_secs().to_string()
    } else if wait > Duration::ZERO {
        httpdate::fmt_http_date(now + wait)
    } else {
        return;
    };
    let back = headers("retry-after", [again.as_bytes()]);
    assert_eq!(hint(&back, now), Some(Hint::After(wait)), "{again:?}");
}

/// A stored idempotency record: one read is written back and read the
/// same; and a completed record and a claim made of the input are read
/// back as written.
pub fn idempotency_record(data: &[u8]) {
    if let Some(record) = Record::decode(data) {
        assert_eq!(Record::decode(&record.encode()), Some(record));
    }
    let (head, body) = data.split_at(data.len().min(10));
    let mut word = [0u8; 10];
    word[..head.len()].copy_from_slice(head);
    let status = u16::from_le_bytes([word[0], word[1]]) % 900 + 100;
    let expires_us = u64::from_le_bytes(word[2..10].try_into().unwrap());
    let mut headers = HeaderMap::new();
    let (value, body) = body.split_at(body.len().min(16));
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert("x-stored", v);
    }
    let record = Record::Completed {
        expires_us,
        fingerprint: Fingerprint::of(&[body]),
        response: StoredResponse {
            status: http::StatusCode::from_u16(status).unwrap(),
            headers,
            body: bytes::Bytes::copy_from_slice(body),
            trailers: None,
        },
    };
    assert_eq!(Record::decode(&record.encode()), Some(record));
    let claim = Record::InFlight {
        expires_us,
        token: ClaimToken::random(),
        fingerprint: Fingerprint::of(&[data]),
    };
    assert_eq!(Record::decode(&claim.encode()), Some(claim));
}

/// A stored rate-limit state (etcd's text form): one read is written back
/// and read the same. On Redis the script answers a debt: with the first
/// 8 bytes as that debt, a non-negative one admits and a negative one
/// denies, leaving no more than the burst, with a retry-after unless the
/// cost is above the burst.
pub fn rate_limit_reply(data: &[u8]) {
    if let Some(state) = GcraState::decode(&String::from_utf8_lossy(data)) {
        assert_eq!(GcraState::decode(&state.encode()), Some(state));
    }
    #[cfg(feature = "redis")]
    {
        let mut word = [0u8; 10];
        let n = data.len().min(10);
        word[..n].copy_from_slice(&data[..n]);
        let debt = i64::from_le_bytes(word[..8].try_into().unwrap());
        let quota = Quota::per_second(u64::from(word[8]) + 1).unwrap();
        let cost = u64::from(word[9]);
        let decision = crate::backends::redis_script_decision(&quota, cost, debt);
        assert_eq!(decision.is_allowed(), debt >= 0, "{debt}: {decision:?}");
        assert!(
            decision.remaining() <= quota.burst(),
            "{debt}: {decision:?}"
        );
        if !decision.is_allowed() {
            // Only a cost above the burst is told never to come back.
            let never = decision.retry_after().is_none();
            assert_eq!(never, cost > quota.burst(), "{debt}: {decision:?}");
        }
    }
}

/// A stored breaker state (Redis and etcd): one read is written back and
/// read the same.
pub fn breaker_reply(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now_us = 1_767_225_600_000_000;
    if let Some(v) = breaker_store::decode(text, now_us) {
        let again = breaker_store::encode(v.version, v.writer, &v.shared, now_us);
        assert_eq!(breaker_store::decode(&again, now_us), Some(v), "{again:?}");
    }
}

/// The config documents: a rate-limit document read is written as the
/// documented table and read the same; a breaker document read is written
/// whole and read the same; a stack config (TOML, or JSON when it opens
/// with `{`) is read, its access log built and its health settings checked,
/// without a panic.
pub fn config(data: &[u8]) {
    use crate::reload::document;
    if let Ok((quota, _)) = document::quota(data) {
        let table = serde_json::json!({
            "count": quota.count(),
            "period": humantime::format_duration(quota.period()).to_string(),
            "burst": quota.burst(),
        });
        let again = document::quota(table.to_string().as_bytes());
        assert_eq!(again.map(|(q, _)| q), Ok(quota), "{table}");
    }
    let built_in = crate::circuit_breaker::BreakerConfig::default();
    if let Ok(config) = document::breaker(data, &built_in) {
        let again = serde_json::to_vec(&config).unwrap();
        assert_eq!(document::breaker(&again, &built_in), Ok(config));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = if text.trim_start().starts_with('{') {
        crate::stack::StackConfig::from_json(text)
    } else {
        crate::stack::StackConfig::from_toml(text)
    };
    if let Ok(config) = parsed {
        let _ = config.access_log.access_log();
        let _ = config.health.validate();
    }
}
