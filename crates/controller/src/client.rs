//! A small HTTP/1.1 client (hyper-util) with a timeout, a bearer token and a bounded response,
//! used by runbook steps, alerts, the CLI and the pointer watcher. `https://` URLs are verified
//! against the process's trust (`common::tls_client::process_config`: the Mozilla roots and
//! `--ca-file`).

use std::time::Duration;

use bytes::Bytes;
use common::tls_client::Connector;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Largest response body read.
pub const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The URLs in these errors are shown as [`common::text::shown_url`] shows them: the errors
/// reach step details, `/v1/status`, events and alerts, and a webhook URL is a credential.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("'{0}' is not a valid http:// or https:// URL")]
    BadUrl(String),
    #[error("{url}: no answer within {timeout_ms} ms")]
    Timeout { url: String, timeout_ms: u64 },
    /// No connection was made (refused, unreachable, or not within the connect timeout): the
    /// request was never sent, so another member may be asked without it acting twice.
    #[error("{url}: no connection: {message}")]
    Connect { url: String, message: String },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
}

impl ClientError {
    /// Whether the request certainly never reached the server.
    pub fn never_sent(&self) -> bool {
        matches!(self, ClientError::BadUrl(_) | ClientError::Connect { .. })
    }
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<Connector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(Connector::new(common::tls_client::process_config())),
        }
    }

    /// Sends one request; `json` bodies get `Content-Type: application/json`.
    pub async fn request(
        &self,
        method: hyper::Method,
        url: &str,
        token: Option<&str>,
        json: Option<Vec<u8>>,
        timeout_ms: u64,
    ) -> Result<Answer, ClientError> {
        self.request_with_headers(method, url, token, json, &[], timeout_ms)
            .await
    }

    /// `request` with extra headers (`(name, value)`).
    pub async fn request_with_headers(
        &self,
        method: hyper::Method,
        url: &str,
        token: Option<&str>,
        json: Option<Vec<u8>>,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<Answer, ClientError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| ClientError::BadUrl(common::text::shown_url(url)))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(ClientError::BadUrl(common::text::shown_url(url)));
        }
        let mut builder = hyper::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(token) = token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json {
            Some(json) => {
                builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder.body(body).map_err(|e| ClientError::Transport {
            url: common::text::shown_url(url),
            message: e.to_string(),
        })?;
        let work = async {
            let response = self.inner.request(request).await.map_err(|e| {
                let message = common::error::chain(&e);
                if e.is_connect() {
                    ClientError::Connect {
                        url: common::text::shown_url(url),
                        message,
                    }
                } else {
                    ClientError::Transport {
                        url: common::text::shown_url(url),
                        message,
                    }
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| ClientError::Transport {
                    url: common::text::shown_url(url),
                    message: format!("reading the body: {e}"),
                })?
                .to_bytes();
            Ok(Answer { status, body })
        };
        match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                url: common::text::shown_url(url),
                timeout_ms,
            }),
        }
    }
}
