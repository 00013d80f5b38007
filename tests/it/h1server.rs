//! The own HTTP/1.1 server (src/server/h1.rs), at the byte level: response framing to
//! HTTP/1.1 and HTTP/1.0 clients, keep-alive, a client that leaves mid-request, bytes a
//! WebSocket client sends with its handshake, and HTTP/2 with prior knowledge on the same
//! port. The catalogue's items (A, B, E) are in edge.rs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// An upstream that answers every request with `response` (raw bytes), on keep-alive.
async fn raw_answer(response: &'static [u8]) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        if s.write_all(response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn config(up: SocketAddr, listener: &str) -> String {
    format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"{listener}}}]
access_log: {{enabled: false}}
upstreams:
  u: {{endpoints: ["{up}"]}}
routes:
  - {{name: all, match: {{prefix: /}}, upstream: u}}
"#
    )
}

/// Reads one response (head and body as its framing says, chunked decoded) from `s`.
async fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response head")
            .unwrap();
        assert!(n > 0, "closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let mut rest = buf[head_end..].to_vec();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap());
    if let Some(n) = length {
        while rest.len() < n {
            let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(got > 0);
            rest.extend_from_slice(&chunk[..got]);
        }
        rest.truncate(n);
        return (head, rest);
    }
    if head.contains("transfer-encoding: chunked") {
        while !rest.windows(5).any(|w| w == b"0\r\n\r\n") {
            let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(got > 0);
            rest.extend_from_slice(&chunk[..got]);
        }
        return (head, dechunk(&rest));
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    (head, rest)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line]).unwrap(), 16).unwrap();
        b = &b[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked_to_http11_and_close_delimited_to_http10() {
    let up =
        raw_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
            .await;
    let gw = gateway(&config(up, ", http: {accept_http10: true}")).await;
    let addr = gw.listener_addr("public").unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(
        head.contains("\r\ndate: "),
        "every response has a Date: {head}"
    );
    assert_eq!(body, b"hello");
    // The same connection carries the next request.
    s.write_all(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (_, body) = read_response(&mut s).await;
    assert_eq!(body, b"hello");
    // HTTP/1.0 has no chunked coding: the body ends with the connection.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /c HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let (head, body) = read_response(&mut s).await;
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert_eq!(body, b"hello");
}

#[tokio::test]
async fn an_http10_client_that_asks_for_keep_alive_keeps_its_connection() {
    let up = raw_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let gw = gateway(&config(up, ", http: {accept_http10: true}")).await;
    let mut s = TcpStream::connect(gw.listener_addr("public").unwrap())
        .await
        .unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /k HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.contains("connection: keep-alive\r\n"), "{head}");
        assert_eq!(body, b"ok");
    }
    // Without it, HTTP/1.0 closes after the response.
    s.write_all(b"GET /k HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut s).await;
    assert!(head.contains("connection: close\r\n"), "{head}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the gateway closes")
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_cancels_the_upstream_call() {
    // The upstream reads the request and never answers; it notes when the gateway
    // closes the upstream connection (the call was cancelled).
    let closed = Arc::new(AtomicUsize::new(0));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let noted = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let noted = noted.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                noted.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let gw = gateway(&config(up, "")).await;
    let mut s = TcpStream::connect(gw.listener_addr("public").unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the request in flight", || {
        let v = metric_value(&gw, "turnpike_requests_in_flight");
        async move { (v == Some(1)).then_some(()) }
    })
    .await;
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    drop(s);
    eventually(
        Duration::from_secs(5),
        "the upstream call cancelled",
        || {
            let n = closed.load(Ordering::SeqCst);
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(metric_value(&gw, "turnpike_requests_in_flight"), Some(0));
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let up = echo("p").await;
    let gw = gateway(&config(up.addr, "")).await;
    let mut s = TcpStream::connect(gw.listener_addr("public").unwrap())
        .await
        .unwrap();
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.extend_from_slice(format!("GET /n{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    batch.extend_from_slice(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    batch.extend_from_slice(b"GET /last HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(&batch).await.unwrap();
    for want in ["/n0", "/n1", "/n2", "/n3", "/n4", "/body", "/last"] {
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("http/1.1 200"), "{want}: {head}");
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo["uri"], want, "{echo}");
        if want == "/body" {
            assert_eq!(echo["body_len"], 3, "{echo}");
        }
    }
    assert_eq!(up.hits(), 7);
}

#[tokio::test]
async fn bytes_sent_with_a_websocket_handshake_reach_the_upstream() {
    // A client may send its first frame right behind the handshake, before the 101: those
    // bytes were read with the head and must go through the tunnel, first.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                    .await;
                let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                let mut echoed = seen[end..].to_vec();
                loop {
                    if !echoed.is_empty() && s.write_all(&echoed).await.is_err() {
                        return;
                    }
                    echoed.clear();
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => echoed.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    let yaml = format!(
        "listeners: [{{name: public, address: \"127.0.0.1:0\"}}]\naccess_log: {{enabled: false}}\nupstreams:\n  u: {{endpoints: [\"{up}\"]}}\nroutes:\n  - {{name: chat, match: {{path: /chat}}, websocket: true, upstream: u}}\n"
    );
    let gw = gateway(&yaml).await;
    let mut s = TcpStream::connect(gw.listener_addr("public").unwrap())
        .await
        .unwrap();
    let mut bytes = b"GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
    bytes.extend_from_slice(b"early-frame");
    s.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"early-frame") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the early frame echoed")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    s.write_all(b"later").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"later");
}

#[tokio::test]
async fn http2_with_prior_knowledge_and_http11_share_a_plain_port() {
    let up = echo("u").await;
    let gw = gateway(&config(up.addr, "")).await;
    let base = url(&gw, "public");
    let h2 = reqwest_like_h2(&format!("{base}/two")).await;
    assert_eq!(h2, http::Version::HTTP_2);
    let r = get(&format!("{base}/one"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 2);
}

/// Sends one request over HTTP/2 with prior knowledge; returns the response's version.
async fn reqwest_like_h2(url: &str) -> http::Version {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let uri: http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(url)
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.version()
}
