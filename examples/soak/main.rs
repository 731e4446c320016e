//! The load driver of `scripts/soak.sh`: steady concurrent load on two
//! instances of the axum example while the script freezes, kills and
//! restarts their stores, then a table per phase and a verdict.
//!
//! Run it through the script (`flock /tmp/cargo.lock scripts/soak.sh`),
//! which starts Redis, etcd and the two instances and sets:
//! - `SOAK_TARGETS`: the two base URLs, comma separated;
//! - `SOAK_PIDS`: their process ids (RSS is sampled every 250 ms);
//! - `SOAK_PHASES`: `name:seconds:kind,...`, kind one of `warmup`,
//!   `steady`, `outage` (the store is down), `recovery` (it is back),
//!   `other` (a fault that must not touch decisions: etcd), `config` (a
//!   quota change through etcd must show within 1 s);
//! - `SOAK_FAULT`: a command run with the phase name as its argument at
//!   the start of each phase (it returns once the fault is in place);
//! - `SOAK_POLICY`: the rate limiter's `fail_open` or `fail_closed`;
//! - `SOAK_TIMEOUT_MS`: the store's per-call timeout;
//! - `SOAK_CONNECTIONS` (default 16), `SOAK_CONFIG_QUOTA` (the count the
//!   `config` phase writes), `SOAK_RUN` (a tag for idempotency keys).
//!
//! Two connections post orders (one to each instance, the same keys in
//! the same order, so each key races across the instances); the others
//! `GET /hello`, half on each instance. Exits 1 when a check fails.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Warmup,
    Steady,
    Outage,
    Recovery,
    Other,
    Config,
}

struct Phase {
    name: String,
    secs: u64,
    kind: Kind,
    /// When its fault was in place, from the start of the run.
    start: Duration,
    end: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Hello,
    Orders,
}

/// One request as the driver saw it.
#[derive(Clone, Copy)]
struct Sample {
    start: Duration,
    latency: Duration,
    route: Route,
    /// 0: transport error.
    status: u16,
    /// The response carries `RateLimit` headers: the store decided.
    decided: bool,
    /// Its `RateLimit-Policy` has the quota the `config` phase writes.
    configured: bool,
    replayed: bool,
}

struct Settings {
    targets: Vec<String>,
    pids: Vec<u32>,
    phases: Vec<Phase>,
    fault: String,
    fail_open: bool,
    timeout: Duration,
    connections: usize,
    config_quota: String,
    run: String,
}

