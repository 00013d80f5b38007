//! TLS: certificates by SNI, ALPN, versions, mTLS with identity forwarding and 421,
//! HSTS and the HTTPS redirect, certificate reload, handshake timeouts, and TLS to
//! upstreams (verification, SNI, h2, client certificates). Certificates are made here
//! with rcgen; nothing is read from the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

/// A CA and the files of the certificates it issued, in a folder of their own.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tp-tls-{name}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self { dir, ca }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// Issues a certificate for `sans` (server) or a client certificate, writing
    /// `<file>.pem` and `<file>.key`; returns its DER.
    fn issue(
        &self,
        file: &str,
        cn: &str,
        sans: &[&str],
        serial: u64,
        client: bool,
    ) -> CertificateDer<'static> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(serial.into());
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    /// A CRL revoking `serials`.
    fn crl(&self, file: &str, serials: &[u64]) {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: (*s).into(),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.ca).unwrap();
        std::fs::write(self.dir.join(file), crl.pem().unwrap()).unwrap();
    }

    fn chain(&self, file: &str) -> Vec<CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::pem_file_iter(self.dir.join(format!("{file}.pem")))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn key(&self, file: &str) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_file(self.dir.join(format!("{file}.key"))).unwrap()
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        roots
    }
}

/// A client config trusting `pki`, offering `alpn`, with an optional client certificate.
fn client_config(
    pki: &Pki,
    alpn: &[&str],
    cert: Option<(&Pki, &str)>,
) -> Arc<rustls::ClientConfig> {
    let b = rustls::ClientConfig::builder_with_provider(turnpike::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots());
    let mut c = match cert {
        Some((issuer, file)) => b
            .with_client_auth_cert(issuer.chain(file), issuer.key(file))
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(c)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// The leaf certificate the server presented.
fn presented(tls: &Tls) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Sends one HTTP/1.1 request (closing) and returns the response text. Errors (a
/// handshake the server refused) come back as `Err`.
async fn get_over(mut tls: Tls, host: &str, path: &str, extra: &str) -> std::io::Result<String> {
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn body_of(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

async fn tls_gateway(
    pki: &Pki,
    up: &Upstream,
    tls_block: &str,
    listener_extra: &str,
) -> turnpike::Gateway {
    let yaml = format!(
        r#"
listeners:
  - name: tls
    address: "127.0.0.1:0"
    timeouts: {{handshake: 1s, first_byte: 1s, header_read: 1s}}
    tls:
      {tls_block}
    {listener_extra}
  - name: plain
    address: "127.0.0.1:0"
    redirect_https: {{port: 8443}}
access_log: {{enabled: false}}
upstreams:
  echo: {{endpoints: ["{up}"]}}
routes:
  - {{name: all, match: {{prefix: /}}, upstream: echo}}
"#,
        up = up.addr
    );
    let _ = &pki.dir;
    gateway(&yaml).await
}

fn two_certs(pki: &Pki) -> String {
    pki.issue("a", "a.test", &["a.test"], 10, false);
    pki.issue("b", "wild.b.test", &["*.b.test"], 11, false);
    format!(
        "certificates: [{{cert: {a}.pem, key: {a}.key}}, {{cert: {b}.pem, key: {b}.key}}]",
        a = pki.path("a"),
        b = pki.path("b")
    )
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_picks_the_protocol() {
    let pki = Pki::new("sni");
    let up = echo("u").await;
    let gw = tls_gateway(&pki, &up, &two_certs(&pki), "").await;
    let addr = gw.listener_addr("tls").unwrap();
    let a = std::fs::read_to_string(pki.dir.join("a.pem")).unwrap();
    let _ = a;
    let cfg = client_config(&pki, &["http/1.1"], None);

    let tls = handshake(addr, cfg.clone(), "a.test").await.unwrap();
    assert_eq!(
        turnpike::tls::identity::dns_names(&presented(&tls)),
        ["a.test"]
    );
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let resp = get_over(tls, "a.test", "/x", "").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let seen: Echo = serde_json::from_str(body_of(&resp)).unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let tls = handshake(addr, cfg.clone(), "api.b.test").await.unwrap();
    assert_eq!(
        turnpike::tls::identity::dns_names(&presented(&tls)),
        ["*.b.test"]
    );

    // ALPN chose http/1.1: HTTP/2 is not served on that connection.
    let tls = handshake(addr, client_config(&pki, &["http/1.1"], None), "a.test")
        .await
        .unwrap();
    let h2 = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await;
    if let Ok((mut tx, conn)) = h2 {
        tokio::spawn(conn);
        let req = http::Request::get("https://a.test/h2")
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert!(
            tx.send_request(req).await.is_err(),
            "HTTP/2 served after ALPN chose http/1.1"
        );
    }

    // An unknown name gets the first (default) certificate, which the client rejects
    // because of its name: the server did not refuse the handshake, it served a.test.
    let err = handshake(addr, cfg, "other.test").await.unwrap_err();
    let presented = match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForNameContext { presented, .. },
        )) => presented.clone(),
        _ => panic!("not a name mismatch of a served certificate: {err:?}"),
    };
    assert!(
        presented.iter().any(|n| n.contains("\"a.test\"")),
        "{presented:?}"
    );

    // ALPN h2: a real HTTP/2 exchange over TLS.
    let tls = handshake(
        addr,
        client_config(&pki, &["h2", "http/1.1"], None),
        "a.test",
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://a.test/h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen: Echo = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen.uri, "/h2");
    // HEAD over HTTP/2: a gateway-made answer (a 414 for a long target) carries its
    // length but no DATA.
    let long = format!("https://a.test/{}", "x".repeat(9000));
    let req = http::Request::head(long)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 414);
    assert!(resp.headers().contains_key("content-length"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty(), "DATA on a HEAD response: {body:?}");
}

#[tokio::test]
async fn only_tls12_and_tls13_and_a_stalled_handshake_is_cut() {
    let pki = Pki::new("ver");
    let up = echo("u").await;
    let gw = tls_gateway(&pki, &up, &two_certs(&pki), "").await;
    let addr = gw.listener_addr("tls").unwrap();
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let cfg = rustls::ClientConfig::builder_with_provider(turnpike::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth();
        let tls = handshake(addr, Arc::new(cfg), "a.test").await.unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    }
    // E60: a ClientHello cut short; E68: garbage, plain HTTP on the TLS port, and a
    // 64 KB "ClientHello".
    let mut huge = b"\x16\x03\x01\xff\xff\x01\x00\xff\xfb\x03\x03".to_vec();
    huge.resize(5 + 0xffff, 0x41);
    for bytes in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        &b"\x00\x01\x02garbage garbage garbage\r\n\r\n"[..],
        &b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"[..],
        &huge[..],
    ] {
        let started = tokio::time::Instant::now();
        let out = raw(addr, bytes, Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "kept open {:?}",
            started.elapsed()
        );
        assert!(!out.contains("HTTP/1.1 200"), "{out}");
    }
    eventually(
        Duration::from_secs(5),
        "handshake errors counted",
        || async { metric_value(&gw, "turnpike_tls_handshake_errors_total").filter(|n| *n >= 4) },
    )
    .await;
}

#[tokio::test]
async fn min_version_1_3_refuses_tls12() {
    let pki = Pki::new("v13");
    let up = echo("u").await;
    let block = format!(
        "{}\n      min_version: \"1.3\"\n      alpn: [http/1.1]",
        two_certs(&pki)
    );
    let gw = tls_gateway(&pki, &up, &block, "").await;
    let addr = gw.listener_addr("tls").unwrap();
    let only = |version: &'static rustls::SupportedProtocolVersion| {
        let mut cfg = rustls::ClientConfig::builder_with_provider(turnpike::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(pki.roots())
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    };
    assert!(handshake(addr, only(&rustls::version::TLS12), "a.test")
        .await
        .is_err());
    let tls = handshake(addr, only(&rustls::version::TLS13), "a.test")
        .await
        .unwrap();
    // `alpn: [http/1.1]`: a client offering h2 first still gets HTTP/1.1.
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let resp = get_over(tls, "a.test", "/x", "").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
}

#[tokio::test]
async fn openssl_sees_only_tls12_and_tls13_and_sni_picks_the_certificate() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        panic!("openssl is needed (scripts/test installs it)");
    }
    let pki = Pki::new("ossl");
    let up = echo("u").await;
    let gw = tls_gateway(&pki, &up, &two_certs(&pki), "").await;
    let addr = gw.listener_addr("tls").unwrap().to_string();
    let s_client = |args: Vec<String>| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &addr])
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned()
                    + &String::from_utf8_lossy(&out.stderr),
            )
        })
    };
    // OpenSSL 3 refuses TLS 1.0 and 1.1 itself at its default security level ("no
    // protocols available", nothing written); level 0 makes it send the old ClientHello,
    // so the refusal seen is the server's: an alert record (rustls answers a hello with
    // no version it enables with handshake_failure) instead of a ServerHello.
    for old in ["-tls1", "-tls1_1"] {
        let (ok, out) = s_client(vec![
            old.into(),
            "-cipher".into(),
            "DEFAULT:@SECLEVEL=0".into(),
            "-servername".into(),
            "a.test".into(),
        ])
        .await
        .unwrap();
        assert!(
            !ok && !out.contains("BEGIN CERTIFICATE"),
            "{old} was accepted:\n{out}"
        );
        assert!(
            out.contains("SSL alert number") && !out.contains("written 0 bytes"),
            "{old}: not refused by the server:\n{out}"
        );
    }
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = s_client(vec![flag.into(), "-servername".into(), "x.b.test".into()])
            .await
            .unwrap();
        assert!(ok, "{flag} refused:\n{out}");
        assert!(
            out.contains(&format!("Protocol  : {name}")) || out.contains(&format!("New, {name}")),
            "{out}"
        );
        assert!(
            out.contains("CN = wild.b.test") || out.contains("CN=wild.b.test"),
            "SNI did not pick *.b.test:\n{out}"
        );
    }
    // A name no entry has: the handshake completes with the first (default) entry.
    let (_, out) = s_client(vec!["-servername".into(), "other.test".into()])
        .await
        .unwrap();
    assert!(
        out.contains("CN = a.test") || out.contains("CN=a.test"),
        "the default certificate was not served:\n{out}"
    );
}

