//! Probes: one async function per `ProbeKind`, each run under the check's timeout. A probe
//! opens its own connection every time (no pooling), as HAProxy's checks do, so a server that
//! stopped accepting connections is seen at once.

pub mod cloudwatch;
mod dns;
mod dynamodb;
mod http;
mod mysql;
mod postgres;
mod redis;
mod tls;
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::report::ReplicationPosition;
use crate::spec::{CheckSpec, ProbeKind, SqlDriver};

pub use dynamodb::HEARTBEAT_TABLE;
pub use http::BODY_BYTES_MAX;

/// Bytes of a server reply a probe reads at most (Redis INFO, SQL rows, DNS answers).
pub const REPLY_BYTES_MAX: usize = 256 * 1024;

/// Bytes a SQL probe reads at most from its server over one probe — login and every result
/// together (1 MiB): a server that sends more fails the probe, so 64 probes in flight hold at
/// most 64 MiB of replies, not 64 × 1024 messages × [`REPLY_BYTES_MAX`].
pub const SQL_PROBE_BYTES_MAX: usize = 1024 * 1024;

/// Characters of one piece of server-supplied text (a version, an error message, a role, a
/// value) a probe puts in its detail; longer text is cut with `…`.
pub const SHOWN_CHARS_MAX: usize = 120;

/// Rows of an unexpected SQL result a detail shows; the rest are counted, not shown.
pub const SHOWN_ROWS_MAX: usize = 3;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub success: bool,
    /// What happened, in words: `HTTP 200`, `connect: Connection refused`, `timed out after 800 ms`.
    pub detail: String,
    /// How long the probe took, when it finished before its timeout.
    pub latency_ms: Option<u64>,
    /// Replication lag read by SQL and Redis probes that ask for it, and by DynamoDB probes
    /// with `lag_sources` (the lag into the check's region).
    pub replica_lag_ms: Option<u64>,
    /// The replication position SQL and Redis probes read with their lag.
    pub position: Option<ReplicationPosition>,
}

/// What a probe found when it completed: success or a reason, and a lag if it read one.
pub(crate) struct Finding {
    pub(crate) success: bool,
    pub(crate) detail: String,
    pub(crate) replica_lag_ms: Option<u64>,
    pub(crate) position: Option<ReplicationPosition>,
}

impl Finding {
    pub(crate) fn up(detail: impl Into<String>) -> Finding {
        Finding {
            success: true,
            detail: detail.into(),
            replica_lag_ms: None,
            position: None,
        }
    }
    pub(crate) fn down(detail: impl Into<String>) -> Finding {
        Finding {
            success: false,
            detail: detail.into(),
            replica_lag_ms: None,
            position: None,
        }
    }
    pub(crate) fn with_lag(mut self, lag_ms: Option<u64>) -> Finding {
        self.replica_lag_ms = lag_ms;
        self
    }
    pub(crate) fn with_position(mut self, position: Option<ReplicationPosition>) -> Finding {
        self.position = position;
        self
    }
}

/// Runs the check's probe once, cut at `timeout_ms`.
pub async fn probe(spec: &CheckSpec) -> ProbeOutcome {
    let started = Instant::now();
    let timeout = Duration::from_millis(spec.timeout_ms);
    match tokio::time::timeout(timeout, run(spec, started)).await {
        Ok(finding) => ProbeOutcome {
            success: finding.success,
            detail: finding.detail,
            latency_ms: Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
            replica_lag_ms: finding.replica_lag_ms,
            position: finding.position,
        },
        Err(_) => ProbeOutcome {
            success: false,
            detail: format!("timed out after {} ms", spec.timeout_ms),
            latency_ms: None,
            replica_lag_ms: None,
            position: None,
        },
    }
}

/// Share of a DynamoDB probe's `timeout_ms`, from its start, after which `lag_sources` that
/// have not answered count as unknown.
pub const LAG_BUDGET_PERCENT: u64 = 80;

