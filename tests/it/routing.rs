//! Routing end to end: hosts, paths, methods, headers, rewrites, local answers, and the
//! JSON bodies of 404 and 405.

use crate::support::*;

async fn setup() -> (turnpike::Gateway, Upstream, Upstream) {
    let a = echo("a").await;
    let b = echo("b").await;
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  a: {{endpoints: ["{a}"]}}
  b: {{endpoints: ["{b}"]}}
routes:
  - name: users
    match: {{path: "/api/users/{{id}}", methods: [GET]}}
    rewrite: {{path: "/internal/users/{{id}}/profile"}}
    upstream: a
  - name: users-v2
    match:
      path: "/api/users/{{id}}"
      methods: [GET]
      headers: [{{name: x-api-version, exact: "2"}}]
    upstream: b
  - name: api
    match: {{prefix: /api}}
    rewrite: {{strip_prefix: /api, add_prefix: /v1}}
    upstream: a
  - name: shop
    match: {{hosts: ["*.shop.test"], prefix: /}}
    host_header: upstream
    upstream: b
  - name: fixed-host
    match: {{hosts: [fixed.test], prefix: /}}
    host_header: internal.example
    upstream: a
  - name: teapot
    match: {{path: "/teapot/{{kind}}", methods: [POST, PUT]}}
    respond:
      status: 418
      headers: {{x-kind: "${{kind}}"}}
      json: {{kind: "${{kind}}", id: "${{request_id}}"}}
"#,
        a = a.addr,
        b = b.addr
    );
    (gateway(&yaml).await, a, b)
}

#[tokio::test]
async fn routes_rewrites_and_versions() {
    let (gw, a, b) = setup().await;
    let base = url(&gw, "public");

    let r = get(&format!("{base}/api/users/7?full=1"), &[]).await;
    assert_eq!(r.status, 200);
    let e = r.echo();
    assert_eq!(
        (e.server.as_str(), e.uri.as_str()),
        ("a", "/internal/users/7/profile?full=1")
    );

    let e = get(&format!("{base}/api/users/7"), &[("x-api-version", "2")])
        .await
        .echo();
    assert_eq!(
        (e.server.as_str(), e.uri.as_str()),
        ("b", "/api/users/7"),
        "header version wins"
    );

    let e = get(&format!("{base}/api/orders/1"), &[]).await.echo();
    assert_eq!(e.uri, "/v1/orders/1", "strip /api, add /v1");
    let e = get(&format!("{base}/api"), &[]).await.echo();
    assert_eq!(e.uri, "/v1");

    let e = get(&format!("{base}/x"), &[("host", "eu.shop.test")])
        .await
        .echo();
    assert_eq!(e.server, "b");
    assert_eq!(
        e.header("host"),
        Some(b.addr.to_string().as_str()),
        "host_header: upstream"
    );

    let e = get(&format!("{base}/x"), &[("host", "fixed.test:8080")])
        .await
        .echo();
    assert_eq!(e.header("host"), Some("internal.example"));
    assert_eq!(e.header("x-forwarded-host"), Some("fixed.test:8080"));

    let e = get(&format!("{base}/api/users/7"), &[("host", "Any.Example")])
        .await
        .echo();
    assert_eq!(
        e.header("host"),
        Some("Any.Example"),
        "host preserved by default"
    );
    assert!(a.hits() >= 4);
}

#[tokio::test]
async fn not_found_and_method_not_allowed_are_json() {
    let (gw, _a, _b) = setup().await;
    let base = url(&gw, "public");
    let r = get(&format!("{base}/nothing/here"), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.error_code(), "route_not_found");
    let rid = r.header("x-request-id").unwrap().to_string();
    assert_eq!(r.json()["error"]["request_id"], rid.as_str());

    let r = get(&format!("{base}/teapot/earl-grey"), &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST, PUT"));
    assert_eq!(r.error_code(), "method_not_allowed");
}

#[tokio::test]
async fn respond_targets_render_templates() {
    let (gw, _a, _b) = setup().await;
    let base = url(&gw, "public");
    let r = send(request(
        "POST",
        &format!("{base}/teapot/earl-grey"),
        &[("x-request-id", "tea-1")],
        "",
    ))
    .await;
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-kind"), Some("earl-grey"));
    assert_eq!(r.json()["kind"], "earl-grey");
    assert_eq!(r.json()["id"], "tea-1");
}

#[tokio::test]
async fn policies_run_defaults_listener_hosts_route_and_skip_policies_removes_inherited_ones() {
    let up = echo("u").await;
    let stamp = |name: &str| {
        format!("{{type: headers, name: {name}, request: {{append: {{x-trace: {name}}}}}, response: {{append: {{x-trace: {name}}}}}}}")
    };
    let yaml = format!(
        r#"
listeners:
  - name: public
    address: "127.0.0.1:0"
    policies: [{listener}]
defaults:
  policies: [{defaults}]
hosts:
  - hosts: [api.test]
    policies: [{host}]
access_log: {{enabled: false}}
upstreams:
  svc: {{endpoints: ["{up}"]}}
routes:
  - {{name: all, match: {{hosts: [api.test], prefix: /all}}, upstream: svc, policies: [{route}]}}
  - {{name: by-name, match: {{hosts: [api.test], prefix: /by-name}}, upstream: svc, skip_policies: [listener, host], policies: [{route}]}}
  - {{name: by-type, match: {{hosts: [api.test], prefix: /by-type}}, upstream: svc, skip_policies: [headers], policies: [{route}]}}
"#,
        listener = stamp("listener"),
        defaults = stamp("defaults"),
        host = stamp("host"),
        route = stamp("route"),
        up = up.addr,
    );
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    let trace = |path: &'static str| {
        let base = base.clone();
        async move {
            let r = get(&format!("{base}{path}"), &[("host", "api.test")]).await;
            assert_eq!(r.status, 200, "{path}");
            let upstream_saw = r.echo().headers.get("x-trace").cloned().unwrap_or_default();
            let back: Vec<String> = r
                .headers
                .get_all("x-trace")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            (upstream_saw, back)
        }
    };
    // Requests go down the list in order; responses come back up it in reverse.
    let (down, up_the_list) = trace("/all").await;
    assert_eq!(down, ["defaults", "listener", "host", "route"]);
    assert_eq!(up_the_list, ["route", "host", "listener", "defaults"]);
    // By name: the two named inherited policies are skipped, the rest stay.
    let (down, _) = trace("/by-name").await;
    assert_eq!(down, ["defaults", "route"]);
    // By type: every inherited `headers` policy goes; the route's own never does.
    let (down, up_the_list) = trace("/by-type").await;
    assert_eq!(down, ["route"]);
    assert_eq!(up_the_list, ["route"]);
}
