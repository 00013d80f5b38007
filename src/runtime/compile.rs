//! Compiling a configuration into a [`Snapshot`]: routers, pipelines, targets and
//! clusters. Every problem found (bad pattern, bad regex, unknown template variable) is
//! reported with its field path; nothing is started here, so `validate` and `explain`
//! compile exactly what `run` would.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use http::header::{HeaderName, HeaderValue};

use super::snapshot::{ListenerRoutes, ListenerSettings, RouteBinding, RouteSummary, Snapshot};
use crate::config::upstream::TimeoutsSpec;
use crate::config::validate::{parse_net, KeySource};
use crate::config::{ConfigErrors, GatewaySpec, LoadedConfig, Problems, RouteSpec};
use crate::http::forwarded::TrustedProxies;
use crate::pipeline::Pipeline;
use crate::policies::consumers::Consumers;
use crate::policies::PolicySpec;
use crate::policies::{BuildCx, Policy};
use crate::router::rewrite::Rewrite;
use crate::router::{Conditions, Entry, Pattern, RouterBuilder};
use crate::targets::forward::via_values;
use crate::targets::forward::{Fallback, FallbackAction};
use crate::targets::respond::Respond;
use crate::targets::split::Split;
use crate::targets::{Binding, Forward, HostHeader, ProxySettings, Target, Timeouts};
use crate::telemetry::metrics::Metrics;
use crate::tls::client::UpstreamTls;
use crate::tls::server::ServerTls;
use crate::upstream::dns::Resolve;
use crate::upstream::Cluster;

/// What compiling may reuse or create: counters, resolver, clusters of the previous
/// snapshot.
pub struct CompileEnv<'a> {
    /// Metric registries.
    pub metrics: &'a Arc<Metrics>,
    /// Name resolution for new clusters.
    pub resolver: &'a Arc<dyn Resolve>,
    /// Live clusters by name, from earlier snapshots.
    pub clusters: &'a HashMap<String, Weak<Cluster>>,
}

/// Compiles `config`. The snapshot has no access log yet and its clusters are not
/// started; the runtime does both when it activates the snapshot.
pub fn compile(
    config: Arc<LoadedConfig>,
    generation: u64,
    env: &CompileEnv<'_>,
) -> Result<Snapshot, ConfigErrors> {
    let spec = &config.spec;
    let mut p = Problems::default();
    let base = Some(config.base.as_path());
    let clusters = build_clusters(spec, env, base, &mut p);
    let key_files = std::cell::RefCell::new(Vec::new());
    let consumers = Arc::new(Consumers::build(
        &spec.consumers,
        &spec.server.consumer_headers,
        env.metrics,
        &mut p,
    ));
    // One connection per `redis:` block, found again by a reload that keeps it.
    let redis = spec.redis.as_ref().map(|r| {
        let id = format!("redis:{}", serde_json::to_string(r).unwrap_or_default());
        crate::policies::state::shared(id, || {
            crate::store::redis::RedisLink::new(r.clone(), base, env.metrics.clone())
        })
    });
    let settings = Arc::new(proxy_settings(spec));
    let messaging = super::messaging::Messaging::new(spec, env);
    let mut builders: Vec<RouterBuilder<RouteBinding>> = spec
        .listeners
        .iter()
        .map(|_| RouterBuilder::default())
        .collect();
    let mut routes = Vec::new();
    for (order, route) in spec.routes.iter().enumerate() {
        let path = format!("routes[{order}]");
        if let Some(summary) = compile_route(
            &path,
            order,
            route,
            spec,
            &clusters,
            &consumers,
            redis.as_ref(),
            base,
            &key_files,
            &settings,
            &messaging,
            env,
            &mut builders,
            &mut p,
        ) {
            routes.push(summary);
        }
    }
    let mut listeners = Vec::with_capacity(spec.listeners.len());
    for ((i, l), b) in spec.listeners.iter().enumerate().zip(builders) {
        let tls = match &l.tls {
            None => None,
            Some(t) => match ServerTls::build(t, base) {
                Ok(tls) => Some(Arc::new(tls)),
                Err(problems) => {
                    for (field, reason) in problems {
                        p.push(format!("listeners[{i}].tls.{field}"), reason);
                    }
                    None
                }
            },
        };
        listeners.push(ListenerRoutes {
            name: Arc::from(l.name.as_str()),
            router: b.build(),
            settings: Arc::new(listener_settings(l, tls)),
        });
    }
    let subscriptions = messaging.subscriptions(spec, &clusters, &settings, env, &mut p);
    if !p.is_empty() {
        return Err(p.into_errors(&config.locations));
    }
    let (brokers, outboxes) = messaging.into_parts();
    Ok(Snapshot {
        brokers,
        outboxes,
        subscriptions,
        generation,
        listeners,
        routes,
        clusters: clusters.into_values().collect(),
        settings,
        access_log: OnceLock::new(),
        unmatched: env.metrics.route("", ""),
        key_files: key_files.into_inner(),
        config,
    })
}

