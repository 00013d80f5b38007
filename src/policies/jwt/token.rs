//! A compact JWS, taken apart without trusting any of it: three strict base64url
//! segments, a header and a payload that are JSON objects without duplicate keys, and the
//! header rules that close the known attacks. Then the claim checks, with the time given
//! by the caller (tests inject it).
//!
//! Refused before any key is touched: `alg` missing, `none` in any case, or unknown;
//! `crit` (no extension is understood, RFC 7515 §4.1.11), `b64` (RFC 7797); and the
//! header parameters that would let a token name its own key (`jku`, `x5u`, `jwk`,
//! `x5c`). Those are never fetched or used: keys come from the configuration only.
//!
//! Both segments are read in one pass each that checks the keys are unique and keeps
//! only the fields the checks need; the payload is parsed into a map only when a later
//! step asks for a claim by name (`forward_claims`, `acl` rules).

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

/// The longest token accepted (a header of 100 KB is refused before it is decoded).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A token taken apart, its signature not yet checked.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The `alg` of the header.
    pub alg: Algorithm,
    /// The `kid` of the header.
    pub kid: Option<String>,
    /// The claims the checks read, typed.
    pub claims: Summary,
    /// The decoded payload (a JSON object with unique keys), for the claims a later
    /// step reads by name.
    pub payload: Vec<u8>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The signature segment (base64url).
    pub signature: &'a str,
}

/// A time claim as found: absent, a finite number, or something else (refused when the
/// claim is checked).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Time {
    /// Not in the token.
    #[default]
    Absent,
    /// A JSON number.
    At(f64),
    /// A string, an out-of-range number, anything else.
    Bad,
}

/// The registered claims the checks need, read without building a map.
#[derive(Debug, Default)]
pub struct Summary {
    /// `exp`.
    pub exp: Time,
    /// `nbf`.
    pub nbf: Time,
    /// `iat`.
    pub iat: Time,
    /// `iss`, when a string.
    pub iss: Option<String>,
    /// `sub`, when a string.
    pub sub: Option<String>,
    /// `aud`: the strings of a string or an array (`None`: absent or another type).
    pub aud: Option<Vec<String>>,
}

/// A key of a JSON object: borrowed from the input unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A time value: a finite number, or anything else as `Bad`.
struct TimeValue(Time);

impl<'de> serde::Deserialize<'de> for TimeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(TimeValue(match v.as_f64() {
            Some(n) if v.is_number() && n.is_finite() => Time::At(n),
            _ => Time::Bad,
        }))
    }
}

/// What one walk over an object collects (the header's or the payload's fields).
#[derive(Default)]
struct Fields {
    alg: Option<Value>,
    kid: Option<Value>,
    banned: bool,
    claims: Summary,
}

/// Walks a JSON object once: refuses a key seen twice, keeps the fields of [`Fields`],
/// and skips every other value without building it.
struct Walk {
    header: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Walk {
    type Value = Fields;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Fields, D::Error> {
        d.deserialize_map(self)
    }
}

fn strings(v: Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s]),
        Value::Array(items) => Some(
            items
                .into_iter()
                .filter_map(|i| match i {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn string(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        _ => None,
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = Fields;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Fields, A::Error> {
        let mut seen: Vec<Cow<'de, str>> = Vec::with_capacity(8);
        let mut out = Fields::default();
        while let Some(Key(k)) = m.next_key::<Key<'de>>()? {
            if seen.contains(&k) {
                return Err(serde::de::Error::custom("duplicate key"));
            }
            let c = &mut out.claims;
            match (self.header, &*k) {
                (true, "alg") => out.alg = Some(m.next_value()?),
                (true, "kid") => out.kid = Some(m.next_value()?),
                (true, "crit" | "b64" | "jku" | "x5u" | "jwk" | "x5c") => {
                    out.banned = true;
                    m.next_value::<IgnoredAny>()?;
                }
                (false, "exp") => c.exp = m.next_value::<TimeValue>()?.0,
                (false, "nbf") => c.nbf = m.next_value::<TimeValue>()?.0,
                (false, "iat") => c.iat = m.next_value::<TimeValue>()?.0,
                (false, "iss") => c.iss = string(m.next_value()?),
                (false, "sub") => c.sub = string(m.next_value()?),
                (false, "aud") => c.aud = strings(m.next_value()?),
                _ => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
            seen.push(k);
        }
        Ok(out)
    }
}

fn decode(segment: &str) -> Result<Vec<u8>, &'static str> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| "token segment is not base64url")
}

fn walk(bytes: &[u8], header: bool) -> Result<Fields, &'static str> {
    let bad = "token segment is not a JSON object with unique keys";
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let fields =
        serde::de::DeserializeSeed::deserialize(Walk { header }, &mut de).map_err(|_| bad)?;
    de.end().map_err(|_| bad)?;
    Ok(fields)
}

/// Reads the registered claims of a JSON payload.
#[cfg(test)]
fn summarize(payload: &[u8]) -> Result<Summary, &'static str> {
    walk(payload, false).map(|f| f.claims)
}

