//! A W3C Baggage propagator that passes members on as they came: see
//! [`W3cBaggage`].

use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

const BAGGAGE: &str = "baggage";
/// The most list members passed on.
const MAX_MEMBERS: usize = 64;
/// The most bytes of `baggage` text passed on.
const MAX_BYTES: usize = 8192;

static FIELDS: std::sync::LazyLock<[String; 1]> = std::sync::LazyLock::new(|| [BAGGAGE.to_owned()]);

/// What a value may not hold as it is, so is percent-encoded: everything
/// but the W3C `baggage-octet`s, and `%` itself.
const NOT_BAGGAGE_OCTET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b',')
    .add(b';')
    .add(b'\\')
    .add(b'%')
    .add(0x7f);

/// Propagates the `baggage` header as W3C Baggage defines it.
///
/// ```
/// use battlement::trace::W3cBaggage;
/// use opentelemetry::baggage::BaggageExt;
/// use opentelemetry::propagation::TextMapPropagator;
/// use std::collections::HashMap;
///
/// let w3c = W3cBaggage::new();
/// let mut headers = HashMap::new();
/// headers.insert("baggage".to_owned(), "tenant=a%2Cb;src=edge".to_owned());
/// let cx = w3c.extract(&headers);
/// assert_eq!(cx.baggage().get("tenant").map(|v| v.as_str()), Some("a,b"));
///
/// let mut out = HashMap::new();
/// w3c.inject_context(&cx, &mut out);
/// assert_eq!(out["baggage"], "tenant=a%2Cb;src=edge");
/// ```
///
/// Why not the SDK's `BaggagePropagator`: it percent-decodes keys and
/// properties, which the format leaves as they are, and writes them back
/// decoded. A key sent as `a%41` is passed on as `aA`, and a property that
/// decodes to a `,` or to non-ASCII text makes the whole outbound header
/// invalid, so every member is lost downstream. Here:
///
/// - keys are RFC 7230 tokens, kept as they came;
/// - values are `baggage-octet`s, percent-decoded as UTF-8 into the
///   [`Baggage`] and encoded again on the way out;
/// - properties (`;k=v` or `;k`) are kept as they came;
/// - a member that breaks any of these is skipped, the others are kept (a
///   header line holding bytes that are not visible ASCII is skipped
///   whole);
/// - an escape that is not UTF-8 reads as U+FFFD;
/// - repeated `baggage` headers are one list; at most 64 members are read,
///   and as many as take 8192 bytes once written out again, so that what
///   is read is passed on whole.
///
/// Properties the application set that are not valid are not sent.
#[derive(Debug, Clone, Default)]
pub struct W3cBaggage {
    _private: (),
}

impl W3cBaggage {
    /// The propagator.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TextMapPropagator for W3cBaggage {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let mut header = String::new();
        // [`Baggage`] holds only keys that are tokens.
        for (key, (value, properties)) in cx.baggage() {
            let properties = valid_properties(properties.as_str());
            let member = member_text(key.as_str(), value.as_str(), properties.as_deref());
            let separator = usize::from(!header.is_empty());
            if header.len() + separator + member.len() > MAX_BYTES {
                continue;
            }
            if separator == 1 {
                header.push(',');
            }
            header.push_str(&member);
        }
        if !header.is_empty() {
            injector.set(BAGGAGE, header);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Some(headers) = extractor.get_all(BAGGAGE) else {
            return cx.clone();
        };
        let mut baggage = Baggage::new();
        // What the members kept take once written out again (`,` between
        // them), so that what is read is passed on whole.
        let mut bytes = 0;
        let members = headers.iter().flat_map(|h| h.split(','));
        for member in members.map(trim_ows).filter(|m| !m.is_empty()) {
            if baggage.len() == MAX_MEMBERS || bytes >= MAX_BYTES {
                break;
            }
            let Some((key, value, properties)) = parse_member(member) else {
                continue;
            };
            let written = member_text(key, &value, Some(&properties)).len();
            let separator = usize::from(bytes > 0);
            if bytes + separator + written > MAX_BYTES {
                break;
            }
            bytes += separator + written;
            baggage.insert_with_metadata(key.to_owned(), value, properties);
        }
        if baggage.is_empty() {
            return cx.clone();
        }
        cx.with_baggage(baggage)
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(FIELDS.as_ref())
    }
}

/// Every member of `cx`'s baggage (key, value, properties), sorted.
#[cfg(any(test, fuzzing))]
pub(crate) fn members(cx: &Context) -> Vec<(String, String, String)> {
    let mut all: Vec<_> = cx
        .baggage()
        .iter()
        .map(|(k, (v, p))| (k.to_string(), v.to_string(), p.to_string()))
        .collect();
    all.sort();
    all
}

/// `key OWS "=" OWS value *( OWS ";" OWS property )`: the key, the
/// decoded value (escapes that are not UTF-8 read as U+FFFD) and the
/// properties as they came (joined by `;`).
fn parse_member(member: &str) -> Option<(&str, String, String)> {
    let (pair, properties) = match member.split_once(';') {
        Some((pair, properties)) => (pair, Some(properties)),
        None => (member, None),
    };
    let (key, value) = pair.split_once('=')?;
    let (key, value) = (trim_ows(key), trim_ows(value));
    if !is_token(key) || !value.bytes().all(is_baggage_octet) {
        return None;
    }
    let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
    let properties = match properties {
        Some(properties) => valid_properties(properties)?,
        None => String::new(),
    };
    Some((key, value, properties))
}

