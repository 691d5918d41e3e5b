//! What DynamoDB's endpoint does over HTTP besides the operations: compressed request bodies
//! (`Content-Encoding: gzip` or `deflate`, which boto3's request compression sends), the
//! `GET /` health answer, and CORS for browser SDKs (the preflight `OPTIONS /` and the
//! `Access-Control-*` headers on answers to requests that carry an `Origin`).
//!
//! As DynamoDB answers: a body that does not inflate (an unknown encoding, broken or empty
//! gzip/deflate data) is a 500 InternalServerError, with a message naming the problem; CORS
//! headers only answer a request with an `Origin` header (a browser's); a preflight allows the
//! method and headers it asked for; `GET /` says `healthy: <the Host the client reached>`.
//!
//! Invariant: a compressed body is inflated after its signature was checked (SigV4 signs the
//! bytes sent) and never past [`crate::server::REQUEST_BODY_BYTES_MAX`] bytes: a body inflating
//! beyond it is refused with 413, as an uncompressed body of that size is.

use std::io::{Read, Write};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::http::Refusal;
use dynamo_protocol::ApiError;

/// How long browsers may cache a preflight answer, in seconds.
pub const CORS_MAX_AGE_SECONDS: u32 = 172_800;
/// The methods the endpoint serves.
const CORS_METHODS: &str = "GET, POST, OPTIONS";
/// The request headers an SDK sends, allowed when a preflight does not name its own.
const CORS_HEADERS: &str = "content-type, content-encoding, authorization, x-amz-target, x-amz-date, x-amz-user-agent, x-amz-security-token, x-amz-content-sha256, amz-sdk-invocation-id, amz-sdk-request";
/// Response headers a browser script may read.
const CORS_EXPOSE: &str = "x-amzn-requestid, x-amz-crc32, x-amz-id-2";

/// Why a body could not be inflated.
pub enum Inflate {
    /// Inflated past the limit: the response is the limit's 413.
    TooLarge(Refusal),
    Invalid(ApiError),
}

/// The request body as the operation reads it: inflated when `Content-Encoding` says gzip or
/// deflate (zlib, or raw deflate as some clients send), as is without one (or `identity`).
pub fn inflate(headers: &HeaderMap, body: Bytes, limit_bytes: usize) -> Result<Bytes, Inflate> {
    let Some(encoding) = compression(headers, &body)? else {
        return Ok(body);
    };
    let mut inflated = Vec::new();
    read_inflated(&encoding, &body, limit_bytes, &mut inflated)?;
    Ok(Bytes::from(inflated))
}

/// The bytes `body` inflates to (at most `limit_bytes`, else the limit's refusal), without
/// keeping them: what to make room for before [`inflate`]. `None` when it is not compressed.
pub fn inflated_bytes(headers: &HeaderMap, body: &[u8], limit_bytes: usize) -> Result<Option<usize>, Inflate> {
    let Some(encoding) = compression(headers, body)? else {
        return Ok(None);
    };
    read_inflated(&encoding, body, limit_bytes, &mut std::io::sink()).map(Some)
}

/// The body's compression, from `Content-Encoding`: `None` for none (or `identity`).
fn compression(headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, Inflate> {
    let Some(encoding) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(None);
    };
    let encoding = encoding.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(None),
        "gzip" | "x-gzip" | "deflate" if body.is_empty() => Err(Inflate::Invalid(ApiError::internal(format!(
            "The request body is empty but Content-Encoding says {encoding}: send the compressed body, or drop the header"
        )))),
        "gzip" | "x-gzip" | "deflate" => Ok(Some(encoding)),
        other => Err(Inflate::Invalid(ApiError::internal(format!(
            "Content-Encoding '{other}' is not supported: send the body uncompressed, or compressed with gzip or deflate"
        )))),
    }
}

