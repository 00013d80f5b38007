//! `jwt` end to end, with tokens made here by real RSA, EC, Ed25519 and HMAC keys
//! (aws-lc-rs), attack tokens included, and a real JWKS endpoint served by the test:
//! rotation, outage, garbage, a slow answer, a 10 MB answer, and 1,000 unknown `kid`s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;

use crate::support::*;

fn b64(data: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key of each family.
struct Keys {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    ed: Ed25519KeyPair,
    hmac: Vec<u8>,
}

impl Keys {
    fn new() -> Self {
        Self {
            rsa: RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap(),
            ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            ed: Ed25519KeyPair::generate().unwrap(),
            hmac: b"an-hmac-secret-of-at-least-32-bytes!".to_vec(),
        }
    }

    fn rsa_jwk(&self, kid: &str, alg: &str) -> serde_json::Value {
        let pk = self.rsa.public_key();
        serde_json::json!({"kty": "RSA", "kid": kid, "alg": alg, "use": "sig",
            "n": b64(pk.modulus().big_endian_without_leading_zero()),
            "e": b64(pk.exponent().big_endian_without_leading_zero())})
    }

    fn ec_jwk(&self, kid: &str) -> serde_json::Value {
        let point = self.ec.public_key().as_ref();
        serde_json::json!({"kty": "EC", "crv": "P-256", "kid": kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    }

    fn ed_jwk(&self, kid: &str) -> serde_json::Value {
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(self.ed.public_key().as_ref())})
    }

    /// The RSA public key as PKCS#1 DER (what an attacker would use as an HMAC secret).
    fn rsa_public_der(&self) -> Vec<u8> {
        self.rsa.public_key().as_ref().to_vec()
    }
}

/// `header.payload.signature`, signed with `alg` by `keys` (or a raw signature).
fn sign(keys: &Keys, header: serde_json::Value, claims: serde_json::Value) -> String {
    let alg = header["alg"].as_str().unwrap_or("").to_string();
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let rng = SystemRandom::new();
    let sig: Vec<u8> = match alg.as_str() {
        "RS256" | "PS256" => {
            let enc: &'static dyn signature::RsaEncoding = if alg == "RS256" {
                &signature::RSA_PKCS1_SHA256
            } else {
                &signature::RSA_PSS_SHA256
            };
            let mut out = vec![0u8; keys.rsa.public_modulus_len()];
            keys.rsa
                .sign(enc, &rng, input.as_bytes(), &mut out)
                .unwrap();
            out
        }
        "ES256" => keys
            .ec
            .sign(&rng, input.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec(),
        "EdDSA" => keys.ed.sign(input.as_bytes()).as_ref().to_vec(),
        _ => hmac(&keys.hmac, &input),
    };
    format!("{input}.{}", b64(sig))
}

fn hmac(secret: &[u8], input: &str) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    aws_lc_rs::hmac::sign(&key, input.as_bytes())
        .as_ref()
        .to_vec()
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut c = serde_json::json!({"iss": "https://id.test", "aud": "api", "sub": "alice",
        "exp": now() + 600, "iat": now(), "scope": "orders:read profile"});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn config(up: std::net::SocketAddr, keys: &Keys, jwks: &str) -> String {
    let inline = serde_json::json!([
        keys.rsa_jwk("rsa-1", "RS256"),
        keys.rsa_jwk("rsa-pss", "PS256"),
        keys.ec_jwk("ec-1"),
        keys.ed_jwk("ed-1"),
    ]);
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
consumers:
  - {{name: alice, groups: [staff], jwt_subjects: [alice]}}
upstreams:
  app: {{endpoints: ["{up}"]}}
routes:
  - name: users
    match: {{prefix: /users}}
    upstream: app
    policies:
      - type: jwt
        providers:
          - issuer: https://id.test
            audiences: [api]
            jwks: {{keys: {inline}}}
          - issuer: https://hs.test
            secret: "{secret}"
        forward_claims: {{x-user-id: sub, x-user-scope: scope}}
        cookie: session
  - name: orders
    match: {{prefix: /orders}}
    upstream: app
    policies:
      - type: jwt
        providers:
          - {{issuer: https://id.test, audiences: [api], jwks: {{keys: {inline}}}}}
      - type: acl
        allow: {{scopes: ["orders:write"], roles: [admin]}}
  - name: remote
    match: {{prefix: /remote}}
    upstream: app
    policies:
      - type: jwt
        providers:
          - issuer: https://id.test
            jwks: {jwks}
"#,
        secret = String::from_utf8_lossy(&keys.hmac),
    )
}

fn refused(r: &Reply, challenge: &str) {
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert_eq!(r.error_code(), "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some(challenge));
}

async fn call(base: &str, path: &str, token: &str) -> Reply {
    get(
        &format!("{base}{path}"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

#[tokio::test]
async fn valid_tokens_of_every_family_pass_and_the_upstream_learns_the_claims() {
    let keys = Keys::new();
    let up = echo("app").await;
    let gw = gateway(
        &config(up.addr, &keys, "{file: does-not-matter.json}").replace(
            "jwks: {file: does-not-matter.json}",
            "secret: \"another-secret-of-at-least-32-bytes\"",
        ),
    )
    .await;
    let base = url(&gw, "public");
    for (alg, kid) in [
        ("RS256", "rsa-1"),
        ("PS256", "rsa-pss"),
        ("ES256", "ec-1"),
        ("EdDSA", "ed-1"),
    ] {
        let t = sign(
            &keys,
            serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"}),
            claims(serde_json::json!({})),
        );
        let r = call(&base, "/users/1", &t).await;
        assert_eq!(r.status, 200, "{alg}: {:?}", r.body);
        let seen = r.echo();
        assert_eq!(seen.header("x-user-id"), Some("alice"), "{alg}");
        assert_eq!(seen.header("x-user-scope"), Some("orders:read profile"));
        assert_eq!(seen.header("x-consumer-username"), Some("alice"));
        assert_eq!(seen.header("x-credential-identifier"), Some("jwt"));
        assert_eq!(
            seen.header("authorization"),
            None,
            "the token was forwarded"
        );
    }
    // HS256 from the second provider, chosen by its issuer; and from a cookie.
    let t = sign(
        &keys,
        serde_json::json!({"alg": "HS256"}),
        claims(serde_json::json!({"iss": "https://hs.test", "aud": null})),
    );
    assert_eq!(call(&base, "/users/1", &t).await.status, 200);
    let r = get(
        &format!("{base}/users/1"),
        &[("cookie", &format!("a=b; session={t}"))],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.echo().header("cookie"),
        Some("a=b"),
        "the token cookie was forwarded"
    );
    // A kid on a token for a provider whose key has none: the key still verifies it.
    let t = sign(
        &keys,
        serde_json::json!({"alg": "HS256", "kid": "whatever"}),
        claims(serde_json::json!({"iss": "https://hs.test", "aud": null})),
    );
    assert_eq!(call(&base, "/users/1", &t).await.status, 200);
    // A forward_claims header sent by the client never reaches an upstream, also on a
    // route whose own policies do not set it.
    let t = sign(
        &keys,
        serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
        claims(serde_json::json!({"scope": "orders:write"})),
    );
    let r = get(
        &format!("{base}/orders/1"),
        &[
            ("authorization", &format!("Bearer {t}")),
            ("x-user-id", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.echo().header("x-user-id"),
        None,
        "a client-sent claim header crossed"
    );
    // No token, and a token of another scheme.
    refused(&get(&format!("{base}/users/1"), &[]).await, "Bearer");
    refused(
        &get(
            &format!("{base}/users/1"),
            &[("authorization", "Basic YTpi")],
        )
        .await,
        "Bearer",
    );
    assert_eq!(up.hits(), 8);
}

#[tokio::test]
async fn a_cached_token_is_treated_as_a_verified_one_and_still_expires() {
    let keys = Keys::new();
    let up = echo("app").await;
    let yaml = config(up.addr, &keys, "{file: x.json}")
        .replace(
            "jwks: {file: x.json}",
            "secret: \"another-secret-of-at-least-32-bytes\"",
        )
        .replace("cookie: session", "cookie: session\n        leeway: 0s");
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    let header = serde_json::json!({"alg": "RS256", "kid": "rsa-1"});
    let t = sign(&keys, header.clone(), claims(serde_json::json!({})));
    // The second call is answered from the cache: the same identity and claims reach
    // the upstream, and the token is still removed.
    for round in 0..2 {
        let r = call(&base, "/users/1", &t).await;
        assert_eq!(r.status, 200, "round {round}: {:?}", r.body);
        let seen = r.echo();
        assert_eq!(seen.header("x-user-id"), Some("alice"));
        assert_eq!(seen.header("x-user-scope"), Some("orders:read profile"));
        assert_eq!(seen.header("x-consumer-username"), Some("alice"));
        assert_eq!(seen.header("authorization"), None);
    }
    // The acl after jwt reads the claims of a cached token too (the second call): a
    // token with the scope passes twice, one without it is refused twice.
    let writer = sign(
        &keys,
        header.clone(),
        claims(serde_json::json!({"scope": "orders:write"})),
    );
    for _ in 0..2 {
        assert_eq!(call(&base, "/orders/1", &writer).await.status, 200);
        let r = call(&base, "/orders/1", &t).await;
        assert_eq!(r.status, 403, "{:?}", r.body);
    }
    // A token that expires in a second: accepted now, refused once expired, although
    // it was cached while valid.
    let short = sign(&keys, header, claims(serde_json::json!({"exp": now() + 1})));
    let first = call(&base, "/users/1", &short).await;
    if first.status == 200 {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let r = call(&base, "/users/1", &short).await;
            if r.status == 401 {
                refused(&r, "Bearer error=\"invalid_token\"");
                break;
            }
            assert_eq!(r.status, 200);
            assert!(
                std::time::Instant::now() < deadline,
                "an expired cached token is still accepted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else {
        // The second ended between signing and calling: refused as expired.
        refused(&first, "Bearer error=\"invalid_token\"");
    }
}

#[tokio::test]
async fn attack_tokens_are_401_and_never_reach_the_upstream() {
    let keys = Keys::new();
    let up = echo("app").await;
    // A listener standing in for attacker.com: it must see no connection at all.
    let attacker = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let attacker_addr = attacker.local_addr().unwrap();
    let gw = gateway(&config(up.addr, &keys, "{keys: []}").replace(
        "jwks: {keys: []}",
        "secret: \"another-secret-of-at-least-32-bytes\"",
    ))
    .await;
    let base = url(&gw, "public");
    let good = || claims(serde_json::json!({}));
    let valid = sign(
        &keys,
        serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
        good(),
    );
    let (input, _) = valid.rsplit_once('.').unwrap();
    let rsa_sig = valid.rsplit_once('.').unwrap().1;
    let mut tampered_sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(rsa_sig)
        .unwrap();
    tampered_sig[10] ^= 1;
    let es = sign(
        &keys,
        serde_json::json!({"alg": "ES256", "kid": "ec-1"}),
        good(),
    );
    let (es_input, es_sig) = es.rsplit_once('.').unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(es_sig)
        .unwrap();
    let der = {
        // The same (r, s) DER-encoded: valid ECDSA, but not the JWS encoding.
        let int = |v: &[u8]| {
            let mut v = v.to_vec();
            while v.len() > 1 && v[0] == 0 && v[1] < 0x80 {
                v.remove(0);
            }
            if v[0] >= 0x80 {
                v.insert(0, 0);
            }
            let mut out = vec![0x02, v.len() as u8];
            out.extend(v);
            out
        };
        let body = [int(&raw[..32]), int(&raw[32..])].concat();
        [vec![0x30, body.len() as u8], body].concat()
    };
    let hs_with = |secret: &[u8]| {
        let input = format!(
            "{}.{}",
            b64(r#"{"alg":"HS256","kid":"rsa-1"}"#),
            b64(good().to_string())
        );
        format!("{input}.{}", b64(hmac(secret, &input)))
    };
    let jwk_text = keys.rsa_jwk("rsa-1", "RS256").to_string();
    let attacker_keys = Keys::new();
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(good().to_string())),
        ),
        (
            "alg None with a signature",
            format!(
                "{}.{}.c2ln",
                b64(r#"{"alg":"None"}"#),
                b64(good().to_string())
            ),
        ),
        (
            "alg NONE",
            format!(
                "{}.{}.c2ln",
                b64(r#"{"alg":"NONE"}"#),
                b64(good().to_string())
            ),
        ),
        (
            "alg nOnE",
            format!(
                "{}.{}.c2ln",
                b64(r#"{"alg":"nOnE"}"#),
                b64(good().to_string())
            ),
        ),
        (
            "HS256 keyed with the RSA public key (DER)",
            hs_with(&keys.rsa_public_der()),
        ),
        (
            "HS256 keyed with the RSA public key (JWK)",
            hs_with(jwk_text.as_bytes()),
        ),
        (
            "HS256 keyed with the EC point",
            hs_with(keys.ec.public_key().as_ref()),
        ),
        (
            "tampered RSA signature",
            format!("{input}.{}", b64(&tampered_sig)),
        ),
        (
            "truncated RSA signature",
            format!("{input}.{}", &rsa_sig[..rsa_sig.len() / 2]),
        ),
        ("ECDSA r = s = 0", format!("{es_input}.{}", b64([0u8; 64]))),
        ("DER-encoded ES256", format!("{es_input}.{}", b64(&der))),
        ("no signature", format!("{input}.")),
        ("two segments", input.to_string()),
        ("four segments", format!("{valid}.x")),
        ("standard base64", valid.replace('-', "+").replace('_', "/")),
        (
            "unknown kid",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "nope"}),
                good(),
            ),
        ),
        (
            "path kid",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "../../dev/null"}),
                good(),
            ),
        ),
        (
            "sql kid",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "' OR 1=1--"}),
                good(),
            ),
        ),
        (
            "10 KB kid",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "k".repeat(10_000)}),
                good(),
            ),
        ),
        (
            "jku to the attacker",
            sign(
                &attacker_keys,
                serde_json::json!({"alg": "RS256", "jku": format!("http://{attacker_addr}/jwks")}),
                good(),
            ),
        ),
        (
            "x5u to the attacker",
            sign(
                &attacker_keys,
                serde_json::json!({"alg": "RS256", "x5u": format!("http://{attacker_addr}/cert")}),
                good(),
            ),
        ),
        (
            "embedded jwk",
            sign(
                &attacker_keys,
                serde_json::json!({"alg": "RS256", "jwk": attacker_keys.rsa_jwk("x", "RS256")}),
                good(),
            ),
        ),
        (
            "jku on a validly signed token",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1", "jku": format!("http://{attacker_addr}/jwks")}),
                good(),
            ),
        ),
        (
            "signed by another RSA key",
            sign(
                &attacker_keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
                good(),
            ),
        ),
        (
            "expired 61 s ago",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
                claims(serde_json::json!({"exp": now() - 61})),
            ),
        ),
        (
            "no exp",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
                claims(serde_json::json!({"exp": null})),
            ),
        ),
        (
            "exp as a string",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
                claims(serde_json::json!({"exp": (now() + 600).to_string()})),
            ),
        ),
        (
            "nbf in 2 minutes",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
                claims(serde_json::json!({"nbf": now() + 120})),
            ),
        ),
        (
            "wrong iss",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
                claims(serde_json::json!({"iss": "https://evil.test"})),
            ),
        ),
        (
            "no aud",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
                claims(serde_json::json!({"aud": null})),
            ),
        ),
        (
            "wrong aud",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
                claims(serde_json::json!({"aud": "web"})),
            ),
        ),
        (
            "crit",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1", "crit": ["x"], "x": 1}),
                good(),
            ),
        ),
        (
            "b64 false",
            sign(
                &keys,
                serde_json::json!({"alg": "RS256", "kid": "rsa-1", "b64": false}),
                good(),
            ),
        ),
        (
            "header not JSON",
            format!("{}.{}.c2ln", b64("not json"), b64(good().to_string())),
        ),
        (
            "duplicate alg",
            format!(
                "{}.{}.c2ln",
                b64(r#"{"alg":"RS256","alg":"HS256"}"#),
                b64(good().to_string())
            ),
        ),
    ];
    for (what, token) in &cases {
        let r = call(&base, "/users/1", token).await;
        assert_eq!(r.status, 401, "{what}: {:?}", r.body);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
        assert_eq!(r.error_code(), "unauthorized", "{what}");
    }
    assert_eq!(up.hits(), 0, "an attack token reached the upstream");
    // aud as an array holding the right value, exp 30 s ago (within the leeway): accepted.
    let t = sign(
        &keys,
        serde_json::json!({"alg": "RS256", "kid": "rsa-1"}),
        claims(serde_json::json!({"aud": ["web", "api"], "exp": now() - 30})),
    );
    assert_eq!(call(&base, "/users/1", &t).await.status, 200);
    // A 100 KB token is refused before any parsing: the head is too large.
    let r = call(&base, "/users/1", &"a".repeat(100 * 1024)).await;
    assert_eq!(r.status, 431);
    // The attacker's listener never saw a connection.
    let accepted = tokio::time::timeout(Duration::from_millis(50), attacker.accept()).await;
    assert!(
        accepted.is_err(),
        "the gateway connected to a URL named in a token"
    );
}

