//! Load-balancing tables, rebuilt whenever an upstream's endpoint set changes and read
//! lock-free by requests.
//!
//! - `round_robin`: smooth weighted round robin (nginx's algorithm), precomputed as a
//!   schedule walked by one atomic counter that starts at a random offset, so that many
//!   gateway instances do not hit the endpoints in lockstep.
//! - `least_request`: power of two choices: two endpoints drawn by weight, the one with
//!   fewer requests in flight per unit of weight wins.
//! - `random`: a weighted random draw.
//! - `consistent_hash`: a Ketama-style ring (160 points per average weight) or a Maglev
//!   table (65537 slots). A key maps to the same endpoint while the set is unchanged; when
//!   an endpoint leaves, only its keys move (ring), or about that share plus a little
//!   (Maglev). Requests without the key are spread by weight.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::config::upstream::{BalancerSpec, HashAlgorithm};
use crate::config::validate::KeySource;

use super::hash::hash64;

/// Slots in a Maglev table: a prime well above the endpoint count.
pub const MAGLEV_SIZE: usize = 65_537;
/// Ring points per endpoint of average weight.
const RING_POINTS: u64 = 160;

enum Kind {
    RoundRobin {
        schedule: Box<[u32]>,
        next: AtomicUsize,
    },
    LeastRequest,
    Random,
    Ring {
        points: Box<[(u64, u32)]>,
        key: KeySource,
    },
    Maglev {
        table: Box<[u32]>,
        key: KeySource,
    },
}

/// A built balancing table for one endpoint set.
pub struct Balancer {
    kind: Kind,
    cumulative: Box<[u64]>,
    weights: Box<[u32]>,
}

/// What the balancer may look at in a request.
pub trait PickInput {
    /// The hash key bytes for `source`, if the request carries it.
    fn key(&self, source: &KeySource) -> Option<u64>;
}

impl Balancer {
    /// Builds the table for endpoints identified by `ids` (stable names such as
    /// `10.0.0.5:80`) with these `weights`.
    pub fn build(spec: &BalancerSpec, ids: &[String], weights: &[u32]) -> Self {
        let weights: Box<[u32]> = weights.iter().map(|w| (*w).max(1)).collect();
        let mut total = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                total += u64::from(*w);
                total
            })
            .collect();
        let kind = match spec {
            BalancerSpec::RoundRobin => Kind::RoundRobin {
                schedule: smooth_schedule(&weights),
                next: AtomicUsize::new(fastrand::usize(..)),
            },
            BalancerSpec::LeastRequest => Kind::LeastRequest,
            BalancerSpec::Random => Kind::Random,
            BalancerSpec::ConsistentHash(h) => {
                let key = KeySource::parse(&h.key).unwrap_or(KeySource::ClientIp);
                match h.algorithm {
                    HashAlgorithm::Ring => Kind::Ring {
                        points: ring(ids, &weights),
                        key,
                    },
                    HashAlgorithm::Maglev => Kind::Maglev {
                        table: maglev(ids, &weights),
                        key,
                    },
                }
            }
        };
        Self {
            kind,
            cumulative,
            weights,
        }
    }

    /// Picks an endpoint index; `load(i)` is endpoint `i`'s requests in flight.
    pub fn pick(&self, input: &dyn PickInput, load: &dyn Fn(usize) -> usize) -> Option<usize> {
        let n = self.weights.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        Some(match &self.kind {
            Kind::RoundRobin { schedule, next } => {
                schedule[next.fetch_add(1, Relaxed) % schedule.len()] as usize
            }
            Kind::Random => self.weighted_random(),
            Kind::LeastRequest => {
                let a = self.weighted_random();
                let mut b = self.weighted_random();
                if b == a {
                    b = (a + 1 + fastrand::usize(..n - 1)) % n;
                }
                // load/weight compared without division.
                let (la, lb) = (load(a) as u64 + 1, load(b) as u64 + 1);
                if la * u64::from(self.weights[b]) <= lb * u64::from(self.weights[a]) {
                    a
                } else {
                    b
                }
            }
            Kind::Ring { points, key } => match input.key(key) {
                Some(h) if !points.is_empty() => {
                    let i = points.partition_point(|(p, _)| *p < h);
                    points[i % points.len()].1 as usize
                }
                _ => self.weighted_random(),
            },
            Kind::Maglev { table, key } => match input.key(key) {
                Some(h) if !table.is_empty() => table[(h % table.len() as u64) as usize] as usize,
                _ => self.weighted_random(),
            },
        })
    }

    fn weighted_random(&self) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1);
        let r = fastrand::u64(..total);
        self.cumulative.partition_point(|c| *c <= r)
    }
}

