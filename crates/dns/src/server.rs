//! The sockets around [`answer`](crate::answer::answer): UDP workers (with response rate
//! limiting, decided by [`rrl`](crate::rrl)), the TCP acceptor with its limits (in all and per
//! client address), zone reloads (SIGHUP and file polling), and the persisted health view.
//!
//! Invariants: nothing here decides an answer; every buffer, connection count and wait is bounded
//! by a named limit; a bad config file never replaces the zones being served; TCP answers are
//! never rate limited (the handshake proves the client's address).

use std::collections::HashMap;
use std::future::Future;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, MultiHeaders, SockFlag, SockType, SockaddrStorage, getsockopt, recvmmsg,
    sendmmsg, setsockopt, sockopt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};

use crate::answer::{Response, Transport, handle_packet};
use crate::cache::AnswerCache;
use crate::config::Limits;
use crate::metrics::{CounterCache, Metrics};
use crate::rrl::{RateLimiter, Verdict, classify, truncated};
use crate::view::HealthView;
use crate::zone::Zones;
use common::rng::Rng;

/// Largest query accepted (UDP datagram or TCP message); real queries are far smaller.
pub const REQUEST_BYTES_MAX: usize = 4_096;
/// Open DNS-over-TCP connections at most; more are closed at once.
pub const TCP_CONNECTIONS_MAX: usize = 256;
/// Open DNS-over-TCP connections one client address may hold unless configured
/// (`tcp_connections_per_client_max`), so one client cannot take every slot (RFC 7766 §6.2.2).
pub const TCP_CONNECTIONS_PER_CLIENT_MAX_DEFAULT: usize = 16;
/// A TCP connection with no complete query for this long is closed (RFC 7766 suggests seconds).
pub const TCP_IDLE_TIMEOUT_MS: u64 = 10_000;
/// A TCP client that does not take our answer within this time is disconnected.
pub const TCP_WRITE_TIMEOUT_MS: u64 = 10_000;
/// At most one line per this interval for floods of bad packets (the rest are counted).
pub const DROP_LOG_INTERVAL_MS: u64 = 1_000;
/// UDP worker threads at most (one per core is plenty).
pub const UDP_WORKERS_MAX: usize = 16;
/// Datagrams a UDP worker takes from the kernel in one `recvmmsg` (and answers with one
/// `sendmmsg`) when that many are queued; one system call each way per batch instead of per query.
pub const UDP_BATCH_DATAGRAMS_MAX: usize = 32;
/// Capacity each reused UDP answer buffer starts with (larger answers grow it once).
const ANSWER_BUFFER_BYTES: usize = 512;
/// How often a blocked UDP worker wakes to check for shutdown.
pub const UDP_STOP_CHECK_MS: u64 = 200;
/// Binds the UDP socket for [`Sockets::udp`] so that each UDP worker can get a socket of its
/// own on the same address (`SO_REUSEPORT`, as Knot does): the kernel then spreads queries over
/// the workers by their source address and port, and no two workers contend for one socket's
/// receive queue. `port` 0 picks a free port.
///
/// A port that any socket holds already (another server's, or a reuse-port group's) is an
/// error, as a plain bind would be: the plain bind that finds the port is made first, so a second
/// server never silently takes a share of another's queries.
pub fn bind_udp(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let probe = std::net::UdpSocket::bind(address)?;
    let bound = probe.local_addr()?;
    drop(probe);
    reuse_port_udp(bound)
}

/// A UDP socket with `SO_REUSEPORT` bound to `address`.
fn reuse_port_udp(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let family = if address.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let socket = nix::sys::socket::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&socket, sockopt::ReusePort, &true)?;
    nix::sys::socket::bind(socket.as_raw_fd(), &SockaddrStorage::from(address))?;
    Ok(std::net::UdpSocket::from(socket))
}

/// The UDP socket of each of `workers` workers: `udp` itself for the first, and when `udp` was
/// bound with `SO_REUSEPORT` ([`bind_udp`]) a new socket on its address for each other one;
/// otherwise they share `udp`.
fn worker_sockets(udp: std::net::UdpSocket, workers: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let reuse_port = getsockopt(&udp, sockopt::ReusePort).unwrap_or(false);
    let address = udp.local_addr()?;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 1..workers {
        sockets.push(if reuse_port {
            reuse_port_udp(address)?
        } else {
            udp.try_clone()?
        });
    }
    sockets.insert(0, udp);
    for socket in &sockets {
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(Duration::from_millis(UDP_STOP_CHECK_MS)))?;
    }
    Ok(sockets)
}

