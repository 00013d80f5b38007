//! `rate_limit`: admits at most N requests per period per key (a consumer, a client
//! address, a header, a claim, ...), by GCRA ([`gcra`]), with several limits on one key
//! decided together. Over a limit: 429 `rate_limited` with `Retry-After` and the
//! `RateLimit`/`RateLimit-Policy` headers, and the request never reaches the upstream;
//! `mode: delay` holds it instead, up to `max_delay`. With `plans: true`, the consumer's
//! plan (top-level `plans:`) adds its limits to the route's.
//!
//! Stores: `local` ([`local`]), in this process; `redis` ([`shared`]), one atomic script
//! per decision shared by every instance, optionally batched. When Redis fails (the
//! link's deadline and breaker, [`crate::store::redis`]), `on_store_failure` decides:
//! the same limits in this process (`local`), 503 (`deny`) or admit (`allow`).
//!
//! Local state lives in a registry keyed by the route (or `group`), the policy's place and
//! its spec, so a reload that keeps the policy keeps its counters ([`super::state`]).

pub mod gcra;
pub mod local;
mod shared;
mod spec;

pub use spec::{parse_limit, BatchSpec, KeyPart, Mode, OnStoreFailure, RateLimitSpec, Store};

use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};

use super::BuildCx;
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::RequestCtx;
use crate::store::redis::{RedisLink, StoreError};
use gcra::{Decision, Limit};
use local::LocalStore;

/// One list of limits decided together: the route's, or the route's plus a plan's.
#[derive(Debug)]
struct LimitSet {
    limits: Vec<Limit>,
    /// `RateLimit-Policy` names, one per limit (`"10/second"`).
    names: Vec<String>,
    policy_header: HeaderValue,
    /// The Redis script's arguments for these limits.
    args: Vec<Vec<u8>>,
}

impl LimitSet {
    fn new(limits: Vec<Limit>, names: Vec<String>, at: &str, p: &mut Problems) -> Option<Self> {
        let text = limits
            .iter()
            .zip(&names)
            .map(|(l, n)| format!("\"{n}\";q={};w={}", l.count, l.period / 1_000_000_000))
            .collect::<Vec<_>>()
            .join(", ");
        let Ok(policy_header) = HeaderValue::from_str(&text) else {
            p.push(at, "a limit is not valid header text");
            return None;
        };
        Some(Self {
            args: shared::args(&limits),
            limits,
            names,
            policy_header,
        })
    }
}

/// The Redis side of a policy with `store: redis`.
#[derive(Debug)]
struct SharedStore {
    link: Arc<RedisLink>,
    /// `PREFIX rl:{NAMESPACE:` : the start of every key of this policy.
    namespace: String,
    leases: Option<shared::Leases>,
    /// An error answer was logged (once per policy).
    logged: AtomicBool,
}

/// The built `rate_limit` policy.
#[derive(Debug)]
pub struct RateLimit {
    /// Index 0: the route's limits; then one per plan (route's + plan's), when
    /// `plans: true`.
    sets: Vec<LimitSet>,
    plans: Option<HashMap<String, usize>>,
    key: Vec<KeyPart>,
    max_delay: u64,
    store: Arc<LocalStore>,
    shared: Option<SharedStore>,
    on_store_failure: OnStoreFailure,
    on_allowed: bool,
    legacy: bool,
}

/// What the response phase writes on an admitted request: the decision, the limit set,
/// and which policy made it (its address, stable for the snapshot's life).
#[derive(Clone, Copy, Debug)]
pub struct Admitted(Decision, usize, usize);

