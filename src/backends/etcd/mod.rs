//! `EtcdStore`: state shared through etcd (the low-rate, strongly consistent
//! option).

mod circuit_breaker;
mod config;
mod config_source;
mod idempotency;
mod lease;
mod rate_limit;
mod txn;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};

pub use config::EtcdConfig;
pub use config_source::EtcdConfigSource;

use super::{Backend, Durability, KeySpace};
use crate::clock::{SharedClock, SystemClock};
use crate::error::StoreError;
use lease::LeaseCache;

/// State in etcd, shared by every process that points at the same cluster.
///
/// One gRPC channel over all endpoints is shared by every clone; every call
/// is bounded by the configured timeout (default 500 ms). A connection
/// that stops answering without closing (a half-open peer, a blackholed
/// route) is found dead by HTTP/2 keep-alive pings, one every 10 s with 5 s
/// for its answer: until then, up to 15 s, calls on it time out and the
/// layers' failure policies apply; the channel then connects again.
///
/// What the cluster must keep: etcd writes every claim and record to its
/// Raft log on a quorum before it answers, so an acknowledged claim
/// survives a member's crash and a leader change. Idempotency records are
/// not capped here (one per key for its retention, each under a lease
/// that deletes it), and etcd's backend quota (`--quota-backend-bytes`,
/// 2 GiB by default) is what bounds them: once it is full etcd raises a
/// `NOSPACE` alarm and refuses writes, which the layers meet as store
/// failures under their failure policy. Size the quota for the keyed
/// requests of one retention, and compact and defragment as etcd's
/// operations guide says.
///
/// ```no_run
/// # async fn run() -> Result<(), battlement::StoreError> {
/// use battlement::backends::{Backend, EtcdConfig, EtcdStore};
/// let etcd = EtcdStore::from_config(EtcdConfig::new(["http://127.0.0.1:2379"]).prefix("shop")).await?;
/// etcd.ping().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: RwLock<Option<Client>>,
    keys: KeySpace,
    timeout: Duration,
    config: EtcdConfig,
    clock: SharedClock,
    leases: LeaseCache,
}

impl EtcdStore {
    /// Connects to these endpoints with default settings.
    pub async fn connect<I, S>(endpoints: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::from_config(EtcdConfig::new(endpoints)).await
    }

    /// Connects as `config` says and checks a member answers.
    pub async fn from_config(config: EtcdConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let keys = KeySpace::new(config.prefix_str())?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout())
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        if let Some((user, password)) = config.credentials() {
            options = options.with_user(user, password);
        }
        let connect = Client::connect(config.endpoints(), Some(options));
        let client = tokio::time::timeout(config.connect_timeout(), connect)
            .await
            .map_err(|_| StoreError::Timeout(config.connect_timeout()))?
            .map_err(|e| map_error(e, config.connect_timeout()))?;
        let store = Self {
            inner: Arc::new(Inner {
                client: RwLock::new(Some(client)),
                keys,
                timeout: config.timeout(),
                config,
                clock: SystemClock::shared(),
                leases: LeaseCache::default(),
            }),
        };
        store.ping().await?;
        Ok(store)
    }

    /// The settings this store was built from.
    pub fn config(&self) -> &EtcdConfig {
        &self.inner.config
    }

    /// Decides with `clock` instead of the system clock (for tests).
    pub fn with_clock(self, clock: SharedClock) -> Self {
        let client = self.inner.client.read().ok().and_then(|c| c.clone());
        Self {
            inner: Arc::new(Inner {
                client: RwLock::new(client),
                keys: self.inner.keys.clone(),
                timeout: self.inner.timeout,
                config: self.inner.config.clone(),
                clock,
                leases: LeaseCache::default(),
            }),
        }
    }

    /// The clock decisions are made with.
    pub(crate) fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The per-call timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Runs `f` on a client handle with the per-call timeout.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client()?;
        match tokio::time::timeout(self.inner.timeout, f(client)).await {
            Ok(result) => result.map_err(|e| map_error(e, self.inner.timeout)),
            Err(_) => Err(StoreError::Timeout(self.inner.timeout)),
        }
    }

    pub(crate) fn client(&self) -> Result<Client, StoreError> {
        let guard = self.inner.client.read().map_err(|_| StoreError::Closed)?;
        guard.clone().ok_or(StoreError::Closed)
    }
}

/// Maps an etcd client error without leaking its type.
pub(crate) fn map_error(err: etcd_client::Error, timeout: Duration) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match err {
        E::GRpcStatus(status) => match status.code() {
            Code::Unavailable | Code::Cancelled | Code::Unknown => {
                StoreError::Unavailable(format!("etcd: {}", status.message()))
            }
            Code::DeadlineExceeded => StoreError::Timeout(timeout),
            _ => StoreError::Backend(format!("etcd: {}", status.message())),
        },
        E::TransportError(e) => StoreError::Unavailable(format!("etcd: {e}")),
        E::IoError(e) => StoreError::Unavailable(format!("etcd: {e}")),
        E::InvalidArgs(e) | E::EndpointError(e) => StoreError::Config(format!("etcd: {e}")),
        E::InvalidUri(e) => StoreError::Config(format!("etcd: {e}")),
        other => StoreError::Backend(format!("etcd: {other}")),
    }
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Backend for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn keyspace(&self) -> &KeySpace {
        &self.inner.keys
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(|mut c| async move { c.status().await })
            .await
            .map(drop)
    }

    fn close(&self) {
        if let Ok(mut client) = self.inner.client.write() {
            client.take();
        }
    }

    async fn durability(&self) -> Durability {
        Durability::Quorum
    }
}
