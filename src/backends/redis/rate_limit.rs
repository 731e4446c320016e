//! `RateLimitStore` for `RedisStore`: `scripts/gcra.lua` decides, one
//! `EVALSHA` per decision or per batch of queued ones (see
//! [`decision_queue`](super::decision_queue)), with Redis `TIME` as the
//! clock unless a caller clock was set.

use std::sync::LazyLock;

use redis::Script;
use redis::cluster_routing::Slot;
use tokio::sync::{mpsc, oneshot};

use super::RedisStore;
use super::decision_queue::{MAX_QUEUED, Queued};
use super::gate::{self, Ticket};
use crate::backends::Backend;
use crate::error::StoreError;
use crate::layers::rate_limit::gcra;
use crate::layers::rate_limit::store::{Charge, state_key};
use crate::layers::rate_limit::{Decision, Quota, RateLimitStore};

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(timed_script!("gcra.lua")));

static GIVE_BACK: LazyLock<Script> =
    LazyLock::new(|| Script::new(timed_script!("gcra_give_back.lua")));

/// How much longer than "until full" a key may live on Redis's clock, so
/// that most decisions keep its expiry instead of moving it (as the memory
/// store does).
const TTL_SLACK_US: u64 = 100_000;

impl RedisStore {
    /// Decides every `(key, packed arguments, group size on a group's
    /// first key)` in one script call; the `count` debts in the same order.
    pub(super) async fn decide_keys<'a>(
        &self,
        keys: impl Iterator<Item = (&'a str, &'a [u8; 40], Option<usize>)>,
        count: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let mut invocation = GCRA.prepare_invoke();
        for (key, args, group) in keys {
            invocation.key(key);
            match group {
                Some(size) => {
                    let mut grouped = [0u8; 48];
                    grouped[..40].copy_from_slice(args);
                    grouped[40..].copy_from_slice(&(size as f64).to_le_bytes());
                    invocation.arg(&grouped[..]);
                }
                None => {
                    invocation.arg(&args[..]);
                }
            }
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

    /// The debts of `keys` decided as one group, all or nothing, in one
    /// script call: through the queue on a standalone server, in a call of
    /// its own on a cluster slot (or outside a runtime).
    async fn decide_group(&self, keys: Vec<(String, [u8; 40])>) -> Result<Vec<i64>, StoreError> {
        let size = keys.len();
        let ticket = self.inner.gate.enter()?;
        let keys = match self.decision_queue() {
            Some(queue) => {
                let (reply, answer) = oneshot::channel();
                match queue.try_send(Queued::Group { keys, reply }) {
                    Ok(()) => {
                        let debts = self.answer(ticket, answer).await?;
                        if debts.len() != size {
                            return Err(StoreError::Protocol(format!(
                                "redis: {} rate-limit decisions for {size} keys",
                                debts.len()
                            )));
                        }
                        return Ok(debts);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => return Err(queue_full()),
                    Err(mpsc::error::TrySendError::Closed(Queued::Group { keys, .. })) => keys,
                    Err(mpsc::error::TrySendError::Closed(Queued::One { .. })) => {
                        return Err(StoreError::Protocol("redis: queue mixed up".into()));
                    }
                }
            }
            None => keys,
        };
        let grouped = keys
            .iter()
            .enumerate()
            .map(|(i, (key, args))| (key.as_str(), args, (i == 0).then_some(size)));
        self.decide_keys(grouped, size).await
    }

    /// The debt after one decision: through the queue on a standalone
    /// server, in a call of its own on a cluster (or outside a runtime).
    async fn decide_packed(
        &self,
        key: String,
        args: [u8; 40],
        linger: bool,
    ) -> Result<i64, StoreError> {
        // Known down: nothing is queued behind a server that cannot answer.
        let ticket = self.inner.gate.enter()?;
        let (key, args) = match self.decision_queue() {
            Some(queue) => {
                let (reply, answer) = oneshot::channel();
                let queued = Queued::One {
                    key,
                    args,
                    linger,
                    reply,
                };
                match queue.try_send(queued) {
                    Ok(()) => return self.answer(ticket, answer).await,
                    Err(mpsc::error::TrySendError::Full(_)) => return Err(queue_full()),
                    // The queue's runtime has shut down: decide alone.
                    Err(mpsc::error::TrySendError::Closed(Queued::One { key, args, .. })) => {
                        (key, args)
                    }
                    Err(mpsc::error::TrySendError::Closed(Queued::Group { .. })) => {
                        return Err(StoreError::Protocol("redis: queue mixed up".into()));
                    }
                }
            }
            None => (key, args),
        };
        let debts = self
            .decide_keys(std::iter::once((key.as_str(), &args, None)), 1)
            .await?;
        debts
            .first()
            .copied()
            .ok_or_else(|| StoreError::Protocol("redis: no rate-limit decision".into()))
    }

    /// One request's charges on a Cluster, whose scripts cannot name keys
    /// of different slots: one group per slot, all sent at once. When a
    /// slot's group denies (or fails), the groups other slots admitted give
    /// their charges back in a second call per slot.
    async fn decide_across_slots(
        &self,
        charges: &[Charge<'_>],
        keys: Vec<(String, [u8; 40])>,
    ) -> Result<Vec<i64>, StoreError> {
        let mut slots: Vec<(Slot, Vec<usize>)> = Vec::new();
        for (i, (key, _)) in keys.iter().enumerate() {
            let slot = Slot::for_key(key);
            match slots.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => slots.push((slot, vec![i])),
            }
        }
        if slots.len() == 1 {
            return self.decide_group(keys).await;
        }
        let calls = slots.iter().map(|(_, members)| {
            let group = members.iter().map(|&i| keys[i].clone()).collect();
            self.decide_group(group)
        });
        let answers = futures_util::future::join_all(calls).await;
        let mut debts = vec![0i64; keys.len()];
        let mut failure = None;
        let mut denied = false;
        // The slots whose group was admitted (spent).
        let mut spent = Vec::new();
        for ((_, members), answer) in slots.iter().zip(answers) {
            match answer {
                Ok(group) if group.len() == members.len() => {
                    if group.iter().any(|debt| *debt < 0) {
                        denied = true;
                    } else {
                        spent.push(members);
                    }
                    for (&i, debt) in members.iter().zip(group) {
                        debts[i] = debt;
                    }
                }
                Ok(group) => {
                    failure = Some(StoreError::Protocol(format!(
                        "redis: {} rate-limit decisions for {} keys",
                        group.len(),
                        members.len()
                    )));
                }
                Err(err) => failure = Some(err),
            }
        }
        if !denied && failure.is_none() {
            return Ok(debts);
        }
        let now = self.caller_clock().map(|clock| clock.now_micros());
        let returns = spent.iter().map(|members| {
            let group = members
                .iter()
                .map(|&i| {
                    let c = &charges[i];
                    (keys[i].0.clone(), pack_give_back(c.quota, c.cost, now))
                })
                .collect();
            self.decide_group(group)
        });
        let returned = futures_util::future::join_all(returns).await;
        for (members, answer) in spent.iter().zip(returned) {
            // A give-back that failed leaves the charge spent, reported as
            // the debt it left.
            for (&i, debt) in members.iter().zip(answer.unwrap_or_default()) {
                debts[i] = debt;
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(debts),
        }
    }
    /// Waits for a queued decision, within the store's timeout. A wait
    /// that times out marks the server down as the queue's own call would
    /// (which started a little later): the caller's next decision then
    /// fails at once.
    async fn answer<T>(
        &self,
        ticket: Ticket,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let timeout = self.inner.timeout;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable(
                "redis: the decision queue stopped".into(),
            )),
            Err(_) => {
                let err = StoreError::Timeout(timeout);
                gate::on_error(&self.inner, ticket, &err);
                Err(err)
            }
        }
    }
}

fn queue_full() -> StoreError {
    StoreError::Unavailable(format!(
        "redis: {MAX_QUEUED} rate-limit decisions already wait for Redis"
    ))
}

/// The arguments of one decision, packed as the script reads them: five
/// little-endian doubles. Every number is below 2^53 (see `Quota`), so
/// doubles hold them exactly.
fn pack(quota: &Quota, cost: u64, now_us: Option<u64>) -> [u8; 40] {
    pack_cost(quota, cost as f64, now_us)
}

/// The arguments that give `cost` back to a key (a negative cost).
fn pack_give_back(quota: &Quota, cost: u64, now_us: Option<u64>) -> [u8; 40] {
    pack_cost(quota, -(cost as f64), now_us)
}

fn pack_cost(quota: &Quota, cost: f64, now_us: Option<u64>) -> [u8; 40] {
    let numbers = [
        quota.count() as f64,
        quota.period_us() as f64,
        quota.burst() as f64,
        cost,
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
    async fn decide_one(&self, c: Charge<'_>, linger: bool) -> Result<Decision, StoreError> {
        let key = state_key(self.keyspace(), c.policy, c.key);
        let now = self.caller_clock().map(|clock| clock.now_micros());
        let debt = self
            .decide_packed(key, pack(c.quota, c.cost, now), linger)
            .await?;
        Ok(decision(c.quota, c.cost, debt))
    }
}

impl RateLimitStore for RedisStore {
    async fn decide(&self, charge: Charge<'_>) -> Result<Decision, StoreError> {
        self.decide_one(charge, false).await
    }

    /// Lingers in the decision queue for other decisions to share the
    /// script call (standalone servers; a Cluster decides at once).
    async fn decide_batched(&self, charge: Charge<'_>) -> Result<Decision, StoreError> {
        self.decide_one(charge, true).await
    }

    /// One `EVALSHA` of `scripts/gcra_give_back.lua` (one key, so it runs
    /// on a Cluster as on a standalone server).
    async fn give_back(&self, charge: Charge<'_>) -> Result<(), StoreError> {
        let key = state_key(self.keyspace(), charge.policy, charge.key);
        let now = self.caller_clock().map(|clock| clock.now_micros());
        let mut invocation = GIVE_BACK.prepare_invoke();
        invocation
            .key(key)
            .arg(&pack(charge.quota, charge.cost, now)[..]);
        let _left: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// One script call for the charges on a standalone server (shared
    /// with concurrent decisions), all or nothing. On a Cluster, one
    /// script call per slot the keys fall in, all or nothing within each;
    /// when one slot denies, the charges the others spent are given back
    /// (see [`RedisStore`]'s "Several policies").
    async fn decide_all(&self, charges: &[Charge<'_>]) -> Result<Vec<Decision>, StoreError> {
        if let [c] = charges {
            return Ok(vec![self.decide(*c).await?]);
        }
        let now = self.caller_clock().map(|clock| clock.now_micros());
        let keys: Vec<(String, [u8; 40])> = charges
            .iter()
            .map(|c| {
                let key = state_key(self.keyspace(), c.policy, c.key);
                (key, pack(c.quota, c.cost, now))
            })
            .collect();
        let debts = if self.inner.config.is_cluster() {
            self.decide_across_slots(charges, keys).await?
        } else {
            self.decide_group(keys).await?
        };
        Ok(charges
            .iter()
            .zip(debts)
            .map(|(c, debt)| decision(c.quota, c.cost, debt))
            .collect())
    }
}

/// The decision the script's `debt` stands for: allowed (or spending
/// nothing) when `debt >= 0`, denied with `-1 - debt` outstanding otherwise.
pub(crate) fn decision(quota: &Quota, cost: u64, debt: i64) -> Decision {
    match u64::try_from(debt) {
        Ok(after) => gcra::allowed(quota, after),
        Err(_) => gcra::denied(quota, cost, debt.unsigned_abs() - 1),
    }
}
