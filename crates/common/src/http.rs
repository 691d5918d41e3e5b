//! The HTTP accept loop of every Switchyard listener, with its limits enforced before a handler
//! runs: connections per listener and per client address, a header read timeout, an idle
//! keep-alive timeout, a body read timeout, the body size checked against `Content-Length`
//! before a byte of it is read, and one budget for the body bytes buffered at once across all
//! connections, so stalled uploads hold the socket's kernel buffers, not the process's memory.
//!
//! HTTP/1.1 and h2c (prior knowledge), as `axum::serve` serves them. A client that half-closes
//! its write side after a complete request still gets its response. The app is an
//! `axum::Router`; its handlers see the body as an [`axum::body::Body`] whose errors are
//! [`Refusal`]s (find one with [`refusal_of`]), so a handler may check a request's head (a
//! signature, say) before it reads the body at all.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::watchdog::{self, Snapshot, Timeouts, Verdict};

/// Default: from the first byte of a request head to its last.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default: from a request's head to the last byte of its body.
pub const BODY_READ_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Default: how long a keep-alive connection may wait for its next request.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Default: open connections per listener.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Default: open connections per client IP address. Generous, because a proxy or a lab's fault
/// proxy brings many clients from one address.
pub const CONNECTIONS_PER_CLIENT_MAX_DEFAULT: usize = 256;
/// Default: request body bytes buffered at once across all connections of a listener.
pub const BUFFERED_BODY_BYTES_MAX_DEFAULT: usize = 32 * 1024 * 1024;
/// Default request body limit of the admin listeners (axum's own default).
pub const ADMIN_REQUEST_BODY_BYTES_MAX: usize = 2 * 1024 * 1024;
/// The first bytes of every body are outside the shared budget, so small requests are never
/// held up by large stalled ones (their memory is bounded by the connection limit instead).
pub const BODY_BYTES_UNBUDGETED: usize = 64 * 1024;
/// A body holding its share of the budget must keep arriving at this rate at least (after
/// [`BODY_HOLDING_GRACE_MS`]), or it is refused (408) and its share given back: a client that
/// declares a large body and stalls cannot keep the budget from others for the whole body read
/// timeout. 128 KiB/s is a 1 Mbit/s uplink; a 16 MiB body within the default 60 s timeout
/// already needs twice that.
pub const BODY_HOLDING_BYTES_PER_S_MIN: u64 = 128 * 1024;
/// How long a body may hold its share before the rate above applies.
pub const BODY_HOLDING_GRACE_MS: u64 = 5_000;
/// The most silence a body holding its share may buy with bytes sent ahead: bytes sent fast
/// earn their worth at the minimum rate, up to this much ahead of now, so a client that sends
/// much at once and then stalls gives its share back within this (uncapped, 10 MB sent at once
/// bought over a minute), while a real upload survives a retransmission backoff of a few
/// seconds.
pub const BODY_HOLDING_SILENCE_MS_MAX: u64 = 10_000;
/// Bytes of hyper's read buffer per HTTP/1 connection; also the largest request head.
pub const READ_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// HTTP/2: streams per connection, and the flow-control windows that bound what a peer may
/// send before the handler reads it.
pub const H2_STREAMS_MAX: u32 = 64;
pub const H2_STREAM_WINDOW_BYTES: u32 = 64 * 1024;
pub const H2_CONNECTION_WINDOW_BYTES: u32 = 256 * 1024;
/// HTTP/2: streams of one connection that may wait for their share of the body budget at once.
/// A waiting stream is not read, so what its client sent meanwhile (up to its stream window)
/// stays in the connection's window; past this many, the streams holding their share could
/// not receive the rest of their bodies. A stream beyond it is refused (503) instead.
pub const H2_BUDGET_WAITERS_MAX: u32 = H2_CONNECTION_WINDOW_BYTES / H2_STREAM_WINDOW_BYTES - 1;
/// How long shutdown waits for requests in flight before it drops their connections.
pub const SHUTDOWN_DRAIN_TIMEOUT_MS: u64 = 10_000;
/// Pause after an accept error (out of file descriptors, say) before accepting again.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 50;
/// Connections a full listener has told to close (to make room) that may still be open at once:
/// each admits one new connection, so the open count passes `connections_max` by at most this
/// many while they close; past it a new connection is refused.
pub const EVICTIONS_IN_FLIGHT_MAX: usize = 64;
/// At most one warning per this interval for refused connections and accept errors.
const WARN_INTERVAL_MS: u64 = 10_000;
/// The smallest shared body budget accepted: a frame must always fit.
pub const BUFFERED_BODY_BYTES_MIN: usize = 1024 * 1024;

/// The limits of one listener. Every field is checked by [`Limits::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub connections_max: usize,
    pub connections_per_client_max: usize,
    pub request_body_bytes_max: usize,
    pub buffered_body_bytes_max: usize,
}

impl Limits {
    /// The defaults with the given body limit.
    pub fn with_body_limit(request_body_bytes_max: usize) -> Limits {
        Limits {
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            body_read_timeout_ms: BODY_READ_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            connections_per_client_max: CONNECTIONS_PER_CLIENT_MAX_DEFAULT,
            request_body_bytes_max,
            buffered_body_bytes_max: BUFFERED_BODY_BYTES_MAX_DEFAULT,
        }
    }

    /// The limits of an admin or control API: small JSON bodies.
    pub fn admin() -> Limits {
        Limits::with_body_limit(ADMIN_REQUEST_BODY_BYTES_MAX)
    }

    /// Refuses zero timeouts and counts, and a budget too small for one read.
    pub fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ] {
            if value == 0 {
                return Err(format!("{name} is 0; give a timeout of at least 1 ms"));
            }
        }
        for (name, value) in [
            ("connections_max", self.connections_max),
            ("connections_per_client_max", self.connections_per_client_max),
        ] {
            if value == 0 {
                return Err(format!("{name} is 0; allow at least 1 connection"));
            }
        }
        if self.buffered_body_bytes_max < BUFFERED_BODY_BYTES_MIN {
            return Err(format!(
                "buffered_body_bytes_max is {} bytes; give at least {BUFFERED_BODY_BYTES_MIN}",
                self.buffered_body_bytes_max
            ));
        }
        Ok(())
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            header_read_timeout_ms: self.header_read_timeout_ms,
            idle_timeout_ms: self.idle_timeout_ms,
        }
    }
}

