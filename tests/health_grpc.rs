//! `grpc.health.v1.Health` served by `GrpcHealth`, called with a real tonic
//! client over loopback.
#![cfg(feature = "tonic")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use battlement::StoreError;
use battlement::backends::{Backend, KeySpace};
use battlement::clock::ManualClock;
use battlement::health::{Check, Group, GrpcHealth, HealthRegistry, Outcome, Status, store_check};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Bound for every wait on the server.
const WAIT: Duration = Duration::from_secs(5);

/// A registry whose readiness follows `ready`, plus a liveness check that
/// always passes. No caching, so that each change shows at once.
fn registry(ready: &Arc<AtomicBool>) -> HealthRegistry {
    let registry = HealthRegistry::new().cache_for(Duration::ZERO);
    let flag = ready.clone();
    registry.register(Check::new("dep", move || {
        let ok = flag.clone();
        async move {
            if ok.load(Ordering::SeqCst) {
                Outcome::pass()
            } else {
                Outcome::fail("down")
            }
        }
    }));
    registry
        .register(Check::new("process", || async { Outcome::pass() }).groups([Group::Liveness]));
    registry
}

/// Serves `GrpcHealth` over `registry` on an ephemeral loopback port.
async fn start(registry: HealthRegistry) -> HealthClient<Channel> {
    start_until(registry, std::future::pending()).await.0
}

/// Like [`start`], with a graceful shutdown when `shutdown` completes; the
/// handle finishes when the server has stopped.
async fn start_until(
    registry: HealthRegistry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (
    HealthClient<Channel>,
    JoinHandle<Result<(), tonic::transport::Error>>,
) {
    serve(health(registry), shutdown).await
}

/// The service under test: `""` and `helloworld.Greeter` from readiness,
/// `Watch` polling every 50 ms.
fn health(registry: HealthRegistry) -> GrpcHealth {
    GrpcHealth::new(registry)
        .service("helloworld.Greeter", Group::Readiness)
        .poll_every(Duration::from_millis(50))
}

/// Serves `health` on an ephemeral loopback port until `shutdown`.
async fn serve(
    health: GrpcHealth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (
    HealthClient<Channel>,
    JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let health = health.into_server();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown),
    );
    let channel = timeout(
        WAIT,
        Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect(),
    )
    .await
    .expect("connect timed out")
    .unwrap();
    (HealthClient::new(channel), server)
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

async fn check(
    client: &mut HealthClient<Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let response = timeout(WAIT, client.check(request(service)))
        .await
        .expect("Check timed out")?;
    Ok(status_of(&response.into_inner()))
}

async fn next(stream: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    let response = timeout(WAIT, stream.message())
        .await
        .expect("no Watch update in time")
        .unwrap()
        .expect("Watch stream ended");
    status_of(&response)
}

fn status_of(response: &HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(response.status).expect("a known ServingStatus")
}

async fn watch(
    client: &mut HealthClient<Channel>,
    service: &str,
) -> Result<tonic::Streaming<HealthCheckResponse>, tonic::Status> {
    let response = timeout(WAIT, client.watch(request(service)))
        .await
        .expect("Watch timed out")?;
    Ok(response.into_inner())
}

#[tokio::test]
async fn check_overall_follows_readiness() {
    let ready = Arc::new(AtomicBool::new(true));
    let mut client = start(registry(&ready)).await;

    assert_eq!(
        check(&mut client, "").await.unwrap(),
        ServingStatus::Serving
    );
    ready.store(false, Ordering::SeqCst);
    assert_eq!(
        check(&mut client, "").await.unwrap(),
        ServingStatus::NotServing
    );
    ready.store(true, Ordering::SeqCst);
    assert_eq!(
        check(&mut client, "").await.unwrap(),
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn check_named_service_follows_its_group() {
    let ready = Arc::new(AtomicBool::new(true));
    let mut client = start(registry(&ready)).await;

    assert_eq!(
        check(&mut client, "helloworld.Greeter").await.unwrap(),
        ServingStatus::Serving
    );
    ready.store(false, Ordering::SeqCst);
    assert_eq!(
        check(&mut client, "helloworld.Greeter").await.unwrap(),
        ServingStatus::NotServing
    );
}

#[tokio::test]
async fn check_unknown_service_is_not_found() {
    let ready = Arc::new(AtomicBool::new(true));
    let mut client = start(registry(&ready)).await;

    let err = check(&mut client, "nope").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn watch_sends_the_status_then_each_change() {
    let ready = Arc::new(AtomicBool::new(true));
    let mut client = start(registry(&ready)).await;

    let mut stream = timeout(WAIT, client.watch(request("")))
        .await
        .expect("Watch timed out")
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut stream).await, ServingStatus::Serving);
    ready.store(false, Ordering::SeqCst);
    assert_eq!(next(&mut stream).await, ServingStatus::NotServing);
    ready.store(true, Ordering::SeqCst);
    assert_eq!(next(&mut stream).await, ServingStatus::Serving);
}

#[tokio::test]
async fn watch_unknown_service_is_service_unknown() {
    let ready = Arc::new(AtomicBool::new(true));
    let mut client = start(registry(&ready)).await;

    let mut stream = timeout(WAIT, client.watch(request("nope")))
        .await
        .expect("Watch timed out")
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut stream).await, ServingStatus::ServiceUnknown);
}

