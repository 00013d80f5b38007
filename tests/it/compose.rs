//! `compose` routes against real upstream servers: parallel calls, dependencies,
//! partial answers, required failures, hostile answers (garbage, 10 MB, JSON bombs),
//! shaping, templating, headers, metrics and the access log; graph errors at load.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use crate::support::*;

/// What a test service received: path and query, start time, headers, body.
#[derive(Clone)]
struct Seen {
    target: String,
    at: Instant,
    headers: http::HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// One canned answer: status, body, headers, and a delay before answering.
#[derive(Clone)]
struct Canned {
    status: u16,
    body: Bytes,
    headers: Vec<(&'static str, &'static str)>,
    delay: Duration,
}

fn ok(body: &str) -> Canned {
    Canned {
        status: 200,
        body: Bytes::from(body.to_string()),
        headers: vec![("content-type", "application/json")],
        delay: Duration::ZERO,
    }
}

impl Canned {
    fn after(mut self, ms: u64) -> Self {
        self.delay = Duration::from_millis(ms);
        self
    }
    fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.push((k, v));
        self
    }
}

/// A service answering by path (without query) from `answers`, 404 otherwise; it logs
/// every request when it arrives and sets `finished` when a delayed answer is sent.
async fn service(answers: Vec<(&'static str, Canned)>) -> (Upstream, Log, Arc<AtomicBool>) {
    let log: Log = Arc::default();
    let finished = Arc::new(AtomicBool::new(false));
    let (l, f) = (log.clone(), finished.clone());
    let up = upstream_fn(move |req| {
        let (log, finished, answers) = (l.clone(), f.clone(), answers.clone());
        async move {
            use http_body_util::BodyExt;
            let at = Instant::now();
            let target = req.uri().path_and_query().unwrap().to_string();
            let path = req.uri().path().to_string();
            let headers = req.headers().clone();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            log.lock().unwrap().push(Seen {
                target,
                at,
                headers,
                body,
            });
            let Some((_, c)) = answers.iter().find(|(p, _)| *p == path) else {
                return Response::builder()
                    .status(404)
                    .body(Full::new(Bytes::from_static(b"{\"error\":\"nope\"}")))
                    .unwrap();
            };
            if !c.delay.is_zero() {
                tokio::time::sleep(c.delay).await;
                finished.store(true, SeqCst);
            }
            let mut b = Response::builder().status(c.status);
            for (k, v) in &c.headers {
                b = b.header(*k, *v);
            }
            b.body(Full::new(c.body.clone())).unwrap()
        }
    })
    .await;
    (up, log, finished)
}

fn seen(log: &Log) -> Vec<Seen> {
    log.lock().unwrap().clone()
}

fn config(ups: &[(&str, &Upstream)], route: &str) -> String {
    let mut upstreams = String::new();
    for (name, up) in ups {
        upstreams.push_str(&format!("  {name}: {{endpoints: [\"{}\"]}}\n", up.addr));
    }
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
{upstreams}
routes:
{route}
"#
    )
}

/// The issue's profile route, with the three services given.
const PROFILE: &str = r#"
  - name: profile
    match: {path: "/api/user-profile/{id}", methods: [GET]}
    compose:
      timeout: 800ms
      errors: true
      calls:
        - name: user
          upstream: users
          path: "/users/{id}"
          required: true
        - name: orders
          upstream: orders
          path: "/users/{id}/orders"
          query: {limit: "5"}
          timeout: 300ms
          select: [id, total, status]
        - name: preferences
          upstream: prefs
          path: "/users/{id}/preferences"
          default: {}
        - name: last_order
          upstream: orders
          path: "/orders/${orders[0].id}"
          optional: true
"#;

const ORDERS: &str = r#"[{"id":"o-9","total":12.5,"status":"paid","card":"4111"},{"id":"o-8","total":3,"status":"new","card":"5500"}]"#;

