//! The resolved server stack, logged once at `info` (target
//! `battlement::stack`) when the preset is built: the layers in order, each
//! rate-limit policy with its key and mode, the backend, the failure
//! policies and what the probes skip. A rate-limit policy that counts every
//! client in one bucket without saying so gets a `warn`.

use super::config::StackConfig;
use super::server::ServerStack;
use crate::backends::Backend;
use crate::idempotency::ScopeConfig;
use crate::rate_limit::KeyConfig;

const TARGET: &str = "battlement::stack";

/// Logs what `stack`, built from `config`, does.
pub(super) fn log(config: &StackConfig, stack: &ServerStack) {
    let layers = [
        ("request_id", stack.request_id.is_some()),
        ("trace", stack.trace.is_some()),
        ("metrics", stack.metrics.is_some()),
        ("concurrency_limit", stack.concurrency_limit.is_some()),
        ("deadline", stack.deadline.is_some()),
        ("rate_limit", stack.rate_limit.is_some()),
        ("circuit_breaker", stack.breaker.is_some()),
        ("idempotency", stack.idempotency.is_some()),
    ]
    .iter()
    .filter_map(|&(name, on)| on.then_some(name))
    .collect::<Vec<_>>()
    .join(" > ");
    let health = &config.health;
    tracing::info!(
        target: TARGET,
        layers = %layers,
        backend = stack.store.kind(),
        probes = %format_args!("{} {} {}", health.livez, health.readyz, health.startupz),
        probes_traced = config.trace.trace_probes,
        probes_counted = config.metrics.count_probes,
        "server stack (probes are never rate limited, shed or timed out)"
    );
    if let Some(rate_limit) = &config.rate_limit {
        for policy in &rate_limit.policies {
            tracing::info!(
                target: TARGET,
                policy = %policy.name,
                quota = %policy.quota,
                key = key_name(policy.key.as_ref()),
                mode = ?policy.mode,
                failure = ?rate_limit.failure,
                "rate limit policy"
            );
            if policy.key.is_none() {
                tracing::warn!(
                    target: TARGET,
                    policy = %policy.name,
                    "rate limit policy without a key: one bucket is shared by every client; \
                     set its key (e.g. key = {{ by = \"client_ip\" }}), or \
                     key = {{ by = \"global\" }} when one bucket is meant"
                );
            }
        }
    }
    if let Some(idempotency) = &config.idempotency {
        tracing::info!(
            target: TARGET,
            routes = ?idempotency.routes,
            scope = scope_name(&idempotency.scope),
            failure = ?idempotency.failure,
            "idempotency"
        );
    }
}

/// What a policy counts per, in a word.
fn key_name(key: Option<&KeyConfig>) -> &'static str {
    match key {
        None => "global (no key set)",
        Some(KeyConfig::Global {}) => "global",
        Some(KeyConfig::PeerIp { .. }) => "peer_ip",
        Some(KeyConfig::ClientIp { .. }) => "client_ip",
        Some(KeyConfig::Header { .. }) => "header",
    }
}

/// Whose idempotency keys they are, in a word.
fn scope_name(scope: &ScopeConfig) -> &'static str {
    match scope {
        ScopeConfig::Authorization { .. } => "authorization",
        ScopeConfig::ClientIp { .. } => "client_ip",
        ScopeConfig::Principal {} => "principal",
        ScopeConfig::Header { .. } => "header",
    }
}
