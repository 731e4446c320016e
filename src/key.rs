//! Key extractors: who a request belongs to, for per-key limits and state.
//!
//! ```
//! use std::net::SocketAddr;
//! use battlement::key::{ClientIp, KeyExtractor, PeerAddr, RequestHead};
//!
//! // Behind one trusted load balancer at 10.0.0.1.
//! let extractor = ClientIp::new(["10.0.0.0/8".parse().unwrap()]);
//! let mut req = http::Request::get("/")
//!     // The client tried to spoof the left-most entry.
//!     .header("x-forwarded-for", "1.1.1.1, 203.0.113.7")
//!     .body(())
//!     .unwrap();
//! req.extensions_mut().insert(PeerAddr("10.0.0.1:443".parse::<SocketAddr>().unwrap()));
//! let key = extractor.extract(&RequestHead::of(&req)).unwrap();
//! assert_eq!(key.as_str(), "203.0.113.7");
//! ```
//!
//! An extractor reads a [`RequestHead`] (method, URI, headers, extensions)
//! and returns a [`Key`] or a [`KeyError`]. Keys are opaque strings that
//! may hold client-controlled bytes; backends encode them before they reach
//! a server.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use http::header::{FORWARDED, HeaderName};
use http::{Extensions, HeaderMap, Method, Request, StatusCode, Uri};
use ipnet::IpNet;
use sha2::Sha256;

use crate::reject::Problem;

/// A borrowed view of a request's head, given to key extractors.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request URI.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (peer address, matched route, ...).
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `req`.
    pub fn of<B>(req: &'a Request<B>) -> Self {
        Self {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            extensions: req.extensions(),
        }
    }
}

/// The key a request is counted under.
///
/// Short keys (IP addresses, most API keys) are stored inline, so taking a
/// key costs no allocation.
#[derive(Clone)]
pub struct Key(Repr);

const INLINE: usize = 46;

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<str>),
}

impl Key {
    /// A key holding `s`.
    pub fn new(s: &str) -> Self {
        if s.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            Self(Repr::Inline {
                len: s.len() as u8,
                bytes,
            })
        } else {
            Self(Repr::Shared(s.into()))
        }
    }

    /// The key's bytes (its text, without the UTF-8 check of
    /// [`as_str`](Self::as_str)).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            Repr::Shared(s) => s.as_bytes(),
        }
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always a copy of a whole `&str`, so always valid UTF-8.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Repr::Shared(s) => s,
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Key").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Key {
    fn from(s: String) -> Self {
        Self::new(&s)
    }
}

impl From<IpAddr> for Key {
    fn from(ip: IpAddr) -> Self {
        let mut bytes = [0u8; INLINE];
        let len = match ip.to_canonical() {
            // The common case, on every request keyed by IP: digits written
            // directly, without the formatting machinery.
            IpAddr::V4(v4) => {
                // At most 15 characters: every write below is in bounds.
                let mut len = 0;
                let mut put = |b: u8| {
                    if let Some(slot) = bytes.get_mut(len) {
                        *slot = b;
                        len += 1;
                    }
                };
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        put(b'.');
                    }
                    if octet >= 100 {
                        put(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        put(b'0' + octet / 10 % 10);
                    }
                    put(b'0' + octet % 10);
                }
                len
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                let mut cursor = std::io::Cursor::new(&mut bytes[..]);
                // An IPv6 address is at most 39 characters: it always fits.
                let _ = write!(cursor, "{v6}");
                cursor.position() as usize
            }
        };
        Self(Repr::Inline {
            len: len as u8,
            bytes,
        })
    }
}

/// The prefix length [`PeerIp`](struct@PeerIp) and [`ClientIp`] group
/// IPv6 addresses by: a /64 is the smallest network a host is usually
/// given, so one host holds 2^64 addresses of it.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// Clamps an IPv6 prefix length to 1..=128.
fn prefix_len(bits: u8) -> u8 {
    bits.clamp(1, 128)
}

