//! `Guarded`: a store with its layer's failure policy.
//!
//! The rate-limit and idempotency layers call their store through this
//! wrapper, which implements the same store traits. A failed call is
//! logged (one line per 10 s per layer at most, with the count of lines
//! held back) and reported on the layer's events. Under
//! [`FailurePolicy::LocalFallback`] an in-process store, one per layer,
//! answers it; otherwise the error goes back to the layer, which fails
//! open or closed. Each decision's and claim's outcome also sets the
//! backend's `battlement.store.up` gauge (a load, and a store only when
//! it changes).

use std::sync::Arc;
use std::time::Duration;

use super::{Backend, KeySpace, MemoryStore};
use crate::error::{FailurePolicy, StoreError};
use crate::events::{Event, Events, IdempotencyEvent, RateLimitEvent, WarnLimiter, store_seen};
use crate::idempotency::{Claim, ClaimToken, Claimant, Completion, IdempotencyStore};
use crate::rate_limit::{Charge, Decision, RateLimitStore};

/// What a layer does when its store fails, with what it needs to do it.
/// Cloned into every service of the layer: the fallback store and the
/// log's rate are per layer.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    pub(crate) failure: FailurePolicy,
    pub(crate) events: Events,
    fallback: MemoryStore,
    warn: Arc<WarnLimiter>,
}

impl Guard {
    pub(crate) fn new(failure: FailurePolicy) -> Self {
        Self {
            failure,
            events: Events::new(),
            fallback: MemoryStore::new(),
            warn: Arc::new(WarnLimiter::new(Duration::from_secs(10))),
        }
    }

    /// The in-process store that answers when the store fails, under
    /// [`FailurePolicy::LocalFallback`] only.
    fn fallback(&self) -> Option<&MemoryStore> {
        (self.failure == FailurePolicy::LocalFallback).then_some(&self.fallback)
    }
}

/// `store` under `guard`. Cloned per request by the idempotency service,
/// so the guard sits behind one `Arc`.
#[derive(Debug, Clone)]
pub(crate) struct Guarded<St> {
    pub(crate) store: St,
    pub(crate) guard: Arc<Guard>,
}

impl<St> Guarded<St> {
    pub(crate) fn new(store: St, guard: Guard) -> Self {
        Self {
            store,
            guard: Arc::new(guard),
        }
    }
}

impl<St: Backend> Backend for Guarded<St> {
    fn kind(&self) -> &'static str {
        self.store.kind()
    }

    fn keyspace(&self) -> &KeySpace {
        self.store.keyspace()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    fn close(&self) {
        self.store.close();
    }
}

impl<St: Backend> Guarded<St> {
    /// `result` of `charge`: a failure is reported and, under a local
    /// fallback, decided in process.
    pub(crate) fn recover(
        &self,
        charge: Charge<'_>,
        result: Result<Decision, StoreError>,
    ) -> Result<Decision, StoreError> {
        self.recover_with(Some(charge.policy), result, |fallback| {
            fallback.decide_at_once(charge.policy, charge.key, charge.quota, charge.cost)
        })
    }

    /// [`recover`](Self::recover) for the charges of one request, decided
    /// all or nothing by the fallback too.
    pub(crate) fn recover_all(
        &self,
        charges: &[Charge<'_>],
        result: Result<Vec<Decision>, StoreError>,
    ) -> Result<Vec<Decision>, StoreError> {
        let policy = charges.first().map(|c| c.policy);
        self.recover_with(policy, result, |fallback| {
            fallback.decide_all_at_once(charges)
        })
    }

    /// `result`, or its failure reported under `policy` and answered by
    /// `fallback_answer` under a local fallback.
    fn recover_with<T>(
        &self,
        policy: Option<&str>,
        result: Result<T, StoreError>,
        fallback_answer: impl FnOnce(&MemoryStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let err = match result {
            Ok(answer) => {
                store_seen(self.store.kind(), true);
                return Ok(answer);
            }
            Err(err) => err,
        };
        store_seen(self.store.kind(), false);
        if let Some(policy) = policy {
            self.rate_limit_failed(policy, &err);
        }
        match self.guard.fallback() {
            Some(fallback) => fallback_answer(fallback),
            None => Err(err),
        }
    }

    fn rate_limit_failed(&self, policy: &str, err: &StoreError) {
        let outcome = match self.guard.failure {
            FailurePolicy::FailOpen => RateLimitEvent::FailOpen,
            FailurePolicy::FailClosed => RateLimitEvent::FailClosed,
            FailurePolicy::LocalFallback => RateLimitEvent::LocalFallback,
        };
        self.guard.warn.warn(|suppressed| {
            // Under the layer's target, so that filters by concern keep
            // these lines.
            tracing::warn!(
                target: "battlement::layers::rate_limit",
                policy,
                error = %err,
                outcome = outcome.as_str(),
                suppressed,
                "rate limit store failed"
            );
        });
        let (events, policy) = (&self.guard.events, Arc::from(policy));
        events.report(RateLimitEvent::StoreFailure, Some(&policy), || {
            Some(format!("{}: {err}", outcome.as_str()))
        });
        events.report(outcome, Some(&policy), || None);
    }

    fn idempotency_failed(&self, err: &StoreError) {
        self.guard
            .events
            .emit(Event::named(IdempotencyEvent::StoreError).with_detail(err.to_string()));
        self.guard.warn.warn(|suppressed| {
            tracing::warn!(
                target: "battlement::layers::idempotency",
                error = %err,
                suppressed,
                "idempotency store failed"
            );
        });
    }

    /// The store that holds the claim `token` on `id`: the fallback if it
    /// took it while the store was failing. A fallback claim whose lock
    /// expired and was swept is looked for in the store, which reports
    /// its failure; either way the response is not kept.
    fn holder(&self, id: &str, token: ClaimToken) -> Holder<'_, St> {
        match self.guard.fallback() {
            Some(fallback) if fallback.holds_claim(id, token) => Holder::Fallback(fallback),
            _ => Holder::Store(&self.store),
        }
    }
}

impl<St: RateLimitStore> RateLimitStore for Guarded<St> {
    async fn decide(&self, charge: Charge<'_>) -> Result<Decision, StoreError> {
        self.recover(charge, self.store.decide(charge).await)
    }

