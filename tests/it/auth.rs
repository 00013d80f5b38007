//! Consumers and authentication end to end: `api_key` (header, query, digests, strip,
//! revocation on reload), `acl` and `ip_restriction`, the identity headers the upstream
//! receives, and the 401/403 answers with their challenge and JSON body.

use crate::support::*;

const ACME_KEY: &str = "acme-key-0123456789abcdef";
const BOB_KEY: &str = "bob-key-0123456789abcdef";

fn sha256_hex(text: &str) -> String {
    turnpike::policies::consumers::sha256(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config(up: std::net::SocketAddr, acme_keys: &str, trusted: &str) -> String {
    format!(
        r#"
server: {{trusted_proxies: [{trusted}], consumer_headers: {{metadata_prefix: x-consumer-meta-}}}}
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
consumers:
  - name: acme
    id: 7f1c2d
    groups: [partners]
    plan: pro
    metadata: {{tier: gold}}
    api_keys: [{acme_keys}]
  - name: bob
    groups: [staff]
    api_keys: ["sha256:{bob}"]
upstreams:
  app: {{endpoints: ["{up}"]}}
routes:
  - name: partners
    match: {{prefix: /partners}}
    upstream: app
    policies:
      - type: api_key
      - type: acl
        allow: {{groups: [partners]}}
  - name: query
    match: {{prefix: /query}}
    upstream: app
    policies:
      - {{type: api_key, query: apikey}}
  - name: keep
    match: {{prefix: /keep}}
    upstream: app
    policies:
      - {{type: api_key, header: x-key, strip: false}}
  - name: deny-bob
    match: {{prefix: /deny-bob}}
    upstream: app
    policies:
      - type: api_key
      - {{type: acl, deny: {{consumers: [bob]}}}}
  - name: acl-alone
    match: {{prefix: /acl-alone}}
    upstream: app
    policies:
      - {{type: acl, allow: {{groups: [partners]}}}}
  - name: office
    match: {{prefix: /office}}
    upstream: app
    policies:
      - {{type: ip_restriction, allow: [10.0.0.0/8]}}
  - name: blocked
    match: {{prefix: /blocked}}
    upstream: app
    policies:
      - {{type: ip_restriction, deny: [127.0.0.1]}}
"#,
        bob = sha256_hex(BOB_KEY),
    )
}

fn assert_refused(r: &Reply, status: u16, challenge: Option<&str>) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.error_code(),
        if status == 401 {
            "unauthorized"
        } else {
            "forbidden"
        }
    );
    assert_eq!(r.header("www-authenticate"), challenge);
}

