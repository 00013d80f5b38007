//! A small bounded cache of answers keyed by a SHA-256 digest (of a token, or of a user
//! and password), each kept until its own deadline. Used by the policies that ask
//! something slow or remote about a credential (`basic_auth`, `oauth2_introspection`).
//!
//! At the cap, expired entries are dropped first; if that frees nothing, everything is
//! (a flood of distinct credentials cannot grow it, and the cost is one more miss each).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Answers by digest, each until its deadline.
#[derive(Debug)]
pub struct TtlCache<V> {
    cap: usize,
    map: Mutex<HashMap<[u8; 32], (V, Instant)>>,
}

impl<V: Clone> TtlCache<V> {
    /// An empty cache of at most `cap` entries.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`, if it has not expired.
    pub fn get(&self, key: &[u8; 32]) -> Option<V> {
        let map = self.map.lock().ok()?;
        let (v, until) = map.get(key)?;
        (Instant::now() < *until).then(|| v.clone())
    }

    /// Keeps `value` for `ttl`.
    pub fn put(&self, key: [u8; 32], value: V, ttl: Duration) {
        let now = Instant::now();
        let Ok(mut map) = self.map.lock() else { return };
        if map.len() >= self.cap {
            map.retain(|_, (_, until)| *until > now);
            if map.len() >= self.cap {
                map.clear();
            }
        }
        map.insert(key, (value, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_the_cap_holds() {
        let c = TtlCache::new(2);
        c.put([1; 32], "a", Duration::from_secs(10));
        c.put([2; 32], "b", Duration::from_secs(1));
        assert_eq!(c.get(&[1; 32]), Some("a"));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.get(&[2; 32]), None);
        // At the cap the expired entry goes first; the live one stays.
        c.put([3; 32], "c", Duration::from_secs(10));
        assert_eq!(c.get(&[1; 32]), Some("a"));
        assert_eq!(c.get(&[3; 32]), Some("c"));
    }
}
