//! The config as a user writes it: quotas as `"N/<duration>"` strings or
//! tables, errors that name the forms a value may take, and the shipped
//! JSON Schema that editors check a config with.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use battlement::rate_limit::{Quota, RateLimitConfig};
use battlement::stack::StackConfig;
use serde_json::Value;

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

/// The shipped schema, relative to the repository.
const SCHEMA: &str = "schema/battlement.schema.json";

/// The command that rewrites the shipped schema.
const UPDATE: &str = "UPDATE_SCHEMA=1 cargo test --all-features --test config_schema";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validator() -> jsonschema::Validator {
    let text = fs::read_to_string(repo().join(SCHEMA))
        .unwrap_or_else(|e| panic!("{SCHEMA}: {e}; write it with `{UPDATE}`"));
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn toml_to_json(text: &str) -> Value {
    let table: toml::Table = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    serde_json::to_value(table).unwrap()
}

/// Why `validator` rejects `config`, or `None` when it accepts it.
fn rejection(validator: &jsonschema::Validator, config: &Value) -> Option<String> {
    let errors: Vec<String> = validator
        .iter_errors(config)
        .map(|e| format!("at {}: {e}", e.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| errors.join("; "))
}

// The shipped schema is the one of a build with every backend.
#[cfg(all(feature = "redis", feature = "etcd"))]
#[test]
fn the_shipped_schema_is_the_one_the_code_generates() {
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&StackConfig::schema()).unwrap()
    );
    let path = repo().join(SCHEMA);
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, &generated).unwrap();
        return;
    }
    let shipped = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == generated,
        "{SCHEMA} is not the schema of this StackConfig; rewrite it with `{UPDATE}`"
    );
}

