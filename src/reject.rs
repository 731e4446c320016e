//! Protocol-aware rejections: one [`Problem`], rendered for HTTP or gRPC.
//!
//! ```
//! use battlement::reject::{Problem, Protocol};
//! use http::{Request, StatusCode};
//!
//! let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
//!     .detail("quota of 10 per second exceeded")
//!     .header(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
//!
//! // Plain HTTP: RFC 9457 problem+json.
//! let http_req = Request::get("/").body(()).unwrap();
//! let res = problem.clone().into_response::<String>(Protocol::of(&http_req));
//! assert_eq!(res.status(), 429);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//!
//! // gRPC: a trailers-only response, HTTP 200 with `grpc-status` 8.
//! let grpc_req = Request::post("/pkg.Svc/M")
//!     .header("content-type", "application/grpc")
//!     .body(())
//!     .unwrap();
//! let res = problem.into_response::<String>(Protocol::of(&grpc_req));
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["grpc-status"], "8");
//! assert_eq!(res.headers()["retry-after"], "1");
//! ```
//!
//! Layers in response mode (the default on servers) turn a rejection into a
//! response here, so their `Service::Error` stays the inner service's error
//! and `Router::layer` / `Server::builder().layer` need no error handling.
//! The response body type is [`LayerBody<B>`](crate::body::LayerBody): the
//! inner service's body, or the rejection's bytes. An HTTP rejection
//! carries its [`Problem`] in the response's extensions;
//! [`ShapeRejectionsLayer`] reads it there to give every rejection your
//! API's error format, with one hook.
//!
//! With the `axum` feature, a `Problem` is an axum `IntoResponse`, so a
//! handler can answer with one (problem+json, shaped like the layers'
//! rejections). Its inherent `into_response(protocol)` takes precedence in
//! method calls: write `IntoResponse::into_response(problem)` for axum's.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

use crate::body::LayerBody;
use crate::trace::semconv::GRPC_STATUS;

mod shape;

pub use shape::{ShapeFuture, ShapeRejection, ShapeRejections, ShapeRejectionsLayer, Shaped};

/// The wire protocol of a request, which decides how a rejection looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Plain HTTP: status code and problem+json body.
    Http,
    /// gRPC (`content-type: application/grpc`, `application/grpc+proto`,
    /// ...): trailers-only response.
    Grpc,
    /// gRPC-Web (`application/grpc-web`, `+proto`, ...): a headers-only
    /// response with the grpc-web content type.
    GrpcWeb,
    /// gRPC-Web text mode (`application/grpc-web-text*`).
    GrpcWebText,
}

impl Protocol {
    /// The protocol of `req`, from its `content-type`.
    pub fn of<B>(req: &Request<B>) -> Self {
        Self::of_headers(req.headers())
    }

    /// The protocol of a request with these headers.
    pub fn of_headers(headers: &HeaderMap) -> Self {
        let Some(value) = headers.get(CONTENT_TYPE) else {
            return Self::Http;
        };
        let ct = value.as_bytes();
        // The byte after `prefix` (`;` at the end), if `ct` starts with it.
        let after = |prefix: &[u8]| -> Option<u8> {
            let head = ct.get(..prefix.len())?;
            head.eq_ignore_ascii_case(prefix)
                .then(|| ct.get(prefix.len()).copied().unwrap_or(b';'))
        };
        if let Some(b'+' | b';' | b' ') = after(b"application/grpc-web-text") {
            return Self::GrpcWebText;
        }
        if let Some(b'+' | b';' | b' ') = after(b"application/grpc-web") {
            return Self::GrpcWeb;
        }
        match after(b"application/grpc") {
            Some(b'+' | b';' | b' ') => Self::Grpc,
            _ => Self::Http,
        }
    }
}

