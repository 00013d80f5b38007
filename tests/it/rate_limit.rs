//! `rate_limit` with the local store, end to end: the burst and then 429 with
//! `Retry-After` and the `RateLimit` headers (the upstream never sees a refused
//! request), keys kept apart (consumer, header, a spoofed `X-Forwarded-For` that does not
//! help), `mode: delay`, and counters kept across a reload that keeps the policy.

use crate::support::*;

fn config(up: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
consumers:
  - {{name: acme, api_keys: ["acme-key-0123456789abcdef"]}}
  - {{name: bob, api_keys: ["bob-key-0123456789abcdef"]}}
upstreams:
  app: {{endpoints: ["{up}"]}}
routes:
  - name: partners
    match: {{prefix: /partners}}
    upstream: app
    policies:
      - type: api_key
      - type: rate_limit
        limits: ["3/minute", "1000/hour"]
        key: consumer
        headers: {{legacy: true}}
  - name: search
    match: {{prefix: /search}}
    upstream: app
    policies:
      - type: rate_limit
        limits: ["2/minute"]
        key: client_ip
  - name: slow
    match: {{prefix: /slow}}
    upstream: app
    policies:
      - type: rate_limit
        limits: ["10/second"]
        burst: 1
        key: route
        mode: delay
        max_delay: 500ms
"#
    )
}

#[tokio::test]
async fn over_the_limit_is_429_with_headers_and_never_reaches_the_upstream() {
    let up = echo("app").await;
    let gw = gateway(&config(up.addr)).await;
    let base = url(&gw, "public");
    let acme = [("x-api-key", "acme-key-0123456789abcdef")];
    for i in 0..3 {
        let r = get(&format!("{base}/partners/{i}"), &acme).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(
            r.header("ratelimit-policy"),
            Some("\"3/minute\";q=3;w=60, \"1000/hour\";q=1000;w=3600")
        );
        assert_eq!(
            r.header("ratelimit")
                .map(|v| v.split(';').take(2).collect::<Vec<_>>().join(";")),
            Some(format!("\"3/minute\";r={}", 2 - i))
        );
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some((2 - i).to_string().as_str())
        );
    }
    let hits = up.hits();
    let r = get(&format!("{base}/partners/x"), &acme).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    assert_eq!(r.error_code(), "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert!(r
        .header("ratelimit")
        .unwrap()
        .starts_with("\"3/minute\";r=0;"));
    assert_eq!(up.hits(), hits, "a refused request reached the upstream");
    // Another consumer has its own counter.
    let bob = [("x-api-key", "bob-key-0123456789abcdef")];
    assert_eq!(get(&format!("{base}/partners/b"), &bob).await.status, 200);
    // An unauthenticated request is refused by api_key first (401, not 429).
    assert_eq!(get(&format!("{base}/partners/b"), &[]).await.status, 401);
}

#[tokio::test]
async fn a_spoofed_forwarded_for_does_not_bypass_a_client_ip_limit() {
    let up = echo("app").await;
    let gw = gateway(&config(up.addr)).await;
    let base = url(&gw, "public");
    let mut statuses = Vec::new();
    for i in 0..6 {
        let xff = format!("203.0.113.{i}");
        statuses.push(
            get(&format!("{base}/search"), &[("x-forwarded-for", &xff)])
                .await
                .status,
        );
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);
}