    async fn decide_batched(&self, charge: Charge<'_>) -> Result<Decision, StoreError> {
        self.recover(charge, self.store.decide_batched(charge).await)
    }

    /// To the store only: the units were taken from it.
    async fn give_back(&self, charge: Charge<'_>) -> Result<(), StoreError> {
        self.store.give_back(charge).await
    }

    async fn decide_all(&self, charges: &[Charge<'_>]) -> Result<Vec<Decision>, StoreError> {
        self.recover_all(charges, self.store.decide_all(charges).await)
    }
}

/// Where a claim is held.
enum Holder<'a, St> {
    Store(&'a St),
    Fallback(&'a MemoryStore),
}

/// Runs `$call` on the store that holds the claim.
macro_rules! on_holder {
    ($self:ident, $id:expr, $token:expr, $s:ident => $call:expr) => {
        match $self.holder($id, $token) {
            Holder::Store($s) => $call,
            Holder::Fallback($s) => $call,
        }
    };
}

impl<St: IdempotencyStore> IdempotencyStore for Guarded<St> {
    /// Claims in the store, or in the fallback when the store fails.
    ///
    /// Until the store answers, a claim that fails (a timeout) or whose
    /// caller goes away may still be taken on the server, and would turn
    /// every retry away with 409 until its lock expired: it is then freed
    /// in the background.
    async fn claim(&self, id: &str, claimant: Claimant<'_>) -> Result<Claim, StoreError> {
        // A key the fallback took or completed while the store was failing
        // is answered by the fallback until its lock or retention ends, so
        // it runs once across the outage's end too.
        if let Some(fallback) = self.guard.fallback()
            && fallback.holds_record(id)
        {
            return fallback.claim(id, claimant).await;
        }
        let mut unanswered = Unanswered {
            store: &self.store,
            id,
            token: claimant.token,
            armed: true,
        };
        let claimed = self.store.claim(id, claimant).await;
        // A claim the store did not send (it knew the server was down)
        // took nothing: no release waits for it.
        unanswered.armed = claimed.as_ref().is_err_and(StoreError::may_have_been_sent);
        drop(unanswered);
        let err = match claimed {
            Ok(claim) => {
                store_seen(self.store.kind(), true);
                return Ok(claim);
            }
            Err(err) => err,
        };
        store_seen(self.store.kind(), false);
        self.idempotency_failed(&err);
        match self.guard.fallback() {
            Some(fallback) => fallback.claim(id, claimant).await,
            None => Err(err),
        }
    }

    async fn complete(&self, id: &str, done: Completion<'_>) -> Result<bool, StoreError> {
        let completed = on_holder!(self, id, done.token, s => s.complete(id, done).await);
        completed.inspect_err(|err| self.idempotency_failed(err))
    }

    /// A failed renewal is not reported: the renewing task tries again a
    /// third of the lock later.
    async fn renew(&self, id: &str, token: ClaimToken, lock: Duration) -> Result<bool, StoreError> {
        on_holder!(self, id, token, s => s.renew(id, token, lock).await)
    }

    async fn release(&self, id: &str, token: ClaimToken) -> Result<(), StoreError> {
        let released = on_holder!(self, id, token, s => s.release(id, token).await);
        released.inspect_err(|err| self.idempotency_failed(err))
    }
}

/// Attempts at freeing a claim whose answer never came.
const RELEASE_ATTEMPTS: u32 = 5;

/// Frees, when dropped armed, the claim of `token` in the background. The
/// store may still be failing: a few tries, 0.1 s to 0.8 s apart (release
/// is guarded by the token, so it never frees another request's claim).
struct Unanswered<'a, St: IdempotencyStore> {
    store: &'a St,
    id: &'a str,
    token: ClaimToken,
    armed: bool,
}

impl<St: IdempotencyStore> Drop for Unanswered<'_, St> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, id, token) = (self.store.clone(), self.id.to_owned(), self.token);
        runtime.spawn(async move {
            let mut wait = Duration::from_millis(100);
            for _ in 0..RELEASE_ATTEMPTS {
                match store.release(&id, token).await {
                    Err(e) if e.is_transient() => tokio::time::sleep(wait).await,
                    _ => return,
                }
                wait *= 2;
            }
        });
    }
}
