//! The identity in a verified client certificate: subject, subject alternative names and
//! SHA-256 fingerprint. rustls has verified the chain before this runs; this only reads.

use std::fmt::Write as _;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a client certificate says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject distinguished name (`CN=alice,O=Example`).
    pub subject: String,
    /// DNS names.
    pub dns: Vec<String>,
    /// URIs (SPIFFE ids and the like).
    pub uris: Vec<String>,
    /// E-mail addresses.
    pub emails: Vec<String>,
    /// Lower-case hex SHA-256 of the DER certificate.
    pub fingerprint: String,
    /// The serial number, lower-case hex.
    pub serial: String,
}

impl ClientIdentity {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
        let mut id = Self {
            subject: cert.subject().to_string(),
            fingerprint: hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref()),
            serial: cert.raw_serial_as_string().replace(':', ""),
            ..Self::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => id.dns.push((*d).to_owned()),
                    GeneralName::URI(u) => id.uris.push((*u).to_owned()),
                    GeneralName::RFC822Name(e) => id.emails.push((*e).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(id)
    }

    /// The value of the forwarded identity header, in the format of Envoy's
    /// `x-forwarded-client-cert`: `Hash=<sha256>;Subject="<dn>";URI=<uri>;DNS=<name>`.
    pub fn forwarded_value(&self) -> String {
        let mut out = format!(
            "Hash={};Subject=\"{}\"",
            self.fingerprint,
            escape(&self.subject)
        );
        for uri in &self.uris {
            let _ = write!(out, ";URI={}", escape_bare(uri));
        }
        for dns in &self.dns {
            let _ = write!(out, ";DNS={}", escape_bare(dns));
        }
        out
    }
}

/// The DNS names a server certificate covers (its SAN DNS names).
pub fn dns_names(der: &[u8]) -> Vec<String> {
    ClientIdentity::from_der(der)
        .map(|id| id.dns)
        .unwrap_or_default()
}

/// Lowercase hex of `bytes` (certificate fingerprints, rate-limit key digests).
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Escapes `"` and `\` inside a quoted value; drops control characters.
fn escape(v: &str) -> String {
    v.chars()
        .filter(|c| !c.is_control())
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

/// Unquoted values: `;` and `,` would split the header, so they are dropped.
fn escape_bare(v: &str) -> String {
    v.chars()
        .filter(|c| !c.is_control() && !matches!(c, ';' | ',' | '"'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_subject_sans_and_fingerprint() {
        let mut params = rcgen::CertificateParams::new(vec!["client.example".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice \"the\" admin");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://example/alice".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let id = ClientIdentity::from_der(cert.der()).unwrap();
        assert_eq!(id.dns, ["client.example"]);
        assert_eq!(id.uris, ["spiffe://example/alice"]);
        assert!(id.subject.contains("CN=alice"), "{}", id.subject);
        assert_eq!(id.fingerprint.len(), 64);
        let v = id.forwarded_value();
        assert!(
            v.starts_with(&format!("Hash={};Subject=\"", id.fingerprint)),
            "{v}"
        );
        assert!(v.contains("\\\"the\\\""), "{v}");
        assert!(
            v.ends_with(";URI=spiffe://example/alice;DNS=client.example"),
            "{v}"
        );
        assert!(http::HeaderValue::from_str(&v).is_ok());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(ClientIdentity::from_der(b"not a certificate").is_err());
        assert!(dns_names(&[0x30, 0x82, 0xff, 0xff]).is_empty());
    }
}
