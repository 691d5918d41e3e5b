//! HTTP probe: one HTTP/1.1 request on a fresh connection.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Finding, connect, tls};

/// A plain or TLS connection.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects to `host:port`, with TLS when `https`.
pub(super) async fn open(host: &str, port: u16, https: bool, ca_file: Option<&str>) -> Result<Box<dyn Stream>, String> {
    let stream = connect(&format!("{host}:{port}")).await?;
    if https {
        Ok(Box::new(tls::connect(stream, host, ca_file).await?))
    } else {
        Ok(Box::new(stream))
    }
}

/// Bytes of a response body searched for `body_contains`; the rest is not read.
pub const BODY_BYTES_MAX: usize = 64 * 1024;

pub(super) async fn probe(
    url: &str,
    method: &str,
    expect_status: Option<u16>,
    body_contains: Option<&str>,
    headers: &BTreeMap<String, String>,
    ca_file: Option<&str>,
) -> Finding {
    let uri: hyper::Uri = match url.parse() {
        Ok(uri) => uri,
        Err(error) => return Finding::down(format!("url '{url}': {error}")),
    };
    let Some(authority) = uri.authority().cloned() else {
        return Finding::down(format!("url '{url}' has no host"));
    };
    let https = uri.scheme_str() == Some("https");
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let address = format!("{}:{port}", authority.host());
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let stream = match open(authority.host(), port, https, ca_file).await {
        Ok(stream) => stream,
        Err(error) => return Finding::down(error),
    };
    let (mut sender, connection) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
        Ok(pair) => pair,
        Err(error) => return Finding::down(format!("HTTP handshake with {address}: {error}")),
    };
    // Aborted on drop too, so a probe cut at its timeout leaves no connection behind.
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::USER_AGENT, "switchyard-health/1")
        .header(hyper::header::CONNECTION, "close");
    // A configured Host (a virtual host behind a shared address) replaces the URL's.
    if !headers.keys().any(|name| name.eq_ignore_ascii_case("host")) {
        request = request.header(hyper::header::HOST, authority.as_str());
    }
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = match request.body(Empty::<Bytes>::new()) {
        Ok(request) => request,
        Err(error) => return Finding::down(format!("build request: {error}")),
    };
    let finding = match sender.send_request(request).await {
        Err(error) => Finding::down(format!("HTTP request to {address}: {error}")),
        Ok(response) => judge(response, expect_status, body_contains).await,
    };
    drop(driver);
    finding
}

async fn judge(
    response: hyper::Response<hyper::body::Incoming>,
    expect_status: Option<u16>,
    body_contains: Option<&str>,
) -> Finding {
    let status = response.status().as_u16();
    let status_ok = match expect_status {
        Some(expected) => status == expected,
        None => (200..400).contains(&status),
    };
    if !status_ok {
        let wanted = expect_status.map_or("2xx or 3xx".to_string(), |s| s.to_string());
        return Finding::down(format!("HTTP {status}, expected {wanted}"));
    }
    let Some(needle) = body_contains else {
        return Finding::up(format!("HTTP {status}"));
    };
    let body = match read_prefix(response.into_body(), BODY_BYTES_MAX).await {
        Ok(body) => body,
        Err(error) => return Finding::down(format!("HTTP {status}, reading the body: {error}")),
    };
    if contains(&body, needle.as_bytes()) {
        Finding::up(format!("HTTP {status}, body contains '{needle}'"))
    } else {
        Finding::down(format!(
            "HTTP {status}, but the body (first {} bytes) lacks '{needle}'",
            body.len()
        ))
    }
}

/// Sends one request on a fresh connection to `address`; returns the status and at most
/// `BODY_BYTES_MAX` bytes of the body.
pub(super) async fn exchange(
    host: &str,
    port: u16,
    https: bool,
    request: Request<http_body_util::Full<Bytes>>,
) -> Result<(u16, Vec<u8>), String> {
    let address = format!("{host}:{port}");
    let stream = open(host, port, https, None).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("HTTP handshake with {address}: {error}"))?;
    // Aborted on drop too, so a probe cut at its timeout leaves no connection behind.
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("HTTP request to {address}: {error}"))?;
        let status = response.status().as_u16();
        let body = read_prefix(response.into_body(), BODY_BYTES_MAX).await?;
        Ok((status, body))
    }
    .await;
    drop(driver);
    result
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads at most `limit` bytes of a body.
async fn read_prefix<B>(mut body: B, limit: usize) -> Result<Vec<u8>, String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = Vec::new();
    while out.len() < limit {
        match body.frame().await {
            None => break,
            Some(Err(error)) => return Err(error.to_string()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(limit - out.len());
                    out.extend_from_slice(&data[..take]);
                }
            }
        }
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|window| window == needle)
}
