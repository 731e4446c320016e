//! Health registry semantics and the HTTP probe routes, driven through an axum router with `oneshot`.
#![cfg(feature = "axum")]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use battlement::StoreError;
use battlement::backends::{Backend, KeySpace};
use battlement::clock::ManualClock;
use battlement::health::{
    Check, Group, HealthRegistry, HealthRoutes, Outcome, Status, store_check,
};
use futures_util::future::join_all;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

async fn get(app: &Router, uri: &str) -> (StatusCode, String, String) {
    let res = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8(body.to_vec()).unwrap())
}

fn toggle(name: &'static str, up: &Arc<AtomicBool>) -> Check {
    let up = up.clone();
    Check::new(name, move || {
        let up = up.load(Ordering::SeqCst);
        async move {
            if up {
                Outcome::pass()
            } else {
                Outcome::fail("connection refused")
            }
        }
    })
    .component_type("datastore")
}

#[tokio::test]
async fn probes_answer_health_json_with_status_codes() {
    // No caching: the toggle below shows at once.
    let registry = HealthRegistry::new().cache_for(Duration::ZERO);
    let db_up = Arc::new(AtomicBool::new(true));
    registry.register(toggle("db", &db_up));
    registry
        .register(Check::new("process", || async { Outcome::pass() }).groups([Group::Liveness]));
    let app: Router = HealthRoutes::new(registry).router();

    let (status, ct, body) = get(&app, "/readyz").await;
    assert_eq!(
        (status, ct.as_str()),
        (StatusCode::OK, "application/health+json")
    );
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["status"], "pass");
    assert_eq!(doc["checks"]["db:status"][0]["status"], "pass");
    assert_eq!(doc["checks"]["db:status"][0]["componentType"], "datastore");
    assert!(
        doc["checks"]["db:status"][0]["time"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert!(
        doc["checks"].get("process:status").is_none(),
        "liveness check not in readiness"
    );

    db_up.store(false, Ordering::SeqCst);
    let (status, _, body) = get(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["status"], "fail");
    assert_eq!(
        doc["checks"]["db:status"][0]["output"],
        "connection refused"
    );

    let (status, _, body) = get(&app, "/livez").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = get(&app, "/startupz").await;
    assert_eq!(status, StatusCode::OK, "no startup checks: pass");
}

#[tokio::test]
async fn warn_is_200_and_verbose_gives_text_lines() {
    let registry = HealthRegistry::new();
    registry.register(Check::new("queue", || async {
        Outcome::warn("backlog 1200")
    }));
    registry.register(Check::new("cache", || async { Outcome::pass() }));
    let app: Router = HealthRoutes::new(registry.clone()).router();
    let (status, _, body) = get(&app, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"status\":\"warn\""), "{body}");

    let (status, ct, body) = get(&app, "/readyz?verbose").await;
    assert_eq!(
        (status, ct.as_str()),
        (StatusCode::OK, "text/plain; charset=utf-8")
    );
    assert_eq!(
        body,
        "[+]cache ok\n[+]queue warn: backlog 1200\nreadyz check passed\n"
    );

    registry.register(Check::new("db", || async {
        Outcome::fail("refused\nnewline")
    }));
    let (status, _, body) = get(&app, "/readyz?verbose=1").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("[-]db failed: refused newline\n"), "{body}");
    assert!(body.ends_with("readyz check failed\n"));
}

