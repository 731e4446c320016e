//! `RateLimitStore` for `EtcdStore`: read, decide, then write with a
//! transaction that only succeeds if the key's revision is unchanged; on a
//! conflict the transaction's else-branch returns the new value and the
//! decision is made again. Written keys carry a lease as their TTL. The
//! policies of one request are read in one transaction and written in one
//! guarded on every key, all or nothing.
//!
//! etcd has no server clock, so decisions use the store's clock (the
//! system clock by default): keep instances NTP-synchronised. Each decision
//! costs at least two round trips, so this is the low-rate option; prefer Redis for hot paths.

use std::time::Duration;

use etcd_client::GetResponse;

use super::EtcdStore;
use super::txn::{Guarded, GuardedAll};
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::rate_limit::gcra::{self, GcraState};
use crate::layers::rate_limit::store::{Charge, state_key};
use crate::layers::rate_limit::{Decision, RateLimitStore};

/// Attempts before a decision under contention gives up.
const MAX_ATTEMPTS: u32 = 200;

/// The state and revision of a key (revision 0: absent).
fn read(resp: &GetResponse) -> (Option<GcraState>, i64) {
    match resp.kvs().first() {
        Some(kv) => (
            kv.value_str().ok().and_then(GcraState::decode),
            kv.mod_revision(),
        ),
        None => (None, 0),
    }
}

impl RateLimitStore for EtcdStore {
    /// Bounded as a whole by four per-call timeouts: a hot key under heavy
    /// contention fails with a timeout (handled by the layer's failure
    /// policy) instead of retrying for long.
    async fn decide(&self, charge: Charge<'_>) -> Result<Decision, StoreError> {
        let deadline = self.config().timeout() * 4;
        let (quota, cost) = (charge.quota, charge.cost);
        let decide = async {
            let key = state_key(self.keyspace(), charge.policy, charge.key);
            let (mut state, mut revision) = read(&self.get(&key).await?);
            for attempt in 0..MAX_ATTEMPTS {
                let step = gcra::decide(state, quota, cost, self.clock().now_micros());
                let Some(write) = step.write else {
                    return Ok(step.decision);
                };
                let ttl = Duration::from_micros(step.ttl_us());
                match self
                    .put_at(&key, revision, write.encode().as_bytes(), ttl)
                    .await?
                {
                    Guarded::Applied => return Ok(step.decision),
                    Guarded::Moved(get) => (state, revision) = read(&get),
                }
                back_off(attempt).await;
            }
            Err(conflicted("one rate-limit key"))
        };
        within(deadline, decide).await
    }

    /// A read, then a revision-guarded write (or delete, when nothing is
    /// owed any more), retried on conflict like a decision.
    async fn give_back(&self, charge: Charge<'_>) -> Result<(), StoreError> {
        let deadline = self.config().timeout() * 4;
        let (quota, units) = (charge.quota, charge.cost);
        let give_back = async {
            let key = state_key(self.keyspace(), charge.policy, charge.key);
            let (mut state, mut revision) = read(&self.get(&key).await?);
            for _ in 0..MAX_ATTEMPTS {
                let now = self.clock().now_micros();
                let step = gcra::give_back(state, quota, units, now);
                let Some(write) = step.write else {
                    return Ok(());
                };
                let guarded = if write.debt == 0 {
                    self.delete_at(&key, revision).await?
                } else {
                    let ttl = Duration::from_micros(step.ttl_us());
                    self.put_at(&key, revision, write.encode().as_bytes(), ttl)
                        .await?
                };
                match guarded {
                    Guarded::Applied => return Ok(()),
                    Guarded::Moved(get) => (state, revision) = read(&get),
                }
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=1_000))).await;
            }
            Err(StoreError::Backend(format!(
                "etcd: {MAX_ATTEMPTS} conflicting writes on one rate-limit key"
            )))
        };
        tokio::time::timeout(deadline, give_back)
            .await
            .map_err(|_| StoreError::Timeout(deadline))?
    }

    /// One read transaction for every key, then one write transaction
    /// guarded on all of them: every charge is written when all are
    /// allowed, none otherwise (a denied one only to restate a key left
    /// under another quota). A conflict reads every key again from the
    /// same round trip and decides again.
    async fn decide_all(&self, charges: &[Charge<'_>]) -> Result<Vec<Decision>, StoreError> {
        if let [c] = charges {
            return Ok(vec![self.decide(*c).await?]);
        }
        let deadline = self.config().timeout() * 4;
        let decide = async {
            let keys: Vec<String> = charges
                .iter()
                .map(|c| state_key(self.keyspace(), c.policy, c.key))
                .collect();
            let mut states: Vec<_> = self.get_all(&keys).await?.iter().map(read).collect();
            for attempt in 0..MAX_ATTEMPTS {
                let now = self.clock().now_micros();
                let steps: Vec<_> = charges
                    .iter()
                    .zip(&states)
                    .map(|(c, (state, _))| gcra::decide(*state, c.quota, c.cost, now))
                    .collect();
                let all = steps.iter().all(|step| step.decision.is_allowed());
                let writes: Vec<_> = keys
                    .iter()
                    .zip(&steps)
                    .filter(|(_, step)| all || !step.decision.is_allowed())
                    .filter_map(|(key, step)| {
                        let ttl = Duration::from_micros(step.ttl_us());
                        step.write.map(|w| (key.as_str(), w.encode(), ttl))
                    })
                    .collect();
                let decisions = charges.iter().zip(&states).zip(&steps).map(
                    |((c, (state, _)), step)| match step.decision.is_allowed() && !all {
                        // Spends nothing: the state as it stands.
                        true => gcra::decide(*state, c.quota, 0, now).decision,
                        false => step.decision,
                    },
                );
                if writes.is_empty() {
                    return Ok(decisions.collect());
                }
                let guards: Vec<_> = keys
                    .iter()
                    .zip(&states)
                    .map(|(key, (_, revision))| (key.as_str(), *revision))
                    .collect();
                match self.put_all_at(&guards, &writes).await? {
                    GuardedAll::Applied => return Ok(decisions.collect()),
                    GuardedAll::Moved(gets) => states = gets.iter().map(read).collect(),
                }
                back_off(attempt).await;
            }
            Err(conflicted("rate-limit keys"))
        };
        within(deadline, decide).await
    }
}

/// Waits a random moment that grows with `attempt`, so that contenders
/// for one key interleave.
async fn back_off(attempt: u32) {
    let spread = u64::from(attempt.min(20)) * 250;
    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=spread))).await;
}

/// Every attempt met a concurrent write on `what`.
fn conflicted(what: &str) -> StoreError {
    StoreError::Backend(format!("etcd: {MAX_ATTEMPTS} conflicting writes on {what}"))
}

/// `decide`, bounded by `deadline`.
async fn within<T>(
    deadline: Duration,
    decide: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(deadline, decide)
        .await
        .map_err(|_| StoreError::Timeout(deadline))?
}
