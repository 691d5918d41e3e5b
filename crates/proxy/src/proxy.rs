//! The data plane: accepts clients (HTTP/1.1, and HTTP/2 with prior knowledge), forwards each
//! request to a server the balancer picks, retries on another server when that is safe, and
//! feeds what it saw back to the balancer (passive checks).
//!
//! Invariants: every client request gets a response (the server's, or 400/413/431/502/503/504
//! from here); a request without exactly one valid `Host` (RFC 9112 §3.2) never reaches a
//! server; a request is retried only when it is idempotent or its connection never opened, at
//! most `retries` times; the number of client connections never exceeds `connections_max`,
//! and a request body is buffered only up to `request_body_bytes_max`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytes::BytesMut;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::balance::{Balancer, ServerId};
use crate::check::{CheckParams, Observation, Transition};
use crate::config::ProxyConfig;
use crate::h1;
use crate::pool::{self, Pool, UpstreamError};
use crate::ratelog::RateLimitedLog;

/// How long shutdown waits for requests in flight before it gives up on them.
pub const SHUTDOWN_GRACE_MS: u64 = 30_000;
/// Requests one HTTP/2 client connection may have open at once (HAProxy's default is 100).
pub const H2_STREAMS_PER_CONNECTION_MAX: u32 = 100;
/// Messages of the answers made here, shared by both data paths.
pub(crate) const BODY_TOO_LARGE: &str = "the request body is larger than limits.request_body_bytes_max";
pub(crate) const BODY_UNREADABLE: &str = "the request body could not be read";
pub(crate) const BODY_TOO_SLOW: &str = "the request body arrived too slowly";
pub(crate) const BODY_BUDGET_SPENT: &str = "the load balancer's room for request bodies (limits.buffered_body_bytes_max) stayed full until client_body_ms; try again";
/// After the GOAWAY of an idle (or stopping) HTTP/2 connection, how long it may stay open
/// with no stream before it is dropped: a client that answers the GOAWAY's PING closes well
/// within it.
pub const H2_GOAWAY_GRACE_MS: u64 = 1000;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

/// State shared by the data plane, the health checkers and the admin API.
pub struct Shared {
    pub(crate) config: ProxyConfig,
    balancer: Mutex<Balancer>,
    started: Instant,
    stats: FrontendStats,
    logs: Logs,
    /// Each server's address as a URI authority, parsed once.
    authorities: Vec<hyper::http::uri::Authority>,
    /// Bytes of request bodies buffered at once, across all requests.
    body_budget: Arc<Semaphore>,
    /// With `[proxy] tls_cert`: every client connection is TLS, terminated here.
    tls: Option<Arc<common::http::Tls>>,
}

enum BodyError {
    TooLarge,
    /// Holding its share of the budget, the body fell behind [`BODY_HOLDING_BYTES_PER_S_MIN`].
    TooSlow,
    Read(hyper::Error),
}

/// A body holding its share of the body budget must keep arriving at this rate at least (after
/// [`BODY_HOLDING_GRACE_MS`]), or it is refused (408) and its share given back: a client that
/// declares a large body and stalls cannot keep the budget from others until `client_body_ms`.
/// The store's listeners apply the same rule (`common::http`).
pub(crate) const BODY_HOLDING_BYTES_PER_S_MIN: u64 = common::http::BODY_HOLDING_BYTES_PER_S_MIN;
/// How long a body may hold its share before the rate above applies.
pub(crate) const BODY_HOLDING_GRACE_MS: u64 = common::http::BODY_HOLDING_GRACE_MS;

/// When a body that took its share at `since`, and has received `arrived` bytes since, falls
/// behind the minimum rate.
pub(crate) fn behind_at(since: tokio::time::Instant, arrived: usize) -> tokio::time::Instant {
    let allowed_ms =
        BODY_HOLDING_GRACE_MS.saturating_add((arrived as u64).saturating_mul(1000) / BODY_HOLDING_BYTES_PER_S_MIN);
    since + Duration::from_millis(allowed_ms)
}

/// `permit` with what the body did not use (past `used` bytes) given back.
fn shrunk(permit: Option<OwnedSemaphorePermit>, used: usize) -> Option<OwnedSemaphorePermit> {
    let mut permit = permit?;
    if permit.num_permits() > used {
        drop(permit.split(permit.num_permits() - used));
    }
    Some(permit)
}

/// Counters of what clients saw, for `/stats` and `/metrics`.
#[derive(Default)]
pub struct FrontendStats {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    pub requests_total: AtomicU64,
    pub responses_1xx: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_3xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    pub retries_total: AtomicU64,
    pub body_too_large_total: AtomicU64,
    /// Requests answered 400 for their `Host` (missing, repeated or invalid).
    pub bad_host_total: AtomicU64,
    pub no_server_total: AtomicU64,
    pub server_timeouts_total: AtomicU64,
    pub client_errors_total: AtomicU64,
    /// Connections switched to another protocol (a WebSocket) and tunnelled.
    pub tunnels_total: AtomicU64,
    pub tunnels_active: AtomicU64,
}

impl FrontendStats {
    fn count_response(&self, status: StatusCode) {
        self.count_status(status.as_u16());
    }

