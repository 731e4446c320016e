//! Probe results and their `application/health+json` / text renderings.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::check::{Check, Group, Observed, Outcome, Status};

/// The result of one check in one probe run.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    name: String,
    /// `component:measurement`, the key in health+json `checks`.
    key: String,
    component_type: Option<String>,
    outcome: Outcome,
    time: SystemTime,
    took: Duration,
}

impl CheckReport {
    pub(crate) fn new(check: &Check, outcome: Outcome, time: SystemTime, took: Duration) -> Self {
        Self {
            name: check.name.to_string(),
            key: check.key(),
            component_type: check.component_type.as_ref().map(ToString::to_string),
            outcome,
            time,
            took,
        }
    }

    fn synthetic(name: &str, outcome: Outcome) -> Self {
        Self {
            name: name.to_owned(),
            key: format!("{name}:status"),
            component_type: Some("system".to_owned()),
            outcome,
            time: SystemTime::now(),
            took: Duration::ZERO,
        }
    }

    pub(crate) fn draining() -> Self {
        Self::synthetic("shutdown", Outcome::fail("draining for shutdown"))
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.outcome.status
    }

    /// The explanation, if any.
    pub fn output(&self) -> Option<&str> {
        self.outcome.output()
    }

    /// How long the check took.
    pub fn took(&self) -> Duration {
        self.took
    }
}

/// The result of one probe: every check of a group.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    group: Group,
    status: Status,
    checks: Vec<CheckReport>,
}

impl Report {
    pub(crate) fn new(group: Group, mut checks: Vec<CheckReport>) -> Self {
        checks.sort_by(|a, b| a.name.cmp(&b.name));
        let status = checks
            .iter()
            .map(CheckReport::status)
            .max()
            .unwrap_or(Status::Pass);
        Self {
            group,
            status,
            checks,
        }
    }

    /// The worst status of all checks (`pass` when there are none).
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the probe passes (pass or warn).
    pub fn is_healthy(&self) -> bool {
        self.status != Status::Fail
    }

    /// The checks, sorted by name.
    pub fn checks(&self) -> &[CheckReport] {
        &self.checks
    }

    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&CheckReport> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The `application/health+json` document
    /// (draft-inadarei-api-health-check): checks keyed
    /// `component:measurement`.
    pub fn to_health_json(&self) -> Value {
        let mut checks = Map::new();
        for c in &self.checks {
            let mut entry = Map::new();
            entry.insert("componentId".into(), c.name.clone().into());
            if let Some(kind) = &c.component_type {
                entry.insert("componentType".into(), kind.clone().into());
            }
            if let Some((value, unit)) = &c.outcome.observed {
                let value = match value {
                    Observed::Number(n) => json!(n),
                    Observed::Text(text) => json!(text),
                };
                entry.insert("observedValue".into(), value);
                entry.insert("observedUnit".into(), unit.to_string().into());
            }
            entry.insert("status".into(), c.status().as_str().into());
            entry.insert(
                "time".into(),
                humantime::format_rfc3339_millis(c.time).to_string().into(),
            );
            if let Some(output) = c.output() {
                entry.insert("output".into(), output.into());
            }
            if let Value::Array(list) = checks
                .entry(c.key.clone())
                .or_insert_with(|| Value::Array(Vec::new()))
            {
                list.push(Value::Object(entry));
            }
        }
        json!({
            "status": self.status.as_str(),
            "description": format!("{} probe", self.group.name()),
            "checks": checks,
        })
    }

    /// One line per check, Kubernetes style, then the verdict.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let (mark, word) = match c.status() {
                Status::Pass => ('+', "ok"),
                Status::Warn => ('+', "warn"),
                Status::Fail => ('-', "failed"),
            };
            let _ = write!(out, "[{mark}]{} {word}", c.name);
            if let Some(output) = c.output() {
                let _ = write!(out, ": {}", output.replace(['\r', '\n'], " "));
            }
            out.push('\n');
        }
        let verdict = if self.status == Status::Fail {
            "failed"
        } else {
            "passed"
        };
        let _ = writeln!(out, "{} check {verdict}", self.group.name());
        out
    }
}
