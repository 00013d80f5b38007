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
async fn an_upstream_closing_idle_connections_is_invisible_to_clients() {
    // Answers one request per connection without `Connection: close`, then closes: every
    // pooled connection is dead by the time it is reused (the pool sees the close and
    // connects anew).
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
async fn a_request_given_a_pooled_connection_that_closed_unwritten_is_retried_on_a_new_one() {
    // The upstream keeps each connection open after its answer and hands the socket to
    // the test, which closes it at the exact moment that makes the pool hand out a dead
    // connection: the client's next request is written first, the upstream's FIN second,
    // both before the (single-threaded) runtime runs again. The gateway's client task
    // then takes the idle connection before its task has seen the FIN; the request comes
    // back unwritten and must go out on a new connection.
    let parked: std::sync::Arc<std::sync::Mutex<Vec<tokio::net::TcpStream>>> = Default::default();
    let slot = parked.clone();
    let addr = raw_upstream(move |mut s| {
        let slot = slot.clone();
        async move {
            read_head(&mut s).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            slot.lock().unwrap().push(s);
        }
    })
    .await;
    let gw = gateway(&one_route(addr, "", "")).await;
    let series = "turnpike_upstream_stale_retries_total{upstream=\"svc\"}";
    let mut client = tokio::net::TcpStream::connect(gw.listener_addr("public").unwrap())
        .await
        .unwrap();
    let request = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n";
    client.write_all(request).await.unwrap();
    let first = read_response(&mut client).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    let upstream_side = eventually(Duration::from_secs(5), "the parked socket", || {
        let parked = parked.clone();
        async move { parked.lock().unwrap().pop() }
    })
    .await;
    assert_eq!(metric_value(&gw, series), Some(0));
    // No await between these two: the request, then the FIN.
    assert_eq!(client.try_write(request).unwrap(), request.len());
    drop(upstream_side);
    let second = read_response(&mut client).await;
    assert!(second.starts_with("HTTP/1.1 200 "), "{second}");
    assert_eq!(
        metric_value(&gw, series),
        Some(1),
        "the request did not take the retry path"
    );
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_upstream_connections_opened_total{upstream=\"svc\"}"
        ),
        Some(2)
    );
}

/// Reads one response with a `Content-Length` body from `s`.
async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(String::from)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return String::from_utf8_lossy(&seen).into_owned(),
        }
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
async fn a_client_vanishing_mid_body_aborts_the_upstream_request_and_discards_its_connection() {
    use http_body_util::BodyExt;
    // The upstream reads the whole body and reports how that ended.
    let (tx, mut outcome) = tokio::sync::mpsc::unbounded_channel();
    let up = upstream_fn(move |req| {
        let tx = tx.clone();
        async move {
            let read = req.into_body().collect().await.map(|c| c.to_bytes().len());
            let _ = tx.send(read.map_err(|e| e.to_string()));
            http::Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    })
    .await;
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
    // The upstream's read of the body fails: the gateway aborted the request instead of
    // finishing it with a short body or leaving it hanging.
    let read = tokio::time::timeout(Duration::from_secs(5), outcome.recv())
        .await
        .expect("the upstream request was left hanging")
        .unwrap();
    assert!(read.is_err(), "the upstream saw a complete body: {read:?}");
    eventually(Duration::from_secs(5), "nothing in flight", || async {
        (metric_value(&gw, "turnpike_requests_in_flight") == Some(0)).then_some(())
    })
    .await;
    // The gateway serves the next client, on a new upstream connection: the broken one
    // was not pooled.
    let r = get(&format!("{}/y", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_upstream_connections_opened_total{upstream=\"svc\"}"
        ),
        Some(2)
    );
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
