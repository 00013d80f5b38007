//! `turnpike explain`: which route a request would take and why, with its parameters,
//! its policies in order, and where it would be forwarded, without sending anything.
//! It compiles the configuration exactly as `run` does and asks the same router, with
//! tracing on.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};

use crate::config::LoadedConfig;
use crate::pipeline::RequestCtx;
use crate::router::{normalize_host, Found, Query};
use crate::runtime::compile::{compile, CompileEnv};
use crate::targets::{HostHeader, Target};
use crate::telemetry::metrics::Metrics;
use crate::upstream::dns::{Resolve, SystemResolver};

/// The request to explain.
pub struct Request {
    /// The method.
    pub method: String,
    /// An absolute URL (`https://api.example.com/v1/users/7`) or a path.
    pub url: String,
    /// Headers as `Name: value`.
    pub headers: Vec<String>,
    /// The listener (default: the first).
    pub listener: Option<String>,
}

/// Explains `req` against `config`; `Err` for a malformed request or configuration.
pub fn explain(config: LoadedConfig, req: &Request) -> Result<String, String> {
    let metrics = Arc::new(Metrics::default());
    let resolver: Arc<dyn Resolve> = Arc::new(SystemResolver);
    let env = CompileEnv {
        metrics: &metrics,
        resolver: &resolver,
        clusters: &HashMap::new(),
    };
    let snap = compile(Arc::new(config), 1, &env).map_err(|e| e.to_string())?;
    let method = Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{}` is not a method", req.method))?;
    let uri: Uri = req
        .url
        .parse()
        .map_err(|_| format!("`{}` is not a URL or path", req.url))?;
    let mut headers = HeaderMap::new();
    for h in &req.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` is not `Name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("bad header name in `{h}`"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("bad header value in `{h}`"))?;
        headers.append(name, value);
    }
    let host = match uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost")
            .to_string(),
    };
    let spec = &snap.config.spec;
    let li = match &req.listener {
        None => 0,
        Some(name) => spec
            .listeners
            .iter()
            .position(|l| &l.name == name)
            .ok_or_else(|| format!("no listener named `{name}`"))?,
    };
    let path = uri.path();
    let query = uri.query();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "request:  {method} {host}{}  (listener `{}`)",
        uri.path_and_query().map_or("/", |p| p.as_str()),
        spec.listeners[li].name
    );
    let norm = normalize_host(&host);
    let q = Query {
        method: &method,
        host: &norm,
        path,
        query,
        headers: &headers,
    };
    let mut trace = Vec::new();
    let found = snap.listeners[li].router.find(&q, Some(&mut trace));
    let _ = writeln!(out, "decision:");
    for line in &trace {
        let _ = writeln!(out, "  {line}");
    }
    let (entry, params) = match found {
        Found::Route { entry, params } => (entry, params),
        Found::MethodNotAllowed(m) => {
            let mut names: Vec<&str> = m.iter().map(Method::as_str).collect();
            names.sort_unstable();
            let _ = writeln!(
                out,
                "result:   405 method_not_allowed (Allow: {})",
                names.join(", ")
            );
            return Ok(out);
        }
        Found::NotFound => {
            let _ = writeln!(out, "result:   404 route_not_found");
            return Ok(out);
        }
    };
    let summary = snap.routes.iter().find(|r| *r.name == *entry.name);
    let _ = writeln!(out, "route:    {}", entry.name);
    if let Some(s) = summary {
        let _ = writeln!(
            out,
            "  match:  {}{}{}",
            s.path,
            list(" methods ", &s.methods),
            list(" hosts ", &s.hosts)
        );
        for c in &s.conditions {
            let _ = writeln!(out, "          {c}");
        }
    }
    let ps: Vec<String> = params.iter(path).map(|(n, v)| format!("{n}={v}")).collect();
    let _ = writeln!(
        out,
        "params:   {}",
        if ps.is_empty() {
            "(none)".to_string()
        } else {
            ps.join(" ")
        }
    );
    let pipeline = &entry.value.pipeline;
    let kinds: Vec<&str> = pipeline.policies().iter().map(|p| p.kind()).collect();
    let _ = writeln!(
        out,
        "policies: {}",
        if kinds.is_empty() {
            "(none)".to_string()
        } else {
            kinds.join(" -> ")
        }
    );
    let target = pipeline.target();
    let _ = writeln!(out, "target:   {}", target.describe());
    if let Target::Grpc(g) = target {
        match g.find(&method, path) {
            Ok((rule, values)) => {
                let _ = writeln!(out, "grpc:     {} ({})", rule.describe(), values.join(", "));
            }
            Err(allowed) if allowed.is_empty() => {
                let _ = writeln!(out, "grpc:     no binding matches: 404 route_not_found");
            }
            Err(allowed) => {
                let m: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
                let _ = writeln!(
                    out,
                    "grpc:     405 method_not_allowed (bound for {})",
                    m.join(", ")
                );
            }
        }
    }
    if let Target::Compose(c) = target {
        let ctx = explain_ctx(&method, &uri, &host, params.clone());
        let mut parts = http::Request::new(()).into_parts().0;
        parts.method = method.clone();
        parts.uri = uri.clone();
        parts.headers = headers.clone();
        for line in c.explain(&ctx, &parts) {
            let _ = writeln!(out, "{line}");
        }
    }
    if let Some(fwd) = target.forward() {
        let ctx = explain_ctx(&method, &uri, &host, params);
        let forwarded = fwd
            .path_and_query(&ctx)
            .map(|p| p.to_string())
            .unwrap_or_else(|_| "(invalid)".into());
        let _ = writeln!(out, "forward:  {forwarded}");
        let host_rule = match &fwd.host_header {
            HostHeader::Preserve => format!("preserve ({host})"),
            HostHeader::Upstream => "upstream (the endpoint's configured host:port)".into(),
            HostHeader::Fixed(v) => format!("{v:?}"),
        };
        let _ = writeln!(out, "host:     {host_rule}");
        describe_upstreams(&mut out, target);
    }
    Ok(out)
}

fn describe_upstreams(out: &mut String, target: &Target) {
    let names: Vec<&str> = match target {
        Target::Upstream { binding, .. } => vec![&binding.cluster.name],
        Target::Split { .. } => Vec::new(),
        Target::Respond(_) | Target::Compose(_) | Target::Grpc(_) | Target::Publish(_) => {
            Vec::new()
        }
    };
    for name in names {
        let _ = writeln!(out, "upstream: {name}");
    }
    if let Target::Upstream { binding, .. } = target {
        let spec = binding.cluster.spec();
        let eps: Vec<String> = spec
            .endpoints
            .iter()
            .map(|e| {
                if e.priority > 0 {
                    format!(
                        "{} (weight {}, priority {})",
                        e.address, e.weight, e.priority
                    )
                } else {
                    format!("{} (weight {})", e.address, e.weight)
                }
            })
            .collect();
        let t = binding.timeouts;
        let _ = writeln!(out, "  endpoints: {}", eps.join(", "));
        let _ = writeln!(
            out,
            "  balancer:  {:?}, protocol {:?}",
            spec.balancer, spec.protocol
        );
        let _ = writeln!(
            out,
            "  timeouts:  connect {:?}, request {:?}, idle {:?}",
            t.connect, t.request, t.idle
        );
        if let Some(hc) = &spec.health_check {
            let _ = writeln!(out, "  health:    {}", flow(hc));
        }
        if let Some(b) = &spec.circuit_breaker {
            let _ = writeln!(out, "  breaker:   {}", flow(b));
        }
        if let Some(l) = &spec.limits {
            let _ = writeln!(out, "  limits:    {}", flow(l));
        }
        match &spec.retry {
            Some(r) => {
                let _ = writeln!(out, "  retry:     {}", flow(r));
            }
            None => {
                let _ = writeln!(
                    out,
                    "  retry:     none (only a stale pooled connection is retried)"
                );
            }
        }
    }
    if let Some(fwd) = target.forward() {
        if let Some(h) = &fwd.hedge {
            let _ = writeln!(out, "hedge:    {}", flow(h));
        }
        if let Some(f) = &fwd.fallback {
            let action = match &f.action {
                crate::targets::forward::FallbackAction::Respond(r) => {
                    format!("respond {}", r.status())
                }
                crate::targets::forward::FallbackAction::Upstream(b) => {
                    format!("upstream `{}`", b.cluster.name)
                }
            };
            let _ = writeln!(out, "fallback: {action} on [{}]", f.on.join(", "));
        }
    }
}

/// A setting written on one line, as JSON (which is YAML flow style).
fn flow<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn explain_ctx(
    method: &Method,
    uri: &Uri,
    host: &str,
    params: crate::router::Params,
) -> RequestCtx {
    let path_only: Uri = uri
        .path_and_query()
        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
    RequestCtx {
        request_id: HeaderValue::from_static("explain"),
        started: tokio::time::Instant::now(),
        peer: ([127, 0, 0, 1], 0).into(),
        peer_text: HeaderValue::from_static("127.0.0.1"),
        client_ip: [127, 0, 0, 1].into(),
        peer_trusted: false,
        scheme: "http",
        listener: Arc::from(""),
        method: method.clone(),
        uri: path_only,
        host: HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("")),
        version: Version::HTTP_11,
        websocket: false,
        tls: None,
        route: None,
        params,
        upstream: None,
        endpoint: None,
        upstream_time: None,
        error: None,
        identity: None,
        stats: None,
        extensions: http::Extensions::new(),
        rate_limits: [None, None],
    }
}

fn list(label: &str, items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!(";{label}{}", items.join(", "))
    }
}
