//! Request IDs end to end.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use battlement::request_id::{ForwardRequestIdLayer, RequestId, RequestIdLayer};
use http::{HeaderValue, Request, Response};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A server stack whose handler reports what it saw.
fn echo_service()
-> impl tower::Service<Request<()>, Response = Response<String>, Error = Infallible, Future = impl Send>
+ Clone {
    ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .service(service_fn(|req: Request<()>| async move {
            let header = req.headers()["x-request-id"].to_str().unwrap().to_owned();
            let ext = req.extensions().get::<RequestId>().unwrap().clone();
            assert_eq!(ext.as_str(), header, "header and extension agree");
            assert_eq!(
                RequestId::current(),
                Some(ext),
                "current() inside the handler"
            );
            Ok::<_, Infallible>(Response::new(header))
        }))
}

async fn send(value: Option<&[u8]>) -> (String, String) {
    let mut req = Request::get("/").body(()).unwrap();
    if let Some(v) = value {
        req.headers_mut()
            .insert("x-request-id", HeaderValue::from_bytes(v).unwrap());
    }
    let res = echo_service().oneshot(req).await.unwrap();
    let echoed = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    (echoed, res.into_body())
}

fn is_uuid_v7(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.get_version_num() == 7)
}

#[tokio::test]
async fn valid_incoming_ids_are_kept_and_echoed() {
    for id in ["abc", "req-1.2_3:4", &"x".repeat(128)] {
        let (echoed, seen) = send(Some(id.as_bytes())).await;
        assert_eq!(echoed, id);
        assert_eq!(seen, id);
    }
}

#[tokio::test]
async fn invalid_incoming_ids_are_replaced() {
    let long = "y".repeat(200);
    let cases: [&[u8]; 6] = [
        long.as_bytes(),
        b"tab\there",
        b"caf\xc3\xa9",
        b"with space",
        b"quote\"d",
        b"",
    ];
    for bad in cases {
        let (echoed, seen) = send(Some(bad)).await;
        assert!(is_uuid_v7(&echoed), "{bad:?} -> {echoed}");
        assert_eq!(echoed, seen);
    }
}

#[tokio::test]
async fn duplicate_headers_are_replaced() {
    let req = Request::get("/")
        .header("x-request-id", "one")
        .header("x-request-id", "two")
        .body(())
        .unwrap();
    let res = echo_service().oneshot(req).await.unwrap();
    assert!(is_uuid_v7(res.headers()["x-request-id"].to_str().unwrap()));
    assert_eq!(res.headers().get_all("x-request-id").iter().count(), 1);
}

#[tokio::test]
async fn trust_can_be_switched_off_and_header_renamed() {
    let svc = ServiceBuilder::new()
        .layer(
            RequestIdLayer::new()
                .trust_incoming(false)
                .header(http::HeaderName::from_static("x-correlation-id")),
        )
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
    let req = Request::get("/")
        .header("x-correlation-id", "client-chosen")
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let id = res.headers()["x-correlation-id"].to_str().unwrap();
    assert!(is_uuid_v7(id), "{id}");
    assert!(!res.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn generated_ids_are_uuid_v7_and_increase() {
    let mut last = String::new();
    for _ in 0..1_000 {
        let (id, _) = send(None).await;
        assert!(is_uuid_v7(&id), "{id}");
        assert!(id > last, "{id} after {last}");
        last = id;
    }
}

#[tokio::test]
async fn a_custom_generator_can_be_plugged_in() {
    let svc = ServiceBuilder::new()
        .layer(
            RequestIdLayer::new().make_request_id(|_: &battlement::key::RequestHead<'_>| {
                RequestId::parse(&HeaderValue::from_static("fixed-id")).unwrap()
            }),
        )
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "fixed-id");
}

/// Records span fields and, for each event, the fields of its spans.
#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<HashMap<u64, HashMap<String, String>>>>,
    events: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        fields.insert("name".into(), attrs.metadata().name().into());
        self.spans.lock().unwrap().insert(id.into_u64(), fields);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut spans = self.spans.lock().unwrap();
        values.record(&mut Fields(spans.entry(id.into_u64()).or_default()));
    }
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        if let Some(scope) = ctx.event_scope(event) {
            let spans = self.spans.lock().unwrap();
            for span in scope.from_root() {
                if let Some(f) = spans.get(&span.id().into_u64()) {
                    fields.extend(f.clone());
                }
            }
        }
        event.record(&mut Fields(&mut fields));
        self.events.lock().unwrap().push(fields);
    }
}

