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
//! Every "now" in battlement comes from a [`Clock`]. Time is a
//! [`Duration`] since the UNIX epoch, so decisions made by several processes
//! against one shared store compare like with like. [`SystemClock`] follows
//! a monotonic clock anchored to the wall clock, and keeps the anchor on the
//! wall clock (NTP corrections are followed, backward ones slewed); it reads
//! the CPU's time-stamp counter through `quanta` (a few ns, against ~20 ns
//! for `clock_gettime`), as governor does.
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

/// The process clock: the monotonic clock, anchored to the wall clock and
/// kept on it.
///
/// Every [`RESYNC`] of monotonic time, one reader compares it with the wall
/// clock again (a few tens of ns, once), so NTP corrections and the
/// monotonic clock's own rate error reach every instance that compares
/// times through a shared store. A wall clock ahead is followed at once; a
/// wall clock behind is caught up at most [`RESYNC`] / 10 per resync (the
/// clock runs at 90 % of real time until it is back, as NTP slews), so it
/// never jumps back by more than that and stays monotonic for anything
/// that compares times further apart. Clones share one anchor.
#[derive(Debug, Clone)]
pub struct SystemClock {
    anchor: Arc<Anchor>,
}

/// How often the clock is compared with the wall clock again.
pub const RESYNC: Duration = Duration::from_millis(10);

struct Anchor {
    /// Wall time when the monotonic clock read `start`, in whole
    /// microseconds (so that `now().as_micros() == now_micros()`), as last
    /// corrected.
    wall_micros: AtomicU64,
    /// Monotonic nanoseconds (since `start`) at which to compare again.
    next_resync: AtomicU64,
    ticks: quanta::Clock,
    start: u64,
    wall: fn() -> Duration,
}

impl fmt::Debug for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Anchor")
            .field("wall_micros", &self.wall_micros)
            .finish_non_exhaustive()
    }
}

fn system_wall() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl SystemClock {
    /// Follows the monotonic clock from the wall clock's current time.
    pub fn new() -> Self {
        Self::with_sources(quanta::Clock::new(), system_wall)
    }

    fn with_sources(ticks: quanta::Clock, wall: fn() -> Duration) -> Self {
        let wall_micros = u64::try_from(wall().as_micros()).unwrap_or(u64::MAX);
        Self {
            anchor: Arc::new(Anchor {
                wall_micros: AtomicU64::new(wall_micros),
                next_resync: AtomicU64::new(saturating_nanos(RESYNC)),
                start: ticks.raw(),
                ticks,
                wall,
            }),
        }
    }

    /// Nanoseconds of monotonic time since the anchor, and the anchor's
    /// wall time in microseconds (corrected first when due).
    fn read(&self) -> (u64, u64) {
        let a = &*self.anchor;
        let elapsed = a.ticks.delta_as_nanos(a.start, a.ticks.raw());
        let due = a.next_resync.load(Ordering::Relaxed);
        if elapsed >= due
            && a.next_resync
                .compare_exchange(
                    due,
                    elapsed + saturating_nanos(RESYNC),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.resync(elapsed);
        }
        (elapsed, a.wall_micros.load(Ordering::Relaxed))
    }

    /// Moves the anchor toward the wall clock: ahead at once, back by at
    /// most a tenth of [`RESYNC`].
    fn resync(&self, elapsed: u64) {
        let a = &*self.anchor;
        let wall = u64::try_from((a.wall)().as_micros()).unwrap_or(u64::MAX);
        let anchor = a.wall_micros.load(Ordering::Relaxed);
        let ours = anchor.saturating_add(elapsed / 1_000);
        let corrected = if wall >= ours {
            anchor + (wall - ours)
        } else {
            let back = (ours - wall).min(saturating_nanos(RESYNC) / 10_000);
            anchor.saturating_sub(back)
        };
        a.wall_micros.store(corrected, Ordering::Relaxed);
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
        let (elapsed, wall_micros) = self.read();
        Duration::from_micros(wall_micros) + Duration::from_nanos(elapsed)
    }

    fn now_micros(&self) -> u64 {
        let (elapsed, wall_micros) = self.read();
        wall_micros.saturating_add(elapsed / 1_000)
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

    /// The wall clock the resync tests read.
    static WALL_NANOS: AtomicU64 = AtomicU64::new(0);

    fn test_wall() -> Duration {
        Duration::from_nanos(WALL_NANOS.load(Ordering::SeqCst))
    }

    // NTP steps the wall clock 5 s ahead: the clock follows at the next
    // resync; then it steps 100 ms back: the clock slews back at most a
    // tenth of each resync interval, never backwards, until it is on the
    // wall clock again.
    #[test]
    fn system_clock_follows_the_wall_clock_and_slews_back() {
        let t0 = Duration::from_secs(1_767_225_600);
        WALL_NANOS.store(saturating_nanos(t0), Ordering::SeqCst);
        let (ticks, mono) = quanta::Clock::mock();
        let clock = SystemClock::with_sources(ticks, test_wall);
        let set_wall = |d: Duration| WALL_NANOS.store(saturating_nanos(d), Ordering::SeqCst);
        mono.increment(Duration::from_millis(5));
        assert_eq!(clock.now(), t0 + Duration::from_millis(5));

        mono.increment(Duration::from_millis(10));
        set_wall(t0 + Duration::from_millis(15) + Duration::from_secs(5));
        assert_eq!(
            clock.now(),
            t0 + Duration::from_millis(15) + Duration::from_secs(5)
        );

        let mut wall = t0 + Duration::from_millis(15) + Duration::from_secs(5);
        wall -= Duration::from_millis(100);
        let mut last = clock.now();
        let mut resyncs = 0;
        while clock.now() != wall {
            mono.increment(RESYNC);
            wall += RESYNC;
            set_wall(wall);
            let now = clock.now();
            assert!(now >= last, "went back from {last:?} to {now:?}");
            assert!(now - last >= RESYNC * 9 / 10, "slewed more than 10 %");
            last = now;
            resyncs += 1;
            assert!(resyncs <= 100, "still {:?} ahead", now - wall);
        }
        assert_eq!(resyncs, 100);
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