fn settings() -> Result<Settings, Error> {
    let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
    let targets: Vec<String> = var("SOAK_TARGETS")?
        .split(',')
        .map(|t| t.trim_end_matches('/').to_owned())
        .collect();
    let pids = var("SOAK_PIDS")?
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let phases = var("SOAK_PHASES")?
        .split(',')
        .map(|p| {
            let parts: Vec<&str> = p.split(':').collect();
            let [name, secs, kind] = parts[..] else {
                return Err(format!("phase {p:?}: name:seconds:kind"));
            };
            let kind = match kind {
                "warmup" => Kind::Warmup,
                "steady" => Kind::Steady,
                "outage" => Kind::Outage,
                "recovery" => Kind::Recovery,
                "other" => Kind::Other,
                "config" => Kind::Config,
                _ => return Err(format!("phase {p:?}: unknown kind")),
            };
            let secs = secs.parse().map_err(|e| format!("phase {p:?}: {e}"))?;
            Ok(Phase {
                name: name.to_owned(),
                secs,
                kind,
                start: Duration::ZERO,
                end: Duration::ZERO,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Settings {
        targets,
        pids,
        phases,
        fault: var("SOAK_FAULT")?,
        fail_open: var("SOAK_POLICY")? == "fail_open",
        timeout: Duration::from_millis(var("SOAK_TIMEOUT_MS")?.parse()?),
        connections: std::env::var("SOAK_CONNECTIONS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(16),
        config_quota: std::env::var("SOAK_CONFIG_QUOTA").unwrap_or_default(),
        run: std::env::var("SOAK_RUN").unwrap_or_else(|_| "run".into()),
    })
}

/// One keep-alive HTTP/1.1 connection, opened again when it fails.
struct Conn {
    addr: String,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Conn {
    async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Bytes>, Error> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(&self.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let Some(sender) = self.sender.as_mut() else {
            return Err("no connection".into());
        };
        let result = async {
            sender.ready().await?;
            let res = sender.send_request(req).await?;
            let (parts, body) = res.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, Error>(http::Response::from_parts(parts, body))
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// Sends requests until `stop`; every one a sample.
async fn worker(
    index: usize,
    settings: Arc<Settings>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    orders: Arc<AtomicUsize>,
) -> Vec<Sample> {
    let target = &settings.targets[index % settings.targets.len()];
    let mut conn = Conn {
        addr: target.trim_start_matches("http://").to_owned(),
        sender: None,
    };
    let route = if index < 2 {
        Route::Orders
    } else {
        Route::Hello
    };
    let quota = format!("q={};", settings.config_quota);
    let mut samples = Vec::with_capacity(1 << 16);
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let req = match route {
            Route::Hello => {
                http::Request::get(format!("{target}/hello")).body(Full::new(Bytes::new()))
            }
            Route::Orders => {
                // Both order workers walk the same keys: each key races.
                let key = format!("\"{}-{n}\"", settings.run);
                n += 1;
                orders.fetch_max(n, Ordering::Relaxed);
                http::Request::post(format!("{target}/orders"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", key)
                    .body(Full::new(Bytes::from(format!("{{\"n\":{n}}}"))))
            }
        };
        let Ok(req) = req else { break };
        let started = Instant::now();
        let res = conn.send(req).await;
        let latency = started.elapsed();
        let start = started - epoch;
        samples.push(match res {
            Ok(res) => {
                let h = res.headers();
                Sample {
                    start,
                    latency,
                    route,
                    status: res.status().as_u16(),
                    decided: h.contains_key("ratelimit"),
                    configured: h
                        .get("ratelimit-policy")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.contains(&quota)),
                    replayed: h.contains_key("idempotent-replayed"),
                }
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Sample {
                    start,
                    latency,
                    route,
                    status: 0,
                    decided: false,
                    configured: false,
                    replayed: false,
                }
            }
        });
    }
    samples
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `battlement_events_total` count of `layer`/`event`, over every
/// instance.
async fn events(settings: &Settings, layer: &str, event: &str) -> Result<u64, Error> {
    let mut total = 0;
    for target in &settings.targets {
        let mut conn = Conn {
            addr: target.trim_start_matches("http://").to_owned(),
            sender: None,
        };
        let req = http::Request::get(format!("{target}/metrics")).body(Full::new(Bytes::new()))?;
        let res = conn.send(req).await?;
        let text = String::from_utf8_lossy(res.body()).into_owned();
        let (layer, event) = (format!("layer=\"{layer}\""), format!("event=\"{event}\""));
        for line in text.lines() {
            if line.starts_with("battlement_events_total{")
                && line.contains(&layer)
                && line.contains(&event)
            {
                let value = line.rsplit(' ').next().unwrap_or("0");
                total += value.parse::<f64>().unwrap_or(0.0) as u64;
            }
        }
    }
    Ok(total)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Prints a check and returns whether it held.
fn check(ok: bool, what: String) -> bool {
    println!("{} {what}", if ok { "PASS" } else { "FAIL" });
    ok
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, Error> {
    let mut settings = settings()?;
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let orders = Arc::new(AtomicUsize::new(0));
    let mut phases = std::mem::take(&mut settings.phases);
    let shared = Arc::new(settings);
    let workers: Vec<_> = (0..shared.connections)
        .map(|i| {
            tokio::spawn(worker(
                i,
                shared.clone(),
                epoch,
                stop.clone(),
                orders.clone(),
            ))
        })
        .collect();
    // RSS of each instance, sampled through the run.
    let rss = tokio::spawn({
        let (pids, stop) = (shared.pids.clone(), stop.clone());
        async move {
            let mut series = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let kib: u64 = pids.iter().filter_map(|&p| rss_kib(p)).sum();
                series.push((epoch.elapsed(), kib));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            series
        }
    });
    for phase in &mut phases {
        let status = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{} {}", shared.fault, phase.name))
            .status()
            .await?;
        if !status.success() {
            stop.store(true, Ordering::Relaxed);
            return Err(format!("fault command for {} failed: {status}", phase.name).into());
        }
        phase.start = epoch.elapsed();
        tokio::time::sleep(Duration::from_secs(phase.secs)).await;
        phase.end = epoch.elapsed();
    }
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await?);
    }
    let rss = rss.await?;
    report(&shared, &phases, &samples, &rss).await
}

/// The documented statuses of each route.
fn documented(route: Route, fail_open: bool) -> &'static [u16] {
    match (route, fail_open) {
        (Route::Hello, true) => &[200, 429],
        (Route::Hello, false) => &[200, 429, 503],
        (Route::Orders, _) => &[201, 409, 429, 503],
    }
}

async fn report(
    settings: &Settings,
    phases: &[Phase],
    samples: &[Sample],
    rss: &[(Duration, u64)],
) -> Result<bool, Error> {
    let mut ok = true;
    let policy = if settings.fail_open {
        "fail-open"
    } else {
        "fail-closed"
    };
    println!(
        "\nrate limit {policy}, store timeout {} ms, {} connections\n",
        settings.timeout.as_millis(),
        settings.connections
    );
    println!(
        "| {:<16} | {:>8} | {:>7} | {:>6} | {:>6} | {:>7} | {:>9} | {:<40} |",
        "phase",
        "requests",
        "rps",
        "p50 ms",
        "p99 ms",
        "max ms",
        "RSS MiB",
        "statuses (hello / orders)"
    );
    println!("|{}|", "-".repeat(128));
    let in_phase = |p: &Phase| {
        let (start, end) = (p.start, p.end);
        samples
            .iter()
            .filter(move |s| s.start >= start && s.start < end)
    };
    let steady_rps = phases
        .iter()
        .filter(|p| p.kind == Kind::Steady)
        .map(|p| in_phase(p).count() as f64 / (p.end - p.start).as_secs_f64())
        .next()
        .unwrap_or(0.0);
    let bound = settings.timeout + Duration::from_millis(10);
    let mut verdicts = Vec::new();
    for phase in phases {
        let mine: Vec<&Sample> = in_phase(phase).collect();
        let secs = (phase.end - phase.start).as_secs_f64();
        let rps = mine.len() as f64 / secs;
        let mut lat: Vec<Duration> = mine.iter().map(|s| s.latency).collect();
        lat.sort();
        let (p50, p99, max) = (
            percentile(&lat, 50.0),
            percentile(&lat, 99.0),
            lat.last().copied().unwrap_or_default(),
        );
        let mut statuses: [BTreeMap<u16, usize>; 2] = Default::default();
        for s in &mine {
            *statuses[usize::from(s.route == Route::Orders)]
                .entry(s.status)
                .or_default() += 1;
        }
        let show = |m: &BTreeMap<u16, usize>| {
            m.iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mem = rss
            .iter()
            .filter(|(t, _)| *t >= phase.start && *t < phase.end)
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0);
        println!(
            "| {:<16} | {:>8} | {:>7.0} | {:>6} | {:>6} | {:>7} | {:>9.1} | {:<40} |",
            phase.name,
            mine.len(),
            rps,
            ms(p50),
            ms(p99),
            ms(max),
            mem as f64 / 1024.0,
            format!("{} / {}", show(&statuses[0]), show(&statuses[1]))
        );
        if phase.kind == Kind::Warmup {
            continue;
        }
        // Every response has a documented status.
        let undocumented: Vec<String> = mine
            .iter()
            .filter(|s| !documented(s.route, settings.fail_open).contains(&s.status))
            .map(|s| {
                format!(
                    "{}{}",
                    if s.route == Route::Hello {
                        "hello:"
                    } else {
                        "orders:"
                    },
                    s.status
                )
            })
            .collect();
        verdicts.push((
            undocumented.is_empty(),
            format!(
                "{}: every status documented (undocumented or transport errors: {})",
                phase.name,
                undocumented.len()
            ),
        ));
        if matches!(
            phase.kind,
            Kind::Outage | Kind::Recovery | Kind::Other | Kind::Config
        ) {
            verdicts.push((
                p99 <= bound,
                format!(
                    "{}: p99 {} ms <= store timeout + 10 ms = {} ms",
                    phase.name,
                    ms(p99),
                    ms(bound)
                ),
            ));
            // Throughput is held to the steady rate while the store that
            // decides (Redis) is down or coming back; an etcd fault only
            // reports it (etcd starting shares the machine's cores).
            let ratio = rps / steady_rps.max(1.0) * 100.0;
            if matches!(phase.kind, Kind::Outage | Kind::Recovery) {
                verdicts.push((
                    ratio >= 90.0,
                    format!("{}: {rps:.0} rps = {ratio:.0} % of the steady {steady_rps:.0} rps (>= 90 %)", phase.name),
                ));
            } else {
                println!(
                    "info {}: {rps:.0} rps = {ratio:.0} % of the steady rate",
                    phase.name
                );
            }
        }
        let hello = mine.iter().filter(|s| s.route == Route::Hello);
        match phase.kind {
            Kind::Outage => {
                // Nothing started after the fault was in place can have
                // been decided by the store.
                let decided = hello.clone().filter(|s| s.decided).count();
                let (open, closed) = (
                    hello
                        .clone()
                        .filter(|s| s.status == 200 && !s.decided)
                        .count(),
                    hello.clone().filter(|s| s.status == 503).count(),
                );
                let total = hello.count();
                let obeyed = if settings.fail_open {
                    open == total
                } else {
                    closed == total
                };
                verdicts.push((
                    obeyed && decided == 0,
                    format!(
                        "{}: {policy} obeyed: {total} /hello, {open} admitted by the fail-open fallback, {closed} x 503, {decided} store-decided",
                        phase.name
                    ),
                ));
            }
            Kind::Recovery | Kind::Other => {
                let last_undecided = hello
                    .clone()
                    .filter(|s| !s.decided)
                    .map(|s| s.start + s.latency)
                    .max();
                let resumed =
                    last_undecided.map_or(Duration::ZERO, |t| t.saturating_sub(phase.start));
                verdicts.push((
                    resumed <= Duration::from_secs(1),
                    format!(
                        "{}: decisions resumed within {} ms of recovery (<= 1000)",
                        phase.name,
                        ms(resumed)
                    ),
                ));
            }
            Kind::Config => {
                let last_old = hello
                    .clone()
                    .filter(|s| !s.configured)
                    .map(|s| s.start + s.latency)
                    .max();
                let applied = last_old.map_or(Duration::ZERO, |t| t.saturating_sub(phase.start));
                let seen = hello.filter(|s| s.configured).count();
                verdicts.push((
                    seen > 0 && applied <= Duration::from_secs(1),
                    format!("{}: the quota written to etcd applied on both instances within {} ms (<= 1000)", phase.name, ms(applied)),
                ));
            }
            _ => {}
        }
    }
    println!();
    for (held, what) in verdicts {
        ok &= check(held, what);
    }
    // The failure policy, counted exactly: the rate limiter adds its
    // headers to every response it decided, so a response without them
    // was let through by fail-open (one `fail_open` event each; on /orders
    // the idempotency layer, fail-closed, may then answer 503), or turned
    // away by fail-closed (a 503, one `fail_closed` event each).
    let undecided = |s: &&Sample| s.status != 0 && !s.decided;
    let all_open = samples
        .iter()
        .filter(undecided)
        .filter(|s| s.status != 503 || s.route == Route::Orders)
        .count() as u64;
    let all_closed = samples
        .iter()
        .filter(undecided)
        .filter(|s| s.status == 503)
        .count() as u64;
    let admitted = samples
        .iter()
        .filter(undecided)
        .filter(|s| s.status != 503)
        .count() as u64;
    let measured = samples
        .iter()
        .filter(|s| phases.first().is_none_or(|w| s.start >= w.end));
    let open = measured.clone().filter(undecided).count() as u64;
    let closed = measured
        .filter(undecided)
        .filter(|s| s.status == 503)
        .count() as u64;
    let (m_open, m_closed) = (
        events(settings, "rate_limit", "fail_open").await?,
        events(settings, "rate_limit", "fail_closed").await?,
    );
    if settings.fail_open {
        ok &= check(
            m_open == all_open && m_closed == 0,
            format!(
                "fail-open counted: {all_open} responses admitted without a decision ({open} after warm-up), {m_open} fail_open events, {m_closed} fail_closed events"
            ),
        );
    } else {
        ok &= check(
            m_closed == all_closed && m_open == 0 && admitted == 0,
            format!(
                "fail-closed counted: {all_closed} x 503 without a decision ({closed} after warm-up), {m_closed} fail_closed events, {m_open} fail_open events, {admitted} admitted without a decision"
            ),
        );
    }
    // Memory: the peak after warm-up stays within 1.5 x (plus 16 MiB) of
    // the steady phase's.
    let steady = phases.iter().find(|p| p.kind == Kind::Steady);
    let base = steady
        .and_then(|p| {
            rss.iter()
                .filter(|(t, _)| *t >= p.start && *t < p.end)
                .map(|(_, k)| *k)
                .max()
        })
        .unwrap_or(0);
    let peak = rss.iter().map(|(_, k)| *k).max().unwrap_or(0);
    let last = rss.last().map_or(0, |(_, k)| *k);
    ok &= check(
        base > 0 && peak <= base + base / 2 + 16 * 1024,
        format!(
            "memory bounded: RSS of both instances {:.1} MiB steady, {:.1} MiB peak, {:.1} MiB at the end (peak <= 1.5 x steady + 16 MiB)",
            base as f64 / 1024.0,
            peak as f64 / 1024.0,
            last as f64 / 1024.0
        ),
    );
    let hello: Vec<&Sample> = samples.iter().filter(|s| s.route == Route::Hello).collect();
    let orders: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.route == Route::Orders)
        .collect();
    println!(
        "\n{} requests ({} /hello, {} /orders: {} created, {} replayed)",
        samples.len(),
        hello.len(),
        orders.len(),
        orders
            .iter()
            .filter(|s| s.status == 201 && !s.replayed)
            .count(),
        orders
            .iter()
            .filter(|s| s.status == 201 && s.replayed)
            .count(),
    );
    Ok(ok)
}
