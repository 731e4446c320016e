//! Whose key it is: idempotency keys are scoped per principal, so one
//! client can never replay another's response (its body, its
//! `Set-Cookie`) by sending the same key.
//!
//! There is no shared fallback scope: a request whose principal cannot be
//! told is rejected (400, gRPC `INVALID_ARGUMENT`, "idempotency scope
//! unknown") rather than filed with every other such request.

use std::fmt;
use std::sync::Arc;

use http::HeaderName;
use http::header::AUTHORIZATION;
use ipnet::IpNet;

use super::record::Fingerprint;
use crate::key::{ClientIp, HeaderKey, Key, KeyError, KeyExtractor, RequestHead, peer_ip};

/// The principal an authentication layer verified, in the request's
/// extensions: the idempotency scope of choice, since two clients share
/// it only if they are one principal.
///
/// ```
/// use battlement::idempotency::Principal;
///
/// let mut req = http::Request::post("/payments").body(()).unwrap();
/// // In the application's authentication layer, once the token checked out:
/// req.extensions_mut().insert(Principal::new("user-42"));
/// # assert_eq!(req.extensions().get::<Principal>().unwrap().as_str(), "user-42");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(Arc<str>);

impl Principal {
    /// The principal named `id` (a user or service account id).
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// Its id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The scope of a verified [`Principal`] from the request's extensions;
/// a request without one gets 400 "idempotency scope unknown" (the
/// authentication layer did not run before the idempotency layer, or let
/// an anonymous request through).
#[derive(Debug, Clone, Copy, Default)]
pub struct PrincipalScope;

impl KeyExtractor for PrincipalScope {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        principal_key(head).ok_or_else(|| {
            KeyError::Rejected(
                "no authenticated principal in the request (the authentication layer \
                 must run before the idempotency layer)"
                    .into(),
            )
        })
    }
}

/// The scope of a verified principal, if the request has one.
fn principal_key(head: &RequestHead<'_>) -> Option<Key> {
    let principal = head.extensions.get::<Principal>()?;
    Some(Key::from(format!("principal:{}", principal.as_str())))
}

/// A header that a gateway sets, believed only from the gateway: a
/// request from any other peer gets 400 "idempotency scope unknown",
/// header or not, so a client that bypasses the gateway cannot pick
/// another client's scope. The header's value is hashed, as
/// [`HeaderKey`](crate::key::HeaderKey) does.
///
/// ```
/// use battlement::idempotency::{IdempotencyLayer, TrustedHeaderScope};
/// use battlement::backends::MemoryStore;
/// use http::HeaderName;
///
/// let layer = IdempotencyLayer::new(MemoryStore::new()).scope(TrustedHeaderScope::new(
///     HeaderName::from_static("x-client-id"),
///     ["10.0.0.0/8".parse().unwrap()],
/// ));
/// # drop(layer);
/// ```
#[derive(Debug, Clone)]
pub struct TrustedHeaderScope {
    header: HeaderKey,
    gateways: Vec<IpNet>,
}

impl TrustedHeaderScope {
    /// The value of `name`, believed from peers in `gateways`.
    pub fn new(name: HeaderName, gateways: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            header: HeaderKey::new(name),
            gateways: gateways.into_iter().collect(),
        }
    }
}

impl KeyExtractor for TrustedHeaderScope {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        let peer = peer_ip(head.extensions).ok_or(KeyError::MissingPeer)?;
        if !self.gateways.iter().any(|net| net.contains(&peer)) {
            return Err(KeyError::Rejected(
                "the idempotency scope header is only believed from the gateway".into(),
            ));
        }
        self.header.extract(head)
    }
}

