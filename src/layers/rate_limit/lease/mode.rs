//! `SyncMode`: how a policy's decisions reach the shared store.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// How a policy's decisions reach a shared store (Redis, etcd).
///
/// ```
/// use battlement::rate_limit::SyncMode;
///
/// assert_eq!(SyncMode::default(), SyncMode::Exact);
/// assert_eq!("leased".parse::<SyncMode>().unwrap(), SyncMode::Leased);
/// assert!("fast".parse::<SyncMode>().is_err());
/// ```
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// One store decision per request (batched with concurrent ones): the
    /// shared state decides every request. The default.
    #[default]
    Exact,
    /// Local-first: capacity is leased from the shared state ahead of use
    /// and spent in process, denials are cached until their retry-after,
    /// and decisions on cold keys share store calls. Never admits more
    /// than the quota; see [`Leased`](super::Leased) for the bound. A
    /// request under several policies is still decided all or nothing on
    /// the store, exactly: leasing applies to a request under one policy.
    Leased,
}

impl SyncMode {
    /// `"exact"` or `"leased"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Leased => "leased",
        }
    }
}

impl fmt::Display for SyncMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `exact` or `leased` (the `RATE_LIMIT_MODE` syntax of the examples).
impl FromStr for SyncMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim() {
            "exact" => Ok(Self::Exact),
            "leased" => Ok(Self::Leased),
            other => Err(ConfigError::new(format!(
                "rate limit mode {other:?} is not exact or leased"
            ))),
        }
    }
}
