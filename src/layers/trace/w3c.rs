//! A strict W3C Trace Context (Level 1) propagator: see [`W3cTraceContext`].

use std::sync::Arc;

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
/// The most list members a `tracestate` may have.
const MAX_MEMBERS: usize = 32;

static FIELDS: std::sync::LazyLock<[String; 2]> =
    std::sync::LazyLock::new(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()]);

/// Propagates `traceparent` and `tracestate` as W3C Trace Context Level 1
/// defines them, strictly.
///
/// ```
/// use battlement::trace::W3cTraceContext;
/// use opentelemetry::propagation::TextMapPropagator;
/// use opentelemetry::trace::TraceContextExt;
/// use std::collections::HashMap;
///
/// let w3c = W3cTraceContext::new();
/// let mut headers = HashMap::new();
/// headers.insert(
///     "traceparent".to_owned(),
///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
/// );
/// headers.insert("tracestate".to_owned(), "rojo@fw=1,congo=t61rcWkgMzE".to_owned());
/// let cx = w3c.extract(&headers);
/// assert_eq!(
///     cx.span().span_context().trace_id().to_string(),
///     "0af7651916cd43dd8448eb211c80319c"
/// );
///
/// let mut out = HashMap::new();
/// w3c.inject_context(&cx, &mut out);
/// assert_eq!(out["tracestate"], "rojo@fw=1,congo=t61rcWkgMzE");
/// ```
///
/// Why not the SDK's `TraceContextPropagator`: it reads only the first of
/// repeated headers (a second `traceparent` goes unnoticed, the members of
/// later `tracestate` headers are lost), accepts a `traceparent` whose
/// fields have the wrong length, forwards an empty `tracestate` value, and
/// drops the whole `tracestate` when a key is one [`TraceState`] does not
/// hold (`foo@@bar`, `t@` and 15 characters). Here:
///
/// - `traceparent`: exactly one header; version `00` is exactly 55
///   characters; a later version is at least 55, its first four fields
///   read as version `00`'s and followed by the end or a `-`; version `ff`,
///   uppercase hex and all-zero ids are invalid. An invalid `traceparent`
///   leaves the context as it was (the request starts a new trace), and
///   its `tracestate` is not read.
/// - `tracestate`: repeated headers are one list, joined in order; empty
///   members are skipped; at most 32 members; keys are a lowercase letter
///   or digit followed by up to 255 of `a-z 0-9 _ - * / @` (which takes in
///   the `tenant@system` keys), values 1 to 256 printable characters
///   without `,` or `=` and not ending in a space. One invalid member, or
///   more than 32, discards the whole `tracestate`, so nothing invalid is
///   ever forwarded. A repeated key keeps its first value.
///
/// A valid `tracestate` that [`TraceState`] cannot hold travels beside the
/// span context in the [`Context`] and is sent on as it came, as long as
/// the outbound span is in the same trace and its [`TraceState`] was not
/// changed; when it was changed, the changed [`TraceState`] is sent, then
/// the members it could not hold.
///
/// [`telemetry::init`](crate::telemetry::init) installs it (with
/// [`W3cBaggage`](crate::trace::W3cBaggage)); to install them yourself:
///
/// ```
/// use battlement::trace::{W3cBaggage, W3cTraceContext};
/// use opentelemetry::propagation::TextMapCompositePropagator;
///
/// opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
///     Box::new(W3cTraceContext::new()),
///     Box::new(W3cBaggage::new()),
/// ]));
/// ```
#[derive(Debug, Clone, Default)]
pub struct W3cTraceContext {
    _private: (),
}