/// File in `--state-dir` that keeps the last applied health view.
pub const VIEW_FILE_NAME: &str = "dns-view.json";

/// Shared by the DNS listeners and the admin API.
pub struct State {
    zones: RwLock<Arc<Zones>>,
    view: RwLock<Arc<HealthView>>,
    /// Serialises view changes and their persistence.
    pub(crate) view_writer: Mutex<()>,
    pub metrics: Metrics,
    pub(crate) token: Option<String>,
    state_dir: Option<PathBuf>,
    drop_log: RateLimitedLog,
    /// Bumped after every change of zones or view, so workers refresh their snapshot only then.
    epoch: AtomicU64,
}

/// A worker's copy of the zones and view, refreshed when the state's epoch moves.
pub struct Snapshot {
    epoch: u64,
    pub zones: Arc<Zones>,
    pub view: Arc<HealthView>,
}

impl State {
    pub fn new(zones: Zones, view: HealthView, token: Option<String>, state_dir: Option<PathBuf>) -> State {
        let metrics = Metrics::new();
        metrics.generation.set(view.generation.0 as i64);
        State {
            zones: RwLock::new(Arc::new(zones)),
            view: RwLock::new(Arc::new(view)),
            view_writer: Mutex::new(()),
            metrics,
            token: token.filter(|t| !t.is_empty()),
            state_dir,
            drop_log: RateLimitedLog::default(),
            epoch: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let epoch = self.epoch.load(Ordering::Acquire);
        Snapshot {
            epoch,
            zones: self.zones(),
            view: self.view(),
        }
    }

    /// Refreshes `snapshot` if the zones or view changed since it was taken; says whether they did.
    pub fn refresh(&self, snapshot: &mut Snapshot) -> bool {
        if self.epoch.load(Ordering::Acquire) != snapshot.epoch {
            *snapshot = self.snapshot();
            return true;
        }
        false
    }

    /// The answer to `packet` from `peer` with `snapshot`'s zones and view. A packet that is
    /// not a parseable DNS message has none: it is counted as `malformed` and logged (rate
    /// limited), to be dropped (UDP) or its connection closed (TCP).
    fn answer(
        &self,
        snapshot: &Snapshot,
        packet: &[u8],
        transport: Transport,
        peer: SocketAddr,
        entropy: u64,
    ) -> Option<Response> {
        let response = handle_packet(&snapshot.zones, &snapshot.view, packet, transport, peer.ip(), entropy);
        if response.is_none() {
            self.metrics.count_drop("malformed");
            let dropped = match transport {
                Transport::Udp => "dropped a UDP packet that is not a parseable DNS query",
                Transport::Tcp => "closed a TCP connection that sent an unparseable DNS message",
            };
            self.drop_log.warn(dropped, peer);
        }
        response
    }

    pub fn zones(&self) -> Arc<Zones> {
        Arc::clone(&self.zones.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn view(&self) -> Arc<HealthView> {
        Arc::clone(&self.view.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn replace_zones(&self, zones: Zones) {
        *self.zones.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zones);
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Publishes a new view (the caller holds `view_writer`) and persists it; returns whether it
    /// was written to disk (`None`: no state dir).
    pub(crate) fn publish_view(&self, view: HealthView) -> Option<bool> {
        self.metrics.generation.set(view.generation.0 as i64);
        let persisted = self.state_dir.as_ref().map(|dir| match save_view(dir, &view) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, dir = %dir.display(), "could not persist the health view; it is applied but a restart would lose it");
                false
            }
        });
        *self.view.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(view);
        self.epoch.fetch_add(1, Ordering::Release);
        persisted
    }
}

/// Reads the view kept by a previous run; a missing file is an empty view.
pub fn load_view(dir: &Path) -> Result<HealthView, String> {
    let path = dir.join(VIEW_FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is not a saved health view ({e}); delete it to start with every target healthy",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HealthView::default()),
        Err(e) => Err(format!("read {}: {e}", path.display())),
    }
}

fn save_view(dir: &Path, view: &HealthView) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!("{VIEW_FILE_NAME}.tmp"));
    let bytes = serde_json::to_vec_pretty(view).map_err(std::io::Error::other)?;
    {
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, dir.join(VIEW_FILE_NAME))
}

