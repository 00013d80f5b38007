//! TLS to upstreams: verification against the system roots or a configured CA, SNI,
//! ALPN (`h2` or `http/1.1`), and an optional client certificate. Verification cannot be
//! turned off, and a TLS upstream is never tried over plaintext: a failed handshake is a
//! failed connection (502).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{load_certs, load_key, load_roots, provider, resolve};
use crate::config::UpstreamTlsSpec;

/// An upstream's compiled TLS settings.
#[derive(Clone)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// Whether ALPN must select `h2`.
    pub h2: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("h2", &self.h2)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// Builds the client config; `Err` names the field under `tls` and the reason.
    pub fn build(
        spec: &UpstreamTlsSpec,
        h2: bool,
        base: Option<&Path>,
    ) -> Result<Self, (&'static str, String)> {
        let roots = match &spec.ca {
            Some(ca) => load_roots(&resolve(base, ca)).map_err(|e| ("ca", e))?,
            None => system_roots(),
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("ca", e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match (&spec.client_cert, &spec.client_key) {
            (Some(cert), Some(key)) => {
                let chain = load_certs(&resolve(base, cert)).map_err(|e| ("client_cert", e))?;
                let key = load_key(&resolve(base, key)).map_err(|e| ("client_key", e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ("client_key", format!("does not fit the certificate: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(("client_key", "needed with client_cert".into())),
            (None, Some(_)) => return Err(("client_cert", "needed with client_key".into())),
        };
        config.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let server_name = match &spec.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|_| {
                (
                    "server_name",
                    format!("`{n}` is not a DNS name or IP address"),
                )
            })?),
            None => None,
        };
        Ok(Self {
            config: Arc::new(config),
            server_name,
            h2,
        })
    }

    /// The name to send as SNI and verify: the configured one, else the endpoint's host.
    pub fn name_for(&self, host: &str) -> Option<ServerName<'static>> {
        self.server_name.clone().or_else(|| {
            ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .ok()
        })
    }

    /// Runs the handshake on `tcp`, verifying the certificate for `name`.
    pub async fn connect(
        &self,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, String> {
        let tls = TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        if self.h2 && tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err("the upstream did not agree to HTTP/2 (ALPN h2)".into());
        }
        Ok(tls)
    }
}

/// The system's trusted roots (Debian: /etc/ssl/certs, from ca-certificates).
fn system_roots() -> rustls::RootCertStore {
    static ROOTS: std::sync::OnceLock<rustls::RootCertStore> = std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's CA certificates");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found: upstreams without `tls.ca` will fail verification");
            }
            roots
        })
        .clone()
}
