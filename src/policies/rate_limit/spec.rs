//! What a user writes for `type: rate_limit`, and how a request's key is read.

use std::hash::Hasher;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::gcra::Limit;
use crate::config::{Dur, Problems};
use crate::http::Request;
use crate::pipeline::RequestCtx;

/// `type: rate_limit`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `N/second`, `N/minute`, `N/hour` or `N/day`; every one must admit a request.
    #[serde(default)]
    pub limits: Vec<String>,
    /// The bucket of the limits with the shortest period (default: the limit's count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// What is limited: one part or a list of parts combined.
    #[serde(default)]
    pub key: KeySpec,
    /// The consumer's plan (`plans:` at the top) adds its limits.
    #[serde(default)]
    pub plans: bool,
    /// Where the counters live.
    #[serde(default)]
    pub store: Store,
    /// What a failing shared store means (read with `store: redis`).
    #[serde(default)]
    pub on_store_failure: OnStoreFailure,
    /// Refuse over the limit (`reject`), or hold the request (`delay`).
    #[serde(default)]
    pub mode: Mode,
    /// The longest a request is held with `mode: delay`.
    #[serde(default = "default_max_delay")]
    pub max_delay: Dur,
    /// Routes naming the same group share their counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Which headers are written.
    #[serde(default)]
    pub headers: HeadersSpec,
    /// The most keys held at once (memory bound of the local store).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// With `store: redis`: take tokens from Redis a few at a time and spend them here,
    /// so most requests need no round trip (see docs/policies/rate-limit.md for the bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
}

/// `batch:` of a Redis-backed `rate_limit`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Tokens reserved per key at once (at least 2).
    pub tokens: u64,
    /// How long a reservation is used before what is left goes back to Redis.
    #[serde(default = "default_batch_interval")]
    pub interval: Dur,
}

fn default_batch_interval() -> Dur {
    Dur(std::time::Duration::from_millis(100))
}

impl RateLimitSpec {
    /// The spec without its name, as text: what identifies its counters.
    pub fn identity(&self) -> String {
        let mut s = self.clone();
        s.name = None;
        serde_json::to_string(&s).unwrap_or_default()
    }
}

fn default_max_delay() -> Dur {
    Dur(std::time::Duration::from_millis(500))
}

fn default_max_keys() -> usize {
    100_000
}

/// `store:`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    /// In this process.
    #[default]
    Local,
    /// Shared by every instance through the `redis:` connection.
    Redis,
}

/// `on_store_failure:`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreFailure {
    /// Decide with this instance's own counters.
    #[default]
    Local,
    /// Refuse.
    Deny,
    /// Admit.
    Allow,
}

/// `mode:`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// 429 over the limit.
    #[default]
    Reject,
    /// Hold the request until the limit admits it, up to `max_delay`; 429 past that.
    Delay,
}

/// `headers:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersSpec {
    /// `RateLimit`/`RateLimit-Policy` on admitted responses too (always on a 429).
    #[serde(default = "yes")]
    pub on_allowed: bool,
    /// Also `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    #[serde(default)]
    pub legacy: bool,
}

impl Default for HeadersSpec {
    fn default() -> Self {
        Self {
            on_allowed: true,
            legacy: false,
        }
    }
}

fn yes() -> bool {
    true
}

/// One part of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The authenticated consumer (the client address when there is none).
    Consumer,
    /// The credential: the token's `sub`, else the consumer, else the client address.
    Credential,
    /// The client address (the peer, or `X-Forwarded-For` through trusted proxies only).
    ClientIp,
    /// A request header (the client address when absent).
    Header(http::HeaderName),
    /// A path parameter of the route, else a query parameter (the client address when
    /// absent).
    Param(String),
    /// A claim of the verified token (the client address when absent).
    Claim(String),
    /// The whole route: one counter for every client.
    Route,
}

impl KeyPart {
    fn parse(text: &str) -> Result<Self, String> {
        let (kind, arg) = text.split_once(':').unwrap_or((text, ""));
        let need = |arg: &str| {
            if arg.is_empty() {
                Err(format!("`{kind}:` needs a name, as in `{kind}:NAME`"))
            } else {
                Ok(arg.to_string())
            }
        };
        Ok(match kind {
            "consumer" => Self::Consumer,
            "credential" => Self::Credential,
            "client_ip" => Self::ClientIp,
            "route" => Self::Route,
            "header" => Self::Header(
                http::HeaderName::from_bytes(need(arg)?.as_bytes())
                    .map_err(|_| format!("`{arg}` is not a valid header name"))?,
            ),
            "param" => Self::Param(need(arg)?),
            "claim" => Self::Claim(need(arg)?),
            _ => return Err(format!("`{text}` is not a key: use consumer, credential, client_ip, header:NAME, param:NAME, claim:NAME or route")),
        })
    }

    fn text(&self) -> String {
        match self {
            Self::Consumer => "consumer".into(),
            Self::Credential => "credential".into(),
            Self::ClientIp => "client_ip".into(),
            Self::Route => "route".into(),
            Self::Header(h) => format!("header:{h}"),
            Self::Param(p) => format!("param:{p}"),
            Self::Claim(c) => format!("claim:{c}"),
        }
    }
}

/// `key:`, one part or a list (default: `consumer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec(pub Vec<KeyPart>);

impl Default for KeySpec {
    fn default() -> Self {
        Self(vec![KeyPart::Consumer])
    }
}

impl<'de> Deserialize<'de> for KeySpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<String>),
        }
        let list = match Form::deserialize(d)? {
            Form::One(s) => vec![s],
            Form::Many(v) => v,
        };
        if list.is_empty() {
            return Err(serde::de::Error::custom("a key needs at least one part"));
        }
        list.iter()
            .map(|s| KeyPart::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map(KeySpec)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for KeySpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(KeyPart::text))
    }
}

