//! `jwt`: authenticates a request by a JSON Web Token (RFC 7519) signed by a configured
//! provider's key.
//!
//! The token comes from `Authorization: Bearer`, another header, or a cookie. It is
//! taken apart strictly ([`token`]), its provider chosen by its `iss`, its signature
//! checked with the provider's keys ([`keys`]: inline JWKs, PEM files, a secret, a JWKS
//! file or a JWKS URL), then its claims (expiry and not-before with a leeway, issuer,
//! audience, required claims, maximum lifetime). A token whose consumer claim (`sub` by
//! default) is a consumer's `jwt_subjects` entry is that consumer. Chosen claims are
//! forwarded as headers, and the claims stay in the request context for `acl`.
//!
//! Failures: no token, 401 `WWW-Authenticate: Bearer`; a bad token, 401 `Bearer
//! error="invalid_token"`; a provider whose keys cannot be loaded, 503
//! `auth_unavailable` (logged). A malformed token is never a 5xx.

mod cache;
pub mod keys;
mod spec;
pub mod token;

pub use spec::{JwksSpec, JwtSpec, PemKeySpec, ProviderSpec, TokenCacheSpec};

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use jsonwebtoken::jwk::Jwk;

use super::consumers::{Consumers, Identity};
use super::BuildCx;
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};
use cache::{TokenCache, Verified};
use keys::{KeySet, RemoteJwks, RemoteSettings, Verdict};
use token::{ClaimRules, Claims};

/// A provider, compiled.
struct Provider {
    rules: ClaimRules,
    /// Whether its tokens may name consumers (`jwt_subjects`): only a provider with an
    /// `issuer`, so that a catch-all provider cannot mint another issuer's consumers.
    maps_consumers: bool,
    local: Option<Arc<KeySet>>,
    remote: Option<Arc<RemoteJwks>>,
}

/// The built `jwt` policy.
pub struct Jwt {
    providers: Vec<Provider>,
    header: HeaderName,
    bearer: bool,
    cookie: Option<String>,
    consumer_claim: String,
    forward: Vec<(HeaderName, String)>,
    forward_token: bool,
    consumers: Arc<Consumers>,
    cache: Option<TokenCache>,
}

/// The remote key set that verified a token (`None`: the policy's own keys).
type VerifiedBy = Option<Weak<(KeySet, Instant)>>;

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("providers", &self.providers.len())
            .finish_non_exhaustive()
    }
}

const MISSING: HeaderValue = HeaderValue::from_static("Bearer");
const INVALID: HeaderValue = HeaderValue::from_static("Bearer error=\"invalid_token\"");

fn refuse(reason: &'static str) -> GatewayError {
    GatewayError::Unauthorized {
        reason,
        challenge: Some(INVALID),
    }
}