#[tokio::test]
async fn acl_reads_scopes_and_roles_of_the_token() {
    let keys = Keys::new();
    let up = echo("app").await;
    let gw = gateway(&config(up.addr, &keys, "{keys: []}").replace(
        "jwks: {keys: []}",
        "secret: \"another-secret-of-at-least-32-bytes\"",
    ))
    .await;
    let base = url(&gw, "public");
    let with = |extra| {
        sign(
            &keys,
            serde_json::json!({"alg": "ES256", "kid": "ec-1"}),
            claims(extra),
        )
    };
    let r = call(&base, "/orders/1", &with(serde_json::json!({}))).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.error_code(), "forbidden");
    assert_eq!(
        call(
            &base,
            "/orders/1",
            &with(serde_json::json!({"scope": "orders:write"}))
        )
        .await
        .status,
        200
    );
    assert_eq!(
        call(
            &base,
            "/orders/1",
            &with(serde_json::json!({"roles": ["admin"]}))
        )
        .await
        .status,
        200
    );
}

/// A JWKS endpoint the test controls.
#[derive(Clone, Default)]
struct Idp {
    body: Arc<Mutex<String>>,
    mode: Arc<Mutex<&'static str>>,
    hits: Arc<AtomicUsize>,
}

async fn idp(initial: String) -> (Idp, Upstream) {
    let idp = Idp::default();
    *idp.body.lock().unwrap() = initial;
    *idp.mode.lock().unwrap() = "ok";
    let state = idp.clone();
    let server = upstream_fn(move |_req| {
        let state = state.clone();
        async move {
            state.hits.fetch_add(1, Ordering::SeqCst);
            let mode = *state.mode.lock().unwrap();
            let (status, body) = match mode {
                "500" => (500, "oops".to_string()),
                "garbage" => (200, "<html>not json</html>".to_string()),
                "huge" => (
                    200,
                    format!(
                        "{{\"keys\":[],\"pad\":\"{}\"}}",
                        "x".repeat(10 * 1024 * 1024)
                    ),
                ),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    (200, state.body.lock().unwrap().clone())
                }
                _ => (200, state.body.lock().unwrap().clone()),
            };
            let mut resp = http::Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            resp
        }
    })
    .await;
    (idp, server)
}

