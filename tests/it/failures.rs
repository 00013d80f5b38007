//! Upstream failures: connection refused, resets, timeouts, stalls, dead pooled
//! connections. Each ends in its status and stable error code, and is counted.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn one_route(addr: impl std::fmt::Display, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
admin: {{address: "127.0.0.1:0"}}
access_log: {{enabled: false}}
upstreams:
  svc: {{endpoints: ["{addr}"], {upstream_extra}}}
routes:
  - name: r
    match: {{prefix: /}}
    upstream: svc
    {route_extra}
"#
    )
}

async fn metric(gw: &turnpike::Gateway, line_prefix: &str) -> Option<String> {
    let m = get(&format!("http://{}/metrics", gw.admin_addr()?), &[]).await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .map(String::from)
}

#[tokio::test]
async fn connection_refused_is_502_and_counted() {
    let gw = gateway(&one_route(closed_port().await, "", "")).await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_connect_failed");
    assert!(
        !String::from_utf8_lossy(&r.body).contains("127.0.0.1"),
        "internal address leaked"
    );
    assert_eq!(
        metric(
            &gw,
            "turnpike_upstream_connect_errors_total{upstream=\"svc\"}"
        )
        .await
        .as_deref(),
        Some("turnpike_upstream_connect_errors_total{upstream=\"svc\"} 1")
    );
}

#[tokio::test]
async fn slow_upstream_is_504_at_the_request_timeout() {
    let up = upstream_fn(|_req| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        http::Response::new(Full::new(Bytes::new()))
    })
    .await;
    let gw = gateway(&one_route(up.addr, "", "timeouts: {request: 300ms}")).await;
    let started = Instant::now();
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.error_code(), "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        metric(&gw, "turnpike_upstream_timeouts_total{upstream=\"svc\"} 1")
            .await
            .is_some()
    );
}

/// A raw TCP upstream: `behave` gets each accepted socket.
async fn raw_upstream<F, Fut>(behave: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(behave(s));
        }
    });
    addr
}

async fn read_head(s: &mut tokio::net::TcpStream) {
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn reset_before_the_response_is_502() {
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        drop(s);
    })
    .await;
    let gw = gateway(&one_route(addr, "", "")).await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_reset");
}

#[tokio::test]
async fn garbage_response_is_502_protocol_error() {
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 9\r\n\r\nok")
            .await;
    })
    .await;
    let gw = gateway(&one_route(addr, "", "")).await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_protocol_error");
}

#[tokio::test]
async fn stalled_response_body_is_cut_at_the_idle_timeout() {
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
            .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let gw = gateway(&one_route(addr, "", "timeouts: {idle: 300ms}")).await;
    let started = Instant::now();
    let out = raw(
        gw.listener_addr("public").unwrap(),
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with("partial"),
        "the body must stop short, never look complete: {out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn upstream_closing_idle_connections_is_invisible_to_clients() {
    // Answers one request per connection without `Connection: close`, then closes: every
    // pooled connection is dead by the time it is reused.
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await;
        let _ = s.shutdown().await;
    })
    .await;
    let gw = gateway(&one_route(addr, "", "")).await;
    let base = url(&gw, "public");
    for i in 0..30 {
        let r = get(&format!("{base}/{i}"), &[]).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
    }
}

#[tokio::test]
async fn unresolvable_upstream_is_503_no_endpoint() {
    let gw = gateway(&one_route("does-not-exist.invalid:80", "", "")).await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "no_endpoint");
}

#[tokio::test]
async fn a_client_vanishing_mid_body_leaves_the_gateway_healthy() {
    let up = echo("u").await;
    let gw = gateway(&one_route(up.addr, "", "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.listener_addr("public").unwrap())
        .await
        .unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-part")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "upstream receives the request",
        || async { (up.hits() == 1).then_some(()) },
    )
    .await;
    drop(s);
    // The gateway stays healthy for the next client.
    let r = get(&format!("{}/y", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_stalled_request_body_is_408_at_the_idle_timeout() {
    let up = echo("u").await;
    let gw = gateway(&one_route(up.addr, "", "timeouts: {idle: 300ms}")).await;
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.listener_addr("public").unwrap())
        .await
        .unwrap();
    s.write_all(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-part")
        .await
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(head.contains("request_timeout"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