/// One warning line per interval, with how many were suppressed since the last one.
#[derive(Default)]
struct RateLimitedLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    fn warn(&self, what: &str, peer: SocketAddr) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_millis(DROP_LOG_INTERVAL_MS)) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(%peer, suppressed, "{what}");
    }
}

/// The sockets the server uses, bound by the caller (tests bind port 0).
pub struct Sockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
    pub admin: TcpListener,
}

/// How the server runs besides its zones.
pub struct Options {
    /// Bearer token required on admin PUTs; without one the admin API must be on loopback.
    pub token: Option<String>,
    /// Where the last health view is kept across restarts.
    pub state_dir: Option<PathBuf>,
    /// The config file to reload zones from (SIGHUP and polling).
    pub config_path: Option<PathBuf>,
    /// Poll the config file this often; 0: only on SIGHUP.
    pub reload_interval_ms: u64,
    /// UDP worker threads; 0 means one per available core.
    pub udp_workers: usize,
    /// Seed of the per-query randomness (weighted and multivalue answers) and of the rate
    /// limiter's table hash.
    pub seed: u64,
    /// Response rate limiting and per-client TCP connections.
    pub limits: Limits,
    /// Serve the admin API over HTTPS.
    pub admin_tls: Option<Arc<common::http::Tls>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExposureError {
    #[error(
        "refusing to serve the admin API on {0} without a token: anyone who can reach it could change which region gets traffic. Pass --token-file FILE (or set SWITCHYARD_CONTROL_TOKEN), or listen on a loopback address such as 127.0.0.1"
    )]
    OpenToNetwork(SocketAddr),
}

/// Security by default: an admin API without a token listens on loopback only.
pub fn check_exposure(admin: SocketAddr, token: Option<&str>) -> Result<(), ExposureError> {
    if common::secret::open_to_network(admin, token.is_some_and(|t| !t.is_empty())) {
        Err(ExposureError::OpenToNetwork(admin))
    } else {
        Ok(())
    }
}

/// Serves DNS on the UDP and TCP sockets and the admin API until `shutdown` resolves.
pub async fn run(
    sockets: Sockets,
    zones: Zones,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let admin_address = sockets.admin.local_addr()?;
    check_exposure(admin_address, options.token.as_deref()).map_err(std::io::Error::other)?;
    let view = match &options.state_dir {
        Some(dir) => load_view(dir).unwrap_or_else(|e| {
            tracing::error!("{e}; starting with every target healthy");
            HealthView::default()
        }),
        None => HealthView::default(),
    };
    if view.generation.0 > 0 {
        tracing::info!(generation = view.generation.0, "restored the last health view");
    }
    let state = Arc::new(State::new(
        zones,
        view,
        options.token.clone(),
        options.state_dir.clone(),
    ));
    run_with_state(sockets, state, options, shutdown).await
}

