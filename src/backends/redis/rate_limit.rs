//! `RateLimitStore` for `RedisStore`: one `EVALSHA` of `scripts/gcra.lua`
//! per decision on one key, with Redis `TIME` as the clock unless a caller
//! clock was set.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::RedisStore;
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::rate_limit::store::state_key;
use crate::layers::rate_limit::{Decision, Quota, RateLimitStore};

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/gcra.lua")));

impl RateLimitStore for RedisStore {
    async fn decide(
        &self,
        policy: &str,
        key: &str,
        quota: &Quota,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        let key = state_key(self.keyspace(), policy, key);
        let now = self.caller_now();
        let mut invocation = GCRA.key(key);
        invocation
            .arg(quota.count())
            .arg(quota.period_us())
            .arg(quota.burst())
            .arg(cost)
            .arg(now);
        let reply: (u8, u64, i64, u64) = self.invoke(&invocation).await?;
        let (allowed, remaining, retry_after_us, reset_us) = reply;
        let reset = Duration::from_micros(reset_us);
        Ok(if allowed == 1 {
            Decision::Allowed { remaining, reset }
        } else {
            Decision::Denied {
                retry_after: u64::try_from(retry_after_us)
                    .ok()
                    .map(Duration::from_micros),
                remaining,
                reset,
            }
        })
    }
}
