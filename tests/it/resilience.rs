//! Resilience against real upstream servers that refuse, reset, hang, flap and die:
//! retries (with their budget, methods and body replay), hedging, outlier ejection,
//! active health checks, priority failover, the circuit breaker, limits and fallbacks.
//! Catalogue section G, items 80-88, with the retry and ejection parts.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// An upstream answering `status` (read each time) with a JSON echo.
async fn switchable(name: &'static str, status: Arc<AtomicU16>) -> Upstream {
    upstream_fn(move |req| {
        let status = status.clone();
        async move {
            let mut resp = echo_response(name, req).await;
            *resp.status_mut() = StatusCode::from_u16(status.load(SeqCst)).unwrap();
            resp
        }
    })
    .await
}

/// An upstream that never answers.
async fn hanging() -> std::net::SocketAddr {
    raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(s);
    })
    .await
}

/// An upstream that reads the head, counts it and resets the connection.
async fn resetting(count: Arc<AtomicUsize>) -> std::net::SocketAddr {
    raw_upstream(move |mut s| {
        let count = count.clone();
        async move {
            read_head(&mut s).await;
            count.fetch_add(1, SeqCst);
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    })
    .await
}

fn config(upstream: &str, route: &str) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
access_log: {{enabled: false}}
upstreams:
{upstream}
routes:
  - name: r
    match: {{prefix: /}}
    upstream: svc
{route}
"#
    )
}