#[tokio::test]
async fn api_keys_identify_consumers_and_the_upstream_learns_who_called() {
    let up = echo("app").await;
    let gw = gateway(&config(up.addr, &format!("\"{ACME_KEY}\""), "")).await;
    let base = url(&gw, "public");

    let r = get(&format!("{base}/partners/x"), &[]).await;
    assert_refused(&r, 401, Some("ApiKey"));
    let r = get(
        &format!("{base}/partners/x"),
        &[("x-api-key", "wrong-key-0123456789")],
    )
    .await;
    assert_refused(&r, 401, Some("ApiKey"));
    assert_eq!(up.hits(), 0, "a refused request reached the upstream");

    let r = get(
        &format!("{base}/partners/x"),
        &[
            ("x-api-key", ACME_KEY),
            ("x-consumer-username", "admin"),
            ("x-consumer-meta-role", "root"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = r.echo();
    assert_eq!(seen.header("x-consumer-username"), Some("acme"));
    assert_eq!(seen.header("x-consumer-groups"), Some("partners"));
    assert_eq!(seen.header("x-consumer-plan"), Some("pro"));
    assert_eq!(seen.header("x-credential-identifier"), Some("api_key"));
    assert_eq!(seen.header("x-consumer-id"), Some("7f1c2d"));
    assert_eq!(seen.header("x-consumer-meta-tier"), Some("gold"));
    assert_eq!(seen.header("x-api-key"), None, "the key was forwarded");
    assert_eq!(
        seen.header("x-consumer-meta-role"),
        None,
        "a forged metadata header crossed"
    );
    assert_eq!(
        seen.headers["x-consumer-username"].len(),
        1,
        "the client's copy survived"
    );

    // A key stored as a digest; the acl then refuses a consumer outside the group.
    let r = get(&format!("{base}/partners/x"), &[("x-api-key", BOB_KEY)]).await;
    assert_refused(&r, 403, None);
    let r = get(&format!("{base}/deny-bob/x"), &[("x-api-key", BOB_KEY)]).await;
    assert_refused(&r, 403, None);
    let r = get(&format!("{base}/deny-bob/x"), &[("x-api-key", ACME_KEY)]).await;
    assert_eq!(r.status, 200);
    // An acl with no authentication before it has no one to authorize.
    let r = get(&format!("{base}/acl-alone/x"), &[("x-api-key", ACME_KEY)]).await;
    assert_refused(&r, 401, None);

    // strip: false keeps the key for the upstream; a custom header name is read.
    let r = get(&format!("{base}/keep/x"), &[("x-key", ACME_KEY)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().header("x-key"), Some(ACME_KEY));
    let r = get(&format!("{base}/keep/x"), &[("x-api-key", ACME_KEY)]).await;
    assert_refused(&r, 401, Some("ApiKey"));

    // Metrics by consumer: refusals after authentication count for the consumer.
    let series = |c: &str, class: &str| {
        metric_value(
            &gw,
            &format!(
                "turnpike_consumer_requests_total{{consumer=\"{c}\",status_class=\"{class}\"}}"
            ),
        )
    };
    assert_eq!(series("acme", "2xx"), Some(3));
    assert_eq!(series("bob", "4xx"), Some(2));
}

#[tokio::test]
async fn api_keys_in_the_query_only_where_configured() {
    let up = echo("app").await;
    let gw = gateway(&config(up.addr, &format!("\"{ACME_KEY}\""), "")).await;
    let base = url(&gw, "public");
    let r = get(&format!("{base}/query/x?a=1&apikey={ACME_KEY}&b=2"), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.echo().uri, "/query/x?a=1&b=2", "the key was forwarded");
    // The header still works on a route that also reads the query.
    let r = get(&format!("{base}/query/x"), &[("x-api-key", ACME_KEY)]).await;
    assert_eq!(r.status, 200);
    // A key with a trailing space (encoded) is another key.
    let r = get(&format!("{base}/query/x?apikey={ACME_KEY}%20"), &[]).await;
    assert_refused(&r, 401, Some("ApiKey"));
    // The query is not read where only the header is configured.
    let r = get(&format!("{base}/partners/x?apikey={ACME_KEY}"), &[]).await;
    assert_refused(&r, 401, Some("ApiKey"));
}

#[tokio::test]
async fn a_key_removed_from_the_config_is_refused_from_the_next_snapshot() {
    let up = echo("app").await;
    let gw = gateway(&config(up.addr, &format!("\"{ACME_KEY}\""), "")).await;
    let base = url(&gw, "public");
    let r = get(&format!("{base}/partners/x"), &[("x-api-key", ACME_KEY)]).await;
    assert_eq!(r.status, 200);
    let rotated = config(up.addr, "\"acme-new-key-0123456789ab\"", "");
    gw.runtime()
        .apply(turnpike::config::load_str(&rotated, std::path::Path::new(".")).unwrap())
        .await
        .unwrap();
    let r = get(&format!("{base}/partners/x"), &[("x-api-key", ACME_KEY)]).await;
    assert_refused(&r, 401, Some("ApiKey"));
    let r = get(
        &format!("{base}/partners/x"),
        &[("x-api-key", "acme-new-key-0123456789ab")],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn ip_rules_use_the_real_client_address() {
    let up = echo("app").await;
    let gw = gateway(&config(up.addr, &format!("\"{ACME_KEY}\""), "")).await;
    let base = url(&gw, "public");
    let r = get(&format!("{base}/blocked/x"), &[]).await;
    assert_refused(&r, 403, None);
    // From an untrusted peer, a forged X-Forwarded-For is not believed.
    let r = get(
        &format!("{base}/office/x"),
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_refused(&r, 403, None);
    assert_eq!(up.hits(), 0);
    // Behind a trusted proxy (here: loopback), the chain's client address counts.
    let trusted = gateway(&config(up.addr, &format!("\"{ACME_KEY}\""), "127.0.0.1")).await;
    let base = url(&trusted, "public");
    let r = get(
        &format!("{base}/office/x"),
        &[("x-forwarded-for", "10.1.2.3")],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test]
async fn bad_consumers_and_auth_policies_are_config_errors_with_their_paths() {
    let up = echo("app").await;
    let yaml = config(up.addr, "\"short\"", "")
        .replace("deny: {consumers: [bob]}", "deny: {consumers: [nobody]}");
    let errors = turnpike::config::load_str(&yaml, std::path::Path::new("."))
        .and_then(turnpike::runtime::compile::check)
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("consumers[0].api_keys[0]") && errors.contains("at least 16 characters"),
        "{errors}"
    );
    assert!(
        errors.contains("routes[3].policies[1].deny.consumers[0]")
            && errors.contains("no consumer is called `nobody`"),
        "{errors}"
    );
}

fn argon2id(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    let hasher = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::from_b64("c2FsdHNhbHRzYWx0").unwrap();
    hasher
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// An RFC 7662 introspection endpoint: `good` and `reader` are active tokens.
async fn authorization_server(down: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Upstream {
    upstream_fn(move |req| {
        let down = down.clone();
        async move {
            use http_body_util::BodyExt;
            let creds = req.headers().get("authorization").cloned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form = String::from_utf8_lossy(&body).into_owned();
            let reply = |status: u16, v: serde_json::Value| {
                let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(v.to_string())));
                *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                r
            };
            if down.load(std::sync::atomic::Ordering::SeqCst) {
                return reply(500, serde_json::json!({}));
            }
            // RFC 6749 §2.3.1: the secret is form-encoded before the Basic encoding.
            let expected = basic("gateway", "s3cret%2B%2F%3D");
            if creds.as_ref().and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
                return reply(401, serde_json::json!({"error": "invalid_client"}));
            }
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 600;
            match form.as_str() {
                "token=good&token_type_hint=access_token" => reply(200, serde_json::json!({"active": true, "sub": "alice", "scope": "orders:read orders:write", "exp": exp})),
                "token=reader&token_type_hint=access_token" => reply(200, serde_json::json!({"active": true, "sub": "someone", "scope": "orders:read", "exp": exp})),
                // An `exp` no clock reaches: cached for cache_ttl, never a crash.
                "token=forever&token_type_hint=access_token" => {
                    let mut r = reply(200, serde_json::json!({}));
                    *r.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(
                        br#"{"active":true,"sub":"alice","scope":"orders:read orders:write","exp":1e30}"#,
                    ));
                    r
                }
                _ => reply(200, serde_json::json!({"active": false})),
            }
        }
    })
    .await
}

#[tokio::test]
async fn basic_auth_introspection_and_auth_alternatives() {
    let up = echo("app").await;
    let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let idp = authorization_server(down.clone()).await;
    let bcrypt_hash = bcrypt::hash("bob-password", 4).unwrap();
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
consumers:
  - {{name: acme, groups: [partners], api_keys: ["{ACME_KEY}"], basic_auth: {{username: acme, password_hash: "{argon}"}}}}
  - {{name: bob, basic_auth: {{username: bob, password_hash: "{bcrypt_hash}"}}}}
  - {{name: alice, jwt_subjects: [alice]}}
  - {{name: guest, groups: [anonymous]}}
  - {{name: carol, api_keys: ["carol-key-0123456789abcdef"]}}
upstreams:
  app: {{endpoints: ["{up}"]}}
routes:
  - name: basic
    match: {{prefix: /basic}}
    upstream: app
    policies: [{{type: basic_auth, realm: shop}}]
  - name: introspect
    match: {{prefix: /introspect}}
    upstream: app
    policies:
      - type: oauth2_introspection
        endpoint: "http://{idp}/introspect"
        client_id: gateway
        client_secret: "s3cret+/="
        required_scopes: [orders:read]
        timeout: 500ms
      - {{type: acl, allow: {{scopes: [orders:write]}}}}
  - name: either
    match: {{prefix: /either}}
    upstream: app
    policies:
      - type: auth
        any:
          - {{type: api_key}}
          - {{type: basic_auth}}
  - name: open
    match: {{prefix: /open}}
    upstream: app
    policies:
      - {{type: auth, any: [{{type: api_key}}], anonymous: guest}}
  - name: open-idp
    match: {{prefix: /open-idp}}
    upstream: app
    policies:
      - type: auth
        any:
          - {{type: oauth2_introspection, endpoint: "http://{idp}/introspect", client_id: gateway, client_secret: "s3cret+/=", timeout: 500ms}}
        anonymous: guest
  - name: both
    match: {{prefix: /both}}
    upstream: app
    policies:
      - type: auth
        all:
          - {{type: api_key}}
          - {{type: basic_auth}}
"#,
        argon = argon2id("acme-password"),
        idp = idp.addr,
        up = up.addr,
    );
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");

    // basic_auth: argon2id and bcrypt hashes; wrong password, unknown user, no header.
    let r = get(
        &format!("{base}/basic/x"),
        &[("authorization", &basic("acme", "acme-password"))],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.echo().header("x-consumer-username"), Some("acme"));
    assert_eq!(
        r.echo().header("authorization"),
        None,
        "the credentials were forwarded"
    );
    let r = get(
        &format!("{base}/basic/x"),
        &[("authorization", &basic("bob", "bob-password"))],
    )
    .await;
    assert_eq!(r.echo().header("x-consumer-username"), Some("bob"));
    for (user, pw) in [("acme", "wrong"), ("nobody", "x"), ("bob", "")] {
        let r = get(
            &format!("{base}/basic/x"),
            &[("authorization", &basic(user, pw))],
        )
        .await;
        assert_refused(&r, 401, Some("Basic realm=\"shop\", charset=\"UTF-8\""));
    }
    assert_refused(
        &get(&format!("{base}/basic/x"), &[]).await,
        401,
        Some("Basic realm=\"shop\", charset=\"UTF-8\""),
    );

    // Introspection: active with both scopes; a reader lacks orders:write (403 from
    // acl); an inactive token is 401; answers are cached.
    let bearer = |t: &str| format!("Bearer {t}");
    let r = get(
        &format!("{base}/introspect/x"),
        &[("authorization", &bearer("good"))],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.echo().header("x-consumer-username"), Some("alice"));
    let r = get(
        &format!("{base}/introspect/x"),
        &[("authorization", &bearer("reader"))],
    )
    .await;
    assert_refused(&r, 403, None);
    let r = get(
        &format!("{base}/introspect/x"),
        &[("authorization", &bearer("revoked"))],
    )
    .await;
    assert_refused(&r, 401, Some("Bearer error=\"invalid_token\""));
    let calls = idp.hits();
    for _ in 0..5 {
        let r = get(
            &format!("{base}/introspect/x"),
            &[("authorization", &bearer("good"))],
        )
        .await;
        assert_eq!(r.status, 200);
        let r = get(
            &format!("{base}/introspect/x"),
            &[("authorization", &bearer("revoked"))],
        )
        .await;
        assert_eq!(r.status, 401);
    }
    assert_eq!(idp.hits(), calls, "cached answers were asked again");
    // The server down: a token never seen is 503 (fail closed), a cached one still works.
    down.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = get(
        &format!("{base}/introspect/x"),
        &[("authorization", &bearer("new-token"))],
    )
    .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "auth_unavailable");
    let r = get(
        &format!("{base}/introspect/x"),
        &[("authorization", &bearer("good"))],
    )
    .await;
    assert_eq!(r.status, 200);

    // any: either credential; none gives both challenges.
    let r = get(&format!("{base}/either/x"), &[("x-api-key", ACME_KEY)]).await;
    assert_eq!(r.echo().header("x-consumer-username"), Some("acme"));
    let r = get(
        &format!("{base}/either/x"),
        &[("authorization", &basic("bob", "bob-password"))],
    )
    .await;
    assert_eq!(r.echo().header("x-consumer-username"), Some("bob"));
    let r = get(&format!("{base}/either/x"), &[]).await;
    assert_refused(
        &r,
        401,
        Some("ApiKey, Basic realm=\"turnpike\", charset=\"UTF-8\""),
    );
    // anonymous: no credential is the guest consumer, flagged for the upstream.
    let r = get(
        &format!("{base}/open/x"),
        &[("x-anonymous-consumer", "false")],
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = r.echo();
    assert_eq!(seen.header("x-consumer-username"), Some("guest"));
    assert_eq!(seen.header("x-anonymous-consumer"), Some("true"));
    let r = get(&format!("{base}/open/x"), &[("x-api-key", ACME_KEY)]).await;
    assert_eq!(r.echo().header("x-consumer-username"), Some("acme"));
    assert_eq!(r.echo().header("x-anonymous-consumer"), None);
    // all: both credentials are needed.
    let r = get(&format!("{base}/both/x"), &[("x-api-key", ACME_KEY)]).await;
    assert_refused(&r, 401, Some("Basic realm=\"turnpike\", charset=\"UTF-8\""));
    let r = get(
        &format!("{base}/both/x"),
        &[
            ("x-api-key", ACME_KEY),
            ("authorization", &basic("acme", "acme-password")),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
}

/// The configuration of the authentication issue, as users write it (its `...`
/// placeholders filled with real values).
#[tokio::test]
async fn the_issue_example_validates_and_behaves_as_written() {
    let up = echo("app").await;
    // Only this test reads ACME_KEY.
    std::env::set_var("ACME_KEY", "acme-key-from-the-environment-01");
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  app: {{endpoints: ["{up}"]}}
consumers:                       # named identities, as Kong has them
  - name: acme
    groups: [partners]
    plan: pro                    # read by rate_limit plans (next issue)
    metadata: {{tier: gold}}       # free-form, can be forwarded
    api_keys: ["${{ACME_KEY}}", "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"]   # plain via env/file, or a SHA-256 digest
    basic_auth: {{username: acme, password_hash: "{hash}"}}          # argon2id or bcrypt
  - name: alice
    groups: [staff]
    jwt_subjects: [alice]        # a token whose consumer claim (default `sub`) is alice is this consumer

routes:
  - name: partners
    match: {{prefix: /partners}}
    upstream: app
    policies:
      - type: api_key            # header x-api-key by default; `query: apikey` to also read a query parameter
      - type: acl
        allow: {{groups: [partners]}}
  - name: users
    match: {{prefix: /users}}
    upstream: app
    policies:
      - type: jwt
        providers:
          - issuer: https://id.example.com
            audiences: [api]
            jwks: {{uri: "https://id.example.com/.well-known/jwks.json"}}   # or {{file: keys/jwks.json}} or {{keys: [ ...inline JWKs... ]}}
        forward_claims: {{x-user-id: sub, x-user-scope: scope}}
      - type: acl
        allow: {{scopes: ["orders:read"]}}
"#,
        up = up.addr,
        hash = argon2id("acme-password"),
    );
    let loaded = turnpike::config::load_str(&yaml, std::path::Path::new(".")).unwrap();
    turnpike::runtime::compile::check(loaded).unwrap();
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    for key in ["acme-key-from-the-environment-01", "hello"] {
        let r = get(&format!("{base}/partners/x"), &[("x-api-key", key)]).await;
        assert_eq!(r.status, 200, "{key}: {:?}", r.body);
        assert_eq!(r.echo().header("x-consumer-username"), Some("acme"));
    }
    // No token on the JWT route: 401 before any key is needed.
    let r = get(&format!("{base}/users/1"), &[]).await;
    assert_refused(&r, 401, Some("Bearer"));
}