#[tokio::test]
async fn drain_fails_readiness_but_not_liveness() {
    let ready = Arc::new(AtomicBool::new(true));
    let registry = registry(&ready);
    let mut client = start(registry.clone()).await;
    assert_eq!(
        check(&mut client, "").await.unwrap(),
        ServingStatus::Serving
    );

    registry.drain();

    assert_eq!(
        check(&mut client, "").await.unwrap(),
        ServingStatus::NotServing
    );
    assert_eq!(
        check(&mut client, "helloworld.Greeter").await.unwrap(),
        ServingStatus::NotServing
    );
    let liveness = registry.run(&Group::Liveness).await;
    assert_eq!(liveness.status(), Status::Pass);
    assert!(liveness.is_healthy());
}

#[tokio::test]
async fn drain_ends_watch_streams_so_graceful_shutdown_finishes() {
    let ready = Arc::new(AtomicBool::new(true));
    let registry = registry(&ready);
    let (stop, stopped) = oneshot::channel::<()>();
    let (mut client, server) = start_until(registry.clone(), async {
        let _ = stopped.await;
    })
    .await;
    let mut overall = client.watch(request("")).await.unwrap().into_inner();
    let mut greeter = client
        .watch(request("helloworld.Greeter"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut overall).await, ServingStatus::Serving);
    assert_eq!(next(&mut greeter).await, ServingStatus::Serving);

    registry.drain();

    // Watchers are told NOT_SERVING, then their streams end ...
    for stream in [&mut overall, &mut greeter] {
        assert_eq!(next(stream).await, ServingStatus::NotServing);
        let end = timeout(WAIT, stream.message())
            .await
            .expect("Watch stream still open after drain");
        assert!(matches!(end, Ok(None)), "{end:?}");
    }
    // ... and a Watch started while draining reports once and ends.
    let mut late = client.watch(request("")).await.unwrap().into_inner();
    assert_eq!(next(&mut late).await, ServingStatus::NotServing);
    let end = timeout(WAIT, late.message())
        .await
        .expect("late Watch still open");
    assert!(matches!(end, Ok(None)), "{end:?}");

    // So an open watcher does not hold up graceful shutdown.
    let _watching = client.watch(request("")).await.unwrap().into_inner();
    stop.send(()).unwrap();
    timeout(WAIT, server)
        .await
        .expect("graceful shutdown blocked by a Watch stream")
        .unwrap()
        .unwrap();
}