async fn run(spec: &CheckSpec, started: Instant) -> Finding {
    match &spec.kind {
        ProbeKind::Http {
            url,
            method,
            expect_status,
            body_contains,
            headers,
            ca_file,
            tls_verify,
        } => {
            http::probe(&http::Check {
                url,
                method,
                expect_status: *expect_status,
                body_contains: body_contains.as_deref(),
                headers,
                ca_file: ca_file.as_deref(),
                tls_verify: *tls_verify,
            })
            .await
        }
        ProbeKind::Tcp { address } => match connect(address).await {
            Ok(_) => Finding::up(format!("connected to {address}")),
            Err(error) => Finding::down(error),
        },
        ProbeKind::Dns {
            server,
            name,
            record_type,
            expect,
        } => dns::probe(server, name, record_type, expect.as_deref()).await,
        ProbeKind::Dynamodb {
            endpoint,
            table,
            key,
            signing_region,
            access_key_id,
            secret_access_key,
            lag_sources,
            write,
            cloudwatch_lag,
        } => {
            let credentials = access_key_id.as_deref().zip(secret_access_key.as_deref());
            let region = signing_region.as_deref().unwrap_or(&spec.region);
            let finding = dynamodb::probe(endpoint, table, key.as_ref(), region, credentials, *write).await;
            if !finding.success || !spec.kind.reads_replica_lag() {
                return finding;
            }
            // The lag reads share what is left of the probe's timeout with a margin, so a slow
            // source costs the reading, never the probe's own verdict.
            let budget_ms = spec.timeout_ms.saturating_mul(LAG_BUDGET_PERCENT) / 100;
            let deadline = started + Duration::from_millis(budget_ms);
            match cloudwatch_lag {
                Some(lag) => cloudwatch::read_inbound_lag(finding, lag, table, &spec.region, deadline).await,
                None => dynamodb::read_inbound_lag(finding, lag_sources, &spec.region, deadline).await,
            }
        }
        ProbeKind::Sql {
            driver,
            address,
            user,
            password,
            database,
            max_replica_lag_ms,
            ..
        } => {
            let login = SqlLogin {
                address,
                user,
                password: password.as_deref().unwrap_or(""),
                database: database.as_deref(),
            };
            let read_lag = spec.kind.reads_replica_lag();
            let finding = match driver {
                SqlDriver::Mysql => mysql::probe(&login, read_lag).await,
                SqlDriver::Postgres => postgres::probe(&login, read_lag).await,
            };
            judge_lag(finding, *max_replica_lag_ms)
        }
        ProbeKind::Redis {
            address,
            username,
            password,
            expect_role,
            max_replica_lag_ms,
            ..
        } => {
            let options = redis::Options {
                username: username.as_deref(),
                password: password.as_deref(),
                replication: spec.kind.reads_replica_lag(),
                expect_role: expect_role.as_deref(),
            };
            judge_lag(redis::probe(address, &options).await, *max_replica_lag_ms)
        }
    }
}

/// How a SQL probe logs in.
pub(crate) struct SqlLogin<'a> {
    pub(crate) address: &'a str,
    pub(crate) user: &'a str,
    pub(crate) password: &'a str,
    pub(crate) database: Option<&'a str>,
}

/// With a lag bound, a successful probe fails when the lag is above it or unknown.
fn judge_lag(finding: Finding, max_replica_lag_ms: Option<u64>) -> Finding {
    let Some(max) = max_replica_lag_ms else {
        return finding;
    };
    if !finding.success {
        return finding;
    }
    match finding.replica_lag_ms {
        Some(lag) if lag <= max => finding,
        Some(lag) => Finding {
            success: false,
            detail: format!("{}; replica lag {lag} ms is above {max} ms", finding.detail),
            replica_lag_ms: Some(lag),
            position: finding.position,
        },
        None => Finding {
            success: false,
            detail: format!("{}; max_replica_lag_ms = {max} needs a known lag", finding.detail),
            replica_lag_ms: None,
            position: finding.position,
        },
    }
}

/// `text` cut to at most `max_chars` characters, the cut marked with `…` (which counts).
pub(crate) fn cut(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut shown: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    shown.push('…');
    shown
}

/// Server-supplied text for a detail: cut at [`SHOWN_CHARS_MAX`] characters.
pub(crate) fn shown(text: &str) -> String {
    cut(text, SHOWN_CHARS_MAX)
}

