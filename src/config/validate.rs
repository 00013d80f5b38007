//! Semantic checks of a parsed configuration: names, references between sections,
//! exactly-one rules, addresses. Each problem is recorded with its field path and the
//! walk goes on, so one run reports everything. Checks that need compiling (path
//! patterns, regexes, templates) run when the snapshot is built, with the same paths.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use http::header::HeaderName;
use http::Method;

use super::error::Problems;
use super::route::{MatchSpec, RouteSpec, ValueMatchSpec};
use super::spec::GatewaySpec;
use super::upstream::{BalancerSpec, TimeoutsSpec, UpstreamSpec};
use crate::policies::PolicySpec;

/// What a sticky split or a consistent hash reads from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// The client address.
    ClientIp,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Header(h) => write!(f, "header:{h}"),
            Self::Cookie(c) => write!(f, "cookie:{c}"),
            Self::ClientIp => f.write_str("client_ip"),
        }
    }
}

impl KeySource {
    /// Parses `header:NAME`, `cookie:NAME` or `client_ip`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "client_ip" {
            return Ok(Self::ClientIp);
        }
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::from_bytes(name.trim().as_bytes())
                .map(Self::Header)
                .map_err(|_| format!("`{name}` is not a valid header name"));
        }
        if let Some(name) = text.strip_prefix("cookie:") {
            let name = name.trim();
            if !name.is_empty() && name.bytes().all(is_token_byte) {
                return Ok(Self::Cookie(name.to_string()));
            }
            return Err(format!("`{name}` is not a valid cookie name"));
        }
        Err(format!(
            "`{text}` is not a key: use `header:NAME`, `cookie:NAME` or `client_ip`"
        ))
    }
}

/// Parses a bind address: `host:port`, `[v6]:port`, or `:port` (all interfaces).
pub fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else if let Some(port) = text.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        text.to_string()
    };
    full.parse().map_err(|_| {
        format!(
            "`{text}` is not a bind address: use `IP:PORT` such as `0.0.0.0:8080` or `[::]:8080`"
        )
    })
}

/// Splits an endpoint address into host and port.
pub fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let bad = || {
        format!("`{text}` is not an endpoint: use `host:port`, such as `10.0.0.5:8080` or `users.internal:80`")
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !host_ok || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// Checks a whole configuration; `Err` lists every problem found.
pub fn validate(spec: &GatewaySpec) -> Result<(), Problems> {
    let mut p = Problems::default();
    check_server(spec, &mut p);
    let listeners = check_listeners(spec, &mut p);
    for (name, up) in &spec.upstreams {
        check_upstream(&format!("upstreams.{name}"), name, up, &mut p);
    }
    check_timeouts("defaults.timeouts", &spec.defaults.timeouts, &mut p);
    if let Some(r) = &spec.redis {
        r.check("redis", &mut p);
    }
    check_plans(spec, &mut p);
    super::validate_brokers::check_brokers(&spec.brokers, &mut p);
    super::validate_brokers::check_subscriptions(
        &spec.subscriptions,
        &spec.brokers,
        &|u| spec.upstreams.contains_key(u),
        &mut p,
    );
    check_outboxes(spec, &mut p);
    check_policies("defaults.policies", &spec.defaults.policies, &mut p);
    for (i, h) in spec.hosts.iter().enumerate() {
        check_policies(&format!("hosts[{i}].policies"), &h.policies, &mut p);
        for (j, host) in h.hosts.iter().enumerate() {
            check_host_pattern(&format!("hosts[{i}].hosts[{j}]"), host, &mut p);
        }
    }
    let mut names = HashSet::new();
    for (i, route) in spec.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !names.insert(route.name.as_str()) {
            p.push(
                format!("{path}.name"),
                format!("duplicate route name `{}`", route.name),
            );
        }
        check_route(&path, route, spec, &listeners, &mut p);
    }
    if p.is_empty() {
        Ok(())
    } else {
        Err(p)
    }
}

/// Every plan's limits parse; a consumer's plan is one of them (when plans are given).
/// One outbox folder serves one broker: its records are relayed there.
fn check_outboxes(spec: &GatewaySpec, p: &mut Problems) {
    let mut seen: std::collections::HashMap<String, &str> = Default::default();
    for (i, r) in spec.routes.iter().enumerate() {
        let Some(pb) = &r.publish else { continue };
        let Some(o) = &pb.outbox else { continue };
        // `data/outbox`, `./data/outbox/` and `data//outbox` are one folder.
        let folder: std::path::PathBuf = std::path::Path::new(&o.path).components().collect();
        let folder = folder.to_string_lossy().into_owned();
        match seen.get(folder.as_str()) {
            Some(b) if *b != pb.broker => p.push(
                format!("routes[{i}].publish.outbox.path"),
                format!(
                    "this outbox already holds messages for broker `{b}`; one folder per broker"
                ),
            ),
            _ => {
                seen.insert(folder, &pb.broker);
            }
        }
    }
}

