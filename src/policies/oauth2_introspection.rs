//! `oauth2_introspection`: authenticates an opaque bearer token by asking the
//! authorization server about it (RFC 7662).
//!
//! The gateway POSTs `token=<token>&token_type_hint=access_token` to the endpoint with
//! its client credentials (HTTP Basic, RFC 7662 §2.1), with a timeout and a size cap on
//! the answer. Active answers are cached until the token's `exp`, at most `cache_ttl`;
//! inactive ones for `negative_ttl`, so a flood of bad tokens costs one call each per
//! interval. The answer's `sub` (or `consumer_claim`) names the consumer through
//! `consumers[].jwt_subjects`, and its fields are claims for `acl` like a JWT's.
//!
//! Statuses: no token, 401 `Bearer`; inactive or expired, 401 `Bearer
//! error="invalid_token"`; a required scope missing, 403 `Bearer
//! error="insufficient_scope"`; the endpoint down or answering garbage, 503
//! `auth_unavailable` (fail closed).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};

use super::consumers::{sha256, Consumers, Identity};
use super::jwt::token::Claims;
use super::BuildCx;
use crate::config::{Dur, Problems, Size, UpstreamTlsSpec};
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};
use crate::tls::client::UpstreamTls;

/// `type: oauth2_introspection`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The introspection endpoint URL.
    pub endpoint: String,
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// Its client secret (use `${ENV}` or `${file:...}`).
    pub client_secret: String,
    /// Scopes the token must have (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    /// The answer field naming the consumer.
    #[serde(default = "default_claim")]
    pub consumer_claim: String,
    /// The longest an active answer is cached (never past the token's `exp`).
    #[serde(default = "default_cache")]
    pub cache_ttl: Dur,
    /// How long an inactive answer is cached.
    #[serde(default = "default_negative")]
    pub negative_ttl: Dur,
    /// Deadline of one call.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// The largest answer accepted.
    #[serde(default = "default_max_size")]
    pub max_size: Size,
    /// TLS settings for the endpoint (a private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
    /// Keep the token on the request sent upstream (removed by default).
    #[serde(default)]
    pub forward_token: bool,
}

fn default_claim() -> String {
    "sub".into()
}
fn default_cache() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_negative() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_max_size() -> Size {
    Size(64 * 1024)
}

const CACHE_CAP: usize = 50_000;
/// The most calls to the introspection endpoint in flight at once, per policy.
const MAX_IN_FLIGHT: usize = 64;
const MISSING: HeaderValue = HeaderValue::from_static("Bearer");
const INVALID: HeaderValue = HeaderValue::from_static("Bearer error=\"invalid_token\"");

type Answer = Option<Claims>;

