//! The policy registry: one variant per policy, in the spec enum (what YAML says) and in
//! the runtime enum (what runs). The YAML `type`, the module name, `kind()` and the metric
//! label are the same word.
//!
//! Adding a policy: `NAME.rs` with its `Spec` (serde, unknown keys refused), its build
//! step (every problem with its field path) and its `on_request`/`on_response`; one
//! variant and one arm each below; an end-to-end test in `tests/it/`; `docs/policies/NAME.md`.

pub mod acl;
pub mod api_key;
pub mod auth;
pub mod basic_auth;
pub mod concurrency_limit;
pub mod consumers;
pub mod headers;
pub mod ip_restriction;
pub mod jwt;
pub mod mtls;
pub mod oauth2_introspection;
pub mod rate_limit;
pub mod state;
pub mod ttl_cache;

use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};

/// A policy as written in the config: `{type: headers, ...}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PolicySpec {
    /// Set, append and remove request and response headers.
    Headers(headers::HeadersSpec),
    /// Authenticate by an API key a consumer owns.
    ApiKey(api_key::ApiKeySpec),
    /// Allow or deny by consumer and group.
    Acl(acl::AclSpec),
    /// Allow or deny by client address.
    IpRestriction(ip_restriction::IpRestrictionSpec),
    /// Authenticate by a JSON Web Token.
    Jwt(jwt::JwtSpec),
    /// Authenticate by HTTP Basic credentials of a consumer.
    BasicAuth(basic_auth::BasicAuthSpec),
    /// Authenticate by the verified client certificate.
    Mtls(mtls::MtlsSpec),
    /// Authenticate an opaque token at the authorization server (RFC 7662).
    Oauth2Introspection(oauth2_introspection::IntrospectionSpec),
    /// Several authentication policies as alternatives or all required.
    Auth(auth::AuthSpec),
    /// At most N requests per period per key.
    RateLimit(rate_limit::RateLimitSpec),
    /// At most N requests in flight on a route or group.
    ConcurrencyLimit(concurrency_limit::ConcurrencyLimitSpec),
}

/// Adds the names of the headers `list`'s policies set from a verified identity (`jwt`
/// `forward_claims`), looking into `auth` too.
pub fn identity_header_names(list: &[PolicySpec], out: &mut Vec<String>) {
    for p in list {
        match p {
            PolicySpec::Jwt(j) => {
                out.extend(j.forward_claims.keys().map(|k| k.to_ascii_lowercase()))
            }
            PolicySpec::Auth(a) => {
                identity_header_names(&a.any, out);
                identity_header_names(&a.all, out);
            }
            _ => {}
        }
    }
}

/// What a policy may know when it is built for one route.
pub struct BuildCx<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The route's path parameter names.
    pub params: &'a [String],
    /// The configuration file's folder (relative key files start there).
    pub base: Option<&'a std::path::Path>,
    /// The snapshot's consumers.
    pub consumers: &'a std::sync::Arc<consumers::Consumers>,
    /// Files a policy read (key files): the snapshot reloads when one changes.
    pub files: &'a std::cell::RefCell<Vec<std::path::PathBuf>>,
    /// The top-level `plans:`.
    pub plans: &'a crate::config::redis::Plans,
    /// The shared Redis connection, when `redis:` is configured.
    pub redis: Option<&'a std::sync::Arc<crate::store::redis::RedisLink>>,
}

impl PolicySpec {
    /// The policy type, as written in `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Headers(_) => "headers",
            Self::ApiKey(_) => "api_key",
            Self::Acl(_) => "acl",
            Self::IpRestriction(_) => "ip_restriction",
            Self::Jwt(_) => "jwt",
            Self::BasicAuth(_) => "basic_auth",
            Self::Mtls(_) => "mtls",
            Self::Oauth2Introspection(_) => "oauth2_introspection",
            Self::Auth(_) => "auth",
            Self::RateLimit(_) => "rate_limit",
            Self::ConcurrencyLimit(_) => "concurrency_limit",
        }
    }

    /// The optional `name` given to this instance (used by `skip_policies`).
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Headers(s) => s.name.as_deref(),
            Self::ApiKey(s) => s.name.as_deref(),
            Self::Acl(s) => s.name.as_deref(),
            Self::IpRestriction(s) => s.name.as_deref(),
            Self::Jwt(s) => s.name.as_deref(),
            Self::BasicAuth(s) => s.name.as_deref(),
            Self::Mtls(s) => s.name.as_deref(),
            Self::Oauth2Introspection(s) => s.name.as_deref(),
            Self::Auth(s) => s.name.as_deref(),
            Self::RateLimit(s) => s.name.as_deref(),
            Self::ConcurrencyLimit(s) => s.name.as_deref(),
        }
    }

    /// Builds the runtime policy for one route; problems go to `p` under `path`.
    pub fn build(&self, path: &str, cx: &BuildCx<'_>, p: &mut Problems) -> Option<Policy> {
        match self {
            Self::Headers(s) => headers::Headers::build(path, s, cx, p).map(Policy::Headers),
            Self::ApiKey(s) => api_key::ApiKey::build(path, s, cx, p).map(Policy::ApiKey),
            Self::Acl(s) => acl::Acl::build(path, s, cx, p).map(Policy::Acl),
            Self::IpRestriction(s) => {
                ip_restriction::IpRestriction::build(path, s, cx, p).map(Policy::IpRestriction)
            }
            Self::Jwt(s) => jwt::Jwt::build(path, s, cx, p).map(Policy::Jwt),
            Self::BasicAuth(s) => {
                basic_auth::BasicAuth::build(path, s, cx, p).map(Policy::BasicAuth)
            }
            Self::Mtls(s) => mtls::Mtls::build(path, s, cx, p).map(Policy::Mtls),
            Self::Oauth2Introspection(s) => {
                oauth2_introspection::Introspection::build(path, s, cx, p)
                    .map(|i| Policy::Oauth2Introspection(Box::new(i)))
            }
            Self::Auth(s) => auth::Auth::build(path, s, cx, p).map(Policy::Auth),
            Self::RateLimit(s) => {
                rate_limit::RateLimit::build(path, s, cx, p).map(|r| Policy::RateLimit(Box::new(r)))
            }
            Self::ConcurrencyLimit(s) => concurrency_limit::ConcurrencyLimit::build(path, s, cx, p)
                .map(Policy::ConcurrencyLimit),
        }
    }
}

