//! Hop-by-hop header removal (RFC 9110 §7.6.1).
//!
//! Headers that describe one connection must not cross the proxy: the fixed list below,
//! plus every header the `Connection` field names. A client can name any header there
//! (`Connection: close, X-Secret`), so the names are honoured, except framing and
//! routing fields the gateway sets itself, which a client must not be able to delete.

use http::header::{
    HeaderMap, HeaderName, CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

/// Headers that are hop-by-hop whether or not `Connection` names them.
const ALWAYS: [&str; 3] = ["keep-alive", "proxy-connection", "http2-settings"];

/// Names a client may list in `Connection` that are still forwarded: dropping them would
/// change the framing or the routing of the forwarded request.
const PROTECTED: [&str; 3] = ["host", "content-length", "content-type"];

/// What the connection headers asked for, read before they are removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HopInfo {
    /// `Connection: upgrade` with `Upgrade: websocket`.
    pub websocket: bool,
}

/// Removes hop-by-hop headers from a request about to be forwarded.
///
/// `TE: trailers` survives (gRPC needs it and RFC 9113 §8.2.2 allows it); any other `TE`
/// is dropped. `Upgrade` is always removed here; the WebSocket path puts back a canonical
/// one when the route allows upgrades.
pub fn strip_request(headers: &mut HeaderMap) -> HopInfo {
    if !headers.keys().any(is_hop_by_hop) {
        return HopInfo::default();
    }
    let info = HopInfo {
        websocket: wants_websocket(headers),
    };
    strip_common(headers);
    let te_trailers = headers
        .get(TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !te_trailers {
        headers.remove(TE);
    }
    info
}

/// Removes hop-by-hop headers from a response about to be sent to the client.
pub fn strip_response(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    strip_common(headers);
    headers.remove(TE);
}

/// Whether `name` is hop-by-hop on its own (one comparison per header on the fast path:
/// most requests carry none, and then nothing is removed).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TE
        || name == TRAILER
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == PROXY_AUTHORIZATION
        || name == PROXY_AUTHENTICATE
        || ALWAYS.contains(&name.as_str())
}

fn strip_common(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim())
            .filter(|t| !t.is_empty() && !PROTECTED.iter().any(|p| t.eq_ignore_ascii_case(p)))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in ALWAYS {
        headers.remove(name);
    }
    headers.remove(PROXY_AUTHORIZATION);
    headers.remove(PROXY_AUTHENTICATE);
    headers.remove(TRAILER);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
}

fn wants_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn removes_fixed_list_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "s"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("te", "gzip"),
            ("trailer", "x-t"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("x-kept", "1"),
        ]);
        let info = strip_request(&mut h);
        assert!(!info.websocket);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn keeps_te_trailers_and_protected_names() {
        let mut h = map(&[
            ("connection", "content-length, host, x-a"),
            ("te", "trailers"),
            ("host", "a.example"),
            ("content-length", "3"),
            ("x-a", "1"),
        ]);
        strip_request(&mut h);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["host"], "a.example");
        assert_eq!(h["content-length"], "3");
        assert!(!h.contains_key("x-a"));
    }

    #[test]
    fn detects_websocket_upgrade() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert!(strip_request(&mut h).websocket);
        assert!(!h.contains_key("upgrade"));
        let mut h = map(&[("upgrade", "websocket")]);
        assert!(
            !strip_request(&mut h).websocket,
            "Upgrade without Connection"
        );
    }

    #[test]
    fn response_loses_te_and_connection_names() {
        let mut h = map(&[
            ("connection", "x-internal"),
            ("x-internal", "1"),
            ("te", "trailers"),
        ]);
        strip_response(&mut h);
        assert!(h.is_empty());
    }
}
