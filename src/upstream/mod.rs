//! Upstreams at run time: clusters of endpoints, how one is picked, and the pooled
//! connections to each.
//!
//! A cluster is long-lived state: the runtime keeps it across reloads while its spec
//! (timeouts aside) stays the same, so pools, in-flight counts and DNS refresh survive.
//! Its endpoint set is immutable and swapped whole when DNS answers change; requests read
//! it without a lock.

pub mod balancer;
pub mod dns;
pub mod h1;
pub mod hash;
pub mod pool;

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
    /// Requests in flight now.
    pub in_flight: AtomicUsize,
    /// Keep-alive connections.
    pub pool: Arc<Pool>,
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
}

/// The endpoints of a cluster at one moment, with their balancing table.
pub struct EndpointSet {
    /// The endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
}

struct Source {
    host: String,
    port: u16,
    weight: u32,
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
                    ip,
                })
            })
            .collect();
        let cluster = Arc::new(Self {
            name: Arc::from(name),
            stats,
            spec: spec.clone(),
            sources,
            set: ArcSwap::from_pointee(EndpointSet {
                endpoints: Vec::new(),
                balancer: Balancer::build(&spec.balancer, &[], &[]),
            }),
            resolved: Mutex::new(HashMap::new()),
            resolver,
            refresh: Mutex::new(None),
            tls,
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
        let set = self.set.load();
        let eps = &set.endpoints;
        let i = set
            .balancer
            .pick(input, &|i| eps[i].in_flight.load(Relaxed))?;
        let ep = eps.get(i)?.clone();
        ep.in_flight.fetch_add(1, Relaxed);
        Some(InFlight(ep))
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
                    .find(|e| e.addr == addr && e.weight == s.weight);
                endpoints.push(kept.cloned().unwrap_or_else(|| {
                    Arc::new(Endpoint {
                        addr,
                        host: Arc::from(format!("{}:{}", host_for_header(&s.host), s.port)),
                        weight: s.weight,
                        in_flight: AtomicUsize::new(0),
                        pool: Pool::new(addr, config.clone(), self.stats.clone()),
                    })
                }));
            }
        }
        let ids: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let balancer = Balancer::build(&self.spec.balancer, &ids, &weights);
        self.set.store(Arc::new(EndpointSet {
            endpoints,
            balancer,
        }));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(task) = self.refresh.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }
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
        });
        assert!(!c.serves(&a));
    }
}