/// gRPC status codes (<https://grpc.github.io/grpc/core/md_doc_statuscodes.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The numeric code sent in `grpc-status`.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code a `grpc-status` number stands for; a number outside the
    /// defined codes is `Unknown`, as gRPC tells clients to read it.
    pub fn from_i32(code: i32) -> Self {
        const CODES: [GrpcCode; 17] = [
            GrpcCode::Ok,
            GrpcCode::Cancelled,
            GrpcCode::Unknown,
            GrpcCode::InvalidArgument,
            GrpcCode::DeadlineExceeded,
            GrpcCode::NotFound,
            GrpcCode::AlreadyExists,
            GrpcCode::PermissionDenied,
            GrpcCode::ResourceExhausted,
            GrpcCode::FailedPrecondition,
            GrpcCode::Aborted,
            GrpcCode::OutOfRange,
            GrpcCode::Unimplemented,
            GrpcCode::Internal,
            GrpcCode::Unavailable,
            GrpcCode::DataLoss,
            GrpcCode::Unauthenticated,
        ];
        usize::try_from(code)
            .ok()
            .and_then(|i| CODES.get(i).copied())
            .unwrap_or(Self::Unknown)
    }

    /// The `grpc-status` in `headers` (trailers, or a trailers-only
    /// response); `None` when there is none or it is not a number.
    ///
    /// ```
    /// use battlement::reject::GrpcCode;
    /// use http::{HeaderMap, HeaderValue};
    ///
    /// let mut trailers = HeaderMap::new();
    /// trailers.insert("grpc-status", HeaderValue::from_static("14"));
    /// assert_eq!(GrpcCode::from_headers(&trailers), Some(GrpcCode::Unavailable));
    /// trailers.insert("grpc-status", HeaderValue::from_static("99"));
    /// assert_eq!(GrpcCode::from_headers(&trailers), Some(GrpcCode::Unknown));
    /// ```
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(GRPC_STATUS)?.to_str().ok()?.trim();
        value.parse().ok().map(Self::from_i32)
    }

    /// Whether a server answering this code failed, as the OpenTelemetry
    /// RPC conventions set a server span's error status: `Unknown`,
    /// `DeadlineExceeded`, `Unimplemented`, `Internal`, `Unavailable` and
    /// `DataLoss`. The other codes describe the request, not the server.
    /// (A client span is an error for every code but `Ok`.)
    pub fn is_server_error(self) -> bool {
        matches!(
            self,
            Self::Unknown
                | Self::DeadlineExceeded
                | Self::Unimplemented
                | Self::Internal
                | Self::Unavailable
                | Self::DataLoss
        )
    }

    /// Whether this code says the upstream is unhealthy, which a circuit
    /// breaker counts as a failure: `Unknown`, `DeadlineExceeded`,
    /// `Internal` and `Unavailable`. The server errors left out say
    /// nothing about its health: `Unimplemented` answers every call the
    /// same way until a deploy changes it, and `DataLoss` reports one
    /// record, so opening the breaker would help neither.
    pub fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            Self::Unknown | Self::DeadlineExceeded | Self::Internal | Self::Unavailable
        )
    }

    /// The code that means the same as an HTTP rejection status.
    pub fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 | 422 => Self::InvalidArgument,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 => Self::NotFound,
            408 | 504 => Self::DeadlineExceeded,
            409 => Self::Aborted,
            412 => Self::FailedPrecondition,
            413 | 429 => Self::ResourceExhausted,
            501 => Self::Unimplemented,
            502 | 503 => Self::Unavailable,
            s if s < 400 => Self::Ok,
            s if s < 500 => Self::FailedPrecondition,
            _ => Self::Internal,
        }
    }
}

/// A rejection, described once and rendered per [`Protocol`].
///
/// For HTTP it becomes an RFC 9457 `application/problem+json` response; for
/// gRPC a trailers-only response (HTTP 200, `grpc-status`, `grpc-message`).
/// Extra headers (such as `Retry-After`) are sent with both.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    grpc_code: GrpcCode,
    type_uri: Cow<'static, str>,
    title: Cow<'static, str>,
    detail: Option<String>,
    headers: HeaderMap,
    extensions: serde_json::Map<String, serde_json::Value>,
}

