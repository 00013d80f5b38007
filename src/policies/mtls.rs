//! `mtls`: the client certificate the listener verified (`tls.client_auth`) as the
//! request's credential. The certificate maps to a consumer by its fingerprint, a SAN or
//! its subject (`consumers[].mtls_identities`); a route can require that it carries one
//! of some SANs.
//!
//! The chain, validity, key usage and revocation were checked in the TLS handshake; this
//! policy only decides. Without a verified certificate (a listener with
//! `client_auth: optional`, or a plain connection) the request is 403, and so is a
//! certificate without an allowed SAN, or, with `require_consumer`, one that is no
//! consumer's.

use serde::{Deserialize, Serialize};

use super::consumers::{Consumers, Identity};
use super::BuildCx;
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};

/// `type: mtls`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// SANs of which the certificate must carry one (DNS names, URIs such as SPIFFE
    /// ids, e-mail addresses): `*.example.com` matches names under it, a trailing `*` a
    /// prefix (`spiffe://prod/*`), anything else exactly. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_sans: Vec<String>,
    /// Refuse a valid certificate that is no consumer's.
    #[serde(default)]
    pub require_consumer: bool,
}

/// The built `mtls` policy.
#[derive(Debug)]
pub struct Mtls {
    allowed_sans: Vec<String>,
    require_consumer: bool,
    consumers: std::sync::Arc<Consumers>,
}

/// `*.example.com` matches names under example.com, `spiffe://prod/*` matches a prefix,
/// anything else matches exactly (case-insensitive).
fn matches(pattern: &str, value: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix('*') {
        let (v, sfx) = (value.as_bytes(), suffix.as_bytes());
        return v.len() > sfx.len() && v[v.len() - sfx.len()..].eq_ignore_ascii_case(sfx);
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern.eq_ignore_ascii_case(value),
    }
}

impl Mtls {
    /// Builds the policy from its spec.
    pub fn build(path: &str, spec: &MtlsSpec, cx: &BuildCx<'_>, p: &mut Problems) -> Option<Self> {
        for (i, s) in spec.allowed_sans.iter().enumerate() {
            if s.is_empty() {
                p.push(format!("{path}.allowed_sans[{i}]"), "must not be empty");
            }
        }
        Some(Self {
            allowed_sans: spec.allowed_sans.clone(),
            require_consumer: spec.require_consumer,
            consumers: cx.consumers.clone(),
        })
    }

    /// Decides on the connection's verified client certificate.
    pub fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        let Some(id) = ctx.tls.as_ref().and_then(|t| t.client.clone()) else {
            return Err(GatewayError::Forbidden("a client certificate is required"));
        };
        if !self.allowed_sans.is_empty() {
            let sans = id.dns.iter().chain(&id.uris).chain(&id.emails);
            let ok = sans
                .into_iter()
                .any(|san| self.allowed_sans.iter().any(|p| matches(p, san)));
            if !ok {
                return Err(GatewayError::Forbidden(
                    "the client certificate is not allowed here",
                ));
            }
        }
        let consumer = self.consumers.by_certificate(&id).cloned();
        if self.require_consumer && consumer.is_none() {
            return Err(GatewayError::Forbidden(
                "the client certificate belongs to no consumer",
            ));
        }
        let who = Identity::new(consumer, "mtls");
        self.consumers
            .write_headers(&who, ctx.identity.is_some(), req.headers_mut());
        ctx.identity = Some(who);
        Ok(Flow::Continue)
    }

    /// Nothing to do on the way back.
    pub fn on_response(&self, _ctx: &mut RequestCtx, _resp: &mut Response) {}
}
