//! `compose`: a route target that answers one client request with one JSON document made
//! from several upstream calls, run in parallel where they do not depend on each other.
//! The structural checks are here; templates, the dependency graph and the field
//! references are checked when the route is compiled (`targets::compose`). See
//! docs/compose.md.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::error::Problems;
use super::units::{Dur, Size};

/// The most calls one route may make.
pub const MAX_CALLS: usize = 32;
/// The deepest JSON nesting a call's answer may have (serde_json's own recursion limit).
pub const MAX_DEPTH: u32 = 128;

/// A route's `compose` block.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComposeSpec {
    /// The whole answer's time budget, from the moment the policies let the request
    /// through; calls still running then count as timed out.
    #[serde(default = "five_seconds")]
    pub timeout: Dur,
    /// The calls (at most 32).
    pub calls: Vec<CallSpec>,
    /// The answer's status when it is made (every required call succeeded).
    #[serde(default = "ok")]
    pub status: u16,
    /// The call whose response headers the answer carries (none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_from: Option<String>,
    /// Adds an `_errors` member to a partial answer: each failed call's code and status.
    #[serde(default)]
    pub errors: bool,
    /// The header naming the failed optional calls of a partial answer (`""`: none).
    #[serde(default = "partial_header")]
    pub partial_header: String,
    /// The deepest JSON nesting accepted in a call's answer.
    #[serde(default = "depth")]
    pub max_depth: u32,
    /// Client request headers copied to every call (`authorization` is never sent
    /// unless listed here or in a call's `forward_headers`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<String>,
}

fn five_seconds() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}

fn ok() -> u16 {
    200
}

fn partial_header() -> String {
    "turnpike-partial".into()
}

fn depth() -> u32 {
    64
}

fn mebibyte() -> Size {
    Size(1 << 20)
}

fn get() -> String {
    "GET".into()
}

/// One call of a composition.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    /// Its name: the answer's member (unless `as` or `merge`) and what `${name...}`
    /// references in other calls name.
    pub name: String,
    /// The upstream called (its balancer, timeouts, retries and breaker apply).
    pub upstream: String,
    /// The method.
    #[serde(default = "get")]
    pub method: String,
    /// The path: `{param}` for the route's path parameters, `${...}` for variables and
    /// other calls' results (`${user.id}`, `${orders[0].id}`).
    pub path: String,
    /// Query parameters (values are templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Request headers (values are templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Client request headers copied to this call, in addition to the composition's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_headers: Vec<String>,
    /// A JSON body; its strings are templates, and a string that is one reference alone
    /// (`"${user.address}"`) is replaced by the referenced JSON value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// Its failure fails the whole request.
    #[serde(default)]
    pub required: bool,
    /// Its failure leaves its member out (or `default`) and marks the answer partial.
    /// This is what a call without `required: true` does; saying it is documentation.
    #[serde(default)]
    pub optional: bool,
    /// The member's value when the call fails (the answer is still marked partial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// This call's time budget (within the composition's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// A JSON pointer (RFC 6901) to the part of the answer kept: `/data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub take: Option<String>,
    /// Fields kept (of each element, when the answer is an array).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<String>,
    /// Fields removed (of each element, when the answer is an array).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub omit: Vec<String>,
    /// The member's name in the answer (default: the call's name).
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub rename: Option<String>,
    /// Merges the call's object into the answer's root instead of nesting it.
    #[serde(default)]
    pub merge: bool,
    /// The largest answer accepted from this call.
    #[serde(default = "mebibyte")]
    pub max_body: Size,
}

impl CallSpec {
    /// The member the call's result is written to (`None`: merged into the root).
    pub fn member(&self) -> Option<&str> {
        if self.merge {
            None
        } else {
            Some(self.rename.as_deref().unwrap_or(&self.name))
        }
    }
}

