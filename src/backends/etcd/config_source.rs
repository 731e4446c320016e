//! `EtcdConfigSource`: configuration documents under an etcd prefix,
//! followed with a watch that resumes from its last revision.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{GetOptions, WatchOptions};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokio::sync::mpsc;

use super::EtcdStore;
use crate::error::{ConfigError, StoreError};
use crate::events::{ConfigEvent, Event, Events, WarnLimiter};
use crate::reload::{ConfigSource, ConfigUpdate, Documents};

/// The documents under an etcd prefix (default `/battlement/config/`), for
/// a [`ConfigReloader`](crate::reload::ConfigReloader).
///
/// The stream loads the prefix, then watches it from the loaded revision.
/// When the connection fails it retries every [`retry_every`](Self::retry_every)
/// and resumes the watch from the last revision it saw, so no change made
/// meanwhile is missed; when etcd compacted that revision away, or the
/// server answering is of another cluster (its revisions say nothing of
/// the ones seen), it loads the prefix afresh (a snapshot). A deleted key is a
/// [`ConfigUpdate::Delete`]: back to the built-in value. The stream ends
/// when the store is [closed](crate::backends::Backend::close). Events of
/// layer `config`: `loaded` (full load), `resumed`, `compacted`,
/// `cluster_changed`, `watch_error` (logged at most once per 10 s).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use battlement::backends::{EtcdStore, MemoryStore};
/// use battlement::reload::{ConfigReloader, EtcdConfigSource};
/// use battlement::rate_limit::{Policy, Quota, RateLimitLayer};
///
/// let etcd = EtcdStore::connect(["http://127.0.0.1:2379"]).await?;
/// let limit = RateLimitLayer::new(MemoryStore::new())
///     .policy(Policy::new("per-ip", Quota::per_second(100)?)?);
/// // etcdctl put /battlement/config/rate_limit/per-ip '{"count": 50, "period": "1m"}'
/// let reloading = ConfigReloader::new(EtcdConfigSource::new(&etcd))
///     .rate_limit(limit.handle())
///     .start()?;
/// tokio::time::timeout(std::time::Duration::from_secs(2), reloading.loaded()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdConfigSource {
    store: EtcdStore,
    prefix: Arc<str>,
    retry: Duration,
    events: Events,
    warn: Arc<WarnLimiter>,
}

impl fmt::Debug for EtcdConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfigSource")
            .field("prefix", &self.prefix)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// Where documents were read: a revision of a cluster.
#[derive(Debug, Clone, Copy)]
struct Position {
    revision: i64,
    cluster: u64,
}

/// Why a watch stopped.
enum Ended {
    /// Nobody reads the updates any more, or the store was closed.
    Closed,
    /// The revision to resume from is gone (compacted, or the server is
    /// behind it): load afresh.
    Compacted,
    /// The server is a member of another cluster than the one loaded
    /// from: load afresh.
    OtherCluster,
    /// The connection failed after `last` was seen: resume after it.
    Failed { last: i64, error: String },
}

impl EtcdConfigSource {
    /// The default prefix.
    pub const DEFAULT_PREFIX: &'static str = "/battlement/config/";

    /// Documents under [`DEFAULT_PREFIX`](Self::DEFAULT_PREFIX), read
    /// through `store`'s connection.
    pub fn new(store: &EtcdStore) -> Self {
        Self {
            store: store.clone(),
            prefix: Self::DEFAULT_PREFIX.into(),
            retry: Duration::from_secs(1),
            events: Events::new(),
            warn: Arc::new(WarnLimiter::new(Duration::from_secs(10))),
        }
    }

    /// Reads the documents under `prefix` instead (a `/` is added if it
    /// does not end with one; a document's key is what follows it).
    pub fn prefix(mut self, prefix: &str) -> Result<Self, ConfigError> {
        if prefix.is_empty() {
            return Err(ConfigError::new("the config prefix must not be empty"));
        }
        self.prefix = match prefix.ends_with('/') {
            true => prefix.into(),
            false => format!("{prefix}/").into(),
        };
        Ok(self)
    }

    /// How long to wait before reconnecting after a failure (default 1 s).
    pub fn retry_every(mut self, every: Duration) -> Self {
        self.retry = every.max(Duration::from_millis(10));
        self
    }

    /// Reports loads, resumes, compactions and failures to `events`.
    pub fn events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// Follows the prefix, sending updates to `tx` until nobody reads them.
    async fn follow(self, tx: mpsc::Sender<ConfigUpdate>) {
        // The last revision whose changes were sent; none: load afresh.
        let mut resume: Option<i64> = None;
        // The cluster the documents were loaded from.
        let mut cluster = 0;
        loop {
            let revision = match resume {
                Some(revision) => revision,
                None => match self.load().await {
                    Ok((documents, at)) => {
                        if tx.send(ConfigUpdate::Snapshot(documents)).await.is_err() {
                            return;
                        }
                        self.events.emit(Event::named(ConfigEvent::Loaded));
                        cluster = at.cluster;
                        at.revision
                    }
                    Err(StoreError::Closed) => return,
                    Err(error) => {
                        self.failed(error.to_string());
                        tokio::time::sleep(self.retry).await;
                        continue;
                    }
                },
            };
            let from = Position { revision, cluster };
            match self.watch(from, resume.is_some(), &tx).await {
                Ended::Closed => return,
                Ended::OtherCluster => {
                    tracing::warn!(
                        prefix = %self.prefix,
                        "etcd config source reached another cluster; reloading"
                    );
                    self.events.emit(Event::named(ConfigEvent::ClusterChanged));
                    resume = None;
                }
                Ended::Compacted => {
                    tracing::info!(
                        revision,
                        "etcd compacted the config watch's revision; reloading"
                    );
                    self.events.emit(Event::named(ConfigEvent::Compacted));
                    resume = None;
                }
                Ended::Failed { last, error } => {
                    self.failed(error);
                    resume = Some(last);
                    tokio::time::sleep(self.retry).await;
                }
            }
        }
    }