fn check_plans(spec: &GatewaySpec, p: &mut Problems) {
    for (name, plan) in &spec.plans {
        for (i, text) in plan.limits.iter().enumerate() {
            if let Err(e) = crate::policies::rate_limit::parse_limit(text) {
                p.push(format!("plans.{name}.limits[{i}]"), e);
            }
        }
        if plan.burst == Some(0) {
            p.push(format!("plans.{name}.burst"), "must be at least 1");
        }
    }
    if spec.plans.is_empty() {
        return;
    }
    for (i, c) in spec.consumers.iter().enumerate() {
        if let Some(plan) = &c.plan {
            if !spec.plans.contains_key(plan) {
                let known: Vec<&str> = spec.plans.keys().map(String::as_str).collect();
                p.push(
                    format!("consumers[{i}].plan"),
                    format!(
                        "no plan `{plan}` in `plans` (there are: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }
}

fn check_server(spec: &GatewaySpec, p: &mut Problems) {
    let s = &spec.server;
    if s.workers > 1024 {
        p.push("server.workers", "at most 1024 worker threads");
    }
    for (i, net) in s.trusted_proxies.iter().enumerate() {
        if parse_net(net).is_none() {
            p.push(
                format!("server.trusted_proxies[{i}]"),
                format!("`{net}` is not an IP address or CIDR network"),
            );
        }
    }
    if HeaderName::from_bytes(s.request_id_header.as_bytes()).is_err() {
        p.push("server.request_id_header", "not a valid header name");
    }
    if !s.via.bytes().all(is_token_byte) {
        p.push(
            "server.via",
            "the pseudonym must be a single token (letters, digits, `-`, `.`)",
        );
    }
    if s.max_hops == 0 {
        p.push("server.max_hops", "must be at least 1");
    }
    for (i, name) in s.internal_headers.iter().enumerate() {
        let bare = name.strip_suffix('*').unwrap_or(name);
        if bare.is_empty() || HeaderName::from_bytes(bare.as_bytes()).is_err() {
            p.push(
                format!("server.internal_headers[{i}]"),
                format!("`{name}` is not a header name (or a prefix ending in `*`)"),
            );
        }
    }
    if let Some(admin) = &spec.admin {
        if let Err(e) = parse_bind(&admin.address) {
            p.push("admin.address", e);
        }
    }
    if spec.access_log.output.trim().is_empty() {
        p.push("access_log.output", "use `stdout`, `stderr` or a file path");
    }
}

/// Parses `10.0.0.0/8` or a bare address (a /32 or /128 network).
pub fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}

fn check_listeners(spec: &GatewaySpec, p: &mut Problems) -> HashSet<String> {
    if spec.listeners.is_empty() {
        p.push("listeners", "at least one listener is needed");
    }
    let mut names = HashSet::new();
    let mut addrs = HashMap::new();
    let admin = spec
        .admin
        .as_ref()
        .and_then(|a| parse_bind(&a.address).ok());
    for (i, l) in spec.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        check_name(&format!("{path}.name"), &l.name, p);
        if !names.insert(l.name.clone()) {
            p.push(
                format!("{path}.name"),
                format!("duplicate listener name `{}`", l.name),
            );
        }
        match parse_bind(&l.address) {
            Ok(addr) => {
                if addr.port() != 0 {
                    if let Some(other) = addrs.insert(addr, i) {
                        p.push(
                            format!("{path}.address"),
                            format!("same address as listeners[{other}]"),
                        );
                    }
                    if admin == Some(addr) {
                        p.push(
                            format!("{path}.address"),
                            "same address as the admin listener",
                        );
                    }
                }
            }
            Err(e) => p.push(format!("{path}.address"), e),
        }
        check_policies(&format!("{path}.policies"), &l.policies, p);
        check_limits(&path, l, p);
        check_listener_tls(&path, l, p);
    }
    names
}

/// Limits must leave room for ordinary traffic and stay within what the HTTP stacks
/// can represent.
fn check_limits(path: &str, l: &crate::config::ListenerSpec, p: &mut Problems) {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    let lim = &l.limits;
    let mut range = |field: &str, value: u64, min: u64, max: u64, unit: &str| {
        if value < min || value > max {
            p.push(
                format!("{path}.limits.{field}"),
                format!("must be between {} and {}{unit}", show(min), show(max)),
            );
        }
    };
    range(
        "max_header_count",
        lim.max_header_count as u64,
        8,
        1000,
        " headers",
    );
    range("max_header_bytes", lim.max_header_bytes.0, 8 * KIB, MIB, "");
    range("max_header_line", lim.max_header_line.0, KIB, MIB, "");
    range("max_uri", lim.max_uri.0, 256, 64 * KIB - 2, "");
    range(
        "max_connections",
        lim.max_connections as u64,
        1,
        10_000_000,
        " connections",
    );
    range(
        "max_requests_per_connection",
        lim.max_requests_per_connection as u64,
        1,
        100_000_000,
        " requests",
    );
    range(
        "h2_max_concurrent_streams",
        lim.h2_max_concurrent_streams.into(),
        1,
        10_000,
        " streams",
    );
    // RFC 9113 §6.9.1: windows are at most 2^31 - 1; the initial one is 64 KiB - 1.
    range(
        "h2_stream_window",
        lim.h2_stream_window.0,
        64 * KIB - 1,
        (1 << 31) - 1,
        "",
    );
    range(
        "h2_connection_window",
        lim.h2_connection_window.0,
        64 * KIB - 1,
        (1 << 31) - 1,
        "",
    );
    range(
        "h2_max_send_buffer",
        lim.h2_max_send_buffer.0,
        16 * KIB,
        64 * MIB,
        "",
    );
    if lim.max_header_line.0 > lim.max_header_bytes.0 {
        p.push(
            format!("{path}.limits.max_header_line"),
            "must not exceed max_header_bytes",
        );
    }
    let t = &l.timeouts;
    for (field, d) in [
        ("header_read", t.header_read.0),
        ("first_byte", t.first_byte.0),
        ("handshake", t.handshake.0),
        ("keep_alive", t.keep_alive.0),
        ("body_idle", t.body_idle.0),
        ("write_idle", t.write_idle.0),
    ] {
        if d.is_zero() {
            p.push(
                format!("{path}.timeouts.{field}"),
                "must be more than 0 (every client wait is bounded)",
            );
        }
    }
}

fn check_listener_tls(path: &str, l: &crate::config::ListenerSpec, p: &mut Problems) {
    if let Some(r) = &l.redirect_https {
        if l.tls.is_some() {
            p.push(
                format!("{path}.redirect_https"),
                "a TLS listener cannot redirect to HTTPS: it is HTTPS",
            );
        }
        if !matches!(r.status, 301 | 302 | 307 | 308) {
            p.push(
                format!("{path}.redirect_https.status"),
                "must be 301, 302, 307 or 308",
            );
        }
        if r.port == 0 {
            p.push(
                format!("{path}.redirect_https.port"),
                "must be a port from 1 to 65535",
            );
        }
    }
    let Some(tls) = &l.tls else { return };
    let path = format!("{path}.tls");
    if tls.certificates.is_empty() {
        p.push(
            format!("{path}.certificates"),
            "at least one certificate is needed",
        );
    }
    if tls.alpn.is_empty() {
        p.push(
            format!("{path}.alpn"),
            "at least one protocol: h2, http/1.1",
        );
    }
    if let Some(a) = &tls.client_auth {
        check_client_auth(&format!("{path}.client_auth"), a, p);
    }
    if let Some(h) = &tls.hsts {
        if h.max_age.0.is_zero() && (h.include_subdomains || h.preload) {
            p.push(
                format!("{path}.hsts.max_age"),
                "must be more than 0 with include_subdomains or preload",
            );
        }
    }
    for (i, c) in tls.certificates.iter().enumerate() {
        let at = format!("{path}.certificates[{i}]");
        for (j, host) in c.hosts.iter().enumerate() {
            check_host_pattern(&format!("{at}.hosts[{j}]"), host, p);
        }
        if let Some(a) = &c.client_auth {
            check_client_auth(&format!("{at}.client_auth"), a, p);
        }
    }
}

fn check_client_auth(path: &str, a: &crate::config::ClientAuthSpec, p: &mut Problems) {
    if let Some(h) = &a.forward_header {
        if HeaderName::from_bytes(h.as_bytes()).is_err() {
            p.push(format!("{path}.forward_header"), "not a valid header name");
        }
    }
}

/// `1024` as `1KiB`, other numbers as they are.
fn show(n: u64) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{}MiB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{}KiB", n / 1024)
    } else {
        n.to_string()
    }
}

fn check_upstream(path: &str, name: &str, up: &UpstreamSpec, p: &mut Problems) {
    check_name(path, name, p);
    if up.protocol == crate::config::UpstreamProtocol::H2 && up.tls.is_none() {
        p.push(
            format!("{path}.protocol"),
            "`h2` is HTTP/2 over TLS: add `tls` (or use `h2c` for cleartext HTTP/2)",
        );
    }
    if up.protocol == crate::config::UpstreamProtocol::H2c && up.tls.is_some() {
        p.push(
            format!("{path}.protocol"),
            "`h2c` is cleartext: use `h2` with `tls`",
        );
    }
    if up.endpoints.is_empty() {
        p.push(
            format!("{path}.endpoints"),
            "at least one endpoint is needed",
        );
    }
    for (i, ep) in up.endpoints.iter().enumerate() {
        if let Err(e) = split_host_port(&ep.address) {
            p.push(format!("{path}.endpoints[{i}]"), e);
        }
        if ep.weight == 0 || ep.weight > 1000 {
            p.push(
                format!("{path}.endpoints[{i}].weight"),
                "must be between 1 and 1000",
            );
        }
    }
    if let BalancerSpec::ConsistentHash(h) = &up.balancer {
        if let Err(e) = KeySource::parse(&h.key) {
            p.push(format!("{path}.balancer.consistent_hash.key"), e);
        }
    }
    if up.dns_refresh.0.as_millis() < 100 {
        p.push(format!("{path}.dns_refresh"), "must be at least 100ms");
    }
    if up.pool.idle_timeout.0.is_zero() {
        p.push(format!("{path}.pool.idle_timeout"), "must be more than 0");
    }
    check_timeouts(&format!("{path}.timeouts"), &up.timeouts, p);
    super::validate_resilience::check_upstream(path, up, p);
}

/// Checks a `respond` block at `path`.
pub(super) fn check_respond(path: &str, resp: &super::RespondSpec, p: &mut Problems) {
    if !(200..=599).contains(&resp.status) {
        p.push(format!("{path}.status"), "must be between 200 and 599");
    }
    if resp.body.is_some() && resp.json.is_some() {
        p.push(path.to_string(), "give `body` or `json`, not both");
    }
    for name in resp.headers.keys() {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            p.push(format!("{path}.headers.{name}"), "not a valid header name");
        }
    }
}