/// The default scope: the verified [`Principal`] when an authentication
/// layer put one in the extensions; else a hash of the `Authorization`
/// header (never the credential itself); without one, the client's IP
/// address, so unauthenticated clients do not share keys. Clients that
/// send the same `Authorization` value share a scope (see the [module
/// docs](crate::idempotency#which-scope-fits) for the scope that fits).
///
/// The client's address is the connection's peer (see
/// [`peer_ip`](crate::key::peer_ip)), or, with
/// [`trusted_proxies`](Self::trusted_proxies), the client behind those
/// proxies: behind a load balancer every peer is the balancer, so without
/// it all unauthenticated clients would share one scope. Each address is
/// a scope of its own (IPv6 is not grouped by prefix here, unlike the rate
/// limit's keys). [`unauthenticated`](Self::unauthenticated) puts any
/// [`KeyExtractor`] in the address's place.
///
/// A request with neither (no `Authorization`, and a server that recorded
/// no peer address: axum served without connect info, a Unix socket, a
/// hyper server that inserts no [`PeerAddr`](crate::key::PeerAddr)) has
/// no scope and is rejected with 400 "idempotency scope unknown"; nothing
/// runs. To accept such requests, choose a scope they have (a header, a
/// tenant id from the extensions, [`GlobalKey`](crate::key::GlobalKey) if
/// every caller may replay every other's responses).
///
/// ```
/// use battlement::idempotency::{AuthorizationScope, IdempotencyLayer};
/// use battlement::backends::MemoryStore;
/// use battlement::key::HeaderKey;
/// use http::HeaderName;
///
/// // Behind a load balancer in 10.0.0.0/8.
/// let behind_lb = IdempotencyLayer::new(MemoryStore::new())
///     .scope(AuthorizationScope::new().trusted_proxies(["10.0.0.0/8".parse().unwrap()]));
/// // Unauthenticated callers named by a header the gateway sets.
/// let by_gateway = IdempotencyLayer::new(MemoryStore::new()).scope(
///     AuthorizationScope::new()
///         .unauthenticated(HeaderKey::new(HeaderName::from_static("x-client-id"))),
/// );
/// ```
#[derive(Clone, Default)]
pub struct AuthorizationScope {
    unauthenticated: Unauthenticated,
}

/// Who a request without `Authorization` is.
#[derive(Clone)]
enum Unauthenticated {
    /// Its address: the peer, or the client behind trusted proxies.
    Address(ClientIp),
    /// What this extractor says.
    Custom(Arc<dyn KeyExtractor>),
}

impl Default for Unauthenticated {
    fn default() -> Self {
        Self::Address(ClientIp::new([]).ipv6_prefix(128))
    }
}

impl fmt::Debug for AuthorizationScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("AuthorizationScope");
        match &self.unauthenticated {
            Unauthenticated::Address(client_ip) => s.field("unauthenticated", client_ip),
            Unauthenticated::Custom(_) => s.field("unauthenticated", &"custom"),
        };
        s.finish()
    }
}

impl AuthorizationScope {
    /// `Authorization`, else the peer's IP address, else rejected.
    pub fn new() -> Self {
        Self::default()
    }

    /// Without `Authorization`, the client's address behind proxies in
    /// these networks (the right-most untrusted `X-Forwarded-For` hop, see
    /// [`ClientIp`]) rather than the peer's.
    pub fn trusted_proxies(mut self, trusted: impl IntoIterator<Item = IpNet>) -> Self {
        self.unauthenticated = Unauthenticated::Address(ClientIp::new(trusted).ipv6_prefix(128));
        self
    }

    /// Without `Authorization`, the scope `scope` extracts (its error
    /// rejects the request with 400).
    pub fn unauthenticated(mut self, scope: impl KeyExtractor) -> Self {
        self.unauthenticated = Unauthenticated::Custom(Arc::new(scope));
        self
    }
}

