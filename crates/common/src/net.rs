//! Address prefixes (`10.0.0.0/8`, `::1/128`) as the access lists of the DNS server and the
//! fault proxy match them.

use std::net::IpAddr;

/// `ip`, an IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack socket reports for
/// an IPv4 client) as the IPv4 address it maps.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` ([`canonical`]) is in the prefix of `length` bits of `network`; an address of
/// the other family never is.
pub fn prefix_contains(network: IpAddr, length: u8, ip: IpAddr) -> bool {
    match (network, canonical(ip)) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(length)).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(length)).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_their_family_and_mapped_addresses() {
        let ip = |text: &str| text.parse::<IpAddr>().expect("address");
        assert!(prefix_contains(ip("10.0.0.0"), 8, ip("10.200.3.4")));
        assert!(!prefix_contains(ip("10.0.0.0"), 8, ip("11.0.0.1")));
        assert!(prefix_contains(ip("10.0.0.0"), 8, ip("::ffff:10.1.2.3")));
        assert!(prefix_contains(ip("0.0.0.0"), 0, ip("192.0.2.1")));
        assert!(prefix_contains(ip("2001:db8::"), 32, ip("2001:db8:1::5")));
        assert!(!prefix_contains(ip("2001:db8::"), 32, ip("10.0.0.1")));
        assert!(prefix_contains(ip("::1"), 128, ip("::1")));
    }
}
