//! Entry points for the fuzz targets in `fuzz/` and for the tests that replay their
//! corpus: each takes arbitrary bytes, runs the code a client's request goes through, and
//! panics only when an invariant breaks. Not part of the gateway's API.

use std::sync::OnceLock;

use http::request::Parts;

use super::checks;
use super::normalize::{self, EncodedSlashes, PathRules};
use crate::runtime::snapshot::ListenerSettings;
use crate::targets::ProxySettings;

/// Path normalization: whatever it accepts is canonical (normalizing again changes
/// nothing), starts with `/`, and has no dot segment, empty segment (when merging), or
/// escape that could decode into a separator or a control.
pub fn normalize_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for rules in [
        PathRules::default(),
        PathRules {
            merge_slashes: false,
            encoded_slashes: EncodedSlashes::Keep,
            allow_semicolons: true,
        },
    ] {
        let Ok(out) = normalize::path(text, &rules) else {
            continue;
        };
        assert_canonical(&out, &rules);
    }
}

fn assert_canonical(out: &str, rules: &PathRules) {
    assert!(out.starts_with('/'), "{out:?}");
    let again = normalize::path(out, rules)
        .unwrap_or_else(|e| panic!("{out:?} refused on the second pass: {e}"));
    assert_eq!(again, out, "not idempotent");
    for seg in out.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "dot segment left in {out:?}");
    }
    if rules.merge_slashes {
        assert!(!out.contains("//"), "empty segment left in {out:?}");
    }
    let lower = out.to_ascii_lowercase();
    for bad in ["%2e", "%00", "%0d", "%0a", "%7f", "\\"] {
        assert!(!lower.contains(bad), "{bad} left in {out:?}");
    }
    if rules.encoded_slashes == EncodedSlashes::Reject {
        assert!(
            !lower.contains("%2f") && !lower.contains("%5c"),
            "encoded slash left in {out:?}"
        );
    }
    assert!(
        out.bytes().all(|b| b > 0x20 && b < 0x7f),
        "raw control or space in {out:?}"
    );
}

fn settings() -> &'static (ListenerSettings, ProxySettings) {
    static SETTINGS: OnceLock<(ListenerSettings, ProxySettings)> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let loaded = crate::config::load_str(
            "listeners: [{name: f, address: \"127.0.0.1:0\"}]\nroutes: [{name: r, respond: {body: ok}}]\n",
            std::path::Path::new("."),
        )
        .expect("the fuzzing configuration loads");
        let listener = crate::runtime::compile::listener_settings(&loaded.spec.listeners[0], None);
        let proxy = crate::runtime::compile::proxy_settings(&loaded.spec);
        (listener, proxy)
    })
}

/// An HTTP/1 request head, parsed as hyper parses it (httparse), then checked and
/// normalized as the gateway does before routing. When accepted: one Host, a valid
/// authority, a canonical path, and no header the listener's rules refuse.
pub fn http1_head(data: &[u8]) {
    h1_request(data);
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return;
    };
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .version(if version == 1 {
            http::Version::HTTP_11
        } else {
            http::Version::HTTP_10
        });
    for h in req.headers.iter() {
        b = b.header(h.name, h.value);
    }
    let Ok(request) = b.body(()) else { return };
    let (mut parts, ()): (Parts, ()) = request.into_parts();
    let (listener, proxy) = settings();
    let Ok(host) = checks::check(listener, proxy, &mut parts) else {
        return;
    };
    assert!(parts.headers.get_all(http::header::HOST).iter().count() <= 1);
    assert!(
        !host.as_bytes().contains(&b'@'),
        "user info in host {host:?}"
    );
    assert!(
        parts.headers.keys().all(|n| !n.as_str().contains('_')),
        "underscore header accepted"
    );
    if parts.uri.path() != "*" {
        assert_canonical(parts.uri.path(), &listener.path_rules);
    }
}