/// One member as it is written: the value percent-encoded, the properties
/// (already valid) after a `;`.
fn member_text(key: &str, value: &str, properties: Option<&str>) -> String {
    let mut text = format!("{key}={}", utf8_percent_encode(value, NOT_BAGGAGE_OCTET));
    if let Some(properties) = properties.filter(|p| !p.is_empty()) {
        text.push(';');
        text.push_str(properties);
    }
    text
}

/// `;`-separated properties, each trimmed, when every one is valid.
fn valid_properties(properties: &str) -> Option<String> {
    let properties: Vec<&str> = properties.split(';').map(trim_ows).collect();
    properties
        .iter()
        .all(|p| is_property(p))
        .then(|| properties.join(";"))
}

/// `key OWS "=" OWS value` or `key OWS`.
fn is_property(property: &str) -> bool {
    match property.split_once('=') {
        Some((key, value)) => {
            is_token(trim_ows(key)) && trim_ows(value).bytes().all(is_baggage_octet)
        }
        None => is_token(property),
    }
}

/// RFC 7230 `token`: one or more `tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// Without RFC 7230 optional white space (spaces and tabs) at either end.
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn extract(header: &str) -> Context {
        let headers = HashMap::from([(BAGGAGE.to_owned(), header.to_owned())]);
        W3cBaggage::new().extract(&headers)
    }

    fn inject(cx: &Context) -> Option<String> {
        let mut out = HashMap::new();
        W3cBaggage::new().inject_context(cx, &mut out);
        out.remove(BAGGAGE)
    }

    #[test]
    fn keys_and_properties_are_passed_on_as_they_came() {
        let cx = extract("a%41=1;p%2C=x%2Cy, k = v%20w ;flag");
        assert_eq!(
            members(&cx),
            [
                ("a%41".into(), "1".into(), "p%2C=x%2Cy".into()),
                ("k".into(), "v w".into(), "flag".into()),
            ]
        );
        let out = inject(&cx).expect("a header");
        let mut parts: Vec<&str> = out.split(',').collect();
        parts.sort();
        assert_eq!(parts, ["a%41=1;p%2C=x%2Cy", "k=v%20w;flag"]);
    }

    #[test]
    fn an_invalid_member_is_skipped_and_the_others_kept() {
        let cx = extract("ok=1,bad key=2,novalue,k=\"q\",p=1;bad prop,k3=v;,last=2");
        let keys: Vec<String> = members(&cx).into_iter().map(|m| m.0).collect();
        assert_eq!(keys, ["last", "ok"]);
    }

    #[test]
    fn an_escape_that_is_not_utf8_reads_as_the_replacement_character() {
        let cx = extract("k=a%FFb");
        assert_eq!(
            cx.baggage().get("k").map(|v| v.to_string()),
            Some("a\u{fffd}b".to_owned())
        );
        assert_eq!(inject(&cx).as_deref(), Some("k=a%EF%BF%BDb"));
    }

    #[test]
    fn repeated_headers_are_one_list() {
        struct Two;
        impl Extractor for Two {
            fn get(&self, _: &str) -> Option<&str> {
                Some("a=1")
            }
            fn keys(&self) -> Vec<&str> {
                vec![BAGGAGE]
            }
            fn get_all(&self, _: &str) -> Option<Vec<&str>> {
                Some(vec!["a=1", "b=2"])
            }
        }
        let cx = W3cBaggage::new().extract(&Two);
        assert_eq!(members(&cx).len(), 2);
    }

    #[test]
    fn what_is_read_is_passed_on_whole_within_8192_bytes() {
        // 60 members of 150 bytes as they came, each written out again
        // three times as long (a bare `%` is written `%25`): 150 bytes as
        // they came would allow all 60.
        let value = "%".repeat(146);
        let header: Vec<String> = (10..70).map(|i| format!("k{i}={value}")).collect();
        let cx = extract(&header.join(","));
        let kept = cx.baggage().len();
        assert!((10..60).contains(&kept), "{kept} members kept");
        let out = inject(&cx).expect("a header");
        assert!(out.len() <= MAX_BYTES, "{} bytes", out.len());
        assert_eq!(members(&extract(&out)), members(&cx));
        // The members read are the first ones, in order.
        assert!(cx.baggage().get("k10").is_some());
    }

    #[test]
    fn inject_leaves_out_members_past_8192_bytes() {
        let mut baggage = Baggage::new();
        for i in 0..60 {
            baggage.insert(format!("k{i}"), "ä".repeat(50));
        }
        let out = inject(&Context::new().with_baggage(baggage)).expect("a header");
        assert!(out.len() <= MAX_BYTES, "{} bytes", out.len());
        let sent = extract(&out).baggage().len();
        assert!((10..60).contains(&sent), "{sent} members sent");
    }

    #[test]
    fn values_the_application_sets_are_encoded_and_bad_properties_left_out() {
        let mut baggage = Baggage::new();
        baggage.insert_with_metadata("user", "ä, \"x\";%", "a b");
        let cx = Context::new().with_baggage(baggage);
        let out = inject(&cx).expect("a header");
        assert_eq!(out, "user=%C3%A4%2C%20%22x%22%3B%25");
        assert_eq!(
            extract(&out).baggage().get("user").map(|v| v.to_string()),
            Some("ä, \"x\";%".to_owned())
        );
    }
}
