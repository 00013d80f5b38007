//! Request-target normalization, before routing: the path a route is chosen for, and
//! that policies authorize, is exactly the path that is forwarded.
//!
//! Rules (RFC 3986 §6.2.2 and §5.2.4, plus edge-safe refusals):
//! - percent-encoded unreserved characters are decoded (`%2e` is `.`, `%41` is `A`);
//!   every other escape stays encoded, with upper-case hex; nothing is decoded twice, so
//!   `%252e` stays `%252e` (an encoded `%` followed by the text `2e`);
//! - raw bytes a path may not hold (non-ASCII, space, `"`, `<`, `>`, `{`...) are
//!   percent-encoded;
//! - dot segments are removed after that decoding (`/api/%2e%2e/admin` is `/admin`);
//!   `..` above the root stays at the root;
//! - `//` is merged into `/` when `merge_slashes` is on (the default);
//! - refused with 400: an encoded slash or backslash (`%2f`, `%5c`) unless the policy is
//!   `keep`; an encoded or raw control character (`%00`, `%0d`, `%7f`); a raw backslash;
//!   a malformed escape (`%zz`, `%4`); a `;` (matrix parameters, which some upstreams
//!   strip and others do not) unless allowed; a path that does not start with `/`.
//!
//! The common path needs none of this: one scan finds nothing to do and the request is
//! left untouched (no allocation).

use std::borrow::Cow;

/// What to do with `%2F` and `%5C` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodedSlashes {
    /// 400: an upstream that decodes them would see a different path than was routed.
    Reject,
    /// Forward them encoded; routing sees them as ordinary characters of a segment.
    Keep,
}

/// Normalization settings of a listener.
#[derive(Debug, Clone, Copy)]
pub struct PathRules {
    /// Merge `//` into `/`.
    pub merge_slashes: bool,
    /// The encoded-slash policy.
    pub encoded_slashes: EncodedSlashes,
    /// Accept `;` in paths.
    pub allow_semicolons: bool,
}

impl Default for PathRules {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            encoded_slashes: EncodedSlashes::Reject,
            allow_semicolons: false,
        }
    }
}

/// Why a path was refused (sent to the client as the 400 message).
pub type Refusal = &'static str;

