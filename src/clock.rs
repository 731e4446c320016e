//! Time for every decision, behind one trait so tests can drive it.
//!
//! ```
//! use std::time::Duration;
//! use battlement::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new(Duration::from_secs(1_000));
//! let before = clock.now();
//! clock.advance(Duration::from_millis(250));
//! assert_eq!(clock.now() - before, Duration::from_millis(250));
//! ```
//!
//! Every "now" in battlement comes from a [`Clock`] (SPEC C-4). Time is a
//! [`Duration`] since the UNIX epoch, so decisions made by several processes
//! against one shared store compare like with like. [`SystemClock`] anchors
//! a monotonic clock to the wall clock once, so it never runs backwards
//! within a process; it reads the CPU's time-stamp counter through `quanta`
//! (a few ns, against ~20 ns for `clock_gettime`), as governor does.
//! [`ManualClock`] only moves when a test moves it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time, as a duration since the UNIX epoch.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Duration;

    /// The current time in whole microseconds since the UNIX epoch.
    fn now_micros(&self) -> u64 {
        u64::try_from(self.now().as_micros()).unwrap_or(u64::MAX)
    }

    /// Waits `duration` on this clock: a timer on the runtime, except for
    /// a [`ManualClock`], which moves forward at once (so retry back-offs
    /// run in tests without sleeping).
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// A clock shared between layers and stores.
pub type SharedClock = Arc<dyn Clock>;

/// The process clock: wall time at start plus monotonic time since.
#[derive(Debug, Clone)]
pub struct SystemClock {
    /// The wall clock at start, in whole microseconds (so that
    /// `now().as_micros() == now_micros()`).
    wall_micros: u64,
    ticks: quanta::Clock,
    start: u64,
}

impl SystemClock {
    /// Reads the wall clock once and follows the monotonic clock from there.
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let wall_micros = u64::try_from(wall.as_micros()).unwrap_or(u64::MAX);
        let ticks = quanta::Clock::new();
        Self {
            wall_micros,
            start: ticks.raw(),
            ticks,
        }
    }

    /// Nanoseconds since this clock was made: raw ticks scaled once, with
    /// no `Duration` arithmetic on the hot path.
    fn elapsed_nanos(&self) -> u64 {
        self.ticks.delta_as_nanos(self.start, self.ticks.raw())
    }

    /// The system clock as a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(Self::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.wall_micros) + Duration::from_nanos(self.elapsed_nanos())
    }

    fn now_micros(&self) -> u64 {
        self.wall_micros
            .saturating_add(self.elapsed_nanos() / 1_000)
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `start` since the UNIX epoch.
    pub fn new(start: Duration) -> Self {
        let clock = Self::default();
        clock.set(start);
        clock
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = saturating_nanos(by);
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the clock to `to` since the UNIX epoch.
    pub fn set(&self, to: Duration) {
        self.nanos.store(saturating_nanos(to), Ordering::SeqCst);
    }

    /// This clock as a [`SharedClock`] (sharing the same time).
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        self.advance(duration);
        Box::pin(std::future::ready(()))
    }
}

fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_wall_time_and_never_goes_back() {
        let clock = SystemClock::new();
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let a = clock.now();
        let b = clock.now();
        assert!(b >= a);
        assert!(a.abs_diff(wall) < Duration::from_secs(1));
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::new(Duration::from_secs(5));
        let other = clock.clone();
        other.advance(Duration::from_millis(1));
        assert_eq!(clock.now(), Duration::from_millis(5_001));
        clock.set(Duration::ZERO);
        assert_eq!(other.shared().now(), Duration::ZERO);
    }
}
