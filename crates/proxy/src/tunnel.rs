//! Tunnels: a client connection after its server switched protocols (`101 Switching
//! Protocols`, RFC 9110 §15.2.2: a WebSocket, RFC 6455 §4), its bytes moved both ways
//! unchanged, as HAProxy does once a connection is upgraded.
//!
//! Invariants: a tunnel ends when both sides have closed their sending side (each half-close is
//! passed on, RFC 9293 §3.6), when either side fails, when neither side sent a byte for
//! `tunnel_idle_ms` (HAProxy's `timeout tunnel`), when one side has closed and the other sent
//! nothing for `tunnel_fin_ms` (HAProxy's `timeout client-fin`/`server-fin`), when one read's bytes (at most
//! [`TUNNEL_BUFFER_BYTES`]) cannot be written to a side within `tunnel_idle_ms` (it stopped
//! reading), or when the proxy stops; it holds at most [`TUNNEL_BUFFER_BYTES`] per direction,
//! every write flushed; nothing here looks into the bytes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Bytes read from one side per read, per direction: the tunnel's whole buffer.
pub const TUNNEL_BUFFER_BYTES: usize = 16 * 1024;

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Both sides closed their sending side.
    Closed,
    /// Neither side sent a byte for `tunnel_idle_ms`, or a side took none for as long, or one
    /// side had closed and the other sent nothing for `tunnel_fin_ms`.
    Idle,
    /// A read or write failed (a reset).
    Failed,
    /// The proxy is stopping.
    Stopped,
}

impl TunnelEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelEnd::Closed => "closed",
            TunnelEnd::Idle => "idle",
            TunnelEnd::Failed => "failed",
            TunnelEnd::Stopped => "stopped",
        }
    }
}

/// What a tunnel moved, and why it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunneled {
    pub end: TunnelEnd,
    pub to_server_bytes: u64,
    pub to_client_bytes: u64,
}

/// A tunnel's timeouts (`[proxy.timeouts]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `tunnel_idle_ms`: no byte either way for this long ends the tunnel.
    pub idle: Duration,
    /// `tunnel_fin_ms`: once one side has closed, no byte from the other for this long ends it.
    pub fin: Duration,
}

/// Moves bytes between `client` and `server` until the tunnel ends (see the module's
/// invariants). `stop` set (or its sender gone) ends it at once. `websocket`: the protocol
/// frames its own end (RFC 6455's close frame), so a TLS peer's TCP close without close_notify
/// ends its side like a FIN; for any other protocol that is a truncation TLS exists to reveal,
/// and the tunnel ends as failed.
pub async fn run<C, S>(
    client: C,
    server: S,
    timeouts: Timeouts,
    websocket: bool,
    stop: &mut watch::Receiver<bool>,
) -> Tunneled
where
    C: AsyncRead + AsyncWrite,
    S: AsyncRead + AsyncWrite,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    // The last time a byte moved either way: one side quiet while the other talks (a server
    // pushing events) is not idle.
    let last = LastByte::new();
    let (to_server_bytes, to_client_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let idle = timeouts.idle;
    let fin = timeouts.fin.min(idle);
    let upstream = pump(
        &mut client_read,
        &mut server_write,
        &last,
        idle,
        websocket,
        &to_server_bytes,
    );
    let downstream = pump(
        &mut server_read,
        &mut client_write,
        &last,
        idle,
        websocket,
        &to_client_bytes,
    );
    tokio::pin!(upstream, downstream);
    let (mut up_done, mut down_done) = (false, false);
    let mut stopping = *stop.borrow_and_update();
    let end = loop {
        if stopping {
            break TunnelEnd::Stopped;
        }
        if up_done && down_done {
            break TunnelEnd::Closed;
        }
        tokio::select! {
            // A half-close counts as the side's last sign of life (`fin` runs from it).
            result = &mut upstream, if !up_done => match result {
                Ok(()) => {
                    up_done = true;
                    last.set(Instant::now());
                }
                Err(end) => break end,
            },
            result = &mut downstream, if !down_done => match result {
                Ok(()) => {
                    down_done = true;
                    last.set(Instant::now());
                }
                Err(end) => break end,
            },
            changed = stop.changed() => stopping = changed.is_err() || *stop.borrow_and_update(),
            // One side closed: the other has `fin` from the last byte either way to go on
            // talking (each byte it sends moves the deadline; the loop looks again).
            () = tokio::time::sleep_until(last.get() + fin), if up_done || down_done => {
                if Instant::now() >= last.get() + fin {
                    break TunnelEnd::Idle;
                }
            }
        }
    };
    Tunneled {
        end,
        to_server_bytes: to_server_bytes.load(Ordering::Relaxed),
        to_client_bytes: to_client_bytes.load(Ordering::Relaxed),
    }
}

/// When a byte last moved either way (both directions share it; atomics keep the tunnel's
/// future `Send`).
struct LastByte {
    start: Instant,
    since_start_ms: AtomicU64,
}

