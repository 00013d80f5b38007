//! The Generic Cell Rate Algorithm (GCRA, ITU-T I.371), the arithmetic every store of
//! `rate_limit` shares.
//!
//! A limit of `count` per `period` admits one request every `interval = period / count`
//! on average, and up to `burst` at once after a quiet spell. Its whole state is one
//! number per key, the theoretical arrival time (TAT): when the key's bucket would be
//! full again. A request at `now` is admitted when `max(TAT, now) + interval - now` is at
//! most `burst * interval`, and then moves TAT to that value. This is a token bucket
//! refilled continuously, computed exactly: there is no window edge, so no double burst
//! at the end of one window and the start of the next (the flaw of fixed windows), and no
//! estimate (the flaw of sliding-window counters).
//!
//! Several limits on one key (`10/second` and `1000/hour`) are decided together: a
//! request is admitted only when every limit admits it, and only then is any state
//! moved, so a refused request costs no limit anything.
//!
//! A TAT at or before `now` means a full bucket, the same as no state at all: stores drop
//! such entries without changing any decision.

/// One limit: `count` requests per `period`, with a bucket of `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Requests per period.
    pub count: u64,
    /// The period, in nanoseconds.
    pub period: u64,
    /// How many requests may arrive at once (at least 1).
    pub burst: u64,
}

impl Limit {
    /// Nanoseconds between two requests at the sustained rate.
    pub fn interval(&self) -> u64 {
        (self.period / self.count.max(1)).max(1)
    }

    fn tolerance(&self) -> u64 {
        self.interval().saturating_mul(self.burst.max(1))
    }
}

/// What a decision found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The request is admitted (now, or after `wait` when delayed).
    pub allowed: bool,
    /// The limit with the least room left (for the `RateLimit` headers).
    pub tightest: usize,
    /// Requests the tightest limit still admits at once after this one.
    pub remaining: u64,
    /// Nanoseconds until the tightest limit's bucket is full again.
    pub reset: u64,
    /// Refused: nanoseconds until the request would be admitted. Delayed: how long the
    /// request waits.
    pub wait: u64,
}

/// Decides one request at `now` (nanoseconds on the store's clock) against `limits`,
/// whose TATs are `tats`; moves them only when every limit admits it. With
/// `max_delay`, a request that would be admitted within that time is admitted for
/// then (its slot reserved), and `wait` says how long it must wait.
pub fn decide(limits: &[Limit], tats: &mut [u64], now: u64, max_delay: u64) -> Decision {
    let mut wait = 0u64;
    for (l, tat) in limits.iter().zip(tats.iter()) {
        let next = (*tat).max(now).saturating_add(l.interval());
        wait = wait.max(next.saturating_sub(now.saturating_add(l.tolerance())));
    }
    if wait > max_delay {
        let (tightest, remaining, reset) = tightest(limits, tats, now);
        return Decision {
            allowed: false,
            tightest,
            remaining,
            reset,
            wait,
        };
    }
    // Admitted at `at` (now, or the end of the delay): every limit admits it then.
    let at = now.saturating_add(wait);
    for (l, tat) in limits.iter().zip(tats.iter_mut()) {
        *tat = (*tat).max(at).saturating_add(l.interval());
    }
    let (tightest, remaining, reset) = tightest(limits, tats, now);
    Decision {
        allowed: true,
        tightest,
        remaining,
        reset,
        wait,
    }
}

/// The limit with the least room at `now`, its room, and its time to full.
fn tightest(limits: &[Limit], tats: &[u64], now: u64) -> (usize, u64, u64) {
    let mut best = (0, u64::MAX, 0);
    for (i, (l, tat)) in limits.iter().zip(tats).enumerate() {
        let used = tat.saturating_sub(now);
        let room = l.tolerance().saturating_sub(used) / l.interval();
        if room < best.1 {
            best = (i, room, used);
        }
    }
    if best.1 == u64::MAX {
        best.1 = 0;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn per_second(count: u64, burst: u64) -> Limit {
        Limit {
            count,
            period: S,
            burst,
        }
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = [per_second(10, 10)];
        let mut tat = [0];
        let t0 = 100 * S;
        let admitted = (0..30)
            .filter(|_| decide(&l, &mut tat, t0, 0).allowed)
            .count();
        assert_eq!(admitted, 10, "the bucket holds 10");
        let d = decide(&l, &mut tat, t0, 0);
        assert!(!d.allowed);
        assert_eq!(d.wait, S / 10, "the next one after one interval");
        // Steady at the rate: every request at exactly 10/s passes, for a minute.
        let mut t = t0;
        for _ in 0..600 {
            t += S / 10;
            assert!(decide(&l, &mut tat, t, 0).allowed);
            assert!(!decide(&l, &mut tat, t, 0).allowed, "twice the rate");
        }
    }

    #[test]
    fn no_double_burst_at_a_window_edge() {
        // A fixed window admits 10 at 0.999 s and 10 more at 1.001 s; GCRA does not.
        let l = [per_second(10, 10)];
        let mut tat = [0];
        let edge = 50 * S;
        let before = (0..10)
            .filter(|_| decide(&l, &mut tat, edge - S / 1000, 0).allowed)
            .count();
        let after = (0..10)
            .filter(|_| decide(&l, &mut tat, edge + S / 1000, 0).allowed)
            .count();
        assert_eq!(before, 10);
        assert_eq!(after, 0);
    }

    #[test]
    fn all_limits_must_pass_and_a_refusal_moves_nothing() {
        let l = [
            per_second(10, 20),
            Limit {
                count: 25,
                period: 3600 * S,
                burst: 25,
            },
        ];
        let mut tat = [0, 0];
        let t = 10 * S;
        let admitted = (0..100)
            .filter(|_| decide(&l, &mut tat, t, 0).allowed)
            .count();
        assert_eq!(admitted, 20, "the burst of the first");
        let before = tat;
        assert!(!decide(&l, &mut tat, t, 0).allowed);
        assert_eq!(tat, before, "a refused request moved a limit");
        // Over the next seconds the hourly limit (25) takes over.
        let later = (1..100)
            .filter(|i| decide(&l, &mut tat, t + i * S, 0).allowed)
            .count();
        assert_eq!(later, 5);
        let d = decide(&l, &mut tat, t + 120 * S, 0);
        assert_eq!((d.allowed, d.tightest), (false, 1));
    }

    #[test]
    fn a_delay_reserves_the_next_slot() {
        let l = [per_second(5, 1)];
        let mut tat = [0];
        let t = 10 * S;
        let max = S / 2;
        let waits: Vec<_> = (0..5).map(|_| decide(&l, &mut tat, t, max)).collect();
        // 0, 200 ms, 400 ms admitted; 600 ms is past the half-second bound.
        assert!(waits[..3].iter().all(|d| d.allowed));
        assert_eq!(
            waits[..3].iter().map(|d| d.wait).collect::<Vec<_>>(),
            vec![0, S / 5, 2 * S / 5]
        );
        assert!(!waits[3].allowed && !waits[4].allowed);
    }

    #[test]
    fn remaining_and_reset_describe_the_tightest_limit() {
        let l = [per_second(10, 10)];
        let mut tat = [0];
        let d = decide(&l, &mut tat, S, 0);
        assert_eq!((d.remaining, d.reset), (9, S / 10));
    }
}
