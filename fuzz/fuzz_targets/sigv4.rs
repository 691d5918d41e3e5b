//! The SigV4 verifier on arbitrary Authorization / X-Amz-Date headers, query strings and
//! bodies: never panics, and refuses with one of the authentication errors DynamoDB uses.
#![no_main]

use dynamo_protocol::ErrorKind;
use dynamo_protocol::sigv4::{self, Credentials, RequestParts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, &str, &[u8], bool)| {
    let (authorization, amz_date, query, body, with_header) = input;
    let mut credentials = Credentials::new();
    credentials.insert("AKIDEXAMPLE", "secret");
    let mut headers: Vec<(&str, &[u8])> = vec![("host", b"localhost"), ("x-amz-date", amz_date.as_bytes())];
    if with_header {
        headers.push(("Authorization", authorization.as_bytes()));
    }
    let parts = RequestParts {
        method: "POST",
        path: "/",
        query,
        headers: &headers,
        body,
    };
    if let Err(error) = sigv4::verify(&credentials, &parts, 1_700_000_000) {
        assert!(
            matches!(
                error.kind,
                ErrorKind::IncompleteSignature
                    | ErrorKind::InvalidSignature
                    | ErrorKind::UnrecognizedClient
                    | ErrorKind::MissingAuthenticationToken
                    | ErrorKind::AccessDenied
            ),
            "{error}"
        );
    }
});