    pub(crate) fn count_status(&self, status: u16) {
        let counter = match status {
            100..=199 => &self.responses_1xx,
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            _ => &self.responses_5xx,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One rate-limited log line per kind of trouble, so a flood of bad clients cannot flood the log.
#[derive(Default)]
struct Logs {
    body_too_large: RateLimitedLog,
    bad_host: RateLimitedLog,
    client_connection: RateLimitedLog,
    no_server: RateLimitedLog,
    server_timeout: RateLimitedLog,
    server_error: RateLimitedLog,
    accept: RateLimitedLog,
}

impl Shared {
    pub fn new(config: ProxyConfig) -> Arc<Shared> {
        Shared::with_tls(config, None)
    }

    /// As [`Shared::new`], serving clients over TLS with `tls` (loaded from `[proxy] tls_cert`
    /// and `tls_key`; reloaded on SIGHUP by whoever holds it).
    pub fn with_tls(config: ProxyConfig, tls: Option<Arc<common::http::Tls>>) -> Arc<Shared> {
        let params = CheckParams {
            rise: config.check.rise,
            fall: config.check.fall,
            inter_ms: config.check.inter_ms,
            fastinter_ms: config.check.fastinter_ms,
            downinter_ms: config.check.downinter_ms,
            error_limit: config.observe.layer7.then_some(config.observe.error_limit.max(1)),
        };
        let balancer = Balancer::new(&config.servers, config.balance, config.slowstart_ms, params, 0);
        let config_budget = config.limits.buffered_body_bytes_max.min(Semaphore::MAX_PERMITS);
        let authorities = config
            .servers
            .iter()
            .map(|s| {
                hyper::http::uri::Authority::try_from(s.address.to_string())
                    .expect("a socket address is a valid URI authority")
            })
            .collect();
        Arc::new(Shared {
            authorities,
            config,
            balancer: Mutex::new(balancer),
            started: Instant::now(),
            stats: FrontendStats::default(),
            logs: Logs::default(),
            body_budget: Arc::new(Semaphore::new(config_budget)),
            tls,
        })
    }

    /// A pool of connections to the servers (hyper's, or raw ones for the HTTP/1.1 core). Each
    /// worker thread has its own, so a request and its server connection stay on one thread.
    fn new_pool<C: pool::Reusable>(&self) -> Arc<Pool<C>> {
        Arc::new(Pool::new(
            self.config.servers.iter().map(|s| s.address).collect(),
            self.config.limits.pool_idle_per_server_max,
            self.config.timeouts.idle_ms,
            self.config.timeouts.connect_ms,
        ))
    }

    /// Each server's address as a URI authority (the `Host` for requests that had none).
    pub(crate) fn authorities(&self) -> &[hyper::http::uri::Authority] {
        &self.authorities
    }

    /// Takes `bytes` more of the shared budget for buffered request bodies
    /// (`buffered_body_bytes_max`), waiting while it is spent but not past `deadline`: `None`
    /// when it could not be had by then. Callers take a body's whole share once its first
    /// bytes arrive, never for a length only declared (h1's `BodyBudget`).
    pub(crate) async fn take_body_budget(
        &self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let budget = self.config.limits.buffered_body_bytes_max.min(Semaphore::MAX_PERMITS);
        let wanted = u32::try_from(bytes.min(budget)).unwrap_or(u32::MAX);
        match tokio::time::timeout_at(deadline, self.body_budget.acquire_many(wanted)).await {
            Ok(Ok(permit)) => Some(permit),
            _ => None,
        }
    }

    /// A request body refused because the budget for buffered bodies stayed spent.
    pub(crate) fn note_body_budget_spent(&self, client: SocketAddr) {
        self.stats.client_errors_total.fetch_add(1, Ordering::Relaxed);
        let Some(suppressed) = self.logs.client_connection.allow(self.now_ms()) else {
            return;
        };
        tracing::warn!(%client, buffered_body_bytes_max = self.config.limits.buffered_body_bytes_max, suppressed,
            "no room for a request body before client_body_ms (every byte of limits.buffered_body_bytes_max is held by other requests' bodies); answered 503");
    }

    /// What clients saw so far.
    pub fn stats(&self) -> &FrontendStats {
        &self.stats
    }

    /// Milliseconds since start: the balancer's clock.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The balancer, locked. Critical sections are short and never await.
    pub fn balancer(&self) -> MutexGuard<'_, Balancer> {
        // A panic while holding the lock would be a bug in the sans-IO balancer; the state is
        // still consistent counters, so keep serving rather than poisoning every request.
        self.balancer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn observe(&self, id: ServerId, observation: Observation) {
        let now = self.now_ms();
        let transition = self.balancer().observe(id, observation, now);
        if transition == Some(Transition::Down) {
            let name = self.balancer().server(id).config.name.clone();
            tracing::warn!(server = %name, error_limit = self.config.observe.error_limit,
                "server marked DOWN by passive checks: too many consecutive errors on live traffic");
        }
    }
}

/// Decrements the server's active count when the response (body included) is done, and
/// records a good response as a passive-check success under the same lock.
pub struct ActiveGuard {
    shared: Arc<Shared>,
    id: ServerId,
    success: bool,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let now = if self.success { self.shared.now_ms() } else { 0 };
        let mut balancer = self.shared.balancer();
        balancer.finish(self.id);
        if self.success {
            // A success never changes a server's state, so there is no transition to log.
            let _ = balancer.observe(self.id, Observation::Success, now);
        }
    }
}

/// The server connection a response came on, given back to its worker's pool once the
/// response body was read to the end.
pub struct Connection {
    pool: Arc<Pool>,
    server: usize,
    sender: pool::Sender,
}

/// The response body: a server's streamed body (holding its active slot and its connection), or
/// one made here.
pub enum ProxyBody {
    Upstream {
        inner: Incoming,
        connection: Option<Connection>,
        _guard: ActiveGuard,
    },
    Local(Full<Bytes>),
}

impl ProxyBody {
    /// Gives the connection back for the next request once the body is complete. A body not read
    /// to the end keeps it, and dropping it closes the connection.
    fn release_if_done(&mut self) {
        if let ProxyBody::Upstream { inner, connection, .. } = self
            && inner.is_end_stream()
            && let Some(done) = connection.take()
        {
            done.pool.give_back_sender(done.server, done.sender);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        self.release_if_done();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match this {
            ProxyBody::Upstream { inner, .. } => Pin::new(inner).poll_frame(cx),
            ProxyBody::Local(full) => return Pin::new(full).poll_frame(cx).map_err(|never| match never {}),
        };
        if let Poll::Ready(None | Some(Ok(_))) = &polled {
            this.release_if_done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Local(full) => full.size_hint(),
        }
    }
}

fn local_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Local(Full::new(Bytes::from(format!("{message}\n")))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those the
/// `Connection` header names.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// How the client reached the proxy: the `proto` of `X-Forwarded-Proto` and `Forwarded`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http,
    /// Over TLS, terminated by the proxy (`[proxy] tls_cert`).
    Https,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Http => "http",
            Proto::Https => "https",
        }
    }
}

/// Appends this hop to `X-Forwarded-For` and `Forwarded` and sets `X-Forwarded-Proto`.
///
/// Every line of the client's `X-Forwarded-For` and `Forwarded` is kept, in order, as one list
/// (RFC 9110 §5.3), this hop's element last, as HAProxy does.
///
/// On the hot path: each header value is built in one buffer and moved into the header, without
/// `format!` (which cost more than the rest of the request's header handling together).
pub fn add_forwarding(headers: &mut HeaderMap, client: SocketAddr, host: Option<&str>, proto: Proto) {
    let mut xff = Vec::with_capacity(64);
    push_x_forwarded_for(
        &mut xff,
        headers.get_all("x-forwarded-for").iter().map(HeaderValue::as_bytes),
        client,
    );
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto.name()));
    let mut forwarded = Vec::with_capacity(96);
    push_forwarded(
        &mut forwarded,
        headers.get_all(header::FORWARDED).iter().map(HeaderValue::as_bytes),
        client,
        host.map(str::as_bytes),
        proto,
    );
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(forwarded)) {
        headers.insert(header::FORWARDED, value);
    }
}

/// The `X-Forwarded-For` value: the previous lines' values (if any) in order, then this hop's
/// client address.
pub(crate) fn push_x_forwarded_for<'a>(
    out: &mut Vec<u8>,
    previous: impl Iterator<Item = &'a [u8]>,
    client: SocketAddr,
) {
    for value in previous.map(<[u8]>::trim_ascii).filter(|v| !v.is_empty()) {
        out.extend_from_slice(value);
        out.extend_from_slice(b", ");
    }
    push_ip(out, client.ip());
}

