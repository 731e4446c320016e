//! `RateLimitStore`: where GCRA state lives.

use std::future::Future;
use std::time::Duration;

use super::quota::Quota;
use crate::backends::{Backend, KeySpace};
use crate::error::StoreError;

/// What a store decided for one request under one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Allowed {
        /// Requests of cost 1 still allowed right now.
        remaining: u64,
        /// Time until the bucket is full again.
        reset: Duration,
    },
    /// Reject it.
    Denied {
        /// When a retry can succeed; `None` when it never can (cost above
        /// the burst).
        retry_after: Option<Duration>,
        /// Requests of cost 1 still allowed right now.
        remaining: u64,
        /// Time until the bucket is full again.
        reset: Duration,
    },
}

impl Decision {
    /// Whether the request may go ahead.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }

    /// When to retry a denied request.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Allowed { .. } => None,
            Self::Denied { retry_after, .. } => *retry_after,
        }
    }

    /// Requests of cost 1 still allowed.
    pub fn remaining(&self) -> u64 {
        match self {
            Self::Allowed { remaining, .. } | Self::Denied { remaining, .. } => *remaining,
        }
    }

    /// Time until the bucket is full again.
    pub fn reset(&self) -> Duration {
        match self {
            Self::Allowed { reset, .. } | Self::Denied { reset, .. } => *reset,
        }
    }
}

/// One policy's share of a request: what [`RateLimitStore::decide_all`]
/// decides for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge<'a> {
    /// The policy's name.
    pub policy: &'a str,
    /// The request's key under that policy.
    pub key: &'a str,
    /// The policy's quota.
    pub quota: &'a Quota,
    /// What the request costs under that policy.
    pub cost: u64,
}

impl<'a> Charge<'a> {
    /// `cost` for `key` under `policy`'s `quota`.
    pub fn new(policy: &'a str, key: &'a str, quota: &'a Quota, cost: u64) -> Self {
        Self {
            policy,
            key,
            quota,
            cost,
        }
    }
}

/// GCRA state behind a rate limiter.
///
/// `decide` is one atomic step: read the key's state, decide, and (only when
/// allowed) write the new state with a TTL equal to the time until the
/// bucket is full again. Implementations must give the same decisions for
/// the same sequence of (time, key, cost); the shared conformance suite
/// checks it. `Err` means the store failed, never that the request was
/// denied.
///
/// `decide_all` decides every policy of one request, all or nothing: either
/// every charge is allowed and spent, or none is spent.
pub trait RateLimitStore: Backend {
    /// Decides a request of `charge.cost` for `charge.key` under its policy's quota.
    fn decide(
        &self,
        charge: Charge<'_>,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send;

    /// [`decide`](Self::decide), possibly after a short wait to share one
    /// store call with other keys' decisions (the leased mode's cold keys):
    /// on a standalone Redis, until the decision queue passes once through
    /// the scheduler with nothing new (or holds 128); the same as `decide`
    /// elsewhere.
    fn decide_batched(
        &self,
        charge: Charge<'_>,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send {
        self.decide(charge)
    }

    /// Gives back `charge.cost` units that an allowed decision on
    /// `charge.key` took and that were not spent (the unused part of a
    /// lease): the key's debt drops by that many units of `charge.quota`,
    /// never below an empty bucket, so the shared state can never admit
    /// more than the quota. A key absent, or written under another quota
    /// since (another period, count or burst: a reload), is left alone, so
    /// units leased under a replaced quota never drain the key at its
    /// rate. One store call.
    fn give_back(&self, charge: Charge<'_>) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Decides every charge of one request, all or nothing; one decision
    /// per charge, in order.
    ///
    /// When every charge is allowed, all are spent and every decision is
    /// [`Decision::Allowed`]. Otherwise none is spent: the charges denied
    /// on their own are [`Decision::Denied`], and the others are
    /// [`Decision::Allowed`] with the numbers of their state as it stands
    /// (nothing was taken from them).
    ///
    /// Every store of this crate overrides this. The default decides the
    /// charges one by one and stops at the first denial, whose own
    /// decision ends the list: the charges before it keep their cost, so a
    /// store written outside this crate should override it.
    fn decide_all(
        &self,
        charges: &[Charge<'_>],
    ) -> impl Future<Output = Result<Vec<Decision>, StoreError>> + Send {
        async move {
            let mut decisions = Vec::with_capacity(charges.len());
            for c in charges {
                let decision = self.decide(*c).await?;
                decisions.push(decision);
                if !decision.is_allowed() {
                    break;
                }
            }
            Ok(decisions)
        }
    }
}

/// The concern name of rate-limit keys in a
/// [`KeySpace`](crate::backends::KeySpace): `{prefix}:rl:{policy/key}`.
pub(crate) const CONCERN: &str = "rl";

/// Writes the id of `key` under `policy` (`policy/key`) into `out`; every
/// backend names its state this way.
pub(crate) fn write_state_id(out: &mut String, policy: &str, key: &str) {
    out.push_str(policy);
    out.push('/');
    out.push_str(key);
}

/// The full stored key of `key` under `policy` in `keys`.
#[cfg_attr(not(any(feature = "redis", feature = "etcd")), allow(dead_code))]
pub(crate) fn state_key(keys: &KeySpace, policy: &str, key: &str) -> String {
    let mut id = String::with_capacity(policy.len() + key.len() + 1);
    write_state_id(&mut id, policy, key);
    keys.key(CONCERN, &id)
}
