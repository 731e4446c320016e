//! What the JSON Schema of the stack config needs beyond the derives on
//! the config types: the schema of a `tracing` level, and the transform
//! that turns rustdoc into plain descriptions. The tests below check that
//! every config type's schema names the fields and variants its serde
//! form reads.
//!
//! Durations are strings ("10s", "1h 30m": `humantime`); fields with a
//! default are optional, and their schemas carry the default where the
//! type can be serialized.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// Turns a description taken from rustdoc into plain text for an editor's
/// hover: the paragraphs before the first heading (the sections after it
/// are the reference's), no code examples, links shown as their text, one
/// line per paragraph.
pub(super) fn plain_description(schema: &mut Schema) {
    if let Some(serde_json::Value::String(text)) = schema.get_mut("description") {
        *text = plain(text);
    }
}

fn plain(rustdoc: &str) -> String {
    let mut paragraphs: Vec<String> = vec![String::new()];
    let mut in_code = false;
    for line in rustdoc.lines().map(str::trim) {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if in_code {
        } else if line.starts_with('#') {
            break;
        } else if line.is_empty() {
            paragraphs.push(String::new());
        } else if let Some(last) = paragraphs.last_mut() {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(line);
        }
    }
    paragraphs.retain(|p| !p.is_empty());
    let paragraphs: Vec<String> = paragraphs.iter().map(|p| unlinked(p)).collect();
    paragraphs.join("\n\n")
}

/// Links as their text: `[text](target)` as `text`, `[`text`]` as
/// `` `text` ``; other brackets stay.
fn unlinked(paragraph: &str) -> String {
    let mut out = String::with_capacity(paragraph.len());
    let mut rest = paragraph;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let Some(end) = rest.find(']') else {
            break;
        };
        let text = &rest[1..end];
        let after = &rest[end + 1..];
        let target = after
            .strip_prefix('(')
            .and_then(|t| t.find(')').map(|close| &t[close + 1..]));
        if let Some(after_target) = target {
            out.push_str(text);
            rest = after_target;
        } else if text.len() > 1 && text.starts_with('`') && text.ends_with('`') {
            out.push_str(text);
            rest = after;
        } else {
            out.push('[');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A `tracing` level by name, any case (or 1 for error to 5 for trace).
pub(super) struct Level;

impl JsonSchema for Level {
    fn schema_name() -> Cow<'static, str> {
        "Level".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A log level: \"error\", \"warn\", \"info\", \"debug\" or \"trace\" (any case).",
            "anyOf": [
                { "enum": ["error", "warn", "info", "debug", "trace"] },
                {
                    "type": "string",
                    "pattern": "^([Ee][Rr][Rr][Oo][Rr]|[Ww][Aa][Rr][Nn]|[Ii][Nn][Ff][Oo]|[Dd][Ee][Bb][Uu][Gg]|[Tt][Rr][Aa][Cc][Ee]|[1-5])$"
                }
            ]
        })
    }
}

#[cfg(test)]
mod tests;
