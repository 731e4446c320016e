//! Health checks: what one check is and what it reports.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// The health of a check or of a whole group, from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Pass,
    /// Healthy, with a concern (still 200 / SERVING).
    Warn,
    /// Unhealthy (503 / NOT_SERVING).
    Fail,
}

impl Status {
    /// `pass`, `warn` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// Which probe a check belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Group {
    /// `/livez`: is the process able to work at all? Failing restarts it.
    Liveness,
    /// `/readyz`: should it get traffic now? Dependencies go here.
    Readiness,
    /// `/startupz`: has it finished starting?
    Startup,
    /// A group of your own.
    Custom(Cow<'static, str>),
}

impl Group {
    /// `livez`, `readyz`, `startupz` or the custom name.
    pub fn name(&self) -> &str {
        match self {
            Self::Liveness => "livez",
            Self::Readiness => "readyz",
            Self::Startup => "startupz",
            Self::Custom(name) => name,
        }
    }
}

/// What one run of a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub(crate) status: Status,
    pub(crate) output: Option<String>,
    pub(crate) observed: Option<(Observed, Cow<'static, str>)>,
}

/// A check's `observedValue`: a measurement, or a state named in words.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Observed {
    Number(f64),
    Text(Cow<'static, str>),
}

impl Outcome {
    /// Healthy.
    pub fn pass() -> Self {
        Self::with(Status::Pass, None)
    }

    /// Healthy with a concern, explained in `output`.
    pub fn warn(output: impl Into<String>) -> Self {
        Self::with(Status::Warn, Some(output.into()))
    }

    /// Unhealthy, explained in `output`. The output is public (it is in
    /// the probe's answer): log the details of an error, not here.
    pub fn fail(output: impl Into<String>) -> Self {
        Self::with(Status::Fail, Some(output.into()))
    }

    fn with(status: Status, output: Option<String>) -> Self {
        Self {
            status,
            output,
            observed: None,
        }
    }

    /// Adds the measured value (`observedValue`, `observedUnit`).
    pub fn observed(mut self, value: f64, unit: impl Into<Cow<'static, str>>) -> Self {
        self.observed = Some((Observed::Number(value), unit.into()));
        self
    }

    /// Adds a state named in words as the observed value (`observedValue`
    /// a string, `observedUnit` saying what it names).
    pub fn observed_text(
        mut self,
        value: impl Into<Cow<'static, str>>,
        unit: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.observed = Some((Observed::Text(value.into()), unit.into()));
        self
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The explanation, if any.
    pub fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }
}

type RunFn = dyn Fn() -> BoxFuture<'static, Outcome> + Send + Sync;

/// A named health check.
///
/// ```
/// use std::time::Duration;
/// use battlement::health::{Check, Group, Outcome};
///
/// let disk = Check::new("disk", || async { Outcome::pass().observed(42.0, "%") })
///     .measurement("utilization")
///     .component_type("system")
///     .timeout(Duration::from_millis(200))
///     .cache_for(Duration::from_secs(5))
///     .groups([Group::Liveness, Group::Readiness]);
/// assert_eq!(disk.key(), "disk:utilization");
/// ```
#[derive(Clone)]
pub struct Check {
    pub(crate) name: Cow<'static, str>,
    pub(crate) measurement: Cow<'static, str>,
    pub(crate) component_type: Option<Cow<'static, str>>,
    pub(crate) timeout: Duration,
    pub(crate) cache_for: Option<Duration>,
    pub(crate) groups: Vec<Group>,
    pub(crate) run: Arc<RunFn>,
}

impl Check {
    /// Default time a check may take before it counts as failed.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

    /// A readiness check named `name` (the health+json component), run by
    /// calling `run`; 1 s timeout, results reused for the registry's cache
    /// period ([`HealthRegistry::cache_for`](super::HealthRegistry::cache_for)).
    pub fn new<F, Fut>(name: impl Into<Cow<'static, str>>, run: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        Self {
            name: name.into(),
            measurement: Cow::Borrowed("status"),
            component_type: None,
            timeout: Self::DEFAULT_TIMEOUT,
            cache_for: None,
            groups: vec![Group::Readiness],
            run: Arc::new(move || run().boxed()),
        }
    }

    /// The health+json measurement name (default `status`).
    pub fn measurement(mut self, measurement: impl Into<Cow<'static, str>>) -> Self {
        self.measurement = measurement.into();
        self
    }

    /// The health+json `componentType` (`datastore`, `system`, ...).
    pub fn component_type(mut self, kind: impl Into<Cow<'static, str>>) -> Self {
        self.component_type = Some(kind.into());
        self
    }

    /// Fails the check when a run takes longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Reuses a result for `ttl` instead of running the check again, in
    /// place of the registry's cache period; `Duration::ZERO` runs it on
    /// every probe (concurrent probes still share one run).
    pub fn cache_for(mut self, ttl: Duration) -> Self {
        self.cache_for = Some(ttl);
        self
    }

    /// The probes this check belongs to (default: readiness only).
    pub fn groups(mut self, groups: impl IntoIterator<Item = Group>) -> Self {
        self.groups = groups.into_iter().collect();
        self
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `component:measurement`, the key in a health+json `checks` object.
    pub fn key(&self) -> String {
        format!("{}:{}", self.name, self.measurement)
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("measurement", &self.measurement)
            .field("timeout", &self.timeout)
            .field("cache_for", &self.cache_for)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}
