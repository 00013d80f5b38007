//! Upstreams at run time: clusters of endpoints, how one is picked, and the pooled
//! connections to each.
//!
//! A cluster is long-lived state: the runtime keeps it across reloads while its spec
//! (timeouts aside) stays the same, so pools, in-flight counts and DNS refresh survive.
//! Its endpoint set is immutable and swapped whole when DNS answers change; requests read
//! it without a lock.

pub mod balancer;
pub mod breaker;
pub mod dns;
pub mod h1;
pub mod hash;
pub mod health;
pub mod pool;
pub mod retry;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::upstream::{TimeoutsSpec, UpstreamProtocol, UpstreamSpec};
use crate::config::validate::split_host_port;
use crate::telemetry::metrics::UpstreamStats;
use balancer::{Balancer, PickInput};
use dns::Resolve;
use pool::{Pool, PoolConfig};

/// One endpoint: an address with its weight, load and connection pool.
pub struct Endpoint {
    /// The address connected to.
    pub addr: SocketAddr,
    /// The address as configured (`users.internal:80`), for `host_header: upstream`.
    pub host: Arc<str>,
    /// Relative share of traffic.
    pub weight: u32,
    /// The failover level (0 first).
    pub priority: u32,
    /// Requests in flight now.
    pub in_flight: AtomicUsize,
    /// Keep-alive connections.
    pub pool: Arc<Pool>,
    /// Active-check verdict and outlier ejection.
    pub health: health::Health,
}

/// Counts a request against an endpoint until dropped.
pub struct InFlight(pub Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// An endpoint lent to one exchange: its in-flight count, held until the response body
/// ends (an HTTP/1.1 body gives its connection back to the pool itself).
pub struct Lease {
    /// Released when the lease is dropped.
    pub in_flight: InFlight,
    /// The request's slot under the upstream's `limits`.
    pub permit: Option<retry::Slot>,
}

/// The endpoints of one failover level, with their balancing table.
struct Level {
    /// Indices into [`EndpointSet::endpoints`].
    members: Box<[usize]>,
    balancer: Balancer,
}

/// The endpoints of a cluster at one moment, with their balancing tables (one per
/// priority level, lowest first).
pub struct EndpointSet {
    /// The endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    levels: Vec<Level>,
}

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// The cluster has no endpoints (DNS gave nothing yet).
    NoEndpoint,
    /// Every endpoint fails its health checks or is ejected.
    NoHealthy,
}

/// Envoy's overprovisioning factor: a level keeps all its traffic while at least
/// 1/1.4 (~71%) of its endpoints are healthy.
pub const OVERPROVISIONING: f64 = 1.4;

/// The resilience settings of a cluster, compiled.
pub struct Resilience {
    /// The circuit breaker.
    pub breaker: Option<Arc<breaker::Breaker>>,
    /// In-flight and pending caps.
    pub limits: Option<retry::Limits>,
    /// Retries.
    pub retry: Option<retry::RetryPolicy>,
    /// The cap on retries and hedges (`retry.budget`, or the default 20% + 10/s).
    pub budget: retry::Budget,
    /// Outlier ejection.
    pub passive: Option<crate::config::PassiveHealthSpec>,
    /// Active checks.
    pub probe: Option<Arc<health::Probe>>,
    /// The header carrying the time budget to HTTP endpoints.
    pub deadline_header: Option<http::HeaderName>,
}

impl Resilience {
    fn new(spec: &UpstreamSpec, stats: &Arc<UpstreamStats>) -> Self {
        let hc = spec.health_check.as_ref();
        Self {
            breaker: spec
                .circuit_breaker
                .as_ref()
                .map(|b| breaker::Breaker::new(b, stats.clone())),
            limits: spec.limits.as_ref().and_then(retry::Limits::new),
            retry: spec.retry.as_ref().map(retry::RetryPolicy::new),
            budget: retry::Budget::new(&spec.retry.as_ref().map(|r| r.budget).unwrap_or_default()),
            passive: hc.and_then(|h| h.passive.clone()),
            probe: hc.and_then(|h| h.active.as_ref()).map(health::Probe::new),
            deadline_header: (!spec.deadline_header.is_empty())
                .then(|| http::HeaderName::from_bytes(spec.deadline_header.as_bytes()).ok())
                .flatten(),
        }
    }
}

struct Source {
    host: String,
    port: u16,
    weight: u32,
    priority: u32,
    ip: Option<IpAddr>,
}