fn check_timeouts(path: &str, t: &TimeoutsSpec, p: &mut Problems) {
    for (field, value) in [
        ("connect", t.connect),
        ("request", t.request),
        ("idle", t.idle),
    ] {
        if value.is_some_and(|d| d.0.is_zero()) {
            p.push(
                format!("{path}.{field}"),
                "must be more than 0: every outbound call is bounded",
            );
        }
    }
}

fn check_route(
    path: &str,
    r: &RouteSpec,
    spec: &GatewaySpec,
    listeners: &HashSet<String>,
    p: &mut Problems,
) {
    check_name(&format!("{path}.name"), &r.name, p);
    for (i, l) in r.listeners.iter().enumerate() {
        if !listeners.contains(l) {
            p.push(
                format!("{path}.listeners[{i}]"),
                format!("no listener named `{l}`"),
            );
        }
    }
    check_match(&format!("{path}.match"), &r.matcher, p);
    super::validate_resilience::check_route(path, r, spec, p);
    let targets = [
        r.upstream.is_some(),
        r.split.is_some(),
        r.respond.is_some(),
        r.compose.is_some(),
        r.grpc.is_some(),
        r.publish.is_some(),
    ];
    if targets.iter().filter(|t| **t).count() != 1 {
        p.push(
            path.to_string(),
            "a route needs exactly one target: `upstream`, `split`, `respond`, `compose`, `grpc` or `publish`",
        );
    }
    if let Some(pb) = &r.publish {
        super::validate_brokers::check_publish(&format!("{path}.publish"), pb, &spec.brokers, p);
        for (set, field) in [
            (r.websocket, "websocket"),
            (r.rewrite.is_some(), "rewrite"),
            (r.grpc_web, "grpc_web"),
        ] {
            if set {
                p.push(
                    format!("{path}.{field}"),
                    "not available on a `publish` route: it forwards nothing",
                );
            }
        }
    }
    if r.grpc_web {
        let h2 = |name: &str| {
            spec.upstreams.get(name).is_some_and(|u| {
                matches!(
                    u.protocol,
                    crate::config::upstream::UpstreamProtocol::H2c
                        | crate::config::upstream::UpstreamProtocol::H2
                )
            })
        };
        let ok = match (&r.upstream, &r.split) {
            (Some(u), _) => h2(u),
            (None, Some(s)) => s.to.iter().all(|t| h2(&t.upstream)),
            _ => false,
        };
        if !ok {
            p.push(
                format!("{path}.grpc_web"),
                "gRPC-Web is translated for a route that forwards to an `h2c` or `h2` upstream",
            );
        }
    }
    if let Some(g) = &r.grpc {
        super::grpc::check(
            &format!("{path}.grpc"),
            g,
            &|u| spec.upstreams.contains_key(u),
            p,
        );
        if r.websocket || r.rewrite.is_some() {
            p.push(
                path.to_string(),
                "a `grpc` route cannot set `websocket` or `rewrite`: its bindings give the paths",
            );
        }
    }
    if let Some(c) = &r.compose {
        let at = format!("{path}.compose");
        super::compose::check(&at, c, &|u| spec.upstreams.contains_key(u), p);
        for (set, field) in [(r.websocket, "websocket"), (r.rewrite.is_some(), "rewrite")] {
            if set {
                p.push(
                    format!("{path}.{field}"),
                    "not available on a `compose` route: each call has its own path",
                );
            }
        }
    }
    if let Some(up) = &r.upstream {
        if !spec.upstreams.contains_key(up) {
            p.push(
                format!("{path}.upstream"),
                format!("no upstream named `{up}`"),
            );
        }
    }
    if let Some(split) = &r.split {
        if split.to.is_empty() {
            p.push(
                format!("{path}.split.to"),
                "at least one upstream is needed",
            );
        }
        for (i, t) in split.to.iter().enumerate() {
            if !spec.upstreams.contains_key(&t.upstream) {
                p.push(
                    format!("{path}.split.to[{i}].upstream"),
                    format!("no upstream named `{}`", t.upstream),
                );
            }
            if t.weight > 10_000 {
                p.push(format!("{path}.split.to[{i}].weight"), "at most 10000");
            }
        }
        if !split.to.is_empty() && split.to.iter().all(|t| t.weight == 0) {
            p.push(
                format!("{path}.split.to"),
                "at least one weight must be more than 0",
            );
        }
        if let Some(key) = &split.sticky {
            if let Err(e) = KeySource::parse(key) {
                p.push(format!("{path}.split.sticky"), e);
            }
        }
    }
    if let Some(resp) = &r.respond {
        check_respond(&format!("{path}.respond"), resp, p);
        if r.websocket {
            p.push(
                format!("{path}.websocket"),
                "a `respond` route cannot upgrade to WebSocket",
            );
        }
    }
    if let Some(rw) = &r.rewrite {
        if rw.path.is_some() && (rw.strip_prefix.is_some() || rw.add_prefix.is_some()) {
            p.push(
                format!("{path}.rewrite"),
                "give `path`, or `strip_prefix`/`add_prefix`, not both",
            );
        }
        for (field, value) in [
            ("strip_prefix", &rw.strip_prefix),
            ("add_prefix", &rw.add_prefix),
            ("path", &rw.path),
        ] {
            if value.as_ref().is_some_and(|v| !v.starts_with('/')) {
                p.push(format!("{path}.rewrite.{field}"), "must start with `/`");
            }
        }
        if r.respond.is_some() {
            p.push(
                format!("{path}.rewrite"),
                "a `respond` route forwards nothing to rewrite",
            );
        }
    }
    match r.host_header.as_str() {
        "preserve" | "upstream" => {}
        other => {
            if other.is_empty() || http::uri::Authority::try_from(other).is_err() {
                p.push(
                    format!("{path}.host_header"),
                    "use `preserve`, `upstream` or a host name",
                );
            }
        }
    }
    check_timeouts(&format!("{path}.timeouts"), &r.timeouts, p);
    check_policies(&format!("{path}.policies"), &r.policies, p);
    check_skips(path, r, spec, p);
}