async fn upstreams_state(gw: &turnpike::Gateway) -> serde_json::Value {
    let r = get(
        &format!("http://{}/upstreams", gw.admin_addr().unwrap()),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    r.json()
}

#[tokio::test]
async fn the_issue_example_validates_as_written() {
    let yaml = r#"
listeners: [{name: public, address: "127.0.0.1:0"}]
upstreams:
  orders:
    endpoints:
      - {address: orders-a.eu:8080, priority: 0}     # the nearest region first
      - {address: orders-b.eu:8080, priority: 0}
      - {address: orders-a.us:8080, priority: 1}     # used when priority 0 lacks healthy capacity
    health_check:
      active: {path: /healthz, interval: 5s, timeout: 1s, healthy_after: 2, unhealthy_after: 3, expect: [200-299]}
      passive: {consecutive_failures: 5, eject_for: 30s, max_ejected: 50%}   # outlier ejection, time grows with repeats
    circuit_breaker: {failure_rate: 50%, min_requests: 20, window: 10s, open_for: 15s, half_open_probes: 3}
    limits: {max_in_flight: 1000, max_pending: 100}   # 503 past them
    retry:
      attempts: 2                                     # extra tries after the first
      on: [connect_failure, reset, refused_stream, "502", "503", "504"]
      methods: idempotent                             # or a list; POST only with an Idempotency-Key header
      backoff: {base: 25ms, max: 250ms}               # jittered
      budget: {ratio: 20%, min_per_second: 10}        # retries at most 20% of requests
      per_try_timeout: 2s
  orders-readonly: {endpoints: ["127.0.0.1:9"]}

routes:
  - name: orders
    match: {prefix: /orders}
    upstream: orders
    hedge: {after: 150ms, max: 1}                     # idempotent requests only
    fallback:                                         # when the breaker is open, no endpoint is healthy, or the call fails
      on: [circuit_open, no_healthy_endpoint, upstream_timeout]
      respond: {status: 503, json: {error: orders_unavailable, retry: true}, headers: {retry-after: "5"}}
      # or: upstream: orders-readonly
  - name: orders-ro
    match: {prefix: /ro}
    upstream: orders
    fallback: {on: [circuit_open], upstream: orders-readonly}
"#;
    assert_eq!(config_error(yaml), None);
}

#[tokio::test]
async fn bad_resilience_settings_are_config_errors_with_their_paths() {
    let yaml = r#"
listeners: [{name: public, address: "127.0.0.1:0"}]
upstreams:
  svc:
    endpoints: [{address: "127.0.0.1:1", priority: 12}]
    health_check:
      active: {type: grpc, interval: 10ms, timeout: 1s, expect: ["300-200"]}
      passive: {consecutive_failures: 0, max_ejected: 150%}
    circuit_breaker: {failure_rate: 0%, half_open_probes: 0}
    limits: {max_pending: 10}
    retry: {attempts: 20, on: [sometimes], methods: everything, backoff: {base: 100ms, max: 10ms}}
routes:
  - name: r
    match: {prefix: /}
    respond: {status: 200}
    hedge: {after: 0ms}
    fallback: {on: [teapot], upstream: nowhere}
"#;
    // Values that do not parse are reported one at a time, with their place.
    let mut yaml = yaml.to_string();
    for (needle, typo) in [
        (
            "upstreams.svc.health_check.active.expect[0]",
            ", expect: [\"300-200\"]",
        ),
        (
            "upstreams.svc.health_check.passive.max_ejected",
            ", max_ejected: 150%",
        ),
        ("upstreams.svc.retry.on[0]", "on: [sometimes], "),
    ] {
        let e = config_error(&yaml).expect("must be refused");
        assert!(e.contains(needle), "{needle} missing in:\n{e}");
        yaml = yaml.replace(typo, "");
    }
    // Then every check behind, all at once.
    let e = config_error(&yaml).expect("must be refused");
    for needle in [
        "upstreams.svc.endpoints[0].priority",
        "the gRPC health protocol needs `protocol: h2c`",
        "upstreams.svc.health_check.active.interval",
        "upstreams.svc.health_check.passive.consecutive_failures",
        "upstreams.svc.circuit_breaker.failure_rate",
        "upstreams.svc.circuit_breaker.half_open_probes",
        "upstreams.svc.limits.max_pending",
        "upstreams.svc.retry.attempts",
        "upstreams.svc.retry.methods",
        "upstreams.svc.retry.backoff.max",
        "only a route that forwards (`upstream` or `split`) can hedge",
        "routes[0].hedge.after",
        "no upstream named `nowhere`",
        "routes[0].fallback.on[0]",
        "unknown failure `teapot`",
    ] {
        assert!(e.contains(needle), "{needle} missing in:\n{e}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_endpoint_for_any_method() {
    // Catalogue item 80.
    let good = echo("good").await;
    let dead = closed_port().await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{dead}\", \"{}\"], retry: {{attempts: 1}}}}",
            good.addr
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    for i in 0..10 {
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let r = send(request(method, &format!("{base}/x"), &[], "payload")).await;
        assert_eq!(r.status, 200, "{method}: {:?}", r.body);
        assert_eq!(r.echo().body_len, 7, "the body went with the retry");
    }
    let retried = metric_value(
        &gw,
        "turnpike_upstream_retries_total{upstream=\"svc\",reason=\"connect_failure\"}",
    )
    .unwrap();
    assert!(
        retried >= 1,
        "round robin sent some first tries to the dead endpoint"
    );
    assert_eq!(good.hits(), 10);
}

#[tokio::test]
async fn a_reset_before_the_head_is_retried_only_when_the_request_is_idempotent() {
    // Catalogue item 82: a POST that reached a resetting upstream is never sent twice.
    let resets = Arc::new(AtomicUsize::new(0));
    let bad = resetting(resets.clone()).await;
    let good = echo("good").await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{bad}\", \"{}\"], balancer: round_robin, retry: {{attempts: 1, on: [reset]}}}}",
            good.addr
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    let (mut got_post_502, mut posts_to_bad) = (false, 0);
    for _ in 0..6 {
        let before = resets.load(SeqCst);
        let r = get(&format!("{base}/get"), &[]).await;
        assert_eq!(r.status, 200, "a GET is retried on the other endpoint");
        if resets.load(SeqCst) > before {
            assert_eq!(r.echo().header("x-turnpike-attempt"), Some("2"));
        }
        let before = resets.load(SeqCst);
        let hits = good.hits();
        let r = send(request("POST", &format!("{base}/post"), &[], "{}")).await;
        if resets.load(SeqCst) > before {
            posts_to_bad += 1;
            assert_eq!(r.status, 502, "a POST is not retried after a reset");
            assert_eq!(r.error_code(), "upstream_reset");
            assert_eq!(good.hits(), hits, "and never reaches a second endpoint");
            got_post_502 = true;
        }
    }
    assert!(got_post_502 && posts_to_bad >= 1);
    // With an Idempotency-Key the client says a second copy is safe.
    for _ in 0..4 {
        let r = send(request(
            "POST",
            &format!("{base}/post"),
            &[("idempotency-key", "k-1")],
            "{}",
        ))
        .await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn a_503_is_retried_with_the_attempt_header_and_the_body_replayed() {
    let status = Arc::new(AtomicU16::new(503));
    let flappy = {
        let status = status.clone();
        upstream_fn(move |req| {
            let status = status.clone();
            async move {
                let mut resp = echo_response("flappy", req).await;
                // Fails once, then answers: the next request fails again.
                let s = status.fetch_xor(503 ^ 200, SeqCst);
                *resp.status_mut() = StatusCode::from_u16(s).unwrap();
                resp
            }
        })
        .await
    };
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{}\"], retry: {{attempts: 2, on: [\"503\"], backoff: {{base: 1ms, max: 2ms}}}}}}",
            flappy.addr
        ),
        "",
    ))
    .await;
    let r = send(request(
        "PUT",
        &format!("{}/doc", url(&gw, "public")),
        &[],
        "0123456789",
    ))
    .await;
    assert_eq!(r.status, 200);
    let echo = r.echo();
    assert_eq!(echo.header("x-turnpike-attempt"), Some("2"));
    assert_eq!(echo.body_len, 10, "the buffered body was sent again");
    assert!(
        echo.header("x-turnpike-timeout-ms").is_some(),
        "the time budget goes upstream"
    );
    assert_eq!(flappy.hits(), 2);
}

#[tokio::test]
async fn a_retry_storm_is_capped_by_the_budget() {
    let status = Arc::new(AtomicU16::new(503));
    let down = switchable("down", status).await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{}\"], retry: {{attempts: 3, on: [\"503\"], backoff: {{base: 1ms, max: 1ms}}, budget: {{ratio: 10%, min_per_second: 1}}}}}}",
            down.addr
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    for _ in 0..100 {
        assert_eq!(get(&format!("{base}/x"), &[]).await.status, 503);
    }
    // Without a budget 100 requests would be 400 calls. With it: 100, plus 10% of the
    // requests, plus 1/s over the 10 s window.
    let calls = down.hits();
    assert!(calls <= 100 + 10 + 10, "{calls} calls");
    assert!(calls > 100, "some retries were allowed: {calls}");
    let exhausted = metric_value(
        &gw,
        "turnpike_upstream_retry_budget_exhausted_total{upstream=\"svc\"}",
    )
    .unwrap();
    assert!(exhausted > 0);
}

#[tokio::test]
async fn a_hung_try_moves_to_another_endpoint_at_the_per_try_timeout() {
    // Catalogue item 81 with a per-try timeout: the client sees an answer, not a 504.
    let hung = hanging().await;
    let good = echo("good").await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{hung}\", \"{}\"], timeouts: {{request: 5s}}, retry: {{attempts: 1, on: [timeout], per_try_timeout: 200ms}}}}",
            good.addr
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    for _ in 0..4 {
        let started = Instant::now();
        let r = get(&format!("{base}/x"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let timeouts = metric_value(
        &gw,
        "turnpike_upstream_retries_total{upstream=\"svc\",reason=\"timeout\"}",
    )
    .unwrap();
    assert!(timeouts >= 1);
}

#[tokio::test]
async fn consecutive_5xx_eject_an_endpoint_and_it_comes_back_by_itself() {
    // Catalogue item 88.
    let status = Arc::new(AtomicU16::new(500));
    let sick = switchable("sick", status.clone()).await;
    let good = echo("good").await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{}\", \"{}\"], health_check: {{passive: {{consecutive_failures: 3, eject_for: 1s, max_ejected: 50%}}}}}}",
            sick.addr, good.addr
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    let mut fails = 0;
    while sick.hits() < 3 {
        if get(&format!("{base}/x"), &[]).await.status == 500 {
            fails += 1;
        }
    }
    assert_eq!(fails, 3);
    let state = upstreams_state(&gw).await;
    let sick_state = state["upstreams"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == sick.addr.to_string())
        .unwrap()
        .clone();
    assert_eq!(sick_state["available"], false, "{sick_state}");
    assert!(sick_state["ejected_for_ms"].as_u64().unwrap() > 0);
    for _ in 0..20 {
        assert_eq!(
            get(&format!("{base}/x"), &[]).await.status,
            200,
            "traffic avoids the ejected endpoint"
        );
    }
    assert_eq!(sick.hits(), 3);
    assert_eq!(
        metric_value(&gw, "turnpike_upstream_ejections_total{upstream=\"svc\"}"),
        Some(1)
    );
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_upstream_endpoints{upstream=\"svc\",state=\"ejected\"}"
        ),
        Some(1)
    );
    status.store(200, SeqCst);
    eventually(
        Duration::from_secs(5),
        "the ejected endpoint back in rotation",
        || async {
            get(&format!("{base}/x"), &[]).await;
            (sick.hits() > 3).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn all_endpoints_failing_give_a_fast_503_and_the_fallback() {
    let status = Arc::new(AtomicU16::new(500));
    let a = switchable("a", status.clone()).await;
    let b = switchable("b", status.clone()).await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{}\", \"{}\"], health_check: {{passive: {{consecutive_failures: 2, eject_for: 30s, max_ejected: 100%}}}}}}",
            a.addr, b.addr
        ),
        r#"    fallback:
      on: [circuit_open, no_healthy_endpoint, upstream_timeout]
      respond: {status: 503, json: {error: orders_unavailable, retry: true}, headers: {retry-after: "5"}}"#,
    ))
    .await;
    let base = url(&gw, "public");
    for _ in 0..4 {
        assert_eq!(get(&format!("{base}/x"), &[]).await.status, 500);
    }
    let calls = a.hits() + b.hits();
    let started = Instant::now();
    let r = get(&format!("{base}/x"), &[]).await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(r.status, 503);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "orders_unavailable", "retry": true})
    );
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(a.hits() + b.hits(), calls, "no upstream call");
}

#[tokio::test]
async fn no_healthy_endpoint_without_a_fallback_is_503_with_its_code() {
    let status = Arc::new(AtomicU16::new(500));
    let a = switchable("a", status).await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{}\"], health_check: {{passive: {{consecutive_failures: 1, max_ejected: 100%}}}}}}",
            a.addr
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    assert_eq!(get(&format!("{base}/x"), &[]).await.status, 500);
    let r = get(&format!("{base}/x"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "no_healthy_endpoint");
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn the_circuit_breaker_opens_refuses_at_once_half_opens_and_closes() {
    let status = Arc::new(AtomicU16::new(502));
    let up = switchable("up", status.clone()).await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{}\"], circuit_breaker: {{failure_rate: 50%, min_requests: 4, window: 10s, open_for: 300ms, half_open_probes: 2}}}}",
            up.addr
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    for _ in 0..4 {
        assert_eq!(get(&format!("{base}/x"), &[]).await.status, 502);
    }
    let r = get(&format!("{base}/x"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "circuit_open");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(up.hits(), 4, "an open breaker calls nothing");
    assert_eq!(
        metric_value(&gw, "turnpike_upstream_circuit_state{upstream=\"svc\"}"),
        Some(1)
    );
    assert_eq!(
        upstreams_state(&gw).await["upstreams"][0]["circuit_breaker"]["state"],
        "open"
    );

    status.store(200, SeqCst);
    eventually(Duration::from_secs(5), "half-open probes pass", || async {
        (get(&format!("{base}/x"), &[]).await.status == 200).then_some(())
    })
    .await;
    assert_eq!(get(&format!("{base}/x"), &[]).await.status, 200);
    assert_eq!(
        metric_value(&gw, "turnpike_upstream_circuit_state{upstream=\"svc\"}"),
        Some(0)
    );
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_upstream_circuit_opened_total{upstream=\"svc\"}"
        ),
        Some(1)
    );
}

#[tokio::test]
async fn limits_refuse_past_in_flight_and_pending_at_once() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let entered = Arc::new(AtomicUsize::new(0));
    let slow = {
        let gate = gate.clone();
        let entered = entered.clone();
        upstream_fn(move |_req| {
            let gate = gate.clone();
            let entered = entered.clone();
            async move {
                entered.fetch_add(1, SeqCst);
                gate.notified().await;
                Response::new(Full::new(Bytes::from_static(b"done")))
            }
        })
        .await
    };
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{}\"], limits: {{max_in_flight: 2, max_pending: 1}}}}",
            slow.addr
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    let mut running = Vec::new();
    for _ in 0..3 {
        let u = format!("{base}/x");
        running.push(tokio::spawn(async move { get(&u, &[]).await.status }));
    }
    eventually(
        Duration::from_secs(5),
        "two requests at the upstream",
        || async { (entered.load(SeqCst) == 2).then_some(()) },
    )
    .await;
    // The third waits (pending); this one finds no room at all.
    let u = format!("{base}/x");
    let r = eventually(Duration::from_secs(5), "a refusal past the limits", || {
        let u = u.clone();
        async move {
            let r = get(&u, &[]).await;
            (r.status == 503).then_some(r)
        }
    })
    .await;
    assert_eq!(r.error_code(), "upstream_overloaded");
    assert_eq!(
        entered.load(SeqCst),
        2,
        "the pending request is held, not sent"
    );
    // Let everything through.
    while running.iter().any(|t| !t.is_finished()) {
        gate.notify_waiters();
        tokio::task::yield_now().await;
    }
    for t in running {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(entered.load(SeqCst), 3);
    assert!(
        metric_value(&gw, "turnpike_upstream_overloaded_total{upstream=\"svc\"}").unwrap() >= 1
    );
}

/// An upstream whose `/healthz` answers `health` and everything else 200.
async fn with_health(name: &'static str, health: Arc<AtomicU16>) -> Upstream {
    upstream_fn(move |req| {
        let health = health.clone();
        async move {
            let probe = req.uri().path() == "/healthz";
            let mut resp = echo_response(name, req).await;
            if probe {
                *resp.status_mut() = StatusCode::from_u16(health.load(SeqCst)).unwrap();
            }
            resp
        }
    })
    .await
}

#[tokio::test]
async fn active_checks_move_traffic_to_the_next_priority_level_and_back() {
    let health = Arc::new(AtomicU16::new(200));
    let near = with_health("near", health.clone()).await;
    let far = echo("far").await;
    let gw = gateway(&config(
        &format!(
            r#"  svc:
    endpoints:
      - {{address: "{}", priority: 0}}
      - {{address: "{}", priority: 1}}
    health_check:
      active: {{path: /healthz, interval: 100ms, timeout: 1s, healthy_after: 2, unhealthy_after: 2, expect: [200-299]}}"#,
            near.addr, far.addr
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    for _ in 0..10 {
        assert_eq!(get(&format!("{base}/x"), &[]).await.echo().server, "near");
    }
    // (Both endpoints get probes; the answers above say where the traffic went.)

    health.store(503, SeqCst);
    eventually(Duration::from_secs(5), "traffic on priority 1", || async {
        (get(&format!("{base}/x"), &[]).await.echo().server == "far").then_some(())
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(&format!("{base}/x"), &[]).await.echo().server, "far");
    }
    let state = upstreams_state(&gw).await;
    assert_eq!(state["upstreams"][0]["endpoints"][0]["healthy"], false);
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_upstream_endpoints{upstream=\"svc\",state=\"unhealthy\"}"
        ),
        Some(1)
    );

    health.store(200, SeqCst);
    eventually(
        Duration::from_secs(5),
        "traffic back on priority 0",
        || async { (get(&format!("{base}/x"), &[]).await.echo().server == "near").then_some(()) },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(get(&format!("{base}/x"), &[]).await.echo().server, "near");
    }
}

#[tokio::test]
async fn a_tcp_check_marks_a_closed_port_unhealthy() {
    let good = echo("good").await;
    let dead = closed_port().await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{dead}\", \"{}\"], health_check: {{active: {{type: tcp, interval: 100ms, unhealthy_after: 1}}}}}}",
            good.addr
        ),
        "",
    ))
    .await;
    eventually(
        Duration::from_secs(5),
        "the closed port marked unhealthy",
        || async {
            let s = upstreams_state(&gw).await;
            (s["upstreams"][0]["endpoints"][0]["healthy"] == false).then_some(())
        },
    )
    .await;
    let base = url(&gw, "public");
    for _ in 0..10 {
        assert_eq!(get(&format!("{base}/x"), &[]).await.status, 200);
    }
}

#[tokio::test]
async fn a_slow_idempotent_request_is_hedged_and_the_first_answer_wins() {
    let slow_hits = Arc::new(AtomicUsize::new(0));
    let slow = {
        let hits = slow_hits.clone();
        upstream_fn(move |req| {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_secs(3)).await;
                echo_response("slow", req).await
            }
        })
        .await
    };
    let fast = echo("fast").await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{}\", \"{}\"], balancer: round_robin}}",
            slow.addr, fast.addr
        ),
        "    hedge: {after: 50ms, max: 1}",
    ))
    .await;
    let base = url(&gw, "public");
    for _ in 0..4 {
        let started = Instant::now();
        let r = get(&format!("{base}/x"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.echo().server, "fast");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    assert!(
        slow_hits.load(SeqCst) >= 1,
        "round robin sent some first tries to the slow one"
    );
    let hedges = metric_value(&gw, "turnpike_upstream_hedges_total{upstream=\"svc\"}").unwrap();
    assert_eq!(hedges as usize, slow_hits.load(SeqCst));

    // A POST is never hedged: when it lands on the slow endpoint, it waits there.
    let before = fast.hits();
    let mut posted_to_slow = false;
    for _ in 0..2 {
        let s = slow_hits.load(SeqCst);
        let r = send(request("POST", &format!("{base}/x"), &[], "{}")).await;
        if slow_hits.load(SeqCst) > s {
            assert_eq!(r.echo().server, "slow");
            posted_to_slow = true;
        }
    }
    assert!(posted_to_slow);
    assert_eq!(fast.hits(), before + 1);
}

#[tokio::test]
async fn a_fallback_upstream_takes_the_request_when_the_upstream_cannot() {
    let spare = echo("spare").await;
    let dead = closed_port().await;
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  svc: {{endpoints: ["{dead}"]}}
  spare: {{endpoints: ["{}"]}}
routes:
  - name: r
    match: {{prefix: /}}
    upstream: svc
    fallback: {{on: [connect_failure], upstream: spare}}
"#,
        spare.addr
    );
    let gw = gateway(&yaml).await;
    let r = send(request(
        "POST",
        &format!("{}/orders", url(&gw, "public")),
        &[],
        "abc",
    ))
    .await;
    assert_eq!(r.status, 200);
    let echo = r.echo();
    assert_eq!(echo.server, "spare");
    assert_eq!(echo.body_len, 3);
    assert_eq!(echo.uri, "/orders");
}

