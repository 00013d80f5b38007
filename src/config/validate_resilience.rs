//! Checks of the resilience settings: upstream `health_check`, `circuit_breaker`,
//! `limits`, `retry`, endpoint `priority`, and route `hedge` and `fallback`.

use http::header::HeaderName;

use super::resilience::{ProbeKind, RetryMethods, FALLBACK_ON};
use super::route::RouteSpec;
use super::spec::GatewaySpec;
use super::upstream::{UpstreamProtocol, UpstreamSpec};
use super::Problems;

/// The highest failover level.
pub(super) const MAX_PRIORITY: u32 = 9;

fn positive(p: &mut Problems, path: String, d: std::time::Duration) {
    if d.is_zero() {
        p.push(path, "must be more than 0");
    }
}

pub(super) fn check_upstream(path: &str, up: &UpstreamSpec, p: &mut Problems) {
    for (i, ep) in up.endpoints.iter().enumerate() {
        if ep.priority > MAX_PRIORITY {
            p.push(
                format!("{path}.endpoints[{i}].priority"),
                format!("must be between 0 and {MAX_PRIORITY}"),
            );
        }
    }
    if !up.deadline_header.is_empty()
        && HeaderName::from_bytes(up.deadline_header.as_bytes()).is_err()
    {
        p.push(format!("{path}.deadline_header"), "not a valid header name");
    }
    if let Some(hc) = &up.health_check {
        let hp = format!("{path}.health_check");
        if hc.active.is_none() && hc.passive.is_none() {
            p.push(hp.clone(), "give `active`, `passive` or both");
        }
        if let Some(a) = &hc.active {
            let ap = format!("{hp}.active");
            if a.interval.0 < std::time::Duration::from_millis(100) {
                p.push(format!("{ap}.interval"), "must be at least 100ms");
            }
            positive(p, format!("{ap}.timeout"), a.timeout.0);
            for (field, v) in [
                ("healthy_after", a.healthy_after),
                ("unhealthy_after", a.unhealthy_after),
            ] {
                if !(1..=100).contains(&v) {
                    p.push(format!("{ap}.{field}"), "must be between 1 and 100");
                }
            }
            match a.kind {
                ProbeKind::Http => {
                    if !a.path.starts_with('/') {
                        p.push(format!("{ap}.path"), "must start with `/`");
                    }
                    if http::Method::from_bytes(a.method.as_bytes()).is_err() {
                        p.push(format!("{ap}.method"), "not a valid method");
                    }
                    if a.expect.is_empty() {
                        p.push(format!("{ap}.expect"), "at least one status is needed");
                    }
                    for name in a.headers.keys() {
                        if HeaderName::from_bytes(name.as_bytes()).is_err() {
                            p.push(format!("{ap}.headers.{name}"), "not a valid header name");
                        }
                    }
                    if let Some(h) = &a.host {
                        if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
                            p.push(format!("{ap}.host"), "not a valid host");
                        }
                    }
                }
                ProbeKind::Grpc => {
                    if up.protocol == UpstreamProtocol::Http1 {
                        p.push(
                            format!("{ap}.type"),
                            "the gRPC health protocol needs `protocol: h2c` or `h2`",
                        );
                    }
                }
                ProbeKind::Tcp => {}
            }
        }
        if let Some(ps) = &hc.passive {
            let pp = format!("{hp}.passive");
            if !(1..=1000).contains(&ps.consecutive_failures) {
                p.push(
                    format!("{pp}.consecutive_failures"),
                    "must be between 1 and 1000",
                );
            }
            positive(p, format!("{pp}.eject_for"), ps.eject_for.0);
            if ps.max_eject_for.0 < ps.eject_for.0 {
                p.push(
                    format!("{pp}.max_eject_for"),
                    "must not be shorter than `eject_for`",
                );
            }
        }
    }
    if let Some(b) = &up.circuit_breaker {
        let bp = format!("{path}.circuit_breaker");
        if b.failure_rate.0 == 0 {
            p.push(format!("{bp}.failure_rate"), "must be more than 0%");
        }
        if b.min_requests == 0 {
            p.push(format!("{bp}.min_requests"), "must be at least 1");
        }
        if b.window.0 < std::time::Duration::from_millis(100) {
            p.push(format!("{bp}.window"), "must be at least 100ms");
        }
        positive(p, format!("{bp}.open_for"), b.open_for.0);
        if !(1..=1000).contains(&b.half_open_probes) {
            p.push(
                format!("{bp}.half_open_probes"),
                "must be between 1 and 1000",
            );
        }
    }
    if let Some(l) = &up.limits {
        let lp = format!("{path}.limits");
        match l.max_in_flight {
            Some(0) => p.push(format!("{lp}.max_in_flight"), "must be at least 1"),
            None if l.max_pending > 0 => p.push(
                format!("{lp}.max_pending"),
                "requests wait only for `max_in_flight`: set it too",
            ),
            _ => {}
        }
    }
    if let Some(r) = &up.retry {
        let rp = format!("{path}.retry");
        if r.attempts > 10 {
            p.push(format!("{rp}.attempts"), "at most 10");
        }
        if r.on.is_empty() {
            p.push(format!("{rp}.on"), "at least one condition is needed");
        }
        match &r.methods {
            RetryMethods::Keyword(k) if k != "idempotent" => p.push(
                format!("{rp}.methods"),
                "use `idempotent` or a list of methods",
            ),
            RetryMethods::List(list) => {
                for (i, m) in list.iter().enumerate() {
                    if http::Method::from_bytes(m.as_bytes()).is_err()
                        || m.to_ascii_uppercase() != *m
                    {
                        p.push(
                            format!("{rp}.methods[{i}]"),
                            "not a method (upper case, like GET)",
                        );
                    }
                }
            }
            _ => {}
        }
        positive(p, format!("{rp}.backoff.base"), r.backoff.base.0);
        if r.backoff.max.0 < r.backoff.base.0 {
            p.push(
                format!("{rp}.backoff.max"),
                "must not be shorter than `base`",
            );
        }
        if let Some(t) = r.per_try_timeout {
            positive(p, format!("{rp}.per_try_timeout"), t.0);
        }
        if r.buffer.0 > 16 << 20 {
            p.push(format!("{rp}.buffer"), "at most 16MiB");
        }
    }
}

