//! Idempotency on a POST route: a retried request with the same
//! `Idempotency-Key` gets the first response again, and the order is
//! placed once.
//!
//! Run with: `cargo run --example idempotency`, then twice:
//! `curl -i 127.0.0.1:3000/orders -H 'Idempotency-Key: "order-1"' -H 'content-type: application/json' -d '{"item":"tea"}'`.
//! Both answer 201 `{"body":{"item":"tea"},"order":1}`; the second carries
//! `idempotent-replayed: true`. The same key with another body gets 422,
//! no key 400, a new key order 2. Listens on `BIND` (default `127.0.0.1:3000`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use battlement::IdempotencyLayer;
use battlement::backends::MemoryStore;
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Places an order: the next number and the request's body.
async fn order(
    State(orders): State<Arc<AtomicU64>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let n = orders.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        Json(json!({ "order": n, "body": body })),
    )
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // A key is executed once per client (its `Authorization`, else its
    // address) and its response kept for 24 h; `RedisStore` or `EtcdStore`
    // instead of `MemoryStore` make that hold across instances.
    let idempotency = IdempotencyLayer::new(MemoryStore::new())
        .routes(["/orders"])
        .required(true);
    let app = Router::new()
        .route("/orders", post(order))
        .with_state(Arc::new(AtomicU64::new(0)))
        .layer(idempotency);

    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(bind).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // With connect info: a client without `Authorization` is scoped by
    // its address.
    battlement::stack::serve(listener, app).await?;
    Ok(())
}
