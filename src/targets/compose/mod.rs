//! `compose`: one client request, several upstream calls, one JSON answer (the BFF
//! pattern).
//!
//! The calls form a graph checked when the route is compiled: a call that reads
//! another's result (`${orders[0].id}`) waits for it; the others start together. Each
//! call goes through [`Forward`] like a proxied request, so its upstream's balancer,
//! timeouts, retries, breaker and limits apply, within the call's own time budget and the
//! composition's. Answers are read up to a size cap, checked for nesting before they
//! are parsed, shaped (`take`, `select`, `omit`) and placed under the call's name (or
//! `as`, or merged into the root). An optional call that fails leaves its `default` (or
//! nothing) and marks the answer partial; a required one fails the request with an error
//! naming it. Every call is counted (`turnpike_compose_calls_total`) and listed in the
//! request's access-log line. See docs/compose.md.

pub mod shape;
pub mod template;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::header::{HeaderName, HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::Value;
use tokio::time::Instant;

use self::shape::CacheControl;
use self::template::{CallTemplate, JsonTemplate, Missing, Names, Place, Ref, RESERVED};
use super::{Binding, Forward};
use crate::config::{ComposeSpec, Problems};
use crate::http::{Body, GatewayError, Request, Response};
use crate::pipeline::template::{Escape, Template};
use crate::pipeline::RequestCtx;
use crate::telemetry::access_log::{CallTrace, CallTraces};
use crate::telemetry::metrics::{CallStats, Metrics};

/// Response headers of a call never copied by `headers_from`: they describe that
/// call's body, not the composed one (`cache-control` is combined separately).
const NOT_COPIED: [&str; 9] = [
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "cache-control",
    "etag",
    "last-modified",
    "content-range",
    "accept-ranges",
];

/// Request headers of the client that follow every call, for tracing.
const TRACE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// One compiled call.
pub struct Call {
    /// Its name.
    pub name: Arc<str>,
    member: Option<String>,
    binding: Binding,
    method: Method,
    path_text: String,
    path: CallTemplate,
    query: Vec<(String, CallTemplate)>,
    headers: Vec<(HeaderName, CallTemplate)>,
    forward_headers: Vec<HeaderName>,
    body: Option<JsonTemplate>,
    required: bool,
    default: Option<Value>,
    timeout: Duration,
    take: Option<String>,
    select: Vec<String>,
    omit: Vec<String>,
    max_body: u64,
    /// Its answer is copied as it is (see [`Got`]).
    raw: bool,
    /// The calls it waits for, as a bit set.
    deps: u64,
    stats: Arc<CallStats>,
}

/// A compiled `compose` target.
pub struct Compose {
    timeout: Duration,
    calls: Box<[Call]>,
    status: StatusCode,
    headers_from: Option<usize>,
    errors: bool,
    partial_header: Option<HeaderName>,
    max_depth: u32,
    forward: Forward,
}

/// Why a call has no result.
#[derive(Debug, Clone, Copy)]
struct Failure {
    /// The stable code (docs/compose.md lists them).
    code: &'static str,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Out of time: the call's, the composition's or the upstream's request timeout.
    Timeout,
    /// The upstream answered a status outside 2xx.
    Status(u16),
    /// The upstream takes no calls now (breaker open, no healthy endpoint, limits).
    Unavailable,
    /// Not sent: a dependency failed or a value it needs is missing; `late` when the
    /// cause was a lack of time (a dependency timed out).
    Skipped { late: bool },
    /// Anything else: connection failures, unusable answers.
    Other,
}

impl Failure {
    const fn new(code: &'static str, kind: Kind) -> Self {
        Self { code, kind }
    }

    fn from_error(e: &GatewayError) -> Self {
        let kind = match e.status() {
            StatusCode::GATEWAY_TIMEOUT => Kind::Timeout,
            StatusCode::SERVICE_UNAVAILABLE => Kind::Unavailable,
            _ => Kind::Other,
        };
        Self::new(e.code(), kind)
    }

    /// The outcome label of metrics and logs.
    fn outcome(&self) -> (&'static str, usize) {
        match self.kind {
            Kind::Timeout => ("timeout", 2),
            Kind::Skipped { .. } => ("skipped", 3),
            _ => ("failed", 1),
        }
    }

