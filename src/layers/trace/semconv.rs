//! What OpenTelemetry's HTTP and RPC semantic conventions call things:
//! span names, method names, routes, and
//! the gRPC service and method of a request.
//!
//! What a client chooses freely is recorded only when it is known, and as
//! `_OTHER` otherwise, so that no client can create series or span names
//! at will: the HTTP method, `url.scheme`, and the gRPC service and method,
//! which come from the request's path. A gRPC method is known
//! ("recognized") once
//! - an axum route is that very path (`MatchedPath` is the path itself);
//! - a handler answered it: a gRPC answer that leaves `grpc-status` for
//!   the trailers. Routing fallbacks (axum's 404; tonic's UNIMPLEMENTED for
//!   an unknown service or method) and rejections answer in the head
//!   (trailers-only, or not gRPC at all) and prove nothing; or
//! - it was listed with [`recognize_grpc`].
//!
//! What is recognized is remembered for the process, by every trace and
//! metrics layer: later calls are named from their start, their errors
//! and rejections too. Routes and answers add names while fewer than
//! [`MAX_ANSWERED`] are known. A call not recognized when it arrives is
//! named when its answer arrives, which covers servers that route inside
//! (a tonic `Server`, whose router a layer never sees).

use std::collections::BTreeSet;
use std::sync::RwLock;

use http::{HeaderMap, HeaderName, Method, Request, Version};

/// The attribute names recorded, from the semantic conventions crate.
pub(crate) mod attr {
    pub(crate) use opentelemetry_semantic_conventions::attribute::{
        ERROR_TYPE, HTTP_REQUEST_METHOD, HTTP_REQUEST_METHOD_ORIGINAL, HTTP_REQUEST_RESEND_COUNT,
        HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE, NETWORK_PROTOCOL_VERSION, RPC_METHOD,
        SERVER_ADDRESS, SERVER_PORT, URL_FULL, URL_PATH, URL_SCHEME, USER_AGENT_ORIGINAL,
    };

    // The RPC names gRPC dashboards and the OpenTelemetry gRPC
    // instrumentations still record; newer conventions renamed them
    // (`rpc.system.name`, `rpc.response.status_code`).
    #[allow(deprecated)]
    pub(crate) const RPC_SYSTEM: &str = opentelemetry_semantic_conventions::attribute::RPC_SYSTEM;
    #[allow(deprecated)]
    pub(crate) const RPC_SERVICE: &str = opentelemetry_semantic_conventions::attribute::RPC_SERVICE;
    #[allow(deprecated)]
    pub(crate) const RPC_GRPC_STATUS_CODE: &str =
        opentelemetry_semantic_conventions::attribute::RPC_GRPC_STATUS_CODE;
}

/// `grpc-status`, parsed once.
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// What semconv records in place of a value it does not know.
pub(crate) const OTHER: &str = "_OTHER";

