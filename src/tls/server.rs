//! A listener's TLS: certificate entries picked by SNI, each with its own rustls
//! `ServerConfig` (certificate, ALPN, client-certificate verifier), and the handshake
//! with its timeout.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::identity::{dns_names, ClientIdentity};
use super::{host_matches, load_certs, load_crls, load_key, load_roots, provider, resolve};
use crate::config::{ClientAuthMode, ClientAuthSpec, ListenerTlsSpec, TlsVersion};

/// A listener's compiled TLS settings.
pub struct ServerTls {
    entries: Vec<Entry>,
    /// The `Strict-Transport-Security` value, when HSTS is on.
    pub hsts: Option<HeaderValue>,
    /// Whether any name of this listener asks for client certificates.
    pub mtls: bool,
    /// Every file read, to reload when one changes.
    pub files: Vec<PathBuf>,
    /// Every `client_auth.forward_header` of this listener: removed from client requests
    /// before the verified identity is added.
    pub forward_headers: Vec<HeaderName>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("entries", &self.entries.len())
            .field("mtls", &self.mtls)
            .finish_non_exhaustive()
    }
}

struct Entry {
    names: Vec<String>,
    config: Arc<ServerConfig>,
    forward_header: Option<HeaderName>,
}

/// What the handshake established, shared by every request of the connection.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The SNI name the client sent (lower case).
    pub sni: Option<String>,
    /// The certificate entry chosen.
    pub entry: usize,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The verified client certificate's identity, if one was presented.
    pub client: Option<Arc<ClientIdentity>>,
    /// Where to forward the identity, per the entry's `client_auth.forward_header`.
    pub forward_header: Option<HeaderName>,
    /// The forwarded identity's value, made once per connection.
    pub forward_value: Option<HeaderValue>,
    /// The TLS settings the handshake used (a reload may have replaced the listener's).
    pub server: Arc<ServerTls>,
}

/// A problem in a listener's `tls` block: the field under `tls` and the reason.
pub type TlsProblem = (String, String);