/// The algorithm named `name` (exact spelling), never `none`.
pub fn algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Takes `token` apart; the reason when it is malformed or breaks a header rule.
pub fn parse(token: &str) -> Result<Parsed<'_>, &'static str> {
    if token.len() > MAX_TOKEN_LEN {
        return Err("token too long");
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("a token has three segments");
    };
    if s.is_empty() {
        return Err("token has no signature");
    }
    let header = walk(&decode(h)?, true)?;
    if header.banned {
        return Err("token header names an unsupported or unsafe parameter");
    }
    let alg = match header.alg {
        Some(Value::String(name)) => algorithm(&name).ok_or("token algorithm not accepted")?,
        _ => return Err("token header has no algorithm"),
    };
    let kid = match header.kid {
        None => None,
        Some(Value::String(k)) if k.len() <= 256 => Some(k),
        Some(_) => return Err("token key id is not a short string"),
    };
    let payload = decode(p)?;
    let claims = walk(&payload, false)?.claims;
    Ok(Parsed {
        alg,
        kid,
        claims,
        payload,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
    })
}

/// What a provider requires of the claims.
#[derive(Debug, Clone, Default)]
pub struct ClaimRules {
    /// `iss` must equal this.
    pub issuer: Option<String>,
    /// `aud` (a string or an array) must hold one of these, when any are given.
    pub audiences: Vec<String>,
    /// Claims that must be present.
    pub required: Vec<String>,
    /// Allowed clock skew, seconds.
    pub leeway: f64,
    /// Longest accepted lifetime (`exp - iat`, or `exp - now` without `iat`), seconds.
    pub max_lifetime: Option<f64>,
}

fn time(t: Time) -> Result<Option<f64>, &'static str> {
    match t {
        Time::Absent => Ok(None),
        Time::At(v) => Ok(Some(v)),
        Time::Bad => Err("token time claim is not a number"),
    }
}

/// The times between which a token whose claims passed [`check_claims`] stays valid:
/// from `max(nbf, iat) - leeway` to `exp + leeway`.
pub fn valid_window(c: &Summary, leeway: f64) -> (f64, f64) {
    let at = |t: Time| match t {
        Time::At(v) => Some(v),
        _ => None,
    };
    let from = at(c.nbf)
        .into_iter()
        .chain(at(c.iat))
        .fold(f64::NEG_INFINITY, f64::max)
        - leeway;
    let until = at(c.exp).map_or(f64::NEG_INFINITY, |e| e + leeway);
    (from, until)
}

/// Checks the claims at time `now` (seconds since the epoch). `all` is read only when
/// `required` names claims.
pub fn check_claims(
    c: &Summary,
    all: &Claims,
    rules: &ClaimRules,
    now: f64,
) -> Result<(), &'static str> {
    let exp = time(c.exp)?.ok_or("token has no expiry")?;
    if now > exp + rules.leeway {
        return Err("token expired");
    }
    if time(c.nbf)?.is_some_and(|nbf| now + rules.leeway < nbf) {
        return Err("token not valid yet");
    }
    let iat = time(c.iat)?;
    if iat.is_some_and(|iat| iat > now + rules.leeway) {
        return Err("token issued in the future");
    }
    if let Some(max) = rules.max_lifetime {
        if exp - iat.unwrap_or(now) > max {
            return Err("token lifetime too long");
        }
    }
    if let Some(iss) = &rules.issuer {
        if c.iss.as_deref() != Some(iss.as_str()) {
            return Err("token issuer not accepted");
        }
    }
    if !rules.audiences.is_empty() {
        let ok = c
            .aud
            .as_ref()
            .is_some_and(|list| list.iter().any(|a| rules.audiences.contains(a)));
        if !ok {
            return Err("token audience not accepted");
        }
    }
    if !rules.required.is_empty() {
        let map = all.map();
        if rules.required.iter().any(|name| !map.contains_key(name)) {
            return Err("token lacks a required claim");
        }
    }
    Ok(())
}

