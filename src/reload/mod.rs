//! Runtime reload: rate-limit quotas and
//! breaker thresholds change in a running fleet, without a restart and
//! without resetting any key's state.
//!
//! ```
//! use std::time::Duration;
//! use battlement::backends::MemoryStore;
//! use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerLayer};
//! use battlement::reload::{ConfigReloader, MemoryConfigSource};
//! use battlement::rate_limit::{Policy, Quota, RateLimitLayer};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let limit = RateLimitLayer::new(store.clone())
//!     .policy(Policy::new("per-ip", Quota::per_second(100).unwrap()).unwrap());
//! let breaker = CircuitBreakerLayer::new("downstream", store, BreakerConfig::default()).unwrap();
//!
//! // In production: EtcdConfigSource::new(&etcd) (feature `etcd`).
//! let source = MemoryConfigSource::new();
//! source.put("circuit_breaker/downstream", r#"{"failure_rate": 25}"#);
//! let reloading = ConfigReloader::new(source.clone())
//!     .rate_limit(limit.handle())
//!     .circuit_breaker(breaker.handle())
//!     .start()
//!     .unwrap();
//! reloading.loaded().await;
//! assert_eq!(breaker.handle().config(), BreakerConfig::default().failure_rate(25.0));
//! # });
//! ```
//!
//! # Key layout
//!
//! Under the source's prefix (the etcd source's default is
//! `/battlement/config/`), one JSON document per policy or breaker:
//!
//! | key | document |
//! |-----|----------|
//! | `rate_limit/<policy>` | a [`Quota`](crate::rate_limit::Quota), as a config writes one: `"50/1m"`, or `{"count": 50, "period": "1m", "burst": 10}` with an optional `"mode"` |
//! | `circuit_breaker/<breaker>` | [`BreakerConfig`](crate::circuit_breaker::BreakerConfig) fields over the built-in ones: `{"failure_rate": 25, "open_for": "10s"}` |
//!
//! A deleted document restores the built-in value. The hot path reads the
//! values in force without a lock (`arc-swap`): a config source costs a
//! request nothing.

pub mod document;
mod memory;
mod reloader;
mod source;

#[cfg(feature = "etcd")]
pub use crate::backends::EtcdConfigSource;
pub use memory::MemoryConfigSource;
pub use reloader::{ConfigReloader, ConfigWatch};
pub use source::{ConfigSource, ConfigUpdate, Documents};
