//! Checks made on every request before routing, with the listener's rules: version,
//! sizes, `Host`, header names, loops, and path normalization. Each refusal is a
//! [`GatewayError`] with its status (400, 414, 431, 505, 508); nothing refused here
//! reaches a route, a policy or an upstream.

use http::header::{HeaderName, HeaderValue, HOST};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Uri};
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
    if !host.is_empty() {
        let valid = Authority::try_from(host.as_bytes()).is_ok_and(|a| valid_authority(&a));
        if !valid {
            return Err(GatewayError::BadRequest("invalid Host header"));
        }
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

/// `host[:port]` and nothing else: no user info, a numeric port.
fn valid_authority(a: &Authority) -> bool {
    let text = a.as_str();
    if text.contains('@') || a.host().is_empty() {
        return false;
    }
    let port = match text.rfind(':') {
        // `[::1]` has colons inside the brackets, not a port.
        Some(i) if !text[i..].contains(']') => &text[i + 1..],
        _ => return true,
    };
    !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok()
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