#[tokio::test]
async fn breaker_and_ejections_survive_a_reload_that_keeps_the_upstream() {
    let status = Arc::new(AtomicU16::new(502));
    let up = switchable("up", status.clone()).await;
    let upstream = format!(
        "  svc: {{endpoints: [\"{}\"], circuit_breaker: {{min_requests: 2, open_for: 1h}}}}",
        up.addr
    );
    let gw = gateway(&config(&upstream, "")).await;
    let base = url(&gw, "public");
    for _ in 0..2 {
        get(&format!("{base}/x"), &[]).await;
    }
    assert_eq!(
        get(&format!("{base}/x"), &[]).await.error_code(),
        "circuit_open"
    );
    // A reload that changes a route only: the breaker stays open.
    let changed_route = config(&upstream, "    host_header: upstream");
    let loaded = turnpike::config::load_str(&changed_route, std::path::Path::new(".")).unwrap();
    gw.runtime().apply(loaded).await.unwrap();
    assert_eq!(
        get(&format!("{base}/x"), &[]).await.error_code(),
        "circuit_open"
    );
    // A reload that changes the upstream: fresh state.
    let changed_upstream = config(&upstream.replace("open_for: 1h", "open_for: 2h"), "");
    let loaded = turnpike::config::load_str(&changed_upstream, std::path::Path::new(".")).unwrap();
    gw.runtime().apply(loaded).await.unwrap();
    status.store(200, SeqCst);
    assert_eq!(get(&format!("{base}/x"), &[]).await.status, 200);
}

