//! The `redis` store: the same GCRA as [`super::gcra`], run inside Redis by one atomic
//! script per decision, so that every gateway instance shares one set of TATs per key.
//!
//! - Time is Redis's own (`TIME`, in microseconds), so instances with skewed clocks still
//!   agree. Microseconds are exact in Lua's doubles for centuries.
//! - A key's state is one hash, `PREFIX rl:{NAMESPACE:DIGEST}` (the braces are a Cluster
//!   hash tag: all of a key's state lives on one slot), whose fields are the limits'
//!   intervals in microseconds. Two limits with one interval share a TAT, which is exact:
//!   a TAT depends only on the interval, the tolerance is applied when deciding. So adding
//!   a plan, or changing a burst, keeps the counters. The digest is SHA-256 of the key's
//!   parts (truncated to 128 bits): a key's text (a token subject, an address) is never
//!   written to Redis.
//! - The hash expires when its last bucket is full again (`PEXPIRE`), so idle keys cost
//!   Redis nothing; a restart of Redis (all keys gone) means full buckets, never a stuck
//!   key.
//! - A field that is not a number, or a key of another type, is an error answer: that
//!   decision follows `on_store_failure`; Redis's health is not in question.
//!
//! Batching ([`Leases`]): a lease takes up to `tokens` admissions from the shared bucket
//! at once (the same script arithmetic for k requests), and this instance spends them
//! without asking Redis. What a lease has left when its `interval` ends is given back at
//! the next lease of that key. Tokens are taken before they are spent, so the cluster
//! never admits more than the limit; the error is only towards refusing: at any moment at
//! most `instances x (tokens - 1)` admissions per key sit unspent in leases.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use redis::Script;

use super::gcra::{Decision, Limit};
use crate::store::redis::{RedisLink, StoreError};

/// KEYS[1]: the key. ARGV[1]: the longest delay admitted (µs). Then per limit: its
/// field, interval and tolerance (µs). Returns {allowed, wait, tightest (0-based),
/// remaining, reset}; times in µs.
const DECIDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_delay = tonumber(ARGV[1])
local n = (#ARGV - 1) / 3
local tats = {}
local wait = 0
for i = 1, n do
  local v = redis.call('HGET', KEYS[1], ARGV[3 * i - 1])
  local tat = 0
  if v then
    tat = tonumber(v)
    if not tat then return redis.error_reply('TURNPIKE the state at ' .. KEYS[1] .. ' is not a number') end
  end
  tats[i] = tat
  local next = math.max(tat, now) + tonumber(ARGV[3 * i])
  wait = math.max(wait, next - (now + tonumber(ARGV[3 * i + 1])))
end
local allowed = 0
if wait <= max_delay then
  allowed = 1
  local at = now + wait
  local ttl = 0
  for i = 1, n do
    tats[i] = math.max(tats[i], at) + tonumber(ARGV[3 * i])
    redis.call('HSET', KEYS[1], ARGV[3 * i - 1], string.format('%.0f', tats[i]))
    ttl = math.max(ttl, tats[i] - now)
  end
  redis.call('PEXPIRE', KEYS[1], math.floor(ttl / 1000) + 1)
end
local best, room, reset = 0, -1, 0
for i = 1, n do
  local used = math.max(tats[i] - now, 0)
  local r = math.floor(math.max(tonumber(ARGV[3 * i + 1]) - used, 0) / tonumber(ARGV[3 * i]))
  if room < 0 or r < room then best, room, reset = i - 1, r, used end
end
return {allowed, wait, best, math.max(room, 0), reset}
"#;

/// KEYS[1]: the key. ARGV[1]: tokens wanted; ARGV[2]: tokens given back (a finished
/// lease's rest). Then per limit: field, interval, tolerance (µs). Returns {granted,
/// wait (when none is granted), tightest, remaining, reset}.
const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local want = tonumber(ARGV[1])
local back = tonumber(ARGV[2])
local n = (#ARGV - 2) / 3
local tats = {}
local grant = want
local wait = 0
for i = 1, n do
  local f, iv, tol = ARGV[3 * i], tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local v = redis.call('HGET', KEYS[1], f)
  local tat = 0
  if v then
    tat = tonumber(v)
    if not tat then return redis.error_reply('TURNPIKE the state at ' .. KEYS[1] .. ' is not a number') end
  end
  if back > 0 then tat = math.max(now, tat - back * iv) end
  tats[i] = tat
  local room = math.floor((now + tol - math.max(tat, now)) / iv)
  if room < grant then grant = math.max(room, 0) end
  wait = math.max(wait, math.max(tat, now) + iv - (now + tol))
end
local ttl = 0
for i = 1, n do
  local iv = tonumber(ARGV[3 * i + 1])
  if grant > 0 then tats[i] = math.max(tats[i], now) + grant * iv end
  if grant > 0 or back > 0 then
    redis.call('HSET', KEYS[1], ARGV[3 * i], string.format('%.0f', tats[i]))
  end
  ttl = math.max(ttl, tats[i] - now)
end
if (grant > 0 or back > 0) and ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], math.floor(ttl / 1000) + 1)
end
local best, room, reset = 0, -1, 0
for i = 1, n do
  local used = math.max(tats[i] - now, 0)
  local r = math.floor(math.max(tonumber(ARGV[3 * i + 2]) - used, 0) / tonumber(ARGV[3 * i + 1]))
  if room < 0 or r < room then best, room, reset = i - 1, r, used end
