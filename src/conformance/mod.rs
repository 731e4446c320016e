//! The shared backend test suite: every case runs against every backend.
//!
//! ```
//! use battlement::conformance::{backend, MemoryHarness};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! // One case, run by hand against one backend...
//! backend::close_stops_every_clone(MemoryHarness).await;
//! # });
//!
//! // ...or every case, one `#[tokio::test]` each, in a test file:
//! // battlement::backend_suite!(battlement::conformance::MemoryHarness);
//! // battlement::backend_fault_suite!(support::RedisHarness::start());
//! ```
//!
//! A suite is a module of generic async functions, one per guarantee, each
//! taking a [`Harness`] that can build stores on the server under test.
//! The macros stamp one named `#[tokio::test]` per case, so a failing case
//! is reported on its own, for each backend. The harness expression is
//! evaluated inside each test, so each test gets its own server when the
//! harness starts one.
//!
//! A new backend passes the suite by implementing [`Harness`] (and
//! [`FaultHarness`] when its server can be stopped) and invoking the
//! macros. The in-memory harness is [`MemoryHarness`].

// Test code: a failed expectation is a failed test.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

pub mod backend;
pub mod circuit_breaker;
pub mod idempotency;
mod memory;
pub mod rate_limit;
pub mod rate_limit_leased;

use std::future::Future;
use std::time::Duration;

pub use memory::MemoryHarness;

use crate::backends::Backend;
use crate::clock::SharedClock;
use crate::error::StoreError;

/// Builds stores connected to the backend under test.
pub trait Harness: Send + Sync + 'static {
    /// The backend type.
    type Store: Backend;

    /// A store on a fresh, unique key prefix.
    fn store(&self) -> impl Future<Output = Self::Store> + Send {
        async {
            let prefix = unique_prefix();
            match self.store_with_prefix(&prefix).await {
                Ok(store) => store,
                Err(err) => panic!("harness could not build a store: {err}"),
            }
        }
    }

    /// A store on `prefix`; invalid settings are errors.
    fn store_with_prefix(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Self::Store, StoreError>> + Send;

    /// A store on a fresh prefix that takes time from `clock` (Redis:
    /// caller-clock mode).
    fn store_with_clock(&self, clock: SharedClock) -> impl Future<Output = Self::Store> + Send;

    /// Another handle on the state `store` uses, with a connection of its
    /// own (another instance); default: a store on `store`'s prefix.
    fn another_handle(&self, store: &Self::Store) -> impl Future<Output = Self::Store> + Send {
        let prefix = store.keyspace().prefix().to_owned();
        async move {
            match self.store_with_prefix(&prefix).await {
                Ok(store) => store,
                Err(err) => panic!("harness could not build a store: {err}"),
            }
        }
    }

    /// Calls the server under test has served so far for the stores
    /// (Redis: scripts run; etcd: KV requests), counted on the server;
    /// `None` where there is no server to ask.
    fn store_calls(&self) -> impl Future<Output = Option<u64>> + Send {
        async { None }
    }

    /// Every key `store` has written under its prefix, with its TTL, read
    /// from the server itself.
    fn stored_keys(&self, store: &Self::Store) -> impl Future<Output = Vec<StoredKey>> + Send;
}

/// A key found on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The full key.
    pub key: String,
    /// Its time to live; `None` if it never expires.
    pub ttl: Option<Duration>,
}

/// A harness whose server can be made to fail.
pub trait FaultHarness: Harness {
    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    fn pause(&mut self);
    /// Unfreezes a paused server.
    fn resume(&mut self);
    /// Kills the server.
    fn stop(&mut self);
    /// Starts the server again on the same address and waits until it is
    /// ready.
    fn restart(&mut self) -> impl Future<Output = ()> + Send;
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("t{}-{n}", std::process::id())
}

/// Stamps one `#[tokio::test]` per case of a suite module.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($harness:expr; $suite:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                $crate::conformance::$suite::$case(harness).await;
            }
        )*
    };
}