/// nginx's smooth weighted round robin, unrolled into one full cycle.
fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    let g = weights.iter().fold(0, |g, w| gcd(g, *w)).max(1);
    let mut w: Vec<i64> = weights.iter().map(|x| i64::from(x / g)).collect();
    let mut total: i64 = w.iter().sum();
    // Keep the cycle short for large, coprime weights.
    while total > 65_536 {
        w.iter_mut().for_each(|x| *x = (*x / 2).max(1));
        total = w.iter().sum();
    }
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn ring(ids: &[String], weights: &[u32]) -> Box<[(u64, u32)]> {
    let avg =
        (weights.iter().map(|w| u64::from(*w)).sum::<u64>() / weights.len().max(1) as u64).max(1);
    let mut points = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let count = (RING_POINTS * u64::from(weights[i]) / avg).clamp(1, 10_000);
        for k in 0..count {
            points.push((hash64(format!("{id}#{k}").as_bytes()), i as u32));
        }
    }
    points.sort_unstable();
    points.into_boxed_slice()
}

fn maglev(ids: &[String], weights: &[u32]) -> Box<[u32]> {
    if ids.is_empty() {
        return Box::new([]);
    }
    let m = MAGLEV_SIZE as u64;
    let prefs: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let offset = hash64(id.as_bytes()) % m;
            let skip = hash64(format!("{id}#skip").as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let max_w = u64::from(weights.iter().copied().max().unwrap_or(1));
    let mut table = vec![u32::MAX; MAGLEV_SIZE];
    let mut next = vec![0u64; ids.len()];
    let mut credit = vec![0u64; ids.len()];
    let mut filled = 0;
    while filled < MAGLEV_SIZE {
        for i in 0..ids.len() {
            credit[i] += u64::from(weights[i]);
            if credit[i] < max_w {
                continue;
            }
            credit[i] -= max_w;
            let (offset, skip) = prefs[i];
            loop {
                let slot = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if table[slot] == u32::MAX {
                    table[slot] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == MAGLEV_SIZE {
                break;
            }
        }
    }
    table.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::upstream::HashSpec;

    struct Key(Option<u64>);
    impl PickInput for Key {
        fn key(&self, _: &KeySource) -> Option<u64> {
            self.0
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn counts(
        b: &Balancer,
        n: usize,
        draws: usize,
        key: impl Fn(usize) -> Option<u64>,
    ) -> Vec<usize> {
        let mut c = vec![0; n];
        for d in 0..draws {
            c[b.pick(&Key(key(d)), &|_| 0).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_follows_weights_exactly_and_smoothly() {
        let b = Balancer::build(&BalancerSpec::RoundRobin, &ids(3), &[5, 1, 1]);
        assert_eq!(counts(&b, 3, 700, |_| None), vec![500, 100, 100]);
        let Kind::RoundRobin { schedule, .. } = &b.kind else {
            panic!()
        };
        assert_eq!(
            &schedule[..],
            &[0, 0, 1, 0, 2, 0, 0],
            "smooth: no long bursts"
        );
    }

    #[test]
    fn random_follows_weights() {
        let b = Balancer::build(&BalancerSpec::Random, &ids(2), &[3, 1]);
        let c = counts(&b, 2, 20_000, |_| None);
        assert!((c[0] as f64 / 20_000.0 - 0.75).abs() < 0.03, "{c:?}");
    }

    #[test]
    fn least_request_spreads_evenly_when_loads_are_equal() {
        let b = Balancer::build(&BalancerSpec::LeastRequest, &ids(4), &[1; 4]);
        let c = counts(&b, 4, 20_000, |_| None);
        for n in &c {
            assert!((*n as f64 / 5_000.0 - 1.0).abs() < 0.1, "{c:?}");
        }
    }

    #[test]
    fn least_request_compares_load_per_weight() {
        // Endpoint 0 has three times the weight and twice the load: it is less busy per
        // unit of weight, so it wins every comparison.
        let b = Balancer::build(&BalancerSpec::LeastRequest, &ids(2), &[3, 1]);
        let load = |i: usize| if i == 0 { 10 } else { 5 };
        assert!((0..500).all(|_| b.pick(&Key(None), &load) == Some(0)));
    }

    #[test]
    fn least_request_prefers_the_idle_endpoint() {
        let b = Balancer::build(&BalancerSpec::LeastRequest, &ids(2), &[1, 1]);
        let busy = |i: usize| if i == 0 { 50 } else { 0 };
        let mut picks = [0; 2];
        for _ in 0..1000 {
            picks[b.pick(&Key(None), &busy).unwrap()] += 1;
        }
        assert_eq!(picks, [0, 1000]);
    }

    fn hash_spec(algorithm: HashAlgorithm) -> BalancerSpec {
        BalancerSpec::ConsistentHash(HashSpec {
            key: "header:x-user".into(),
            algorithm,
        })
    }

    #[test]
    fn consistent_hashing_is_even_and_stable_when_an_endpoint_leaves() {
        for algorithm in [HashAlgorithm::Ring, HashAlgorithm::Maglev] {
            let all = ids(5);
            let b5 = Balancer::build(&hash_spec(algorithm), &all, &[1; 5]);
            let keys: Vec<u64> = (0..20_000u64).map(|k| hash64(&k.to_le_bytes())).collect();
            let before: Vec<usize> = keys
                .iter()
                .map(|k| b5.pick(&Key(Some(*k)), &|_| 0).unwrap())
                .collect();
            let mut per = [0usize; 5];
            before.iter().for_each(|i| per[*i] += 1);
            for c in per {
                assert!(
                    (c as f64 / 4000.0 - 1.0).abs() < 0.25,
                    "{algorithm:?} uneven: {per:?}"
                );
            }
            // Endpoint 2 leaves; the others keep their ids.
            let rest: Vec<String> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 2)
                .map(|(_, s)| s.clone())
                .collect();
            let b4 = Balancer::build(&hash_spec(algorithm), &rest, &[1; 4]);
            let mut moved = 0;
            for (k, old) in keys.iter().zip(&before) {
                let new = &rest[b4.pick(&Key(Some(*k)), &|_| 0).unwrap()];
                if *old != 2 && *new != all[*old] {
                    moved += 1;
                }
            }
            let limit = match algorithm {
                HashAlgorithm::Ring => 0.0,
                HashAlgorithm::Maglev => 0.05,
            };
            assert!(
                moved as f64 / 20_000.0 <= limit,
                "{algorithm:?}: {moved} keys of surviving endpoints moved"
            );
        }
    }

    #[test]
    fn empty_sets_build_and_pick_nothing() {
        for algorithm in [HashAlgorithm::Ring, HashAlgorithm::Maglev] {
            let b = Balancer::build(&hash_spec(algorithm), &[], &[]);
            assert_eq!(b.pick(&Key(Some(1)), &|_| 0), None);
        }
        assert_eq!(
            Balancer::build(&BalancerSpec::RoundRobin, &[], &[]).pick(&Key(None), &|_| 0),
            None
        );
    }

    #[test]
    fn same_key_same_endpoint_and_weights_respected() {
        let b = Balancer::build(&hash_spec(HashAlgorithm::Maglev), &ids(2), &[3, 1]);
        let first = b.pick(&Key(Some(42)), &|_| 0);
        assert!((0..100).all(|_| b.pick(&Key(Some(42)), &|_| 0) == first));
        let keys = |d: usize| Some(hash64(&(d as u64).to_le_bytes()));
        let c = counts(&b, 2, 20_000, keys);
        assert!((c[0] as f64 / 20_000.0 - 0.75).abs() < 0.03, "{c:?}");
    }
}