/// The `Forwarded` value (RFC 7239): the previous lines' values (if any) in order, then
/// `for=...;proto=http;host=...`, the host quoted unless it is a token.
///
/// A previous line that is not a valid `Forwarded` list is dropped: an unclosed quoted-string
/// (`for=6.6.6.6;x="`) would otherwise swallow this hop's element and leave the last element
/// the client's.
pub(crate) fn push_forwarded<'a>(
    out: &mut Vec<u8>,
    previous: impl Iterator<Item = &'a [u8]>,
    client: SocketAddr,
    host: Option<&[u8]>,
    proto: Proto,
) {
    let ip = client.ip();
    for value in previous.map(<[u8]>::trim_ascii) {
        if !value.is_empty() && valid_forwarded(value) {
            out.extend_from_slice(value);
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(b"for=");
    match ip {
        std::net::IpAddr::V4(_) => push_ip(out, ip),
        std::net::IpAddr::V6(_) => {
            out.extend_from_slice(b"\"[");
            push_ip(out, ip);
            out.extend_from_slice(b"]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto.name().as_bytes());
    if let Some(host) = host.filter(|h| quotable(h)) {
        out.extend_from_slice(b";host=");
        push_forwarded_value(out, host);
    }
}

/// RFC 9110 §5.6.2 `tchar`: what a token is made of.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Whether `value` fits in a quoted-string: visible ASCII, space and tab (a `"` or `\` is
/// escaped). Control bytes cannot be carried at all.
fn quotable(value: &[u8]) -> bool {
    value.iter().all(|b| *b == b'\t' || (b' '..=b'~').contains(b))
}

/// A `Forwarded` parameter value (RFC 7239 §4): as is when it is a token, else as a
/// quoted-string with `"` and `\` escaped (a host with a port, an IPv6 literal, or one with `,`,
/// `;` or `=`, which unquoted would start another pair or element). `value` is [`quotable`].
fn push_forwarded_value(out: &mut Vec<u8>, value: &[u8]) {
    if !value.is_empty() && value.iter().all(|b| is_tchar(*b)) {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for byte in value {
        if *byte == b'"' || *byte == b'\\' {
            out.push(b'\\');
        }
        out.push(*byte);
    }
    out.push(b'"');
}

/// Whether `value` is a `Forwarded` field value RFC 7239 §4 allows: a comma-separated list of
/// elements, each `;`-separated `token=value` pairs, a value a token or a quoted-string
/// (whitespace around the separators and empty elements are tolerated).
fn valid_forwarded(value: &[u8]) -> bool {
    let mut at = 0;
    let skip_space = |at: &mut usize| {
        while value.get(*at).is_some_and(|b| *b == b' ' || *b == b'\t') {
            *at += 1;
        }
    };
    loop {
        skip_space(&mut at);
        match value.get(at) {
            None => return true,
            Some(b',' | b';') => {
                at += 1;
                continue;
            }
            Some(_) => {}
        }
        let name_start = at;
        while value.get(at).copied().is_some_and(is_tchar) {
            at += 1;
        }
        if at == name_start || value.get(at) != Some(&b'=') {
            return false;
        }
        at += 1;
        if value.get(at) == Some(&b'"') {
            at += 1;
            loop {
                match value.get(at) {
                    Some(b'"') => break,
                    Some(b'\\') if value.get(at + 1).is_some_and(|b| quotable(&[*b])) => at += 2,
                    Some(byte) if *byte != b'\\' && quotable(&[*byte]) => at += 1,
                    _ => return false,
                }
            }
            at += 1;
        } else {
            let value_start = at;
            while value.get(at).copied().is_some_and(is_tchar) {
                at += 1;
            }
            if at == value_start {
                return false;
            }
        }
        skip_space(&mut at);
        if !matches!(value.get(at), None | Some(b',' | b';')) {
            return false;
        }
    }
}

/// Writes an address as text: IPv4 digit by digit, IPv6 (rare) through `Display`.
fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + (octet / 10) % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        std::net::IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

/// Why a request's `Host` makes it a 400 (RFC 9112 §3.2, RFC 9113 §8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Missing,
    Repeated,
    Invalid,
    /// HTTP/2: `Host` names another authority than `:authority`.
    Mismatch,
}

/// The 400 message for a `Host` problem.
pub(crate) fn host_error_message(problem: HostError) -> &'static str {
    problem.message()
}

impl HostError {
    fn message(self) -> &'static str {
        match self {
            HostError::Missing => {
                "the request has no Host header; HTTP/1.1 requires exactly one (RFC 9112 section 3.2)"
            }
            HostError::Repeated => "the request has more than one Host header; send exactly one (RFC 9112 section 3.2)",
            HostError::Invalid => "the Host header is not a valid host[:port] (RFC 9112 section 3.2)",
            HostError::Mismatch => {
                "the Host header differs from the :authority of the request (RFC 9113 section 8.3.1)"
            }
        }
    }
}

/// The `Host` to forward for a request, or why it must be refused with 400: exactly one `Host`
/// with a valid `host[:port]` (empty is allowed) on HTTP/1.1, none or one on HTTP/1.0; for an
/// absolute-form target the target's authority replaces `Host` (RFC 9112 §3.2.2); on HTTP/2
/// `:authority` stands for `Host`, and a `Host` naming another authority is refused.
pub fn forwarded_host(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<Option<HeaderValue>, HostError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    if let Some(value) = host
        && !valid_host(value.as_bytes())
    {
        return Err(HostError::Invalid);
    }
    // The same rules as `Host` (`:authority` too): no userinfo, a host that is a reg-name or
    // an IP literal, a numeric port.
    let authority = uri
        .authority()
        .map(|a| {
            if valid_host(a.as_str().as_bytes()) {
                HeaderValue::from_str(a.as_str()).map_err(|_| HostError::Invalid)
            } else {
                Err(HostError::Invalid)
            }
        })
        .transpose()?;
    if version == Version::HTTP_2 {
        if let (Some(host), Some(authority)) = (host, &authority)
            && !host.as_bytes().eq_ignore_ascii_case(authority.as_bytes())
        {
            return Err(HostError::Mismatch);
        }
        return match authority.or_else(|| host.cloned()) {
            Some(value) => Ok(Some(value)),
            None => Err(HostError::Missing),
        };
    }
    if host.is_none() && version != Version::HTTP_10 && version != Version::HTTP_09 {
        return Err(HostError::Missing);
    }
    Ok(authority.or_else(|| host.cloned()))
}

/// [`forwarded_host`] for the HTTP/1 core, on bytes: `hosts` are the request's `Host` values,
/// `authority` the absolute-form target's (already checked with [`valid_host`]).
pub(crate) fn forwarded_host_h1<'a>(
    http10: bool,
    authority: Option<&'a [u8]>,
    mut hosts: impl Iterator<Item = &'a [u8]>,
) -> Result<Option<&'a [u8]>, HostError> {
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Repeated);
    }
    if let Some(value) = host
        && !valid_host(value)
    {
        return Err(HostError::Invalid);
    }
    if host.is_none() && !http10 {
        return Err(HostError::Missing);
    }
    Ok(authority.or(host))
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2), or empty.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|b| *b == b']') else {
                return false;
            };
            let literal = std::str::from_utf8(&rest[..end]).ok();
            if literal.and_then(|l| l.parse::<std::net::Ipv6Addr>().ok()).is_none() {
                return false;
            }
            match &rest[end + 1..] {
                [] => return true,
                [b':', port @ ..] => (&[][..], port),
                _ => return false,
            }
        }
        None => match value.iter().rposition(|b| *b == b':') {
            Some(colon) => (&value[..colon], &value[colon + 1..]),
            None => (value, &[][..]),
        },
    };
    // reg-name: unreserved, percent-encoded and sub-delims (an IPv4 address is one too).
    let host_ok = host
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b));
    host_ok && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
}

fn idempotent(method: &Method) -> bool {
    idempotent_method(method.as_str().as_bytes())
}

/// RFC 9110 §9.2.2: a method whose request may be sent twice with the effect of once.
pub(crate) fn idempotent_method(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS" | b"TRACE")
}

/// A 5xx that says the server is unwell (HAProxy's `observe layer7` ignores 501 and 505).
fn is_server_error_code(status: u16) -> bool {
    (500..600).contains(&status) && status != 501 && status != 505
}

/// One data path's way to send a request to a chosen server and wait for the response head;
/// [`Shared::dispatch`] picks the servers, retries and keeps the books around it.
pub(crate) trait Exchange {
    type Answer;
    /// Sends the request to server `server` (its index); `last` is true on the last attempt.
    fn attempt(
        &mut self,
        server: usize,
        last: bool,
    ) -> impl Future<Output = Result<Self::Answer, UpstreamError>> + Send;
    /// The response's status code.
    fn status(answer: &Self::Answer) -> u16;
}