#[tokio::test]
async fn delay_mode_holds_requests_then_refuses_past_max_delay() {
    let up = echo("app").await;
    let gw = gateway(&config(up.addr)).await;
    let base = url(&gw, "public");
    let started = std::time::Instant::now();
    let calls = (0..8).map(|i| {
        let u = format!("{base}/slow/{i}");
        async move { get(&u, &[]).await.status }
    });
    let statuses = futures_util::future::join_all(calls).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    // 10/s with a burst of 1 and half a second of delay: 1 at once and 5 held (100 ms
    // apart), the rest refused.
    assert_eq!((ok, limited), (6, 2), "{statuses:?}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(450),
        "the held requests were not held: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn counters_survive_a_reload_that_keeps_the_policy() {
    let up = echo("app").await;
    let yaml = config(up.addr);
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    for _ in 0..2 {
        assert_eq!(get(&format!("{base}/search"), &[]).await.status, 200);
    }
    assert_eq!(get(&format!("{base}/search"), &[]).await.status, 429);
    // The same spec after a reload: still exhausted.
    gw.runtime()
        .apply(turnpike::config::load_str(&yaml, std::path::Path::new(".")).unwrap())
        .await
        .unwrap();
    assert_eq!(get(&format!("{base}/search"), &[]).await.status, 429);
    // A changed limit is a new policy: new counters.
    let changed = yaml.replace("limits: [\"2/minute\"]", "limits: [\"3/minute\"]");
    gw.runtime()
        .apply(turnpike::config::load_str(&changed, std::path::Path::new(".")).unwrap())
        .await
        .unwrap();
    assert_eq!(get(&format!("{base}/search"), &[]).await.status, 200);
}

#[tokio::test]
async fn bad_limits_keys_and_unavailable_stores_are_config_errors_with_their_paths() {
    let up = echo("app").await;
    let limit = "limits: [\"2/minute\"]";
    let cases = [
        (
            limit,
            "limits: [\"2/fortnight\"]",
            "routes[1].policies[0].limits[0]",
        ),
        (
            limit,
            "limits: [\"2/minute\"]\n        store: redis",
            "routes[1].policies[0].store",
        ),
        ("key: client_ip", "key: cookie:x", "`cookie:x` is not a key"),
    ];
    for (from, to, path) in cases {
        let yaml = config(up.addr).replacen(from, to, 1);
        let e = config_error(&yaml).unwrap_or_else(|| panic!("accepted: {to}"));
        assert!(e.contains(path), "{path}: {e}");
    }
}

#[tokio::test]
async fn concurrency_limit_refuses_past_max_and_gives_places_back() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (g, a) = (gate.clone(), arrived.clone());
    let up = upstream_fn(move |_req| {
        let (g, a) = (g.clone(), a.clone());
        async move {
            a.fetch_add(1, Ordering::SeqCst);
            g.acquire().await.unwrap().forget();
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok")))
        }
    })
    .await;
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  app: {{endpoints: ["{}"]}}
routes:
  - name: held
    match: {{prefix: /held}}
    upstream: app
    policies:
      - type: concurrency_limit
        max: 2
"#,
        up.addr
    );
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    let held: Vec<_> = (0..2)
        .map(|i| tokio::spawn(get_owned(format!("{base}/held/{i}"))))
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while arrived.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the held requests did not arrive"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Both places taken: the third is refused by the gateway, without reaching the
    // upstream.
    let r = get(&format!("{base}/held/3"), &[]).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.error_code(), "concurrency_limited");
    assert_eq!(arrived.load(Ordering::SeqCst), 2);
    gate.add_permits(2);
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    // The places were given back.
    gate.add_permits(1);
    assert_eq!(get(&format!("{base}/held/4"), &[]).await.status, 200);
}

async fn get_owned(url: String) -> u16 {
    get(&url, &[]).await.status.as_u16()
}

#[tokio::test]
async fn three_rate_limits_on_one_route_each_decide_and_write_their_headers() {
    // Two decisions are carried inline to the response phase, a third one aside: the
    // third's legacy headers prove it was found again.
    let up = echo("app").await;
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  app: {{endpoints: ["{up}"]}}
routes:
  - name: r
    match: {{prefix: /}}
    upstream: app
    policies:
      - {{type: rate_limit, limits: ["100/minute"], key: route}}
      - {{type: rate_limit, limits: ["50/minute"], key: route}}
      - {{type: rate_limit, limits: ["2/minute"], key: route, headers: {{legacy: true}}}}
"#,
        up = up.addr
    );
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    let r = get(&format!("{base}/a"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(get(&format!("{base}/b"), &[]).await.status, 200);
    let r = get(&format!("{base}/c"), &[]).await;
    assert_eq!(r.status, 429, "the third limit did not decide");
}