impl W3cTraceContext {
    /// The propagator.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A received `tracestate`, valid, as it came: kept in the [`Context`]
/// when [`TraceState`] cannot hold all of it.
#[derive(Debug)]
struct ReceivedState {
    /// The trace it came with.
    trace_id: TraceId,
    /// The members, in order, first of each key only.
    members: Vec<(String, String)>,
    /// What [`TraceState`] holds of them (the span context's trace state).
    held: TraceState,
}

impl TextMapPropagator for W3cTraceContext {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        injector.set(
            TRACEPARENT,
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags() & TraceFlags::SAMPLED
            ),
        );
        let state = match cx.get::<Arc<ReceivedState>>() {
            Some(received) if received.trace_id == sc.trace_id() => {
                outbound_state(sc.trace_state(), received)
            }
            _ => sc.trace_state().header(),
        };
        if !state.is_empty() {
            injector.set(TRACESTATE, state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Some((trace_id, span_id, flags)) =
            extractor
                .get_all(TRACEPARENT)
                .and_then(|values| match values.as_slice() {
                    [one] => parse_traceparent(one),
                    _ => None,
                })
        else {
            return cx.clone();
        };
        let members = extractor
            .get_all(TRACESTATE)
            .and_then(|values| parse_tracestate(&values))
            .unwrap_or_default();
        let held = hold(&members);
        let complete = held.header() == join(&members);
        let sc = SpanContext::new(trace_id, span_id, flags, true, held.clone());
        let cx = cx.with_remote_span_context(sc);
        if complete {
            cx
        } else {
            cx.with_value(Arc::new(ReceivedState {
                trace_id,
                members,
                held,
            }))
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(FIELDS.as_slice())
    }
}

/// The `tracestate` to send for an outbound span whose trace state is
/// `current`, in the trace `received` came with.
fn outbound_state(current: &TraceState, received: &ReceivedState) -> String {
    if *current == received.held {
        return join(&received.members);
    }
    // Changed here: the new trace state first, then what it could not hold.
    let mut members: Vec<(String, String)> = Vec::new();
    let header = current.header();
    for member in header.split(',').filter(|m| !m.is_empty()) {
        if let Some((k, v)) = member.split_once('=') {
            members.push((k.to_owned(), v.to_owned()));
        }
    }
    for (k, v) in &received.members {
        if received.held.get(k).is_none() && !members.iter().any(|(key, _)| key == k) {
            members.push((k.clone(), v.clone()));
        }
    }
    members.truncate(MAX_MEMBERS);
    join(&members)
}

fn join(members: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in members {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The members [`TraceState`] accepts, in order.
fn hold(members: &[(String, String)]) -> TraceState {
    let accepted = members
        .iter()
        .filter(|(k, v)| TraceState::from_key_value([(k, v)]).is_ok())
        .map(|(k, v)| (k, v));
    TraceState::from_key_value(accepted).unwrap_or_default()
}

/// Trace id, parent id and flags (the sampled bit, the only one Level 1
/// defines) of a valid `traceparent`.
fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let value = value.trim_matches([' ', '\t']).as_bytes();
    if value.len() < 55 {
        return None;
    }
    let version = hex_field(&value[0..2])?;
    let ok = match version {
        0xff => false,
        0 => value.len() == 55,
        _ => value.len() == 55 || value[55] == b'-',
    };
    if !ok || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_field(&value[3..35])?;
    let span_id = hex_field(&value[36..52])?;
    let flags = hex_field(&value[53..55])?;
    if trace_id == 0 || span_id == 0 {
        return None;
    }
    Some((
        TraceId::from(trace_id),
        SpanId::from(span_id as u64),
        TraceFlags::new(flags as u8) & TraceFlags::SAMPLED,
    ))
}

/// Lowercase hex digits (at most 32) as a number.
fn hex_field(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some((n << 4) | u128::from(d))
    })
}

/// The members of the `tracestate` headers `values`, or `None` when the
/// list is invalid and must be discarded.
fn parse_tracestate(values: &[&str]) -> Option<Vec<(String, String)>> {
    let mut members: Vec<(String, String)> = Vec::new();
    let mut count = 0;
    for member in values.iter().flat_map(|v| v.split(',')) {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_MEMBERS {
            return None;
        }
        let (key, value) = member.split_once('=')?;
        if !valid_key(key) || !valid_value(value) {
            return None;
        }
        if !members.iter().any(|(k, _)| k == key) {
            members.push((key.to_owned(), value.to_owned()));
        }
    }
    Some(members)
}

/// A lowercase letter or digit, then up to 255 of `a-z 0-9 _ - * / @`.
fn valid_key(key: &str) -> bool {
    let key = key.as_bytes();
    let Some((&first, rest)) = key.split_first() else {
        return false;
    };
    (first.is_ascii_lowercase() || first.is_ascii_digit())
        && rest.len() <= 255
        && rest.iter().all(|&b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')
        })
}

