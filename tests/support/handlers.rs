//! Inner services the tests put behind the layers, and the knobs tests
//! read from the environment.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use battlement::body::LayerBody;
use http::{Request, Response, StatusCode};
use tower::service_fn;

/// A handler answering `status` with the body `created`, counting its
/// runs in `runs`.
pub fn counting(
    runs: &Arc<AtomicUsize>,
    status: StatusCode,
) -> impl tower::Service<
    Request<LayerBody<String>>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let runs = runs.clone();
    service_fn(move |_: Request<LayerBody<String>>| {
        runs.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut res = Response::new(String::from("created"));
            *res.status_mut() = status;
            Ok::<_, Infallible>(res)
        }
    })
}

/// The whole number in the environment variable `name`, else `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
