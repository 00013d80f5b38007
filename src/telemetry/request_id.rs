//! Correlation ids: a valid incoming `X-Request-ID` is kept, otherwise a UUIDv7 is made.
//!
//! UUIDv7 sorts by time, which helps when ids are used as log keys. The random part comes
//! from a thread-local generator (no lock, no system call); a request id is a correlation
//! key, not a secret.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// The longest incoming id that is kept.
pub const MAX_LEN: usize = 128;

/// Whether an incoming id is kept: 1 to 128 characters from `A-Z a-z 0-9 - _ . : + / =`.
/// Anything else (spaces, quotes, control bytes, very long values) is replaced, so that
/// logs and upstream headers never carry attacker-shaped text.
pub fn is_acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:+/=".contains(c))
}

/// A new UUIDv7, as a header value.
pub fn generate() -> HeaderValue {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    random[8..].copy_from_slice(&fastrand::u16(..).to_le_bytes());
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static(
        "00000000-0000-7000-8000-000000000000",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_v7_and_unique() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert!(is_acceptable(&a));
    }

    #[test]
    fn incoming_ids_are_filtered() {
        assert!(is_acceptable(&HeaderValue::from_static("abc-123_X.y:z")));
        assert!(!is_acceptable(&HeaderValue::from_static("")));
        assert!(!is_acceptable(&HeaderValue::from_static("has space")));
        assert!(!is_acceptable(&HeaderValue::from_static("quote\"")));
        let long = "a".repeat(MAX_LEN + 1);
        assert!(!is_acceptable(&HeaderValue::from_str(&long).unwrap()));
    }
}
