//! What OpenTelemetry's HTTP and RPC semantic conventions call things
//! (SPEC TR-2, TR-3, MT-1, MT-2): span names, method names, routes, and
//! the gRPC service and method of a request.

use http::{HeaderMap, HeaderName, Method, Request, Version};

/// `grpc-status`, parsed once.
pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The method as semconv records it: one of the standard ones, else
/// `_OTHER` (so a client cannot create series at will).
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

/// `url.scheme`, without a copy for `http` and `https`.
pub(crate) fn scheme<B>(req: &Request<B>) -> opentelemetry::Value {
    match req.uri().scheme_str() {
        None | Some("http") => opentelemetry::Value::from("http"),
        Some("https") => opentelemetry::Value::from("https"),
        Some(other) => opentelemetry::Value::from(other.to_owned()),
    }
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

/// `(service, method)` of a gRPC request (`/pkg.Service/Method`).
pub(crate) fn grpc_parts<B>(req: &Request<B>) -> Option<(&str, &str)> {
    if !is_grpc(req.headers()) {
        return None;
    }
    let path = req.uri().path().strip_prefix('/')?;
    path.split_once('/')
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

/// The gRPC status in `headers` (trailers, or a trailers-only response).
pub(crate) fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// Server-side gRPC statuses that are errors (RPC semconv): UNKNOWN,
/// DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
pub(crate) fn grpc_server_error(code: i32) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
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
    fn unknown_methods_are_other_and_grpc_paths_split() {
        assert_eq!(method(&Method::GET), "GET");
        assert_eq!(method(&Method::from_bytes(b"PURGE").unwrap()), "_OTHER");
        let req = Request::post("/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        assert_eq!(grpc_parts(&req), Some(("helloworld.Greeter", "SayHello")));
        assert_eq!(grpc_parts(&Request::post("/a/b").body(()).unwrap()), None);
    }
}
