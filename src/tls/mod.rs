//! TLS with rustls (aws-lc-rs provider): certificates chosen by SNI on listeners, client
//! certificates (mTLS) with their verified identity, and TLS to upstreams.
//!
//! - [`server`]: a listener's TLS: one rustls `ServerConfig` per certificate entry, so
//!   each SNI name can have its own certificate and its own client-certificate rules; the
//!   ClientHello is read first (`LazyConfigAcceptor`) and the entry picked from its SNI.
//! - [`identity`]: what a verified client certificate says (subject, SANs, SHA-256
//!   fingerprint), for routes, policies and the forwarded header.
//! - [`client`]: upstream TLS: system roots or a configured CA, SNI, ALPN, an optional
//!   client certificate. There is no switch to turn verification off, and a TLS
//!   upstream is never reached over plaintext.
//!
//! Only TLS 1.2 and 1.3 exist here: rustls implements nothing older.

pub mod client;
pub mod identity;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// The one crypto provider of the process (aws-lc-rs). Configs are built with it
/// explicitly, so nothing depends on a process-wide default being installed.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// Installs aws-lc-rs as the process default (for any library that asks for one).
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A configured path, relative to the configuration file's directory.
pub fn resolve(base: Option<&Path>, path: &str) -> PathBuf {
    let p = Path::new(path);
    match base {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// Every item of one kind in a PEM file (at least one); `what` names the kind.
fn load_all<T: PemObject>(path: &Path, what: &str) -> Result<Vec<T>, String> {
    let items = T::pem_file_iter(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`{}` is not a PEM {what} file: {e}", path.display()))?;
    if items.is_empty() {
        return Err(format!("`{}` holds no {what}", path.display()));
    }
    Ok(items)
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    load_all(path, "certificate")
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from `{}`: {e}", path.display()))
}

/// Every CRL in a PEM file (at least one).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    load_all(path, "CRL")
}

/// A root store from a PEM bundle.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("`{}`: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Whether `pattern` (`api.example.com` or `*.example.com`) covers `host` (lower case,
/// no port). A wildcard covers exactly one label, as in certificates.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "API.Example.com"));
        assert!(!host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", ".example.com"));
        assert!(host_matches("example.com", "EXAMPLE.com"));
        assert!(!host_matches("example.com", "www.example.com"));
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_directory() {
        assert_eq!(
            resolve(Some(Path::new("/etc/tp")), "certs/a.pem"),
            Path::new("/etc/tp/certs/a.pem")
        );
        assert_eq!(
            resolve(Some(Path::new("/etc/tp")), "/abs/a.pem"),
            Path::new("/abs/a.pem")
        );
        assert_eq!(resolve(None, "a.pem"), Path::new("a.pem"));
    }
}
