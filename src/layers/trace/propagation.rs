//! W3C trace context in and out of HTTP headers, through the
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

/// Inbound headers; `baggage` is read only from a trusted caller.
struct Headers<'a> {
    map: &'a HeaderMap,
    baggage: bool,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match known(key) {
            Some(name) if name == BAGGAGE && !self.baggage => None,
            Some(name) => self.map.get(name),
            None => self.map.get(key),
        };
        value.and_then(|v| v.to_str().ok())
    }

    /// Every value of a repeated header, so a propagator can tell two
    /// `traceparent` headers from one and join `tracestate` lists; a value
    /// that is not visible ASCII reads as U+FFFD, which no W3C field takes.
    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values = match known(key) {
            Some(name) if name == BAGGAGE && !self.baggage => return None,
            Some(name) => self.map.get_all(name),
            None => self.map.get_all(key),
        };
        let all: Vec<&str> = values
            .iter()
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
            .collect();
        (!all.is_empty()).then_some(all)
    }

    fn keys(&self) -> Vec<&str> {
        self.map
            .keys()
            .filter(|k| self.baggage || **k != BAGGAGE)
            .map(HeaderName::as_str)
            .collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` or `baggage` says nothing: leave it out.
        if value.is_empty() {
            return;
        }
        let name = match known(key) {
            Some(name) => Ok(name),
            None => HeaderName::from_bytes(key.as_bytes()),
        };
        if let (Ok(name), Ok(value)) = (name, HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// The context the caller sent (`traceparent`, `tracestate`, and
/// `baggage` when `baggage` says the caller is trusted); an invalid or
/// missing one gives an empty context (a new trace).
pub(crate) fn extract(headers: &HeaderMap, baggage: bool) -> Context {
    let headers = Headers {
        map: headers,
        baggage,
    };
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&headers))
}

/// Writes `cx` into outbound `headers`.
pub(crate) fn inject(cx: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeadersMut(headers));
    });
}