/// [`run`] with a state the caller made (and can inspect).
pub async fn run_with_state(
    sockets: Sockets,
    state: Arc<State>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = match options.udp_workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        n => n,
    }
    .clamp(1, UDP_WORKERS_MAX);
    let mut seeds = Rng::new(options.seed);
    let limiter = Arc::new(Mutex::new(RateLimiter::new(
        options.limits.rate_limit.clone(),
        seeds.next_u64(),
    )));
    let rate_limit_enabled = options.limits.rate_limit.enabled;
    let origin = Instant::now();
    // UDP is served by blocking threads, no readiness polling: each waits in recvmmsg for a
    // datagram, takes whatever else is queued with it and answers the batch with one sendmmsg.
    let udp_sockets = worker_sockets(sockets.udp.into_std()?, workers)?;
    let udp_stop = Arc::new(AtomicBool::new(false));
    let mut udp_threads = Vec::new();
    for (index, socket) in udp_sockets.into_iter().enumerate() {
        let state = Arc::clone(&state);
        let rng = Rng::new(seeds.next_u64());
        let stop = Arc::clone(&udp_stop);
        let limiter = Arc::clone(&limiter);
        let thread = std::thread::Builder::new()
            .name(format!("dns-udp-{index}"))
            .spawn(move || {
                let limiter = UdpLimiter {
                    limiter: &limiter,
                    enabled: rate_limit_enabled,
                    origin,
                };
                udp_worker(socket, &state, rng, &stop, &limiter)
            })?;
        udp_threads.push(thread);
    }
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(tcp_acceptor(
        sockets.tcp,
        Arc::clone(&state),
        Rng::new(seeds.next_u64()),
        options.limits.tcp_connections_per_client_max,
        stop_rx.clone(),
    ));
    if let Some(path) = options.config_path.clone() {
        tasks.spawn(reloader(
            path,
            options.reload_interval_ms,
            Arc::clone(&state),
            stop_rx.clone(),
        ));
    }
    let admin = crate::admin::router(Arc::clone(&state));
    let admin_tls = options.admin_tls.clone();
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(async move {
        let options = common::http::Options::new(
            "dns-admin",
            common::http::Limits::with_body_limit(crate::admin::ADMIN_BODY_BYTES_MAX),
        )
        .tls(admin_tls);
        common::http::serve(sockets.admin, options, admin, async move {
            let _ = admin_stop.wait_for(|stop| *stop).await;
        })
        .await
    });
    shutdown.await;
    let _ = stop_tx.send(true);
    udp_stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let joined = tokio::task::spawn_blocking(move || {
        udp_threads
            .into_iter()
            .map(std::thread::JoinHandle::join)
            .all(|result| result.is_ok())
    })
    .await;
    if !matches!(joined, Ok(true)) {
        return Err(std::io::Error::other("a UDP worker thread panicked"));
    }
    match admin_task.await {
        Ok(result) => result,
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// The rate limiter shared by the UDP workers, and the origin of its clock.
struct UdpLimiter<'a> {
    limiter: &'a Mutex<RateLimiter>,
    /// Read without the lock: switched off, no packet pays for it.
    enabled: bool,
    origin: Instant,
}

impl UdpLimiter<'_> {
    /// What to send for `response` to `peer`: the response, its truncated form, or nothing.
    fn judge(&self, state: &State, response: &Response, peer: SocketAddr) -> Verdict {
        if !self.enabled {
            return Verdict::Send;
        }
        let answers = response.messages.first().map_or(0, |m| m.answers().len());
        self.judge_outline(
            state,
            response.rcode,
            answers,
            &response.name_label,
            response.qtype,
            peer,
        )
    }

    /// [`judge`](Self::judge) from what the limiter reads of a response.
    fn judge_outline(
        &self,
        state: &State,
        rcode: hickory_proto::op::ResponseCode,
        answers: usize,
        name_label: &str,
        qtype: Option<hickory_proto::rr::RecordType>,
        peer: SocketAddr,
    ) -> Verdict {
        if !self.enabled {
            return Verdict::Send;
        }
        let now_ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (verdict, evicted) = {
            let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
            let class = classify(&limiter, rcode, answers, name_label, qtype);
            let before = limiter.counts().evicted;
            let verdict = limiter.check(peer.ip(), class, now_ms);
            (verdict, limiter.counts().evicted - before)
        };
        if evicted > 0 {
            state.metrics.rate_limit_evictions.inc_by(evicted);
        }
        match verdict {
            Verdict::Send => {}
            Verdict::Slip => {
                state.metrics.count_rate_limited("slipped");
            }
            Verdict::Drop => {
                state.metrics.count_rate_limited("dropped");
                state.drop_log.warn(
                    "rate limited UDP responses to a client block (dropped, every `slip`-th sent truncated)",
                    peer,
                );
            }
        }
        verdict
    }
}

/// What a UDP worker keeps between batches: the buffers of one batch of datagrams in and answers
/// out, and the kernel's message headers for them. Sized once; serving allocates nothing more
/// (but for answers not yet in the cache).
struct UdpBatch {
    /// `UDP_BATCH_DATAGRAMS_MAX` receive buffers of `REQUEST_BYTES_MAX` bytes, back to back.
    received: Vec<u8>,
    /// Length and sender of each datagram of the current batch.
    datagrams: Vec<(usize, Option<SockaddrStorage>)>,
    /// One answer buffer per datagram, reused (cleared, capacity kept).
    answers: Vec<Vec<u8>>,
    /// Where each answer of `answers[..pending]` goes.
    answer_peers: [Option<SockaddrStorage>; UDP_BATCH_DATAGRAMS_MAX],
    pending: usize,
    receive_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
}