fn jwks(keys: &[serde_json::Value]) -> String {
    serde_json::json!({ "keys": keys }).to_string()
}

#[tokio::test]
async fn a_remote_jwks_rotates_survives_outages_and_limits_refreshes() {
    let keys = Keys::new();
    let up = echo("app").await;
    let (idp, server) = idp(jwks(&[keys.rsa_jwk("k1", "RS256")])).await;
    let remote = format!(
        "{{uri: \"http://{}/jwks\", timeout: 300ms, max_size: 64KiB, min_refresh_interval: 1h}}",
        server.addr
    );
    let yaml = config(up.addr, &keys, &remote);
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    let token = |k: &Keys, kid: &str| {
        sign(
            k,
            serde_json::json!({"alg": "RS256", "kid": kid}),
            claims(serde_json::json!({})),
        )
    };
    assert_eq!(
        call(&base, "/remote/1", &token(&keys, "k1")).await.status,
        200
    );
    assert_eq!(idp.hits.load(Ordering::SeqCst), 1);

    // 1,000 distinct unknown kids: 401 each, and one refresh at most in the interval.
    for i in 0..1000 {
        let r = call(&base, "/remote/1", &token(&keys, &format!("unknown-{i}"))).await;
        assert_eq!(r.status, 401);
    }
    assert!(
        idp.hits.load(Ordering::SeqCst) <= 2,
        "{} fetches",
        idp.hits.load(Ordering::SeqCst)
    );

    // Changed fetch settings make a new cache, which has no keys yet; with the provider
    // answering 500, garbage, 10 MB or nothing in time, the route fails closed.
    for (i, mode) in ["500", "garbage", "huge", "slow"].into_iter().enumerate() {
        *idp.mode.lock().unwrap() = mode;
        let changed = yaml.replace("timeout: 300ms", &format!("timeout: 31{i}ms"));
        gw.runtime()
            .apply(turnpike::config::load_str(&changed, std::path::Path::new(".")).unwrap())
            .await
            .unwrap();
        let r = call(&base, "/remote/1", &token(&keys, "k1")).await;
        assert_eq!(r.status, 503, "{mode}: {:?}", r.body);
        assert_eq!(r.error_code(), "auth_unavailable");
    }
    *idp.mode.lock().unwrap() = "ok";
    drop(server);
}

