//! The `local` store: each key's TATs in this process, in shards so that requests of
//! different keys rarely meet on a lock, and bounded.
//!
//! A key is held as a 64-bit keyed hash of its text (SipHash with a per-process random
//! key, so a client cannot aim two keys at one entry). Memory is bounded by `max_keys`:
//! when a shard is full, the keys whose buckets are full again are dropped first (which
//! changes no decision: a full bucket is the same as no state); when every key is
//! active, the one closest to full is dropped, so the cap can only ever err towards
//! admitting a request, never towards refusing one.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

use super::gcra::{decide, Decision, Limit};

const SHARDS: usize = 64;

type Shard = Mutex<HashMap<u64, Box<[u64]>>>;

/// The TATs of a policy's keys.
#[derive(Debug)]
pub struct LocalStore {
    hasher: std::collections::hash_map::RandomState,
    per_shard: usize,
    shards: Box<[Shard]>,
}

impl LocalStore {
    /// A store holding at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        Self {
            hasher: Default::default(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// A hasher for one key: the caller writes the key's parts into it.
    pub fn key_hasher(&self) -> impl Hasher {
        self.hasher.build_hasher()
    }

    /// Decides a request of `key` at `now` (see [`decide`]).
    #[cfg(test)]
    pub fn decide(&self, key: &[u8], limits: &[Limit], now: u64, max_delay: u64) -> Decision {
        self.decide_hashed(self.hasher.hash_one(key), limits, now, max_delay)
    }

    /// Decides a request of the key whose [`LocalStore::key_hasher`] hash is `h`.
    pub fn decide_hashed(&self, h: u64, limits: &[Limit], now: u64, max_delay: u64) -> Decision {
        let shard = &self.shards[(h as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tats) = map.get_mut(&h) {
            if tats.len() == limits.len() {
                return decide(limits, tats, now, max_delay);
            }
        }
        let mut tats = vec![0u64; limits.len()].into_boxed_slice();
        let d = decide(limits, &mut tats, now, max_delay);
        if d.allowed {
            if map.len() >= self.per_shard {
                map.retain(|_, t| t.iter().any(|&tat| tat > now));
                if map.len() >= self.per_shard {
                    let nearest = map
                        .iter()
                        .min_by_key(|(_, t)| t.iter().copied().max().unwrap_or(0))
                        .map(|(k, _)| *k);
                    if let Some(k) = nearest {
                        map.remove(&k);
                    }
                }
            }
            map.insert(h, tats);
        }
        d
    }

    /// Keys held now.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn keys_are_limited_apart() {
        let s = LocalStore::new(1000);
        let l = [Limit {
            count: 2,
            period: S,
            burst: 2,
        }];
        let ok = |k: &str| s.decide(k.as_bytes(), &l, S, 0).allowed;
        assert!(ok("a") && ok("a") && !ok("a"));
        assert!(ok("b") && ok("b") && !ok("b"));
    }

    #[test]
    fn a_flood_of_keys_stays_within_the_cap_and_idle_keys_go_first() {
        let s = LocalStore::new(SHARDS * 4);
        let l = [Limit {
            count: 1,
            period: S,
            burst: 1,
        }];
        for i in 0..100_000u32 {
            s.decide(&i.to_be_bytes(), &l, S, 0);
        }
        assert!(s.count() <= SHARDS * 4, "{} keys", s.count());
        // An active key survives a flood of keys that are idle by then.
        let hot = b"hot";
        assert!(s.decide(hot, &l, 10 * S, 0).allowed);
        for i in 0..10_000u32 {
            s.decide(&i.to_le_bytes(), &l, 9 * S, 0);
        }
        assert!(
            !s.decide(hot, &l, 10 * S, 0).allowed,
            "the hot key was evicted"
        );
    }
}