/// A named cluster of endpoints.
pub struct Cluster {
    /// The upstream's name.
    pub name: Arc<str>,
    /// Its failure counters.
    pub stats: Arc<UpstreamStats>,
    spec: UpstreamSpec,
    sources: Vec<Source>,
    set: ArcSwap<EndpointSet>,
    resolved: Mutex<HashMap<String, Vec<SocketAddr>>>,
    resolver: Arc<dyn Resolve>,
    refresh: Mutex<Option<tokio::task::AbortHandle>>,
    tls: Option<crate::tls::client::UpstreamTls>,
    /// Health counts of the endpoints.
    pub census: Arc<health::Census>,
    /// Breaker, limits, retries, health checks.
    pub resilience: Resilience,
    /// Active-check tasks by endpoint, once started.
    checkers: Mutex<Option<HashMap<SocketAddr, tokio::task::AbortHandle>>>,
}

impl Cluster {
    /// A cluster for `spec`. Endpoints with IP addresses are ready at once; DNS names
    /// are added by [`Cluster::resolve_now`].
    pub fn new(
        name: &str,
        spec: &UpstreamSpec,
        resolver: Arc<dyn Resolve>,
        stats: Arc<UpstreamStats>,
    ) -> Arc<Self> {
        Self::with_tls(name, spec, None, resolver, stats)
    }

    /// A cluster whose endpoints are reached over TLS when `tls` is given.
    pub fn with_tls(
        name: &str,
        spec: &UpstreamSpec,
        tls: Option<crate::tls::client::UpstreamTls>,
        resolver: Arc<dyn Resolve>,
        stats: Arc<UpstreamStats>,
    ) -> Arc<Self> {
        let sources = spec
            .endpoints
            .iter()
            .filter_map(|e| {
                let (host, port) = split_host_port(&e.address).ok()?;
                let ip = host.parse().ok();
                Some(Source {
                    host,
                    port,
                    weight: e.weight,
                    priority: e.priority,
                    ip,
                })
            })
            .collect();
        let resilience = Resilience::new(spec, &stats);
        let stats_for_census = stats.clone();
        let cluster = Arc::new(Self {
            name: Arc::from(name),
            stats,
            spec: spec.clone(),
            sources,
            set: ArcSwap::from_pointee(EndpointSet {
                endpoints: Vec::new(),
                levels: Vec::new(),
            }),
            resolved: Mutex::new(HashMap::new()),
            resolver,
            refresh: Mutex::new(None),
            tls,
            census: Arc::new(health::Census::new(stats_for_census)),
            resilience,
            checkers: Mutex::new(None),
        });
        cluster.rebuild();
        cluster
    }

    /// Whether this cluster can serve `spec` unchanged (timeouts do not matter: they
    /// belong to the calls, not the cluster).
    pub fn serves(&self, spec: &UpstreamSpec) -> bool {
        let strip = |s: &UpstreamSpec| UpstreamSpec {
            timeouts: TimeoutsSpec::default(),
            ..s.clone()
        };
        strip(&self.spec) == strip(spec)
    }

    /// The budget of retries and hedges.
    pub fn budget(&self) -> &retry::Budget {
        &self.resilience.budget
    }

    /// The upstream spec.
    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// The protocol spoken to the endpoints.
    pub fn protocol(&self) -> UpstreamProtocol {
        self.spec.protocol
    }

    /// Whether some endpoints are DNS names.
    pub fn uses_dns(&self) -> bool {
        self.sources.iter().any(|s| s.ip.is_none())
    }

