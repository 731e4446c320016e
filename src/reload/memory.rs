//! `MemoryConfigSource`: documents pushed in process.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokio::sync::watch;

use super::source::{ConfigSource, ConfigUpdate, Documents};

/// An in-process [`ConfigSource`]: a handle that pushes new documents to
/// every subscribed [`ConfigReloader`](super::ConfigReloader). Clones
/// share the documents.
///
/// ```
/// use battlement::reload::MemoryConfigSource;
///
/// let source = MemoryConfigSource::new();
/// source.put("rate_limit/per-ip", r#"{"count": 50, "period": "1m"}"#);
/// assert_eq!(source.documents().len(), 1);
/// source.delete("rate_limit/per-ip");
/// assert!(source.documents().is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct MemoryConfigSource {
    documents: Arc<watch::Sender<Arc<Documents>>>,
}

impl Default for MemoryConfigSource {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryConfigSource {
    /// A source with no documents.
    pub fn new() -> Self {
        Self {
            documents: Arc::new(watch::Sender::new(Arc::new(Documents::new()))),
        }
    }

    /// Writes the document at `key` (e.g. `rate_limit/per-ip`).
    pub fn put(&self, key: impl Into<String>, document: impl Into<Bytes>) {
        let (key, document) = (key.into(), document.into());
        self.documents.send_modify(|docs| {
            Arc::make_mut(docs).insert(key, document);
        });
    }

    /// Deletes the document at `key`: its setting returns to the default.
    pub fn delete(&self, key: &str) {
        self.documents.send_if_modified(|docs| {
            docs.contains_key(key) && Arc::make_mut(docs).remove(key).is_some()
        });
    }

    /// The documents now.
    pub fn documents(&self) -> Documents {
        Documents::clone(&self.documents.borrow())
    }
}

impl ConfigSource for MemoryConfigSource {
    /// A snapshot now and after each change (changes in quick succession
    /// may arrive as one snapshot).
    fn updates(&self) -> BoxStream<'static, ConfigUpdate> {
        let rx = self.documents.subscribe();
        stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first {
                rx.changed().await.ok()?;
            }
            let docs = Documents::clone(&rx.borrow_and_update());
            Some((ConfigUpdate::Snapshot(docs), (rx, false)))
        })
        .boxed()
    }
}
