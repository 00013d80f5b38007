//! Client identity across proxies: the client address, `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Real-IP`, `Forwarded` (RFC 7239) and `Via`.
//!
//! Nothing a client sends about itself is believed unless the connection comes from a
//! trusted proxy (`server.trusted_proxies`). From an untrusted peer, every forwarding
//! header is overwritten with what the gateway saw; from a trusted one, the gateway appends
//! to the chain and takes the client address as the right-most address that is not itself
//! a trusted proxy.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, FORWARDED, VIA};
use ipnet::IpNet;

/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP`.
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The set of proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Trusts the given networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Whether no proxy is trusted (the default).
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, seen on dual-stack sockets) as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address of the client: the peer, unless the peer is a trusted proxy, in which case
/// the right-most `X-Forwarded-For` entry that is not a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    let entries: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        match entry.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !trusted.contains(client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// What the gateway knows about the hop it is adding.
pub struct Hop<'a> {
    /// The address of the connection's peer.
    pub peer: IpAddr,
    /// The same address as text, made once per connection ([`ip_text`]).
    pub peer_text: &'a HeaderValue,
    /// Whether that peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The client address ([`client_ip`]).
    pub client: IpAddr,
    /// `http` or `https`, as the client reached the gateway.
    pub proto: &'static str,
    /// The host the client asked for.
    pub host: &'a HeaderValue,
}

/// An address as a header value (done once per connection, not per request).
pub fn ip_text(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&canonical(ip).to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Sets the forwarding headers of a request about to leave for an upstream.
///
/// From an untrusted peer (the common case) every value is the peer's address or the
/// host as received: no formatting, one allocation (`Forwarded`).
pub fn set_forwarding_headers(headers: &mut HeaderMap, hop: &Hop<'_>) {
    let proto = HeaderValue::from_static(hop.proto);
    if !hop.peer_trusted {
        headers.insert(&X_FORWARDED_FOR, hop.peer_text.clone());
        headers.insert(&X_FORWARDED_PROTO, proto);
        headers.insert(&X_FORWARDED_HOST, hop.host.clone());
        headers.insert(&X_REAL_IP, hop.peer_text.clone());
        let mut fwd = String::with_capacity(40 + hop.host.len());
        push_forwarded(&mut fwd, hop);
        // The string's own buffer becomes the value: no copy.
        match HeaderValue::from_maybe_shared(bytes::Bytes::from(fwd)) {
            Ok(v) => {
                headers.insert(&FORWARDED, v);
            }
            Err(_) => {
                headers.remove(&FORWARDED);
            }
        }
        return;
    }
    let mut buf = String::with_capacity(64);
    join_existing(headers, &X_FORWARDED_FOR, &mut buf);
    buf.push_str(hop.peer_text.to_str().unwrap_or_default());
    put(headers, &X_FORWARDED_FOR, &buf);
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, proto);
    }
    if !headers.contains_key(&X_FORWARDED_HOST) {
        headers.insert(&X_FORWARDED_HOST, hop.host.clone());
    }
    buf.clear();
    let _ = write!(buf, "{}", canonical(hop.client));
    put(headers, &X_REAL_IP, &buf);
    buf.clear();
    join_existing(headers, &FORWARDED, &mut buf);
    push_forwarded(&mut buf, hop);
    put(headers, &FORWARDED, &buf);
}

/// Appends one RFC 7239 element: `for=..;proto=..;host=".."`.
fn push_forwarded(buf: &mut String, hop: &Hop<'_>) {
    let peer = hop.peer_text.to_str().unwrap_or_default();
    if canonical(hop.peer).is_ipv6() {
        buf.push_str("for=\"[");
        buf.push_str(peer);
        buf.push_str("]\"");
    } else {
        buf.push_str("for=");
        buf.push_str(peer);
    }
    buf.push_str(";proto=");
    buf.push_str(hop.proto);
    buf.push_str(";host=\"");
    let host = hop.host.to_str().unwrap_or_default();
    if host.bytes().any(|b| b == b'"' || b == b'\\') {
        for c in host.chars() {
            if c == '"' || c == '\\' {
                buf.push('\\');
            }
            buf.push(c);
        }
    } else {
        buf.push_str(host);
    }
    buf.push('"');
}

/// Appends `via` (for example `1.1 turnpike`) to the `Via` chain.
pub fn append_via(headers: &mut HeaderMap, via: &HeaderValue) {
    if headers.contains_key(VIA) {
        let mut buf = String::new();
        join_existing(headers, &VIA, &mut buf);
        buf.push_str(via.to_str().unwrap_or_default());
        put(headers, &VIA, &buf);
    } else {
        headers.insert(VIA, via.clone());
    }
}

/// How many times `pseudonym` already appears as a `Via` entry's received-by field.
pub fn via_count(headers: &HeaderMap, pseudonym: &str) -> usize {
    headers
        .get_all(VIA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|entry| {
            let mut parts = entry.split_whitespace();
            parts.next();
            parts.next() == Some(pseudonym)
        })
        .count()
}

fn join_existing(headers: &HeaderMap, name: &HeaderName, buf: &mut String) {
    for value in headers.get_all(name) {
        if let Ok(v) = value.to_str() {
            let v = v.trim();
            if !v.is_empty() {
                buf.push_str(v);
                buf.push_str(", ");
            }
        }
    }
}

fn put(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()])
    }

    fn spoofed() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("1.2.3.4, 10.0.0.9"),
        );
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        h.insert(&X_REAL_IP, HeaderValue::from_static("9.9.9.9"));
        h.insert(FORWARDED, HeaderValue::from_static("for=9.9.9.9"));
        h
    }

    #[test]
    fn untrusted_peer_overwrites_everything() {
        let peer: IpAddr = "203.0.113.5".parse().unwrap();
        let mut h = spoofed();
        let client = client_ip(peer, &h, &trusted());
        assert_eq!(client, peer);
        let hop = Hop {
            peer,
            peer_text: &ip_text(peer),
            peer_trusted: false,
            client,
            proto: "http",
            host: &HeaderValue::from_static("api.example"),
        };
        set_forwarding_headers(&mut h, &hop);
        assert_eq!(h[&X_FORWARDED_FOR], "203.0.113.5");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "api.example");
        assert_eq!(h[&X_REAL_IP], "203.0.113.5");
        assert_eq!(
            h[FORWARDED],
            "for=203.0.113.5;proto=http;host=\"api.example\""
        );
    }

    #[test]
    fn trusted_peer_appends_and_picks_rightmost_untrusted() {
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let mut h = spoofed();
        let client = client_ip(peer, &h, &trusted());
        assert_eq!(client, "1.2.3.4".parse::<IpAddr>().unwrap());
        let hop = Hop {
            peer,
            peer_text: &ip_text(peer),
            peer_trusted: true,
            client,
            proto: "http",
            host: &HeaderValue::from_static("api.example"),
        };
        set_forwarding_headers(&mut h, &hop);
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 10.0.0.9, 10.1.1.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "evil.example");
        assert_eq!(h[&X_REAL_IP], "1.2.3.4");
        assert_eq!(
            h[FORWARDED],
            "for=9.9.9.9, for=10.1.1.1;proto=http;host=\"api.example\""
        );
    }

    #[test]
    fn garbage_in_xff_stops_the_walk_at_the_trusted_hop() {
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("1.2.3.4, not-an-ip"),
        );
        assert_eq!(client_ip(peer, &h, &trusted()), peer);
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let peer: IpAddr = "::ffff:10.2.3.4".parse().unwrap();
        assert!(trusted().contains(peer));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let mut h = HeaderMap::new();
        let hop = Hop {
            peer: v6,
            peer_text: &ip_text(v6),
            peer_trusted: false,
            client: v6,
            proto: "https",
            host: &HeaderValue::from_static("a:8443"),
        };
        set_forwarding_headers(&mut h, &hop);
        assert_eq!(
            h[FORWARDED],
            "for=\"[2001:db8::1]\";proto=https;host=\"a:8443\""
        );
    }

    #[test]
    fn via_is_appended_and_counted() {
        let mut h = HeaderMap::new();
        h.insert(VIA, HeaderValue::from_static("1.1 turnpike, 1.0 squid"));
        append_via(&mut h, &HeaderValue::from_static("1.1 turnpike"));
        assert_eq!(h[VIA], "1.1 turnpike, 1.0 squid, 1.1 turnpike");
        assert_eq!(via_count(&h, "turnpike"), 2);
        assert_eq!(via_count(&h, "squid"), 1);
    }
}
