//! Verification keys: a set compiled from JWKs, PEM public keys or a shared secret, and
//! a remote JWKS document kept fresh in the background.
//!
//! Each key carries the algorithms it may verify, fixed when the key is loaded: the
//! JWK's own `alg` when it has one, else the provider's `algorithms` of the key's family
//! (RSA, EC, OKP, oct), else the family's one natural choice (RS256; ES256 or ES384 by
//! curve; EdDSA; HS256). A token's `alg` only selects among those, so an HS256 token can
//! never be checked with an RSA public key as its HMAC secret.
//!
//! A remote JWKS is fetched with a timeout and a size cap, refreshed on an interval,
//! fetched again on an unknown `kid` at most once per `min_refresh_interval`, and its last
//! good keys are kept while the provider is down (up to `max_stale`). The documents
//! live in a process-wide registry keyed by their settings, so a reload that keeps a
//! provider keeps its cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use crate::tls::client::UpstreamTls;

/// The key families, for the algorithm rule above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec256,
    Ec384,
    Ed,
    Hmac,
}

fn family_of(alg: Algorithm) -> Family {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
        Algorithm::ES256 => Family::Ec256,
        Algorithm::ES384 => Family::Ec384,
        Algorithm::EdDSA => Family::Ed,
        _ => Family::Rsa,
    }
}

fn natural(f: Family) -> Algorithm {
    match f {
        Family::Rsa => Algorithm::RS256,
        Family::Ec256 => Algorithm::ES256,
        Family::Ec384 => Algorithm::ES384,
        Family::Ed => Algorithm::EdDSA,
        Family::Hmac => Algorithm::HS256,
    }
}

/// One verification key.
pub struct Key {
    /// Its `kid`.
    pub kid: Option<String>,
    /// The algorithms it may verify.
    pub algs: Vec<Algorithm>,
    key: DecodingKey,
    /// For an HMAC secret: its keyed state per algorithm, made once at load (the
    /// per-request cost is then the message's hash only).
    hmac: Vec<(Algorithm, aws_lc_rs::hmac::Key)>,
}

fn hmac_keys(secret: &[u8], algs: &[Algorithm]) -> Vec<(Algorithm, aws_lc_rs::hmac::Key)> {
    algs.iter()
        .filter_map(|a| {
            let h = match a {
                Algorithm::HS256 => aws_lc_rs::hmac::HMAC_SHA256,
                Algorithm::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
                Algorithm::HS512 => aws_lc_rs::hmac::HMAC_SHA512,
                _ => return None,
            };
            Some((*a, aws_lc_rs::hmac::Key::new(h, secret)))
        })
        .collect()
}

impl Key {
    fn check(&self, alg: Algorithm, input: &str, signature: &str) -> bool {
        if let Some((_, k)) = self.hmac.iter().find(|(a, _)| *a == alg) {
            // A JWS signature of at most 64 bytes: decoded on the stack.
            let mut buf = [0u8; 64];
            return base64::Engine::decode_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                signature,
                &mut buf,
            )
            .is_ok_and(|n| aws_lc_rs::hmac::verify(k, input.as_bytes(), &buf[..n]).is_ok());
        }
        jsonwebtoken::crypto::verify(signature, input.as_bytes(), &self.key, alg).unwrap_or(false)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish()
    }
}

/// What a token's signature check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A key of the set verified it.
    Valid,
    /// Keys with its `kid` (or, without a `kid`, for its algorithm) exist; none verified it.
    Invalid,
    /// No key has its `kid`.
    UnknownKid,
}

/// A set of keys.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

fn algs_for(f: Family, declared: Option<Algorithm>, allowed: &[Algorithm]) -> Vec<Algorithm> {
    match declared {
        Some(a) if family_of(a) == f && (allowed.is_empty() || allowed.contains(&a)) => vec![a],
        Some(_) => vec![],
        None => {
            let of_family: Vec<Algorithm> = allowed
                .iter()
                .copied()
                .filter(|a| family_of(*a) == f)
                .collect();
            if allowed.is_empty() {
                vec![natural(f)]
            } else {
                of_family
            }
        }
    }
}