fn build_provider(
    path: &str,
    spec: &ProviderSpec,
    cx: &BuildCx<'_>,
    p: &mut Problems,
) -> Option<Provider> {
    let base = cx.base;
    let read = |file: &str| {
        let path = crate::tls::resolve(base, file);
        cx.files.borrow_mut().push(path.clone());
        std::fs::read(path)
    };
    let mut allowed = Vec::new();
    for (i, name) in spec.algorithms.iter().enumerate() {
        match token::algorithm(name) {
            Some(a) => allowed.push(a),
            None => p.push(format!("{path}.algorithms[{i}]"), format!("`{name}` is not a supported algorithm (HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)")),
        }
    }
    let mut local = KeySet::default();
    let mut remote = None;
    if let Some(secret) = &spec.secret {
        if let Err(e) = local.add_secret(secret.as_bytes(), &allowed) {
            p.push(format!("{path}.secret"), e);
        }
    }
    for (i, k) in spec.pem.iter().enumerate() {
        let at = format!("{path}.pem[{i}]");
        let Some(alg) = token::algorithm(&k.algorithm) else {
            p.push(
                format!("{at}.algorithm"),
                format!("`{}` is not a supported algorithm", k.algorithm),
            );
            continue;
        };
        let text = match (&k.file, &k.text) {
            (Some(f), None) => match read(f) {
                Ok(t) => t,
                Err(e) => {
                    p.push(format!("{at}.file"), format!("cannot read `{f}`: {e}"));
                    continue;
                }
            },
            (None, Some(t)) => t.as_bytes().to_vec(),
            _ => {
                p.push(at, "give one of `file` or `text`");
                continue;
            }
        };
        if let Err(e) = local.add_pem(&text, alg, k.kid.clone()) {
            p.push(at, e);
        }
    }
    if let Some(j) = &spec.jwks {
        let at = format!("{path}.jwks");
        if j.timeout.0.is_zero() {
            p.push(format!("{at}.timeout"), "must be more than 0");
        }
        match (&j.uri, &j.file, j.keys.is_empty()) {
            (Some(uri), None, true) => match uri.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("https" | "http")) && u.host().is_some() => {
                    let tls = match &j.tls {
                        Some(t) => match crate::tls::client::UpstreamTls::build(t, false, base) {
                            Ok(t) => Some(t),
                            Err((field, e)) => {
                                p.push(format!("{at}.tls.{field}"), e);
                                None
                            }
                        },
                        None => None,
                    };
                    let settings = RemoteSettings {
                        uri: uri.clone(),
                        timeout: j.timeout.0,
                        max_size: j.max_size.0 as usize,
                        refresh: j.refresh_interval.0.max(Duration::from_secs(1)),
                        min_refresh: j.min_refresh_interval.0,
                        max_stale: j.max_stale.0,
                        algorithms: spec.algorithms.clone(),
                        tls: format!("{:?}", j.tls),
                    };
                    if u.scheme_str() == Some("http") {
                        tracing::warn!(uri = %uri, "JWKS over plain HTTP: anyone on the path can replace the keys; use https");
                    }
                    remote = Some(RemoteJwks::shared(settings, u, allowed.clone(), tls));
                }
                _ => p.push(
                    format!("{at}.uri"),
                    format!("`{uri}` is not an http:// or https:// URL"),
                ),
            },
            (None, Some(file), true) => match read(file) {
                Ok(bytes) => match KeySet::from_jwks(&bytes, &allowed, false) {
                    Ok((set, notes)) => {
                        for n in notes {
                            tracing::warn!(file = %file, "JWKS {n}");
                        }
                        local = merge(local, set);
                    }
                    Err(e) => p.push(format!("{at}.file"), e),
                },
                Err(e) => p.push(format!("{at}.file"), format!("cannot read `{file}`: {e}")),
            },
            (None, None, false) => {
                for (i, v) in j.keys.iter().enumerate() {
                    let added = serde_json::from_value::<Jwk>(v.clone())
                        .map_err(|e| format!("not a JWK: {e}"))
                        .and_then(|jwk| local.add_jwk(&jwk, &allowed));
                    if let Err(e) = added {
                        p.push(format!("{at}.keys[{i}]"), e);
                    }
                }
            }
            _ => p.push(at, "give exactly one of `uri`, `file` or `keys`"),
        }
    }
    if local.is_empty() && remote.is_none() {
        p.push(
            path.to_string(),
            "a provider needs keys: `jwks`, `pem` or `secret`",
        );
    }
    Some(Provider {
        maps_consumers: spec.issuer.is_some() && spec.map_consumers,
        rules: ClaimRules {
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            required: spec.required_claims.clone(),
            leeway: 0.0,
            max_lifetime: spec.max_lifetime.map(|d| d.0.as_secs_f64()),
        },
        local: (!local.is_empty()).then(|| Arc::new(local)),
        remote,
    })
}

fn merge(mut a: KeySet, b: KeySet) -> KeySet {
    if a.is_empty() {
        return b;
    }
    a.extend(b);
    a
}

