//! The DNS server over real sockets, in process: UDP and TCP answers, truncation then TCP, the
//! admin API's generation fence, reloads that reject a bad file, response rate limiting and the
//! TCP connection limits (in all and per client).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dns::rrl::RateLimitConfig;
use dns::{HealthView, Limits, Options, Sockets, State};
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

const DEADLINE_MS: u64 = 10_000;

const CONFIG: &str = include_str!("../data/shop.toml");

/// Attempts at finding a port free for both UDP and TCP.
const PORT_ATTEMPTS_MAX: usize = 50;

/// A UDP socket on a free port and a TCP listener on the same port. The kernel picks the UDP
/// port; TCP's port space is separate, so that port may be taken for TCP (another process's
/// connection): then try another.
async fn udp_and_tcp_on_one_port() -> (UdpSocket, TcpListener) {
    for _ in 0..PORT_ATTEMPTS_MAX {
        // As `switchyard dns` binds it: each UDP worker then gets a socket of its own.
        let udp = dns::bind_udp("127.0.0.1:0".parse().expect("address")).expect("bind udp");
        udp.set_nonblocking(true).expect("non-blocking");
        let udp = UdpSocket::from_std(udp).expect("tokio socket");
        let address = udp.local_addr().expect("addr");
        match TcpListener::bind(address).await {
            Ok(tcp) => return (udp, tcp),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(error) => panic!("bind tcp on {address}: {error}"),
        }
    }
    panic!("no port free for both UDP and TCP in {PORT_ATTEMPTS_MAX} attempts");
}

struct Server {
    dns: SocketAddr,
    admin: SocketAddr,
    state: Arc<State>,
    config: tempfile::NamedTempFile,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(token: Option<&str>) -> Server {
        Server::start_with(token, Limits::default(), 2).await
    }

    async fn start_with(token: Option<&str>, limits: Limits, udp_workers: usize) -> Server {
        Server::start_config(token, limits, udp_workers, CONFIG).await
    }

    async fn start_config(token: Option<&str>, limits: Limits, udp_workers: usize, text: &str) -> Server {
        let config = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(config.path(), text).expect("write config");
        let parsed = dns::load(config.path()).expect("valid config");
        let (udp, tcp) = udp_and_tcp_on_one_port().await;
        let dns = udp.local_addr().expect("addr");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let admin_address = admin.local_addr().expect("addr");
        let state = Arc::new(State::new(
            parsed.zones,
            HealthView::default(),
            token.map(str::to_string),
            None,
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = Options {
            token: token.map(str::to_string),
            state_dir: None,
            config_path: Some(config.path().to_path_buf()),
            reload_interval_ms: 50,
            udp_workers,
            seed: 1,
            limits,
            admin_tls: None,
        };
        let task = tokio::spawn(dns::server::run_with_state(
            Sockets { udp, tcp, admin },
            Arc::clone(&state),
            options,
            async move {
                let _ = stopped.await;
            },
        ));
        Server {
            dns,
            admin: admin_address,
            state,
            config,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), self.task)
            .await
            .expect("server stops in time");
        result.expect("no panic").expect("clean stop");
    }
}

fn query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(77)
        .set_message_type(MessageType::Query)
        .add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
    if let Some(payload) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(payload);
        message.set_edns(opt);
    }
    message.to_vec().expect("encode")
}

async fn udp(server: SocketAddr, packet: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.send_to(packet, server).await.expect("send");
    let mut buffer = vec![0u8; 65_535];
    let (length, _) = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), socket.recv_from(&mut buffer))
        .await
        .expect("answer in time")
        .expect("recv");
    Message::from_vec(&buffer[..length]).expect("parse")
}

async fn tcp(server: SocketAddr, packet: &[u8]) -> Message {
    let mut stream = TcpStream::connect(server).await.expect("connect");
    stream
        .write_all(&(packet.len() as u16).to_be_bytes())
        .await
        .expect("write");
    stream.write_all(packet).await.expect("write");
    let length = stream.read_u16().await.expect("length");
    let mut buffer = vec![0u8; usize::from(length)];
    stream.read_exact(&mut buffer).await.expect("read");
    Message::from_vec(&buffer).expect("parse")
}