impl KeyExtractor for AuthorizationScope {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        if let Some(key) = principal_key(head) {
            return Ok(key);
        }
        if let Some(value) = head.headers.get(AUTHORIZATION) {
            return Ok(Key::from(principal(value.as_bytes()).as_str()));
        }
        // The prefixes keep the kinds apart: a credential's hash has none.
        match &self.unauthenticated {
            Unauthenticated::Address(client_ip) => {
                let peer = peer_ip(head.extensions).ok_or(KeyError::MissingPeer)?;
                Ok(Key::from(format!(
                    "ip:{}",
                    client_ip.client_ip(peer, head.headers)
                )))
            }
            Unauthenticated::Custom(scope) => {
                let key = scope.extract(head)?;
                Ok(Key::from(format!("key:{key}")))
            }
        }
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

/// The store id of `key` under `scope`: `scope/key`, 64 bits of a SHA-256
/// of the scope, then 128 bits of one of both, so no raw client input
/// reaches the store and a store can count and cap each scope's records.
pub(crate) fn scoped_id(scope: &str, key: &str) -> String {
    let mut id = short_hash(&[scope.as_bytes()]);
    id.truncate(16);
    id.push('/');
    id.push_str(&short_hash(&[scope.as_bytes(), key.as_bytes()]));
    id
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;
    use crate::key::{HeaderKey, PeerAddr};

    fn scope_of(scope: &AuthorizationScope, req: &Request<()>) -> Result<String, KeyError> {
        scope
            .extract(&RequestHead::of(req))
            .map(|key| key.to_string())
    }

    #[test]
    fn scopes_hash_the_credential_and_ids_differ_per_scope() {
        let req = Request::get("/")
            .header("authorization", "Bearer secret")
            .body(())
            .unwrap();
        let scope = scope_of(&AuthorizationScope::new(), &req).unwrap();
        assert_eq!(scope.len(), 32);
        assert!(!scope.contains("secret"));
        assert_ne!(scoped_id(&scope, "k"), scoped_id("ip:192.0.2.1", "k"));
        assert_eq!(scoped_id("a", "k"), scoped_id("a", "k"));
        assert_eq!(scoped_id("a", "k").len(), 16 + 1 + 32);
        // One scope prefix for all its keys, so a store can cap a scope.
        assert_eq!(scoped_id("a", "k")[..17], scoped_id("a", "other")[..17]);
    }

    #[test]
    fn without_a_credential_or_an_address_there_is_no_scope() {
        let anon = Request::get("/").body(()).unwrap();
        assert_eq!(
            scope_of(&AuthorizationScope::new(), &anon),
            Err(KeyError::MissingPeer)
        );
    }

    #[test]
    fn unauthenticated_callers_are_scoped_by_their_own_address() {
        let from = |peer: &str, xff: &str| {
            Request::get("/")
                .header("x-forwarded-for", xff)
                .extension(PeerAddr(peer.parse().unwrap()))
                .body(())
                .unwrap()
        };
        let direct = AuthorizationScope::new();
        assert_eq!(
            scope_of(&direct, &from("[2001:db8::7]:1", "6.6.6.6")).unwrap(),
            "ip:2001:db8::7"
        );
        // Behind a balancer, the peer is the balancer: the header says who
        // the client is.
        let behind = AuthorizationScope::new().trusted_proxies(["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            scope_of(&behind, &from("10.0.0.1:1", "203.0.113.7")).unwrap(),
            "ip:203.0.113.7"
        );
        assert_eq!(
            scope_of(&behind, &from("10.0.0.1:1", "203.0.113.8")).unwrap(),
            "ip:203.0.113.8"
        );
        let by_header = AuthorizationScope::new()
            .unauthenticated(HeaderKey::new(http::HeaderName::from_static("x-client")));
        let req = Request::get("/")
            .header("x-client", "c-1")
            .body(())
            .unwrap();
        // The header's value, hashed.
        let scope = scope_of(&by_header, &req).unwrap();
        assert!(
            scope.starts_with("key:h:") && !scope.contains("c-1"),
            "{scope}"
        );
        assert!(scope_of(&by_header, &Request::get("/").body(()).unwrap()).is_err());
    }
}