pub(super) fn check_route(path: &str, r: &RouteSpec, spec: &GatewaySpec, p: &mut Problems) {
    let forwards = r.upstream.is_some() || r.split.is_some();
    if let Some(h) = &r.hedge {
        if !forwards {
            p.push(
                format!("{path}.hedge"),
                "only a route that forwards (`upstream` or `split`) can hedge",
            );
        }
        positive(p, format!("{path}.hedge.after"), h.after.0);
        if !(1..=3).contains(&h.max) {
            p.push(format!("{path}.hedge.max"), "must be between 1 and 3");
        }
        if r.websocket {
            p.push(
                format!("{path}.hedge"),
                "a WebSocket upgrade is never sent twice",
            );
        }
    }
    let Some(f) = &r.fallback else { return };
    let fp = format!("{path}.fallback");
    if !forwards {
        p.push(
            fp.clone(),
            "only a route that forwards (`upstream` or `split`) has a fallback",
        );
    }
    match (&f.respond, &f.upstream) {
        (Some(_), Some(_)) | (None, None) => {
            p.push(fp.clone(), "give exactly one of `respond` or `upstream`")
        }
        (Some(resp), None) => super::validate::check_respond(&format!("{fp}.respond"), resp, p),
        (None, Some(up)) => {
            if !spec.upstreams.contains_key(up) {
                p.push(
                    format!("{fp}.upstream"),
                    format!("no upstream named `{up}`"),
                );
            } else if r.upstream.as_deref() == Some(up.as_str()) {
                p.push(
                    format!("{fp}.upstream"),
                    "the fallback must be another upstream than the route's",
                );
            }
        }
    }
    if f.on.is_empty() {
        p.push(format!("{fp}.on"), "at least one failure is needed");
    }
    for (i, on) in f.on.iter().enumerate() {
        if !is_fallback_condition(&on.0) {
            p.push(
                format!("{fp}.on[{i}]"),
                format!(
                    "unknown failure `{}`: use {}, 5xx or a status like \"503\"",
                    on.0,
                    FALLBACK_ON.join(", ")
                ),
            );
        }
    }
}

fn is_fallback_condition(on: &str) -> bool {
    FALLBACK_ON.contains(&on)
        || on == "5xx"
        || on.parse::<u16>().is_ok_and(|s| (400..=599).contains(&s))
}