    /// The current endpoint set.
    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.set.load()
    }

    /// Picks an endpoint and counts the request against it.
    pub fn pick(&self, input: &dyn PickInput) -> Option<InFlight> {
        self.pick_avoiding(input, &[]).ok()
    }

    /// Picks an available endpoint, preferring one not in `avoid` (the endpoints a
    /// request already tried), and counts the request against it. Traffic goes to the
    /// lowest priority level with enough healthy endpoints, spilling over in proportion
    /// to the missing health ([`OVERPROVISIONING`], as Envoy does).
    pub fn pick_avoiding(
        &self,
        input: &dyn PickInput,
        avoid: &[SocketAddr],
    ) -> Result<InFlight, PickError> {
        let set = self.set.load();
        let eps = &set.endpoints;
        if eps.is_empty() {
            return Err(PickError::NoEndpoint);
        }
        let i = if set.levels.len() == 1 && avoid.is_empty() && !self.census.degraded() {
            let level = &set.levels[0];
            let j = level
                .balancer
                .pick(input, &|j| eps[level.members[j]].in_flight.load(Relaxed))
                .ok_or(PickError::NoEndpoint)?;
            level.members[j]
        } else {
            let now = health::now();
            match pick_degraded(&set, input, avoid, now) {
                Some(i) => i,
                None if !avoid.is_empty() => {
                    pick_degraded(&set, input, &[], now).ok_or(PickError::NoHealthy)?
                }
                None => return Err(PickError::NoHealthy),
            }
        };
        let ep = eps.get(i).ok_or(PickError::NoEndpoint)?.clone();
        ep.in_flight.fetch_add(1, Relaxed);
        Ok(InFlight(ep))
    }

    /// The cluster's state for `GET /upstreams`: every endpoint's health, ejection and
    /// load, the breaker, the limits and the resilience settings.
    pub fn state(&self) -> serde_json::Value {
        let now = health::now();
        let set = self.set.load();
        let endpoints: Vec<serde_json::Value> = set
            .endpoints
            .iter()
            .map(|e| {
                let h = e.health.view(now);
                serde_json::json!({
                    "address": e.addr.to_string(),
                    "host": &*e.host,
                    "weight": e.weight,
                    "priority": e.priority,
                    "available": e.health.healthy() && h.ejected_for_ms == 0,
                    "healthy": h.healthy,
                    "ejected_for_ms": h.ejected_for_ms,
                    "ejections_in_a_row": h.ejections,
                    "consecutive_failures": h.consecutive_failures,
                    "in_flight": e.in_flight.load(Relaxed),
                    "idle_connections": e.pool.idle_count(),
                })
            })
            .collect();
        let r = &self.resilience;
        let breaker = r.breaker.as_ref().map(|b| {
            let state = match b.state(now) {
                breaker::State::Closed => "closed",
                breaker::State::Open => "open",
                breaker::State::HalfOpen => "half_open",
            };
            serde_json::json!({"state": state, "open_for_ms": b.open_left(now)})
        });
        let limits = r.limits.as_ref().map(|l| {
            let (in_flight, waiting) = l.load();
            serde_json::json!({"in_flight": in_flight, "waiting": waiting})
        });
        serde_json::json!({
            "name": &*self.name,
            "protocol": self.spec.protocol,
            "endpoints": endpoints,
            "circuit_breaker": breaker,
            "limits": limits,
            "settings": {
                "health_check": self.spec.health_check,
                "circuit_breaker": self.spec.circuit_breaker,
                "limits": self.spec.limits,
                "retry": self.spec.retry,
            },
        })
    }

    /// Starts one active-check task per endpoint when `health_check.active` is set
    /// (once; endpoints added by DNS later get theirs when they appear).
    pub fn start_health_checks(self: &Arc<Self>) {
        if self.resilience.probe.is_none() {
            return;
        }
        if let Ok(mut slot) = self.checkers.lock() {
            if slot.is_none() {
                *slot = Some(HashMap::new());
            }
        }
        self.sync_checkers();
    }

    fn sync_checkers(&self) {
        let Some(probe) = &self.resilience.probe else {
            return;
        };
        let Ok(mut slot) = self.checkers.lock() else {
            return;
        };
        let Some(tasks) = slot.as_mut() else { return };
        let set = self.set.load();
        tasks.retain(|addr, task| {
            let keep = set.endpoints.iter().any(|e| e.addr == *addr);
            if !keep {
                task.abort();
            }
            keep
        });
        for ep in &set.endpoints {
            if tasks.contains_key(&ep.addr) {
                continue;
            }
            let task = tokio::spawn(probe.clone().run(Arc::downgrade(ep), self.name.clone()));
            tasks.insert(ep.addr, task.abort_handle());
        }
    }

    /// Reports one request's outcome on `ep` to outlier detection.
    pub fn report(&self, ep: &Endpoint, failed: bool) {
        let Some(passive) = &self.resilience.passive else {
            return;
        };
        // The clock is read on the failure path only.
        let now = if failed { health::now() } else { 0 };
        if ep.health.report(passive, now, failed) {
            self.stats.ejections.fetch_add(1, Relaxed);
            tracing::warn!(upstream = %self.name, endpoint = %ep.addr, "endpoint ejected: too many failures in a row");
        }
    }

    /// Resolves every DNS name now. A name that fails keeps its last known addresses.
    pub async fn resolve_now(&self) {
        let mut changed = false;
        for s in self.sources.iter().filter(|s| s.ip.is_none()) {
            match self.resolver.resolve(&s.host, s.port).await {
                Ok(mut addrs) => {
                    addrs.sort();
                    addrs.dedup();
                    let Ok(mut resolved) = self.resolved.lock() else {
                        return;
                    };
                    let key = format!("{}:{}", s.host, s.port);
                    if resolved.get(&key) != Some(&addrs) {
                        resolved.insert(key, addrs);
                        changed = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(upstream = %self.name, host = %s.host, error = %e, "DNS resolution failed; keeping the last known addresses");
                }
            }
        }
        if changed {
            self.rebuild();
        }
    }

    /// Starts re-resolving DNS names every `dns_refresh` (once; later calls do nothing).
    /// The task stops when the cluster is dropped.
    pub fn start_refresh(self: &Arc<Self>) {
        if !self.uses_dns() {
            return;
        }
        let Ok(mut slot) = self.refresh.lock() else {
            return;
        };
        if slot.is_some() {
            return;
        }
        let weak = Arc::downgrade(self);
        let every: Duration = self.spec.dns_refresh.0;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(cluster) = weak.upgrade() else { break };
                cluster.resolve_now().await;
            }
        });
        *slot = Some(task.abort_handle());
    }

    fn rebuild(&self) {
        let old = self.set.load();
        let resolved = self.resolved.lock().map(|r| r.clone()).unwrap_or_default();
        let base = PoolConfig {
            protocol: self.spec.protocol,
            tls: None,
            max_idle: self.spec.pool.max_idle,
            idle_timeout: self.spec.pool.idle_timeout.0,
        };
        let mut endpoints: Vec<Arc<Endpoint>> = Vec::new();
        for s in &self.sources {
            let mut config = base.clone();
            if let Some(tls) = &self.tls {
                // Never a plaintext fallback: an endpoint without a name to verify is
                // left out.
                let Some(name) = tls.name_for(&s.host) else {
                    tracing::error!(upstream = %self.name, host = %s.host, "no TLS server name for this endpoint");
                    continue;
                };
                config.tls = Some(Arc::new(pool::PoolTls {
                    tls: tls.clone(),
                    name,
                }));
            }
            let addrs = match s.ip {
                Some(ip) => vec![SocketAddr::new(ip, s.port)],
                None => resolved
                    .get(&format!("{}:{}", s.host, s.port))
                    .cloned()
                    .unwrap_or_default(),
            };
            for addr in addrs {
                if endpoints.iter().any(|e| e.addr == addr) {
                    continue;
                }
                let kept = old
                    .endpoints
                    .iter()
                    .find(|e| e.addr == addr && e.weight == s.weight && e.priority == s.priority);
                endpoints.push(kept.cloned().unwrap_or_else(|| {
                    Arc::new(Endpoint {
                        addr,
                        host: Arc::from(format!("{}:{}", host_for_header(&s.host), s.port)),
                        weight: s.weight,
                        priority: s.priority,
                        in_flight: AtomicUsize::new(0),
                        pool: Pool::new(addr, config.clone(), self.stats.clone()),
                        health: health::Health::new(self.census.clone()),
                    })
                }));
            }
        }
        for gone in old
            .endpoints
            .iter()
            .filter(|o| !endpoints.iter().any(|e| Arc::ptr_eq(e, o)))
        {
            gone.health.leave();
        }
        let mut priorities: Vec<u32> = endpoints.iter().map(|e| e.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        let levels = priorities
            .into_iter()
            .map(|p| {
                let members: Box<[usize]> = (0..endpoints.len())
                    .filter(|i| endpoints[*i].priority == p)
                    .collect();
                let ids: Vec<String> = members
                    .iter()
                    .map(|i| endpoints[*i].addr.to_string())
                    .collect();
                let weights: Vec<u32> = members.iter().map(|i| endpoints[*i].weight).collect();
                Level {
                    balancer: Balancer::build(&self.spec.balancer, &ids, &weights),
                    members,
                }
            })
            .collect();
        self.census.total.store(endpoints.len(), Relaxed);
        self.census.publish();
        self.set.store(Arc::new(EndpointSet { endpoints, levels }));
        self.sync_checkers();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(task) = self.refresh.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
        if let Some(tasks) = self.checkers.lock().ok().and_then(|mut t| t.take()) {
            for task in tasks.values() {
                task.abort();
            }
        }
    }
}

