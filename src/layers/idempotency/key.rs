//! The `Idempotency-Key` header: an RFC 9651 structured-field String of 1
//! to 255 characters (draft-ietf-httpapi-idempotency-key-header; SPEC ID-1).

use http::HeaderMap;

use super::error::Rejection;

/// The header name (gRPC metadata uses the same, lowercase).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// The key of a request: `Ok(None)` when there is none, a 400 rejection
/// when it is malformed.
pub(crate) fn parse(headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::BadKey("more than one Idempotency-Key header"));
    }
    let item: sfv::Item = sfv::Parser::new(value.as_bytes()).parse().map_err(|_| {
        Rejection::BadKey("Idempotency-Key must be a quoted structured-field string")
    })?;
    let Some(key) = item.bare_item.as_string() else {
        return Err(Rejection::BadKey(
            "Idempotency-Key must be a quoted structured-field string",
        ));
    };
    let key = key.as_str();
    if key.is_empty() || key.chars().count() > MAX_KEY_LEN {
        return Err(Rejection::BadKey(
            "Idempotency-Key must be 1 to 255 characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn key(value: &str) -> Result<Option<String>, Rejection> {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_str(value).unwrap());
        parse(&headers)
    }

    // SPEC ID-1
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
        assert_eq!(parse(&HeaderMap::new()).unwrap(), None);
    }
}