/// Normalizes `path` (without the query). `Cow::Borrowed` when nothing changed.
pub fn path<'a>(path: &'a str, rules: &PathRules) -> Result<Cow<'a, str>, Refusal> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err("the path must start with /");
    }
    let mut needs_work = false;
    let mut prev = 0u8;
    for &b in bytes {
        match b {
            b'%' => needs_work = true,
            // Only a segment that starts with `.` can be a dot segment.
            b'.' if prev == b'/' => needs_work = true,
            b'/' if prev == b'/' && rules.merge_slashes => needs_work = true,
            b'\\' => return Err("backslash in the path"),
            b';' if !rules.allow_semicolons => return Err("`;` in the path"),
            0x00..=0x1f | 0x7f => return Err("control character in the path"),
            b if !is_pchar(b) => needs_work = true,
            _ => {}
        }
        prev = b;
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes, rules)?;
    let segments = remove_dots(&decoded, rules.merge_slashes);
    if segments == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(segments))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A byte that may stand for itself in a path (RFC 3986 `pchar` and `/`, plus `%`).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'%'
        )
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters once; checks and upper-cases the others.
fn decode_unreserved(bytes: &[u8], rules: &PathRules) -> Result<String, Refusal> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            if is_pchar(b) {
                out.push(b as char);
            } else {
                // Raw bytes a path may not hold (UTF-8, space, `"`, `<`, `{`...): sent
                // percent-encoded, so every upstream reads the path that was routed.
                push_escape(&mut out, b);
            }
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).and_then(|x| hex(*x)),
            bytes.get(i + 2).and_then(|x| hex(*x)),
        ) else {
            return Err("malformed percent-encoding in the path");
        };
        let value = h * 16 + l;
        match value {
            0x00..=0x1f | 0x7f => return Err("encoded control character in the path"),
            b'/' | b'\\' if rules.encoded_slashes == EncodedSlashes::Reject => {
                return Err("encoded slash or backslash in the path")
            }
            b';' if !rules.allow_semicolons => return Err("encoded `;` in the path"),
            v if is_unreserved(v) => out.push(v as char),
            v => push_escape(&mut out, v),
        }
        i += 3;
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on whole segments, optionally merging empty segments.
fn remove_dots(path: &str, merge_slashes: bool) -> String {
    let mut out: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path[1..].split('/').collect();
    let last = parts.len() - 1;
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            "" if merge_slashes && i != last => {}
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(path.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if result.is_empty() {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, Refusal> {
        path(p, &PathRules::default()).map(Cow::into_owned)
    }

    #[test]
    fn common_paths_are_untouched_and_borrowed() {
        for p in ["/", "/api/users/7", "/a-b_c~d/e.json", "/x/"] {
            assert!(
                matches!(path(p, &PathRules::default()), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_and_their_encoded_forms() {
        let cases = [
            ("/api/../admin/x", "/admin/x"),
            ("/api/./../admin/x", "/admin/x"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2e/admin", "/admin"),
            ("/api/.%2e/admin", "/admin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/./b", "/a/b"),
            ("/..", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn decoded_once_only() {
        assert_eq!(
            norm("/api/%252e%252e/admin").unwrap(),
            "/api/%252e%252e/admin"
        );
        assert_eq!(norm("/a%41%7e").unwrap(), "/aA~");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn slashes_merge() {
        assert_eq!(norm("//admin/x").unwrap(), "/admin/x");
        assert_eq!(norm("/api//../admin").unwrap(), "/admin");
        assert_eq!(norm("/a//b/").unwrap(), "/a/b/");
        let keep = PathRules {
            merge_slashes: false,
            ..PathRules::default()
        };
        assert_eq!(path("/a//b", &keep).unwrap(), "/a//b");
    }

    #[test]
    fn refusals() {
        for bad in [
            "/api/%2fadmin",
            "/api/%2Fadmin",
            "/api/%5cadmin",
            "/api/%00",
            "/api/%0d%0a",
            "/api/\x7f",
            "/api/\\admin",
            "/api/%zz",
            "/api/%4",
            "/admin;/x",
            "/api;x=y/../admin",
            "/api/%3b",
            "hello-world",
        ] {
            assert!(norm(bad).is_err(), "{bad:?} should be refused");
        }
        let keep = PathRules {
            encoded_slashes: EncodedSlashes::Keep,
            allow_semicolons: true,
            ..PathRules::default()
        };
        assert_eq!(path("/api/%2fadmin", &keep).unwrap(), "/api/%2Fadmin");
        assert_eq!(path("/a;v=1/b", &keep).unwrap(), "/a;v=1/b");
    }

    #[test]
    fn case_and_unicode_are_not_folded() {
        assert_eq!(norm("/ADMIN/x").unwrap(), "/ADMIN/x");
        // Full-width solidus, percent-encoded UTF-8: stays encoded, never a `/`.
        assert_eq!(norm("/%EF%BC%8Fadmin").unwrap(), "/%EF%BC%8Fadmin");
    }

    #[test]
    fn raw_bytes_a_path_cannot_hold_are_encoded_not_mangled() {
        // Found by the normalize_path fuzz target: raw UTF-8 was copied byte by byte as
        // Latin-1 characters, so the forwarded bytes differed from the received ones.
        assert_eq!(norm("/x\u{66f}in/y").unwrap(), "/x%D9%AFin/y");
        assert_eq!(norm("/caf\u{e9}/../x").unwrap(), "/x");
        assert_eq!(norm("/caf\u{e9}").unwrap(), "/caf%C3%A9");
        assert_eq!(
            norm("/a b\"<{}>|^`").unwrap(),
            "/a%20b%22%3C%7B%7D%3E%7C%5E%60"
        );
        assert_eq!(norm("/a?b").unwrap(), "/a%3Fb");
        // Already canonical: untouched.
        assert!(matches!(
            path("/a:b@c!$&'()*+,=", &PathRules::default()),
            Ok(Cow::Borrowed(_))
        ));
    }
}
