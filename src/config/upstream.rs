//! Upstreams: named clusters of endpoints, how to pick one, how to talk to it, and how
//! long to wait.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::resilience::{BreakerSpec, HealthCheckSpec, RetrySpec, UpstreamLimitsSpec};
use super::units::Dur;

/// A named cluster of endpoints.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Endpoints: `host:port` strings or `{address, weight}` maps. A host that is not an IP
    /// address is resolved through DNS, every `dns_refresh`.
    pub endpoints: Vec<EndpointSpec>,
    /// How an endpoint is picked for each request.
    #[serde(default)]
    pub balancer: BalancerSpec,
    /// The protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Timeouts of calls to this upstream.
    #[serde(default)]
    pub timeouts: TimeoutsSpec,
    /// How often DNS names are resolved again.
    #[serde(default = "default_dns_refresh")]
    pub dns_refresh: Dur,
    /// Keep-alive connection pool settings.
    #[serde(default)]
    pub pool: PoolSpec,
    /// TLS to the endpoints (required for `protocol: h2`).
    #[serde(default)]
    pub tls: Option<super::tls::UpstreamTlsSpec>,
    /// Active probes and passive outlier ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Stop calling the upstream while it fails most calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<BreakerSpec>,
    /// Caps on requests in flight and waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<UpstreamLimitsSpec>,
    /// Retries of failed calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    /// The header that tells an HTTP endpoint how many milliseconds the gateway will
    /// wait for its answer (`""`: not sent). gRPC requests get `grpc-timeout` as well.
    #[serde(default = "default_deadline_header")]
    pub deadline_header: String,
}

fn default_deadline_header() -> String {
    "x-turnpike-timeout-ms".into()
}

fn default_dns_refresh() -> Dur {
    Dur::secs(30)
}

/// One endpoint of an upstream.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EndpointSpec {
    /// `host:port`.
    pub address: String,
    /// Relative share of traffic (1..=1000).
    pub weight: u32,
    /// The failover level: traffic goes to the lowest level with enough healthy
    /// endpoints (0, the default, first).
    pub priority: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointMap {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    priority: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for EndpointSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EndpointSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`host:port` or a map with `address` and `weight`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EndpointSpec, E> {
                Ok(EndpointSpec {
                    address: v.to_string(),
                    weight: 1,
                    priority: 0,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointSpec, A::Error> {
                let m = EndpointMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EndpointSpec {
                    address: m.address,
                    weight: m.weight,
                    priority: m.priority,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The load-balancing algorithm of an upstream.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BalancerSpec {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// The less busy of two endpoints picked at random (weights respected).
    LeastRequest,
    /// A weighted random pick.
    Random,
    /// The same key always lands on the same endpoint, and few keys move when the set changes.
    ConsistentHash(HashSpec),
}

/// Settings of consistent hashing.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HashSpec {
    /// What to hash: `header:NAME`, `cookie:NAME` or `client_ip`.
    pub key: String,
    /// `ring` (Ketama-style) or `maglev`.
    #[serde(default)]
    pub algorithm: HashAlgorithm,
}

/// The consistent-hash table.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HashAlgorithm {
    /// A hash ring with virtual nodes.
    #[default]
    Ring,
    /// Google's Maglev lookup table: more even, a little more movement on change.
    Maglev,
}

/// The protocol spoken to an upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with pooled keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge, multiplexed.
    H2c,
    /// HTTP/2 over TLS (ALPN `h2`), multiplexed. Needs `tls`.
    H2,
}

/// Timeouts of an upstream call. Unset fields fall back: route, then upstream, then
/// `defaults.timeouts`, then the built-in values (1s, 15s, 30s).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsSpec {
    /// Opening a TCP connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<Dur>,
    /// From sending the request to receiving the response head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Dur>,
    /// Longest wait between two reads of a request or response body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Dur>,
}

impl TimeoutsSpec {
    /// Fills unset fields from `fallback`.
    pub fn or(self, fallback: TimeoutsSpec) -> TimeoutsSpec {
        TimeoutsSpec {
            connect: self.connect.or(fallback.connect),
            request: self.request.or(fallback.request),
            idle: self.idle.or(fallback.idle),
        }
    }
}

/// Keep-alive pool settings of an upstream.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSpec {
    /// Idle connections kept per endpoint.
    pub max_idle: usize,
    /// An idle connection older than this is closed instead of reused.
    pub idle_timeout: Dur,
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            max_idle: 256,
            idle_timeout: Dur::secs(60),
        }
    }
}