/// Compiles a listener's limits, timeouts and rules.
pub fn listener_settings(
    l: &crate::config::ListenerSpec,
    tls: Option<Arc<ServerTls>>,
) -> ListenerSettings {
    use crate::server::normalize::{EncodedSlashes, PathRules};
    let lim = &l.limits;
    ListenerSettings {
        accept_http10: l.http.accept_http10,
        max_uri: lim.max_uri.0 as usize,
        max_header_count: lim.max_header_count,
        max_header_line: lim.max_header_line.0 as usize,
        max_connections: lim.max_connections,
        max_requests_per_connection: lim.max_requests_per_connection as u64,
        underscores: l.http.underscores_in_headers,
        path_rules: PathRules {
            merge_slashes: l.http.merge_slashes,
            encoded_slashes: match l.http.encoded_slashes {
                crate::config::EncodedSlashPolicy::Reject => EncodedSlashes::Reject,
                crate::config::EncodedSlashPolicy::Keep => EncodedSlashes::Keep,
            },
            allow_semicolons: l.http.allow_semicolons,
        },
        first_byte: l.timeouts.first_byte.0,
        keep_alive: l.timeouts.keep_alive.0,
        body_idle: l.timeouts.body_idle.0,
        write_idle: l.timeouts.write_idle.0,
        tls,
        redirect_https: l.redirect_https.as_ref().map(|r| {
            (
                r.port,
                http::StatusCode::from_u16(r.status)
                    .unwrap_or(http::StatusCode::PERMANENT_REDIRECT),
            )
        }),
        max_header_bytes: lim.max_header_bytes.0 as usize,
        handshake: l.timeouts.handshake.0,
        builder_h2: Arc::new(crate::server::http2_builder(l)),
        header_read: l.timeouts.header_read.0,
    }
}

fn build_clusters(
    spec: &GatewaySpec,
    env: &CompileEnv<'_>,
    base: Option<&std::path::Path>,
    p: &mut Problems,
) -> HashMap<String, Arc<Cluster>> {
    let mut out = HashMap::new();
    for (name, up) in &spec.upstreams {
        let tls = match &up.tls {
            None => None,
            Some(t) => {
                let h2 = up.protocol == crate::config::UpstreamProtocol::H2;
                match UpstreamTls::build(t, h2, base) {
                    Ok(tls) => Some(tls),
                    Err((field, reason)) => {
                        p.push(format!("upstreams.{name}.tls.{field}"), reason);
                        continue;
                    }
                }
            }
        };
        // A cluster is reused across reloads when its spec is unchanged; TLS files are
        // read again only when the upstream's settings change.
        let reused = env
            .clusters
            .get(name)
            .and_then(Weak::upgrade)
            .filter(|c| c.serves(up));
        let cluster = reused.unwrap_or_else(|| {
            Cluster::with_tls(
                name,
                up,
                tls,
                env.resolver.clone(),
                env.metrics.upstream(name),
            )
        });
        out.insert(name.clone(), cluster);
    }
    out
}

/// The proxy settings of a configuration.
pub fn proxy_settings(spec: &GatewaySpec) -> ProxySettings {
    let s = &spec.server;
    ProxySettings {
        trusted: TrustedProxies::new(
            s.trusted_proxies
                .iter()
                .filter_map(|n| parse_net(n))
                .collect(),
        ),
        via: via_values(&s.via),
        pseudonym: s.via.clone(),
        max_hops: s.max_hops,
        request_id_header: HeaderName::from_bytes(s.request_id_header.as_bytes())
            .unwrap_or(HeaderName::from_static("x-request-id")),
        internal: Arc::new(crate::http::internal::InternalHeaders::new(
            &internal_headers(spec),
        )),
    }
}

