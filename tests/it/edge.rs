//! Hostile clients, byte for byte: every item of sections A (framing and smuggling),
//! B (headers and identity), C (paths) and E (slow clients, resources) of
//! bad-inputs.md, sent over raw TCP to a gateway whose `/api` routes go to a capture
//! upstream and whose `/admin` routes answer 403. Each test asserts what the client
//! sees and what reached the upstream (usually: nothing).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::capture::{capture, Captured};
use crate::support::*;

/// A gateway in front of a capture upstream.
struct Edge {
    _gw: turnpike::Gateway,
    addr: SocketAddr,
    cap: Captured,
}

async fn edge(listener_extra: &str) -> Edge {
    let (up, cap) = capture().await;
    let yaml = format!(
        r#"
listeners:
  - name: edge
    address: "127.0.0.1:0"
    timeouts: {{header_read: 1s, first_byte: 1s, body_idle: 1s}}
    {listener_extra}
access_log: {{enabled: false}}
upstreams:
  cap: {{endpoints: ["{up}"]}}
routes:
  - {{name: api, match: {{prefix: /api}}, upstream: cap, websocket: true}}
  - {{name: small, match: {{prefix: /small}}, upstream: cap, max_body: 16B}}
  - {{name: admin, match: {{prefix: /admin}}, respond: {{status: 403, body: admin only}}}}
"#
    );
    let gw = gateway(&yaml).await;
    let addr = gw.listener_addr("edge").unwrap();
    Edge { _gw: gw, addr, cap }
}

impl Edge {
    /// Sends `bytes` in one write and reads until the gateway closes (at most 5 s).
    async fn send(&self, bytes: &[u8]) -> Exchange {
        let started = Instant::now();
        let text = raw(self.addr, bytes, Duration::from_secs(5)).await;
        Exchange {
            text,
            took: started.elapsed(),
        }
    }
}

struct Exchange {
    text: String,
    took: Duration,
}

impl Exchange {
    /// The status codes of every response, in order (interim ones included).
    fn statuses(&self) -> Vec<u16> {
        self.text
            .match_indices("HTTP/1.")
            .filter_map(|(i, _)| self.text.get(i + 9..i + 12)?.parse().ok())
            .collect()
    }

    /// Asserts one response with `status`, and that the gateway closed the connection.
    fn only(&self, status: u16, what: &str) {
        assert_eq!(self.statuses(), [status], "{what}: got\n{}", self.text);
        assert!(
            self.took < Duration::from_secs(4),
            "{what}: the connection was left open"
        );
    }
}