/// Every stack config in the repository: `*.toml` and `*.json` files
/// under `examples/` and `tests/`, and the raw strings (`r#"..."#`) of
/// the README, the examples, the tests and the docs that
/// `StackConfig` reads, each as the JSON value the schema checks, named by
/// where it was found.
fn configs_in_the_repository() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    let mut files = Vec::new();
    for dir in ["examples", "tests", "src"] {
        walk(&repo().join(dir), &mut files);
    }
    files.push(repo().join("README.md"));
    for path in files {
        let name = path.strip_prefix(repo()).unwrap().display().to_string();
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let text = fs::read_to_string(&path).unwrap();
        match extension {
            "toml" | "json" => {
                StackConfig::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
                let value = match extension {
                    "toml" => toml_to_json(&text),
                    _ => serde_json::from_str(&text).unwrap(),
                };
                found.push((name, value));
            }
            "rs" | "md" => {
                for (i, raw) in raw_strings(&text).into_iter().enumerate() {
                    if StackConfig::from_toml(&raw).is_ok() {
                        found.push((format!("{name}, raw string {i}"), toml_to_json(&raw)));
                    } else if raw.trim_start().starts_with('{')
                        && StackConfig::from_json(&raw).is_ok()
                    {
                        let value = serde_json::from_str(&raw).unwrap();
                        found.push((format!("{name}, raw string {i}"), value));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// The contents of the `r#"..."#` strings of a Rust or Markdown file, doc
/// comments' `///` and `//!` taken off first.
fn raw_strings(text: &str) -> Vec<String> {
    let source: String = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let doc = trimmed
                .strip_prefix("///")
                .or_else(|| trimmed.strip_prefix("//!"));
            match doc {
                Some(rest) => rest.strip_prefix(' ').unwrap_or(rest),
                None => line,
            }
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let mut strings = Vec::new();
    let mut rest = source.as_str();
    while let Some(start) = rest.find("r#\"") {
        let body = &rest[start + 3..];
        let Some(end) = body.find("\"#") else { break };
        strings.push(body[..end].to_owned());
        rest = &body[end + 2..];
    }
    strings
}

#[test]
fn every_config_in_the_repository_passes_the_schema() {
    let validator = validator();
    let configs = configs_in_the_repository();
    for (source, config) in &configs {
        if let Some(why) = rejection(&validator, config) {
            panic!("{source} is a StackConfig the schema rejects: {why}\n{config:#}");
        }
    }
    // The search finds the configs users copy.
    for source in [
        "README.md",
        "examples/full_stack/main.rs",
        "examples/battlement.toml",
    ] {
        assert!(
            configs.iter().any(|(found, _)| found.starts_with(source)),
            "no config found in {source}"
        );
    }
    assert!(configs.len() >= 10, "only {} configs found", configs.len());
    eprintln!("{} configs:", configs.len());
    for (source, _) in &configs {
        eprintln!("  {source}");
    }
}

/// Adds an unknown field to every table of `config` in turn.
fn with_an_unknown_field(config: &Value) -> Vec<(String, Value)> {
    fn tables(value: &Value, path: String, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                out.push(path.clone());
                for (key, value) in map {
                    tables(value, format!("{path}/{key}"), out);
                }
            }
            Value::Array(items) => {
                for (i, value) in items.iter().enumerate() {
                    tables(value, format!("{path}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut paths = Vec::new();
    tables(config, String::new(), &mut paths);
    paths
        .into_iter()
        .map(|path| {
            let mut mutated = config.clone();
            let table = mutated.pointer_mut(&path).unwrap().as_object_mut().unwrap();
            table.insert("surplus_field".into(), Value::from(1));
            (format!("{path}/surplus_field"), mutated)
        })
        .collect()
}

#[test]
fn the_schema_rejects_an_unknown_field_wherever_serde_does() {
    let validator = validator();
    let mut rejected = 0;
    for (source, config) in configs_in_the_repository() {
        for (field, mutated) in with_an_unknown_field(&config) {
            let serde = StackConfig::from_value(mutated.clone()).is_ok();
            let schema = rejection(&validator, &mutated);
            assert_eq!(
                serde,
                schema.is_none(),
                "{source} with {field}: serde {}, the schema {}",
                if serde { "accepts it" } else { "rejects it" },
                schema.as_deref().unwrap_or("accepts it"),
            );
            rejected += usize::from(!serde);
        }
    }
    assert!(rejected > 100, "only {rejected} unknown fields tried");
}

#[test]
fn the_schema_takes_every_form_serde_takes_and_no_other() {
    let validator = validator();
    for good in [
        policy_with("\"5/10s\""),
        policy_with("\"3/500ms\""),
        policy_with("\"100/s\""),
        policy_with("{ count = 5, period = \"10s\", burst = 2 }"),
        "trace = false\n[metrics]\nenabled = false".into(),
        "[client.breaker]\nopen_for = \"1h 30m\"\nwindow = { time = \"30s\" }".into(),
        "[client.retry]\nbackoff = { decorrelated = { base = \"50ms\", max = \"2s\" } }".into(),
        "[access_log]\nclient_errors = \"WARN\"".into(),
    ]
    .into_iter()
    .chain(cfg!(all(feature = "redis", feature = "etcd")).then(|| {
        [
            "[backend]\nkind = \"redis\"\nurls = [\"redis://127.0.0.1:6379\"]\ntimeout = \"20ms\"".into(),
            "[config_source]\netcd = { endpoints = [\"http://127.0.0.1:2379\"] }".into(),
        ]
    }).into_iter().flatten())
    {
        StackConfig::from_toml(&good).unwrap_or_else(|e| panic!("{good}: {e}"));
        if let Some(why) = rejection(&validator, &toml_to_json(&good)) {
            panic!("{good}: {why}");
        }
    }
    for bad in [
        policy_with("\"5 per 10s\""),
        policy_with("5"),
        policy_with("{ count = 5, perod = \"10s\" }"),
        policy_with("{ count = 0, period = \"10s\" }"),
        "[rate_limit]\nshadw = true".into(),
        "trace = \"yes\"".into(),
        "[backend]\nkind = \"mongodb\"".into(),
        "[backend]\nkind = \"redis\"".into(),
        "[access_log]\nclient_errors = \"loud\"".into(),
    ] {
        assert!(StackConfig::from_toml(&bad).is_err(), "{bad}");
        assert!(
            rejection(&validator, &toml_to_json(&bad)).is_some(),
            "{bad}"
        );
    }
}

#[test]
fn the_readme_tells_editors_where_the_schema_is() {
    let readme = fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("#:schema ./{SCHEMA}")),
        "README.md"
    );
    // A config file names the schema relative to itself.
    let example = fs::read_to_string(repo().join("examples/battlement.toml")).unwrap();
    assert!(example.starts_with(&format!("#:schema ../{SCHEMA}\n")));
}
