//! `IdempotencyStore` for `RedisStore`: claim, complete and release are one
//! `EVALSHA` each on one key, with Redis `TIME` as the clock of lock and
//! retention expiry unless a caller clock was set; the key's `PX` TTL
//! removes it after.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::RedisStore;
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::idempotency::record::{Unreadable, encode_response};
use crate::layers::idempotency::store::{micros, state_key};
use crate::layers::idempotency::{
    Claim, ClaimToken, Claimant, Completion, IdempotencyStore, Record,
};

static CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(timed_script!("idempotency_claim.lua")));
static COMPLETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(timed_script!("idempotency_complete.lua")));
static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(timed_script!("idempotency_renew.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/idempotency_release.lua")));

impl IdempotencyStore for RedisStore {
    async fn claim(&self, id: &str, claimant: Claimant<'_>) -> Result<Claim, StoreError> {
        self.warn_once_if_not_persistent().await;
        let mut invocation = CLAIM.key(state_key(self.keyspace(), id));
        invocation
            .arg(claimant.token.to_hex())
            .arg(claimant.fingerprint.to_hex())
            .arg(micros(claimant.lock).max(1000))
            .arg(self.caller_now());
        let current: Vec<u8> = self.invoke(&invocation).await?;
        if current.is_empty() {
            return Ok(Claim::Won);
        }
        match Record::read(&current).map_err(Unreadable::into_store_error)? {
            Record::InFlight { fingerprint, .. } => Ok(Claim::InFlight { fingerprint }),
            Record::Completed {
                fingerprint,
                response,
                ..
            } => Ok(Claim::Completed {
                fingerprint,
                response,
            }),
        }
    }

    async fn complete(&self, id: &str, done: Completion<'_>) -> Result<bool, StoreError> {
        let mut invocation = COMPLETE.key(state_key(self.keyspace(), id));
        invocation
            .arg(done.token.to_hex())
            .arg(done.fingerprint.to_hex())
            .arg(encode_response(done.response))
            .arg(micros(done.retention).max(1000))
            .arg(self.caller_now());
        let stored: u8 = self.invoke(&invocation).await?;
        Ok(stored == 1)
    }

    async fn renew(&self, id: &str, token: ClaimToken, lock: Duration) -> Result<bool, StoreError> {
        let mut invocation = RENEW.key(state_key(self.keyspace(), id));
        invocation
            .arg(token.to_hex())
            .arg(micros(lock).max(1000))
            .arg(self.caller_now());
        let renewed: u8 = self.invoke(&invocation).await?;
        Ok(renewed == 1)
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), StoreError> {
        let mut invocation = RELEASE.key(state_key(self.keyspace(), id));
        invocation.arg(token.to_hex());
        let _: u8 = self.invoke(&invocation).await?;
        Ok(())
    }
}