/// A bare HTTP/1.1 request; returns the status and body.
async fn http(address: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn addresses(message: &Message) -> Vec<String> {
    message.answers().iter().map(|r| r.data().to_string()).collect()
}

#[tokio::test]
async fn answers_over_udp_and_tcp_and_truncates_then_serves_over_tcp() {
    let server = Server::start(None).await;
    let a = udp(server.dns, &query("ns1.shop.example.", RecordType::A, None)).await;
    assert_eq!(addresses(&a), ["192.0.2.53"]);
    assert!(a.authoritative());
    let truncated = udp(server.dns, &query("big.shop.example.", RecordType::TXT, None)).await;
    assert!(truncated.truncated());
    let whole = tcp(server.dns, &query("big.shop.example.", RecordType::TXT, None)).await;
    assert!(!whole.truncated());
    assert_eq!(whole.answers().len(), 3);
    let edns = udp(server.dns, &query("big.shop.example.", RecordType::TXT, Some(1232))).await;
    assert!(!edns.truncated(), "about 700 bytes fit the EDNS size");
    server.stop().await;
}

/// `query` with an EDNS(0) padding option (RFC 7830) that makes it `total` bytes long.
fn padded_query(name: &str, total: usize) -> Vec<u8> {
    let mut packet = query(name, RecordType::A, Some(1232));
    // The OPT record ends the packet with its RDLENGTH (0): the option goes in its RDATA.
    let option_bytes = total - packet.len();
    let rdlength = packet.len() - 2;
    packet[rdlength..].copy_from_slice(&u16::try_from(option_bytes).expect("fits").to_be_bytes());
    packet.extend_from_slice(&12u16.to_be_bytes());
    packet.extend_from_slice(&u16::try_from(option_bytes - 4).expect("fits").to_be_bytes());
    packet.resize(total, 0);
    packet
}

/// Queries of any size a transport can carry are answered: over TCP up to the 65,535 bytes
/// the length prefix allows, over UDP up to the largest IPv4 payload; a zero-length TCP
/// message closes the connection.
#[tokio::test]
async fn queries_beyond_4096_bytes_are_answered_over_tcp_and_udp() {
    let server = Server::start(None).await;
    for total in [4_097, 20_000, 65_535] {
        let packet = padded_query("ns1.shop.example.", total);
        assert_eq!(packet.len(), total);
        Message::from_vec(&packet).expect("the padded query parses");
        let answer = tcp(server.dns, &packet).await;
        assert_eq!(addresses(&answer), ["192.0.2.53"], "{total} bytes over TCP");
    }
    // Two in a row on one connection: the buffer follows each announced length.
    let mut stream = TcpStream::connect(server.dns).await.expect("connect");
    for total in [30_000, 100] {
        let packet = if total > 1_000 {
            padded_query("ns1.shop.example.", total)
        } else {
            query("ns1.shop.example.", RecordType::A, None)
        };
        assert_eq!(addresses(&ask_on(&mut stream, &packet).await), ["192.0.2.53"]);
    }
    // The largest UDP payload over IPv4 (65,535 - 8 - 20 bytes).
    for total in [4_097, 65_507] {
        let answer = udp(server.dns, &padded_query("ns1.shop.example.", total)).await;
        assert_eq!(addresses(&answer), ["192.0.2.53"], "{total} bytes over UDP");
        assert_eq!(answer.response_code(), ResponseCode::NoError);
    }
    let mut stream = TcpStream::connect(server.dns).await.expect("connect");
    stream.write_all(&[0, 0]).await.expect("write");
    let mut rest = Vec::new();
    // Closed (Ok) or reset (Err): either way, no answer and no hang.
    let _closed_or_reset = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), stream.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    assert!(rest.is_empty());
    let after = udp(server.dns, &query("ns1.shop.example.", RecordType::A, None)).await;
    assert_eq!(after.response_code(), ResponseCode::NoError);
    server.stop().await;
}

#[tokio::test]
async fn health_pushes_flip_failover_and_stale_generations_get_409() {
    let token = "secret-token-for-tests";
    let server = Server::start(Some(token)).await;
    let app = || query("app.shop.example.", RecordType::A, None);
    assert_eq!(addresses(&udp(server.dns, &app()).await), ["192.0.2.10"]);
    let push = r#"{"generation": 4, "targets": {"us-east-1": "unhealthy"}}"#;
    assert_eq!(http(server.admin, "PUT", "/v1/health", None, push).await.0, 401);
    let (status, body) = http(server.admin, "PUT", "/v1/health", Some(token), push).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(addresses(&udp(server.dns, &app()).await), ["198.51.100.10"]);
    let stale = r#"{"generation": 3, "targets": {"us-east-1": "healthy"}}"#;
    let (status, body) = http(server.admin, "PUT", "/v1/health", Some(token), stale).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("stale_generation"));
    assert_eq!(addresses(&udp(server.dns, &app()).await), ["198.51.100.10"]);
    let (status, body) = http(server.admin, "GET", "/v1/health", None, "").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""generation":4"#), "{body}");
    let (status, metrics) = http(server.admin, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("switchyard_dns_view_generation 4"), "{metrics}");
    server.stop().await;
}

