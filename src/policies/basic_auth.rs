//! `basic_auth`: authenticates a request by HTTP Basic credentials (RFC 7617) of a
//! consumer's `basic_auth` user, whose password is stored as an argon2id or bcrypt hash.
//!
//! Password hashing is slow on purpose, which makes it a denial-of-service lever at the
//! edge. Three bounds keep it in check:
//! - hash costs are limited at load (argon2id: at most 64 MiB, 4 passes and 4 lanes;
//!   bcrypt: cost at most 12), so one check costs a known amount;
//! - checks run on the blocking pool, at most one per CPU core at a time; a request that
//!   cannot start its check within a second is answered 503 `auth_unavailable`;
//! - results are cached for a short time (successes 60 s, failures 10 s) under a digest
//!   of user, password and hash, so retries of the same credentials cost nothing.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use http::header::{HeaderValue, AUTHORIZATION};
use serde::{Deserialize, Serialize};

use super::consumers::{sha256, Consumers, Identity};
use super::BuildCx;
use crate::config::Problems;
use crate::http::{GatewayError, Request, Response};
use crate::pipeline::{Flow, RequestCtx};

/// `type: basic_auth`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The realm named in the challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Remove `Authorization` before proxying.
    #[serde(default = "yes")]
    pub strip: bool,
}

fn default_realm() -> String {
    "turnpike".into()
}

fn yes() -> bool {
    true
}

const SUCCESS_TTL: Duration = Duration::from_secs(60);
const FAILURE_TTL: Duration = Duration::from_secs(10);
const CACHE_CAP: usize = 10_000;

/// Checks that `hash` is an argon2id or bcrypt hash within the cost limits.
pub fn check_hash(hash: &str) -> Result<(), String> {
    if hash.starts_with("$argon2id$") {
        let parsed =
            argon2::PasswordHash::new(hash).map_err(|e| format!("not an argon2id hash: {e}"))?;
        let params = argon2::Params::try_from(&parsed)
            .map_err(|e| format!("bad argon2id parameters: {e}"))?;
        if params.m_cost() > 64 * 1024 || params.t_cost() > 4 || params.p_cost() > 4 {
            return Err(format!(
                "argon2id cost too high for a gateway (m={} KiB, t={}, p={}; at most m=65536, t=4, p=4)",
                params.m_cost(),
                params.t_cost(),
                params.p_cost()
            ));
        }
        return Ok(());
    }
    if let Some(rest) = ["$2b$", "$2a$", "$2y$"]
        .iter()
        .find_map(|p| hash.strip_prefix(p))
    {
        let cost: u32 = rest
            .get(..2)
            .and_then(|c| c.parse().ok())
            .ok_or("not a bcrypt hash")?;
        if rest.len() != 56 {
            return Err("not a bcrypt hash (wrong length)".into());
        }
        if cost > 12 {
            return Err(format!(
                "bcrypt cost {cost} too high for a gateway (at most 12)"
            ));
        }
        return Ok(());
    }
    Err("must be an argon2id (`$argon2id$...`) or bcrypt (`$2b$...`) hash".into())
}

fn verify(password: &[u8], hash: &str) -> bool {
    if hash.starts_with("$argon2id$") {
        use argon2::PasswordVerifier;
        argon2::PasswordHash::new(hash).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password, &h)
                .is_ok()
        })
    } else {
        bcrypt::verify(password, hash).unwrap_or(false)
    }
}

/// At most one password check per two cores at a time (at least one), process-wide:
/// a flood of wrong passwords can take half the machine, never all of it.
fn permits() -> &'static Arc<tokio::sync::Semaphore> {
    static P: OnceLock<Arc<tokio::sync::Semaphore>> = OnceLock::new();
    P.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(tokio::sync::Semaphore::new((n / 2).max(1)))
    })
}