/// The key of `ip`: an IPv4 address (IPv4-mapped IPv6 included) as
/// itself; an IPv6 address as its network of `v6_prefix` bits
/// (`2001:db8:1:2::/64`), or as itself at 128.
fn ip_key(ip: IpAddr, v6_prefix: u8) -> Key {
    match ip.to_canonical() {
        IpAddr::V6(v6) if v6_prefix < 128 => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(v6_prefix))
                .unwrap_or(0);
            let net = Ipv6Addr::from(u128::from(v6) & mask);
            use std::io::Write as _;
            let mut bytes = [0u8; INLINE];
            let mut cursor = std::io::Cursor::new(&mut bytes[..]);
            // At most 39 + 4 characters: it always fits.
            let _ = write!(cursor, "{net}/{v6_prefix}");
            let len = cursor.position() as usize;
            Key(Repr::Inline {
                len: len as u8,
                bytes,
            })
        }
        other => Key::from(other),
    }
}

/// Why no key could be taken from a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A required header was absent.
    #[error("missing header {0}")]
    MissingHeader(HeaderName),
    /// A header held a value that cannot be a key.
    #[error("invalid header {0}: {1}")]
    InvalidHeader(HeaderName, &'static str),
    /// The server did not record the peer address (a deployment error:
    /// serve with connect info, or insert [`PeerAddr`]).
    #[error("peer address unknown")]
    MissingPeer,
    /// A custom extractor rejected the request.
    #[error("{0}")]
    Rejected(String),
}

/// What an operator does about [`KeyError::MissingPeer`].
const MISSING_PEER_FIX: &str = "the server records no client address: serve the app with \
     connect info (axum: `into_make_service_with_connect_info::<SocketAddr>()`, or \
     `ServerStack::serve`), or insert a `PeerAddr` extension in the hyper service";

/// Logs [`MISSING_PEER_FIX`] once per process, at the first request that
/// needed the address (a rate-limit key, an idempotency scope): every such
/// request is refused alike, and one line names the fix.
pub(crate) fn warn_missing_peer_once() {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "{MISSING_PEER_FIX}; until then every request keyed by the client's address is \
             refused (500, or 400 for an Idempotency-Key without a credential)"
        );
    }
}

impl From<KeyError> for Problem {
    fn from(err: KeyError) -> Self {
        match err {
            KeyError::MissingPeer => {
                warn_missing_peer_once();
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                    .detail(MISSING_PEER_FIX)
            }
            other => Problem::new(StatusCode::BAD_REQUEST, "Bad Request").detail(other.to_string()),
        }
    }
}

/// Takes a [`Key`] from a request.
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key of the request with this head.
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError>;
}

impl<T: KeyExtractor + ?Sized> KeyExtractor for Arc<T> {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        (**self).extract(head)
    }
}

/// One key for every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct GlobalKey;

impl KeyExtractor for GlobalKey {
    fn extract(&self, _: &RequestHead<'_>) -> Result<Key, KeyError> {
        Ok(Key::from("global"))
    }
}

/// The peer's socket address, for servers that are neither axum nor tonic:
/// insert it into the request extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The address of the connection's peer, from a [`PeerAddr`] extension,
/// axum's `ConnectInfo<SocketAddr>`, or tonic's `TcpConnectInfo` or
/// `TlsConnectInfo<TcpConnectInfo>` (the only one there when TLS streams
/// accepted by the application, e.g. with tokio-rustls, are served with
/// `serve_with_incoming`). `None` when the server recorded none (axum
/// served without connect info, a Unix socket, a bare hyper server that
/// does not insert [`PeerAddr`]).
pub fn peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
        return Some(addr.ip().to_canonical());
    }
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip().to_canonical());
    }
    #[cfg(feature = "tonic")]
    if let Some(addr) = tonic_remote_addr(extensions) {
        return Some(addr.ip().to_canonical());
    }
    None
}