#[tokio::test]
async fn paths_are_configurable_and_methods_checked() {
    let app: Router = HealthRoutes::new(HealthRegistry::new())
        .liveness_path("/health/live")
        .readiness_path("/health/ready")
        .startup_path("/health/started")
        .router();
    for path in ["/health/live", "/health/ready", "/health/started"] {
        assert_eq!(get(&app, path).await.0, StatusCode::OK, "{path}");
    }
    assert_eq!(get(&app, "/readyz").await.0, StatusCode::NOT_FOUND);
    let res = app
        .clone()
        .oneshot(Request::post("/health/live").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    let res = app
        .oneshot(Request::head("/health/live").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
}

// Checks run concurrently; a hanging check fails at its
// timeout without delaying the others (virtual time, no real sleeping).
#[tokio::test(start_paused = true)]
async fn checks_run_concurrently_and_hangs_time_out() {
    let registry = HealthRegistry::new();
    for name in ["a", "b", "c"] {
        registry.register(Check::new(name, || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Outcome::pass()
        }));
    }
    registry.register(
        Check::new("hangs", || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Outcome::pass()
        })
        .timeout(Duration::from_millis(500)),
    );
    let started = tokio::time::Instant::now();
    let report = registry.run(&Group::Readiness).await;
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(500),
        "max, not sum, of the checks"
    );
    assert_eq!(report.status(), Status::Fail);
    let hang = report.check("hangs").unwrap();
    assert_eq!(hang.status(), Status::Fail);
    assert_eq!(hang.output(), Some("timed out after 500ms"));
    for name in ["a", "b", "c"] {
        assert_eq!(report.check(name).unwrap().status(), Status::Pass);
    }
}

// Cached results are reused until they expire on the clock.
#[tokio::test]
async fn cached_checks_run_once_per_ttl() {
    let clock = ManualClock::new(Duration::from_secs(1_000));
    let registry = HealthRegistry::with_clock(clock.shared());
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    registry.register(
        Check::new("slow-dep", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Outcome::pass() }
        })
        .cache_for(Duration::from_secs(5)),
    );
    for _ in 0..3 {
        registry.run(&Group::Readiness).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_millis(4_999));
    registry.run(&Group::Readiness).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_millis(1));
    registry.run(&Group::Readiness).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

// Groups, custom groups, replacement and removal.
#[tokio::test]
async fn groups_select_checks() {
    let registry = HealthRegistry::new();
    registry.register(
        Check::new("migrations", || async { Outcome::fail("pending") }).groups([Group::Startup]),
    );
    registry.register(
        Check::new("gpu", || async { Outcome::pass() }).groups([Group::Custom("batch".into())]),
    );
    assert_eq!(registry.run(&Group::Startup).await.status(), Status::Fail);
    assert_eq!(registry.run(&Group::Readiness).await.status(), Status::Pass);
    assert_eq!(
        registry
            .run(&Group::Custom("batch".into()))
            .await
            .checks()
            .len(),
        1
    );
    registry
        .register(Check::new("migrations", || async { Outcome::pass() }).groups([Group::Startup]));
    assert_eq!(
        registry.run(&Group::Startup).await.status(),
        Status::Pass,
        "replaced"
    );
    assert!(registry.deregister("gpu"));
    assert!(!registry.deregister("gpu"));
}

// A panicking check fails its probe instead of the server.
#[tokio::test]
async fn a_panicking_check_fails_the_probe() {
    let registry = HealthRegistry::new();
    registry.register(Check::new("buggy", || async { panic!("boom") }));
    let report = registry.run(&Group::Readiness).await;
    assert_eq!(report.status(), Status::Fail);
    let buggy = report.check("buggy").expect("reported under its name");
    assert_eq!(
        buggy.output(),
        Some("check panicked"),
        "message only logged"
    );
}

// On drain readiness fails first while liveness passes.
#[tokio::test]
async fn drain_fails_readiness_but_not_liveness() {
    let registry = HealthRegistry::new();
    registry.register(Check::new("db", || async { Outcome::pass() }));
    let app: Router = HealthRoutes::new(registry.clone()).router();
    assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
    registry.drain();
    assert!(registry.is_draining());
    let (status, _, body) = get(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["checks"]["shutdown:status"][0]["output"],
        "draining for shutdown"
    );
    assert_eq!(get(&app, "/livez").await.0, StatusCode::OK);
}

