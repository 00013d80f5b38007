//! Checks made on every request before routing, with the listener's rules: version,
//! sizes, `Host`, header names, loops, and path normalization. Each refusal is a
//! [`GatewayError`] with its status (400, 414, 431, 505, 508); nothing refused here
//! reaches a route, a policy or an upstream.

use http::header::{HeaderName, HeaderValue, HOST};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Method, Version};

use super::normalize;
use crate::config::UnderscorePolicy;
use crate::http::forwarded;
use crate::http::GatewayError;
use crate::runtime::snapshot::ListenerSettings;
use crate::targets::ProxySettings;
use crate::tls::server::TlsInfo;

/// Checks `parts` and normalizes its path in place; returns the host the request is for.
pub fn check(
    listener: &ListenerSettings,
    proxy: &ProxySettings,
    parts: &mut Parts,
) -> Result<HeaderValue, GatewayError> {
    if matches!(parts.version, Version::HTTP_10 | Version::HTTP_09) && !listener.accept_http10 {
        return Err(GatewayError::VersionNotSupported);
    }
    let target_len = parts.uri.path_and_query().map_or(0, |p| p.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    if target_len > listener.max_uri {
        return Err(GatewayError::UriTooLong);
    }
    check_headers(listener, parts)?;
    let host = check_host(parts)?;
    if !proxy.pseudonym.is_empty()
        && forwarded::via_count(&parts.headers, &proxy.pseudonym) >= proxy.max_hops
    {
        return Err(GatewayError::LoopDetected);
    }
    normalize_target(listener, parts)?;
    Ok(host)
}

fn check_headers(listener: &ListenerSettings, parts: &mut Parts) -> Result<(), GatewayError> {
    let headers = &parts.headers;
    if headers.len() > listener.max_header_count {
        return Err(GatewayError::HeadersTooLarge);
    }
    let mut underscored: Vec<HeaderName> = Vec::new();
    // The request line counts towards the head: method, target, version, separators.
    let mut head = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + 12;
    for (name, value) in headers {
        let line = name.as_str().len() + value.len() + 4;
        if line > listener.max_header_line {
            return Err(GatewayError::HeadersTooLarge);
        }
        head += line;
        if head > listener.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge);
        }
        if name.as_str().contains('_') {
            match listener.underscores {
                UnderscorePolicy::Reject => {
                    return Err(GatewayError::BadRequest("underscore in a header name"))
                }
                UnderscorePolicy::Drop => underscored.push(name.clone()),
                UnderscorePolicy::Allow => {}
            }
        }
    }
    for name in underscored {
        parts.headers.remove(name);
    }
    Ok(())
}

/// One `Host`, well formed, and the same as the target's authority when both are given
/// (absolute-form targets, HTTP/2 `:authority`): routing and authorization can never
/// see two different hosts.
fn check_host(parts: &Parts) -> Result<HeaderValue, GatewayError> {
    let mut hosts = parts.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    let authority = parts.uri.authority();
    let host = match (authority, header) {
        (Some(a), Some(h)) => {
            if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                return Err(GatewayError::BadRequest(
                    "Host does not match the request target",
                ));
            }
            h.clone()
        }
        (Some(a), None) => HeaderValue::from_str(a.as_str())
            .map_err(|_| GatewayError::BadRequest("invalid authority"))?,
        (None, Some(h)) => h.clone(),
        (None, None) if parts.version == Version::HTTP_11 => {
            return Err(GatewayError::BadRequest("missing Host header"));
        }
        (None, None) => HeaderValue::from_static(""),
    };
    if !host.is_empty() && !valid_host(host.as_bytes()) {
        return Err(GatewayError::BadRequest("invalid Host header"));
    }
    Ok(host)
}

/// On a listener with client certificates, a request must be for the virtual host its
/// connection was authenticated for: a client must not present a certificate to
/// `a.example` (SNI) and then send requests for `b.example` (421, RFC 9110 §15.5.20).
pub fn same_virtual_host(info: &TlsInfo, host: &HeaderValue) -> Result<(), GatewayError> {
    let server = &info.server;
    if !server.mtls {
        return Ok(());
    }
    let host = crate::router::normalize_host(host.to_str().unwrap_or(""));
    if info
        .sni
        .as_deref()
        .is_some_and(|sni| host.eq_ignore_ascii_case(sni))
    {
        return Ok(());
    }
    // Without SNI the connection got the first entry: a Host of any other entry is
    // refused too, or a client could skip that entry's certificate by leaving SNI out.
    if host.is_empty() || server.select(Some(&host)) != info.entry {
        return Err(GatewayError::Misdirected);
    }
    Ok(())
}

/// `host[:port]` and nothing else: a reg-name (RFC 3986 unreserved, sub-delims and
/// `%`) or a bracketed IPv6 literal, then an optional numeric port; no user info. A byte
/// scan, run on every request, so nothing is copied.
fn valid_host(h: &[u8]) -> bool {
    let (host, rest) = if h.first() == Some(&b'[') {
        let Some(end) = h.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &h[1..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        (if ok { &h[..=end] } else { &h[..0] }, &h[end + 1..])
    } else {
        match h.iter().position(|&b| b == b':') {
            Some(i) => (&h[..i], &h[i..]),
            None => (h, &h[h.len()..]),
        }
    };
    let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b);
    if host.is_empty() || (host[0] != b'[' && !host.iter().all(reg_name)) {
        return false;
    }
    match rest {
        [] => true,
        [b':', port @ ..] => {
            !port.is_empty()
                && port.len() <= 5
                && port.iter().all(u8::is_ascii_digit)
                && port.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65535
        }
        _ => false,
    }
}

fn normalize_target(listener: &ListenerSettings, parts: &mut Parts) -> Result<(), GatewayError> {
    let path = parts.uri.path();
    if path == "*" {
        return if parts.method == Method::OPTIONS {
            Ok(())
        } else {
            Err(GatewayError::BadRequest("`*` is only a target for OPTIONS"))
        };
    }
    let normalized =
        normalize::path(path, &listener.path_rules).map_err(GatewayError::BadRequest)?;
    if let std::borrow::Cow::Owned(new_path) = normalized {
        let pq = match parts.uri.query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        let mut uri_parts = std::mem::take(&mut parts.uri).into_parts();
        uri_parts.path_and_query =
            Some(PathAndQuery::try_from(pq).map_err(|_| GatewayError::BadRequest("invalid path"))?);
        parts.uri = Uri::from_parts(uri_parts)
            .map_err(|_| GatewayError::BadRequest("invalid request target"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn hosts_are_names_or_ip_literals_with_numeric_ports() {
        for ok in [
            "t",
            "api.example.com",
            "a-b.c:8080",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:443",
            "x:65535",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "", "a b", "user@t", "t:port", "t:99999", "t:65536", "t:", "[::1", "[]", "[zz]", ":80",
            "t:80:80", "[::1]x", "t/x", "t\\x",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }
}