/// The remote address tonic recorded. `TlsConnectInfo` can only be named
/// with one of tonic's TLS features, which this crate does not turn on
/// (they bring a crypto provider); a server that serves TLS through tonic
/// has them on, and then tonic's own `Request::remote_addr` reads it: ask
/// tonic. That needs the extensions by value, so `TcpConnectInfo`, the
/// common case (tonic's own `tls_config` inserts it too), is read directly
/// and only the rest pays for a copy of the extensions.
#[cfg(feature = "tonic")]
fn tonic_remote_addr(extensions: &Extensions) -> Option<SocketAddr> {
    if let Some(info) = extensions.get::<tonic::transport::server::TcpConnectInfo>() {
        return info.remote_addr();
    }
    if extensions.is_empty() {
        return None;
    }
    tonic::Request::from_parts(tonic::metadata::MetadataMap::new(), extensions.clone(), ())
        .remote_addr()
}

/// The IP address of the connection's peer (see [`peer_ip`]); IPv6
/// addresses are grouped by their /64 (see
/// [`ipv6_prefix`](PeerIp::ipv6_prefix)).
///
/// `PeerIp` is also a constant with the defaults, so `.key(PeerIp)` reads
/// as it would for a unit struct.
///
/// ```
/// use battlement::key::{KeyExtractor, PeerAddr, PeerIp, RequestHead};
///
/// let key = |extractor: &PeerIp, peer: &str| {
///     let mut req = http::Request::get("/").body(()).unwrap();
///     req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
///     extractor.extract(&RequestHead::of(&req)).unwrap().to_string()
/// };
/// assert_eq!(key(&PeerIp, "192.0.2.7:80"), "192.0.2.7");
/// assert_eq!(key(&PeerIp, "[2001:db8:1:2:aaaa::7]:80"), "2001:db8:1:2::/64");
/// assert_eq!(key(&PeerIp.ipv6_prefix(48), "[2001:db8:1:2::7]:80"), "2001:db8:1::/48");
/// assert_eq!(key(&PeerIp.ipv6_prefix(128), "[2001:db8::7]:80"), "2001:db8::7");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIp {
    ipv6_prefix: u8,
}

/// [`PeerIp`](struct@PeerIp) with the defaults.
#[allow(non_upper_case_globals)]
pub const PeerIp: PeerIp = PeerIp::new();

impl PeerIp {
    /// Keys by the peer's IP, IPv6 grouped by [`DEFAULT_IPV6_PREFIX`].
    pub const fn new() -> Self {
        Self {
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Groups IPv6 addresses by their first `bits` bits (1 to 128; 128
    /// keys each address on its own). IPv4 addresses, and IPv4-mapped
    /// IPv6 ones, are always keyed each on its own.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = prefix_len(bits);
        self
    }
}

impl Default for PeerIp {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        peer_ip(head.extensions)
            .map(|ip| ip_key(ip, self.ipv6_prefix))
            .ok_or(KeyError::MissingPeer)
    }
}

/// Which header a [`ClientIp`] reads the proxy chain from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for=proxy1`.
    Forwarded,
}

/// The client's IP behind trusted proxies.
///
/// Starting from the peer address and walking the forwarding header from
/// right to left, the first address that is **not** in the trusted list is
/// the client. Entries to its left were written by the client and are never
/// used, so a spoofed left-most `X-Forwarded-For` entry cannot choose the
/// key. When the peer itself is untrusted the header is ignored. When every
/// hop is trusted the left-most one is the client. A hop that cannot be
/// parsed (`unknown`, an obfuscated name, garbage) stops the walk at the
/// last trusted address, which is then the key. An IPv6 client is keyed
/// by its /64, as with [`PeerIp`](struct@PeerIp).
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: Arc<[IpNet]>,
    header: ForwardedHeader,
    ipv6_prefix: u8,
}