/// A request or connection turned away by a limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the request body{} is larger than the limit of {limit_bytes} bytes; send smaller requests",
        declared_bytes.map(|b| format!(" ({b} bytes)")).unwrap_or_default()
    )]
    BodyTooLarge {
        declared_bytes: Option<u64>,
        limit_bytes: usize,
    },
    #[error("the request body did not arrive within {timeout_ms} ms; send it without pausing")]
    BodyTimeout { timeout_ms: u64 },
    #[error(
        "the request body arrived slower than {bytes_per_s_min} bytes/s while it held its share of the server's room for bodies; send it without pausing"
    )]
    BodyTooSlow { bytes_per_s_min: u64 },
    #[error("the request body could not be read: {reason}")]
    BodyIncomplete { reason: String },
    #[error(
        "{waiting} request bodies of this HTTP/2 connection already wait for the server's room for bodies; send fewer large bodies at once on one connection, or retry"
    )]
    BodyWaitersBusy { waiting: u32 },
    #[error(
        "too many connections {}: the limit is {limit}; reuse connections (keep-alive) or retry later",
        if *per_client { "from this client address" } else { "to this listener" }
    )]
    TooManyConnections { limit: usize, per_client: bool },
    #[error("an HTTP/1.1 request must carry exactly one Host header (RFC 9112, section 3.2); send one")]
    MissingHost,
    #[error(
        "the request's body is sent with the transfer coding '{coding}', which this server does not decode (RFC 9112, section 6.1: only chunked); send it chunked or with a Content-Length (Content-Encoding: gzip is decoded where a route takes it)"
    )]
    UnsupportedTransferCoding { coding: String },
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout { .. } | Refusal::BodyTooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
            Refusal::BodyIncomplete { .. } => StatusCode::BAD_REQUEST,
            Refusal::TooManyConnections { .. } | Refusal::BodyWaitersBusy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::MissingHost => StatusCode::BAD_REQUEST,
            Refusal::UnsupportedTransferCoding { .. } => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// A stable name for clients to match on.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BodyTooLarge { .. } => "RequestEntityTooLarge",
            Refusal::BodyTimeout { .. } | Refusal::BodyTooSlow { .. } => "RequestTimeout",
            Refusal::BodyIncomplete { .. } => "IncompleteBody",
            Refusal::TooManyConnections { .. } => "TooManyConnections",
            Refusal::BodyWaitersBusy { .. } => "BodyWaitersBusy",
            Refusal::MissingHost => "MissingHost",
            Refusal::UnsupportedTransferCoding { .. } => "UnsupportedTransferCoding",
        }
    }
}

/// A refusal as the listener's clients expect to see it.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
    /// Further headers the listener's clients expect on every answer (a request id, a body
    /// checksum); names in lower case.
    pub headers: Vec<(&'static str, String)>,
}

/// How a listener shows a [`Refusal`].
pub type Render = Arc<dyn Fn(&Refusal) -> Rendered + Send + Sync>;

/// The default rendering: `{"__type": CODE, "message": ...}` as JSON.
pub fn render_json(refusal: &Refusal) -> Rendered {
    Rendered {
        status: refusal.status(),
        content_type: "application/json",
        body: Bytes::from(serde_json::json!({"__type": refusal.code(), "message": refusal.to_string()}).to_string()),
        headers: Vec::new(),
    }
}

/// A rendered refusal as a response; it closes the connection, since the body may be unread.
pub fn response_of(rendered: Rendered) -> Response<Body> {
    let mut response = Response::new(Body::from(rendered.body));
    *response.status_mut() = rendered.status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(rendered.content_type));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    for (name, value) in &rendered.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
    }
    response
}

/// The [`Refusal`] behind a body error, if a limit caused it.
pub fn refusal_of<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(refusal) = error.downcast_ref::<Refusal>() {
            return Some(refusal);
        }
        current = error.source();
    }
    None
}

/// A listener's name (for logs), limits, way of showing refusals and, optionally, TLS.
#[derive(Clone)]
pub struct Options {
    pub name: &'static str,
    pub limits: Limits,
    pub render: Render,
    pub tls: Option<Arc<Tls>>,
}

/// The files of a TLS listener: its certificate chain and key and, for mutual TLS, the CA
/// whose certificates clients may present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// With it, a client certificate signed by this CA is verified during the handshake and
    /// marked on each request with [`VerifiedClientCertificate`]; clients without one are still
    /// served (each handler decides whether it needs one), a client presenting a certificate
    /// that does not verify is refused in the handshake.
    pub client_ca: Option<std::path::PathBuf>,
}

/// Marks a request that arrived over a TLS connection whose client presented a certificate
/// verified against the listener's [`TlsFiles::client_ca`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedClientCertificate;

/// A TLS server certificate and key that can be replaced while serving: connections already
/// open keep the configuration they started with, new ones get the new one.
pub struct Tls {
    files: TlsFiles,
    current: std::sync::RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    /// Reads a PEM certificate chain and its private key (and the client CA, if any).
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        Ok(Tls {
            current: std::sync::RwLock::new(Arc::new(server_config(&files)?)),
            files,
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again; on an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = Arc::new(server_config(&self.files)?);
        *self.current.write().expect("TLS configuration lock is never poisoned") = config;
        Ok(())
    }

    /// An acceptor with the configuration in use now (ALPN: `h2`, then `http/1.1`).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(
            &self.current.read().expect("TLS configuration lock is never poisoned"),
        ))
    }
}

/// Reloads `tls` from its files on every SIGHUP, for as long as the process runs; a failed
/// reload keeps the certificate in use and says why.
#[cfg(unix)]
pub async fn reload_on_hangup(tls: Arc<Tls>, listener: &'static str) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            listener,
            "cannot watch SIGHUP: the TLS certificate reloads only on restart"
        );
        return;
    };
    while hangups.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!(listener, cert = %tls.files().cert.display(), "TLS certificate reloaded"),
            Err(error) => {
                tracing::error!(listener, %error, "TLS certificate not reloaded; the previous one stays in use")
            }
        }
    }
}

fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = (&files.cert, &files.key);
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("read TLS certificate {}: {error}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the server's certificate chain",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| format!("read TLS private key {}: {error}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS protocol versions: {error}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let roots = crate::tls_client::read_roots(client_ca)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|error| format!("client CA {}: {error}", client_ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, private).map_err(|error| {
        format!(
            "TLS certificate {} and key {} do not make a server identity: {error}",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl Options {
    /// Refusals shown by [`render_json`].
    pub fn new(name: &'static str, limits: Limits) -> Options {
        Options {
            name,
            limits,
            render: Arc::new(render_json),
            tls: None,
        }
    }

    /// Serves HTTPS with `tls` instead of plain HTTP.
    pub fn tls(mut self, tls: Option<Arc<Tls>>) -> Options {
        self.tls = tls;
        self
    }

    pub fn render(mut self, render: Render) -> Options {
        self.render = render;
        self
    }
}

/// Serves `app` on `listener` under the limits of `options` until `shutdown` resolves, then
/// stops accepting, lets requests in flight finish (up to [`SHUTDOWN_DRAIN_TIMEOUT_MS`]) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    options: Options,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        budget: Arc::new(Semaphore::new(options.limits.buffered_body_bytes_max)),
        options,
        connections: Mutex::new(Connections::default()),
        last_warning_ms: AtomicU64::new(0),
        started: Instant::now(),
    });
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match shared.admit(peer.ip()) {
                    Ok(slot) => {
                        tasks.spawn(connection(stream, Arc::clone(&shared), app.clone(), stopped.clone(), slot));
                    }
                    Err(refusal) => {
                        if shared.may_warn() {
                            tracing::warn!(listener = shared.options.name, client = %peer.ip(), %refusal, "connection refused");
                        }
                        refuse(&stream, &(shared.options.render)(&refusal));
                    }
                },
                Err(error) => {
                    if shared.may_warn() {
                        tracing::warn!(listener = shared.options.name, %error, "accept failed; pausing before the next accept");
                    }
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                }
            },
        }
    }
    drop(listener);
    // Receivers see the change even if they are dropped later; an error only means none is left.
    let _ = stop.send(true);
    let drained = tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_TIMEOUT_MS), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = shared.options.name,
            connections = tasks.len(),
            "requests still in flight after {SHUTDOWN_DRAIN_TIMEOUT_MS} ms; closing their connections"
        );
    }
    Ok(())
}

#[derive(Default)]
struct Connections {
    open: usize,
    /// Connections told to close to make room that have not closed yet.
    evicting: usize,
    /// Open connections per client: an IPv4 address, or an IPv6 /64 ([`client_key`]).
    per_client: HashMap<IpAddr, usize>,
    /// Every open connection's state by its id, so a full listener can close an idle one.
    states: HashMap<u64, Arc<ConnectionState>>,
    next_id: u64,
}

/// Whom the per-client limit counts a connection against: an IPv4 address, or the /64 of an
/// IPv6 one (one host usually holds a whole /64, so counting addresses would not bound it).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

struct Shared {
    options: Options,
    budget: Arc<Semaphore>,
    connections: Mutex<Connections>,
    last_warning_ms: AtomicU64,
    started: Instant,
}

impl Shared {
    fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Slot, Refusal> {
        let limits = &self.options.limits;
        let client = client_key(client);
        let mut connections = self
            .connections
            .lock()
            .expect("connection table lock is never poisoned");
        // The per-client limit first: a client at its own limit evicts nobody.
        if connections.per_client.get(&client).copied().unwrap_or(0) >= limits.connections_per_client_max {
            return Err(Refusal::TooManyConnections {
                limit: limits.connections_per_client_max,
                per_client: true,
            });
        }
        // Full: the keep-alive connection idle the longest is closed for the new one (as
        // HAProxy and nginx reuse idle slots), so connections that only sit idle cannot lock
        // out the ones that come to send a request. Refused only when none is idle.
        if connections.open >= limits.connections_max {
            if connections.evicting >= EVICTIONS_IN_FLIGHT_MAX {
                return Err(Refusal::TooManyConnections {
                    limit: limits.connections_max,
                    per_client: false,
                });
            }
            let idlest = connections
                .states
                .values()
                .filter(|state| !state.evicted.load(Ordering::Relaxed))
                .filter_map(|state| state.idle_since())
                .min_by_key(|(since, _)| *since)
                .map(|(_, state)| state);
            let Some(state) = idlest else {
                return Err(Refusal::TooManyConnections {
                    limit: limits.connections_max,
                    per_client: false,
                });
            };
            state.evicted.store(true, Ordering::Relaxed);
            state.evict.notify_one();
            connections.evicting += 1;
        }
        let count = connections.per_client.entry(client).or_insert(0);
        if *count >= limits.connections_per_client_max {
            return Err(Refusal::TooManyConnections {
                limit: limits.connections_per_client_max,
                per_client: true,
            });
        }
        *count += 1;
        connections.open += 1;
        let id = connections.next_id;
        connections.next_id = id.wrapping_add(1);
        let state = Arc::new(ConnectionState::new());
        connections.states.insert(id, Arc::clone(&state));
        Ok(Slot {
            shared: Arc::clone(self),
            client,
            id,
            state,
        })
    }

    /// Rate limit for warnings an attacker could otherwise use to flood the log.
    fn may_warn(&self) -> bool {
        let now = self.started.elapsed().as_millis() as u64 + WARN_INTERVAL_MS;
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= WARN_INTERVAL_MS
            && self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// One admitted connection; frees its place when dropped.
struct Slot {
    shared: Arc<Shared>,
    /// The per-client key ([`client_key`]).
    client: IpAddr,
    id: u64,
    state: Arc<ConnectionState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut connections = self
            .shared
            .connections
            .lock()
            .expect("connection table lock is never poisoned");
        connections.open = connections.open.saturating_sub(1);
        if self.state.evicted.load(Ordering::Relaxed) {
            connections.evicting = connections.evicting.saturating_sub(1);
        }
        connections.states.remove(&self.id);
        if let Some(count) = connections.per_client.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                connections.per_client.remove(&self.client);
            }
        }
    }
}

/// Answers a connection over a limit without reading from it, then closes it. A full socket
/// buffer just loses the answer: the close still tells the client.
fn refuse(stream: &TcpStream, rendered: &Rendered) {
    let mut message = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        rendered.status.as_u16(),
        rendered.status.canonical_reason().unwrap_or(""),
        rendered.content_type,
        rendered.body.len()
    )
    .into_bytes();
    // The head ends with the blank line: the extra headers go before it.
    message.truncate(message.len() - 2);
    for (name, value) in &rendered.headers {
        if HeaderValue::from_str(value).is_ok() {
            message.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
    }
    message.extend_from_slice(b"\r\n");
    message.extend_from_slice(&rendered.body);
    let _ = stream.try_write(&message);
}

/// What the watchdog needs to know about one connection, updated by its reads and requests.
struct ConnectionState {
    opened: Instant,
    active_requests: AtomicU32,
    /// Milliseconds since `opened` plus one when a head started; 0 when none has.
    head_started: AtomicU64,
    idle_since_ms: AtomicU64,
    /// The TLS client presented a certificate verified against the listener's client CA.
    client_verified: std::sync::atomic::AtomicBool,
    /// Signalled when a head starts on an idle connection: the watchdog, asleep until the
    /// idle deadline, wakes to time the head by the (shorter) header read timeout instead.
    head_began: tokio::sync::Notify,
    /// The connection serves HTTP/2: bytes between requests are frames (WINDOW_UPDATE while
    /// a response streams, PING, SETTINGS), not the start of a head, so only the idle timeout
    /// applies between its requests.
    http2: std::sync::atomic::AtomicBool,
    /// Request bodies of this connection waiting for their share of the body budget.
    budget_waiters: AtomicU32,
    /// Chosen to make room on a full listener: closed at once (it was idle).
    evicted: std::sync::atomic::AtomicBool,
    evict: tokio::sync::Notify,
}