/// Checks what can be checked without compiling templates.
pub fn check(path: &str, spec: &ComposeSpec, upstreams: &dyn Fn(&str) -> bool, p: &mut Problems) {
    if spec.calls.is_empty() {
        p.push(format!("{path}.calls"), "at least one call is needed");
    }
    if spec.calls.len() > MAX_CALLS {
        p.push(
            format!("{path}.calls"),
            format!("at most {MAX_CALLS} calls per route"),
        );
    }
    if spec.timeout.0.is_zero() {
        p.push(
            format!("{path}.timeout"),
            "must be more than 0: every outbound call is bounded",
        );
    }
    if !(200..=599).contains(&spec.status) {
        p.push(format!("{path}.status"), "must be between 200 and 599");
    }
    if spec.max_depth == 0 || spec.max_depth > MAX_DEPTH {
        p.push(
            format!("{path}.max_depth"),
            format!("must be between 1 and {MAX_DEPTH}"),
        );
    }
    if !spec.partial_header.is_empty()
        && http::HeaderName::from_bytes(spec.partial_header.as_bytes()).is_err()
    {
        p.push(format!("{path}.partial_header"), "not a valid header name");
    }
    check_header_names(&format!("{path}.forward_headers"), &spec.forward_headers, p);
    let mut names = HashSet::new();
    let mut members: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in spec.calls.iter().enumerate() {
        let at = format!("{path}.calls[{i}]");
        if c.name.is_empty()
            || !c
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            p.push(
                format!("{at}.name"),
                "use letters, digits, `_` and `-` (references read `${name.field}`)",
            );
        }
        if !names.insert(c.name.as_str()) {
            p.push(
                format!("{at}.name"),
                format!("another call is named `{}`", c.name),
            );
        }
        if !upstreams(&c.upstream) {
            p.push(
                format!("{at}.upstream"),
                format!("no upstream named `{}`", c.upstream),
            );
        }
        if http::Method::from_bytes(c.method.as_bytes()).is_err() {
            p.push(format!("{at}.method"), "not a valid method");
        }
        if !c.path.starts_with('/') {
            p.push(format!("{at}.path"), "must start with `/`");
        }
        if c.required && c.optional {
            p.push(at.clone(), "a call is `required` or `optional`, not both");
        }
        if c.required && c.default.is_some() {
            p.push(
                format!("{at}.default"),
                "a required call's failure fails the request: its default would never be used",
            );
        }
        if c.timeout.is_some_and(|t| t.0.is_zero()) {
            p.push(format!("{at}.timeout"), "must be more than 0");
        }
        if c.timeout.is_some_and(|t| t.0 > spec.timeout.0) {
            p.push(
                format!("{at}.timeout"),
                "longer than the composition's `timeout`, which bounds every call",
            );
        }
        if c.max_body.0 == 0 {
            p.push(format!("{at}.max_body"), "must be more than 0");
        }
        if let Some(ptr) = &c.take {
            if !(ptr.is_empty() || ptr.starts_with('/')) {
                p.push(
                    format!("{at}.take"),
                    "a JSON pointer starts with `/` (RFC 6901): `/data`",
                );
            }
        }
        if !c.select.is_empty() && !c.omit.is_empty() {
            p.push(at.clone(), "give `select` or `omit`, not both");
        }
        if c.merge && c.rename.is_some() {
            p.push(
                at.clone(),
                "a merged call has no member of its own to rename",
            );
        }
        if c.body.is_some() && matches!(c.method.as_str(), "GET" | "HEAD") {
            p.push(
                format!("{at}.body"),
                "a GET or HEAD call sends no body; set `method`",
            );
        }
        for name in c.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                p.push(format!("{at}.headers.{name}"), "not a valid header name");
            }
        }
        check_header_names(&format!("{at}.forward_headers"), &c.forward_headers, p);
        if let Some(m) = c.member() {
            if m == "_errors" && spec.errors {
                p.push(
                    format!("{at}.name"),
                    "`_errors` is the member that lists failed calls",
                );
            }
            if let Some(other) = members.insert(m, i) {
                p.push(
                    format!("{at}.name"),
                    format!("calls[{other}] writes the member `{m}` too; rename one with `as`"),
                );
            }
        }
    }
    if let Some(h) = &spec.headers_from {
        if !names.contains(h.as_str()) {
            p.push(
                format!("{path}.headers_from"),
                format!("no call named `{h}`"),
            );
        }
    }
}

fn check_header_names(path: &str, names: &[String], p: &mut Problems) {
    for (i, n) in names.iter().enumerate() {
        if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
            p.push(format!("{path}[{i}]"), "not a valid header name");
        }
    }
}