/// SQL rows for a detail: at most [`SHOWN_ROWS_MAX`] rows, each cut at [`SHOWN_CHARS_MAX`]
/// characters (a value at a quarter of that), and how many more there are.
pub(crate) fn shown_rows(rows: &[Vec<Option<String>>]) -> String {
    let mut parts: Vec<String> = rows
        .iter()
        .take(SHOWN_ROWS_MAX)
        .map(|row| {
            let values: Vec<String> = row
                .iter()
                .map(|value| match value {
                    Some(value) => format!("'{}'", cut(value, SHOWN_CHARS_MAX / 4)),
                    None => "NULL".to_string(),
                })
                .collect();
            shown(&format!("({})", values.join(", ")))
        })
        .collect();
    if rows.len() > SHOWN_ROWS_MAX {
        parts.push(format!("… {} more", rows.len() - SHOWN_ROWS_MAX));
    }
    match rows.len() {
        0 => "no rows".to_string(),
        1 => format!("1 row {}", parts.join(" ")),
        n => format!("{n} rows {}", parts.join(" ")),
    }
}

/// How long a connection attempt runs alone before the next address's starts alongside it
/// (RFC 8305, section 5, "Connection Attempt Delay": 250 ms recommended).
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);
/// Addresses of one name a connect tries at most (each an attempt, and a socket).
pub const CONNECT_ADDRESSES_MAX: usize = 8;
/// Name lookups running at once, across every probe of the process. A lookup is the system's
/// `getaddrinfo` on tokio's blocking pool, which nothing can interrupt: a probe cut at its
/// timeout returns on time, but its lookup runs on until the resolver gives up. The bound
/// keeps a hung resolver from filling the blocking pool (which file I/O shares) with stuck
/// threads; probes of names then wait for a slot, within their own timeout.
pub const LOOKUPS_MAX: usize = 16;

/// The permits of [`LOOKUPS_MAX`]; a lookup holds one until `getaddrinfo` returns.
static LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LOOKUPS_MAX);