impl ConnectionState {
    fn new() -> ConnectionState {
        ConnectionState {
            opened: Instant::now(),
            active_requests: AtomicU32::new(0),
            head_started: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            client_verified: std::sync::atomic::AtomicBool::new(false),
            head_began: tokio::sync::Notify::new(),
            http2: std::sync::atomic::AtomicBool::new(false),
            budget_waiters: AtomicU32::new(0),
            evicted: std::sync::atomic::AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
        }
    }

    /// When the connection went idle (its own clock), if it is idle: no request being served
    /// and no head begun.
    fn idle_since(self: &Arc<Self>) -> Option<(Instant, &Arc<Self>)> {
        let snapshot = self.snapshot();
        (snapshot.active_requests == 0 && snapshot.head_started_ms.is_none())
            .then(|| (self.opened + Duration::from_millis(snapshot.idle_since_ms), self))
    }

    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn on_bytes_read(&self) {
        if self.active_requests.load(Ordering::Acquire) == 0
            && !self.http2.load(Ordering::Relaxed)
            && self
                .head_started
                .compare_exchange(0, self.now_ms() + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.head_began.notify_one();
        }
    }

    fn begin_request(self: &Arc<Self>) -> ActiveRequest {
        self.active_requests.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(0, Ordering::Relaxed);
        ActiveRequest(Arc::clone(self))
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            active_requests: self.active_requests.load(Ordering::Acquire),
            head_started_ms: match self.head_started.load(Ordering::Relaxed) {
                0 => None,
                started => Some(started - 1),
            },
            idle_since_ms: self.idle_since_ms.load(Ordering::Relaxed),
        }
    }
}

/// A request being served; when the last one ends the connection goes idle.
struct ActiveRequest(Arc<ConnectionState>);

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let state = &self.0;
        state.idle_since_ms.store(state.now_ms(), Ordering::Relaxed);
        state.head_started.store(0, Ordering::Relaxed);
        state.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The stream, telling the connection's state when bytes arrive.
struct Counting<S> {
    inner: S,
    state: Arc<ConnectionState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.on_bytes_read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, app: Router, stopped: watch::Receiver<bool>, slot: Slot) {
    // Small JSON requests and responses: latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let state = Arc::clone(&slot.state);
    let Some(tls) = shared.options.tls.clone() else {
        let io = Counting {
            inner: stream,
            state: Arc::clone(&state),
        };
        return serve_connection(io, state, shared, app, stopped, slot).await;
    };
    // The handshake counts as the head: it must finish within the header read timeout. A
    // connection still in its handshake is idle to a full listener, and one told to close
    // for room closes at once rather than when its handshake ends.
    let timeout = Duration::from_millis(shared.options.limits.header_read_timeout_ms);
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(timeout, tls.acceptor().accept(stream)) => handshake,
        () = state.evict.notified() => {
            tracing::debug!(listener = shared.options.name, "closed a connection in its TLS handshake to make room");
            return;
        }
    };
    match handshake {
        Ok(Ok(stream)) => {
            // With a client verifier configured, rustls accepts only certificates that verify.
            let verified = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|chain| !chain.is_empty())
                && tls.files.client_ca.is_some();
            if verified {
                state.client_verified.store(true, Ordering::Relaxed);
            }
            let io = Counting {
                inner: stream,
                state: Arc::clone(&state),
            };
            serve_connection(io, state, shared, app, stopped, slot).await;
        }
        Ok(Err(error)) => {
            tracing::debug!(listener = shared.options.name, %error, "TLS handshake failed");
        }
        Err(_) => {
            tracing::debug!(listener = shared.options.name, "TLS handshake timed out");
        }
    }
}

async fn serve_connection<S>(
    io: Counting<S>,
    state: Arc<ConnectionState>,
    shared: Arc<Shared>,
    app: Router,
    mut stopped: watch::Receiver<bool>,
    _slot: Slot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let service = {
        let shared = Arc::clone(&shared);
        let state = Arc::clone(&state);
        hyper::service::service_fn(move |request| {
            dispatch(request, app.clone(), Arc::clone(&shared), Arc::clone(&state))
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog below times heads, separately from idle keep-alive connections.
        .header_read_timeout(None)
        .half_close(true)
        .keep_alive(true)
        .max_buf_size(READ_BUFFER_BYTES_MAX);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS_MAX)
        .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES)
        .max_header_list_size(READ_BUFFER_BYTES_MAX as u32);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let timeouts = shared.options.limits.timeouts();
    let mut stopping = false;
    loop {
        let wake = match watchdog::verdict(&timeouts, &state.snapshot(), state.now_ms()) {
            Verdict::Keep { recheck_at_ms } => state.opened + Duration::from_millis(recheck_at_ms),
            Verdict::Close(reason) => {
                tracing::debug!(
                    listener = shared.options.name,
                    reason = reason.as_str(),
                    "connection closed"
                );
                return;
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(listener = shared.options.name, %error, "connection ended with an error");
                }
                return;
            }
            _ = stopped.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
            () = tokio::time::sleep_until(wake.into()) => {}
            () = state.head_began.notified() => {}
            () = state.evict.notified(), if !stopping => {
                tracing::debug!(listener = shared.options.name, "idle connection closed to make room for a new one");
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse().ok())
}

async fn dispatch(
    request: Request<Incoming>,
    mut app: Router,
    shared: Arc<Shared>,
    state: Arc<ConnectionState>,
) -> Result<Response<Body>, Infallible> {
    if request.version() == hyper::Version::HTTP_2 {
        state.http2.store(true, Ordering::Relaxed);
    }
    let _active = state.begin_request();
    let limits = &shared.options.limits;
    if let Some(refusal) = malformed(&request) {
        // As after a 413: read and drop what the client still sends (bounded), so it reads
        // the answer rather than a reset.
        tokio::spawn(discard(request.into_body(), limits.body_read_timeout_ms));
        return Ok(response_of((shared.options.render)(&refusal)));
    }
    if let Some(declared) = declared_length(request.headers())
        && declared > limits.request_body_bytes_max as u64
    {
        let refusal = Refusal::BodyTooLarge {
            declared_bytes: Some(declared),
            limit_bytes: limits.request_body_bytes_max,
        };
        // Read and discard what the client is still sending (a bounded "lingering close", as
        // nginx does after a 413), so it gets to read the answer instead of a reset.
        tokio::spawn(discard(request.into_body(), limits.body_read_timeout_ms));
        return Ok(response_of((shared.options.render)(&refusal)));
    }
    let (mut parts, body) = request.into_parts();
    // HTTP/2 carries the host as `:authority`, which hyper puts in the URI: give handlers the
    // Host header they read over HTTP/1.1 (the control APIs' `browser_forgery` compares it).
    if parts.version == hyper::Version::HTTP_2
        && !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, authority);
    }
    // Never trust a marker a client could smuggle in: only the handshake sets it.
    parts.extensions.remove::<VerifiedClientCertificate>();
    if state.client_verified.load(Ordering::Relaxed) {
        parts.extensions.insert(VerifiedClientCertificate);
    }
    let body = LimitedBody::new(body, limits, Arc::clone(&shared.budget), Arc::clone(&state));
    let request = Request::from_parts(parts, Body::new(body));
    tower_service::Service::call(&mut app, request).await
}

