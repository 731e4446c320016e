//! The HTTP probe endpoints, as a tower service and as axum routes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tower_service::Service;

use super::check::{Group, Status};
use super::registry::HealthRegistry;

/// The `application/health+json` media type.
pub const HEALTH_JSON: &str = "application/health+json";

/// One probe endpoint: runs a group and answers
/// `application/health+json` (200 for pass/warn, 503 for fail), or plain
/// text lines with `?verbose`.
///
/// Framework-neutral: mount it with axum's `route_service`, or use
/// [`HealthRoutes`] for all three probes at once.
#[derive(Clone, Debug)]
pub struct HealthEndpoint {
    registry: HealthRegistry,
    group: Group,
}

impl HealthEndpoint {
    /// The endpoint of `group`.
    pub fn new(registry: HealthRegistry, group: Group) -> Self {
        Self { registry, group }
    }

    /// Answers a request whose query string is `query`.
    pub async fn respond(&self, method: &Method, query: Option<&str>) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            let mut res = Response::new(Full::default());
            *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        let report = self.registry.run(&self.group).await;
        let status = if report.status() == Status::Fail {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let (content_type, body) = if wants_verbose(query) {
            ("text/plain; charset=utf-8", Bytes::from(report.to_text()))
        } else {
            (
                HEALTH_JSON,
                Bytes::from(report.to_health_json().to_string()),
            )
        };
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            body
        };
        let mut res = Response::new(Full::new(body));
        *res.status_mut() = status;
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        res.headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}

fn wants_verbose(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            name == "verbose" && !matches!(value, "0" | "false")
        })
    })
}

impl<B> Service<Request<B>> for HealthEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        let method = req.method().clone();
        let query = req.uri().query().map(str::to_owned);
        Box::pin(async move { Ok(this.respond(&method, query.as_deref()).await) })
    }
}

/// The three probe routes, with configurable paths.
///
/// ```
/// use battlement::health::{HealthRegistry, HealthRoutes};
///
/// let health = HealthRegistry::new();
/// let app: axum::Router = axum::Router::new()
///     .route("/hello", axum::routing::get(|| async { "hello" }))
///     .merge(HealthRoutes::new(health).readiness_path("/ready").router());
/// ```
#[derive(Clone, Debug)]
pub struct HealthRoutes {
    registry: HealthRegistry,
    paths: [(Group, String); 3],
}

impl HealthRoutes {
    /// `/livez`, `/readyz` and `/startupz` over `registry`.
    pub fn new(registry: HealthRegistry) -> Self {
        Self {
            registry,
            paths: [
                (Group::Liveness, "/livez".into()),
                (Group::Readiness, "/readyz".into()),
                (Group::Startup, "/startupz".into()),
            ],
        }
    }

    /// Serves liveness at `path`.
    pub fn liveness_path(mut self, path: impl Into<String>) -> Self {
        self.paths[0].1 = path.into();
        self
    }

    /// Serves readiness at `path`.
    pub fn readiness_path(mut self, path: impl Into<String>) -> Self {
        self.paths[1].1 = path.into();
        self
    }

    /// Serves startup at `path`.
    pub fn startup_path(mut self, path: impl Into<String>) -> Self {
        self.paths[2].1 = path.into();
        self
    }

    /// The endpoints with their paths.
    pub fn endpoints(&self) -> impl Iterator<Item = (&str, HealthEndpoint)> + '_ {
        self.paths.iter().map(|(group, path)| {
            (
                path.as_str(),
                HealthEndpoint::new(self.registry.clone(), group.clone()),
            )
        })
    }

    /// An axum router with the three routes, to `merge` into an app.
    #[cfg(feature = "axum")]
    pub fn router<S>(self) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        self.endpoints()
            .fold(axum::Router::new(), |router, (path, endpoint)| {
                router.route_service(path, endpoint)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_is_recognised() {
        assert!(wants_verbose(Some("verbose")));
        assert!(wants_verbose(Some("a=1&verbose=true")));
        assert!(wants_verbose(Some("verbose=1")));
        assert!(!wants_verbose(Some("verbose=0")));
        assert!(!wants_verbose(Some("verbosity")));
        assert!(!wants_verbose(None));
    }
}