impl ClientIp {
    /// Trusts proxies in these networks; reads `X-Forwarded-For`.
    pub fn new(trusted: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            trusted: trusted.into_iter().collect(),
            header: ForwardedHeader::XForwardedFor,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Groups IPv6 clients by their first `bits` bits (1 to 128, default
    /// [`DEFAULT_IPV6_PREFIX`]; see [`PeerIp::ipv6_prefix`]).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = prefix_len(bits);
        self
    }

    /// Reads the chain from `header` instead.
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client address of a request with this peer and these headers.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.is_trusted(client) {
            return client;
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => hops_in(headers, "x-forwarded-for", parse_xff_hop),
            ForwardedHeader::Forwarded => hops_in(headers, FORWARDED.as_str(), parse_forwarded_hop),
        };
        for hop in hops.into_iter().rev() {
            match hop {
                Some(ip) => {
                    client = ip;
                    if !self.is_trusted(ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        let peer = peer_ip(head.extensions).ok_or(KeyError::MissingPeer)?;
        Ok(ip_key(self.client_ip(peer, head.headers), self.ipv6_prefix))
    }
}

/// Every comma-separated element of every `name` header, in order; `None`
/// for an element that is not an address.
fn hops_in(
    headers: &HeaderMap,
    name: &str,
    parse: fn(&str) -> Option<IpAddr>,
) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(name) {
        match value.to_str() {
            Ok(s) => hops.extend(s.split(',').map(|e| parse(e.trim()))),
            Err(_) => hops.push(None),
        }
    }
    hops
}

fn parse_xff_hop(s: &str) -> Option<IpAddr> {
    parse_addr(s)
}

fn parse_forwarded_hop(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        parse_addr(value)
    })
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`.
fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The matched route template (axum's `MatchedPath`, e.g. `/items/{id}`),
/// so every route gets its own budget. Requests that matched no route share
/// the key `unmatched`: the raw path is never used, so clients cannot
/// create keys at will.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteKey;

impl KeyExtractor for RouteKey {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        #[cfg(feature = "axum")]
        if let Some(path) = head.extensions.get::<axum::extract::MatchedPath>() {
            return Ok(Key::from(path.as_str()));
        }
        let _ = head;
        Ok(Key::from("unmatched"))
    }
}

/// The upstream a client request goes to: the URI's `host[:port]`
/// (lowercase), or else the `Host` header; `unknown` when neither is
/// there. Meant for client-side layers (one breaker per upstream host);
/// on a server, the `Host` header is chosen by the client.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostKey;

impl KeyExtractor for HostKey {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        let authority = head.uri.authority().map(|a| a.as_str()).or_else(|| {
            head.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        let Some(authority) = authority else {
            return Ok(Key::from("unknown"));
        };
        // Drop any `user:password@`.
        let host = authority.rsplit('@').next().unwrap_or(authority);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Ok(Key::from(host.to_ascii_lowercase()))
        } else {
            Ok(Key::from(host))
        }
    }
}

/// The value of a header, e.g. an API key. Values must be 1..=`max_len`
/// visible ASCII characters.
///
/// The key is a hash of the value, never the value: an API key must not
/// reach Redis or etcd key names, events or logs in clear. It is an
/// HMAC-SHA-256 keyed with the deployment's [`secret`](Self::secret)
/// (every instance sharing a store must use the same one), or, without
/// one, a SHA-256 salted with a constant, which keeps the value out of
/// sight but not out of reach of a dictionary. 128 bits of it are kept,
/// as `h:` and 32 hex digits.
///
/// ```
/// use battlement::key::{HeaderKey, KeyExtractor, RequestHead};
/// use http::HeaderName;
///
/// let key = HeaderKey::new(HeaderName::from_static("x-api-key")).secret(b"from the vault");
/// let req = http::Request::get("/").header("x-api-key", "sk_live_123").body(()).unwrap();
/// let key = key.extract(&RequestHead::of(&req)).unwrap();
/// assert!(key.as_str().starts_with("h:") && !key.as_str().contains("sk_live"));
/// ```
#[derive(Clone)]
pub struct HeaderKey {
    name: HeaderName,
    max_len: usize,
    /// The MAC already keyed: each value costs the message's blocks only.
    mac: Hmac<Sha256>,
}

/// HMAC-SHA-256 keyed with `secret`.
fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes a key of any length (a long one is hashed first), so this
    // never falls back.
    <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()))
}