fn key_alg(jwk: &Jwk) -> Result<Option<Algorithm>, String> {
    match jwk.common.key_algorithm {
        None => Ok(None),
        Some(KeyAlgorithm::HS256) => Ok(Some(Algorithm::HS256)),
        Some(KeyAlgorithm::HS384) => Ok(Some(Algorithm::HS384)),
        Some(KeyAlgorithm::HS512) => Ok(Some(Algorithm::HS512)),
        Some(KeyAlgorithm::RS256) => Ok(Some(Algorithm::RS256)),
        Some(KeyAlgorithm::RS384) => Ok(Some(Algorithm::RS384)),
        Some(KeyAlgorithm::RS512) => Ok(Some(Algorithm::RS512)),
        Some(KeyAlgorithm::PS256) => Ok(Some(Algorithm::PS256)),
        Some(KeyAlgorithm::PS384) => Ok(Some(Algorithm::PS384)),
        Some(KeyAlgorithm::PS512) => Ok(Some(Algorithm::PS512)),
        Some(KeyAlgorithm::ES256) => Ok(Some(Algorithm::ES256)),
        Some(KeyAlgorithm::ES384) => Ok(Some(Algorithm::ES384)),
        Some(KeyAlgorithm::EdDSA) => Ok(Some(Algorithm::EdDSA)),
        Some(other) => Err(format!("key algorithm {other:?} is not supported")),
    }
}

impl KeySet {
    /// Adds a JWK; the reason when it cannot verify anything.
    pub fn add_jwk(&mut self, jwk: &Jwk, allowed: &[Algorithm]) -> Result<(), String> {
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return Err("an encryption key (use: enc)".into());
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Family::Ec256,
                EllipticCurve::P384 => Family::Ec384,
                _ => return Err("an EC key on a curve other than P-256 or P-384".into()),
            },
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            AlgorithmParameters::OctetKey(_) => Family::Hmac,
            _ => return Err("an unknown key type".into()),
        };
        let algs = algs_for(family, key_alg(jwk)?, allowed);
        if algs.is_empty() {
            return Err("its algorithm is not among the provider's algorithms".into());
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("not a usable key: {e}"))?;
        let hmac = if family == Family::Hmac {
            let secret = key.try_get_as_bytes().unwrap_or_default();
            if secret.len() < 32 {
                return Err("an HMAC key shorter than 32 bytes".into());
            }
            hmac_keys(secret, &algs)
        } else {
            Vec::new()
        };
        self.keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algs,
            key,
            hmac,
        });
        Ok(())
    }

    /// Adds a PEM public key for `alg`.
    pub fn add_pem(
        &mut self,
        pem: &[u8],
        alg: Algorithm,
        kid: Option<String>,
    ) -> Result<(), String> {
        let key = match family_of(alg) {
            Family::Rsa => DecodingKey::from_rsa_pem(pem),
            Family::Ec256 | Family::Ec384 => DecodingKey::from_ec_pem(pem),
            Family::Ed => DecodingKey::from_ed_pem(pem),
            Family::Hmac => return Err("HMAC keys are secrets, not PEM".into()),
        }
        .map_err(|e| format!("not a public key for {alg:?}: {e}"))?;
        self.keys.push(Key {
            kid,
            algs: vec![alg],
            key,
            hmac: Vec::new(),
        });
        Ok(())
    }

    /// Adds a shared secret for the HS algorithms (`allowed`, else HS256).
    pub fn add_secret(&mut self, secret: &[u8], allowed: &[Algorithm]) -> Result<(), String> {
        if secret.len() < 32 {
            return Err("must have at least 32 bytes (RFC 7518 §3.2)".into());
        }
        let algs = algs_for(Family::Hmac, None, allowed);
        if algs.is_empty() {
            return Err("the provider's algorithms include no HS algorithm".into());
        }
        self.keys.push(Key {
            kid: None,
            hmac: hmac_keys(secret, &algs),
            algs,
            key: DecodingKey::from_secret(secret).map_err(|e| e.to_string())?,
        });
        Ok(())
    }

    /// Parses a JWKS document: keys that cannot be used are skipped (and named in the
    /// returned notes); a document with no usable key is an error. `remote`: the
    /// document was fetched, so HMAC (`oct`) keys are refused (a secret published at a
    /// URL is no secret, and anyone on the path could plant one), and at most
    /// [`MAX_REMOTE_KEYS`] keys are kept (a token without a `kid` is tried against each).
    pub fn from_jwks(
        bytes: &[u8],
        allowed: &[Algorithm],
        remote: bool,
    ) -> Result<(Self, Vec<String>), String> {
        let set: JwkSet =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut out = Self::default();
        let mut notes = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            if remote && out.keys.len() >= MAX_REMOTE_KEYS {
                notes.push(format!(
                    "keys[{i}] and after skipped: more than {MAX_REMOTE_KEYS} keys"
                ));
                break;
            }
            if remote && matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                notes.push(format!(
                    "keys[{i}] skipped: an HMAC secret in a fetched document"
                ));
                continue;
            }
            if let Err(e) = out.add_jwk(jwk, allowed) {
                notes.push(format!("keys[{i}] skipped: {e}"));
            }
        }
        if out.keys.is_empty() {
            return Err(format!("no usable key ({})", notes.join("; ")));
        }
        Ok((out, notes))
    }

    /// Adds every key of `other`.
    pub fn extend(&mut self, other: KeySet) {
        self.keys.extend(other.keys);
    }

    /// Whether the set has no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a signature with the keys that may verify `alg` (and have `kid`, when the
    /// token names one).
    pub fn verify(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        input: &str,
        signature: &str,
    ) -> Verdict {
        // With a kid: the keys that have it; when none has, the keys that have no kid
        // (a secret, a PEM key) may still verify it. Without: every key.
        let named = |k: &&Key| kid.is_none() || k.kid.as_deref() == kid;
        let has_named = kid.is_some() && self.keys.iter().any(|k| named(&k));
        let usable = |k: &&Key| {
            if has_named {
                named(k)
            } else {
                kid.is_none() || k.kid.is_none()
            }
        };
        let mut tried = false;
        for k in self
            .keys
            .iter()
            .filter(usable)
            .filter(|k| k.algs.contains(&alg))
        {
            tried = true;
            if k.check(alg, input, signature) {
                return Verdict::Valid;
            }
        }
        if kid.is_some() && !has_named && !tried {
            return Verdict::UnknownKid;
        }
        Verdict::Invalid
    }
}

