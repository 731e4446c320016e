//! Where stateful layers keep their state: in memory, in Redis, in etcd.
//!
//! ```
//! use battlement::backends::{Backend, MemoryStore};
//!
//! # tokio_test_block_on(async {
//! let store = MemoryStore::new();
//! store.ping().await.unwrap();
//! assert_eq!(store.kind(), "memory");
//! assert_eq!(store.keyspace().key("rl", "203.0.113.7"), "battlement:rl:{203.0.113.7}");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! Each backend is one cheap-to-clone type that implements every store
//! trait (`RateLimitStore`, `IdempotencyStore`, ...) defined beside the
//! layers. Connect once and hand clones to every layer; clones share one
//! connection. Each concern writes under its own [`KeySpace`] namespace.
//!
//! Every layer takes its store by value, as a type parameter
//! (`RateLimitLayer::new(store)`, `CircuitBreakerLayer::new(name, store, config)`):
//! write a store of your own by implementing the traits, and pass it the
//! same way. The layers that call the store on every request (rate limit,
//! idempotency) keep its type, so the call is not boxed; the circuit
//! breaker calls it only from its background sync and keeps it boxed
//! behind its handle. The rate limit and idempotency layers apply their
//! `FailurePolicy` (log, count, and under a local fallback answer in
//! process) in one wrapper around the store.
//!
//! | backend | feature | connection | per-call timeout |
//! |---|---|---|---|
//! | [`MemoryStore`] | always | none (process-local) | none needed |
//! | `RedisStore` | `redis` | multiplexed, auto-reconnecting; standalone or Cluster | 50 ms |
//! | `EtcdStore` | `etcd` | gRPC channel over all endpoints | 500 ms |

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::error::StoreError;

mod any;
mod guarded;
mod memory;
pub use any::{AnyStore, BackendConfig, FeatureOff};
pub(crate) use guarded::{Guard, Guarded};
pub use memory::{MemoryConfig, MemoryStore};

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::{RedisConfig, RedisStore, ReplicaWait};
/// The decision a Redis rate-limit script's reply stands for.
#[cfg(all(feature = "redis", any(fuzzing, test)))]
pub(crate) use redis::script_decision as redis_script_decision;

#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "etcd")]
pub use self::etcd::{EtcdConfig, EtcdConfigSource, EtcdStore};

/// What every backend offers besides its store traits.
pub trait Backend: Clone + Send + Sync + fmt::Debug + 'static {
    /// `"memory"`, `"redis"` or `"etcd"`: names health checks and metrics.
    fn kind(&self) -> &'static str;

    /// The namespace this store writes under.
    fn keyspace(&self) -> &KeySpace;

    /// One round trip to the server, bounded by the per-call timeout.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Stops every clone of this store: later calls fail with
    /// [`StoreError::Closed`], and the connection is released.
    fn close(&self);

    /// How well the store keeps what it acknowledged (default
    /// [`Durability::Unknown`]).
    fn durability(&self) -> impl Future<Output = Durability> + Send {
        async { Durability::Unknown }
    }
}

/// How well a backend keeps what it acknowledged: what exactly-once
/// idempotency and exact limits rest on. Readiness shows it
/// ([`durability_check`](crate::health::durability_check)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// In this process only: gone when it exits.
    Process,
    /// Written to a quorum's log before it is acknowledged (etcd).
    Quorum,
    /// Redis with an append-only file: kept across a restart (up to its
    /// `appendfsync`), not across a failover that loses an acknowledged
    /// write (replication is asynchronous).
    AppendOnly,
    /// Redis with snapshots only: a restart loses what came after the
    /// last one.
    Snapshots,
    /// Redis with neither: a restart loses everything.
    Volatile,
    /// Not known (the server refused `CONFIG GET`).
    Unknown,
}

impl Durability {
    /// `process`, `quorum`, `append-only`, `snapshots`, `volatile` or
    /// `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Quorum => "quorum",
            Self::AppendOnly => "append-only",
            Self::Snapshots => "snapshots",
            Self::Volatile => "volatile",
            Self::Unknown => "unknown",
        }
    }
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "battlement";

/// A key namespace: `{prefix}:{concern}:{id}`.
///
/// The id part is percent-encoded (only `A-Z a-z 0-9 . _ -` stay as they
/// are), so client input can never add separators or braces, and it is
/// wrapped in a Redis Cluster hash tag so that every key of one id lands on
/// one cluster slot.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeySpace {
    prefix: Arc<str>,
}

impl KeySpace {
    /// A namespace under `prefix`: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    pub fn new(prefix: &str) -> Result<Self, StoreError> {
        let valid = !prefix.is_empty() && prefix.len() <= 64 && prefix.bytes().all(is_plain);
        if !valid {
            return Err(StoreError::Config(format!(
                "key prefix {prefix:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -"
            )));
        }
        Ok(Self {
            prefix: prefix.into(),
        })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of `id` for `concern` (a short fixed name such as `rl`).
    pub fn key(&self, concern: &str, id: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + concern.len() + id.len() + 4);
        key.push_str(&self.prefix);
        key.push(':');
        key.push_str(concern);
        key.push_str(":{");
        encode_into(&mut key, id);
        key.push('}');
        key
    }

    /// The common start of every key of `concern`, for scans and watches.
    pub fn concern_prefix(&self, concern: &str) -> String {
        format!("{}:{concern}:", self.prefix)
    }
}

impl Default for KeySpace {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.into(),
        }
    }
}

impl fmt::Debug for KeySpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeySpace").field(&self.prefix).finish()
    }
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Every byte of an id but `A-Z a-z 0-9 . _ -` is percent-encoded.
const NOT_PLAIN: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'_')
    .remove(b'-');

fn encode_into(out: &mut String, id: &str) {
    out.extend(percent_encoding::utf8_percent_encode(id, NOT_PLAIN));
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`, for `Debug`.
#[cfg_attr(not(any(feature = "redis", test)), allow(dead_code))]
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_client_input_and_carry_one_hash_tag() {
        let ks = KeySpace::new("app").unwrap();
        assert_eq!(ks.key("rl", "10.0.0.1"), "app:rl:{10.0.0.1}");
        assert_eq!(ks.key("rl", "a:b}{c d"), "app:rl:{a%3Ab%7D%7Bc%20d}");
        assert_eq!(ks.key("id", "ü"), "app:id:{%C3%BC}");
        assert!(ks.key("rl", "x").starts_with(&ks.concern_prefix("rl")));
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        for bad in ["", "a:b", "a{b}", "a b", &"x".repeat(65)] {
            assert!(
                matches!(KeySpace::new(bad), Err(StoreError::Config(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(redact_url("rediss://bob:pw@db"), "rediss://bob:***@db");
        assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
    }
}