/// A readiness check that counts its runs and takes 100 ms (paused time,
/// so that concurrent probes overlap it).
fn counted(runs: &Arc<AtomicUsize>) -> Check {
    let runs = runs.clone();
    Check::new("db", move || {
        runs.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Outcome::pass()
        }
    })
}

// Concurrent probes share one run, and a result is reused for the
// registry's cache period (1 s by default, on the registry's clock).
#[tokio::test(start_paused = true)]
async fn concurrent_readyz_calls_share_one_run_per_cache_period() {
    let clock = ManualClock::new(Duration::from_secs(1_000));
    let registry = HealthRegistry::with_clock(clock.shared());
    let runs = Arc::new(AtomicUsize::new(0));
    registry.register(counted(&runs));
    let app: Router = HealthRoutes::new(registry).router();

    for (status, _, body) in join_all((0..50).map(|_| get(&app, "/readyz"))).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "50 concurrent probes");

    for _ in 0..10 {
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
    }
    clock.advance(Duration::from_millis(999));
    assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "within the cache period");

    clock.advance(Duration::from_millis(1));
    join_all((0..50).map(|_| get(&app, "/readyz"))).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one more run per period");
}

// The cache period is set on the registry; zero turns the cache off, but
// concurrent probes still share one run.
#[tokio::test(start_paused = true)]
async fn the_cache_period_is_set_on_the_registry() {
    let clock = ManualClock::new(Duration::from_secs(1_000));
    let registry = HealthRegistry::with_clock(clock.shared()).cache_for(Duration::from_secs(3));
    assert_eq!(registry.cache_period(), Duration::from_secs(3));
    let runs = Arc::new(AtomicUsize::new(0));
    registry.register(counted(&runs));
    registry.run(&Group::Readiness).await;
    clock.advance(Duration::from_millis(2_999));
    registry.run(&Group::Readiness).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_millis(1));
    registry.run(&Group::Readiness).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    let registry = HealthRegistry::with_clock(clock.shared()).cache_for(Duration::ZERO);
    let runs = Arc::new(AtomicUsize::new(0));
    registry.register(counted(&runs));
    registry.run(&Group::Readiness).await;
    registry.run(&Group::Readiness).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "no cache: a run per probe");
    join_all((0..10).map(|_| registry.run(&Group::Readiness))).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "concurrent probes share");
}

/// A store whose ping fails with an error naming its host.
#[derive(Clone, Debug)]
struct UnreachableStore(KeySpace);

impl UnreachableStore {
    fn new() -> Self {
        Self(KeySpace::new("test").unwrap())
    }
}

impl Backend for UnreachableStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn keyspace(&self) -> &KeySpace {
        &self.0
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Err(StoreError::Unavailable(
            "secret-host:6379 connection refused".into(),
        ))
    }

    fn close(&self) {}
}

/// Log lines written while the guard returned by [`capture_logs`] lives
/// (on this thread, which runs every task of a current-thread runtime).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

// A store's error text (hosts, ports) goes to the log, not to the public
// probe answer, which names the check and its status only.
#[tokio::test]
async fn store_error_text_stays_out_of_readyz() {
    let (logs, _guard) = capture_logs();
    let registry = HealthRegistry::new();
    registry.register(store_check(UnreachableStore::new()));
    let app: Router = HealthRoutes::new(registry).router();

    let (status, _, body) = get(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!body.contains("secret-host"), "{body}");
    assert!(!body.contains("6379"), "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = &doc["checks"]["redis:responseTime"][0];
    assert_eq!(entry["status"], "fail", "{body}");
    assert_eq!(entry["output"], "unavailable", "{body}");

    let (status, _, text) = get(&app, "/readyz?verbose").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!text.contains("secret-host"), "{text}");
    assert!(text.contains("[-]redis failed: unavailable\n"), "{text}");

    let logged = logs.text();
    assert!(
        logged.contains("secret-host:6379 connection refused"),
        "the raw error is logged: {logged:?}"
    );
}