impl Jwt {
    /// Builds the policy: keys are loaded now (files, inline), or their cache is found
    /// or created (URLs; fetched on first use).
    pub fn build(path: &str, spec: &JwtSpec, cx: &BuildCx<'_>, p: &mut Problems) -> Option<Self> {
        if spec.providers.is_empty() {
            p.push(
                format!("{path}.providers"),
                "at least one provider is needed",
            );
        }
        let leeway = spec.leeway.0.as_secs_f64();
        let providers: Vec<Provider> = spec
            .providers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| build_provider(&format!("{path}.providers[{i}]"), s, cx, p))
            .map(|mut pr| {
                pr.rules.leeway = leeway;
                pr
            })
            .collect();
        let header = HeaderName::from_bytes(spec.header.as_bytes())
            .map_err(|_| {
                p.push(
                    format!("{path}.header"),
                    format!("`{}` is not a valid header name", spec.header),
                )
            })
            .ok()?;
        let mut forward = Vec::new();
        for (name, claim) in &spec.forward_claims {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => forward.push((h, claim.clone())),
                Err(_) => p.push(
                    format!("{path}.forward_claims.{name}"),
                    "not a valid header name",
                ),
            }
        }
        Some(Self {
            bearer: header == AUTHORIZATION,
            header,
            providers,
            cookie: spec.cookie.clone(),
            consumer_claim: spec.consumer_claim.clone(),
            forward,
            forward_token: spec.forward_token,
            consumers: cx.consumers.clone(),
            cache: TokenCache::new(spec.cache.max_entries),
        })
    }

    fn token<'r>(&self, req: &'r Request) -> Option<&'r str> {
        if let Some(v) = req
            .headers()
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
        {
            if !self.bearer {
                return Some(v.strip_prefix("Bearer ").unwrap_or(v).trim());
            }
            let (scheme, rest) = v.split_once(' ')?;
            return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
        }
        let name = self.cookie.as_deref()?;
        req.headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then_some(v)
            })
    }

    /// Verifies the token and records who called, without waiting when the keys at
    /// hand decide (inline, file, or cached remote keys). `Err(token)`: the remote
    /// keys must be fetched first; call [`Jwt::on_request_remote`] with it.
    pub fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Result<Flow, GatewayError>, String> {
        let now = now_secs();
        let (index, summary, payload, by, raw) = {
            let Some(raw) = self.token(req).filter(|t| !t.is_empty()) else {
                return Ok(Err(GatewayError::Unauthorized {
                    reason: "no bearer token in the request",
                    challenge: Some(MISSING),
                }));
            };
            if let Some(cache) = &self.cache {
                if let Some(hit) = cache.get(raw, now) {
                    if self.keys_unchanged(&hit) {
                        self.apply(ctx, req, &hit);
                        return Ok(Ok(Flow::Continue));
                    }
                    cache.remove(raw);
                }
            }
            let parsed = match token::parse(raw) {
                Ok(t) => t,
                Err(e) => return Ok(Err(refuse(e))),
            };
            let Some(index) = self.provider_for(&parsed) else {
                return Ok(Err(refuse("token issuer not accepted")));
            };
            match self.verify_at_hand(&self.providers[index], &parsed) {
                Some(Ok(by)) => {
                    let keep = (self.cache.is_some() && raw.len() <= cache::MAX_TOKEN)
                        .then(|| Box::<str>::from(raw));
                    (index, parsed.claims, parsed.payload, by, keep)
                }
                Some(Err(e)) => return Ok(Err(e)),
                None => return Err(raw.to_owned()),
            }
        };
        Ok(self.finish(ctx, req, index, summary, payload, by, raw.as_deref(), now))
    }

    /// Whether the remote keys that verified a cached token are still the ones in use.
    fn keys_unchanged(&self, v: &Verified) -> bool {
        let Some(by) = &v.keys else { return true };
        self.providers[v.provider]
            .remote
            .as_ref()
            .and_then(|r| r.cached())
            .is_some_and(|k| std::ptr::eq(Arc::as_ptr(&k), by.as_ptr()))
    }

    /// The rest of [`Jwt::on_request`] when remote keys must be fetched.
    pub async fn on_request_remote(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
        raw: String,
    ) -> Result<Flow, GatewayError> {
        let parsed = token::parse(&raw).map_err(refuse)?;
        let index = self
            .provider_for(&parsed)
            .ok_or_else(|| refuse("token issuer not accepted"))?;
        let provider = &self.providers[index];
        let remote = provider
            .remote
            .as_ref()
            .ok_or_else(|| refuse("token signed by an unknown key"))?;
        let verdict = |keys: &KeySet| {
            keys.verify(
                parsed.alg,
                parsed.kid.as_deref(),
                parsed.signing_input,
                parsed.signature,
            )
        };
        let Some(keys) = remote.keys().await else {
            tracing::error!(
                route = ctx.route.as_deref().unwrap_or(""),
                "JWT keys of a provider could not be loaded: answering 503"
            );
            return Err(GatewayError::AuthUnavailable);
        };
        let by = match verdict(&keys.0) {
            Verdict::Valid => Arc::downgrade(&keys),
            Verdict::Invalid => return Err(refuse("token signature invalid")),
            Verdict::UnknownKid => {
                // Another request may have fetched the new document meanwhile (and
                // this one been rate-limited): the cache is read again either way.
                remote.refresh_for_unknown_kid().await;
                match remote.cached() {
                    Some(k) if verdict(&k.0) == Verdict::Valid => Arc::downgrade(&k),
                    _ => return Err(refuse("token signed by an unknown key")),
                }
            }
        };
        let (summary, payload) = (parsed.claims, parsed.payload);
        self.finish(
            ctx,
            req,
            index,
            summary,
            payload,
            Some(by),
            Some(&raw),
            now_secs(),
        )
    }

    fn provider_for(&self, t: &token::Parsed<'_>) -> Option<usize> {
        let iss = t.claims.iss.as_deref();
        self.providers
            .iter()
            .position(|pr| pr.rules.issuer.is_some() && pr.rules.issuer.as_deref() == iss)
            .or_else(|| {
                self.providers
                    .iter()
                    .position(|pr| pr.rules.issuer.is_none())
            })
    }

    /// The signature check with the keys at hand; `None` when remote keys are needed
    /// (none cached yet, or an unknown `kid`).
    fn verify_at_hand(
        &self,
        provider: &Provider,
        t: &token::Parsed<'_>,
    ) -> Option<Result<VerifiedBy, GatewayError>> {
        let kid = t.kid.as_deref();
        let check = |keys: &KeySet| keys.verify(t.alg, kid, t.signing_input, t.signature);
        let local = provider.local.as_deref().map(check);
        if local == Some(Verdict::Valid) {
            return Some(Ok(None));
        }
        let Some(remote) = &provider.remote else {
            return Some(Err(refuse(if local == Some(Verdict::Invalid) {
                "token signature invalid"
            } else {
                "token signed by an unknown key"
            })));
        };
        let keys = remote.cached()?;
        match check(&keys.0) {
            Verdict::Valid => Some(Ok(Some(Arc::downgrade(&keys)))),
            Verdict::Invalid => Some(Err(refuse("token signature invalid"))),
            Verdict::UnknownKid => None,
        }
    }

    /// Claim checks, the consumer, forwarded claims; the token is verified (by the
    /// policy's keys, or by the remote key set `by`). `raw`: the token, to keep in the
    /// cache when it passes.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
        index: usize,
        summary: token::Summary,
        payload: Vec<u8>,
        by: VerifiedBy,
        raw: Option<&str>,
        now: f64,
    ) -> Result<Flow, GatewayError> {
        let provider = &self.providers[index];
        let all = Claims::from_payload(payload);
        token::check_claims(&summary, &all, &provider.rules, now).map_err(refuse)?;
        let consumer = if !provider.maps_consumers {
            None
        } else if self.consumer_claim == "sub" {
            summary
                .sub
                .as_deref()
                .and_then(|s| self.consumers.by_jwt_subject(s))
        } else {
            all.get(&self.consumer_claim)
                .and_then(|v| v.as_str())
                .and_then(|s| self.consumers.by_jwt_subject(s))
        }
        .cloned();
        let forwards = self
            .forward
            .iter()
            .map(|(_, claim)| {
                all.get(claim)
                    .and_then(token::claim_text)
                    .and_then(|t| HeaderValue::from_str(&t).ok())
            })
            .collect();
        let (from, until) = token::valid_window(&summary, provider.rules.leeway);
        let verified = Verified {
            from,
            until,
            keys: by,
            provider: index,
            consumer,
            forwards,
            claims: all,
        };
        self.apply(ctx, req, &verified);
        if let (Some(cache), Some(raw)) = (&self.cache, raw) {
            cache.put(raw, Arc::new(verified), now);
        }
        Ok(Flow::Continue)
    }

    /// What a verified token does to the request: the token removed (unless
    /// forwarded), claims and identity headers set, the identity recorded.
    fn apply(&self, ctx: &mut RequestCtx, req: &mut Request, v: &Verified) {
        let headers = req.headers_mut();
        if !self.forward_token {
            headers.remove(&self.header);
            if let Some(name) = &self.cookie {
                strip_cookie(headers, name);
            }
        }
        for ((name, _), value) in self.forward.iter().zip(v.forwards.iter()) {
            match value {
                Some(v) => {
                    headers.insert(name.clone(), v.clone());
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        let mut who = Identity::new(v.consumer.clone(), "jwt");
        self.consumers
            .write_headers(&who, ctx.identity.is_some(), headers);
        who.claims = Some(v.claims.clone());
        ctx.identity = Some(who);
    }

    /// Nothing to do on the way back.
    pub fn on_response(&self, _ctx: &mut RequestCtx, _resp: &mut Response) {}
}

/// Removes the `name=...` pair from every `Cookie` header (the token the policy read).
fn strip_cookie(headers: &mut http::HeaderMap, name: &str) {
    let values: Vec<HeaderValue> = headers.get_all(COOKIE).iter().cloned().collect();
    if values.is_empty() {
        return;
    }
    headers.remove(COOKIE);
    for v in values {
        let Ok(text) = v.to_str() else {
            headers.append(COOKIE, v);
            continue;
        };
        let kept: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|pair| pair.split_once('=').is_none_or(|(k, _)| k != name))
            .collect();
        if !kept.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                headers.append(COOKIE, v);
            }
        }
    }
}
