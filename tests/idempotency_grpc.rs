//! Unary gRPC through the idempotency layer on a real tonic server: the
//! `idempotency-key` metadata works as the HTTP header.
#![cfg(feature = "tonic")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use battlement::backends::MemoryStore;
use battlement::idempotency::IdempotencyLayer;
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

/// Greets with the number of calls so far.
struct Counting(Arc<AtomicUsize>);

#[tonic::async_trait]
impl Greeter for Counting {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Response::new(HelloReply {
            message: format!("Hello {} #{n}", req.into_inner().name),
        }))
    }
}

async fn serve(calls: &Arc<AtomicUsize>) -> GreeterClient<Channel> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = GreeterServer::new(Counting(calls.clone()));
    tokio::spawn(
        Server::builder()
            .layer(IdempotencyLayer::new(MemoryStore::new()))
            .add_service(svc)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    GreeterClient::new(channel)
}

fn hello(name: &str, key: Option<&str>) -> Request<HelloRequest> {
    let mut req = Request::new(HelloRequest { name: name.into() });
    if let Some(key) = key {
        req.metadata_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn unary_calls_with_a_key_execute_once_and_replay() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut client = serve(&calls).await;
    let first = client
        .say_hello(hello("Ferris", Some("\"k1\"")))
        .await
        .unwrap();
    assert_eq!(first.get_ref().message, "Hello Ferris #1");
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let again = client
        .say_hello(hello("Ferris", Some("\"k1\"")))
        .await
        .unwrap();
    assert_eq!(again.get_ref().message, "Hello Ferris #1");
    assert_eq!(again.metadata().get("idempotent-replayed").unwrap(), "true");

    let other = client
        .say_hello(hello("Crab", Some("\"k1\"")))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    let bad = client
        .say_hello(hello("Ferris", Some("not a token")))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    let keyless = client.say_hello(hello("Ferris", None)).await.unwrap();
    assert_eq!(keyless.get_ref().message, "Hello Ferris #2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
