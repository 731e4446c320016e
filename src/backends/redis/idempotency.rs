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

const CLAIM_LUA: &str = timed_script!("idempotency_claim.lua");
static CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM_LUA));
const COMPLETE_LUA: &str = timed_script!("idempotency_complete.lua");
static COMPLETE: LazyLock<Script> = LazyLock::new(|| Script::new(COMPLETE_LUA));
static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(timed_script!("idempotency_renew.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/idempotency_release.lua")));

impl IdempotencyStore for RedisStore {
    async fn claim(&self, id: &str, claimant: Claimant<'_>) -> Result<Claim, StoreError> {
        self.warn_once_if_not_persistent().await;
        let key = state_key(self.keyspace(), id);
        let args = [
            claimant.token.to_hex().into_bytes(),
            claimant.fingerprint.to_hex().into_bytes(),
            micros(claimant.lock).max(1000).to_string().into_bytes(),
            self.caller_now().into_bytes(),
        ];
        let (current, replicated): (Vec<u8>, bool) = self
            .invoke_replicated(&CLAIM, CLAIM_LUA, &key, &args)
            .await?;
        if current.is_empty() {
            if !replicated {
                // Not acknowledged: given back, so the retry can run it.
                let _ = self.release(id, claimant.token).await;
                return Err(unreplicated());
            }
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
        let key = state_key(self.keyspace(), id);
        let args = [
            done.token.to_hex().into_bytes(),
            done.fingerprint.to_hex().into_bytes(),
            encode_response(done.response),
            micros(done.retention).max(1000).to_string().into_bytes(),
            self.caller_now().into_bytes(),
        ];
        let (stored, replicated): (u8, bool) = self
            .invoke_replicated(&COMPLETE, COMPLETE_LUA, &key, &args)
            .await?;
        if stored == 1 && !replicated {
            // The request ran: its record is kept all the same.
            tracing::warn!(
                "idempotency record not confirmed by a replica in time: a failover now \
                 may run its key again"
            );
        }
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

/// A write fewer replicas confirmed than `wait_for_replicas` asks.
fn unreplicated() -> StoreError {
    StoreError::Unavailable("redis: the write reached fewer replicas than wait_for_replicas".into())
}
