//! Hedged requests: a second copy of a slow request, the first response
//! wins. Paused tokio time: the latencies are virtual and exact.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use battlement::backends::MemoryStore;
use battlement::body::LayerBody;
use battlement::client::ClientStack;
use battlement::events::Events;
use battlement::hedge::{HedgeConfig, HedgeDelay, HedgeLayer, Hedged};
use battlement::retry::{Budget, ResendCount, RetryPolicy};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::retry::budget::TpsBudget;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

const MS: Duration = Duration::from_millis(1);

type Body = LayerBody<Full<Bytes>>;

/// What the upstream saw of one call.
#[derive(Debug, Clone)]
struct Call {
    started: Instant,
    body: Bytes,
    resend: Option<u32>,
    traceparent: Option<String>,
    /// Set when the call's future was dropped before it finished.
    dropped: Arc<AtomicBool>,
}

/// Sets `dropped` unless disarmed (the call finished).
struct DropFlag(Option<Arc<AtomicBool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::SeqCst);
        }
    }
}

/// An upstream that answers after `latency_ms`, or after 10 s for the
/// call that finds `slow_next` set; the body names the call.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<Mutex<Vec<Call>>>,
    latency_ms: Arc<AtomicU64>,
    slow_next: Arc<AtomicBool>,
}

impl Upstream {
    fn new(latency_ms: u64) -> Self {
        let up = Self::default();
        up.latency_ms.store(latency_ms, Ordering::SeqCst);
        up
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn service(&self) -> BoxCloneSyncService<Request<Body>, Response<Full<Bytes>>, Infallible> {
        let up = self.clone();
        BoxCloneSyncService::new(service_fn(move |req: Request<Body>| {
            let up = up.clone();
            async move {
                let dropped = Arc::new(AtomicBool::new(false));
                let (n, latency) = {
                    let mut calls = up.calls.lock().unwrap();
                    let n = calls.len();
                    calls.push(Call {
                        started: Instant::now(),
                        body: Bytes::new(),
                        resend: req.extensions().get::<ResendCount>().map(|r| r.0),
                        traceparent: req
                            .headers()
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned),
                        dropped: dropped.clone(),
                    });
                    let slow = up.slow_next.swap(false, Ordering::SeqCst);
                    let ms = if slow {
                        10_000
                    } else {
                        up.latency_ms.load(Ordering::SeqCst)
                    };
                    (n, Duration::from_millis(ms))
                };
                let mut flag = DropFlag(Some(dropped));
                let body = req.into_body().collect().await.unwrap().to_bytes();
                up.calls.lock().unwrap()[n].body = body;
                tokio::time::sleep(latency).await;
                flag.0 = None;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n.to_string()))))
            }
        }))
    }
}

fn get() -> Request<Body> {
    Request::get("http://api.example/item")
        .body(LayerBody::inner(Full::default()))
        .unwrap()
}

fn fixed(ms: u64) -> HedgeConfig {
    HedgeConfig::default().delay(HedgeDelay::Fixed(Duration::from_millis(ms)))
}