#[tokio::test]
async fn remote_keys_are_kept_through_an_outage_and_a_new_kid_is_fetched() {
    let keys = Keys::new();
    let next = Keys::new();
    let up = echo("app").await;
    let (idp, server) = idp(jwks(&[keys.rsa_jwk("k1", "RS256")])).await;
    let remote = format!(
        "{{uri: \"http://{}/jwks\", timeout: 300ms, min_refresh_interval: 0s}}",
        server.addr
    );
    let yaml = config(up.addr, &keys, &remote);
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    let token = |k: &Keys, kid: &str| {
        sign(
            k,
            serde_json::json!({"alg": "RS256", "kid": kid}),
            claims(serde_json::json!({})),
        )
    };
    // One k1 token, used again at the end: the verified-token cache holds it.
    let old = token(&keys, "k1");
    assert_eq!(call(&base, "/remote/1", &old).await.status, 200);
    for mode in ["500", "garbage", "huge", "slow"] {
        *idp.mode.lock().unwrap() = mode;
        // An unknown kid makes the gateway fetch; the fetch fails; k1 still works.
        assert_eq!(
            call(&base, "/remote/1", &token(&next, "k2")).await.status,
            401,
            "{mode}"
        );
        assert_eq!(
            call(&base, "/remote/1", &token(&keys, "k1")).await.status,
            200,
            "{mode}"
        );
    }
    // Rotation: the provider now publishes k2 only; a k2 token triggers the refresh.
    *idp.mode.lock().unwrap() = "ok";
    *idp.body.lock().unwrap() = jwks(&[next.rsa_jwk("k2", "RS256")]);
    assert_eq!(
        call(&base, "/remote/1", &token(&next, "k2")).await.status,
        200
    );
    // The removed k1 is gone with the refreshed document, also for the token that was
    // verified (and cached) while k1 was published.
    assert_eq!(call(&base, "/remote/1", &old).await.status, 401);
    assert_eq!(
        call(&base, "/remote/1", &token(&keys, "k1")).await.status,
        401
    );
    // A reload that keeps the provider keeps its cache: no new fetch.
    let fetched = idp.hits.load(Ordering::SeqCst);
    gw.runtime()
        .apply(turnpike::config::load_str(&yaml, std::path::Path::new(".")).unwrap())
        .await
        .unwrap();
    assert_eq!(
        call(&base, "/remote/1", &token(&next, "k2")).await.status,
        200
    );
    assert_eq!(
        idp.hits.load(Ordering::SeqCst),
        fetched,
        "the reload dropped the JWKS cache"
    );
}