impl fmt::Debug for HeaderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderKey")
            .field("name", &self.name)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

/// `name` as a header name, for configs; the error names `what` it is for.
pub(crate) fn header_name(what: &str, name: &str) -> Result<HeaderName, crate::ConfigError> {
    HeaderName::try_from(name)
        .map_err(|e| crate::ConfigError::new(format!("{what} header {name:?}: {e}")))
}

/// The salt of header keys hashed without a deployment secret.
const HEADER_KEY_SALT: &[u8] = b"battlement header key";

impl HeaderKey {
    /// Keys by the value of `name` (at most 256 characters).
    pub fn new(name: HeaderName) -> Self {
        Self {
            name,
            max_len: 256,
            mac: keyed(HEADER_KEY_SALT),
        }
    }

    /// Accepts values up to `max_len` characters.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Keys the hash with the deployment's `secret` (the same on every
    /// instance that shares a store): without it, nobody who reads the
    /// store can test a guessed value.
    pub fn secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.mac = keyed(secret.as_ref());
        self
    }
}

impl KeyExtractor for HeaderKey {
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        let value = head
            .headers
            .get(&self.name)
            .ok_or_else(|| KeyError::MissingHeader(self.name.clone()))?;
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > self.max_len {
            return Err(KeyError::InvalidHeader(self.name.clone(), "bad length"));
        }
        if !bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Err(KeyError::InvalidHeader(
                self.name.clone(),
                "not visible ASCII",
            ));
        }
        let mut mac = self.mac.clone();
        mac.update(bytes);
        let mac = mac.finalize().into_bytes();
        Ok(Key::from(format!("h:{}", hex::encode(&mac[..16]))))
    }
}

/// A key computed by a closure; see [`key_fn`].
#[derive(Clone)]
pub struct KeyFn<F>(F);

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

