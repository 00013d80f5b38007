//! `headers`: set, append and remove request and response headers.
//!
//! Values are templates (`${request_id}`, `${route}`, `${client_ip}`, path parameters
//! such as `${id}`, and environment variables resolved at load), compiled once per
//! snapshot. On each side, removals run first, then `set` (replace), then `append`.

use std::collections::BTreeMap;

use http::header::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};

use super::BuildCx;
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::template::{Escape, Template};
use crate::pipeline::{Flow, RequestCtx};

/// `type: headers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Changes to the request sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOpsSpec>,
    /// Changes to the response sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOpsSpec>,
}

/// The changes on one side.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOpsSpec {
    /// Headers to set, replacing any existing value.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Headers to add, keeping existing values.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub append: BTreeMap<String, String>,
    /// Headers to remove.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Debug, Default)]
struct Ops {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Template)>,
    append: Vec<(HeaderName, Template)>,
}

impl Ops {
    fn build(path: &str, spec: &HeaderOpsSpec, cx: &BuildCx<'_>, p: &mut Problems) -> Self {
        let mut ops = Ops::default();
        for (i, name) in spec.remove.iter().enumerate() {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => ops.remove.push(n),
                Err(_) => p.push(
                    format!("{path}.remove[{i}]"),
                    format!("`{name}` is not a valid header name"),
                ),
            }
        }
        for (field, map, out) in [
            ("set", &spec.set, &mut ops.set),
            ("append", &spec.append, &mut ops.append),
        ] {
            for (name, value) in map {
                let at = format!("{path}.{field}.{name}");
                let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else {
                    p.push(at, format!("`{name}` is not a valid header name"));
                    continue;
                };
                match Template::compile(value, cx.params, Escape::None) {
                    Ok(t) if t.is_literal() && http::HeaderValue::from_str(value).is_err() => {
                        p.push(at, "not a valid header value (control characters?)");
                    }
                    Ok(t) => out.push((n, t)),
                    Err(e) => p.push(at, e),
                }
            }
        }
        ops
    }

    fn apply(&self, ctx: &RequestCtx, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, t) in &self.set {
            if let Some(v) = t.header_value(ctx) {
                headers.insert(name.clone(), v);
            }
        }
        for (name, t) in &self.append {
            if let Some(v) = t.header_value(ctx) {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// The built `headers` policy.
#[derive(Debug)]
pub struct Headers {
    request: Ops,
    response: Ops,
}

impl Headers {
    /// Builds the policy from its spec.
    pub fn build(
        path: &str,
        spec: &HeadersSpec,
        cx: &BuildCx<'_>,
        p: &mut Problems,
    ) -> Option<Self> {
        let empty = HeaderOpsSpec::default();
        let request = Ops::build(
            &format!("{path}.request"),
            spec.request.as_ref().unwrap_or(&empty),
            cx,
            p,
        );
        let response = Ops::build(
            &format!("{path}.response"),
            spec.response.as_ref().unwrap_or(&empty),
            cx,
            p,
        );
        Some(Self { request, response })
    }

    /// Applies the request changes.
    pub fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        self.request.apply(ctx, req.headers_mut());
        Ok(Flow::Continue)
    }

    /// Applies the response changes.
    pub fn on_response(&self, ctx: &mut RequestCtx, resp: &mut Response) {
        self.response.apply(ctx, resp.headers_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Body;

    fn build(yaml_like: HeadersSpec, params: &[String]) -> Result<Headers, Vec<String>> {
        let mut p = Problems::default();
        let consumers = Default::default();
        let cx = BuildCx {
            consumers: &consumers,
            base: None,
            files: &Default::default(),
            plans: &Default::default(),
            redis: None,
            route: "users",
            params,
        };
        let h = Headers::build("routes[0].policies[0]", &yaml_like, &cx, &mut p);
        if p.is_empty() {
            Ok(h.unwrap())
        } else {
            Err(p
                .into_errors(&Default::default())
                .0
                .into_iter()
                .map(|e| e.to_string())
                .collect())
        }
    }

    #[test]
    fn remove_then_set_then_append_on_both_sides() {
        let spec = HeadersSpec {
            request: Some(HeaderOpsSpec {
                set: [("x-user".to_string(), "${id}".to_string())].into(),
                append: [("x-trace".to_string(), "${request_id}".to_string())].into(),
                remove: vec!["x-internal".into()],
            }),
            response: Some(HeaderOpsSpec {
                set: [("x-route".to_string(), "${route}".to_string())].into(),
                remove: vec!["server".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let h = build(spec, &["id".to_string()]).unwrap();
        let mut ctx = RequestCtx::for_test();
        ctx.params = crate::router::tests_support::params(&["id"], &[(7, 8)]);
        let mut req = http::Request::builder()
            .header("x-internal", "secret")
            .header("x-trace", "first")
            .header("x-user", "spoofed")
            .body(Body::Empty)
            .unwrap();
        h.on_request(&mut ctx, &mut req).unwrap();
        assert!(!req.headers().contains_key("x-internal"));
        assert_eq!(req.headers()["x-user"], "7");
        let traces: Vec<_> = req.headers().get_all("x-trace").iter().collect();
        assert_eq!(traces, ["first", "test-id"]);
        let mut resp = http::Response::builder()
            .header("server", "nginx")
            .body(Body::Empty)
            .unwrap();
        h.on_response(&mut ctx, &mut resp);
        assert!(!resp.headers().contains_key("server"));
        assert_eq!(resp.headers()["x-route"], "users");
    }

    #[test]
    fn reports_every_bad_field_with_its_path() {
        let spec = HeadersSpec {
            request: Some(HeaderOpsSpec {
                set: [
                    ("bad name".to_string(), "v".to_string()),
                    ("x-ok".to_string(), "${nope}".to_string()),
                ]
                .into(),
                remove: vec!["also bad".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let errs = build(spec, &[]).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(errs
            .iter()
            .any(|e| e.starts_with("routes[0].policies[0].request.set.bad name:")));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("routes[0].policies[0].request.set.x-ok: unknown variable")));
        assert!(errs
            .iter()
            .any(|e| e.starts_with("routes[0].policies[0].request.remove[0]:")));
    }
}
