//! The proxy's HTTP/1.1 core parsers: the request head (Host rules, framing and smuggling
//! checks, the rewrite for the server), the chunked-body decoder (whole and in two pieces) and
//! the response head, through `proxy::h1::exercise_parsers`.
//! Run with `cargo +nightly fuzz run proxy_h1 corpus/proxy_h1 seeds/proxy_h1`.
//! Never panics. The same entry point runs over a corpus of nasty inputs in
//! `cargo test -p proxy` (`h1::tests::nasty_inputs_never_panic`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    proxy::h1::exercise_parsers(data);
});