/// A built policy, shared by every request of a snapshot.
pub enum Policy {
    /// See [`headers`].
    Headers(headers::Headers),
    /// See [`api_key`].
    ApiKey(api_key::ApiKey),
    /// See [`acl`].
    Acl(acl::Acl),
    /// See [`ip_restriction`].
    IpRestriction(ip_restriction::IpRestriction),
    /// See [`jwt`].
    Jwt(jwt::Jwt),
    /// See [`basic_auth`].
    BasicAuth(basic_auth::BasicAuth),
    /// See [`mtls`].
    Mtls(mtls::Mtls),
    /// See [`oauth2_introspection`].
    Oauth2Introspection(Box<oauth2_introspection::Introspection>),
    /// See [`auth`].
    Auth(auth::Auth),
    /// See [`rate_limit`].
    RateLimit(Box<rate_limit::RateLimit>),
    /// See [`concurrency_limit`].
    ConcurrencyLimit(concurrency_limit::ConcurrencyLimit),
    /// Records calls and answers as told: for the pipeline's own tests.
    #[cfg(test)]
    Probe(crate::pipeline::tests::Probe),
}

impl Policy {
    /// The policy type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Headers(_) => "headers",
            Self::ApiKey(_) => "api_key",
            Self::Acl(_) => "acl",
            Self::IpRestriction(_) => "ip_restriction",
            Self::Jwt(_) => "jwt",
            Self::BasicAuth(_) => "basic_auth",
            Self::Mtls(_) => "mtls",
            Self::Oauth2Introspection(_) => "oauth2_introspection",
            Self::Auth(_) => "auth",
            Self::RateLimit(_) => "rate_limit",
            Self::ConcurrencyLimit(_) => "concurrency_limit",
            #[cfg(test)]
            Self::Probe(_) => "probe",
        }
    }

    /// The request phase: `Continue`, answer (`Respond`), or refuse (`Err`).
    pub async fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        match self {
            Self::Headers(p) => p.on_request(ctx, req),
            Self::ApiKey(p) => p.on_request(ctx, req),
            Self::Acl(p) => p.on_request(ctx, req),
            Self::IpRestriction(p) => p.on_request(ctx, req),
            // Keys at hand decide without waiting; a fetch is rare and boxed, so its
            // future does not inflate every policy's.
            Self::Jwt(p) => match p.on_request(ctx, req) {
                Ok(done) => done,
                Err(token) => Box::pin(p.on_request_remote(ctx, req, token)).await,
            },
            Self::BasicAuth(p) => Box::pin(p.on_request(ctx, req)).await,
            Self::Mtls(p) => p.on_request(ctx, req),
            Self::Oauth2Introspection(p) => Box::pin(p.on_request(ctx, req)).await,
            Self::Auth(p) => Box::pin(p.on_request(ctx, req)).await,
            Self::RateLimit(p) => {
                let wait = if p.is_shared() {
                    Box::pin(p.on_request_shared(ctx, req)).await?
                } else {
                    p.on_request(ctx, req)?
                };
                if !wait.is_zero() {
                    Box::pin(tokio::time::sleep(wait)).await;
                }
                Ok(Flow::Continue)
            }
            Self::ConcurrencyLimit(p) => p.on_request(ctx, req),
            #[cfg(test)]
            Self::Probe(p) => p.on_request(),
        }
    }

    /// The response phase, for every response (errors and local answers included).
    pub fn on_response(&self, ctx: &mut RequestCtx, resp: &mut Response) {
        match self {
            Self::Headers(p) => p.on_response(ctx, resp),
            Self::ApiKey(p) => p.on_response(ctx, resp),
            Self::Acl(p) => p.on_response(ctx, resp),
            Self::IpRestriction(p) => p.on_response(ctx, resp),
            Self::Jwt(p) => p.on_response(ctx, resp),
            Self::BasicAuth(p) => p.on_response(ctx, resp),
            Self::Mtls(p) => p.on_response(ctx, resp),
            Self::Oauth2Introspection(p) => p.on_response(ctx, resp),
            Self::Auth(p) => p.on_response(ctx, resp),
            Self::RateLimit(p) => p.on_response(ctx, resp),
            Self::ConcurrencyLimit(p) => p.on_response(ctx, resp),
            #[cfg(test)]
            Self::Probe(p) => p.on_response(resp),
        }
    }
}
