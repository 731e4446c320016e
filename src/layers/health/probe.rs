//! Which requests are probes: health checks and metric scrapes, which
//! trace and metrics layers leave out by default.

/// Whether a request to `path` is a probe: the health routes `/livez`,
/// `/readyz`, `/startupz` and `/healthz`, the `/metrics` scrape, and the
/// gRPC health service (`/grpc.health.v1.Health/...`).
///
/// ```
/// use battlement::health::is_probe;
///
/// assert!(is_probe("/readyz"));
/// assert!(is_probe("/grpc.health.v1.Health/Watch"));
/// assert!(!is_probe("/orders"));
/// ```
pub fn is_probe(path: &str) -> bool {
    matches!(
        path,
        "/livez" | "/readyz" | "/startupz" | "/healthz" | "/metrics"
    ) || path.starts_with("/grpc.health.v1.Health/")
}
