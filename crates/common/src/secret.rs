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
        .and_then(bearer_token)
}

/// The token of an `Authorization` header's value `Bearer TOKEN`: the scheme in any case (RFC
/// 7235, section 2.1: auth-schemes are case-insensitive), the token trimmed.
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether a listener on `address` would be open to other machines with nothing guarding it:
/// it is unless it listens on loopback (an IPv4-mapped loopback address counts) or `guarded`
/// (a token or credentials are set).
pub fn open_to_network(address: SocketAddr, guarded: bool) -> bool {
    !guarded && !crate::net::canonical(address.ip()).is_loopback()
}

/// Why an admin API refuses a request a web page made the operator's browser send, if it is
/// one: a control API without a token relies on listening on loopback, and a page the operator
/// opens can still reach loopback — directly with a cross-origin POST that needs no preflight
/// (`Content-Type: text/plain`), or under its own name through DNS rebinding. So:
/// - a request whose `Origin` is not the origin it is sent to, or that the browser marks
///   `Sec-Fetch-Site: cross-site`/`same-site`, is refused, token or not (a browser sends them;
///   curl, the SDKs and Switchyard's own clients do not);
/// - without a token (`guarded` false), the `Host` must be an IP address, `localhost` or
///   `localhost.`, with or without a port: a rebinding page's requests carry its own name.
pub fn browser_forgery(headers: &axum::http::HeaderMap, guarded: bool) -> Option<String> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().unwrap_or("(not text)"));
    let host = text("host");
    if let Some(site) = text("sec-fetch-site")
        && (site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site"))
    {
        return Some(format!(
            "a browser sent this request from another site (Sec-Fetch-Site: {site}); the control API takes requests from its own tools (curl, the switchyard CLI), not from web pages"
        ));
    }
    if let Some(origin) = text("origin") {
        let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
        if origin == "null" || host.is_none_or(|host| !host.eq_ignore_ascii_case(authority)) {
            return Some(format!(
                "a browser sent this request from the page at {origin}, not from this API's own origin; the control API takes requests from its own tools (curl, the switchyard CLI), not from web pages"
            ));
        }
    }
    if !guarded && let Some(host) = host {
        let name = match host.strip_prefix('[') {
            Some(bracketed) => bracketed.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        if name.parse::<std::net::IpAddr>().is_err() && !is_localhost_name(name) {
            return Some(format!(
                "Host {host} is a name, and this API has no token: without one it answers only requests addressed to an IP address or localhost (a web page can make a name of its own resolve to this machine); use the address, or set a token"
            ));
        }
    }
    None
}

/// `localhost` or `localhost.`, which resolve to the loopback interface from the hosts file and
/// never from DNS. Names under it (`app.localhost`) are not taken: RFC 6761 reserves them for
/// loopback too, and Chrome and Firefox resolve them there themselves, but not every browser
/// does, and one that asks DNS for them could be given an attacker's address.
fn is_localhost_name(name: &str) -> bool {
    name.strip_suffix('.').unwrap_or(name).eq_ignore_ascii_case("localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> axum::http::HeaderMap {
        let mut map = axum::http::HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn browser_forgeries_are_told_from_the_operators_tools() {
        // curl, the CLI and Switchyard's own clients: no Origin, an address or localhost.
        for host in [
            "127.0.0.1:8404",
            "[::1]:8404",
            "localhost:8404",
            "LOCALHOST",
            "localhost.:8404",
            "10.0.0.5",
        ] {
            assert_eq!(browser_forgery(&headers(&[("host", host)]), false), None, "{host}");
        }
        // A page's cross-origin POST, a sandboxed page, a browser's own cross-site mark.
        for pairs in [
            &[("host", "127.0.0.1:8404"), ("origin", "https://evil.example")][..],
            &[("host", "127.0.0.1:8404"), ("origin", "null")],
            &[("host", "127.0.0.1:8404"), ("sec-fetch-site", "cross-site")],
        ] {
            for guarded in [false, true] {
                assert!(browser_forgery(&headers(pairs), guarded).is_some(), "{pairs:?}");
            }
        }
        // The API's own page (same origin) may post.
        let own = headers(&[("host", "127.0.0.1:8404"), ("origin", "http://127.0.0.1:8404")]);
        assert_eq!(browser_forgery(&own, false), None);
        // DNS rebinding: a name of the attacker's resolving to loopback, same-origin to the page.
        let rebound = headers(&[
            ("host", "rebind.attacker.example:8404"),
            ("origin", "http://rebind.attacker.example:8404"),
        ]);
        assert!(browser_forgery(&rebound, false).is_some_and(|why| why.contains("no token")));
        for name in [
            "notlocalhost:8404",
            "localhost.attacker.example",
            "xlocalhost.",
            "localhost..",
            ".",
            "grafana.localhost:8404",
        ] {
            assert!(
                browser_forgery(&headers(&[("host", name)]), false).is_some(),
                "{name} is not a loopback name"
            );
        }
        assert_eq!(browser_forgery(&rebound, true), None, "a token stops what a name would");
    }

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
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            headers.insert(
                axum::http::header::AUTHORIZATION,
                format!("{scheme} abc").parse().expect("a header"),
            );
            assert_eq!(bearer(&headers), Some("abc"), "the scheme is case-insensitive");
        }
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Bearer"), None);
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
