//! `RateLimitLayer`: configuration and the runtime quota handle.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tower_layer::Layer;

use super::decide::Limiter;
use super::lease::{LeaseSettings, Leased, SyncMode};
use super::policy::Policy;
use super::quota::Quota;
use super::service::RateLimit;
use super::store::RateLimitStore;
use crate::backends::{Guard, Guarded};
use crate::error::{ConfigError, FailurePolicy};
use crate::events::Events;

/// Rate limits requests before they reach the inner service.
///
/// Every policy is decided against the store, all or nothing: the request
/// is denied if any policy denies it, and then it spends none of the
/// others (one store call for all of them, see
/// [`RateLimitStore::decide_all`]) and the inner service is never called.
/// A denial reports the first denying policy in the order they were
/// added. Denials are 429 `application/problem+json` (HTTP) or a
/// trailers-only `RESOURCE_EXHAUSTED` (gRPC) with `Retry-After`; allowed
/// responses carry the `RateLimit` / `RateLimit-Policy` headers of the most
/// restrictive policy. [`client_mode`](Self::client_mode) returns a typed
/// [`RateLimited`](super::RateLimited) error instead.
///
/// The builder methods take the layer by value and change it alone: a
/// policy added to a clone never reaches the original, nor the services
/// made before. A running layer's quotas change through its
/// [`handle`](Self::handle), which steers the layer, its clones (axum
/// clones a layer per route) and every service they make. Take the handle
/// once the layer is built: a builder call on a layer that has clones or
/// services gives it a policy list of its own, which older handles do not
/// steer.
///
/// ```
/// use battlement::backends::MemoryStore;
/// use battlement::key::PeerIp;
/// use battlement::rate_limit::{Policy, Quota, RateLimitLayer};
/// use battlement::FailurePolicy;
///
/// let layer = RateLimitLayer::new(MemoryStore::new())
///     .policy(Policy::new("per-ip", Quota::per_second(100).unwrap()).unwrap().key(PeerIp))
///     .failure_policy(FailurePolicy::LocalFallback);
/// let handle = layer.handle();
/// handle.set_quota("per-ip", Quota::per_second(50).unwrap()).unwrap();
/// ```
pub struct RateLimitLayer<St> {
    store: St,
    policies: Policies,
    shadow: bool,
    legacy_headers: bool,
    // One per layer, shared by every service it makes (axum makes one per
    // route): the fallback quota and the log rate are per layer.
    guard: Guard,
    // One per layer too: this instance's leases, cached denials and key
    // rates for its leased policies.
    leases: Leased<St>,
}

impl<St: RateLimitStore> RateLimitLayer<St> {
    /// A layer with no policy yet over `store` (share one store between
    /// layers by cloning it).
    pub fn new(store: St) -> Self {
        Self {
            leases: Leased::new(store.clone(), LeaseSettings::default()),
            store,
            policies: Policies::new(),
            shadow: false,
            legacy_headers: false,
            guard: Guard::new(FailurePolicy::FailOpen),
        }
    }

    /// Adds a policy (replacing the one of the same name); a request must
    /// pass all of them.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policies = self.policies.edit(|list| {
            list.retain(|p| p.name != policy.name);
            list.push(policy.clone());
        });
        self
    }

    /// Shadow mode: would-be denials are counted and logged but
    /// the request goes through, without rate-limit headers. Nothing else
    /// turns a request away either: a store failure under
    /// [`FailurePolicy::FailClosed`] lets it through (counted as
    /// `fail_closed`), and a request without a policy's key is counted as
    /// `shadow_bad_key` and not decided by that policy and the ones after it.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// What to do when the store fails (default: fail open).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.guard.failure = policy;
        self
    }

    /// Also send `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.legacy_headers = on;
        self
    }

    /// Reports decisions to `events` (share one stream between layers).
    pub fn events(mut self, events: Events) -> Self {
        self.guard.events = events;
        self
    }

    /// The event stream decisions are reported to.
    pub fn event_stream(&self) -> &Events {
        &self.guard.events
    }

    /// Changes quotas at runtime, in this layer, the clones made of it
    /// and the services they make.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            policies: self.policies.list.clone(),
        }
    }

    /// How leased policies (see [`Policy::mode`]) size and return their
    /// leases (default [`LeaseSettings::default`]).
    pub fn lease_settings(mut self, settings: LeaseSettings) -> Self {
        self.leases = Leased::new(self.store.clone(), settings);
        self
    }

    /// Returns typed [`RateLimited`](super::RateLimited) errors instead of
    /// responses, for client stacks.
    pub fn client_mode(self) -> super::client::ClientRateLimitLayer<St> {
        super::client::ClientRateLimitLayer::new(self)
    }

    pub(crate) fn limiter(&self) -> Arc<Limiter<St>> {
        self.leases.observe(&self.policies.list);
        Arc::new(Limiter {
            store: Guarded::new(self.store.clone(), self.guard.clone()),
            policies: self.policies.clone(),
            shadow: self.shadow,
            legacy_headers: self.legacy_headers,
            leases: self.leases.clone(),
        })
    }
}