#[tokio::test]
async fn a_provider_down_at_startup_fails_closed_with_503() {
    let keys = Keys::new();
    let up = echo("app").await;
    let dead = closed_port().await;
    let gw = gateway(&config(
        up.addr,
        &keys,
        &format!("{{uri: \"http://{dead}/jwks\", timeout: 300ms}}"),
    ))
    .await;
    let base = url(&gw, "public");
    let t = sign(
        &keys,
        serde_json::json!({"alg": "RS256", "kid": "k1"}),
        claims(serde_json::json!({})),
    );
    let r = call(&base, "/remote/1", &t).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "auth_unavailable");
    // A malformed token is still a 401, not a 503 or a 500.
    refused(
        &call(&base, "/remote/1", "a.b").await,
        "Bearer error=\"invalid_token\"",
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn a_jwks_file_is_read_again_when_it_changes() {
    let (keys, next) = (Keys::new(), Keys::new());
    let up = echo("app").await;
    let dir = std::env::temp_dir().join(format!("tp-it-jwksfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("jwks.json"), jwks(&[keys.rsa_jwk("k1", "RS256")])).unwrap();
    let yaml = config(up.addr, &keys, "{file: jwks.json}");
    std::fs::write(dir.join("gateway.yaml"), &yaml).unwrap();
    let gw = turnpike::Gateway::start(
        turnpike::config::load_file(&dir.join("gateway.yaml")).unwrap(),
        turnpike::Options {
            reload_on_sighup: false,
            watch_config: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let base = url(&gw, "public");
    let token = |k: &Keys, kid: &str| {
        sign(
            k,
            serde_json::json!({"alg": "RS256", "kid": kid}),
            claims(serde_json::json!({})),
        )
    };
    assert_eq!(
        call(&base, "/remote/1", &token(&keys, "k1")).await.status,
        200
    );
    // Rotate the file as a config manager would: a new file renamed over the old.
    let tmp = dir.join("jwks.json.new");
    std::fs::write(&tmp, jwks(&[next.rsa_jwk("k2", "RS256")])).unwrap();
    std::fs::rename(&tmp, dir.join("jwks.json")).unwrap();
    eventually(
        Duration::from_secs(10),
        "the new JWKS file is in use",
        || {
            let (base, t) = (base.clone(), token(&next, "k2"));
            async move { (call(&base, "/remote/1", &t).await.status == 200).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        call(&base, "/remote/1", &token(&keys, "k1")).await.status,
        401
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}