impl ServerTls {
    /// Builds every entry, reading certificates, keys, CAs and CRLs from disk.
    pub fn build(spec: &ListenerTlsSpec, base: Option<&Path>) -> Result<Self, Vec<TlsProblem>> {
        let mut problems = Vec::new();
        let mut entries = Vec::new();
        let mut files = Vec::new();
        let mut mtls = false;
        for (i, c) in spec.certificates.iter().enumerate() {
            let field = format!("certificates[{i}]");
            let auth = c.client_auth.as_ref().or(spec.client_auth.as_ref());
            let auth_field = if c.client_auth.is_some() {
                format!("{field}.client_auth")
            } else {
                "client_auth".to_owned()
            };
            mtls |= auth.is_some();
            match build_entry(spec, c, auth, base, &mut files) {
                Ok(entry) => entries.push(entry),
                Err((sub, reason)) => {
                    let at = match sub {
                        Part::Cert => format!("{field}.cert"),
                        Part::Key => format!("{field}.key"),
                        Part::Auth(f) => format!("{auth_field}.{f}"),
                        Part::Versions => "min_version".to_owned(),
                    };
                    problems.push((at, reason));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let hsts = spec.hsts.as_ref().map(|h| {
            let mut v = format!("max-age={}", h.max_age.0.as_secs());
            if h.include_subdomains {
                v.push_str("; includeSubDomains");
            }
            if h.preload {
                v.push_str("; preload");
            }
            HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("max-age=31536000"))
        });
        files.sort();
        files.dedup();
        let mut forward_headers: Vec<HeaderName> = Vec::new();
        for name in entries.iter().filter_map(|e| e.forward_header.as_ref()) {
            if !forward_headers.contains(name) {
                forward_headers.push(name.clone());
            }
        }
        Ok(Self {
            entries,
            hsts,
            mtls,
            files,
            forward_headers,
        })
    }

    /// The entry for an SNI name: an exact name first, then a wildcard, else the first.
    pub fn select(&self, name: Option<&str>) -> usize {
        let Some(name) = name else { return 0 };
        let exact = self.entries.iter().position(|e| {
            e.names
                .iter()
                .any(|n| !n.starts_with("*.") && n.eq_ignore_ascii_case(name))
        });
        exact
            .or_else(|| {
                self.entries.iter().position(|e| {
                    e.names
                        .iter()
                        .any(|n| n.starts_with("*.") && host_matches(n, name))
                })
            })
            .unwrap_or(0)
    }

    /// Reads the ClientHello, picks the entry for its SNI name and completes the
    /// handshake, all within `timeout`.
    pub async fn accept(
        self: &Arc<Self>,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<(TlsStream<TcpStream>, TlsInfo), String> {
        let handshake = async {
            let start = LazyConfigAcceptor::new(Acceptor::default(), stream)
                .await
                .map_err(|e| format!("bad ClientHello: {e}"))?;
            let sni = start
                .client_hello()
                .server_name()
                .map(str::to_ascii_lowercase);
            let entry = self.select(sni.as_deref());
            let e = &self.entries[entry];
            let tls = start
                .into_stream(e.config.clone())
                .await
                .map_err(|err| format!("handshake failed: {err}"))?;
            let conn = tls.get_ref().1;
            let client = conn
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| ClientIdentity::from_der(leaf).ok())
                .map(Arc::new);
            let version = match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                _ => "TLSv1.2",
            };
            let forward_value = match (&e.forward_header, &client) {
                (Some(_), Some(id)) => HeaderValue::from_str(&id.forwarded_value()).ok(),
                _ => None,
            };
            let info = TlsInfo {
                sni,
                entry,
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                version,
                client,
                forward_header: e.forward_header.clone(),
                forward_value,
                server: self.clone(),
            };
            Ok((tls, info))
        };
        tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| format!("handshake not done after {} ms", timeout.as_millis()))?
    }
}

enum Part {
    Cert,
    Key,
    Auth(&'static str),
    Versions,
}

fn build_entry(
    spec: &ListenerTlsSpec,
    c: &crate::config::CertificateSpec,
    auth: Option<&ClientAuthSpec>,
    base: Option<&Path>,
    files: &mut Vec<PathBuf>,
) -> Result<Entry, (Part, String)> {
    let cert_path = resolve(base, &c.cert);
    let key_path = resolve(base, &c.key);
    files.push(cert_path.clone());
    files.push(key_path.clone());
    let chain = load_certs(&cert_path).map_err(|e| (Part::Cert, e))?;
    let key = load_key(&key_path).map_err(|e| (Part::Key, e))?;
    let names = if c.hosts.is_empty() {
        dns_names(&chain[0])
    } else {
        c.hosts.clone()
    };
    let versions: &[&rustls::SupportedProtocolVersion] = if spec.min_version == TlsVersion::Tls13 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| (Part::Versions, e.to_string()))?;
    let mut forward_header = None;
    let builder = match auth {
        None => builder.with_no_client_auth(),
        Some(a) => {
            let ca = resolve(base, &a.ca);
            files.push(ca.clone());
            let roots = load_roots(&ca).map_err(|e| (Part::Auth("ca"), e))?;
            let mut crls = Vec::new();
            for crl in &a.crl {
                let path = resolve(base, crl);
                files.push(path.clone());
                crls.extend(load_crls(&path).map_err(|e| (Part::Auth("crl"), e))?);
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            if !crls.is_empty() {
                verifier = verifier.with_crls(crls);
            }
            if a.mode == ClientAuthMode::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| (Part::Auth("ca"), e.to_string()))?;
            forward_header = a
                .forward_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| (Part::Key, format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = spec.alpn.iter().map(|p| p.id().to_vec()).collect();
    Ok(Entry {
        names,
        config: Arc::new(config),
        forward_header,
    })
}
