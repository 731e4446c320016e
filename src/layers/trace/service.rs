//! `Trace` (server) and `ClientTrace`: one span per request or attempt.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context as OtelContext, KeyValue};
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::access_log::Entry;
use super::body::TracedBody;
use super::custom::{Custom, ExtraAttributes, with_request_parts, with_response_parts};
use super::head::{self, Head, HeadSampler, UNSAMPLED_TARGET};
use super::layer::{Options, Sampler};
use super::propagation::{extract, inject};
use super::semconv::{
    OTHER, grpc_answered, grpc_call, grpc_names, grpc_parts, grpc_unnamed, method,
    protocol_version, route, scheme,
};
use crate::RequestId;
use crate::health::is_probe;
use crate::reject::GrpcCode;
use crate::retry::ResendCount;

/// The service made by [`TraceLayer`](super::TraceLayer).
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    client: bool,
    head: Sampler,
    options: Options,
    custom: Custom,
}

impl<S> Trace<S> {
    pub(crate) fn new(
        inner: S,
        client: bool,
        head: Sampler,
        options: Options,
        custom: Custom,
    ) -> Self {
        Self {
            inner,
            client,
            head,
            options,
            custom,
        }
    }
}

/// What the user's hooks made of a request.
#[derive(Default)]
struct Hooked {
    /// Whether the request is traced ([`Custom::filter`]).
    skipped: bool,
    name: Option<String>,
    attributes: Vec<KeyValue>,
}

impl Hooked {
    /// Runs `custom`'s request hooks on `req`'s head (a client only adds
    /// attributes).
    fn run<B>(custom: &Custom, client: bool, req: Request<B>) -> (Request<B>, Self) {
        if custom.is_empty() {
            return (req, Self::default());
        }
        with_request_parts(req, |parts| {
            let mut hooked = Self::default();
            if !client {
                hooked.skipped = custom.filter.as_ref().is_some_and(|traced| !traced(parts));
                if hooked.skipped {
                    return hooked;
                }
                hooked.name = custom.span_name.as_ref().and_then(|name| name(parts));
            }
            if let Some(extra) = &custom.attributes {
                extra.request(parts, &mut hooked.attributes);
            }
            hooked
        })
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Trace<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Error: fmt::Display,
{
    type Response = Response<TracedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let probe = !self.client && !self.options.probes && is_probe(req.uri().path());
        let (mut req, hooked) = if probe {
            (req, Hooked::default())
        } else {
            Hooked::run(&self.custom, self.client, req)
        };
        // A span the user named keeps its name when a gRPC answer comes.
        let named = hooked.name.is_some();
        let (span, detached) = if self.client {
            let span = client_span(&req, self.options.query);
            set_attributes(&span, hooked.attributes);
            inject(&outbound_context(&span), req.headers_mut());
            (span, None)
        } else if probe {
            (Span::none(), None)
        } else if hooked.skipped {
            // Not traced, but in the caller's trace: outbound calls go on
            // with it.
            (
                Span::none(),
                Some(extract(req.headers(), self.options.baggage)),
            )
        } else {
            // The installed sampler, looked up once per layer.
            let sampler = *self.head.get_or_init(head::installed);
            let (span, cx) = request_span(sampler, &req, self.options.baggage, hooked);
            // An entered span makes the request's context current; a span
            // no subscriber records (a global filter turned it off) cannot,
            // so the future attaches the context itself while it runs.
            let detached = span.is_disabled().then_some(cx);
            (span, detached)
        };
        // A gRPC call named `_OTHER` for now: its answer may name it.
        let rpc = grpc_unnamed(&req).filter(|_| !self.client);
        let log = match self.options.access_log {
            Some(log) if !self.client && !span.is_none() => log.start(&req, grpc_call(&req)),
            _ => None,
        };
        let future = {
            let _attached = detached.clone().map(OtelContext::attach);
            span.in_scope(|| self.inner.call(req))
        };
        let attributes = self.custom.attributes.clone().filter(|_| !span.is_none());
        ResponseFuture {
            future,
            span: Some(span),
            detached,
            client: self.client,
            rpc,
            log,
            attributes,
            named,
        }
    }
}

/// A server request's span, as `sampler` decides, and its context: the
/// caller's, or the unsampled one the sampler made.
fn request_span<B>(
    sampler: Option<HeadSampler>,
    req: &Request<B>,
    baggage: bool,
    hooked: Hooked,
) -> (Span, OtelContext) {
    let parent = extract(req.headers(), baggage);
    match sampler.map(|sampler| sampler.decide(&parent)) {
        None | Some(Head::Sampled { root: None }) => (server_span(req, &parent, hooked), parent),
        // Started here, so the SDK takes the decided trace id.
        Some(Head::Sampled { root: Some(id) }) => {
            head::with_root_trace_id(id, || (server_span(req, &parent, hooked), parent))
        }
        Some(Head::Unsampled(cx)) => (unsampled_span(req, &cx), cx),
    }
}

/// The context to inject for a client span: the span's own, or, when no
/// OpenTelemetry layer records it (filtered out, or none installed), the
/// current one, so the caller's trace still goes on downstream.
fn outbound_context(span: &Span) -> OtelContext {
    let cx = span.context();
    if cx.has_active_span() {
        cx
    } else {
        OtelContext::current()
    }
}

/// The server span: named `{method} {route}` (or `{method}`, or the gRPC
/// `service/method`), child of the caller's trace context `parent`.
/// Attributes known up front go straight to the OpenTelemetry span (static
/// values are not copied): as `tracing` fields, each would become a new
/// string.
///
/// The OpenTelemetry span is started here rather than at the first enter,
/// so that every attribute goes to it under one lock: each
/// `OpenTelemetrySpanExt::set_attribute` would look the span up in the
/// registry again. The SDK's sampler sees the name and kind (a root span
/// of a new trace has been head-sampled already).
fn server_span<B>(req: &Request<B>, parent: &OtelContext, hooked: Hooked) -> Span {
    use tracing::field::Empty;
    let m = method(req.method());
    let grpc = grpc_parts(req);
    let route = route(req);
    let name = match (hooked.name, &grpc, &route) {
        (Some(name), _, _) => name,
        (None, Some((service, rpc)), _) => [service, "/", rpc].concat(),
        (None, None, Some(route)) => [m, " ", route].concat(),
        (None, None, None) => m.to_owned(),
    };
    let id = req.extensions().get::<RequestId>().map(RequestId::as_str);
    // Fields only for what the response sets, and the request id, which
    // every log line of the request carries.
    let span = tracing::info_span!(
        target: "battlement::trace",
        "request",
        otel.name = name.as_str(),
        otel.kind = "server",
        request.id = id,
        http.response.status_code = Empty,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
    );
    let _ = span.set_parent(parent.clone());
    let cx = span.context();
    if cx.has_active_span() {
        let mut attributes = request_attributes(req, m, route, grpc);
        attributes.extend(hooked.attributes);
        cx.span().set_attributes(attributes);
    }
    span
}

/// The server span's attributes that the request alone decides.
fn request_attributes<B>(
    req: &Request<B>,
    m: &'static str,
    route: Option<&str>,
    grpc: Option<(&str, &str)>,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(10);
    attributes.push(KeyValue::new("http.request.method", m));
    if m == OTHER {
        let original = req.method().as_str().to_owned();
        attributes.push(KeyValue::new("http.request.method_original", original));
    }
    if let Some(route) = route {
        attributes.push(KeyValue::new("http.route", route.to_owned()));
    }
    attributes.push(KeyValue::new("url.path", req.uri().path().to_owned()));
    attributes.push(KeyValue::new("url.scheme", scheme(req)));
    attributes.push(KeyValue::new(
        "network.protocol.version",
        protocol_version(req.version()),
    ));
    if let Some(host) = req.uri().host().or_else(|| host_header(req)) {
        attributes.push(KeyValue::new("server.address", host.to_owned()));
    }
    if let Some(agent) = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
    }
    if let Some((service, rpc)) = grpc {
        attributes.push(KeyValue::new("rpc.system", "grpc"));
        // A method not recognized yet is named when its answer arrives.
        if rpc != OTHER {
            attributes.push(KeyValue::new("rpc.service", service.to_owned()));
            attributes.push(KeyValue::new("rpc.method", rpc.to_owned()));
        }
    }
    attributes
}