/// Inflates `body` (compressed as `encoding`, one [`compression`] accepted) into `out`, at most
/// `limit_bytes`; the bytes it inflated to.
fn read_inflated(encoding: &str, body: &[u8], limit_bytes: usize, out: &mut dyn Write) -> Result<usize, Inflate> {
    let mut reader: Box<dyn Read + '_> = match encoding {
        "deflate" => {
            // RFC 9110's deflate is zlib-wrapped; some clients send the raw stream.
            let zlib =
                body.len() >= 2 && ((u16::from(body[0]) << 8) | u16::from(body[1])) % 31 == 0 && (body[0] & 0x0f) == 8;
            if zlib {
                Box::new(flate2::read::ZlibDecoder::new(body))
            } else {
                Box::new(flate2::read::DeflateDecoder::new(body))
            }
        }
        _ => Box::new(flate2::read::MultiGzDecoder::new(body)),
    };
    // One byte past the limit tells "at the limit" from "over it".
    let inflated = std::io::copy(&mut (&mut reader).take(limit_bytes as u64 + 1), out).map_err(|error| {
        Inflate::Invalid(ApiError::internal(format!(
            "The request body is not valid {encoding} data ({error}); compress it with {encoding} or drop the Content-Encoding header"
        )))
    })?;
    if inflated > limit_bytes as u64 {
        return Err(Inflate::TooLarge(Refusal::BodyTooLarge {
            declared_bytes: None,
            limit_bytes,
        }));
    }
    Ok(inflated as usize)
}

/// Responses larger than this many bytes are compressed when the client accepts gzip or
/// deflate, as DynamoDB compresses them (smaller ones are sent as they are).
pub const RESPONSE_COMPRESSION_THRESHOLD_BYTES: usize = 4096;

/// A response body encoding the endpoint can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseEncoding {
    Gzip,
    /// zlib-wrapped deflate (RFC 9110's `deflate`).
    Deflate,
}

impl ResponseEncoding {
    pub fn name(self) -> &'static str {
        match self {
            ResponseEncoding::Gzip => "gzip",
            ResponseEncoding::Deflate => "deflate",
        }
    }
}

/// The encoding to answer in, from the first `Accept-Encoding` header (RFC 9110 §12.5.3), as
/// DynamoDB reads it: the acceptable (`q` > 0) of gzip and deflate with the highest quality, the
/// one listed first on a tie; `*` stands for those not listed, gzip first. `identity`, other
/// codings and malformed entries choose nothing. An entry's quality is the value after the
/// first `q=` in its parameters (anywhere: DynamoDB matches `nq=0` too, and not `q =`), up to
/// the next `;`: one that does not parse as a decimal counts as 1, above 1 as 1, below 0 as 0.
/// A second `Accept-Encoding` header is ignored, as DynamoDB ignores it.
pub fn response_encoding(headers: &HeaderMap) -> Option<ResponseEncoding> {
    let mut explicit: Vec<(ResponseEncoding, f32, usize)> = Vec::new();
    let mut wildcard: Option<f32> = None;
    let entries = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .split(',');
    for (position, entry) in entries.enumerate() {
        let (coding, parameters) = entry.split_once(';').unwrap_or((entry, ""));
        let coding = coding.trim().to_ascii_lowercase();
        let quality = accept_quality(parameters);
        match coding.as_str() {
            "gzip" => explicit.push((ResponseEncoding::Gzip, quality, position)),
            "deflate" => explicit.push((ResponseEncoding::Deflate, quality, position)),
            "*" => wildcard = Some(wildcard.map_or(quality, |q: f32| q.max(quality))),
            _ => {}
        }
    }
    let mut candidates: Vec<(ResponseEncoding, f32, usize)> = Vec::new();
    for encoding in [ResponseEncoding::Gzip, ResponseEncoding::Deflate] {
        // A coding listed more than once has its best quality (at that entry's place).
        let best = explicit
            .iter()
            .filter(|(e, _, _)| *e == encoding)
            .copied()
            .reduce(|best, next| if next.1 > best.1 { next } else { best });
        match best {
            Some(found) => candidates.push(found),
            None => {
                if let Some(quality) = wildcard {
                    // `*` ranks after every explicit entry, gzip before deflate.
                    candidates.push((encoding, quality, usize::MAX - 1 + encoding as usize));
                }
            }
        }
    }
    candidates
        .into_iter()
        .filter(|(_, quality, _)| *quality > 0.0)
        .min_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)))
        .map(|(encoding, _, _)| encoding)
}

