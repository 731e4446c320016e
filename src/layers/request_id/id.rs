//! The `RequestId` value: validation and UUIDv7 generation.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;
use uuid::Uuid;

use crate::key::RequestHead;

tokio::task_local! {
    static CURRENT: RequestId;
}

/// The id of one request.
///
/// Set on the request as a header and an extension by
/// [`RequestIdLayer`](super::RequestIdLayer), echoed on the response, and
/// readable with [`RequestId::current`] anywhere inside the handler's task,
/// which is how [`ForwardRequestIdLayer`](super::ForwardRequestIdLayer)
/// finds it for outbound calls.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Longest accepted id.
    pub const MAX_LEN: usize = 128;

    /// The value if it is a valid id: 1..=128 characters of
    /// `A-Z a-z 0-9 . _ : -`.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        is_valid(value.as_bytes()).then(|| Self(value.clone()))
    }

    /// A new UUIDv7 id (RFC 9562), monotonic within this process.
    pub fn new_v7() -> Self {
        let mut text = UuidText([0; 36]);
        Uuid::now_v7().hyphenated().encode_lower(&mut text.0);
        // Shared from the start: the copies on the request and the
        // response count references instead of allocating.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text));
        Self(value.unwrap_or_else(|_| HeaderValue::from_static("-")))
    }

    /// The id of the request being handled by the current task, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `fut` with `self` as [`RequestId::current`].
    pub fn scope<F: std::future::Future>(
        self,
        fut: F,
    ) -> tokio::task::futures::TaskLocalFuture<RequestId, F> {
        CURRENT.scope(self, fut)
    }

    /// Runs `f` with `self` as [`RequestId::current`].
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Valid ids are ASCII, so this never falls back.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    /// The id as an owned header value.
    pub fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

/// A hyphenated UUID's text.
struct UuidText([u8; 36]);

impl AsRef<[u8]> for UuidText {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn is_valid(bytes: &[u8]) -> bool {
    (1..=RequestId::MAX_LEN).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Makes ids for requests that arrive without a usable one.
pub trait MakeRequestId: Send + Sync + 'static {
    /// A new id for the request with this head.
    fn make_request_id(&self, head: &RequestHead<'_>) -> RequestId;
}

/// The default: UUIDv7.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultMakeRequestId;

impl MakeRequestId for DefaultMakeRequestId {
    fn make_request_id(&self, _: &RequestHead<'_>) -> RequestId {
        RequestId::new_v7()
    }
}

impl<F> MakeRequestId for F
where
    F: Fn(&RequestHead<'_>) -> RequestId + Send + Sync + 'static,
{
    fn make_request_id(&self, head: &RequestHead<'_>) -> RequestId {
        self(head)
    }
}

pub(crate) type SharedMakeRequestId = Arc<dyn MakeRequestId>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_rid_1() {
        let ok = |s: &str| RequestId::parse(&HeaderValue::from_str(s).unwrap()).is_some();
        assert!(ok("abc-123_X.y:z"));
        assert!(ok(&"a".repeat(128)));
        assert!(!ok(&"a".repeat(129)));
        assert!(!ok(""));
        assert!(!ok("has space"));
        assert!(!ok("semi;colon"));
        assert!(!ok("tab\there"));
        assert!(RequestId::parse(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_none());
    }

    #[test]
    fn generated_ids_are_monotonic_uuid_v7() {
        let ids: Vec<RequestId> = (0..10_000).map(|_| RequestId::new_v7()).collect();
        for pair in ids.windows(2) {
            assert!(pair[0].as_str() < pair[1].as_str(), "{pair:?}");
        }
        let uuid = Uuid::parse_str(ids[0].as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert!(RequestId::parse(ids[0].header_value()).is_some());
    }

    #[tokio::test]
    async fn current_is_set_inside_scope_only() {
        assert!(RequestId::current().is_none());
        let id = RequestId::new_v7();
        let seen = id.clone().scope(async { RequestId::current() }).await;
        assert_eq!(seen, Some(id));
    }
}