end
return {grant, math.max(wait, 0), best, math.max(room, 0), reset}
"#;

static DECIDE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DECIDE));
static LEASE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LEASE));

/// The script arguments of one limit list: field, interval and tolerance, in µs.
pub(super) fn args(limits: &[Limit]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(limits.len() * 3);
    for l in limits {
        let iv = (l.interval() / 1000).max(1);
        out.push(iv.to_string().into_bytes());
        out.push(iv.to_string().into_bytes());
        out.push(iv.saturating_mul(l.burst.max(1)).to_string().into_bytes());
    }
    out
}

fn decision(allowed: bool, r: (i64, i64, i64, i64, i64)) -> Decision {
    let us = |v: i64| (v.max(0) as u64).saturating_mul(1000);
    Decision {
        allowed,
        wait: us(r.1),
        tightest: r.2.max(0) as usize,
        remaining: r.3.max(0) as u64,
        reset: us(r.4),
    }
}

/// Decides one request in Redis (see the module docs).
pub(super) async fn decide(
    link: &Arc<RedisLink>,
    key: &[u8],
    args: &[Vec<u8>],
    max_delay_ns: u64,
) -> Result<Decision, StoreError> {
    let max = (max_delay_ns / 1000).to_string();
    let mut all: Vec<&[u8]> = Vec::with_capacity(args.len() + 1);
    all.push(max.as_bytes());
    all.extend(args.iter().map(Vec::as_slice));
    let r: (i64, i64, i64, i64, i64) = link.eval(&DECIDE_SCRIPT, &[key], &all).await?;
    Ok(decision(r.0 == 1, r))
}

/// Takes up to `want` admissions (giving `back` ones back); the decision's `remaining`
/// counts what the bucket still holds after the lease.
async fn lease(
    link: &Arc<RedisLink>,
    key: &[u8],
    args: &[Vec<u8>],
    want: u64,
    back: u64,
) -> Result<(u64, Decision), StoreError> {
    let (w, b) = (want.to_string(), back.to_string());
    let mut all: Vec<&[u8]> = Vec::with_capacity(args.len() + 2);
    all.push(w.as_bytes());
    all.push(b.as_bytes());
    all.extend(args.iter().map(Vec::as_slice));
    let r: (i64, i64, i64, i64, i64) = link.eval(&LEASE_SCRIPT, &[key], &all).await?;
    let granted = r.0.max(0) as u64;
    Ok((granted, decision(granted > 0, r)))
}

