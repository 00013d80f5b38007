//! TLS settings: a listener's certificates and client authentication, and an upstream's
//! verification and client certificate. Paths are PEM files; a relative path is taken
//! from the directory of the configuration file.

use serde::{Deserialize, Serialize};

use super::units::Dur;

/// TLS termination on a listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSpec {
    /// Certificates, chosen by the SNI name the client sends. The first one is the
    /// default (no SNI, or a name no certificate covers).
    pub certificates: Vec<CertificateSpec>,
    /// The oldest protocol version offered.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// ALPN protocols offered, in order of preference.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<Alpn>,
    /// Client certificates (mTLS) for every name of this listener; a certificate entry
    /// can set its own.
    #[serde(default)]
    pub client_auth: Option<ClientAuthSpec>,
    /// `Strict-Transport-Security` on every response of this listener.
    #[serde(default)]
    pub hsts: Option<HstsSpec>,
}

fn default_alpn() -> Vec<Alpn> {
    vec![Alpn::H2, Alpn::Http11]
}

/// A TLS version (nothing older than 1.2 exists here).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 (and 1.3).
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// An ALPN protocol the gateway serves.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2.
    #[serde(rename = "h2")]
    H2,
    /// HTTP/1.1.
    #[serde(rename = "http/1.1")]
    Http11,
}

impl Alpn {
    /// The protocol id sent in the handshake.
    pub fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

/// One certificate chain and its key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    /// The chain, leaf first (PEM).
    pub cert: String,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// SNI names this certificate serves (`api.example.com`, `*.example.com`). Empty:
    /// the DNS names of the certificate itself.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Client authentication for these names, instead of the listener's.
    #[serde(default)]
    pub client_auth: Option<ClientAuthSpec>,
}

/// Client certificates (mTLS).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthSpec {
    /// `required`: no valid certificate, no handshake. `optional`: a certificate, when
    /// sent, must be valid; requests without one go on, with no identity.
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// CA certificates that client certificates must chain to (PEM bundle).
    pub ca: String,
    /// Certificate revocation lists (PEM) checked for every client certificate.
    #[serde(default)]
    pub crl: Vec<String>,
    /// Send the verified identity upstream in this header (`Hash=..;Subject="..";DNS=..`,
    /// the format of Envoy's `x-forwarded-client-cert`). A client-sent header of that
    /// name is always removed first.
    #[serde(default)]
    pub forward_header: Option<String>,
}

/// Whether a client certificate is required.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    /// The handshake fails without a valid client certificate.
    #[default]
    Required,
    /// A client certificate is verified when sent; none is accepted.
    Optional,
}

/// `Strict-Transport-Security`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HstsSpec {
    /// `max-age`.
    #[serde(default = "default_hsts_age")]
    pub max_age: Dur,
    /// `includeSubDomains`.
    #[serde(default)]
    pub include_subdomains: bool,
    /// `preload`.
    #[serde(default)]
    pub preload: bool,
}

fn default_hsts_age() -> Dur {
    Dur::secs(365 * 24 * 3600)
}

/// Redirect every request of a plain-HTTP listener to HTTPS.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedirectHttpsSpec {
    /// The HTTPS port named in the redirect (omitted from the URL when 443).
    #[serde(default = "default_https_port")]
    pub port: u16,
    /// 301, 302, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
}

fn default_https_port() -> u16 {
    443
}

fn default_redirect_status() -> u16 {
    308
}

/// TLS to an upstream's endpoints.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSpec {
    /// CA certificates to verify the endpoints with (PEM bundle). Unset: the system's
    /// trusted roots.
    #[serde(default)]
    pub ca: Option<String>,
    /// The name sent as SNI and verified in the certificate. Unset: the endpoint's host
    /// (an IP address endpoint is verified against the certificate's IP SANs).
    #[serde(default)]
    pub server_name: Option<String>,
    /// A client certificate chain (PEM), for upstreams that require mTLS.
    #[serde(default)]
    pub client_cert: Option<String>,
    /// The client certificate's key (PEM).
    #[serde(default)]
    pub client_key: Option<String>,
}
