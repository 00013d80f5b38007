//! Proxy semantics: hop-by-hop headers, client identity headers, Via and loops, request
//! ids, bodies both ways, 100-continue, trailers, HTTP/2 both sides, WebSocket.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn config(up: &Upstream, extra_server: &str, route_extra: &str) -> String {
    format!(
        r#"
server: {{ {extra_server} }}
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  echo: {{endpoints: ["{addr}"]}}
routes:
  - name: all
    match: {{prefix: /}}
    upstream: echo
    {route_extra}
"#,
        addr = up.addr
    )
}

#[tokio::test]
async fn hop_by_hop_headers_never_cross_and_identity_is_overwritten() {
    let up = echo("u").await;
    let gw = gateway(&config(&up, "", "")).await;
    let r = get(
        &format!("{}/h", url(&gw, "public")),
        &[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "s3cret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "gzip"),
            ("trailer", "x-t"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-real-ip", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=10.0.0.3"),
            ("host", "api.test"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("x-hop").is_none(),
        "upstream's Connection-named header reached the client"
    );
    let e = r.echo();
    for h in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
        "http2-settings",
    ] {
        assert!(e.header(h).is_none(), "{h} was forwarded: {:?}", e.headers);
    }
    assert_eq!(e.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(e.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(e.header("x-forwarded-proto"), Some("http"));
    assert_eq!(e.header("x-forwarded-host"), Some("api.test"));
    assert_eq!(
        e.header("forwarded"),
        Some("for=127.0.0.1;proto=http;host=\"api.test\"")
    );
    assert_eq!(e.header("via"), Some("1.1 turnpike"));
    assert_eq!(e.headers["x-forwarded-for"].len(), 1);
}

#[tokio::test]
async fn trusted_proxies_extend_the_chain() {
    let up = echo("u").await;
    let gw = gateway(&config(&up, "trusted_proxies: [127.0.0.0/8]", "")).await;
    let e = get(
        &format!("{}/h", url(&gw, "public")),
        &[
            ("x-forwarded-for", "203.0.113.7, 127.0.0.9"),
            ("x-forwarded-proto", "https"),
            ("via", "1.1 edge"),
        ],
    )
    .await
    .echo();
    assert_eq!(
        e.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.9, 127.0.0.1")
    );
    assert_eq!(e.header("x-real-ip"), Some("203.0.113.7"));
    assert_eq!(e.header("x-forwarded-proto"), Some("https"));
    assert_eq!(e.header("via"), Some("1.1 edge, 1.1 turnpike"));
}

#[tokio::test]
async fn via_loops_are_refused() {
    let up = echo("u").await;
    let gw = gateway(&config(&up, "max_hops: 2", "")).await;
    let base = url(&gw, "public");
    let r = get(&format!("{base}/"), &[("via", "1.1 turnpike")]).await;
    assert_eq!(r.status, 200);
    let r = get(
        &format!("{base}/"),
        &[("via", "1.1 turnpike, 1.1 other, 1.1 turnpike")],
    )
    .await;
    assert_eq!(r.status, 508);
    assert_eq!(r.error_code(), "loop_detected");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn request_ids_are_kept_generated_and_propagated() {
    let up = echo("u").await;
    let gw = gateway(&config(&up, "", "")).await;
    let base = url(&gw, "public");
    let r = get(&format!("{base}/"), &[("x-request-id", "abc-123")]).await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    assert_eq!(r.echo().header("x-request-id"), Some("abc-123"));

    let r = get(
        &format!("{base}/"),
        &[("x-request-id", "bad id with spaces")],
    )
    .await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    assert_eq!(r.echo().header("x-request-id"), Some(id.as_str()));

    let r = get(&format!("{base}/"), &[]).await;
    let id = r.header("x-request-id").unwrap().to_string();
    assert_eq!(r.echo().header("x-request-id"), Some(id.as_str()));
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let up = echo("u").await;
    let gw = gateway(&config(&up, "", "max_body: 8MiB")).await;
    let big = "x".repeat(3 * 1024 * 1024);
    let r = send(request(
        "POST",
        &format!("{}/upload", url(&gw, "public")),
        &[],
        &big,
    ))
    .await;
    assert_eq!(r.echo().body_len, big.len());

    // A chunked upload (no Content-Length), over raw TCP.
    let raw_req = b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let out = raw(
        gw.listener_addr("public").unwrap(),
        raw_req,
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"body_len\":11"), "{out}");
}

#[tokio::test]
async fn expect_100_continue() {
    let up = echo("u").await;
    let gw = gateway(&config(&up, "", "")).await;
    let mut s = tokio::net::TcpStream::connect(gw.listener_addr("public").unwrap())
        .await
        .unwrap();
    s.write_all(b"PUT /c HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"data").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains("200 OK") && text.contains("\"body_len\":4"),
        "{text}"
    );
    assert!(
        !text.contains("\"expect\""),
        "Expect must not be forwarded: {text}"
    );
}

#[tokio::test]
async fn http2_downstream_and_h2c_upstream() {
    let up = echo("u").await;
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  h2: {{endpoints: ["{addr}"], protocol: h2c}}
  h1: {{endpoints: ["{addr}"]}}
routes:
  - {{name: h2, match: {{prefix: /h2}}, upstream: h2}}
  - {{name: h1, match: {{prefix: /h1}}, upstream: h1}}
"#,
        addr = up.addr
    );
    let gw = gateway(&yaml).await;
    let h2_client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    for (path, upstream_version) in [("/h2/x", "HTTP/2.0"), ("/h1/x", "HTTP/1.1")] {
        let req = request("GET", &format!("{}{path}", url(&gw, "public")), &[], "");
        let resp = h2_client.request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let r = read(resp).await;
        let e = r.echo();
        assert_eq!(e.version, upstream_version, "{path}");
        assert_eq!(e.header("via"), Some("2 turnpike"));
        assert!(e
            .header("x-forwarded-host")
            .is_some_and(|h| h.starts_with("127.0.0.1:")));
    }
}

#[tokio::test]
async fn trailers_pass_through_http2() {
    use http_body_util::StreamBody;
    // An h2c upstream answering with data and trailers, as gRPC does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(|_req| async {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let frames = vec![
                Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(
                    b"payload",
                ))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            let body = StreamBody::new(futures_util::stream::iter(frames));
            Ok::<_, std::convert::Infallible>(http::Response::new(body))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    });
    let yaml = format!(
        "listeners: [{{name: public, address: \"127.0.0.1:0\"}}]\naccess_log: {{enabled: false}}\nupstreams:\n  g: {{endpoints: [\"{addr}\"], protocol: h2c}}\nroutes:\n  - {{name: g, match: {{prefix: /}}, upstream: g}}\n"
    );
    let gw = gateway(&yaml).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = client
        .request(request(
            "POST",
            &format!("{}/pkg.Svc/Call", url(&gw, "public")),
            &[("te", "trailers")],
            "x",
        ))
        .await
        .unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"payload");
}