/// The quality in an `Accept-Encoding` entry's parameters (see [`response_encoding`]).
fn accept_quality(parameters: &str) -> f32 {
    let lower = parameters.to_ascii_lowercase();
    let Some(at) = lower.find("q=") else {
        return 1.0;
    };
    let value = lower[at + 2..].split(';').next().unwrap_or("").trim();
    let decimal = !value.is_empty()
        && value.bytes().any(|b| b.is_ascii_digit())
        && value
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || b == b'.' || (i == 0 && (b == b'-' || b == b'+')));
    if !decimal {
        return 1.0;
    }
    value.parse::<f32>().unwrap_or(1.0).clamp(0.0, 1.0)
}

/// `body` compressed with `encoding` (flate2's default level).
pub fn compress(encoding: ResponseEncoding, body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let result = match encoding {
        ResponseEncoding::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(body).and_then(|()| encoder.finish())
        }
        ResponseEncoding::Deflate => {
            let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(body).and_then(|()| encoder.finish())
        }
    };
    // Writing into a Vec cannot fail.
    result.unwrap_or_else(|_| body.to_vec())
}

/// Compresses a response body larger than [`RESPONSE_COMPRESSION_THRESHOLD_BYTES`] when the
/// request accepts gzip or deflate, setting `Content-Encoding`; always adds
/// `Vary: Accept-Encoding` (the answer depends on it).
pub fn encode_response(request: &HeaderMap, body: Vec<u8>, response_headers: &mut HeaderMap) -> Vec<u8> {
    response_headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if body.len() <= RESPONSE_COMPRESSION_THRESHOLD_BYTES {
        return body;
    }
    let Some(encoding) = response_encoding(request) else {
        return body;
    };
    response_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.name()));
    compress(encoding, &body)
}

/// DescribeEndpoints: the address the client reached, with its port (the `Host` header), as
/// DynamoDB Local answers; without a usable `Host`, `localhost`.
pub fn describe_endpoints(headers: &HeaderMap) -> serde_json::Value {
    let address = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.len() <= 255)
        .unwrap_or("localhost");
    serde_json::json!({"Endpoints": [{"Address": address, "CachePeriodInMinutes": 1440}]})
}

/// `GET /`: DynamoDB's endpoint answers a plain-text health line naming the host the client
/// reached (`healthy: dynamodb.us-east-1.amazonaws.com `); here the request's `Host` (with its
/// port), or DynamoDB's name for the region without a usable one.
pub fn root_health(headers: &HeaderMap, region: &str) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.len() <= 255)
        .map_or_else(|| format!("dynamodb.{region}.amazonaws.com"), str::to_string);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain")],
        format!("healthy: {host} "),
    )
        .into_response()
}

/// The answer to a CORS preflight (`OPTIONS`): every origin, the method and headers the browser
/// asked for (the endpoint's methods and an SDK's headers when it named none), cached for
/// [`CORS_MAX_AGE_SECONDS`]. Without an `Origin` it is not a preflight: a bare 200.
pub fn preflight(headers: &HeaderMap) -> Response {
    let mut response = StatusCode::OK.into_response();
    let out = response.headers_mut();
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    if !headers.contains_key(header::ORIGIN) {
        return response;
    }
    let method = headers
        .get("access-control-request-method")
        .filter(|value| value.to_str().is_ok_and(|v| !v.trim().is_empty()))
        .cloned()
        .unwrap_or(HeaderValue::from_static(CORS_METHODS));
    out.insert("access-control-allow-methods", method);
    let requested = headers
        .get("access-control-request-headers")
        .filter(|value| value.to_str().is_ok_and(|v| !v.trim().is_empty()))
        .cloned()
        .unwrap_or(HeaderValue::from_static(CORS_HEADERS));
    out.insert("access-control-allow-headers", requested);
    out.insert("access-control-max-age", HeaderValue::from(CORS_MAX_AGE_SECONDS));
    response
}