#[derive(Debug)]
struct Lease {
    /// Redis refused this key until `until`: refuse here too, without asking.
    refused: bool,
    left: u64,
    /// On the limiter's clock (ns).
    until: u64,
    remaining: u64,
    reset: u64,
    tightest: usize,
}

const SHARDS: usize = 16;

type Shard = Mutex<HashMap<u64, Lease>>;

/// The leases of one batching policy, by key.
#[derive(Debug)]
pub(super) struct Leases {
    tokens: u64,
    interval: u64,
    per_shard: usize,
    shards: Box<[Shard]>,
}

impl Leases {
    pub(super) fn new(tokens: u64, interval_ns: u64, max_keys: usize) -> Self {
        Self {
            tokens: tokens.max(1),
            interval: interval_ns.max(1),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, key: u64) -> &Shard {
        &self.shards[(key as usize) % SHARDS]
    }

    /// Admits from a live lease of `key`, or says what a new lease must give back.
    fn spend(&self, key: u64, now: u64) -> Result<Decision, u64> {
        let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&key) {
            Some(l) if now < l.until && l.left > 0 => {
                l.left -= 1;
                Ok(Decision {
                    allowed: true,
                    tightest: l.tightest,
                    remaining: l.remaining + l.left,
                    reset: l.reset,
                    wait: 0,
                })
            }
            Some(l) if now < l.until && l.refused => Ok(Decision {
                allowed: false,
                tightest: l.tightest,
                remaining: 0,
                reset: l.reset,
                wait: l.until - now,
            }),
            Some(l) if now >= l.until => {
                let back = l.left;
                map.remove(&key);
                Err(back)
            }
            _ => Err(0),
        }
    }

    fn keep(&self, key: u64, now: u64, left: u64, d: &Decision) {
        let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.per_shard && !map.contains_key(&key) {
            // What an evicted lease held is spent (an error towards refusing only).
            map.retain(|_, l| now < l.until && l.left > 0);
            if map.len() >= self.per_shard {
                return;
            }
        }
        let l = map.entry(key).or_insert(Lease {
            refused: false,
            left: 0,
            until: now + self.interval,
            remaining: 0,
            reset: 0,
            tightest: 0,
        });
        l.refused = false;
        l.left += left;
        l.until = now + self.interval;
        l.remaining = d.remaining;
        l.reset = d.reset;
        l.tightest = d.tightest;
    }

    /// Decides one request at `now` of the key whose local hash is `key`: from its
    /// lease, or from a new one taken at the Redis key `redis_key()` (made only then).
    pub(super) async fn decide(
        &self,
        link: &Arc<RedisLink>,
        key: u64,
        redis_key: impl FnOnce() -> String,
        args: &[Vec<u8>],
        now: u64,
    ) -> Result<Decision, StoreError> {
        let back = match self.spend(key, now) {
            Ok(d) => return Ok(d),
            Err(back) => back,
        };
        let rk = redis_key();
        let (granted, mut d) = match lease(link, rk.as_bytes(), args, self.tokens, back).await {
            Ok(r) => r,
            Err(e) => {
                if back > 0 {
                    // Not given back: keep it for when Redis answers again.
                    self.keep(
                        key,
                        now,
                        back,
                        &Decision {
                            allowed: true,
                            tightest: 0,
                            remaining: 0,
                            reset: 0,
                            wait: 0,
                        },
                    );
                }
                return Err(e);
            }
        };
        if granted == 0 {
            // Refused: so is every request of this key here until a token is due (at
            // most one interval), without asking Redis again.
            let until = now + d.wait.clamp(1, self.interval);
            let mut map = self.shard(key).lock().unwrap_or_else(|e| e.into_inner());
            if map.len() < self.per_shard || map.contains_key(&key) {
                map.insert(
                    key,
                    Lease {
                        refused: true,
                        left: 0,
                        until,
                        remaining: 0,
                        reset: d.reset,
                        tightest: d.tightest,
                    },
                );
            }
            return Ok(d);
        }
        self.keep(key, now, granted - 1, &d);
        d.remaining += granted - 1;
        Ok(d)
    }
}
