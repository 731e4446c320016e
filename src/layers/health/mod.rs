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
//! at its timeout without delaying the others (SPEC HL-1). The HTTP
//! endpoints answer `application/health+json` (SPEC HL-2), the gRPC service
//! answers from the same registry (SPEC HL-3), [`store_check`] covers the
//! backends (SPEC HL-4), and [`HealthRegistry::drain`] with
//! [`HealthRegistry::shutdown_on_signal`] implement graceful shutdown
//! (SPEC HL-5).

mod check;
#[cfg(feature = "tonic")]
mod grpc;
mod http;
mod registry;
mod report;
mod shutdown;
mod store;

pub use check::{Check, Group, Outcome, Status};
#[cfg(feature = "tonic")]
pub use grpc::GrpcHealth;
pub use http::{HEALTH_JSON, HealthEndpoint, HealthRoutes};
pub use registry::HealthRegistry;
pub use report::{CheckReport, Report};
pub use store::store_check;
