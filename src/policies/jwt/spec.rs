//! What a user writes for `type: jwt`: the policy, its providers, and where their keys
//! come from.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Dur, Size, UpstreamTlsSpec};

/// `type: jwt`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// A name for this instance (for `skip_policies`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who may issue tokens for this route. At least one.
    pub providers: Vec<ProviderSpec>,
    /// The header holding the token; `authorization` expects the `Bearer` scheme.
    #[serde(default = "default_header")]
    pub header: String,
    /// A cookie that may hold the token (read when the header is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The claim naming the consumer (matched against `consumers[].jwt_subjects`).
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Headers to set from claims: `{x-user-id: sub}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forward_claims: BTreeMap<String, String>,
    /// Keep the token on the request sent upstream (removed by default).
    #[serde(default)]
    pub forward_token: bool,
    /// Allowed clock skew for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// The cache of verified tokens.
    #[serde(default)]
    pub cache: TokenCacheSpec,
}

/// `cache:` of `type: jwt`: verified tokens kept, so that a token seen again is a
/// lookup and a time check instead of a signature check.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCacheSpec {
    /// How many verified tokens to keep; 0 turns the cache off.
    #[serde(default = "default_cache_entries")]
    pub max_entries: usize,
}

impl Default for TokenCacheSpec {
    fn default() -> Self {
        Self {
            max_entries: default_cache_entries(),
        }
    }
}

fn default_cache_entries() -> usize {
    4096
}

/// One token issuer and its keys.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// The `iss` its tokens carry (checked); absent: tokens without a matching provider
    /// issuer are tried against this one, and `iss` is not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one); empty: `aud` is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// The keys as a JWKS: `{uri: ...}`, `{file: ...}` or `{keys: [...]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksSpec>,
    /// PEM public keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pem: Vec<PemKeySpec>,
    /// A shared secret for HS256/384/512 (at least 32 bytes; use `${ENV}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Restrict the accepted algorithms (`RS256`, `ES256`, `EdDSA`, `HS256`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<String>,
    /// Claims every token must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<String>,
    /// The longest accepted token lifetime (`exp - iat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime: Option<Dur>,
    /// Let this provider's tokens name consumers through `consumers[].jwt_subjects`
    /// (only a provider with an `issuer` ever does).
    #[serde(default = "yes")]
    pub map_consumers: bool,
}

fn yes() -> bool {
    true
}

/// Where a provider's JWKS comes from, and how a remote one is fetched.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwksSpec {
    /// An `https://` (or `http://`) URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// A JWKS file (relative to the config's folder); read at every reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Inline JWKs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<serde_json::Value>,
    /// Deadline of one fetch.
    #[serde(default = "default_fetch_timeout")]
    pub timeout: Dur,
    /// The largest document accepted.
    #[serde(default = "default_max_size")]
    pub max_size: Size,
    /// How often the document is fetched again.
    #[serde(default = "default_refresh")]
    pub refresh_interval: Dur,
    /// The shortest time between two fetches (an unknown `kid` triggers one).
    #[serde(default = "default_min_refresh")]
    pub min_refresh_interval: Dur,
    /// How long the last good keys are used while fetches fail.
    #[serde(default = "default_max_stale")]
    pub max_stale: Dur,
    /// TLS settings for the URL (a private CA); the system roots by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsSpec>,
}

/// A PEM public key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PemKeySpec {
    /// A PEM file (relative to the config's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The PEM text itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The one algorithm it verifies.
    pub algorithm: String,
    /// Its key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

fn default_header() -> String {
    "authorization".into()
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_leeway() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_fetch_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_max_size() -> Size {
    Size(1024 * 1024)
}
fn default_refresh() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_min_refresh() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_max_stale() -> Dur {
    Dur(Duration::from_secs(24 * 3600))
}
