//! `ConfigReloader`: puts a source's documents in force.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::document::{self, CIRCUIT_BREAKER, RATE_LIMIT};
use super::source::{ConfigSource, ConfigUpdate, Documents};
use crate::circuit_breaker::{BreakerConfig, CircuitBreakerHandle};
use crate::error::ConfigError;
use crate::events::{ConfigEvent, Event, Events};
use crate::rate_limit::{Quota, RateLimitHandle, SyncMode};

/// Hot-reloads rate-limit quotas and breaker thresholds from a
/// [`ConfigSource`].
///
/// Each bound policy reads `rate_limit/<policy name>` and each bound breaker
/// `circuit_breaker/<breaker name>` (see [`super::document`] for the
/// formats). A valid document is in force from the next request on; an
/// invalid one is rejected with a `warn` log and a
/// `battlement.events{layer="config", event="rejected"}` count while the
/// last good value stays; a deleted one restores the value the layer had
/// when it was bound. Keys no bound policy or breaker uses are ignored.
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::reload::{ConfigReloader, MemoryConfigSource};
/// use battlement::rate_limit::{Policy, Quota, RateLimitLayer};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let layer = RateLimitLayer::new(MemoryStore::new())
///     .policy(Policy::new("per-ip", Quota::per_second(100).unwrap()).unwrap());
/// let source = MemoryConfigSource::new();
/// let watch = ConfigReloader::new(source.clone())
///     .rate_limit(layer.handle())
///     .start()
///     .unwrap();
/// watch.loaded().await;
///
/// source.put("rate_limit/per-ip", r#"{"count": 50, "period": "1m"}"#);
/// // In force as soon as the reloader's task has run:
/// let fifty = Some(Quota::per_minute(50).unwrap());
/// for _ in 0..100 {
///     if layer.handle().quota("per-ip") == fifty { break }
///     tokio::task::yield_now().await;
/// }
/// assert_eq!(layer.handle().quota("per-ip"), fifty);
/// # });
/// ```
pub struct ConfigReloader {
    source: Arc<dyn ConfigSource>,
    targets: BTreeMap<String, Vec<Target>>,
    events: Events,
}

impl fmt::Debug for ConfigReloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigReloader")
            .field("keys", &self.targets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A setting a document can change, with the value it returns to when the
/// document is deleted.
enum Target {
    Quota {
        handle: RateLimitHandle,
        policy: String,
        built_in: Quota,
        built_in_mode: SyncMode,
    },
    Breaker {
        handle: CircuitBreakerHandle,
        built_in: BreakerConfig,
    },
}

/// A document's value for one target, read and validated, with the
/// target to put it in force on.
enum Setting<'a> {
    Quota {
        handle: &'a RateLimitHandle,
        policy: &'a str,
        quota: Quota,
        mode: SyncMode,
    },
    Breaker {
        handle: &'a CircuitBreakerHandle,
        config: BreakerConfig,
    },
}

impl Setting<'_> {
    fn put_in_force(self) -> Result<(), ConfigError> {
        match self {
            Self::Quota {
                handle,
                policy,
                quota,
                mode,
            } => handle
                .set_quota(policy, quota)
                .and_then(|()| handle.set_mode(policy, mode)),
            Self::Breaker { handle, config } => handle.set_config(config),
        }
    }
}

impl Target {
    fn read(&self, document: &[u8]) -> Result<Setting<'_>, String> {
        match self {
            Self::Quota {
                handle,
                policy,
                built_in_mode,
                ..
            } => document::quota(document).map(|(quota, mode)| Setting::Quota {
                handle,
                policy,
                quota,
                mode: mode.unwrap_or(*built_in_mode),
            }),
            Self::Breaker { handle, built_in } => document::breaker(document, built_in)
                .map(|config| Setting::Breaker { handle, config }),
        }
    }

    fn built_in(&self) -> Setting<'_> {
        match self {
            Self::Quota {
                handle,
                policy,
                built_in,
                built_in_mode,
            } => Setting::Quota {
                handle,
                policy,
                quota: *built_in,
                mode: *built_in_mode,
            },
            Self::Breaker { handle, built_in } => Setting::Breaker {
                handle,
                config: built_in.clone(),
            },
        }
    }
}

impl ConfigReloader {
    /// Reads documents from `source`.
    pub fn new(source: impl ConfigSource) -> Self {
        Self {
            source: Arc::new(source),
            targets: BTreeMap::new(),
            events: Events::new(),
        }
    }

    /// Binds every policy of a rate-limit layer (its quota now is the
    /// built-in default).
    pub fn rate_limit(mut self, handle: RateLimitHandle) -> Self {
        for (policy, built_in) in handle.quotas() {
            let built_in_mode = handle.mode(&policy).unwrap_or_default();
            self.targets
                .entry(format!("{RATE_LIMIT}{policy}"))
                .or_default()
                .push(Target::Quota {
                    handle: handle.clone(),
                    policy,
                    built_in,
                    built_in_mode,
                });
        }
        self
    }