#[tokio::test]
async fn the_issue_example_validates_as_written() {
    let yaml = r#"
listeners: [{name: public, address: "127.0.0.1:0"}]
upstreams:
  users: {endpoints: ["127.0.0.1:9"]}
  orders: {endpoints: ["127.0.0.1:9"]}
  prefs: {endpoints: ["127.0.0.1:9"]}
routes:
  - name: profile
    match: {path: "/api/user-profile/{id}", methods: [GET]}
    policies:
      - type: jwt                               # policies run before the calls, as for any route
        providers: [{issuer: https://id.example.test, secret: demo-jwt-secret-of-at-least-32-bytes}]
    compose:
      timeout: 800ms                            # the whole answer
      calls:
        - name: user
          upstream: users
          path: "/users/{id}"
          required: true                        # its failure fails the request (502/504 with the JSON error)
        - name: orders
          upstream: orders
          path: "/users/{id}/orders"
          query: {limit: "5"}
          timeout: 300ms
          select: [id, total, status]           # keep these fields (of each element, for an array)
        - name: preferences
          upstream: prefs
          path: "/users/{id}/preferences"
          default: {}                           # used when the call fails or times out
        - name: last_order
          upstream: orders
          path: "/orders/${orders[0].id}"       # depends on another call: runs after it
          optional: true
"#;
    assert_eq!(config_error(yaml), None);
}

#[tokio::test]
async fn independent_calls_start_together_and_a_dependent_one_waits() {
    let (users, ulog, _) = service(vec![(
        "/users/42",
        ok(r#"{"id":"42","name":"Ada"}"#).after(150),
    )])
    .await;
    let (orders, olog, _) = service(vec![
        ("/users/42/orders", ok(ORDERS).after(150)),
        ("/orders/o-9", ok(r#"{"id":"o-9","items":3}"#)),
    ])
    .await;
    let (prefs, plog, _) = service(vec![(
        "/users/42/preferences",
        ok(r#"{"lang":"fr"}"#).after(150),
    )])
    .await;
    let gw = gateway(&config(
        &[("users", &users), ("orders", &orders), ("prefs", &prefs)],
        PROFILE,
    ))
    .await;
    let r = get(
        &format!("{}/api/user-profile/42", url(&gw, "public")),
        &[
            ("x-request-id", "bff-1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("turnpike-partial"), None);
    // Members in call order, selection applied to each element.
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        r#"{"user":{"id":"42","name":"Ada"},"orders":[{"id":"o-9","total":12.5,"status":"paid"},{"id":"o-8","total":3,"status":"new"}],"preferences":{"lang":"fr"},"last_order":{"id":"o-9","items":3}}"#
    );
    let (u, o, p) = (seen(&ulog), seen(&olog), seen(&plog));
    assert_eq!(u.len(), 1);
    assert_eq!(p.len(), 1);
    assert_eq!(o.len(), 2);
    assert_eq!(o[0].target, "/users/42/orders?limit=5");
    assert_eq!(o[1].target, "/orders/o-9");
    // The three independent calls started before any of them could have answered
    // (each takes 150 ms): in parallel, not one after another.
    let firsts = [u[0].at, o[0].at, p[0].at];
    let spread = firsts
        .iter()
        .max()
        .unwrap()
        .duration_since(*firsts.iter().min().unwrap());
    assert!(spread < Duration::from_millis(150), "spread {spread:?}");
    // The dependent call started only once its source had answered.
    assert!(o[1].at.duration_since(o[0].at) >= Duration::from_millis(150));
    // Correlation: the request id and traceparent go with every call; the client's
    // credentials do not.
    for s in u.iter().chain(&o).chain(&p) {
        assert_eq!(s.headers["x-request-id"], "bff-1");
        assert!(s.headers["traceparent"]
            .to_str()
            .unwrap()
            .starts_with("00-0af7"));
        assert!(s.headers.get("x-turnpike-timeout-ms").is_some());
    }
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_compose_calls_total{route=\"profile\",call=\"last_order\",upstream=\"orders\",outcome=\"ok\"}"
        ),
        Some(1)
    );
}

#[tokio::test]
async fn a_slow_optional_call_makes_a_partial_answer_within_the_route_timeout() {
    let (users, _, _) = service(vec![("/users/7", ok(r#"{"id":"7"}"#))]).await;
    let (orders, olog, orders_done) =
        service(vec![("/users/7/orders", ok(ORDERS).after(3_000))]).await;
    let (prefs, _, _) = service(vec![("/users/7/preferences", ok("{}").status(500))]).await;
    let gw = gateway(&config(
        &[("users", &users), ("orders", &orders), ("prefs", &prefs)],
        PROFILE,
    ))
    .await;
    let r = get(&format!("{}/api/user-profile/7", url(&gw, "public")), &[]).await;
    // Answered while the slow service is still sleeping: the call's 300 ms budget cut it.
    assert!(
        !orders_done.load(SeqCst),
        "the answer waited for the slow call"
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("turnpike-partial"),
        Some("orders,preferences,last_order")
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v = r.json();
    assert_eq!(v["user"]["id"], "7");
    assert!(v.get("orders").is_none(), "{v}");
    assert_eq!(v["preferences"], serde_json::json!({}), "the default");
    assert!(v.get("last_order").is_none());
    assert_eq!(v["_errors"]["orders"]["code"], "call_timeout");
    assert_eq!(v["_errors"]["preferences"]["code"], "upstream_status");
    assert_eq!(v["_errors"]["preferences"]["status"], 500);
    assert_eq!(v["_errors"]["last_order"]["code"], "dependency_failed");
    // The dependent call was never sent.
    assert_eq!(seen(&olog).len(), 1);
    let series = |call: &str, outcome: &str| {
        format!("turnpike_compose_calls_total{{route=\"profile\",call=\"{call}\",upstream=\"{}\",outcome=\"{outcome}\"}}",
            if call == "preferences" { "prefs" } else if call == "user" { "users" } else { "orders" })
    };
    assert_eq!(metric_value(&gw, &series("orders", "timeout")), Some(1));
    assert_eq!(metric_value(&gw, &series("preferences", "failed")), Some(1));
    assert_eq!(metric_value(&gw, &series("last_order", "skipped")), Some(1));
    assert_eq!(metric_value(&gw, &series("user", "ok")), Some(1));
}

#[tokio::test]
async fn a_required_call_failure_fails_the_request_and_names_the_call() {
    let (users, _, _) = service(vec![
        ("/users/500", ok("{}").status(503)),
        ("/users/slow", ok("{}").after(3_000)),
        ("/users/bad", ok("<html>")),
    ])
    .await;
    let (orders, _, _) = service(vec![]).await;
    let (prefs, _, _) = service(vec![]).await;
    let gw = gateway(&config(
        &[("users", &users), ("orders", &orders), ("prefs", &prefs)],
        PROFILE,
    ))
    .await;
    let base = url(&gw, "public");
    for (id, status, code, cause) in [
        ("500", 502, "compose_call_failed", "upstream_status"),
        ("missing", 404, "compose_call_failed", "upstream_status"),
        ("slow", 504, "compose_call_timeout", "call_timeout"),
        ("bad", 502, "compose_call_failed", "not_json"),
    ] {
        let r = get(&format!("{base}/api/user-profile/{id}"), &[]).await;
        assert_eq!(r.status, status, "{id}: {:?}", r.body);
        let e = &r.json()["error"];
        assert_eq!(e["code"], code, "{id}");
        assert_eq!(e["call"], "user", "{id}");
        assert_eq!(e["cause"], cause, "{id}");
        assert!(e["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    }
    // An upstream that refuses connections.
    let dead = closed_port().await;
    let yaml = config(&[("orders", &orders), ("prefs", &prefs)], PROFILE).replace(
        "upstreams:\n",
        &format!("upstreams:\n  users: {{endpoints: [\"{dead}\"]}}\n"),
    );
    let gw = gateway(&yaml).await;
    let r = get(&format!("{}/api/user-profile/1", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["cause"], "upstream_connect_failed");
}

#[tokio::test]
async fn garbage_huge_and_deeply_nested_answers_are_failures_of_their_call() {
    let huge = Bytes::from(vec![b' '; 10 << 20]);
    let bomb = Bytes::from(format!("{}1{}", "[".repeat(200), "]".repeat(200)));
    let (svc, _, _) = service(vec![
        ("/ok", ok(r#"{"fine":true}"#)),
        ("/garbage", ok(r#"{"unterminated": "#)),
        (
            "/huge",
            Canned {
                body: huge,
                ..ok("")
            },
        ),
        (
            "/bomb",
            Canned {
                body: bomb,
                ..ok("")
            },
        ),
        ("/text", ok("hello")),
    ])
    .await;
    let route = r#"
  - name: r
    match: {path: /x}
    compose:
      errors: true
      calls:
        - {name: fine, upstream: s, path: /ok}
        - {name: garbage, upstream: s, path: /garbage}
        - {name: huge, upstream: s, path: /huge}
        - {name: bomb, upstream: s, path: /bomb}
        - {name: text, upstream: s, path: /text}
        - {name: small_cap, upstream: s, path: /ok, max_body: 4}
"#;
    let gw = gateway(&config(&[("s", &svc)], route)).await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["fine"]["fine"], true);
    assert_eq!(v["_errors"]["garbage"]["code"], "not_json");
    assert_eq!(v["_errors"]["huge"]["code"], "too_large");
    assert_eq!(v["_errors"]["bomb"]["code"], "too_deep");
    assert_eq!(v["_errors"]["text"]["code"], "not_json");
    assert_eq!(v["_errors"]["small_cap"]["code"], "too_large");
    assert_eq!(
        r.header("turnpike-partial"),
        Some("garbage,huge,bomb,text,small_cap")
    );
    assert!(
        r.body.len() < 4096,
        "a failed answer leaks into the document"
    );
}

#[tokio::test]
async fn a_dependent_call_whose_source_field_is_missing_is_not_sent() {
    let (users, _, _) = service(vec![("/users/3", ok(r#"{"id":"3"}"#))]).await;
    let (orders, olog, _) = service(vec![("/users/3/orders", ok("[]"))]).await;
    let (prefs, _, _) = service(vec![("/users/3/preferences", ok(r#"{"a":1}"#))]).await;
    let gw = gateway(&config(
        &[("users", &users), ("orders", &orders), ("prefs", &prefs)],
        PROFILE,
    ))
    .await;
    let r = get(&format!("{}/api/user-profile/3", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("turnpike-partial"), Some("last_order"));
    let v = r.json();
    assert_eq!(v["orders"], serde_json::json!([]));
    assert_eq!(v["_errors"]["last_order"]["code"], "reference_missing");
    let targets: Vec<String> = seen(&olog).into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/users/3/orders?limit=5"]);
}

#[tokio::test]
async fn graph_mistakes_are_config_errors_with_their_paths() {
    let base = |calls: &str| {
        format!(
            r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
upstreams:
  s: {{endpoints: ["127.0.0.1:9"]}}
routes:
  - name: r
    match: {{path: "/p/{{id}}"}}
    compose:
      calls:
{calls}
"#
        )
    };
    let cases = [
        (
            "        - {name: a, upstream: s, path: \"/a/${b.x}\"}\n        - {name: b, upstream: s, path: \"/b/${a.y}\"}\n",
            "routes[0].compose.calls[0]",
            "cycle",
        ),
        (
            "        - {name: a, upstream: s, path: \"/a/${nobody.x}\"}\n",
            "routes[0].compose.calls[0].path",
            "unknown variable",
        ),
        (
            "        - {name: a, upstream: s, path: \"/a/{nope}\"}\n",
            "routes[0].compose.calls[0].path",
            "not a path parameter",
        ),
        (
            "        - {name: a, upstream: s, path: /a, select: [id]}\n        - {name: b, upstream: s, path: \"/b/${a[0].customer}\"}\n",
            "routes[0].compose.calls[1]",
            "removes with `select`",
        ),
        (
            "        - {name: a, upstream: s, path: \"/a/${a.id}\"}\n",
            "routes[0].compose.calls[0]",
            "its own result",
        ),
        (
            "        - {name: a, upstream: nowhere, path: /a}\n",
            "routes[0].compose.calls[0].upstream",
            "no upstream named",
        ),
        (
            "        - {name: a, upstream: s, path: /a}\n        - {name: a, upstream: s, path: /b}\n",
            "routes[0].compose.calls[1].name",
            "another call",
        ),
        (
            "        - {name: a, upstream: s, path: /a, required: true, default: {}}\n",
            "routes[0].compose.calls[0].default",
            "never be used",
        ),
        (
            "        - {name: id, upstream: s, path: /a}\n",
            "routes[0].compose.calls[0].name",
            "rename the call",
        ),
        (
            "        - {name: a, upstream: s, path: /a, timeout: 10s}\n",
            "routes[0].compose.calls[0].timeout",
            "longer than",
        ),
    ];
    for (calls, at, why) in cases {
        let e = config_error(&base(calls)).unwrap_or_else(|| panic!("accepted: {calls}"));
        assert!(
            e.contains(at) && e.contains(why),
            "want {at}: {why}, got:\n{e}"
        );
    }
    let many: String = (0..33)
        .map(|i| format!("        - {{name: c{i}, upstream: s, path: /a}}\n"))
        .collect();
    let e = config_error(&base(&many)).unwrap();
    assert!(e.contains("at most 32 calls"), "{e}");
}

#[tokio::test]
async fn shaping_templates_and_headers() {
    let (svc, log, _) = service(vec![
        (
            "/users/5",
            ok(r#"{"data":{"id":"5","name":"Lin","password":"x"},"meta":{}}"#)
                .header("cache-control", "public, max-age=600")
                .header("x-user-version", "v3")
                .header("etag", "\"abc\""),
        ),
        (
            "/stats",
            ok(r#"{"visits":10,"rank":2}"#).header("cache-control", "max-age=60"),
        ),
        ("/search", ok(r#"{"hits":[]}"#)),
        ("/audit", ok(r#"{"logged":true}"#).status(201)),
        ("/weird/..%2Fadmin", ok(r#"{"safe":true}"#)),
    ])
    .await;
    let route = r#"
  - name: r
    match: {path: "/me/{id}"}
    compose:
      status: 203
      headers_from: user
      forward_headers: [accept-language]
      calls:
        - name: user
          upstream: s
          path: "/users/{id}"
          take: /data
          omit: [password]
          as: profile
        - name: stats
          upstream: s
          path: /stats
          merge: true
        - name: search
          upstream: s
          path: /search
          query: {q: "${query.q}", who: "${user.name}"}
          headers: {x-caller: "${header.x-caller}", x-route: "${route}"}
          forward_headers: [authorization]
        - name: audit
          upstream: s
          method: POST
          path: /audit
          body: {user: "${user}", note: "seen ${user.id} by ${client_ip}", fixed: [1, true]}
        - name: weird
          upstream: s
          path: "/weird/${query.odd}"
"#;
    let gw = gateway(&config(&[("s", &svc)], route)).await;
    let r = get(
        &format!("{}/me/5?q=a%20b&odd=../admin", url(&gw, "public")),
        &[
            ("authorization", "Bearer t0k"),
            ("accept-language", "fr"),
            ("x-caller", "it"),
        ],
    )
    .await;
    assert_eq!(r.status, 203, "{:?}", r.body);
    assert_eq!(
        r.json(),
        serde_json::json!({
            "profile": {"id": "5", "name": "Lin"},
            "visits": 10, "rank": 2,
            "search": {"hits": []},
            "audit": {"logged": true},
            "weird": {"safe": true},
        })
    );
    assert_eq!(r.header("x-user-version"), Some("v3"), "headers_from");
    assert_eq!(r.header("etag"), None, "another body's validator");
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    let log = seen(&log);
    let by = |p: &str| {
        log.iter()
            .find(|s| s.target.starts_with(p))
            .unwrap_or_else(|| panic!("no call to {p}"))
            .clone()
    };
    let search = by("/search");
    assert_eq!(search.target, "/search?q=a%20b&who=Lin");
    assert_eq!(search.headers["x-caller"], "it");
    assert_eq!(search.headers["x-route"], "r");
    assert_eq!(search.headers["authorization"], "Bearer t0k");
    assert_eq!(search.headers["accept-language"], "fr");
    // Credentials go only where configured.
    let user = by("/users/5");
    assert!(user.headers.get("authorization").is_none());
    assert_eq!(user.headers["accept-language"], "fr");
    let audit = by("/audit");
    assert_eq!(audit.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&audit.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"user": {"id": "5", "name": "Lin"}, "note": "seen 5 by 127.0.0.1", "fixed": [1, true]})
    );
    // A value can never add a segment or a query to a call's path.
    assert_eq!(by("/weird").target, "/weird/..%2Fadmin");
}

#[tokio::test]
async fn the_access_log_lists_every_call() {
    let (svc, _, _) = service(vec![("/a", ok(r#"{"x":1}"#))]).await;
    let dir = std::env::temp_dir().join(format!("tp-it-compose-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: true, output: "{}"}}
upstreams:
  s: {{endpoints: ["{}"]}}
routes:
  - name: r
    match: {{path: /x}}
    compose:
      calls:
        - {{name: a, upstream: s, path: /a}}
        - {{name: b, upstream: s, path: /nothing-here}}
"#,
        log.display(),
        svc.addr
    );
    let gw = gateway(&yaml).await;
    let r = get(
        &format!("{}/x", url(&gw, "public")),
        &[("x-request-id", "compose-log-1")],
    )
    .await;
    assert_eq!(r.status, 200);
    let line = eventually(Duration::from_secs(5), "the access log line", || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log).ok().and_then(|t| {
                t.lines()
                    .find(|l| l.contains("compose-log-1"))
                    .map(String::from)
            })
        }
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["route"], "r");
    let calls = v["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["call"], "a");
    assert_eq!(calls[0]["upstream"], "s");
    assert_eq!(calls[0]["status"], 200);
    assert_eq!(calls[0]["outcome"], "ok");
    assert_eq!(calls[0]["endpoint"], svc.addr.to_string());
    assert!(calls[0]["duration_ms"].as_f64().is_some());
    assert_eq!(calls[1]["status"], 404);
    assert_eq!(calls[1]["outcome"], "failed");
    assert_eq!(calls[1]["error"], "upstream_status");
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn calls_use_the_upstreams_retries() {
    let flaky = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let f = flaky.clone();
    let up = upstream_fn(move |_req| {
        let f = f.clone();
        async move {
            let n = f.fetch_add(1, SeqCst);
            Response::builder()
                .status(if n == 0 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                })
                .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
                .unwrap()
        }
    })
    .await;
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  s:
    endpoints: ["{}"]
    retry: {{attempts: 2, on: ["503"], backoff: {{base: 1ms, max: 2ms}}, budget: {{min_per_second: 100}}}}
routes:
  - name: r
    match: {{path: /x}}
    compose:
      calls:
        - {{name: a, upstream: s, path: /a, required: true}}
"#,
        up.addr
    );
    let gw = gateway(&yaml).await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["a"]["n"], 1);
    assert_eq!(flaky.load(SeqCst), 2, "one retry after the 503");
}

#[tokio::test]
async fn a_reload_changes_the_calls_and_a_bad_graph_keeps_the_old_ones() {
    let (svc, log, _) = service(vec![("/v1", ok(r#"{"v":1}"#)), ("/v2", ok(r#"{"v":2}"#))]).await;
    let route = |path: &str| {
        format!(
            "  - name: r\n    match: {{path: /x}}\n    compose:\n      calls:\n        - {{name: a, upstream: s, path: \"{path}\"}}\n"
        )
    };
    let gw = gateway(&config(&[("s", &svc)], &route("/v1"))).await;
    let base = url(&gw, "public");
    assert_eq!(get(&format!("{base}/x"), &[]).await.json()["a"]["v"], 1);
    let load = |yaml: &str| turnpike::config::load_str(yaml, std::path::Path::new(".")).unwrap();
    gw.runtime()
        .apply(load(&config(&[("s", &svc)], &route("/v2"))))
        .await
        .unwrap();
    assert_eq!(get(&format!("{base}/x"), &[]).await.json()["a"]["v"], 2);
    // A reference to a call that does not exist is refused; the running calls stay.
    let err = gw
        .runtime()
        .apply(load(&config(&[("s", &svc)], &route("/v3/${ghost.id}"))))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    assert_eq!(get(&format!("{base}/x"), &[]).await.json()["a"]["v"], 2);
    let targets: Vec<String> = seen(&log).into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/v1", "/v2", "/v2"]);
}

#[tokio::test]
async fn a_required_call_still_waiting_when_time_runs_out_fails_the_request() {
    let (svc, log, _) = service(vec![
        ("/slow", ok(r#"{"id":"s"}"#).after(3_000)),
        ("/need/s", ok("{}")),
    ])
    .await;
    let route = r#"
  - name: r
    match: {path: /x}
    compose:
      timeout: 300ms
      calls:
        - {name: slow, upstream: s, path: /slow}
        - {name: need, upstream: s, path: "/need/${slow.id}", required: true}
"#;
    let gw = gateway(&config(&[("s", &svc)], route)).await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "compose_call_timeout");
    assert_eq!(e["call"], "need");
    // Its source timed out (`dependency_failed`), or the composition's time ran out while
    // it waited (`call_timeout`): both at the same instant, both a timeout.
    let cause = e["cause"].as_str().unwrap();
    assert!(
        ["call_timeout", "dependency_failed"].contains(&cause),
        "{cause}"
    );
    assert_eq!(seen(&log).len(), 1, "the required call was never sent");
}

#[tokio::test]
async fn merged_members_replace_earlier_ones_in_place_and_raw_answers_pass_through() {
    let (svc, _, _) = service(vec![
        ("/m1", ok(r#"{"a":1,"b":1}"#)),
        ("/m2", ok(r#"{"b":2,"c":2}"#)),
        ("/raw", ok("  [1, 2.50, \"\\u00e9\"]\n")),
    ])
    .await;
    let route = r#"
  - name: r
    match: {path: /x}
    compose:
      calls:
        - {name: m1, upstream: s, path: /m1, merge: true}
        - {name: raw, upstream: s, path: /raw}
        - {name: m2, upstream: s, path: /m2, merge: true}
"#;
    let gw = gateway(&config(&[("s", &svc)], route)).await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 200);
    // An answer nothing reads into is copied byte for byte (spacing, number forms and
    // escapes kept); merged members keep their first place and take the last value.
    assert_eq!(
        std::str::from_utf8(&r.body).unwrap(),
        "{\"a\":1,\"b\":2,\"raw\":  [1, 2.50, \"\\u00e9\"]\n,\"c\":2}"
    );
    assert_eq!(r.json()["raw"][2], "é");
}
