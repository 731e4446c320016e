//! `Policy`: a named quota applied per key.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

use super::lease::SyncMode;
use super::quota::Quota;
use crate::error::ConfigError;
use crate::key::{GlobalKey, KeyExtractor, RequestHead};

type CostFn = dyn Fn(&RequestHead<'_>) -> u64 + Send + Sync;

/// A named quota, counted per key.
///
/// ```
/// use battlement::key::PeerIp;
/// use battlement::rate_limit::{Policy, Quota, SyncMode};
///
/// let per_ip = Policy::new("per-ip", Quota::per_second(100).unwrap())
///     .unwrap()
///     .key(PeerIp)
///     .cost(|head| if head.method == http::Method::POST { 5 } else { 1 })
///     .mode(SyncMode::Leased);
/// assert_eq!(per_ip.name(), "per-ip");
/// assert_eq!(per_ip.sync_mode(), SyncMode::Leased);
/// ```
#[derive(Clone)]
pub struct Policy {
    pub(crate) name: Arc<str>,
    pub(crate) quota: Quota,
    pub(crate) policy_header: HeaderValue,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) cost: Option<Arc<CostFn>>,
    pub(crate) mode: SyncMode,
}

impl Policy {
    /// A policy named `name` (1 to 64 characters of `A-Z a-z 0-9 . _ -`,
    /// sent in the `RateLimit` headers) with one global key and cost 1.
    pub fn new(name: &str, quota: Quota) -> Result<Self, ConfigError> {
        let valid = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(ConfigError::new(format!(
                "rate limit policy name {name:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -"
            )));
        }
        Ok(Self {
            name: name.into(),
            quota,
            policy_header: super::headers::policy_value(name, &quota),
            key: Arc::new(GlobalKey),
            cost: None,
            mode: SyncMode::Exact,
        })
    }

    /// Counts requests per key from `extractor` (default: one global key).
    pub fn key(mut self, extractor: impl KeyExtractor) -> Self {
        self.key = Arc::new(extractor);
        self
    }

    /// Charges `cost(head)` per request (default 1; 0 only reports).
    pub fn cost(mut self, cost: impl Fn(&RequestHead<'_>) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// How decisions reach a shared store (default [`SyncMode::Exact`]);
    /// see the [leased mode](super::lease) and its error bound.
    pub fn mode(mut self, mode: SyncMode) -> Self {
        self.mode = mode;
        self
    }

    /// The sync mode.
    pub fn sync_mode(&self) -> SyncMode {
        self.mode
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    pub(crate) fn set_quota(&mut self, quota: Quota) {
        self.quota = quota;
        self.policy_header = super::headers::policy_value(&self.name, &quota);
    }

    pub(crate) fn cost_of(&self, head: &RequestHead<'_>) -> u64 {
        self.cost.as_ref().map_or(1, |f| f(head))
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}