/// The degraded pick: priority levels by health, then an available endpoint of the
/// chosen level, not in `avoid`.
fn pick_degraded(
    set: &EndpointSet,
    input: &dyn PickInput,
    avoid: &[SocketAddr],
    now: u64,
) -> Option<usize> {
    let eps = &set.endpoints;
    let ok = |i: usize| eps[i].health.available(now) && !avoid.contains(&eps[i].addr);
    // Each level's health in percent, scaled by the overprovisioning factor.
    let mut health = [0u32; 10];
    let levels = set.levels.len().min(health.len());
    for (l, level) in set.levels.iter().take(levels).enumerate() {
        let up = level.members.iter().filter(|i| ok(**i)).count();
        let pct = (OVERPROVISIONING * 100.0 * up as f64 / level.members.len() as f64) as u32;
        health[l] = pct.min(100);
    }
    let sum: u32 = health[..levels].iter().sum();
    if sum == 0 {
        return None;
    }
    // The load of each level: as much as its health allows, the rest spills over; when
    // the levels together are below 100%, the load is in proportion to their health.
    let mut load = [0u32; 10];
    if sum >= 100 {
        let mut left = 100;
        for l in 0..levels {
            load[l] = health[l].min(left);
            left -= load[l];
        }
    } else {
        load[..levels].copy_from_slice(&health[..levels]);
    }
    let total: u32 = load[..levels].iter().sum();
    let mut r = fastrand::u32(..total.max(1));
    let mut chosen = 0;
    for (l, share) in load[..levels].iter().enumerate() {
        if r < *share {
            chosen = l;
            break;
        }
        r -= share;
    }
    let level = &set.levels[chosen];
    let n = level.members.len();
    let start = level
        .balancer
        .pick(input, &|j| eps[level.members[j]].in_flight.load(Relaxed))
        .unwrap_or(0);
    (0..n)
        .map(|k| level.members[(start + k) % n])
        .find(|i| ok(*i))
}

