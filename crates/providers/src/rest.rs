//! The JSON-over-HTTPS client of the REST providers (Cloudflare, DigitalOcean) and of the
//! HTTP alert channels: hyper-util's pooled client with the workspace's rustls connector
//! (`common::tls_client`), a timeout on every request, a bounded response, and 429 answers
//! retried after their `Retry-After` (bounded, jittered). Real APIs are reached over HTTPS
//! only; plain `http://` is accepted for loopback addresses, where tests run their fakes.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use toml::Spanned;

use crate::Failure;
use crate::secret::Secret;

/// Largest response body read, in bytes.
pub const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest time one request (connect, send, read the whole answer) may take by default.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Longest request timeout a setting may ask for.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 120_000;
/// Retries of one request answered 429 (Too Many Requests).
pub const RATE_LIMIT_RETRIES_MAX: u32 = 3;
/// First wait after a 429 without `Retry-After`; doubles each retry.
pub const RATE_LIMIT_BACKOFF_FIRST_MS: u64 = 500;
/// Longest wait after a 429; a longer `Retry-After` is not waited for in the request but
/// reported, so the runbook's own retry (or the next decision) acts later.
pub const RATE_LIMIT_WAIT_MS_MAX: u64 = 30_000;
/// Characters of a body shown in an error when it is not the provider's JSON.
pub const BODY_SHOWN_CHARS_MAX: usize = 300;

