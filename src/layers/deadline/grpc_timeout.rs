//! The `grpc-timeout` header: parsing and encoding, per the gRPC over
//! HTTP/2 protocol (`TimeoutValue` of 1 to 8 ASCII digits, then a
//! `TimeoutUnit` of `H`, `M`, `S`, `m`, `u` or `n`).

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

/// The header name.
pub(crate) const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The largest `TimeoutValue` (8 digits).
const MAX_VALUE: u64 = 99_999_999;

/// A `grpc-timeout` header that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

/// The timeout in `headers`, if any.
pub(crate) fn parse(headers: &HeaderMap) -> Result<Option<Duration>, Malformed> {
    match headers.get(GRPC_TIMEOUT) {
        None => Ok(None),
        Some(value) => parse_value(value.as_bytes()).map(Some),
    }
}

/// Parses one `grpc-timeout` value.
pub(crate) fn parse_value(value: &[u8]) -> Result<Duration, Malformed> {
    let malformed = || Malformed(String::from_utf8_lossy(value).into_owned());
    let Some((&unit, digits)) = value.split_last() else {
        return Err(malformed());
    };
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(malformed());
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(malformed()),
    })
}

/// Encodes `timeout` in the finest unit whose value fits in 8 digits,
/// rounded up (as grpc-go does), so a deadline is never sent shorter than
/// it is.
pub(crate) fn encode(timeout: Duration) -> HeaderValue {
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (per, unit) in units {
        let value = nanos.div_ceil(per);
        if value <= u128::from(MAX_VALUE) {
            return HeaderValue::from_str(&format!("{value}{unit}"))
                .unwrap_or(HeaderValue::from_static("99999999H"));
        }
    }
    HeaderValue::from_static("99999999H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_protocol() {
        let ok = [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("3S", Duration::from_secs(3)),
            ("100m", Duration::from_millis(100)),
            ("5u", Duration::from_micros(5)),
            ("0n", Duration::ZERO),
            ("99999999n", Duration::from_nanos(99_999_999)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_value(text.as_bytes()), Ok(want), "{text}");
        }
        for bad in [
            "",
            "m",
            "100",
            "123456789m",
            "1.5S",
            "-1S",
            "10x",
            "1 S",
            "+1S",
            "10mm",
        ] {
            assert!(parse_value(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn encoding_keeps_precision_and_rounds_up() {
        for (d, want) in [
            (Duration::ZERO, "0n"),
            (Duration::from_millis(99), "99000000n"),
            (Duration::from_millis(100), "100000u"),
            (Duration::from_nanos(100_000_001), "100001u"),
            (Duration::from_secs(20_000), "20000000m"),
            (Duration::from_secs(200_000), "200000S"),
            (Duration::from_secs(1_000_000_000), "16666667M"),
            (Duration::MAX, "99999999H"),
        ] {
            assert_eq!(encode(d), want, "{d:?}");
            if d < Duration::from_secs(100_000_000) {
                assert!(parse_value(encode(d).as_bytes()).unwrap() >= d);
            }
        }
    }
}
