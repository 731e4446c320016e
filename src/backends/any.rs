//! `AnyStore`: the backend a configuration names, chosen at runtime.

use std::time::Duration;

use serde::Deserialize;

use super::{Backend, Durability, KeySpace, MemoryConfig, MemoryStore};
use crate::circuit_breaker::{CircuitBreakerStore, Loaded, Publication, Published, Versioned};
use crate::error::StoreError;
use crate::idempotency::{Claim, ClaimToken, Claimant, Completion, IdempotencyStore};
use crate::rate_limit::{Charge, Decision, RateLimitStore};

/// Which backend to use and how to reach it, tagged by `kind`.
///
/// ```
/// use battlement::backends::BackendConfig;
///
/// let memory: BackendConfig = serde_json::from_str(r#"{"kind": "memory"}"#).unwrap();
/// assert!(matches!(memory, BackendConfig::Memory(_)));
/// # #[cfg(feature = "redis")]
/// let redis: BackendConfig =
///     serde_json::from_str(r#"{"kind": "redis", "urls": ["redis://127.0.0.1:6379"]}"#).unwrap();
/// // A backend without its address is an error when the config is read.
/// # #[cfg(feature = "redis")]
/// assert!(serde_json::from_str::<BackendConfig>(r#"{"kind": "redis"}"#).is_err());
/// ```
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackendConfig {
    /// In process (the default).
    Memory(MemoryConfig),
    /// Redis, standalone or Cluster (feature `redis`).
    #[cfg(feature = "redis")]
    Redis(super::RedisConfig),
    /// Without the `redis` feature: an error saying so.
    #[cfg(not(feature = "redis"))]
    Redis(FeatureOff),
    /// etcd (feature `etcd`).
    #[cfg(feature = "etcd")]
    Etcd(super::EtcdConfig),
    /// Without the `etcd` feature: an error saying so.
    #[cfg(not(feature = "etcd"))]
    Etcd(FeatureOff),
}

/// Stands for a setting of a feature this build leaves out: reading one
/// fails with a message naming the feature, and no value exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureOff {}

impl<'de> Deserialize<'de> for FeatureOff {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "this backend needs a battlement feature this build leaves out \
             (`redis` or `etcd`: cargo build --features redis,etcd)",
        ))
    }
}

/// Nothing: any value is an error in this build.
impl schemars::JsonSchema for FeatureOff {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FeatureOff".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A setting of a feature this build leaves out (`redis` or `etcd`): any value is an error.",
            "not": {}
        })
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self::Memory(MemoryConfig::default())
    }
}

/// One of the backends, picked by a [`BackendConfig`]; implements every
/// store trait by handing each call to the backend it holds.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// A [`MemoryStore`].
    Memory(MemoryStore),
    /// A [`RedisStore`](super::RedisStore).
    #[cfg(feature = "redis")]
    Redis(super::RedisStore),
    /// An [`EtcdStore`](super::EtcdStore).
    #[cfg(feature = "etcd")]
    Etcd(super::EtcdStore),
}

impl AnyStore {
    /// Connects to the backend `config` names and checks it answers: a
    /// wrong address fails here, at startup, not at the first request.
    pub async fn connect(config: &BackendConfig) -> Result<Self, StoreError> {
        let store = match config {
            BackendConfig::Memory(c) => Self::Memory(MemoryStore::from_config(c.clone())?),
            #[cfg(feature = "redis")]
            BackendConfig::Redis(c) => {
                Self::Redis(super::RedisStore::from_config(c.clone()).await?)
            }
            #[cfg(feature = "etcd")]
            BackendConfig::Etcd(c) => Self::Etcd(super::EtcdStore::from_config(c.clone()).await?),
            #[cfg(not(feature = "redis"))]
            BackendConfig::Redis(off) => match *off {},
            #[cfg(not(feature = "etcd"))]
            BackendConfig::Etcd(off) => match *off {},
        };
        store.ping().await?;
        Ok(store)
    }
}

/// Runs `$call` on whichever backend `$store` holds.
macro_rules! each {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            AnyStore::Memory($s) => $call,
            #[cfg(feature = "redis")]
            AnyStore::Redis($s) => $call,
            #[cfg(feature = "etcd")]
            AnyStore::Etcd($s) => $call,
        }
    };
}

impl Backend for AnyStore {
    fn kind(&self) -> &'static str {
        each!(self, s => s.kind())
    }

    fn keyspace(&self) -> &KeySpace {
        each!(self, s => s.keyspace())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        each!(self, s => s.ping().await)
    }

    fn close(&self) {
        each!(self, s => s.close())
    }

    async fn durability(&self) -> Durability {
        each!(self, s => s.durability().await)
    }
}

impl RateLimitStore for AnyStore {
    async fn decide(&self, charge: Charge<'_>) -> Result<Decision, StoreError> {
        each!(self, s => s.decide(charge).await)
    }

    async fn decide_batched(&self, charge: Charge<'_>) -> Result<Decision, StoreError> {
        each!(self, s => s.decide_batched(charge).await)
    }

    async fn give_back(&self, charge: Charge<'_>) -> Result<(), StoreError> {
        each!(self, s => s.give_back(charge).await)
    }

    async fn decide_all(&self, charges: &[Charge<'_>]) -> Result<Vec<Decision>, StoreError> {
        each!(self, s => s.decide_all(charges).await)
    }
}

impl CircuitBreakerStore for AnyStore {
    async fn load(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        each!(self, s => s.load(id).await)
    }

    async fn load_many(&self, ids: &[&str]) -> Result<Vec<Loaded>, StoreError> {
        each!(self, s => s.load_many(ids).await)
    }

    async fn publish(&self, id: &str, write: Publication) -> Result<Published, StoreError> {
        each!(self, s => s.publish(id, write).await)
    }
}

impl IdempotencyStore for AnyStore {
    async fn claim(&self, id: &str, claimant: Claimant<'_>) -> Result<Claim, StoreError> {
        each!(self, s => s.claim(id, claimant).await)
    }

    async fn complete(&self, id: &str, done: Completion<'_>) -> Result<bool, StoreError> {
        each!(self, s => s.complete(id, done).await)
    }

    async fn renew(&self, id: &str, token: ClaimToken, lock: Duration) -> Result<bool, StoreError> {
        each!(self, s => s.renew(id, token, lock).await)
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), StoreError> {
        each!(self, s => s.release(id, token).await)
    }
}
