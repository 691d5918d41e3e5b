//! The sockets around [`answer`](crate::answer::answer): UDP workers (with response rate
//! limiting, decided by [`rrl`](crate::rrl)), the TCP acceptor with its limits (in all, where the
//! connection idle longest makes room for a new one, and per client: an IPv4 address or an
//! IPv6 /56) and idle timeouts (shorter under pressure, RFC 7766 §6.2.3), zone reloads (SIGHUP
//! and file polling), and the persisted health view.
//!
//! Invariants: nothing here decides an answer; every buffer, connection count and wait is bounded
//! by a named limit; a bad config file never replaces the zones being served; TCP answers are
//! never rate limited (the handshake proves the client's address).

use std::collections::HashMap;
use std::future::Future;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
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
use tokio::sync::watch;

use crate::answer::{Response, Transport, handle_packet};
use crate::cache::AnswerCache;
use crate::config::Limits;
use crate::metrics::{CounterCache, Metrics};
use crate::rrl::{RateLimiter, Verdict, classify};
use crate::view::HealthView;
use crate::zone::Zones;
use common::rng::Rng;

/// Largest UDP datagram received whole: the most a UDP payload can be (RFC 768's 16-bit
/// length). Each worker's batch has [`UDP_BATCH_DATAGRAMS_MAX`] receive slots of this size,
/// 32 × 65,535 B ≈ 2 MiB of address space per worker (16 workers at most: 32 MiB); the kernel
/// fills a slot only as far as its datagram goes, so what is resident is about a page per slot
/// for ordinary queries (≈ 128 KiB per worker) and grows only as far as large datagrams reach.
/// BIND's receive buffers are as large.
pub const UDP_DATAGRAM_BYTES_MAX: usize = 65_535;
/// Largest DNS-over-TCP message: any length its 2-byte prefix can announce (RFC 1035 §4.2.2,
/// RFC 7766). A connection holds a buffer of the announced length only while it reads and
/// answers that message, so open connections hold at most [`TCP_CONNECTIONS_MAX`] × 64 KiB
/// (16 MiB), and idle ones nothing.
pub const TCP_REQUEST_BYTES_MAX: usize = crate::answer::TCP_MESSAGE_BYTES_MAX;
/// Open DNS-over-TCP connections at most. With all of them open, a new one takes the place of
/// the one idle longest; when every one is answering a query, the new one is closed at once.
pub const TCP_CONNECTIONS_MAX: usize = 256;
/// Open DNS-over-TCP connections one client address may hold unless configured
/// (`tcp_connections_per_client_max`), so one client cannot take every slot (RFC 7766 §6.2.2).
pub const TCP_CONNECTIONS_PER_CLIENT_MAX_DEFAULT: usize = 16;
/// A TCP connection with no complete query for this long is closed (RFC 7766 suggests seconds).
pub const TCP_IDLE_TIMEOUT_MS: u64 = 10_000;
/// The idle timeout while the server is under pressure (more than [`TCP_CONNECTIONS_BUSY`]
/// connections open): RFC 7766 §6.2.3 has servers close idle connections more aggressively then.
/// A client that asks over TCP asks at once, as it connects or after an answer.
pub const TCP_IDLE_TIMEOUT_BUSY_MS: u64 = 1_000;
/// Open DNS-over-TCP connections above which the server is under pressure (half the slots).
pub const TCP_CONNECTIONS_BUSY: usize = TCP_CONNECTIONS_MAX / 2;
/// IPv6 clients are counted per /56 for `tcp_connections_per_client_max` (IPv4 ones per
/// address): a /56 is what one customer's site is commonly given (RFC 6177) and what the rate
/// limiter groups by, so one host cannot take more slots by using more of its addresses, while
/// a /48 would put unrelated sites of one provider's pool together.
pub const TCP_CLIENT_IPV6_PREFIX_LENGTH: u32 = 56;
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
/// How far every zone's serial moves at a start that finds the last save of the view did not
/// complete (its temporary file is still there: a full disk, a crash mid-save). The pushes applied
/// but never saved were served with serials the loaded view would count again with other
/// contents, and a secondary that holds such a serial would never transfer the new answers. Far
/// above any number of pushes one outage makes, far below RFC 1982's 2^31 bound on one step.
pub const SERIAL_STEP_AFTER_UNSAVED: u64 = 1 << 20;

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
    /// Signed queries refused for their TSIG (a key not held, a bad MAC or time, a replay).
    tsig_log: RateLimitedLog,
    /// Bumped after every change of zones or view, so workers refresh their snapshot only then.
    epoch: AtomicU64,
    /// Told after every change of zones or view: the NOTIFY sender plans again.
    pub(crate) changed: tokio::sync::Notify,
    /// The requests each TSIG key signed lately, shared by the UDP workers and the TCP
    /// connections so a copy is refused whichever way it comes (RFC 8945 §5.2.3).
    pub(crate) replays: Mutex<common::tsig::Replays>,
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
            tsig_log: RateLimitedLog::default(),
            epoch: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
            replays: Mutex::new(common::tsig::Replays::default()),
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
        let response = handle_packet(
            &snapshot.zones,
            &snapshot.view,
            packet,
            transport,
            peer.ip(),
            entropy,
            unix_now_s(),
            &self.replays,
        );
        if let Some(refused) = response.as_ref().and_then(|r| tsig_refusal_log(&r.name_label)) {
            self.tsig_log.warn(refused, peer);
        }
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

    /// Swaps in reloaded zones. Takes `view_writer`, so a reload never lands between a push's
    /// count of the zones it changes (made against the zones then) and its view being stored:
    /// a zone the reload changed would otherwise keep its serial under the pushed view.
    pub fn replace_zones(&self, zones: Zones) {
        let _writer = self.view_writer.lock().unwrap_or_else(|e| e.into_inner());
        *self.zones.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zones);
        self.epoch.fetch_add(1, Ordering::Release);
        self.changed.notify_one();
    }

    /// Publishes a new view (the caller holds `view_writer`) and persists it; returns whether it
    /// was written to disk (`None`: no state dir). The serial of each zone whose answers the new
    /// view changes moves on ([`crate::answer::count_zone_changes`]); the others keep theirs, so
    /// the notifier owes their secondaries nothing.
    pub(crate) fn publish_view(&self, mut view: HealthView) -> Option<bool> {
        crate::answer::count_zone_changes(&self.zones(), &self.view(), &mut view);
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
        self.changed.notify_one();
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

/// The view a server starts with from `dir`: the saved one ([`load_view`]), its serials moved on
/// by [`SERIAL_STEP_AFTER_UNSAVED`] when a save did not complete since (its temporary file is
/// left: a save that fails leaves it on purpose), and saved again so that the step is taken
/// once. An unreadable file starts every target healthy, its serials moved on the same way.
/// Returns the view and whether its serials were moved.
pub fn load_view_at_start(dir: &Path) -> (HealthView, bool) {
    let (mut view, unsure) = match load_view(dir) {
        Ok(view) => {
            let unsaved = unsaved_path(dir).exists();
            if unsaved {
                tracing::warn!(
                    path = %unsaved_path(dir).display(),
                    step = SERIAL_STEP_AFTER_UNSAVED,
                    "the last save of the health view did not complete (a full disk or a crash); \
                     moving every zone's serial on so that secondaries transfer what is served now"
                );
            }
            (view, unsaved)
        }
        Err(e) => {
            tracing::error!(
                step = SERIAL_STEP_AFTER_UNSAVED,
                "{e}; starting with every target healthy and every zone's serial moved on"
            );
            (HealthView::default(), true)
        }
    };
    if unsure {
        view.changes = view.changes.wrapping_add(SERIAL_STEP_AFTER_UNSAVED);
        if let Err(e) = save_view(dir, &view) {
            tracing::error!(error = %e, dir = %dir.display(), "could not save the health view; the next start moves the serials on again");
        }
    }
    (view, unsure)
}

fn unsaved_path(dir: &Path) -> std::path::PathBuf {
    dir.join(format!("{VIEW_FILE_NAME}.tmp"))
}

/// Writes `view` to a temporary file, syncs it and renames it over [`VIEW_FILE_NAME`]. A failure
/// leaves the temporary file: the next start reads it as "a save did not complete"
/// ([`load_view_at_start`]).
fn save_view(dir: &Path, view: &HealthView) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let temporary = unsaved_path(dir);
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

/// The log line for a signed query refused for its TSIG, by its metrics label.
fn tsig_refusal_log(label: &str) -> Option<&'static str> {
    use crate::answer::{
        LABEL_TSIG_BADKEY, LABEL_TSIG_BADSIG, LABEL_TSIG_BADTIME, LABEL_TSIG_BADTRUNC, LABEL_TSIG_REPLAYED,
    };
    Some(match label {
        LABEL_TSIG_BADKEY => {
            "refused a signed query: TSIG key not held here with that algorithm (BADKEY); add it to [[dns.tsig_keys]] or fix the client's key name or algorithm"
        }
        LABEL_TSIG_BADSIG => {
            "refused a signed query: its TSIG does not verify (BADSIG); the client's secret differs from this server's"
        }
        LABEL_TSIG_BADTIME => {
            "refused a signed query: signed more than 300 s from this server's clock (BADTIME); synchronise the clocks (NTP)"
        }
        LABEL_TSIG_BADTRUNC => {
            "refused a signed query: its TSIG MAC is truncated more than its key allows (BADTRUNC); give the client the key's algorithm as held here (a truncated MAC needs a key declared so, e.g. algorithm = \"hmac-sha256-128\")"
        }
        LABEL_TSIG_REPLAYED => {
            "refused a signed query as a replay (BADTIME): signed earlier than its key's latest request, or a copy of one already answered; give each secondary its own key"
        }
        _ => return None,
    })
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
        "refusing to serve the admin API on {0} without a token: anyone who can reach it could change which region gets traffic\n    fix: pass --token-file FILE (or set SWITCHYARD_CONTROL_TOKEN), or listen on a loopback address such as 127.0.0.1"
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
        Some(dir) => load_view_at_start(dir).0,
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
        options.limits.clone(),
        stop_rx.clone(),
    ));
    tasks.spawn(crate::notify::notifier(
        Arc::clone(&state),
        Rng::new(seeds.next_u64()),
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
    /// `UDP_BATCH_DATAGRAMS_MAX` receive buffers of `UDP_DATAGRAM_BYTES_MAX` bytes, back to
    /// back (allocated zeroed: untouched pages cost no memory).
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
            received: vec![0; UDP_BATCH_DATAGRAMS_MAX * UDP_DATAGRAM_BYTES_MAX],
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
        let mut buffers = self.received.chunks_exact_mut(UDP_DATAGRAM_BYTES_MAX);
        let mut slices: [[IoSliceMut<'_>; 1]; UDP_BATCH_DATAGRAMS_MAX] =
            std::array::from_fn(|_| [IoSliceMut::new(buffers.next().unwrap_or_default())]);
        let messages = recvmmsg(
            socket.as_raw_fd(),
            &mut self.receive_headers,
            &mut slices,
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        // Every slot holds the largest UDP payload, so no datagram is cut.
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
            let start = index * UDP_DATAGRAM_BYTES_MAX;
            let Some(packet) = batch.received.get(start..start + length.min(UDP_DATAGRAM_BYTES_MAX)) else {
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
                // response, judged once already. (Cached answers are never signed ones.)
                let response = handle_packet(
                    &snapshot.zones,
                    &snapshot.view,
                    packet,
                    Transport::Udp,
                    peer.ip(),
                    rng.next_u64(),
                    unix_now_s(),
                    &state.replays,
                );
                let slipped = response.as_ref().and_then(Response::slipped);
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
            // A signed query's is signed too (or nothing is sent).
            let slipped = response.slipped();
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

/// The block a TCP client is counted in for the per-client limit: its IPv4 address (an
/// IPv4-mapped one as IPv4), or its IPv6 address cut to [`TCP_CLIENT_IPV6_PREFIX_LENGTH`] bits.
fn client_block(address: IpAddr) -> IpAddr {
    match common::net::canonical(address) {
        IpAddr::V6(v6) => {
            let mask = u128::MAX << (128 - TCP_CLIENT_IPV6_PREFIX_LENGTH);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

/// The open DNS-over-TCP connections: how many each client block holds, and since when each
/// has been idle (no query in progress). Sans-IO: the caller passes the time.
struct TcpSlots {
    connections: HashMap<u64, TcpSlotState>,
    per_client: HashMap<IpAddr, usize>,
    per_client_max: usize,
    next_id: u64,
}

struct TcpSlotState {
    client: IpAddr,
    /// When the connection last finished an answer (or opened); `None` while it answers.
    idle_since: Option<Instant>,
    /// Told when the connection is closed to make room for another.
    evict: Arc<tokio::sync::Notify>,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
enum TcpRefusal {
    /// Every slot is taken and every connection is answering a query.
    Full,
    /// Its client block holds `tcp_connections_per_client_max` connections already.
    ClientFull,
}

/// An admitted connection: its id, and what tells it to close.
struct TcpAdmission {
    id: u64,
    evict: Arc<tokio::sync::Notify>,
    /// Whether an idle connection was closed to make room (RFC 7766 §6.2.2).
    evicted: bool,
}

impl TcpSlots {
    fn new(per_client_max: usize) -> TcpSlots {
        TcpSlots {
            connections: HashMap::new(),
            per_client: HashMap::new(),
            per_client_max,
            next_id: 0,
        }
    }

    /// Admits a connection from `address`; with every slot taken, closes the connection idle
    /// the longest to make room (RFC 7766 §6.2.3). A client block at its limit is refused.
    fn admit(&mut self, address: IpAddr, now: Instant) -> Result<TcpAdmission, TcpRefusal> {
        let client = client_block(address);
        if self
            .per_client
            .get(&client)
            .is_some_and(|&open| open >= self.per_client_max)
        {
            return Err(TcpRefusal::ClientFull);
        }
        let mut evicted = false;
        if self.connections.len() >= TCP_CONNECTIONS_MAX {
            let idlest = self
                .connections
                .iter()
                .filter_map(|(&id, slot)| slot.idle_since.map(|since| (since, id)))
                .min()
                .map(|(_, id)| id)
                .ok_or(TcpRefusal::Full)?;
            if let Some(slot) = self.release(idlest) {
                slot.evict.notify_one();
                evicted = true;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let evict = Arc::new(tokio::sync::Notify::new());
        self.connections.insert(
            id,
            TcpSlotState {
                client,
                idle_since: Some(now),
                evict: Arc::clone(&evict),
            },
        );
        *self.per_client.entry(client).or_insert(0) += 1;
        Ok(TcpAdmission { id, evict, evicted })
    }

    /// The connection is answering a query: it cannot be evicted.
    fn answering(&mut self, id: u64) {
        if let Some(slot) = self.connections.get_mut(&id) {
            slot.idle_since = None;
        }
    }

    /// The connection finished an answer at `now` and waits for the next query.
    fn idle(&mut self, id: u64, now: Instant) {
        if let Some(slot) = self.connections.get_mut(&id) {
            slot.idle_since = Some(now);
        }
    }

    /// Forgets a connection (closed, or evicted); returns it if it was still counted.
    fn release(&mut self, id: u64) -> Option<TcpSlotState> {
        let slot = self.connections.remove(&id)?;
        if let Some(open) = self.per_client.get_mut(&slot.client) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.per_client.remove(&slot.client);
            }
        }
        Some(slot)
    }

    fn under_pressure(&self) -> bool {
        self.connections.len() > TCP_CONNECTIONS_BUSY
    }
}

/// [`TcpSlots`] shared by the acceptor and the connections, with the pressure flag the
/// connections' idle timeouts follow.
struct TcpTable {
    slots: Mutex<TcpSlots>,
    pressure: watch::Sender<bool>,
}

impl TcpTable {
    fn new(per_client_max: usize) -> TcpTable {
        TcpTable {
            slots: Mutex::new(TcpSlots::new(per_client_max)),
            pressure: watch::Sender::new(false),
        }
    }

    /// Runs `change` on the slots and publishes whether they are under pressure now.
    fn with<T>(&self, change: impl FnOnce(&mut TcpSlots) -> T) -> T {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let result = change(&mut slots);
        let pressure = slots.under_pressure();
        self.pressure
            .send_if_modified(|current| std::mem::replace(current, pressure) != pressure);
        result
    }
}

/// One admitted connection; released from the table when dropped.
struct TcpSlot {
    table: Arc<TcpTable>,
    id: u64,
}

impl TcpSlot {
    fn answering(&self) {
        self.table.with(|slots| slots.answering(self.id));
    }

    fn idle(&self, now: Instant) {
        self.table.with(|slots| slots.idle(self.id, now));
    }
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        self.table.with(|slots| slots.release(self.id));
    }
}

/// The idle timeouts of DNS-over-TCP connections: normal, and under pressure.
#[derive(Clone, Copy)]
struct IdleTimeouts {
    normal: Duration,
    busy: Duration,
}

async fn tcp_acceptor(
    listener: TcpListener,
    state: Arc<State>,
    mut rng: Rng,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let table = Arc::new(TcpTable::new(limits.tcp_connections_per_client_max));
    let timeouts = IdleTimeouts {
        normal: Duration::from_millis(limits.tcp_idle_timeout_ms),
        busy: Duration::from_millis(limits.tcp_idle_timeout_busy_ms),
    };
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
        let admission = match table.with(|slots| slots.admit(peer.ip(), Instant::now())) {
            Ok(admission) => admission,
            Err(TcpRefusal::Full) => {
                state.metrics.count_drop("tcp_connection_limit");
                state.drop_log.warn(
                    "closed a TCP connection: TCP_CONNECTIONS_MAX connections are open, all answering",
                    peer,
                );
                continue;
            }
            Err(TcpRefusal::ClientFull) => {
                state.metrics.count_drop("tcp_client_connection_limit");
                state.drop_log.warn(
                    "closed a TCP connection: this client (address, or /56 for IPv6) already holds tcp_connections_per_client_max connections",
                    peer,
                );
                continue;
            }
        };
        if admission.evicted {
            state.metrics.count_drop("tcp_idle_evicted");
        }
        let slot = TcpSlot {
            table: Arc::clone(&table),
            id: admission.id,
        };
        let pressure = table.pressure.subscribe();
        let state = Arc::clone(&state);
        let seed = rng.next_u64();
        let stop = stop.clone();
        tokio::spawn(async move {
            state.metrics.tcp_connections.inc();
            let connection = TcpConnection {
                peer,
                slot,
                evict: admission.evict,
                pressure,
                timeouts,
            };
            connection.serve(stream, &state, Rng::new(seed), stop).await;
            state.metrics.tcp_connections.dec();
        });
    }
}

/// One DNS-over-TCP connection and what can end it besides its client.
struct TcpConnection {
    peer: SocketAddr,
    slot: TcpSlot,
    evict: Arc<tokio::sync::Notify>,
    pressure: watch::Receiver<bool>,
    timeouts: IdleTimeouts,
}

/// Why a connection stopped waiting for a query.
enum Wait {
    /// The whole message, in a buffer of its announced length.
    Query(Vec<u8>),
    /// Zero length or unreadable: the connection is closed.
    Closed,
}

impl TcpConnection {
    async fn serve(mut self, mut stream: TcpStream, state: &State, mut rng: Rng, mut stop: watch::Receiver<bool>) {
        let _ = stream.set_nodelay(true);
        let peer = self.peer;
        let write_timeout = Duration::from_millis(TCP_WRITE_TIMEOUT_MS);
        let mut idle_since = Instant::now();
        loop {
            let query = match self.next_query(&mut stream, idle_since, state, &mut stop).await {
                Wait::Query(query) => query,
                Wait::Closed => return,
            };
            self.slot.answering();
            let snapshot = state.snapshot();
            let answered = state.answer(&snapshot, &query, Transport::Tcp, peer, rng.next_u64());
            // The query's buffer goes before the answer is written: a slow reader holds no
            // 64 KiB query.
            drop(query);
            let Some(response) = answered else {
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
            idle_since = Instant::now();
            self.slot.idle(idle_since);
        }
    }

    /// Waits for the next whole query, until the idle timeout after `idle_since` (the shorter
    /// one while the server is under pressure, which can start during the wait), eviction or
    /// shutdown.
    async fn next_query(
        &mut self,
        stream: &mut TcpStream,
        idle_since: Instant,
        state: &State,
        stop: &mut watch::Receiver<bool>,
    ) -> Wait {
        let read = async {
            // A u16: never above TCP_REQUEST_BYTES_MAX.
            let length = usize::from(stream.read_u16().await?).min(TCP_REQUEST_BYTES_MAX);
            if length == 0 {
                return Ok(None);
            }
            let mut query = vec![0u8; length];
            stream.read_exact(&mut query).await?;
            Ok::<_, std::io::Error>(Some(query))
        };
        tokio::pin!(read);
        loop {
            let timeout = if *self.pressure.borrow_and_update() {
                self.timeouts.busy
            } else {
                self.timeouts.normal
            };
            let deadline = tokio::time::Instant::from_std(idle_since + timeout);
            tokio::select! {
                read = &mut read => return match read {
                    Ok(Some(query)) => Wait::Query(query),
                    Ok(None) => {
                        state.metrics.count_drop("tcp_message_empty");
                        state.drop_log.warn("closed a TCP connection: it announced a message of length 0", self.peer);
                        Wait::Closed
                    }
                    Err(_) => Wait::Closed,
                },
                _ = tokio::time::sleep_until(deadline) => {
                    state.metrics.count_drop("tcp_idle_timeout");
                    return Wait::Closed;
                }
                // Pressure came or went: wait again with the other timeout.
                Ok(()) = self.pressure.changed() => {}
                _ = self.evict.notified() => return Wait::Closed,
                _ = stop.wait_for(|stop| *stop) => return Wait::Closed,
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

/// The wall clock in Unix seconds, which TSIG signatures carry and are checked against.
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_start_after_a_save_that_did_not_complete_moves_every_serial_on_once() {
        let origin = hickory_proto::rr::Name::from_ascii("shop.example.").expect("a name");
        let dir = tempfile::tempdir().expect("a directory");
        let mut saved = HealthView::default();
        saved.count_zone_change(&origin);
        saved.count_zone_change(&origin);
        save_view(dir.path(), &saved).expect("saves");
        assert!(
            !unsaved_path(dir.path()).exists(),
            "a save that completes leaves no temporary file"
        );
        // A clean start keeps the serials.
        let (clean, moved) = load_view_at_start(dir.path());
        assert!(!moved);
        assert_eq!(clean.serial(40, &origin), 42);
        // Pushes were applied and served (serials 43, 44...) but their saves failed: the
        // temporary file is left. The next start must not serve 43 again with other answers.
        std::fs::write(unsaved_path(dir.path()), b"{\"gener").expect("a partial save");
        let (after, moved) = load_view_at_start(dir.path());
        assert!(moved);
        let step = u32::try_from(SERIAL_STEP_AFTER_UNSAVED).expect("fits");
        assert_eq!(after.serial(40, &origin), 42 + step);
        assert_eq!(after.generation, saved.generation, "the saved view is kept");
        // The step is saved: taken once, not at every start.
        assert!(!unsaved_path(dir.path()).exists());
        let (again, moved) = load_view_at_start(dir.path());
        assert!(!moved);
        assert_eq!(again.serial(40, &origin), 42 + step);
        // An unreadable view: every target healthy, and the serials still move on.
        std::fs::write(dir.path().join(VIEW_FILE_NAME), b"not json").expect("writes");
        let (fresh, moved) = load_view_at_start(dir.path());
        assert!(moved);
        assert!(fresh.targets.is_empty());
        assert_eq!(fresh.serial(40, &origin), 40 + step);
    }

    #[test]
    fn a_view_saved_before_per_zone_serials_keeps_every_zones_serial_and_each_moves_on_alone() {
        // The state file of a version that counted pushes for every zone at once: no zone's
        // serial may go back after the upgrade (a secondary holding the higher serial would
        // never transfer again), and from then on each moves on by its own changes alone,
        // across a save and a load.
        let config = crate::config::parse(
            "[[dns.zones]]\norigin = \"shop.example.\"\nns = [\"ns1.other.example.\"]\n[dns.zones.soa]\nserial = 40\n[[dns.zones.records]]\nname = \"app\"\ntype = \"A\"\npolicy = \"failover\"\n[[dns.zones.records.members]]\nrole = \"primary\"\nvalues = [\"192.0.2.10\"]\nhealth = \"us-east-1\"\n[[dns.zones.records.members]]\nrole = \"secondary\"\nvalues = [\"198.51.100.10\"]\nhealth = \"eu-west-1\"\n[[dns.zones]]\norigin = \"other.example.\"\nns = [\"ns1\"]\n[dns.zones.soa]\nserial = 900\n[[dns.zones.records]]\nname = \"ns1\"\ntype = \"A\"\nvalues = [\"192.0.2.53\"]\n",
            "t.toml",
        )
        .expect("valid");
        let dir = tempfile::tempdir().expect("a directory");
        std::fs::write(
            dir.path().join(VIEW_FILE_NAME),
            r#"{"generation": 7, "targets": {}, "txt": {}, "changes": 5}"#,
        )
        .expect("writes");
        let serials = |view: &HealthView| -> Vec<u32> {
            config
                .zones
                .iter()
                .map(|zone| match zone.soa.data() {
                    hickory_proto::rr::RData::SOA(soa) => view.serial(soa.serial(), &zone.origin),
                    _ => unreachable!("a zone's SOA"),
                })
                .collect()
        };
        let old = load_view(dir.path()).expect("the old state file loads");
        let before = serials(&old);
        let origins: Vec<String> = config.zones.iter().map(|zone| zone.origin.to_ascii()).collect();
        let at = |origin: &str| origins.iter().position(|o| o == origin).expect("a zone");
        assert_eq!(before[at("shop.example.")], 45, "{origins:?}");
        assert_eq!(before[at("other.example.")], 905);
        // A failover in shop.example: its serial moves, other.example's holds; then back.
        let mut down = old
            .apply_health(
                crate::view::Generation(8),
                &[("us-east-1".to_string(), crate::view::Health::Unhealthy)].into(),
            )
            .expect("push");
        crate::answer::count_zone_changes(&config.zones, &old, &mut down);
        save_view(dir.path(), &down).expect("saves");
        let down = load_view(dir.path()).expect("loads");
        let mut up = down
            .apply_health(
                crate::view::Generation(9),
                &[("us-east-1".to_string(), crate::view::Health::Healthy)].into(),
            )
            .expect("push");
        crate::answer::count_zone_changes(&config.zones, &down, &mut up);
        assert_eq!(serials(&down)[at("shop.example.")], 46);
        assert_eq!(serials(&down)[at("other.example.")], 905);
        // Back to the first answers, but not to the first serial: 45 was served with them and
        // 46 with the failover, so the return is 47 (a serial never names two contents).
        assert_eq!(serials(&up)[at("shop.example.")], 47);
        assert_eq!(serials(&up)[at("other.example.")], 905);
    }

    /// `TCP_CONNECTIONS_MAX` connections, one address each, opened a second apart from `start`.
    fn full(start: Instant) -> (TcpSlots, Vec<u64>) {
        let mut slots = TcpSlots::new(TCP_CONNECTIONS_MAX);
        let ids = (0..TCP_CONNECTIONS_MAX)
            .map(|n| {
                let address = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n as u32));
                let at = start + Duration::from_secs(n as u64);
                slots.admit(address, at).expect("a free slot").id
            })
            .collect();
        (slots, ids)
    }

    #[test]
    fn with_every_slot_taken_the_connection_idle_longest_makes_room() {
        let start = Instant::now();
        let (mut slots, ids) = full(start);
        let later = start + Duration::from_secs(1_000);
        // The oldest connection asked a question since: it is not the idlest any more.
        slots.idle(ids[0], later);
        let admitted = slots.admit(ip("192.0.2.1"), later).expect("room made");
        assert!(admitted.evicted);
        assert!(!slots.connections.contains_key(&ids[1]), "the idlest one went");
        assert!(slots.connections.contains_key(&ids[0]));
        assert_eq!(slots.connections.len(), TCP_CONNECTIONS_MAX);
        assert_eq!(
            slots.per_client.len(),
            TCP_CONNECTIONS_MAX,
            "its client's count went with it"
        );
        // The evicted connection's own release later changes nothing.
        assert!(slots.release(ids[1]).is_none());
        assert_eq!(slots.connections.len(), TCP_CONNECTIONS_MAX);
    }

    #[test]
    fn a_connection_answering_a_query_is_never_evicted() {
        let start = Instant::now();
        let (mut slots, ids) = full(start);
        for &id in &ids[1..] {
            slots.answering(id);
        }
        let admitted = slots
            .admit(ip("192.0.2.1"), start)
            .expect("the one idle connection makes room");
        assert!(!slots.connections.contains_key(&ids[0]));
        slots.answering(admitted.id);
        assert_eq!(
            slots.admit(ip("192.0.2.2"), start).err(),
            Some(TcpRefusal::Full),
            "every connection answering: refused"
        );
    }

    #[test]
    fn ipv6_clients_are_counted_per_56() {
        let mut slots = TcpSlots::new(2);
        let now = Instant::now();
        slots.admit(ip("2001:db8:0:1::1"), now).expect("first");
        slots.admit(ip("2001:db8:0:ff::2"), now).expect("second, same /56");
        assert_eq!(
            slots.admit(ip("2001:db8:0:42::3"), now).err(),
            Some(TcpRefusal::ClientFull),
            "another /64 of the same /56"
        );
        slots
            .admit(ip("2001:db8:0:100::1"), now)
            .expect("the next /56 is another client");
        // IPv4 per address, an IPv4-mapped address as its IPv4 one.
        slots.admit(ip("192.0.2.1"), now).expect("v4");
        slots.admit(ip("::ffff:192.0.2.1"), now).expect("the same v4 client");
        assert_eq!(slots.admit(ip("192.0.2.1"), now).err(), Some(TcpRefusal::ClientFull));
        slots
            .admit(ip("192.0.2.2"), now)
            .expect("its neighbour is another client");
    }

    #[test]
    fn more_than_half_the_slots_open_is_pressure() {
        let table = TcpTable::new(TCP_CONNECTIONS_MAX);
        let pressure = table.pressure.subscribe();
        let now = Instant::now();
        let mut ids = Vec::new();
        for n in 0..TCP_CONNECTIONS_BUSY {
            let address = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n as u32));
            ids.push(table.with(|slots| slots.admit(address, now)).expect("admitted").id);
        }
        assert!(!*pressure.borrow());
        let last = table.with(|slots| slots.admit(ip("192.0.2.1"), now)).expect("admitted");
        assert!(*pressure.borrow());
        table.with(|slots| slots.release(last.id));
        assert!(!*pressure.borrow());
    }

    #[test]
    fn every_tsig_refusal_label_has_a_log_line_naming_its_fix() {
        use crate::answer::{
            LABEL_MALFORMED, LABEL_OUTSIDE, LABEL_TSIG_BADKEY, LABEL_TSIG_BADSIG, LABEL_TSIG_BADTIME,
            LABEL_TSIG_BADTRUNC, LABEL_TSIG_REPLAYED,
        };
        for (label, names) in [
            (LABEL_TSIG_BADKEY, "BADKEY"),
            (LABEL_TSIG_BADSIG, "BADSIG"),
            (LABEL_TSIG_BADTIME, "NTP"),
            (LABEL_TSIG_BADTRUNC, "BADTRUNC"),
            (LABEL_TSIG_REPLAYED, "replay"),
        ] {
            let line = tsig_refusal_log(label).unwrap_or_else(|| panic!("{label} is logged"));
            assert!(line.contains(names), "{label}: {line}");
        }
        assert_eq!(tsig_refusal_log(LABEL_MALFORMED), None);
        assert_eq!(tsig_refusal_log(LABEL_OUTSIDE), None);
    }
}