/// DynamoDB answers 400 to a request whose headers total more than this many bytes (names and
/// values), and to one whose request line (the path and query) is longer: bounds on what a
/// client may make the server hold before it reads the body.
pub const REQUEST_HEADERS_BYTES_MAX: usize = 16 * 1024;
pub const REQUEST_TARGET_BYTES_MAX: usize = 16 * 1024;

/// Refuses, with 400 and a message naming the limit, a request whose headers or request
/// target exceed [`REQUEST_HEADERS_BYTES_MAX`] or [`REQUEST_TARGET_BYTES_MAX`]; passes the
/// rest on.
pub async fn with_request_head_limits(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let target = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let refusal = if target > REQUEST_TARGET_BYTES_MAX {
        Some(format!(
            "The request line's target is {target} bytes, over the {REQUEST_TARGET_BYTES_MAX} bytes allowed; DynamoDB's API is served at /"
        ))
    } else if headers > REQUEST_HEADERS_BYTES_MAX {
        Some(format!(
            "The request's headers total {headers} bytes, over the {REQUEST_HEADERS_BYTES_MAX} bytes allowed; drop the headers the request does not need"
        ))
    } else {
        None
    };
    match refusal {
        Some(message) => {
            let body = serde_json::json!({
                "__type": "com.amazon.coral.validate#ValidationException",
                "message": message,
            });
            let mut response = (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/x-amz-json-1.0")],
                body.to_string(),
            )
                .into_response();
            // A browser SDK reads the refusal only if CORS allows it (the CORS layer is inside).
            if request.headers().contains_key(header::ORIGIN) {
                response
                    .headers_mut()
                    .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            }
            response
        }
        None => next.run(request).await,
    }
}

/// How many characters a request id has: DynamoDB's are 52 upper-case letters and digits.
pub const REQUEST_ID_CHARS: usize = 52;

/// A fresh request id in DynamoDB's shape ([`REQUEST_ID_CHARS`] of `A-Z0-9`).
///
/// Ids must differ, not be secret: each is drawn from a SplitMix64 stream keyed by a process
/// seed (OS randomness, read once) and a counter, so no id repeats within a process and two
/// processes' ids differ, without a `getrandom` call per answer on the hot path.
pub fn request_id() -> String {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    const ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            // No entropy: the time and pid still tell this process's ids from another's.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            bytes = (nanos ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
        }
        u64::from_le_bytes(bytes)
    });
    let mut state = seed
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0xA076_1D64_78BD_642F);
    let mut next = move || {
        // SplitMix64 (Steele, Lea, Flood 2014).
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut id = String::with_capacity(REQUEST_ID_CHARS);
    let mut word = 0u64;
    let mut left = 0u32;
    for _ in 0..REQUEST_ID_CHARS {
        if left == 0 {
            // Twelve base-36 digits per 64-bit word (36^12 < 2^64).
            word = next();
            left = 12;
        }
        id.push(char::from(ALPHABET[(word % 36) as usize]));
        word /= 36;
        left -= 1;
    }
    id
}

