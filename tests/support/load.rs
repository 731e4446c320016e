//! Steady concurrent HTTP load on the server stack's routes while a test
//! breaks its store: `GET /hello` (rate limited) and `POST /orders` (an
//! `Idempotency-Key` each; two workers send the same keys in the same
//! order, one to each target, so each key races across them). Every
//! request is kept as a [`Sample`], for the test to check and report.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Hello,
    Orders,
}

/// One request as the driver saw it.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was sent, from the start of the load.
    pub sent: Duration,
    pub latency: Duration,
    pub route: Route,
    /// 0: no response (a transport error).
    pub status: u16,
    /// It carries `RateLimit` headers: the store decided it.
    pub decided: bool,
    /// `Idempotent-Replayed`: a stored response.
    pub replayed: bool,
    /// The order's key.
    pub key: Option<u64>,
}

impl Sample {
    pub fn answered(&self) -> Duration {
        self.sent + self.latency
    }
}

pub struct Load {
    epoch: Instant,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// `workers` connections over `targets` (`http://host:port`): the
    /// first two post orders, the others get `/hello`. Each waits
    /// `pause` between its requests.
    pub fn start(targets: &[String], workers: usize, pause: Duration) -> Self {
        // Each load walks keys of its own.
        static LOADS: AtomicU64 = AtomicU64::new(0);
        let tag = LOADS.fetch_add(1, Ordering::SeqCst) << 32;
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers.max(3))
            .map(|i| {
                let target = targets[i % targets.len()].clone();
                let route = if i < 2 { Route::Orders } else { Route::Hello };
                tokio::spawn(worker(target, route, tag, epoch, stop.clone(), pause))
            })
            .collect();
        Self {
            epoch,
            stop,
            workers,
        }
    }

    /// Time since the load started.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Stops every worker and returns every request, in sending order.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let mut samples = Vec::new();
        for worker in self.workers {
            samples.extend(worker.await.expect("a load worker"));
        }
        samples.sort_by_key(|s| s.sent);
        samples
    }
}

async fn worker(
    target: String,
    route: Route,
    tag: u64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> Vec<Sample> {
    // One keep-alive connection at a time (the pool keeps it).
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build_http::<Full<Bytes>>();
    let mut samples = Vec::new();
    let mut n = tag;
    while !stop.load(Ordering::SeqCst) {
        let (req, key) = match route {
            Route::Hello => (
                http::Request::get(format!("{target}/hello")).body(Full::new(Bytes::new())),
                None,
            ),
            Route::Orders => {
                n += 1;
                let req = http::Request::post(format!("{target}/orders"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("\"order-{n}\""))
                    .body(Full::new(Bytes::from(format!("{{\"n\":{n}}}"))));
                (req, Some(n))
            }
        };
        let req = req.expect("a request");
        let started = Instant::now();
        let res = async {
            let res = client.request(req).await?;
            let (parts, body) = res.into_parts();
            body.collect().await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(parts)
        }
        .await;
        let latency = started.elapsed();
        let (status, decided, replayed) = match &res {
            Ok(parts) => (
                parts.status.as_u16(),
                parts.headers.contains_key("ratelimit"),
                parts.headers.contains_key("idempotent-replayed"),
            ),
            Err(_) => (0, false, false),
        };
        samples.push(Sample {
            sent: started - epoch,
            latency,
            route,
            status,
            decided,
            replayed,
            key,
        });
        if res.is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(pause).await;
    }
    samples
}

/// What a window of samples shows.
#[derive(Debug)]
pub struct Summary {
    pub requests: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Status counts of `/hello` and of `/orders`.
    pub hello: BTreeMap<u16, usize>,
    pub orders: BTreeMap<u16, usize>,
    /// `/hello` answered without a store decision.
    pub undecided: usize,
}

impl Summary {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Self {
        let samples: Vec<&Sample> = samples.into_iter().collect();
        let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
        latencies.sort();
        let pct = |p: f64| {
            let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
            latencies
                .get(rank.clamp(1, latencies.len().max(1)) - 1)
                .copied()
                .unwrap_or_default()
        };
        let (mut hello, mut orders) = (BTreeMap::new(), BTreeMap::new());
        for s in &samples {
            let counts = if s.route == Route::Hello {
                &mut hello
            } else {
                &mut orders
            };
            *counts.entry(s.status).or_default() += 1;
        }
        Self {
            requests: samples.len(),
            p50: pct(50.0),
            p99: pct(99.0),
            max: latencies.last().copied().unwrap_or_default(),
            hello,
            orders,
            undecided: samples
                .iter()
                .filter(|s| s.route == Route::Hello && s.status != 0 && !s.decided)
                .count(),
        }
    }

    /// A table row: `| name | requests | undecided | p50 | p99 | max |
    /// statuses |`.
    pub fn row(&self, name: &str) -> String {
        let show = |m: &BTreeMap<u16, usize>| {
            m.iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        format!(
            "| {name:<18} | {:>6} | {:>9} | {:>6} | {:>7} | {:>7} | {} / {} |",
            self.requests,
            self.undecided,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            show(&self.hello),
            show(&self.orders)
        )
    }
}

/// The header of [`Summary::row`]'s table.
pub const TABLE_HEADER: &str = "| phase              | reqs   | undecided | p50 ms | p99 ms  | max ms  | statuses (hello / orders) |\n|---|---|---|---|---|---|---|";

/// Order keys that ran twice: two fresh (not replayed) 201s.
pub fn executed_twice(samples: &[Sample]) -> Vec<u64> {
    let mut fresh: HashMap<u64, usize> = HashMap::new();
    for s in samples {
        if let (Some(key), 201, false) = (s.key, s.status, s.replayed) {
            *fresh.entry(key).or_default() += 1;
        }
    }
    let mut twice: Vec<u64> = fresh
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect();
    twice.sort();
    twice
}

/// From `from`, how long until the `/hello` answers are store decisions
/// again: the answer of the first one sent between `from` and `to` that
/// starts a run of 20 decided ones (an isolated timeout on a loaded
/// machine afterwards does not count); `to - from` if none does.
pub fn decisions_resumed(samples: &[Sample], from: Duration, to: Duration) -> Duration {
    let hello: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.route == Route::Hello && s.sent >= from && s.sent < to)
        .collect();
    hello
        .windows(20)
        .find(|run| run.iter().all(|s| s.decided))
        .map_or(to - from, |run| run[0].answered().saturating_sub(from))
}

/// Answers beyond a fail-open rate limit and a fail-closed idempotency
/// layer: `/hello` other than 200, `/orders` other than 201, 409 (its twin
/// in flight) or 503 (the claim failed), transport errors.
pub fn beyond_policy(samples: &[Sample]) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| match s.route {
            Route::Hello => s.status != 200,
            Route::Orders => ![201, 409, 503].contains(&s.status),
        })
        .collect()
}

/// Answers given without a store decision (no `RateLimit` headers).
pub fn undecided(samples: &[Sample]) -> u64 {
    samples
        .iter()
        .filter(|s| s.status != 0 && !s.decided)
        .count() as u64
}