/// Sets `attributes` on `span`'s OpenTelemetry span.
fn set_attributes(span: &Span, attributes: Vec<KeyValue>) {
    for kv in attributes {
        span.set_attribute(kv.key, kv.value);
    }
}

/// The span of a request the head sampler left out: the request id for log
/// lines, and `cx` made current whenever it is entered (by the layer
/// [`telemetry`](crate::telemetry) builds, which keeps it out of
/// OpenTelemetry). An OpenTelemetry layer that does see it gets `cx` as its
/// parent, so drops it too.
fn unsampled_span<B>(req: &Request<B>, cx: &OtelContext) -> Span {
    let id = req.extensions().get::<RequestId>().map(RequestId::as_str);
    let span = head::with_unsampled_context(
        cx.clone(),
        || tracing::info_span!(target: UNSAMPLED_TARGET, "request", request.id = id),
    );
    let _ = span.set_parent(cx.clone());
    span
}

fn host_header<B>(req: &Request<B>) -> Option<&str> {
    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
    Some(host.rsplit_once(':').map_or(host, |(h, _)| h))
}

/// The client span of one attempt: named `{method}`, kind client.
fn client_span<B>(req: &Request<B>, query: bool) -> Span {
    use tracing::field::Empty;
    let m = method(req.method());
    let span = tracing::info_span!(
        target: "battlement::trace",
        "request",
        otel.name = m,
        otel.kind = "client",
        http.request.method = m,
        url.full = Empty,
        server.address = req.uri().host(),
        // Integers as i64: `tracing_opentelemetry` turns unsigned ones
        // into strings.
        server.port = req.uri().port_u16().map(i64::from),
        http.request.resend_count = req.extensions().get::<ResendCount>().map(|r| i64::from(r.0)),
        request.id = Empty,
        http.response.status_code = Empty,
        rpc.grpc.status_code = Empty,
        error.type = Empty,
    );
    span.record("url.full", full_url(req.uri(), query).as_str());
    if let Some(id) = req
        .extensions()
        .get::<RequestId>()
        .cloned()
        .or_else(RequestId::current)
    {
        span.record("request.id", id.as_str());
    }
    span
}