    /// The client's status when a required call failed this way.
    fn status(&self) -> StatusCode {
        if self.code == CALL_TIMEOUT.code {
            return StatusCode::GATEWAY_TIMEOUT;
        }
        match self.kind {
            Kind::Timeout | Kind::Skipped { late: true } => StatusCode::GATEWAY_TIMEOUT,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Status(s) if (400..500).contains(&s) => {
                StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

const CALL_TIMEOUT: Failure = Failure::new("call_timeout", Kind::Timeout);

/// A call's result: parsed when something reads into it (a reference, `take`,
/// `select`, `omit`, `merge`), otherwise its bytes, checked to be JSON and copied into
/// the answer as they are (no tree is built and written again).
enum Got {
    Value(Value),
    Raw(Bytes),
}

/// How one call ended.
struct Done {
    result: Result<(), Failure>,
    status: u16,
    endpoint: Option<SocketAddr>,
    elapsed: Option<Duration>,
    headers: Option<HeaderMap>,
}

impl Done {
    fn skipped(code: &'static str, late: bool) -> Self {
        Self {
            result: Err(Failure::new(code, Kind::Skipped { late })),
            status: 0,
            endpoint: None,
            elapsed: None,
            headers: None,
        }
    }
}

impl Compose {
    /// Compiles a `compose` block of route `route` (parameters `params`); `bind` makes
    /// the link to an upstream.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        path: &str,
        route: &str,
        spec: &ComposeSpec,
        params: &[String],
        forward: Forward,
        bind: &dyn Fn(&str) -> Option<Binding>,
        metrics: &Metrics,
        p: &mut Problems,
    ) -> Option<Self> {
        let names: Vec<String> = spec.calls.iter().map(|c| c.name.clone()).collect();
        let scope = Names {
            params,
            calls: &names,
        };
        let before = p.count();
        let mut calls = Vec::with_capacity(spec.calls.len());
        for (i, c) in spec.calls.iter().enumerate() {
            let at = format!("{path}.calls[{i}]");
            if RESERVED.contains(&c.name.as_str())
                || params.contains(&c.name)
                || Template::compile(&format!("${{{}}}", c.name), &[], Escape::None).is_ok()
            {
                p.push(
                    format!("{at}.name"),
                    format!(
                        "`${{{}}}` already names a variable or a path parameter; rename the call",
                        c.name
                    ),
                );
            }
            let mut refs: Vec<Ref> = Vec::new();
            let mut compile = |field: String, text: &str, braces: bool| match CallTemplate::compile(
                text, &scope, braces,
            ) {
                Ok(t) => {
                    refs.extend(t.refs().cloned());
                    Some(t)
                }
                Err(e) => {
                    p.push(field, e);
                    None
                }
            };
            let path_t = compile(format!("{at}.path"), &c.path, true);
            let query: Vec<(String, CallTemplate)> = c
                .query
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.clone(), compile(format!("{at}.query.{k}"), v, false)?))
                })
                .collect();
            let headers: Vec<(HeaderName, CallTemplate)> = c
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    let t = compile(format!("{at}.headers.{k}"), v, false)?;
                    Some((HeaderName::from_bytes(k.as_bytes()).ok()?, t))
                })
                .collect();
            let body = match &c.body {
                None => None,
                Some(b) => match JsonTemplate::compile(b, &scope) {
                    Ok(t) => {
                        t.refs(&mut refs);
                        Some(t)
                    }
                    Err(e) => {
                        p.push(format!("{at}.body"), e);
                        None
                    }
                },
            };
            let mut deps = 0u64;
            for r in &refs {
                if r.call == i {
                    p.push(
                        at.clone(),
                        format!("`${{{}}}`: a call cannot read its own result", r.text),
                    );
                    continue;
                }
                deps |= 1 << r.call;
                let source = &spec.calls[r.call];
                let removed = r.first_key().filter(|k| {
                    (!source.select.is_empty() && !source.select.iter().any(|s| s == k))
                        || source.omit.iter().any(|o| o == k)
                });
                if let Some(k) = removed {
                    p.push(
                        at.clone(),
                        format!(
                            "`${{{}}}` reads `{k}`, which `calls[{}]` ({}) removes with `{}`",
                            r.text,
                            r.call,
                            source.name,
                            if source.select.is_empty() {
                                "omit"
                            } else {
                                "select"
                            }
                        ),
                    );
                }
            }
            let binding = bind(&c.upstream);
            let (Some(path_t), Some(binding)) = (path_t, binding) else {
                continue;
            };
            let mut forward_headers: Vec<HeaderName> = Vec::new();
            for n in spec.forward_headers.iter().chain(&c.forward_headers) {
                if let Ok(h) = HeaderName::from_bytes(n.as_bytes()) {
                    if !forward_headers.contains(&h) {
                        forward_headers.push(h);
                    }
                }
            }
            calls.push(Call {
                name: Arc::from(c.name.as_str()),
                member: c.member().map(str::to_string),
                stats: metrics.compose_call(route, &c.name, &c.upstream),
                binding,
                method: Method::from_bytes(c.method.as_bytes()).unwrap_or(Method::GET),
                path_text: c.path.clone(),
                path: path_t,
                query,
                headers,
                forward_headers,
                body,
                required: c.required,
                default: c.default.clone(),
                timeout: c
                    .timeout
                    .map_or(spec.timeout.0, |t| t.0.min(spec.timeout.0)),
                take: c.take.clone().filter(|t| !t.is_empty()),
                select: c.select.clone(),
                omit: c.omit.clone(),
                max_body: c.max_body.0,
                raw: c.take.is_none() && c.select.is_empty() && c.omit.is_empty() && !c.merge,
                deps,
            });
        }
        if p.count() > before || calls.len() != spec.calls.len() {
            return None;
        }
        // A call another one reads is parsed.
        let read = calls.iter().fold(0u64, |m, c| m | c.deps);
        for (i, c) in calls.iter_mut().enumerate() {
            c.raw &= read & (1 << i) == 0;
        }
        if let Some(cycle) = find_cycle(&calls) {
            let names: Vec<&str> = cycle.iter().map(|&i| &*calls[i].name).collect();
            p.push(
                format!("{path}.calls[{}]", cycle[0]),
                format!(
                    "the calls wait for each other in a cycle (each for the next): {} -> {}",
                    names.join(" -> "),
                    names[0]
                ),
            );
            return None;
        }
        Some(Self {
            timeout: spec.timeout.0,
            status: StatusCode::from_u16(spec.status).unwrap_or(StatusCode::OK),
            headers_from: spec
                .headers_from
                .as_ref()
                .and_then(|h| calls.iter().position(|c| &*c.name == h.as_str())),
            errors: spec.errors,
            partial_header: (!spec.partial_header.is_empty())
                .then(|| HeaderName::from_bytes(spec.partial_header.as_bytes()).ok())
                .flatten(),
            max_depth: spec.max_depth,
            calls: calls.into_boxed_slice(),
            forward,
        })
    }

    /// The calls, in config order.
    pub fn calls(&self) -> &[Call] {
        &self.calls
    }

    /// A one-line description, for `turnpike explain` and `GET /routes`.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.calls.iter().map(|c| &*c.name).collect();
        format!("compose [{}]", names.join(", "))
    }

    /// The call graph for `explain`: one line per call, by stage (calls of one stage
    /// start together).
    pub fn explain(&self, ctx: &RequestCtx, parts: &http::request::Parts) -> Vec<String> {
        let stages = stages(&self.calls);
        let mut out = vec![format!("compose:  timeout {:?}", self.timeout)];
        let none: Vec<Option<Value>> = vec![None; self.calls.len()];
        for (i, c) in self.calls.iter().enumerate() {
            let mut target = c
                .path
                .render(ctx, parts, &none, Place::Path)
                .unwrap_or_else(|_| c.path_text.clone());
            for (k, t) in &c.query {
                target.push(if target.contains('?') { '&' } else { '?' });
                let v = t
                    .render(ctx, parts, &none, Place::Query)
                    .unwrap_or_else(|_| "(from the request)".into());
                target.push_str(&format!("{k}={v}"));
            }
            let waits: Vec<&str> = (0..self.calls.len())
                .filter(|j| c.deps & (1 << j) != 0)
                .map(|j| &*self.calls[j].name)
                .collect();
            let mut line = format!(
                "  stage {}: {} -> {} `{}` {target} (timeout {:?}",
                stages[i], c.name, c.method, c.binding.cluster.name, c.timeout,
            );
            line.push_str(if c.required {
                ", required"
            } else {
                ", optional"
            });
            if !waits.is_empty() {
                line.push_str(&format!(", after {}", waits.join(", ")));
            }
            line.push(')');
            out.push(line);
        }
        out
    }

    /// Answers one request: runs the calls, then composes their results.
    pub async fn call(&self, ctx: &mut RequestCtx, req: Request) -> Result<Response, GatewayError> {
        let (parts, _) = req.into_parts();
        let start = Instant::now();
        let deadline = start + self.timeout;
        let n = self.calls.len();
        let mut results: Vec<Option<Value>> = vec![None; n];
        let mut raws: Vec<Option<Bytes>> = vec![None; n];
        let mut done: Vec<Option<Done>> = (0..n).map(|_| None).collect();
        // Bit sets of calls: started (or skipped), done, failed, and failed for lack of
        // time.
        let (mut started, mut finished, mut failed, mut late_mask) = (0u64, 0u64, 0u64, 0u64);
        let mut running = FuturesUnordered::new();
        let mut fatal: Option<usize> = None;
        'run: loop {
            // Start every call whose dependencies are done; one whose dependency failed
            // is skipped, which may settle others in turn.
            let mut settled = Vec::new();
            loop {
                let before = started;
                for (i, call) in self.calls.iter().enumerate() {
                    let bit = 1u64 << i;
                    if started & bit != 0 || call.deps & !finished != 0 {
                        continue;
                    }
                    started |= bit;
                    if call.deps & failed != 0 {
                        // Late when a dependency ran out of time.
                        let late = call.deps & late_mask != 0;
                        settled.push((i, Done::skipped("dependency_failed", late)));
                        finished |= bit;
                        failed |= bit;
                        late_mask |= if late { bit } else { 0 };
                        continue;
                    }
                    match self.prepare(ctx, &parts, call, &results) {
                        Ok((child, req)) => running.push(self.run(child, i, req, deadline)),
                        Err(code) => {
                            settled.push((i, Done::skipped(code, false)));
                            finished |= bit;
                            failed |= bit;
                        }
                    }
                }
                if started == before {
                    break;
                }
            }
            for (i, d) in settled {
                if d.result.is_err() && self.calls[i].required {
                    fatal.get_or_insert(i);
                }
                done[i] = Some(d);
            }
            if fatal.is_some() {
                break;
            }
            let next = tokio::time::timeout_at(deadline, running.next()).await;
            match next {
                Ok(Some((i, d, value))) => {
                    let bit = 1u64 << i;
                    finished |= bit;
                    match value {
                        Some(Got::Value(v)) => results[i] = Some(v),
                        Some(Got::Raw(b)) => raws[i] = Some(b),
                        None => {}
                    }
                    match d.result {
                        Ok(()) => {}
                        Err(f) => {
                            failed |= bit;
                            if f.kind == Kind::Timeout {
                                late_mask |= bit;
                            }
                            if self.calls[i].required {
                                fatal = Some(i);
                            }
                        }
                    }
                    done[i] = Some(d);
                    if fatal.is_some() {
                        break 'run;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    // The composition's time is up: what still runs timed out, and what
                    // still waits for it will not run.
                    for (i, slot) in done.iter_mut().enumerate() {
                        if slot.is_some() {
                            continue;
                        }
                        *slot = Some(if started & (1 << i) != 0 {
                            let mut d = Done::skipped("", false);
                            d.result = Err(CALL_TIMEOUT);
                            d.elapsed = Some(start.elapsed());
                            d
                        } else {
                            Done::skipped("call_timeout", true)
                        });
                    }
                    break;
                }
            }
        }
        drop(running);
        // A required call that failed, or did not run, fails the request.
        if fatal.is_none() {
            fatal = self.calls.iter().enumerate().position(|(i, c)| {
                c.required && !matches!(done[i].as_ref().map(|d| &d.result), Some(Ok(())))
            });
        }
        ctx.upstream_time = Some(start.elapsed());
        self.account(ctx, &mut done);
        if let Some(i) = fatal {
            let f = match done[i].as_ref().map(|d| &d.result) {
                Some(Err(f)) => *f,
                _ => CALL_TIMEOUT,
            };
            return Err(GatewayError::ComposeCall {
                call: self.calls[i].name.clone(),
                cause: f.code,
                status: f.status(),
            });
        }
        Ok(self.answer(&mut results, &mut raws, &mut done))
    }

    /// Builds a call's request from the client's request and the results so far.
    fn prepare(
        &self,
        ctx: &RequestCtx,
        parts: &http::request::Parts,
        call: &Call,
        results: &[Option<Value>],
    ) -> Result<(RequestCtx, Request), &'static str> {
        let missing = |_: Missing| "reference_missing";
        let mut target = call
            .path
            .render(ctx, parts, results, Place::Path)
            .map_err(missing)?;
        for (k, t) in &call.query {
            target.push(if target.contains('?') { '&' } else { '?' });
            target.extend(percent_encoding::utf8_percent_encode(
                k,
                percent_encoding::NON_ALPHANUMERIC,
            ));
            target.push('=');
            target.push_str(
                &t.render(ctx, parts, results, Place::Query)
                    .map_err(missing)?,
            );
        }
        let uri: Uri = target.parse().map_err(|_| "invalid_request")?;
        let mut headers = HeaderMap::with_capacity(8 + call.headers.len());
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        for name in TRACE_HEADERS.iter().chain(&call.forward_headers) {
            for v in parts.headers.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        for (name, t) in &call.headers {
            let v = t
                .render(ctx, parts, results, Place::Text)
                .map_err(missing)?;
            let v = HeaderValue::from_str(&v).map_err(|_| "invalid_request")?;
            headers.insert(name.clone(), v);
        }
        let body = match &call.body {
            None => Body::Empty,
            Some(b) => {
                let v = b.render(ctx, parts, results).map_err(missing)?;
                let bytes = Bytes::from(serde_json::to_vec(&v).map_err(|_| "invalid_request")?);
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                Body::full(bytes)
            }
        };
        let child = ctx.child(call.method.clone(), uri.clone());
        let mut req = http::Request::new(body);
        *req.method_mut() = call.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        Ok((child, req))
    }

    /// Sends one call and reads its answer, within its time budget.
    async fn run(
        &self,
        mut child: RequestCtx,
        i: usize,
        req: Request,
        deadline: Instant,
    ) -> (usize, Done, Option<Got>) {
        let call = &self.calls[i];
        let began = Instant::now();
        let until = deadline.min(began + call.timeout);
        let binding = call.binding_for(until.saturating_duration_since(began));
        let exchange =
            tokio::time::timeout_at(until, self.exchange(&mut child, req, &binding, call)).await;
        // With the upstream's request timeout cut to this call's budget, its timeout is
        // the budget's.
        let cut = binding.timeouts.request < call.binding.timeouts.request;
        let (result, status, headers, value) = match exchange {
            Err(_) => (Err(CALL_TIMEOUT), 0, None, None),
            Ok(Err((f, _))) if cut && f.code == "upstream_timeout" => {
                (Err(CALL_TIMEOUT), 0, None, None)
            }
            Ok(Err(f)) => (Err(f.0), f.1, None, None),
            Ok(Ok((v, status, headers))) => (Ok(()), status, Some(headers), Some(v)),
        };
        (
            i,
            Done {
                result,
                status,
                endpoint: child.endpoint,
                elapsed: Some(began.elapsed()),
                headers,
            },
            value,
        )
    }

    /// The exchange of one call: the request through `Forward`, the answer read whole,
    /// checked, parsed and shaped.
    async fn exchange(
        &self,
        child: &mut RequestCtx,
        req: Request,
        binding: &Binding,
        call: &Call,
    ) -> Result<(Got, u16, HeaderMap), (Failure, u16)> {
        let resp = self
            .forward
            .forward(child, req, binding)
            .await
            .map_err(|e| (Failure::from_error(&e), 0))?;
        let status = resp.status().as_u16();
        let (head, body) = resp.into_parts();
        if !(200..300).contains(&status) {
            return Err((
                Failure::new("upstream_status", Kind::Status(status)),
                status,
            ));
        }
        let fail = |code| (Failure::new(code, Kind::Other), status);
        let bytes = read_capped(body, &head.headers, call.max_body)
            .await
            .map_err(fail)?;
        let mut value = if bytes.is_empty() && status == 204 {
            Value::Null
        } else {
            if !shape::depth_within(&bytes, self.max_depth) {
                return Err(fail("too_deep"));
            }
            if call.raw {
                serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
                    .map_err(|_| fail("not_json"))?;
                return Ok((Got::Raw(bytes), status, head.headers));
            }
            serde_json::from_slice::<Value>(&bytes).map_err(|_| fail("not_json"))?
        };
        if let Some(ptr) = &call.take {
            value = match value.pointer_mut(ptr) {
                Some(v) => v.take(),
                None => return Err(fail("take_missing")),
            };
        }
        if !call.select.is_empty() {
            shape::select(&mut value, &call.select);
        }
        if !call.omit.is_empty() {
            shape::omit(&mut value, &call.omit);
        }
        if call.member.is_none() && !value.is_object() {
            return Err(fail("not_an_object"));
        }
        Ok((Got::Value(value), status, head.headers))
    }

    /// Counts every call and leaves their list for the access log.
    fn account(&self, ctx: &mut RequestCtx, done: &mut [Option<Done>]) {
        let mut traces = Vec::with_capacity(self.calls.len());
        for (call, d) in self.calls.iter().zip(done.iter()) {
            let (outcome, index, error, d) = match d {
                None => ("skipped", 3, "cancelled", None),
                Some(d) => match &d.result {
                    Ok(_) => ("ok", 0, "", Some(d)),
                    Err(f) => {
                        let (o, i) = f.outcome();
                        (o, i, f.code, Some(d))
                    }
                },
            };
            let elapsed = d.and_then(|d| d.elapsed);
            call.stats.record(index, elapsed);
            traces.push(CallTrace {
                call: call.name.clone(),
                upstream: call.binding.cluster.name.clone(),
                endpoint: d.and_then(|d| d.endpoint),
                status: d.map_or(0, |d| d.status),
                duration: elapsed,
                outcome,
                error,
            });
        }
        ctx.extensions.insert(CallTraces(traces));
    }

    /// The composed answer.
    fn answer(
        &self,
        results: &mut [Option<Value>],
        raws: &mut [Option<Bytes>],
        done: &mut [Option<Done>],
    ) -> Response {
        let mut doc = Document::default();
        let mut partial: Vec<&str> = Vec::new();
        let mut errors = serde_json::Map::new();
        let mut cache = CacheControl::default();
        for (i, call) in self.calls.iter().enumerate() {
            let d = done[i].as_ref();
            let content = match d.map(|d| &d.result) {
                Some(Ok(_)) => {
                    let headers = d.and_then(|d| d.headers.as_ref());
                    cache.add(
                        headers
                            .and_then(|h| h.get(CACHE_CONTROL))
                            .and_then(|v| v.to_str().ok()),
                    );
                    match (raws[i].take(), results[i].take()) {
                        (Some(b), _) => Some(Got::Raw(b)),
                        (None, v) => v.map(Got::Value),
                    }
                }
                failure => {
                    partial.push(&call.name);
                    cache.degrade();
                    if self.errors {
                        let code = match failure {
                            Some(Err(f)) => f.code,
                            _ => "cancelled",
                        };
                        let mut e = serde_json::Map::new();
                        e.insert("code".into(), Value::from(code));
                        if let Some(s) = d.map(|d| d.status).filter(|s| *s != 0) {
                            e.insert("status".into(), Value::from(s));
                        }
                        errors.insert(call.name.to_string(), Value::Object(e));
                    }
                    call.default.clone().map(Got::Value)
                }
            };
            match (&call.member, content) {
                (_, None) => {}
                (Some(m), Some(c)) => doc.put(std::borrow::Cow::Borrowed(m), c),
                (None, Some(Got::Value(Value::Object(fields)))) => {
                    for (k, v) in fields {
                        doc.put_merged(k, Got::Value(v));
                    }
                }
                (None, Some(_)) => {}
            }
        }
        if self.errors && !errors.is_empty() {
            doc.put_merged("_errors".into(), Got::Value(Value::Object(errors)));
        }
        let body = doc.into_bytes();
        let mut resp = http::Response::new(Body::full(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        if let Some(src) = self
            .headers_from
            .and_then(|i| done[i].as_mut())
            .and_then(|d| d.headers.take())
        {
            let mut last: Option<HeaderName> = None;
            for (name, value) in src {
                if let Some(n) = name {
                    last = Some(n);
                }
                if let Some(n) = &last {
                    if !NOT_COPIED.contains(&n.as_str()) {
                        h.append(n.clone(), value);
                    }
                }
            }
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(v) = cache.value().and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(CACHE_CONTROL, v);
        }
        if let (Some(name), false) = (&self.partial_header, partial.is_empty()) {
            if let Ok(v) = HeaderValue::from_str(&partial.join(",")) {
                h.insert(name.clone(), v);
            }
        }
        resp
    }
}

/// The answer's members in order, written out once at the end; a member merged in later
/// replaces one of the same name in its place.
#[derive(Default)]
struct Document<'a> {
    entries: Vec<(std::borrow::Cow<'a, str>, Got)>,
    /// Member positions by name, made at the first merge (before it, names are unique:
    /// the configuration is checked for that).
    index: Option<std::collections::HashMap<String, usize>>,
}

impl<'a> Document<'a> {
    fn put(&mut self, key: std::borrow::Cow<'a, str>, value: Got) {
        if let Some(index) = &mut self.index {
            if let Some(&at) = index.get(key.as_ref()) {
                self.entries[at].1 = value;
                return;
            }
            index.insert(key.to_string(), self.entries.len());
        }
        self.entries.push((key, value));
    }

    fn put_merged(&mut self, key: String, value: Got) {
        if self.index.is_none() {
            let index = self
                .entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.to_string(), i))
                .collect();
            self.index = Some(index);
        }
        self.put(std::borrow::Cow::Owned(key), value);
    }

    fn into_bytes(self) -> Bytes {
        let raw: usize = self
            .entries
            .iter()
            .map(|(k, v)| k.len() + 4 + if let Got::Raw(b) = v { b.len() } else { 16 })
            .sum();
        let mut out = Vec::with_capacity(raw + 2);
        out.push(b'{');
        for (n, (key, value)) in self.entries.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            // Writing a string or a parsed value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, key.as_ref());
            out.push(b':');
            match value {
                Got::Raw(b) => out.extend_from_slice(b),
                Got::Value(v) => {
                    let _ = serde_json::to_writer(&mut out, v);
                }
            }
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

impl Call {
    /// The link to the upstream with the request timeout cut to the time left.
    fn binding_for(&self, left: Duration) -> Binding {
        let mut timeouts = self.binding.timeouts;
        timeouts.request = timeouts.request.min(left).max(Duration::from_millis(1));
        let ms = timeouts.request.as_millis() as u64;
        Binding {
            cluster: self.binding.cluster.clone(),
            timeouts,
            stats: self.binding.stats.clone(),
            deadline_values: [
                HeaderValue::from(ms),
                HeaderValue::from(ms.saturating_sub(1)),
            ],
        }
    }

    /// The upstream called.
    pub fn upstream(&self) -> &str {
        &self.binding.cluster.name
    }
}

/// Reads a body up to `cap` bytes; a longer one is refused without reading the rest.
pub(crate) async fn read_capped(
    mut body: Body,
    headers: &HeaderMap,
    cap: u64,
) -> Result<Bytes, &'static str> {
    use http_body_util::BodyExt;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err("too_large");
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| "upstream_body_failed")?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > cap {
                return Err("too_large");
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Each call's stage: 1 for calls without dependencies, then one more than the latest
/// of its dependencies.
fn stages(calls: &[Call]) -> Vec<usize> {
    let mut stage = vec![0usize; calls.len()];
    for _ in 0..calls.len() {
        for (i, c) in calls.iter().enumerate() {
            let after = (0..calls.len())
                .filter(|j| c.deps & (1 << j) != 0)
                .map(|j| stage[j])
                .max()
                .unwrap_or(0);
            stage[i] = after + 1;
        }
    }
    stage
}

/// A cycle among the calls' dependencies, as call indexes, if there is one.
fn find_cycle(calls: &[Call]) -> Option<Vec<usize>> {
    // Kahn: peel off calls whose dependencies are all peeled; what stays is in a cycle
    // or waits for one.
    let mut peeled = 0u64;
    loop {
        let before = peeled;
        for (i, c) in calls.iter().enumerate() {
            if c.deps & !peeled == 0 {
                peeled |= 1 << i;
            }
        }
        if peeled == before {
            break;
        }
    }
    let start = (0..calls.len()).find(|i| peeled & (1 << i) == 0)?;
    // Walk unpeeled dependencies until a call repeats.
    let mut path = vec![start];
    let mut at = start;
    loop {
        let next =
            (0..calls.len()).find(|j| calls[at].deps & (1 << j) != 0 && peeled & (1 << j) == 0)?;
        if let Some(pos) = path.iter().position(|&p| p == next) {
            return Some(path.split_off(pos));
        }
        path.push(next);
        at = next;
    }
}