impl Problem {
    /// A problem with an HTTP status and a short human-readable title; the
    /// gRPC code defaults to [`GrpcCode::for_status`].
    pub fn new(status: StatusCode, title: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            grpc_code: GrpcCode::for_status(status),
            type_uri: Cow::Borrowed("about:blank"),
            title: title.into(),
            detail: None,
            headers: HeaderMap::new(),
            extensions: serde_json::Map::new(),
        }
    }

    /// The explanation specific to this occurrence (`detail`, and the
    /// `grpc-message`).
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// A URI identifying the problem type (`type`, default `about:blank`).
    pub fn type_uri(mut self, uri: impl Into<Cow<'static, str>>) -> Self {
        self.type_uri = uri.into();
        self
    }

    /// Overrides the gRPC status code.
    pub fn grpc_code(mut self, code: GrpcCode) -> Self {
        self.grpc_code = code;
        self
    }

    /// Adds a response header (sent for HTTP and gRPC alike).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Adds an extension member to the problem+json body.
    pub fn extension(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.extensions.insert(key.into(), value.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The gRPC status code.
    pub fn code(&self) -> GrpcCode {
        self.grpc_code
    }

    /// The title.
    pub fn title(&self) -> &str {
        &self.title
    }

    /// The extra response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The RFC 9457 JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        doc.insert("type".into(), self.type_uri.as_ref().into());
        doc.insert("title".into(), self.title.as_ref().into());
        doc.insert("status".into(), self.status.as_u16().into());
        if let Some(detail) = &self.detail {
            doc.insert("detail".into(), detail.as_str().into());
        }
        for (k, v) in &self.extensions {
            doc.entry(k.clone()).or_insert_with(|| v.clone());
        }
        serde_json::Value::Object(doc)
    }

    /// Renders the problem for `protocol`.
    pub fn into_response<B>(self, protocol: Protocol) -> Response<LayerBody<B>> {
        match protocol {
            Protocol::Http => self.into_http(),
            Protocol::Grpc => self.into_grpc("application/grpc"),
            Protocol::GrpcWeb => self.into_grpc("application/grpc-web+proto"),
            Protocol::GrpcWebText => self.into_grpc("application/grpc-web-text+proto"),
        }
    }

    fn into_http<B>(self) -> Response<LayerBody<B>> {
        let body = Bytes::from(self.to_json().to_string());
        let mut res = Response::new(LayerBody::full(body));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.extend(self.headers.clone());
        // What tells a rejection from a handler's answer further out
        // (`ShapeRejectionsLayer`, the user's own middleware).
        res.extensions_mut().insert(self);
        res
    }

    fn into_grpc<B>(self, content_type: &'static str) -> Response<LayerBody<B>> {
        let mut res = Response::new(LayerBody::empty());
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(GRPC_STATUS, HeaderValue::from(self.grpc_code.as_i32()));
        let message = self.detail.as_deref().unwrap_or(&self.title);
        if let Ok(value) = HeaderValue::from_str(&grpc_percent_encode(message)) {
            headers.insert("grpc-message", value);
        }
        headers.extend(self.headers);
        res
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Problem {
    fn into_response(self) -> axum::response::Response {
        self.into_http::<http_body_util::Empty<Bytes>>()
            .map(axum::body::Body::new)
    }
}

/// What a `grpc-message` value percent-encodes, as the gRPC HTTP/2 spec
/// requires: every byte outside printable ASCII (the non-ASCII ones are
/// always encoded), and `%` itself.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// Percent-encodes a `grpc-message` value as the gRPC HTTP/2 spec requires:
/// every byte outside printable ASCII, and `%` itself.
pub fn grpc_percent_encode(message: &str) -> String {
    percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::{BodyExt, Empty};

    fn grpc_request() -> Request<()> {
        Request::post("/helloworld.Greeter/SayHello")
            .header("content-type", "application/grpc+proto")
            .body(())
            .unwrap()
    }

    async fn body_bytes(res: Response<LayerBody<Empty<Bytes>>>) -> Bytes {
        res.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn http_rejection_is_problem_json() {
        let res = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            .detail("circuit open")
            .type_uri("https://battlement.dev/problems/circuit-open")
            .extension("retry_after_ms", 1500)
            .header(http::header::RETRY_AFTER, HeaderValue::from_static("2"))
            .into_response::<Empty<Bytes>>(Protocol::Http);
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(res.headers()["retry-after"], "2");
        let doc: serde_json::Value = serde_json::from_slice(&body_bytes(res).await).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "type": "https://battlement.dev/problems/circuit-open",
                "title": "Service Unavailable",
                "status": 503,
                "detail": "circuit open",
                "retry_after_ms": 1500,
            })
        );
    }

    #[tokio::test]
    async fn extensions_never_override_standard_members() {
        let res = Problem::new(StatusCode::BAD_REQUEST, "Bad Request")
            .extension("status", 200)
            .into_response::<Empty<Bytes>>(Protocol::Http);
        let doc: serde_json::Value = serde_json::from_slice(&body_bytes(res).await).unwrap();
        assert_eq!(doc["status"], 400);
    }

    #[tokio::test]
    async fn grpc_rejection_is_trailers_only() {
        let req = grpc_request();
        assert_eq!(Protocol::of(&req), Protocol::Grpc);
        let res = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
            .detail("rate limited: 100% of quota, retry in 1s ☃")
            .header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
            .into_response::<Empty<Bytes>>(Protocol::of(&req));
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "8");
        assert_eq!(
            res.headers()["grpc-message"],
            "rate limited: 100%25 of quota, retry in 1s %E2%98%83"
        );
        assert_eq!(res.headers()["retry-after"], "1");
        assert!(res.body().is_end_stream());
        assert!(body_bytes(res).await.is_empty());
    }

    #[test]
    fn grpc_failure_sets_per_layer() {
        // Server spans (OpenTelemetry RPC conventions) and breakers (the
        // upstream's health) read different sets of codes as failures.
        let server_errors: Vec<i32> = (0..17)
            .filter(|&c| GrpcCode::from_i32(c).is_server_error())
            .collect();
        assert_eq!(server_errors, [2, 4, 12, 13, 14, 15]);
        let upstream_failures: Vec<i32> = (0..17)
            .filter(|&c| GrpcCode::from_i32(c).is_upstream_failure())
            .collect();
        assert_eq!(upstream_failures, [2, 4, 13, 14]);
        for code in 0..17 {
            assert_eq!(GrpcCode::from_i32(code).as_i32(), code);
        }
        for unknown in [-1, 17, 99, i32::MAX] {
            assert_eq!(GrpcCode::from_i32(unknown), GrpcCode::Unknown);
        }
        let mut headers = HeaderMap::new();
        assert_eq!(GrpcCode::from_headers(&headers), None);
        headers.insert(GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(GrpcCode::from_headers(&headers), None);
        headers.insert(GRPC_STATUS, HeaderValue::from_static(" 8 "));
        assert_eq!(
            GrpcCode::from_headers(&headers),
            Some(GrpcCode::ResourceExhausted)
        );
    }

    #[test]
    fn grpc_codes_follow_the_meaning_of_the_status() {
        let cases = [
            (400, GrpcCode::InvalidArgument),
            (409, GrpcCode::Aborted),
            (413, GrpcCode::ResourceExhausted),
            (422, GrpcCode::InvalidArgument),
            (429, GrpcCode::ResourceExhausted),
            (500, GrpcCode::Internal),
            (503, GrpcCode::Unavailable),
            (504, GrpcCode::DeadlineExceeded),
        ];
        for (status, code) in cases {
            assert_eq!(
                GrpcCode::for_status(StatusCode::from_u16(status).unwrap()),
                code
            );
        }
        let p = Problem::new(StatusCode::CONFLICT, "Conflict").grpc_code(GrpcCode::AlreadyExists);
        assert_eq!(p.code().as_i32(), 6);
    }

    #[test]
    fn protocols_are_told_apart_by_content_type() {
        for (ct, want) in [
            ("application/json", Protocol::Http),
            ("application/grpc", Protocol::Grpc),
            ("Application/GRPC+proto", Protocol::Grpc),
            ("application/grpc; charset=utf-8", Protocol::Grpc),
            ("application/grpcx", Protocol::Http),
            ("application/grpc-web", Protocol::GrpcWeb),
            ("application/grpc-web-text", Protocol::GrpcWebText),
            ("application/grpc-webx", Protocol::Http),
            ("application/grpc-web+proto", Protocol::GrpcWeb),
        ] {
            let req = Request::post("/x")
                .header("content-type", ct)
                .body(())
                .unwrap();
            assert_eq!(Protocol::of(&req), want, "{ct}");
        }
        let res =
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "x").into_response::<()>(Protocol::GrpcWeb);
        assert_eq!(res.headers()["content-type"], "application/grpc-web+proto");
        assert_eq!(res.headers()["grpc-status"], "8");
    }
}