/// `server.internal_headers`, plus every header a policy sets to tell an upstream who
/// called (`server.consumer_headers`, `jwt`'s `forward_claims`): a client-sent copy of
/// any of them is removed before routing on every route, whether or not the route
/// runs the policy that sets it.
fn internal_headers(spec: &GatewaySpec) -> Vec<String> {
    let s = &spec.server;
    let h = &s.consumer_headers;
    let mut names = s.internal_headers.clone();
    names.extend(
        [
            &h.id,
            &h.name,
            &h.groups,
            &h.plan,
            &h.anonymous,
            &h.authenticated_by,
        ]
        .into_iter()
        .filter(|n| !n.is_empty())
        .cloned(),
    );
    let lists = std::iter::once(&spec.defaults.policies)
        .chain(spec.listeners.iter().map(|l| &l.policies))
        .chain(spec.hosts.iter().map(|h| &h.policies))
        .chain(spec.routes.iter().map(|r| &r.policies));
    for list in lists {
        crate::policies::identity_header_names(list, &mut names);
    }
    if !h.metadata_prefix.is_empty() {
        names.push(format!("{}*", h.metadata_prefix));
    }
    names.sort();
    names.dedup();
    names
}

#[allow(clippy::too_many_arguments)]
fn compile_route(
    path: &str,
    order: usize,
    route: &RouteSpec,
    spec: &GatewaySpec,
    clusters: &HashMap<String, Arc<Cluster>>,
    consumers: &Arc<Consumers>,
    redis: Option<&Arc<crate::store::redis::RedisLink>>,
    base: Option<&std::path::Path>,
    key_files: &std::cell::RefCell<Vec<std::path::PathBuf>>,
    settings: &Arc<ProxySettings>,
    messaging: &super::messaging::Messaging,
    env: &CompileEnv<'_>,
    builders: &mut [RouterBuilder<RouteBinding>],
    p: &mut Problems,
) -> Option<RouteSummary> {
    let m = &route.matcher;
    let pattern = match (&m.path, &m.prefix) {
        (Some(text), _) => Pattern::path(text)
            .map_err(|e| p.push(format!("{path}.match.path"), e))
            .ok(),
        (None, Some(text)) => Pattern::prefix(text)
            .map_err(|e| p.push(format!("{path}.match.prefix"), e))
            .ok(),
        (None, None) => Pattern::prefix("/").ok(),
    }?;
    let params = pattern.param_names();
    let conditions = Arc::new(Conditions::compile(&format!("{path}.match"), m, p));
    let target = Arc::new(build_target(
        path, route, spec, clusters, settings, &params, messaging, env, base, p,
    )?);
    let stats = env.metrics.route(&route.name, "");
    let entry_params: Arc<[String]> = params.clone().into();
    let mut cache: Vec<(Vec<*const PolicySpec>, Arc<Pipeline>)> = Vec::new();
    let mut first_policies = None;
    for (li, listener) in spec.listeners.iter().enumerate() {
        if !route.listeners.is_empty() && !route.listeners.contains(&listener.name) {
            continue;
        }
        let hosts: Vec<Option<&str>> = if m.hosts.is_empty() {
            vec![None]
        } else {
            m.hosts.iter().map(|h| Some(h.as_str())).collect()
        };
        for host in hosts {
            let chosen = policy_list(route, spec, li, host);
            let key: Vec<*const PolicySpec> = chosen
                .iter()
                .map(|(_, s)| *s as *const PolicySpec)
                .collect();
            let pipeline = match cache.iter().find(|(k, _)| *k == key) {
                Some((_, pl)) => pl.clone(),
                None => {
                    let cx = BuildCx {
                        route: &route.name,
                        params: &params,
                        base,
                        consumers,
                        files: key_files,
                        plans: &spec.plans,
                        redis,
                    };
                    // A policy that did not build is always a reported problem: a route
                    // must never run without one of its policies (an auth bypass).
                    let policies: Vec<Policy> = chosen
                        .iter()
                        .filter_map(|(at, s)| {
                            let before = p.count();
                            let built = s.build(at, &cx, p);
                            if built.is_none() && p.count() == before {
                                p.push(at.to_string(), "this policy could not be built");
                            }
                            built
                        })
                        .collect();
                    first_policies.get_or_insert_with(|| {
                        chosen.iter().map(|(_, s)| label(s)).collect::<Vec<_>>()
                    });
                    let pl = Arc::new(Pipeline::new(policies, target.clone()));
                    cache.push((key, pl.clone()));
                    pl
                }
            };
            let entry = Arc::new(Entry {
                name: Arc::from(route.name.as_str()),
                order,
                conditions: conditions.clone(),
                params: entry_params.clone(),
                value: RouteBinding {
                    pipeline,
                    stats: stats.clone(),
                    max_body: route.max_body.map_or(listener.limits.max_body.0, |s| s.0),
                },
            });
            builders[li].insert(host, &pattern, entry);
        }
    }
    Some(summary(
        route,
        spec,
        first_policies.unwrap_or_default(),
        target.describe(),
        target.bindings(),
    ))
}

