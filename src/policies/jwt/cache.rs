//! A bounded cache of verified tokens, as Envoy's `jwt_authn` has (`jwt_cache_config`):
//! a client sends the same token on every request of its lifetime, and checking its
//! signature again (an HMAC, or an RSA or ECDSA verification, plus base64 and JSON
//! parsing) each time is most of what the policy costs.
//!
//! An entry is keyed by the whole token text, and holds what the checks concluded: the
//! provider, the time window in which the token is valid (`exp`, `nbf` and `iat` with
//! the leeway), the consumer, the forwarded claim values and the claims. A hit checks
//! the time window again, so a cached token expires exactly when an uncached one would.
//! A token verified by a remote JWKS is only valid while that same key set is the one
//! in use: after a refresh the token is verified again (a removed key stops working at
//! once). Keys from files and inline keys belong to the policy, which is rebuilt (with
//! an empty cache) when they change.
//!
//! Only tokens that passed every check are kept; refused tokens are not, so a flood of
//! forged tokens cannot fill the cache. At the cap, expired entries go first; if that
//! frees nothing, the shard is emptied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::time::Instant;

use http::HeaderValue;

use super::keys::KeySet;
use super::token::Claims;
use crate::policies::consumers::Consumer;

/// Tokens longer than this are verified every time (and not kept).
pub(super) const MAX_TOKEN: usize = 8 * 1024;
const SHARDS: usize = 8;

/// What a verified token concluded.
#[derive(Debug)]
pub(super) struct Verified {
    /// Valid from this time (seconds since the epoch, leeway applied).
    pub(super) from: f64,
    /// Valid until this time (`exp` plus the leeway).
    pub(super) until: f64,
    /// The remote key set that verified it (`None`: the policy's own keys).
    pub(super) keys: Option<Weak<(KeySet, Instant)>>,
    /// The provider that accepted it.
    pub(super) provider: usize,
    /// The consumer it names.
    pub(super) consumer: Option<Arc<Consumer>>,
    /// The value of each `forward_claims` header (`None`: the claim is absent).
    pub(super) forwards: Box<[Option<HeaderValue>]>,
    /// Its claims.
    pub(super) claims: Claims,
}

impl Verified {
    /// Whether the token is valid at `now`.
    pub(super) fn valid_at(&self, now: f64) -> bool {
        now >= self.from && now <= self.until
    }
}

type Shard = Mutex<HashMap<Box<str>, Arc<Verified>>>;

/// Verified tokens, at most `cap` of them.
#[derive(Debug)]
pub(super) struct TokenCache {
    per_shard: usize,
    shards: Box<[Shard]>,
}

impl TokenCache {
    /// A cache of at most `cap` tokens; `None` when `cap` is 0 (no cache).
    pub(super) fn new(cap: usize) -> Option<Self> {
        (cap > 0).then(|| Self {
            per_shard: cap.div_ceil(SHARDS),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        })
    }

    fn shard(&self, token: &str) -> &Shard {
        // The last byte is the signature's: unpredictable for tokens that were issued,
        // and only issued tokens are ever kept.
        let b = token.as_bytes().last().copied().unwrap_or(0) as usize;
        &self.shards[b % SHARDS]
    }

    /// The verified entry for `token`, if it is valid at `now`.
    pub(super) fn get(&self, token: &str, now: f64) -> Option<Arc<Verified>> {
        let v = self.shard(token).lock().ok()?.get(token)?.clone();
        v.valid_at(now).then_some(v)
    }

    /// Keeps a verified token.
    pub(super) fn put(&self, token: &str, v: Arc<Verified>, now: f64) {
        if token.len() > MAX_TOKEN {
            return;
        }
        let Ok(mut map) = self.shard(token).lock() else {
            return;
        };
        if map.len() >= self.per_shard {
            map.retain(|_, e| e.until >= now);
            if map.len() >= self.per_shard {
                map.clear();
            }
        }
        map.insert(token.into(), v);
    }

    /// Drops `token` (it was refused on a hit: expired, or its keys changed).
    pub(super) fn remove(&self, token: &str) {
        if let Ok(mut map) = self.shard(token).lock() {
            map.remove(token);
        }
    }

    /// How many tokens are kept.
    #[cfg(test)]
    pub(super) fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(from: f64, until: f64) -> Arc<Verified> {
        Arc::new(Verified {
            from,
            until,
            keys: None,
            provider: 0,
            consumer: None,
            forwards: Box::new([]),
            claims: Claims::from_payload(b"{}".to_vec()),
        })
    }

    #[test]
    fn a_hit_is_checked_against_the_time_window() {
        let c = TokenCache::new(16).unwrap();
        c.put("a.b.c", entry(100.0, 200.0), 150.0);
        assert!(c.get("a.b.c", 150.0).is_some());
        assert!(c.get("a.b.c", 200.0).is_some());
        assert!(c.get("a.b.c", 200.5).is_none(), "expired");
        assert!(c.get("a.b.c", 99.0).is_none(), "not valid yet");
        assert!(c.get("a.b.d", 150.0).is_none(), "another token");
    }

    #[test]
    fn the_cap_holds_and_expired_entries_go_first() {
        let c = TokenCache::new(SHARDS).unwrap(); // one per shard
        c.put("x.y.a", entry(0.0, 10.0), 5.0);
        // Same shard (same last byte), the first one expired: it goes.
        c.put("z.w.a", entry(0.0, 100.0), 50.0);
        assert!(c.get("x.y.a", 5.0).is_none());
        assert!(c.get("z.w.a", 50.0).is_some());
        for i in 0..1000 {
            c.put(&format!("t.{i}.a"), entry(0.0, 100.0), 50.0);
        }
        assert!(c.count() <= SHARDS);
    }

    #[test]
    fn long_tokens_are_not_kept_and_zero_means_no_cache() {
        assert!(TokenCache::new(0).is_none());
        let c = TokenCache::new(4).unwrap();
        let long = "a".repeat(MAX_TOKEN + 1);
        c.put(&long, entry(0.0, 100.0), 1.0);
        assert_eq!(c.count(), 0);
    }
}