fn host_for_header(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::upstream::EndpointSpec;
    use std::io;
    use std::sync::Mutex as StdMutex;

    struct Table(StdMutex<Vec<SocketAddr>>);
    impl Resolve for Table {
        fn resolve<'a>(&'a self, _: &'a str, _: u16) -> dns::Resolving<'a> {
            let addrs = self.0.lock().unwrap().clone();
            Box::pin(async move {
                if addrs.is_empty() {
                    Err(io::Error::other("NXDOMAIN"))
                } else {
                    Ok(addrs)
                }
            })
        }
    }

    struct NoKey;
    impl PickInput for NoKey {
        fn key(&self, _: &crate::config::validate::KeySource) -> Option<u64> {
            None
        }
    }

    fn spec(endpoints: &[&str]) -> UpstreamSpec {
        let yaml = format!("endpoints: [{}]", endpoints.join(", "));
        serde_saphyr::from_str(&yaml).unwrap()
    }

    #[tokio::test]
    async fn dns_names_are_resolved_and_failures_keep_the_last_answer() {
        let table = Arc::new(Table(StdMutex::new(vec!["10.0.0.1:80".parse().unwrap()])));
        let c = Cluster::new(
            "u",
            &spec(&["users.internal:80", "10.9.9.9:81"]),
            table.clone(),
            Default::default(),
        );
        assert_eq!(c.endpoints().endpoints.len(), 1, "IPs are ready before DNS");
        c.resolve_now().await;
        let first: Vec<_> = c
            .endpoints()
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(first, ["10.0.0.1:80", "10.9.9.9:81"]);
        let kept = c.endpoints().endpoints[0].clone();

        *table.0.lock().unwrap() = vec![
            "10.0.0.1:80".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ];
        c.resolve_now().await;
        assert_eq!(c.endpoints().endpoints.len(), 3);
        assert!(
            Arc::ptr_eq(&kept, &c.endpoints().endpoints[0]),
            "unchanged endpoints keep their pool"
        );
        assert_eq!(&*c.endpoints().endpoints[0].host, "users.internal:80");

        table.0.lock().unwrap().clear();
        c.resolve_now().await;
        assert_eq!(
            c.endpoints().endpoints.len(),
            3,
            "a failed lookup keeps the last answer"
        );
    }

    #[tokio::test]
    async fn in_flight_is_released_on_drop() {
        let c = Cluster::new(
            "u",
            &spec(&["127.0.0.1:1"]),
            Arc::new(dns::SystemResolver),
            Default::default(),
        );
        let g = c.pick(&NoKey).unwrap();
        assert_eq!(g.0.in_flight.load(Relaxed), 1);
        drop(g);
        assert_eq!(c.endpoints().endpoints[0].in_flight.load(Relaxed), 0);
    }

    #[test]
    fn identity_ignores_timeouts() {
        let mut a = spec(&["127.0.0.1:1"]);
        let c = Cluster::new("u", &a, Arc::new(dns::SystemResolver), Default::default());
        a.timeouts.request = Some(crate::config::Dur::secs(3));
        assert!(c.serves(&a));
        a.endpoints.push(EndpointSpec {
            address: "127.0.0.1:2".into(),
            weight: 1,
            priority: 0,
        });
        assert!(!c.serves(&a));
    }
}
