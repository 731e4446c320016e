//! Built-in checks for the backends (SPEC HL-4).

use std::time::{Duration, Instant};

use super::check::{Check, Outcome};
use crate::backends::Backend;

/// A readiness check named after the backend (`redis`, `etcd`, `memory`)
/// that pings it and reports the round trip in `responseTime` (ms).
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
    Check::new(name, move || {
        let store = store.clone();
        async move {
            let started = Instant::now();
            let result = store.ping().await;
            let ms = started.elapsed().as_secs_f64() * 1e3;
            match result {
                Ok(()) => Outcome::pass(),
                Err(err) => Outcome::fail(err.to_string()),
            }
            .observed((ms * 1e3).round() / 1e3, "ms")
        }
    })
    .measurement("responseTime")
    .component_type("datastore")
    .timeout(Duration::from_secs(1))
}
