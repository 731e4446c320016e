//! W3C trace context in and out of HTTP headers (SPEC TR-1), through the
//! globally registered OpenTelemetry propagator.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};

/// The fields of the W3C propagators, parsed once: looking a header up by
/// `&str` parses the name every time, and making a custom name from text
/// allocates.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

fn known(key: &str) -> Option<HeaderName> {
    match key {
        "traceparent" => Some(TRACEPARENT),
        "tracestate" => Some(TRACESTATE),
        "baggage" => Some(BAGGAGE),
        _ => None,
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match known(key) {
            Some(name) => self.0.get(name),
            None => self.0.get(key),
        };
        value.and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = match known(key) {
            Some(name) => Ok(name),
            None => HeaderName::from_bytes(key.as_bytes()),
        };
        if let (Ok(name), Ok(value)) = (name, HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// The context the caller sent (`traceparent`, `tracestate`, `baggage`);
/// an invalid or missing one gives an empty context (a new trace).
pub(crate) fn extract(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers)))
}

/// Writes `cx` into outbound `headers`.
pub(crate) fn inject(cx: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeadersMut(headers));
    });
}