/// What [`Shared::dispatch`] got: a server's response head (with the server's active slot, to
/// be held until the body is done), or the status and message to answer with from here.
pub(crate) enum Dispatched<A> {
    Answered(A, ActiveGuard),
    Refused(StatusCode, &'static str),
}

impl Shared {
    /// Handles one client request end to end.
    pub async fn handle(
        self: Arc<Self>,
        pool: &Arc<Pool>,
        request: Request<Incoming>,
        client: SocketAddr,
        proto: Proto,
    ) -> Response<ProxyBody> {
        self.stats.requests_total.fetch_add(1, Ordering::Relaxed);
        let response = self.clone().forward(pool, request, client, proto).await;
        self.stats.count_response(response.status());
        response
    }

    async fn forward(
        self: Arc<Self>,
        pool: &Arc<Pool>,
        request: Request<Incoming>,
        client: SocketAddr,
        proto: Proto,
    ) -> Response<ProxyBody> {
        let (parts, body) = request.into_parts();
        let forward_host = match forwarded_host(parts.version, &parts.uri, &parts.headers) {
            Ok(host) => host,
            Err(problem) => return self.bad_host(client, problem),
        };
        let limit = self.config.limits.request_body_bytes_max;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return self.body_too_large(client, declared);
        }
        // Held until the response is done: buffered bodies of all requests share one budget.
        let mut _budget: Option<OwnedSemaphorePermit> = None;
        let body = if body.is_end_stream() {
            Bytes::new()
        } else {
            let deadline = Duration::from_millis(self.config.timeouts.client_body_ms);
            match tokio::time::timeout(deadline, self.read_body(body, limit)).await {
                Ok(Ok((bytes, permit))) => {
                    _budget = permit;
                    bytes
                }
                Ok(Err(BodyError::TooLarge)) => return self.body_too_large(client, None),
                Ok(Err(BodyError::TooSlow)) => {
                    self.note_body_behind_rate(client);
                    return local_response(StatusCode::REQUEST_TIMEOUT, BODY_TOO_SLOW);
                }
                Ok(Err(BodyError::Read(error))) => {
                    self.note_body_failed(client, Some(&error));
                    return local_response(StatusCode::BAD_REQUEST, BODY_UNREADABLE);
                }
                Err(_) => {
                    self.note_body_failed(client, None);
                    return local_response(StatusCode::REQUEST_TIMEOUT, BODY_TOO_SLOW);
                }
            }
        };

        let mut headers = parts.headers;
        remove_hop_by_hop(&mut headers);
        // The body is already here; the server must not wait for a go-ahead.
        headers.remove(header::EXPECT);
        add_forwarding(
            &mut headers,
            client,
            forward_host.as_ref().and_then(|h| h.to_str().ok()),
            proto,
        );
        if let Some(value) = forward_host {
            headers.insert(header::HOST, value);
        }
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
        let method = parts.method;
        let retryable_method = idempotent(&method);

        let mut exchange = HyperExchange {
            pool,
            authorities: &self.authorities,
            body,
            headers,
            method: &method,
            path_and_query: &path_and_query,
        };
        let dispatched = self
            .dispatch(
                &mut exchange,
                retryable_method,
                method.as_str(),
                path_and_query.as_str(),
            )
            .await;
        match dispatched {
            Dispatched::Answered((response, sender, server), guard) => {
                let (mut parts, inner) = response.into_parts();
                remove_hop_by_hop(&mut parts.headers);
                parts.version = Version::HTTP_11;
                let body = ProxyBody::Upstream {
                    inner,
                    connection: Some(Connection {
                        pool: pool.clone(),
                        server,
                        sender,
                    }),
                    _guard: guard,
                };
                Response::from_parts(parts, body)
            }
            Dispatched::Refused(status, message) => local_response(status, message),
        }
    }

