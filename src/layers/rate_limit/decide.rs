//! The decision of one request over every policy, shared by the server and
//! client services.

use std::any::Any;
use std::ops::ControlFlow;
use std::sync::Arc;

use http::StatusCode;

use super::error::RateLimited;
use super::headers::{self, Rendered};
use super::layer::Policies;
use super::lease::{Leased, SyncMode};
use super::policy::Policy;
use super::store::{Charge, Decision, RateLimitStore};
use crate::backends::{AnyStore, Guarded, MemoryStore};
use crate::error::{FailurePolicy, StoreError};
use crate::events::RateLimitEvent;
use crate::key::{Key, KeyError, RequestHead};
use crate::reject::Problem;

/// The in-process store `store` is, if it is one (a [`MemoryStore`], or an
/// [`AnyStore`] holding one): its decisions are taken at once, so the layer
/// needs no future for them, and leasing from it would save nothing. The
/// type test is resolved when the layer is compiled.
fn in_process<St: 'static>(store: &St) -> Option<&MemoryStore> {
    let store: &dyn Any = store;
    if let Some(memory) = store.downcast_ref::<MemoryStore>() {
        return Some(memory);
    }
    match store.downcast_ref::<AnyStore>()? {
        AnyStore::Memory(memory) => Some(memory),
        #[cfg(any(feature = "redis", feature = "etcd"))]
        _ => None,
    }
}

/// Everything a request's decision needs, shared by all its services.
pub(crate) struct Limiter<St> {
    /// The store under the layer's failure policy.
    pub(crate) store: Guarded<St>,
    pub(crate) policies: Policies,
    pub(crate) shadow: bool,
    pub(crate) legacy_headers: bool,
    pub(crate) leases: Leased<St>,
}

/// What the layer does with a request.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Call the inner service, then add these headers to its response.
    Allow(Option<Rendered>),
    /// Answer without calling the inner service.
    Reject(Rejection),
}

/// Why a request was not let through.
#[derive(Debug)]
pub(crate) enum Rejection {
    Limited(Box<RateLimited>),
    BadKey(KeyError),
    StoreDown(StoreError),
}

impl Rejection {
    pub(crate) fn into_problem(self) -> Problem {
        match self {
            Self::Limited(limited) => (*limited).into(),
            Self::BadKey(err) => err.into(),
            Self::StoreDown(_) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                    .detail("the rate limiter's store is unavailable")
            }
        }
    }

    pub(crate) fn into_error(self) -> crate::BoxError {
        match self {
            Self::Limited(limited) => limited,
            Self::BadKey(err) => Box::new(err),
            Self::StoreDown(err) => Box::new(err),
        }
    }
}

/// The keys and costs of one request, taken before the request moves on.
pub(crate) struct Job {
    policies: Arc<Vec<Policy>>,
    /// The first policy's key and cost, inline (most layers have one
    /// policy, which then allocates nothing), then the others'.
    first: Option<(Key, u64)>,
    rest: Vec<(Key, u64)>,
}

impl Job {
    /// Every policy's charge, in order.
    fn charges(&self) -> Vec<Charge<'_>> {
        self.each()
            .map(|(policy, key, cost)| Charge {
                policy: &policy.name,
                key: key.as_str(),
                quota: &policy.quota,
                cost,
            })
            .collect()
    }

    /// Every policy with its key and cost, in order.
    fn each(&self) -> impl Iterator<Item = (&Policy, &Key, u64)> {
        let keys = self.first.iter().chain(&self.rest);
        self.policies
            .iter()
            .zip(keys)
            .map(|(policy, (key, cost))| (policy, key, *cost))
    }
}

impl<St: RateLimitStore> Limiter<St> {
    /// Extracts every policy's key and cost from the request head.
    pub(crate) fn job(&self, head: &RequestHead<'_>) -> Result<Job, Rejection> {
        // Lock-free: a quota change swaps the whole list.
        let policies = self.policies.load_full();
        let mut first = None;
        let mut rest = Vec::new();
        for policy in policies.iter() {
            let key = match policy.key.extract(head) {
                Ok(key) => key,
                // Shadow mode turns nothing away: a request without this
                // policy's key is counted, and this policy and the ones
                // after it are not decided for it.
                Err(err) if self.shadow => {
                    self.emit(policy, RateLimitEvent::ShadowBadKey);
                    tracing::info!(policy = %policy.name, error = %err, "rate limit key missing (shadow mode)");
                    break;
                }
                Err(err) => return Err(Rejection::BadKey(err)),
            };
            let entry = (key, policy.cost_of(head));
            if first.is_none() {
                first = Some(entry);
            } else {
                rest.push(entry);
            }
        }
        Ok(Job {
            policies,
            first,
            rest,
        })
    }

    /// Decides every policy: one store call (or its lease, in the leased
    /// mode) for one policy, one all-or-nothing
    /// [`decide_all`](RateLimitStore::decide_all) for several, whatever
    /// their mode (units spent from a lease cannot be part of an
    /// all-or-nothing decision on the store).
    pub(crate) async fn decide(&self, job: Job) -> Verdict {
        if job.rest.is_empty() {
            let mut strictest = None;
            if let Some((policy, key, cost)) = job.each().next() {
                let charge = Charge::new(&policy.name, key.as_str(), &policy.quota, cost);
                // An in-process store has nothing to save by leasing.
                let result = match policy.mode {
                    SyncMode::Leased if in_process(&self.store.store).is_none() => {
                        self.store.recover(charge, self.leases.decide(charge).await)
                    }
                    _ => self.store.decide(charge).await,
                };
                if let ControlFlow::Break(verdict) = self.take(&mut strictest, policy, result) {
                    return verdict;
                }
            }
            return self.conclude(strictest);
        }
        let charges = job.charges();
        let result = self.store.decide_all(&charges).await;
        self.take_all(&job, result)
    }

