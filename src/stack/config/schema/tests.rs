//! Each config type's schema names the fields and variants its serde form
//! reads: the names serde expects are read from its "unknown field" and
//! "unknown variant" errors.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::*;
use crate::backends::BackendConfig;
use crate::concurrency_limit::{ConcurrencyLimitConfig, GradientConfig, LimitConfig};
use crate::error::FailurePolicy;
use crate::hedge::{HedgeConfig, HedgeDelay};
use crate::idempotency::{IdempotencyConfig, ScopeConfig};
use crate::rate_limit::SyncMode;
use crate::retry::{Backoff, Budget, RetryPolicy};

type Names = BTreeSet<String>;

/// The names serde lists after "expected" when `T` reads `document`.
fn serde_names<T: DeserializeOwned>(document: Value) -> Names {
    let Err(e) = serde_json::from_value::<T>(document.clone()) else {
        panic!("{document} was read");
    };
    let e = e.to_string();
    if e.ends_with("there are no fields") {
        return Names::new();
    }
    let listed = e
        .split_once("expected")
        .unwrap_or_else(|| panic!("{document}: {e}"))
        .1;
    listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

fn schema_of<T: JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap()
}

fn keys(properties: &Value) -> Names {
    properties
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// An enum's variants in its schema, each with its content's schema:
/// under `tag` for an internally tagged enum, else externally tagged.
fn variants(schema: &Value, tag: Option<&str>) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for variant in schema["oneOf"].as_array().expect("oneOf") {
        if let Some(names) = variant["enum"].as_array() {
            found.extend(
                names
                    .iter()
                    .map(|n| (n.as_str().unwrap().to_owned(), Value::Null)),
            );
        } else if let Some(name) = variant["const"].as_str() {
            found.push((name.to_owned(), Value::Null));
        } else if let Some(tag) = tag {
            let name = variant["properties"][tag]["const"]
                .as_str()
                .unwrap()
                .to_owned();
            let mut content = variant.clone();
            content["properties"].as_object_mut().unwrap().remove(tag);
            found.push((name, content));
        } else {
            let name = variant["required"][0].as_str().unwrap().to_owned();
            found.push((name.clone(), variant["properties"][&name].clone()));
        }
    }
    found
}

fn structs_match<T: DeserializeOwned + JsonSchema>() {
    let schema = schema_of::<T>();
    assert_eq!(
        keys(&schema["properties"]),
        serde_names::<T>(json!({ "surplus": 1 })),
        "{}",
        T::schema_name()
    );
    assert_eq!(
        schema["additionalProperties"],
        false,
        "{}",
        T::schema_name()
    );
}

/// The variants of `T`, and the fields of each struct variant, as serde
/// reads them (`unknown` names a variant that is not one).
fn enums_match<T: DeserializeOwned + JsonSchema>(tag: Option<&str>, unknown: Value) {
    let schema = schema_of::<T>();
    let variants = variants(&schema, tag);
    let names: Names = variants.iter().map(|(name, _)| name.clone()).collect();
    assert_eq!(names, serde_names::<T>(unknown), "{}", T::schema_name());
    for (name, content) in variants {
        if content.is_null() || content.get("$ref").is_some() {
            continue; // a unit variant, or a type checked on its own
        }
        let document = match tag {
            Some(tag) => json!({ tag: name, "surplus": 1 }),
            None => json!({ &name: { "surplus": 1 } }),
        };
        if serde_json::from_value::<T>(document.clone()).is_ok() {
            // serde takes any field beside the tag of a unit variant
            assert_ne!(content["additionalProperties"], false, "{name}");
        } else {
            assert_eq!(
                keys(&content["properties"]),
                serde_names::<T>(document),
                "{name}"
            );
        }
    }
}

#[test]
fn every_schema_names_the_fields_and_variants_serde_reads() {
    structs_match::<crate::backends::MemoryConfig>();
    #[cfg(feature = "redis")]
    structs_match::<crate::backends::RedisConfig>();
    #[cfg(feature = "etcd")]
    structs_match::<crate::backends::EtcdConfig>();
    structs_match::<RetryPolicy>();
    structs_match::<Budget>();
    structs_match::<HedgeConfig>();
    structs_match::<IdempotencyConfig>();
    structs_match::<ConcurrencyLimitConfig>();
    structs_match::<GradientConfig>();
    structs_match::<super::super::StackConfig>();
    structs_match::<super::super::ClientSettings>();
    structs_match::<super::super::HealthSettings>();
    structs_match::<super::super::AccessLogSettings>();
    structs_match::<super::super::ServerBreakerSettings>();
    structs_match::<super::super::ConfigSourceSettings>();
    structs_match::<crate::rate_limit::RateLimitConfig>();
    structs_match::<crate::rate_limit::PolicyConfig>();
    structs_match::<crate::circuit_breaker::BreakerConfig>();
    structs_match::<crate::deadline::DeadlineConfig>();
    structs_match::<crate::deadline::RouteDeadline>();

    enums_match::<FailurePolicy>(None, json!("surplus"));
    enums_match::<SyncMode>(None, json!("surplus"));
    enums_match::<Backoff>(None, json!({ "surplus": 1 }));
    enums_match::<HedgeDelay>(None, json!({ "surplus": 1 }));
    enums_match::<LimitConfig>(None, json!({ "surplus": 1 }));
    enums_match::<ScopeConfig>(Some("by"), json!({ "by": "surplus" }));
    enums_match::<crate::rate_limit::KeyConfig>(Some("by"), json!({ "by": "surplus" }));
    enums_match::<crate::circuit_breaker::Window>(None, json!({ "surplus": 1 }));
    enums_match::<crate::deadline::MalformedGrpcTimeout>(None, json!("surplus"));
}

#[test]
fn every_backend_kind_is_described_whatever_the_features() {
    let schema = schema_of::<BackendConfig>();
    let kinds: Names = variants(&schema, Some("kind"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        kinds,
        serde_names::<BackendConfig>(json!({ "kind": "surplus" }))
    );
    assert_eq!(kinds, ["etcd", "memory", "redis"].map(String::from).into());
}

#[test]
fn descriptions_are_plain_text() {
    let rustdoc = "Reads a [`Quota`], as\n[`RateLimitLayer::from_config`](crate::X) does.\n\n```\n# use x;\nlet x = 1;\n```\nSee [`Switch`] and [the\nguide](crate#guide), in `[0, max]`.\n\n# Details\n\n| field | value |";
    assert_eq!(
        plain(rustdoc),
        "Reads a `Quota`, as `RateLimitLayer::from_config` does.\n\nSee `Switch` and the guide, in `[0, max]`."
    );
}

#[test]
fn the_schema_refuses_a_backend_this_build_leaves_out_as_serde_does() {
    let schema = serde_json::to_value(super::super::StackConfig::schema()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let redis = json!({ "kind": "redis", "urls": ["redis://127.0.0.1:6379"] });
    let etcd = json!({ "endpoints": ["http://127.0.0.1:2379"] });
    for (document, built) in [
        (json!({ "backend": redis }), cfg!(feature = "redis")),
        (
            json!({ "backend": { "kind": "etcd", "endpoints": etcd["endpoints"] } }),
            cfg!(feature = "etcd"),
        ),
        (
            json!({ "config_source": { "etcd": etcd } }),
            cfg!(feature = "etcd"),
        ),
    ] {
        let serde = super::super::StackConfig::from_value(document.clone()).is_ok();
        assert_eq!(serde, built, "{document}");
        assert_eq!(validator.is_valid(&document), built, "{document}");
    }
}
