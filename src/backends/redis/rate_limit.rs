//! `RateLimitStore` for `RedisStore`: `scripts/gcra.lua` decides, one
//! `EVALSHA` per decision or per batch of queued ones (see
//! [`decision_queue`](super::decision_queue)), with Redis `TIME` as the
//! clock unless a caller clock was set.

use std::sync::LazyLock;

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::RedisStore;
use super::decision_queue::{MAX_QUEUED, Queued};
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::rate_limit::gcra;
use crate::layers::rate_limit::store::state_key;
use crate::layers::rate_limit::{Decision, Quota, RateLimitStore};

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/gcra.lua")));

static GIVE_BACK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/gcra_give_back.lua")));

/// How much longer than "until full" a key may live on Redis's clock, so
/// that most decisions keep its expiry instead of moving it (as the memory
/// store does).
const TTL_SLACK_US: u64 = 100_000;

impl RedisStore {
    /// Decides every `(key, packed arguments)` in one script call; the
    /// debts in the same order.
    pub(super) async fn decide_keys<'a>(
        &self,
        keys: impl ExactSizeIterator<Item = (&'a str, &'a [u8; 40])>,
    ) -> Result<Vec<i64>, StoreError> {
        let count = keys.len();
        let mut invocation = GCRA.prepare_invoke();
        for (key, args) in keys {
            invocation.key(key).arg(&args[..]);
        }
        invocation.arg(TTL_SLACK_US);
        let debts: Vec<i64> = self.invoke(&invocation).await?;
        if debts.len() != count {
            return Err(StoreError::Protocol(format!(
                "redis: {} rate-limit decisions for {count} keys",
                debts.len()
            )));
        }
        Ok(debts)
    }

    /// The debt after one decision: through the queue on a standalone
    /// server, in a call of its own on a cluster (or outside a runtime).
    async fn decide_packed(
        &self,
        key: String,
        args: [u8; 40],
        linger: bool,
    ) -> Result<i64, StoreError> {
        let (key, args) = match self.decision_queue() {
            Some(queue) => {
                let (reply, answer) = oneshot::channel();
                let queued = Queued {
                    key,
                    args,
                    linger,
                    reply,
                };
                match queue.try_send(queued) {
                    Ok(()) => return self.answer(answer).await,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        return Err(StoreError::Unavailable(format!(
                            "redis: {MAX_QUEUED} rate-limit decisions already wait for Redis"
                        )));
                    }
                    // The queue's runtime has shut down: decide alone.
                    Err(mpsc::error::TrySendError::Closed(queued)) => (queued.key, queued.args),
                }
            }
            None => (key, args),
        };
        let debts = self
            .decide_keys(std::iter::once((key.as_str(), &args)))
            .await?;
        debts
            .first()
            .copied()
            .ok_or_else(|| StoreError::Protocol("redis: no rate-limit decision".into()))
    }

    /// Waits for a queued decision, within the store's timeout.
    async fn answer(
        &self,
        answer: oneshot::Receiver<Result<i64, StoreError>>,
    ) -> Result<i64, StoreError> {
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable(
                "redis: the decision queue stopped".into(),
            )),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }
}

/// The arguments of one decision, packed as the script reads them: five
/// little-endian doubles. Every number is below 2^53 (see `Quota`), so
/// doubles hold them exactly.
fn pack(quota: &Quota, cost: u64, now_us: Option<u64>) -> [u8; 40] {
    let numbers = [
        quota.count() as f64,
        quota.period_us() as f64,
        quota.burst() as f64,
        cost as f64,
        // Redis TIME unless a caller clock was set.
        now_us.map_or(-1.0, |us| us as f64),
    ];
    let mut packed = [0u8; 40];
    for (slot, number) in packed.chunks_exact_mut(8).zip(numbers) {
        slot.copy_from_slice(&number.to_le_bytes());
    }
    packed
}

impl RedisStore {
    /// One decision, lingering in the queue (see
    /// [`decision_queue`](super::decision_queue)) or not.
    async fn decide_one(
        &self,
        policy: &str,
        key: &str,
        quota: &Quota,
        cost: u64,
        linger: bool,
    ) -> Result<Decision, StoreError> {
        let key = state_key(self.keyspace(), policy, key);
        let now = self.caller_clock().map(|clock| clock.now_micros());
        let debt = self
            .decide_packed(key, pack(quota, cost, now), linger)
            .await?;
        Ok(match u64::try_from(debt) {
            Ok(after) => gcra::allowed(quota, after),
            Err(_) => gcra::denied(quota, cost, debt.unsigned_abs() - 1),
        })
    }
}

impl RateLimitStore for RedisStore {
    async fn decide(
        &self,
        policy: &str,
        key: &str,
        quota: &Quota,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        self.decide_one(policy, key, quota, cost, false).await
    }

    /// Lingers in the decision queue for other decisions to share the
    /// script call (standalone servers; a Cluster decides at once).
    async fn decide_batched(
        &self,
        policy: &str,
        key: &str,
        quota: &Quota,
        cost: u64,
    ) -> Result<Decision, StoreError> {
        self.decide_one(policy, key, quota, cost, true).await
    }

    /// One `EVALSHA` of `scripts/gcra_give_back.lua` (one key, so it runs
    /// on a Cluster as on a standalone server).
    async fn give_back(
        &self,
        policy: &str,
        key: &str,
        quota: &Quota,
        units: u64,
    ) -> Result<(), StoreError> {
        let key = state_key(self.keyspace(), policy, key);
        let now = self.caller_clock().map(|clock| clock.now_micros());
        let mut invocation = GIVE_BACK.prepare_invoke();
        invocation.key(key).arg(&pack(quota, units, now)[..]);
        let _left: i64 = self.invoke(&invocation).await?;
        Ok(())
    }
}
