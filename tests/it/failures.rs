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

const OPENED: &str = "turnpike_upstream_connections_opened_total{upstream=\"svc\"}";

/// A raw upstream that answers every request on a connection with `answer(n)`, where
/// `n` counts requests over all connections.
async fn scripted_upstream(
    answer: impl Fn(usize) -> Vec<u8> + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answer = std::sync::Arc::new(answer);
    raw_upstream(move |mut s| {
        let count = count.clone();
        let answer = answer.clone();
        async move {
            loop {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if s.write_all(&answer(n)).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_keep_alive_upstream_serves_many_requests_on_one_connection() {
    let addr =
        scripted_upstream(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()).await;
    let gw = gateway(&one_route(addr, "", "")).await;
    for i in 0..20 {
        let r = get(&format!("{}/{i}", url(&gw, "public")), &[]).await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    }
    assert_eq!(metric_value(&gw, OPENED), Some(1));
}

#[tokio::test]
async fn ambiguous_upstream_responses_are_502_and_their_connection_is_discarded() {
    // Each bad answer follows a good one on the same connection: the good one proves
    // the connection was reused up to then, the next request proves it was not after.
    let cases: [&[u8]; 8] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Bad : 1\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Fold: a\r\n b\r\n\r\nok",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    ];
    for (i, bad) in cases.iter().enumerate() {
        let bad = bad.to_vec();
        let addr = scripted_upstream(move |n| {
            if n == 1 {
                bad.clone()
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
            }
        })
        .await;
        let gw = gateway(&one_route(addr, "", "")).await;
        let base = url(&gw, "public");
        assert_eq!(get(&format!("{base}/a"), &[]).await.status, 200, "case {i}");
        let r = get(&format!("{base}/b"), &[]).await;
        assert_eq!(r.status, 502, "case {i}: {:?}", r.body);
        assert_eq!(r.error_code(), "upstream_protocol_error", "case {i}");
        assert_eq!(get(&format!("{base}/c"), &[]).await.status, 200, "case {i}");
        assert_eq!(
            metric_value(&gw, OPENED),
            Some(2),
            "case {i}: connection reused"
        );
    }
}

#[tokio::test]
async fn a_broken_chunk_ends_the_response_short_and_the_connection() {
    let addr = scripted_upstream(|n| {
        if n == 0 {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nbad\r\n0\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
        }
    })
    .await;
    let gw = gateway(&one_route(addr, "", "")).await;
    let out = raw(
        gw.listener_addr("public").unwrap(),
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    // The client sees the connection end: at most the head and the good chunk, never a
    // last chunk that would make the body look complete.
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        !out.contains("0\r\n\r\n"),
        "the broken body must not look complete: {out:?}"
    );
    assert!(
        !out.contains("bad"),
        "bytes after the bad chunk line were forwarded"
    );
    assert_eq!(
        get(&format!("{}/x", url(&gw, "public")), &[]).await.status,
        200
    );
    assert_eq!(metric_value(&gw, OPENED), Some(2));
}

#[tokio::test]
async fn bytes_after_the_response_and_close_delimited_bodies_are_not_reused() {
    let addr = scripted_upstream(|n| match n {
        0 => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA".to_vec(),
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
    })
    .await;
    let gw = gateway(&one_route(addr, "", "")).await;
    let base = url(&gw, "public");
    let first = get(&format!("{base}/a"), &[]).await;
    assert_eq!(
        &first.body[..],
        b"ok",
        "bytes past the length were forwarded"
    );
    let second = get(&format!("{base}/b"), &[]).await;
    assert_eq!(
        &second.body[..],
        b"ok",
        "the extra bytes were read as a response"
    );
    assert_eq!(metric_value(&gw, OPENED), Some(2));
    // A body delimited by the close: complete for the client, never reused.
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil-close").await;
    })
    .await;
    let gw = gateway(&one_route(addr, "", "")).await;
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(&r.body[..], b"until-close");
    let r = get(&format!("{}/y", url(&gw, "public")), &[]).await;
    assert_eq!(&r.body[..], b"until-close");
    assert_eq!(metric_value(&gw, OPENED), Some(2));
}

#[tokio::test]
async fn a_timed_out_exchange_never_leaves_its_late_answer_for_the_next_request() {
    // The first answer comes after the request timeout; on a reused connection it would
    // be taken as the answer to the second request.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent_late = std::sync::Arc::new(tokio::sync::Notify::new());
    let sent = sent_late.clone();
    let addr = raw_upstream(move |mut s| {
        let count = count.clone();
        let sent = sent.clone();
        async move {
            for _ in 0..4 {
                read_head(&mut s).await;
                if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")
                        .await;
                    sent.notify_one();
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
                        .await;
                }
            }
        }
    })
    .await;
    let gw = gateway(&one_route(addr, "", "timeouts: {request: 300ms}")).await;
    let base = url(&gw, "public");
    assert_eq!(get(&format!("{base}/a"), &[]).await.status, 504);
    // Once the late answer is on the wire, a reused connection would hold it.
    tokio::time::timeout(Duration::from_secs(5), sent_late.notified())
        .await
        .expect("the late answer was never sent");
    let r = get(&format!("{base}/b"), &[]).await;
    assert_eq!(&r.body[..], b"fresh");
    assert_eq!(metric_value(&gw, OPENED), Some(2));
}

#[tokio::test]
async fn a_client_gone_mid_body_takes_the_upstream_connection_with_it() {
    let addr = raw_upstream(|mut s| async move {
        loop {
            read_head(&mut s).await;
            let big = vec![b'x'; 256 * 1024];
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", big.len());
            if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&big).await.is_err() {
                return;
            }
        }
    })
    .await;
    let gw = gateway(&one_route(addr, "", "")).await;
    {
        let mut c = tokio::net::TcpStream::connect(gw.listener_addr("public").unwrap())
            .await
            .unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf).await.unwrap();
    } // gone after the first bytes
    let r = get(&format!("{}/x", url(&gw, "public")), &[]).await;
    assert_eq!(r.body.len(), 256 * 1024);
    assert_eq!(
        metric_value(&gw, OPENED),
        Some(2),
        "a half-read connection was reused"
    );
}

#[tokio::test]
async fn an_early_answer_is_forwarded_the_body_stops_and_the_connection_is_not_reused() {
    // Catalogue item 85: the upstream refuses (413) after the head, while the client is
    // still sending the body.
    let addr = raw_upstream(|mut s| async move {
        read_head(&mut s).await;
        let _ = s
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\nno")
            .await;
        // Keep reading whatever comes, as a real server would before closing.
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
    let gw = gateway(&one_route(addr, "", "")).await;
    let mut c = tokio::net::TcpStream::connect(gw.listener_addr("public").unwrap())
        .await
        .unwrap();
    c.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nfirst-part")
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&out).ends_with("no") {
        let n = tokio::time::timeout_at(deadline, c.read(&mut buf))
            .await
            .expect("the early answer was not forwarded")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.ends_with("\r\n\r\nno"), "{text}");
    // The upstream connection that was cut short is not reused.
    let r = get(&format!("{}/next", url(&gw, "public")), &[]).await;
    assert_eq!(r.status, 413);
    assert_eq!(metric_value(&gw, OPENED), Some(2));
}
