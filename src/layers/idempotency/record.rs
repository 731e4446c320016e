//! What an idempotency store keeps per key, and its stored form on Redis
//! and etcd.
//!
//! Values are one blob (one `SET`: a hash costs Redis several times the CPU), starting with an
//! ASCII head the Lua scripts can match:
//! - in flight: `I:{expires_us}:{token}:{fingerprint}`
//! - completed: `C:{expires_us}:{fingerprint}:` then the response in a
//!   length-prefixed binary form (status, headers, body, trailers) that
//!   opens with its format byte.
//!
//! `expires_us` is the logical end of the lock or of the retention on the
//! store's clock; the server-side TTL or lease only cleans up after it.
//!
//! The response's form is what a later release is most likely to extend,
//! so it carries a format byte ([`FORMAT`]), and a record outlives the
//! release that wrote it (retention is 24 h by default): during a rolling
//! deploy, instances of two releases read each other's records. A release
//! reads every format up to its own, and responses stored before the
//! format byte existed (they open with the status, whose first byte is
//! below 4); a format newer than it knows is an error that says so (the
//! layer's failure policy applies), never a misread response. A change of
//! format therefore ships in two steps: a release that reads it, then,
//! once no older instance runs, one that writes it. The ASCII heads are
//! matched by the Redis scripts too; a new head layout would take a new
//! kind letter.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

/// The format byte a stored response opens with: format 1, the layout
/// above. (Responses stored without one open with their status's high
/// byte, 0 to 3.)
pub(crate) const FORMAT: u8 = 0x81;

/// The first format byte: a stored response that opens with a byte from
/// here on has a format byte.
const FIRST_FORMAT: u8 = 0x81;

/// A SHA-256 digest of what makes two requests "the same".
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The SHA-256 of `parts`, each followed by a newline.
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update(part);
            hasher.update(b"\n");
        }
        Self(hasher.finalize().into())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses [`to_hex`](Self::to_hex)'s output.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..12])
    }
}

/// Identifies one claim, so only its owner can complete or release it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClaimToken(u128);

impl ClaimToken {
    /// A random token.
    pub fn random() -> Self {
        Self(fastrand::u128(..))
    }

    /// Lowercase hex, 32 characters.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// Parses [`to_hex`](Self::to_hex)'s output.
    pub fn from_hex(s: &str) -> Option<Self> {
        let hex = s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| u128::from_str_radix(s, 16).ok())
            .flatten()
            .map(Self)
    }
}

impl fmt::Debug for ClaimToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClaimToken(..)")
    }
}

/// A completed response, replayed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers (hop-by-hop headers are not stored).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The trailers, if the body had any (gRPC).
    pub trailers: Option<HeaderMap>,
}

/// The state of one idempotency key.
// Short-lived values, built once per request: boxing would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Claimed and executing until `expires_us`.
    InFlight {
        /// End of the lock (µs since the UNIX epoch, store clock).
        expires_us: u64,
        /// The owner's token.
        token: ClaimToken,
        /// The claiming request's fingerprint.
        fingerprint: Fingerprint,
    },
    /// Done; replayed until `expires_us`.
    Completed {
        /// End of the retention.
        expires_us: u64,
        /// The request's fingerprint.
        fingerprint: Fingerprint,
        /// The response.
        response: StoredResponse,
    },
}

impl Record {
    /// When the record stops counting.
    pub fn expires_us(&self) -> u64 {
        match self {
            Self::InFlight { expires_us, .. } | Self::Completed { expires_us, .. } => *expires_us,
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::InFlight {
                expires_us,
                token,
                fingerprint,
            } => in_flight_value(*expires_us, *token, fingerprint).into_bytes(),
            Self::Completed {
                expires_us,
                fingerprint,
                response,
            } => {
                let mut out = format!("C:{expires_us}:{}:", fingerprint.to_hex()).into_bytes();
                out.extend_from_slice(&encode_response(response));
                out
            }
        }
    }

    /// Parses [`encode`](Self::encode)'s output, in any format this
    /// release reads (a completed response's format byte, or none as
    /// stored by releases before it); `None` if it is not one.
    pub fn decode(value: &[u8]) -> Option<Self> {
        Self::read(value).ok()
    }