/// The backend suite (connect, ping, close, namespacing, health) for a
/// [`Harness`] expression.
#[macro_export]
macro_rules! backend_suite {
    ($harness:expr) => {
        $crate::__conformance_cases!($harness; backend;
            ping_answers,
            clones_share_one_connection,
            close_stops_every_clone,
            keys_are_namespaced_and_escaped,
            invalid_prefix_is_rejected,
            health_check_passes_with_latency,
            debug_output_has_no_secrets,
        );
    };
}

/// The rate-limit suite for a [`Harness`] whose store implements
/// `RateLimitStore`.
#[macro_export]
macro_rules! rate_limit_suite {
    ($harness:expr) => {
        $crate::__conformance_cases!($harness; rate_limit;
            burst_is_admitted_then_denied,
            eleventh_request_waits_exactly_100ms,
            refill_follows_the_clock,
            cost_above_one_counts_fully,
            cost_above_burst_is_never_allowed,
            keys_and_policies_are_isolated,
            concurrent_tasks_admit_exactly_the_burst,
            zero_cost_peeks_without_writing,
            denials_write_nothing_and_keys_expire,
            retry_after_is_exact,
            quota_changes_keep_state,
            random_sequences_match_the_reference,
            skewed_clocks_do_not_over_admit,
            give_back_returns_unused_units,
            give_back_under_a_replaced_quota_changes_nothing,
            a_denial_by_one_policy_spends_no_other,
            concurrent_requests_spend_every_policy_or_none,
        );
    };
}

/// The leased-mode rate-limit suite for a [`Harness`] whose store
/// implements `RateLimitStore` (real time: about 3.5 s in all).
#[macro_export]
macro_rules! rate_limit_leased_suite {
    ($harness:expr) => {
        $crate::__conformance_cases!($harness; rate_limit_leased;
            eight_instances_hammering_one_key_admit_the_quota,
            a_stopped_instance_gives_its_lease_back_within_one_interval,
            a_denied_key_costs_no_store_call_until_its_retry_after,
            peeks_and_impossible_costs_skip_a_cached_denial,
        );
    };
}

/// The circuit-breaker suite for a [`Harness`] whose store implements
/// `CircuitBreakerStore`.
#[macro_export]
macro_rules! circuit_breaker_suite {
    ($harness:expr) => {
        $crate::__conformance_cases!($harness; circuit_breaker;
            publish_is_a_compare_and_set,
            concurrent_publishes_have_one_winner,
            open_time_runs_on_the_store_clock,
            written_states_have_a_ttl,
            a_trip_on_one_instance_opens_the_other_within_a_second,
            a_half_open_decision_is_seen_by_the_other_instance,
            forced_states_are_shared,
            load_many_answers_as_load,
        );
    };
}

/// The idempotency suite for a [`Harness`] whose store implements
/// `IdempotencyStore`.
#[macro_export]
macro_rules! idempotency_suite {
    ($harness:expr) => {
        $crate::__conformance_cases!($harness; idempotency;
            hundred_concurrent_claims_have_one_winner,
            a_claimed_key_is_in_flight,
            completed_keys_replay_byte_for_byte,
            the_lock_expires_on_the_store_clock,
            renew_extends_a_live_claim_for_its_owner_only,
            retention_expires_on_the_store_clock,
            release_frees_the_key_for_its_owner_only,
            principals_are_isolated,
            records_have_a_ttl_on_the_server,
        );
    };
}

/// The backend fault suite (hung server, outage, restart) for a
/// [`FaultHarness`] expression.
#[macro_export]
macro_rules! backend_fault_suite {
    ($harness:expr) => {
        $crate::__conformance_cases!($harness; backend;
            hung_server_times_out,
            outage_fails_fast_and_recovers,
            health_check_fails_then_recovers,
        );
    };
}
