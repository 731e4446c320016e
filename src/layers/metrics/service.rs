//! `Metrics`: the service, its future and its body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response};
use opentelemetry::KeyValue;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::instruments::{LazyInstruments, ServerKey};
use super::recording::{Kind, OpenRecording, Recording};
use crate::body::ObservedBody;
use crate::health::is_probe;
use crate::trace::ExtraAttributes;
use crate::trace::custom::{ValueCap, with_request_parts, with_response_parts};
use crate::trace::semconv::{
    attr, grpc_answered, grpc_call, method, protocol_version, route, scheme,
};

/// The service made by [`MetricsLayer`](super::MetricsLayer).
#[derive(Debug, Clone)]
pub struct Metrics<S> {
    inner: S,
    instruments: Arc<LazyInstruments>,
    client: bool,
    probes: bool,
    extra: Extra,
}

/// The user's attributes and the cap on their values.
#[derive(Clone)]
pub(crate) struct Extra {
    pub(crate) attributes: Option<Arc<dyn ExtraAttributes>>,
    pub(crate) cap: Arc<ValueCap>,
}

impl std::fmt::Debug for Extra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extra")
            .field("attributes", &self.attributes.is_some())
            .field("cap", &self.cap)
            .finish()
    }
}

impl Extra {
    /// `attributes` capped, added to `recording`.
    fn add(cap: &ValueCap, attributes: Vec<KeyValue>, recording: &mut Recording) {
        for kv in attributes {
            recording.add(cap.bound(kv));
        }
    }
}

impl<S> Metrics<S> {
    pub(crate) fn new(
        inner: S,
        instruments: Arc<LazyInstruments>,
        client: bool,
        probes: bool,
        extra: Extra,
    ) -> Self {
        Self {
            inner,
            instruments,
            client,
            probes,
            extra,
        }
    }

    fn start<B>(&self, req: &Request<B>) -> Recording {
        let instruments = self.instruments.get();
        let mut attributes = Vec::with_capacity(8);
        let mut rpc = None;
        let mut server_key = None;
        attributes.push(KeyValue::new(
            attr::HTTP_REQUEST_METHOD,
            method(req.method()),
        ));
        let kind = if self.client {
            if let Some(host) = req.uri().host() {
                attributes.push(KeyValue::new(attr::SERVER_ADDRESS, host.to_owned()));
            }
            if let Some(port) = req.uri().port_u16() {
                attributes.push(KeyValue::new(attr::SERVER_PORT, i64::from(port)));
            }
            Kind::Client
        } else {
            attributes.push(KeyValue::new(attr::URL_SCHEME, scheme(req)));
            instruments.add_active(1, &attributes);
            if let Some(call) = grpc_call(req) {
                attributes.push(KeyValue::new(attr::RPC_SYSTEM, "grpc"));
                rpc = Some(call.into());
                Kind::Rpc
            } else {
                attributes.push(KeyValue::new(
                    attr::NETWORK_PROTOCOL_VERSION,
                    protocol_version(req.version()),
                ));
                let route = route(req);
                if let Some(route) = route {
                    attributes.push(KeyValue::new(attr::HTTP_ROUTE, route.to_owned()));
                }
                // The user's attributes are not in the packed key: with
                // them, every duration goes through the attribute set.
                if self.extra.attributes.is_none() {
                    let scheme = req.uri().scheme_str();
                    let key = ServerKey::new(req.method(), scheme, req.version(), route.is_some());
                    server_key = Some((key, 0));
                }
                Kind::Server
            }
        };
        Recording {
            instruments: instruments.clone(),
            kind,
            started: Instant::now(),
            attributes,
            rpc,
            finished: false,
            server_key,
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Metrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let probe = !self.client && !self.probes && is_probe(req.uri().path());
        let mut recording = (!probe).then(|| self.start(&req));
        let extra = match (&self.extra.attributes, recording.as_mut()) {
            (Some(extra), Some(recording)) => {
                let (r, attributes) = with_request_parts(req, |parts| {
                    let mut attributes = Vec::new();
                    extra.request(parts, &mut attributes);
                    attributes
                });
                req = r;
                Extra::add(&self.extra.cap, attributes, recording);
                Some(self.extra.clone())
            }
            _ => None,
        };
        ResponseFuture {
            future: self.inner.call(req),
            recording,
            extra,
        }
    }
}

pin_project! {
    /// Measures the call; hands the recording to the response body.
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        recording: Option<Recording>,
        // The user's attributes, for the response.
        extra: Option<Extra>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        // A probe is not recorded.
        let Some(mut recording) = this.recording.take() else {
            return Poll::Ready(result.map(|res| res.map(|inner| MeteredBody::new(inner, None))));
        };
        recording.finished = true;
        Poll::Ready(match result {
            Ok(res) => {
                let res = match this.extra.take() {
                    Some(Extra {
                        attributes: Some(extra),
                        cap,
                    }) => {
                        let (res, attributes) = with_response_parts(res, |parts| {
                            let mut attributes = Vec::new();
                            extra.response(parts, &mut attributes);
                            attributes
                        });
                        Extra::add(&cap, attributes, &mut recording);
                        res
                    }
                    _ => res,
                };
                let status = res.status();
                match recording.kind {
                    Kind::Rpc => {
                        if let Some(call) = &recording.rpc {
                            grpc_answered(call, res.headers());
                        }
                        recording.add_grpc_status(res.headers());
                    }
                    Kind::Server | Kind::Client => {
                        recording.add(KeyValue::new(
                            attr::HTTP_RESPONSE_STATUS_CODE,
                            i64::from(status.as_u16()),
                        ));
                        let error = status.is_server_error()
                            || (recording.kind == Kind::Client && status.is_client_error());
                        if error {
                            recording
                                .add(KeyValue::new(attr::ERROR_TYPE, status.as_u16().to_string()));
                        }
                        let covered = recording.attributes.len();
                        recording.server_key = recording
                            .server_key
                            .map(|(key, _)| (key.with_status(status.as_u16()), covered));
                    }
                }
                let recording = Some(OpenRecording(recording));
                Ok(res.map(|inner| MeteredBody::new(inner, recording)))
            }
            Err(e) => {
                recording.add(KeyValue::new(attr::ERROR_TYPE, "_OTHER"));
                Err(e)
            }
        })
    }
}

/// The response body; the request's duration is recorded when it ends.
pub type MeteredBody<B> = ObservedBody<B, OpenRecording>;