/// `url.full` as the semantic conventions ask: never the user info, and
/// the query's values as `REDACTED` unless `query`.
fn full_url(uri: &http::Uri, query: bool) -> String {
    let mut url = String::with_capacity(uri.path().len() + 64);
    if let Some(scheme) = uri.scheme_str() {
        url.push_str(scheme);
        url.push_str("://");
    }
    if let Some(authority) = uri.authority() {
        let host = authority.as_str();
        url.push_str(host.rsplit_once('@').map_or(host, |(_, host)| host));
    }
    url.push_str(uri.path());
    if let Some(q) = uri.query() {
        url.push('?');
        if query {
            url.push_str(q);
        } else {
            for (i, pair) in q.split('&').enumerate() {
                if i > 0 {
                    url.push('&');
                }
                match pair.split_once('=') {
                    Some((name, _)) => {
                        url.push_str(name);
                        url.push_str("=REDACTED");
                    }
                    None => url.push_str(pair),
                }
            }
        }
    }
    url
}

pin_project! {
    /// Runs the call in its span; hands the span to the response body.
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        span: Option<Span>,
        // The request's context, when its span cannot make it current.
        detached: Option<OtelContext>,
        client: bool,
        rpc: Option<Box<str>>,
        // The access-log entry, when the layer writes one.
        log: Option<Box<Entry>>,
        // The user's attributes, for the response.
        attributes: Option<Arc<dyn ExtraAttributes>>,
        // The user named the span.
        named: bool,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: fmt::Display,
{
    type Output = Result<Response<TracedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.as_ref().map(Span::enter);
            let _attached = this.detached.clone().map(OtelContext::attach);
            let result = ready!(this.future.poll(cx));
            // Taken while the request's context is current: its trace id.
            if let Some(log) = this.log.as_mut() {
                match &result {
                    Ok(res) => {
                        log.answered(res.status().as_u16(), GrpcCode::from_headers(res.headers()))
                    }
                    Err(_) => log.failed("_OTHER"),
                }
            }
            result
        };
        let mut log = this.log.take();
        let Some(span) = this.span.take() else {
            unreachable!("trace future polled after completion")
        };
        // An unsampled request's span has nothing to record on.
        let sampled = span
            .metadata()
            .is_some_and(|m| m.target() != UNSAMPLED_TARGET);
        if let Some(call) = this.rpc.take() {
            if let Ok(res) = &result {
                grpc_answered(&call, res.headers());
            }
            if sampled {
                name_rpc(&span, &call, !*this.named);
            }
        }
        Poll::Ready(match result {
            Ok(res) => {
                let res = match this.attributes.take().filter(|_| sampled) {
                    Some(extra) => {
                        with_response_parts(res, |parts| {
                            let mut attributes = Vec::new();
                            extra.response(parts, &mut attributes);
                            set_attributes(&span, attributes);
                        })
                        .0
                    }
                    None => res,
                };
                if sampled {
                    record_response(&span, &res, *this.client);
                }
                Ok(res.map(|body| TracedBody::in_span(body, span, !*this.client, log)))
            }
            Err(e) => {
                if sampled {
                    span.record("error.type", "_OTHER");
                    span.set_status(Status::error(e.to_string()));
                }
                if let Some(log) = log.take() {
                    span.in_scope(|| log.write());
                }
                Err(e)
            }
        })
    }
}

/// Names the span of a gRPC call that was not recognized when it arrived,
/// as far as its answer recognized it.
fn name_rpc(span: &Span, call: &str, rename: bool) {
    let (service, method) = grpc_names(call);
    if rename && method != OTHER {
        let name = [service, "/", method].concat();
        span.context().span().update_name(name);
    }
    span.set_attribute("rpc.service", service.to_owned());
    span.set_attribute("rpc.method", method.to_owned());
}

/// Status code and status: server 5xx is an error, 4xx is
/// not; client 4xx and 5xx are errors; gRPC per the RPC conventions.
fn record_response<B>(span: &Span, res: &Response<B>, client: bool) {
    let status = res.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if let Some(code) = GrpcCode::from_headers(res.headers()) {
        span.record("rpc.grpc.status_code", code.as_i32());
        if code != GrpcCode::Ok && (client || code.is_server_error()) {
            let code = code.as_i32();
            span.set_status(Status::error(format!("grpc-status {code}")));
        }
        return;
    }
    let error = status.is_server_error() || (client && status.is_client_error());
    if error {
        span.record("error.type", status.as_str());
        span.set_status(Status::error(""));
    }
}