async fn websocket_upstream() -> Upstream {
    upstream_fn(|mut req| async move {
        let wants = req
            .headers()
            .get("upgrade")
            .is_some_and(|v| v == "websocket");
        if !wants {
            return echo_response("ws", req).await;
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        http::Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await
}

const HANDSHAKE: &[u8] = b"GET /chat HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[tokio::test]
async fn websocket_tunnels_after_101_on_allowed_routes_only() {
    let up = websocket_upstream().await;
    let yaml = format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  ws: {{endpoints: ["{addr}"]}}
routes:
  - {{name: chat, match: {{path: /chat}}, websocket: true, upstream: ws}}
  - {{name: plain, match: {{prefix: /}}, upstream: ws}}
"#,
        addr = up.addr
    );
    let gw = gateway(&yaml).await;
    let mut s = tokio::net::TcpStream::connect(gw.listener_addr("public").unwrap())
        .await
        .unwrap();
    s.write_all(HANDSHAKE).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s.write_all(b"ping-frame-bytes").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"ping-frame-bytes");

    // On a route without `websocket: true`, Upgrade is stripped: a plain request.
    let plain = HANDSHAKE.to_vec();
    let plain = String::from_utf8(plain)
        .unwrap()
        .replace("/chat", "/other")
        .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    let out = raw(
        gw.listener_addr("public").unwrap(),
        plain.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!out.contains("\"upgrade\""), "Upgrade forwarded: {out}");
}

#[tokio::test]
async fn no_tunnel_when_the_upstream_refuses_the_upgrade() {
    // The upstream answers 200 to the handshake; a request pipelined after it must be
    // parsed as a request (and routed), never tunnelled.
    let up = echo("plain").await;
    let yaml = format!(
        "listeners: [{{name: public, address: \"127.0.0.1:0\"}}]\naccess_log: {{enabled: false}}\nupstreams:\n  u: {{endpoints: [\"{}\"]}}\nroutes:\n  - {{name: chat, match: {{path: /chat}}, websocket: true, upstream: u}}\n",
        up.addr
    );
    let gw = gateway(&yaml).await;
    let mut bytes = HANDSHAKE.to_vec();
    bytes.extend_from_slice(b"GET /admin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let out = raw(
        gw.listener_addr("public").unwrap(),
        &bytes,
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("HTTP/1.1 404"),
        "the second request must be routed (404 here): {out}"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn clients_cannot_strip_headers_that_policies_add() {
    let up = echo("u").await;
    let policy = r#"policies:
      - type: headers
        request: {set: {x-gateway-auth: "from-policy"}}"#;
    let gw = gateway(&config(&up, "", policy)).await;
    let e = get(
        &format!("{}/x", url(&gw, "public")),
        &[(
            "connection",
            "keep-alive, x-gateway-auth, x-forwarded-for, via",
        )],
    )
    .await
    .echo();
    assert_eq!(e.header("x-gateway-auth"), Some("from-policy"));
    assert_eq!(e.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(e.header("via"), Some("1.1 turnpike"));
}

#[tokio::test]
async fn websocket_tunnels_hold_their_connection_slot() {
    // E63 with tunnels: a connection that became a WebSocket tunnel still counts towards
    // max_connections, so tunnels cannot exceed the cap.
    let up = websocket_upstream().await;
    let gw = gateway(&format!(
        r#"
listeners: [{{name: public, address: "127.0.0.1:0", limits: {{max_connections: 1}}, timeouts: {{first_byte: 1s}}}}]
access_log: {{enabled: false}}
upstreams:
  ws: {{endpoints: ["{addr}"]}}
routes:
  - {{name: chat, match: {{path: /chat}}, websocket: true, upstream: ws}}
"#,
        addr = up.addr
    ))
    .await;
    let addr = gw.listener_addr("public").unwrap();
    let mut tunnel = tokio::net::TcpStream::connect(addr).await.unwrap();
    tunnel.write_all(HANDSHAKE).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    // The only slot is the tunnel's: a second client waits in the backlog, unserved.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET /chat HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(1500), second.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "served past the connection cap while a tunnel was open"
    );
    // When the tunnel closes, its slot frees and the waiting client is served.
    drop(tunnel);
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 "),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}
