//! Who may drive the fault proxy and where it may relay: the control API's token (required
//! when it listens beyond loopback) and the allow list of upstream networks (loopback unless
//! configured), so a fault proxy cannot be turned into an open relay into the networks it
//! reaches.
//!
//! Pure: no I/O (the caller resolves names and passes addresses).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::Deserialize;

/// Environment variable holding the control API's token (or use `--token-file`).
pub const TOKEN_ENV: &str = "SWITCHYARD_FAULT_PROXY_TOKEN";

/// An address prefix: `10.0.0.0/8`, `192.0.2.7` (a /32), `::1/128`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    address: IpAddr,
    length: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        common::net::prefix_contains(self.address, self.length, ip)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.length)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Cidr, String> {
        let bad =
            || format!("'{text}' is not an address or CIDR prefix; write it like 10.0.0.0/8, 192.0.2.7 or ::1/128");
        let (address, length) = match text.trim().split_once('/') {
            Some((address, length)) => (address, Some(length)),
            None => (text.trim(), None),
        };
        let address = common::net::canonical(address.parse::<IpAddr>().map_err(|_| bad())?);
        let max = if address.is_ipv4() { 32 } else { 128 };
        let length = match length {
            Some(length) => length.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { address, length })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(text: String) -> Result<Cidr, String> {
        text.parse()
    }
}

/// The networks proxies may relay to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowList {
    networks: Vec<Cidr>,
}

impl AllowList {
    /// Exactly `networks`; none at all means loopback only.
    pub fn new(networks: Vec<Cidr>) -> AllowList {
        if networks.is_empty() {
            return AllowList::default();
        }
        AllowList { networks }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
    }

    pub fn networks(&self) -> &[Cidr] {
        &self.networks
    }

    /// The list as text for messages: `127.0.0.0/8, ::1/128`.
    pub fn describe(&self) -> String {
        self.networks.iter().map(Cidr::to_string).collect::<Vec<_>>().join(", ")
    }
}

impl Default for AllowList {
    /// Loopback only.
    fn default() -> AllowList {
        AllowList {
            networks: vec![
                Cidr {
                    address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                    length: 8,
                },
                Cidr {
                    address: IpAddr::V6(Ipv6Addr::LOCALHOST),
                    length: 128,
                },
            ],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExposureError {
    #[error(
        "refusing to serve the fault proxy's control API on {0} without a token: anyone who can reach it could cut links or relay through this host\n    fix: pass --token-file FILE (or set {TOKEN_ENV}), or listen on a loopback address such as 127.0.0.1"
    )]
    OpenToNetwork(SocketAddr),
}

/// A control API without a token listens on loopback only.
pub fn check_exposure(listen: SocketAddr, token: Option<&str>) -> Result<(), ExposureError> {
    if common::secret::open_to_network(listen, token.is_some_and(|t| !t.is_empty())) {
        Err(ExposureError::OpenToNetwork(listen))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address literal")
    }

    #[test]
    fn prefixes_parse_and_match() {
        let net: Cidr = "10.20.0.0/16".parse().expect("prefix");
        assert!(net.contains(ip("10.20.3.4")));
        assert!(net.contains(ip("::ffff:10.20.3.4")));
        assert!(!net.contains(ip("10.21.0.1")));
        let host: Cidr = "192.0.2.7".parse().expect("address");
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));
        let all: Cidr = "0.0.0.0/0".parse().expect("prefix");
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("2001:db8::1")));
        let v6: Cidr = "2001:db8::/32".parse().expect("prefix");
        assert!(v6.contains(ip("2001:db8:1::1")));
        for bad in ["10.0.0.0/33", "localhost", "10.0.0.0/x", "::/129", ""] {
            let error = bad.parse::<Cidr>().expect_err(bad);
            assert!(error.contains(&format!("'{bad}'")) && error.contains("like"), "{error}");
        }
    }

    #[test]
    fn the_default_allows_loopback_only() {
        let allowed = AllowList::new(Vec::new());
        assert!(allowed.allows(ip("127.0.0.1")) && allowed.allows(ip("127.3.2.1")) && allowed.allows(ip("::1")));
        assert!(!allowed.allows(ip("10.0.0.1")) && !allowed.allows(ip("169.254.169.254")));
        assert_eq!(allowed.describe(), "127.0.0.0/8, ::1/128");
        let given = AllowList::new(vec!["10.0.0.0/8".parse().expect("prefix")]);
        assert!(
            given.allows(ip("10.1.2.3")) && !given.allows(ip("127.0.0.1")),
            "a list replaces the default"
        );
    }

    #[test]
    fn a_token_is_needed_beyond_loopback() {
        let open: SocketAddr = "0.0.0.0:8474".parse().expect("literal");
        let local: SocketAddr = "127.0.0.1:8474".parse().expect("literal");
        let error = check_exposure(open, None).expect_err("open without a token");
        assert!(error.to_string().contains("--token-file") && error.to_string().contains(TOKEN_ENV));
        assert!(check_exposure(open, Some("")).is_err());
        assert!(check_exposure(open, Some("secret")).is_ok());
        assert!(check_exposure(local, None).is_ok());
        assert!(check_exposure("[::1]:1".parse().expect("literal"), None).is_ok());
    }
}