/// A push with `if_generation` applies only while the view is still at that generation: a
/// controller that read the view pushes nothing over a push that landed since its read.
#[tokio::test]
async fn a_conditional_push_is_refused_with_412_once_the_view_moved() {
    let token = "secret-token-for-tests";
    let server = Server::start(Some(token)).await;
    let app = || query("app.shop.example.", RecordType::A, None);
    let first = r#"{"generation": 4, "targets": {"us-east-1": "unhealthy"}}"#;
    assert_eq!(http(server.admin, "PUT", "/v1/health", Some(token), first).await.0, 200);
    // Read at generation 4; another push (generation 5) lands; the conditional one is refused.
    let landed = r#"{"generation": 5, "name": "_active-region.shop.example.", "value": "eu-west-1"}"#;
    assert_eq!(http(server.admin, "PUT", "/v1/txt", Some(token), landed).await.0, 200);
    let conditional = r#"{"generation": 6, "if_generation": 4, "targets": {"us-east-1": "healthy"}}"#;
    let (status, body) = http(server.admin, "PUT", "/v1/health", Some(token), conditional).await;
    assert_eq!(status, 412, "{body}");
    assert!(
        body.contains("generation_moved") && body.contains(r#""generation":5"#),
        "{body}"
    );
    let txt = r#"{"generation": 6, "if_generation": 4, "name": "_active-region.shop.example.", "value": "us-east-1"}"#;
    assert_eq!(http(server.admin, "PUT", "/v1/txt", Some(token), txt).await.0, 412);
    assert_eq!(
        addresses(&udp(server.dns, &app()).await),
        ["198.51.100.10"],
        "nothing applied"
    );
    // At the generation it names, the conditional push applies.
    let current = r#"{"generation": 6, "if_generation": 5, "targets": {"us-east-1": "healthy"}}"#;
    let (status, body) = http(server.admin, "PUT", "/v1/health", Some(token), current).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(addresses(&udp(server.dns, &app()).await), ["192.0.2.10"]);
    let (_, metrics) = http(server.admin, "GET", "/metrics", None, "").await;
    assert!(metrics.contains(r#"outcome="moved"} 2"#), "{metrics}");
    server.stop().await;
}

/// A pushed TXT record makes its parents exist (NODATA, not NXDOMAIN: RFC 8020), and ends a
/// wildcard's cover of its name (RFC 4592 §2.2.1), as names in the config do.
#[tokio::test]
async fn pushed_txt_names_exist_with_their_parents_and_are_not_wildcard_covered() {
    let token = "secret-token-for-tests";
    let server = Server::start(Some(token)).await;
    let push = r#"{"generation": 1, "name": "_active-region._sy.shop.example.", "value": "eu-west-1"}"#;
    assert_eq!(http(server.admin, "PUT", "/v1/txt", Some(token), push).await.0, 200);
    let parent = udp(server.dns, &query("_sy.shop.example.", RecordType::A, None)).await;
    assert_eq!(parent.response_code(), ResponseCode::NoError);
    assert!(parent.answers().is_empty());
    let pointer = udp(
        server.dns,
        &query("_active-region._sy.shop.example.", RecordType::TXT, None),
    )
    .await;
    assert_eq!(addresses(&pointer), ["eu-west-1"]);
    let wild = query("foo.eu.shop.example.", RecordType::A, None);
    assert_eq!(addresses(&udp(server.dns, &wild).await), ["198.51.100.40"]);
    let push = r#"{"generation": 2, "name": "foo.eu.shop.example.", "value": "v"}"#;
    assert_eq!(http(server.admin, "PUT", "/v1/txt", Some(token), push).await.0, 200);
    let pushed = udp(server.dns, &wild).await;
    assert_eq!(pushed.response_code(), ResponseCode::NoError);
    assert!(pushed.answers().is_empty(), "NODATA, not the wildcard's A: {pushed:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_generation_far_ahead_is_refused_and_later_pushes_still_apply() {
    let token = "secret-token-for-tests";
    let server = Server::start(Some(token)).await;
    let app = || query("app.shop.example.", RecordType::A, None);
    let push = r#"{"generation": 4, "targets": {"us-east-1": "unhealthy"}}"#;
    assert_eq!(http(server.admin, "PUT", "/v1/health", Some(token), push).await.0, 200);
    let far = format!(
        r#"{{"generation": {}, "targets": {{"us-east-1": "healthy"}}}}"#,
        u64::MAX
    );
    let (status, body) = http(server.admin, "PUT", "/v1/health", Some(token), &far).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("generation_too_far_ahead"), "{body}");
    let txt = format!(
        r#"{{"generation": {}, "name": "_active-region.shop.example.", "value": "x"}}"#,
        4 + dns::view::GENERATION_STEP_MAX + 1
    );
    let (status, body) = http(server.admin, "PUT", "/v1/txt", Some(token), &txt).await;
    assert_eq!(status, 400, "{body}");
    // Nothing changed: the answer, the generation, and the next genuine push applies.
    assert_eq!(addresses(&udp(server.dns, &app()).await), ["198.51.100.10"]);
    let (_, body) = http(server.admin, "GET", "/v1/health", None, "").await;
    assert!(
        body.contains(r#""generation":4"#) && !body.contains("_active-region"),
        "{body}"
    );
    let next = r#"{"generation": 5, "targets": {"us-east-1": "healthy"}}"#;
    assert_eq!(http(server.admin, "PUT", "/v1/health", Some(token), next).await.0, 200);
    assert_eq!(addresses(&udp(server.dns, &app()).await), ["192.0.2.10"]);
    server.stop().await;
}

#[tokio::test]
async fn reload_swaps_good_files_and_rejects_bad_ones() {
    let server = Server::start(None).await;
    let extra = "\n[[dns.zones.records]]\nname = \"new\"\ntype = \"A\"\nvalues = [\"192.0.2.77\"]\n";
    std::fs::write(server.config.path(), format!("{CONFIG}{extra}")).expect("write");
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
    loop {
        let answer = udp(server.dns, &query("new.shop.example.", RecordType::A, None)).await;
        if addresses(&answer) == ["192.0.2.77"] {
            break;
        }
        assert!(Instant::now() < deadline, "reload not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(server.config.path(), format!("{CONFIG}{extra}\nbroken = \n")).expect("write");
    assert!(!dns::server::reload(server.config.path(), &server.state));
    let answer = udp(server.dns, &query("new.shop.example.", RecordType::A, None)).await;
    assert_eq!(addresses(&answer), ["192.0.2.77"], "the old zones keep serving");
    server.stop().await;
}

/// Opens `count` TCP connections to `server` and waits until it holds them.
async fn hold_tcp_connections(server: &Server, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..count {
        held.push(TcpStream::connect(server.dns).await.expect("connect"));
    }
    wait_for_tcp_connections(server, count as i64).await;
    held
}

/// Whether the server closed `stream` (or reset it) within `wait_ms`, sending nothing.
async fn closed_within(stream: &mut TcpStream, wait_ms: u64) -> bool {
    let mut rest = Vec::new();
    match tokio::time::timeout(Duration::from_millis(wait_ms), stream.read_to_end(&mut rest)).await {
        Ok(_closed_or_reset) => rest.is_empty(),
        Err(_) => false,
    }
}

/// Asks `query` on an open connection and reads the answer.
async fn ask_on(stream: &mut TcpStream, packet: &[u8]) -> Message {
    stream
        .write_all(&(packet.len() as u16).to_be_bytes())
        .await
        .expect("write");
    stream.write_all(packet).await.expect("write");
    let length = stream.read_u16().await.expect("an answer, not a close");
    let mut buffer = vec![0u8; usize::from(length)];
    stream.read_exact(&mut buffer).await.expect("read");
    Message::from_vec(&buffer).expect("parse")
}

/// RFC 7766 §6.2.3: with every slot held by idle connections (the attack: 256 connections,
/// each asking now and then), a new client is served and the connection idle longest is closed
/// to make room, rather than the new client being turned away.
#[tokio::test]
async fn with_every_tcp_slot_held_the_idlest_connection_makes_room() {
    let limits = Limits {
        tcp_connections_per_client_max: dns::server::TCP_CONNECTIONS_MAX,
        // No closing for being idle during the test: only eviction makes room.
        tcp_idle_timeout_ms: 120_000,
        tcp_idle_timeout_busy_ms: 120_000,
        ..Limits::default()
    };
    let server = Server::start_with(None, limits, 2).await;
    let mut held = hold_tcp_connections(&server, dns::server::TCP_CONNECTIONS_MAX).await;
    // The oldest connection asks a question, so the second oldest is now the idlest.
    let ns1 = query("ns1.shop.example.", RecordType::A, None);
    assert_eq!(addresses(&ask_on(&mut held[0], &ns1).await), ["192.0.2.53"]);
    // Another client (the first holds every slot it may): served at once.
    let mut other = connect_from("127.0.0.2", server.dns).await;
    assert_eq!(
        addresses(&ask_on(&mut other, &ns1).await),
        ["192.0.2.53"],
        "the new client is served"
    );
    assert!(
        closed_within(&mut held[1], DEADLINE_MS).await,
        "the connection idle longest is closed"
    );
    assert_eq!(
        addresses(&ask_on(&mut held[0], &ns1).await),
        ["192.0.2.53"],
        "the one that asked stays"
    );
    let metrics = server.state.metrics.encode();
    assert!(
        metrics.contains("switchyard_dns_dropped_packets_total{reason=\"tcp_idle_evicted\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("reason=\"tcp_connection_limit\""), "{metrics}");
    held.clear();
    drop(other);
    wait_for_tcp_connections(&server, 0).await;
    server.stop().await;
}

/// RFC 7766 §6.2.3: under pressure (more than half the slots open) idle connections are closed
/// after the short idle timeout, not the normal one.
#[tokio::test]
async fn under_pressure_idle_tcp_connections_are_closed_sooner() {
    let limits = Limits {
        tcp_connections_per_client_max: dns::server::TCP_CONNECTIONS_MAX,
        ..Limits::default()
    };
    let server = Server::start_with(None, limits, 2).await;
    let mut calm = hold_tcp_connections(&server, 1).await;
    let mut crowd = hold_tcp_connections(&server, dns::server::TCP_CONNECTIONS_BUSY).await;
    wait_for_tcp_connections(&server, dns::server::TCP_CONNECTIONS_BUSY as i64 + 1).await;
    // Opened before the pressure started, the first connection gets the short timeout too.
    assert!(
        closed_within(&mut calm[0], dns::server::TCP_IDLE_TIMEOUT_MS / 2).await,
        "an idle connection under pressure is closed well before TCP_IDLE_TIMEOUT_MS"
    );
    for stream in &mut crowd {
        assert!(closed_within(stream, DEADLINE_MS).await);
    }
    wait_for_tcp_connections(&server, 0).await;
    let metrics = server.state.metrics.encode();
    assert!(metrics.contains("reason=\"tcp_idle_timeout\""), "{metrics}");
    // Without pressure, a connection is given the normal timeout.
    let mut alone = hold_tcp_connections(&server, 1).await;
    assert!(
        !closed_within(&mut alone[0], dns::server::TCP_IDLE_TIMEOUT_BUSY_MS * 2).await,
        "not closed after the short timeout without pressure"
    );
    server.stop().await;
}

/// Waits until the server holds `count` TCP connections.
async fn wait_for_tcp_connections(server: &Server, count: i64) {
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
    while server.state.metrics.tcp_connections.get() != count {
        assert!(
            Instant::now() < deadline,
            "{} TCP connections open, expected {count}",
            server.state.metrics.tcp_connections.get()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP connection to `server` from the local address `source`.
async fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source address"))
        .expect("bind the source address");
    socket.connect(server).await.expect("connect")
}

#[tokio::test]
async fn one_client_cannot_hold_every_tcp_slot() {
    let limits = Limits {
        tcp_connections_per_client_max: 4,
        ..Limits::default()
    };
    let server = Server::start_with(None, limits, 2).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.1", server.dns).await);
    }
    wait_for_tcp_connections(&server, 4).await;
    let mut refused = connect_from("127.0.0.1", server.dns).await;
    let mut rest = Vec::new();
    // Closed (Ok) or reset (Err): either way no answer, and at once rather than at the idle timeout.
    let _closed_or_reset = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), refused.read_to_end(&mut rest))
        .await
        .expect("the fifth connection of one client is closed at once");
    assert!(rest.is_empty());
    let metrics = server.state.metrics.encode();
    assert!(
        metrics.contains("switchyard_dns_dropped_packets_total{reason=\"tcp_client_connection_limit\"} 1"),
        "{metrics}"
    );
    // Another client still gets answers while the first one holds its four.
    let mut other = connect_from("127.0.0.3", server.dns).await;
    let packet = query("ns1.shop.example.", RecordType::A, None);
    other
        .write_all(&(packet.len() as u16).to_be_bytes())
        .await
        .expect("write");
    other.write_all(&packet).await.expect("write");
    let length = other.read_u16().await.expect("an answer, not a close");
    let mut buffer = vec![0u8; usize::from(length)];
    other.read_exact(&mut buffer).await.expect("read");
    assert_eq!(addresses(&Message::from_vec(&buffer).expect("parse")), ["192.0.2.53"]);
    // Once the first client lets one go, it may open another.
    held.pop();
    drop(other);
    wait_for_tcp_connections(&server, 3).await;
    let answer = tcp(server.dns, &query("ns1.shop.example.", RecordType::A, None)).await;
    assert_eq!(addresses(&answer), ["192.0.2.53"]);
    server.stop().await;
}

/// One UDP answer (or the timeout of `wait_ms`) for each of `packets`, sent from `socket` all at
/// once; answers are matched to queries by id.
async fn udp_burst(socket: &UdpSocket, server: SocketAddr, packets: &[Vec<u8>], marker_id: u16) -> Vec<Message> {
    for packet in packets {
        socket.send_to(packet, server).await.expect("send");
    }
    let mut answers = Vec::new();
    let mut buffer = vec![0u8; 65_535];
    loop {
        let (length, _) = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), socket.recv_from(&mut buffer))
            .await
            .expect("the marker's answer in time")
            .expect("recv");
        let message = Message::from_vec(&buffer[..length]).expect("parse");
        if message.id() == marker_id {
            return answers;
        }
        answers.push(message);
    }
}

fn query_with_id(name: &str, rtype: RecordType, id: u16) -> Vec<u8> {
    let mut message = Message::from_vec(&query(name, rtype, Some(1232))).expect("own query");
    message.set_id(id);
    message.to_vec().expect("encode")
}

#[tokio::test]
async fn udp_answers_beyond_the_rate_are_dropped_or_slipped_and_tcp_still_answers() {
    let limits = Limits {
        rate_limit: RateLimitConfig {
            responses_per_second: 5,
            slip: 2,
            ..RateLimitConfig::default()
        },
        ..Limits::default()
    };
    // One worker answers in the order queries arrive, so the marker's answer comes last.
    let server = Server::start_with(None, limits, 1).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let flood_size = 40u16;
    let mut packets: Vec<Vec<u8>> = (0..flood_size)
        .map(|id| query_with_id("big.shop.example.", RecordType::TXT, id))
        .collect();
    // Another name is another account: it is answered, and marks the end of the burst.
    let marker = 1_000;
    packets.push(query_with_id("ns1.shop.example.", RecordType::A, marker));
    let answers = udp_burst(&socket, server.dns, &packets, marker).await;
    let full: Vec<&Message> = answers.iter().filter(|m| !m.answers().is_empty()).collect();
    let slipped: Vec<&Message> = answers.iter().filter(|m| m.answers().is_empty()).collect();
    // Five a second; a slow machine may earn a little more credit while the burst lasts.
    assert!(
        (5..flood_size as usize / 2).contains(&full.len()),
        "{} full answers",
        full.len()
    );
    assert!(!slipped.is_empty(), "every second limited answer is sent truncated");
    for message in &slipped {
        assert!(message.truncated(), "{message:?}");
        assert_eq!(message.queries()[0].name().to_ascii(), "big.shop.example.");
        assert!(
            message.to_vec().expect("encode").len() <= packets[0].len(),
            "no larger than the query"
        );
    }
    let limited = usize::from(flood_size) - full.len();
    let dropped = limited - slipped.len();
    assert!(dropped >= slipped.len(), "slip 2: at most every second one is sent");
    let metrics = server.state.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "switchyard_dns_rate_limited_responses_total{{action=\"slipped\"}} {}",
            slipped.len()
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "switchyard_dns_rate_limited_responses_total{{action=\"dropped\"}} {dropped}"
        )),
        "{metrics}"
    );
    // TCP proves the address: never limited.
    let whole = tcp(server.dns, &query("big.shop.example.", RecordType::TXT, None)).await;
    assert_eq!(whole.answers().len(), 3);
    // Another /24 has its own account.
    let other = UdpSocket::bind("127.0.1.1:0").await.expect("bind another block");
    other
        .send_to(&query("big.shop.example.", RecordType::TXT, Some(1232)), server.dns)
        .await
        .expect("send");
    let mut buffer = vec![0u8; 65_535];
    let (length, _) = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), other.recv_from(&mut buffer))
        .await
        .expect("answer in time")
        .expect("recv");
    assert_eq!(Message::from_vec(&buffer[..length]).expect("parse").answers().len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn normal_traffic_is_not_limited_by_default() {
    let server = Server::start(None).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    // Twenty identical queries at once: below the default of 50 a second.
    let marker = 1_000;
    let mut packets: Vec<Vec<u8>> = (0..20)
        .map(|id| query_with_id("ns1.shop.example.", RecordType::A, id))
        .collect();
    packets.push(query_with_id("app.shop.example.", RecordType::A, marker));
    let mut answered = 0;
    let mut buffer = vec![0u8; 65_535];
    for packet in &packets {
        socket.send_to(packet, server.dns).await.expect("send");
    }
    while answered < packets.len() {
        let (length, _) = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), socket.recv_from(&mut buffer))
            .await
            .expect("every answer in time")
            .expect("recv");
        let message = Message::from_vec(&buffer[..length]).expect("parse");
        assert!(!message.truncated() && !message.answers().is_empty(), "{message:?}");
        answered += 1;
    }
    assert!(!server.state.metrics.encode().contains("rate_limited_responses_total{"));
    server.stop().await;
}