/// The claim values as text for headers and matching: a string as is, a number or a
/// bool in JSON form, an array of those joined with `,`.
pub fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    Value::Array(_) | Value::Object(_) | Value::Null => None,
                    other => claim_text(other),
                })
                .collect();
            parts.map(|p| p.join(","))
        }
        _ => None,
    }
}

type ClaimMap = serde_json::Map<String, Value>;

/// The claims of an authenticated token (a JWT's payload or an introspection answer),
/// kept in the request context for later policies. A JWT's payload is parsed into a map
/// only when something asks for a claim by name.
#[derive(Debug, Clone)]
pub struct Claims(Arc<(Vec<u8>, OnceLock<ClaimMap>)>);

impl Claims {
    /// Claims from a verified JWT payload (a JSON object with unique keys).
    pub fn from_payload(payload: Vec<u8>) -> Self {
        Self(Arc::new((payload, OnceLock::new())))
    }

    /// Claims already parsed.
    pub fn from_map(map: ClaimMap) -> Self {
        let cell = OnceLock::new();
        let _ = cell.set(map);
        Self(Arc::new((Vec::new(), cell)))
    }

    /// Every claim.
    pub fn map(&self) -> &ClaimMap {
        self.0
             .1
            .get_or_init(|| serde_json::from_slice(&self.0 .0).unwrap_or_default())
    }

