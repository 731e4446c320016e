//! `RedisConfig`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::backends::{DEFAULT_PREFIX, redact_url};
use crate::error::StoreError;

/// How to reach Redis.
///
/// # In a config
///
/// The `[backend]` table of a stack config with `kind = "redis"`, or a
/// document of its own, has these fields; any other is an error:
///
/// | field | value | default |
/// |---|---|---|
/// | `urls` | the server's URL (`redis://:password@host:6379/0`, `rediss://` for TLS), or the seeds of a Cluster | required |
/// | `cluster` | whether `urls` are the seeds of a Redis Cluster ([`cluster`](Self::cluster)) | `false` |
/// | `prefix` | the key namespace ([`prefix`](Self::prefix)) | `"battlement"` |
/// | `timeout` | bounds every call, a duration string ([`with_timeout`](Self::with_timeout)) | `"50ms"` |
/// | `connect_timeout` | bounds connecting ([`with_connect_timeout`](Self::with_connect_timeout)) | `"2s"` |
/// | `batch_decisions` | see [`batch_decisions`](Self::batch_decisions) | `true` |
/// | `wait_for_replicas` | `{ replicas = 1, timeout = "20ms" }`: idempotency writes wait for replicas ([`wait_for_replicas`](Self::wait_for_replicas)) | none |
///
/// ```
/// use std::time::Duration;
/// use battlement::backends::{BackendConfig, RedisConfig};
/// use battlement::stack::StackConfig;
///
/// let config = StackConfig::from_toml(r#"
///     [backend]
///     kind = "redis"
///     urls = ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]
///     cluster = true
///     prefix = "shop"
///     timeout = "20ms"
///     connect_timeout = "1s"
///     batch_decisions = false
/// "#).unwrap();
/// let BackendConfig::Redis(redis) = config.backend else { panic!("redis") };
/// assert!(redis.is_cluster());
/// assert_eq!(redis.urls().len(), 2);
/// assert_eq!((redis.timeout(), redis.connect_timeout()), (Duration::from_millis(20), Duration::from_secs(1)));
///
/// // JSON, with the defaults; a password never shows in `Debug`.
/// let config: RedisConfig = serde_json::from_str(r#"{
///     "urls": ["redis://:secret@127.0.0.1:6379"],
///     "prefix": "shop",
///     "timeout": "20ms"
/// }"#).unwrap();
/// assert_eq!(config.timeout(), Duration::from_millis(20));
/// assert_eq!(config.connect_timeout(), Duration::from_secs(2));
/// assert!(config.batches_decisions());
/// assert!(!format!("{config:?}").contains("secret"));
///
/// let typo = serde_json::from_str::<RedisConfig>(r#"{"urls": ["redis://a"], "timeot": "1s"}"#);
/// assert!(typo.unwrap_err().to_string().starts_with("unknown field `timeot`"));
/// ```
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The server's URL (`redis://:password@host:6379/0`, `rediss://` for
    /// TLS), or the seeds of a Cluster.
    urls: Vec<String>,
    /// Whether `urls` are the seeds of a Redis Cluster.
    #[serde(default)]
    cluster: bool,
    /// The key namespace.
    #[serde(default = "default_prefix")]
    prefix: String,
    /// Bounds every call.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    timeout: Duration,
    /// Bounds connecting.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    connect_timeout: Duration,
    /// Whether concurrent rate-limit decisions on a standalone server
    /// share one script call.
    #[serde(default = "default_batch_decisions")]
    batch_decisions: bool,
    /// Idempotency claims and records are acknowledged only once this
    /// many replicas have them (`WAIT`).
    #[serde(default)]
    wait_for_replicas: Option<ReplicaWait>,
}

/// How many replicas must have an idempotency write before it counts, and
/// how long to wait for them ([`RedisConfig::wait_for_replicas`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplicaWait {
    /// Replicas that must acknowledge the write (at least 1).
    pub replicas: u32,
    /// How long `WAIT` waits for them (above zero, below the per-call
    /// timeout).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