/// What RFC 9112 has a server refuse that hyper lets through: an HTTP/1.1 request without
/// Host (400), and a transfer coding besides chunked (501; hyper frames the body by its final
/// `chunked` and would hand the handler the still-encoded bytes).
fn malformed<B>(request: &Request<B>) -> Option<Refusal> {
    if request.version() == hyper::Version::HTTP_11 && request.headers().get_all(header::HOST).iter().count() != 1 {
        return Some(Refusal::MissingHost);
    }
    let codings: Vec<&str> = request
        .headers()
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|coding| !coding.is_empty())
        .collect();
    // Chunked applied twice (RFC 9112 section 6.1 forbids it) is refused like any coding
    // hyper does not undo: it removes one layer of chunking only.
    let chunked = codings.iter().filter(|c| c.eq_ignore_ascii_case("chunked")).count();
    codings
        .iter()
        .find(|coding| !coding.eq_ignore_ascii_case("chunked"))
        .map(|coding| coding.to_string())
        .or((chunked > 1).then(|| "chunked, chunked".to_string()))
        .map(|coding| Refusal::UnsupportedTransferCoding {
            coding: coding.chars().take(64).collect(),
        })
}

/// Most bytes of a refused body read and thrown away before the connection is closed.
pub const DISCARD_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Reads `body` to its end and drops it, for at most `timeout_ms` and [`DISCARD_BYTES_MAX`].
async fn discard(mut body: Incoming, timeout_ms: u64) {
    use http_body_util::BodyExt;
    let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), async {
        let mut discarded: u64 = 0;
        while let Some(Ok(frame)) = body.frame().await {
            discarded += frame.data_ref().map_or(0, |data| data.len() as u64);
            if discarded > DISCARD_BYTES_MAX {
                break;
            }
        }
    })
    .await;
}

/// One body of a connection waiting for its share of the budget; uncounted when dropped.
struct WaiterCount(Arc<ConnectionState>);

impl WaiterCount {
    /// Counts a waiting body, unless the connection is HTTP/2 and already has
    /// [`H2_BUDGET_WAITERS_MAX`] waiting (an HTTP/1 connection has one request at a time).
    fn join(connection: &Arc<ConnectionState>) -> Option<WaiterCount> {
        let http2 = connection.http2.load(Ordering::Relaxed);
        connection
            .budget_waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (!http2 || waiting < H2_BUDGET_WAITERS_MAX).then_some(waiting + 1)
            })
            .ok()?;
        Some(WaiterCount(Arc::clone(connection)))
    }
}

impl Drop for WaiterCount {
    fn drop(&mut self) {
        self.0.budget_waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body under the listener's limits: size, read timeout and the shared budget.
///
/// A body's share of the budget is taken whole, once its bytes pass the unbudgeted first ones:
/// its declared length (a body without one, chunked, takes the body limit and gives back what
/// it did not use when it ends), at most the whole budget. Taken frame by frame instead, bodies
/// that together pass the budget would each hold part of it and wait for the rest, which none
/// gives back before it ends: three 16 MiB uploads in a 32 MiB budget waited so until their
/// read timeout. A share taken whole is held or waited for, never both, so the bodies that
/// hold the budget always finish. A body holding its share must keep arriving
/// ([`BODY_HOLDING_BYTES_PER_S_MIN`]), so one that declares much and stalls gives it back.
struct LimitedBody {
    inner: Incoming,
    limit_bytes: usize,
    /// The length the request declared, read before any of the body (hyper's size hint then
    /// counts down what is still to come).
    declared_bytes: Option<usize>,
    received_bytes: usize,
    /// The share is held and the body not yet whole: the minimum rate applies.
    holding: bool,
    /// When a body holding its share falls behind the minimum rate unless more arrives (made
    /// only once a share is held: most bodies never take one): each byte moves it on by its
    /// worth at the minimum rate, to at most [`BODY_HOLDING_SILENCE_MS_MAX`] from now.
    behind: Option<Pin<Box<tokio::time::Sleep>>>,
    budget: Arc<Semaphore>,
    budget_total: usize,
    /// The body's whole share, once taken (`reservation`).
    held: Option<OwnedSemaphorePermit>,
    /// A frame read but not yet covered by the budget, and the wait for it (counted in the
    /// connection's `budget_waiters` while it lasts).
    waiting: Option<(
        Frame<Bytes>,
        Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>,
        WaiterCount,
    )>,
    connection: Arc<ConnectionState>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout_ms: u64,
    failed: bool,
}

impl LimitedBody {
    fn new(inner: Incoming, limits: &Limits, budget: Arc<Semaphore>, connection: Arc<ConnectionState>) -> LimitedBody {
        let declared_bytes = inner
            .size_hint()
            .exact()
            .map(|declared| usize::try_from(declared).unwrap_or(usize::MAX));
        LimitedBody {
            inner,
            limit_bytes: limits.request_body_bytes_max,
            declared_bytes,
            received_bytes: 0,
            holding: false,
            behind: None,
            budget,
            budget_total: limits.buffered_body_bytes_max,
            held: None,
            waiting: None,
            connection,
            deadline: Box::pin(tokio::time::sleep(Duration::from_millis(limits.body_read_timeout_ms))),
            timeout_ms: limits.body_read_timeout_ms,
            failed: false,
        }
    }

    /// The body's whole share of the budget: the bytes past the unbudgeted ones of its declared
    /// length (of the body limit when it declares none), at most the whole budget.
    fn reservation(&self) -> usize {
        let expected = self.declared_bytes.unwrap_or(self.limit_bytes).min(self.limit_bytes);
        expected
            .max(self.received_bytes)
            .saturating_sub(BODY_BYTES_UNBUDGETED)
            .min(self.budget_total)
    }

    /// At the body's end: gives back the part of its share it did not use (a body without a
    /// declared length took the body limit's).
    fn give_back_unused(&mut self) {
        let used = self
            .received_bytes
            .saturating_sub(BODY_BYTES_UNBUDGETED)
            .min(self.budget_total);
        if let Some(held) = &mut self.held
            && held.num_permits() > used
        {
            drop(held.split(held.num_permits() - used));
        }
    }

    fn fail(&mut self, refusal: Refusal) -> Poll<Option<Result<Frame<Bytes>, Refusal>>> {
        self.failed = true;
        self.waiting = None;
        Poll::Ready(Some(Err(refusal)))
    }

    /// Nothing to give yet: pending, or refused once the body's deadline has passed or, while
    /// it holds its share, it fell behind the minimum rate.
    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Refusal>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            let timeout_ms = self.timeout_ms;
            self.fail(Refusal::BodyTimeout { timeout_ms })
        } else if self.holding
            && self
                .behind
                .as_mut()
                .is_some_and(|behind| behind.as_mut().poll(cx).is_ready())
        {
            // Given back at once, not when the handler drops the body.
            self.held = None;
            self.fail(Refusal::BodyTooSlow {
                bytes_per_s_min: BODY_HOLDING_BYTES_PER_S_MIN,
            })
        } else {
            Poll::Pending
        }
    }