/// The fuzz target's seed corpus (`fuzz/seeds/dns_packet`: real queries made with dnspython),
/// through the same entry point as the fuzz target: every seed gets an answer that parses and,
/// over UDP, fits the payload limit.
#[test]
fn the_fuzz_seeds_are_answered() {
    use hickory_proto::op::{Message, ResponseCode};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("docs/examples/dns.toml")).expect("example config");
    let zones = dns::parse(&text, "docs/examples/dns.toml").expect("valid").zones;
    let view = dns::HealthView::default();
    let client = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let mut seeds: Vec<_> = std::fs::read_dir(root.join("fuzz/seeds/dns_packet"))
        .expect("seed directory")
        .map(|entry| entry.expect("entry").path())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 10, "{seeds:?}");
    let mut codes = Vec::new();
    for seed in &seeds {
        let bytes = std::fs::read(seed).expect("seed");
        let response = dns::handle_packet(
            &zones,
            &view,
            &bytes,
            dns::Transport::Udp,
            client,
            7,
            1_700_000_000,
            &Default::default(),
        )
        .unwrap_or_else(|| panic!("{} gets an answer", seed.display()));
        for wire in &response.wire {
            assert!(wire.len() <= usize::from(dns::answer::UDP_PAYLOAD_BYTES_MAX));
            let message = Message::from_vec(wire).expect("the answer parses");
            codes.push((
                seed.file_name().expect("name").to_string_lossy().to_string(),
                message.response_code(),
            ));
        }
    }
    let code = |name: &str| codes.iter().find(|(n, _)| n == name).map(|(_, c)| *c);
    assert_eq!(code("a-www"), Some(ResponseCode::NoError), "{codes:?}");
    assert_eq!(code("nxdomain"), Some(ResponseCode::NXDomain), "{codes:?}");
    assert_eq!(code("outside-zone"), Some(ResponseCode::Refused), "{codes:?}");
}