/// The headers DynamoDB puts on every answer, errors included: `x-amzn-RequestId` (SDKs report
/// it as the request's id) and `x-amz-crc32`, the CRC-32 of the body as sent (after any
/// `Content-Encoding`), which SDKs check to catch a corrupted answer.
pub fn answer_headers(body: &[u8]) -> [(&'static str, String); 2] {
    [
        ("x-amzn-requestid", request_id()),
        ("x-amz-crc32", crc32fast::hash(body).to_string()),
    ]
}

/// Adds [`answer_headers`] to every answer the router gives (the listener's own refusals get
/// them from the store's rendering).
pub async fn with_answer_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let (mut parts, body) = response.into_parts();
    // The request's share of the budget in flight, kept until the answer has been taken.
    let held = parts.extensions.remove::<crate::in_flight::Held>();
    // Every answer is already in memory (JSON, or the health and metrics text).
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "an answer's body could not be read");
            parts.status = StatusCode::INTERNAL_SERVER_ERROR;
            Bytes::from(
                serde_json::json!({
                    "__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                    "message": "The answer could not be produced; retry the request",
                })
                .to_string(),
            )
        }
    };
    for (name, value) in answer_headers(&body) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            parts.headers.insert(name, value);
        }
    }
    Response::from_parts(parts, crate::in_flight::HeldAnswer::body(body, held))
}

/// What DynamoDB's endpoints answer in the `Server` header, on every response.
pub const SERVER_HEADER: &str = "Server";

/// Adds `Server: Server` to every answer (errors included), as DynamoDB's endpoints do.
pub async fn with_server_header(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(header::SERVER, HeaderValue::from_static(SERVER_HEADER));
    response
}

