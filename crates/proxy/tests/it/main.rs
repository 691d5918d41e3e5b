//! The proxy against real in-process backend servers on 127.0.0.1 that can be killed, made to
//! hang, and recovered. Every wait polls a condition with a deadline.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::Shared;
use proxy::admin::ServerView;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

const MODE_OK: u8 = 0;
const MODE_HANG: u8 = 1;
const MODE_GATE: u8 = 2;

/// A backend app server: answers 200 with its name (and echoes forwarding headers).
struct Backend {
    name: &'static str,
    address: SocketAddr,
    mode: Arc<AtomicU8>,
    gate: Arc<Notify>,
    hits: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
        let mut backend = Backend {
            name,
            address: listener.local_addr().expect("address"),
            mode: Arc::new(AtomicU8::new(MODE_OK)),
            gate: Arc::new(Notify::new()),
            hits: Arc::new(AtomicU64::new(0)),
            task: None,
        };
        backend.serve(listener);
        backend
    }

    fn serve(&mut self, listener: TcpListener) {
        let (name, mode, gate, hits) = (self.name, self.mode.clone(), self.gate.clone(), self.hits.clone());
        self.task = Some(tokio::spawn(async move {
            // Connections live in this set, so aborting the task closes them all, like SIGKILL.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (mode, gate, hits) = (mode.clone(), gate.clone(), hits.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (mode, gate, hits) = (mode.clone(), gate.clone(), hits.clone());
                        async move {
                            let is_check = request
                                .headers()
                                .get("user-agent")
                                .is_some_and(|v| v.as_bytes() == b"switchyard-proxy-check");
                            match mode.load(Ordering::SeqCst) {
                                MODE_HANG => std::future::pending::<()>().await,
                                MODE_GATE if !is_check => gate.notified().await,
                                _ => {}
                            }
                            if !is_check {
                                hits.fetch_add(1, Ordering::SeqCst);
                            }
                            let header = |n: &str| {
                                request
                                    .headers()
                                    .get(n)
                                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                    .unwrap_or_default()
                            };
                            let echo = format!(
                                "{name}\nxff={}\nforwarded={}\nproto={}\nconnection={}\nx-private={}\nhost={}\n",
                                header("x-forwarded-for"),
                                header("forwarded"),
                                header("x-forwarded-proto"),
                                header("connection"),
                                header("x-private"),
                                request
                                    .headers()
                                    .get_all("host")
                                    .iter()
                                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                    .collect::<Vec<_>>()
                                    .join("|"),
                            );
                            let _ = request.into_body().collect().await;
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(echo))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// Closes the listener and every connection at once.
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    async fn recover(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        let listener = loop {
            match TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("rebind {}: {error}", self.address),
            }
        };
        self.serve(listener);
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

struct TestProxy {
    address: SocketAddr,
    admin: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestProxy {
    /// `extra` is TOML placed inside [proxy]; `servers` are (name, address, weight, backup).
    async fn start(extra: &str, servers: &[(&str, SocketAddr, u32, bool)], token: Option<&str>) -> TestProxy {
        let mut text = format!(
            "[store]\nlisten = \"elsewhere\"\n\n[proxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{extra}\n"
        );
        for (name, address, weight, backup) in servers {
            text.push_str(&format!(
                "\n[[proxy.servers]]\nname = \"{name}\"\naddress = \"{address}\"\nweight = {weight}\nbackup = {backup}\n"
            ));
        }
        let config = proxy::config::parse(&text).unwrap_or_else(|e| panic!("config: {e}\n{text}"));
        let listener = TcpListener::bind(config.listen).await.expect("bind proxy");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let (address, admin_address) = (
            listener.local_addr().expect("address"),
            admin.local_addr().expect("address"),
        );
        let tls = config.tls.as_ref().map(|paths| {
            Arc::new(
                common::http::Tls::load(common::http::TlsFiles {
                    cert: paths.cert.clone(),
                    key: paths.key.clone(),
                    client_ca: None,
                })
                .expect("the test's certificate loads"),
            )
        });
        let shared = Shared::with_tls(config, tls);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy::run_shared(
            shared.clone(),
            listener,
            Some((admin, token.map(str::to_owned), None)),
            async move {
                let _ = stopped.await;
            },
        ));
        TestProxy {
            address,
            admin: admin_address,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn server(&self, name: &str) -> ServerView {
        proxy::admin::snapshot(&self.shared)
            .into_iter()
            .find(|s| s.name == name)
            .expect("server exists")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("proxy task").expect("proxy ran cleanly");
        }
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    url: &str,
    body: &'static [u8],
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::from_static(body))).expect("request");
    let response = client.request(request).await.expect("the proxy answers");
    let status = response.status();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> (StatusCode, String) {
    send(client, "GET", url, b"", &[]).await
}

/// Polls `condition` until it holds or the deadline passes.
async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn first_line(body: &str) -> &str {
    body.lines().next().unwrap_or_default()
}

/// Raw HTTP/1.1 exchange: writes `request` (and keeps the write side open, as a client that
/// stalls mid-request does), returns what the proxy sent until it closed or `DEADLINE` passed.
async fn raw_exchange(address: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let _ = stream.write_all(request).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received)).await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_when_a_backend_dies_between_health_checks() {
    let mut backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    // Checks far apart: the death falls between two checks, so only retries can hide it.
    let servers: Vec<_> = backends.iter().map(|b| (b.name, b.address, 1, false)).collect();
    let proxy = TestProxy::start("[proxy.check]\ninter_ms = 600000\n", &servers, None).await;
    let client = client();
    let url = proxy.url("/item");
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (client, url) = (client.clone(), url.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..150 {
                let (status, body) = get(&client, &url).await;
                if status != StatusCode::OK {
                    failures.push(format!("{status}: {body}"));
                }
            }
            failures
        }));
    }
    let hits = backends[1].hits.clone();
    wait_for("backend b to serve some requests", || hits.load(Ordering::SeqCst) >= 20).await;
    backends[1].kill().await;
    let mut failures = Vec::new();
    for worker in workers {
        failures.extend(worker.await.expect("worker"));
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(
        proxy.shared.stats().retries_total.load(Ordering::Relaxed) > 0,
        "requests that met the dead server were retried"
    );
    let b = proxy.server("b");
    assert!(!b.healthy, "passive checks marked b down: {b:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_connection_never_opened_is_retried() {
    let mut dead = Backend::start("dead").await;
    dead.kill().await;
    let alive = Backend::start("alive").await;
    let proxy = TestProxy::start(
        "[proxy.check]\nenabled = false\n",
        &[("dead", dead.address, 1, false), ("alive", alive.address, 1, false)],
        None,
    )
    .await;
    let client = client();
    for _ in 0..4 {
        let (status, body) = send(&client, "POST", &proxy.url("/order"), b"{\"n\":1}", &[]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(first_line(&body), "alive");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_returns_after_rise_checks() {
    let mut a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = TestProxy::start(
        "[proxy.check]\ninter_ms = 50\nrise = 3\nfall = 2\n",
        &[("a", a.address, 1, false), ("b", b.address, 1, false)],
        None,
    )
    .await;
    let client = client();
    a.kill().await;
    wait_for("a to be marked down", || !proxy.server("a").healthy).await;
    for _ in 0..10 {
        let (status, body) = get(&client, &proxy.url("/")).await;
        assert_eq!((status, first_line(&body)), (StatusCode::OK, "b"));
    }
    let passed_before = proxy.server("a").checks_passed;
    a.recover().await;
    wait_for("a to come back up", || proxy.server("a").healthy).await;
    let a_view = proxy.server("a");
    assert!(
        a_view.checks_passed - passed_before >= 3,
        "a came up only after rise = 3 successful checks: {a_view:?}"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, StatusCode::OK);
        if first_line(&body) == "a" {
            break;
        }
        assert!(Instant::now() < deadline, "traffic never returned to a");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_serves_only_while_all_primaries_are_down() {
    let mut p1 = Backend::start("p1").await;
    let mut p2 = Backend::start("p2").await;
    let spare = Backend::start("spare").await;
    let proxy = TestProxy::start(
        "[proxy.check]\ninter_ms = 50\nrise = 2\nfall = 1\n",
        &[
            ("p1", p1.address, 1, false),
            ("p2", p2.address, 1, false),
            ("spare", spare.address, 1, true),
        ],
        None,
    )
    .await;
    let client = client();
    for _ in 0..10 {
        let (status, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(first_line(&body), "spare", "the backup served while primaries were up");
    }
    p1.kill().await;
    wait_for("p1 down", || !proxy.server("p1").healthy).await;
    for _ in 0..10 {
        let (_, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(first_line(&body), "p2", "one primary left still takes everything");
    }
    p2.kill().await;
    wait_for("p2 down", || !proxy.server("p2").healthy).await;
    for _ in 0..10 {
        let (status, body) = get(&client, &proxy.url("/")).await;
        assert_eq!((status, first_line(&body)), (StatusCode::OK, "spare"));
    }
    p2.recover().await;
    wait_for("p2 up", || proxy.server("p2").healthy).await;
    for _ in 0..10 {
        let (_, body) = get(&client, &proxy.url("/")).await;
        assert_eq!(first_line(&body), "p2", "the backup stops once a primary is back");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_and_takes_no_new_ones() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = TestProxy::start(
        "[proxy.check]\nenabled = false\n",
        &[("a", a.address, 1, false), ("b", b.address, 1, false)],
        None,
    )
    .await;
    a.set_mode(MODE_GATE);
    let client = client();
    // Round robin's first pick is the first server.
    let in_flight = {
        let (client, url) = (client.clone(), proxy.url("/slow"));
        tokio::spawn(async move { get(&client, &url).await })
    };
    wait_for("the slow request to reach a", || proxy.server("a").active == 1).await;

    let admin = format!("http://{}", proxy.admin);
    let answer = proxy::ctl::set_server(&admin, None, "a", "drain")
        .await
        .expect("drain a");
    assert!(answer.contains("\"drain\""), "{answer}");
    assert!(proxy.server("a").status.starts_with("DRAIN"));
    for _ in 0..10 {
        let (status, body) = get(&client, &proxy.url("/")).await;
        assert_eq!((status, first_line(&body)), (StatusCode::OK, "b"));
    }
    a.gate.notify_one();
    let (status, body) = in_flight.await.expect("in-flight request");
    assert_eq!(
        (status, first_line(&body)),
        (StatusCode::OK, "a"),
        "the in-flight request finished"
    );
    wait_for("a's active count to drop", || proxy.server("a").active == 0).await;

    a.set_mode(MODE_OK);
    proxy::ctl::set_server(&admin, None, "a", "ready")
        .await
        .expect("ready a");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, body) = get(&client, &proxy.url("/")).await;
        if first_line(&body) == "a" {
            break;
        }
        assert!(Instant::now() < deadline, "a never took traffic after ready");
    }
    proxy::ctl::set_server(&admin, None, "b", "maint")
        .await
        .expect("maint b");
    assert_eq!(proxy.server("b").status, "MAINT");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_get_413() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "[proxy.limits]\nrequest_body_bytes_max = 1024\n[proxy.check]\nenabled = false\n",
        &[("a", a.address, 1, false)],
        None,
    )
    .await;
    let client = client();
    static SMALL: [u8; 1000] = [b'x'; 1000];
    static LARGE: [u8; 4096] = [b'x'; 4096];
    let (status, _) = send(&client, "POST", &proxy.url("/"), &SMALL, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(&client, "POST", &proxy.url("/"), &LARGE, &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Chunked, with no length announced: caught while reading.
    let chunk = "x".repeat(800);
    let request = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw_exchange(proxy.address, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        1,
        "oversize bodies never reached the server"
    );
    assert!(proxy.shared.stats().body_too_large_total.load(Ordering::Relaxed) >= 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_headers_get_431() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "[proxy.limits]\nrequest_header_bytes_max = 8192\n[proxy.check]\nenabled = false\n",
        &[("a", a.address, 1, false)],
        None,
    )
    .await;
    let request = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let answer = raw_exchange(proxy.address, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(a.hits.load(Ordering::SeqCst), 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_and_others_still_served() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "[proxy.timeouts]\nclient_header_ms = 300\n[proxy.check]\nenabled = false\n",
        &[("a", a.address, 1, false)],
        None,
    )
    .await;
    let mut slow = TcpStream::connect(proxy.address).await.expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("partial head");
    let mut received = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, slow.read_to_end(&mut received)).await;
    assert!(closed.is_ok(), "the proxy closed the slow connection");
    assert!(
        !String::from_utf8_lossy(&received).contains("200 OK"),
        "an incomplete request was never forwarded"
    );
    let (status, _) = get(&client(), &proxy.url("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
    wait_for("the header timeout to be counted", || {
        proxy.shared.stats().client_errors_total.load(Ordering::Relaxed) >= 1
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_gets_504_and_is_marked_failing() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "[proxy.timeouts]\nresponse_header_ms = 300\n[proxy.check]\nenabled = false\n[proxy.observe]\nerror_limit = 2\n",
        &[("a", a.address, 1, false)],
        None,
    )
    .await;
    a.set_mode(MODE_HANG);
    let client = client();
    for _ in 0..2 {
        let (status, _) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    }
    let view = proxy.server("a");
    assert_eq!(view.errors, 2, "{view:?}");
    assert!(!view.healthy, "two timeouts reached error_limit: {view:?}");
    let (status, _) = get(&client, &proxy.url("/")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a down server gets no requests"
    );
    assert_eq!(proxy.shared.stats().server_timeouts_total.load(Ordering::Relaxed), 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_fails_its_checks() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "[proxy.check]\ninter_ms = 50\ntimeout_ms = 100\nfall = 1\n",
        &[("a", a.address, 1, false)],
        None,
    )
    .await;
    a.set_mode(MODE_HANG);
    wait_for("a to fail a check by timeout", || !proxy.server("a").healthy).await;
    assert!(
        proxy.server("a").last_check.starts_with("L7TOUT"),
        "{:?}",
        proxy.server("a")
    );
    a.set_mode(MODE_OK);
    wait_for("a to recover", || proxy.server("a").healthy).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_exactly_one_valid_host_get_400_and_never_reach_a_server() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("[proxy.check]\nenabled = false\n", &[("a", a.address, 1, false)], None).await;
    for (request, why) in [
        (
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            "more than one Host",
        ),
        (
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
            "more than one Host",
        ),
        ("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", "no Host"),
        ("GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n", "not a valid host"),
        (
            "POST / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nContent-Length: 5\r\n\r\nhello",
            "more than one Host",
        ),
    ] {
        let answer = raw_exchange(proxy.address, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{request:?}: {answer}");
        assert!(answer.contains(why), "{request:?}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    }
    assert_eq!(
        a.hits.load(Ordering::SeqCst),
        0,
        "no refused request reached the server"
    );
    assert_eq!(proxy.shared.stats().bad_host_total.load(Ordering::Relaxed), 5);
    // An absolute-form target's authority replaces Host (RFC 9112 section 3.2.2).
    let answer = raw_exchange(
        proxy.address,
        b"GET http://shop.example/ HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\nhost=shop.example\n"), "{answer}");
    // HTTP/1.0 may leave Host out; one Host is passed on as it came.
    let answer = raw_exchange(proxy.address, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let answer = raw_exchange(
        proxy.address,
        b"GET / HTTP/1.1\r\nHost: shop.example:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.contains("\nhost=shop.example:8080\n"), "{answer}");
    assert_eq!(a.hits.load(Ordering::SeqCst), 3);
    let (_, metrics) = get(&client(), &format!("http://{}/metrics", proxy.admin)).await;
    assert!(metrics.contains("bad_host_total 5"), "{metrics}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added_and_hop_by_hop_headers_removed() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("[proxy.check]\nenabled = false\n", &[("a", a.address, 1, false)], None).await;
    let (status, body) = send(
        &client(),
        "GET",
        &proxy.url("/"),
        b"",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("connection", "x-private"),
            ("x-private", "secret"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("xff=203.0.113.9, 127.0.0.1\n"), "{body}");
    assert!(body.contains("forwarded=for=127.0.0.1;proto=http;host="), "{body}");
    assert!(body.contains("proto=http\n"), "{body}");
    assert!(
        body.contains("x-private=\n"),
        "headers named by Connection are dropped: {body}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_add_a_forwarded_element_or_hide_its_earlier_forwarding_lines() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("[proxy.check]\nenabled = false\n", &[("a", a.address, 1, false)], None).await;
    // HTTP/1.1: the Host, then an absolute-form target's authority, each with `,` and `=`
    // (sub-delims a reg-name may hold), and two lines of each forwarding header.
    let answer = raw_exchange(
        proxy.address,
        b"GET / HTTP/1.1\r\nHost: x,for=6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n\
          X-Forwarded-For: 10.9.9.9\r\nForwarded: for=6.6.6.6\r\nForwarded: for=10.9.9.9\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\nxff=6.6.6.6, 10.9.9.9, 127.0.0.1\n"), "{answer}");
    assert!(
        answer.contains("\nforwarded=for=6.6.6.6, for=10.9.9.9, for=127.0.0.1;proto=http;host=\"x,for=6.6.6.6\"\n"),
        "{answer}"
    );
    let answer = raw_exchange(
        proxy.address,
        b"GET http://x,for=7.7.7.7;by=evil/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.contains("\nforwarded=for=127.0.0.1;proto=http;host=\"x,for=7.7.7.7;by=evil\"\n"),
        "{answer}"
    );
    // HTTP/2: the same through `:authority`, and repeated header fields.
    let stream = TcpStream::connect(proxy.address).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(connection);
    let request = Request::get("http://x,for=6.6.6.6/h2")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-for", "10.9.9.9")
        .header("forwarded", "for=6.6.6.6")
        .header("forwarded", "for=10.9.9.9")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 answer");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("\nxff=6.6.6.6, 10.9.9.9, 127.0.0.1\n"), "{body}");
    assert!(
        body.contains("\nforwarded=for=6.6.6.6, for=10.9.9.9, for=127.0.0.1;proto=http;host=\"x,for=6.6.6.6\"\n"),
        "{body}"
    );
    proxy.stop().await;
}

/// A bare HTTP/2 client on TCP: sends the preface and its SETTINGS, acknowledges the server's
/// SETTINGS and (when `answer_pings`) PINGs, and never opens a stream. Returns the types of
/// the frames the proxy sent before it closed the connection.
async fn idle_h2_client(address: SocketAddr, answer_pings: bool) -> Vec<u8> {
    raw_h2_client(address, &[], &[], answer_pings).await
}

/// [`idle_h2_client`] that sends `settings` (SETTINGS parameters) and then `frames` (say, a
/// request), and never a WINDOW_UPDATE.
async fn raw_h2_client(address: SocketAddr, settings: &[u8], frames: &[u8], answer_pings: bool) -> Vec<u8> {
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const ACK: u8 = 1;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let length = u32::try_from(settings.len()).expect("small").to_be_bytes();
    let opening = [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        &length[1..],
        &[SETTINGS, 0, 0, 0, 0, 0],
        settings,
        frames,
    ]
    .concat();
    stream.write_all(&opening).await.expect("preface, SETTINGS and frames");
    let until_closed = async move {
        let (mut received, mut buffer) = (Vec::new(), Vec::new());
        loop {
            while buffer.len() >= 9 {
                let length = u32::from_be_bytes([0, buffer[0], buffer[1], buffer[2]]) as usize;
                if buffer.len() < 9 + length {
                    break;
                }
                let (kind, flags) = (buffer[3], buffer[4]);
                let payload: Vec<u8> = buffer.drain(..9 + length).skip(9).collect();
                received.push(kind);
                let answer = match kind {
                    SETTINGS if flags & ACK == 0 => vec![0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0],
                    PING if flags & ACK == 0 && answer_pings => {
                        [&[0, 0, 8, PING, ACK, 0, 0, 0, 0][..], &payload].concat()
                    }
                    _ => continue,
                };
                if stream.write_all(&answer).await.is_err() {
                    return received;
                }
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, until_closed)
        .await
        .expect("the proxy closed the HTTP/2 connection")
}

const GOAWAY: u8 = 7;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;

/// A backend on raw TCP: `GET /big` gets a body far larger than any window or socket buffer,
/// written until the connection fails (`cut` is then set); anything else gets `ok`.
async fn big_body_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
    let address = listener.local_addr().expect("address");
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                while let Some(end) = read_head(&mut stream, &mut buffer).await {
                    let big = buffer.starts_with(b"GET /big ");
                    buffer.drain(..end);
                    if !big {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let length: usize = 1 << 30;
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
                    let mut written = stream.write_all(head.as_bytes()).await;
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut sent = 0;
                    while written.is_ok() && sent < length {
                        written = stream.write_all(&chunk).await;
                        sent += chunk.len();
                    }
                    if written.is_err() {
                        flag.store(true, Ordering::SeqCst);
                    }
                    return;
                }
            });
        }
    });
    (address, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_stops_taking_a_response_is_cut_off_and_its_server_connection_closed() {
    let (address, cut) = big_body_backend().await;
    // idle_ms bounds the wait on the client (and paces the keep-alive PINGs, which the client
    // answers); client_header_ms stays long, so only the stalled response can end the
    // connection. One connection slot: the next client is served once it is freed.
    let proxy = proxy_for(
        address,
        "[proxy.timeouts]\nidle_ms = 300\nclient_header_ms = 60000\n[proxy.limits]\nconnections_max = 1",
    )
    .await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 1, then GET /big on stream 1 (HPACK: :method GET,
    // :scheme http, :path and :authority as literals).
    let settings = [0, 4, 0, 0, 0, 1];
    let block = [&[0x82, 0x86, 0x04, 4][..], b"/big", &[0x01, 1], b"a"].concat();
    let length = u32::try_from(block.len()).expect("small").to_be_bytes();
    let request = [&length[1..], &[HEADERS, 0x05, 0, 0, 0, 1], &block].concat();
    let frames = raw_h2_client(proxy.address, &settings, &request, true).await;
    // raw_h2_client returned: the connection was closed (hyper cannot reset one stream from
    // outside, so the proxy drops the connection rather than send RST_STREAM).
    assert!(frames.contains(&HEADERS), "the response started: {frames:?}");
    assert!(!frames.contains(&RST_STREAM), "{frames:?}");
    wait_for("the server connection to be closed mid-response", || {
        cut.load(Ordering::SeqCst)
    })
    .await;
    wait_for("the stalled client to be counted", || {
        proxy.shared.stats().client_errors_total.load(Ordering::SeqCst) == 1
    })
    .await;
    // The slot is free and the server still serves: the next client gets its answer.
    let answer = raw_exchange(proxy.address, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
        "{answer}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connections_get_a_goaway_and_free_their_slot() {
    let a = Backend::start("a").await;
    // Keep-alive PINGs every 100 ms, answered: they must not keep the connection open.
    let proxy = TestProxy::start(
        "[proxy.timeouts]\nclient_header_ms = 300\nidle_ms = 100\n[proxy.limits]\nconnections_max = 1\n\
         [proxy.check]\nenabled = false\n",
        &[("a", a.address, 1, false)],
        None,
    )
    .await;
    let idle = tokio::spawn(idle_h2_client(proxy.address, true));
    wait_for("the idle connection to take the only slot", || {
        proxy.shared.stats().connections_total.load(Ordering::SeqCst) == 1
    })
    .await;
    // Waits for the slot: served once the idle connection is closed.
    let answer = raw_exchange(proxy.address, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let frames = idle.await.expect("the idle client");
    assert!(frames.contains(&GOAWAY), "a GOAWAY before the close: {frames:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_client_that_ignores_the_goaway_is_closed_all_the_same() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "[proxy.timeouts]\nclient_header_ms = 300\n[proxy.check]\nenabled = false\n",
        &[("a", a.address, 1, false)],
        None,
    )
    .await;
    let frames = idle_h2_client(proxy.address, false).await;
    assert!(frames.contains(&GOAWAY), "{frames:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_with_an_open_stream_is_not_idle() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "[proxy.timeouts]\nclient_header_ms = 300\n[proxy.check]\nenabled = false\n",
        &[("a", a.address, 1, false)],
        None,
    )
    .await;
    a.set_mode(MODE_GATE);
    let stream = TcpStream::connect(proxy.address).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    let connection = tokio::spawn(connection);
    let request = Request::get("http://shop.example/slow")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::spawn(sender.send_request(request));
    wait_for("the request to reach the proxy", || {
        proxy.shared.stats().requests_total.load(Ordering::SeqCst) == 1
    })
    .await;
    // Another connection, opened after the stream, idles out: the stream has been open longer
    // than client_header_ms.
    let frames = idle_h2_client(proxy.address, true).await;
    assert!(frames.contains(&GOAWAY), "{frames:?}");
    a.gate.notify_one();
    let response = response.await.expect("task").expect("the open stream is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(first_line(&String::from_utf8_lossy(&body)), "a");
    // Then idle itself: closed.
    tokio::time::timeout(DEADLINE, connection)
        .await
        .expect("the connection closed once idle")
        .expect("task")
        .expect("closed cleanly with a GOAWAY");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_closes_after_client_header_ms() {
    let (address, seen) = scripted_backend(ok_script).await;
    // idle_ms (pooled server connections) stays long: the client side follows client_header_ms.
    let proxy = proxy_for(address, "[proxy.timeouts]\nclient_header_ms = 300\nidle_ms = 60000").await;
    let mut stream = TcpStream::connect(proxy.address).await.expect("connect");
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut received = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received))
        .await
        .expect("the proxy closed the idle keep-alive connection")
        .expect("read");
    let answer = String::from_utf8_lossy(&received);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"),
        "{answer}"
    );
    assert!(!answer.contains("connection: close"), "kept alive, then idle: {answer}");
    assert_eq!(seen.lock().expect("log").len(), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_clients_are_served() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start("[proxy.check]\nenabled = false\n", &[("a", a.address, 1, false)], None).await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let response = client
        .request(
            Request::get(proxy.url("/h2"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("h2 answer");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(first_line(&String::from_utf8_lossy(&body)), "a");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_traffic() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy = TestProxy::start(
        "[proxy.check]\nenabled = false\n",
        &[("a", a.address, 1, false), ("b", b.address, 3, false)],
        None,
    )
    .await;
    let client = client();
    for _ in 0..40 {
        let (status, _) = get(&client, &proxy.url("/")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 10);
    assert_eq!(b.hits.load(Ordering::SeqCst), 30);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_api_needs_the_token_and_reports_errors() {
    let a = Backend::start("a").await;
    let proxy = TestProxy::start(
        "[proxy.check]\nenabled = false\n",
        &[("web1", a.address, 1, false)],
        Some("s3cret-token"),
    )
    .await;
    let admin = format!("http://{}", proxy.admin);
    let refused = proxy::ctl::servers(&admin, None).await.expect_err("no token");
    assert!(refused.to_string().contains("401"), "{refused}");
    let wrong = proxy::ctl::servers(&admin, Some("nope"))
        .await
        .expect_err("wrong token");
    assert!(wrong.to_string().contains("401"), "{wrong}");
    let servers = proxy::ctl::servers(&admin, Some("s3cret-token")).await.expect("listed");
    assert_eq!(servers[0].name, "web1");
    let unknown = proxy::ctl::set_server(&admin, Some("s3cret-token"), "web9", "drain")
        .await
        .expect_err("unknown server");
    assert!(
        unknown.to_string().contains("404") && unknown.to_string().contains("web1"),
        "{unknown}"
    );
    let bad = proxy::ctl::set_server(&admin, Some("s3cret-token"), "web1", "sleep")
        .await
        .expect_err("bad state");
    assert!(
        bad.to_string().contains("400") && bad.to_string().contains("ready"),
        "{bad}"
    );
    let too_heavy = proxy::ctl::set_weight(&admin, Some("s3cret-token"), "web1", 1000)
        .await
        .expect_err("weight over the limit");
    assert!(too_heavy.to_string().contains("400"), "{too_heavy}");
    proxy::ctl::set_weight(&admin, Some("s3cret-token"), "web1", 7)
        .await
        .expect("weight set");
    assert_eq!(proxy.server("web1").weight, 7);
    let client = client();
    let _ = get(&client, &proxy.url("/")).await;
    let stats = proxy::ctl::call(&admin, Some("s3cret-token"), hyper::Method::GET, "/stats", None)
        .await
        .expect("stats page");
    assert!(stats.contains("<td class=\"name\">web1</td>"), "{stats}");
    let json = proxy::ctl::call(&admin, Some("s3cret-token"), hyper::Method::GET, "/stats.json", None)
        .await
        .expect("stats json");
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json["servers"][0]["requests"], 1);
    let metrics = proxy::ctl::call(&admin, Some("s3cret-token"), hyper::Method::GET, "/metrics", None)
        .await
        .expect("metrics");
    assert!(
        metrics.contains("switchyard_proxy_server_requests_total{server=\"web1\"} 1"),
        "{metrics}"
    );
    proxy.stop().await;
}

/// How the raw backend answers each request.
#[derive(Clone, Copy)]
enum RawMode {
    /// `200 ok`, keep-alive.
    KeepAlive,
    /// `200 ok`, then closes the connection without saying so (its keep-alive timeout was 0).
    CloseSilently,
    /// The backend's first request gets a 1 MB body of which only 4 KB ever come (the
    /// connection then only waits to be closed); every later request gets `200 fresh`.
    StallFirst,
}

/// One read of at most `capacity` bytes from `stream`, within the deadline: what arrived.
async fn read_some(stream: &mut TcpStream, capacity: usize, what: &str) -> Vec<u8> {
    let mut buffer = vec![0u8; capacity];
    let read = tokio::time::timeout(DEADLINE, stream.read(&mut buffer))
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within the deadline"))
        .expect("read");
    buffer.truncate(read);
    buffer
}

/// Reads from `stream` into `buffer` until it holds a whole head; the head's length, or `None`
/// once the peer closes.
async fn read_head(stream: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(end + 4);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A backend written on TCP directly, counting the connections it accepted.
async fn raw_backend(mode: RawMode) -> (SocketAddr, Arc<AtomicU64>) {
    let (address, connections, _) = raw_backend_counting_closes(mode).await;
    (address, connections)
}

/// [`raw_backend`], also counting the connections it closed itself (`RawMode::CloseSilently`).
async fn raw_backend_counting_closes(mode: RawMode) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
    let address = listener.local_addr().expect("address");
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    let closes = Arc::new(AtomicU64::new(0));
    let closed = closes.clone();
    let served = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let served = served.clone();
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    // One request head (these tests send no bodies), then its answer.
                    let Some(end) = read_head(&mut stream, &mut buffer).await else {
                        return;
                    };
                    buffer.drain(..end);
                    let first = served.fetch_add(1, Ordering::SeqCst) == 0;
                    match mode {
                        RawMode::KeepAlive => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                                .await;
                        }
                        RawMode::CloseSilently => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                                .await;
                            // Closed (its FIN on its way) before it counts as closed.
                            drop(stream);
                            closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        RawMode::StallFirst if first => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n")
                                .await;
                            let _ = stream.write_all(&[b'x'; 4096]).await;
                            // Hold the connection until the proxy closes it.
                            let mut rest = [0u8; 1024];
                            while let Ok(n) = stream.read(&mut rest).await {
                                if n == 0 {
                                    return;
                                }
                            }
                            return;
                        }
                        RawMode::StallFirst => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nfresh\n")
                                .await;
                        }
                    }
                }
            });
        }
    });
    (address, connections, closes)
}

/// Waits until the backend has closed `count` connections: a request sent after that finds
/// its idle connection closed (on loopback the FIN is queued to the proxy by the close
/// itself), which is what the tests below are about; sent before, it races the close and may
/// reach a server that then drops it unanswered (not retried for a POST: it may have acted).
async fn wait_closed(closes: &AtomicU64, count: u64) {
    let deadline = Instant::now() + DEADLINE;
    while closes.load(Ordering::SeqCst) < count {
        assert!(Instant::now() < deadline, "the backend closed {count} connections");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_connections_are_kept_alive_and_reused() {
    let (address, connections) = raw_backend(RawMode::KeepAlive).await;
    let proxy = TestProxy::start(
        "threads = 1\n[proxy.check]\nenabled = false\n",
        &[("s", address, 1, false)],
        None,
    )
    .await;
    let client = client();
    for _ in 0..20 {
        let (status, body) = get(&client, &proxy.url("/")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "20 requests one after another share one server connection"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_after_the_server_closed_an_idle_connection_is_not_lost() {
    let (address, connections, closes) = raw_backend_counting_closes(RawMode::CloseSilently).await;
    let proxy = TestProxy::start(
        "threads = 1\nretries = 0\n[proxy.check]\nenabled = false\n",
        &[("s", address, 1, false)],
        None,
    )
    .await;
    let client = client();
    for round in 0..10 {
        let (status, body) = send(&client, "POST", &proxy.url("/order"), b"", &[]).await;
        assert_eq!(status, StatusCode::OK, "POST {round}: {body}");
        wait_closed(&closes, round + 1).await;
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        10,
        "each POST needed a new connection"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_response_was_abandoned_is_never_reused() {
    let (address, connections) = raw_backend(RawMode::StallFirst).await;
    let proxy = TestProxy::start(
        "threads = 1\n[proxy.check]\nenabled = false\n",
        &[("s", address, 1, false)],
        None,
    )
    .await;
    // A client reads the head and the start of the body, then goes away.
    let mut stream = TcpStream::connect(proxy.address).await.expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: shop.example\r\n\r\n")
        .await
        .expect("write");
    let head = read_some(&mut stream, 1024, "the head arrives").await;
    assert!(
        String::from_utf8_lossy(&head[..]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..])
    );
    drop(stream);
    // The next request must get a new connection: the old one is mid-body.
    let client = client();
    let (status, body) = get(&client, &proxy.url("/next")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "fresh\n"));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the abandoned connection was not reused"
    );
    proxy.stop().await;
}

/// What a scripted backend does with a request: the bytes to answer, and whether to close after.
type Script = fn(&str) -> (Vec<u8>, bool);

/// A backend on raw TCP on a fresh port: each connection it accepts is served by `serve` in a
/// task of its own.
async fn tcp_backend<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a backend");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    address
}

/// A backend on raw TCP that records each request (head and body as received) and answers what
/// `script` says for it.
async fn scripted_backend(script: Script) -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let address = tcp_backend(move |mut stream| {
        let log = log.clone();
        async move {
            let mut buffer = Vec::new();
            loop {
                let Some(end) = read_head(&mut stream, &mut buffer).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                while buffer.len() < end + length {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&buffer[..end + length]).into_owned();
                buffer.drain(..end + length);
                let (answer, close) = script(&request);
                log.lock().expect("log").push(request);
                if stream.write_all(&answer).await.is_err() || close {
                    return;
                }
            }
        }
    })
    .await;
    (address, seen)
}

fn ok_script(_: &str) -> (Vec<u8>, bool) {
    (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n".to_vec(), false)
}

async fn proxy_for(address: SocketAddr, extra: &str) -> TestProxy {
    TestProxy::start(
        &format!("threads = 1\n{extra}\n[proxy.check]\nenabled = false\n"),
        &[("s", address, 1, false)],
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_request_framing_is_refused_and_never_forwarded() {
    let (address, seen) = scripted_backend(ok_script).await;
    let proxy = proxy_for(address, "").await;
    for (request, status) in [
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "400",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\nabc",
            "400",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "501",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "400",
        ),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\nabc", "400"),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
            "400",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            "400",
        ),
        (
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
            "400",
        ),
        ("GET / HTTP/1.1\nHost: a\n\n", "400"),
        // An empty list of codings is no framing at all (RFC 9112 section 6.1).
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,\r\n\r\n", "400"),
        // Origin-form has no fragment (RFC 9112 section 3.2; HAProxy since CVE-2023-45539).
        ("GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", "400"),
        ("GET http://a/b#frag HTTP/1.1\r\nHost: a\r\n\r\n", "400"),
    ] {
        // Followed by a request that must never be reached (the connection closes).
        let smuggled = format!("{request}GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n");
        let answer = raw_exchange(proxy.address, smuggled.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:?}: {answer}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "one answer, then close: {answer}"
        );
        assert!(answer.contains("connection: close"), "{answer}");
    }
    assert!(seen.lock().expect("log").is_empty(), "nothing reached the server");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_chunked_bodies_forwarded_with_a_length() {
    let (address, seen) = scripted_backend(|request| {
        let path = request.split(' ').nth(1).unwrap_or("?").to_owned();
        let body = format!("{path}\n");
        (
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes(),
            false,
        )
    })
    .await;
    let proxy = proxy_for(address, "").await;
    let answer = raw_exchange(
        proxy.address,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n\
          GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let bodies: Vec<&str> = answer.lines().filter(|l| l.starts_with('/')).collect();
    assert_eq!(bodies, ["/one", "/two", "/three"], "{answer}");
    let seen = seen.lock().expect("log").clone();
    assert_eq!(seen.len(), 3);
    assert!(seen[1].contains("content-length: 5\r\n\r\nabcde"), "{}", seen[1]);
    assert!(
        !seen[1].to_ascii_lowercase().contains("transfer-encoding"),
        "{}",
        seen[1]
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_without_keep_alive_is_closed_after_its_answer_and_gets_a_host() {
    let (address, seen) = scripted_backend(ok_script).await;
    let proxy = proxy_for(address, "").await;
    let answer = raw_exchange(proxy.address, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("connection: close\r\n") && answer.ends_with("ok\n"),
        "{answer}"
    );
    let answer = raw_exchange(
        proxy.address,
        b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    assert!(answer.contains("connection: keep-alive\r\n"), "{answer}");
    let first = seen.lock().expect("log")[0].clone();
    assert!(
        first.contains(&format!("host: {address}\r\n")),
        "the server's name as Host: {first}"
    );
    assert!(first.starts_with("GET /old HTTP/1.1\r\n"), "{first}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_responses_keep_the_connection_in_step() {
    let (address, _) = scripted_backend(|request| {
        let answer: &[u8] = if request.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
        } else if request.contains("/nocontent") {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        } else if request.contains("/same") {
            b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlast\n"
        };
        (answer.to_vec(), false)
    })
    .await;
    let proxy = proxy_for(address, "").await;
    let answer = raw_exchange(
        proxy.address,
        b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /nocontent HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /same HTTP/1.1\r\nHost: a\r\n\r\nGET /end HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = answer.lines().filter(|l| l.starts_with("HTTP/1.1")).collect();
    assert_eq!(
        statuses,
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 204 No Content",
            "HTTP/1.1 304 Not Modified",
            "HTTP/1.1 200 OK"
        ],
        "{answer}"
    );
    assert!(
        answer.contains("content-length: 1000\r\n"),
        "HEAD keeps its length: {answer}"
    );
    assert!(answer.ends_with("last\n"), "{answer}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_pass_as_is_and_close_delimited_ones_close_the_client() {
    let (address, _) = scripted_backend(|request| {
        if request.contains("/chunked") {
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4;e=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n".to_vec(), false)
        } else if request.contains("/bad-chunks") {
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nWikiXX\r\n".to_vec(), true)
        } else {
            (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end\n".to_vec(), true)
        }
    })
    .await;
    let proxy = proxy_for(address, "").await;
    let answer = raw_exchange(
        proxy.address,
        b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\nGET /close HTTP/1.1\r\nHost: a\r\n\r\nGET /never HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert!(
        answer.contains("transfer-encoding: chunked\r\n\r\n4;e=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("connection: close\r\n\r\nuntil the end\n"), "{answer}");
    assert_eq!(
        answer.matches("HTTP/1.1 200").count(),
        2,
        "the third request is never answered: {answer}"
    );
    // HTTP/1.0 clients get the chunked body decoded, then the close.
    let answer = raw_exchange(proxy.address, b"GET /chunked HTTP/1.0\r\n\r\n").await;
    assert!(answer.ends_with("\r\n\r\nWikipedia"), "{answer}");
    assert!(!answer.contains("transfer-encoding"), "{answer}");
    // Broken framing from the server: the client sees the connection close mid-body.
    let answer = raw_exchange(proxy.address, b"GET /bad-chunks HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(!answer.contains("0\r\n\r\n"), "never a complete body: {answer}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_or_oversized_server_heads_get_502() {
    let (address, _) = scripted_backend(|request| {
        if request.contains("/huge") {
            let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
            for index in 0..2000 {
                answer.extend_from_slice(format!("x-filler-{index}: {}\r\n", "v".repeat(40)).as_bytes());
            }
            answer.extend_from_slice(b"\r\n");
            (answer, true)
        } else if request.contains("/upgrade") {
            (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n".to_vec(), true)
        } else {
            (b"SSH-2.0-OpenSSH\r\n\r\n".to_vec(), true)
        }
    })
    .await;
    let proxy = proxy_for(address, "retries = 0").await;
    for path in ["/garbage", "/huge", "/upgrade"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(proxy.address, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{path}: {answer}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_gets_100_and_the_server_sees_the_body_without_expect() {
    let (address, seen) = scripted_backend(ok_script).await;
    let proxy = proxy_for(address, "").await;
    let mut stream = TcpStream::connect(proxy.address).await.expect("connect");
    stream
        .write_all(b"PUT /doc HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .expect("head");
    let interim = read_some(&mut stream, 64, "an interim answer").await;
    assert_eq!(&interim[..], b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.expect("body");
    let answer = read_some(&mut stream, 1024, "the answer").await;
    assert!(String::from_utf8_lossy(&answer[..]).starts_with("HTTP/1.1 200"));
    let request = seen.lock().expect("log")[0].clone();
    assert!(request.ends_with("\r\n\r\nhello"), "{request}");
    assert!(!request.to_ascii_lowercase().contains("expect"), "{request}");
    // Over the limit: 413 at once, no 100.
    drop(stream);
    let proxy_small = proxy_for(address, "[proxy.limits]\nrequest_body_bytes_max = 4").await;
    let answer = raw_exchange(
        proxy_small.address,
        b"PUT /doc HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    proxy_small.stop().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_body_gets_408() {
    let (address, seen) = scripted_backend(ok_script).await;
    let proxy = proxy_for(address, "[proxy.timeouts]\nclient_body_ms = 200").await;
    let answer = raw_exchange(
        proxy.address,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(seen.lock().expect("log").is_empty());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_body_streams_through() {
    const SIZE: usize = 8 * 1024 * 1024;
    let (address, _) = scripted_backend(|_| {
        let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n").into_bytes();
        answer.extend((0..SIZE).map(|i| b'a' + (i % 26) as u8));
        (answer, false)
    })
    .await;
    let proxy = proxy_for(address, "").await;
    let (status, body) = get(&client(), &proxy.url("/big")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), SIZE);
    assert!(body.bytes().enumerate().all(|(i, b)| b == b'a' + (i % 26) as u8));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_response_is_given_up_after_idle_ms() {
    // Far more than the socket buffers between the proxy and the client hold.
    const SIZE: usize = 32 * 1024 * 1024;
    let (address, _) = scripted_backend(|_| {
        let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {SIZE}\r\n\r\n").into_bytes();
        answer.resize(answer.len() + SIZE, b'x');
        (answer, false)
    })
    .await;
    let proxy = proxy_for(address, "[proxy.timeouts]\nidle_ms = 300\n").await;
    let active = || proxy.shared.stats().connections_active.load(Ordering::SeqCst);
    let mut stream = TcpStream::connect(proxy.address).await.expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    // The client reads nothing: the proxy must give the connection up, not wait for ever.
    let deadline = Instant::now() + DEADLINE;
    while active() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(active(), 1, "the client's connection is being served");
    while active() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(active(), 0, "a client that stopped reading still holds its connection");
    let mut received = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut received)).await;
    assert!(received.len() < SIZE, "the proxy closed before sending the whole body");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_after_the_server_closed_an_idle_connection_is_retried_on_a_new_one() {
    let (address, connections, closes) = raw_backend_counting_closes(RawMode::CloseSilently).await;
    let proxy = proxy_for(address, "retries = 0").await;
    let client = client();
    for round in 0..10 {
        let (status, body) = get(&client, &proxy.url("/again")).await;
        assert_eq!(status, StatusCode::OK, "GET {round}: {body}");
        wait_closed(&closes, round + 1).await;
    }
    assert_eq!(connections.load(Ordering::SeqCst), 10);
    proxy.stop().await;
}

/// Opens a connection and sends `bytes`, keeping it open (the caller holds it).
async fn hold(address: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_length_holds_no_body_budget_until_its_bytes_arrive() {
    let (address, seen) = scripted_backend(ok_script).await;
    // Room for one full body; each attacker declares a full one and sends none of it. Before,
    // the declared length was taken up front, so the victim's 5 bytes queued behind them until
    // their client_body_ms (a minute here, past the test's deadline).
    let proxy = proxy_for(
        address,
        "[proxy.limits]\nrequest_body_bytes_max = 65536\nbuffered_body_bytes_max = 65536\n[proxy.timeouts]\nclient_body_ms = 60000",
    )
    .await;
    let mut attackers = Vec::new();
    for _ in 0..3 {
        attackers.push(
            hold(
                proxy.address,
                b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n",
            )
            .await,
        );
    }
    let answer = raw_exchange(
        proxy.address,
        b"POST /victim HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        seen.lock()
            .expect("log")
            .iter()
            .any(|r| r.contains("/victim") && r.ends_with("hello"))
    );
    drop(attackers);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_larger_together_than_the_budget_all_reach_the_server() {
    // Eight bodies, each a third of the budget, their bytes interleaved. Taken as the bytes
    // arrived, each held part of the budget and waited for the rest, which none gave back before
    // its end: all waited until client_body_ms (a minute here, past the test's deadline). One
    // body is chunked: it takes the body limit's share and gives back what it did not use.
    const CHUNK_BYTES: usize = 4096;
    let (proxy, seen) = crowd_proxy().await;
    let mut uploads = Vec::new();
    // Every body's first half is sent before any second half: each is then partly read.
    let halfway = Arc::new(tokio::sync::Barrier::new(CROWD));
    for index in 0..CROWD {
        let proxy_address = proxy.address;
        let halfway = Arc::clone(&halfway);
        uploads.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(proxy_address).await.ok()?;
            let chunked = index == 0;
            let head = if chunked {
                format!("POST /upload-{index} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
            } else {
                format!("POST /upload-{index} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {BODY_BYTES}\r\n\r\n")
            };
            stream.write_all(head.as_bytes()).await.ok()?;
            let chunk = vec![b'x'; CHUNK_BYTES];
            let mut sent = 0;
            while sent < BODY_BYTES {
                let piece = &chunk[..CHUNK_BYTES.min(BODY_BYTES - sent)];
                if chunked {
                    stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.ok()?;
                    stream.write_all(piece).await.ok()?;
                    stream.write_all(b"\r\n").await.ok()?;
                } else {
                    stream.write_all(piece).await.ok()?;
                }
                sent += piece.len();
                if sent >= BODY_BYTES / 2 && sent - piece.len() < BODY_BYTES / 2 {
                    halfway.wait().await;
                }
                tokio::task::yield_now().await;
            }
            if chunked {
                stream.write_all(b"0\r\n\r\n").await.ok()?;
            }
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.ok()?;
            Some(String::from_utf8_lossy(&answer).into_owned())
        }));
    }
    for upload in uploads {
        let answer = tokio::time::timeout(DEADLINE, upload)
            .await
            .expect("every body is answered before client_body_ms")
            .expect("task")
            .expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert_crowd_reached(&seen, "/upload-");
    proxy.stop().await;
}

/// The crowd's body size: a third of [`crowd_proxy`]'s budget.
const BODY_BYTES: usize = 100_000;
/// Bodies in the crowd, together past the budget.
const CROWD: usize = 8;

/// A proxy whose body budget holds three of the crowd's bodies, before a server that answers
/// every request (and the requests it saw).
async fn crowd_proxy() -> (TestProxy, Arc<std::sync::Mutex<Vec<String>>>) {
    let (address, seen) = scripted_backend(ok_script).await;
    let proxy = proxy_for(
        address,
        "[proxy.limits]\nrequest_body_bytes_max = 150000\nbuffered_body_bytes_max = 300000\n[proxy.timeouts]\nclient_body_ms = 60000",
    )
    .await;
    (proxy, seen)
}

/// Every body of the crowd, sent to `{prefix}{index}`, reached the server.
fn assert_crowd_reached(seen: &std::sync::Mutex<Vec<String>>, prefix: &str) {
    let requests = seen.lock().expect("log").clone();
    for index in 0..CROWD {
        assert!(
            requests.iter().any(|r| r.contains(&format!("{prefix}{index} "))),
            "upload {index} reached the server"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_bodies_larger_together_than_the_budget_all_reach_the_server() {
    // The same crowd over HTTP/2 (hyper's path, `Shared::read_body`), one connection per
    // body: there too a body takes its whole share once its first bytes arrive. Taken frame by
    // frame, the bodies each held part and none was answered before client_body_ms.
    let (proxy, seen) = crowd_proxy().await;
    let mut uploads = Vec::new();
    for index in 0..CROWD {
        let proxy_address = proxy.address;
        uploads.push(tokio::spawn(async move {
            let stream = TcpStream::connect(proxy_address).await.map_err(|e| e.to_string())?;
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let request = Request::post(format!("http://a/h2-upload-{index}"))
                .body(Full::new(Bytes::from(vec![b'x'; BODY_BYTES])))
                .expect("request");
            let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(response.status())
        }));
    }
    for upload in uploads {
        let status = tokio::time::timeout(DEADLINE, upload)
            .await
            .expect("every body is answered before client_body_ms")
            .expect("task")
            .expect("an answer");
        assert_eq!(status, StatusCode::OK);
    }
    assert_crowd_reached(&seen, "/h2-upload-");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gives_back_its_share_once_behind_the_minimum_rate() {
    let (address, seen) = scripted_backend(ok_script).await;
    // Room for one full body. The attacker declares one, sends a byte (so it takes its whole
    // share) and stalls: it keeps it only until it falls behind the minimum rate, not for its
    // client_body_ms (a minute here, past the test's deadline), and the victim is then served.
    let proxy = proxy_for(
        address,
        "[proxy.limits]\nrequest_body_bytes_max = 65536\nbuffered_body_bytes_max = 65536\n[proxy.timeouts]\nclient_body_ms = 60000",
    )
    .await;
    let mut attacker = hold(
        proxy.address,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\nx",
    )
    .await;
    let victim = tokio::spawn(raw_exchange(
        proxy.address,
        b"POST /victim HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    ));
    let answer = victim.await.expect("task");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut refused = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, attacker.read_to_end(&mut refused)).await;
    let refused = String::from_utf8_lossy(&refused);
    assert!(refused.starts_with("HTTP/1.1 408"), "{refused}");
    let requests = seen.lock().expect("log").clone();
    assert!(requests.iter().any(|r| r.contains("/victim") && r.ends_with("hello")));
    assert!(!requests.iter().any(|r| r.contains("/upload")));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_finds_no_room_before_client_body_ms_gets_503() {
    // The first body is whole and held (its server never answers): the budget is spent, so
    // the second waits for room at most its client_body_ms, then gets 503, never reaching the
    // server.
    let (address, seen) = scripted_backend(|request| {
        if request.contains("/hang") {
            (Vec::new(), false)
        } else {
            ok_script(request)
        }
    })
    .await;
    let proxy = proxy_for(
        address,
        "retries = 0\n[proxy.limits]\nrequest_body_bytes_max = 1024\nbuffered_body_bytes_max = 1024\n[proxy.timeouts]\nclient_body_ms = 300\nresponse_header_ms = 5000",
    )
    .await;
    let mut first = b"POST /hang HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n".to_vec();
    first.resize(first.len() + 1000, b'x');
    let _held = hold(proxy.address, &first).await;
    wait_for("the first body at the server", || {
        seen.lock().expect("log").iter().any(|r| r.contains("/hang"))
    })
    .await;
    let answer = raw_exchange(
        proxy.address,
        b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("buffered_body_bytes_max"), "{answer}");
    assert!(!seen.lock().expect("log").iter().any(|r| r.contains("/second")));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_are_bounded_and_unknown_transfer_codings_refused() {
    let (address, _) = scripted_backend(|request| {
        let mut answer = Vec::new();
        if request.contains("/flood") {
            for _ in 0..100 {
                answer.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            answer.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        } else if request.contains("/hints") {
            for _ in 0..3 {
                answer.extend_from_slice(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n");
            }
            answer.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        } else if request.contains("/gzip-chunked") {
            answer.extend_from_slice(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            );
        } else {
            answer.extend_from_slice(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ncontent-length: 2\r\n\r\nzz");
        }
        (answer, false)
    })
    .await;
    let proxy = proxy_for(address, "retries = 0").await;
    let answer = raw_exchange(
        proxy.address,
        b"GET /hints HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\nok"),
        "{answer}"
    );
    for path in ["/flood", "/gzip-chunked", "/gzip"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(proxy.address, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{path}: {answer}");
        assert!(!answer.contains("hello") && !answer.contains("zz"), "{path}: {answer}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_gets_the_whole_response() {
    // The server sends the head, then the body a moment later: the client closed its sending
    // side after the request (legal, RFC 9112 §9.6), which is no reason to cut the answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (body_now, body_wait) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buffer = Vec::new();
        read_head(&mut stream, &mut buffer).await.expect("a request");
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 23\r\n\r\n")
            .await
            .expect("head");
        let _ = body_wait.await;
        stream.write_all(b"the body, after a while").await.expect("body");
        let _ = stream.read(&mut [0u8; 16]).await;
    });
    let proxy = proxy_for(address, "").await;
    let mut stream = TcpStream::connect(proxy.address).await.expect("connect");
    stream
        .write_all(b"GET /late HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    stream.shutdown().await.expect("half-close");
    let head = read_some(&mut stream, 1024, "the response head").await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    body_now.send(()).expect("the server waits");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
    let whole = [head, rest].concat();
    assert!(
        String::from_utf8_lossy(&whole).ends_with("\r\n\r\nthe body, after a while"),
        "{}",
        String::from_utf8_lossy(&whole)
    );
    proxy.stop().await;
}

/// A CA and a certificate for 127.0.0.1 in a fresh folder (removed with the returned guard).
struct TestCa {
    dir: std::path::PathBuf,
    files: common::devca::DevCaFiles,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let dir = std::env::temp_dir().join(format!("proxy-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let files = common::devca::generate(&dir, &["127.0.0.1".to_string()]).expect("dev CA");
        TestCa { dir, files }
    }

    fn proxy_toml(&self) -> String {
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            self.files.cert.display(),
            self.files.key.display()
        )
    }

    /// A TLS connection to `address` trusting this CA, offering `alpn`.
    async fn connect(&self, address: SocketAddr, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut config =
            (*common::tls_client::client_config(Some(&self.files.ca_cert)).expect("client config")).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(address).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the proxy")
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_http1_and_http2_requests_reach_the_server_marked_https() {
    let ca = TestCa::new("both");
    let (address, seen) = scripted_backend(ok_script).await;
    let proxy = proxy_for(address, &ca.proxy_toml()).await;

    // HTTP/1.1 (ALPN http/1.1), served by the h1 core over the TLS stream.
    let mut stream = ca.connect(proxy.address, b"http/1.1").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    stream
        .write_all(
            b"POST /tls-one HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        )
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");

    // HTTP/2 (ALPN h2).
    let stream = ca.connect(proxy.address, b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("HTTP/2 over TLS");
    tokio::spawn(connection);
    let request = Request::builder()
        .uri("https://shop.example/tls-two")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = sender.send_request(request).await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        &response.into_body().collect().await.expect("body").to_bytes()[..],
        b"ok\n"
    );

    let requests = seen.lock().expect("log").clone();
    for path in ["/tls-one", "/tls-two"] {
        let request = requests
            .iter()
            .find(|r| r.contains(&format!(" {path} ")))
            .unwrap_or_else(|| panic!("{path} reached the server: {requests:?}"));
        let lower = request.to_ascii_lowercase();
        assert!(lower.contains("x-forwarded-proto: https\r\n"), "{request}");
        assert!(lower.contains(";proto=https;host=shop.example"), "{request}");
    }
    assert!(
        requests.iter().any(|r| r.ends_with("hello")),
        "the body went along: {requests:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_or_an_untrusting_client_on_the_tls_port_is_refused_in_the_handshake() {
    let ca = TestCa::new("refused");
    let other = TestCa::new("other");
    let (address, seen) = scripted_backend(ok_script).await;
    let proxy = proxy_for(address, &ca.proxy_toml()).await;
    // Plain HTTP to the TLS port: no request reaches a server, the connection is closed.
    let mut plain = TcpStream::connect(proxy.address).await.expect("connect");
    plain
        .write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    // A client trusting another CA fails its handshake.
    let mut config = (*common::tls_client::client_config(Some(&other.files.ca_cert)).expect("client config")).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(proxy.address).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    assert!(
        connector.connect(name, tcp).await.is_err(),
        "a certificate from another CA is not trusted"
    );
    assert!(seen.lock().expect("log").is_empty(), "nothing reached the server");
    // A trusting client is still served.
    let mut stream = ca.connect(proxy.address, b"http/1.1").await;
    stream
        .write_all(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    proxy.stop().await;
}

#[test]
fn tls_cert_without_tls_key_is_refused_naming_the_line() {
    let text = "[proxy]\nlisten = \"127.0.0.1:8080\"\ntls_cert = \"cert.pem\"\n[[proxy.servers]]\nname = \"a\"\naddress = \"127.0.0.1:9000\"\n";
    let error = proxy::config::parse(text).expect_err("half a TLS identity");
    assert!(error.contains("line 3"), "{error}");
    assert!(error.contains("tls_cert and tls_key come together"), "{error}");
}

/// A WebSocket-like backend on raw TCP: answers an upgrade request with `101` and a greeting,
/// then echoes every byte it receives; when the proxy closes its sending side, says "bye" and
/// closes. Anything else gets a plain 200. Records each request head.
async fn upgrade_backend() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let address = tcp_backend(move |mut stream| {
        let log = log.clone();
        async move {
            let mut buffer = Vec::new();
            loop {
                let Some(end) = read_head(&mut stream, &mut buffer).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                buffer.drain(..end);
                log.lock().expect("log").push(head.clone());
                if !head.to_ascii_lowercase().contains("\r\nupgrade: websocket\r\n") {
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    continue;
                }
                let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nhello-from-server;";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                // Bytes that came right behind the request head are the tunnel's.
                if !buffer.is_empty() && stream.write_all(&buffer).await.is_err() {
                    return;
                }
                let mut chunk = [0u8; 4096];
                loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) => {
                            let _ = stream.write_all(b"bye").await;
                            let _ = stream.shutdown().await;
                            return;
                        }
                        Ok(n) => {
                            if stream.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            }
        }
    })
    .await;
    (address, seen)
}

const UPGRADE_REQUEST: &[u8] = b"GET /socket HTTP/1.1\r\nHost: shop.example\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Reads from `stream` until `buffer` ends with `wanted` (or holds `wanted` somewhere).
async fn read_until<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buffer: &mut Vec<u8>, wanted: &[u8]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !buffer.windows(wanted.len()).any(|w| w == wanted) {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => panic!(
                "closed before {:?} arrived; got {:?}",
                String::from_utf8_lossy(wanted),
                String::from_utf8_lossy(buffer)
            ),
            Ok(Ok(n)) => buffer.extend_from_slice(&chunk[..n]),
            Ok(Err(error)) => panic!("read failed: {error}"),
            Err(_) => panic!(
                "{:?} did not arrive; got {:?}",
                String::from_utf8_lossy(wanted),
                String::from_utf8_lossy(buffer)
            ),
        }
    }
}

/// Reads until the peer closes; what came.
async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes within the deadline")
        .expect("read to the end");
    rest
}

/// The upgrade exchange through `stream` (plain or TLS): the 101, optimistic bytes, echoes both
/// ways, and a half-close passed on whose answer still comes back.
async fn websocket_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    proxy: &TestProxy,
    mut stream: S,
    seen: &std::sync::Mutex<Vec<String>>,
) {
    let mut request = UPGRADE_REQUEST.to_vec();
    request.extend_from_slice(b"early;");
    stream.write_all(&request).await.expect("write the upgrade");
    let mut got = Vec::new();
    read_until(&mut stream, &mut got, b"hello-from-server;").await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 101 "), "{text}");
    assert!(text.contains("\r\nupgrade: websocket\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: upgrade\r\n"), "{text}");
    assert!(
        text.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{text}"
    );
    let head = seen
        .lock()
        .expect("log")
        .last()
        .cloned()
        .expect("the server saw the request");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(
        lower.contains("\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n"),
        "{head}"
    );
    assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{head}");
    // The optimistic bytes were the tunnel's, and the tunnel echoes both ways.
    read_until(&mut stream, &mut got, b"early;").await;
    assert_eq!(proxy.shared.stats().tunnels_active.load(Ordering::Relaxed), 1);
    let big = vec![b'x'; 200_000];
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async {
        writer.write_all(&big).await.expect("write through the tunnel");
        writer.write_all(b";ping").await.expect("write through the tunnel");
    };
    let mut echo = Vec::new();
    tokio::join!(write, read_until(&mut reader, &mut echo, b";ping"));
    let echoed = echo.iter().filter(|b| **b == b'x').count();
    assert_eq!(echoed, big.len(), "every byte came back once");
    let mut stream = reader.unsplit(writer);
    // Our half-close reaches the server; its "bye" still comes back, then the close.
    stream.shutdown().await.expect("half-close");
    let rest = read_to_close(&mut stream).await;
    assert_eq!(rest, b"bye");
    wait_for("the tunnel closes", || {
        proxy.shared.stats().tunnels_active.load(Ordering::Relaxed) == 0
    })
    .await;
    assert!(proxy.shared.stats().tunnels_total.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_becomes_a_tunnel_both_ways() {
    let (address, seen) = upgrade_backend().await;
    let proxy = proxy_for(address, "").await;
    let stream = TcpStream::connect(proxy.address).await.expect("connect");
    websocket_exchange(&proxy, stream, &seen).await;
    let (_, metrics) = get(&client(), &format!("http://{}/metrics", proxy.admin)).await;
    assert!(metrics.contains("tunnels_total 1"), "{metrics}");
    assert!(metrics.contains("tunnels_active 0"), "{metrics}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_over_tls_becomes_a_tunnel_both_ways() {
    let ca = TestCa::new("websocket");
    let (address, seen) = upgrade_backend().await;
    let proxy = proxy_for(address, &ca.proxy_toml()).await;
    let stream = ca.connect(proxy.address, b"http/1.1").await;
    websocket_exchange(&proxy, stream, &seen).await;
    let head = seen.lock().expect("log").last().cloned().expect("a request");
    assert!(head.to_ascii_lowercase().contains("x-forwarded-proto: https"), "{head}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_closing_tcp_without_close_notify_half_closes_its_tunnel() {
    let ca = TestCa::new("no-close-notify");
    let (address, _) = upgrade_backend().await;
    let proxy = proxy_for(address, &ca.proxy_toml()).await;
    let mut stream = ca.connect(proxy.address, b"http/1.1").await;
    stream.write_all(UPGRADE_REQUEST).await.expect("write the upgrade");
    let mut got = Vec::new();
    read_until(&mut stream, &mut got, b"hello-from-server;").await;
    stream
        .write_all(b"last words;")
        .await
        .expect("write through the tunnel");
    stream.flush().await.expect("flush");
    read_until(&mut stream, &mut got, b"last words;").await;
    // FIN on the TCP connection under TLS, no close_notify first (as many clients end).
    tokio::io::AsyncWriteExt::shutdown(stream.get_mut().0)
        .await
        .expect("half-close the socket");
    // The end reached the server as a half-close: its answer still comes back, then a clean
    // TLS close.
    let rest = read_to_close(&mut stream).await;
    assert_eq!(rest, b"bye");
    wait_for("the tunnel closes", || {
        proxy.shared.stats().tunnels_active.load(Ordering::Relaxed) == 0
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_server_declines_is_an_ordinary_request_on_a_kept_connection() {
    let (address, seen) = scripted_backend(ok_script).await;
    let proxy = proxy_for(address, "").await;
    let mut stream = TcpStream::connect(proxy.address).await.expect("connect");
    for _ in 0..2 {
        stream.write_all(UPGRADE_REQUEST).await.expect("write");
        let mut got = Vec::new();
        read_until(&mut stream, &mut got, b"ok\n").await;
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    }
    assert_eq!(seen.lock().expect("log").len(), 2);
    assert_eq!(proxy.shared.stats().tunnels_total.load(Ordering::Relaxed), 0);
    proxy.stop().await;
    // The same over TLS.
    let ca = TestCa::new("declined");
    let proxy = proxy_for(address, &ca.proxy_toml()).await;
    let mut stream = ca.connect(proxy.address, b"http/1.1").await;
    for _ in 0..2 {
        stream.write_all(UPGRADE_REQUEST).await.expect("write");
        let mut got = Vec::new();
        read_until(&mut stream, &mut got, b"ok\n").await;
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    }
    assert_eq!(seen.lock().expect("log").len(), 4);
    assert_eq!(proxy.shared.stats().tunnels_total.load(Ordering::Relaxed), 0);
    proxy.stop().await;
}

fn switch_unasked_script(_: &str) -> (Vec<u8>, bool) {
    (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec(),
        false,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_the_client_did_not_ask_for_is_a_502_on_both_paths() {
    let ca = TestCa::new("unasked");
    let (address, _) = scripted_backend(switch_unasked_script).await;
    let plain = proxy_for(address, "").await;
    let answer = raw_exchange(plain.address, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    plain.stop().await;
    let tls = proxy_for(address, &ca.proxy_toml()).await;
    let mut stream = ca.connect(tls.address, b"http/1.1").await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let answer = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(tls.shared.stats().tunnels_total.load(Ordering::Relaxed), 0);
    tls.stop().await;
}

/// A backend that switches protocols, then sends a tick every `every` until the peer closes.
async fn ticking_backend(every: Duration) -> SocketAddr {
    tcp_backend(move |mut stream| async move {
        let mut buffer = Vec::new();
        if read_head(&mut stream, &mut buffer).await.is_none() {
            return;
        }
        let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        if stream.write_all(answer).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(every).await;
            if stream.write_all(b".").await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_lives_while_either_side_talks_and_closes_when_both_are_quiet() {
    // The server talks, the client never does: not idle (tunnel_idle_ms counts both ways).
    let address = ticking_backend(Duration::from_millis(20)).await;
    let proxy = proxy_for(address, "[proxy.timeouts]\ntunnel_idle_ms = 2000\n").await;
    let mut stream = TcpStream::connect(proxy.address).await.expect("connect");
    stream.write_all(UPGRADE_REQUEST).await.expect("write");
    let mut got = Vec::new();
    let started = Instant::now();
    // Ticks for twice tunnel_idle_ms, all arriving through one tunnel.
    while started.elapsed() < Duration::from_millis(4000) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut chunk))
            .await
            .expect("a tick within the deadline")
            .expect("read");
        assert!(n > 0, "the tunnel closed while the server was talking");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
    assert_eq!(proxy.shared.stats().tunnels_active.load(Ordering::Relaxed), 1);
    drop(stream);
    proxy.stop().await;

    // Neither side talks: closed after tunnel_idle_ms.
    let (address, _) = upgrade_backend().await;
    let proxy = proxy_for(address, "[proxy.timeouts]\ntunnel_idle_ms = 300\n").await;
    let mut stream = TcpStream::connect(proxy.address).await.expect("connect");
    stream.write_all(UPGRADE_REQUEST).await.expect("write");
    let mut got = Vec::new();
    read_until(&mut stream, &mut got, b"hello-from-server;").await;
    let quiet = Instant::now();
    let rest = read_to_close(&mut stream).await;
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        quiet.elapsed() >= Duration::from_millis(250),
        "closed before tunnel_idle_ms"
    );
    wait_for("the idle tunnel is counted closed", || {
        proxy.shared.stats().tunnels_active.load(Ordering::Relaxed) == 0
    })
    .await;
    proxy.stop().await;
}

/// A backend that switches protocols, says "bye" and half-closes at once, then counts the
/// bytes the client still sends (into `heard`) until the client's side ends.
async fn half_closing_backend(heard: Arc<AtomicUsize>) -> SocketAddr {
    tcp_backend(move |mut stream| {
        let heard = Arc::clone(&heard);
        async move {
            let mut buffer = Vec::new();
            if read_head(&mut stream, &mut buffer).await.is_none() {
                return;
            }
            let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbye";
            if stream.write_all(answer).await.is_err() || stream.shutdown().await.is_err() {
                return;
            }
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stream.read(&mut chunk).await {
                if n == 0 {
                    return;
                }
                heard.fetch_add(n, Ordering::SeqCst);
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_tunnel_lives_while_the_other_side_talks_then_closes_after_tunnel_fin_ms() {
    let heard = Arc::new(AtomicUsize::new(0));
    let address = half_closing_backend(Arc::clone(&heard)).await;
    // tunnel_idle_ms far away: only tunnel_fin_ms can close this tunnel within the deadline.
    let proxy = proxy_for(
        address,
        "[proxy.timeouts]\ntunnel_idle_ms = 3600000\ntunnel_fin_ms = 2000\n",
    )
    .await;
    let mut stream = TcpStream::connect(proxy.address).await.expect("connect");
    stream.write_all(UPGRADE_REQUEST).await.expect("write the upgrade");
    let mut got = Vec::new();
    read_until(&mut stream, &mut got, b"bye").await;
    // The server's half-close arrived; the client goes on talking for longer than
    // tunnel_fin_ms, every byte keeping the tunnel open and reaching the server.
    let mut closed = [0u8; 1];
    let eof = tokio::time::timeout(DEADLINE, stream.read(&mut closed)).await;
    assert!(
        matches!(eof, Ok(Ok(0))),
        "the server's half-close is passed on: {eof:?}"
    );
    let talk_until = tokio::time::Instant::now() + Duration::from_millis(3000);
    let mut sent = 0;
    while tokio::time::Instant::now() < talk_until {
        stream
            .write_all(b".")
            .await
            .expect("the tunnel is still open while the client talks");
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("every byte the client sent reaches the server", || {
        heard.load(Ordering::SeqCst) == sent
    })
    .await;
    assert_eq!(proxy.shared.stats().tunnels_active.load(Ordering::Relaxed), 1);
    // Then silence: the tunnel closes after tunnel_fin_ms, not tunnel_idle_ms.
    wait_for("the half-closed tunnel closes", || {
        proxy.shared.stats().tunnels_active.load(Ordering::Relaxed) == 0
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_proxy_closes_its_tunnels_without_waiting_out_the_grace() {
    let ca = TestCa::new("stop-tunnels");
    let (address, _) = upgrade_backend().await;
    let plain = proxy_for(address, "").await;
    let tls = proxy_for(address, &ca.proxy_toml()).await;
    let mut plain_stream = TcpStream::connect(plain.address).await.expect("connect");
    let mut tls_stream = ca.connect(tls.address, b"http/1.1").await;
    let mut got = Vec::new();
    plain_stream.write_all(UPGRADE_REQUEST).await.expect("write");
    read_until(&mut plain_stream, &mut got, b"hello-from-server;").await;
    got.clear();
    tls_stream.write_all(UPGRADE_REQUEST).await.expect("write");
    read_until(&mut tls_stream, &mut got, b"hello-from-server;").await;
    // Shutdown waits up to SHUTDOWN_GRACE_MS (30 s) for connections; tunnels end at once.
    let stopping = Instant::now();
    tokio::time::timeout(DEADLINE, async {
        plain.stop().await;
        tls.stop().await;
    })
    .await
    .expect("the proxies stop within the deadline");
    assert!(stopping.elapsed() < Duration::from_millis(proxy::proxy::SHUTDOWN_GRACE_MS));
    let _ = read_to_close(&mut plain_stream).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls_stream.read_to_end(&mut rest)).await;
}

/// A stream that keeps what is written to it until flushed (as TLS keeps its last record) or
/// until its buffer fills: tokio's `BufWriter` over one end of an in-memory pipe.
type Buffering = tokio::io::BufWriter<tokio::io::DuplexStream>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_flushes_every_write_so_nothing_waits_in_a_buffering_stream() {
    let (client_end, proxy_client_end) = tokio::io::duplex(64 * 1024);
    let (proxy_server_end, mut server_end) = tokio::io::duplex(64 * 1024);
    let client_side: Buffering = tokio::io::BufWriter::new(proxy_client_end);
    let server_side: Buffering = tokio::io::BufWriter::new(proxy_server_end);
    let (_stop_sender, mut stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let timeouts = proxy::tunnel::Timeouts {
            idle: Duration::from_secs(60),
            fin: Duration::from_secs(60),
        };
        proxy::tunnel::run(client_side, server_side, timeouts, true, &mut stop).await;
    });
    let mut client = client_end;
    // A short message each way, then each side waits for the other's: without a flush after
    // every write both would stay in the buffers (8 KiB) for ever.
    server_end
        .write_all(b"hello from the server")
        .await
        .expect("server writes");
    let mut got = Vec::new();
    read_until(&mut client, &mut got, b"hello from the server").await;
    client.write_all(b"hello from the client").await.expect("client writes");
    let mut got = Vec::new();
    read_until(&mut server_end, &mut got, b"hello from the client").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_read_while_the_proxy_stops_gets_503_and_reaches_no_server() {
    let (address, seen) = upgrade_backend().await;
    let proxy = proxy_for(address, "").await;
    let listen = proxy.address;
    let mut stream = TcpStream::connect(listen).await.expect("connect");
    let half = UPGRADE_REQUEST.len() / 2;
    stream.write_all(&UPGRADE_REQUEST[..half]).await.expect("write");
    let stopping = tokio::spawn(proxy.stop());
    // The proxy stops before it closes its listener: refused, it is stopping.
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(listen).await.is_ok() {
        assert!(Instant::now() < deadline, "the proxy never closed its listener");
        tokio::task::yield_now().await;
    }
    stream.write_all(&UPGRADE_REQUEST[half..]).await.expect("write");
    let answer = String::from_utf8_lossy(&read_to_close(&mut stream).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("stopping"), "{answer}");
    assert!(seen.lock().expect("log").is_empty(), "a server saw the upgrade");
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("the proxy stops")
        .expect("stop task");
}

fn switch_to_another_protocol_script(_: &str) -> (Vec<u8>, bool) {
    (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: irc\r\nConnection: Upgrade\r\n\r\n".to_vec(),
        false,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_to_a_protocol_the_client_did_not_ask_for_is_a_502() {
    for (transport, ca) in [("plain", None), ("tls", Some(TestCa::new("other-protocol")))] {
        let (address, _) = scripted_backend(switch_to_another_protocol_script).await;
        let proxy = proxy_for(address, &ca.as_ref().map(TestCa::proxy_toml).unwrap_or_default()).await;
        let answer = match &ca {
            None => raw_exchange(proxy.address, UPGRADE_REQUEST).await,
            Some(ca) => {
                let mut stream = ca.connect(proxy.address, b"http/1.1").await;
                stream.write_all(UPGRADE_REQUEST).await.expect("write");
                let mut got = Vec::new();
                read_until(&mut stream, &mut got, b"\r\n\r\n").await;
                String::from_utf8_lossy(&got).into_owned()
            }
        };
        assert!(answer.starts_with("HTTP/1.1 502"), "{transport}: {answer}");
        assert_eq!(proxy.shared.stats().tunnels_total.load(Ordering::Relaxed), 0);
        proxy.stop().await;
    }
}

/// A backend answering every request with `size` bytes of body; counts the connections it saw
/// closed by the proxy.
async fn big_answer_backend(size: usize) -> (SocketAddr, Arc<AtomicU64>) {
    let closed = Arc::new(AtomicU64::new(0));
    let counted = closed.clone();
    let address = tcp_backend(move |mut stream| {
        let counted = counted.clone();
        async move {
            let mut buffer = Vec::new();
            if read_head(&mut stream, &mut buffer).await.is_some() {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                let _ = stream.write_all(head.as_bytes()).await;
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = size;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    left -= n;
                }
                let mut rest = [0u8; 1024];
                while let Ok(n) = stream.read(&mut rest).await {
                    if n == 0 {
                        break;
                    }
                }
            }
            counted.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    (address, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_client_that_stops_reading_is_given_up_and_frees_its_connection() {
    // 32 MiB: more than every buffer between the server and the client holds. Closing such a
    // TLS connection waited for ever to write rustls' last records and its close_notify.
    const SIZE: usize = 32 * 1024 * 1024;
    let ca = TestCa::new("stalled-reader");
    let (address, server_closed) = big_answer_backend(SIZE).await;
    let proxy = proxy_for(
        address,
        &format!("{}\n[proxy.timeouts]\nidle_ms = 300\n", ca.proxy_toml()),
    )
    .await;
    let active = || proxy.shared.stats().connections_active.load(Ordering::SeqCst);
    let mut stream = ca.connect(proxy.address, b"http/1.1").await;
    stream
        .write_all(b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    // The client reads nothing from here on.
    wait_for("the server connection to be closed, not pooled", || {
        server_closed.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_for("the stalled client's connection (task, permit) to be freed", || {
        active() == 0
    })
    .await;
    drop(stream);
    proxy.stop().await;
}

/// A backend that sends a head and part of a body, then stalls; counts the closes it sees.
async fn stalling_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let closed = Arc::new(AtomicU64::new(0));
    let counted = closed.clone();
    let address = tcp_backend(move |mut stream| {
        let counted = counted.clone();
        async move {
            let mut buffer = Vec::new();
            if read_head(&mut stream, &mut buffer).await.is_some() {
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nstart")
                    .await;
                let _ = stream.read(&mut [0u8; 16]).await;
            }
            counted.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    (address, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_close_notify_frees_a_stalled_servers_connection_at_once() {
    // idle_ms past the test's deadline: only noticing the reset frees the server connection.
    let ca = TestCa::new("reset-after-close-notify");
    let (address, closed) = stalling_backend().await;
    let proxy = proxy_for(
        address,
        &format!("{}\n[proxy.timeouts]\nidle_ms = 120000\n", ca.proxy_toml()),
    )
    .await;
    let mut stream = ca.connect(proxy.address, b"http/1.1").await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    read_until(&mut stream, &mut got, b"start").await;
    // close_notify (bytes the proxy does not read while the server stalls), then a reset.
    stream.shutdown().await.expect("close_notify");
    stream.get_ref().0.set_zero_linger().expect("linger");
    drop(stream);
    wait_for("the stalled server's connection to be closed", || {
        closed.load(Ordering::SeqCst) == 1
    })
    .await;
    proxy.stop().await;
}