/// The ordered policies of a route on one listener and host pattern, each with its
/// config path: defaults, listener, host defaults, then the route's own; minus skips.
fn policy_list<'s>(
    route: &'s RouteSpec,
    spec: &'s GatewaySpec,
    listener: usize,
    host: Option<&str>,
) -> Vec<(String, &'s PolicySpec)> {
    let skipped = |s: &PolicySpec| {
        route
            .skip_policies
            .iter()
            .any(|k| k == s.kind() || Some(k.as_str()) == s.name())
    };
    let mut out = Vec::new();
    for (i, s) in spec.defaults.policies.iter().enumerate() {
        out.push((format!("defaults.policies[{i}]"), s));
    }
    for (i, s) in spec.listeners[listener].policies.iter().enumerate() {
        out.push((format!("listeners[{listener}].policies[{i}]"), s));
    }
    if let Some(h) = host {
        for (hi, hd) in spec.hosts.iter().enumerate() {
            if hd.hosts.iter().any(|x| x.eq_ignore_ascii_case(h)) {
                for (i, s) in hd.policies.iter().enumerate() {
                    out.push((format!("hosts[{hi}].policies[{i}]"), s));
                }
            }
        }
    }
    out.retain(|(_, s)| !skipped(s));
    let own = spec
        .routes
        .iter()
        .position(|r| std::ptr::eq(r, route))
        .unwrap_or(0);
    for (i, s) in route.policies.iter().enumerate() {
        out.push((format!("routes[{own}].policies[{i}]"), s));
    }
    out
}