/// Admin requests fuzzed per test run (each is two pushes: health and TXT).
const ADMIN_FUZZ_CASES: usize = 200;

/// Arbitrary admin bodies — raw text, and pushes whose generations, names and values are
/// arbitrary (u64::MAX included) — are each answered 200, 400 or 409, never a crash; the
/// view's generation never goes back, nor jumps more than 2^32 at once; DNS still answers.
#[tokio::test]
async fn arbitrary_admin_bodies_are_answered_and_never_move_the_generation_back() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    let token = "secret-token-for-tests";
    let server = Server::start(Some(token)).await;
    let generation = prop_oneof![Just(u64::MAX), Just(0u64), 0u64..16, any::<u64>()];
    let name = prop_oneof![
        Just("_active-region.shop.example.".to_string()),
        Just("app.shop.example".to_string()),
        "[a-z0-9._-]{0,40}",
        ".{0,20}",
    ];
    let body = prop_oneof![
        ".{0,120}",
        (
            generation.clone(),
            "[a-z0-9-]{0,12}",
            prop_oneof![Just("healthy"), Just("unhealthy"), Just("maybe")]
        )
            .prop_map(|(g, target, health)| format!(r#"{{"generation": {g}, "targets": {{"{target}": "{health}"}}}}"#)),
        (generation, name, "[ -~]{0,300}").prop_map(|(g, name, value)| {
            serde_json::json!({"generation": g, "name": name, "value": value}).to_string()
        }),
    ];
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let current = |answer: &str| {
        serde_json::from_str::<serde_json::Value>(answer).expect("JSON")["generation"]
            .as_u64()
            .expect("a generation")
    };
    let (_, answer) = http(server.admin, "GET", "/v1/health", None, "").await;
    let mut last = current(&answer);
    for _ in 0..ADMIN_FUZZ_CASES {
        let text = body.new_tree(&mut runner).expect("a case").current();
        for path in ["/v1/health", "/v1/txt"] {
            let (status, answer) = http(server.admin, "PUT", path, Some(token), &text).await;
            assert!(
                matches!(status, 200 | 400 | 409),
                "PUT {path} {text:?}: {status} {answer}"
            );
        }
        let (status, answer) = http(server.admin, "GET", "/v1/health", None, "").await;
        assert_eq!(status, 200, "{answer}");
        let generation = current(&answer);
        assert!(
            generation >= last,
            "the generation went back: {last} -> {generation} after {text:?}"
        );
        assert!(
            generation - last <= 1 << 32,
            "the generation jumped: {last} -> {generation} after {text:?}"
        );
        last = generation;
    }
    let app = query("app.shop.example.", RecordType::A, None);
    assert_eq!(addresses(&udp(server.dns, &app).await).len(), 1, "DNS still answers");
    server.stop().await;
}

/// The UDP sockets bound to `port` on this machine (Linux: `/proc/net/udp`).
fn udp_sockets_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/udp").expect("read /proc/net/udp");
    let suffix = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|local| local.ends_with(&suffix))
        })
        .count()
}

