//! The circuit breaker of an upstream, and the rolling counters it and the retry budget
//! are built on.
//!
//! Closed: requests pass and their outcomes are counted over a rolling `window` (ten
//! buckets). When at least `min_requests` were counted and the failure share reaches
//! `failure_rate`, the breaker opens: requests are refused at once (503 `circuit_open`,
//! or the route's fallback) for `open_for`. Then it is half open: `half_open_probes`
//! requests pass; one failure opens it again, all passing closes it with fresh counts.
//! A probe whose request was cancelled gives its slot back.
//!
//! A request's outcome is its final one, after retries: the breaker measures what the
//! upstream as a whole did for the request. Failures are connect failures, resets,
//! timeouts, invalid answers and 5xx statuses. Time is passed in (milliseconds on the
//! [`clock`]), so the state machine is tested without waiting.

use std::sync::atomic::{
    AtomicU32, AtomicU64, AtomicU8,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::Arc;

use crate::config::BreakerSpec;
use crate::telemetry::metrics::UpstreamStats;

/// Milliseconds on a monotonic clock shared by the resilience state.
pub mod clock {
    use std::sync::OnceLock;
    use std::time::Instant;

    static START: OnceLock<Instant> = OnceLock::new();

    /// Milliseconds since the first call (never 0).
    pub fn now_ms() -> u64 {
        let start = START.get_or_init(Instant::now);
        start.elapsed().as_millis() as u64 + 1
    }
}

const BUCKETS: usize = 10;

struct Bucket {
    /// The bucket's slot number plus one (0: never used).
    stamp: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

/// Two counters (`a`, `b`) over a rolling window of ten buckets, updated lock-free.
/// Counts racing with a bucket's reset may be lost: the figures are estimates, as in
/// every rolling-window breaker.
pub struct Window {
    buckets: [Bucket; BUCKETS],
    width: u64,
}

impl Window {
    /// A window spanning `span_ms` (at least 10 ms).
    pub fn new(span_ms: u64) -> Self {
        Self {
            buckets: std::array::from_fn(|_| Bucket {
                stamp: AtomicU64::new(0),
                a: AtomicU64::new(0),
                b: AtomicU64::new(0),
            }),
            width: (span_ms / BUCKETS as u64).max(1),
        }
    }

    fn bucket(&self, now: u64) -> &Bucket {
        let slot = now / self.width;
        let b = &self.buckets[(slot % BUCKETS as u64) as usize];
        let stamp = slot + 1;
        if b.stamp.load(Relaxed) != stamp && b.stamp.swap(stamp, Relaxed) != stamp {
            b.a.store(0, Relaxed);
            b.b.store(0, Relaxed);
        }
        b
    }

    /// Adds to the counters at `now`.
    pub fn add(&self, now: u64, a: u64, b: u64) {
        let bucket = self.bucket(now);
        if a > 0 {
            bucket.a.fetch_add(a, Relaxed);
        }
        if b > 0 {
            bucket.b.fetch_add(b, Relaxed);
        }
    }

    /// The sums of both counters over the window ending at `now`.
    pub fn sums(&self, now: u64) -> (u64, u64) {
        let slot = now / self.width;
        let oldest = (slot + 1).saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| {
                let s = b.stamp.load(Relaxed);
                s >= oldest && s <= slot + 1
            })
            .fold((0, 0), |(a, b), x| {
                (a + x.a.load(Relaxed), b + x.b.load(Relaxed))
            })
    }

    /// Forgets every count.
    pub fn clear(&self) {
        for b in &self.buckets {
            b.stamp.store(0, Relaxed);
            b.a.store(0, Relaxed);
            b.b.store(0, Relaxed);
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests pass.
    Closed,
    /// Requests are refused.
    Open,
    /// A few probes pass.
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;
/// Between open and half open, while one request resets the probe counts.
const OPENING: u8 = 3;

/// A circuit breaker.
pub struct Breaker {
    rate: u64,
    min_requests: u64,
    open_for: u64,
    probes: u32,
    window: Window,
    state: AtomicU8,
    open_until: AtomicU64,
    probes_started: AtomicU32,
    probes_passed: AtomicU32,
    /// Counts half-open periods, so that a late probe frees a slot of its own period only.
    generation: AtomicU32,
    stats: Arc<UpstreamStats>,
}

/// Leave to send one request; its outcome goes back with [`Breaker::record`].
pub struct Ticket {
    probe: Option<(Arc<Breaker>, u32)>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A probe that never reported (its request was cancelled) frees its slot.
        if let Some((b, generation)) = self.probe.take() {
            if b.generation.load(Relaxed) == generation {
                let _ = b
                    .probes_started
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
            }
        }
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(spec: &BreakerSpec, stats: Arc<UpstreamStats>) -> Arc<Self> {
        Arc::new(Self {
            rate: u64::from(spec.failure_rate.0),
            min_requests: u64::from(spec.min_requests),
            open_for: spec.open_for.0.as_millis() as u64,
            probes: spec.half_open_probes,
            window: Window::new(spec.window.0.as_millis() as u64),
            state: AtomicU8::new(CLOSED),
            open_until: AtomicU64::new(0),
            probes_started: AtomicU32::new(0),
            probes_passed: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            stats,
        })
    }

    /// The state at `now`.
    pub fn state(&self, now: u64) -> State {
        match self.state.load(Relaxed) {
            CLOSED => State::Closed,
            OPEN if now >= self.open_until.load(Relaxed) => State::HalfOpen,
            OPEN | OPENING => State::Open,
            _ => State::HalfOpen,
        }
    }

    /// Milliseconds until an open breaker lets probes through (0 when not open).
    pub fn open_left(&self, now: u64) -> u64 {
        match self.state.load(Relaxed) {
            OPEN | OPENING => self.open_until.load(Relaxed).saturating_sub(now),
            _ => 0,
        }
    }

    /// Leave for one request, or `Err(ms)` with the time until the breaker half-opens.
    pub fn admit(self: &Arc<Self>, now: u64) -> Result<Ticket, u64> {
        match self.state.load(Relaxed) {
            CLOSED => Ok(Ticket { probe: None }),
            OPEN => {
                let until = self.open_until.load(Relaxed);
                if now < until {
                    return Err(until - now);
                }
                // One request moves the breaker on: it resets the probe counts before
                // anyone can see the half-open state.
                if self
                    .state
                    .compare_exchange(OPEN, OPENING, Relaxed, Relaxed)
                    .is_ok()
                {
                    self.generation.fetch_add(1, Relaxed);
                    self.probes_started.store(0, Relaxed);
                    self.probes_passed.store(0, Relaxed);
                    self.state.store(HALF_OPEN, Release);
                    self.stats.breaker_state.store(2, Relaxed);
                }
                self.admit_probe()
            }
            OPENING => Err(1),
            _ => self.admit_probe(),
        }
    }

    fn admit_probe(self: &Arc<Self>) -> Result<Ticket, u64> {
        if self.state.load(Acquire) != HALF_OPEN {
            return Err(1);
        }
        let probes = self.probes;
        match self
            .probes_started
            .fetch_update(Relaxed, Relaxed, |n| (n < probes).then_some(n + 1))
        {
            Ok(_) => Ok(Ticket {
                probe: Some((self.clone(), self.generation.load(Relaxed))),
            }),
            Err(_) => Err(self.open_for.min(1000)),
        }
    }

    /// Reports the outcome of the request `ticket` admitted.
    pub fn record(&self, mut ticket: Ticket, now: u64, failed: bool) {
        if let Some((_, generation)) = ticket.probe.take() {
            if self.state.load(Relaxed) != HALF_OPEN || self.generation.load(Relaxed) != generation
            {
                return;
            }
            if failed {
                self.trip(now);
            } else if self.probes_passed.fetch_add(1, Relaxed) + 1 >= self.probes
                && self
                    .state
                    .compare_exchange(HALF_OPEN, CLOSED, Relaxed, Relaxed)
                    .is_ok()
            {
                self.window.clear();
                self.stats.breaker_state.store(0, Relaxed);
                tracing::info!("circuit breaker closed: the half-open probes passed");
            }
            return;
        }
        if self.state.load(Relaxed) != CLOSED {
            return;
        }
        self.window.add(now, 1, u64::from(failed));
        if failed {
            let (total, failures) = self.window.sums(now);
            if total >= self.min_requests && failures * 10_000 >= self.rate * total {
                self.trip(now);
            }
        }
    }

    fn trip(&self, now: u64) {
        self.open_until.store(now + self.open_for, Relaxed);
        if self.state.swap(OPEN, Relaxed) != OPEN {
            self.stats.breaker_opened.fetch_add(1, Relaxed);
            self.stats.breaker_state.store(1, Relaxed);
            tracing::warn!(
                open_for_ms = self.open_for,
                "circuit breaker opened: the upstream fails too many requests"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, Percent};

    fn breaker() -> Arc<Breaker> {
        Breaker::new(
            &BreakerSpec {
                failure_rate: Percent(5000),
                min_requests: 4,
                window: Dur::secs(10),
                open_for: Dur::secs(15),
                half_open_probes: 2,
            },
            Default::default(),
        )
    }

    #[test]
    fn opens_on_the_failure_rate_half_opens_and_closes() {
        let b = breaker();
        let t = 1_000;
        for failed in [false, true, false] {
            b.record(b.admit(t).unwrap(), t, failed);
        }
        assert_eq!(b.state(t), State::Closed, "below min_requests");
        b.record(b.admit(t).unwrap(), t, true);
        assert_eq!(b.state(t), State::Open, "2 of 4 failed: 50%");
        assert_eq!(b.admit(t + 100).err(), Some(14_900));
        assert_eq!(b.stats.breaker_opened.load(Relaxed), 1);

        let later = t + 15_000;
        let p1 = b.admit(later).unwrap();
        let p2 = b.admit(later).unwrap();
        assert!(b.admit(later).is_err(), "only two probes at once");
        b.record(p1, later, false);
        assert_eq!(b.state(later), State::HalfOpen);
        b.record(p2, later, false);
        assert_eq!(b.state(later), State::Closed);
        assert_eq!(b.window.sums(later), (0, 0), "fresh counts after closing");
    }

    #[test]
    fn a_failed_probe_opens_again_and_a_cancelled_one_frees_its_slot() {
        let b = breaker();
        for _ in 0..4 {
            b.record(b.admit(0).unwrap(), 0, true);
        }
        let later = 15_000;
        let p1 = b.admit(later).unwrap();
        let p2 = b.admit(later).unwrap();
        drop(p2);
        let p3 = b
            .admit(later)
            .expect("the cancelled probe's slot is free again");
        b.record(p1, later, true);
        assert_eq!(b.state(later), State::Open);
        drop(p3);
        assert!(b.admit(later + 1).is_err());
    }

    #[test]
    fn old_failures_leave_the_window() {
        let b = breaker();
        for _ in 0..3 {
            b.record(b.admit(0).unwrap(), 0, true);
        }
        // Ten seconds later those three are out of the window.
        for i in 0..3 {
            b.record(b.admit(11_000).unwrap(), 11_000 + i, false);
        }
        b.record(b.admit(11_000).unwrap(), 11_010, true);
        assert_eq!(b.state(11_010), State::Closed, "1 failure in 4");
    }
}