    /// Whether the body's bytes so far need its share of the budget, not yet taken.
    fn needs_share(&self) -> bool {
        self.held.is_none() && self.received_bytes > BODY_BYTES_UNBUDGETED
    }

    /// The share is held from now: the minimum rate's clock starts, with the grace ahead.
    fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self.held = Some(permit);
        self.holding = true;
        self.behind = None;
        self.schedule_behind(0);
    }

    /// Moves `behind` on by what `arrived` more bytes are worth at the minimum rate (from now,
    /// if it already passed), to at most [`BODY_HOLDING_SILENCE_MS_MAX`] from now: a body
    /// holding its share is refused once it falls behind the rate, or once it sends nothing for
    /// that long however much it sent before. The first deadline is the grace from now.
    fn schedule_behind(&mut self, arrived: usize) {
        if !self.holding {
            return;
        }
        let now = tokio::time::Instant::now();
        let most = now + Duration::from_millis(BODY_HOLDING_SILENCE_MS_MAX);
        // In nanoseconds: small frames (a chunked body's 100-byte chunks) each earn their
        // worth, where whole milliseconds would round every one of them down to nothing.
        let nanos = (arrived as u128).saturating_mul(1_000_000_000) / u128::from(BODY_HOLDING_BYTES_PER_S_MIN);
        let worth = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let when = match &self.behind {
            Some(behind) => (behind.deadline().max(now) + worth).min(most),
            None => now + Duration::from_millis(BODY_HOLDING_GRACE_MS),
        };
        match &mut self.behind {
            Some(behind) => behind.as_mut().reset(when),
            None => self.behind = Some(Box::pin(tokio::time::sleep_until(when))),
        }
    }
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = Refusal;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Refusal>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        if let Some((_, wait, _)) = &mut this.waiting {
            return match wait.as_mut().poll(cx) {
                Poll::Ready(Some(permit)) => {
                    this.hold(permit);
                    let (frame, _, _) = this.waiting.take().expect("a frame waits while its permit is awaited");
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => this.fail(Refusal::BodyIncomplete {
                    reason: "the server is shutting down".into(),
                }),
                Poll::Pending => this.pending(cx),
            };
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Some(len) = frame.data_ref().map(Bytes::len) else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                this.received_bytes = this.received_bytes.saturating_add(len);
                if this.received_bytes > this.limit_bytes {
                    let limit_bytes = this.limit_bytes;
                    return this.fail(Refusal::BodyTooLarge {
                        declared_bytes: None,
                        limit_bytes,
                    });
                }
                if !this.needs_share() {
                    this.schedule_behind(len);
                    return Poll::Ready(Some(Ok(frame)));
                }
                let permits = u32::try_from(this.reservation()).unwrap_or(u32::MAX);
                match Arc::clone(&this.budget).try_acquire_many_owned(permits) {
                    Ok(permit) => {
                        this.hold(permit);
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Err(_) => {
                        // Stop reading this body until others give back their share: the
                        // client's further bytes wait in kernel buffers, then in the client
                        // (on HTTP/2, in the connection's window: hence the bound on waiters).
                        let Some(count) = WaiterCount::join(&this.connection) else {
                            return this.fail(Refusal::BodyWaitersBusy {
                                waiting: H2_BUDGET_WAITERS_MAX,
                            });
                        };
                        let budget = Arc::clone(&this.budget);
                        let wait = Box::pin(async move { budget.acquire_many_owned(permits).await.ok() });
                        this.waiting = Some((frame, wait, count));
                        Pin::new(this).poll_frame(cx)
                    }
                }
            }
            Poll::Ready(Some(Err(error))) => this.fail(Refusal::BodyIncomplete {
                reason: error.to_string(),
            }),
            Poll::Ready(None) => {
                this.give_back_unused();
                // Whole: the rate no longer applies (the handler may hold the body a while).
                this.holding = false;
                Poll::Ready(None)
            }
            Poll::Pending => this.pending(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && (self.failed || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DEADLINE: Duration = Duration::from_secs(10);

    /// Sends a GET on `stream` and reads the whole answer (`content-length` framed); the status.
    async fn get(stream: &mut TcpStream) -> Option<u16> {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        loop {
            let read = tokio::time::timeout(DEADLINE, stream.read(&mut buffer))
                .await
                .ok()?
                .ok()?;
            if read == 0 {
                return None;
            }
            answer.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&answer);
            if let Some(end) = text.find("\r\n\r\n")
                && text[end + 4..].len() >= 2
            {
                return text.get(9..12)?.parse().ok();
            }
        }
    }

    /// Whether the server closed `stream` (a read gives 0 or an error within the deadline).
    async fn closed(stream: &mut TcpStream) -> bool {
        let mut buffer = [0u8; 16];
        matches!(
            tokio::time::timeout(DEADLINE, stream.read(&mut buffer)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_listener_closes_its_idlest_connection_for_a_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut limits = Limits::admin();
        limits.connections_max = 2;
        let app = Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Options::new("test", limits), app, async {
            let _ = stopped.await;
        }));
        // Two keep-alive connections, each answered once, then idle: the listener is full.
        let mut first = TcpStream::connect(address).await.expect("connect");
        assert_eq!(get(&mut first).await, Some(200));
        let mut second = TcpStream::connect(address).await.expect("connect");
        assert_eq!(get(&mut second).await, Some(200));
        // A third is served: the one idle the longest (the first) makes room. Before, it was
        // refused until an idle one timed out (a minute), however long they only sat there.
        let mut third = TcpStream::connect(address).await.expect("connect");
        assert_eq!(get(&mut third).await, Some(200));
        assert!(closed(&mut first).await, "the idlest connection is closed");
        assert_eq!(get(&mut second).await, Some(200), "the other keeps its connection");
        let _ = stop.send(());
        let _ = tokio::time::timeout(DEADLINE, server).await;
    }

    /// A connection still in its TLS handshake is idle to a full listener; told to close for
    /// room, it closes at once, not when its handshake times out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_in_its_tls_handshake_closes_at_once_when_evicted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = crate::devca::generate(dir.path(), &["127.0.0.1".to_string()]).expect("a CA");
        let tls = Tls::load(TlsFiles {
            cert: ca.cert,
            key: ca.key,
            client_ca: None,
        })
        .expect("TLS files load");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut limits = Limits::admin();
        limits.connections_max = 1;
        // Far longer than the test waits: only the eviction can close the silent connection.
        limits.header_read_timeout_ms = 120_000;
        let app = Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = Options::new("test", limits).tls(Some(Arc::new(tls)));
        let server = tokio::spawn(serve(listener, options, app, async {
            let _ = stopped.await;
        }));
        // A connection that never starts its handshake holds the only place; the listener
        // admits connections in the order they arrive, so it is admitted before the second.
        let mut silent = TcpStream::connect(address).await.expect("connect");
        let second = TcpStream::connect(address).await.expect("connect");
        assert!(
            closed(&mut silent).await,
            "the silent connection was closed for the new one"
        );
        drop(second);
        let _ = stop.send(());
        let _ = tokio::time::timeout(DEADLINE, server).await;
    }

    /// Connections told to close for room count until they have closed: past
    /// [`EVICTIONS_IN_FLIGHT_MAX`] of them a full listener refuses, so the open count stays
    /// within the limit plus that many even when the evicted ones are slow to go (one still in
    /// its TLS handshake, say).
    #[test]
    fn evictions_not_yet_closed_are_bounded() {
        let mut limits = Limits::admin();
        limits.connections_max = 2;
        limits.connections_per_client_max = 10_000;
        let shared = Arc::new(Shared {
            budget: Arc::new(Semaphore::new(limits.buffered_body_bytes_max)),
            options: Options::new("test", limits),
            connections: Mutex::new(Connections::default()),
            last_warning_ms: AtomicU64::new(0),
            started: Instant::now(),
        });
        let client: IpAddr = "192.0.2.7".parse().expect("ip");
        // Every admitted connection stays open (its slot held) and idle.
        let mut slots = Vec::new();
        for admitted in 0.. {
            match shared.admit(client) {
                Ok(slot) => slots.push(slot),
                Err(refusal) => {
                    assert!(matches!(refusal, Refusal::TooManyConnections { per_client: false, .. }));
                    assert_eq!(
                        admitted,
                        2 + EVICTIONS_IN_FLIGHT_MAX,
                        "the limit plus the evictions in flight"
                    );
                    break;
                }
            }
            assert!(admitted <= 2 + EVICTIONS_IN_FLIGHT_MAX, "admitted past the bound");
        }
        let evicted = slots
            .iter()
            .filter(|slot| slot.state.evicted.load(Ordering::Relaxed))
            .count();
        assert_eq!(evicted, EVICTIONS_IN_FLIGHT_MAX);
        // One evicted connection closes: room for one more.
        let position = slots
            .iter()
            .position(|slot| slot.state.evicted.load(Ordering::Relaxed))
            .expect("an evicted one");
        drop(slots.remove(position));
        let again = shared.admit(client);
        assert!(again.is_ok(), "an eviction that ended frees its place");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let one: IpAddr = "2001:db8:1:2::5".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        assert_eq!(client_key(one), client_key(other));
        assert_ne!(client_key(one), client_key("2001:db8:1:3::5".parse().expect("ip")));
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        assert_eq!(client_key(v4), v4);
        assert_eq!(client_key("::ffff:192.0.2.7".parse().expect("ip")), v4);
    }

    /// Uploads that together pass the body budget each take their whole share or wait for it,
    /// so they all finish. Taken frame by frame, each held part of the budget and waited for
    /// the rest, which none gave back before its end: all of them waited for their read timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_larger_together_than_the_budget_all_finish() {
        const UPLOADS: usize = 8;
        const UPLOAD_BYTES: usize = 600 * 1024;
        const CHUNK_BYTES: usize = 8 * 1024;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut limits = Limits::with_body_limit(1024 * 1024);
        limits.buffered_body_bytes_max = BUFFERED_BODY_BYTES_MIN;
        // Far longer than the test waits: only finishing, not timing out, answers in time.
        limits.body_read_timeout_ms = 600_000;
        let app = Router::new().route(
            "/upload",
            axum::routing::post(|body: Body| async move {
                match axum::body::to_bytes(body, usize::MAX).await {
                    Ok(bytes) => bytes.len().to_string(),
                    Err(error) => format!("refused: {error}"),
                }
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Options::new("test", limits), app, async {
            let _ = stopped.await;
        }));
        let mut streams = Vec::new();
        for _ in 0..UPLOADS {
            let mut stream = TcpStream::connect(address).await.expect("connect");
            let head = format!(
                "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {UPLOAD_BYTES}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.expect("head");
            streams.push(stream);
        }
        // Every upload's bytes interleaved with the others', as many clients at once send them.
        let uploads = streams.into_iter().map(|mut stream| {
            tokio::spawn(async move {
                let chunk = vec![b'x'; CHUNK_BYTES];
                for _ in 0..UPLOAD_BYTES / CHUNK_BYTES {
                    stream.write_all(&chunk).await.ok()?;
                    tokio::task::yield_now().await;
                }
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await.ok()?;
                Some(String::from_utf8_lossy(&answer).into_owned())
            })
        });
        let answers = tokio::time::timeout(Duration::from_secs(60), futures_join(uploads.collect()))
            .await
            .expect("every upload is answered before its read timeout");
        for answer in answers {
            let answer = answer.expect("task").expect("an answer");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            assert!(answer.ends_with(&UPLOAD_BYTES.to_string()), "{answer}");
        }
        let _ = stop.send(());
        let _ = tokio::time::timeout(DEADLINE, server).await;
    }

    /// An upload app: answers the length of the body it read, or the refusal.
    fn upload_app() -> Router {
        Router::new().route(
            "/upload",
            axum::routing::post(|body: Body| async move {
                match axum::body::to_bytes(body, usize::MAX).await {
                    Ok(bytes) => bytes.len().to_string(),
                    Err(error) => format!("refused: {error}"),
                }
            }),
        )
    }

    /// A listener serving [`upload_app`] with this body limit and budget; its address and
    /// stopper. Its body read timeout is far longer than the tests wait: only the budget's own
    /// rules answer in time.
    async fn upload_listener(
        body_limit_bytes: usize,
        budget_bytes: usize,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let mut limits = Limits::with_body_limit(body_limit_bytes);
        limits.buffered_body_bytes_max = budget_bytes;
        limits.body_read_timeout_ms = 600_000;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, Options::new("test", limits), upload_app(), async {
            let _ = stopped.await;
        }));
        (address, stop)
    }

    /// A listener with the smallest budget, serving [`upload_app`]; its address and stopper.
    async fn small_budget_listener() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        upload_listener(1024 * 1024, BUFFERED_BODY_BYTES_MIN).await
    }

    /// Starts an upload of `declared` bytes, sends `sent` of them and stalls; the connection.
    async fn stalled_upload(address: std::net::SocketAddr, declared: usize, sent: usize) -> TcpStream {
        let mut stalled = TcpStream::connect(address).await.expect("connect");
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n");
        stalled.write_all(head.as_bytes()).await.expect("head");
        stalled
            .write_all(&vec![b'x'; sent])
            .await
            .expect("the bytes before the stall");
        stalled
    }

    /// An upload of 600,000 bytes, sent whole, is served within 60 s (once a stalled one
    /// gave back the budget it waits for).
    async fn assert_waiting_upload_served(address: std::net::SocketAddr) {
        let mut victim = TcpStream::connect(address).await.expect("connect");
        let head = "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 600000\r\n\r\n";
        victim.write_all(head.as_bytes()).await.expect("head");
        victim.write_all(&vec![b'y'; 600_000]).await.expect("body");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), victim.read_to_end(&mut answer))
            .await
            .expect("the waiting upload is served once the stalled one gives its share back")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("600000"),
            "{answer}"
        );
    }

    /// A body that declares much, sends a little past the unbudgeted bytes and stalls holds
    /// its share only until it falls behind the minimum rate: it is refused (408) and the
    /// upload waiting behind it is served, long before the body read timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_body_gives_back_its_share_once_behind_the_minimum_rate() {
        let (address, stop) = small_budget_listener().await;
        let mut stalled = stalled_upload(address, 900_000, 100 * 1024).await;
        assert_waiting_upload_served(address).await;
        let mut refused = vec![0u8; 4096];
        let read = tokio::time::timeout(DEADLINE, stalled.read(&mut refused))
            .await
            .expect("the stalled upload is answered")
            .expect("read");
        let refused = String::from_utf8_lossy(&refused[..read]);
        assert!(refused.contains("refused") && refused.contains("bytes/s"), "{refused}");
        let _ = stop.send(());
    }

    /// A body that sends most of itself at once and then stalls buys no more than
    /// `BODY_HOLDING_SILENCE_MS_MAX` of silence with its bytes, not its bytes' worth at the
    /// minimum rate (15 MB: about two minutes, past this test's wait), so the upload waiting
    /// behind it is served.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_sent_fast_then_stalled_gives_back_its_share_after_the_grace() {
        let (address, stop) = upload_listener(32 * 1024 * 1024, 16 * 1024 * 1024).await;
        let _stalled = stalled_upload(address, 30_000_000, 15_000_000).await;
        assert_waiting_upload_served(address).await;
        let _ = stop.send(());
    }

    /// A chunked upload of small chunks, well above the minimum rate and longer than the grace,
    /// is served: each chunk is a frame of its own and earns its worth (whole milliseconds
    /// would round a 100-byte chunk's 0.76 ms down to nothing, and refuse the body once the
    /// grace ran out).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunked_upload_of_small_chunks_keeps_its_share_past_the_grace() {
        let (address, stop) = upload_listener(32 * 1024 * 1024, BUFFERED_BODY_BYTES_MIN).await;
        let mut upload = TcpStream::connect(address).await.expect("connect");
        let head = "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
        upload.write_all(head.as_bytes()).await.expect("head");
        let chunk = format!("64\r\n{}\r\n", "z".repeat(100));
        // 20 KB every 50 ms (400 KB/s, three times the minimum) for 6.5 s: past the grace.
        let mut sent = 0usize;
        let until = tokio::time::Instant::now() + Duration::from_millis(BODY_HOLDING_GRACE_MS + 1_500);
        while tokio::time::Instant::now() < until {
            let burst = chunk.repeat(200);
            if upload.write_all(burst.as_bytes()).await.is_err() {
                break;
            }
            sent += 200 * 100;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        upload.write_all(b"0\r\n\r\n").await.expect("last chunk");
        let mut answer = Vec::new();
        tokio::time::timeout(DEADLINE, upload.read_to_end(&mut answer))
            .await
            .expect("answered")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with(&sent.to_string()),
            "{answer}"
        );
        let _ = stop.send(());
    }

    /// HTTP/2 streams of one connection, together past the budget: a stream waiting for its
    /// share is not read, so what its client sent stays in the connection's window. Past
    /// `H2_BUDGET_WAITERS_MAX` waiting, the streams holding their share could no longer receive
    /// the rest of their bodies, and none was answered; now each is answered, served or 503.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http2_streams_larger_together_than_the_budget_are_all_answered() {
        const STREAMS: usize = 8;
        const UPLOAD_BYTES: usize = 600 * 1024;
        let (address, stop) = small_budget_listener().await;
        let stream = TcpStream::connect(address).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let mut tasks = Vec::new();
        for _ in 0..STREAMS {
            let mut sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                let request = hyper::Request::post(format!("http://{address}/upload"))
                    .body(http_body_util::Full::new(Bytes::from(vec![b'x'; UPLOAD_BYTES])))
                    .expect("request");
                let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>(String::from_utf8_lossy(&body).into_owned())
            }));
        }
        let answers = tokio::time::timeout(Duration::from_secs(60), futures_join(tasks))
            .await
            .expect("every stream is answered");
        let mut served = 0;
        for answer in answers {
            let answer = answer.expect("task").expect("an answer");
            if answer == UPLOAD_BYTES.to_string() {
                served += 1;
            } else {
                assert!(answer.contains("already wait for the server's room"), "{answer}");
            }
        }
        assert!(served > H2_BUDGET_WAITERS_MAX as usize, "{served} served");
        let _ = stop.send(());
    }

    async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<Result<T, tokio::task::JoinError>> {
        let mut out = Vec::new();
        for handle in handles {
            out.push(handle.await);
        }
        out
    }
}