impl UdpBatch {
    fn new() -> UdpBatch {
        UdpBatch {
            received: vec![0; UDP_BATCH_DATAGRAMS_MAX * REQUEST_BYTES_MAX],
            datagrams: Vec::with_capacity(UDP_BATCH_DATAGRAMS_MAX),
            answers: (0..UDP_BATCH_DATAGRAMS_MAX)
                .map(|_| Vec::with_capacity(ANSWER_BUFFER_BYTES))
                .collect(),
            answer_peers: [None; UDP_BATCH_DATAGRAMS_MAX],
            pending: 0,
            receive_headers: MultiHeaders::preallocate(UDP_BATCH_DATAGRAMS_MAX, None),
            send_headers: MultiHeaders::preallocate(UDP_BATCH_DATAGRAMS_MAX, None),
        }
    }

    /// Waits for at least one datagram (up to the socket's read timeout), then takes every one
    /// already queued, up to `UDP_BATCH_DATAGRAMS_MAX`, in one `recvmmsg`.
    fn receive(&mut self, socket: &std::net::UdpSocket) -> Result<(), Errno> {
        self.datagrams.clear();
        let mut buffers = self.received.chunks_exact_mut(REQUEST_BYTES_MAX);
        let mut slices: [[IoSliceMut<'_>; 1]; UDP_BATCH_DATAGRAMS_MAX] =
            std::array::from_fn(|_| [IoSliceMut::new(buffers.next().unwrap_or_default())]);
        let messages = recvmmsg(
            socket.as_raw_fd(),
            &mut self.receive_headers,
            &mut slices,
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        // A datagram longer than REQUEST_BYTES_MAX arrives cut to that length (as recv_from
        // does); no real query is that long, and the cut one fails to parse or is answered.
        self.datagrams
            .extend(messages.map(|message| (message.bytes, message.address)));
        Ok(())
    }

    /// Sends `answers[..pending]` with as few `sendmmsg` calls as the kernel allows. A message
    /// the kernel refuses (an unreachable peer, say) is skipped, as `send_to` would have been.
    fn send(&mut self, socket: &std::net::UdpSocket) {
        let pending = std::mem::take(&mut self.pending);
        let slices: [[IoSlice<'_>; 1]; UDP_BATCH_DATAGRAMS_MAX] =
            std::array::from_fn(|index| [IoSlice::new(self.answers.get(index).map_or(&[][..], Vec::as_slice))]);
        let mut start = 0;
        // Each round sends at least one message or skips one, so this ends.
        while start < pending {
            let sent = sendmmsg(
                socket.as_raw_fd(),
                &mut self.send_headers,
                &slices[start..pending],
                &self.answer_peers[start..pending],
                [] as [ControlMessage<'_>; 0],
                MsgFlags::empty(),
            );
            match sent {
                Ok(results) => start += results.count().max(1),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "udp send failed");
                    start += 1;
                }
            }
        }
    }
}

/// The standard library's address of a received datagram's sender.
fn socket_address(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

fn udp_worker(socket: std::net::UdpSocket, state: &State, mut rng: Rng, stop: &AtomicBool, limiter: &UdpLimiter<'_>) {
    let mut batch = UdpBatch::new();
    let mut snapshot = state.snapshot();
    let mut counters = CounterCache::default();
    let mut cache = AnswerCache::default();
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = batch.receive(&socket) {
            // Timeouts let us check `stop`; ICMP errors from earlier sends surface here too.
            if !matches!(e, Errno::EAGAIN | Errno::EINTR) {
                tracing::debug!(error = %e, "udp receive failed");
            }
            continue;
        }
        if state.refresh(&mut snapshot) {
            cache.clear();
        }
        for index in 0..batch.datagrams.len() {
            let Some(&(length, Some(address))) = batch.datagrams.get(index) else {
                continue;
            };
            let Some(peer) = socket_address(&address) else {
                continue;
            };
            let start = index * REQUEST_BYTES_MAX;
            let Some(packet) = batch.received.get(start..start + length.min(REQUEST_BYTES_MAX)) else {
                continue;
            };
            // Answers go to a buffer of the batch (sent together below) or, in rare cases
            // (slipped, several messages), straight to the socket.
            let pending = batch.pending;
            let Some(answer) = batch.answers.get_mut(pending) else {
                continue;
            };
            let queued = serve_datagram(
                &socket,
                packet,
                peer,
                answer,
                state,
                &snapshot,
                &mut rng,
                limiter,
                &mut cache,
                &mut counters,
            );
            if queued {
                batch.answer_peers[pending] = Some(address);
                batch.pending += 1;
            }
        }
        batch.send(&socket);
    }
}

/// Answers one datagram: writes the answer into `answer` and returns true, or sends it (or
/// nothing: rate limited, malformed) itself and returns false.
#[allow(clippy::too_many_arguments)]
fn serve_datagram(
    socket: &std::net::UdpSocket,
    packet: &[u8],
    peer: SocketAddr,
    answer: &mut Vec<u8>,
    state: &State,
    snapshot: &Snapshot,
    rng: &mut Rng,
    limiter: &UdpLimiter<'_>,
    cache: &mut AnswerCache,
    counters: &mut CounterCache,
) -> bool {
    if let Some(cached) = cache.get(packet) {
        match limiter.judge_outline(
            state,
            cached.rcode,
            cached.answers,
            &cached.name_label,
            cached.qtype,
            peer,
        ) {
            Verdict::Send => {
                cached.counter.inc();
                cached.write_answer_to(packet, answer);
                return true;
            }
            Verdict::Drop => return false,
            Verdict::Slip => {
                // Rare (only under rate limiting): the slipped form is built from the full
                // response, judged once already.
                let response = handle_packet(
                    &snapshot.zones,
                    &snapshot.view,
                    packet,
                    Transport::Udp,
                    peer.ip(),
                    rng.next_u64(),
                );
                let slipped = response.as_ref().and_then(|r| r.messages.first()).and_then(truncated);
                if let Some(wire) = slipped
                    && let Err(e) = socket.send_to(&wire, peer)
                {
                    tracing::debug!(error = %e, %peer, "udp send failed");
                }
                return false;
            }
        }
    }
    let Some(response) = state.answer(snapshot, packet, Transport::Udp, peer, rng.next_u64()) else {
        return false;
    };
    match limiter.judge(state, &response, peer) {
        Verdict::Send => {}
        Verdict::Drop => return false,
        Verdict::Slip => {
            let slipped = response.messages.first().and_then(truncated);
            if let Some(wire) = slipped
                && let Err(e) = socket.send_to(&wire, peer)
            {
                tracing::debug!(error = %e, %peer, "udp send failed");
            }
            return false;
        }
    }
    let counter = counters.counter(
        &state.metrics,
        &response.name_label,
        response.qtype,
        response.rcode,
        Transport::Udp,
    );
    counter.inc();
    cache.insert(packet, &response, counter);
    if let [wire] = &response.wire[..] {
        answer.clear();
        answer.extend_from_slice(wire);
        return true;
    }
    for wire in &response.wire {
        if let Err(e) = socket.send_to(wire, peer) {
            tracing::debug!(error = %e, %peer, "udp send failed");
        }
    }
    false
}

/// Open TCP connections per client address; an address leaves the map with its last one.
#[derive(Default)]
struct PerClient {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One client connection counted in [`PerClient`]; uncounted when dropped.
struct ClientSlot {
    clients: Arc<PerClient>,
    address: IpAddr,
}

impl PerClient {
    fn try_take(self: &Arc<Self>, address: IpAddr, max: usize) -> Option<ClientSlot> {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(address).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            clients: Arc::clone(self),
            address,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.address);
            }
        }
    }
}

async fn tcp_acceptor(
    listener: TcpListener,
    state: Arc<State>,
    mut rng: Rng,
    per_client_max: usize,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(TCP_CONNECTIONS_MAX));
    let clients = Arc::new(PerClient::default());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            state.metrics.count_drop("tcp_connection_limit");
            state.drop_log.warn(
                "closed a TCP connection: TCP_CONNECTIONS_MAX connections are open",
                peer,
            );
            continue;
        };
        let Some(slot) = clients.try_take(peer.ip(), per_client_max) else {
            state.metrics.count_drop("tcp_client_connection_limit");
            state.drop_log.warn(
                "closed a TCP connection: this client address already holds tcp_connections_per_client_max connections",
                peer,
            );
            continue;
        };
        let state = Arc::clone(&state);
        let seed = rng.next_u64();
        let stop = stop.clone();
        tokio::spawn(async move {
            state.metrics.tcp_connections.inc();
            tcp_connection(stream, peer, &state, Rng::new(seed), stop).await;
            state.metrics.tcp_connections.dec();
            drop(slot);
            drop(permit);
        });
    }
}