#[tokio::test]
async fn mtls_required_checks_the_chain_and_the_crl_and_forwards_the_identity() {
    let pki = Pki::new("mtls");
    let rogue = Pki::new("rogue");
    let up = echo("u").await;
    pki.issue("a", "a.test", &["a.test"], 10, false);
    pki.issue("alice", "alice", &["alice.clients.test"], 20, true);
    pki.issue("mallory", "mallory", &["mallory.clients.test"], 21, true);
    rogue.issue("eve", "eve", &["eve.clients.test"], 30, true);
    pki.crl("crl.pem", &[21]);
    let block = format!(
        "certificates: [{{cert: {a}.pem, key: {a}.key, hosts: [a.test, a2.test]}}, {{cert: {a}.pem, key: {a}.key, hosts: [other.test]}}]
      client_auth: {{mode: required, ca: {ca}, crl: [{crl}], forward_header: x-client-cert}}
      hsts: {{max_age: 1d, include_subdomains: true}}",
        a = pki.path("a"),
        ca = pki.path("ca.pem"),
        crl = pki.path("crl.pem"),
    );
    let gw = tls_gateway(&pki, &up, &block, "").await;
    let addr = gw.listener_addr("tls").unwrap();

    // No certificate, an untrusted one, a revoked one: no request gets through.
    for client in [None, Some((&rogue, "eve")), Some((&pki, "mallory"))] {
        let cfg = client_config(&pki, &["http/1.1"], client);
        let result = match handshake(addr, cfg, "a.test").await {
            Ok(tls) => get_over(tls, "a.test", "/x", "").await,
            Err(e) => Err(e),
        };
        assert!(
            result.is_err() || result.as_ref().is_ok_and(|r| r.is_empty()),
            "{result:?}"
        );
    }
    // A valid certificate: served, the identity forwarded, a client-sent copy gone.
    let cfg = client_config(&pki, &["http/1.1"], Some((&pki, "alice")));
    let tls = handshake(addr, cfg.clone(), "a.test").await.unwrap();
    let resp = get_over(tls, "a.test", "/who", "X-Client-Cert: Hash=forged\r\n")
        .await
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=86400; includesubdomains\r\n"),
        "{resp}"
    );
    let seen: Echo = serde_json::from_str(body_of(&resp)).unwrap();
    let forwarded = seen.header("x-client-cert").expect("identity header");
    assert!(!forwarded.contains("forged"), "{forwarded}");
    assert!(
        forwarded.starts_with("Hash=")
            && forwarded.contains("Subject=\"CN=alice\"")
            && forwarded.ends_with(";DNS=alice.clients.test"),
        "{forwarded}"
    );
    // F79 / the issue: SNI a.test then Host of another virtual host: 421. A name of the
    // same certificate entry is fine.
    let tls = handshake(addr, cfg.clone(), "a.test").await.unwrap();
    let resp = get_over(tls, "other.test", "/x", "").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 421 "), "{resp}");
    assert!(resp.contains("\"code\":\"misdirected_request\""), "{resp}");
    let tls = handshake(addr, cfg, "a.test").await.unwrap();
    let resp = get_over(tls, "a2.test", "/x", "").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
}