/// A key extractor from a closure.
///
/// ```
/// use battlement::key::{key_fn, Key, KeyError, KeyExtractor, RequestHead};
///
/// let by_tenant = key_fn(|head: &RequestHead<'_>| {
///     let path = head.uri.path();
///     path.split('/').nth(1).filter(|s| !s.is_empty()).map(Key::from)
///         .ok_or_else(|| KeyError::Rejected("no tenant in path".into()))
/// });
/// let req = http::Request::get("/acme/orders").body(()).unwrap();
/// assert_eq!(by_tenant.extract(&RequestHead::of(&req)).unwrap().as_str(), "acme");
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F>
where
    F: Fn(&RequestHead<'_>) -> Result<Key, KeyError> + Send + Sync + 'static,
{
    KeyFn(f)
}

impl<F> KeyExtractor for KeyFn<F>
where
    F: Fn(&RequestHead<'_>) -> Result<Key, KeyError> + Send + Sync + 'static,
{
    fn extract(&self, head: &RequestHead<'_>) -> Result<Key, KeyError> {
        (self.0)(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_keys_are_the_canonical_text() {
        for (ip, text) in [
            ("0.0.0.0", "0.0.0.0"),
            ("255.255.255.255", "255.255.255.255"),
            ("1.22.103.9", "1.22.103.9"),
            ("::ffff:10.0.0.1", "10.0.0.1"),
            ("2001:db8::1", "2001:db8::1"),
            (
                "2001:db8:1234:5678:9abc:def0:1234:5678",
                "2001:db8:1234:5678:9abc:def0:1234:5678",
            ),
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(Key::from(ip).as_str(), text);
        }
    }

    #[test]
    fn ipv6_keys_are_the_network_of_their_prefix() {
        let key = |ip: &str, bits: u8| ip_key(ip.parse().unwrap(), bits).to_string();
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 64), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:ffff::", 64), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 56), "2001:db8:1::/56");
        assert_eq!(key("2001:db8:1:2ff:3:4:5:6", 56), "2001:db8:1:200::/56");
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 128), "2001:db8:1:2:3:4:5:6");
        assert_eq!(
            key("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 127),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"
        );
        assert_eq!(key("8000::1", 1), "8000::/1");
        // IPv4, mapped or not, is never grouped.
        assert_eq!(key("192.0.2.77", 1), "192.0.2.77");
        assert_eq!(key("::ffff:192.0.2.77", 64), "192.0.2.77");
        assert_eq!(PeerIp.ipv6_prefix(0), PeerIp.ipv6_prefix(1));
        assert_eq!(PeerIp.ipv6_prefix(200), PeerIp.ipv6_prefix(128));
        assert_eq!(PeerIp, PeerIp::default());
    }

    fn request(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = b.body(()).unwrap();
        req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        req
    }

    fn client(extractor: &ClientIp, req: &Request<()>) -> String {
        extractor
            .extract(&RequestHead::of(req))
            .unwrap()
            .to_string()
    }

    #[test]
    fn host_key_is_the_upstream_authority() {
        let key = |req: Request<()>| HostKey.extract(&RequestHead::of(&req)).unwrap().to_string();
        let req = |uri: &str| Request::get(uri).body(()).unwrap();
        assert_eq!(
            key(req("http://API.example.com:8080/x")),
            "api.example.com:8080"
        );
        assert_eq!(key(req("http://user:pw@10.0.0.1/x")), "10.0.0.1");
        let with_host = Request::get("/x")
            .header("host", "svc:50051")
            .body(())
            .unwrap();
        assert_eq!(key(with_host), "svc:50051");
        assert_eq!(key(req("/x")), "unknown");
    }

    /// Whole addresses, so the tests of the walk see which hop it chose.
    /// The key the trusted load balancer's extractor gives a request from
    /// `peer` with one `X-Forwarded-For: xff`.
    fn behind_lb(peer: &str, xff: &str) -> String {
        client(&lb(), &request(peer, &[("x-forwarded-for", xff)]))
    }

    fn lb() -> ClientIp {
        ClientIp::new(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()]).ipv6_prefix(128)
    }

    #[test]
    fn spoofed_left_most_forwarded_for_is_never_the_key() {
        assert_eq!(
            behind_lb("10.0.0.1:1", "6.6.6.6, 203.0.113.7"),
            "203.0.113.7"
        );
        // Spoofed entries in a separate header line come first too.
        let req = request(
            "10.0.0.1:1",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "203.0.113.7, 10.0.0.2"),
            ],
        );
        assert_eq!(client(&lb(), &req), "203.0.113.7");
    }

    #[test]
    fn untrusted_peer_ignores_the_header() {
        assert_eq!(behind_lb("198.51.100.1:1", "6.6.6.6"), "198.51.100.1");
    }

    #[test]
    fn all_trusted_hops_give_the_left_most() {
        assert_eq!(behind_lb("10.0.0.1:1", "10.1.1.1, 10.2.2.2"), "10.1.1.1");
        let req = request("10.0.0.1:1", &[]);
        assert_eq!(client(&lb(), &req), "10.0.0.1");
    }

    #[test]
    fn garbage_hop_stops_at_the_last_trusted_address() {
        assert_eq!(
            behind_lb("10.0.0.1:1", "203.0.113.7, not-an-ip, 10.0.0.2"),
            "10.0.0.2"
        );
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        assert_eq!(
            behind_lb("[::ffff:10.0.0.1]:1", "[2001:db8::7]:4711"),
            "2001:db8::7"
        );
        assert_eq!(behind_lb("10.0.0.1:1", "203.0.113.7:8080"), "203.0.113.7");
    }

    #[test]
    fn forwarded_header_is_walked_the_same_way() {
        let extractor = lb().header(ForwardedHeader::Forwarded);
        let req = request(
            "10.0.0.1:1",
            &[(
                "forwarded",
                "for=6.6.6.6, for=\"[2001:db8::7]:80\";proto=https, for=10.0.0.9",
            )],
        );
        assert_eq!(client(&extractor, &req), "2001:db8::7");
        let req = request("10.0.0.1:1", &[("forwarded", "for=unknown, For=10.0.0.3")]);
        assert_eq!(client(&extractor, &req), "10.0.0.3");
    }

    #[test]
    fn peer_ip_requires_connect_info() {
        let req = Request::get("/").body(()).unwrap();
        assert_eq!(
            PeerIp.extract(&RequestHead::of(&req)),
            Err(KeyError::MissingPeer)
        );
        let p: Problem = KeyError::MissingPeer.into();
        assert_eq!(p.status(), 500);
        let req = request("192.0.2.1:9", &[]);
        assert_eq!(
            PeerIp.extract(&RequestHead::of(&req)).unwrap().as_str(),
            "192.0.2.1"
        );
    }

    #[cfg(feature = "axum")]
    #[test]
    fn axum_connect_info_is_read() {
        let mut req = Request::get("/").body(()).unwrap();
        let addr: SocketAddr = "192.0.2.9:1234".parse().unwrap();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(addr));
        assert_eq!(
            PeerIp.extract(&RequestHead::of(&req)).unwrap().as_str(),
            "192.0.2.9"
        );
    }

    #[test]
    fn header_keys_are_hmac_sha256_as_rfc_4231_tests_it() {
        // RFC 4231, test cases 2 and 6 (a key longer than a block): the
        // key is the first 128 bits of the MAC.
        let name = HeaderName::from_static("x-api-key");
        for (secret, message, mac) in [
            (
                &b"Jefe"[..],
                "what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131][..],
                "Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ] {
            let req = request("192.0.2.1:9", &[("x-api-key", message)]);
            let key = HeaderKey::new(name.clone())
                .secret(secret)
                .extract(&RequestHead::of(&req))
                .unwrap();
            assert_eq!(key.as_str(), format!("h:{}", &mac[..32]));
        }
    }

    #[test]
    fn header_key_validates_the_value() {
        let ex = HeaderKey::new(HeaderName::from_static("x-api-key")).max_len(8);
        let ok = request("192.0.2.1:9", &[("x-api-key", "abc")]);
        let key = ex.extract(&RequestHead::of(&ok)).unwrap();
        assert_eq!(key.as_str().len(), 2 + 32);
        assert!(!key.as_str().contains("abc"), "{key}");
        // One value, one key; another secret, another key.
        assert_eq!(ex.extract(&RequestHead::of(&ok)).unwrap(), key);
        let keyed = ex.clone().secret(b"deployment");
        assert_ne!(keyed.extract(&RequestHead::of(&ok)).unwrap(), key);
        let missing = request("192.0.2.1:9", &[]);
        let err = ex.extract(&RequestHead::of(&missing)).unwrap_err();
        assert_eq!(err.to_string(), "missing header x-api-key");
        assert_eq!(Problem::from(err).status(), 400);
        let long = request("192.0.2.1:9", &[("x-api-key", "123456789")]);
        assert!(ex.extract(&RequestHead::of(&long)).is_err());
        let mut bin = request("192.0.2.1:9", &[]);
        bin.headers_mut().insert(
            "x-api-key",
            http::HeaderValue::from_bytes(b"a\xffb").unwrap(),
        );
        assert!(matches!(
            ex.extract(&RequestHead::of(&bin)),
            Err(KeyError::InvalidHeader(_, "not visible ASCII"))
        ));
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn route_key_is_the_template_never_the_raw_path() {
        use tower::ServiceExt;
        let app: axum::Router = axum::Router::new().route(
            "/items/{id}",
            axum::routing::get(|req: axum::extract::Request| async move {
                RouteKey
                    .extract(&RequestHead::of(&req))
                    .unwrap()
                    .to_string()
            }),
        );
        let res = app
            .oneshot(
                Request::get("/items/42")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "/items/{id}");
        let bare = Request::get("/random/path").body(()).unwrap();
        assert_eq!(
            RouteKey.extract(&RequestHead::of(&bare)).unwrap().as_str(),
            "unmatched"
        );
    }

    #[test]
    fn global_key_is_constant() {
        let req = Request::get("/").body(()).unwrap();
        assert_eq!(
            GlobalKey.extract(&RequestHead::of(&req)).unwrap().as_str(),
            "global"
        );
    }
}
