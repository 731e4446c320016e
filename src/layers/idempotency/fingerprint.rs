//! What makes two requests with one key "the same".

use http::request::Parts;

use super::record::Fingerprint;

/// Computes a request's [`Fingerprint`] from its head and whole body.
///
/// ```
/// use battlement::idempotency::{Fingerprint, MakeFingerprint};
/// use http::request::Parts;
///
/// /// The body only: the same payload to any path is the same request.
/// struct BodyOnly;
///
/// impl MakeFingerprint for BodyOnly {
///     fn fingerprint(&self, _: &Parts, body: &[u8]) -> Fingerprint {
///         Fingerprint::of(&[body])
///     }
/// }
/// ```
pub trait MakeFingerprint: Send + Sync + 'static {
    /// The fingerprint of a request.
    fn fingerprint(&self, head: &Parts, body: &[u8]) -> Fingerprint;
}

/// Method, path with its query, and body (the SHA-256 of them); headers
/// and the key itself are left out. `POST /transfer?amount=10` and
/// `POST /transfer?amount=1000` under one key are different requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultFingerprint;

impl MakeFingerprint for DefaultFingerprint {
    fn fingerprint(&self, head: &Parts, body: &[u8]) -> Fingerprint {
        Fingerprint::of(&[
            head.method.as_str().as_bytes(),
            // Without a query, the path alone: the fingerprints of
            // records stored before the query counted stay the same.
            head.uri
                .path_and_query()
                .map_or(head.uri.path(), |pq| pq.as_str())
                .as_bytes(),
            body,
        ])
    }
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn fp(method: &str, uri: &str, body: &[u8]) -> Fingerprint {
        let (parts, ()) = Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
            .into_parts();
        DefaultFingerprint.fingerprint(&parts, body)
    }

    #[test]
    fn method_path_query_and_body_count() {
        let base = fp("POST", "/orders", b"{}");
        assert_eq!(base, fp("POST", "http://example.com/orders", b"{}"));
        assert_ne!(base, fp("POST", "/orders?x=1", b"{}"));
        assert_ne!(
            fp("POST", "/orders?x=1", b"{}"),
            fp("POST", "/orders?x=2", b"{}")
        );
        assert_ne!(base, fp("PATCH", "/orders", b"{}"));
        assert_ne!(base, fp("POST", "/orders/2", b"{}"));
        assert_ne!(base, fp("POST", "/orders", b"{ }"));
    }
}