/// An answer: status, the parsed `Retry-After` and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after_ms: Option<u64>,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as text, shortened, for error messages.
    pub fn shown(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(BODY_SHOWN_CHARS_MAX) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.to_string(),
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a request got no answer (a transport problem; an HTTP error status is an [`Answer`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    #[error("{url}: no answer within {timeout_ms} ms")]
    Timeout { url: String, timeout_ms: u64 },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
}

/// Checks a base URL: `https://host[:port][/path]`, or `http://` to a loopback address (a test's
/// fake). Returns it without a trailing `/`.
pub fn check_base_url(url: &str) -> Result<String, String> {
    check_base_url_shown(url, url)
}

/// [`check_base_url`], naming the URL `shown` in its errors (a secret URL, such as a Slack
/// webhook's, as `common::text::shown_url` shows it).
pub fn check_base_url_shown(url: &str, shown: &str) -> Result<String, String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("'{shown}' is not a URL ({e}); write it like https://api.example.com/v1"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("'{shown}' names no host; write it like https://api.example.com/v1"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => {
            return Err(format!(
                "'{shown}' is plain http to a non-loopback host: the token would cross the network in clear; use https://"
            ));
        }
        _ => return Err(format!("'{shown}' must start with https://")),
    }
    if uri.query().is_some() {
        return Err(format!(
            "'{shown}' has a query string; give only scheme, host, port and path"
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// How long to wait before retry `attempt` (0-based) after a 429, or `None` when the server
/// asks for longer than [`RATE_LIMIT_WAIT_MS_MAX`]. `random` is any 64-bit value (injected, so
/// this is a pure function): the wait is `Retry-After` (or the doubling backoff) plus up to a
/// quarter more, so clients throttled together do not come back together.
pub fn rate_limit_wait_ms(attempt: u32, retry_after_ms: Option<u64>, random: u64) -> Option<u64> {
    let base = match retry_after_ms {
        Some(ms) if ms > RATE_LIMIT_WAIT_MS_MAX => return None,
        Some(ms) => ms,
        None => RATE_LIMIT_BACKOFF_FIRST_MS.saturating_mul(1 << attempt.min(16)),
    };
    let jitter = random % (base / 4 + 1);
    Some(base.saturating_add(jitter).min(RATE_LIMIT_WAIT_MS_MAX))
}

/// `Retry-After` in milliseconds from `now`, in either form RFC 9110 §10.2.3 allows:
/// delta-seconds (`120`) or an HTTP-date (`Wed, 21 Oct 2026 07:28:00 GMT`, and the obsolete
/// RFC 850 and asctime forms every recipient must accept). A date in the past means "now" (0);
/// anything else unreadable is `None`, and the doubling backoff applies instead.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<u64> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let wait = at.duration_since(now).unwrap_or_default();
    Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
}

/// How long an answer asks the client to wait before its next request: `Retry-After`, else —
/// when a rate limit's remaining count is 0 — its reset time: DigitalOcean's hourly limit sends
/// `ratelimit-remaining: 0` and `ratelimit-reset` (Unix seconds) without `Retry-After`, which it
/// documents only for its per-minute burst limit. `None` when the answer asks nothing.
pub fn wait_asked_ms(headers: &hyper::HeaderMap, now: std::time::SystemTime) -> Option<u64> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(wait) = header("retry-after").and_then(|v| parse_retry_after(v, now)) {
        return Some(wait);
    }
    if header("ratelimit-remaining") != Some("0") {
        return None;
    }
    let reset_s: u64 = header("ratelimit-reset")?.parse().ok()?;
    let now_ms = u64::try_from(now.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?;
    Some(reset_s.saturating_mul(1000).saturating_sub(now_ms))
}

/// What a refused answer's message adds about a rate limit: for a 429 that asked for a wait
/// longer than this client waits by itself ([`RATE_LIMIT_WAIT_MS_MAX`]), or that stayed after
/// [`RATE_LIMIT_RETRIES_MAX`] retries, how long the API asked for (empty otherwise).
pub fn rate_limit_note(answer: &Answer) -> String {
    if answer.status != 429 {
        return String::new();
    }
    match answer.retry_after_ms {
        Some(ms) => format!(
            " (rate limited: the API asks for {} s before the next request; the runbook's next attempt retries)",
            ms.div_ceil(1000)
        ),
        None => " (rate limited; the runbook's next attempt retries)".to_string(),
    }
}

/// A random value for jitter, from the standard library's per-process random hash keys.
pub fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x5eed);
    hasher.finish()
}

/// A client for one API: a base URL and an optional bearer token.
#[derive(Clone)]
pub struct Rest {
    client: Client<common::tls_client::Connector, Full<Bytes>>,
    base: String,
    token: Option<Secret>,
    timeout_ms: u64,
}

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rest")
            .field("base", &self.base)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl Rest {
    /// `base` must have passed [`check_base_url`]. HTTPS is verified against the Mozilla roots.
    /// [`Rest::new`] for a step's `check`: a failure is reported at `span` (it can only be
    /// a bug, as `check_api` validated the URL) and gives `None`.
    pub fn for_step(
        base: &str,
        token: Option<Secret>,
        timeout_ms: u64,
        what: &str,
        span: std::ops::Range<usize>,
        checker: &mut dyn crate::Checker,
    ) -> Option<Rest> {
        match Rest::new(base, token, timeout_ms) {
            Ok(api) => Some(api),
            Err(message) => {
                checker.error(
                    span,
                    format!("{what}: {message}"),
                    "this is a bug in switchyard; please report it".into(),
                );
                None
            }
        }
    }

    pub fn new(base: &str, token: Option<Secret>, timeout_ms: u64) -> Result<Rest, String> {
        let tls = common::tls_client::client_config(None)?;
        let client = Client::builder(TokioExecutor::new()).build(common::tls_client::Connector::new(tls));
        Ok(Rest {
            client,
            base: base.trim_end_matches('/').to_string(),
            token,
            timeout_ms,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` (path and query after the base URL, starting with `/`; an absolute
    /// `http(s)://` URL is used as is) with an optional JSON body; retries 429 answers after
    /// their `Retry-After` (at most [`RATE_LIMIT_RETRIES_MAX`] times) and returns the last answer.
    pub async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<Answer, RestError> {
        let url = self.url(path)?;
        let mut attempt = 0;
        loop {
            let answer = self.send_once(method.clone(), &url, json).await?;
            if answer.status != 429 || attempt >= RATE_LIMIT_RETRIES_MAX {
                return Ok(answer);
            }
            match rate_limit_wait_ms(attempt, answer.retry_after_ms, random_u64()) {
                Some(wait) => {
                    // The host only: some URLs (a Slack webhook's path) are secrets.
                    let host = url
                        .parse::<hyper::Uri>()
                        .ok()
                        .and_then(|u| u.host().map(str::to_string));
                    let asked = match answer.retry_after_ms {
                        Some(_) => "as the answer asks (Retry-After or its rate limit's reset)",
                        None => "backing off: the answer named no wait",
                    };
                    tracing::info!(
                        host = host.as_deref().unwrap_or("?"),
                        wait_ms = wait,
                        retry_after_ms = answer.retry_after_ms,
                        "rate limited (429); waiting {asked}"
                    );
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
                None => return Ok(answer),
            }
            attempt += 1;
        }
    }

    /// One request, without [`Rest::send`]'s own waits on 429: for callers that retry by
    /// themselves over longer times (the alert queue honours `Retry-After` for minutes).
    pub async fn send_once_unretried(
        &self,
        method: hyper::Method,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<Answer, RestError> {
        let url = self.url(path)?;
        self.send_once(method, &url, json).await
    }

    /// The URL `send` requests: `path` after the base, or an absolute URL as is — but never
    /// one on another origin than the base's while this client holds a token, so a URL taken
    /// from an answer (a next-page link) cannot carry the bearer token elsewhere.
    fn url(&self, path: &str) -> Result<String, RestError> {
        if !(path.starts_with("http://") || path.starts_with("https://")) {
            return Ok(format!("{}{path}", self.base));
        }
        if self.token.is_some() && origin(path) != origin(&self.base) {
            return Err(RestError::Transport {
                url: origin(path).unwrap_or_default(),
                message: format!(
                    "not sent: the URL is not on {}, and the request would carry this API's token",
                    origin(&self.base).unwrap_or_default()
                ),
            });
        }
        Ok(path.to_string())
    }

    async fn send_once(
        &self,
        method: hyper::Method,
        url: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<Answer, RestError> {
        let transport = |message: String| RestError::Transport {
            url: url.to_string(),
            message,
        };
        let uri: hyper::Uri = url.parse().map_err(|e| transport(format!("bad URL: {e}")))?;
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("switchyard/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(token) = &self.token {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {}", token.expose()));
        }
        let body = match json {
            Some(value) => {
                builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(value.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = builder.body(body).map_err(|e| transport(e.to_string()))?;
        let work = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| transport(common::error::chain(&e)))?;
            let status = response.status().as_u16();
            let retry_after_ms = wait_asked_ms(response.headers(), std::time::SystemTime::now());
            let body = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| transport(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok(Answer {
                status,
                retry_after_ms,
                body,
            })
        };
        match tokio::time::timeout(Duration::from_millis(self.timeout_ms), work).await {
            Ok(result) => result,
            Err(_) => Err(RestError::Timeout {
                url: url.to_string(),
                timeout_ms: self.timeout_ms,
            }),
        }
    }
}

/// `scheme://authority` of a URL (lower case), if it parses.
fn origin(url: &str) -> Option<String> {
    let uri: hyper::Uri = url.parse().ok()?;
    Some(format!("{}://{}", uri.scheme_str()?, uri.authority()?).to_ascii_lowercase())
}

/// The API base URL and request timeout shared by the REST providers' settings.
pub(crate) fn check_api(
    what: &str,
    keys: &crate::cas::RestKeys<'_>,
    checker: &mut dyn crate::Checker,
) -> (Option<String>, u64) {
    let default = keys.default_url;
    let url = match keys.api_url {
        None => Some(default.to_string()),
        Some(url) => match check_base_url(url.get_ref()) {
            Ok(url) => Some(url),
            Err(message) => {
                checker.error(
                    url.span(),
                    format!("{what} api_url: {message}"),
                    format!("remove api_url to use {default}"),
                );
                None
            }
        },
    };
    let timeout_ms = check_bounded(
        what,
        "request_timeout_ms",
        keys.request_timeout_ms,
        (1, REQUEST_TIMEOUT_MS_MAX),
        REQUEST_TIMEOUT_MS_DEFAULT,
        checker,
    );
    (url, timeout_ms)
}

/// A whole-number setting `key` of `what` within `min..=max` (`range`): its value, or
/// `default` when it is left out or (reported) out of range.
pub(crate) fn check_bounded(
    what: &str,
    key: &str,
    value: &Option<Spanned<u64>>,
    (min, max): (u64, u64),
    default: u64,
    checker: &mut dyn crate::Checker,
) -> u64 {
    match value {
        None => default,
        Some(v) if (min..=max).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            checker.error(
                v.span(),
                format!("{what} {key} = {} is out of range", v.get_ref()),
                format!("use {min}..={max} (default {default})"),
            );
            default
        }
    }
}

/// Turns a transport error into a retryable failure.
pub(crate) fn transport(error: RestError) -> Failure {
    Failure::Retryable(error.to_string())
}

/// 429, 5xx and 408/409 are worth another attempt; other client errors are not.
pub(crate) fn classify(status: u16, message: String) -> Failure {
    match status {
        408 | 409 | 429 | 500..=599 => Failure::Retryable(message),
        400..=499 => Failure::Refused(message),
        _ => Failure::Retryable(message),
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
pub fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_follows_retry_after_with_up_to_a_quarter_of_jitter_and_is_bounded() {
        assert_eq!(rate_limit_wait_ms(0, Some(2_000), 0), Some(2_000));
        assert_eq!(rate_limit_wait_ms(0, Some(2_000), 500), Some(2_500));
        assert_eq!(rate_limit_wait_ms(0, Some(2_000), 501), Some(2_000));
        for random in [1, 77, u64::MAX] {
            let wait = rate_limit_wait_ms(3, None, random).expect("no Retry-After: backoff");
            assert!((4_000..=5_000).contains(&wait), "{wait}");
        }
        assert_eq!(rate_limit_wait_ms(0, Some(RATE_LIMIT_WAIT_MS_MAX + 1), 0), None);
        assert_eq!(rate_limit_wait_ms(30, None, u64::MAX), Some(RATE_LIMIT_WAIT_MS_MAX));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        use std::time::{Duration, UNIX_EPOCH};
        // 2015-10-21T07:28:00Z
        let at = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let now = at - Duration::from_secs(90);
        assert_eq!(parse_retry_after("3", now), Some(3_000));
        assert_eq!(parse_retry_after(" 0 ", now), Some(0));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(90_000));
        // The obsolete forms RFC 9110 asks recipients to accept.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now),
            Some(90_000)
        );
        assert_eq!(parse_retry_after("Wed Oct 21 07:28:00 2015", now), Some(90_000));
        // A date already past: retry now.
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", at + Duration::from_secs(5)),
            Some(0)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn a_spent_rate_limit_without_retry_after_asks_until_its_reset() {
        let now = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = hyper::HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().expect("header value"));
            }
            map
        };
        // Retry-After wins when both are there.
        let both = headers(&[
            ("retry-after", "2"),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "1700003600"),
        ]);
        assert_eq!(wait_asked_ms(&both, now), Some(2_000));
        // DigitalOcean's hourly limit: remaining 0, reset in Unix seconds.
        let spent = headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "1700003600")]);
        assert_eq!(wait_asked_ms(&spent, now), Some(3_599_750));
        // Requests left, or a reset already past: nothing to wait for.
        let left = headers(&[("ratelimit-remaining", "4999"), ("ratelimit-reset", "1700003600")]);
        assert_eq!(wait_asked_ms(&left, now), None);
        let past = headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "1600000000")]);
        assert_eq!(wait_asked_ms(&past, now), Some(0));
        let garbage = headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "soon")]);
        assert_eq!(wait_asked_ms(&garbage, now), None);
        assert_eq!(wait_asked_ms(&hyper::HeaderMap::new(), now), None);
    }

    #[test]
    fn base_urls_need_https_except_to_loopback() {
        assert_eq!(
            check_base_url("https://api.cloudflare.com/client/v4/").as_deref(),
            Ok("https://api.cloudflare.com/client/v4")
        );
        assert!(check_base_url("http://127.0.0.1:8080").is_ok());
        assert!(check_base_url("http://[::1]:8080/x").is_ok());
        assert!(check_base_url("http://localhost:1").is_ok());
        let error = check_base_url("http://api.example.com").expect_err("clear text");
        assert!(error.contains("use https://"), "{error}");
        assert!(check_base_url("ftp://x").is_err());
        assert!(check_base_url("not a url").is_err());
        assert!(check_base_url("https://x/?a=b").is_err());
    }

    #[tokio::test]
    async fn a_client_with_a_token_sends_nothing_to_another_origin() {
        let token = Some(Secret::new("api-token"));
        let api = Rest::new("https://api.digitalocean.com", token, 1_000).expect("client");
        let error = api
            .send(hyper::Method::GET, "https://attacker.example/v2/domains?page=2", None)
            .await
            .expect_err("refused before sending");
        assert!(
            matches!(&error, RestError::Transport { url, message } if url == "https://attacker.example" && message.contains("not sent")),
            "{error:?}"
        );
        assert!(api.url("https://API.digitalocean.com/v2/x").is_ok());
        assert!(
            api.url("http://api.digitalocean.com/v2/x").is_err(),
            "not down to clear text"
        );
        // Without a token (the alert channels' webhooks) an absolute URL is the point.
        let open = Rest::new("", None, 1_000).expect("client");
        assert!(open.url("https://hooks.example/x").is_ok());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("shop.example.com"), "shop.example.com");
        assert_eq!(query_value("a b&c=d"), "a%20b%26c%3Dd");
    }
}
