//! `Priority`: the classes of traffic, and the default classifier.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use serde::{Deserialize, Serialize};

/// The class of a request: lower classes are shed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// May fill the whole limit (health checks, control traffic).
    Critical,
    /// Ordinary traffic: may fill the normal share of the limit.
    Normal,
    /// Deferrable work: may fill only the batch share, so it is shed first.
    Batch,
}

impl Priority {
    /// `critical`, `normal` or `batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Normal => "normal",
            Self::Batch => "batch",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A function from a request head to its [`Priority`].
pub(crate) type Classifier = Arc<dyn Fn(&Parts) -> Priority + Send + Sync>;

/// The default classifier: probes (health checks and metric scrapes, as
/// [`is_probe`](crate::health::is_probe) tells them) are
/// [`Priority::Critical`], everything else [`Priority::Normal`].
///
/// ```
/// use battlement::concurrency_limit::{Priority, default_priority};
///
/// let (parts, ()) = http::Request::get("/readyz").body(()).unwrap().into_parts();
/// assert_eq!(default_priority(&parts), Priority::Critical);
/// let (parts, ()) = http::Request::get("/orders").body(()).unwrap().into_parts();
/// assert_eq!(default_priority(&parts), Priority::Normal);
/// ```
pub fn default_priority(parts: &Parts) -> Priority {
    if crate::health::is_probe(parts.uri.path()) {
        Priority::Critical
    } else {
        Priority::Normal
    }
}