/// Parses `N/second|minute|hour|day` (also `N/s`, `N/m`, `N/h`, `N/d`).
pub fn parse_limit(text: &str) -> Result<(u64, u64), String> {
    let (n, unit) = text.split_once('/').ok_or_else(|| {
        format!("`{text}` is not a limit: write N/second, N/minute, N/hour or N/day")
    })?;
    let count: u64 = n
        .trim()
        .parse()
        .ok()
        .filter(|c| *c > 0)
        .ok_or_else(|| format!("`{text}`: the count must be a whole number above 0"))?;
    let secs = match unit.trim() {
        "second" | "s" | "sec" => 1,
        "minute" | "m" | "min" => 60,
        "hour" | "h" => 3600,
        "day" | "d" => 86_400,
        other => {
            return Err(format!(
                "`{other}` is not a period: use second, minute, hour or day"
            ))
        }
    };
    Ok((count, secs * 1_000_000_000))
}

/// Compiles `texts` (problems at `{path}[i]`); `burst` applies to the limits with the
/// shortest period (problem at `burst_path`).
pub(super) fn compile(
    path: &str,
    texts: &[String],
    burst: Option<u64>,
    burst_path: &str,
    p: &mut Problems,
) -> Vec<Limit> {
    let mut out = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        match parse_limit(text) {
            Ok((count, period)) => out.push(Limit {
                count,
                period,
                burst: count,
            }),
            Err(e) => p.push(format!("{path}[{i}]"), e),
        }
    }
    if burst == Some(0) {
        p.push(burst_path, "must be at least 1");
    }
    if let (Some(burst), Some(shortest)) = (burst, out.iter().map(|l| l.period).min()) {
        for l in out.iter_mut().filter(|l| l.period == shortest) {
            l.burst = burst.max(1);
        }
    }
    out
}

/// The compiled limits of a policy; `burst` applies to the ones with the shortest period.
#[cfg(test)]
pub(super) fn limits(path: &str, spec: &RateLimitSpec, p: &mut Problems) -> Vec<Limit> {
    compile(
        &format!("{path}.limits"),
        &spec.limits,
        spec.burst,
        &format!("{path}.burst"),
        p,
    )
}

/// Collects a key's bytes (for the shared store, which names the key by its digest).
#[derive(Default)]
pub(super) struct KeyBytes(pub Vec<u8>);

impl Hasher for KeyBytes {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// Writes one key part into `h`, tagged with its kind (and its length, so that parts
/// cannot run into each other). An absent part is the client address.
pub(super) fn key_part(part: &KeyPart, ctx: &RequestCtx, req: &Request, h: &mut impl Hasher) {
    let id = ctx.identity.as_ref();
    let mut put = |tag: u8, bytes: &[u8]| {
        h.write_u8(tag);
        h.write(&(bytes.len() as u64).to_le_bytes());
        h.write(bytes);
        true
    };
    let claim = |name: &str| {
        id.and_then(|i| i.claims.as_ref())
            .and_then(|c| c.get(name))
            .and_then(crate::policies::jwt::token::claim_text)
    };
    let consumer = id.and_then(|i| i.consumer.as_ref()).map(|c| &c.name);
    let found = match part {
        KeyPart::Consumer => consumer.is_some_and(|c| put(b'c', c.as_bytes())),
        KeyPart::Credential => match claim("sub") {
            Some(sub) => put(b's', sub.as_bytes()),
            None => consumer.is_some_and(|c| put(b'c', c.as_bytes())),
        },
        KeyPart::ClientIp => false,
        KeyPart::Route => put(b'r', b""),
        KeyPart::Header(name) => req
            .headers()
            .get(name)
            .is_some_and(|v| put(b'h', v.as_bytes())),
        KeyPart::Param(name) => match ctx.param(name) {
            Some(v) => put(b'p', v.as_bytes()),
            None => {
                crate::policies::api_key::query_value(&ctx.uri, name).is_some_and(|v| put(b'p', &v))
            }
        },
        KeyPart::Claim(name) => claim(name).is_some_and(|v| put(b't', v.as_bytes())),
    };
    if !found {
        // Written as bytes, so that every instance names the same address alike.
        match ctx.client_ip {
            std::net::IpAddr::V4(a) => {
                h.write_u8(b'4');
                h.write(&a.octets());
            }
            std::net::IpAddr::V6(a) => {
                h.write_u8(b'6');
                h.write(&a.octets());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_keys_parse_or_say_why() {
        assert_eq!(parse_limit("10/second"), Ok((10, 1_000_000_000)));
        assert_eq!(parse_limit("100/day").unwrap().1, 86_400_000_000_000);
        assert!(parse_limit("0/second").is_err());
        assert!(parse_limit("10/fortnight").is_err());
        assert!(parse_limit("ten").is_err());
        assert!(KeyPart::parse("header:").is_err());
        assert!(KeyPart::parse("cookie:x").is_err());
        assert_eq!(
            KeyPart::parse("claim:tenant"),
            Ok(KeyPart::Claim("tenant".into()))
        );
    }

    #[test]
    fn burst_applies_to_the_shortest_period() {
        let spec: RateLimitSpec = serde_json::from_value(serde_json::json!({
            "limits": ["10/second", "1000/hour"], "burst": 20
        }))
        .unwrap();
        let mut p = Problems::default();
        let l = limits("p", &spec, &mut p);
        assert_eq!((l[0].burst, l[1].burst), (20, 1000));
    }
}
