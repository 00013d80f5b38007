//! `rate_limit`: admits at most N requests per period per key (a consumer, a client
//! address, a header, a claim, ...), by GCRA ([`gcra`]), with several limits on one key
//! decided together. Over a limit: 429 `rate_limited` with `Retry-After` and the
//! `RateLimit`/`RateLimit-Policy` headers, and the request never reaches the upstream;
//! `mode: delay` holds it instead, up to `max_delay`.
//!
//! State lives in a registry keyed by the route (or `group`), the policy's place and its
//! spec, so a reload that keeps the policy keeps its counters ([`super::state`]). The store
//! is `local` ([`local`]); `store: redis` and `plans` are refused at load until the
//! cluster-wide store lands.

pub mod gcra;
pub mod local;
mod spec;

pub use spec::{KeyPart, Mode, RateLimitSpec};

use std::hash::Hasher;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};

use super::BuildCx;
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::RequestCtx;
use gcra::{Decision, Limit};
use local::LocalStore;

/// The built `rate_limit` policy.
#[derive(Debug)]
pub struct RateLimit {
    limits: Vec<Limit>,
    /// `RateLimit-Policy` names, one per limit (`"10/second"`).
    names: Vec<String>,
    policy_header: HeaderValue,
    key: Vec<KeyPart>,
    max_delay: u64,
    store: Arc<LocalStore>,
    on_allowed: bool,
    legacy: bool,
}

/// What the response phase writes on an admitted request.
#[derive(Clone, Copy)]
struct Admitted(Decision);

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Nanoseconds on the limiter's clock (monotonic; paused with tokio's test clock).
fn now_ns() -> u64 {
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    // Offset by a day so that a TAT of 0 (a new key) is always in the past.
    (tokio::time::Instant::now() - start).as_nanos() as u64 + 86_400_000_000_000
}

impl RateLimit {
    /// Builds the policy; `slot` is its place on the route (for the registry).
    pub fn build(
        path: &str,
        spec: &RateLimitSpec,
        cx: &BuildCx<'_>,
        p: &mut Problems,
    ) -> Option<Self> {
        let limits = spec::limits(path, spec, p);
        if spec.plans {
            p.push(
                format!("{path}.plans"),
                "plans are not available yet in this version (the rate_limit issue is in progress); remove `plans: true`",
            );
        }
        if spec.store == spec::Store::Redis {
            p.push(
                format!("{path}.store"),
                "the redis store is not available yet in this version; use `store: local`",
            );
        }
        if spec.mode == Mode::Delay && spec.max_delay.0.is_zero() {
            p.push(
                format!("{path}.max_delay"),
                "`mode: delay` needs a max_delay above 0",
            );
        }
        let names: Vec<String> = spec.limits.clone();
        let policy_header = {
            let text = limits
                .iter()
                .zip(&names)
                .map(|(l, n)| format!("\"{n}\";q={};w={}", l.count, l.period / 1_000_000_000))
                .collect::<Vec<_>>()
                .join(", ");
            match HeaderValue::from_str(&text) {
                Ok(v) => v,
                Err(_) => {
                    p.push(format!("{path}.limits"), "a limit is not valid header text");
                    return None;
                }
            }
        };
        let identity = match &spec.group {
            Some(g) => format!("rate_limit:group:{g}|{}", spec.identity()),
            None => format!("rate_limit:route:{}#{path}|{}", cx.route, spec.identity()),
        };
        Some(Self {
            store: super::state::shared(identity, || LocalStore::new(spec.max_keys)),
            limits,
            names,
            policy_header,
            key: spec.key.0.clone(),
            max_delay: match spec.mode {
                Mode::Reject => 0,
                Mode::Delay => spec.max_delay.0.as_nanos() as u64,
            },
            on_allowed: spec.headers.on_allowed,
            legacy: spec.headers.legacy,
        })
    }

    /// The hash of this request's key: its parts, each tagged with its kind, written
    /// straight into the store's hasher (nothing allocated).
    fn key(&self, ctx: &RequestCtx, req: &Request) -> u64 {
        let mut h = self.store.key_hasher();
        for part in &self.key {
            spec::key_part(part, ctx, req, &mut h);
        }
        h.finish()
    }

    /// Admits or refuses the request; an admitted request must first wait the
    /// returned time (`mode: delay`; zero otherwise).
    pub fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Duration, GatewayError> {
        if self.limits.is_empty() {
            return Ok(Duration::ZERO);
        }
        let key = self.key(ctx, req);
        let d = self
            .store
            .decide_hashed(key, &self.limits, now_ns(), self.max_delay);
        if !d.allowed {
            let mut headers = http::HeaderMap::new();
            let secs = d.wait.div_ceil(1_000_000_000).max(1);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
            self.write_headers(&d, &mut headers);
            return Err(GatewayError::RateLimited(Box::new(headers)));
        }
        if self.on_allowed {
            ctx.extensions.insert(Admitted(d));
        }
        Ok(Duration::from_nanos(d.wait))
    }

    fn write_headers(&self, d: &Decision, h: &mut http::HeaderMap) {
        let name = self.names.get(d.tightest).map_or("", String::as_str);
        let reset = d.reset.div_ceil(1_000_000_000);
        if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r={};t={reset}", d.remaining)) {
            h.insert(RATELIMIT.clone(), v);
        }
        h.insert(RATELIMIT_POLICY.clone(), self.policy_header.clone());
        if self.legacy {
            if let Some(l) = self.limits.get(d.tightest) {
                h.insert(X_LIMIT.clone(), HeaderValue::from(l.count));
            }
            h.insert(X_REMAINING.clone(), HeaderValue::from(d.remaining));
            h.insert(X_RESET.clone(), HeaderValue::from(reset));
        }
    }

    /// Writes the `RateLimit` headers on an admitted request's response.
    pub fn on_response(&self, ctx: &mut RequestCtx, resp: &mut Response) {
        if let Some(Admitted(d)) = ctx.extensions.remove::<Admitted>() {
            self.write_headers(&d, resp.headers_mut());
        }
    }
}
