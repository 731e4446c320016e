//! A rate limit shared by every instance: its state lives in Redis.
//!
//! Run with:
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run --example redis_rate_limit --features redis`,
//! and a second instance on the same Redis with `BIND=127.0.0.1:3001`.
//! Each client IP gets `RATE_LIMIT` (`N/<duration>` such as `5/m` or
//! `5/10s`; default `5/m`) across both:
//! `curl -i 127.0.0.1:3000/hello; curl -i 127.0.0.1:3001/hello` answer 200
//! with `RateLimit` headers counting down together, then 429 with
//! `Retry-After`. Listens on `BIND` (default `127.0.0.1:3000`).

use axum::Router;
use axum::routing::get;
use battlement::backends::RedisStore;
use battlement::key::PeerIp;
use battlement::rate_limit::{Policy, Quota, RateLimitLayer};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let url = var("REDIS_URL", "redis://127.0.0.1:6379");
    let quota: Quota = var("RATE_LIMIT", "5/m").parse()?;
    // Fails here, at startup, when Redis cannot be reached.
    let store = RedisStore::connect(&url).await?;
    // One policy keyed by the peer address; every process on this Redis
    // decides against the same key (one script call per decision).
    let limit = RateLimitLayer::new(store).policy(Policy::new("per-ip", quota)?.key(PeerIp));
    let app = Router::new()
        .route("/hello", get(|| async { "hello" }))
        .layer(limit);

    let listener = tokio::net::TcpListener::bind(var("BIND", "127.0.0.1:3000")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // `PeerIp` reads the address recorded with the connect info, which
    // `stack::serve` turns on.
    battlement::stack::serve(listener, app).await?;
    Ok(())
}
