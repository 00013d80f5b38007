//! A compact JWS, taken apart without trusting any of it: three strict base64url
//! segments, a header and a payload that are JSON objects without duplicate keys, and the
//! header rules that close the known attacks. Then the claim checks, with the time given
//! by the caller (tests inject it).
//!
//! Refused before any key is touched: `alg` missing, `none` in any case, or unknown;
//! `crit` (no extension is understood, RFC 7515 §4.1.11), `b64` (RFC 7797); and the
//! header parameters that would let a token name its own key (`jku`, `x5u`, `jwk`,
//! `x5c`). Those are never fetched or used: keys come from the configuration only.

use std::fmt;

use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::de::{Deserializer, MapAccess, Visitor};
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
    /// The claims.
    pub claims: serde_json::Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The signature segment (base64url).
    pub signature: &'a str,
}

/// A JSON object whose keys are unique (serde_json keeps the last of duplicates, which
/// lets two parsers of the same token disagree).
struct Unique(serde_json::Map<String, Value>);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Unique;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Unique, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    out.insert(k, v);
                }
                Ok(Unique(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn decode(segment: &str) -> Result<Vec<u8>, &'static str> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| "token segment is not base64url")
}

fn object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, &'static str> {
    serde_json::from_slice::<Unique>(bytes)
        .map(|u| u.0)
        .map_err(|_| "token segment is not a JSON object with unique keys")
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
    let header = object(&decode(h)?)?;
    for banned in ["crit", "b64", "jku", "x5u", "jwk", "x5c"] {
        if header.contains_key(banned) {
            return Err("token header names an unsupported or unsafe parameter");
        }
    }
    let alg = match header.get("alg") {
        Some(Value::String(name)) => algorithm(name).ok_or("token algorithm not accepted")?,
        _ => return Err("token header has no algorithm"),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) if k.len() <= 256 => Some(k.clone()),
        Some(_) => return Err("token key id is not a short string"),
    };
    let claims = object(&decode(p)?)?;
    Ok(Parsed {
        alg,
        kid,
        claims,
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

fn number(
    claims: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<f64>, &'static str> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err("token time claim out of range"),
        },
        Some(_) => Err("token time claim is not a number"),
    }
}

/// Checks the claims at time `now` (seconds since the epoch).
pub fn check_claims(
    claims: &serde_json::Map<String, Value>,
    rules: &ClaimRules,
    now: f64,
) -> Result<(), &'static str> {
    let exp = number(claims, "exp")?.ok_or("token has no expiry")?;
    if now > exp + rules.leeway {
        return Err("token expired");
    }
    if number(claims, "nbf")?.is_some_and(|nbf| now + rules.leeway < nbf) {
        return Err("token not valid yet");
    }
    let iat = number(claims, "iat")?;
    if iat.is_some_and(|iat| iat > now + rules.leeway) {
        return Err("token issued in the future");
    }
    if let Some(max) = rules.max_lifetime {
        if exp - iat.unwrap_or(now) > max {
            return Err("token lifetime too long");
        }
    }
    if let Some(iss) = &rules.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(iss) {
            return Err("token issuer not accepted");
        }
    }
    if !rules.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => rules.audiences.contains(a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| rules.audiences.iter().any(|r| r == a)),
            _ => false,
        };
        if !ok {
            return Err("token audience not accepted");
        }
    }
    if rules.required.iter().any(|c| !claims.contains_key(c)) {
        return Err("token lacks a required claim");
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

/// The claims of a verified token, kept in the request context for later policies.
#[derive(Debug, Clone)]
pub struct Claims(pub std::sync::Arc<serde_json::Map<String, Value>>);

impl Claims {
    /// The token's scopes: `scope` (space-separated, RFC 8693 §4.2) and `scp` (an
    /// array or a string, as Azure AD and Okta send it).
    pub fn scopes(&self) -> Vec<&str> {
        let mut out = Vec::new();
        for name in ["scope", "scp"] {
            match self.0.get(name) {
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
        match self.0.get("roles") {
            Some(Value::String(s)) => out.push(s.as_str()),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
        if let Some(Value::Array(a)) = self.0.get("realm_access").and_then(|r| r.get("roles")) {
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

    fn claims(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn time_claims_follow_the_catalogue() {
        let now = 1_800_000_000.0;
        let rules = ClaimRules {
            leeway: 60.0,
            ..Default::default()
        };
        let at = |c: &str| check_claims(&claims(c), &rules, now);
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
        assert!(serde_json::from_str::<Value>(r#"{"exp":1e400}"#).is_err());
        let short = ClaimRules {
            max_lifetime: Some(3600.0),
            ..rules.clone()
        };
        let c = claims(&format!(r#"{{"exp":{},"iat":{}}}"#, now + 7200.0, now));
        assert!(check_claims(&c, &short, now).is_err());
    }

    #[test]
    fn issuer_and_audience() {
        let rules = ClaimRules {
            issuer: Some("https://id.test".into()),
            audiences: vec!["api".into()],
            leeway: 60.0,
            ..Default::default()
        };
        let at = |c: &str| check_claims(&claims(c), &rules, 0.0);
        assert!(at(r#"{"exp":100,"iss":"https://id.test","aud":"api"}"#).is_ok());
        assert!(at(r#"{"exp":100,"iss":"https://id.test","aud":["x","api"]}"#).is_ok());
        assert!(at(r#"{"exp":100,"iss":"https://evil.test","aud":"api"}"#).is_err());
        assert!(at(r#"{"exp":100,"iss":"https://id.test"}"#).is_err());
        assert!(at(r#"{"exp":100,"iss":"https://id.test","aud":"web"}"#).is_err());
    }

    #[test]
    fn scopes_and_roles_are_read_in_their_common_shapes() {
        let c = Claims(std::sync::Arc::new(claims(
            r#"{"scope":"orders:read  orders:write","scp":["extra"],"roles":["admin"],"realm_access":{"roles":["ops"]}}"#,
        )));
        assert_eq!(c.scopes(), ["orders:read", "orders:write", "extra"]);
        assert_eq!(c.roles(), ["admin", "ops"]);
    }
}