/// The most keys kept from a fetched JWKS document.
pub const MAX_REMOTE_KEYS: usize = 100;

/// How a remote JWKS is fetched.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RemoteSettings {
    /// The document's URL.
    pub uri: String,
    /// Deadline of one fetch.
    pub timeout: Duration,
    /// Largest document accepted.
    pub max_size: usize,
    /// Refresh interval.
    pub refresh: Duration,
    /// Shortest time between two fetches (unknown `kid`s, retries).
    pub min_refresh: Duration,
    /// How long the last good keys stay in use while fetches fail.
    pub max_stale: Duration,
    /// The provider's algorithms.
    pub algorithms: Vec<String>,
    /// The TLS settings, as text (two providers with other TLS settings for the same
    /// URL must not share a cache).
    pub tls: String,
}

/// A remote JWKS document and its cached keys.
pub struct RemoteJwks {
    settings: RemoteSettings,
    uri: http::Uri,
    allowed: Vec<Algorithm>,
    tls: Option<UpstreamTls>,
    keys: ArcSwapOption<(KeySet, Instant)>,
    last_attempt: Mutex<Option<Instant>>,
    fetching: tokio::sync::Mutex<()>,
    started: std::sync::atomic::AtomicBool,
}

type Registry = Mutex<HashMap<RemoteSettings, Weak<RemoteJwks>>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl RemoteJwks {
    /// The cache for `settings`: the live one when a snapshot already uses it.
    pub fn shared(
        settings: RemoteSettings,
        uri: http::Uri,
        allowed: Vec<Algorithm>,
        tls: Option<UpstreamTls>,
    ) -> Arc<Self> {
        let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        if let Some(live) = map.get(&settings).and_then(Weak::upgrade) {
            return live;
        }
        let me = Arc::new(Self {
            settings: settings.clone(),
            uri,
            allowed,
            tls,
            keys: ArcSwapOption::empty(),
            last_attempt: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            started: Default::default(),
        });
        map.insert(settings, Arc::downgrade(&me));
        me
    }

    /// The current keys, loading them first when there are none yet (bounded by the
    /// fetch timeout). `None`: no keys could be loaded (the caller answers 503).
    pub async fn keys(self: &Arc<Self>) -> Option<Arc<(KeySet, Instant)>> {
        self.start();
        if let Some(k) = self.cached() {
            return Some(k);
        }
        self.refresh(false).await;
        self.cached()
    }

    /// The cached keys, if any are fresh enough; never waits.
    pub fn cached(&self) -> Option<Arc<(KeySet, Instant)>> {
        self.keys
            .load_full()
            .filter(|k| k.1.elapsed() <= self.settings.max_stale)
    }

    /// Fetches again for an unknown `kid`, unless a fetch happened within
    /// `min_refresh_interval`.
    pub async fn refresh_for_unknown_kid(self: &Arc<Self>) {
        self.refresh(false).await;
    }

    fn start(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.started.swap(true, Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = self.settings.refresh;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(me) = weak.upgrade() else { break };
                me.refresh(true).await;
            }
        });
    }

    /// One fetch, single-flight and rate-limited (`scheduled` fetches skip the rate
    /// limit). Returns whether keys were replaced.
    async fn refresh(&self, scheduled: bool) -> bool {
        let _one = self.fetching.lock().await;
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if !scheduled && last.is_some_and(|t| t.elapsed() < self.settings.min_refresh) {
                return false;
            }
            *last = Some(Instant::now());
        }
        let got = crate::http::fetch::fetch(crate::http::fetch::Call {
            url: &self.uri,
            method: http::Method::GET,
            headers: vec![(
                http::header::ACCEPT,
                http::HeaderValue::from_static("application/json"),
            )],
            body: bytes::Bytes::new(),
            tls: self.tls.as_ref(),
            timeout: self.settings.timeout,
            max_body: self.settings.max_size,
        })
        .await;
        let parsed = match got {
            Ok((status, body)) if status.is_success() => {
                KeySet::from_jwks(&body, &self.allowed, true)
            }
            Ok((status, _)) => Err(format!("answered {status}")),
            Err(e) => Err(e),
        };
        match parsed {
            Ok((keys, notes)) => {
                for n in notes {
                    tracing::warn!(uri = %self.settings.uri, "JWKS {n}");
                }
                self.keys.store(Some(Arc::new((keys, Instant::now()))));
                true
            }
            Err(e) => {
                let kept = self.keys.load().is_some();
                tracing::warn!(uri = %self.settings.uri, error = %e, kept_last_good_keys = kept, "JWKS fetch failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_without_alg_gets_its_family_natural_algorithm_or_the_providers() {
        assert_eq!(algs_for(Family::Rsa, None, &[]), [Algorithm::RS256]);
        assert_eq!(
            algs_for(Family::Rsa, None, &[Algorithm::PS256, Algorithm::HS256]),
            [Algorithm::PS256]
        );
        assert!(algs_for(Family::Rsa, Some(Algorithm::HS256), &[]).is_empty());
        assert!(algs_for(Family::Rsa, Some(Algorithm::RS512), &[Algorithm::RS256]).is_empty());
        assert!(algs_for(Family::Hmac, None, &[Algorithm::RS256]).is_empty());
    }

    #[test]
    fn short_secrets_and_garbage_documents_are_refused() {
        let mut set = KeySet::default();
        assert!(set.add_secret(b"short", &[]).is_err());
        assert!(KeySet::from_jwks(b"<html>", &[], false).is_err());
        assert!(KeySet::from_jwks(br#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#, &[], false).is_err());
        // A long enough secret is fine in a file, never in a fetched document.
        let oct =
            br#"{"keys":[{"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0x"}]}"#;
        assert!(KeySet::from_jwks(oct, &[], false).is_ok());
        assert!(KeySet::from_jwks(oct, &[], true).is_err());
    }
}
