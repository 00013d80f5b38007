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
server: {{trusted_proxies: [{trusted}]}}
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
consumers:
  - name: acme
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
        &[("x-api-key", ACME_KEY), ("x-consumer-username", "admin")],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let seen = r.echo();
    assert_eq!(seen.header("x-consumer-username"), Some("acme"));
    assert_eq!(seen.header("x-consumer-groups"), Some("partners"));
    assert_eq!(seen.header("x-consumer-plan"), Some("pro"));
    assert_eq!(seen.header("x-credential-identifier"), Some("api_key"));
    assert_eq!(seen.header("x-api-key"), None, "the key was forwarded");
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
