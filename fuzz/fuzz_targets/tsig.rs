//! `common::tsig` on arbitrary bytes, as a server and as a client: reading the record, checking a
//! request against held keys (and answering a refusal), verifying an answer — never a panic.
#![no_main]

use common::tsig::{Key, RequestCheck, ResponseVerifier, read_record, verify_request};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let keys = [Key::new("xfr-key", "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=").expect("key")];
    let _ = read_record(data);
    if let RequestCheck::Refused(refusal) = verify_request(data, &keys, NOW) {
        let _ = refusal.respond(data, NOW);
    }
    let mut verifier = ResponseVerifier::new(&keys[0], &[0; 32]);
    let _ = verifier.verify_next(data, NOW);
    let _ = verifier.verify_next(data, NOW);
});