fn label(s: &PolicySpec) -> String {
    match s.name() {
        Some(n) => format!("{}:{n}", s.kind()),
        None => s.kind().to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn build_target(
    path: &str,
    route: &RouteSpec,
    spec: &GatewaySpec,
    clusters: &HashMap<String, Arc<Cluster>>,
    settings: &Arc<ProxySettings>,
    params: &[String],
    messaging: &super::messaging::Messaging,
    env: &CompileEnv<'_>,
    base: Option<&std::path::Path>,
    p: &mut Problems,
) -> Option<Target> {
    if let Some(r) = &route.respond {
        return Respond::build(&format!("{path}.respond"), r, params, p).map(Target::Respond);
    }
    if let Some(pb) = &route.publish {
        return messaging.publish(&format!("{path}.publish"), pb, params, base, p);
    }
    let forward = Forward {
        rewrite: Rewrite::compile(
            &format!("{path}.rewrite"),
            route.rewrite.as_ref(),
            params,
            p,
        ),
        host_header: match route.host_header.as_str() {
            "preserve" => HostHeader::Preserve,
            "upstream" => HostHeader::Upstream,
            other => HostHeader::Fixed(HeaderValue::from_str(other).ok()?),
        },
        websocket: route.websocket,
        grpc_web: route.grpc_web,
        settings: settings.clone(),
        hedge: route.hedge,
        fallback: None,
    };
    let bind = |name: &str| -> Option<Binding> {
        let cluster = clusters.get(name)?.clone();
        Some(make_binding(
            &route.name,
            route.timeouts,
            cluster,
            spec,
            env,
        ))
    };
    if let Some(g) = &route.grpc {
        let calls = Forward::for_calls(settings.clone());
        return crate::targets::grpc::Grpc::build(
            &format!("{path}.grpc"),
            g,
            base,
            bind(&g.upstream)?,
            calls,
            p,
        )
        .map(Target::Grpc);
    }
    if let Some(c) = &route.compose {
        let calls = Forward::for_calls(settings.clone());
        return crate::targets::compose::Compose::build(
            &format!("{path}.compose"),
            &route.name,
            c,
            params,
            calls,
            &bind,
            env.metrics,
            p,
        )
        .map(Target::Compose);
    }
    let mut forward = forward;
    if let Some(f) = &route.fallback {
        let action = match (&f.respond, &f.upstream) {
            (Some(r), _) => FallbackAction::Respond(Respond::build(
                &format!("{path}.fallback.respond"),
                r,
                params,
                p,
            )?),
            (None, Some(up)) => FallbackAction::Upstream(bind(up)?),
            (None, None) => return None,
        };
        forward.fallback = Some(Fallback {
            on: f.on.iter().map(|o| o.0.clone()).collect(),
            action,
        });
    }
    if let Some(up) = &route.upstream {
        return Some(Target::Upstream {
            forward,
            binding: bind(up)?,
        });
    }
    let split = route.split.as_ref()?;
    let sides = split
        .to
        .iter()
        .map(|s| Some((bind(&s.upstream)?, s.weight)))
        .collect::<Option<Vec<_>>>()?;
    let sticky = split
        .sticky
        .as_deref()
        .and_then(|k| KeySource::parse(k).ok());
    Some(Target::Split {
        forward,
        split: Split::new(sides, sticky),
    })
}

/// How route (or subscription) `owner` calls `cluster`: its timeouts, first from
/// `timeouts`, then the upstream's, then the defaults'.
pub(super) fn make_binding(
    owner: &str,
    timeouts: TimeoutsSpec,
    cluster: Arc<Cluster>,
    spec: &GatewaySpec,
    env: &CompileEnv<'_>,
) -> Binding {
    let t = timeouts
        .or(cluster.spec().timeouts)
        .or(spec.defaults.timeouts)
        .or(TimeoutsSpec::default());
    let d = Timeouts::DEFAULT;
    let timeouts = Timeouts {
        connect: t.connect.map_or(d.connect, |x| x.0),
        request: t.request.map_or(d.request, |x| x.0),
        idle: t.idle.map_or(d.idle, |x| x.0),
        request_idle: t.idle.map(|x| x.0),
    };
    let ms = timeouts.request.as_millis() as u64;
    let stats = env.metrics.route(owner, &cluster.name);
    Binding {
        cluster,
        timeouts,
        deadline_values: [
            HeaderValue::from(ms),
            HeaderValue::from(ms.saturating_sub(1)),
        ],
        stats,
    }
}

fn summary(
    route: &RouteSpec,
    spec: &GatewaySpec,
    policies: Vec<String>,
    target: String,
    bindings: Vec<String>,
) -> RouteSummary {
    let m = &route.matcher;
    let listeners = if route.listeners.is_empty() {
        spec.listeners.iter().map(|l| l.name.clone()).collect()
    } else {
        route.listeners.clone()
    };
    let path = match (&m.path, &m.prefix) {
        (Some(x), _) => format!("path {x}"),
        (None, Some(x)) => format!("prefix {x}"),
        (None, None) => "prefix /".into(),
    };
    let describe = |kind: &str, v: &crate::config::ValueMatchSpec| {
        let test = match (&v.exact, &v.regex, v.present) {
            (Some(e), _, _) => format!("= {e:?}"),
            (_, Some(r), _) => format!("~ /{r}/"),
            (_, _, Some(true)) => "present".into(),
            _ => "absent".into(),
        };
        format!("{kind} {} {test}", v.name)
    };
    let conditions = m
        .headers
        .iter()
        .map(|h| describe("header", h))
        .chain(m.query.iter().map(|q| describe("query", q)))
        .collect();
    RouteSummary {
        name: route.name.clone(),
        listeners,
        hosts: m.hosts.clone(),
        path,
        methods: m.methods.clone(),
        conditions,
        policies,
        target,
        bindings,
    }
}

/// Compiles `config` without starting anything: what `turnpike validate` runs.
pub fn check(config: LoadedConfig) -> Result<(), ConfigErrors> {
    let metrics = Arc::new(Metrics::default());
    let resolver: Arc<dyn Resolve> = Arc::new(crate::upstream::dns::SystemResolver);
    let env = CompileEnv {
        metrics: &metrics,
        resolver: &resolver,
        clusters: &HashMap::new(),
    };
    compile(Arc::new(config), 1, &env).map(|_| ())
}
