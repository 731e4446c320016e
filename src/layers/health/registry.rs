//! `HealthRegistry`: the checks of a service, run per probe.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;

use super::check::{Check, Group, Outcome};
use super::report::{CheckReport, Report};
use crate::clock::{SharedClock, SystemClock};

/// The named checks of a service, shared by the HTTP routes and
/// the gRPC health service. Clones share the checks and the settings.
///
/// Each check's result is reused for a short period
/// ([`cache_for`](Self::cache_for), 1 s by default) and concurrent probes
/// share one run of a check, so a burst of `/readyz` requests and any
/// number of gRPC `Watch` streams run each check at most once per period.
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
    /// The default cache period, in nanoseconds.
    cache_for: AtomicU64,
}

struct Entry {
    check: Check,
    /// The last result and when it arrived. The lock is held during a run,
    /// so callers that come meanwhile wait for that run instead of starting
    /// their own (single flight).
    last: tokio::sync::Mutex<Option<(Duration, CheckReport)>>,
    /// How many runs have finished; a caller that sees it move while it
    /// waited for the lock takes that run's result, fresh or not.
    runs: AtomicU64,
}

impl HealthRegistry {
    /// How long a check's result is reused by default.
    pub const DEFAULT_CACHE_FOR: Duration = Duration::from_secs(1);

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
                cache_for: AtomicU64::new(nanos(Self::DEFAULT_CACHE_FOR)),
            }),
        }
    }

    /// Reuses each check's result for `ttl` (default 1 s) unless the check
    /// sets its own [`Check::cache_for`]. `Duration::ZERO` runs the checks
    /// on every probe; concurrent probes still share one run.
    ///
    /// ```
    /// use std::time::Duration;
    /// use battlement::health::HealthRegistry;
    ///
    /// let health = HealthRegistry::new().cache_for(Duration::from_secs(5));
    /// assert_eq!(health.cache_period(), Duration::from_secs(5));
    /// ```
    pub fn cache_for(self, ttl: Duration) -> Self {
        self.inner.cache_for.store(nanos(ttl), Ordering::Relaxed);
        self
    }

    /// The default cache period (see [`cache_for`](Self::cache_for)).
    pub fn cache_period(&self) -> Duration {
        Duration::from_nanos(self.inner.cache_for.load(Ordering::Relaxed))
    }

    /// Adds `check`, replacing any check with the same key
    /// (`name:measurement`): one component may have several measurements.
    pub fn register(&self, check: Check) -> &Self {
        let entry = Arc::new(Entry {
            check,
            last: tokio::sync::Mutex::new(None),
            runs: AtomicU64::new(0),
        });
        if let Ok(mut checks) = self.inner.checks.write() {
            let key = entry.check.key();
            checks.retain(|e| e.check.key() != key);
            checks.push(entry);
        }
        self
    }

    /// Removes the checks named `name` (every measurement); true if there
    /// was one.
    pub fn deregister(&self, name: &str) -> bool {
        let Ok(mut checks) = self.inner.checks.write() else {
            return false;
        };
        let before = checks.len();
        checks.retain(|e| e.check.name != name);
        checks.len() != before
    }

    /// Starts draining for shutdown: readiness fails from now
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
    /// timeout, and reports the worst status. A check whose result is
    /// younger than its cache period, or that is running for another
    /// probe, is not run again.
    pub async fn run(&self, group: &Group) -> Report {
        let entries: Vec<Arc<Entry>> = match self.inner.checks.read() {
            Ok(checks) => checks
                .iter()
                .filter(|e| e.check.groups.contains(group))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        };
        let default_ttl = self.cache_period();
        // Each check runs in its own task, so a probe that is dropped (a
        // client that hangs up) does not cancel a run others wait for.
        let runs = entries.into_iter().map(|entry| {
            let clock = self.inner.clock.clone();
            let task = tokio::spawn({
                let entry = entry.clone();
                async move { entry.report(&clock, default_ttl).await }
            });
            task.map(move |joined| {
                joined.unwrap_or_else(|err| {
                    tracing::warn!(
                        check = %entry.check.name,
                        error = %err,
                        "health check did not finish"
                    );
                    CheckReport::new(
                        &entry.check,
                        Outcome::fail("did not finish"),
                        SystemTime::now(),
                        Duration::ZERO,
                    )
                })
            })
        });
        let mut checks = futures_util::future::join_all(runs).await;
        if *group == Group::Readiness && self.is_draining() {
            checks.push(CheckReport::draining());
        }
        Report::new(group.clone(), checks)
    }
}

fn nanos(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)
}

impl Entry {
    /// The cached result if it is fresh, else the result of a run: this
    /// caller's own, or the one it waited for.
    async fn report(&self, clock: &SharedClock, default_ttl: Duration) -> CheckReport {
        let ttl = self.check.cache_for.unwrap_or(default_ttl);
        let seen = self.runs.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        if let Some((at, report)) = last.as_ref()
            && (self.runs.load(Ordering::Acquire) != seen || clock.now().saturating_sub(*at) < ttl)
        {
            return report.clone();
        }
        let report = self.run_once().await;
        *last = Some((clock.now(), report.clone()));
        self.runs.fetch_add(1, Ordering::Release);
        report
    }

    /// One run, bounded by the timeout; a panic fails the check (its
    /// message goes to the log, not to the probe's answer).
    async fn run_once(&self) -> CheckReport {
        let started = Instant::now();
        let timeout = self.check.timeout;
        let run = AssertUnwindSafe(async { (self.check.run)().await }).catch_unwind();
        let outcome = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(panic)) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::warn!(
                    check = %self.check.name,
                    panic = %message,
                    "health check panicked"
                );
                Outcome::fail("check panicked")
            }
            Err(_) => Outcome::fail(format!("timed out after {timeout:?}")),
        };
        CheckReport::new(&self.check, outcome, SystemTime::now(), started.elapsed())
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