/// The same head through turnpike's own request parser (`h1::parse_request`), against
/// httparse: what it accepts, httparse accepts with the same length; its framing never
/// comes from both `Content-Length` and `Transfer-Encoding`, nor from two lengths, and a
/// length it frames is the one sent; no fragment survives in the target.
fn h1_request(data: &[u8]) {
    use crate::h1::{parse_request, HeadLimits, RequestFraming};
    let mut buf = bytes::BytesMut::from(data);
    let Ok(Some(head)) = parse_request(&mut buf, HeadLimits::default()) else {
        return;
    };
    let used = data.len() - buf.len();
    let mut fields = [httparse::EMPTY_HEADER; 1000];
    let mut reference = httparse::Request::new(&mut fields);
    match reference.parse(data) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, used, "head boundary differs"),
        other => panic!("accepted a head httparse does not: {other:?}"),
    }
    assert!(!head.uri.to_string().contains('#'), "fragment accepted");
    let named = |n: &str| -> Vec<&[u8]> {
        reference
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(n))
            .map(|h| h.value)
            .collect()
    };
    let lengths = named("content-length");
    let te = named("transfer-encoding");
    assert!(te.is_empty() || lengths.is_empty(), "accepted CL with TE");
    assert!(te.len() <= 1, "accepted two TE lines");
    let numbers: Vec<u64> = lengths
        .iter()
        .filter_map(|l| std::str::from_utf8(l.trim_ascii()).ok()?.parse().ok())
        .collect();
    assert_eq!(
        numbers.len(),
        lengths.len(),
        "accepted a length that is not a number"
    );
    assert!(
        numbers.windows(2).all(|w| w[0] == w[1]),
        "two lengths accepted"
    );
    match head.framing {
        RequestFraming::Length(n) => assert_eq!(Some(&n), numbers.first()),
        RequestFraming::Chunked => assert_eq!(te.len(), 1),
        RequestFraming::None => assert!(te.is_empty() && numbers.iter().all(|n| *n == 0)),
    }
}

/// An upstream response, as turnpike's own HTTP/1.1 client reads it: the head parsed
/// and framed (for a GET and for a HEAD), then a chunked body decoded. Differential
/// oracles: a head turnpike accepts ends exactly where httparse says it ends, carries
/// no `Content-Length` beside `Transfer-Encoding` and no two different lengths; a chunked
/// body decodes to the same bytes and the same verdict whether it arrives at once or a
/// byte at a time.
pub fn h1_response(data: &[u8]) {
    use crate::h1::{parse_response, ChunkedDecoder, Decoded, Framing};
    for method in [http::Method::GET, http::Method::HEAD] {
        let mut buf = bytes::BytesMut::from(data);
        let Ok(Some(head)) = parse_response(&mut buf, &method) else {
            continue;
        };
        let used = data.len() - buf.len();
        let mut fields = [httparse::EMPTY_HEADER; 1000];
        let mut reference = httparse::Response::new(&mut fields);
        match reference.parse(data) {
            Ok(httparse::Status::Complete(n)) => assert_eq!(n, used, "head boundary differs"),
            other => panic!("accepted a head httparse does not: {other:?}"),
        }
        let lengths: Vec<&[u8]> = reference
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| h.value)
            .collect();
        let te = reference
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
        assert!(!te || lengths.is_empty(), "accepted CL with TE");
        // Every length given, as numbers ("00" is 0): all one value.
        let numbers: Vec<u128> = lengths
            .iter()
            .flat_map(|l| l.split(|b| *b == b','))
            .filter_map(|p| std::str::from_utf8(p.trim_ascii()).ok()?.parse().ok())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] == w[1]),
            "accepted two different lengths: {numbers:?}"
        );
        if head.framing == Framing::Chunked {
            let rest = buf.to_vec();
            let run = |step: usize| -> (Vec<u8>, bool) {
                let mut d = ChunkedDecoder::new();
                let mut b = bytes::BytesMut::new();
                let (mut out, mut fed) = (Vec::new(), 0);
                loop {
                    match d.decode(&mut b) {
                        Ok(Decoded::Data(x)) => out.extend_from_slice(&x),
                        Ok(Decoded::End(_)) => return (out, true),
                        Ok(Decoded::NeedMore) if fed < rest.len() => {
                            let end = (fed + step).min(rest.len());
                            b.extend_from_slice(&rest[fed..end]);
                            fed = end;
                        }
                        Ok(Decoded::NeedMore) | Err(_) => return (out, false),
                    }
                }
            };
            let (whole, whole_ok) = run(rest.len().max(1));
            let (split, split_ok) = run(1);
            assert_eq!(
                whole_ok, split_ok,
                "verdict depends on how the bytes arrive"
            );
            if whole_ok {
                assert_eq!(whole, split, "body depends on how the bytes arrive");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_clean() {
        for p in [
            "/",
            "/a/../b",
            "//x//y/",
            "/%2e%2E/a",
            "/a%2fb",
            "/%252e",
            "/a;b",
            "\u{ff0f}x",
        ] {
            normalize_path(p.as_bytes());
        }
        http1_head(b"GET /api/../admin HTTP/1.1\r\nHost: t\r\n\r\n");
        http1_head(b"GET http://t/x HTTP/1.1\r\nHost: t\r\n\r\n");
        http1_head(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n");
    }
}

/// One request as a server delivered it: method, target, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The method.
    pub method: String,
    /// The target, as the `http` crate prints it.
    pub target: String,
    /// The whole body.
    pub body: Vec<u8>,
}

/// A client's whole byte stream through turnpike's own server codec, sans I/O: the heads
/// (`h1::parse_request`) and bodies (length or chunked) in order, as the server reads
/// them. Stops at the first refusal (`true`: refused), at an incomplete message, or after
/// a message that closes the connection.
pub fn own_stream(data: &[u8]) -> (Vec<Delivered>, bool) {
    use crate::h1::{parse_request, ChunkedDecoder, Decoded, HeadLimits, RequestFraming};
    let mut buf = bytes::BytesMut::from(data);
    let mut out = Vec::new();
    loop {
        if buf.is_empty() {
            return (out, false);
        }
        let head = match parse_request(&mut buf, HeadLimits::default()) {
            Ok(Some(head)) => head,
            Ok(None) => return (out, false),
            Err(_) => return (out, true),
        };
        let body = match head.framing {
            RequestFraming::None => Vec::new(),
            RequestFraming::Length(n) => {
                if (buf.len() as u64) < n {
                    return (out, false);
                }
                buf.split_to(n as usize).to_vec()
            }
            RequestFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut body = Vec::new();
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
                        Ok(Decoded::End(_)) => break,
                        Ok(Decoded::NeedMore) => return (out, false),
                        Err(_) => return (out, true),
                    }
                }
                body
            }
        };
        out.push(Delivered {
            method: head.method.to_string(),
            target: head.uri.to_string(),
            body,
        });
        if !head.keep_alive {
            return (out, false);
        }
    }
}

