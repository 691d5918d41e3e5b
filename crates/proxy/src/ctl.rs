//! The client side of the runtime API, for `switchyard proxy-ctl`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::admin::ServerView;

/// How long one admin call may take.
pub const CALL_TIMEOUT_MS: u64 = 10_000;
/// Largest admin response read.
const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("'{0}' is not an admin URL; write it like http://127.0.0.1:8404")]
    BadUrl(String),
    #[error(
        "cannot reach the proxy's admin API at {address}: {message} (is `switchyard proxy` running with admin_listen there?)"
    )]
    Unreachable { address: String, message: String },
    #[error("the admin API answered {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the admin API sent something unexpected: {0}")]
    Unexpected(String),
}

/// Calls the admin API; returns the body of a 2xx response.
pub async fn call(
    admin_url: &str,
    token: Option<&str>,
    method: hyper::Method,
    path: &str,
    body: Option<String>,
) -> Result<String, CtlError> {
    let rest = admin_url
        .strip_prefix("http://")
        .ok_or_else(|| CtlError::BadUrl(admin_url.to_owned()))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || !authority.contains(':') {
        return Err(CtlError::BadUrl(admin_url.to_owned()));
    }
    let unreachable = |message: String| CtlError::Unreachable {
        address: authority.to_owned(),
        message,
    };
    let exchange = async {
        let stream = TcpStream::connect(authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *request.method_mut() = method;
        *request.uri_mut() = path.parse().map_err(|_| CtlError::BadUrl(path.to_owned()))?;
        let headers = request.headers_mut();
        headers.insert(
            header::HOST,
            HeaderValue::from_str(authority).map_err(|_| CtlError::BadUrl(admin_url.to_owned()))?,
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(token) = token {
            let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                .map_err(|_| CtlError::Unexpected("the token has characters a header cannot carry".into()))?;
            headers.insert(header::AUTHORIZATION, value);
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| CtlError::Unexpected(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if !status.is_success() {
            return Err(CtlError::Refused {
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(text)
    };
    tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {CALL_TIMEOUT_MS} ms")))?
}

/// `GET /v1/servers`, parsed.
pub async fn servers(admin_url: &str, token: Option<&str>) -> Result<Vec<ServerView>, CtlError> {
    let body = call(admin_url, token, hyper::Method::GET, "/v1/servers", None).await?;
    serde_json::from_str(&body).map_err(|e| CtlError::Unexpected(format!("{e}: {body}")))
}

/// `POST /v1/servers/{name}/state`; returns the server afterwards.
pub async fn set_server(admin_url: &str, token: Option<&str>, name: &str, state: &str) -> Result<String, CtlError> {
    let body = serde_json::json!({ "state": state }).to_string();
    call(
        admin_url,
        token,
        hyper::Method::POST,
        &format!("/v1/servers/{name}/state"),
        Some(body),
    )
    .await
}

/// `POST /v1/servers/{name}/weight`.
pub async fn set_weight(admin_url: &str, token: Option<&str>, name: &str, weight: u32) -> Result<String, CtlError> {
    let body = serde_json::json!({ "weight": weight }).to_string();
    call(
        admin_url,
        token,
        hyper::Method::POST,
        &format!("/v1/servers/{name}/weight"),
        Some(body),
    )
    .await
}

/// The servers as pretty JSON.
pub fn servers_json(servers: &[ServerView]) -> String {
    serde_json::to_string_pretty(servers).expect("server views hold only strings and numbers")
}

/// A fixed-width table like `show servers state`.
pub fn format_servers(servers: &[ServerView]) -> String {
    // One format for the header and the rows.
    let row = |c: [&dyn std::fmt::Display; 9]| {
        format!(
            "{:<16} {:<22} {:<14} {:>6} {:>6} {:>10} {:>8} {:<6} {}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
        )
    };
    let mut out = row([
        &"NAME",
        &"ADDRESS",
        &"STATUS",
        &"WEIGHT",
        &"ACTIVE",
        &"REQUESTS",
        &"ERRORS",
        &"BACKUP",
        &"LAST CHECK",
    ]);
    for s in servers {
        let weight = format!("{}/{}", s.effective_weight, s.weight);
        let backup = if s.backup { "yes" } else { "no" };
        out.push_str(&row([
            &s.name,
            &s.address,
            &s.status,
            &weight,
            &s.active,
            &s.requests,
            &s.errors,
            &backup,
            &s.last_check,
        ]));
    }
    out
}
