//! `Trace` (server) and `ClientTrace`: one span per request or attempt.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{SpanBuilder, SpanKind, SpanRef, Status, TraceContextExt};
use opentelemetry::{Context as OtelContext, KeyValue};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::access_log::Entry;
use super::body::TracedBody;
use super::custom::{Custom, ExtraAttributes, with_request_parts, with_response_parts};
use super::head::{self, Head, HeadSampler};
use super::layer::{Options, Sampler};
use super::propagation::{extract, inject};
use super::semconv::{
    OTHER, attr, grpc_answered, grpc_call, grpc_names, grpc_parts, grpc_unnamed, method,
    protocol_version, route, scheme,
};
use super::traced::{LayerTracer, Traced};
use crate::RequestId;
use crate::health::is_probe;
use crate::reject::GrpcCode;
use crate::retry::ResendCount;

/// The service made by [`TraceLayer`](super::TraceLayer).
#[derive(Debug, Clone)]
pub struct Trace<S> {
    pub(super) inner: S,
    pub(super) client: bool,
    pub(super) head: Sampler,
    pub(super) tracer: LayerTracer,
    pub(super) options: Options,
    pub(super) custom: Custom,
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
        if !self.client && !self.options.probes && is_probe(req.uri().path()) {
            let future = self.inner.call(req);
            return ResponseFuture::passing(future);
        }
        let (mut req, hooked) = Hooked::run(&self.custom, self.client, req);
        // A span the user named keeps its name when a gRPC answer comes.
        let named = hooked.name.is_some();
        let skipped = hooked.skipped;
        let tracer = &self.tracer;
        let request = if self.client {
            let parent = OtelContext::current();
            let span = client_span(tracer.get(), &req, self.options.query, hooked, &parent);
            let request = Traced::new(parent.with_span(span));
            inject(&request.cx, req.headers_mut());
            request
        } else if hooked.skipped {
            // Not traced, but in the caller's trace: outbound calls go on
            // with it.
            Traced::new(extract(req.headers(), self.options.baggage))
        } else {
            // The installed sampler, looked up once per layer.
            let sampler = *self.head.get_or_init(head::installed);
            request_context(sampler, tracer, &req, self.options.baggage, hooked)
        };
        // A gRPC call named `_OTHER` for now: its answer may name it.
        let rpc = grpc_unnamed(&req).filter(|_| !self.client);
        let log = match self.options.access_log {
            Some(log) if !self.client && !skipped => log.start(&req, grpc_call(&req)),
            _ => None,
        };
        let future = {
            let _attached = request.cx.clone().attach();
            self.inner.call(req)
        };
        let attributes = self.custom.attributes.clone().filter(|_| request.recording);
        ResponseFuture {
            future,
            request: Some(request),
            client: self.client,
            rpc,
            log,
            attributes,
            named,
        }
    }
}

/// A server request's context: the caller's with the request's span in it
/// (built when `sampler` samples the request, or always without one), or
/// the unsampled context the sampler made.
fn request_context<B>(
    sampler: Option<HeadSampler>,
    tracer: &LayerTracer,
    req: &Request<B>,
    baggage: bool,
    hooked: Hooked,
) -> Traced {
    let parent = extract(req.headers(), baggage);
    let root = match sampler.map(|sampler| sampler.decide(&parent)) {
        Some(Head::Unsampled(cx)) => return Traced::new(cx),
        Some(Head::Sampled { root }) => root,
        None => None,
    };
    let builder = server_span(req, hooked);
    let tracer = tracer.get();
    let span = match root {
        // Started here, so the SDK takes the decided trace id.
        Some(id) => head::with_root_trace_id(id, || builder.start_with_context(tracer, &parent)),
        None => builder.start_with_context(tracer, &parent),
    };
    Traced::new(parent.with_span(span))
}