/// The same byte stream through hyper's HTTP/1.1 server (the reference), over an
/// in-memory pipe: what its service received, in order.
pub fn hyper_stream(data: &[u8]) -> Vec<Delivered> {
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seen: Arc<Mutex<Vec<Delivered>>> = Arc::default();
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let sink = seen.clone();
    let data = data.to_vec();
    rt.block_on(async move {
        let (mut client, server) = tokio::io::duplex(data.len() + 64 * 1024);
        let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let sink = sink.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes().to_vec());
                if let Ok(body) = body {
                    if let Ok(mut seen) = sink.lock() {
                        seen.push(Delivered {
                            method: parts.method.to_string(),
                            target: parts.uri.to_string(),
                            body,
                        });
                    }
                }
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
        let feed = async {
            let _ = client.write_all(&data).await;
            let _ = client.shutdown().await;
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            tokio::join!(conn, feed)
        })
        .await;
    });
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    seen
}

/// Differential check of a client byte stream (`../shared/reference/datapath.md` §4):
/// wherever turnpike's server and hyper's both deliver a request, they deliver the same
/// one (method, target, body), so the two agree on where every message ends; and
/// turnpike never delivers a request hyper would not have (past hyper's last message,
/// turnpike may only be stricter, never more lenient).
pub fn h1_stream(data: &[u8]) {
    let (own, _) = own_stream(data);
    let reference = hyper_stream(data);
    for (i, (a, b)) in own.iter().zip(&reference).enumerate() {
        assert_eq!(a, b, "message {i} differs");
    }
    assert!(
        own.len() <= reference.len(),
        "turnpike delivered {} messages, hyper {}: {:?}",
        own.len(),
        reference.len(),
        own.get(reference.len())
    );
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    #[test]
    fn pipelined_streams_agree_with_hyper() {
        let cases: &[&[u8]] = &[
            b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
            b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /n HTTP/1.1\r\nHost: t\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
            b"GET /x HTTP/1.1\nHost: t\n\nGET /y HTTP/1.1\r\nHost: t\r\n\r\n",
            b"GET /close HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: t\r\n\r\n",
            // Refused by turnpike, and by hyper or delivered differently: turnpike stops.
            b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n",
            b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\nGET /bad HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n",
            b"POST /z HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ];
        for case in cases {
            h1_stream(case);
        }
        // The cases do reach both servers: the first one delivers two requests.
        assert_eq!(own_stream(cases[0]).0.len(), 2);
        assert_eq!(hyper_stream(cases[0]).len(), 2);
        let (own, refused) = own_stream(cases[6]);
        assert!(own.is_empty() && refused, "CL+TE is refused");
    }
}

/// The contract the `grpc_json` target converts into: every field kind, nesting,
/// repeated and map fields, enums, a oneof and the well-known types.
const FUZZ_PROTO: &str = r#"
syntax = "proto3";
package fuzz;
import "google/protobuf/timestamp.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/wrappers.proto";
import "google/protobuf/field_mask.proto";
import "google/protobuf/any.proto";
enum Colour { COLOUR_UNSPECIFIED = 0; RED = 1; BLUE = 2; }
message Leaf { string s = 1; int64 i = 2; repeated Leaf children = 3; }
message All {
  double d = 1; float f = 2; int32 i32 = 3; int64 i64 = 4; uint32 u32 = 5; uint64 u64 = 6;
  sint32 s32 = 7; sint64 s64 = 8; fixed32 fx32 = 9; fixed64 fx64 = 10; bool b = 11;
  string s = 12; bytes by = 13; Colour c = 14; Leaf leaf = 15; repeated Leaf leaves = 16;
  map<string, Leaf> by_name = 17; map<int32, string> by_number = 18; repeated Colour cs = 19;
  oneof pick { string one = 20; Leaf other = 21; }
  google.protobuf.Timestamp ts = 22; google.protobuf.Duration dur = 23;
  google.protobuf.Struct st = 24; google.protobuf.Value v = 25; google.protobuf.ListValue lv = 26;
  google.protobuf.StringValue sv = 27; google.protobuf.Int64Value iv = 28;
  google.protobuf.FieldMask fm = 29; google.protobuf.Any any = 30;
}
"#;

/// JSON to Protobuf as a `grpc` route converts a request body: arbitrary bytes never
/// panic; whatever is accepted encodes, decodes back to the same message, and writes
/// JSON that converts back to the same message again.
pub fn grpc_json(data: &[u8]) {
    use prost::Message as _;
    static DESC: OnceLock<prost_reflect::MessageDescriptor> = OnceLock::new();
    let desc = DESC.get_or_init(|| {
        crate::targets::grpc::protos::pool_from_source("fuzz.proto", FUZZ_PROTO)
            .expect("the fuzz contract compiles")
            .get_message_by_name("fuzz.All")
            .expect("fuzz.All")
    });
    if data.len() > 64 << 10 {
        return;
    }
    let Ok(tree) = crate::targets::grpc::parse_body(data, 64) else {
        return;
    };
    for strict in [true, false] {
        let options = prost_reflect::DeserializeOptions::new().deny_unknown_fields(strict);
        let Ok(message) = crate::targets::grpc::to_message(desc, tree.clone(), &options) else {
            continue;
        };
        // Compared by their JSON (NaN is not equal to itself, map order is free).
        let json = serde_json::to_value(&message).expect("an accepted message has a JSON form");
        let bytes = message.encode_to_vec();
        let back = prost_reflect::DynamicMessage::decode(desc.clone(), bytes.as_slice())
            .expect("an encoded message decodes");
        let back_json = serde_json::to_value(&back).expect("a decoded message has a JSON form");
        assert!(
            back_json == json,
            "encode/decode changed the message: {json} -> {back_json}"
        );
        let again = crate::targets::grpc::to_message(desc, json.clone(), &options)
            .unwrap_or_else(|e| panic!("its own JSON is refused: {e}: {json}"));
        let again_json = serde_json::to_value(&again).expect("JSON form");
        assert!(
            again_json == json,
            "the JSON round trip changed the message: {json} -> {again_json}"
        );
    }
}