async fn text(res: Response<Full<Bytes>>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_slow_attempt_is_hedged_after_the_fixed_delay_and_the_hedge_wins() {
    let up = Upstream::new(5);
    let events = Events::new();
    let mut rx = events.subscribe();
    let client = ServiceBuilder::new()
        .layer(HedgeLayer::new(fixed(50)).unwrap().events(events))
        .service(up.service());
    up.slow_next.store(true, Ordering::SeqCst);
    let res = client.oneshot(get()).await.unwrap();
    assert_eq!(res.extensions().get::<Hedged>(), Some(&Hedged));
    assert_eq!(text(res).await, "1");
    let calls = up.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].started - calls[0].started, 50 * MS);
    // The first attempt was cancelled; the hedge counts as a resend.
    assert!(calls[0].dropped.load(Ordering::SeqCst));
    assert!(!calls[1].dropped.load(Ordering::SeqCst));
    assert_eq!((calls[0].resend, calls[1].resend), (None, Some(1)));
    let seen: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|e| (e.layer(), e.event(), e.detail().map(str::to_owned)))
        .collect();
    assert_eq!(
        seen,
        [
            ("hedge", "hedged", Some("api.example".to_owned())),
            ("hedge", "hedge_won", Some("api.example".to_owned())),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_fast_attempt_is_not_hedged() {
    let up = Upstream::new(5);
    let client = ServiceBuilder::new()
        .layer(HedgeLayer::new(fixed(50)).unwrap())
        .service(up.service());
    let res = client.oneshot(get()).await.unwrap();
    assert_eq!(res.extensions().get::<Hedged>(), None);
    assert_eq!(up.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn posts_are_never_hedged_keyed_or_not_and_puts_are() {
    let up = Upstream::new(5);
    let mut client = ServiceBuilder::new()
        .layer(HedgeLayer::new(fixed(10)).unwrap())
        .service(up.service());
    let send = |method: http::Method, key: Option<&str>| {
        let mut req = Request::builder()
            .method(method)
            .uri("http://api.example/orders");
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        req.body(LayerBody::inner(Full::new(Bytes::from_static(b"order"))))
            .unwrap()
    };
    for (n, key) in [None, Some("\"k1\"")].into_iter().enumerate() {
        up.slow_next.store(true, Ordering::SeqCst);
        let fut = client
            .ready()
            .await
            .unwrap()
            .call(send(http::Method::POST, key));
        let res = fut.await.unwrap();
        assert_eq!(res.extensions().get::<Hedged>(), None, "{key:?}");
        assert_eq!(text(res).await, n.to_string());
        assert_eq!(up.calls().len(), n + 1, "{key:?}");
    }

    up.slow_next.store(true, Ordering::SeqCst);
    let fut = client
        .ready()
        .await
        .unwrap()
        .call(send(http::Method::PUT, None));
    let res = fut.await.unwrap();
    assert_eq!(res.extensions().get::<Hedged>(), Some(&Hedged));
    let calls = up.calls();
    assert_eq!(calls.len(), 4);
    // Both copies carried the whole body.
    assert_eq!(calls[2].body, "order");
    assert_eq!(calls[3].body, "order");
}

// A keyed POST slower than the hedge delay, against a server's
// idempotency layer, gets the handler's response: a hedge would have met
// the server's 409 for its own key, and that 409 would have won.
#[tokio::test(start_paused = true)]
async fn a_slow_keyed_post_gets_its_response_not_the_servers_409() {
    use battlement::idempotency::IdempotencyLayer;

    let runs = Arc::new(AtomicU64::new(0));
    let handler = {
        let runs = runs.clone();
        service_fn(move |_: Request<LayerBody<Body>>| {
            runs.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(50 * MS).await;
                let mut res = Response::new(Full::new(Bytes::from_static(b"placed")));
                *res.status_mut() = http::StatusCode::CREATED;
                Ok::<_, Infallible>(res)
            }
        })
    };
    let mut client = ServiceBuilder::new()
        .layer(HedgeLayer::new(fixed(10)).unwrap())
        .layer(IdempotencyLayer::new(MemoryStore::new()))
        .service(handler);
    let req = Request::post("http://api.example/orders")
        .header("authorization", "Bearer alice")
        .header("idempotency-key", "\"pay-1\"")
        .body(LayerBody::inner(Full::new(Bytes::from_static(b"{}"))))
        .unwrap();
    let res = client.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), http::StatusCode::CREATED);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "placed"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Sends `n` requests one after another.
async fn send<S>(client: &mut S, n: usize)
where
    S: Service<Request<Body>, Response = Response<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        let fut = client.ready().await.unwrap().call(get());
        fut.await.unwrap();
    }
}

/// The gap between the last two calls: the hedge's delay.
fn last_gap(up: &Upstream) -> Duration {
    let calls = up.calls();
    let [.., a, b] = calls.as_slice() else {
        panic!("fewer than two calls")
    };
    b.started - a.started
}

#[tokio::test(start_paused = true)]
async fn the_percentile_delay_follows_the_observed_latency() {
    let up = Upstream::new(10);
    let config = HedgeConfig::default()
        .delay(HedgeDelay::Percentile {
            percentile: 95.0,
            fallback: None,
        })
        .min_samples(20);
    let mut client = ServiceBuilder::new()
        .layer(HedgeLayer::new(config).unwrap())
        .service(up.service());
    // Too few samples: a slow request is not hedged.
    send(&mut client, 19).await;
    up.slow_next.store(true, Ordering::SeqCst);
    send(&mut client, 1).await;
    assert_eq!(up.calls().len(), 20);

    // 20 samples, 19 of 10 ms: the hedge leaves after 10 ms.
    up.slow_next.store(true, Ordering::SeqCst);
    send(&mut client, 1).await;
    assert_eq!(up.calls().len(), 22);
    let gap = last_gap(&up);
    assert!((10 * MS..12 * MS).contains(&gap), "{gap:?}");

    // The host slows down to 40 ms: so does the delay.
    up.latency_ms.store(40, Ordering::SeqCst);
    send(&mut client, 300).await;
    up.slow_next.store(true, Ordering::SeqCst);
    send(&mut client, 1).await;
    let gap = last_gap(&up);
    assert!((40 * MS..42 * MS).contains(&gap), "{gap:?}");
}