/// The built `oauth2_introspection` policy.
pub struct Introspection {
    endpoint: http::Uri,
    credentials: HeaderValue,
    required: Vec<String>,
    consumer_claim: String,
    cache_ttl: Duration,
    negative_ttl: Duration,
    timeout: Duration,
    max_size: usize,
    tls: Option<UpstreamTls>,
    forward_token: bool,
    consumers: Arc<Consumers>,
    cache: super::ttl_cache::TtlCache<Answer>,
    /// Calls in flight to the endpoint: past [`MAX_IN_FLIGHT`], new tokens get 503 at
    /// once instead of piling up connections to the authorization server.
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn form(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Introspection {
    /// Builds the policy from its spec.
    pub fn build(
        path: &str,
        spec: &IntrospectionSpec,
        cx: &BuildCx<'_>,
        p: &mut Problems,
    ) -> Option<Self> {
        if spec.timeout.0.is_zero() {
            p.push(format!("{path}.timeout"), "must be more than 0");
        }
        let endpoint = match spec.endpoint.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some() => u,
            _ => {
                p.push(
                    format!("{path}.endpoint"),
                    format!("`{}` is not an http:// or https:// URL", spec.endpoint),
                );
                return None;
            }
        };
        let tls = match &spec.tls {
            Some(t) => match UpstreamTls::build(t, false, cx.base) {
                Ok(t) => Some(t),
                Err((field, e)) => {
                    p.push(format!("{path}.tls.{field}"), e);
                    None
                }
            },
            None => None,
        };
        // RFC 6749 §2.3.1: the id and secret are form-encoded before the Basic encoding.
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form(&spec.client_id),
            form(&spec.client_secret)
        ));
        let credentials = HeaderValue::from_str(&format!("Basic {basic}")).ok()?;
        Some(Self {
            endpoint,
            credentials,
            required: spec.required_scopes.clone(),
            consumer_claim: spec.consumer_claim.clone(),
            cache_ttl: spec.cache_ttl.0,
            negative_ttl: spec.negative_ttl.0,
            timeout: spec.timeout.0,
            max_size: spec.max_size.0 as usize,
            tls,
            forward_token: spec.forward_token,
            consumers: cx.consumers.clone(),
            cache: super::ttl_cache::TtlCache::new(CACHE_CAP),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// How long `answer` may be cached: inactive ones `negative_ttl`; active ones until
    /// the token's `exp`, at most `cache_ttl`.
    fn ttl(&self, answer: &Answer) -> Duration {
        let Some(claims) = answer else {
            return self.negative_ttl;
        };
        claims
            .get("exp")
            .and_then(|v| v.as_f64())
            .map(|exp| exp - unix_now())
            // An `exp` from the server can be any number: clamp before the conversion,
            // which panics past u64 seconds.
            .map_or(self.cache_ttl, |s| {
                Duration::try_from_secs_f64(s.clamp(0.0, self.cache_ttl.as_secs_f64()))
                    .unwrap_or(self.cache_ttl)
            })
    }

    async fn ask(&self, token: &str) -> Result<Answer, String> {
        let body = format!("token={}&token_type_hint=access_token", form(token));
        let (status, bytes) = crate::http::fetch::fetch(crate::http::fetch::Call {
            url: &self.endpoint,
            method: http::Method::POST,
            headers: vec![
                (AUTHORIZATION, self.credentials.clone()),
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                ),
                (
                    http::header::ACCEPT,
                    HeaderValue::from_static("application/json"),
                ),
            ],
            body: body.into(),
            tls: self.tls.as_ref(),
            timeout: self.timeout,
            max_body: self.max_size,
        })
        .await?;
        if !status.is_success() {
            return Err(format!("answered {status}"));
        }
        let value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes).map_err(|e| format!("not a JSON object: {e}"))?;
        Ok(match value.get("active") {
            Some(serde_json::Value::Bool(true)) => Some(Claims::from_map(value)),
            Some(serde_json::Value::Bool(false)) => None,
            _ => return Err("the answer has no boolean `active`".into()),
        })
    }

    fn token(req: &Request) -> Option<&str> {
        let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|t| !t.is_empty())
    }

    /// Asks about the token (or finds the answer cached) and records who called.
    pub async fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        let Some(token) = Self::token(req) else {
            return Err(GatewayError::Unauthorized {
                reason: "no bearer token in the request",
                challenge: Some(MISSING),
            });
        };
        if token.len() > 16 * 1024 {
            return Err(invalid());
        }
        let key = sha256(token.as_bytes());
        let answer = match self.cache.get(&key) {
            Some(a) => a,
            None => {
                let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
                    tracing::warn!(endpoint = %self.endpoint, "token introspection saturated: answering 503");
                    return Err(GatewayError::AuthUnavailable);
                };
                let token = token.to_owned();
                match self.ask(&token).await {
                    Ok(a) => {
                        self.cache.put(key, a.clone(), self.ttl(&a));
                        a
                    }
                    Err(e) => {
                        tracing::error!(endpoint = %self.endpoint, error = %e, "token introspection failed: answering 503");
                        return Err(GatewayError::AuthUnavailable);
                    }
                }
            }
        };
        let Some(claims) = answer else {
            return Err(invalid());
        };
        if claims
            .get("exp")
            .and_then(|v| v.as_f64())
            .is_some_and(|exp| exp < unix_now())
        {
            return Err(invalid());
        }
        if !self.required.is_empty() {
            let have = claims.scopes();
            if !self.required.iter().all(|s| have.contains(&s.as_str())) {
                return Err(GatewayError::InsufficientScope);
            }
        }
        let consumer = claims
            .get(&self.consumer_claim)
            .and_then(|v| v.as_str())
            .and_then(|s| self.consumers.by_jwt_subject(s))
            .cloned();
        let mut who = Identity::new(consumer, "oauth2_introspection");
        who.claims = Some(claims);
        if !self.forward_token {
            req.headers_mut().remove(AUTHORIZATION);
        }
        self.consumers
            .write_headers(&who, ctx.identity.is_some(), req.headers_mut());
        ctx.identity = Some(who);
        Ok(Flow::Continue)
    }

    /// Nothing to do on the way back.
    pub fn on_response(&self, _ctx: &mut RequestCtx, _resp: &mut Response) {}
}

fn invalid() -> GatewayError {
    GatewayError::Unauthorized {
        reason: "token not active",
        challenge: Some(INVALID),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