/// The test binary's one subscriber: global, not per thread, because tests
/// running at the same time on other threads without a subscriber would
/// otherwise race to cache `never` for the layers' callsites. The tests
/// that use it tell their events apart by message.
fn capture() -> Capture {
    static CAPTURE: std::sync::OnceLock<Capture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            let subscriber = tracing_subscriber::registry().with(capture.clone());
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
            capture
        })
        .clone()
}

#[tokio::test]
async fn every_log_line_of_the_request_carries_the_id() {
    let capture = capture();

    let svc = ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .service(service_fn(|_: Request<()>| async {
            tracing::info!("handling");
            Ok::<_, Infallible>(Response::new(()))
        }));
    // An outer span (e.g. the trace layer's) that declares `request.id`.
    let outer = tracing::info_span!("http", request.id = tracing::field::Empty);
    let req = Request::get("/")
        .header("x-request-id", "trace-me-1")
        .body(())
        .unwrap();
    let fut = {
        let _enter = outer.enter();
        svc.oneshot(req)
    };
    tracing::Instrument::instrument(fut, outer.clone())
        .await
        .unwrap();

    let events = capture.events.lock().unwrap();
    let handling = events
        .iter()
        .find(|e| e.get("message").is_some_and(|m| m == "handling"))
        .expect("handler event captured");
    assert_eq!(
        handling.get("request_id").map(String::as_str),
        Some("trace-me-1")
    );
    let spans = capture.spans.lock().unwrap();
    let http_span = spans.values().find(|s| s["name"] == "http").unwrap();
    assert_eq!(
        http_span.get("request.id").map(String::as_str),
        Some("trace-me-1")
    );
}

// As the server preset stacks it: the trace layer makes no `tracing` span
// (its span is on the OpenTelemetry API), so the request id's own log-only
// span gives every log line the id.
#[tokio::test]
async fn log_lines_under_the_trace_span_carry_the_id() {
    let capture = capture();
    let svc = ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .layer(battlement::trace::TraceLayer::server())
        .service(service_fn(|_: Request<()>| async {
            tracing::info!("handling under trace");
            Ok::<_, Infallible>(Response::new(()))
        }));
    let req = Request::get("/")
        .header("x-request-id", "trace-me-2")
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    drop(res);

    let events = capture.events.lock().unwrap();
    let handling = events
        .iter()
        .find(|e| {
            e.get("message")
                .is_some_and(|m| m == "handling under trace")
        })
        .expect("handler event captured");
    assert_eq!(
        handling.get("request_id").map(String::as_str),
        Some("trace-me-2")
    );
}

#[tokio::test]
async fn outbound_calls_in_the_handler_forward_the_id() {
    // The downstream reports the id it received.
    let downstream = service_fn(|req: Request<()>| async move {
        let id = req
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned());
        Ok::<_, Infallible>(id)
    });
    let client = ServiceBuilder::new()
        .layer(ForwardRequestIdLayer::new())
        .service(downstream);
    let server = ServiceBuilder::new()
        .layer(RequestIdLayer::new())
        .service(service_fn(move |_: Request<()>| {
            let client = client.clone();
            async move {
                let got = client.oneshot(Request::new(())).await?;
                Ok::<_, Infallible>(Response::new(got))
            }
        }));
    let req = Request::get("/")
        .header("x-request-id", "from-edge")
        .body(())
        .unwrap();
    let res = server.oneshot(req).await.unwrap();
    assert_eq!(res.into_body().as_deref(), Some("from-edge"));
}

#[tokio::test]
async fn forwarding_keeps_an_explicit_id_and_can_generate() {
    let downstream = service_fn(|req: Request<()>| async move {
        Ok::<_, Infallible>(req.headers().get("x-request-id").cloned())
    });
    let plain = ServiceBuilder::new()
        .layer(ForwardRequestIdLayer::new())
        .service(downstream);
    assert_eq!(plain.clone().oneshot(Request::new(())).await.unwrap(), None);

    let mut req = Request::new(());
    req.extensions_mut()
        .insert(RequestId::parse(&HeaderValue::from_static("ext-id")).unwrap());
    assert_eq!(plain.clone().oneshot(req).await.unwrap().unwrap(), "ext-id");

    let req = Request::get("/")
        .header("x-request-id", "already")
        .body(())
        .unwrap();
    let inside = RequestId::parse(&HeaderValue::from_static("scoped")).unwrap();
    assert_eq!(
        inside.scope(plain.oneshot(req)).await.unwrap().unwrap(),
        "already"
    );

    let generating = ServiceBuilder::new()
        .layer(ForwardRequestIdLayer::new().generate_missing(true))
        .service(downstream);
    let id = generating.oneshot(Request::new(())).await.unwrap().unwrap();
    assert!(is_uuid_v7(id.to_str().unwrap()));
}
