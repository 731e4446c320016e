//! The config as a user writes it: quotas as `"N/<duration>"` strings or
//! tables, errors that name the forms a value may take, and the shipped
//! JSON Schema that editors check a config with.

use std::time::Duration;

use battlement::rate_limit::{Quota, RateLimitConfig};
use battlement::stack::StackConfig;

/// The quota of the first rate-limit policy of `toml`.
fn quota_of(toml: &str) -> Quota {
    let config = StackConfig::from_toml(toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
    config.rate_limit.expect("a [rate_limit] section").policies[0].quota
}

fn policy_with(quota: &str) -> String {
    format!("[[rate_limit.policies]]\nname = \"p\"\nquota = {quota}\n")
}

#[test]
fn quota_strings_are_read_wherever_a_quota_is() {
    for (text, count, period) in [
        ("100/s", 100, Duration::from_secs(1)),
        ("5/10s", 5, Duration::from_secs(10)),
        ("1000/1m", 1000, Duration::from_secs(60)),
        ("3/500ms", 3, Duration::from_millis(500)),
        ("50/m", 50, Duration::from_secs(60)),
        ("2/h", 2, Duration::from_secs(3600)),
        (" 7 / 1h 30m ", 7, Duration::from_secs(5400)),
    ] {
        let expected = Quota::new(count, period).unwrap();
        // The `RATE_LIMIT=...` form of the examples.
        assert_eq!(text.parse::<Quota>().unwrap(), expected, "{text}");
        // A stack config, TOML and JSON.
        assert_eq!(quota_of(&policy_with(&format!("{text:?}"))), expected);
        let json =
            format!(r#"{{"rate_limit": {{"policies": [{{"name": "p", "quota": {text:?}}}]}}}}"#);
        let config = StackConfig::from_json(&json).unwrap();
        assert_eq!(config.rate_limit.unwrap().policies[0].quota, expected);
        // The client preset's quota and a bare RateLimitConfig.
        let client = StackConfig::from_toml(&format!(
            "[client.rate_limit]\nname = \"c\"\nquota = {text:?}"
        ))
        .unwrap();
        assert_eq!(client.client.rate_limit.unwrap().quota, expected);
        let bare: RateLimitConfig =
            toml::from_str(&format!("[[policies]]\nname = \"p\"\nquota = {text:?}")).unwrap();
        assert_eq!(bare.policies[0].quota, expected);
    }
    // The string's burst is its count; a table sets another.
    assert_eq!(quota_of(&policy_with("\"5/10s\"")).burst(), 5);
    let table = quota_of(&policy_with("{ count = 5, period = \"10s\", burst = 2 }"));
    assert_eq!(
        table,
        Quota::new(5, Duration::from_secs(10))
            .unwrap()
            .with_burst(2)
            .unwrap()
    );
    // The table form still reads, and a quota survives a round trip.
    let json = serde_json::to_string(&table).unwrap();
    assert_eq!(serde_json::from_str::<Quota>(&json).unwrap(), table);
}

#[test]
fn a_bad_quota_is_an_error_naming_the_forms_it_may_take() {
    let string = r#"expected "N/<duration>" such as "100/s", "5/10s" or "3/500ms""#;
    for (quota, field, message) in [
        ("\"5 per 10s\"", "quota", format!(r#"invalid quota "5 per 10s": {string}"#)),
        ("\"5/10 parsecs\"", "quota", format!(r#"invalid quota "5/10 parsecs": {string}"#)),
        ("\"0/s\"", "quota", r#"invalid quota "0/s": rate limit count must be at least 1"#.into()),
        (
            "5",
            "quota",
            r#"invalid type: integer `5`, expected a quota: "N/<duration>" such as "5/10s", or a table { count, period }"#.into(),
        ),
        (
            "{ count = 5, perod = \"10s\" }",
            "quota.perod",
            "invalid quota: unknown field `perod`, expected one of `count`, `period`, `burst`".into(),
        ),
        ("{ count = 5 }", "quota", "invalid quota: missing field `period`".into()),
        (
            "{ count = 5, period = \"10s\", burst = 0 }",
            "quota",
            "invalid quota: rate limit burst must be at least 1".into(),
        ),
    ] {
        let err = StackConfig::from_toml(&policy_with(quota)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid configuration: stack config at `rate_limit.policies[0].{field}`: {message}"),
            "{quota}"
        );
    }
    // The parser behind `RATE_LIMIT=...` says the same.
    assert_eq!(
        "5 per 10s".parse::<Quota>().unwrap_err().to_string(),
        r#"invalid configuration: invalid quota "5 per 10s": expected "N/<duration>" such as "100/s", "5/10s" or "3/500ms""#
    );
}