#[tokio::test(start_paused = true)]
async fn the_fraction_bounds_the_hedges() {
    // Every attempt takes 100 ms, so every request waits past the 10 ms
    // delay; the first attempt still wins (it started first).
    let up = Upstream::new(100);
    let mut client = ServiceBuilder::new()
        .layer(HedgeLayer::new(fixed(10).max_hedged_fraction(0.1)).unwrap())
        .service(up.service());
    send(&mut client, 200).await;
    let hedges = up.calls().len() - 200;
    // 10 saved up, then one per 10 requests.
    assert!((10..=30).contains(&hedges), "{hedges}");
    assert!(
        up.calls()
            .iter()
            .filter(|c| c.dropped.load(Ordering::SeqCst))
            .count()
            == hedges
    );

    let up = Upstream::new(100);
    let mut client = ServiceBuilder::new()
        .layer(HedgeLayer::new(fixed(10).max_hedged_fraction(0.0)).unwrap())
        .service(up.service());
    send(&mut client, 50).await;
    assert_eq!(up.calls().len(), 50);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_sends_no_hedge() {
    let up = Upstream::new(100);
    let empty = Arc::new(TpsBudget::new(Duration::from_secs(10), 0, 0.0));
    let mut client = ServiceBuilder::new()
        .layer(HedgeLayer::new(fixed(10)).unwrap().budget(Some(empty)))
        .service(up.service());
    send(&mut client, 20).await;
    assert_eq!(up.calls().len(), 20);
}

/// Spans end up in the returned exporter while the guard lives. Every
/// test that runs the client stack (and so its span callsites) sets one,
/// so no test thread without a subscriber caches them as disabled.
fn collect_spans() -> (
    opentelemetry_sdk::trace::InMemorySpanExporter,
    tracing::subscriber::DefaultGuard,
) {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    (exporter, tracing::subscriber::set_default(subscriber))
}

fn stack(budget: Budget) -> battlement::client::ClientStackLayer<MemoryStore> {
    ClientStack::new("up", MemoryStore::new())
        .retry(RetryPolicy::default().budget(Some(budget)))
        .hedge(fixed(10))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_client_stack_hedges_within_the_retry_budget() {
    let _spans = collect_spans();
    // A budget with room: the slow request is hedged.
    let up = Upstream::new(5);
    let client = ServiceBuilder::new()
        .layer(stack(Budget::default()))
        .service(up.service());
    up.slow_next.store(true, Ordering::SeqCst);
    let res = client
        .oneshot(
            Request::get("http://api.example/")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.extensions().get::<Hedged>(), Some(&Hedged));
    assert_eq!(up.calls().len(), 2);

    // The retry's budget is empty: nothing is hedged.
    let up = Upstream::new(5);
    let empty = Budget {
        percent: 0.0,
        min_per_sec: 0,
        window: Duration::from_secs(10),
    };
    let client = ServiceBuilder::new()
        .layer(stack(empty))
        .service(up.service());
    up.slow_next.store(true, Ordering::SeqCst);
    let res = client
        .oneshot(
            Request::get("http://api.example/")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.extensions().get::<Hedged>(), None);
    assert_eq!(up.calls().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn each_copy_in_the_client_stack_is_its_own_client_span() {
    use opentelemetry::trace::SpanKind;

    let (exporter, _guard) = collect_spans();
    let global = support::global_spans();

    let up = Upstream::new(5);
    let client = ServiceBuilder::new()
        .layer(stack(Budget::default()))
        .service(up.service());
    up.slow_next.store(true, Ordering::SeqCst);
    let parent = tracing::info_span!("caller");
    let req = Request::get("http://api.example/")
        .body(Full::default())
        .unwrap();
    let res = tracing::Instrument::instrument(client.oneshot(req), parent.clone())
        .await
        .unwrap();
    assert_eq!(res.extensions().get::<Hedged>(), Some(&Hedged));
    res.into_body().collect().await.unwrap();
    drop(parent);

    let spans = exporter.get_finished_spans().unwrap();
    let caller = spans.iter().find(|s| s.name == "caller").expect("caller");
    // The preset's spans go to the global provider.
    let spans = support::spans_in(&global, caller.span_context.trace_id());
    let mut copies: Vec<_> = spans
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .collect();
    copies.sort_by_key(|s| s.start_time);
    assert_eq!(copies.len(), 2, "one client span per copy");
    let resend: Vec<_> = copies
        .iter()
        .map(|s| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "http.request.resend_count")
                .map(|kv| kv.value.to_string())
        })
        .collect();
    assert_eq!(resend, [None, Some("1".to_owned())]);
    let sent: Vec<_> = up.calls().into_iter().map(|c| c.traceparent).collect();
    for (span, sent) in copies.iter().zip(sent) {
        assert_eq!(span.parent_span_id, caller.span_context.span_id());
        let own = format!(
            "00-{}-{}-01",
            span.span_context.trace_id(),
            span.span_context.span_id()
        );
        assert_eq!(sent, Some(own), "each copy carries its own context");
    }
}
