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
