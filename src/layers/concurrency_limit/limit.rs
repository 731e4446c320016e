//! The shared limit: an atomic in-flight counter on the hot path, and the
//! gradient controller fed with latency samples under a small mutex.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::config::{ConcurrencyLimitConfig, GradientConfig, LimitConfig};
use super::error::Overloaded;
use super::priority::Priority;
use crate::clock::SharedClock;
use crate::events::{ConcurrencyLimitEvent, Events};

/// A limit shared by every service a layer makes.
pub(crate) struct Limiter {
    pub(crate) name: Arc<str>,
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    normal_share: f64,
    batch_share: f64,
    retry_after: Duration,
    gradient: Option<Gradient>,
    clock: SharedClock,
    events: Events,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.name)
            .field("in_flight", &self.in_flight())
            .field("limit", &self.limit())
            .field("adaptive", &self.gradient.is_some())
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// A limiter for a validated `config`.
    pub(crate) fn new(config: &ConcurrencyLimitConfig, clock: SharedClock, events: Events) -> Self {
        let now = clock.now();
        let (limit, gradient) = match &config.limit {
            LimitConfig::Fixed(n) => (*n as usize, None),
            LimitConfig::Adaptive(g) => (g.min_limit as usize, Some(Gradient::new(g.clone(), now))),
        };
        Self {
            name: config.name.as_str().into(),
            in_flight: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            normal_share: config.normal_share,
            batch_share: config.batch_share,
            retry_after: config.retry_after,
            gradient,
            clock,
            events,
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// How many requests of `priority` may be in flight under `limit`:
    /// admitted while `in_flight < share × limit`.
    fn threshold(&self, limit: usize, priority: Priority) -> usize {
        let share = match priority {
            Priority::Critical => return limit,
            Priority::Normal => self.normal_share,
            Priority::Batch => self.batch_share,
        };
        ((limit as f64 * share).ceil() as usize).min(limit)
    }

    /// Takes a slot for a request of `priority`, or says why not.
    pub(crate) fn acquire(self: &Arc<Self>, priority: Priority) -> Result<Permit, Overloaded> {
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            let limit = self.limit();
            let threshold = self.threshold(limit, priority);
            if current >= threshold {
                self.events
                    .report(shed_event(priority), Some(&self.name), || {
                        Some(format!("{current} in flight, limit {limit}"))
                    });
                return Err(Overloaded::new(
                    self.name.clone(),
                    priority,
                    limit,
                    self.retry_after,
                ));
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        let start = if self.gradient.is_some() {
            self.clock.now()
        } else {
            Duration::ZERO
        };
        Ok(Permit {
            limiter: self.clone(),
            start,
            in_flight: current + 1,
        })
    }

    /// Feeds the latency of a request that started at `start` with
    /// `in_flight` requests in flight (itself included).
    fn record(&self, start: Duration, in_flight: usize) {
        let Some(gradient) = &self.gradient else {
            return;
        };
        let now = self.clock.now();
        let latency = now.saturating_sub(start);
        let mut state = gradient.lock();
        if let Some(change) = state.record(&gradient.config, now, start, latency, in_flight) {
            self.limit.store(change.limit, Ordering::Release);
            let (old, new) = (change.old, change.limit);
            self.events.report(change.event, Some(&self.name), || {
                Some(format!("limit {old} -> {new}"))
            });
        }
    }
}

fn shed_event(priority: Priority) -> ConcurrencyLimitEvent {
    match priority {
        Priority::Critical => ConcurrencyLimitEvent::ShedCritical,
        Priority::Normal => ConcurrencyLimitEvent::ShedNormal,
        Priority::Batch => ConcurrencyLimitEvent::ShedBatch,
    }
}

/// A slot taken by one request: given back when dropped.
pub(crate) struct Permit {
    limiter: Arc<Limiter>,
    start: Duration,
    in_flight: usize,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("limiter", &self.limiter.name)
            .finish_non_exhaustive()
    }
}

impl Permit {
    /// Records the request's latency (its response head arrived); the slot
    /// stays taken until the permit is dropped.
    pub(crate) fn record_latency(&self) {
        self.limiter.record(self.start, self.in_flight);
    }
}

/// A request's slot in the concurrency limit, in its extensions (axum:
/// `Extension<Slot>`): the slot is given back when the response body ends
/// *and* every copy of this handle is dropped. Work that a request
/// detaches from its client (the idempotency layer's handler, a task a
/// handler spawns to finish its job) keeps a copy, so the limit still
/// bounds what runs after the client went away or the deadline answered.
#[derive(Debug, Clone)]
pub struct Slot(Arc<Permit>);

impl Slot {
    pub(crate) fn new(permit: Permit) -> Self {
        Self(Arc::new(permit))
    }

    /// Records the request's latency (its response head arrived).
    pub(crate) fn record_latency(&self) {
        self.0.record_latency();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The adaptive part: configuration and the state behind a mutex.
struct Gradient {
    config: GradientConfig,
    state: Mutex<GradientState>,
}

impl Gradient {
    fn new(config: GradientConfig, now: Duration) -> Self {
        let state = GradientState {
            estimate: f64::from(config.initial_limit),
            window_start: now,
            samples: Vec::with_capacity(MAX_SAMPLES),
            max_in_flight: 0,
            min_rtt: None,
            // The first thing a new limit does is measure the minimum
            // latency, at the minimum limit.
            probe: Some(Probe {
                started: now,
                restore: f64::from(config.initial_limit),
            }),
            next_probe: now,
            windows_at_min: 0,
        };
        Self {
            config,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GradientState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// At most this many samples are kept per window; later ones are dropped.
const MAX_SAMPLES: usize = 4096;

/// After this many consecutive windows at the minimum limit, the minimum
/// latency is measured again at once (it may be stale).
const WINDOWS_AT_MIN_BEFORE_PROBE: u32 = 5;

struct Probe {
    started: Duration,
    restore: f64,
}

struct GradientState {
    /// The limit before rounding down.
    estimate: f64,
    window_start: Duration,
    /// Latencies of the current window (or probe), in microseconds.
    samples: Vec<u64>,
    /// The most requests in flight seen in the window.
    max_in_flight: usize,
    min_rtt: Option<Duration>,
    probe: Option<Probe>,
    next_probe: Duration,
    windows_at_min: u32,
}

struct Change {
    old: usize,
    limit: usize,
    event: ConcurrencyLimitEvent,
}

impl GradientState {
    fn record(
        &mut self,
        config: &GradientConfig,
        now: Duration,
        start: Duration,
        latency: Duration,
        in_flight: usize,
    ) -> Option<Change> {
        let old = self.published(config);
        if let Some(started) = self.probe.as_ref().map(|p| p.started) {
            // Requests admitted before the probe ran at the old limit.
            if start < started {
                return None;
            }
            self.push(latency, in_flight);
            if self.samples.len() < config.min_rtt_samples as usize {
                return None;
            }
            let measured = percentile(&mut self.samples, config.sample_percentile);
            self.min_rtt = Some(measured);
            if let Some(probe) = self.probe.take() {
                self.estimate = probe.restore;
            }
            self.next_probe = now + jittered(config.min_rtt_interval, config.min_rtt_jitter);
            self.windows_at_min = 0;
            self.reset_window(now);
            return Some(Change {
                old,
                limit: self.published(config),
                event: ConcurrencyLimitEvent::MinRttMeasured,
            });
        }
        if now >= self.next_probe {
            self.probe = Some(Probe {
                started: now,
                restore: self.estimate,
            });
            self.reset_window(now);
            return Some(Change {
                old,
                limit: config.min_limit as usize,
                event: ConcurrencyLimitEvent::MinRttProbe,
            });
        }
        self.push(latency, in_flight);
        if now.saturating_sub(self.window_start) < config.sample_window {
            return None;
        }
        let sample_rtt = percentile(&mut self.samples, config.sample_percentile);
        let app_limited = (self.max_in_flight as f64) < self.estimate / 2.0;
        self.reset_window(now);
        let min_rtt = match self.min_rtt {
            // A window faster than the minimum is the new minimum.
            Some(m) if m <= sample_rtt => m,
            _ => {
                self.min_rtt = Some(sample_rtt);
                sample_rtt
            }
        };
        if sample_rtt.is_zero() {
            return None;
        }
        let buffered = min_rtt.as_secs_f64() * (1.0 + config.min_rtt_buffer);
        let gradient = (buffered / sample_rtt.as_secs_f64()).clamp(0.5, 2.0);
        let limit = self.estimate * gradient;
        let limit =
            (limit + limit.sqrt()).clamp(f64::from(config.min_limit), f64::from(config.max_limit));
        if app_limited && limit > self.estimate {
            // Too little traffic to show where queueing starts: never grow
            // on it (as in Gradient2), but still fall when latency rises.
            return None;
        }
        self.estimate = limit;
        let new = self.published(config);
        if new == config.min_limit as usize && old == new {
            self.windows_at_min += 1;
            if self.windows_at_min >= WINDOWS_AT_MIN_BEFORE_PROBE {
                self.next_probe = now;
            }
        } else {
            self.windows_at_min = 0;
        }
        (new != old).then_some(Change {
            old,
            limit: new,
            event: if new > old {
                ConcurrencyLimitEvent::LimitIncreased
            } else {
                ConcurrencyLimitEvent::LimitDecreased
            },
        })
    }

    /// The limit in force: the minimum while probing.
    fn published(&self, config: &GradientConfig) -> usize {
        if self.probe.is_some() {
            config.min_limit as usize
        } else {
            self.estimate as usize
        }
    }

    fn push(&mut self, latency: Duration, in_flight: usize) {
        self.max_in_flight = self.max_in_flight.max(in_flight);
        if self.samples.len() < MAX_SAMPLES {
            self.samples
                .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        }
    }

    fn reset_window(&mut self, now: Duration) {
        self.samples.clear();
        self.max_in_flight = 0;
        self.window_start = now;
    }
}

/// The `pct` percentile (nearest rank) of `samples` (not empty).
fn percentile(samples: &mut [u64], pct: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((samples.len() as f64 * pct / 100.0).ceil() as usize).clamp(1, samples.len());
    let (_, value, _) = samples.select_nth_unstable(rank - 1);
    Duration::from_micros(*value)
}

fn jittered(interval: Duration, jitter: f64) -> Duration {
    interval.mul_f64(1.0 + jitter * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GradientConfig {
        GradientConfig {
            initial_limit: 20,
            min_limit: 2,
            max_limit: 500,
            sample_window: Duration::from_millis(100),
            min_rtt_samples: 4,
            min_rtt_jitter: 0.0,
            ..GradientConfig::default()
        }
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let mut s = vec![5, 1, 4, 2, 3];
        assert_eq!(percentile(&mut s, 50.0), Duration::from_micros(3));
        assert_eq!(percentile(&mut s, 100.0), Duration::from_micros(5));
        assert_eq!(percentile(&mut s, 1.0), Duration::from_micros(1));
    }

    #[test]
    fn probe_then_gradient() {
        let c = config();
        let ms = Duration::from_millis;
        let mut s = Gradient::new(c.clone(), Duration::ZERO)
            .state
            .into_inner()
            .unwrap();
        assert_eq!(s.published(&c), 2);
        for i in 0..3 {
            assert!(s.record(&c, ms(10 + i), ms(i), ms(10), 2).is_none());
        }
        let change = s.record(&c, ms(13), ms(3), ms(10), 2).unwrap();
        assert_eq!(
            (change.event, change.limit),
            (ConcurrencyLimitEvent::MinRttMeasured, 20)
        );
        assert_eq!(s.min_rtt, Some(ms(10)));
        // Latency doubles at full concurrency: the limit falls.
        s.record(&c, ms(50), ms(30), ms(20), 20);
        let change = s.record(&c, ms(120), ms(100), ms(20), 20).unwrap();
        assert_eq!(change.event, ConcurrencyLimitEvent::LimitDecreased);
        // 20 × 12.5/20 = 12.5, + sqrt(12.5) = 16.04.
        assert_eq!(change.limit, 16);
    }
}