#[tokio::test]
async fn each_udp_worker_has_its_own_socket_and_all_of_them_answer() {
    let server = Server::start_with(None, Limits::default(), 2).await;
    let port = server.dns.port();
    // The workers bind their sockets as the server task starts: wait for them.
    let deadline = std::time::Instant::now() + Duration::from_millis(DEADLINE_MS);
    while udp_sockets_on(port) < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        udp_sockets_on(port),
        2,
        "two workers, two SO_REUSEPORT sockets on the port"
    );
    // The kernel spreads clients over the sockets by source port: 32 clients reach both.
    for client in 0..32 {
        let answer = udp(server.dns, &query("ns1.shop.example.", RecordType::A, None)).await;
        assert_eq!(answer.response_code(), ResponseCode::NoError, "client {client}");
        assert_eq!(answer.answers().len(), 1, "client {client} gets its answer");
    }
    server.stop().await;
    assert_eq!(udp_sockets_on(port), 0, "every worker's socket is closed at shutdown");
}

#[test]
fn bind_udp_refuses_a_port_held_by_any_socket() {
    let plain = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let held = plain.local_addr().expect("address");
    let error = dns::bind_udp(held).expect_err("the port is in use");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);

    // A second server on a port served with SO_REUSEPORT is refused too, not given a share.
    let first = dns::bind_udp("127.0.0.1:0".parse().expect("address")).expect("bind");
    let address = first.local_addr().expect("address");
    let error = dns::bind_udp(address).expect_err("the port is in use");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    drop(first);
    dns::bind_udp(address).expect("free again once closed");
}