#[tokio::test]
async fn without_sni_a_client_cannot_reach_the_mtls_virtual_host() {
    let pki = Pki::new("nosni");
    let up = echo("u").await;
    pki.issue("www", "www.test", &["www.test", "127.0.0.1"], 10, false);
    pki.issue("adm", "admin.test", &["admin.test"], 11, false);
    let block = format!(
        "certificates:
        - {{cert: {w}.pem, key: {w}.key, hosts: [www.test]}}
        - {{cert: {a}.pem, key: {a}.key, hosts: [admin.test], client_auth: {{ca: {ca}}}}}",
        w = pki.path("www"),
        a = pki.path("adm"),
        ca = pki.path("ca.pem"),
    );
    let gw = tls_gateway(&pki, &up, &block, "").await;
    let addr = gw.listener_addr("tls").unwrap();
    // Connecting by IP address sends no SNI: the first entry answers, without asking
    // for a certificate; a request for the mTLS host on that connection is 421.
    let cfg = client_config(&pki, &["http/1.1"], None);
    let tls = handshake(addr, cfg.clone(), "127.0.0.1").await.unwrap();
    let resp = get_over(tls, "admin.test", "/x", "").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 421 "), "{resp}");
    let tls = handshake(addr, cfg, "127.0.0.1").await.unwrap();
    let resp = get_over(tls, "www.test", "/x", "").await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn mtls_optional_serves_without_a_certificate_and_identifies_with_one() {
    let pki = Pki::new("opt");
    let up = echo("u").await;
    pki.issue("a", "a.test", &["a.test"], 10, false);
    pki.issue("bob", "bob", &["bob.clients.test"], 20, true);
    let block = format!(
        "certificates: [{{cert: {a}.pem, key: {a}.key}}]
      client_auth: {{mode: optional, ca: {ca}, forward_header: x-client-cert}}",
        a = pki.path("a"),
        ca = pki.path("ca.pem"),
    );
    let gw = tls_gateway(&pki, &up, &block, "").await;
    let addr = gw.listener_addr("tls").unwrap();
    let tls = handshake(addr, client_config(&pki, &[], None), "a.test")
        .await
        .unwrap();
    let resp = get_over(tls, "a.test", "/anon", "X-Client-Cert: Hash=forged\r\n")
        .await
        .unwrap();
    let seen: Echo = serde_json::from_str(body_of(&resp)).unwrap();
    assert_eq!(
        seen.header("x-client-cert"),
        None,
        "a forged identity crossed"
    );
    let tls = handshake(
        addr,
        client_config(&pki, &[], Some((&pki, "bob"))),
        "a.test",
    )
    .await
    .unwrap();
    let resp = get_over(tls, "a.test", "/bob", "").await.unwrap();
    let seen: Echo = serde_json::from_str(body_of(&resp)).unwrap();
    assert!(seen
        .header("x-client-cert")
        .is_some_and(|v| v.contains("CN=bob")));
}

#[tokio::test]
async fn plain_listener_redirects_to_https() {
    let pki = Pki::new("redir");
    let up = echo("u").await;
    let gw = tls_gateway(&pki, &up, &two_certs(&pki), "").await;
    let r = get(
        &format!("{}/a/b?c=d", url(&gw, "plain")),
        &[("host", "api.example:8080")],
    )
    .await;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://api.example:8443/a/b?c=d")
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_changed_certificate_is_served_to_new_handshakes_while_old_connections_go_on() {
    let pki = Pki::new("rot");
    let up = echo("u").await;
    let first = pki.issue("a", "a.test", &["a.test"], 10, false);
    let path = pki.dir.join("gateway.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
listeners:
  - name: tls
    address: "127.0.0.1:0"
    tls: {{certificates: [{{cert: a.pem, key: a.key}}]}}
access_log: {{enabled: false}}
upstreams:
  echo: {{endpoints: ["{}"]}}
routes:
  - {{name: all, match: {{prefix: /}}, upstream: echo}}
"#,
            up.addr
        ),
    )
    .unwrap();
    let gw = turnpike::Gateway::start(
        turnpike::config::load_file(&path).unwrap(),
        turnpike::Options {
            reload_on_sighup: false,
            watch_config: true,
            ..turnpike::Options::default()
        },
    )
    .await
    .unwrap();
    let addr = gw.listener_addr("tls").unwrap();
    let cfg = client_config(&pki, &["h2"], None);
    // An open HTTP/2 connection made with the first certificate.
    let tls = handshake(addr, cfg.clone(), "a.test").await.unwrap();
    assert_eq!(presented(&tls), first);
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);

    let second = pki.issue("a", "a.test", &["a.test"], 11, false);
    assert_ne!(first, second);
    eventually(Duration::from_secs(10), "the new certificate", || {
        let cfg = cfg.clone();
        let second = second.clone();
        async move {
            let tls = handshake(addr, cfg, "a.test").await.ok()?;
            (presented(&tls) == second).then_some(())
        }
    })
    .await;
    let req = http::Request::get("https://a.test/still")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200, "the old connection broke");
}