/// The server span: named `{method} {route}` (or `{method}`, or the gRPC
/// `service/method`), with every attribute the request decides, so the
/// sampler sees them and the span takes them without a lock.
fn server_span<B>(req: &Request<B>, hooked: Hooked) -> SpanBuilder {
    let m = method(req.method());
    let grpc = grpc_parts(req);
    let route = route(req);
    let name = match (hooked.name, &grpc, &route) {
        (Some(name), _, _) => name,
        (None, Some((service, rpc)), _) => [service, "/", rpc].concat(),
        (None, None, Some(route)) => [m, " ", route].concat(),
        (None, None, None) => m.to_owned(),
    };
    let mut attributes = request_attributes(req, m, route, grpc);
    attributes.extend(hooked.attributes);
    SpanBuilder::from_name(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
}

/// The server span's attributes that the request alone decides.
fn request_attributes<B>(
    req: &Request<B>,
    m: &'static str,
    route: Option<&str>,
    grpc: Option<(&str, &str)>,
) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(12);
    attributes.push(KeyValue::new(attr::HTTP_REQUEST_METHOD, m));
    if m == OTHER {
        let original = req.method().as_str().to_owned();
        attributes.push(KeyValue::new(attr::HTTP_REQUEST_METHOD_ORIGINAL, original));
    }
    if let Some(route) = route {
        attributes.push(KeyValue::new(attr::HTTP_ROUTE, route.to_owned()));
    }
    attributes.push(KeyValue::new(attr::URL_PATH, req.uri().path().to_owned()));
    attributes.push(KeyValue::new(attr::URL_SCHEME, scheme(req)));
    attributes.push(KeyValue::new(
        attr::NETWORK_PROTOCOL_VERSION,
        protocol_version(req.version()),
    ));
    if let Some(host) = req.uri().host().or_else(|| host_header(req)) {
        attributes.push(KeyValue::new(attr::SERVER_ADDRESS, host.to_owned()));
    }
    if let Some(agent) = req
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        attributes.push(KeyValue::new(attr::USER_AGENT_ORIGINAL, agent.to_owned()));
    }
    if let Some(id) = req.extensions().get::<RequestId>() {
        attributes.push(KeyValue::new("request.id", id.as_str().to_owned()));
    }
    if let Some((service, rpc)) = grpc {
        attributes.push(KeyValue::new(attr::RPC_SYSTEM, "grpc"));
        // A method not recognized yet is named when its answer arrives.
        if rpc != OTHER {
            attributes.push(KeyValue::new(attr::RPC_SERVICE, service.to_owned()));
            attributes.push(KeyValue::new(attr::RPC_METHOD, rpc.to_owned()));
        }
    }
    attributes
}

fn host_header<B>(req: &Request<B>) -> Option<&str> {
    let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
    Some(host.rsplit_once(':').map_or(host, |(h, _)| h))
}

