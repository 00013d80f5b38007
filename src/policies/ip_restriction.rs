//! `ip_restriction`: allows or denies requests by the client address, the one the
//! gateway derived from the peer and `server.trusted_proxies` (a client cannot choose it
//! by sending `X-Forwarded-For`). `deny` wins; with an `allow` list, every other address
//! is refused. Refusals are 403 `forbidden`.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::BuildCx;
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};

/// `type: ip_restriction`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpRestrictionSpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Addresses or CIDR blocks that may pass; when given, all others are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Addresses or CIDR blocks that are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// The built `ip_restriction` policy.
#[derive(Debug)]
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

fn parse(path: &str, list: &[String], p: &mut Problems) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let net = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(n) => out.push(n.trunc()),
            Err(_) => p.push(
                format!("{path}[{i}]"),
                format!("`{text}` is not an IP address or CIDR block"),
            ),
        }
    }
    out
}

fn contains(list: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    list.iter().any(|n| n.contains(&ip))
}

impl IpRestriction {
    /// Builds the policy; every entry that is not an address or a block is reported.
    pub fn build(
        path: &str,
        spec: &IpRestrictionSpec,
        _cx: &BuildCx<'_>,
        p: &mut Problems,
    ) -> Option<Self> {
        if spec.allow.is_empty() && spec.deny.is_empty() {
            p.push(
                path.to_string(),
                "an ip_restriction needs `allow` or `deny`",
            );
        }
        Some(Self {
            allow: parse(&format!("{path}.allow"), &spec.allow, p),
            deny: parse(&format!("{path}.deny"), &spec.deny, p),
        })
    }

    /// Decides on `ctx.client_ip`.
    pub fn on_request(
        &self,
        ctx: &mut RequestCtx,
        _req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        let ip = ctx.client_ip;
        if contains(&self.deny, ip) || (!self.allow.is_empty() && !contains(&self.allow, ip)) {
            return Err(GatewayError::Forbidden(
                "this client address may not use this route",
            ));
        }
        Ok(Flow::Continue)
    }

    /// Nothing to do on the way back.
    pub fn on_response(&self, _ctx: &mut RequestCtx, _resp: &mut Response) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> IpRestriction {
        let mut p = Problems::default();
        let consumers = Default::default();
        let cx = BuildCx {
            route: "r",
            params: &[],
            consumers: &consumers,
            base: None,
            files: &Default::default(),
            plans: &Default::default(),
            redis: None,
        };
        let spec = IpRestrictionSpec {
            name: None,
            allow: allow.iter().map(|s| (*s).to_string()).collect(),
            deny: deny.iter().map(|s| (*s).to_string()).collect(),
        };
        let built = IpRestriction::build("p", &spec, &cx, &mut p).unwrap();
        assert!(p.is_empty(), "{p:?}");
        built
    }

    fn decide(policy: &IpRestriction, ip: &str) -> bool {
        let mut ctx = RequestCtx::for_test();
        ctx.client_ip = ip.parse().unwrap();
        let mut req = Request::new(crate::http::Body::Empty);
        policy.on_request(&mut ctx, &mut req).is_ok()
    }

    #[test]
    fn deny_wins_allow_restricts_and_mapped_v4_counts_as_v4() {
        let p = policy(&["10.0.0.0/8", "2001:db8::/32"], &["10.9.0.0/16"]);
        assert!(decide(&p, "10.1.2.3"));
        assert!(decide(&p, "::ffff:10.1.2.3"));
        assert!(decide(&p, "2001:db8::1"));
        assert!(!decide(&p, "10.9.1.1"));
        assert!(!decide(&p, "192.168.1.1"));
        let deny_only = policy(&[], &["203.0.113.7"]);
        assert!(!decide(&deny_only, "203.0.113.7"));
        assert!(decide(&deny_only, "203.0.113.8"));
    }

    #[test]
    fn bad_entries_are_reported() {
        let mut p = Problems::default();
        let consumers = Default::default();
        let cx = BuildCx {
            route: "r",
            params: &[],
            consumers: &consumers,
            base: None,
            files: &Default::default(),
            plans: &Default::default(),
            redis: None,
        };
        let spec = IpRestrictionSpec {
            name: None,
            allow: vec!["10.0.0.0/33".into()],
            deny: vec![],
        };
        IpRestriction::build("routes[0].policies[1]", &spec, &cx, &mut p);
        assert!(format!("{p:?}").contains("routes[0].policies[1].allow[0]"));
    }
}
