//! `IdempotencyStore`: where claims and completed responses live.

use std::future::Future;
use std::time::Duration;

use super::record::{ClaimToken, Fingerprint, Record, StoredResponse};
use crate::backends::{Backend, KeySpace};
use crate::error::StoreError;

/// The concern name of idempotency keys in a [`KeySpace`].
pub const CONCERN: &str = "idem";

/// The outcome of a claim.
// Short-lived values, built once per request: boxing would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This caller owns the key now, under the token it claimed with:
    /// execute, then complete or release.
    Won,
    /// Another request holds the key and is executing.
    InFlight {
        /// That request's fingerprint.
        fingerprint: Fingerprint,
    },
    /// The key was completed: replay.
    Completed {
        /// The completed request's fingerprint.
        fingerprint: Fingerprint,
        /// Its response.
        response: StoredResponse,
    },
}

/// A request claiming a key: the `token` it claims with, its
/// `fingerprint`, and how long the claim keeps the key (`lock`).
#[derive(Debug, Clone, Copy)]
pub struct Claimant<'a> {
    /// The token the claim is made with.
    pub token: ClaimToken,
    /// The fingerprint of the claiming request.
    pub fingerprint: &'a Fingerprint,
    /// How long the claim keeps the key unless renewed.
    pub lock: Duration,
}

impl<'a> Claimant<'a> {
    /// A claim as `token` by a request with `fingerprint`, for `lock`.
    pub fn new(token: ClaimToken, fingerprint: &'a Fingerprint, lock: Duration) -> Self {
        Self {
            token,
            fingerprint,
            lock,
        }
    }

    /// The in-flight record this claim writes at `now_us` (µs since the
    /// UNIX epoch, store clock).
    pub(crate) fn record(&self, now_us: u64) -> Record {
        Record::InFlight {
            expires_us: now_us.saturating_add(micros(self.lock)),
            token: self.token,
            fingerprint: *self.fingerprint,
        }
    }
}

/// What a request's claim completes with: the claim's `token`, the
/// request's `fingerprint`, and the `response` to keep for `retention`.
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The token the claim was made with.
    pub token: ClaimToken,
    /// The fingerprint of the request that made the claim.
    pub fingerprint: &'a Fingerprint,
    /// The response to store.
    pub response: &'a StoredResponse,
    /// How long the response is kept.
    pub retention: Duration,
}

impl<'a> Completion<'a> {
    /// `response` for the claim `token` of a request with `fingerprint`,
    /// kept for `retention`.
    pub fn new(
        token: ClaimToken,
        fingerprint: &'a Fingerprint,
        response: &'a StoredResponse,
        retention: Duration,
    ) -> Self {
        Self {
            token,
            fingerprint,
            response,
            retention,
        }
    }

    /// The completed record this writes at `now_us` (µs since the UNIX
    /// epoch, store clock).
    pub(crate) fn record(&self, now_us: u64) -> Record {
        Record::Completed {
            expires_us: now_us.saturating_add(micros(self.retention)),
            fingerprint: *self.fingerprint,
            response: self.response.clone(),
        }
    }
}

/// Claims and completed responses of idempotency keys.
///
/// Every method is one atomic step on the server (Redis: one script; etcd:
/// one revision-guarded transaction; memory: one locked map update), so
/// of any number of concurrent claims of one key exactly one wins. A
/// record counts until its logical expiry on the store's clock (Redis
/// `TIME` unless a caller clock is set); the server TTL or lease then
/// removes it. `Err` means the store failed, never a conflict.
pub trait IdempotencyStore: Backend {
    /// Claims `id` for the request of `claimant.fingerprint` as
    /// `claimant.token`, locked for `claimant.lock`; an expired claim or
    /// record counts as absent. The caller picks the token
    /// ([`ClaimToken::random`]) so that it can release a claim whose
    /// answer it never got (a timeout).
    fn claim(
        &self,
        id: &str,
        claimant: Claimant<'_>,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Stores `done.response` for the claim `done.token`, kept for
    /// `done.retention`. `false` when the claim is no longer this token's
    /// (its lock expired and another request claimed the key).
    fn complete(
        &self,
        id: &str,
        done: Completion<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Extends the live claim `token` to `lock` from now, for a request
    /// that runs longer than its lock. `false` when the claim is no longer
    /// this token's or has expired.
    fn renew(
        &self,
        id: &str,
        token: ClaimToken,
        lock: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives up the claim `token` (the request failed before a response
    /// worth keeping); does nothing if the claim is no longer its.
    fn release(
        &self,
        id: &str,
        token: ClaimToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The stored key of `id`.
#[cfg_attr(not(any(feature = "redis", feature = "etcd")), allow(dead_code))]
pub(crate) fn state_key(keys: &KeySpace, id: &str) -> String {
    keys.key(CONCERN, id)
}

/// Microseconds of `d`, saturated.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