/// A NOTIFY received by `secondary` within the deadline, with its sender.
async fn next_notify(secondary: &UdpSocket) -> (Message, SocketAddr) {
    let mut buffer = vec![0u8; 4_096];
    let (length, from) = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), secondary.recv_from(&mut buffer))
        .await
        .expect("a NOTIFY in time")
        .expect("recv");
    (Message::from_vec(&buffer[..length]).expect("parses"), from)
}

fn notify_serial(message: &Message) -> u32 {
    match message.answers().first().map(|r| r.data()) {
        Some(hickory_proto::rr::RData::SOA(soa)) => soa.serial(),
        other => panic!("no SOA in the NOTIFY: {other:?}"),
    }
}

fn acknowledge(notify: &Message) -> Vec<u8> {
    let mut reply = Message::new();
    reply
        .set_id(notify.id())
        .set_message_type(MessageType::Response)
        .set_op_code(hickory_proto::op::OpCode::Notify)
        .set_authoritative(true)
        .add_queries(notify.queries().to_vec());
    reply.to_vec().expect("encode")
}

async fn metric_line(server: &Server, wanted: &str) -> bool {
    let (_, metrics) = http(server.admin, "GET", "/metrics", None, "").await;
    metrics.lines().any(|line| line == wanted)
}

/// NOTIFY at start and after a health push that moves the serial, retransmitted with the same
/// ID until the secondary answers, then counted as acknowledged.
#[tokio::test]
async fn secondaries_are_notified_at_start_and_on_every_serial_change_until_they_answer() {
    let secondary = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let at = secondary.local_addr().expect("addr");
    let text = CONFIG.replacen("[dns]\n", &format!("[dns]\nnotify = [\"{at}\"]\n"), 1);
    assert_ne!(text, CONFIG, "the test config has a [dns] line");
    let token = "secret-token-for-tests";
    let server = Server::start_config(Some(token), Limits::default(), 1, &text).await;
    let (first, from) = next_notify(&secondary).await;
    assert_eq!(first.op_code(), hickory_proto::op::OpCode::Notify);
    assert!(first.authoritative() && first.message_type() == MessageType::Query);
    assert_eq!(
        first.queries()[0].name(),
        &Name::from_ascii("shop.example.").expect("name")
    );
    assert_eq!(first.queries()[0].query_type(), RecordType::SOA);
    let configured = notify_serial(&first);
    // Unanswered, it comes again with the same ID after the first retry interval.
    let started = Instant::now();
    let (again, _) = next_notify(&secondary).await;
    assert_eq!(again.id(), first.id());
    assert!(started.elapsed() >= Duration::from_millis(dns::notify::NOTIFY_RETRY_INITIAL_MS / 2));
    // A reply with another ID does not end it; the right one does.
    let mut wrong = Message::from_vec(&acknowledge(&again)).expect("parse");
    wrong.set_id(again.id().wrapping_add(1));
    secondary
        .send_to(&wrong.to_vec().expect("encode"), from)
        .await
        .expect("send");
    secondary.send_to(&acknowledge(&again), from).await.expect("send");
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
    while !metric_line(&server, "switchyard_dns_notifies_total{outcome=\"acknowledged\"} 1").await {
        assert!(Instant::now() < deadline, "the acknowledgement counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric_line(&server, "switchyard_dns_notifies_total{outcome=\"sent\"} 2").await);
    // A push that changes the view moves the serial: a new NOTIFY, with a new ID.
    let push = r#"{"generation": 4, "targets": {"us-east-1": "unhealthy"}}"#;
    assert_eq!(http(server.admin, "PUT", "/v1/health", Some(token), push).await.0, 200);
    let (changed, _) = next_notify(&secondary).await;
    assert_eq!(notify_serial(&changed), configured.wrapping_add(1));
    assert_ne!(changed.id(), first.id());
    secondary.send_to(&acknowledge(&changed), from).await.expect("send");
    // Queries are answered all along.
    let app = udp(server.dns, &query("app.shop.example.", RecordType::A, None)).await;
    assert_eq!(addresses(&app), ["198.51.100.10"]);
    server.stop().await;
}

/// A zone with a `notify_key` signs each NOTIFY (RFC 8945); a truncated answer over UDP sends it
/// again at once over TCP, with the same ID; the secondary's signed answer over TCP ends it.
#[tokio::test]
async fn signed_notify_falls_back_to_tcp_after_a_truncated_answer_and_takes_a_signed_answer() {
    use common::tsig::{Key, RequestCheck, ResponseSigner, verify_request};
    const SECRET: &str = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";
    let key = Key::new("notify-key", SECRET).expect("key");
    let keys = [key.clone()];
    let folder = tempfile::tempdir().expect("temp dir");
    let key_file = folder.path().join("notify.key");
    std::fs::write(
        &key_file,
        format!("key \"notify-key\" {{ algorithm hmac-sha256; secret \"{SECRET}\"; }};\n"),
    )
    .expect("write key");
    let (secondary, secondary_tcp) = udp_and_tcp_on_one_port().await;
    let at = secondary.local_addr().expect("addr");
    let settings = format!(
        "[dns]\nnotify = [\"{at}\"]\nnotify_key = \"notify-key\"\n[[dns.tsig_keys]]\nkey = {{ file = \"{}\" }}\n",
        key_file.display()
    );
    let text = CONFIG.replacen("[dns]\n", &settings, 1);
    assert_ne!(text, CONFIG, "the test config has a [dns] line");
    let server = Server::start_config(None, Limits::default(), 1, &text).await;
    // Over UDP first, signed with the key.
    let mut buffer = vec![0u8; 4_096];
    let (length, from) = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), secondary.recv_from(&mut buffer))
        .await
        .expect("a NOTIFY in time")
        .expect("recv");
    let now = dns::server::unix_now_s();
    let RequestCheck::Verified(verified) = verify_request(&buffer[..length], &keys, now) else {
        panic!("the NOTIFY over UDP is signed with notify-key");
    };
    let notify = Message::from_vec(&buffer[..length]).expect("parses");
    assert_eq!(notify.op_code(), hickory_proto::op::OpCode::Notify);
    assert_eq!(verified.key.name, "notify-key");
    // A truncated answer: the NOTIFY comes again at once, over TCP.
    let mut truncated = Message::from_vec(&acknowledge(&notify)).expect("parse");
    truncated.set_truncated(true);
    let started = Instant::now();
    secondary
        .send_to(&truncated.to_vec().expect("encode"), from)
        .await
        .expect("send");
    let (mut stream, _) = tokio::time::timeout(Duration::from_millis(DEADLINE_MS), secondary_tcp.accept())
        .await
        .expect("a NOTIFY over TCP in time")
        .expect("accept");
    assert!(
        started.elapsed() < Duration::from_millis(dns::notify::NOTIFY_RETRY_INITIAL_MS),
        "at once, not at the next retry"
    );
    let length = usize::from(stream.read_u16().await.expect("length"));
    let mut wire = vec![0u8; length];
    stream.read_exact(&mut wire).await.expect("message");
    let RequestCheck::Verified(verified) = verify_request(&wire, &keys, now) else {
        panic!("the NOTIFY over TCP is signed with notify-key");
    };
    let over_tcp = Message::from_vec(&wire).expect("parses");
    assert_eq!(over_tcp.id(), notify.id(), "the same NOTIFY");
    // An answer signed over the request's MAC ends it.
    let answer = ResponseSigner::new(verified.key, &verified.mac, now)
        .sign(&acknowledge(&over_tcp))
        .expect("signs");
    let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&answer);
    stream.write_all(&framed).await.expect("write");
    let deadline = Instant::now() + Duration::from_millis(DEADLINE_MS);
    while !metric_line(&server, "switchyard_dns_notifies_total{outcome=\"acknowledged\"} 1").await {
        assert!(Instant::now() < deadline, "the signed acknowledgement counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(metric_line(&server, "switchyard_dns_notifies_total{outcome=\"sent\"} 2").await);
    server.stop().await;
}