/// 1 to 256 of the printable characters but `,` and `=`, the last not a
/// space.
fn valid_value(value: &str) -> bool {
    let value = value.as_bytes();
    matches!(value.last(), Some(&last) if last != b' ')
        && value.len() <= 256
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const PARENT: &str = "00-12345678901234567890123456789012-1234567890123456-01";
    const TRACE: &str = "12345678901234567890123456789012";

    /// Headers as a list, repeated names allowed.
    struct List(Vec<(&'static str, String)>);

    impl Extractor for List {
        fn get(&self, key: &str) -> Option<&str> {
            self.0
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| *k).collect()
        }
        fn get_all(&self, key: &str) -> Option<Vec<&str>> {
            let all: Vec<&str> = self
                .0
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.as_str())
                .collect();
            (!all.is_empty()).then_some(all)
        }
    }

    fn extract(headers: &[(&'static str, &str)]) -> Context {
        let list = List(headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect());
        W3cTraceContext::new().extract_with_context(&Context::new(), &list)
    }

    /// The trace id the caller's context continues, if any.
    fn continued(traceparent: &str) -> Option<String> {
        let cx = extract(&[("traceparent", traceparent)]);
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.trace_id().to_string())
    }

    /// What is sent on for `tracestate` headers with a valid parent.
    fn forwarded(states: &[&str]) -> Option<String> {
        let mut headers = vec![("traceparent", PARENT)];
        headers.extend(states.iter().map(|s| ("tracestate", *s)));
        let cx = extract(&headers);
        assert!(cx.span().span_context().is_valid());
        let mut out = HashMap::new();
        W3cTraceContext::new().inject_context(&cx, &mut out);
        assert_eq!(out["traceparent"], PARENT);
        out.remove("tracestate")
    }

    #[test]
    fn valid_traceparent_is_continued() {
        assert_eq!(continued(PARENT).as_deref(), Some(TRACE));
        assert_eq!(
            continued(&format!(" \t{PARENT}\t ")).as_deref(),
            Some(TRACE)
        );
    }

    #[test]
    fn version_too_long_or_short_starts_a_new_trace() {
        for tp in [
            "000-12345678901234567890123456789012-1234567890123456-01",
            "0000-12345678901234567890123456789012-1234567890123456-01",
            "0-12345678901234567890123456789012-1234567890123456-01",
        ] {
            assert_eq!(continued(tp), None, "{tp}");
        }
    }

    #[test]
    fn parent_id_too_long_starts_a_new_trace() {
        assert_eq!(
            continued("00-12345678901234567890123456789012-12345678901234567-01"),
            None
        );
    }

    #[test]
    fn parent_id_too_short_starts_a_new_trace() {
        assert_eq!(
            continued("00-12345678901234567890123456789012-123456789012345-01"),
            None
        );
    }

    #[test]
    fn trace_flags_too_long_starts_a_new_trace() {
        assert_eq!(
            continued("00-12345678901234567890123456789012-1234567890123456-001"),
            None
        );
    }

    #[test]
    fn trace_flags_too_short_starts_a_new_trace() {
        assert_eq!(
            continued("00-12345678901234567890123456789012-1234567890123456-1"),
            None
        );
    }

    #[test]
    fn version_00_with_more_fields_starts_a_new_trace() {
        for tp in [
            "00-12345678901234567890123456789012-1234567890123456-01.",
            "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        ] {
            assert_eq!(continued(tp), None, "{tp}");
        }
    }

    #[test]
    fn future_versions_read_the_known_fields() {
        for tp in [
            "cc-12345678901234567890123456789012-1234567890123456-01",
            "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
        ] {
            assert_eq!(continued(tp).as_deref(), Some(TRACE), "{tp}");
        }
        assert_eq!(
            continued("cc-12345678901234567890123456789012-1234567890123456-01.what"),
            None
        );
        assert_eq!(
            continued("ff-12345678901234567890123456789012-1234567890123456-01"),
            None
        );
    }

    #[test]
    fn uppercase_and_zero_ids_start_a_new_trace() {
        for tp in [
            "00-1234567890123456789012345678901A-1234567890123456-01",
            "00-12345678901234567890123456789012-123456789012345A-01",
            "00-00000000000000000000000000000000-1234567890123456-01",
            "00-12345678901234567890123456789012-0000000000000000-01",
        ] {
            assert_eq!(continued(tp), None, "{tp}");
        }
    }

    #[test]
    fn duplicated_traceparent_starts_a_new_trace() {
        let cx = extract(&[
            (
                "traceparent",
                "00-12345678901234567890123456789011-1234567890123456-01",
            ),
            ("traceparent", PARENT),
        ]);
        assert!(!cx.span().span_context().is_valid());
    }

    #[test]
    fn tracestate_without_valid_traceparent_is_dropped() {
        let cx = extract(&[("tracestate", "foo=1")]);
        let mut out = HashMap::new();
        W3cTraceContext::new().inject_context(&cx, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn tracestate_headers_are_combined_in_order() {
        assert_eq!(
            forwarded(&["foo=1,bar=2", "rojo=1,congo=2", "baz=3", ""]).as_deref(),
            Some("foo=1,bar=2,rojo=1,congo=2,baz=3")
        );
    }

    #[test]
    fn thirty_two_members_survive() {
        let members: Vec<String> = (1..=32).map(|n| format!("bar{n:02}={n:02}")).collect();
        let headers: Vec<String> = members.chunks(10).map(|c| c.join(",")).collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        assert_eq!(forwarded(&headers), Some(members.join(",")));
    }

    #[test]
    fn thirty_three_members_discard_the_tracestate() {
        let members: Vec<String> = (1..=33).map(|n| format!("bar{n:02}={n:02}")).collect();
        assert_eq!(forwarded(&[&members.join(",")]), None);
    }

    #[test]
    fn key_of_256_characters_survives() {
        let key = "z".repeat(256);
        let expected = format!("foo=1,{key}=1");
        assert_eq!(
            forwarded(&["foo=1", &format!("{key}=1")]).as_deref(),
            Some(expected.as_str())
        );
        assert_eq!(forwarded(&["foo=1", &format!("{key}z=1")]), None);
    }

    #[test]
    fn keys_with_at_signs_survive() {
        for key in [
            "foo@".to_owned(),
            "foo@@bar".to_owned(),
            "foo@bar@baz".to_owned(),
            format!("{}@{}", "t".repeat(241), "v".repeat(14)),
            format!("{}@v", "t".repeat(242)),
            format!("t@{}", "v".repeat(15)),
        ] {
            let expected = format!("{key}=1,bar=2");
            assert_eq!(
                forwarded(&[&expected]).as_deref(),
                Some(expected.as_str()),
                "{key}"
            );
        }
        assert_eq!(forwarded(&["@foo=1,bar=2"]), None);
    }

    #[test]
    fn illegal_member_discards_the_tracestate() {
        for state in [
            "foo=bar=baz",
            "foo=,bar=3",
            "foo =1",
            "FOO=1",
            "foo.bar=1",
            "foo=1,bar",
            "foo=1 x\u{7f}",
        ] {
            assert_eq!(forwarded(&[state]), None, "{state:?}");
        }
    }

    #[test]
    fn all_allowed_characters_survive() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/";
        let value: String = (0x20u8..=0x7e)
            .filter(|&b| b != b',' && b != b'=')
            .map(char::from)
            .collect();
        for key in [key.to_owned(), format!("{key}@a-z0-9_-*/")] {
            let member = format!("{key}={value}");
            assert_eq!(forwarded(&[&member]).as_deref(), Some(member.as_str()));
        }
    }

    #[test]
    fn ows_and_empty_members_are_skipped() {
        assert_eq!(
            forwarded(&["foo=1 \t , \t bar=2, \t baz=3,,"]).as_deref(),
            Some("foo=1,bar=2,baz=3")
        );
        assert_eq!(forwarded(&["\t foo=1 \t"]).as_deref(), Some("foo=1"));
        assert_eq!(forwarded(&[""]), None);
    }

    #[test]
    fn repeated_key_keeps_the_first_value() {
        assert_eq!(forwarded(&["foo=1", "foo=2"]).as_deref(), Some("foo=1"));
    }

    #[test]
    fn changed_trace_state_goes_first_with_what_it_could_not_hold() {
        let cx = extract(&[("traceparent", PARENT), ("tracestate", "a@b@c=1,bar=2")]);
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(sc.trace_state().header(), "bar=2");
        let changed = sc.trace_state().insert("ot", "th:8").unwrap();
        let child = SpanContext::new(
            sc.trace_id(),
            SpanId::from(7),
            sc.trace_flags(),
            false,
            changed,
        );
        let cx = cx.with_remote_span_context(child);
        let mut out = HashMap::new();
        W3cTraceContext::new().inject_context(&cx, &mut out);
        assert_eq!(out["tracestate"], "ot=th:8,bar=2,a@b@c=1");

        // Another trace in the same context: the received state stays behind.
        let other = SpanContext::new(
            TraceId::from(9),
            SpanId::from(7),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut out = HashMap::new();
        W3cTraceContext::new().inject_context(&cx.with_remote_span_context(other), &mut out);
        assert!(!out.contains_key("tracestate"));
    }
}
