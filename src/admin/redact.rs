//! Redaction of the configuration shown by `GET /config`: every value that came from
//! `${ENV}` or `${file:...}`, and every field whose name says it holds a secret.

use serde_json::Value;

use crate::config::LoadedConfig;

const SENSITIVE: [&str; 8] = [
    "password",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "credentials",
    "authorization",
];

/// The active configuration as JSON, with secrets replaced by `"[redacted]"`.
pub(super) fn config(loaded: &LoadedConfig) -> Value {
    let mut value = serde_json::to_value(&loaded.spec).unwrap_or(Value::Null);
    walk(&mut value, &loaded.secrets, false);
    value
}

fn walk(v: &mut Value, secrets: &[String], sensitive: bool) {
    match v {
        Value::String(s) if sensitive || secrets.iter().any(|x| s.contains(x.as_str())) => {
            *s = "[redacted]".into();
        }
        Value::Array(items) => items.iter_mut().for_each(|i| walk(i, secrets, sensitive)),
        Value::Object(map) => {
            for (k, item) in map.iter_mut() {
                let key = k.to_ascii_lowercase();
                let hit = sensitive || SENSITIVE.iter().any(|s| key.contains(s));
                walk(item, secrets, hit);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_substituted_values_and_sensitive_keys() {
        let mut v = serde_json::json!({
            "routes": [{"respond": {"headers": {"x-token": "abc", "x-ok": "Bearer s3cr3t-value"}}}],
            "plain": "visible",
            "client_secret": {"nested": "hidden"}
        });
        walk(&mut v, &["s3cr3t-value".to_string()], false);
        assert_eq!(
            v["routes"][0]["respond"]["headers"]["x-token"],
            "[redacted]"
        );
        assert_eq!(v["routes"][0]["respond"]["headers"]["x-ok"], "[redacted]");
        assert_eq!(v["plain"], "visible");
        assert_eq!(v["client_secret"]["nested"], "[redacted]");
    }
}
