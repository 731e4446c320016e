//! Built-in checks for the backends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::check::{Check, Outcome};
use crate::backends::Backend;
use crate::error::StoreError;
use crate::events::WarnLimiter;

/// A readiness check named after the backend (`redis`, `etcd`, `memory`)
/// that pings it and reports the round trip in `responseTime` (ms).
///
/// Each ping's outcome also sets the backend's `battlement.store.up`
/// gauge.
///
/// A failed ping reports only what kind of failure it was (`unavailable`,
/// `timed out`, `closed` or `error`): the store's own error text can name
/// hosts, ports or users, so it goes to the log (`warn`, at most once per
/// 10 s per check, with the number held back) and not to the probe's
/// public answer.
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::health::{store_check, HealthRegistry};
///
/// let health = HealthRegistry::new();
/// health.register(store_check(MemoryStore::new()));
/// ```
pub fn store_check<B: Backend>(store: B) -> Check {
    let name = store.kind();
    // `battlement.store.up` shows what the checks (and the layers' calls)
    // found.
    crate::events::ensure_gauges();
    let warn = Arc::new(WarnLimiter::new(Duration::from_secs(10)));
    Check::new(name, move || {
        let store = store.clone();
        let warn = warn.clone();
        async move {
            let started = Instant::now();
            let result = store.ping().await;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            crate::events::store_seen(name, result.is_ok());
            match result {
                Ok(()) => Outcome::pass(),
                Err(err) => {
                    warn.warn(|suppressed| {
                        tracing::warn!(
                            check = name,
                            error = %err,
                            suppressed,
                            "health check: store ping failed"
                        );
                    });
                    Outcome::fail(public_reason(&err))
                }
            }
            .observed((ms * 1e3).round() / 1e3, "ms")
        }
    })
    .measurement("responseTime")
    .component_type("datastore")
    .timeout(Duration::from_secs(1))
}

/// A readiness check named after the backend that shows how it keeps what
/// it acknowledged, as `observedValue` under the measurement `durability`
/// ([`Durability`](crate::backends::Durability): `process`, `quorum`,
/// `append-only`, `snapshots`, `volatile` or `unknown`). It always passes:
/// it informs, the store's own check judges. Read at most once a minute.
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::health::{durability_check, HealthRegistry};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let health = HealthRegistry::new();
/// health.register(durability_check(MemoryStore::new()));
/// let report = health.run(&battlement::health::Group::Readiness).await;
/// let json = report.to_health_json();
/// assert_eq!(json["checks"]["memory:durability"][0]["observedValue"], "process");
/// # });
/// ```
pub fn durability_check<B: Backend>(store: B) -> Check {
    Check::new(store.kind(), move || {
        let store = store.clone();
        async move {
            // Within the check's own timeout: a store too slow to say is
            // `unknown`, never a failed readiness.
            let durability = tokio::time::timeout(Duration::from_millis(500), store.durability())
                .await
                .unwrap_or(crate::backends::Durability::Unknown);
            Outcome::pass().observed_text(durability.as_str(), "mode")
        }
    })
    .measurement("durability")
    .component_type("datastore")
    .timeout(Duration::from_secs(1))
    .cache_for(Duration::from_secs(60))
}

/// What a probe may say about a store failure: its kind, never its text.
fn public_reason(err: &StoreError) -> &'static str {
    match err {
        StoreError::Timeout(_) => "timed out",
        StoreError::Unavailable(_) | StoreError::Down => "unavailable",
        StoreError::Closed => "closed",
        _ => "error",
    }
}
