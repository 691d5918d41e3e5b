//! TSIG (RFC 8945) for the RFC 2136 step: the implementation is `common::tsig`, shared with
//! the DNS server's zone transfers and NOTIFY.

pub use common::tsig::*;

/// What a server does, for fakes in tests: the request's MAC, and a response signed over it.
#[cfg(test)]
pub(crate) mod server {
    use common::tsig::{Key, testing};

    /// The request without its TSIG (ARCOUNT lowered) and the request's MAC.
    pub fn unsigned_request(wire: &[u8]) -> (Vec<u8>, Vec<u8>) {
        testing::unsigned_request(wire).expect("a signed request")
    }

    /// `response` with an unsigned TSIG carrying `error`, as a server answers BADSIG or BADKEY.
    pub fn unsigned_error(response: &[u8], key: &Key, time_signed: u64, error: u16) -> Vec<u8> {
        testing::unsigned_error(response, key, time_signed, error).expect("a DNS message")
    }

    /// `response` (without TSIG) signed over `request_mac`, as RFC 8945 §5.3 has servers do.
    pub fn sign_response(response: &[u8], request_mac: &[u8], key: &Key, time_signed: u64, error: u16) -> Vec<u8> {
        testing::sign_response(response, request_mac, key, time_signed, error).expect("a DNS message")
    }
}
