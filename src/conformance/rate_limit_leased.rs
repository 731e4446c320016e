//! Cases every `RateLimitStore` must pass in the leased mode: several
//! instances (separate handles on one shared state, each with its own
//! [`Leased`]) on one key, in real time.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http::header::RETRY_AFTER;
use http::{Method, Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt, service_fn};

use super::Harness;
use crate::rate_limit::{
    Charge, LeaseSettings, Leased, Policy, Quota, RateLimitLayer, RateLimitStore, SyncMode,
};

fn quota(count: u64, period: Duration, burst: u64) -> Quota {
    Quota::new(count, period)
        .and_then(|q| q.with_burst(burst))
        .expect("valid quota")
}

/// Eight instances hammering one key at ten times its rate for 3 s admit
/// no more than the quota (from the start, and over every window of one
/// period, allowing a lease's life as the bound says) and at least 90 %
/// of it.
pub async fn eight_instances_hammering_one_key_admit_the_quota<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    // Real time on a shared machine: one backend's hammer at a time, so
    // that the others' do not take its CPU.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    const INSTANCES: u32 = 8;
    const RUN: Duration = Duration::from_secs(3);
    let (rate, burst) = (100u64, 100u64);
    let q = quota(rate, Duration::from_secs(1), burst);
    let settings = LeaseSettings::default();
    let first = h.store().await;
    let mut instances = Vec::new();
    for _ in 1..INSTANCES {
        instances.push(Leased::new(h.another_handle(&first).await, settings));
    }
    instances.push(Leased::new(first, settings));
    let start = Instant::now();
    // Ten times the rate over all instances.
    let every = Duration::from_secs(1) * INSTANCES / (10 * rate as u32);
    let tasks: Vec<_> = instances
        .into_iter()
        .map(|instance| {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                let mut admitted = Vec::new();
                while start.elapsed() < RUN {
                    tick.tick().await;
                    let arrived = Instant::now();
                    let decision = instance.decide(Charge::new("p", "hot", &q, 1)).await;
                    if decision.expect("store answers").is_allowed() {
                        admitted.push(arrived);
                    }
                }
                admitted
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for task in tasks {
        admitted.extend(task.await.expect("instance task"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    admitted.sort();
    let total = admitted.len() as f64;
    let quota_total = burst as f64 + rate as f64 * elapsed;
    assert!(total <= quota_total, "admitted {total} > {quota_total:.0}");
    assert!(
        total >= 0.9 * (burst as f64 + rate as f64 * RUN.as_secs_f64()),
        "admitted {total}, under 90 % of {quota_total:.0}"
    );
    // Every window of one period, by arrival: the burst, the period's rate
    // and a lease's life of rate (units taken before the window are spent
    // in it), plus 100 ms of store round trips.
    let allowance = settings.interval() + Duration::from_millis(100);
    let window_bound = burst as f64 + rate as f64 * (1.0 + allowance.as_secs_f64());
    for (i, from) in admitted.iter().enumerate() {
        let within = admitted[i..]
            .iter()
            .take_while(|t| t.duration_since(*from) < Duration::from_secs(1))
            .count();
        assert!(
            within as f64 <= window_bound,
            "{within} admitted within 1 s from #{i}"
        );
    }
}

/// Capacity an instance leased and stopped using is back in the shared
/// state within one lease interval (read by another handle).
pub async fn a_stopped_instance_gives_its_lease_back_within_one_interval<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    // Nothing drains meanwhile: one unit an hour, a burst of 1,000.
    let q = quota(1, Duration::from_secs(3_600), 1_000);
    // A one-second interval: the sweep's margin (an eighth of it) stays
    // far above a loaded machine's scheduling delays.
    let settings = LeaseSettings::default()
        .with_interval(Duration::from_secs(1))
        .expect("a valid interval");
    let store = h.store().await;
    let observer = h.another_handle(&store).await;
    let instance = Leased::new(store, settings);
    // A request a millisecond until the instance holds unspent units (a
    // lease it took may just have been spent: then it takes another).
    let mut spent = 0;
    while spent < 30 || (instance.leased_units() == 0 && spent < 300) {
        let d = instance
            .decide(Charge::new("p", "hot", &q, 1))
            .await
            .expect("answers");
        assert!(d.is_allowed(), "{d:?}");
        spent += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let held = instance.leased_units();
    assert!(
        held > 0,
        "{spent} requests a millisecond apart took no lease"
    );
    let left = observer
        .decide(Charge::new("p", "hot", &q, 0))
        .await
        .expect("answers");
    assert_eq!(
        left.remaining(),
        1_000 - spent - held,
        "leased units are taken from the shared state before they are spent"
    );
    tokio::time::sleep(settings.interval()).await;
    let left = observer
        .decide(Charge::new("p", "hot", &q, 0))
        .await
        .expect("answers");
    assert_eq!(left.remaining(), 1_000 - spent, "the unspent lease is back");
    assert_eq!(instance.leased_units(), 0);
}

/// A denied key is answered in process until its retry-after: no store
/// call (counted on the server where the harness can), then the store
/// decides again and admits.
pub async fn a_denied_key_costs_no_store_call_until_its_retry_after<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    // 5 per 5 s: a retry-after of 1 s, long beside the store calls that
    // count the commands (three `redis-cli` runs on a cluster).
    let q = quota(5, Duration::from_secs(5), 5);
    let instance = Leased::new(h.store().await, LeaseSettings::default());
    for _ in 0..5 {
        let d = instance
            .decide(Charge::new("p", "k", &q, 1))
            .await
            .expect("answers");
        assert!(d.is_allowed(), "{d:?}");
    }
    let denied = instance
        .decide(Charge::new("p", "k", &q, 1))
        .await
        .expect("answers");
    let wait = denied.retry_after().expect("denied with a retry-after");
    let started = Instant::now();
    let before = h.store_calls().await;
    let mut answered = 0;
    while started.elapsed() < wait / 2 {
        let d = instance
            .decide(Charge::new("p", "k", &q, 1))
            .await
            .expect("answers");
        assert!(!d.is_allowed(), "{d:?}");
        assert!(d.retry_after().is_some_and(|r| r <= wait), "{d:?}");
        answered += 1;
    }
    assert!(answered >= 10, "only {answered} decisions");
    let after = h.store_calls().await;
    assert_eq!(before, after, "store calls while the denial was cached");
    tokio::time::sleep(wait).await;
    let d = instance
        .decide(Charge::new("p", "k", &q, 1))
        .await
        .expect("answers");
    assert!(d.is_allowed(), "after the retry-after: {d:?}");
    let last = h.store_calls().await;
    assert!(
        before.is_none() || last > after,
        "the store decided again: {after:?} -> {last:?}"
    );
}

/// Through the layer, a request of cost 0 (a peek: here a GET) or of a
/// cost above the burst (here a PUT) is decided by the store as in the
/// exact mode, even while the key's denial is cached: the GET passes after
/// the POSTs were denied, and the PUT, which can never pass, is denied
/// with no retry-after.
pub async fn peeks_and_impossible_costs_skip_a_cached_denial<H: Harness>(h: H)
where
    H::Store: RateLimitStore,
{
    let q = quota(2, Duration::from_secs(3_600), 2);
    let policy = Policy::new("p", q)
        .expect("a valid name")
        .mode(SyncMode::Leased)
        .cost(|head| match *head.method {
            Method::GET => 0,
            Method::PUT => 3,
            _ => 1,
        });
    let service = ServiceBuilder::new()
        .layer(RateLimitLayer::new(h.store().await).policy(policy))
        .service(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let send = |method: Method| {
        let service = service.clone();
        async move {
            let request = Request::builder().method(method).body(String::new());
            service
                .oneshot(request.expect("a valid request"))
                .await
                .expect("infallible")
        }
    };
    for _ in 0..2 {
        assert_eq!(send(Method::POST).await.status(), StatusCode::OK);
    }
    let denied = send(Method::POST).await;
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(denied.headers().contains_key(RETRY_AFTER), "{denied:?}");
    let peek = send(Method::GET).await;
    assert_eq!(peek.status(), StatusCode::OK, "a peek costs nothing");
    let never = send(Method::PUT).await;
    assert_eq!(never.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        !never.headers().contains_key(RETRY_AFTER),
        "a cost above the burst never passes: {never:?}"
    );
}