#[tokio::test]
async fn bad_tls_files_are_config_errors_with_their_field() {
    let pki = Pki::new("bad");
    pki.issue("a", "a.test", &["a.test"], 10, false);
    pki.issue("other", "o.test", &["o.test"], 11, false);
    std::fs::write(pki.dir.join("junk.pem"), "not pem").unwrap();
    let yaml = format!(
        r#"
listeners:
  - name: tls
    address: "127.0.0.1:0"
    tls:
      certificates:
        - {{cert: {missing}, key: {akey}}}
        - {{cert: {a}, key: {okey}}}
        - {{cert: {junk}, key: {akey}}}
      client_auth: {{ca: {ca}}}
upstreams:
  u: {{endpoints: ["127.0.0.1:1"], protocol: h2}}
routes:
  - {{name: r, respond: {{body: ok}}}}
"#,
        missing = pki.path("missing.pem"),
        a = pki.path("a.pem"),
        akey = pki.path("a.key"),
        okey = pki.path("other.key"),
        junk = pki.path("junk.pem"),
        ca = pki.path("ca.pem"),
    );
    let loaded = turnpike::config::load_str(&yaml, Path::new("."));
    let err = match loaded {
        Err(e) => e.to_string(),
        Ok(l) => turnpike::runtime::compile::check(l)
            .unwrap_err()
            .to_string(),
    };
    assert!(err.contains("upstreams.u.protocol"), "{err}");
    let yaml = yaml.replace(", protocol: h2", "");
    let loaded = turnpike::config::load_str(&yaml, Path::new(".")).unwrap();
    let err = turnpike::runtime::compile::check(loaded)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("listeners[0].tls.certificates[0].cert") && err.contains("missing.pem"),
        "{err}"
    );
    assert!(
        err.contains("listeners[0].tls.certificates[1].key") && err.contains("does not fit"),
        "{err}"
    );
    assert!(
        err.contains("listeners[0].tls.certificates[2].cert"),
        "{err}"
    );
    // A CA file without certificates.
    let yaml = yaml.replace(
        &format!("client_auth: {{ca: {}}}", pki.path("ca.pem")),
        &format!("client_auth: {{ca: {}}}", pki.path("junk.pem")),
    );
    let loaded = turnpike::config::load_str(&yaml, Path::new(".")).unwrap();
    let err = turnpike::runtime::compile::check(loaded)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("listeners[0].tls.client_auth.ca") && err.contains("holds no certificate"),
        "{err}"
    );
}

