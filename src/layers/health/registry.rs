//! `HealthRegistry`: the checks of a service, run per probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use super::check::{Check, Group, Outcome};
use super::report::{CheckReport, Report};
use crate::clock::{SharedClock, SystemClock};

/// The named checks of a service (SPEC HL-1), shared by the HTTP routes and
/// the gRPC health service. Clones share the checks.
///
/// ```
/// use battlement::health::{Check, Group, HealthRegistry, Outcome, Status};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let health = HealthRegistry::new();
/// health.register(Check::new("db", || async { Outcome::fail("connection refused") }));
/// assert_eq!(health.run(&Group::Liveness).await.status(), Status::Pass);
/// assert_eq!(health.run(&Group::Readiness).await.status(), Status::Fail);
/// # });
/// ```
#[derive(Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    checks: RwLock<Vec<Arc<Entry>>>,
    clock: SharedClock,
    draining: AtomicBool,
}

struct Entry {
    check: Check,
    cached: Mutex<Option<(Duration, CheckReport)>>,
}

impl HealthRegistry {
    /// A registry with no checks (every probe passes).
    pub fn new() -> Self {
        Self::with_clock(SystemClock::shared())
    }

    /// A registry whose result caching follows `clock`.
    pub fn with_clock(clock: SharedClock) -> Self {
        Self {
            inner: Arc::new(Inner {
                checks: RwLock::new(Vec::new()),
                clock,
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// Adds `check`, replacing any check with the same name.
    pub fn register(&self, check: Check) -> &Self {
        let entry = Arc::new(Entry {
            check,
            cached: Mutex::new(None),
        });
        if let Ok(mut checks) = self.inner.checks.write() {
            checks.retain(|e| e.check.name != entry.check.name);
            checks.push(entry);
        }
        self
    }

    /// Removes the check named `name`; true if there was one.
    pub fn deregister(&self, name: &str) -> bool {
        let Ok(mut checks) = self.inner.checks.write() else {
            return false;
        };
        let before = checks.len();
        checks.retain(|e| e.check.name != name);
        checks.len() != before
    }

    /// Starts draining for shutdown (SPEC HL-5): readiness fails from now
    /// on, so load balancers stop sending traffic, while liveness keeps
    /// passing so the process is not killed before it finishes.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Runs every check of `group` concurrently, each bounded by its
    /// timeout, and reports the worst status.
    pub async fn run(&self, group: &Group) -> Report {
        let entries: Vec<Arc<Entry>> = match self.inner.checks.read() {
            Ok(checks) => checks
                .iter()
                .filter(|e| e.check.groups.contains(group))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        let runs = entries.into_iter().map(|entry| {
            let clock = self.inner.clock.clone();
            tokio::spawn(async move { entry.report(&clock).await })
        });
        let mut checks = Vec::new();
        for joined in futures_util::future::join_all(runs).await {
            match joined {
                Ok(report) => checks.push(report),
                Err(err) => checks.push(CheckReport::panicked(err.to_string())),
            }
        }
        if *group == Group::Readiness && self.is_draining() {
            checks.push(CheckReport::draining());
        }
        Report::new(group.clone(), checks)
    }
}

impl Entry {
    async fn report(&self, clock: &SharedClock) -> CheckReport {
        let now = clock.now();
        if let Some(ttl) = self.check.cache_for
            && let Ok(cached) = self.cached.lock()
            && let Some((at, report)) = cached.as_ref()
            && now.saturating_sub(*at) < ttl
        {
            return report.clone();
        }
        let started = std::time::Instant::now();
        let timeout = self.check.timeout;
        let outcome = match tokio::time::timeout(timeout, (self.check.run)()).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::fail(format!("timed out after {timeout:?}")),
        };
        let report = CheckReport::new(&self.check, outcome, SystemTime::now(), started.elapsed());
        if self.check.cache_for.is_some()
            && let Ok(mut cached) = self.cached.lock()
        {
            *cached = Some((now, report.clone()));
        }
        report
    }
}

impl Default for HealthRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .inner
            .checks
            .read()
            .map(|c| c.iter().map(|e| e.check.name.to_string()).collect())
            .unwrap_or_default();
        f.debug_struct("HealthRegistry")
            .field("checks", &names)
            .field("draining", &self.is_draining())
            .finish()
    }
}