async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    state: &State,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let idle = Duration::from_millis(TCP_IDLE_TIMEOUT_MS);
    let write_timeout = Duration::from_millis(TCP_WRITE_TIMEOUT_MS);
    let mut buffer = vec![0u8; REQUEST_BYTES_MAX];
    loop {
        let read = async {
            let length = usize::from(stream.read_u16().await?);
            if length > REQUEST_BYTES_MAX || length == 0 {
                return Ok(None);
            }
            stream.read_exact(&mut buffer[..length]).await?;
            Ok::<_, std::io::Error>(Some(length))
        };
        let length = tokio::select! {
            read = tokio::time::timeout(idle, read) => match read {
                Ok(Ok(Some(length))) => length,
                Ok(Ok(None)) => {
                    state.metrics.count_drop("tcp_message_too_large");
                    state.drop_log.warn("closed a TCP connection: message length is 0 or above REQUEST_BYTES_MAX", peer);
                    return;
                }
                Ok(Err(_)) => return,
                Err(_) => {
                    state.metrics.count_drop("tcp_idle_timeout");
                    return;
                }
            },
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let snapshot = state.snapshot();
        let Some(response) = state.answer(&snapshot, &buffer[..length], Transport::Tcp, peer, rng.next_u64()) else {
            return;
        };
        state
            .metrics
            .count_query(&response.name_label, response.qtype, response.rcode, Transport::Tcp);
        let write = async {
            for wire in &response.wire {
                let Ok(length) = u16::try_from(wire.len()) else {
                    continue;
                };
                let mut framed = Vec::with_capacity(wire.len() + 2);
                framed.extend_from_slice(&length.to_be_bytes());
                framed.extend_from_slice(wire);
                stream.write_all(&framed).await?;
            }
            stream.flush().await
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                state.metrics.count_drop("tcp_write_timeout");
                return;
            }
        }
    }
}