// Watch streams and Check calls go through the registry's cache, so
// many of them run the check once per cache period.
#[tokio::test]
async fn watch_streams_and_checks_share_one_run_per_cache_period() {
    let clock = ManualClock::new(Duration::from_secs(1_000));
    let registry = HealthRegistry::with_clock(clock.shared());
    let runs = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(AtomicBool::new(true));
    let (counter, flag) = (runs.clone(), ready.clone());
    registry.register(Check::new("dep", move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let ok = flag.load(Ordering::SeqCst);
        async move {
            if ok {
                Outcome::pass()
            } else {
                Outcome::fail("down")
            }
        }
    }));
    let mut client = start(registry).await;

    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(watch(&mut client, "").await.unwrap());
    }
    for stream in &mut streams {
        assert_eq!(next(stream).await, ServingStatus::Serving);
    }
    for _ in 0..10 {
        assert_eq!(
            check(&mut client, "").await.unwrap(),
            ServingStatus::Serving
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "20 streams, 10 checks");

    // The change shows once the period is over, after one more run.
    ready.store(false, Ordering::SeqCst);
    clock.advance(HealthRegistry::DEFAULT_CACHE_FOR);
    for stream in &mut streams {
        assert_eq!(next(stream).await, ServingStatus::NotServing);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "one run in the new period");
}

// Watch streams are capped: one more gets RESOURCE_EXHAUSTED, Check
// still answers, and a closed stream frees its slot.
#[tokio::test]
async fn watch_streams_beyond_the_cap_are_resource_exhausted() {
    let ready = Arc::new(AtomicBool::new(true));
    let health = health(registry(&ready)).max_watch_streams(2);
    let (mut client, _server) = serve(health, std::future::pending()).await;

    let mut first = watch(&mut client, "").await.unwrap();
    let mut second = watch(&mut client, "helloworld.Greeter").await.unwrap();
    assert_eq!(next(&mut first).await, ServingStatus::Serving);
    assert_eq!(next(&mut second).await, ServingStatus::Serving);

    let err = watch(&mut client, "").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(
        check(&mut client, "").await.unwrap(),
        ServingStatus::Serving,
        "Check is not capped"
    );

    // The server sees the cancelled stream a moment later; retry until then.
    drop(first);
    let mut third = timeout(WAIT, async {
        loop {
            match client.watch(request("")).await {
                Ok(stream) => break stream.into_inner(),
                Err(err) if err.code() == tonic::Code::ResourceExhausted => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(err) => panic!("{err:?}"),
            }
        }
    })
    .await
    .expect("the slot of a closed stream was not freed");
    assert_eq!(next(&mut third).await, ServingStatus::Serving);
}

/// A store whose ping fails with an error naming its host.
#[derive(Clone, Debug)]
struct UnreachableStore(KeySpace);

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

// A failing store is NOT_SERVING, and its error text is in neither the
// Check answer nor the Watch updates.
#[tokio::test]
async fn store_error_text_stays_out_of_grpc_answers() {
    let registry = HealthRegistry::new();
    registry.register(store_check(UnreachableStore(
        KeySpace::new("test").unwrap(),
    )));
    let mut client = start(registry).await;

    let answer = timeout(WAIT, client.check(request("")))
        .await
        .expect("Check timed out")
        .unwrap();
    let shown = format!("{:?} {:?}", answer.metadata(), answer.get_ref());
    assert!(!shown.contains("secret-host"), "{shown}");
    assert_eq!(status_of(answer.get_ref()), ServingStatus::NotServing);

    let mut stream = watch(&mut client, "").await.unwrap();
    let update = timeout(WAIT, stream.message())
        .await
        .expect("no Watch update in time")
        .unwrap()
        .expect("Watch stream ended");
    assert!(!format!("{update:?}").contains("secret-host"));
    assert_eq!(status_of(&update), ServingStatus::NotServing);
}
