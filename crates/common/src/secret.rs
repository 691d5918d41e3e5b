//! Secrets at a listener: the bearer token a request presents, compared in constant time, and
//! the rule every listener checks before it starts — an address that other machines can reach
//! needs a secret in front of it.

use std::net::SocketAddr;

/// Whether `given` equals `expected`, in time that depends only on `expected`'s length: every
/// byte is compared whatever the first difference, so response times do not reveal how much
/// of a guess was right.
pub fn same_secret(expected: &[u8], given: &[u8]) -> bool {
    let mut difference = expected.len() ^ given.len();
    for (index, byte) in expected.iter().enumerate() {
        let other = given.get(index).copied().unwrap_or(!byte);
        difference |= usize::from(std::hint::black_box(byte ^ other));
    }
    std::hint::black_box(difference) == 0
}

/// The token of an `Authorization: Bearer TOKEN` header (surrounding spaces trimmed), if the
/// request has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether a listener on `address` would be open to other machines with nothing guarding it:
/// it is unless it listens on loopback (an IPv4-mapped loopback address counts) or `guarded`
/// (a token or credentials are set).
pub fn open_to_network(address: SocketAddr, guarded: bool) -> bool {
    !guarded && !crate::net::canonical(address.ip()).is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"s3cret-token", b"s3cret-token"));
        assert!(!same_secret(b"s3cret-token", b"s3cret-tokeN"));
        assert!(!same_secret(b"s3cret-token", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3cret-token"));
        assert!(!same_secret(b"abc", b""));
        assert!(same_secret(b"", b""));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Basic dXNlcjpwYXNz".parse().expect("a header"),
        );
        assert_eq!(bearer(&headers), None);
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer  abc ".parse().expect("a header"),
        );
        assert_eq!(bearer(&headers), Some("abc"));
    }

    #[test]
    fn only_unguarded_addresses_other_machines_reach_are_open() {
        let at = |text: &str| text.parse::<SocketAddr>().expect("an address");
        assert!(open_to_network(at("0.0.0.0:80"), false));
        assert!(open_to_network(at("[::]:80"), false));
        assert!(!open_to_network(at("0.0.0.0:80"), true));
        assert!(!open_to_network(at("127.0.0.1:80"), false));
        assert!(!open_to_network(at("[::1]:80"), false));
        assert!(!open_to_network(at("[::ffff:127.0.0.1]:80"), false));
    }
}