/// An answer to a signed NOTIFY that is unsigned, or signed with another secret, does not end
/// it: the NOTIFY is sent again.
#[tokio::test]
async fn an_unverified_answer_to_a_signed_notify_is_ignored() {
    const SECRET: &str = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";
    let folder = tempfile::tempdir().expect("temp dir");
    let key_file = folder.path().join("notify.key");
    std::fs::write(&key_file, format!("{SECRET}\n")).expect("write key");
    let secondary = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let at = secondary.local_addr().expect("addr");
    let settings = format!(
        "[dns]\nnotify = [\"{at}\"]\nnotify_key = \"k\"\n[[dns.tsig_keys]]\nkey_name = \"k\"\nkey = {{ file = \"{}\" }}\n",
        key_file.display()
    );
    let server = Server::start_config(None, Limits::default(), 1, &CONFIG.replacen("[dns]\n", &settings, 1)).await;
    let (first, from) = next_notify(&secondary).await;
    // Unsigned, then signed with another secret under the same name.
    secondary.send_to(&acknowledge(&first), from).await.expect("send");
    let forger = common::tsig::Key::new("k", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").expect("key");
    let forged = common::tsig::ResponseSigner::new(&forger, &[0; 32], dns::server::unix_now_s())
        .sign(&acknowledge(&first))
        .expect("signs");
    secondary.send_to(&forged, from).await.expect("send");
    let (again, _) = next_notify(&secondary).await;
    assert_eq!(again.id(), first.id(), "retransmitted: neither answer was taken");
    assert!(!metric_line(&server, "switchyard_dns_notifies_total{outcome=\"acknowledged\"} 1").await);
    server.stop().await;
}
