//! `ConfigSource`: where the documents come from.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::stream::BoxStream;

/// The documents of a source, keyed by their path under the source's
/// prefix (`rate_limit/per-ip`, `circuit_breaker/downstream`).
pub type Documents = BTreeMap<String, Bytes>;

/// One change of the documents a [`ConfigSource`] holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigUpdate {
    /// Every document, replacing all earlier ones: the first update of a
    /// stream, and again whenever the source lost track of changes (etcd
    /// compacted the revisions it would have resumed from).
    Snapshot(Documents),
    /// A document was written.
    Put(String, Bytes),
    /// A document was deleted: its setting returns to the built-in default.
    Delete(String),
}

/// A source of configuration documents that can change at runtime:
/// [`MemoryConfigSource`](super::MemoryConfigSource) in process,
/// `EtcdConfigSource` (feature `etcd`) from an etcd prefix.
///
/// A [`ConfigReloader`](super::ConfigReloader) reads the stream and puts the
/// documents in force.
pub trait ConfigSource: Send + Sync + 'static {
    /// The documents now and as they change: the stream starts with a
    /// [`ConfigUpdate::Snapshot`], rides out outages of the source by
    /// itself (resuming where it left off), and ends only when the source
    /// is gone.
    fn updates(&self) -> BoxStream<'static, ConfigUpdate>;
}
