//! Whose key it is (SPEC ID-5): idempotency keys are scoped per principal,
//! so one client can never replay another's response by guessing its key.

use http::header::AUTHORIZATION;

use super::record::Fingerprint;
use crate::key::{Key, KeyError, KeyExtractor, RequestHead, peer_ip};

/// The default scope: a hash of the `Authorization` header (never the
/// credential itself); without one, the peer's IP address, so
/// unauthenticated clients do not share keys; `anonymous` when neither is
/// known. Any [`KeyExtractor`] can replace it (an API-key header, a tenant
/// id put in the extensions by the authentication layer, ...). Behind a
/// proxy, prefer a scope from authentication: the peer is the proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorizationScope;

impl KeyExtractor for AuthorizationScope {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        if let Some(value) = head.headers.get(AUTHORIZATION) {
            return Ok(Key::from(principal(value.as_bytes()).as_str()));
        }
        Ok(match peer_ip(head.extensions) {
            Some(ip) => Key::from(format!("ip:{ip}")),
            None => Key::from("anonymous"),
        })
    }
}

/// 128 bits of the SHA-256 of `parts`, in hex.
fn short_hash(parts: &[&[u8]]) -> String {
    let mut digest = Fingerprint::of(parts).to_hex();
    digest.truncate(32);
    digest
}

/// The hashed credential.
fn principal(credential: &[u8]) -> String {
    short_hash(&[credential])
}

/// The store id of `key` under `scope`: 128 bits of a SHA-256 of both, so
/// no raw client input reaches the store (SPEC C-9).
pub(crate) fn scoped_id(scope: &str, key: &str) -> String {
    short_hash(&[scope.as_bytes(), key.as_bytes()])
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    #[test]
    fn scopes_hash_the_credential_and_ids_differ_per_scope() {
        let req = Request::get("/")
            .header("authorization", "Bearer secret")
            .body(())
            .unwrap();
        let scope = AuthorizationScope.extract(&RequestHead::of(&req)).unwrap();
        assert_eq!(scope.as_str().len(), 32);
        assert!(!scope.as_str().contains("secret"));
        let anon = Request::get("/").body(()).unwrap();
        assert_eq!(
            AuthorizationScope
                .extract(&RequestHead::of(&anon))
                .unwrap()
                .as_str(),
            "anonymous"
        );
        assert_ne!(scoped_id(scope.as_str(), "k"), scoped_id("anonymous", "k"));
        assert_eq!(scoped_id("a", "k"), scoped_id("a", "k"));
        assert_eq!(scoped_id("a", "k").len(), 32);
    }
}