// ---- upstream TLS ------------------------------------------------------------------------

/// An echo upstream over TLS (ALPN h2 and http/1.1), optionally requiring a client
/// certificate from `client_ca`.
async fn tls_upstream(pki: &Pki, file: &str, client_ca: Option<&Pki>) -> SocketAddr {
    let b = rustls::ServerConfig::builder_with_provider(turnpike::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => b.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                turnpike::tls::provider(),
            )
            .build()
            .unwrap(),
        ),
        None => b.with_no_client_auth(),
    };
    let mut config = b.with_single_cert(pki.chain(file), pki.key(file)).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req| async move {
                    Ok::<_, std::convert::Infallible>(echo_response("tls-up", req).await)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

async fn via_gateway(upstream: &str) -> Reply {
    let gw = gateway(&format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  up: {upstream}
routes:
  - {{name: all, match: {{prefix: /}}, upstream: up, timeouts: {{connect: 2s}}}}
"#
    ))
    .await;
    get(
        &format!("{}/via", url(&gw, "public")),
        &[("host", "client.example")],
    )
    .await
}

#[tokio::test]
async fn upstream_tls_verifies_and_speaks_h1_or_h2() {
    let pki = Pki::new("up");
    pki.issue("svc", "svc.internal", &["svc.internal"], 10, false);
    let addr = tls_upstream(&pki, "svc", None).await;
    let ca = pki.path("ca.pem");

    let r = via_gateway(&format!(
        "{{endpoints: [\"{addr}\"], tls: {{ca: {ca}, server_name: svc.internal}}}}"
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.echo().version, "HTTP/1.1");

    let r = via_gateway(&format!(
        "{{endpoints: [\"{addr}\"], protocol: h2, tls: {{ca: {ca}, server_name: svc.internal}}}}"
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.echo().version, "HTTP/2.0");
    // :scheme https and :authority set, as for any HTTP/2 request over TLS.
    assert_eq!(r.echo().uri, "https://client.example/via");

    // G89: a wrong name, an unknown CA (system roots), plaintext on a TLS port: 502,
    // never a fallback.
    let r = via_gateway(&format!(
        "{{endpoints: [\"{addr}\"], tls: {{ca: {ca}, server_name: other.internal}}}}"
    ))
    .await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.error_code(), "upstream_connect_failed");
    let r = via_gateway(&format!(
        "{{endpoints: [\"{addr}\"], tls: {{server_name: svc.internal}}}}"
    ))
    .await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    let plain = echo("plain").await;
    let r = via_gateway(&format!(
        "{{endpoints: [\"{}\"], tls: {{ca: {ca}, server_name: svc.internal}}}}",
        plain.addr
    ))
    .await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(plain.hits(), 0, "a TLS upstream was sent plaintext");
}

#[tokio::test]
async fn upstream_mtls_presents_the_client_certificate() {
    let pki = Pki::new("upm");
    pki.issue("svc", "svc.internal", &["svc.internal"], 10, false);
    pki.issue("gw", "gateway", &["gateway.internal"], 11, true);
    let addr = tls_upstream(&pki, "svc", Some(&pki)).await;
    let ca = pki.path("ca.pem");
    let r = via_gateway(&format!(
        "{{endpoints: [\"{addr}\"], tls: {{ca: {ca}, server_name: svc.internal}}}}"
    ))
    .await;
    assert_eq!(
        r.status, 502,
        "served without a client certificate: {:?}",
        r.body
    );
    let r = via_gateway(&format!(
        "{{endpoints: [\"{addr}\"], tls: {{ca: {ca}, server_name: svc.internal, client_cert: {c}, client_key: {k}}}}}",
        c = pki.path("gw.pem"),
        k = pki.path("gw.key")
    ))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn mtls_policy_maps_certificates_to_consumers_and_checks_sans() {
    let pki = Pki::new("mtlspol");
    let up = echo("u").await;
    pki.issue("a", "a.test", &["a.test"], 10, false);
    pki.issue("bob", "bob", &["bob.clients.test"], 20, true);
    pki.issue("eve", "eve", &["eve.elsewhere.test"], 21, true);
    let yaml = format!(
        r#"
listeners:
  - name: tls
    address: "127.0.0.1:0"
    tls:
      certificates: [{{cert: {a}.pem, key: {a}.key}}]
      client_auth: {{mode: optional, ca: {ca}}}
access_log: {{enabled: false}}
consumers:
  - {{name: bob, groups: [clients], mtls_identities: [bob.clients.test]}}
upstreams:
  echo: {{endpoints: ["{up}"]}}
routes:
  - name: partners
    match: {{prefix: /partners}}
    upstream: echo
    policies:
      - {{type: mtls, allowed_sans: ["*.clients.test"]}}
  - name: strict
    match: {{prefix: /strict}}
    upstream: echo
    policies:
      - {{type: mtls, require_consumer: true}}
"#,
        a = pki.path("a"),
        ca = pki.path("ca.pem"),
        up = up.addr,
    );
    let gw = gateway(&yaml).await;
    let addr = gw.listener_addr("tls").unwrap();
    let over = |cert: Option<&'static str>, path: &'static str| {
        let cfg = client_config(&pki, &[], cert.map(|c| (&pki, c)));
        async move {
            let tls = handshake(addr, cfg, "a.test").await.unwrap();
            get_over(tls, "a.test", path, "").await.unwrap()
        }
    };
    // No certificate on a route that needs one: 403, and nothing reached the upstream.
    let resp = over(None, "/partners/x").await;
    assert!(resp.starts_with("HTTP/1.1 403 "), "{resp}");
    assert!(resp.contains("\"code\":\"forbidden\""), "{resp}");
    // A valid certificate with the wrong SAN: 403.
    let resp = over(Some("eve"), "/partners/x").await;
    assert!(resp.starts_with("HTTP/1.1 403 "), "{resp}");
    assert_eq!(up.hits(), 0);
    // The right SAN: the consumer it maps to reaches the upstream.
    let resp = over(Some("bob"), "/partners/x").await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let seen: Echo = serde_json::from_str(body_of(&resp)).unwrap();
    assert_eq!(seen.header("x-consumer-username"), Some("bob"));
    assert_eq!(seen.header("x-credential-identifier"), Some("mtls"));
    // require_consumer: eve's certificate is valid but belongs to no consumer.
    let resp = over(Some("eve"), "/strict/x").await;
    assert!(resp.starts_with("HTTP/1.1 403 "), "{resp}");
    let resp = over(Some("bob"), "/strict/x").await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
}

#[tokio::test]
async fn a_tls_upstream_connection_is_reused_with_bodies_both_ways() {
    // TLS 1.3 servers send session tickets after the handshake: the pool's liveness
    // check must not take them for a closed or chatty connection.
    let pki = Pki::new("upreuse");
    pki.issue("svc", "svc.internal", &["svc.internal"], 10, false);
    let addr = tls_upstream(&pki, "svc", None).await;
    let ca = pki.path("ca.pem");
    let gw = gateway(&format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
access_log: {{enabled: false}}
upstreams:
  up: {{endpoints: ["{addr}"], tls: {{ca: {ca}, server_name: svc.internal}}}}
routes:
  - {{name: all, match: {{prefix: /}}, upstream: up}}
"#
    ))
    .await;
    let base = url(&gw, "public");
    for i in 0..10 {
        let r = get(&format!("{base}/get/{i}"), &[]).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let body = "x".repeat(50_000 + i);
        let r = send(request("POST", &format!("{base}/post/{i}"), &[], &body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.echo().body_len, body.len());
    }
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_upstream_connections_opened_total{upstream=\"up\"}"
        ),
        Some(1),
        "the TLS connection was not reused"
    );
}
