//! Redaction of the configuration shown by `GET /config`: every value that came from
//! `${ENV}` or `${file:...}`, and every field whose name says it holds a secret.

use serde_json::Value;

use crate::config::LoadedConfig;

/// Key words (lower case, without `-` and `_`) marking a string value as a secret.
const SENSITIVE: [&str; 8] = [
    "password",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "credential",
    "authorization",
    "cookie",
];

/// Members of a JWK that hold secret key material (RFC 7518 §6.3.2, §6.4.1): an
/// inline `oct` key's `k`, a private key's `d` and CRT values.
const JWK_SECRETS: [&str; 7] = ["k", "d", "p", "q", "dp", "dq", "qi"];

/// The active configuration as JSON, with secrets replaced by `"[redacted]"`: every
/// string containing a value substituted from the environment or a file (values of 8
/// characters or more that are not plain numbers, so that `PORT=8080` hides nothing),
/// and every string whose key names a secret (`x-api-key`, `client_secret`, ...).
pub(super) fn config(loaded: &LoadedConfig) -> Value {
    let secrets: Vec<&str> = loaded
        .secrets
        .iter()
        .map(String::as_str)
        .filter(|s| s.len() >= 8 && !s.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let mut value = serde_json::to_value(&loaded.spec).unwrap_or(Value::Null);
    walk(&mut value, &secrets, false);
    value
}

fn walk(v: &mut Value, secrets: &[&str], sensitive_key: bool) {
    match v {
        Value::String(s) if sensitive_key || secrets.iter().any(|x| s.contains(x)) => {
            *s = "[redacted]".into();
        }
        // A password written in a URL (`redis://user:password@host`).
        Value::String(s) => {
            if let Some(hidden) = url_without_password(s) {
                *s = hidden;
            }
        }
        // A list under a secret's name (`api_keys`) is a list of secrets.
        Value::Array(items) => items
            .iter_mut()
            .for_each(|i| walk(i, secrets, sensitive_key)),
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let key: String = k
                    .chars()
                    .filter(|c| *c != '-' && *c != '_')
                    .flat_map(char::to_lowercase)
                    .collect();
                let secret = SENSITIVE.iter().any(|s| key.contains(s))
                    || JWK_SECRETS.contains(&key.as_str());
                walk(item, secrets, secret);
            }
        }
        _ => {}
    }
}

/// `scheme://user:password@rest` as `scheme://user:[redacted]@rest`.
pub(crate) fn url_without_password(s: &str) -> Option<String> {
    let start = s.find("://")? + 3;
    let at = start + s[start..].find('@')?;
    let userinfo = &s[start..at];
    if userinfo.contains('/') {
        return None;
    }
    let colon = start + userinfo.find(':')?;
    Some(format!("{}:[redacted]{}", &s[..colon], &s[at..]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(
            super::url_without_password("rediss://gw:s3cret@redis:6380/0").as_deref(),
            Some("rediss://gw:[redacted]@redis:6380/0")
        );
        assert_eq!(super::url_without_password("redis://redis:6379/0"), None);
        assert_eq!(super::url_without_password("https://a.example/x@y"), None);
    }

    use super::*;

    #[test]
    fn redacts_substituted_values_and_sensitive_keys() {
        let mut v = serde_json::json!({
            "routes": [{"respond": {"headers": {"x-api-key": "abc", "x-ok": "Bearer s3cr3t-value"}}}],
            "plain": "visible",
            "port": "127.0.0.1:8080",
            "client_secret": "hidden",
            "upstreams": {"token-service": {"endpoints": ["10.0.0.1:80"]}}
        });
        walk(&mut v, &["s3cr3t-value"], false);
        assert_eq!(
            v["routes"][0]["respond"]["headers"]["x-api-key"],
            "[redacted]"
        );
        assert_eq!(v["routes"][0]["respond"]["headers"]["x-ok"], "[redacted]");
        assert_eq!(v["plain"], "visible");
        assert_eq!(v["port"], "127.0.0.1:8080");
        assert_eq!(v["client_secret"], "[redacted]");
        let mut keys = serde_json::json!({"consumers": [{"name": "acme", "api_keys": ["inline-key-1", "sha256:ab"]}],
            "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]}});
        walk(&mut keys, &[], false);
        assert_eq!(keys["consumers"][0]["api_keys"][0], "[redacted]");
        assert_eq!(keys["consumers"][0]["name"], "acme");
        assert_eq!(keys["jwks"]["keys"][0]["k"], "[redacted]");
        assert_eq!(keys["jwks"]["keys"][0]["kid"], "k1");
        assert_eq!(
            v["upstreams"]["token-service"]["endpoints"][0], "10.0.0.1:80",
            "names are not secrets"
        );
    }
}