    /// [`decide`](Self::decide) at once, when the store is in process;
    /// `None` when it must be awaited.
    pub(crate) fn decide_now(&self, job: &Job) -> Option<Verdict> {
        let Some(store) = in_process(&self.store.store) else {
            return self.decide_leased_now(job);
        };
        if !job.rest.is_empty() {
            let charges = job.charges();
            let result = self
                .store
                .recover_all(&charges, store.decide_all_at_once(&charges));
            return Some(self.take_all(job, result));
        }
        let mut strictest = None;
        if let Some((policy, key, cost)) = job.each().next() {
            // The charge (and its key's UTF-8 check) only when it failed.
            let result = store
                .decide_bytes_at_once(&policy.name, key.as_bytes(), &policy.quota, cost)
                .or_else(|err| {
                    let charge = Charge::new(&policy.name, key.as_str(), &policy.quota, cost);
                    self.store.recover(charge, Err(err))
                });
            if let ControlFlow::Break(verdict) = self.take(&mut strictest, policy, result) {
                return Some(verdict);
            }
        }
        Some(self.conclude(strictest))
    }

    /// A job of one leased policy, decided from its lease or cached denial
    /// with no store call; `None` when the store must be asked.
    fn decide_leased_now(&self, job: &Job) -> Option<Verdict> {
        let mut each = job.each();
        let (policy, key, cost) = each.next()?;
        if policy.mode != SyncMode::Leased || each.next().is_some() {
            return None;
        }
        let decision = self
            .leases
            .decide_local(&policy.name, key.as_str(), &policy.quota, cost)?;
        let mut strictest = None;
        if let ControlFlow::Break(verdict) = self.take(&mut strictest, policy, Ok(decision)) {
            return Some(verdict);
        }
        Some(self.conclude(strictest))
    }

    /// The verdict of an all-or-nothing decision over several policies: a
    /// store failure applies the failure policy to the whole request (the
    /// local fallback decided it all or nothing too); a denial reports the
    /// first denying policy and no admission of the others, which spent
    /// nothing.
    fn take_all(&self, job: &Job, result: Result<Vec<Decision>, StoreError>) -> Verdict {
        let decisions = match result {
            Ok(decisions) => decisions,
            Err(err) => {
                return match self.on_store_error(err) {
                    ControlFlow::Continue(()) => self.conclude(None),
                    ControlFlow::Break(verdict) => verdict,
                };
            }
        };
        let denied = decisions.iter().any(|d| !d.is_allowed());
        let mut strictest = None;
        for ((policy, _, _), decision) in job.each().zip(decisions) {
            // Not spent: the request was denied by another policy.
            if denied && decision.is_allowed() {
                continue;
            }
            if let ControlFlow::Break(verdict) = self.take(&mut strictest, policy, Ok(decision)) {
                return verdict;
            }
        }
        self.conclude(strictest)
    }

    /// Takes one policy's store result into account, keeping the admitted
    /// decision with the fewest requests left in `strictest`; breaks with
    /// the verdict when it ends the decision (a denial, a closed failure).
    fn take<'p>(
        &self,
        strictest: &mut Option<(&'p Policy, Decision)>,
        policy: &'p Policy,
        result: Result<Decision, StoreError>,
    ) -> ControlFlow<Verdict> {
        let decision = match result {
            Ok(decision) => decision,
            Err(err) => return self.on_store_error(err),
        };
        let allowed = decision.is_allowed();
        if !allowed && self.shadow {
            self.emit(policy, RateLimitEvent::ShadowDenied);
            tracing::info!(policy = %policy.name, "rate limit would deny (shadow mode)");
            return ControlFlow::Continue(());
        }
        if !allowed {
            self.emit(policy, RateLimitEvent::Denied);
            // The key is not logged: it may be an API key.
            tracing::debug!(
                policy = %policy.name,
                retry_after_ms = decision.retry_after().map(|d| d.as_millis() as u64),
                "rate limited"
            );
            let headers = headers::render(policy, &decision, self.legacy_headers);
            let limited = RateLimited::new(
                policy.name.clone(),
                decision.retry_after(),
                headers.into_map(),
            );
            return ControlFlow::Break(Verdict::Reject(Rejection::Limited(Box::new(limited))));
        }
        // Every admitted request: to the stream, not the metric (the
        // request metrics count them already).
        self.store
            .guard
            .events
            .notify(RateLimitEvent::Allowed, &policy.name);
        if strictest
            .as_ref()
            .is_none_or(|(_, d)| decision.remaining() < d.remaining())
        {
            *strictest = Some((policy, decision));
        }
        ControlFlow::Continue(())
    }

    /// The verdict once every policy admitted the request: the headers of
    /// the strictest (none in shadow mode).
    fn conclude(&self, strictest: Option<(&Policy, Decision)>) -> Verdict {
        if self.shadow {
            return Verdict::Allow(None);
        }
        Verdict::Allow(strictest.map(|(p, d)| headers::render(p, &d, self.legacy_headers)))
    }

    /// A store failure that the guard reported and did not answer: the
    /// request goes through unless the layer fails closed (shadow mode
    /// turns nothing away, not even when the store is down).
    fn on_store_error(&self, err: StoreError) -> ControlFlow<Verdict> {
        match self.store.guard.failure {
            FailurePolicy::FailClosed if !self.shadow => {
                ControlFlow::Break(Verdict::Reject(Rejection::StoreDown(err)))
            }
            _ => ControlFlow::Continue(()),
        }
    }

    fn emit(&self, policy: &Policy, event: RateLimitEvent) {
        self.store
            .guard
            .events
            .report(event, Some(&policy.name), || None);
    }
}
