//! Metrics and the access log, end to end.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn metrics_count_requests_by_route_method_class_and_upstream() {
    let up = echo("u").await;
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
access_log: {{enabled: false}}
upstreams:
  svc: {{endpoints: ["{}"]}}
routes:
  - {{name: api, match: {{prefix: /api}}, upstream: svc}}
  - {{name: local, match: {{path: /local}}, respond: {{status: 204}}}}
"#,
        up.addr
    );
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    for _ in 0..3 {
        assert_eq!(get(&format!("{base}/api/x"), &[]).await.status, 200);
    }
    assert_eq!(
        send(request("POST", &format!("{base}/api/x"), &[], "b"))
            .await
            .status,
        200
    );
    assert_eq!(get(&format!("{base}/local"), &[]).await.status, 204);
    assert_eq!(get(&format!("{base}/missing"), &[]).await.status, 404);

    let admin = format!("http://{}", gw.admin_addr().unwrap());
    // Accounting happens when each response body ends: poll until all six are in.
    let text = eventually(Duration::from_secs(5), "six requests counted", || {
        let admin = admin.clone();
        async move {
            let t = String::from_utf8_lossy(&get(&format!("{admin}/metrics"), &[]).await.body).into_owned();
            t.contains("turnpike_requests_total{route=\"\",method=\"GET\",status_class=\"4xx\",upstream=\"\"} 1").then_some(t)
        }
    })
    .await;
    for line in [
        "turnpike_requests_total{route=\"api\",method=\"GET\",status_class=\"2xx\",upstream=\"svc\"} 3",
        "turnpike_requests_total{route=\"api\",method=\"POST\",status_class=\"2xx\",upstream=\"svc\"} 1",
        "turnpike_requests_total{route=\"local\",method=\"GET\",status_class=\"2xx\",upstream=\"\"} 1",
        "turnpike_request_duration_seconds_count{route=\"api\",method=\"GET\",status_class=\"2xx\",upstream=\"svc\"} 3",
        "turnpike_request_duration_seconds_bucket{route=\"api\",method=\"GET\",status_class=\"2xx\",upstream=\"svc\",le=\"+Inf\"} 3",
        "turnpike_requests_in_flight 0",
        "turnpike_config_reloads_total{result=\"success\"} 0",
        "turnpike_upstream_connect_errors_total{upstream=\"svc\"} 0",
        "# TYPE turnpike_request_duration_seconds histogram",
        "# TYPE process_resident_memory_bytes gauge",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(text.contains("turnpike_connections_active "));
    assert!(text.contains("process_cpu_seconds_total "));

    let ready = get(&format!("{admin}/readyz"), &[]).await;
    assert_eq!(ready.status, 200);
    let routes = get(&format!("{admin}/routes"), &[]).await.json();
    assert_eq!(routes["routes"][0]["name"], "api");
    assert_eq!(routes["routes"][0]["target"], "upstream `svc`");
}

#[tokio::test]
async fn access_log_lines_are_json_and_keep_secrets_out() {
    let up = echo("u").await;
    let dir = std::env::temp_dir().join(format!("tp-it-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: true, output: "{}"}}
upstreams:
  svc: {{endpoints: ["{}"]}}
routes:
  - {{name: api, match: {{prefix: /api}}, upstream: svc}}
"#,
        log.display(),
        up.addr
    );
    let gw = gateway(&yaml).await;
    let r = get(
        &format!("{}/api/items?api_key=topsecret", url(&gw, "public")),
        &[
            ("authorization", "Bearer very-secret"),
            ("cookie", "sid=cookie-secret"),
            ("user-agent", "it-test/1"),
            ("x-request-id", "log-test-1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let line = eventually(Duration::from_secs(5), "the access log line", || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log).ok().and_then(|t| {
                t.lines()
                    .find(|l| l.contains("log-test-1"))
                    .map(String::from)
            })
        }
    })
    .await;
    for secret in ["very-secret", "cookie-secret", "topsecret"] {
        assert!(!line.contains(secret), "secret in access log: {line}");
    }
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["request_id"], "log-test-1");
    assert_eq!(v["route"], "api");
    assert_eq!(v["upstream"], "svc");
    assert_eq!(v["endpoint"], up.addr.to_string());
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/api/items");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes_out"], r.body.len());
    assert_eq!(v["user_agent"], "it-test/1");
    assert!(v["duration_ms"].as_f64().unwrap() >= v["upstream_ms"].as_f64().unwrap());
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn admin_unknown_paths_and_methods_are_json_errors() {
    let gw = gateway(
        "listeners: [{name: public, address: \"127.0.0.1:0\"}]\nadmin: {address: \"127.0.0.1:0\"}\naccess_log: {enabled: false}\nroutes:\n  - {name: r, match: {prefix: /}, respond: {status: 200}}\n",
    )
    .await;
    let admin = format!("http://{}", gw.admin_addr().unwrap());
    let r = get(&format!("{admin}/nothing"), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.error_code(), "not_found");
    for (method, path) in [
        ("DELETE", "/metrics"),
        ("POST", "/config"),
        ("GET", "/reload"),
    ] {
        let r = send(request(method, &format!("{admin}{path}"), &[], "")).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.error_code(), "method_not_allowed", "{method} {path}");
    }
}

#[tokio::test]
async fn get_config_redacts_file_secrets_and_secret_named_fields() {
    let dir = std::env::temp_dir().join(format!("tp-it-redact-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "file-secret-0123456789").unwrap();
    let yaml = r#"
listeners: [{name: public, address: "127.0.0.1:0"}]
admin: {address: "127.0.0.1:0"}
access_log: {enabled: false}
routes:
  - name: r
    match: {prefix: /}
    respond: {status: 200}
    policies:
      - type: headers
        request:
          set:
            authorization: "Bearer ${file:token}"
            x-api-key: literal-key-in-the-file
            x-plain: visible-value
"#;
    std::fs::write(dir.join("gateway.yaml"), yaml).unwrap();
    let loaded = turnpike::config::load_file(&dir.join("gateway.yaml")).unwrap();
    let gw = turnpike::Gateway::start(
        loaded,
        turnpike::Options {
            reload_on_sighup: false,
            watch_config: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let r = get(&format!("http://{}/config", gw.admin_addr().unwrap()), &[]).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body);
    assert!(!text.contains("file-secret-0123456789"), "{text}");
    assert!(!text.contains("literal-key-in-the-file"), "{text}");
    assert!(text.contains("visible-value"), "{text}");
    assert_eq!(text.matches("[redacted]").count(), 2, "{text}");
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}