/// A hash an unknown user's password is checked against, so that an unknown user costs
/// the same time as a known one and user names cannot be told apart by timing.
fn decoy() -> &'static str {
    static D: OnceLock<String> = OnceLock::new();
    D.get_or_init(|| {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(19456, 2, 1, None).unwrap_or_default();
        let hasher =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"turnpike-decoy-salt")
            .unwrap_or_else(|_| SaltString::from_b64("dHVybnBpa2U").expect("a valid literal salt"));
        hasher
            .hash_password(b"decoy", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// The built `basic_auth` policy.
pub struct BasicAuth {
    challenge: HeaderValue,
    strip: bool,
    consumers: Arc<Consumers>,
    cache: super::ttl_cache::TtlCache<bool>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth").finish_non_exhaustive()
    }
}

impl BasicAuth {
    /// Builds the policy from its spec.
    pub fn build(
        path: &str,
        spec: &BasicAuthSpec,
        cx: &BuildCx<'_>,
        p: &mut Problems,
    ) -> Option<Self> {
        let text = format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            spec.realm.replace(['"', '\\'], "")
        );
        let Ok(challenge) = HeaderValue::from_str(&text) else {
            p.push(format!("{path}.realm"), "must be printable text");
            return None;
        };
        Some(Self {
            challenge,
            strip: spec.strip,
            consumers: cx.consumers.clone(),
            cache: super::ttl_cache::TtlCache::new(CACHE_CAP),
        })
    }

    fn refuse(&self, reason: &'static str) -> GatewayError {
        GatewayError::Unauthorized {
            reason,
            challenge: Some(self.challenge.clone()),
        }
    }

    fn credentials(req: &Request) -> Option<(String, Vec<u8>)> {
        let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let colon = raw.iter().position(|b| *b == b':')?;
        let user = String::from_utf8(raw[..colon].to_vec()).ok()?;
        Some((user, raw[colon + 1..].to_vec()))
    }

    /// Checks the credentials (on the blocking pool, bounded) and records the consumer.
    pub async fn on_request(
        &self,
        ctx: &mut RequestCtx,
        req: &mut Request,
    ) -> Result<Flow, GatewayError> {
        let Some((user, password)) = Self::credentials(req) else {
            return Err(self.refuse("no basic credentials in the request"));
        };
        let found = self.consumers.by_basic_user(&user);
        let hash: Arc<str> = match found {
            Some((_, h)) => h.clone(),
            None => Arc::from(decoy()),
        };
        let key = sha256(&[user.as_bytes(), b"\0", &password, b"\0", hash.as_bytes()].concat());
        let ok = match self.cache.get(&key) {
            Some(ok) => ok,
            None => {
                let permit =
                    tokio::time::timeout(Duration::from_secs(1), permits().clone().acquire_owned())
                        .await
                        .ok()
                        .and_then(Result::ok);
                let Some(permit) = permit else {
                    tracing::warn!("basic_auth: password checks saturated; answering 503");
                    return Err(GatewayError::AuthUnavailable);
                };
                let ok = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    verify(&password, &hash)
                })
                .await
                .unwrap_or(false);
                self.cache
                    .put(key, ok, if ok { SUCCESS_TTL } else { FAILURE_TTL });
                ok
            }
        };
        let Some((consumer, _)) = found.filter(|_| ok) else {
            return Err(self.refuse("invalid credentials"));
        };
        let who = Identity::new(Some(consumer.clone()), "basic_auth");
        if self.strip {
            req.headers_mut().remove(AUTHORIZATION);
        }
        self.consumers
            .write_headers(&who, ctx.identity.is_some(), req.headers_mut());
        ctx.identity = Some(who);
        Ok(Flow::Continue)
    }

    /// Nothing to do on the way back.
    pub fn on_response(&self, _ctx: &mut RequestCtx, _resp: &mut Response) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_bounded_at_load() {
        let cheap = bcrypt::hash_with_result("pw", 4)
            .unwrap()
            .format_for_version(bcrypt::Version::TwoB);
        assert!(check_hash(&cheap).is_ok(), "{cheap}");
        let dear = cheap.replacen("$04$", "$14$", 1);
        assert!(check_hash(&dear).unwrap_err().contains("cost 14"));
        assert!(
            check_hash("$argon2id$v=19$m=1048576,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo").is_err()
        );
        assert!(check_hash("$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo").is_err());
        assert!(check_hash("plain").is_err());
        assert!(verify(b"pw", &cheap));
        assert!(!verify(b"wrong", &cheap));
    }
}
