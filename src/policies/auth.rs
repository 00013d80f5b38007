//! `auth`: several authentication policies on one route, as alternatives (`any`) or
//! all required (`all`), with an optional anonymous consumer, as Kong allows.
//!
//! - `any`: the policies are tried in order; the first that authenticates the request
//!   wins. When none does, the request is the `anonymous` consumer if one is configured
//!   (the upstream sees `x-anonymous-consumer: true`), otherwise it gets the first
//!   refusal, with the challenges of every scheme tried in `WWW-Authenticate`. When a
//!   policy could not reach its identity provider (503), there is no anonymous
//!   fallback: authentication fails closed.
//! - `all`: every policy must pass, and the consumers they identify must be the same
//!   one (403 otherwise); the request is that consumer.
//!
//! Only authentication policies can be listed: `api_key`, `jwt`, `basic_auth`, `mtls`,
//! `oauth2_introspection`. Put `acl` after the `auth` policy.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::consumers::{Consumer, Identity};
use super::{BuildCx, Policy, PolicySpec};
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};

/// `type: auth`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Alternatives: the first that authenticates wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<PolicySpec>,
    /// All of these must pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<PolicySpec>,
    /// With `any`: the consumer a request without a valid credential becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<String>,
}

/// The built `auth` policy.
pub struct Auth {
    any: bool,
    policies: Vec<Policy>,
    anonymous: Option<Arc<Consumer>>,
    consumers: Arc<super::consumers::Consumers>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("any", &self.any)
            .finish_non_exhaustive()
    }
}

const AUTHENTICATORS: [&str; 5] = [
    "api_key",
    "jwt",
    "basic_auth",
    "mtls",
    "oauth2_introspection",
];

impl Auth {
    /// Builds the policy and the policies it lists.
    pub fn build(path: &str, spec: &AuthSpec, cx: &BuildCx<'_>, p: &mut Problems) -> Option<Self> {
        let (any, list, field) = match (spec.any.is_empty(), spec.all.is_empty()) {
            (false, true) => (true, &spec.any, "any"),
            (true, false) => (false, &spec.all, "all"),
            _ => {
                p.push(
                    path.to_string(),
                    "give exactly one of `any` or `all`, with at least one policy",
                );
                return None;
            }
        };
        let mut policies = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let at = format!("{path}.{field}[{i}]");
            if !AUTHENTICATORS.contains(&s.kind()) {
                p.push(
                    at,
                    format!(
                        "`{}` is not an authentication policy (use one of {})",
                        s.kind(),
                        AUTHENTICATORS.join(", ")
                    ),
                );
                continue;
            }
            if let Some(built) = s.build(&at, cx, p) {
                policies.push(built);
            }
        }
        let anonymous = match &spec.anonymous {
            None => None,
            Some(_) if !any => {
                p.push(format!("{path}.anonymous"), "only meaningful with `any`");
                None
            }
            Some(name) => match cx.consumers.by_name(name) {
                Some(c) => Some(c.clone()),
                None => {
                    p.push(
                        format!("{path}.anonymous"),
                        format!("no consumer is called `{name}`"),
                    );
                    None
                }
            },
        };
        Some(Self {
            any,
            policies,
            anonymous,
            consumers: cx.consumers.clone(),
        })
    }

    /// Runs the listed policies as `any` or `all` says.
    pub async fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        if !self.any {
            let mut first: Option<Identity> = None;
            for policy in &self.policies {
                Box::pin(policy.on_request(ctx, req)).await?;
                let now = ctx.identity.clone();
                match (&first, &now) {
                    (None, _) => first = now,
                    (Some(f), Some(n)) => match (&f.consumer, &n.consumer) {
                        (Some(a), Some(b)) if !Arc::ptr_eq(a, b) => {
                            return Err(GatewayError::Forbidden(
                                "the credentials belong to different consumers",
                            ));
                        }
                        (None, Some(_)) => first = now,
                        _ => {}
                    },
                    _ => {}
                }
            }
            if let Some(who) = &first {
                self.consumers.write_headers(who, true, req.headers_mut());
            }
            ctx.identity = first;
            return Ok(Flow::Continue);
        }
        let mut refusal: Option<GatewayError> = None;
        let mut challenges: Vec<http::HeaderValue> = Vec::new();
        for policy in &self.policies {
            match Box::pin(policy.on_request(ctx, req)).await {
                Ok(flow) => return Ok(flow),
                Err(e) => {
                    if let GatewayError::Unauthorized {
                        challenge: Some(c), ..
                    } = &e
                    {
                        if !challenges.contains(c) {
                            challenges.push(c.clone());
                        }
                    }
                    refusal.get_or_insert(e);
                }
            }
        }
        // An identity provider that could not be asked is not "no credential": the
        // request fails closed (503) rather than becoming the anonymous consumer.
        let unavailable = matches!(refusal, Some(GatewayError::AuthUnavailable));
        if let Some(anon) = self.anonymous.as_ref().filter(|_| !unavailable) {
            let mut who = Identity::new(Some(anon.clone()), "anonymous");
            who.anonymous = true;
            self.consumers
                .write_headers(&who, ctx.identity.is_some(), req.headers_mut());
            ctx.identity = Some(who);
            return Ok(Flow::Continue);
        }
        Err(match refusal {
            Some(GatewayError::Unauthorized { reason, .. }) => GatewayError::Unauthorized {
                reason,
                challenge: join(&challenges),
            },
            Some(other) => other,
            None => GatewayError::Unauthorized {
                reason: "no credentials",
                challenge: None,
            },
        })
    }

    /// The listed policies' response phases, in reverse.
    pub fn on_response(&self, ctx: &mut RequestCtx, resp: &mut Response) {
        for policy in self.policies.iter().rev() {
            policy.on_response(ctx, resp);
        }
    }
}

/// Several challenges in one `WWW-Authenticate` field (RFC 9110 §11.6.1 allows a list).
fn join(challenges: &[http::HeaderValue]) -> Option<http::HeaderValue> {
    match challenges {
        [] => None,
        [one] => Some(one.clone()),
        many => {
            let text: Vec<&str> = many.iter().filter_map(|c| c.to_str().ok()).collect();
            http::HeaderValue::from_str(&text.join(", ")).ok()
        }
    }
}
