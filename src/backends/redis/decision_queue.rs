//! Coalesces concurrent rate-limit decisions on a standalone server into
//! one script call.
//!
//! Every `EVALSHA` costs Redis about a microsecond before the script does
//! anything, plus a `TIME` call and the network round trip; under load
//! those dominate a decision. Decisions that arrive while earlier ones are
//! on the wire are queued and sent together, at most [`MAX_BATCH`] per
//! call and [`MAX_IN_FLIGHT`] calls at once. A lone decision goes out at
//! once, so nothing waits for a batch to fill. The script decides the keys
//! in arrival order, each atomically, exactly as separate calls would; the
//! policies of one request travel as one group, decided all or nothing.
//!
//! While Redis is slow or down the queue must not grow without end, nor
//! spend quota on decisions nobody waits for: it holds at most
//! [`MAX_QUEUED`] decisions (a decision beyond that fails at once, and the
//! caller's failure policy applies), and a decision whose caller has
//! stopped waiting (its timeout passed) is dropped instead of sent.
//!
//! A decision may also *linger* (the leased mode's cold keys): it waits
//! for the queue's task to pass once through the scheduler with nothing
//! new arriving (or for [`MAX_BATCH`] decisions), so that many keys seen
//! once each share a script call even when no call is in flight. A
//! decision that does not linger sends whatever is queued at once.
//!
//! Cluster connections do not queue: a script's keys must share a slot.

use std::sync::{OnceLock, Weak};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::{Inner, RedisStore};
use crate::error::StoreError;

/// Most decisions in one script call (a call holds Redis for ~3 µs each).
const MAX_BATCH: usize = 128;

/// Most script calls on the wire at once.
const MAX_IN_FLIGHT: usize = 4;

/// Most decisions waiting to be sent: Redis decides this many in about
/// 10 ms, a fraction of the default 50 ms timeout.
pub(super) const MAX_QUEUED: usize = 4096;

/// One queued decision: the state key, the packed arguments, whether it
/// may wait for others and where the debt (or the failure) goes; or one
/// request's policies, decided all or nothing in the same call (never
/// lingering).
pub(super) enum Queued {
    One {
        key: String,
        args: [u8; 40],
        linger: bool,
        reply: oneshot::Sender<Result<i64, StoreError>>,
    },
    Group {
        keys: Vec<(String, [u8; 40])>,
        reply: oneshot::Sender<Result<Vec<i64>, StoreError>>,
    },
}

impl Queued {
    /// Whether its caller stopped waiting.
    fn is_closed(&self) -> bool {
        match self {
            Self::One { reply, .. } => reply.is_closed(),
            Self::Group { reply, .. } => reply.is_closed(),
        }
    }

    /// Its keys with their arguments and, on the first key of a group,
    /// the group's size.
    fn keys(&self) -> impl Iterator<Item = (&str, &[u8; 40], Option<usize>)> {
        let (one, group) = match self {
            Self::One { key, args, .. } => (Some((key.as_str(), args, None)), &[][..]),
            Self::Group { keys, .. } => (None, &keys[..]),
        };
        let size = group.len();
        let group = group
            .iter()
            .enumerate()
            .map(move |(i, (key, args))| (key.as_str(), args, (i == 0).then_some(size)));
        one.into_iter().chain(group)
    }

    /// Whether it may wait for others (see the module's docs).
    fn lingers(&self) -> bool {
        matches!(self, Self::One { linger: true, .. })
    }

    fn len(&self) -> usize {
        match self {
            Self::One { .. } => 1,
            Self::Group { keys, .. } => keys.len(),
        }
    }

    /// Sends its debts (taken from the front of `debts`) or the failure.
    fn answer(self, debts: &mut impl Iterator<Item = i64>) {
        match self {
            Self::One { reply, .. } => {
                let debt = debts
                    .next()
                    .ok_or_else(|| StoreError::Protocol("redis: no rate-limit decision".into()));
                let _ = reply.send(debt);
            }
            Self::Group { keys, reply } => {
                let _ = reply.send(Ok(debts.take(keys.len()).collect()));
            }
        }
    }

    fn fail(self, err: StoreError) {
        match self {
            Self::One { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Self::Group { reply, .. } => {
                let _ = reply.send(Err(err));
            }
        }
    }
}

/// The queue of one store, started on the first decision.
#[derive(Debug, Default)]
pub(super) struct DecisionQueue {
    tx: OnceLock<mpsc::Sender<Queued>>,
}

impl DecisionQueue {
    /// The queue's sender, starting its task on the caller's runtime the
    /// first time; `None` outside a runtime.
    pub(super) fn sender(&self, store: Weak<Inner>) -> Option<&mpsc::Sender<Queued>> {
        if let Some(tx) = self.tx.get() {
            return Some(tx);
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        // Another caller may have won the race; then `rx` is dropped here.
        if self.tx.set(tx).is_ok() {
            runtime.spawn(run(rx, store));
        }
        self.tx.get()
    }
}

/// Sends what is queued, in batches, until the store is dropped.
async fn run(mut rx: mpsc::Receiver<Queued>, store: Weak<Inner>) {
    let mut in_flight = FuturesUnordered::new();
    // Lingering decisions, sent once a pass brings nothing new.
    let mut pending: Vec<Queued> = Vec::new();
    loop {
        let room = in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            first = rx.recv(), if room => {
                let Some(first) = first else { break };
                let Some(inner) = store.upgrade() else { break };
                let mut urgent = false;
                let mut next = Some(first);
                while let Some(queued) = next {
                    // Its caller stopped waiting: no quota is spent on it.
                    if !queued.is_closed() {
                        urgent |= !queued.lingers();
                        pending.push(queued);
                    }
                    if pending.len() >= MAX_BATCH {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
                if urgent || pending.len() >= MAX_BATCH {
                    let batch = take_batch(&mut pending);
                    in_flight.push(send(RedisStore { inner }, batch));
                }
            }
            () = tokio::task::yield_now(), if room && !pending.is_empty() => {
                let Some(inner) = store.upgrade() else { break };
                let batch = take_batch(&mut pending);
                in_flight.push(send(RedisStore { inner }, batch));
            }
        }
    }
    while in_flight.next().await.is_some() {}
}

/// The first [`MAX_BATCH`] of `pending`, oldest first.
fn take_batch(pending: &mut Vec<Queued>) -> Vec<Queued> {
    if pending.len() <= MAX_BATCH {
        return std::mem::take(pending);
    }
    let rest = pending.split_off(MAX_BATCH);
    std::mem::replace(pending, rest)
}

/// One script call for `batch`; every caller gets its own debt, or the
/// call's failure.
async fn send(store: RedisStore, batch: Vec<Queued>) {
    let count = batch.iter().map(Queued::len).sum();
    let keys = batch.iter().flat_map(Queued::keys);
    match store.decide_keys(keys, count).await {
        Ok(debts) => {
            let mut debts = debts.into_iter();
            for queued in batch {
                queued.answer(&mut debts);
            }
        }
        Err(err) => {
            for queued in batch {
                queued.fail(err.clone());
            }
        }
    }
}
