//! The circuit breaker on real tonic servers and clients over loopback
//!: gRPC statuses are classified, and an open
//! breaker answers `UNAVAILABLE` on a server and on a `Channel`.
#![cfg(feature = "tonic")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use battlement::backends::MemoryStore;
use battlement::circuit_breaker::{BreakerConfig, CircuitBreakerLayer, State};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};

#[allow(clippy::all, missing_docs)]
mod helloworld {
    include!("../examples/tonic/helloworld.rs");
}

use helloworld::greeter_client::GreeterClient;
use helloworld::greeter_server::{Greeter, GreeterServer};
use helloworld::{HelloReply, HelloRequest};

/// Answers `UNAVAILABLE` to the name "down", greets everyone else.
#[derive(Default)]
struct Flaky {
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Greeter for Flaky {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let name = req.into_inner().name;
        if name == "down" {
            return Err(Status::unavailable("backend down"));
        }
        Ok(Response::new(HelloReply {
            message: format!("Hello {name}"),
        }))
    }
}

fn config() -> BreakerConfig {
    BreakerConfig::default()
        .consecutive_failures(3)
        .open_for(Duration::from_secs(30))
}

fn hello(name: &str) -> Request<HelloRequest> {
    Request::new(HelloRequest { name: name.into() })
}

/// Serves `greeter` behind `layer` (if any); a connected channel.
async fn serve(greeter: Flaky, layer: Option<CircuitBreakerLayer>) -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = TcpIncoming::from(listener);
    let svc = GreeterServer::new(greeter);
    tokio::spawn(async move {
        match layer {
            Some(layer) => {
                Server::builder()
                    .layer(layer)
                    .add_service(svc)
                    .serve_with_incoming(incoming)
                    .await
            }
            None => {
                Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(incoming)
                    .await
            }
        }
    });
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tonic_server_breaker_opens_on_unavailable_and_answers_unavailable() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::new("greeter", MemoryStore::new(), config()).unwrap();
    let handle = layer.handle();
    let greeter = Flaky {
        calls: calls.clone(),
    };
    let mut client = GreeterClient::new(serve(greeter, Some(layer)).await);
    // NOT_FOUND-like client errors would not count; UNAVAILABLE does.
    client.say_hello(hello("Ferris")).await.unwrap();
    for _ in 0..3 {
        let status = client.say_hello(hello("down")).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::Unavailable, "backend down")
        );
    }
    assert_eq!(handle.state("global"), State::Open);
    let status = client.say_hello(hello("Ferris")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("circuit breaker greeter is open"),
        "{status:?}"
    );
    assert_eq!(status.metadata().get("retry-after").unwrap(), "30");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the open breaker did not call in"
    );
}

#[tokio::test]
async fn a_breaker_on_a_tonic_channel_stops_calls_to_a_failing_server() {
    let calls = Arc::new(AtomicUsize::new(0));
    let greeter = Flaky {
        calls: calls.clone(),
    };
    let channel = serve(greeter, None).await;
    // Response mode on a client: an open breaker is a gRPC UNAVAILABLE the
    // generated client reports as a Status.
    let layer = CircuitBreakerLayer::new("upstream", MemoryStore::new(), config()).unwrap();
    let handle = layer.handle();
    let guarded = tower::ServiceBuilder::new().layer(layer).service(channel);
    let mut client = GreeterClient::new(guarded);
    for _ in 0..3 {
        let status = client.say_hello(hello("down")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(handle.state("global"), State::Open);
    let status = client.say_hello(hello("Ferris")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("circuit breaker upstream is open"),
        "{status:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}
