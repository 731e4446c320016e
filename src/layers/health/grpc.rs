//! `grpc.health.v1.Health` over the same registry.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as PbStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::check::Group;
use super::registry::HealthRegistry;

/// The gRPC health service, driven by a [`HealthRegistry`].
///
/// The overall status (service `""`) is readiness; each registered gRPC
/// service name maps to a group. `Check` answers `NOT_FOUND` for unknown
/// names; `Watch` sends the current status at once and again whenever it
/// changes (polled every second by default), and `SERVICE_UNKNOWN` for
/// unknown names. Polls go through the registry's result cache, so any
/// number of streams run each check at most once per cache period.
///
/// At most [`max_watch_streams`](Self::max_watch_streams) `Watch` streams
/// (default 1,000) are open at once; one more is refused with
/// `RESOURCE_EXHAUSTED`, so that watchers cannot pile up tasks and timers
/// without bound. A slot is freed when its stream ends or the client
/// cancels it. `Check` calls are not limited.
///
/// Once the registry is [draining](HealthRegistry::drain), `Watch` sends
/// the status one last time if it changed (`NOT_SERVING` for readiness)
/// and then ends the stream, so that open watchers do not hold up a
/// graceful shutdown; a `Watch` started while draining sends
/// the status once and ends.
///
/// ```
/// use battlement::health::{GrpcHealth, Group, HealthRegistry};
///
/// let registry = HealthRegistry::new();
/// let health = GrpcHealth::new(registry)
///     .service("helloworld.Greeter", Group::Readiness)
///     .into_server();
/// // tonic::transport::Server::builder().add_service(health) ...
/// ```
#[derive(Clone, Debug)]
pub struct GrpcHealth {
    registry: HealthRegistry,
    services: Arc<HashMap<String, Group>>,
    poll_every: Duration,
    max_watch_streams: usize,
    /// One permit per open `Watch` stream; clones share them.
    watch_slots: Arc<Semaphore>,
}

impl GrpcHealth {
    /// How many `Watch` streams may be open at once by default.
    pub const DEFAULT_MAX_WATCH_STREAMS: usize = 1_000;

    /// Serves the overall status (`""`) from readiness.
    pub fn new(registry: HealthRegistry) -> Self {
        let services = HashMap::from([(String::new(), Group::Readiness)]);
        Self {
            registry,
            services: Arc::new(services),
            poll_every: Duration::from_secs(1),
            max_watch_streams: Self::DEFAULT_MAX_WATCH_STREAMS,
            watch_slots: Arc::new(Semaphore::new(Self::DEFAULT_MAX_WATCH_STREAMS)),
        }
    }

    /// Reports the gRPC service `name` (e.g. `helloworld.Greeter`) from
    /// `group`.
    pub fn service(mut self, name: impl Into<String>, group: Group) -> Self {
        Arc::make_mut(&mut self.services).insert(name.into(), group);
        self
    }

    /// How often `Watch` re-runs the checks (default 1 s).
    pub fn poll_every(mut self, every: Duration) -> Self {
        self.poll_every = every;
        self
    }

    /// Refuses a `Watch` with `RESOURCE_EXHAUSTED` while `max` streams are
    /// open (default [`DEFAULT_MAX_WATCH_STREAMS`](Self::DEFAULT_MAX_WATCH_STREAMS)).
    pub fn max_watch_streams(mut self, max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        self.max_watch_streams = max;
        self.watch_slots = Arc::new(Semaphore::new(max));
        self
    }

    /// The tonic service to `add_service`.
    pub fn into_server(self) -> HealthServer<Self> {
        HealthServer::new(self)
    }

    /// The status of `service`, or `None` if it is unknown.
    pub async fn status(&self, service: &str) -> Option<ServingStatus> {
        let group = self.services.get(service)?;
        let report = self.registry.run(group).await;
        Some(if report.is_healthy() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        })
    }

    async fn wire_status(&self, service: &str) -> PbStatus {
        match self.status(service).await {
            Some(ServingStatus::Serving) => PbStatus::Serving,
            Some(ServingStatus::NotServing) => PbStatus::NotServing,
            Some(ServingStatus::Unknown) => PbStatus::Unknown,
            None => PbStatus::ServiceUnknown,
        }
    }
}

fn response(status: PbStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

#[tonic::async_trait]
impl Health for GrpcHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        match self.wire_status(service).await {
            PbStatus::ServiceUnknown => {
                Err(Status::not_found(format!("unknown service {service:?}")))
            }
            status => Ok(Response::new(response(status))),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let Ok(slot) = self.watch_slots.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "too many health Watch streams (at most {})",
                self.max_watch_streams
            )));
        };
        let service = request.into_inner().service;
        let this = self.clone();
        let state = WatchState {
            last: None,
            done: false,
            _slot: slot,
        };
        // The state, with the slot, lives as long as the stream.
        let stream = futures_util::stream::unfold(state, move |state| {
            let this = this.clone();
            let service = service.clone();
            async move {
                if state.done {
                    return None;
                }
                let mut first = state.last.is_none();
                loop {
                    if !first {
                        tokio::time::sleep(this.poll_every).await;
                    }
                    first = false;
                    // Read before running the checks, so that a status
                    // computed while draining already reflects the drain.
                    let draining = this.registry.is_draining();
                    let status = this.wire_status(&service).await;
                    if Some(status) != state.last {
                        let next = WatchState {
                            last: Some(status),
                            done: draining,
                            ..state
                        };
                        return Some((Ok(response(status)), next));
                    }
                    if draining {
                        return None;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What a `Watch` stream carries from one update to the next.
struct WatchState {
    /// The status last sent.
    last: Option<PbStatus>,
    /// Whether the stream ends after the update just sent.
    done: bool,
    /// Its place under the cap, given back when the stream is dropped.
    _slot: OwnedSemaphorePermit,
}
