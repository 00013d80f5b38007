//! `acl`: allows or denies an authenticated request by its consumer's name or groups,
//! or by the scopes, roles and claims of its JWT.
//!
//! It runs after an authentication policy. A request that no policy authenticated is a
//! 401 (there is no one to authorize); one whose consumer is denied, or not allowed when
//! an `allow` list is given, is a 403. `deny` wins over `allow`.

use serde::{Deserialize, Serialize};

use super::BuildCx;
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};

/// `type: acl`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AclSpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who may pass (any match): when given, everyone else is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<AclRuleSpec>,
    /// Who may not pass (any match), whatever `allow` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<AclRuleSpec>,
}

/// A set of consumers and groups; a request matches when any of them matches.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclRuleSpec {
    /// Consumer names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// Consumer groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// JWT scopes (`scope`, space-separated, or `scp`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// JWT roles (`roles`, or Keycloak's `realm_access.roles`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// JWT claims and the value each must have: exact, or a prefix ending in `*`; a
    /// claim holding an array matches when any element does.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claims: std::collections::BTreeMap<String, String>,
}

fn value_matches(pattern: &str, v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Array(items) => items.iter().any(|i| value_matches(pattern, i)),
        other => crate::policies::jwt::token::claim_text(other).is_some_and(|text| {
            match pattern.strip_suffix('*') {
                Some(prefix) => text.starts_with(prefix),
                None => text == pattern,
            }
        }),
    }
}

impl AclRuleSpec {
    fn is_empty(&self) -> bool {
        self.consumers.is_empty()
            && self.groups.is_empty()
            && self.scopes.is_empty()
            && self.roles.is_empty()
            && self.claims.is_empty()
    }

    fn matches(&self, ctx: &RequestCtx) -> bool {
        if let Some(c) = ctx.identity.as_ref().and_then(|i| i.consumer.as_ref()) {
            if self.consumers.iter().any(|n| *n == *c.name)
                || self.groups.iter().any(|g| c.groups.contains(g))
            {
                return true;
            }
        }
        let Some(claims) = ctx.identity.as_ref().and_then(|i| i.claims.as_ref()) else {
            return false;
        };
        (!self.scopes.is_empty() && {
            let have = claims.scopes();
            self.scopes.iter().any(|s| have.contains(&s.as_str()))
        }) || (!self.roles.is_empty() && {
            let have = claims.roles();
            self.roles.iter().any(|r| have.contains(&r.as_str()))
        }) || self
            .claims
            .iter()
            .any(|(name, pattern)| claims.get(name).is_some_and(|v| value_matches(pattern, v)))
    }
}

/// The built `acl` policy.
#[derive(Debug)]
pub struct Acl {
    allow: Option<AclRuleSpec>,
    deny: Option<AclRuleSpec>,
}

impl Acl {
    /// Builds the policy; names no consumer has are reported.
    pub fn build(path: &str, spec: &AclSpec, cx: &BuildCx<'_>, p: &mut Problems) -> Option<Self> {
        if spec.allow.as_ref().is_none_or(AclRuleSpec::is_empty)
            && spec.deny.as_ref().is_none_or(AclRuleSpec::is_empty)
        {
            p.push(path.to_string(), "an acl needs an `allow` or a `deny` rule");
        }
        for (side, rule) in [("allow", &spec.allow), ("deny", &spec.deny)] {
            for (i, name) in rule.iter().flat_map(|r| r.consumers.iter()).enumerate() {
                if cx.consumers.by_name(name).is_none() {
                    p.push(
                        format!("{path}.{side}.consumers[{i}]"),
                        format!("no consumer is called `{name}`"),
                    );
                }
            }
        }
        Some(Self {
            allow: spec.allow.clone().filter(|r| !r.is_empty()),
            deny: spec.deny.clone().filter(|r| !r.is_empty()),
        })
    }

    /// Decides on the consumer an earlier policy authenticated.
    pub fn on_request(
        &self,
        ctx: &mut RequestCtx,
        _req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        if ctx.identity.is_none() {
            return Err(GatewayError::Unauthorized {
                reason: "authentication required",
                challenge: None,
            });
        }
        if self.deny.as_ref().is_some_and(|r| r.matches(ctx)) {
            return Err(GatewayError::Forbidden("not allowed to use this route"));
        }
        if self.allow.as_ref().is_some_and(|r| !r.matches(ctx)) {
            return Err(GatewayError::Forbidden("not allowed to use this route"));
        }
        Ok(Flow::Continue)
    }

    /// Nothing to do on the way back.
    pub fn on_response(&self, _ctx: &mut RequestCtx, _resp: &mut Response) {}
}