impl LastByte {
    fn new() -> LastByte {
        LastByte {
            start: Instant::now(),
            since_start_ms: AtomicU64::new(0),
        }
    }

    fn get(&self) -> Instant {
        self.start + Duration::from_millis(self.since_start_ms.load(Ordering::Relaxed))
    }

    fn set(&self, now: Instant) {
        let ms = u64::try_from(now.duration_since(self.start).as_millis()).unwrap_or(u64::MAX);
        self.since_start_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

/// One direction: reads from `from`, writes to `to`, until `from` closes (then closes `to`'s
/// sending side). `Err`: the tunnel must end.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    last: &LastByte,
    idle: Duration,
    unclean_close_ends_side: bool,
    moved: &AtomicU64,
) -> Result<(), TunnelEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; TUNNEL_BUFFER_BYTES];
    loop {
        let read = loop {
            // Idle is measured from the last byte either way; a read that times out while the
            // other direction moved waits again (reads are cancel-safe).
            match tokio::time::timeout_at(last.get() + idle, from.read(&mut buf)).await {
                Ok(read) => break read,
                Err(_) if Instant::now() >= last.get() + idle => return Err(TunnelEnd::Idle),
                Err(_) => {}
            }
        };
        let n = match read {
            Ok(n) if n > 0 => n,
            // The end of this side goes on to the other as a half-close; its answer may still
            // come back. A TLS peer that closes TCP without close_notify (rustls: UnexpectedEof)
            // ends its side the same way when the protocol frames its own end (a WebSocket's
            // close frame; see `run`).
            Ok(_) => return half_close(to, idle).await,
            Err(error) if unclean_close_ends_side && error.kind() == std::io::ErrorKind::UnexpectedEof => {
                return half_close(to, idle).await;
            }
            Err(_) => return Err(TunnelEnd::Failed),
        };
        last.set(Instant::now());
        // Flushed: TLS may keep the last record in its buffer until then, and a WebSocket
        // peer that waits for the end of a message would wait for ever (plain TCP's flush does
        // nothing).
        let written = async {
            to.write_all(&buf[..n]).await?;
            to.flush().await
        };
        match tokio::time::timeout(idle, written).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(TunnelEnd::Failed),
            // The side took nothing for idle_ms: it stopped reading.
            Err(_) => return Err(TunnelEnd::Idle),
        }
        moved.fetch_add(n as u64, Ordering::Relaxed);
        last.set(Instant::now());
    }
}

/// Passes the end of one side on to `to` (a half-close), within `idle`.
async fn half_close<W: AsyncWrite + Unpin>(to: &mut W, idle: Duration) -> Result<(), TunnelEnd> {
    match tokio::time::timeout(idle, to.shutdown()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(TunnelEnd::Failed),
        Err(_) => Err(TunnelEnd::Idle),
    }
}

/// Whether a protocol named in an `Upgrade` header may be tunnelled: any but `h2c`, HTTP/2's
/// cleartext upgrade, which RFC 9113 §3.1 retired (this proxy speaks HTTP/2 itself).
pub fn tunnelled_protocol(protocol: &[u8]) -> bool {
    let name = protocol.split(|b| *b == b'/').next().unwrap_or(protocol).trim_ascii();
    !name.is_empty() && !name.eq_ignore_ascii_case(b"h2c")
}

/// Whether `chosen` (a protocol of a `101`'s `Upgrade`) is among `asked` (the request's
/// `Upgrade` list as forwarded): the same name, and the same version where both name one
/// (RFC 9110 §7.8: a server must not switch to a protocol the client did not indicate).
pub fn asked_for(chosen: &[u8], asked: &[u8]) -> bool {
    fn split(protocol: &[u8]) -> (&[u8], Option<&[u8]>) {
        let protocol = protocol.trim_ascii();
        match protocol.iter().position(|b| *b == b'/') {
            Some(at) => (protocol[..at].trim_ascii(), Some(protocol[at + 1..].trim_ascii())),
            None => (protocol, None),
        }
    }
    let (name, version) = split(chosen);
    tunnelled_protocol(chosen)
        && asked
            .split(|b| *b == b',')
            .map(split)
            .any(|(asked_name, asked_version)| {
                asked_name.eq_ignore_ascii_case(name)
                    && match (version, asked_version) {
                        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                        _ => true,
                    }
            })
}

/// Counts a tunnel in the frontend's statistics while it lives.
pub(crate) struct OpenTunnel(Arc<crate::proxy::Shared>);

impl OpenTunnel {
    pub(crate) fn new(shared: Arc<crate::proxy::Shared>) -> OpenTunnel {
        let stats = shared.stats();
        stats.tunnels_total.fetch_add(1, Ordering::Relaxed);
        stats.tunnels_active.fetch_add(1, Ordering::Relaxed);
        OpenTunnel(shared)
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.stats().tunnels_active.fetch_sub(1, Ordering::Relaxed);
    }
}