/// Adds the CORS headers to the answer of a request that carries an `Origin` (a browser's).
pub async fn with_cors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let cross_origin = request.headers().contains_key(header::ORIGIN);
    let mut response = next.run(request).await;
    if cross_origin {
        let headers = response.headers_mut();
        headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        headers.insert("access-control-expose-headers", HeaderValue::from_static(CORS_EXPOSE));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn request_ids_have_dynamodbs_shape_and_never_repeat() {
        let ids: std::collections::HashSet<String> = (0..20_000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 20_000, "an id repeated");
        for id in ids.iter().take(100) {
            assert_eq!(id.len(), REQUEST_ID_CHARS, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()), "{id}");
        }
        // Every character of the alphabet turns up (the digits are not skewed away).
        let seen: std::collections::HashSet<u8> = ids.iter().flat_map(|id| id.bytes()).collect();
        assert_eq!(seen.len(), 36);
    }

    fn headers(encoding: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_str(encoding).expect("header"),
        );
        headers
    }

    fn gzip(bytes: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("compress");
        Bytes::from(encoder.finish().expect("finish"))
    }

    fn accepting(values: &[&str]) -> Option<ResponseEncoding> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::ACCEPT_ENCODING, HeaderValue::from_str(value).expect("header"));
        }
        response_encoding(&headers)
    }

    #[test]
    fn the_response_encoding_follows_accept_encoding() {
        use ResponseEncoding::{Deflate, Gzip};
        for (value, expected) in [
            ("", None),
            ("identity", None),
            ("br", None),
            ("x-gzip", None),
            ("gzip", Some(Gzip)),
            ("deflate", Some(Deflate)),
            ("gzip, deflate", Some(Gzip)),
            ("br, identity, deflate, gzip", Some(Deflate)),
            ("GZIP, identity", Some(Gzip)),
            ("dog, gzip ,, cat", Some(Gzip)),
            ("gzip;q=0.8, deflate;q=0.5", Some(Gzip)),
            ("br, gzip;q=0, deflate; q = 0.5 , identity;q=0", Some(Deflate)),
            ("*", Some(Gzip)),
            ("*, deflate", Some(Deflate)),
            ("*, deflate;q=0.5", Some(Gzip)),
            ("*, gzip;q=0.5", Some(Deflate)),
            ("gzip ;q=0", None),
            ("*;q=0", None),
            ("\"gzip\"", None),
            ("gzip br", None),
            ("deflate;q=0.5, gzip;q=31", Some(Gzip)),
            ("br,identity;q=0.5,gzip;q=0.0001", Some(Gzip)),
            ("gzip; q=0;q=1", None),
            ("gzip;q =0;q=1", Some(Gzip)),
            ("gzip;q=0, gzip;q=1, gzip;q=0", Some(Gzip)),
            ("gzip;nq=0;q=1", None),
            ("gzip;q= 0;q=1", None),
            ("deflate;q=0.5, gzip;q=1;q=0.2", Some(Gzip)),
            ("deflate;q=0.5,gzip;q=0.", Some(Deflate)),
            ("deflate;q=0.5,gzip;q=0.x", Some(Gzip)),
            ("deflate;q=0.5,gzip;q=0. x", Some(Gzip)),
            ("deflate;q=-0.5,gzip;q=0.2", Some(Gzip)),
            ("deflate;q=0.5,gzip;q=inf", Some(Gzip)),
            ("gzip;q=nan", Some(Gzip)),
            ("*;q=0.5,identity", Some(Gzip)),
            ("br;q=0.8,identity;q=0.5,*;q=0", None),
        ] {
            assert_eq!(accepting(&[value]), expected, "{value}");
        }
        // Only the first header counts, as DynamoDB reads them.
        assert_eq!(accepting(&["identity", "deflate"]), None);
        assert_eq!(accepting(&["gzip", "identity"]), Some(Gzip));
    }

    #[test]
    fn only_large_responses_are_compressed() {
        let mut request = HeaderMap::new();
        request.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        let mut out = HeaderMap::new();
        let small = encode_response(&request, vec![b'x'; RESPONSE_COMPRESSION_THRESHOLD_BYTES], &mut out);
        assert_eq!(small.len(), RESPONSE_COMPRESSION_THRESHOLD_BYTES);
        assert!(!out.contains_key(header::CONTENT_ENCODING));
        let body = vec![b'x'; RESPONSE_COMPRESSION_THRESHOLD_BYTES + 1];
        let large = encode_response(&request, body.clone(), &mut out);
        assert_eq!(out[header::CONTENT_ENCODING], "gzip");
        let mut inflated = Vec::new();
        flate2::read::GzDecoder::new(&large[..])
            .read_to_end(&mut inflated)
            .expect("gzip");
        assert_eq!(inflated, body);
    }

    #[test]
    fn gzip_and_both_deflates_inflate() {
        let body = br#"{"TableName":"t"}"#;
        let ok = |result: Result<Bytes, Inflate>| match result {
            Ok(bytes) => bytes,
            Err(_) => panic!("did not inflate"),
        };
        assert_eq!(&ok(inflate(&headers("gzip"), gzip(body), 1024))[..], body);
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(body).expect("compress");
        let zlib = Bytes::from(zlib.finish().expect("finish"));
        assert_eq!(&ok(inflate(&headers("deflate"), zlib, 1024))[..], body);
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(body).expect("compress");
        let raw = Bytes::from(raw.finish().expect("finish"));
        assert_eq!(&ok(inflate(&headers("deflate"), raw, 1024))[..], body);
        assert_eq!(
            &ok(inflate(&HeaderMap::new(), Bytes::from_static(body), 1024))[..],
            body
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit_and_garbage_is_named() {
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 4096);
        assert!(matches!(inflate(&headers("gzip"), bomb.clone(), 1 << 20), Ok(b) if b.len() == 1 << 20));
        assert!(matches!(
            inflate(&headers("gzip"), bomb, (1 << 20) - 1),
            Err(Inflate::TooLarge(_))
        ));
        match inflate(&headers("gzip"), Bytes::from_static(b"not gzip"), 1024) {
            Err(Inflate::Invalid(error)) => assert!(error.message.contains("not valid gzip"), "{}", error.message),
            _ => panic!("garbage accepted"),
        }
        match inflate(&headers("br"), Bytes::from_static(b"x"), 1024) {
            Err(Inflate::Invalid(error)) => {
                assert!(error.message.contains("'br' is not supported"), "{}", error.message)
            }
            _ => panic!("brotli accepted"),
        }
    }
}
