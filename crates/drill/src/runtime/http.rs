//! A small HTTP/1.1 client (http:// and https://) over hyper for the workload, the monitors and the fault-proxy API:
//! pooled connections, a deadline on every request, a bound on every body.

use bytes::Bytes;
use common::tls_client::Connector;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Largest response body read.
pub const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Idle connections kept per host.
pub const POOL_IDLE_PER_HOST_MAX: usize = 16;
/// Connect timeout: a dead region must fail fast, not hang the client.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Idle pooled connections are dropped after this long.
pub const POOL_IDLE_TIMEOUT_MS: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request certainly did not reach the server (connection refused, bad URL).
    #[error("not sent: {0}")]
    NotSent(String),
    /// No answer within the deadline: it may or may not have been applied.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The connection broke after the request may have been sent.
    #[error("connection lost: {0}")]
    Lost(String),
}

impl HttpError {
    /// True when the server cannot have acted on the request.
    pub fn is_definite(&self) -> bool {
        matches!(self, HttpError::NotSent(_))
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        // `http://` and `https://` (verified against the process's trust: `--ca-file`, or a
        // `--tls` lab's own CA for `drill --lab`).
        let connector =
            Connector::new(common::tls_client::process_config()).with_connect_timeout_ms(CONNECT_TIMEOUT_MS);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST_MAX)
            .pool_idle_timeout(std::time::Duration::from_millis(POOL_IDLE_TIMEOUT_MS))
            .build(connector);
        HttpClient { client }
    }

    /// Sends one request and reads the whole answer within `timeout_ms`.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
        timeout_ms: u64,
    ) -> Result<Response, HttpError> {
        let mut builder = hyper::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| HttpError::NotSent(format!("bad request to {url}: {e}")))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if e.is_connect() {
                    HttpError::NotSent(format!("{url}: {e}"))
                } else {
                    HttpError::Lost(format!("{url}: {e}"))
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, BODY_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| HttpError::Lost(format!("{url}: reading the body: {e}")))?
                .to_bytes();
            Ok(Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), exchange)
            .await
            .unwrap_or(Err(HttpError::Timeout(timeout_ms)))
    }
}
