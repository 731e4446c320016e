//! Health: named checks served as `/livez` `/readyz` `/startupz` and as
//! `grpc.health.v1.Health`.
//!
//! ```
//! use std::time::Duration;
//! use battlement::backends::MemoryStore;
//! use battlement::health::{store_check, Check, Group, HealthRegistry, HealthRoutes, Outcome};
//!
//! let health = HealthRegistry::new();
//! health.register(store_check(MemoryStore::new()));
//! health.register(
//!     Check::new("queue", || async { Outcome::warn("backlog above 1000") })
//!         .timeout(Duration::from_millis(200))
//!         .cache_for(Duration::from_secs(2)),
//! );
//! let app: axum::Router = HealthRoutes::new(health.clone()).router();
//!
//! // On shutdown: readiness fails first, liveness keeps passing.
//! health.drain();
//! ```
//!
//! A [`HealthRegistry`] holds [`Check`]s, each with a timeout, optional
//! result caching and its groups (liveness, readiness, startup, custom).
//! A probe runs its group's checks concurrently; a check that hangs fails
//! at its timeout without delaying the others. The HTTP
//! endpoints answer `application/health+json`, the gRPC service
//! answers from the same registry, [`store_check`] covers the
//! backends, and [`HealthRegistry::drain`] with
//! [`HealthRegistry::shutdown_on_signal`] implement graceful shutdown
//!.
//!
//! # Load on the dependencies
//!
//! Probes are public and cheap to send, so a check does not run once per
//! probe. Its result is reused for the registry's cache period
//! ([`HealthRegistry::cache_for`], 1 s by default; [`Check::cache_for`]
//! sets one check's own), and probes that arrive while it runs wait for
//! that run instead of starting another (single flight: the check's last
//! result sits behind a `tokio::sync::Mutex` held during the run). So N
//! concurrent `/readyz` requests and M gRPC `Watch` streams cost at most
//! one run of each check per period; a status change shows up at most one
//! period late. Draining is not cached: readiness fails at once.
//!
//! [`GrpcHealth`] also caps the open `Watch` streams
//! ([`GrpcHealth::max_watch_streams`], 1,000 by default); one more is
//! refused with `RESOURCE_EXHAUSTED`.
//!
//! # What the answers say
//!
//! The health+json body and the `?verbose` text carry each check's name,
//! status and [`Outcome`] output. [`store_check`] puts only the kind of a
//! failure there (`unavailable`, `timed out`, ...) and logs the store's
//! error text at `warn` (rate-limited), since that text can name hosts,
//! ports or users; a panicking check reports `check panicked` and logs the
//! message. The gRPC answers carry the serving status only.
mod check;
#[cfg(feature = "tonic")]
mod grpc;
mod http;
mod probe;
mod registry;
mod report;
mod shutdown;
mod store;

pub use check::{Check, Group, Outcome, Status};
#[cfg(feature = "tonic")]
pub use grpc::GrpcHealth;
pub use http::{HEALTH_JSON, HealthEndpoint, HealthRoutes};
pub use probe::is_probe;
pub use registry::HealthRegistry;
pub use report::{CheckReport, Report};
pub use store::{durability_check, store_check};
