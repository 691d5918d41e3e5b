//! `common::tsig` on arbitrary bytes, as a server and as a client: reading the record, checking a
//! request against held keys (and answering a refusal), verifying an answer — never a panic.
#![no_main]

use common::tsig::{Key, RequestCheck, ResponseVerifier, read_record, verify_request};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    const SECRET: &str = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";
    // One key of each algorithm, each under a name of its own,
    // and one declared truncated.
    let keys: Vec<Key> = [
        "hmac-sha256",
        "hmac-sha1",
        "hmac-sha224",
        "hmac-sha384",
        "hmac-sha512",
        "hmac-sha256-128",
    ]
    .into_iter()
    .enumerate()
    .map(|(i, algorithm)| {
        let name = if i == 0 { "xfr-key".to_string() } else { format!("k{i}") };
        Key::parse(SECRET, Some(&name), Some(algorithm)).expect("key")
    })
    .collect();
    let _ = read_record(data);
    if let RequestCheck::Refused(refusal) = verify_request(data, &keys, NOW) {
        let _ = refusal.respond(data, NOW);
    }
    for key in &keys {
        let mut verifier = ResponseVerifier::new(key, &[0; 32]);
        let _ = verifier.verify_next(data, NOW);
        let _ = verifier.verify_next(data, NOW);
    }
});