    /// [`decode`](Self::decode), telling a record of a newer release from
    /// a damaged one.
    pub(crate) fn read(value: &[u8]) -> Result<Self, Unreadable> {
        Self::read_head(value).ok_or(Unreadable::Damaged)?
    }

    /// The record, or `None` when the head is not a record's.
    fn read_head(value: &[u8]) -> Option<Result<Self, Unreadable>> {
        if value.get(1) != Some(&b':') {
            return None;
        }
        let (kind, rest) = (value.first()?, value.get(2..)?);
        let mut fields = rest.splitn(3, |b| *b == b':');
        let expires_us = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        match kind {
            b'I' => {
                let token = ClaimToken::from_hex(std::str::from_utf8(fields.next()?).ok()?)?;
                let fingerprint = Fingerprint::from_hex(std::str::from_utf8(fields.next()?).ok()?)?;
                Some(Ok(Self::InFlight {
                    expires_us,
                    token,
                    fingerprint,
                }))
            }
            b'C' => {
                let fingerprint = Fingerprint::from_hex(std::str::from_utf8(fields.next()?).ok()?)?;
                Some(
                    decode_response(fields.next()?).map(|response| Self::Completed {
                        expires_us,
                        fingerprint,
                        response,
                    }),
                )
            }
            _ => None,
        }
    }
}

impl Unreadable {
    /// The store error of a record that could not be read.
    #[cfg(any(feature = "redis", feature = "etcd", test))]
    pub(crate) fn into_store_error(self) -> crate::error::StoreError {
        crate::error::StoreError::Protocol(match self {
            Self::Damaged => "unreadable idempotency record".into(),
            Self::Newer(format) => format!(
                "idempotency record in format {format:#04x}, written by a newer release: \
                 finish the rolling deploy (this release reads up to {FORMAT:#04x})"
            ),
        })
    }
}

/// The stored form of an in-flight record.
pub(crate) fn in_flight_value(
    expires_us: u64,
    token: ClaimToken,
    fingerprint: &Fingerprint,
) -> String {
    format!("I:{expires_us}:{}:{}", token.to_hex(), fingerprint.to_hex())
}

/// Status, headers, body and trailers, length-prefixed (big endian).
pub(crate) fn encode_response(r: &StoredResponse) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(r.body.len() + 256);
    out.put_u8(FORMAT);
    out.put_u16(r.status.as_u16());
    put_headers(&mut out, &r.headers);
    out.put_u32(r.body.len() as u32);
    out.put_slice(&r.body);
    match &r.trailers {
        Some(t) => {
            out.put_u8(1);
            put_headers(&mut out, t);
        }
        None => out.put_u8(0),
    }
    out.to_vec()
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    out.put_u32(headers.len() as u32);
    for (name, value) in headers {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
}

/// Why a stored response could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreadable {
    /// Not a record, or a damaged one.
    Damaged,
    /// Written by a newer release, in this format.
    Newer(u8),
}

fn decode_response(buf: &[u8]) -> Result<StoredResponse, Unreadable> {
    match buf.first() {
        // Stored before the format byte: the status comes first.
        Some(&first) if first < FIRST_FORMAT => decode_response_v1(buf).ok_or(Unreadable::Damaged),
        Some(&FORMAT) => decode_response_v1(&buf[1..]).ok_or(Unreadable::Damaged),
        Some(&newer) => Err(Unreadable::Newer(newer)),
        None => Err(Unreadable::Damaged),
    }
}

/// Format 1 after its format byte (and the form before the byte existed).
fn decode_response_v1(mut buf: &[u8]) -> Option<StoredResponse> {
    let status = StatusCode::from_u16(get_u16(&mut buf)?).ok()?;
    let headers = get_headers(&mut buf)?;
    let len = get_u32(&mut buf)? as usize;
    let body = Bytes::copy_from_slice(take(&mut buf, len)?);
    let trailers = match get_u8(&mut buf)? {
        0 => None,
        1 => Some(get_headers(&mut buf)?),
        _ => return None,
    };
    buf.is_empty().then_some(StoredResponse {
        status,
        headers,
        body,
        trailers,
    })
}

