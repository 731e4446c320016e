//! `CircuitBreakerStore` for `RedisStore`: one `EVALSHA` per poll of a key
//! and one per transition (a version compare-and-set), with Redis `TIME`
//! as the clock of the shared open time unless a caller clock was set.

use std::sync::LazyLock;

use redis::Script;

use super::RedisStore;
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::circuit_breaker::store::{decode, state_key};
use crate::layers::circuit_breaker::{CircuitBreakerStore, Published, SharedState, Versioned};

static LOAD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/breaker_load.lua")));
static PUBLISH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/breaker_publish.lua")));

/// A stored value the store cannot read is a protocol error, not a state.
fn parse(value: &str, now_us: u64) -> Result<Option<Versioned>, StoreError> {
    if value.is_empty() {
        return Ok(None);
    }
    decode(value, now_us)
        .map(Some)
        .ok_or_else(|| StoreError::Protocol(format!("unreadable breaker state {value:?}")))
}

impl CircuitBreakerStore for RedisStore {
    async fn load(&self, id: &str) -> Result<Option<Versioned>, StoreError> {
        let mut invocation = LOAD.key(state_key(self.keyspace(), id));
        invocation.arg(self.caller_now());
        let (value, now_us): (String, u64) = self.invoke(&invocation).await?;
        parse(&value, now_us)
    }

    async fn publish(
        &self,
        id: &str,
        expected: u64,
        writer: u64,
        next: SharedState,
    ) -> Result<Published, StoreError> {
        let mut invocation = PUBLISH.key(state_key(self.keyspace(), id));
        invocation
            .arg(expected)
            .arg(next.state.as_str())
            .arg(u64::try_from(next.open_for.as_micros()).unwrap_or(0))
            .arg(next.reopens)
            .arg(u64::try_from(next.ttl().as_millis()).unwrap_or(u64::MAX))
            .arg(writer)
            .arg(self.caller_now());
        let (version, current, now_us): (u64, String, u64) = self.invoke(&invocation).await?;
        if version > 0 {
            return Ok(Published::Applied(version));
        }
        Ok(Published::Conflict(parse(&current, now_us)?))
    }
}
