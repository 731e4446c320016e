//! The client preset from a [`ClientSettings`].

use super::config::ClientSettings;
use crate::client::{ClientStack, ClientStackLayer};
use crate::error::ConfigError;
use crate::layers::circuit_breaker::CircuitBreakerStore;
use crate::rate_limit::RateLimitStore;

/// The client stack named `name` (its breaker's and rate limit's name)
/// that `settings` describe, keeping breaker and rate-limit state in
/// `store`: request id forwarding, retry, per-attempt trace and metrics,
/// a breaker per upstream host, and the client quota, hedging and
/// idempotency keys when set.
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::stack::{self, StackConfig};
///
/// let config = StackConfig::from_toml(r#"
///     [client]
///     idempotency_keys = true
///
///     [client.retry]
///     max_attempts = 2
/// "#).unwrap();
/// assert!(config.client.idempotency_keys);
/// let layer = stack::client("upstream", &config.client, MemoryStore::new()).unwrap();
/// # drop(layer);
/// ```
pub fn client<St>(
    name: &str,
    settings: &ClientSettings,
    store: St,
) -> Result<ClientStackLayer<St>, ConfigError>
where
    St: RateLimitStore + CircuitBreakerStore,
{
    let mut stack = ClientStack::new(name, store);
    if let Some(retry) = &settings.retry {
        stack = stack.retry(retry.clone());
    }
    if let Some(breaker) = &settings.breaker {
        stack = stack.breaker(breaker.clone());
    }
    if let Some(policy) = &settings.rate_limit {
        stack = stack.rate_limit(policy.policy()?);
    }
    if let Some(hedge) = &settings.hedge {
        stack = stack.hedge(hedge.clone());
    }
    stack.idempotency_keys(settings.idempotency_keys).build()
}