/// The method as semconv records it: one of the standard ones (RFC 9110's
/// and PATCH), else `_OTHER`.
pub(crate) fn method(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// `url.scheme`: `http` (also when the request names none), `https`, else
/// `_OTHER`.
pub(crate) fn scheme<B>(req: &Request<B>) -> opentelemetry::Value {
    opentelemetry::Value::from(match req.uri().scheme_str() {
        None | Some("http") => "http",
        Some("https") => "https",
        Some(_) => OTHER,
    })
}

/// The matched route template (axum's `MatchedPath`), never the raw path.
pub(crate) fn route<B>(req: &Request<B>) -> Option<&str> {
    #[cfg(feature = "axum")]
    if let Some(path) = req.extensions().get::<axum::extract::MatchedPath>() {
        return Some(path.as_str());
    }
    let _ = req;
    None
}

/// The method a gRPC request calls, its path without the leading `/`
/// (`pkg.Service/Method`). An axum route that is this very path makes the
/// method recognized.
pub(crate) fn grpc_call<B>(req: &Request<B>) -> Option<&str> {
    if !is_grpc(req.headers()) {
        return None;
    }
    let path = req.uri().path();
    let call = path.strip_prefix('/').filter(|call| call.contains('/'))?;
    if route(req) == Some(path) {
        learn(call);
    }
    Some(call)
}

/// `(rpc.service, rpc.method)` of a gRPC request, as far as known when it
/// arrives (see [`grpc_names`]).
pub(crate) fn grpc_parts<B>(req: &Request<B>) -> Option<(&str, &str)> {
    grpc_call(req).map(grpc_names)
}

/// The method of a gRPC request that is not recognized yet (named
/// `_OTHER` for now), for its answer to prove (see [`grpc_answered`]).
pub(crate) fn grpc_unnamed<B>(req: &Request<B>) -> Option<Box<str>> {
    grpc_call(req)
        .filter(|call| grpc_names(call).1 == OTHER)
        .map(Box::from)
}

/// `(rpc.service, rpc.method)` of `call` (`pkg.Service/Method`): both
/// names for a recognized method; the service's name and `_OTHER` for
/// another method of a listed service; else `_OTHER` twice.
pub(crate) fn grpc_names(call: &str) -> (&str, &str) {
    let (service, method) = call.split_once('/').unwrap_or((call, ""));
    let Ok(known) = RECOGNIZED.read() else {
        return (OTHER, OTHER);
    };
    if known.contains(call) {
        (service, method)
    } else if known.contains(service) {
        (service, OTHER)
    } else {
        (OTHER, OTHER)
    }
}

/// Takes what the head of `call`'s answer (`headers`) proves: a gRPC
/// answer without `grpc-status`, whose status is left for the trailers,
/// comes from a handler, and recognizes the method.
pub(crate) fn grpc_answered(call: &str, headers: &HeaderMap) {
    if is_grpc(headers) && !headers.contains_key(GRPC_STATUS) {
        learn(call);
    }
}

/// The gRPC services (`pkg.Service`) and methods (`pkg.Service/Method`)
/// recognized so far.
static RECOGNIZED: RwLock<BTreeSet<Box<str>>> = RwLock::new(BTreeSet::new());

/// Up to how many known names routes and answers may add: a bound on
/// series even behind a handler that answers any path (a catch-all gRPC
/// proxy).
const MAX_ANSWERED: usize = 1_000;

/// Recognizes `call` (`pkg.Service/Method`), while fewer than
/// [`MAX_ANSWERED`] names are.
fn learn(call: &str) {
    if RECOGNIZED.read().is_ok_and(|known| known.contains(call)) {
        return;
    }
    if let Ok(mut known) = RECOGNIZED.write()
        && known.len() < MAX_ANSWERED
    {
        known.insert(call.into());
    }
}

/// Makes gRPC methods (`pkg.Service/Method`) or whole services
/// (`pkg.Service`) known to every trace and metrics layer of the process,
/// from their first call: calls of a listed method carry its service and
/// method, calls of other methods of a listed service carry the service
/// and `_OTHER`.
///
/// Without a list, a method is known once an axum route is its very path
/// or once a handler answered it (a gRPC answer with its status in the
/// trailers; the first 1,000 names); list the methods whose calls should
/// be named before that (rejections and errors before a first success). A
/// listed service does not vouch for its methods: their names come from
/// the client.
///
/// ```
/// battlement::metrics::recognize_grpc([
///     "helloworld.Greeter/SayHello",
///     "grpc.health.v1.Health",
/// ]);
/// ```
pub fn recognize_grpc<I>(names: I)
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    if let Ok(mut known) = RECOGNIZED.write() {
        let names = names.into_iter();
        known.extend(names.map(|name| Box::from(name.as_ref().trim_start_matches('/'))));
    }
}

/// Whether `headers` say gRPC (`content-type: application/grpc...`).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `network.protocol.version`.
pub(crate) fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Bucket boundaries of `http.server.request.duration` and friends, in
/// seconds (semconv's advice).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_schemes_and_grpc_names_are_other() {
        assert_eq!(method(&Method::GET), "GET");
        assert_eq!(method(&Method::from_bytes(b"PURGE").unwrap()), "_OTHER");
        let req = |uri: &str| Request::get(uri).body(()).unwrap();
        assert_eq!(scheme(&req("https://a/")), "https".into());
        assert_eq!(scheme(&req("/")), "http".into());
        assert_eq!(scheme(&req("evil://a/")), "_OTHER".into());

        let grpc = |path: &str| {
            Request::post(path)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap()
        };
        let call = grpc("/unit.Greeter/SayHello");
        assert_eq!(grpc_call(&call), Some("unit.Greeter/SayHello"));
        assert_eq!(grpc_parts(&call), Some((OTHER, OTHER)));
        assert_eq!(grpc_parts(&Request::post("/a/b").body(()).unwrap()), None);
        assert_eq!(grpc_call(&grpc("/no-method")), None);

        // Trailers-only answers prove nothing; a streamed one does.
        let mut head = HeaderMap::new();
        head.insert(
            http::header::CONTENT_TYPE,
            "application/grpc".parse().unwrap(),
        );
        let mut trailers_only = head.clone();
        trailers_only.insert(GRPC_STATUS, "12".parse().unwrap());
        grpc_answered("unit.Greeter/SayHello", &trailers_only);
        assert_eq!(grpc_parts(&call), Some((OTHER, OTHER)));
        grpc_answered("unit.Greeter/SayHello", &head);
        assert_eq!(grpc_parts(&call), Some(("unit.Greeter", "SayHello")));
        assert_eq!(grpc_names("unit.Greeter/Other"), (OTHER, OTHER));

        recognize_grpc(["/unit.Listed"]);
        assert_eq!(grpc_names("unit.Listed/Any"), ("unit.Listed", OTHER));
    }
}