impl<St: Clone> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            policies: self.policies.clone(),
            shadow: self.shadow,
            legacy_headers: self.legacy_headers,
            guard: self.guard.clone(),
            leases: self.leases.clone(),
        }
    }
}

impl<St: std::fmt::Debug> std::fmt::Debug for RateLimitLayer<St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("store", &self.store)
            .field("policies", &self.policies.list.load().len())
            .field("shadow", &self.shadow)
            .field("failure", &self.guard.failure)
            .finish_non_exhaustive()
    }
}

/// A layer's policy list, read by every service of the layer and its
/// clones, and changed at runtime by its handles.
#[derive(Clone)]
pub(crate) struct Policies {
    list: Arc<ArcSwap<Vec<Policy>>>,
    /// Held by each layer and service over `list`, not by handles.
    owners: Arc<()>,
}

impl Policies {
    fn new() -> Self {
        Self {
            list: Arc::new(ArcSwap::from_pointee(Vec::new())),
            owners: Arc::new(()),
        }
    }

    /// The list after `change`, for a builder call: the same list changed
    /// when no other layer or service reads it (so handles taken before
    /// see the change), else a new one the others never see.
    fn edit(self, change: impl Fn(&mut Vec<Policy>)) -> Self {
        let changed = |list: &Arc<Vec<Policy>>| {
            let mut list = list.to_vec();
            change(&mut list);
            list
        };
        if Arc::strong_count(&self.owners) == 1 {
            self.list.rcu(changed);
            return self;
        }
        Self {
            list: Arc::new(ArcSwap::from_pointee(changed(&self.list.load_full()))),
            owners: Arc::new(()),
        }
    }

    /// The current list, lock-free (a change swaps the whole list).
    pub(crate) fn load_full(&self) -> Arc<Vec<Policy>> {
        self.list.load_full()
    }
}

impl<S, St: RateLimitStore> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimit<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.limiter())
    }
}

/// Changes the quotas of a running [`RateLimitLayer`] without a restart and
/// without resetting any key: the next decision of each key uses the new
/// quota with the cost it already spent (rescaled to a new period, and
/// stored with the new lifetime even on a denial). A change of the count
/// alone, with the same period, is not visible in the stored state: a key
/// that is only denied afterwards keeps the lifetime set under the old
/// count.
///
/// Requests read the policies without a lock: a change swaps the whole
/// list at once ([`arc_swap`]), so a request sees either the old or the
/// new quotas, never a mix. A [`ConfigReloader`](crate::reload::ConfigReloader)
/// drives this handle from a [`ConfigSource`](crate::reload::ConfigSource).
#[derive(Clone)]
pub struct RateLimitHandle {
    policies: Arc<ArcSwap<Vec<Policy>>>,
}

impl RateLimitHandle {
    /// Sets the quota of the policy named `name`.
    pub fn set_quota(&self, name: &str, quota: Quota) -> Result<(), ConfigError> {
        self.update(name, |policy| policy.set_quota(quota))
    }

    /// Switches the policy named `name` to `mode` from the next request
    /// (what it leased or cached under the old mode is given back or
    /// expires as usual).
    pub fn set_mode(&self, name: &str, mode: SyncMode) -> Result<(), ConfigError> {
        self.update(name, |policy| policy.mode = mode)
    }

    /// Applies `change` to the policy named `name`, for the next requests.
    fn update(&self, name: &str, change: impl Fn(&mut Policy)) -> Result<(), ConfigError> {
        let mut found = false;
        self.policies.rcu(|list| {
            let mut list: Vec<Policy> = list.to_vec();
            found = false;
            for policy in list.iter_mut().filter(|p| &*p.name == name) {
                change(policy);
                found = true;
            }
            list
        });
        match found {
            true => Ok(()),
            false => Err(ConfigError::new(format!(
                "no rate limit policy named {name:?}"
            ))),
        }
    }

    /// The current sync mode of the policy named `name`.
    pub fn mode(&self, name: &str) -> Option<SyncMode> {
        let policies = self.policies.load();
        policies.iter().find(|p| &*p.name == name).map(|p| p.mode)
    }

    /// The current quota of the policy named `name`.
    pub fn quota(&self, name: &str) -> Option<Quota> {
        let policies = self.policies.load();
        policies.iter().find(|p| &*p.name == name).map(|p| p.quota)
    }

    /// The names and current quotas of every policy, in decision order.
    pub fn quotas(&self) -> Vec<(String, Quota)> {
        let policies = self.policies.load();
        policies
            .iter()
            .map(|p| (p.name.to_string(), p.quota))
            .collect()
    }
}

impl std::fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("quotas", &self.quotas())
            .finish()
    }
}