    /// Sends a request to a server the balancer picks, retrying on another one when that is
    /// safe (`retryable_method`, or the request never left), at most `retries` times; feeds
    /// what it saw to the passive checks. `method` and `path` are for the log.
    pub(crate) async fn dispatch<E: Exchange>(
        self: &Arc<Self>,
        exchange: &mut E,
        retryable_method: bool,
        method: &str,
        path: &str,
    ) -> Dispatched<E::Answer> {
        let response_timeout = Duration::from_millis(self.config.timeouts.response_header_ms);
        let mut tried: Vec<ServerId> = Vec::new();
        let mut last: Option<ServerId> = None;
        let attempts = self.config.retries + 1;
        for attempt in 0..attempts {
            let now = self.now_ms();
            let picked = {
                let mut balancer = self.balancer();
                match last {
                    Some(previous) if !self.config.redispatch => {
                        balancer.pin(previous).or_else(|| balancer.pick(now, &tried))
                    }
                    _ => balancer.pick(now, &tried),
                }
            };
            let Some(id) = picked else {
                self.stats.no_server_total.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = self.logs.no_server.allow(now) {
                    tracing::warn!(%method, %path, suppressed,
                        "no server available (all down, drained or in maintenance); answered 503");
                }
                return Dispatched::Refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no server is available to handle this request",
                );
            };
            let mut guard = ActiveGuard {
                shared: self.clone(),
                id,
                success: false,
            };
            let more = attempt + 1 < attempts;
            match tokio::time::timeout(response_timeout, exchange.attempt(id.0, !more)).await {
                Ok(Ok(answer)) => {
                    if is_server_error_code(E::status(&answer)) {
                        self.observe(id, Observation::Error);
                    } else {
                        // Counted when the response is done, under the same lock as `finish`.
                        guard.success = true;
                    }
                    return Dispatched::Answered(answer, guard);
                }
                Ok(Err(error)) => {
                    drop(guard);
                    self.observe(id, Observation::Error);
                    let safe = error.unsent() || retryable_method;
                    let name = &self.config.servers[id.0].name;
                    if safe && more {
                        self.stats.retries_total.fetch_add(1, Ordering::Relaxed);
                        self.balancer().note_retry(id);
                        tracing::debug!(server = %name, %error, attempt, "retrying on another server");
                        tried.push(id);
                        last = Some(id);
                        continue;
                    }
                    if let Some(suppressed) = self.logs.server_error.allow(self.now_ms()) {
                        tracing::warn!(server = %name, %error, attempts = attempt + 1, retried = safe, suppressed,
                            "request to server failed; answered 502");
                    }
                    return Dispatched::Refused(StatusCode::BAD_GATEWAY, "the server failed to answer");
                }
                Err(_) => {
                    drop(guard);
                    self.observe(id, Observation::Error);
                    self.stats.server_timeouts_total.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.logs.server_timeout.allow(self.now_ms()) {
                        tracing::warn!(server = %self.config.servers[id.0].name,
                            response_header_ms = self.config.timeouts.response_header_ms, suppressed,
                            "server sent no response headers in time (hanging?); answered 504");
                    }
                    return Dispatched::Refused(StatusCode::GATEWAY_TIMEOUT, "the server did not answer in time");
                }
            }
        }
        Dispatched::Refused(StatusCode::BAD_GATEWAY, "every attempt failed")
    }

    /// Reads a request body up to `limit` bytes, taking its whole share of the shared budget
    /// (`buffered_body_bytes_max`) once its first bytes arrive: its declared length, or `limit`
    /// without one (the unused part given back at its end); waits while the budget is spent,
    /// holding none of it. Taken frame by frame, bodies that together passed the budget each
    /// held part and waited for the rest. Holding its share, the body must keep arriving
    /// ([`BODY_HOLDING_BYTES_PER_S_MIN`]).
    async fn read_body(
        &self,
        mut body: Incoming,
        limit: usize,
    ) -> Result<(Bytes, Option<OwnedSemaphorePermit>), BodyError> {
        // Read before any of the body: hyper's hint then counts down what is still to come.
        let declared = body
            .size_hint()
            .exact()
            .map(|declared| usize::try_from(declared).unwrap_or(usize::MAX));
        if declared.is_some_and(|declared| declared > limit) {
            return Err(BodyError::TooLarge);
        }
        let budget_total = self.config.limits.buffered_body_bytes_max.min(Semaphore::MAX_PERMITS);
        let mut buffer = BytesMut::new();
        let mut budget: Option<OwnedSemaphorePermit> = None;
        let mut holding_since: Option<tokio::time::Instant> = None;
        loop {
            let next = match holding_since {
                Some(since) => tokio::time::timeout_at(behind_at(since, buffer.len()), body.frame())
                    .await
                    .map_err(|_| BodyError::TooSlow)?,
                None => body.frame().await,
            };
            let Some(frame) = next else { break };
            let frame = frame.map_err(BodyError::Read)?;
            let Ok(data) = frame.into_data() else { continue };
            if buffer.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            if budget.is_none() && !data.is_empty() {
                let share = declared.unwrap_or(limit).min(budget_total).max(data.len());
                let permits = u32::try_from(share).unwrap_or(u32::MAX);
                let permit = self
                    .body_budget
                    .clone()
                    .acquire_many_owned(permits)
                    .await
                    .map_err(|_| BodyError::TooLarge)?;
                budget = Some(permit);
                holding_since = Some(tokio::time::Instant::now());
            }
            if buffer.is_empty() && body.is_end_stream() {
                return Ok((data.clone(), shrunk(budget, data.len())));
            }
            buffer.extend_from_slice(&data);
        }
        let used = buffer.len();
        Ok((buffer.freeze(), shrunk(budget, used)))
    }

    /// Counts and logs a request refused for its `Host`.
    pub(crate) fn note_bad_host(&self, client: SocketAddr, problem: HostError) {
        self.stats.bad_host_total.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.logs.bad_host.allow(self.now_ms()) {
            tracing::warn!(%client, ?problem, suppressed, "request with a missing, repeated or invalid Host; answered 400");
        }
    }

    /// Counts and logs a request refused for its body's size.
    pub(crate) fn note_body_too_large(&self, client: SocketAddr, declared: Option<u64>) {
        self.stats.body_too_large_total.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.logs.body_too_large.allow(self.now_ms()) {
            tracing::warn!(%client, declared_bytes = declared, request_body_bytes_max = self.config.limits.request_body_bytes_max,
                suppressed, "request body over the limit; answered 413 (raise limits.request_body_bytes_max to allow it)");
        }
    }

    /// Counts and logs a client whose body, holding its share of the body budget, fell behind
    /// [`BODY_HOLDING_BYTES_PER_S_MIN`].
    pub(crate) fn note_body_behind_rate(&self, client: SocketAddr) {
        self.stats.client_errors_total.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.logs.client_connection.allow(self.now_ms()) {
            tracing::warn!(%client, bytes_per_s_min = BODY_HOLDING_BYTES_PER_S_MIN, grace_ms = BODY_HOLDING_GRACE_MS,
                suppressed, "client's request body fell behind the minimum rate while it held its share of buffered_body_bytes_max; answered 408");
        }
    }

    /// Counts and logs a client whose request body broke off or came too slowly.
    pub(crate) fn note_body_failed(&self, client: SocketAddr, error: Option<&dyn std::fmt::Display>) {
        self.stats.client_errors_total.fetch_add(1, Ordering::Relaxed);
        let Some(suppressed) = self.logs.client_connection.allow(self.now_ms()) else {
            return;
        };
        match error {
            Some(error) => tracing::info!(%client, %error, suppressed, "client request body could not be read"),
            None => tracing::warn!(%client, client_body_ms = self.config.timeouts.client_body_ms, suppressed,
                "client sent its request body too slowly; answered 408"),
        }
    }

    fn bad_host(&self, client: SocketAddr, problem: HostError) -> Response<ProxyBody> {
        self.note_bad_host(client, problem);
        let mut response = local_response(StatusCode::BAD_REQUEST, problem.message());
        // The body (if any) is not read; make the client open a new connection.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }

    fn body_too_large(&self, client: SocketAddr, declared: Option<u64>) -> Response<ProxyBody> {
        self.note_body_too_large(client, declared);
        let mut response = local_response(StatusCode::PAYLOAD_TOO_LARGE, BODY_TOO_LARGE);
        // The rest of the body is not read; make the client open a new connection.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        response
    }
}

/// The hyper data path's request, sent to one server per attempt.
struct HyperExchange<'a> {
    pool: &'a Arc<Pool>,
    authorities: &'a [hyper::http::uri::Authority],
    body: Bytes,
    headers: HeaderMap,
    method: &'a Method,
    path_and_query: &'a hyper::http::uri::PathAndQuery,
}

impl Exchange for HyperExchange<'_> {
    type Answer = (Response<Incoming>, pool::Sender, usize);

    async fn attempt(&mut self, server: usize, last: bool) -> Result<Self::Answer, UpstreamError> {
        let mut upstream = Request::new(Full::new(self.body.clone()));
        *upstream.method_mut() = self.method.clone();
        *upstream.uri_mut() = Uri::from(self.path_and_query.clone());
        *upstream.version_mut() = Version::HTTP_11;
        // The last attempt takes the headers; earlier ones need them again for a retry.
        *upstream.headers_mut() = if last {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        if !upstream.headers().contains_key(header::HOST) {
            // HTTP/1.0 without Host: HTTP/1.1 to the server needs one; name the server.
            if let Ok(value) = HeaderValue::from_str(self.authorities[server].as_str()) {
                upstream.headers_mut().insert(header::HOST, value);
            }
        }
        let (response, sender) = self.pool.send(server, upstream).await?;
        Ok((response, sender, server))
    }

    fn status(answer: &Self::Answer) -> u16 {
        answer.0.status().as_u16()
    }
}

/// A client connection handed from the accept loop to a worker thread.
struct Accepted {
    stream: std::net::TcpStream,
    client: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// Serves clients on `listener` until `shutdown` resolves, then lets requests in flight finish
/// (up to [`SHUTDOWN_GRACE_MS`]).
///
/// Connections run on `threads` worker threads, each a single-threaded runtime with its own
/// server connection pool (thread per core, as HAProxy's `nbthread`): a request never wakes
/// another thread, which is most of a proxy's cost on few cores.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections_max = shared.config.limits.connections_max;
    let permits = Arc::new(Semaphore::new(connections_max));
    let (stop_sender, stop) = watch::channel(false);
    let (finished_sender, finished) = watch::channel(false);
    let builder = Arc::new(connection_builder(&shared.config));
    let threads = shared.config.threads.max(1);
    let mut senders = Vec::with_capacity(threads);
    let mut workers = Vec::with_capacity(threads);
    for index in 0..threads {
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Accepted>();
        senders.push(sender);
        let (shared, builder, stop, finished) = (shared.clone(), builder.clone(), stop.clone(), finished.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let worker = std::thread::Builder::new()
            .name(format!("proxy-worker-{index}"))
            .spawn(move || runtime.block_on(run_worker(shared, builder, receiver, stop, finished)))?;
        workers.push(worker);
    }
    tokio::pin!(shutdown);
    let mut next = 0usize;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if let Some(suppressed) = shared.logs.accept.allow(shared.now_ms()) {
                        tracing::warn!(%error, suppressed, "accept failed (out of file descriptors?); pausing");
                    }
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(stream) = stream.into_std() else { continue };
        shared.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        // Workers live until `finished`, so the send cannot fail while we accept.
        let _ = senders[next % threads].send(Accepted { stream, client, permit });
        next = next.wrapping_add(1);
    }
    // Stop first, then close the listener: a client refused a connection knows the
    // connections it has see the stop.
    let _ = stop_sender.send(true);
    drop(listener);
    drop(senders);
    let all = u32::try_from(connections_max).unwrap_or(u32::MAX);
    let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
    if tokio::time::timeout(grace, permits.acquire_many(all)).await.is_err() {
        tracing::warn!(
            grace_ms = SHUTDOWN_GRACE_MS,
            "shutdown: connections still open after the grace period"
        );
    }
    let _ = finished_sender.send(true);
    for worker in workers {
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    }
    Ok(())
}