    /// One claim.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.map().get(name)
    }

    /// The token's scopes: `scope` (space-separated, RFC 8693 §4.2) and `scp` (an array
    /// or a string, as Azure AD and Okta send it).
    pub fn scopes(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for name in ["scope", "scp"] {
            match self.get(name) {
                Some(Value::String(s)) => out.extend(s.split(' ').filter(|s| !s.is_empty())),
                Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
                _ => {}
            }
        }
        out
    }

    /// The token's roles: `roles` (an array or a string) and Keycloak's
    /// `realm_access.roles`.
    pub fn roles(&self) -> Vec<&str> {
        let mut out = Vec::new();
        match self.get("roles") {
            Some(Value::String(s)) => out.push(s.as_str()),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
        if let Some(Value::Array(a)) = self.get("realm_access").and_then(|r| r.get("roles")) {
            out.extend(a.iter().filter_map(Value::as_str));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", seg(header), seg(payload))
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = token(r#"{"alg":"HS256"}"#, r#"{"exp":1}"#);
        assert!(parse(&good).is_ok());
        let cases = [
            "a.b".to_string(),
            format!("{good}.x"),
            format!("{}.{}.", seg(r#"{"alg":"HS256"}"#), seg("{}")),
            format!("{}+.{}.c2ln", seg(r#"{"alg":"HS256"}"#), seg("{}")),
            format!("{}=.{}.c2ln", seg(r#"{"alg":"HS256"}"#), seg("{}")),
            token("not json", "{}"),
            token(r#"{"alg":"HS256","alg":"none"}"#, "{}"),
            token(r#"{"alg":"HS256"}"#, r#"{"sub":"a","sub":"b"}"#),
            token(r#"{"alg":"HS256","crit":["x"]}"#, "{}"),
            token(r#"{"alg":"HS256","b64":false}"#, "{}"),
            token(r#"{"alg":"RS256","jku":"http://127.0.0.2/keys"}"#, "{}"),
            token(r#"{"alg":"RS256","x5u":"http://127.0.0.2/c"}"#, "{}"),
            token(r#"{"alg":"RS256","jwk":{"kty":"oct","k":"AA"}}"#, "{}"),
            token(r#"{"alg":"RS256","x5c":["MII"]}"#, "{}"),
            token(r#"{"alg":"none"}"#, "{}"),
            token(r#"{"alg":"None"}"#, "{}"),
            token(r#"{"alg":"NONE"}"#, "{}"),
            token(r#"{"alg":"nOnE"}"#, "{}"),
            token(r#"{}"#, "{}"),
            token(r#"{"alg":"HS256","kid":7}"#, "{}"),
            token(
                &format!(r#"{{"alg":"HS256","kid":"{}"}}"#, "k".repeat(10_000)),
                "{}",
            ),
            "x".repeat(100_000),
        ];
        for (i, t) in cases.iter().enumerate() {
            assert!(parse(t).is_err(), "case {i} was accepted: {t:.80}");
        }
    }

    fn check(json: &str, rules: &ClaimRules, now: f64) -> Result<(), &'static str> {
        let summary = summarize(json.as_bytes())?;
        check_claims(
            &summary,
            &Claims::from_payload(json.as_bytes().to_vec()),
            rules,
            now,
        )
    }

    #[test]
    fn time_claims_follow_the_catalogue() {
        let now = 1_800_000_000.0;
        let rules = ClaimRules {
            leeway: 60.0,
            ..Default::default()
        };
        let at = |c: &str| check(c, &rules, now);
        assert!(at(&format!(r#"{{"exp":{}}}"#, now - 61.0)).is_err());
        assert!(at(&format!(r#"{{"exp":{}}}"#, now - 30.0)).is_ok());
        assert!(at("{}").is_err());
        assert!(at(&format!(
            r#"{{"exp":{},"nbf":{}}}"#,
            now + 600.0,
            now + 120.0
        ))
        .is_err());
        assert!(at(&format!(r#"{{"exp":"{}"}}"#, now + 600.0)).is_err());
        assert!(at(&format!(r#"{{"exp":{}.5}}"#, now - 60.0)).is_ok());
        assert!(at(&format!(r#"{{"exp":{}.5}}"#, now - 61.0)).is_err());
        assert!(at(r#"{"exp":1e30}"#).is_ok());
        assert!(at(r#"{"exp":1234567890123456789012345678901234567890}"#).is_ok());
        // 1e400 is not a JSON number serde can hold: the payload itself is refused.
        assert!(at(r#"{"exp":1e400}"#).is_err());
        let short = ClaimRules {
            max_lifetime: Some(3600.0),
            ..rules.clone()
        };
        let c = format!(r#"{{"exp":{},"iat":{}}}"#, now + 7200.0, now);
        assert!(check(&c, &short, now).is_err());
        let required = ClaimRules {
            required: vec!["email".into()],
            ..rules.clone()
        };
        let exp = now + 60.0;
        assert!(check(&format!(r#"{{"exp":{exp}}}"#), &required, now).is_err());
        assert!(check(&format!(r#"{{"exp":{exp},"email":"a@b"}}"#), &required, now).is_ok());
    }

    #[test]
    fn issuer_and_audience() {
        let rules = ClaimRules {
            issuer: Some("https://id.test".into()),
            audiences: vec!["api".into()],
            leeway: 60.0,
            ..Default::default()
        };
        let at = |c: &str| check(c, &rules, 0.0);
        assert!(at(r#"{"exp":100,"iss":"https://id.test","aud":"api"}"#).is_ok());
        assert!(at(r#"{"exp":100,"iss":"https://id.test","aud":["x","api"]}"#).is_ok());
        assert!(at(r#"{"exp":100,"iss":"https://evil.test","aud":"api"}"#).is_err());
        assert!(at(r#"{"exp":100,"iss":"https://id.test"}"#).is_err());
        assert!(at(r#"{"exp":100,"iss":"https://id.test","aud":"web"}"#).is_err());
    }

    #[test]
    fn scopes_and_roles_are_read_in_their_common_shapes() {
        let c = Claims::from_payload(
            br#"{"scope":"orders:read  orders:write","scp":["extra"],"roles":["admin"],"realm_access":{"roles":["ops"]}}"#
                .to_vec(),
        );
        assert_eq!(c.scopes(), ["orders:read", "orders:write", "extra"]);
        assert_eq!(c.roles(), ["admin", "ops"]);
    }
}