fn check_match(path: &str, m: &MatchSpec, p: &mut Problems) {
    for (i, host) in m.hosts.iter().enumerate() {
        check_host_pattern(&format!("{path}.hosts[{i}]"), host, p);
    }
    if m.path.is_some() && m.prefix.is_some() {
        p.push(path.to_string(), "give `path` or `prefix`, not both");
    }
    for (field, value) in [("path", &m.path), ("prefix", &m.prefix)] {
        if value.as_ref().is_some_and(|v| !v.starts_with('/')) {
            p.push(format!("{path}.{field}"), "must start with `/`");
        }
    }
    for (i, method) in m.methods.iter().enumerate() {
        let valid = Method::from_bytes(method.as_bytes()).is_ok()
            && method.bytes().all(|b| !b.is_ascii_lowercase());
        if !valid {
            p.push(
                format!("{path}.methods[{i}]"),
                format!("`{method}` is not a method (write it in capitals: GET, POST, ...)"),
            );
        }
    }
    for (i, h) in m.headers.iter().enumerate() {
        let at = format!("{path}.headers[{i}]");
        if HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            p.push(
                format!("{at}.name"),
                format!("`{}` is not a valid header name", h.name),
            );
        }
        check_value_match(&at, h, p);
    }
    for (i, q) in m.query.iter().enumerate() {
        let at = format!("{path}.query[{i}]");
        if q.name.is_empty() {
            p.push(format!("{at}.name"), "must not be empty");
        }
        check_value_match(&at, q, p);
    }
}

