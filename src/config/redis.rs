//! `redis:` (the connection every Redis-backed feature shares) and `plans:` (the limits
//! a consumer's plan adds to `rate_limit`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::units::Dur;
use super::Problems;

/// `redis:`: one server (`url`), a Redis Cluster (`cluster`) or a Sentinel-managed
/// primary (`sentinel`); exactly one of the three.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Redis Cluster, from any of its nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSpec>,
    /// A primary found through Redis Sentinel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelSpec>,
    /// ACL user (overrides the URL's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password (overrides the URL's; best from `${ENV}` or `${file:...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Trust for `rediss://`: a CA bundle instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsSpec>,
    /// The deadline of one decision (connecting included): past it, the feature's
    /// failure rule applies.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// The deadline of one connection attempt (made in the background).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    /// Prefix of every key turnpike writes (so one Redis can serve several gateways).
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// When Redis is given up on for a while.
    #[serde(default)]
    pub breaker: RedisBreakerSpec,
}

/// `redis.cluster`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// `redis://host:port` (or `rediss://`) of some nodes; the rest are discovered.
    pub nodes: Vec<String>,
}

/// `redis.sentinel`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SentinelSpec {
    /// The monitored primary's name (`sentinel monitor NAME ...`).
    pub master: String,
    /// `redis://host:port` of the sentinels.
    pub nodes: Vec<String>,
    /// The database on the primary.
    #[serde(default)]
    pub db: i64,
}

/// `redis.tls`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsSpec {
    /// PEM file of the CAs that sign the server's certificate.
    pub ca: String,
}

/// `redis.breaker`: after `failures` consecutive failed calls (unreachable, reset, or
/// slower than `timeout`), Redis is not asked for `open_for`; then one call probes it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisBreakerSpec {
    /// Consecutive failures that open the breaker.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// How long it stays open before a probe.
    #[serde(default = "default_open_for")]
    pub open_for: Dur,
}

impl Default for RedisBreakerSpec {
    fn default() -> Self {
        Self {
            failures: default_failures(),
            open_for: default_open_for(),
        }
    }
}

fn default_timeout() -> Dur {
    Dur(std::time::Duration::from_millis(50))
}
fn default_connect_timeout() -> Dur {
    Dur::secs(1)
}
fn default_prefix() -> String {
    "turnpike:".into()
}
fn default_failures() -> u32 {
    3
}
fn default_open_for() -> Dur {
    Dur::secs(2)
}

fn url_ok(url: &str) -> bool {
    url.starts_with("redis://")
        || url.starts_with("rediss://")
        || url.starts_with("redis+unix://")
        || url.starts_with("unix://")
}

impl RedisSpec {
    /// Reports what is wrong with this `redis:` block, under `path`.
    pub fn check(&self, path: &str, p: &mut Problems) {
        let forms = [
            self.url.is_some(),
            self.cluster.is_some(),
            self.sentinel.is_some(),
        ];
        if forms.iter().filter(|f| **f).count() != 1 {
            p.push(
                path,
                "give exactly one of `url` (one server), `cluster` or `sentinel`",
            );
        }
        let mut urls: Vec<(String, &str)> = Vec::new();
        if let Some(u) = &self.url {
            urls.push((format!("{path}.url"), u));
        }
        if let Some(c) = &self.cluster {
            if c.nodes.is_empty() {
                p.push(format!("{path}.cluster.nodes"), "needs at least one node");
            }
            for (i, u) in c.nodes.iter().enumerate() {
                urls.push((format!("{path}.cluster.nodes[{i}]"), u));
            }
        }
        if let Some(s) = &self.sentinel {
            if s.nodes.is_empty() {
                p.push(
                    format!("{path}.sentinel.nodes"),
                    "needs at least one sentinel",
                );
            }
            if s.master.is_empty() {
                p.push(format!("{path}.sentinel.master"), "must not be empty");
            }
            for (i, u) in s.nodes.iter().enumerate() {
                urls.push((format!("{path}.sentinel.nodes[{i}]"), u));
            }
        }
        for (at, u) in urls {
            if !url_ok(u) {
                p.push(at, format!("`{u}` is not a Redis URL: write redis://host:port[/db] or rediss://host:port for TLS"));
            } else if ::redis::parse_redis_url(u).is_none() {
                p.push(at, format!("`{u}` is not a valid URL"));
            }
        }
        if self.timeout.0.is_zero() {
            p.push(format!("{path}.timeout"), "must be above 0");
        }
        if self.connect_timeout.0.is_zero() {
            p.push(format!("{path}.connect_timeout"), "must be above 0");
        }
        if self.breaker.failures == 0 {
            p.push(format!("{path}.breaker.failures"), "must be at least 1");
        }
        if self.breaker.open_for.0.is_zero() {
            p.push(format!("{path}.breaker.open_for"), "must be above 0");
        }
    }
}

/// One plan of `plans:`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// Limits (`N/second|minute|hour|day`) every `rate_limit` with `plans: true` adds
    /// for a consumer of this plan; empty adds none.
    #[serde(default)]
    pub limits: Vec<String>,
    /// The bucket of the plan's shortest-period limits (default: each limit's count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

/// `plans:` by name.
pub type Plans = BTreeMap<String, PlanSpec>;
