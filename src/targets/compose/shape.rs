//! What is done to a call's answer before it joins the composition: a nesting check
//! made on the bytes before parsing (catalogue E66: a JSON bomb is refused before it
//! allocates), `take`, `select` and `omit`; and the answer's `Cache-Control`, the most
//! restrictive of the calls'.

use serde_json::Value;

/// Whether the JSON text in `bytes` nests arrays and objects at most `max` deep. Strings
/// are skipped, escapes included; invalid JSON is left to the parser.
pub fn depth_within(bytes: &[u8], max: u32) -> bool {
    let mut depth = 0u32;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Keeps only `fields` of an object, or of each object of an array.
pub fn select(v: &mut Value, fields: &[String]) {
    each_object(v, &mut |m| m.retain(|k, _| fields.iter().any(|f| f == k)));
}

/// Removes `fields` from an object, or from each object of an array.
pub fn omit(v: &mut Value, fields: &[String]) {
    each_object(v, &mut |m| {
        for f in fields {
            m.shift_remove(f);
        }
    });
}

fn each_object(v: &mut Value, f: &mut dyn FnMut(&mut serde_json::Map<String, Value>)) {
    match v {
        Value::Object(m) => f(m),
        Value::Array(items) => {
            for item in items {
                if let Value::Object(m) = item {
                    f(m);
                }
            }
        }
        _ => {}
    }
}

/// The combined `Cache-Control` of the calls' answers.
#[derive(Debug, Default)]
pub struct CacheControl {
    seen: bool,
    no_store: bool,
    no_cache: bool,
    private: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
    must_revalidate: bool,
}

impl CacheControl {
    /// Adds one call's `Cache-Control` (`None`: the call sent none, which restricts
    /// nothing).
    pub fn add(&mut self, value: Option<&str>) {
        let Some(value) = value else { return };
        self.seen = true;
        for directive in value.split(',') {
            let d = directive.trim();
            let (name, arg) = match d.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (d, None),
            };
            let secs = arg.and_then(|a| a.parse::<u64>().ok());
            match name.to_ascii_lowercase().as_str() {
                "no-store" => self.no_store = true,
                "no-cache" => self.no_cache = true,
                "private" => self.private = true,
                "must-revalidate" | "proxy-revalidate" => self.must_revalidate = true,
                "max-age" => self.max_age = Some(min(self.max_age, secs.unwrap_or(0))),
                "s-maxage" => self.s_maxage = Some(min(self.s_maxage, secs.unwrap_or(0))),
                _ => {}
            }
        }
    }

    /// A failed call makes the answer uncacheable: a degraded document must not be
    /// served from a cache after the call recovers.
    pub fn degrade(&mut self) {
        self.seen = true;
        self.no_store = true;
    }

    /// The header value (`None`: no call sent one).
    pub fn value(&self) -> Option<String> {
        if !self.seen {
            return None;
        }
        if self.no_store {
            return Some("no-store".into());
        }
        let mut parts: Vec<String> = Vec::new();
        if self.private {
            parts.push("private".into());
        }
        if self.no_cache {
            parts.push("no-cache".into());
        }
        if let Some(a) = self.max_age {
            parts.push(format!("max-age={a}"));
        }
        if let (Some(s), false) = (self.s_maxage, self.private) {
            parts.push(format!("s-maxage={s}"));
        }
        if self.must_revalidate {
            parts.push("must-revalidate".into());
        }
        if parts.is_empty() {
            return None;
        }
        Some(parts.join(", "))
    }
}

fn min(a: Option<u64>, b: u64) -> u64 {
    a.map_or(b, |a| a.min(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nesting_is_counted_outside_strings() {
        assert!(depth_within(br#"{"a":[{"b":"[[[[["}]}"#, 3));
        assert!(!depth_within(br#"{"a":[{"b":[1]}]}"#, 3));
        assert!(depth_within(br#"{"a":"\"[[[[[\\"}"#, 1));
        let bomb = "[".repeat(100_000);
        assert!(!depth_within(bomb.as_bytes(), 64));
    }

    #[test]
    fn select_and_omit_work_on_objects_and_arrays() {
        let mut v = json!([{"id": 1, "total": 2, "secret": 3}, {"id": 4}, 5]);
        select(&mut v, &["id".into(), "total".into()]);
        assert_eq!(v, json!([{"id": 1, "total": 2}, {"id": 4}, 5]));
        let mut o = json!({"id": 1, "password": "x"});
        omit(&mut o, &["password".into()]);
        assert_eq!(o, json!({"id": 1}));
    }

    #[test]
    fn cache_control_is_the_most_restrictive() {
        let mut c = CacheControl::default();
        assert_eq!(c.value(), None);
        c.add(Some("public, max-age=600"));
        c.add(None);
        c.add(Some("max-age=60, s-maxage=120"));
        assert_eq!(c.value().as_deref(), Some("max-age=60, s-maxage=120"));
        c.add(Some("private, max-age=300"));
        assert_eq!(c.value().as_deref(), Some("private, max-age=60"));
        c.add(Some("no-store"));
        assert_eq!(c.value().as_deref(), Some("no-store"));
        let mut d = CacheControl::default();
        d.add(Some("max-age=60"));
        d.degrade();
        assert_eq!(d.value().as_deref(), Some("no-store"));
    }
}
