//! Internal headers: names only the gateway may set (the identity it derives, client
//! certificate details). A client that sends `X-Consumer-Id: admin` or its own
//! `X-Forwarded-Client-Cert` must not have it reach an upstream that trusts the gateway,
//! so every such header is removed from the client's request before routing, and
//! policies add their own afterwards.

use http::header::{HeaderMap, HeaderName};

/// The compiled list: exact names and prefixes (a configured name ending in `*`).
#[derive(Debug, Clone, Default)]
pub struct InternalHeaders {
    exact: Vec<HeaderName>,
    prefixes: Vec<String>,
    /// Every name starts with `x-` (the defaults do): other headers are skipped at once.
    all_x: bool,
}

impl InternalHeaders {
    /// Compiles configured names; invalid names are skipped (validation reports them).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        let mut out = Self::default();
        for name in names {
            let name = name.as_ref().to_ascii_lowercase();
            if let Some(prefix) = name.strip_suffix('*') {
                out.prefixes.push(prefix.to_owned());
            } else if let Ok(h) = HeaderName::from_bytes(name.as_bytes()) {
                out.exact.push(h);
            }
        }
        out.all_x = out.exact.iter().all(|h| h.as_str().starts_with("x-"))
            && out.prefixes.iter().all(|p| p.starts_with("x-"));
        out
    }

    /// Whether `name` is internal.
    pub fn matches(&self, name: &HeaderName) -> bool {
        let text = name.as_str();
        if text.contains('_') {
            // CGI-style upstreams read `X_Consumer_Id` as `X-Consumer-Id`.
            let dashed = text.replace('_', "-");
            return HeaderName::from_bytes(dashed.as_bytes()).is_ok_and(|n| self.matches(&n));
        }
        if self.all_x && !text.starts_with("x-") {
            return false;
        }
        self.exact.contains(name) || self.prefixes.iter().any(|p| text.starts_with(p.as_str()))
    }

    /// Removes every internal header from `headers`.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if self.exact.is_empty() && self.prefixes.is_empty() {
            return;
        }
        // The common request carries none: look before allocating.
        if !headers.keys().any(|n| self.matches(n)) {
            return;
        }
        let found: Vec<HeaderName> = headers
            .keys()
            .filter(|n| self.matches(n))
            .cloned()
            .collect();
        for name in found {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_exact_names_and_prefixes_case_insensitively() {
        let internal = InternalHeaders::new(&["X-Forwarded-Client-Cert", "x-consumer-*"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-client-cert", "Hash=1".parse().unwrap());
        h.insert("x-consumer-id", "admin".parse().unwrap());
        h.append("x-consumer-username", "root".parse().unwrap());
        h.insert("x-consumer", "kept: not the prefix".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        internal.strip(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "x-consumer"]);
    }

    #[test]
    fn names_without_the_x_prefix_are_matched_too() {
        let internal = InternalHeaders::new(&["x-a", "remote-user", "auth-*"]);
        for name in ["x-a", "remote-user", "auth-id"] {
            assert!(internal.matches(&HeaderName::from_static(name)), "{name}");
        }
        assert!(!internal.matches(&HeaderName::from_static("accept")));
        assert!(internal.matches(&HeaderName::from_static("remote_user")));
        assert!(InternalHeaders::new(&["x-consumer-*"])
            .matches(&HeaderName::from_static("x_consumer_id")));
    }

    #[test]
    fn an_empty_list_strips_nothing() {
        let mut h = HeaderMap::new();
        h.insert("x-consumer-id", "a".parse().unwrap());
        InternalHeaders::new::<&str>(&[]).strip(&mut h);
        assert_eq!(h.len(), 1);
    }
}
