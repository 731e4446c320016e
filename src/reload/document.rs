//! The typed documents: where they live under a source's prefix and how
//! they are read and validated.

use serde_json::{Map, Value};

use crate::circuit_breaker::BreakerConfig;
use crate::rate_limit::{Quota, SyncMode};

/// Documents under `rate_limit/<policy name>` are [`Quota`]s, as a string
/// (`"50/1m"`) or a table, the table with an optional `"mode"`
/// ([`SyncMode`]: `"exact"` or `"leased"`).
pub const RATE_LIMIT: &str = "rate_limit/";

/// Documents under `circuit_breaker/<breaker name>` are [`BreakerConfig`]
/// fields laid over the breaker's built-in config.
pub const CIRCUIT_BREAKER: &str = "circuit_breaker/";

/// Reads a quota document as [`Quota`]'s serde form reads a quota
/// everywhere: a string `"50/1m"` (burst: the count) or a table
/// `{"count": 50, "period": "1m", "burst": 10}` (burst defaults to count),
/// validated as [`Quota::new`] and [`Quota::with_burst`] do; and its sync
/// mode, which a table may name (`"mode": "leased"`; none: the policy's
/// built-in mode).
pub(crate) fn quota(document: &[u8]) -> Result<(Quota, Option<SyncMode>), String> {
    let mut document: Value = serde_json::from_slice(document).map_err(|e| e.to_string())?;
    let mode = match &mut document {
        Value::Object(fields) => fields
            .remove("mode")
            .map(serde_json::from_value::<SyncMode>)
            .transpose()
            .map_err(|e| format!("mode: {e}"))?,
        _ => None,
    };
    let quota = serde_json::from_value(document).map_err(|e| e.to_string())?;
    Ok((quota, mode))
}

/// Reads a breaker document: a JSON object of [`BreakerConfig`] fields,
/// each replacing the built-in value (`{"failure_rate": 25, "open_for":
/// "10s"}`); unknown fields are errors; the result is validated as the
/// layer constructor does.
pub(crate) fn breaker(document: &[u8], built_in: &BreakerConfig) -> Result<BreakerConfig, String> {
    let fields: Map<String, Value> =
        serde_json::from_slice(document).map_err(|e| format!("not a JSON object: {e}"))?;
    let mut merged = match serde_json::to_value(built_in) {
        Ok(Value::Object(map)) => map,
        Ok(_) | Err(_) => return Err("the built-in breaker config is not an object".into()),
    };
    merged.extend(fields);
    let config: BreakerConfig =
        serde_json::from_value(Value::Object(merged)).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn quota_documents_are_validated() {
        let (q, mode) = quota(br#"{"count": 50, "period": "1m", "burst": 10}"#).unwrap();
        assert_eq!(
            (q.count(), q.period(), q.burst()),
            (50, Duration::from_secs(60), 10)
        );
        assert_eq!(mode, None);
        let (_, mode) = quota(br#"{"count": 5, "period": "1s", "mode": "leased"}"#).unwrap();
        assert_eq!(mode, Some(SyncMode::Leased));
        assert!(quota(br#"{"count": 5, "period": "1s", "mode": "fast"}"#).is_err());
        for bad in [
            &br#"{"count": 0, "period": "1s"}"#[..],
            br#"{"count": 5}"#,
            br#"{"count": 5, "period": "1s", "bust": 2}"#,
            br#"not json"#,
        ] {
            assert!(quota(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn quota_documents_take_every_form_a_quota_takes() {
        for (document, period) in [
            (&br#""50/1m""#[..], Duration::from_secs(60)),
            (br#""50/m""#, Duration::from_secs(60)),
            (br#"" 50 / 10s ""#, Duration::from_secs(10)),
            (br#""50/500ms""#, Duration::from_millis(500)),
        ] {
            let (q, mode) = quota(document).unwrap();
            assert_eq!((q, mode), (Quota::new(50, period).unwrap(), None));
            assert_eq!(q.burst(), 50);
        }
        // Errors are Quota's own, naming the forms.
        for (bad, error) in [
            (&br#""50 per minute""#[..], "expected \"N/<duration>\""),
            (br#""0/s""#, "at least 1"),
            (br#"50"#, "a table { count, period }"),
        ] {
            let e = quota(bad).unwrap_err();
            assert!(e.contains(error), "{}: {e}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn breaker_documents_override_the_built_in_fields() {
        let built_in = BreakerConfig::default().minimum_calls(8);
        let config = breaker(br#"{"failure_rate": 25, "open_for": "10s"}"#, &built_in).unwrap();
        assert_eq!(
            config,
            built_in
                .clone()
                .failure_rate(25.0)
                .open_for(Duration::from_secs(10))
        );
        let typo = breaker(br#"{"failure_rat": 25}"#, &built_in).unwrap_err();
        assert!(typo.contains("failure_rat"), "{typo}");
        let invalid = breaker(br#"{"failure_rate": 0}"#, &built_in).unwrap_err();
        assert!(invalid.contains("failure_rate"), "{invalid}");
        assert!(breaker(b"[1]", &built_in).is_err());
    }
}