/// An upstream that can be killed (listener and every connection closed) and started
/// again on the same port.
struct Killable {
    addr: std::net::SocketAddr,
    name: &'static str,
    delay: Arc<std::sync::atomic::AtomicU64>,
    hits: Arc<AtomicUsize>,
    tasks: tokio::task::JoinSet<()>,
}

impl Killable {
    async fn start(name: &'static str) -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut k = Self {
            addr: l.local_addr().unwrap(),
            name,
            delay: Default::default(),
            hits: Default::default(),
            tasks: tokio::task::JoinSet::new(),
        };
        k.serve(l);
        k
    }

    fn serve(&mut self, l: tokio::net::TcpListener) {
        let (name, delay, hits) = (self.name, self.delay.clone(), self.hits.clone());
        self.tasks.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = l.accept().await {
                let (delay, hits) = (delay.clone(), hits.clone());
                conns.spawn(async move {
                    loop {
                        read_head(&mut s).await;
                        hits.fetch_add(1, SeqCst);
                        let ms = delay.load(SeqCst);
                        if ms > 0 {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                        }
                        let body = name.as_bytes();
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        if s.write_all(head.as_bytes()).await.is_err()
                            || s.write_all(body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
    }

    fn kill(&mut self) {
        self.tasks.abort_all();
    }

    async fn restart(&mut self) {
        let l = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(l);
    }
}

#[tokio::test]
async fn chaos_one_endpoint_killed_and_restarted_one_slow_no_client_error_after_detection() {
    let mut a = Killable::start("a").await;
    let b = Killable::start("b").await;
    let c = Killable::start("c").await;
    let gw = gateway(&config(
        &format!(
            r#"  svc:
    endpoints: ["{}", "{}", "{}"]
    balancer: least_request
    timeouts: {{connect: 200ms, request: 3s}}
    health_check:
      active: {{type: tcp, interval: 200ms, timeout: 100ms, healthy_after: 1, unhealthy_after: 1}}
      passive: {{consecutive_failures: 2, eject_for: 1s, max_ejected: 50%}}
    retry: {{attempts: 2, on: [connect_failure, reset, timeout], per_try_timeout: 500ms, backoff: {{base: 1ms, max: 5ms}}, budget: {{ratio: 50%, min_per_second: 20}}}}"#,
            a.addr, b.addr, c.addr
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    let errors = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (base, errors, done, total) =
            (base.clone(), errors.clone(), done.clone(), total.clone());
        load.push(tokio::spawn(async move {
            while !done.load(SeqCst) {
                let r = send(request("GET", &format!("{base}/x"), &[], "")).await;
                total.fetch_add(1, SeqCst);
                if r.status != 200 {
                    errors.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    let at = |n: usize| {
        let total = total.clone();
        async move {
            eventually(Duration::from_secs(20), "load progress", || async {
                (total.load(SeqCst) >= n).then_some(())
            })
            .await
        }
    };
    at(200).await;
    c.delay.store(1000, SeqCst); // slow: every try there runs into per_try_timeout
    a.kill();
    let killed_at = total.load(SeqCst);
    at(killed_at + 600).await;
    assert_eq!(
        errors.load(SeqCst),
        0,
        "retries hide the dead and the slow endpoint"
    );
    let a_hits = a.hits.load(SeqCst);
    a.restart().await;
    eventually(
        Duration::from_secs(10),
        "the restarted endpoint back in rotation",
        || async { (a.hits.load(SeqCst) > a_hits).then_some(()) },
    )
    .await;
    done.store(true, SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(errors.load(SeqCst), 0, "of {} requests", total.load(SeqCst));
    eprintln!(
        "chaos: {} requests, 0 errors; a killed after {killed_at} and back after {} of its requests; retries {:?}",
        total.load(SeqCst),
        a_hits,
        turnpike::telemetry::metrics::RETRY_REASONS
            .iter()
            .map(|r| (
                *r,
                metric_value(&gw, &format!("turnpike_upstream_retries_total{{upstream=\"svc\",reason=\"{r}\"}}")).unwrap_or(0)
            ))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_resilience_example_runs_as_documented() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/resilience.yaml"
    ))
    .unwrap();
    // The same file on free ports; 8185 stays a port nothing listens on.
    let mut yaml = text.clone();
    for port in ["8080", "8181", "8182", "8183", "8184", "9901"] {
        let free = free_port().await.port().to_string();
        yaml = yaml.replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{free}"));
    }
    let dead = closed_port().await.port().to_string();
    yaml = yaml
        .replace("127.0.0.1:8185", &format!("127.0.0.1:{dead}"))
        .replace("output: stdout", "output: /dev/null")
        .replace("interval: 2s", "interval: 100ms");
    let gw = gateway(&yaml).await;
    let base = url(&gw, "public");
    for _ in 0..20 {
        let r = get(&format!("{base}/orders/42"), &[]).await;
        assert_eq!(
            r.status, 200,
            "orders-b's 503s never reach the client: {:?}",
            r.body
        );
        assert_ne!(r.json()["served_by"], "orders-b");
    }
    eventually(
        Duration::from_secs(5),
        "orders-b marked unhealthy",
        || async {
            let s = upstreams_state(&gw).await;
            let orders = s["upstreams"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["name"] == "orders")
                .unwrap()
                .clone();
            (orders["endpoints"][1]["healthy"] == false).then_some(())
        },
    )
    .await;
    let r = get(&format!("{base}/catalog/1"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["served_by"], "orders-readonly");
    let r = get(&format!("{base}/payments"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "payments_unavailable");
    assert_eq!(r.header("retry-after"), Some("10"));
}

#[tokio::test]
async fn timeouts_longer_than_the_breaker_window_still_open_it() {
    // Outcomes are counted when they are known, not when the request started.
    let hung = hanging().await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{hung}\"], timeouts: {{request: 300ms}}, circuit_breaker: {{min_requests: 3, window: 100ms, open_for: 1h}}}}"
        ),
        "",
    ))
    .await;
    let base = url(&gw, "public");
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let u = format!("{base}/x");
            tokio::spawn(async move { get(&u, &[]).await.status })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap(), 504);
    }
    assert_eq!(
        get(&format!("{base}/x"), &[]).await.error_code(),
        "circuit_open"
    );
}

#[tokio::test]
async fn a_retry_with_nowhere_to_go_returns_the_upstream_answer() {
    // The only endpoint answers 503 and is ejected by it: the retry finds no endpoint,
    // so the client gets the 503 itself, not `no_healthy_endpoint`.
    let status = Arc::new(AtomicU16::new(503));
    let up = switchable("only", status).await;
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{}\"], health_check: {{passive: {{consecutive_failures: 1, max_ejected: 100%}}}}, retry: {{attempts: 2, on: [\"503\"]}}}}",
            up.addr
        ),
        "",
    ))
    .await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.echo().server, "only", "the upstream's own answer");
    assert_eq!(up.hits(), 1);
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_upstream_retries_total{upstream=\"svc\",reason=\"status\"}"
        ),
        Some(0),
        "no retry was counted for a try never sent"
    );
}

#[tokio::test]
async fn an_http_probe_is_judged_by_its_status_whatever_its_body() {
    let probes = Arc::new(AtomicUsize::new(0));
    let big = {
        let probes = probes.clone();
        upstream_fn(move |_req| {
            let probes = probes.clone();
            async move {
                probes.fetch_add(1, SeqCst);
                Response::new(Full::new(Bytes::from(vec![b'x'; 200 << 10])))
            }
        })
        .await
    };
    let gw = gateway(&config(
        &format!(
            "  svc: {{endpoints: [\"{}\"], health_check: {{active: {{interval: 100ms, unhealthy_after: 1}}}}}}",
            big.addr
        ),
        "",
    ))
    .await;
    eventually(Duration::from_secs(5), "three probes", || async {
        (probes.load(SeqCst) >= 3).then_some(())
    })
    .await;
    assert_eq!(
        upstreams_state(&gw).await["upstreams"][0]["endpoints"][0]["healthy"],
        true
    );
}
