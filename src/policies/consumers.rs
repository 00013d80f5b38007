//! The compiled `consumers` of a snapshot: lookup by API-key digest and by basic-auth
//! user, and the identity the upstream learns once a policy has authenticated a request.
//!
//! API keys are held only as SHA-256 digests. A presented key is hashed and looked up by
//! its digest; the final comparison is constant-time, so neither the lookup nor the
//! comparison tells an attacker how much of a guess was right.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{ConsumerHeadersSpec, ConsumerSpec, Problems};

/// One consumer, as policies and the access log see it.
#[derive(Debug)]
pub struct Consumer {
    /// The consumer's name.
    pub name: Arc<str>,
    /// Its groups.
    pub groups: Vec<String>,
    /// Its plan.
    pub plan: Option<String>,
    /// Its metadata.
    pub metadata: Vec<(String, String)>,
    /// Its request counters (`turnpike_consumer_requests_total`).
    pub stats: Arc<crate::telemetry::metrics::ConsumerStats>,
    groups_value: Option<HeaderValue>,
    name_value: Option<HeaderValue>,
    id_value: Option<HeaderValue>,
    metadata_headers: Vec<(HeaderName, HeaderValue)>,
    plan_value: Option<HeaderValue>,
}

/// Who a request was authenticated as, kept in `RequestCtx::consumer`.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The consumer (`None`: a credential that is valid but names no consumer, such as
    /// a JWT whose subject is no configured consumer).
    pub consumer: Option<Arc<Consumer>>,
    /// The policy type that authenticated the request (`api_key`, `jwt`, ...).
    pub credential: &'static str,
    /// The request carried no valid credential and was let through as the
    /// configured anonymous consumer.
    pub anonymous: bool,
    /// The token's claims (`jwt`, `oauth2_introspection`), for later policies.
    pub claims: Option<crate::policies::jwt::token::Claims>,
}

impl Identity {
    /// An identity made by `credential` for `consumer`.
    pub fn new(consumer: Option<Arc<Consumer>>, credential: &'static str) -> Self {
        Self {
            consumer,
            credential,
            anonymous: false,
            claims: None,
        }
    }
}

/// The headers written for an authenticated request.
#[derive(Debug, Default)]
struct IdentityHeaders {
    id: Option<HeaderName>,
    name: Option<HeaderName>,
    groups: Option<HeaderName>,
    plan: Option<HeaderName>,
    credential: Option<HeaderName>,
}

/// Every consumer of a snapshot.
#[derive(Debug, Default)]
pub struct Consumers {
    list: Vec<Arc<Consumer>>,
    by_key: HashMap<[u8; 32], usize>,
    by_subject: HashMap<String, usize>,
    by_user: HashMap<String, (usize, Arc<str>)>,
    by_cert: HashMap<String, usize>,
    anonymous_header: Option<HeaderName>,
    metadata_prefix: Option<String>,
    headers: IdentityHeaders,
}

/// The lookup form of a certificate identity: fingerprints lose colons and case.
fn cert_key(id: &str) -> String {
    let bare: String = id.chars().filter(|c| *c != ':').collect();
    if bare.len() == 64 && bare.chars().all(|c| c.is_ascii_hexdigit()) {
        bare.to_ascii_lowercase()
    } else {
        id.to_string()
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

fn header_name(path: &str, name: &str, p: &mut Problems) -> Option<HeaderName> {
    if name.is_empty() {
        return None;
    }
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            p.push(path, format!("`{name}` is not a valid header name"));
            None
        }
    }
}