/// A request on the `edge` listener, closing after itself.
fn req(head: &str) -> Vec<u8> {
    format!("{head}\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
}

// ---- A. framing and smuggling ------------------------------------------------------------

#[tokio::test]
async fn a01_cl_with_te_is_400_and_the_smuggled_request_is_never_parsed() {
    let e = edge("").await;
    let out = e
        .send(b"POST /api/a HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    // Refused and closed (Envoy's default, Pingora's since 2025): nothing is forwarded,
    // and the bytes after the head are never read as a request.
    out.only(400, "CL+TE");
    assert!(
        out.text.contains("\"code\":\"bad_request\""),
        "{}",
        out.text
    );
    assert!(
        out.text.to_ascii_lowercase().contains("connection: close"),
        "{}",
        out.text
    );
    assert_eq!(e.cap.text(), "", "a CL+TE request reached the upstream");
}

#[tokio::test]
async fn a02_a04_a05_a07_a09_bad_framing_is_400_and_reaches_nothing() {
    let e = edge("").await;
    let cases: &[&[u8]] = &[
        // A2: two different lengths.
        b"POST /api HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        // A4: lengths that are not plain decimal.
        b"POST /api HTTP/1.1\r\nHost: t\r\nContent-Length: 2, 2\r\n\r\nab",
        b"POST /api HTTP/1.1\r\nHost: t\r\nContent-Length: +2\r\n\r\nab",
        b"POST /api HTTP/1.1\r\nHost: t\r\nContent-Length: 0x2\r\n\r\nab",
        b"POST /api HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\nab",
        b"POST /api HTTP/1.1\r\nHost: t\r\nContent-Length: \r\n\r\nab",
        b"POST /api HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999\r\n\r\nab",
        // A5: a transfer coding that does not end in chunked.
        b"POST /api HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST /api HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        b"POST /api HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
        b"POST /api HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        // A7: control characters in the coding.
        b"POST /api HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n",
        b"POST /api HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chu\x00nked\r\n\r\n0\r\n\r\n",
        b"POST /api HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\r\n\r\n0\r\n\r\n",
        // A8: two codings, the last not chunked.
        b"POST /api HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
        // A9: Transfer-Encoding on HTTP/1.0.
        b"POST /api HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for (i, case) in cases.iter().enumerate() {
        e.send(case)
            .await
            .only(400, &format!("case {i}: {}", String::from_utf8_lossy(case)));
    }
    assert_eq!(e.cap.text(), "", "a malformed request reached the upstream");
}

#[tokio::test]
async fn a03_a04_equal_lengths_are_one_and_leading_zeros_are_decimal() {
    let e = edge("").await;
    e.send(b"POST /api/a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        .await
        .only(200, "two equal lengths");
    let seen = e.cap.text().to_ascii_lowercase();
    assert_eq!(seen.matches("content-length").count(), 1, "{seen}");
    assert!(
        seen.contains("content-length: 3\r\n") && seen.ends_with("\r\n\r\nabc"),
        "{seen}"
    );

    let e = edge("").await;
    e.send(b"POST /api/b HTTP/1.1\r\nHost: t\r\nContent-Length: 010\r\nConnection: close\r\n\r\n0123456789")
        .await
        .only(200, "010");
    let seen = e.cap.text().to_ascii_lowercase();
    assert!(
        seen.contains("content-length: 10\r\n") && seen.ends_with("\r\n\r\n0123456789"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a06_a08_obfuscated_chunked_is_forwarded_canonical() {
    let e = edge("").await;
    for te in [",chunked", "Chunked", "\tchunked", "chunked "] {
        let out = e
            .send(format!("POST /api/te HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: {te}\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n").as_bytes())
            .await;
        out.only(200, te);
    }
    // A8: two TE lines are refused, never forwarded (the catalogue allows either).
    e.send(b"POST /api/te2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await
        .only(400, "two chunked lines");
    let seen = e.cap.text();
    assert_eq!(e.cap.requests(), 4);
    let lower = seen.to_ascii_lowercase();
    assert_eq!(lower.matches("transfer-encoding").count(), 4, "{seen}");
    assert_eq!(
        lower.matches("transfer-encoding: chunked\r\n").count(),
        4,
        "{seen}"
    );
    assert!(
        !seen.contains("Chunked") && !seen.contains(",chunked") && !seen.contains("\tchunked"),
        "{seen}"
    );
}

#[tokio::test]
async fn a10_a11_a13_malformed_header_lines_are_400() {
    let e = edge("").await;
    let cases: &[&[u8]] = &[
        // A10: obs-fold.
        b"GET /api HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n folded\r\n\r\n",
        // A11: whitespace before the colon, inside a name, an empty name, 8-bit name.
        b"GET /api HTTP/1.1\r\nHost: t\r\nX-A : 1\r\n\r\n",
        b"GET /api HTTP/1.1\r\nHost: t\r\nX A: 1\r\n\r\n",
        b"GET /api HTTP/1.1\r\nHost: t\r\n: 1\r\n\r\n",
        b"GET /api HTTP/1.1\r\nHost: t\r\nX-\x80: 1\r\n\r\n",
        // A13: NUL, bare CR, other controls in a value.
        b"GET /api HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n",
        b"GET /api HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
        b"GET /api HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n",
    ];
    for (i, case) in cases.iter().enumerate() {
        e.send(case).await.only(400, &format!("case {i}"));
    }
    assert_eq!(e.cap.text(), "");
}

#[tokio::test]
async fn a12_underscores_in_header_names_are_refused_by_default() {
    let e = edge("").await;
    e.send(&req("GET /api/u HTTP/1.1\r\nX_Forwarded_For: 10.0.0.1"))
        .await
        .only(400, "underscore");
    assert_eq!(e.cap.text(), "");
    let out = e.send(&req("GET /api/u HTTP/1.1\r\nX_Api_Key: k")).await;
    assert!(
        out.text.contains("\"code\":\"bad_request\""),
        "{}",
        out.text
    );

    // `drop` removes them and serves the request.
    let e = edge("http: {underscores_in_headers: drop}").await;
    e.send(&req("GET /api/u HTTP/1.1\r\nX_Api_Key: k"))
        .await
        .only(200, "drop");
    assert!(!e.cap.text().to_ascii_lowercase().contains("x_api_key"));
}

#[tokio::test]
async fn a14_bare_lf_is_accepted_and_forwarded_with_crlf() {
    let e = edge("").await;
    e.send(b"GET /api/lf HTTP/1.1\nHost: t\nX-A: 1\nConnection: close\n\n")
        .await
        .only(200, "bare LF");
    let seen = e.cap.text();
    assert!(seen.contains("x-a: 1\r\n"), "{seen}");
    let bytes = seen.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'\n' {
            assert!(
                i > 0 && bytes[i - 1] == b'\r',
                "bare LF forwarded:\n{seen:?}"
            );
        }
    }
}

#[tokio::test]
async fn a15_a16_a17_host_rules() {
    let e = edge("").await;
    // A15: no Host on HTTP/1.1.
    e.send(b"GET /api HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .only(400, "no Host");
    // A16: two Hosts.
    e.send(b"GET /api HTTP/1.1\r\nHost: t\r\nHost: u\r\nConnection: close\r\n\r\n")
        .await
        .only(400, "two Hosts");
    // A17: an absolute-form target naming another authority.
    e.send(b"GET http://evil/admin/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .only(400, "absolute form, other authority");
    // Invalid Host values.
    for host in ["a b", "user@t", "t:port", "t:99999", "t:", "[::1", ":80"] {
        e.send(
            format!("GET /api HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .only(400, host);
    }
    assert_eq!(e.cap.text(), "");
    // The same authority in both: routed, and Host is what was routed on.
    e.send(b"GET http://t/api/abs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .only(200, "absolute form, same authority");
    let seen = e.cap.text();
    assert!(seen.starts_with("GET /api/abs HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("host: t\r\n"), "{seen}");
}

#[tokio::test]
async fn a18_a19_bad_request_lines() {
    let e = edge("").await;
    let cases: &[&[u8]] = &[
        b"GET  /api HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /api  HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /api\r\n\r\n",
        b"GET /api HTTP/1.2\r\nHost: t\r\n\r\n",
        b"GET /api HTTP/2.0\r\nHost: t\r\n\r\n",
        b"G(T /api HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /api/a b HTTP/1.1\r\nHost: t\r\n\r\n",
    ];
    for (i, case) in cases.iter().enumerate() {
        e.send(case)
            .await
            .only(400, &format!("case {i}: {}", String::from_utf8_lossy(case)));
    }
    // HTTP/1.0 is refused by default (Envoy's edge profile)...
    e.send(b"GET /api HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .only(505, "HTTP/1.0");
    assert_eq!(e.cap.text(), "");
    // ...and served, without keep-alive, when allowed.
    let e = edge("http: {accept_http10: true}").await;
    e.send(b"GET /api/old HTTP/1.0\r\nHost: t\r\n\r\n")
        .await
        .only(200, "HTTP/1.0 allowed");
    assert_eq!(e.cap.requests(), 1);
}

#[tokio::test]
async fn a19_a_fragment_in_the_target_is_400() {
    // A client never sends a fragment (RFC 9112 §3.2); one that does is refused before
    // routing, so that no part of the gateway can read the target differently.
    let e = edge("").await;
    for line in [
        "GET /api#/../admin HTTP/1.1",
        "GET /admin#x HTTP/1.1",
        "GET /api# HTTP/1.1",
    ] {
        let out = e.send(&req(line)).await;
        out.only(400, line);
        assert!(out.text.contains("fragment"), "{}", out.text);
    }
    assert_eq!(
        e.cap.text(),
        "",
        "a target with a fragment reached the upstream"
    );
}

#[tokio::test]
async fn a20_a21_broken_chunked_bodies_abort_the_upstream_request_and_close() {
    let e = edge("").await;
    let long_ext = format!("3;{}\r\nabc\r\n0\r\n\r\n", "x".repeat(20 * 1024));
    let cases: Vec<Vec<u8>> = [
        "0x1\r\na\r\n0\r\n\r\n",
        "-1\r\na\r\n0\r\n\r\n",
        "11111111111111111\r\na\r\n0\r\n\r\n",
        "zz\r\na\r\n0\r\n\r\n",
        "3\r\nabcX\r\n0\r\n\r\n",
        "3;a=\"b\rc\"\r\nabc\r\n0\r\n\r\n",
        long_ext.as_str(),
    ]
    .iter()
    .map(|body| format!("POST /api/c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{body}GET /admin/smuggled HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes())
    .collect();
    for (i, case) in cases.iter().enumerate() {
        let out = e.send(case).await;
        out.only(400, &format!("case {i}"));
        assert!(
            !out.text.contains("admin only"),
            "case {i}: the request after the body was parsed"
        );
    }
    // The upstream may have seen the start of a request, never a complete one, and no
    // response from it reached the client.
    assert!(!e.cap.text().contains("smuggled"));
    assert!(
        !e.cap.text().contains("0\r\n\r\n"),
        "a broken body was completed upstream"
    );
}

#[tokio::test]
async fn a21_framing_routing_and_identity_fields_in_trailers_are_not_forwarded() {
    // An HTTP/1.1 upstream gets no request trailers at all from hyper's client, so the
    // filter is proven against an HTTP/2 upstream, which receives them as a HEADERS
    // frame and reports every trailer it saw.
    use http_body_util::BodyExt;
    let up = upstream_fn(|req| async move {
        let collected = req.into_body().collect().await.unwrap();
        let mut names: Vec<String> = collected
            .trailers()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(
            names.join(";"),
        )))
    })
    .await;
    let gw = gateway(&format!(
        r#"
listeners: [{{name: edge, address: "127.0.0.1:0"}}]
access_log: {{enabled: false}}
upstreams:
  h2: {{endpoints: ["{}"], protocol: h2c}}
routes:
  - {{name: api, match: {{prefix: /api}}, upstream: h2}}
"#,
        up.addr
    ))
    .await;
    let text = raw(
        gw.listener_addr("edge").unwrap(),
        b"POST /api/t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nContent-Length: 99\r\nHost: evil\r\nAuthorization: x\r\nX-Consumer-Id: admin\r\nX-Forwarded-Client-Cert: forged\r\nX-Checksum: 1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    let seen = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    // The harmless trailer arrives (so trailers do reach the upstream), nothing else.
    assert!(seen.contains("x-checksum=1"), "{text}");
    for banned in [
        "content-length",
        "host=",
        "authorization",
        "x-consumer-id",
        "x-forwarded-client-cert",
    ] {
        assert!(
            !seen.contains(banned),
            "{banned} crossed in a trailer: {text}"
        );
    }
}

#[tokio::test]
async fn a22_a_get_body_is_framed_and_never_a_second_request() {
    let e = edge("").await;
    let smuggled = "GET /admin/x HTTP/1.1\r\nHost: t\r\n\r\n";
    let out = e
        .send(format!("GET /api/g HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{smuggled}", smuggled.len()).as_bytes())
        .await;
    out.only(200, "GET with a body");
    assert_eq!(
        e.cap.requests(),
        2,
        "the body is forwarded as a body (it holds a request line)"
    );
    let seen = e.cap.text();
    assert!(
        seen.contains(&format!("content-length: {}\r\n", smuggled.len())),
        "{seen}"
    );
    assert!(seen.ends_with(&format!("\r\n\r\n{smuggled}")), "{seen}");
}

#[tokio::test]
async fn a23_an_early_answer_closes_instead_of_parsing_the_unread_body() {
    let e = edge("").await;
    let smuggled = "GET /api/smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let out = e
        .send(
            format!(
                "POST /admin/x HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            )
            .as_bytes(),
        )
        .await;
    out.only(403, "early answer");
    assert!(
        out.text.to_ascii_lowercase().contains("connection: close"),
        "{}",
        out.text
    );
    assert_eq!(e.cap.text(), "", "the body was parsed as a request");
}

#[tokio::test]
async fn a24_pipelined_requests_stop_at_the_first_malformed_one() {
    let e = edge("").await;
    let mut batch = String::new();
    for i in 1..=10 {
        if i == 5 {
            batch.push_str("GET /api/5 HTTP/1.1\r\nHost: t\r\nX A: broken\r\n\r\n");
        } else {
            batch.push_str(&format!("GET /api/{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
        }
    }
    let out = e.send(batch.as_bytes()).await;
    assert_eq!(out.statuses(), [200, 200, 200, 200, 400], "{}", out.text);
    let seen = e.cap.text();
    assert_eq!(e.cap.requests(), 4, "{seen}");
    for i in 6..=10 {
        assert!(
            !seen.contains(&format!("/api/{i} ")),
            "request {i} was processed"
        );
    }
}

#[tokio::test]
async fn a25_expect_continue_over_the_limit_is_413_without_100() {
    let e = edge("").await;
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(
        b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    // Within the limit: 100 Continue, then the answer.
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 25];
    s.read_exact(&mut head).await.unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 100 Continue\r\n"),
        "{:?}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"body").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out).contains("HTTP/1.1 200 "));
    assert!(e.cap.text().ends_with("\r\n\r\nbody"));
}

// ---- B. headers and identity -------------------------------------------------------------

#[tokio::test]
async fn b26_b27_b28_b30_b31_client_headers_that_must_not_cross() {
    let e = edge("").await;
    let head = "GET /api/h HTTP/1.1\r\nHost: t\r\nConnection: close, X-Secret\r\nX-Secret: s3cret\r\n\
        Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        TE: gzip\r\nTrailer: X-T\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\
        X-Forwarded-For: 10.0.0.1\r\nX-Real-IP: 10.0.0.2\r\nForwarded: for=10.0.0.3\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\
        X-Forwarded-Client-Cert: Hash=abc;Subject=\"CN=admin\"\r\nX-Consumer-Id: admin\r\n\
        X-Consumer-Username: root\r\nX-Gateway-User: admin\r\nX-Envoy-Original-Path: /admin\r\n\r\n";
    e.send(head.as_bytes())
        .await
        .only(200, "hop-by-hop and spoofed headers");
    let seen = e.cap.text().to_ascii_lowercase();
    for gone in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "\r\nte:",
        "\r\ntrailer:",
        "upgrade",
        "http2-settings",
        "10.0.0.",
        "https",
        "evil.example",
        "x-forwarded-client-cert",
        "x-consumer",
        "x-gateway-user",
        "x-envoy",
    ] {
        assert!(
            !seen.contains(gone),
            "`{gone}` reached the upstream:\n{seen}"
        );
    }
    for kept in [
        "x-forwarded-for: 127.0.0.1\r\n",
        "x-real-ip: 127.0.0.1\r\n",
        "x-forwarded-proto: http\r\n",
        "x-forwarded-host: t\r\n",
        "forwarded: for=127.0.0.1;proto=http;host=\"t\"\r\n",
        "via: 1.1 turnpike\r\n",
    ] {
        assert!(
            seen.contains(kept),
            "`{}` missing upstream:\n{seen}",
            kept.trim()
        );
    }
}

#[tokio::test]
async fn b29_no_tunnel_without_101_so_the_pipelined_request_is_routed() {
    let e = edge("").await;
    // The capture upstream answers 200, not 101: the connection stays HTTP, and the
    // second request is routed (403 on /admin), never written to the upstream.
    let out = e
        .send(b"GET /api/ws HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /admin/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(out.statuses(), [200, 403], "{}", out.text);
    assert!(!e.cap.text().contains("/admin"), "{}", e.cap.text());
}

#[tokio::test]
async fn b32_a_via_loop_is_508() {
    let e = edge("").await;
    e.send(&req(
        "GET /api/v HTTP/1.1\r\nVia: 1.1 turnpike, 1.1 turnpike, 1.1 turnpike, 1.1 turnpike",
    ))
    .await
    .only(508, "Via loop");
    assert_eq!(e.cap.text(), "");
    e.send(&req("GET /api/v HTTP/1.1\r\nVia: 1.1 other"))
        .await
        .only(200, "foreign Via");
    assert!(e
        .cap
        .text()
        .to_ascii_lowercase()
        .contains("via: 1.1 other, 1.1 turnpike\r\n"));
}

#[tokio::test]
async fn b33_b34_b35_oversized_heads() {
    let e = edge("").await;
    let line = |n: usize| format!("GET /api HTTP/1.1\r\nX-Big: {}", "a".repeat(n));
    // One header over the 16 KiB line limit, and one of 100 KB.
    e.send(&req(&line(17 * 1024)))
        .await
        .only(431, "17 KiB header");
    e.send(&req(&line(100 * 1024)))
        .await
        .only(431, "100 KB header");
    // 101 headers.
    let many: String = (0..101).map(|i| format!("\r\nX-H{i}: v")).collect();
    e.send(&req(&format!("GET /api HTTP/1.1{many}")))
        .await
        .only(431, "101 headers");
    // A 65 KiB block of lines within the per-line limit; and about 500 KB.
    let block = |lines: usize| -> String {
        (0..lines)
            .map(|i| format!("\r\nX-B{i}: {}", "b".repeat(8000)))
            .collect()
    };
    e.send(&req(&format!("GET /api HTTP/1.1{}", block(9))))
        .await
        .only(431, "72 KB block");
    e.send(&req(&format!("GET /api HTTP/1.1{}", block(62))))
        .await
        .only(431, "500 KB block");
    // URIs: over 8 KiB, and 70 KB.
    e.send(&req(&format!("GET /api/{} HTTP/1.1", "u".repeat(9 * 1024))))
        .await
        .only(414, "9 KiB URI");
    e.send(&req(&format!(
        "GET /api/{} HTTP/1.1",
        "u".repeat(70 * 1000)
    )))
    .await
    .only(414, "70 KB URI");
    assert_eq!(e.cap.text(), "");
    // Just under the limits: served.
    e.send(&req(&format!(
        "GET /api/{} HTTP/1.1{}",
        "u".repeat(8000),
        block(7)
    )))
    .await
    .only(200, "within the limits");
}

// ---- C. paths ------------------------------------------------------------------------------

#[tokio::test]
async fn c36_c44_paths_are_normalized_before_routing() {
    let e = edge("").await;
    let cases: &[(&str, u16)] = &[
        // C36, C37: dot segments, plain and encoded, reach the admin policy.
        ("/api/../admin/x", 403),
        ("/api/./../admin/x", 403),
        ("/api/%2e%2e/admin", 403),
        ("/api/%2E%2e/admin", 403),
        ("/api/.%2e/admin", 403),
        ("/api/..%2F..%2Fadmin", 400),
        // C39: merged slashes.
        ("//admin/x", 403),
        ("/api//../admin", 403),
        // C40: encoded slash and backslash.
        ("/api/%2fadmin", 400),
        ("/api/%5cadmin", 400),
        ("/api/%2Fadmin", 400),
        ("/api\\..\\admin", 400),
        // C41: matrix parameters are refused by default.
        ("/api;x=y/../admin", 400),
        ("/admin;/x", 400),
        // C42: controls, raw or encoded.
        ("/api/%00", 400),
        ("/api/%0d%0a", 400),
        ("/api/%7f", 400),
        ("/api/%zz", 400),
        // C44: case-sensitive, no Unicode folding.
        ("/ADMIN/x", 404),
        ("/%EF%BC%8Fadmin", 404),
    ];
    for (path, status) in cases {
        e.send(&req(&format!("GET {path} HTTP/1.1")))
            .await
            .only(*status, path);
    }
    assert_eq!(e.cap.text(), "", "a path in the table reached the upstream");
    // A raw DEL is refused by the parser.
    e.send(b"GET /api/\x7f HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .only(400, "raw DEL");
    // C38: double encoding is decoded once only, and forwarded as sent.
    e.send(&req("GET /api/%252e%252e/admin HTTP/1.1"))
        .await
        .only(200, "double encoding");
    // Encoded unreserved characters are decoded; other escapes stay (upper-case hex).
    e.send(&req("GET /api/%7euser/%c3%a9?q=%2e HTTP/1.1"))
        .await
        .only(200, "unreserved");
    let seen = e.cap.text();
    assert!(
        seen.starts_with("GET /api/%252e%252e/admin HTTP/1.1\r\n"),
        "{seen}"
    );
    assert!(
        seen.contains("GET /api/~user/%C3%A9?q=%2e HTTP/1.1\r\n"),
        "{seen}"
    );
}

#[tokio::test]
async fn c39_c40_c41_path_rules_can_be_relaxed() {
    let e =
        edge("http: {merge_slashes: false, encoded_slashes: keep, allow_semicolons: true}").await;
    // Without merging, `//admin/x` is not `/admin/x`: it matches no route, and what is
    // routed is exactly what would be forwarded.
    e.send(&req("GET //admin/x HTTP/1.1"))
        .await
        .only(404, "no merge");
    e.send(&req("GET /api//x HTTP/1.1"))
        .await
        .only(200, "no merge, api");
    e.send(&req("GET /api/a%2fb HTTP/1.1"))
        .await
        .only(200, "kept encoded slash");
    // `admin;` is a segment of its own: no route, not the admin route, and never
    // forwarded to an upstream that would strip the parameter.
    e.send(&req("GET /admin;/x HTTP/1.1"))
        .await
        .only(404, "semicolon stays data");
    e.send(&req("GET /api;x=y/../admin HTTP/1.1"))
        .await
        .only(403, "semicolon, dot segment");
    let seen = e.cap.text();
    assert!(seen.contains("GET /api//x HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("GET /api/a%2Fb HTTP/1.1\r\n"), "{seen}");
    assert!(!seen.contains("admin"), "{seen}");
}

// ---- E. slow clients and resources -------------------------------------------------------

/// Reads until the peer closes; returns what was read and when it closed.
async fn until_closed(s: &mut TcpStream, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn e58_slowloris_headers_are_cut_at_the_header_timeout() {
    let e = edge("").await;
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(b"GET /api/slow HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let dripping = async {
        for b in b"X-Slow: ".iter().cycle() {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), dripping).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a dripping head was kept open for {took:?}"
    );
    assert_eq!(e.cap.text(), "");
}

#[tokio::test]
async fn e59_a_silent_connection_is_closed_at_the_first_byte_timeout() {
    let e = edge("").await;
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    let (_, took) = until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_secs(3),
        "silence kept open for {took:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed before the timeout: {took:?}"
    );
}

#[tokio::test]
async fn e61_a_stalled_body_is_408_and_the_upstream_request_is_aborted() {
    let e = edge("").await;
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(b"POST /api/stall HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
        .await
        .unwrap();
    let (text, took) = until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        text.starts_with("HTTP/1.1 408 "),
        "{text:?} after {took:?}; upstream saw {:?}",
        e.cap.text()
    );
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        e.cap.requests(),
        1,
        "the upstream saw the start of the request"
    );
    assert!(e.cap.text().ends_with("\r\n\r\nab"), "{}", e.cap.text());
}

#[tokio::test]
async fn e63_past_the_connection_cap_new_connections_wait_and_old_ones_are_served() {
    let e = edge("limits: {max_connections: 4}").await;
    let mut first = TcpStream::connect(e.addr).await.unwrap();
    let get = b"GET /api/keep HTTP/1.1\r\nHost: t\r\n\r\n";
    first.write_all(get).await.unwrap();
    let mut buf = [0u8; 256];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
    // Ten more connections that say nothing: three are accepted, the rest wait in the
    // kernel's backlog (the TCP handshake completes there, so connect succeeds).
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(e.addr).await.unwrap());
    }
    let active = || metric_value(&e._gw, "turnpike_connections_active").unwrap_or(0);
    eventually(Duration::from_secs(5), "the cap is reached", || async {
        (active() == 4).then_some(())
    })
    .await;
    // The established client is still served; its round trip gives the accept loop
    // every chance to take more connections if it were not capped.
    first.write_all(get).await.unwrap();
    let n = first.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(active(), 4, "more connections were accepted than the cap");
    assert_eq!(
        metric_value(&e._gw, "turnpike_connections_total"),
        Some(4),
        "accepted past the cap"
    );
    drop(first);
    // A new client is served once silent connections time out and free their slots.
    let out = e.send(&req("GET /api/late HTTP/1.1")).await;
    out.only(200, "after the flood");
}

#[tokio::test]
async fn e64_bodies_over_the_limit() {
    let e = edge("").await;
    // Declared: 413 before reading (nothing of the body is sent).
    let mut s = TcpStream::connect(e.addr).await.unwrap();
    s.write_all(b"POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("\"code\":\"payload_too_large\""), "{text}");
    assert_eq!(e.cap.text(), "");
    // Chunked, crossing the limit mid-stream: 413 and close; the upstream saw at most
    // the limit.
    let out = e
        .send(b"POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n")
        .await;
    out.only(413, "chunked over the limit");
    let seen = e.cap.text();
    let body_bytes = seen.matches("12345678").count() * 8;
    assert!(
        body_bytes <= 16,
        "the upstream saw {body_bytes} body bytes:\n{seen}"
    );
    assert!(
        !seen.ends_with("0\r\n\r\n"),
        "an over-limit body was completed upstream"
    );
}

#[tokio::test]
async fn e67_a_connection_closes_after_its_request_cap() {
    let e = edge("limits: {max_requests_per_connection: 5}").await;
    let batch: String = (1..=8)
        .map(|i| format!("GET /api/{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    let out = e.send(batch.as_bytes()).await;
    assert_eq!(out.statuses(), [200; 5], "{}", out.text);
    let last = out.text.rfind("HTTP/1.1 200").unwrap();
    assert!(
        out.text[last..]
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        out.text
    );
    assert_eq!(e.cap.requests(), 5);
}

/// A gateway on one listener (`edge`, with `timeouts`) in front of an upstream that
/// answers every request with `size` bytes.
async fn big_body_gateway(size: usize, timeouts: &str) -> (Upstream, turnpike::Gateway) {
    let big = upstream_fn(move |_req| async move {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            size
        ])))
    })
    .await;
    let gw = gateway(&format!(
        r#"
listeners:
  - name: edge
    address: "127.0.0.1:0"
    timeouts: {{{timeouts}}}
access_log: {{enabled: false}}
upstreams:
  big: {{endpoints: ["{}"]}}
routes:
  - {{name: big, match: {{prefix: /}}, upstream: big}}
"#,
        big.addr
    ))
    .await;
    (big, gw)
}

fn active_connections(gw: &turnpike::Gateway) -> i64 {
    metric_value(gw, "turnpike_connections_active").unwrap_or(-1)
}

/// An HTTP/2 (h2c) connection to the `edge` listener, with the given stream window.
async fn h2_client(
    gw: &turnpike::Gateway,
    window: u32,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = TcpStream::connect(gw.listener_addr("edge").unwrap())
        .await
        .unwrap();
    let (tx, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(window)
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    tx
}

#[tokio::test]
async fn e62_a_client_that_stops_reading_is_closed_at_the_write_timeout() {
    let (_big, gw) = big_body_gateway(32 << 20, "write_idle: 1s").await;
    let mut s = TcpStream::connect(gw.listener_addr("edge").unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the connection is open", || async {
        (active_connections(&gw) == 1).then_some(())
    })
    .await;
    // The client reads nothing: the gateway's writes stall once the socket buffers are
    // full, and the connection is closed at the write timeout.
    eventually(
        Duration::from_secs(10),
        "the stalled connection is closed",
        || async { (active_connections(&gw) == 0).then_some(()) },
    )
    .await;
    drop(s);
}

#[tokio::test]
async fn e65_compressed_bodies_pass_through_untouched() {
    // The gateway does not inflate request bodies, so a "decompression bomb" is just
    // bytes: forwarded as sent, with its Content-Encoding, within the body limit.
    let e = edge("").await;
    let body: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut request = format!(
        "POST /api/gz HTTP/1.1\r\nHost: t\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    e.send(&request).await.only(200, "gzip body");
    let seen = e.cap.bytes();
    assert!(seen.ends_with(&body), "the body was changed");
    assert!(String::from_utf8_lossy(&seen).contains("content-encoding: gzip\r\n"));
}

#[tokio::test]
async fn d51_an_http2_client_that_never_opens_its_window_is_closed() {
    let (_big, gw) = big_body_gateway(1 << 20, "write_idle: 1s").await;
    let mut tx = h2_client(&gw, 0).await;
    let req = http::Request::get("http://t/big")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The body is never read and the window never opened: the gateway cannot send a
    // byte of it, and closes the connection at the write timeout.
    eventually(
        Duration::from_secs(10),
        "the stalled HTTP/2 connection is closed",
        || async { (active_connections(&gw) == 0).then_some(()) },
    )
    .await;
    drop(resp);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_at_the_keep_alive_timeout_but_a_streaming_one_is_not() {
    let (_big, gw) = big_body_gateway(1 << 20, "keep_alive: 1s, write_idle: 60s").await;
    // A response still streaming (its body unread, the window open) keeps the
    // connection: it is busy, not idle.
    let mut tx = h2_client(&gw, 65_535).await;
    let req = http::Request::get("http://t/big")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    // A negative check: nothing may happen for 2.5 keep-alive periods.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        active_connections(&gw),
        1,
        "a connection with a response in progress was closed"
    );
    // Once the body is read to the end, nothing is in flight: GOAWAY after 1 s.
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), 1 << 20);
    eventually(
        Duration::from_secs(5),
        "the idle connection is closed",
        || async { (active_connections(&gw) == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a12_underscores_allow_forwards_the_header_as_sent() {
    let e = edge("http: {underscores_in_headers: allow}").await;
    e.send(&req("GET /api/u HTTP/1.1\r\nX_Api_Key: k"))
        .await
        .only(200, "allow");
    assert!(
        e.cap
            .text()
            .to_ascii_lowercase()
            .contains("x_api_key: k\r\n"),
        "{}",
        e.cap.text()
    );
    // Identity headers stay internal in their `_` spelling even when underscores pass.
    e.send(&req("GET /api/u HTTP/1.1\r\nX_Consumer_Id: admin"))
        .await
        .only(200, "allow");
    assert!(!e.cap.text().to_ascii_lowercase().contains("x_consumer_id"));
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed_at_the_keep_alive_timeout() {
    let (up, _cap) = capture().await;
    // header_read (which also bounds an idle HTTP/1.1 connection) is far away, so only
    // keep_alive can close the connection within the test's deadline.
    let gw = gateway(&format!(
        r#"
listeners:
  - name: edge
    address: "127.0.0.1:0"
    timeouts: {{header_read: 60s, keep_alive: 300ms}}
access_log: {{enabled: false}}
upstreams:
  cap: {{endpoints: ["{up}"]}}
routes:
  - {{name: api, match: {{prefix: /api}}, upstream: cap}}
"#
    ))
    .await;
    let mut s = TcpStream::connect(gw.listener_addr("edge").unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /api/k HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 "));
    assert!(!String::from_utf8_lossy(&buf[..n])
        .to_ascii_lowercase()
        .contains("connection: close"));
    let idle_from = Instant::now();
    // The server closes the idle connection: EOF, not a timeout of this read.
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the idle connection was left open")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf[..n]));
    assert!(idle_from.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn refusals_made_by_the_http1_parser_are_logged_and_counted() {
    let (up, cap) = capture().await;
    let dir = std::env::temp_dir().join(format!("tp-it-refusals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("access.log");
    let gw = gateway(&format!(
        r#"
listeners: [{{name: edge, address: "127.0.0.1:0", timeouts: {{header_read: 500ms}}}}]
access_log: {{enabled: true, output: "{}"}}
upstreams:
  cap: {{endpoints: ["{up}"]}}
routes:
  - {{name: api, match: {{prefix: /api}}, upstream: cap}}
"#,
        log.display()
    ))
    .await;
    let addr = gw.listener_addr("edge").unwrap();
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long = "a".repeat(9000);
    let cases: [(String, &str, &str); 7] = [
        (
            format!("GET /api/h HTTP/1.1\r\nHost: t\r\n{many}\r\n"),
            "431",
            "headers_too_large",
        ),
        (
            "POST /api/c HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"
                .into(),
            "400",
            "bad_request",
        ),
        (
            "GET /api/a b HTTP/1.1\r\nHost: t\r\n\r\n".into(),
            "400",
            "bad_request",
        ),
        (
            format!("GET /api/{long} HTTP/1.1\r\nHost: t\r\n\r\n"),
            "414",
            "uri_too_long",
        ),
        (
            "PUT /api/e HTTP/1.1\r\nHost: t\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx".into(),
            "417",
            "expectation_failed",
        ),
        (
            "GET /api/x HTTP/1.1\r\nHost: t\r\nX-Half: ".into(),
            "408",
            "request_timeout",
        ),
        (
            "GET /api/x#frag HTTP/1.1\r\nHost: t\r\n\r\n".into(),
            "400",
            "bad_request",
        ),
    ];
    for (bytes, status, code) in &cases {
        let text = raw(addr, bytes.as_bytes(), Duration::from_secs(5)).await;
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        // Answered by the gateway: its JSON error, its request id, and the close.
        assert!(text.contains(&format!("\"code\":\"{code}\"")), "{text}");
        assert!(text.contains("\r\nx-request-id: "), "{text}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    }
    assert_eq!(cap.text(), "", "a refused request reached the upstream");
    let lines = eventually(Duration::from_secs(5), "seven access-log lines", || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            let lines: Vec<serde_json::Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            (lines.len() == 7).then_some(lines)
        }
    })
    .await;
    for (line, (_, status, code)) in lines.iter().zip(&cases) {
        assert_eq!(line["status"].to_string(), *status, "{line}");
        assert_eq!(line["error"], *code, "{line}");
        assert_eq!(line["route"], "", "{line}");
        assert_eq!(line["listener"], "edge", "{line}");
    }
    assert_eq!(
        metric_value(&gw, "turnpike_http1_parse_errors_total"),
        Some(7)
    );
    assert_eq!(
        metric_value(
            &gw,
            "turnpike_requests_total{route=\"\",method=\"OTHER\",status_class=\"4xx\",upstream=\"\"}"
        ),
        Some(7)
    );
    drop(gw);
    let _ = std::fs::remove_dir_all(dir);
}
