//! The leased sync mode: local-first decisions on a shared store, with a
//! stated error bound.
//!
//! ```
//! use battlement::backends::MemoryStore;
//! use battlement::rate_limit::{Charge, LeaseSettings, Leased, Quota, RateLimitStore};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // One `Leased` per instance, over the store every instance shares.
//! let shared = MemoryStore::new();
//! let instance = Leased::new(shared.clone(), LeaseSettings::default());
//! let quota = Quota::per_second(1_000).unwrap();
//! let mut allowed = 0;
//! for _ in 0..1_200 {
//!     if instance.decide(Charge::new("api", "client-1", &quota, 1)).await.unwrap().is_allowed() {
//!         allowed += 1;
//!     }
//! }
//! // Never more than the quota: capacity is taken before it is spent.
//! assert!(allowed <= 1_000 + 10, "{allowed}");
//! assert!(allowed >= 990, "{allowed}");
//! # });
//! ```
//!
//! A policy in [`SyncMode::Leased`] (see [`Policy::mode`]) decides in
//! process and calls the store only to move capacity:
//!
//! - **Hot keys.** A key's instance reserves `k` units from the shared
//!   GCRA state in one store call (a decision of cost `k`), spends them
//!   locally, and gives back what it did not spend when the lease ends
//!   ([`RateLimitStore::give_back`](crate::rate_limit::RateLimitStore::give_back), one call). `k` is the key's demand
//!   on this instance over a lease's life (3/4 of the
//!   [interval](LeaseSettings::with_interval), default 100 ms), at most
//!   [`max_burst_fraction`](LeaseSettings::with_max_burst_fraction) of the
//!   burst (default 0.1). While one request takes a lease, the others on
//!   that key decide exactly.
//! - **Denied keys.** A denial is cached in process until its retry-after
//!   (and an admission that left nothing predicts the next free unit), so
//!   a client hammering past its limit costs no store call until then.
//! - **Cold keys** (one request per key per instance, as per-IP keys
//!   behind a load balancer): decided exactly, through
//!   [`RateLimitStore::decide_batched`](crate::rate_limit::RateLimitStore::decide_batched), which on a standalone Redis lets
//!   the decisions of many keys that arrive together share one script
//!   call (the added wait is one pass of the queue's task).
//! - **Small quotas**: a quota whose largest lease is one unit is decided
//!   exactly, one store decision per admission, with only the denial
//!   cache in front.
//! - **Cost 0 and a cost above the burst** are decided by the store as in
//!   the exact mode, never from a lease or a cached denial: a peek is
//!   admitted while the key's other requests are denied, and a cost that
//!   can never pass is denied with no retry-after.
//!
//! # Error bound
//!
//! With `N` instances and a largest lease of `L` units (`L = ⌊burst ×
//! max_burst_fraction⌋`):
//!
//! - **Never over the quota.** Every unit an instance admits was first
//!   taken from the shared state by an ordinary GCRA decision, so the
//!   shared state admits exactly as in the exact mode and the total
//!   admitted from the start is at most `burst + rate × elapsed`, as
//!   there. A unit is spent at most one lease life after it was taken,
//!   so over any window of length `w` at most `burst + rate × (w + life)`
//!   are admitted.
//! - **Under by at most what is stranded.** At any moment at most `N × L`
//!   units sit in leases, unspent; a live instance gives every unused unit
//!   back within one interval of taking it (a lease lives 3/4 of it, and
//!   expired leases are swept every 1/8, by a task on the runtime of the
//!   decisions, started again by the next decision if that runtime shut
//!   down). The last clone of a `Leased` gives its leases back when
//!   dropped.
//! - **An instance that dies** returns nothing: its units are lost to the
//!   shared state, which drains them at the quota's rate (at most `L ×`
//!   the emission interval per key), so the others admit up to `L` fewer
//!   units for that key, never more.
//! - **Cached denials** end at the store's retry-after, computed on the
//!   store's clock and kept on the instance's monotonic clock; they can
//!   only deny, never admit. While one request asks the store about a key
//!   that had no room left, the others on that key are denied in process
//!   (retry after one emission interval) instead of all asking too.
//!
//! The keys tracked in process are bounded by
//! [`max_keys`](LeaseSettings::with_max_keys) (default 100,000), also when
//! new keys arrive together; keys beyond it are decided exactly, and keys
//! idle for ten intervals with nothing leased are forgotten.
//!
//! One lease is taken at a time per key: a lease call that ends late (its
//! give-back was slow) never ends a newer one, and units leased under a
//! quota are never spent under the quota a reload put in its place.
//!
//! On an in-process store ([`MemoryStore`](crate::backends::MemoryStore))
//! the layer decides exactly whatever the mode: there is nothing to save.
//!
//! [`Policy::mode`]: super::Policy::mode

mod gauge;
mod leased;
mod mode;
mod settings;
mod table;

pub use leased::Leased;
pub use mode::SyncMode;
pub use settings::LeaseSettings;

#[cfg(all(test, battlement_loom))]
mod loom_models;
#[cfg(test)]
mod tests;