impl Consumers {
    /// Compiles `specs`; every problem goes to `p` with its field path.
    pub fn build(
        specs: &[ConsumerSpec],
        headers: &ConsumerHeadersSpec,
        metrics: &crate::telemetry::metrics::Metrics,
        p: &mut Problems,
    ) -> Self {
        let mut out = Self {
            headers: IdentityHeaders {
                id: header_name("server.consumer_headers.id", &headers.id, p),
                name: header_name("server.consumer_headers.name", &headers.name, p),
                groups: header_name("server.consumer_headers.groups", &headers.groups, p),
                plan: header_name("server.consumer_headers.plan", &headers.plan, p),
                credential: header_name(
                    "server.consumer_headers.authenticated_by",
                    &headers.authenticated_by,
                    p,
                ),
            },
            metadata_prefix: (!headers.metadata_prefix.is_empty())
                .then(|| headers.metadata_prefix.to_ascii_lowercase()),
            anonymous_header: header_name(
                "server.consumer_headers.anonymous",
                &headers.anonymous,
                p,
            ),
            ..Self::default()
        };
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let path = format!("consumers[{i}]");
            if spec.name.is_empty() {
                p.push(format!("{path}.name"), "must not be empty");
            } else if let Some(first) = names.insert(&spec.name, i) {
                p.push(
                    format!("{path}.name"),
                    format!("`{}` is already the name of consumers[{first}]", spec.name),
                );
            }
            for (k, key) in spec.api_keys.iter().enumerate() {
                let at = format!("{path}.api_keys[{k}]");
                let digest = match key.strip_prefix("sha256:") {
                    Some(hex) => match parse_hex32(hex) {
                        Some(d) => d,
                        None => {
                            p.push(at, "a digest is `sha256:` and 64 hex digits");
                            continue;
                        }
                    },
                    None if key.len() < 16 => {
                        p.push(at, "an API key must have at least 16 characters");
                        continue;
                    }
                    None => sha256(key.as_bytes()),
                };
                if let Some(other) = out.by_key.insert(digest, i) {
                    p.push(at, format!("this key is also a key of consumers[{other}]"));
                }
            }
            for (k, sub) in spec.jwt_subjects.iter().enumerate() {
                if let Some(other) = out.by_subject.insert(sub.clone(), i) {
                    p.push(
                        format!("{path}.jwt_subjects[{k}]"),
                        format!("`{sub}` is also a subject of consumers[{other}]"),
                    );
                }
            }
            for (k, id) in spec.mtls_identities.iter().enumerate() {
                if let Some(other) = out.by_cert.insert(cert_key(id), i) {
                    p.push(
                        format!("{path}.mtls_identities[{k}]"),
                        format!("`{id}` is also an identity of consumers[{other}]"),
                    );
                }
            }
            if let Some(b) = &spec.basic_auth {
                let at = format!("{path}.basic_auth");
                match super::basic_auth::check_hash(&b.password_hash) {
                    Err(e) => p.push(format!("{at}.password_hash"), e),
                    Ok(()) => {
                        if let Some((other, _)) = out
                            .by_user
                            .insert(b.username.clone(), (i, Arc::from(b.password_hash.as_str())))
                        {
                            p.push(
                                format!("{at}.username"),
                                format!("`{}` is also the user of consumers[{other}]", b.username),
                            );
                        }
                    }
                }
            }
            out.list.push(Arc::new(Consumer {
                name: Arc::from(spec.name.as_str()),
                groups: spec.groups.clone(),
                plan: spec.plan.clone(),
                metadata: spec.metadata.clone().into_iter().collect(),
                stats: metrics.consumer(&spec.name),
                name_value: HeaderValue::from_str(&spec.name).ok(),
                id_value: HeaderValue::from_str(spec.id.as_deref().unwrap_or(&spec.name)).ok(),
                metadata_headers: spec
                    .metadata
                    .iter()
                    .filter_map(|(k, v)| {
                        let name = format!("{}{}", headers.metadata_prefix, k).to_ascii_lowercase();
                        Some((
                            HeaderName::from_bytes(name.as_bytes()).ok()?,
                            HeaderValue::from_str(v).ok()?,
                        ))
                    })
                    .collect(),
                groups_value: (!spec.groups.is_empty())
                    .then(|| HeaderValue::from_str(&spec.groups.join(",")).ok())
                    .flatten(),
                plan_value: spec
                    .plan
                    .as_deref()
                    .and_then(|v| HeaderValue::from_str(v).ok()),
            }));
        }
        out
    }

    /// The consumer owning API key `key`, compared by digest in constant time.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        let digest = sha256(key);
        let (stored, i) = self.by_key.get_key_value(&digest)?;
        aws_lc_rs::constant_time::verify_slices_are_equal(stored, &digest).ok()?;
        self.list.get(*i)
    }

    /// The consumer whose `jwt_subjects` holds `subject`.
    pub fn by_jwt_subject(&self, subject: &str) -> Option<&Arc<Consumer>> {
        self.list.get(*self.by_subject.get(subject)?)
    }

    /// The consumer whose basic-auth user is `username`, with its password hash.
    pub fn by_basic_user(&self, username: &str) -> Option<(&Arc<Consumer>, &Arc<str>)> {
        let (i, hash) = self.by_user.get(username)?;
        Some((self.list.get(*i)?, hash))
    }

    /// The consumer a verified client certificate belongs to: by fingerprint, then any
    /// SAN, then the subject.
    pub fn by_certificate(
        &self,
        id: &crate::tls::identity::ClientIdentity,
    ) -> Option<&Arc<Consumer>> {
        std::iter::once(&id.fingerprint)
            .chain(id.uris.iter())
            .chain(id.dns.iter())
            .chain(id.emails.iter())
            .chain(std::iter::once(&id.subject))
            .find_map(|k| self.by_cert.get(&cert_key(k)))
            .and_then(|i| self.list.get(*i))
    }

    /// The consumer called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.list.iter().find(|c| &*c.name == name)
    }

    /// Writes the identity headers for `who` into a request's headers.
    ///
    /// `replacing`: an earlier policy of this request already wrote an identity (the
    /// client's own copies were removed before routing).
    pub fn write_headers(&self, who: &Identity, replacing: bool, headers: &mut HeaderMap) {
        let h = &self.headers;
        // What an earlier policy of the same request wrote goes first, so the upstream
        // never sees a mix of two identities.
        for name in [
            &h.name,
            &h.groups,
            &h.plan,
            &h.credential,
            &self.anonymous_header,
            &h.id,
        ]
        .into_iter()
        .flatten()
        {
            if replacing {
                headers.remove(name);
            }
        }
        if let Some(prefix) = self.metadata_prefix.as_ref().filter(|_| replacing) {
            let stale: Vec<HeaderName> = headers
                .keys()
                .filter(|k| k.as_str().starts_with(prefix.as_str()))
                .cloned()
                .collect();
            for k in stale {
                headers.remove(k);
            }
        }
        if who.anonymous {
            if let Some(name) = &self.anonymous_header {
                headers.insert(name.clone(), HeaderValue::from_static("true"));
            }
        }
        if let Some(name) = &h.credential {
            headers.insert(name.clone(), HeaderValue::from_static(who.credential));
        }
        let Some(c) = &who.consumer else { return };
        for (name, value) in [
            (&h.id, &c.id_value),
            (&h.name, &c.name_value),
            (&h.groups, &c.groups_value),
            (&h.plan, &c.plan_value),
        ] {
            if let (Some(n), Some(v)) = (name, value) {
                headers.insert(n.clone(), v.clone());
            }
        }
        if self.metadata_prefix.is_some() {
            for (n, v) in &c.metadata_headers {
                headers.insert(n.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, keys: &[&str]) -> ConsumerSpec {
        ConsumerSpec {
            name: name.into(),
            groups: vec!["partners".into()],
            plan: Some("pro".into()),
            metadata: Default::default(),
            api_keys: keys.iter().map(|k| (*k).to_string()).collect(),
            basic_auth: None,
            jwt_subjects: vec![],
            mtls_identities: vec![],
            id: None,
        }
    }

    #[test]
    fn keys_are_found_by_plain_value_or_digest() {
        let digest = format!("sha256:{}", {
            let d = sha256(b"second-key-of-acme-0001");
            d.iter().map(|b| format!("{b:02x}")).collect::<String>()
        });
        let mut p = Problems::default();
        let c = Consumers::build(
            &[spec("acme", &["first-key-of-acme-0001", &digest])],
            &Default::default(),
            &Default::default(),
            &mut p,
        );
        assert!(p.is_empty());
        assert_eq!(
            &*c.by_api_key(b"first-key-of-acme-0001").unwrap().name,
            "acme"
        );
        assert_eq!(
            &*c.by_api_key(b"second-key-of-acme-0001").unwrap().name,
            "acme"
        );
        assert!(c.by_api_key(b"first-key-of-acme-0001 ").is_none());
        assert!(c.by_api_key(b"").is_none());
    }

    #[test]
    fn bad_consumers_are_reported_with_their_paths() {
        let mut p = Problems::default();
        let mut bad = spec("acme", &["short", "sha256:xyz", "a-shared-key-0000001"]);
        bad.basic_auth = Some(crate::config::BasicAuthUserSpec {
            username: "acme".into(),
            password_hash: "plain".into(),
        });
        Consumers::build(
            &[bad, spec("acme", &["a-shared-key-0000001"])],
            &Default::default(),
            &Default::default(),
            &mut p,
        );
        let text = format!("{p:?}");
        for needle in [
            "consumers[0].api_keys[0]",
            "consumers[0].api_keys[1]",
            "consumers[0].basic_auth.password_hash",
            "consumers[1].name",
            "consumers[1].api_keys[0]",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
    }
}