/// A third or later `rate_limit` on one route keeps its decisions here.
#[derive(Clone, Default)]
struct MoreAdmitted(Vec<Admitted>);

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
    /// Builds the policy at `path` of route `cx.route`.
    pub fn build(
        path: &str,
        spec: &RateLimitSpec,
        cx: &BuildCx<'_>,
        p: &mut Problems,
    ) -> Option<Self> {
        let limits = spec::compile(
            &format!("{path}.limits"),
            &spec.limits,
            spec.burst,
            &format!("{path}.burst"),
            p,
        );
        if spec.mode == Mode::Delay && spec.max_delay.0.is_zero() {
            p.push(
                format!("{path}.max_delay"),
                "`mode: delay` needs a max_delay above 0",
            );
        }
        let mut sets = vec![LimitSet::new(
            limits.clone(),
            spec.limits.clone(),
            &format!("{path}.limits"),
            p,
        )?];
        let plans = if spec.plans {
            if cx.plans.is_empty() {
                p.push(
                    format!("{path}.plans"),
                    "`plans: true` reads the top-level `plans:`, which is empty; define the plans (plans: {free: {limits: [\"100/day\"]}}) or remove `plans: true`",
                );
            }
            let mut index = HashMap::new();
            for (name, plan) in cx.plans {
                let own = spec::compile(
                    &format!("plans.{name}.limits"),
                    &plan.limits,
                    plan.burst,
                    &format!("plans.{name}.burst"),
                    &mut Problems::default(),
                );
                let mut all = limits.clone();
                all.extend(own);
                let mut names = spec.limits.clone();
                names.extend(plan.limits.iter().cloned());
                let set = LimitSet::new(all, names, &format!("plans.{name}.limits"), p)?;
                index.insert(name.clone(), sets.len());
                sets.push(set);
            }
            Some(index)
        } else {
            None
        };
        let shared = match spec.store {
            spec::Store::Local => {
                if spec.batch.is_some() {
                    p.push(
                        format!("{path}.batch"),
                        "batching reserves tokens of the shared store; it needs `store: redis`",
                    );
                }
                None
            }
            spec::Store::Redis => {
                let Some(link) = cx.redis else {
                    p.push(
                        format!("{path}.store"),
                        "`store: redis` needs the top-level `redis:` connection (redis: {url: \"redis://127.0.0.1:6379/0\"})",
                    );
                    return None;
                };
                let leases = match &spec.batch {
                    None => None,
                    Some(b) => {
                        if b.tokens < 2 {
                            p.push(
                                format!("{path}.batch.tokens"),
                                "at least 2 (1 is the same as no batching)",
                            );
                        }
                        if b.interval.0.is_zero() {
                            p.push(format!("{path}.batch.interval"), "must be above 0");
                        }
                        if spec.mode == Mode::Delay {
                            p.push(
                                format!("{path}.batch"),
                                "batching admits from reserved tokens at once; it cannot be combined with `mode: delay`",
                            );
                        }
                        Some(shared::Leases::new(
                            b.tokens,
                            b.interval.0.as_nanos() as u64,
                            spec.max_keys,
                        ))
                    }
                };
                let ns = match &spec.group {
                    Some(g) => format!("group:{g}"),
                    None => format!("route:{}#{path}", cx.route),
                };
                Some(SharedStore {
                    namespace: format!("{}rl:{{{ns}:", link.key_prefix()),
                    link: Arc::clone(link),
                    leases,
                    logged: AtomicBool::new(false),
                })
            }
        };
        let identity = match &spec.group {
            Some(g) => format!("rate_limit:group:{g}|{}", spec.identity()),
            None => format!("rate_limit:route:{}#{path}|{}", cx.route, spec.identity()),
        };
        let plan_text = if spec.plans {
            serde_json::to_string(cx.plans).unwrap_or_default()
        } else {
            String::new()
        };
        Some(Self {
            store: super::state::shared(format!("{identity}|{plan_text}"), || {
                LocalStore::new(spec.max_keys)
            }),
            sets,
            plans,
            key: spec.key.0.clone(),
            max_delay: match spec.mode {
                Mode::Reject => 0,
                Mode::Delay => spec.max_delay.0.as_nanos() as u64,
            },
            shared,
            on_store_failure: spec.on_store_failure,
            on_allowed: spec.headers.on_allowed,
            legacy: spec.headers.legacy,
        })
    }

    /// Whether decisions go to Redis (the caller awaits [`RateLimit::on_request_shared`]).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The limit set of this request: its consumer's plan's, else the route's.
    fn set_of(&self, ctx: &RequestCtx) -> usize {
        let Some(plans) = &self.plans else { return 0 };
        ctx.identity
            .as_ref()
            .and_then(|i| i.consumer.as_ref())
            .and_then(|c| c.plan.as_deref())
            .and_then(|plan| plans.get(plan).copied())
            .unwrap_or(0)
    }

    /// The hash of this request's key (and limit set): its parts, each tagged with its
    /// kind, written straight into the store's hasher (nothing allocated).
    fn key(&self, set: usize, ctx: &RequestCtx, req: &Request) -> u64 {
        let mut h = self.store.key_hasher();
        h.write_usize(set);
        for part in &self.key {
            spec::key_part(part, ctx, req, &mut h);
        }
        h.finish()
    }

    /// Admits or refuses the request with the local store; an admitted request must
    /// first wait the returned time (`mode: delay`; zero otherwise).
    pub fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Duration, GatewayError> {
        let set = self.set_of(ctx);
        let limits = &self.sets[set].limits;
        if limits.is_empty() {
            return Ok(Duration::ZERO);
        }
        let key = self.key(set, ctx, req);
        let d = self
            .store
            .decide_hashed(key, limits, now_ns(), self.max_delay);
        self.finish(ctx, set, d)
    }

    /// Admits or refuses the request with the Redis store, following `on_store_failure`
    /// when Redis does not answer.
    pub async fn on_request_shared(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Duration, GatewayError> {
        let Some(shared) = &self.shared else {
            return self.on_request(ctx, req);
        };
        let set = self.set_of(ctx);
        let ls = &self.sets[set];
        if ls.limits.is_empty() {
            return Ok(Duration::ZERO);
        }
        // The local hash finds a lease (and the fallback counters); the Redis key, a
        // digest of the key's bytes, is made only when Redis is asked.
        let local = self.key(set, ctx, req);
        let redis_key = || {
            let mut bytes = spec::KeyBytes::default();
            for part in &self.key {
                spec::key_part(part, ctx, req, &mut bytes);
            }
            let digest = crate::policies::consumers::sha256(&bytes.0);
            let mut key = String::with_capacity(shared.namespace.len() + 33);
            key.push_str(&shared.namespace);
            key.push_str(&crate::tls::identity::hex(&digest[..16]));
            key.push('}');
            key
        };
        let r = match &shared.leases {
            Some(leases) => {
                leases
                    .decide(&shared.link, local, redis_key, &ls.args, now_ns())
                    .await
            }
            None => {
                let key = redis_key();
                shared::decide(&shared.link, key.as_bytes(), &ls.args, self.max_delay).await
            }
        };
        match r {
            Ok(d) => self.finish(ctx, set, d),
            Err(e) => {
                if let StoreError::Answer(text) = &e {
                    if !shared.logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %text, "rate_limit: redis answered an error for a key (logged once per policy); this decision follows on_store_failure");
                    }
                }
                match self.on_store_failure {
                    OnStoreFailure::Local => {
                        let d =
                            self.store
                                .decide_hashed(local, &ls.limits, now_ns(), self.max_delay);
                        self.finish(ctx, set, d)
                    }
                    OnStoreFailure::Deny => Err(GatewayError::RateLimitStoreUnavailable),
                    OnStoreFailure::Allow => Ok(Duration::ZERO),
                }
            }
        }
    }

    fn finish(
        &self,
        ctx: &mut RequestCtx,
        set: usize,
        d: Decision,
    ) -> Result<Duration, GatewayError> {
        if !d.allowed {
            let mut headers = http::HeaderMap::new();
            let secs = d.wait.div_ceil(1_000_000_000).max(1);
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
            self.write_headers(set, &d, &mut headers);
            return Err(GatewayError::RateLimited(Box::new(headers)));
        }
        if self.on_allowed {
            let note = Admitted(d, set, self.id());
            match ctx.rate_limits.iter_mut().find(|s| s.is_none()) {
                Some(slot) => *slot = Some(note),
                None => {
                    let more = ctx.extensions.get_or_insert_default::<MoreAdmitted>();
                    more.0.push(note);
                }
            }
        }
        Ok(Duration::from_nanos(d.wait))
    }

    fn id(&self) -> usize {
        self as *const Self as usize
    }

    fn write_headers(&self, set: usize, d: &Decision, h: &mut http::HeaderMap) {
        use std::fmt::Write as _;
        let ls = &self.sets[set];
        let name = ls.names.get(d.tightest).map_or("", String::as_str);
        let reset = d.reset.div_ceil(1_000_000_000);
        let mut text = String::with_capacity(name.len() + 32);
        let _ = write!(text, "\"{name}\";r={};t={reset}", d.remaining);
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(text)) {
            h.insert(RATELIMIT.clone(), v);
        }
        h.insert(RATELIMIT_POLICY.clone(), ls.policy_header.clone());
        if self.legacy {
            if let Some(l) = ls.limits.get(d.tightest) {
                h.insert(X_LIMIT.clone(), HeaderValue::from(l.count));
            }
            h.insert(X_REMAINING.clone(), HeaderValue::from(d.remaining));
            h.insert(X_RESET.clone(), HeaderValue::from(reset));
        }
    }

    /// Writes the `RateLimit` headers on an admitted request's response.
    pub fn on_response(&self, ctx: &mut RequestCtx, resp: &mut Response) {
        let id = self.id();
        let mine = |s: &Option<Admitted>| s.is_some_and(|a| a.2 == id);
        let note = match ctx.rate_limits.iter_mut().find(|s| mine(s)) {
            Some(slot) => slot.take(),
            None => ctx.extensions.get_mut::<MoreAdmitted>().and_then(|more| {
                let i = more.0.iter().position(|a| a.2 == id)?;
                Some(more.0.remove(i))
            }),
        };
        if let Some(Admitted(d, set, _)) = note {
            self.write_headers(set, &d, resp.headers_mut());
        }
    }
}