fn default_batch_decisions() -> bool {
    true
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_millis(50)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

impl RedisConfig {
    /// One standalone server, e.g. `redis://:password@host:6379/0`.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            cluster: false,
            prefix: default_prefix(),
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            batch_decisions: default_batch_decisions(),
            wait_for_replicas: None,
        }
    }

    /// A Redis Cluster reached through these seed nodes.
    pub fn cluster<I, S>(seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            urls: seeds.into_iter().map(Into::into).collect(),
            cluster: true,
            ..Self::standalone("")
        }
    }

    /// Namespaces every key under `prefix` (default `battlement`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bounds every call (default 50 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bounds connecting (default 2 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether concurrent rate-limit decisions on a standalone server go
    /// out together, in one script call (default `true`; a Cluster always
    /// sends one call per decision). Turn it off behind a proxy that
    /// presents a Cluster as one server but enforces its slots (Envoy's
    /// Redis proxy, Redis Enterprise, ElastiCache Serverless): the keys of
    /// one batch may hash to different slots, and the call would fail.
    /// Serde: `batch_decisions`.
    pub fn batch_decisions(mut self, on: bool) -> Self {
        self.batch_decisions = on;
        self
    }

    /// Acknowledges an idempotency claim only once `replicas` replicas of
    /// its master have it: each claim and stored response is followed by
    /// `WAIT replicas timeout` on the same connection. A claim fewer
    /// replicas confirmed within `timeout` is given back and fails, so the
    /// layer's failure policy applies (503 by default) and the client's
    /// retry runs the request; a stored response is kept either way (the
    /// request ran), with a warning. Without it, replication is asynchronous: a
    /// master that acknowledged a claim and fails before its replica has
    /// it loses the claim at failover, and the key runs twice. `timeout`
    /// must be below the per-call timeout, which bounds the write and its
    /// wait together. Rate-limit and breaker state never wait. Serde:
    /// `wait_for_replicas = { replicas = 1, timeout = "20ms" }`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use battlement::backends::RedisConfig;
    ///
    /// let config = RedisConfig::cluster(["redis://10.0.0.1:7000"])
    ///     .with_timeout(Duration::from_millis(100))
    ///     .wait_for_replicas(1, Duration::from_millis(50));
    /// assert_eq!(config.replica_wait().map(|w| w.replicas), Some(1));
    /// ```
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_for_replicas = Some(ReplicaWait { replicas, timeout });
        self
    }

    /// The replicas idempotency writes wait for, if set.
    pub fn replica_wait(&self) -> Option<ReplicaWait> {
        self.wait_for_replicas
    }

    /// Whether rate-limit decisions are batched (see
    /// [`batch_decisions`](Self::batch_decisions)).
    pub fn batches_decisions(&self) -> bool {
        self.batch_decisions && !self.cluster
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The server URLs (one, or the cluster seeds).
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    pub(crate) fn prefix_str(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.urls.is_empty() || self.urls.iter().any(String::is_empty) {
            return Err(StoreError::Config("redis: no server URL".into()));
        }
        if !self.cluster && self.urls.len() > 1 {
            return Err(StoreError::Config(
                "redis: several URLs given for a standalone server; use RedisConfig::cluster"
                    .into(),
            ));
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(StoreError::Config(
                "redis: timeouts must be above zero".into(),
            ));
        }
        if let Some(wait) = self.wait_for_replicas
            && (wait.replicas == 0 || wait.timeout.is_zero() || wait.timeout >= self.timeout)
        {
            return Err(StoreError::Config(
                "redis: wait_for_replicas needs at least 1 replica and a timeout above zero \
                 and below the per-call timeout"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("RedisConfig")
            .field("urls", &urls)
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("batch_decisions", &self.batch_decisions)
            .field("wait_for_replicas", &self.wait_for_replicas)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_configs_are_errors_not_panics() {
        assert!(RedisConfig::standalone("").validate().is_err());
        assert!(
            RedisConfig::cluster(Vec::<String>::new())
                .validate()
                .is_err()
        );
        let two = RedisConfig {
            urls: vec!["redis://a".into(), "redis://b".into()],
            ..RedisConfig::standalone("x")
        };
        assert!(two.validate().is_err());
        let zero = RedisConfig::standalone("redis://a").with_timeout(Duration::ZERO);
        assert!(zero.validate().is_err());
        let base = RedisConfig::standalone("redis://a").with_timeout(Duration::from_millis(50));
        for (replicas, ms) in [(0, 10), (1, 0), (1, 50)] {
            let wait = base
                .clone()
                .wait_for_replicas(replicas, Duration::from_millis(ms));
            assert!(wait.validate().is_err(), "{replicas} replicas, {ms} ms");
        }
        let wait = base.wait_for_replicas(1, Duration::from_millis(20));
        assert!(wait.validate().is_ok());
        let parsed: RedisConfig = serde_json::from_str(
            r#"{"urls":["redis://a"],"wait_for_replicas":{"replicas":2,"timeout":"20ms"}}"#,
        )
        .unwrap();
        assert_eq!(
            parsed.replica_wait(),
            Some(ReplicaWait {
                replicas: 2,
                timeout: Duration::from_millis(20)
            })
        );
        let err = serde_json::from_str::<RedisConfig>(r#"{"urls":["redis://a"],"timeot":"1s"}"#);
        assert!(err.is_err(), "unknown fields are rejected");
    }

    #[test]
    fn debug_hides_passwords() {
        let c = RedisConfig::cluster(["redis://u:pw1@a:1", "redis://:pw2@b:2"]);
        let s = format!("{c:?}");
        assert!(!s.contains("pw1") && !s.contains("pw2"), "{s}");
        assert!(s.contains("u:***@a:1"));
    }

    #[test]
    fn batching_is_on_for_standalone_servers_unless_turned_off() {
        assert!(RedisConfig::standalone("redis://a").batches_decisions());
        assert!(!RedisConfig::cluster(["redis://a"]).batches_decisions());
        let off: RedisConfig =
            serde_json::from_str(r#"{"urls":["redis://a"],"batch_decisions":false}"#).unwrap();
        assert!(!off.batches_decisions());
    }
}
