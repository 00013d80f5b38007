//! `consumers`: the named identities that authentication policies map credentials to,
//! as Kong has them. A consumer carries groups (for `acl`), a plan (for rate limits),
//! free-form metadata, and its credentials: API keys, a basic-auth user, JWT subjects.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One consumer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// Unique name: what the upstream, the access log and `acl` see.
    pub name: String,
    /// A stable id for the upstream (`x-consumer-id`); the name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Groups, for `acl` rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The plan rate limits read (a key of `plans`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Free-form values, forwarded on request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// API keys: the key itself (best from `${ENV}` or `${file:...}`), or its SHA-256
    /// digest written `sha256:<64 hex digits>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<String>,
    /// A basic-auth user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuthUserSpec>,
    /// JWT subjects (values of the consumer claim, `sub` by default) that are this
    /// consumer; also the `sub` (or configured claim) of an introspected token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_subjects: Vec<String>,
    /// Client certificates that are this consumer, for `mtls`: a subject DN
    /// (`CN=alice,O=Example`), a SAN (DNS name, URI such as a SPIFFE id, or e-mail), or
    /// a SHA-256 fingerprint (hex, colons allowed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mtls_identities: Vec<String>,
}

/// A consumer's basic-auth user.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthUserSpec {
    /// The user name.
    pub username: String,
    /// An argon2id (`$argon2id$...`) or bcrypt (`$2b$...`) hash of the password.
    pub password_hash: String,
}

/// The headers that tell the upstream who called (`server.consumer_headers`). An empty
/// name turns that header off. Client-sent copies are removed by
/// `server.internal_headers` (`x-consumer-*` by default).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerHeadersSpec {
    /// The consumer's id (its `id`, else its name).
    pub id: String,
    /// The consumer's name.
    pub name: String,
    /// The consumer's groups, comma-separated.
    pub groups: String,
    /// The consumer's plan.
    pub plan: String,
    /// Set to `true` when the anonymous consumer was used.
    pub anonymous: String,
    /// Which policy authenticated the request (`api_key`, ...).
    pub authenticated_by: String,
    /// A prefix for forwarding the consumer's `metadata`, one header per entry
    /// (`x-consumer-meta-` sends `tier: gold` as `x-consumer-meta-tier: gold`); empty:
    /// not forwarded.
    pub metadata_prefix: String,
}

impl Default for ConsumerHeadersSpec {
    fn default() -> Self {
        Self {
            id: "x-consumer-id".into(),
            name: "x-consumer-username".into(),
            groups: "x-consumer-groups".into(),
            plan: "x-consumer-plan".into(),
            anonymous: "x-anonymous-consumer".into(),
            authenticated_by: "x-credential-identifier".into(),
            metadata_prefix: String::new(),
        }
    }
}