fn connection_builder(config: &ProxyConfig) -> hyper_util::server::conn::auto::Builder<TokioExecutor> {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let header_bytes_max = config.limits.request_header_bytes_max.max(8192);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(config.timeouts.client_header_ms))
        .max_buf_size(header_bytes_max)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(header_bytes_max).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_STREAMS_PER_CONNECTION_MAX)
        .keep_alive_interval(Some(Duration::from_millis(config.timeouts.idle_ms)))
        .keep_alive_timeout(Duration::from_millis(config.timeouts.client_header_ms));
    builder
}

/// One worker thread: serves the connections the accept loop hands it, until `finished`.
async fn run_worker(
    shared: Arc<Shared>,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    mut receiver: tokio::sync::mpsc::UnboundedReceiver<Accepted>,
    stop: watch::Receiver<bool>,
    mut finished: watch::Receiver<bool>,
) {
    let upstream: Arc<Pool> = shared.new_pool();
    let raw: Arc<Pool<tokio::net::TcpStream>> = shared.new_pool();
    let sweeper = {
        let (pool, raw) = (upstream.clone(), raw.clone());
        let every = Duration::from_millis(shared.config.timeouts.idle_ms.div_ceil(2).max(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                pool.sweep();
                raw.sweep();
            }
        })
    };
    while let Some(accepted) = receiver.recv().await {
        let Ok(stream) = tokio::net::TcpStream::from_std(accepted.stream) else {
            continue;
        };
        let (shared, builder, upstream, raw, stop) = (
            shared.clone(),
            builder.clone(),
            upstream.clone(),
            raw.clone(),
            stop.clone(),
        );
        let (client, permit) = (accepted.client, accepted.permit);
        shared.stats.connections_active.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _permit = permit;
            let mut stream = stream;
            let header_ms = Duration::from_millis(shared.config.timeouts.client_header_ms);
            let deadline = tokio::time::Instant::now() + header_ms;
            if let Some(tls) = shared.tls.as_ref() {
                // TLS (`[proxy] tls_cert`): the handshake within client_header_ms, then HTTP/2
                // (ALPN h2) to hyper, HTTP/1.1 (ALPN http/1.1, or none) to the h1 core.
                match tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)).await {
                    Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                        serve_hyper(shared.clone(), builder, upstream, stream, client, stop, Proto::Https).await;
                    }
                    Ok(Ok(stream)) => {
                        let input = Vec::with_capacity(h1::REQUEST_BUFFER_BYTES);
                        h1::serve_connection(shared.clone(), raw, stream, client, input, deadline, stop, Proto::Https)
                            .await;
                    }
                    Ok(Err(error)) => shared.note_client_problem(client, ClientProblem::Handshake(&error)),
                    Err(_) => shared.note_client_problem(client, ClientProblem::Timeout),
                }
                shared.stats.connections_active.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            let mut input = Vec::with_capacity(h1::REQUEST_BUFFER_BYTES);
            match h1::sniff_h2(&mut stream, &mut input, deadline).await {
                Ok(false) => {
                    h1::serve_connection(shared.clone(), raw, stream, client, input, deadline, stop, Proto::Http).await;
                }
                Ok(true) => {
                    let stream = h1::Rewind::new(input, stream);
                    serve_hyper(shared.clone(), builder, upstream, stream, client, stop, Proto::Http).await;
                }
                Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                    shared.note_client_problem(client, ClientProblem::Timeout);
                }
                Err(_) => {}
            }
            shared.stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        });
    }
    let _ = finished.wait_for(|done| *done).await;
    sweeper.abort();
}

