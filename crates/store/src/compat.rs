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

use std::io::Read;

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
    let Some(encoding) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(body);
    };
    let encoding = encoding.to_str().unwrap_or("").trim().to_ascii_lowercase();
    if body.is_empty() && matches!(encoding.as_str(), "gzip" | "x-gzip" | "deflate") {
        return Err(Inflate::Invalid(ApiError::internal(format!(
            "The request body is empty but Content-Encoding says {encoding}: send the compressed body, or drop the header"
        ))));
    }
    let too_large = || {
        Inflate::TooLarge(Refusal::BodyTooLarge {
            declared_bytes: None,
            limit_bytes,
        })
    };
    let read_bounded = |reader: &mut dyn Read| -> Result<Vec<u8>, std::io::Error> {
        let mut out = Vec::new();
        // One byte past the limit tells "at the limit" from "over it".
        reader.take(limit_bytes as u64 + 1).read_to_end(&mut out)?;
        Ok(out)
    };
    let inflated = match encoding.as_str() {
        "" | "identity" => return Ok(body),
        "gzip" | "x-gzip" => read_bounded(&mut flate2::read::MultiGzDecoder::new(&body[..])),
        "deflate" => {
            // RFC 9110's deflate is zlib-wrapped; some clients send the raw stream.
            let zlib = body.len() >= 2
                && ((u16::from(body[0]) << 8) | u16::from(body[1])) % 31 == 0
                && (body[0] & 0x0f) == 8;
            if zlib {
                read_bounded(&mut flate2::read::ZlibDecoder::new(&body[..]))
            } else {
                read_bounded(&mut flate2::read::DeflateDecoder::new(&body[..]))
            }
        }
        other => {
            return Err(Inflate::Invalid(ApiError::internal(format!(
                "Content-Encoding '{other}' is not supported: send the body uncompressed, or compressed with gzip or deflate"
            ))));
        }
    }
    .map_err(|error| {
        Inflate::Invalid(ApiError::internal(format!(
            "The request body is not valid {encoding} data ({error}); compress it with {encoding} or drop the Content-Encoding header"
        )))
    })?;
    if inflated.len() > limit_bytes {
        return Err(too_large());
    }
    Ok(Bytes::from(inflated))
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