fn get_headers(buf: &mut &[u8]) -> Option<HeaderMap> {
    let count = get_u32(buf)? as usize;
    let mut headers = HeaderMap::with_capacity(count.min(256));
    for _ in 0..count {
        let len = get_u16(buf)? as usize;
        let name = HeaderName::from_bytes(take(buf, len)?).ok()?;
        let len = get_u32(buf)? as usize;
        let value = HeaderValue::from_bytes(take(buf, len)?).ok()?;
        headers.try_append(name, value).ok()?;
    }
    Some(headers)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if buf.len() < n {
        return None;
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Some(head)
}

fn get_u8(buf: &mut &[u8]) -> Option<u8> {
    (buf.remaining() >= 1).then(|| buf.get_u8())
}

fn get_u16(buf: &mut &[u8]) -> Option<u16> {
    (buf.remaining() >= 2).then(|| buf.get_u16())
}

fn get_u32(buf: &mut &[u8]) -> Option<u32> {
    (buf.remaining() >= 4).then(|| buf.get_u32())
}

#[cfg(any(test, feature = "conformance"))]
impl StoredResponse {
    /// A response with repeated headers, trailers and every byte value in
    /// its body, so nothing is lost to an encoding unnoticed (tests).
    pub(crate) fn sample() -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Self {
            status: StatusCode::CREATED,
            headers,
            body: (0..=255u8).cycle().take(1024).collect::<Vec<u8>>().into(),
            trailers: Some(trailers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let fingerprint = Fingerprint::of(&[b"POST", b"/orders", b"{}"]);
        let records = [
            Record::InFlight {
                expires_us: 1_767_225_600_000_000,
                token: ClaimToken::random(),
                fingerprint,
            },
            Record::Completed {
                expires_us: 42,
                fingerprint,
                response: StoredResponse::sample(),
            },
            Record::Completed {
                expires_us: 42,
                fingerprint,
                response: StoredResponse {
                    trailers: None,
                    ..StoredResponse::sample()
                },
            },
        ];
        for record in records {
            assert_eq!(Record::decode(&record.encode()), Some(record));
        }
    }

    /// A completed record as releases before the format byte wrote it:
    /// 201, `a: b`, body `hi`, no trailers.
    fn legacy_completed(fingerprint: &Fingerprint) -> Vec<u8> {
        let mut value = format!("C:42:{}:", fingerprint.to_hex()).into_bytes();
        value.extend_from_slice(&[0x00, 0xC9]); // status 201
        value.extend_from_slice(&[0, 0, 0, 1, 0, 1, b'a', 0, 0, 0, 1, b'b']);
        value.extend_from_slice(&[0, 0, 0, 2, b'h', b'i']);
        value.push(0); // no trailers
        value
    }

    #[test]
    fn responses_carry_their_format_and_records_without_one_still_read() {
        let fingerprint = Fingerprint::of(&[b"POST", b"/orders"]);
        let mut headers = HeaderMap::new();
        headers.insert("a", HeaderValue::from_static("b"));
        let record = Record::Completed {
            expires_us: 42,
            fingerprint,
            response: StoredResponse {
                status: StatusCode::CREATED,
                headers,
                body: Bytes::from_static(b"hi"),
                trailers: None,
            },
        };
        let legacy = legacy_completed(&fingerprint);
        assert_eq!(Record::decode(&legacy), Some(record.clone()));
        // Today's form: the same, behind the format byte.
        let head = format!("C:42:{}:", fingerprint.to_hex()).len();
        let encoded = record.encode();
        assert_eq!(encoded[head], FORMAT);
        assert_eq!(encoded[head + 1..], legacy[head..]);
        // A newer release's format is told apart from damage.
        let mut newer = encoded.clone();
        newer[head] = FORMAT + 1;
        assert_eq!(Record::read(&newer), Err(Unreadable::Newer(FORMAT + 1)));
        let message = Unreadable::Newer(FORMAT + 1).into_store_error().to_string();
        assert!(message.contains("newer release"), "{message}");
        assert_eq!(Record::read(b"C:1:zz:"), Err(Unreadable::Damaged));
    }

    #[test]
    fn damaged_values_decode_to_none() {
        let good = Record::Completed {
            expires_us: 1,
            fingerprint: Fingerprint::of(&[b"x"]),
            response: StoredResponse::sample(),
        }
        .encode();
        for cut in 0..good.len() {
            assert_eq!(Record::decode(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(Record::decode(b"X:1:2:3"), None);
        assert_eq!(Record::decode(b"I:1:zz:yy"), None);
    }
}