fn check_value_match(path: &str, m: &ValueMatchSpec, p: &mut Problems) {
    let given = [m.exact.is_some(), m.regex.is_some(), m.present.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        p.push(
            path.to_string(),
            "give exactly one of `exact`, `regex` or `present`",
        );
    }
}

/// Checks an exact (`api.example.com`) or wildcard (`*.example.com`) host pattern.
pub fn check_host_pattern(path: &str, host: &str, p: &mut Problems) {
    if host.contains(':') {
        p.push(
            path.to_string(),
            format!("`{host}`: hosts are matched without their port; write the name only"),
        );
        return;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !ok {
        p.push(
            path.to_string(),
            format!("`{host}` is not a host name or `*.domain` wildcard"),
        );
    }
}

fn check_policies(path: &str, policies: &[PolicySpec], p: &mut Problems) {
    let mut names = HashSet::new();
    for (i, policy) in policies.iter().enumerate() {
        if let Some(name) = policy.name() {
            if !names.insert(name) {
                p.push(
                    format!("{path}[{i}].name"),
                    format!("duplicate policy name `{name}`"),
                );
            }
        }
    }
}

fn check_skips(path: &str, r: &RouteSpec, spec: &GatewaySpec, p: &mut Problems) {
    let inherited: Vec<&PolicySpec> = spec
        .defaults
        .policies
        .iter()
        .chain(spec.listeners.iter().flat_map(|l| l.policies.iter()))
        .chain(spec.hosts.iter().flat_map(|h| h.policies.iter()))
        .collect();
    for (i, skip) in r.skip_policies.iter().enumerate() {
        let known = inherited
            .iter()
            .any(|pol| pol.kind() == skip || pol.name() == Some(skip.as_str()));
        if !known {
            p.push(
                format!("{path}.skip_policies[{i}]"),
                format!("no inherited policy has the name or type `{skip}`"),
            );
        }
    }
}

fn check_name(path: &str, name: &str, p: &mut Problems) {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        p.push(
            path.to_string(),
            format!("`{name}` is not a valid name: use letters, digits, `-`, `_` and `.`"),
        );
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sources() {
        assert_eq!(KeySource::parse("client_ip").unwrap(), KeySource::ClientIp);
        assert_eq!(
            KeySource::parse("header:X-User").unwrap(),
            KeySource::Header(HeaderName::from_static("x-user"))
        );
        assert_eq!(
            KeySource::parse("cookie:sid").unwrap(),
            KeySource::Cookie("sid".into())
        );
        assert!(KeySource::parse("cookie:").is_err());
        assert!(KeySource::parse("ip").unwrap_err().contains("header:NAME"));
    }

    #[test]
    fn bind_and_endpoint_addresses() {
        assert_eq!(parse_bind(":8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(parse_bind("[::1]:80").unwrap().to_string(), "[::1]:80");
        assert!(parse_bind("example.com:80").is_err());
        assert_eq!(
            split_host_port("users.internal:80").unwrap(),
            ("users.internal".into(), 80)
        );
        assert_eq!(split_host_port("[::1]:81").unwrap(), ("::1".into(), 81));
        assert!(split_host_port("users.internal").is_err());
        assert!(split_host_port("a b:80").is_err());
        assert!(split_host_port("x:0").is_err());
    }
}