    fn failed(&self, error: String) {
        self.warn.warn(|suppressed| {
            tracing::warn!(%error, prefix = %self.prefix, suppressed, "etcd config source failed; retrying");
        });
        self.events
            .emit(Event::named(ConfigEvent::WatchError).with_detail(error));
    }

    /// Every document under the prefix, and where they were read.
    async fn load(&self) -> Result<(Documents, Position), StoreError> {
        let prefix = self.prefix.to_string();
        let response = self
            .store
            .call(|mut client| async move {
                client
                    .get(prefix, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let at = response
            .header()
            .map(|h| Position {
                revision: h.revision(),
                cluster: h.cluster_id(),
            })
            .ok_or_else(|| StoreError::Backend("etcd: a range response without a header".into()))?;
        let documents = response
            .kvs()
            .iter()
            .filter_map(|kv| Some((self.relative(kv.key())?, Bytes::copy_from_slice(kv.value()))))
            .collect();
        Ok((documents, at))
    }

    /// The document key of an etcd key, if it is valid UTF-8 under the
    /// prefix.
    fn relative(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        match key.strip_prefix(&*self.prefix) {
            Some(relative) if !relative.is_empty() => Some(relative.to_owned()),
            _ => {
                tracing::warn!(key, "config key is not UTF-8 under the prefix; ignored");
                None
            }
        }
    }

    /// Watches the prefix from just after `from`, on `from`'s cluster.
    async fn watch(
        &self,
        from: Position,
        resuming: bool,
        tx: &mpsc::Sender<ConfigUpdate>,
    ) -> Ended {
        let revision = from.revision;
        let failed = |last, error: String| Ended::Failed { last, error };
        let mut client = match self.store.client() {
            Ok(client) => client,
            Err(StoreError::Closed) => return Ended::Closed,
            Err(e) => return failed(revision, e.to_string()),
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let prefix = self.prefix.to_string();
        // Creating a watch is one round trip, but give a busy server room.
        let timeout = self.store.timeout().max(Duration::from_secs(2));
        let mut stream =
            match tokio::time::timeout(timeout, client.watch(prefix, Some(options))).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return failed(revision, e.to_string()),
                Err(_) => return failed(revision, format!("watch not created within {timeout:?}")),
            };
        let mut last = revision;
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return failed(last, "the watch stream ended".into()),
                Err(e) => return failed(last, e.to_string()),
            };
            if response.compact_revision() > 0 {
                return Ended::Compacted;
            }
            if response.canceled() {
                return failed(
                    last,
                    format!("watch canceled: {}", response.cancel_reason()),
                );
            }
            if response.created() {
                // Revisions of another cluster say nothing of ours.
                if response
                    .header()
                    .is_some_and(|h| h.cluster_id() != from.cluster)
                {
                    return Ended::OtherCluster;
                }
                // A server behind the revision we saw (restored from an
                // older backup) would never send the changes in between:
                // load afresh.
                if response.header().is_some_and(|h| h.revision() < last) {
                    return Ended::Compacted;
                }
                if resuming {
                    tracing::info!(revision = last, "etcd config watch resumed");
                    self.events.emit(Event::named(ConfigEvent::Resumed));
                }
                continue;
            }
            if response.events().is_empty() {
                // A progress notification: every change up to its header
                // revision was sent.
                if let Some(header) = response.header() {
                    last = last.max(header.revision());
                }
                continue;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                last = last.max(kv.mod_revision());
                let Some(key) = self.relative(kv.key()) else {
                    continue;
                };
                // A deleted key's version is reset to zero.
                let update = if kv.version() == 0 {
                    ConfigUpdate::Delete(key)
                } else {
                    ConfigUpdate::Put(key, Bytes::copy_from_slice(kv.value()))
                };
                if tx.send(update).await.is_err() {
                    return Ended::Closed;
                }
            }
        }
    }
}

impl ConfigSource for EtcdConfigSource {
    fn updates(&self) -> BoxStream<'static, ConfigUpdate> {
        let (tx, rx) = mpsc::channel(64);
        // The follower runs inside the stream: dropping the stream stops it.
        let follower = stream::once(self.clone().follow(tx)).filter_map(|()| async { None });
        let updates = stream::unfold(rx, |mut rx| async move {
            let update = rx.recv().await?;
            Some((update, rx))
        });
        stream::select(updates, follower).boxed()
    }
}