/// One HTTP/2 client connection (prior knowledge), served by hyper; the first bytes were
/// already read into `stream`'s rewind buffer.
///
/// A connection with no open stream for `client_header_ms` (before its first request or
/// between requests: HAProxy's `timeout http-keep-alive`, which defaults to `timeout
/// http-request`) gets a GOAWAY and is closed; answering hyper's keep-alive PINGs does not keep
/// it open. Once a GOAWAY is out (idle or shutdown), a connection that has no open stream for
/// [`H2_GOAWAY_GRACE_MS`] is dropped, so a client that ignores the GOAWAY's PING cannot hold it.
///
/// A stream whose response waits on the client for `idle_ms` (HAProxy's `timeout client`, the
/// bound of an HTTP/1 write to the client) closes the connection: a client that stops reading,
/// or never sends WINDOW_UPDATE, would otherwise hold the connection, the stream's task and its
/// server connection for ever. hyper cannot reset one stream from outside, so the whole
/// connection is dropped; its responses' server connections are closed, not pooled.
async fn serve_hyper<S>(
    shared: Arc<Shared>,
    builder: Arc<hyper_util::server::conn::auto::Builder<TokioExecutor>>,
    upstream: Arc<Pool>,
    stream: S,
    client: SocketAddr,
    mut stop: watch::Receiver<bool>,
    proto: Proto,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (open_sender, mut open_streams) = watch::channel(0usize);
    let open_sender = Arc::new(open_sender);
    let waits = Arc::new(ClientWaits::new());
    let service_shared = shared.clone();
    let service_waits = waits.clone();
    let service = hyper::service::service_fn(move |request| {
        let (shared, upstream, waits) = (service_shared.clone(), upstream.clone(), service_waits.clone());
        // Counted from the moment hyper hands the stream over until its response is sent (or
        // the stream is reset): the future and then the body hold it.
        let open = OpenStream::new(open_sender.clone());
        async move {
            let response = shared.handle(&upstream, request, client, proto).await;
            Ok::<_, Infallible>(response.map(|body| CountedBody {
                inner: body,
                _open: open,
                waiting: waits.register(),
                epoch: waits.epoch,
            }))
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let idle_max = Duration::from_millis(shared.config.timeouts.client_header_ms);
    let goaway_grace = Duration::from_millis(H2_GOAWAY_GRACE_MS);
    let client_idle_max = Duration::from_millis(shared.config.timeouts.idle_ms);
    // A connection handed over after shutdown began sees no change; stop it at once.
    let mut stopping = *stop.borrow_and_update();
    if stopping {
        connection.as_mut().graceful_shutdown();
    }
    let result = loop {
        let idle = *open_streams.borrow_and_update() == 0;
        let idle_for = if stopping { goaway_grace } else { idle_max };
        // When the stream that waits longest on the client will have waited idle_ms.
        // (With no open stream, nothing waits on the client.)
        let stall_check = (!idle).then(|| waits.next_check(client_idle_max));
        tokio::select! {
            result = connection.as_mut() => break Some(result),
            _ = stop.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = open_streams.changed() => {}
            () = tokio::time::sleep(idle_for), if idle => {
                if stopping {
                    // The GOAWAY went out and the client did not close: drop the connection.
                    break None;
                }
                tracing::debug!(%client, client_header_ms = shared.config.timeouts.client_header_ms,
                    "closing an idle HTTP/2 connection");
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(stall_check.unwrap_or_else(tokio::time::Instant::now)), if stall_check.is_some() => {
                if waits.stalled(client_idle_max) {
                    // Dropping the connection closes it and drops every stream's response
                    // body: their server connections are closed, never given back mid-response.
                    shared.note_client_problem(client, ClientProblem::Stalled);
                    break None;
                }
            }
        }
    };
    if let Some(Err(error)) = result {
        shared.log_connection_error(client, error.as_ref());
    }
}

/// One open HTTP/2 stream in its connection's count (for the idle timeout).
struct OpenStream(Arc<watch::Sender<usize>>);

impl OpenStream {
    fn new(count: Arc<watch::Sender<usize>>) -> OpenStream {
        count.send_modify(|open| *open += 1);
        OpenStream(count)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open -= 1);
    }
}

/// Since when each response of an HTTP/2 connection waits on the client (for the client-side
/// inactivity timeout, `idle_ms`).
///
/// hyper polls a response body for its next frame only once the previous one fit in the
/// stream's flow-control window (and h2's send buffer): from the moment a body hands over a
/// frame (or is handed to hyper) until it is polled again, the response waits on the client. A
/// body polled and pending waits on its server instead, which is not the client's doing.
struct ClientWaits {
    epoch: tokio::time::Instant,
    /// One clock per response body: [`NOT_WAITING`], or the milliseconds since `epoch` at which
    /// it started waiting on the client, plus one.
    streams: Mutex<Vec<std::sync::Weak<AtomicU64>>>,
}

/// A response that does not wait on the client (its next frame is being read from the server).
const NOT_WAITING: u64 = 0;

impl ClientWaits {
    fn new() -> ClientWaits {
        ClientWaits {
            epoch: tokio::time::Instant::now(),
            streams: Mutex::new(Vec::new()),
        }
    }

    /// A clock for a response just handed to hyper: it waits on the client from now on.
    fn register(&self) -> Arc<AtomicU64> {
        let clock = Arc::new(AtomicU64::new(since(self.epoch)));
        let mut streams = self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        streams.retain(|stream| stream.strong_count() > 0);
        streams.push(Arc::downgrade(&clock));
        clock
    }

    /// When the response that waits longest on the client started waiting (`None`: none waits).
    fn earliest_wait(&self) -> Option<tokio::time::Instant> {
        let streams = self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        streams
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|clock| clock.load(Ordering::Relaxed))
            .filter(|started| *started != NOT_WAITING)
            .min()
            .map(|started| self.epoch + Duration::from_millis(started - 1))
    }

    /// When to look again for a response that waited `idle` on the client: a wait that starts
    /// after now cannot have lasted `idle` before `now + idle`.
    fn next_check(&self, idle: Duration) -> tokio::time::Instant {
        self.earliest_wait().unwrap_or_else(tokio::time::Instant::now) + idle
    }

    /// Whether a response has waited on the client for `idle` or longer.
    fn stalled(&self, idle: Duration) -> bool {
        self.earliest_wait()
            .is_some_and(|start| start + idle <= tokio::time::Instant::now())
    }
}

/// The value of a [`ClientWaits`] clock that starts waiting now.
fn since(epoch: tokio::time::Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// A response body that keeps its stream counted as open until hyper drops it (sent, or the
/// stream reset), and tells its connection when it waits on the client.
struct CountedBody {
    inner: ProxyBody,
    _open: OpenStream,
    /// This response's [`ClientWaits`] clock.
    waiting: Arc<AtomicU64>,
    epoch: tokio::time::Instant,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // Polled again: the client took what it was sent. A frame handed over waits on the
        // client until hyper polls for the next one.
        let clock = match polled {
            Poll::Ready(Some(Ok(_))) => since(this.epoch),
            _ => NOT_WAITING,
        };
        this.waiting.store(clock, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What was wrong with a client connection (for the count and the rate-limited log).
#[derive(Clone, Copy)]
pub(crate) enum ClientProblem<'a> {
    /// No complete request head within `client_header_ms`.
    Timeout,
    /// A request head over `request_header_bytes_max` (431).
    TooLarge,
    /// Gone mid-request: counted, logged at debug.
    Gone(&'a dyn std::fmt::Display),
    /// An HTTP/2 response made no progress towards the client for `idle_ms` (a client that
    /// stopped reading, or sends no WINDOW_UPDATE): the connection was closed.
    Stalled,
    /// The TLS handshake failed (a client that does not trust the certificate, speaks plain
    /// HTTP to the TLS port, or offers nothing in common).
    Handshake(&'a dyn std::fmt::Display),
    /// Anything else (a malformed request, 400).
    Other(&'a dyn std::fmt::Display),
}

impl Shared {
    fn log_connection_error(&self, client: SocketAddr, error: &(dyn std::error::Error + Send + Sync + 'static)) {
        let hyper_error = error.downcast_ref::<hyper::Error>();
        let problem = if hyper_error.is_some_and(|e| e.is_timeout()) {
            ClientProblem::Timeout
        } else if hyper_error.is_some_and(|e| e.is_parse_too_large()) {
            ClientProblem::TooLarge
        } else if hyper_error.is_some_and(|e| e.is_incomplete_message() || e.is_canceled()) {
            ClientProblem::Gone(&error)
        } else {
            ClientProblem::Other(&error)
        };
        self.note_client_problem(client, problem);
    }

    /// Counts and logs (rate-limited) a client connection's trouble.
    pub(crate) fn note_client_problem(&self, client: SocketAddr, problem: ClientProblem<'_>) {
        self.stats.client_errors_total.fetch_add(1, Ordering::Relaxed);
        if let ClientProblem::Gone(error) = problem {
            tracing::debug!(%client, %error, "client connection closed mid-request");
            return;
        }
        let Some(suppressed) = self.logs.client_connection.allow(self.now_ms()) else {
            return;
        };
        match problem {
            ClientProblem::Timeout => {
                tracing::warn!(%client, client_header_ms = self.config.timeouts.client_header_ms, suppressed,
                "closed a client connection that sent no complete request head in time (slowloris, or idle keep-alive)")
            }
            ClientProblem::TooLarge => {
                tracing::warn!(%client, request_header_bytes_max = self.config.limits.request_header_bytes_max, suppressed,
                "client sent a request head over the limit; answered 431")
            }
            ClientProblem::Gone(_) => {}
            ClientProblem::Stalled => {
                tracing::warn!(%client, idle_ms = self.config.timeouts.idle_ms, suppressed,
                "closed an HTTP/2 connection whose client took none of a response for idle_ms (stopped reading, or sent no WINDOW_UPDATE)")
            }
            ClientProblem::Handshake(error) => tracing::info!(%client, %error, suppressed,
                "TLS handshake with a client failed (it may not trust tls_cert, or spoke plain HTTP to the TLS port)"),
            ClientProblem::Other(error) => tracing::info!(%client, %error, suppressed, "client connection error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_headers_append_this_hop() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        let client: SocketAddr = "192.0.2.1:5555".parse().expect("literal");
        add_forwarding(&mut headers, client, Some("shop.example"), Proto::Http);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 192.0.2.1");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["forwarded"], "for=192.0.2.1;proto=http;host=shop.example");
    }

    #[test]
    fn every_forwarding_line_is_kept_and_a_host_that_is_not_a_token_is_quoted() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        headers.append("x-forwarded-for", HeaderValue::from_static("10.9.9.9"));
        headers.append("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        headers.append("forwarded", HeaderValue::from_static("for=10.9.9.9"));
        let client: SocketAddr = "192.0.2.1:5555".parse().expect("literal");
        add_forwarding(&mut headers, client, Some("x,for=6.6.6.6"), Proto::Http);
        let all = |name: &str| headers.get_all(name).iter().count();
        assert_eq!((all("x-forwarded-for"), all("forwarded")), (1, 1));
        assert_eq!(headers["x-forwarded-for"], "6.6.6.6, 10.9.9.9, 192.0.2.1");
        assert_eq!(
            headers["forwarded"],
            "for=6.6.6.6, for=10.9.9.9, for=192.0.2.1;proto=http;host=\"x,for=6.6.6.6\""
        );
    }

    #[test]
    fn forwarded_escapes_quotes_and_backslashes_and_leaves_out_what_it_cannot_quote() {
        let client: SocketAddr = "192.0.2.1:5555".parse().expect("literal");
        let written = |host: &[u8]| {
            let mut out = Vec::new();
            push_forwarded(&mut out, std::iter::empty(), client, Some(host), Proto::Http);
            String::from_utf8(out).expect("ascii")
        };
        assert_eq!(written(b"a\"b\\c"), "for=192.0.2.1;proto=http;host=\"a\\\"b\\\\c\"");
        assert_eq!(written(b"a\x01b"), "for=192.0.2.1;proto=http");
        assert_eq!(written(b"a\xffb"), "for=192.0.2.1;proto=http");
        for host in [&b"a\"b\\c"[..], b"x,for=1.2.3.4", b"a;b=c", b"[::1]:80", b""] {
            assert!(valid_forwarded(written(host).as_bytes()), "{:?}", written(host));
        }
    }

    #[test]
    fn forwarded_lists_are_checked_against_rfc_7239() {
        for good in [
            "for=192.0.2.43",
            "for=192.0.2.43, for=198.51.100.17;by=203.0.113.60;proto=http;host=example.com",
            "For=\"[2001:db8:cafe::17]:4711\"",
            "for=\"_gazonk\"",
            "for=\"a\\\"b\";proto=https",
            "for=a ; proto=http ,, for=b",
            ";for=a;",
        ] {
            assert!(valid_forwarded(good.as_bytes()), "{good}");
        }
        for bad in [
            "for=6.6.6.6;x=\"",
            "for=\"a\\",
            "for=\"a\\\"",
            "for",
            "for=",
            "=a",
            "for=a b",
            "for=[::1]",
            "for=a;by",
            "for=\"a\"b",
            "for=\"a\x01\"",
        ] {
            assert!(!valid_forwarded(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn ipv4_addresses_are_written_like_display_does() {
        for text in ["0.0.0.0", "9.10.99.100", "192.0.2.1", "255.255.255.255", "10.0.200.7"] {
            let ip: std::net::IpAddr = text.parse().expect("literal");
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).expect("ascii"), ip.to_string());
        }
    }

    #[test]
    fn forwarded_quotes_ipv6() {
        let mut headers = HeaderMap::new();
        let client: SocketAddr = "[2001:db8::1]:80".parse().expect("literal");
        add_forwarding(&mut headers, client, None, Proto::Https);
        assert_eq!(headers["forwarded"], "for=\"[2001:db8::1]\";proto=https");
        assert_eq!(headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn host_must_be_there_once_and_valid() {
        let origin: Uri = "/cart".parse().expect("literal");
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::HOST, HeaderValue::from_str(value).expect("literal"));
            }
            headers
        };
        let one = forwarded_host(Version::HTTP_11, &origin, &with(&["shop.example:8080"]));
        assert_eq!(one, Ok(Some(HeaderValue::from_static("shop.example:8080"))));
        assert_eq!(
            forwarded_host(Version::HTTP_11, &origin, &with(&[])),
            Err(HostError::Missing)
        );
        assert_eq!(
            forwarded_host(Version::HTTP_11, &origin, &with(&["a.example", "b.example"])),
            Err(HostError::Repeated)
        );
        assert_eq!(
            forwarded_host(Version::HTTP_11, &origin, &with(&["a.example", "a.example"])),
            Err(HostError::Repeated)
        );
        assert_eq!(
            forwarded_host(Version::HTTP_10, &origin, &with(&["a.example", "b.example"])),
            Err(HostError::Repeated)
        );
        assert_eq!(forwarded_host(Version::HTTP_10, &origin, &with(&[])), Ok(None));
        for good in [
            "shop.example",
            "192.0.2.1:80",
            "[2001:db8::1]:8080",
            "[::1]",
            "a.example:",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "user@shop.example",
            "shop example",
            "shop.example:port",
            "[::1",
            "[::1]x",
            "a:b:c",
            "a.example:123456",
            "a/b",
        ] {
            assert_eq!(
                forwarded_host(Version::HTTP_11, &origin, &with(&[bad])),
                Err(HostError::Invalid),
                "{bad}"
            );
        }
        assert_eq!(
            forwarded_host(Version::HTTP_11, &origin, &with(&[""])),
            Ok(Some(HeaderValue::from_static("")))
        );
    }

    #[test]
    fn an_authority_follows_the_rules_of_host() {
        let with_userinfo: Uri = "http://user@shop.example/cart".parse().expect("literal");
        assert_eq!(
            forwarded_host(Version::HTTP_2, &with_userinfo, &HeaderMap::new()),
            Err(HostError::Invalid)
        );
        // RFC 3986 allows sub-delims in a reg-name: kept, and quoted in `Forwarded`.
        let sub_delims: Uri = "http://x,for=6.6.6.6/".parse().expect("literal");
        assert_eq!(
            forwarded_host(Version::HTTP_2, &sub_delims, &HeaderMap::new()),
            Ok(Some(HeaderValue::from_static("x,for=6.6.6.6")))
        );
    }

    #[test]
    fn an_absolute_target_replaces_host_and_h2_authority_must_agree() {
        let absolute: Uri = "http://shop.example/cart".parse().expect("literal");
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("other.example"));
        assert_eq!(
            forwarded_host(Version::HTTP_11, &absolute, &headers),
            Ok(Some(HeaderValue::from_static("shop.example")))
        );
        assert_eq!(
            forwarded_host(Version::HTTP_2, &absolute, &headers),
            Err(HostError::Mismatch)
        );
        assert_eq!(
            forwarded_host(Version::HTTP_2, &absolute, &HeaderMap::new()),
            Ok(Some(HeaderValue::from_static("shop.example")))
        );
        headers.insert(header::HOST, HeaderValue::from_static("SHOP.example"));
        assert!(forwarded_host(Version::HTTP_2, &absolute, &headers).is_ok());
    }

    #[test]
    fn only_idempotent_methods_retry_after_sending() {
        assert!(idempotent(&Method::GET));
        assert!(idempotent(&Method::PUT));
        assert!(!idempotent(&Method::POST));
        assert!(!idempotent(&Method::PATCH));
    }

    #[test]
    fn passive_checks_ignore_501_and_505() {
        assert!(is_server_error_code(500));
        assert!(is_server_error_code(503));
        assert!(!is_server_error_code(501));
        assert!(!is_server_error_code(505));
        assert!(!is_server_error_code(404));
    }
}