/// The client span of one attempt, child of `parent` (the current
/// context): named `{method}`, kind client.
fn client_span<B>(
    tracer: &BoxedTracer,
    req: &Request<B>,
    query: bool,
    hooked: Hooked,
    parent: &OtelContext,
) -> BoxedSpan {
    let m = method(req.method());
    let mut attributes = Vec::with_capacity(8);
    attributes.push(KeyValue::new(attr::HTTP_REQUEST_METHOD, m));
    attributes.push(KeyValue::new(attr::URL_FULL, full_url(req.uri(), query)));
    if let Some(host) = req.uri().host() {
        attributes.push(KeyValue::new(attr::SERVER_ADDRESS, host.to_owned()));
    }
    if let Some(port) = req.uri().port_u16() {
        attributes.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
    }
    if let Some(resend) = req.extensions().get::<ResendCount>() {
        attributes.push(KeyValue::new(
            attr::HTTP_REQUEST_RESEND_COUNT,
            i64::from(resend.0),
        ));
    }
    let id = req
        .extensions()
        .get::<RequestId>()
        .cloned()
        .or_else(RequestId::current);
    if let Some(id) = id {
        attributes.push(KeyValue::new("request.id", id.as_str().to_owned()));
    }
    attributes.extend(hooked.attributes);
    SpanBuilder::from_name(m)
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
        .start_with_context(tracer, parent)
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
    /// Runs the call with the request's context current; hands the
    /// context (and its span) to the response body.
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        // `None` for a probe, which is not traced, or once answered.
        request: Option<Traced>,
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

impl<F> ResponseFuture<F> {
    /// A request the layer lets by: a probe.
    fn passing(future: F) -> Self {
        Self {
            future,
            request: None,
            client: false,
            rpc: None,
            log: None,
            attributes: None,
            named: false,
        }
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
        let Some(request) = this.request.as_ref() else {
            let result = ready!(this.future.poll(cx));
            return Poll::Ready(result.map(|res| res.map(|body| TracedBody::new(body, None))));
        };
        let result = {
            let _attached = request.cx.clone().attach();
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
        let Some(request) = this.request.take() else {
            unreachable!("checked above")
        };
        let log = this.log.take();
        if let Some(call) = this.rpc.take() {
            if let Ok(res) = &result {
                grpc_answered(&call, res.headers());
            }
            if request.recording {
                name_rpc(&request.cx.span(), &call, !*this.named);
            }
        }
        Poll::Ready(match result {
            Ok(res) => {
                let res = match this.attributes.take() {
                    Some(extra) => {
                        with_response_parts(res, |parts| {
                            let mut attributes = Vec::new();
                            extra.response(parts, &mut attributes);
                            request.cx.span().set_attributes(attributes);
                        })
                        .0
                    }
                    None => res,
                };
                if request.recording {
                    record_response(&request.cx.span(), &res, *this.client);
                }
                let server = !*this.client;
                Ok(res.map(|body| TracedBody::in_span(body, request, server, log)))
            }
            Err(e) => {
                if request.recording {
                    let span = request.cx.span();
                    span.set_attribute(KeyValue::new(attr::ERROR_TYPE, OTHER));
                    span.set_status(Status::error(e.to_string()));
                }
                if let Some(log) = log {
                    let _attached = request.cx.clone().attach();
                    log.write();
                }
                Err(e)
            }
        })
    }
}

/// Names the span of a gRPC call that was not recognized when it arrived,
/// as far as its answer recognized it.
fn name_rpc(span: &SpanRef<'_>, call: &str, rename: bool) {
    let (service, method) = grpc_names(call);
    if rename && method != OTHER {
        span.update_name([service, "/", method].concat());
    }
    span.set_attributes([
        KeyValue::new(attr::RPC_SERVICE, service.to_owned()),
        KeyValue::new(attr::RPC_METHOD, method.to_owned()),
    ]);
}

/// Status code and status: server 5xx is an error, 4xx is
/// not; client 4xx and 5xx are errors; gRPC per the RPC conventions.
fn record_response<B>(span: &SpanRef<'_>, res: &Response<B>, client: bool) {
    let status = res.status();
    let code = KeyValue::new(attr::HTTP_RESPONSE_STATUS_CODE, i64::from(status.as_u16()));
    if let Some(grpc) = GrpcCode::from_headers(res.headers()) {
        span.set_attributes([
            code,
            KeyValue::new(attr::RPC_GRPC_STATUS_CODE, i64::from(grpc.as_i32())),
        ]);
        if grpc != GrpcCode::Ok && (client || grpc.is_server_error()) {
            let grpc = grpc.as_i32();
            span.set_status(Status::error(format!("grpc-status {grpc}")));
        }
        return;
    }
    let error = status.is_server_error() || (client && status.is_client_error());
    if error {
        span.set_attributes([
            code,
            KeyValue::new(attr::ERROR_TYPE, status.as_str().to_owned()),
        ]);
        span.set_status(Status::error(""));
    } else {
        span.set_attribute(code);
    }
}