/// Connects over TCP to `host:port`; the error names the address. An IP address is connected
/// to at once; a name is looked up (at most [`LOOKUPS_MAX`] lookups at once), and its
/// addresses are tried Happy Eyeballs style (RFC 8305): families interleaved, each attempt
/// given [`CONNECTION_ATTEMPT_DELAY`] before the next starts alongside it (at once when it
/// fails), the first connection to complete winning, so a blackholed address (an IPv6 route
/// that drops everything) costs 250 ms rather than the probe's whole timeout.
pub(crate) async fn connect(address: &str) -> Result<TcpStream, String> {
    let candidates = resolve(address)
        .await
        .map_err(|error| format!("connect {address}: {error}"))?;
    let stream = race(&candidates)
        .await
        .map_err(|error| format!("connect {address}: {error}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The addresses of `host:port`, in the order to try them.
async fn resolve(address: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(socket_address) = address.parse::<SocketAddr>() {
        return Ok(vec![socket_address]);
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err("not host:port".into());
    };
    let port: u16 = port.parse().map_err(|_| format!("port '{port}' is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addresses = lookup(host.to_string(), port, |host: &str, port: u16| {
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map(Iterator::collect)
    })
    .await
    .map_err(|error| error.to_string())?;
    if addresses.is_empty() {
        return Err(format!("'{host}' has no address"));
    }
    Ok(interleave(addresses))
}

/// Runs `resolve` on the blocking pool once one of the [`LOOKUPS_MAX`] slots is free; the
/// slot is held until `resolve` returns, even when the caller has gone (cut at its timeout).
async fn lookup<F>(host: String, port: u16, resolve: F) -> std::io::Result<Vec<SocketAddr>>
where
    F: FnOnce(&str, u16) -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
{
    let permit = LOOKUPS.acquire().await.map_err(std::io::Error::other)?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        resolve(&host, port)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// RFC 8305, section 4: the addresses alternate between families, starting with the family
/// of the first (the system's preference, RFC 6724); duplicates dropped.
fn interleave(addresses: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(addresses.len());
    for address in addresses {
        if !unique.contains(&address) {
            unique.push(address);
        }
    }
    let first_v6 = unique.first().is_some_and(SocketAddr::is_ipv6);
    let (preferred, other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        unique.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(preferred.len() + other.len());
    let (mut preferred, mut other) = (preferred.into_iter(), other.into_iter());
    loop {
        match (preferred.next(), other.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Connects to the first of `addresses` that accepts (at most [`CONNECT_ADDRESSES_MAX`]),
/// racing them RFC 8305 style. Dropping the future abandons every attempt.
async fn race(addresses: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut waiting = addresses.iter().copied().take(CONNECT_ADDRESSES_MAX).peekable();
    let mut attempts: tokio::task::JoinSet<(SocketAddr, std::io::Result<TcpStream>)> = tokio::task::JoinSet::new();
    let mut errors: Vec<(SocketAddr, String)> = Vec::new();
    let start = |attempts: &mut tokio::task::JoinSet<_>, address: SocketAddr| {
        attempts.spawn(async move { (address, TcpStream::connect(address).await) });
    };
    let mut next_start = Instant::now();
    loop {
        if attempts.is_empty() {
            match waiting.next() {
                Some(address) => {
                    start(&mut attempts, address);
                    next_start = Instant::now() + CONNECTION_ATTEMPT_DELAY;
                }
                None => break,
            }
        }
        let more = waiting.peek().is_some();
        tokio::select! {
            joined = attempts.join_next() => match joined {
                Some(Ok((_, Ok(stream)))) => return Ok(stream),
                Some(Ok((address, Err(error)))) => {
                    errors.push((address, error.to_string()));
                    // A failed attempt hands over at once.
                    if let Some(address) = waiting.next() {
                        start(&mut attempts, address);
                        next_start = Instant::now() + CONNECTION_ATTEMPT_DELAY;
                    }
                }
                Some(Err(error)) => errors.push((addresses[0], error.to_string())),
                None => {}
            },
            () = tokio::time::sleep_until(next_start), if more => {
                if let Some(address) = waiting.next() {
                    start(&mut attempts, address);
                    next_start = Instant::now() + CONNECTION_ATTEMPT_DELAY;
                }
            }
        }
    }
    Err(match errors.as_slice() {
        [] => "no address to connect to".to_string(),
        [(_, only)] => only.clone(),
        many => many
            .iter()
            .map(|(address, error)| format!("{address}: {error}"))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// A random 64-bit value from the standard library's OS-seeded hasher keys (query ids, nonces).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::{TcpListener, TcpSocket};

    use super::*;

    /// A loopback address whose SYNs go unanswered, like a blackholed route: a listener with
    /// a backlog of 0 that never accepts, its queue filled until a connect hangs (Linux drops
    /// SYNs to a full accept queue). The connections filling it are returned to be kept.
    async fn blackhole() -> Option<(TcpSocket, std::net::TcpListener, Vec<TcpStream>, SocketAddr)> {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let address = socket.local_addr().expect("address");
        let listener = socket.listen(0).expect("listen");
        let listener = listener.into_std().expect("std listener");
        let mut filling = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(address)).await {
                Ok(Ok(stream)) => filling.push(stream),
                Ok(Err(_)) => return None,
                Err(_) => {
                    let keep = TcpSocket::new_v4().expect("socket");
                    return Some((keep, listener, filling, address));
                }
            }
        }
        None
    }

    #[tokio::test]
    async fn a_blackholed_first_address_costs_the_attempt_delay_not_the_timeout() {
        let Some((_socket, _listener, _filling, dead)) = blackhole().await else {
            eprintln!("SKIP: this kernel answers SYNs to a full accept queue; no blackhole to test with");
            return;
        };
        let good = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let good_address = good.local_addr().expect("address");
        let started = Instant::now();
        // Sequential attempts (std's loop) would hang on the first for a minute or more.
        let stream = tokio::time::timeout(Duration::from_secs(3), race(&[dead, good_address]))
            .await
            .expect("the second address is raced after the attempt delay")
            .expect("connected");
        assert_eq!(stream.peer_addr().expect("peer"), good_address);
        let took = started.elapsed();
        assert!(
            took >= CONNECTION_ATTEMPT_DELAY,
            "the first address had its head start: {took:?}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn a_refused_address_hands_over_at_once_and_errors_name_each_address() {
        let good = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let good_address = good.local_addr().expect("address");
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let refused = closed.local_addr().expect("address");
        drop(closed);
        let started = Instant::now();
        let stream = race(&[refused, good_address]).await.expect("connected");
        assert_eq!(stream.peer_addr().expect("peer"), good_address);
        assert!(started.elapsed() < CONNECTION_ATTEMPT_DELAY, "{:?}", started.elapsed());

        let error = race(&[refused]).await.expect_err("refused");
        assert!(error.contains("refused"), "{error}");
        assert!(
            !error.contains(&refused.to_string()),
            "one address: just the error, {error}"
        );
        let error = race(&[refused, refused]).await.expect_err("refused");
        assert_eq!(error.matches(&refused.to_string()).count(), 2, "{error}");
    }

    #[tokio::test]
    async fn names_are_looked_up_and_ip_literals_are_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        // localhost may give ::1 first, where nothing listens: refused, then 127.0.0.1.
        connect(&format!("localhost:{port}")).await.expect("localhost");
        connect(&format!("127.0.0.1:{port}")).await.expect("literal");
        assert_eq!(
            resolve("[::1]:80").await.expect("literal"),
            vec![SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 80))]
        );
        let error = connect("name.invalid:80")
            .await
            .expect_err("RFC 6761: .invalid never resolves");
        assert!(error.starts_with("connect name.invalid:80: "), "{error}");
    }

    #[test]
    fn families_alternate_from_the_preferred_one() {
        let v6 = |last: u16| SocketAddr::from((std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last), 80));
        let v4 = |last: u8| SocketAddr::from(([192, 0, 2, last], 80));
        assert_eq!(
            interleave(vec![v6(1), v6(2), v6(3), v4(1), v4(2), v6(1)]),
            vec![v6(1), v4(1), v6(2), v4(2), v6(3)]
        );
        assert_eq!(interleave(vec![v4(1), v4(2), v6(1)]), vec![v4(1), v6(1), v4(2)]);
        assert_eq!(interleave(vec![]), vec![]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_lookups_return_on_time_and_hold_at_most_their_slots() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut probes = tokio::task::JoinSet::new();
        for _ in 0..LOOKUPS_MAX * 2 {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            probes.spawn(tokio::time::timeout(
                Duration::from_millis(200),
                lookup("hung.example".into(), 80, move |_: &str, _: u16| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    // A resolver that does not answer.
                    std::thread::sleep(Duration::from_millis(1500));
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok(Vec::new())
                }),
            ));
        }
        while let Some(result) = probes.join_next().await {
            assert!(result.expect("task").is_err(), "cut at its timeout");
        }
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "every caller returned at its timeout, not with its lookup: {:?}",
            started.elapsed()
        );
        // Give waiting callers' lookups no chance to start late: they were dropped with them.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let most = most.load(Ordering::SeqCst);
        assert!(most <= LOOKUPS_MAX, "{most} lookups ran at once");
        assert!(most >= 1);
    }

    #[test]
    fn cut_keeps_short_text_and_marks_the_cut() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
        assert_eq!(cut("ééééé", 4), "ééé…");
        assert_eq!(cut("", 0), "");
        let long = "x".repeat(REPLY_BYTES_MAX);
        let shown = shown(&long);
        assert_eq!(shown.chars().count(), SHOWN_CHARS_MAX);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn shown_rows_shows_a_few_short_rows_and_counts_the_rest() {
        assert_eq!(shown_rows(&[]), "no rows");
        assert_eq!(shown_rows(&[vec![Some("2".into()), None]]), "1 row ('2', NULL)");
        let wide: Vec<Option<String>> = (0..1000).map(|_| Some("v".repeat(10_000))).collect();
        let rows = vec![wide; 1000];
        let text = shown_rows(&rows);
        assert!(text.starts_with("1000 rows ("), "{text}");
        assert!(text.ends_with("… 997 more"), "{text}");
        assert!(
            text.chars().count() <= SHOWN_ROWS_MAX * (SHOWN_CHARS_MAX + 1) + 30,
            "{} characters",
            text.chars().count()
        );
    }

    #[test]
    fn an_unknown_lag_fails_a_bound_and_says_why() {
        let unknown = judge_lag(
            Finding::up("PONG, role slave, master link down, lag unknown"),
            Some(1000),
        );
        assert!(!unknown.success);
        assert!(
            unknown.detail.ends_with("max_replica_lag_ms = 1000 needs a known lag"),
            "{}",
            unknown.detail
        );
        let fine = judge_lag(Finding::up("x").with_lag(Some(1000)), Some(1000));
        assert!(fine.success);
        let above = judge_lag(Finding::up("x").with_lag(Some(1001)), Some(1000));
        assert!(!above.success);
        assert!(judge_lag(Finding::up("x"), None).success);
    }
}
