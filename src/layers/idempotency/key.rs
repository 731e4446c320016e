//! The `Idempotency-Key` header: an RFC 9651 structured-field String of 1
//! to 255 characters (draft-ietf-httpapi-idempotency-key-header), or a bare
//! token as clients of Stripe-style APIs send it.

use http::HeaderMap;

use super::error::Rejection;

/// The header name (gRPC metadata uses the same, lowercase).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// The key of a request: `Ok(None)` when there is none, a 400 rejection
/// when it is malformed. A key is the draft's quoted structured-field
/// string (`"8e03978e-…"`) or, unless `strict`, a bare token as Stripe's
/// clients send it (`8e03978e-…`): 1 to 255 visible ASCII characters with
/// no quote, comma or backslash.
pub(crate) fn parse(headers: &HeaderMap, strict: bool) -> Result<Option<String>, Rejection> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::BadKey("more than one Idempotency-Key header"));
    }
    let quoted = value.as_bytes().first() == Some(&b'"');
    if !strict && !quoted {
        return bare(value.as_bytes()).map(Some);
    }
    let item: sfv::Item = sfv::Parser::new(value.as_bytes())
        .parse()
        .map_err(|_| Rejection::BadKey(MALFORMED))?;
    let Some(key) = item.bare_item.as_string() else {
        return Err(Rejection::BadKey(MALFORMED));
    };
    let key = key.as_str();
    if key.is_empty() || key.chars().count() > MAX_KEY_LEN {
        return Err(Rejection::BadKey(LENGTH));
    }
    Ok(Some(key.to_owned()))
}

const MALFORMED: &str = "Idempotency-Key must be a quoted structured-field string";
const LENGTH: &str = "Idempotency-Key must be 1 to 255 characters";

/// A bare token key.
fn bare(value: &[u8]) -> Result<String, Rejection> {
    if value.is_empty() || value.len() > MAX_KEY_LEN {
        return Err(Rejection::BadKey(LENGTH));
    }
    let token = value
        .iter()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b'\\'));
    if !token {
        return Err(Rejection::BadKey(
            "Idempotency-Key must be a token or a quoted structured-field string",
        ));
    }
    // Visible ASCII only, so one byte per character.
    Ok(String::from_utf8_lossy(value).into_owned())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn key(value: &str) -> Result<Option<String>, Rejection> {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(value).unwrap());
        parse(&headers, true)
    }

    fn lenient(value: &str) -> Result<Option<String>, Rejection> {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(value).unwrap());
        parse(&headers, false)
    }

    // Stripe-style bare keys are accepted unless strict; quoted ones mean
    // the same either way.
    #[test]
    fn bare_tokens_are_keys_unless_strict() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(lenient(uuid).unwrap().as_deref(), Some(uuid));
        assert_eq!(
            lenient(&format!("\"{uuid}\"")).unwrap().as_deref(),
            Some(uuid)
        );
        assert_eq!(lenient("42").unwrap().as_deref(), Some("42"));
        assert_eq!(lenient(&"k".repeat(255)).unwrap().unwrap().len(), 255);
        for bad in [&"k".repeat(256), "a b", "a,b", "\"unterminated", "a\"b"] {
            assert!(matches!(lenient(bad), Err(Rejection::BadKey(_))), "{bad}");
        }
        assert!(matches!(key(uuid), Err(Rejection::BadKey(_))), "strict");
    }

    #[test]
    fn keys_are_structured_field_strings_of_1_to_255_chars() {
        assert_eq!(
            key(r#""8e03978e-40d5-43e8-bc93-6894a57f9324""#)
                .unwrap()
                .as_deref(),
            Some("8e03978e-40d5-43e8-bc93-6894a57f9324")
        );
        assert_eq!(
            key(r#""a \"quoted\" key""#).unwrap().as_deref(),
            Some(r#"a "quoted" key"#)
        );
        assert_eq!(
            key(&format!("\"{}\"", "k".repeat(255)))
                .unwrap()
                .unwrap()
                .len(),
            255
        );
        for bad in [
            "\"\"",
            &format!("\"{}\"", "k".repeat(256)),
            "unquoted-token",
            "42",
            "\"unterminated",
            "\"a\", \"b\"",
        ] {
            assert!(matches!(key(bad), Err(Rejection::BadKey(_))), "{bad}");
        }
        assert_eq!(parse(&HeaderMap::new(), true).unwrap(), None);
    }
}