/// What identifies a version of the config file for polling.
fn fingerprint(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Reloads zones on SIGHUP and when the file changes; a bad file is logged and ignored.
async fn reloader(path: PathBuf, interval_ms: u64, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    // Unknown at first: the file may have changed between the caller's load and this task's
    // start, so the first poll always reloads.
    let mut last = None;
    let poll = Duration::from_millis(interval_ms.max(1));
    loop {
        let hangup_signal = async {
            #[cfg(unix)]
            if let Some(signal) = hangup.as_mut() {
                signal.recv().await;
                return;
            }
            std::future::pending::<()>().await
        };
        let polled = async {
            if interval_ms == 0 {
                std::future::pending::<()>().await
            }
            tokio::time::sleep(poll).await
        };
        let forced = tokio::select! {
            _ = hangup_signal => true,
            _ = polled => false,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let now = fingerprint(&path);
        if !forced && now == last {
            continue;
        }
        last = now;
        reload(&path, &state);
    }
}

/// Loads the config file and swaps the zones in if it is valid. Returns whether it was.
pub fn reload(path: &Path, state: &State) -> bool {
    match crate::config::load(path) {
        Ok(config) => {
            let zones = config.zones.iter().count();
            state.replace_zones(config.zones);
            state
                .metrics
                .reloads
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: "ok" })
                .inc();
            tracing::info!(path = %path.display(), zones, "reloaded zones");
            true
        }
        Err(e) => {
            state
                .metrics
                .reloads
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: "error" })
                .inc();
            tracing::error!("config reload rejected, still serving the previous zones: {e}");
            false
        }
    }
}