    /// Binds a breaker layer's thresholds (its config now is the built-in
    /// default).
    pub fn circuit_breaker(mut self, handle: CircuitBreakerHandle) -> Self {
        let built_in = handle.config();
        self.targets
            .entry(format!("{CIRCUIT_BREAKER}{}", handle.name()))
            .or_default()
            .push(Target::Breaker { handle, built_in });
        self
    }

    /// Reports `applied`, `rejected` and `reverted` to `events`.
    pub fn events(mut self, events: Events) -> Self {
        self.events = events;
        self
    }

    /// Starts following the source on the current Tokio runtime; stops
    /// when the returned [`ConfigWatch`] is dropped.
    #[must_use = "reloading stops when the ConfigWatch is dropped"]
    pub fn start(self) -> Result<ConfigWatch, ConfigError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ConfigError::new("ConfigReloader::start needs a Tokio runtime"))?;
        let (progress, rx) = watch::channel(Progress::default());
        let updates = self.source.updates();
        let applier = Applier {
            targets: self.targets,
            events: self.events,
            documents: Documents::new(),
        };
        let task = runtime.spawn(applier.run(updates, progress));
        Ok(ConfigWatch { task, progress: rx })
    }
}

/// How far the reloader got.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    loaded: bool,
    updates: u64,
}

/// A running [`ConfigReloader`]; dropping it stops the reloading (the
/// values in force stay).
#[derive(Debug)]
#[must_use = "reloading stops when the ConfigWatch is dropped"]
pub struct ConfigWatch {
    task: JoinHandle<()>,
    progress: watch::Receiver<Progress>,
}

impl ConfigWatch {
    /// Waits until the source's first snapshot is in force (or the source
    /// ended). Bound it with a timeout: a source that cannot be reached
    /// keeps retrying, and the built-in values stay in force meanwhile.
    pub async fn loaded(&self) {
        let mut rx = self.progress.clone();
        let _ = rx.wait_for(|p| p.loaded).await;
    }

    /// Whether the first snapshot is in force.
    pub fn is_loaded(&self) -> bool {
        self.progress.borrow().loaded
    }

    /// The number of updates handled so far.
    pub fn updates(&self) -> u64 {
        self.progress.borrow().updates
    }
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reloader's task state.
struct Applier {
    targets: BTreeMap<String, Vec<Target>>,
    events: Events,
    /// The documents as last received (rejected ones too, so a repeated
    /// snapshot does not warn again).
    documents: Documents,
}

impl Applier {
    async fn run(
        mut self,
        mut updates: BoxStream<'static, ConfigUpdate>,
        progress: watch::Sender<Progress>,
    ) {
        while let Some(update) = updates.next().await {
            let snapshot = matches!(update, ConfigUpdate::Snapshot(_));
            match update {
                ConfigUpdate::Snapshot(documents) => self.snapshot(documents),
                ConfigUpdate::Put(key, document) => self.put(key, document),
                ConfigUpdate::Delete(key) => self.delete(&key),
            }
            progress.send_modify(|p| {
                p.loaded |= snapshot;
                p.updates += 1;
            });
        }
        progress.send_modify(|p| p.loaded = true);
    }

    fn snapshot(&mut self, documents: Documents) {
        let gone: Vec<String> = self
            .documents
            .keys()
            .filter(|key| !documents.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            self.delete(&key);
        }
        for (key, document) in documents {
            self.put(key, document);
        }
    }

    fn put(&mut self, key: String, document: Bytes) {
        if self.documents.get(&key) == Some(&document) {
            return;
        }
        self.apply(&key, Some(&document));
        self.documents.insert(key, document);
    }

    fn delete(&mut self, key: &str) {
        if self.documents.remove(key).is_some() {
            self.apply(key, None);
        }
    }

    /// Puts `document` (or, when deleted, the built-in values) in force
    /// for every target of `key`, or for none if it is invalid for one.
    fn apply(&self, key: &str, document: Option<&Bytes>) {
        let Some(targets) = self.targets.get(key) else {
            if document.is_some()
                && (key.starts_with(RATE_LIMIT) || key.starts_with(CIRCUIT_BREAKER))
            {
                // Perhaps another service's policy, perhaps a typo.
                tracing::warn!(
                    key,
                    "no policy or breaker of this process has this config key"
                );
            }
            return;
        };
        let settings: Result<Vec<Setting>, String> = targets
            .iter()
            .map(|target| match document {
                Some(document) => target.read(document),
                None => Ok(target.built_in()),
            })
            .collect();
        let result = settings.and_then(|settings| {
            settings
                .into_iter()
                .try_for_each(Setting::put_in_force)
                .map_err(|e| e.to_string())
        });
        let event = match (&result, document) {
            (Err(error), _) => {
                tracing::warn!(
                    key,
                    %error,
                    "config document rejected; the last good value stays in force"
                );
                Event::named(ConfigEvent::Rejected).with_detail(error.clone())
            }
            (Ok(()), Some(_)) => {
                tracing::info!(key, "config document in force");
                Event::named(ConfigEvent::Applied)
            }
            (Ok(()), None) => {
                tracing::info!(key, "config document deleted; built-in value in force");
                Event::named(ConfigEvent::Reverted)
            }
        };
        self.events.emit(event.with_policy(key));
    }
}
