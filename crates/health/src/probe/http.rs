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

/// Connects to `host:port`, with TLS set up by `tls` when `https`.
pub(super) async fn open(
    host: &str,
    port: u16,
    https: bool,
    tls: tls::Settings<'_>,
) -> Result<Box<dyn Stream>, String> {
    let stream = connect(&format!("{host}:{port}")).await?;
    if https {
        Ok(Box::new(tls::connect(stream, host, tls).await?))
    } else {
        Ok(Box::new(stream))
    }
}

/// Bytes of a response body searched for `body_contains` (`spec::BODY_SEARCH_BYTES`, 64 KiB:
/// Route 53 searches the first 5,120 bytes, so every string it finds is found here too);
/// reading stops at the first match, and the rest is not read.
pub const BODY_BYTES_MAX: usize = crate::spec::BODY_SEARCH_BYTES;

/// One configured HTTP check, as the probe needs it.
pub(super) struct Check<'a> {
    pub(super) url: &'a str,
    pub(super) method: &'a str,
    pub(super) expect_status: Option<u16>,
    pub(super) body_contains: Option<&'a str>,
    pub(super) headers: &'a BTreeMap<String, String>,
    pub(super) ca_file: Option<&'a str>,
    pub(super) tls_verify: bool,
}

/// The URL's user info (`user:password@`, percent-decoded) as an `Authorization: Basic` value,
/// as curl sends it.
fn basic_authorization(userinfo: &str) -> String {
    use base64::Engine;
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let mut credentials = percent_decode(user);
    credentials.push(b':');
    credentials.extend(percent_decode(password));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

/// `%XX` escapes decoded; anything else (a `%` without two hex digits too) kept as is.
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((high * 16 + low) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

pub(super) async fn probe(check: &Check<'_>) -> Finding {
    let shown = crate::spec::redact_url(check.url);
    let uri: hyper::Uri = match check.url.parse() {
        Ok(uri) => uri,
        Err(error) => return Finding::down(format!("url '{shown}': {error}")),
    };
    let Some(authority) = uri.authority().cloned() else {
        return Finding::down(format!("url '{shown}' has no host"));
    };
    let https = uri.scheme_str() == Some("https");
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let address = format!("{}:{port}", authority.host());
    // Host is host[:port] as the URL gives them (RFC 9110, section 7.2): never the user info.
    let host_header = match authority.port() {
        Some(explicit) => format!("{}:{}", authority.host(), explicit.as_str()),
        None => authority.host().to_string(),
    };
    let userinfo = authority.as_str().rsplit_once('@').map(|(userinfo, _)| userinfo);
    let configured = |wanted: &str| {
        check
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.as_str())
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let tls = tls::Settings {
        ca_file: check.ca_file,
        verify: check.tls_verify,
        server_name: configured("host"),
    };
    let stream = match open(authority.host(), port, https, tls).await {
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
        .method(check.method)
        .uri(path)
        .header(hyper::header::USER_AGENT, "switchyard-health/1")
        .header(hyper::header::CONNECTION, "close");
    // A configured Host (a virtual host behind a shared address) replaces the URL's.
    if configured("host").is_none() {
        request = request.header(hyper::header::HOST, host_header);
    }
    // A configured Authorization replaces the URL's user info.
    if let Some(userinfo) = userinfo
        && configured("authorization").is_none()
    {
        request = request.header(hyper::header::AUTHORIZATION, basic_authorization(userinfo));
    }
    for (name, value) in check.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = match request.body(Empty::<Bytes>::new()) {
        Ok(request) => request,
        Err(error) => return Finding::down(format!("build request: {error}")),
    };
    let finding = match sender.send_request(request).await {
        Err(error) => Finding::down(format!("HTTP request to {address}: {error}")),
        Ok(response) => judge(response, check.expect_status, check.body_contains).await,
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
    match search_body(response.into_body(), needle.as_bytes(), BODY_BYTES_MAX).await {
        Ok(Search::Found) => Finding::up(format!("HTTP {status}, body contains '{needle}'")),
        Ok(Search::Missing { searched }) => Finding::down(format!(
            "HTTP {status}, but the body (first {searched} bytes) lacks '{needle}'"
        )),
        Err(error) => Finding::down(format!("HTTP {status}, reading the body: {error}")),
    }
}

/// What reading a body for a string found.
#[derive(Debug, PartialEq, Eq)]
enum Search {
    Found,
    /// The body ended, or `limit` bytes of it were read, without the string.
    Missing {
        searched: usize,
    },
}

/// Reads `body` until `needle` appears in its first `limit` bytes — then stops at once, so a
/// server that keeps the connection open after the string costs nothing — or until the body
/// ends or `limit` bytes were read. A match spanning two frames is found: each frame is
/// searched together with the `needle.len() - 1` bytes before it.
async fn search_body<B>(mut body: B, needle: &[u8], limit: usize) -> Result<Search, String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if needle.is_empty() {
        return Ok(Search::Found);
    }
    let mut prefix: Vec<u8> = Vec::new();
    while prefix.len() < limit {
        match body.frame().await {
            None => break,
            Some(Err(error)) => return Err(error.to_string()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let from = prefix.len().saturating_sub(needle.len() - 1);
                    let take = data.len().min(limit - prefix.len());
                    prefix.extend_from_slice(&data[..take]);
                    if contains(&prefix[from..], needle) {
                        return Ok(Search::Found);
                    }
                }
            }
        }
    }
    Ok(Search::Missing { searched: prefix.len() })
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
    let stream = open(host, port, https, tls::Settings::default()).await?;
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use hyper::body::Frame;

    use super::*;

    /// A body of the given frames; then either its end or, with `stall`, nothing ever again
    /// (a server holding the connection open).
    struct Frames {
        frames: VecDeque<Bytes>,
        stall: bool,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.frames.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                None if self.stall => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn frames(parts: &[&str], stall: bool) -> Frames {
        Frames {
            frames: parts.iter().map(|p| Bytes::from(p.to_string())).collect(),
            stall,
        }
    }

    async fn search(parts: &[&str], stall: bool, needle: &str, limit: usize) -> Search {
        tokio::time::timeout(
            Duration::from_secs(5),
            search_body(frames(parts, stall), needle.as_bytes(), limit),
        )
        .await
        .expect("the search must not wait for more of the body")
        .expect("no body error")
    }

    #[tokio::test]
    async fn the_search_stops_at_the_match_and_spans_frames() {
        // Found, and nothing more is awaited from a server that then holds the connection.
        assert_eq!(search(&["status: ok", "…"], true, "ok", 1024).await, Search::Found);
        // Split across two and across three frames.
        assert_eq!(search(&["status: o", "k"], false, "ok", 1024).await, Search::Found);
        assert_eq!(
            search(&["all g", "o", "od!"], true, "all good", 1024).await,
            Search::Found
        );
        // One byte per frame.
        let bytes: Vec<String> = "xxhealthyxx".chars().map(String::from).collect();
        let parts: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(search(&parts, true, "healthy", 1024).await, Search::Found);
        // Missing: the whole (short) body was searched.
        assert_eq!(
            search(&["status: o", "x k"], false, "ok", 1024).await,
            Search::Missing { searched: 12 }
        );
    }

    #[tokio::test]
    async fn the_search_window_is_bounded() {
        // The string ends one byte past the window: not found, and reading stops at the window
        // even though the server would send more.
        let head = "a".repeat(95);
        assert_eq!(
            search(&[&head, "needle", "more"], true, "needle", 100).await,
            Search::Missing { searched: 100 }
        );
        // Ending on the window's last byte: found.
        let head = "a".repeat(94);
        assert_eq!(search(&[&head, "needle"], true, "needle", 100).await, Search::Found);
    }

    #[test]
    fn url_user_info_becomes_basic_authorization() {
        // RFC 7617's example: Aladdin / open sesame.
        assert_eq!(
            basic_authorization("Aladdin:open%20sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_authorization("probe"), "Basic cHJvYmU6");
        assert_eq!(percent_decode("a%3Ab%40c%zz%4"), b"a:b@c%zz%4".to_vec());
    }
}
