//! `Latencies`: the recent latencies of each host, for the percentile
//! delay.
//!
//! tower's `hedge` keeps one rotating histogram per service; a client
//! stack serves many hosts, so here each host has a ring of its last
//! [`SAMPLES_PER_HOST`] latencies (microseconds), and at most `max_hosts`
//! rings are kept, the least recently used dropped first. A ring is a
//! window over the host's recent requests: a slow spell moves the
//! percentile within a few hundred requests, and an old one is
//! forgotten as quickly.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use super::config::SAMPLES_PER_HOST;

struct Ring {
    samples: VecDeque<u32>,
    used: u64,
}

struct Book {
    hosts: HashMap<Box<str>, Ring, foldhash::fast::RandomState>,
    tick: u64,
}

/// The per-host latency rings.
pub(crate) struct Latencies {
    book: Mutex<Book>,
    max_hosts: usize,
}

impl Latencies {
    pub(crate) fn new(max_hosts: usize) -> Self {
        Self {
            book: Mutex::new(Book {
                hosts: HashMap::default(),
                tick: 0,
            }),
            max_hosts,
        }
    }

    /// Adds one latency of `host`.
    pub(crate) fn record(&self, host: &str, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        book.tick += 1;
        let tick = book.tick;
        if let Some(ring) = book.hosts.get_mut(host) {
            if ring.samples.len() == SAMPLES_PER_HOST {
                ring.samples.pop_front();
            }
            ring.samples.push_back(micros);
            ring.used = tick;
            return;
        }
        if book.hosts.len() >= self.max_hosts {
            // O(hosts), only when a new host comes in and the book is
            // full.
            let oldest = book
                .hosts
                .iter()
                .min_by_key(|(_, ring)| ring.used)
                .map(|(host, _)| host.clone());
            if let Some(oldest) = oldest {
                book.hosts.remove(&oldest);
            }
        }
        let mut samples = VecDeque::with_capacity(SAMPLES_PER_HOST);
        samples.push_back(micros);
        book.hosts.insert(
            host.into(),
            Ring {
                samples,
                used: tick,
            },
        );
    }

    /// The `percentile` of `host`'s latencies, once it has at least
    /// `min_samples`.
    pub(crate) fn percentile(
        &self,
        host: &str,
        percentile: f64,
        min_samples: u32,
    ) -> Option<Duration> {
        let mut sorted = [0u32; SAMPLES_PER_HOST];
        let n = {
            let mut book = self.book.lock().ok()?;
            book.tick += 1;
            let tick = book.tick;
            let ring = book.hosts.get_mut(host)?;
            ring.used = tick;
            if ring.samples.len() < min_samples as usize {
                return None;
            }
            for (slot, sample) in sorted.iter_mut().zip(&ring.samples) {
                *slot = *sample;
            }
            ring.samples.len()
        };
        let samples = &mut sorted[..n];
        // Nearest rank: the smallest sample at or above `percentile` % of
        // them.
        let rank = ((percentile / 100.0) * n as f64).ceil() as usize;
        let index = rank.clamp(1, n) - 1;
        let (_, value, _) = samples.select_nth_unstable(index);
        Some(Duration::from_micros(u64::from(*value)))
    }

    #[cfg(test)]
    fn hosts(&self) -> usize {
        self.book.lock().map(|b| b.hosts.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_percentile_needs_enough_samples() {
        let l = Latencies::new(8);
        for i in 1..=19 {
            l.record("a", i * MS);
        }
        assert_eq!(l.percentile("a", 95.0, 20), None);
        l.record("a", 20 * MS);
        assert_eq!(l.percentile("a", 95.0, 20), Some(19 * MS));
        assert_eq!(l.percentile("a", 50.0, 20), Some(10 * MS));
        assert_eq!(l.percentile("b", 50.0, 1), None);
    }

    #[test]
    fn the_ring_keeps_the_latest_samples() {
        let l = Latencies::new(8);
        for _ in 0..SAMPLES_PER_HOST {
            l.record("a", 100 * MS);
        }
        for _ in 0..SAMPLES_PER_HOST {
            l.record("a", MS);
        }
        assert_eq!(l.percentile("a", 99.0, 20), Some(MS));
    }

    #[test]
    fn the_least_recently_used_host_is_forgotten() {
        let l = Latencies::new(2);
        l.record("a", MS);
        l.record("b", MS);
        // `a` is used again, so `b` goes when `c` comes.
        assert!(l.percentile("a", 50.0, 1).is_some());
        l.record("c", MS);
        assert_eq!(l.hosts(), 2);
        assert!(l.percentile("a", 50.0, 1).is_some());
        assert!(l.percentile("b", 50.0, 1).is_none());
        assert!(l.percentile("c", 50.0, 1).is_some());
    }
}
