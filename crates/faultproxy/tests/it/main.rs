//! Real sockets end to end: an echo server behind a fault proxy driven through its HTTP control
//! API. Assertions are on bytes, order and how connections end; times appear only as lower
//! bounds (a toxic that delays must delay at least that long), never as upper bounds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faultproxy::{AllowList, FaultProxyConfig, Limits, Registry};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Waits for a condition, not a time: generous because CI machines are shared.
const WAIT_MS_MAX: u64 = 10_000;

async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let address = listener.local_addr().expect("echo address");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buffer[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    address
}

struct Harness {
    api: SocketAddr,
    echo: SocketAddr,
    /// Sent as a bearer token on every call.
    token: Option<String>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Harness {
    async fn new() -> Harness {
        Harness::with_limits(Limits::default()).await
    }

    async fn with_limits(limits: Limits) -> Harness {
        Harness::with(limits, AllowList::default(), None).await
    }

    async fn with(limits: Limits, allowed: AllowList, token: Option<&str>) -> Harness {
        let echo = echo_server().await;
        let registry = Arc::new(Registry::with_allowed(limits, 42, allowed));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind api");
        let api = listener.local_addr().expect("api address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(faultproxy::api::serve_with_token(
            listener,
            registry,
            token.map(str::to_string),
            async {
                rx.await.ok();
            },
        ));
        Harness {
            api,
            echo,
            token: token.map(str::to_string),
            _shutdown: tx,
        }
    }

    /// One HTTP/1.1 request over a fresh connection; returns status and JSON body (or Null).
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(self.token.as_deref(), method, path, body).await
    }

    /// [`Harness::call`] with `token` (or none) instead of the harness's.
    async fn call_as(&self, token: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut stream = TcpStream::connect(self.api).await.expect("connect api");
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.api,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("send request");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read response");
        let text = String::from_utf8(response).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("response head");
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let value = serde_json::from_str(body).unwrap_or(Value::Null);
        (status, value)
    }

    /// Creates a proxy in front of the echo server on a free port; returns its address.
    async fn proxy(&self, name: &str) -> SocketAddr {
        let (status, body) = self
            .call(
                "POST",
                "/proxies",
                Some(json!({"name": name, "listen": "127.0.0.1:0", "upstream": self.echo.to_string()})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["listen"].as_str().expect("listen").parse().expect("bound address")
    }

    async fn toxic(&self, proxy: &str, toxic: Value) {
        let (status, body) = self
            .call("POST", &format!("/proxies/{proxy}/toxics"), Some(toxic))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buffer = vec![0u8; len];
    tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), stream.read_exact(&mut buffer))
        .await
        .expect("data within the wait limit")
        .expect("read");
    buffer
}

async fn read_to_end(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buffer = Vec::new();
    tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), stream.read_to_end(&mut buffer))
        .await
        .expect("end of stream within the wait limit")?;
    Ok(buffer)
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn passes_bytes_unchanged_without_toxics_and_keeps_half_close() {
    let harness = Harness::new().await;
    let address = harness.proxy("echo").await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let data = payload(100_000);
    let (mut read, mut write) = stream.split();
    let writer = async {
        write.write_all(&data).await.expect("write");
        write.shutdown().await.expect("half close");
    };
    let reader = async {
        let mut received = Vec::new();
        read.read_to_end(&mut received).await.expect("read to end");
        received
    };
    let ((), received) = tokio::join!(writer, reader);
    assert_eq!(received, data);
}

#[tokio::test]
async fn latency_delays_each_direction_at_least_as_configured() {
    let harness = Harness::new().await;
    let address = harness.proxy("slow").await;
    harness
        .toxic(
            "slow",
            json!({"type": "latency", "stream": "downstream", "attributes": {"latency": 150, "jitter": 20}}),
        )
        .await;
    harness
        .toxic(
            "slow",
            json!({"type": "latency", "stream": "upstream", "attributes": {"latency": 100}}),
        )
        .await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    for round in 0..3u8 {
        let started = Instant::now();
        stream.write_all(&[round; 10]).await.expect("write");
        assert_eq!(read_exactly(&mut stream, 10).await, vec![round; 10]);
        assert!(
            started.elapsed() >= Duration::from_millis(100 + 130),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn bandwidth_limits_throughput() {
    let harness = Harness::new().await;
    let address = harness.proxy("narrow").await;
    harness
        .toxic(
            "narrow",
            json!({"type": "bandwidth", "stream": "downstream", "attributes": {"rate": 50}}),
        )
        .await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let data = payload(20_000);
    let started = Instant::now();
    stream.write_all(&data).await.expect("write");
    assert_eq!(read_exactly(&mut stream, data.len()).await, data);
    // 20 000 bytes at 50 000 bytes/s take at least 0.4 s.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn slicer_delivers_the_same_bytes_in_several_pieces() {
    let harness = Harness::new().await;
    let address = harness.proxy("sliced").await;
    harness
        .toxic(
            "sliced",
            json!({"type": "slicer", "attributes": {"average_size": 10, "size_variation": 3, "delay": 20000}}),
        )
        .await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let data = payload(100);
    stream.write_all(&data).await.expect("write");
    let mut received = Vec::new();
    let mut reads = 0;
    let mut buffer = [0u8; 1000];
    while received.len() < data.len() {
        let n = tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), stream.read(&mut buffer))
            .await
            .expect("a slice within the wait limit")
            .expect("read");
        assert!(n > 0, "closed early");
        assert!(n <= 13 * 10, "slices are small");
        received.extend_from_slice(&buffer[..n]);
        reads += 1;
    }
    assert_eq!(received, data);
    assert!(reads >= 3, "one 100-byte write arrived in {reads} reads");
}

#[tokio::test]
async fn limit_data_closes_after_the_limit() {
    let harness = Harness::new().await;
    let address = harness.proxy("limited").await;
    harness
        .toxic("limited", json!({"type": "limit_data", "attributes": {"bytes": 10}}))
        .await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(&payload(100)).await.expect("write");
    let received = read_to_end(&mut stream).await.expect("clean close");
    assert_eq!(received, payload(10));
}

#[tokio::test]
async fn reset_peer_resets_the_connection() {
    let harness = Harness::new().await;
    let address = harness.proxy("rst").await;
    harness
        .toxic("rst", json!({"type": "reset_peer", "attributes": {"timeout": 0}}))
        .await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"hello").await.ok();
    let error = read_to_end(&mut stream).await.expect_err("a reset, not a clean close");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
}

#[tokio::test]
async fn timeout_blackholes_until_removed_and_the_connection_heals_live() {
    let harness = Harness::new().await;
    let address = harness.proxy("hole").await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"before").await.expect("write");
    assert_eq!(read_exactly(&mut stream, 6).await, b"before");

    harness
        .toxic(
            "hole",
            json!({"name": "hole", "type": "timeout", "stream": "upstream", "attributes": {"timeout": 0}}),
        )
        .await;
    stream.write_all(b"during").await.expect("write");
    let mut buffer = [0u8; 16];
    let silent = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer)).await;
    assert!(silent.is_err(), "a blackhole neither answers nor closes: {silent:?}");

    let (status, _) = harness.call("DELETE", "/proxies/hole/toxics/hole", None).await;
    assert_eq!(status, 204);
    // The held bytes flow once the toxic is gone, on the same connection.
    assert_eq!(read_exactly(&mut stream, 6).await, b"during");
    stream.write_all(b"after").await.expect("write");
    assert_eq!(read_exactly(&mut stream, 5).await, b"after");
}

#[tokio::test]
async fn timeout_with_a_duration_closes_the_connection() {
    let harness = Harness::new().await;
    let address = harness.proxy("closing").await;
    harness
        .toxic("closing", json!({"type": "timeout", "attributes": {"timeout": 100}}))
        .await;
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"lost").await.expect("write");
    let started = Instant::now();
    let received = read_to_end(&mut stream).await.expect("closed");
    assert!(received.is_empty(), "nothing passes a timeout toxic");
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn disabled_proxy_refuses_connections_and_comes_back_on_the_same_address() {
    let harness = Harness::new().await;
    let address = harness.proxy("down").await;
    let mut open = TcpStream::connect(address).await.expect("connect");
    let (status, body) = harness
        .call("POST", "/proxies/down", Some(json!({"enabled": false})))
        .await;
    assert_eq!((status, &body["enabled"]), (200, &json!(false)), "{body}");
    // Existing connections are closed, new ones refused.
    let received = read_to_end(&mut open).await.unwrap_or_default();
    assert!(received.is_empty());
    let error = TcpStream::connect(address).await.expect_err("refused while down");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);

    let (status, _) = harness
        .call("POST", "/proxies/down", Some(json!({"enabled": true})))
        .await;
    assert_eq!(status, 200);
    let mut stream = TcpStream::connect(address).await.expect("connect after enable");
    stream.write_all(b"up").await.expect("write");
    assert_eq!(read_exactly(&mut stream, 2).await, b"up");
}

#[tokio::test]
async fn reset_removes_toxics_and_enables_every_proxy() {
    let harness = Harness::new().await;
    let address = harness.proxy("a").await;
    harness.toxic("a", json!({"type": "timeout"})).await;
    let (status, _) = harness
        .call("POST", "/proxies/a", Some(json!({"enabled": false})))
        .await;
    assert_eq!(status, 200);
    let (status, _) = harness.call("POST", "/reset", None).await;
    assert_eq!(status, 204);
    let (_, proxies) = harness.call("GET", "/proxies", None).await;
    assert_eq!(proxies["a"]["enabled"], json!(true));
    assert_eq!(proxies["a"]["toxics"], json!([]));
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(b"ok").await.expect("write");
    assert_eq!(read_exactly(&mut stream, 2).await, b"ok");
}

#[tokio::test]
async fn api_follows_toxiproxy_shapes_and_errors() {
    let harness = Harness::new().await;
    harness.proxy("shop").await;
    let (status, body) = harness
        .call(
            "POST",
            "/proxies",
            Some(json!({"name": "shop", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"})),
        )
        .await;
    assert_eq!((status, &body["status"]), (409, &json!(409)), "{body}");
    assert!(body["error"].as_str().expect("error text").contains("shop"));

    let (status, body) = harness.call("GET", "/proxies/nope", None).await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = harness
        .call("POST", "/proxies/shop/toxics", Some(json!({"type": "latenccy"})))
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().expect("error").contains("latenccy"), "{body}");

    harness
        .toxic(
            "shop",
            json!({"type": "latency", "toxicity": 0.5, "attributes": {"latency": 5}}),
        )
        .await;
    let (status, toxic) = harness
        .call("GET", "/proxies/shop/toxics/latency_downstream", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        toxic,
        json!({"name": "latency_downstream", "type": "latency", "stream": "downstream", "toxicity": 0.5,
               "attributes": {"latency": 5, "jitter": 0}})
    );
    let (status, toxic) = harness
        .call(
            "POST",
            "/proxies/shop/toxics/latency_downstream",
            Some(json!({"attributes": {"jitter": 2}})),
        )
        .await;
    assert_eq!(
        (status, &toxic["attributes"]),
        (200, &json!({"latency": 5, "jitter": 2}))
    );
    let (status, _) = harness.call("POST", "/proxies/shop/toxics", Some(toxic.clone())).await;
    assert_eq!(status, 409, "same name twice");

    let (status, list) = harness.call("GET", "/proxies/shop/toxics", None).await;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));
    let (status, _) = harness.call("DELETE", "/proxies/shop", None).await;
    assert_eq!(status, 204);
    let (_, proxies) = harness.call("GET", "/proxies", None).await;
    assert_eq!(proxies, json!({}));

    let (status, body) = harness
        .call(
            "POST",
            "/populate",
            Some(json!([{"name": "p1", "listen": "127.0.0.1:0", "upstream": harness.echo.to_string()}])),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["proxies"][0]["name"], json!("p1"));
}

#[tokio::test]
async fn with_a_token_every_call_but_health_must_present_it() {
    let harness = Harness::with(Limits::default(), AllowList::default(), Some("s3cret")).await;
    let create = json!({"name": "shop", "listen": "127.0.0.1:0", "upstream": harness.echo.to_string()});
    for token in [None, Some("wrong"), Some("s3cret2"), Some("s3cre")] {
        let (status, body) = harness.call_as(token, "POST", "/proxies", Some(create.clone())).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body["error"].as_str().expect("error").contains("Bearer"), "{body}");
        let (status, _) = harness.call_as(token, "GET", "/proxies", None).await;
        assert_eq!(status, 401);
    }
    let (_, proxies) = harness.call("GET", "/proxies", None).await;
    assert_eq!(proxies, json!({}), "refused calls changed nothing");
    harness.proxy("shop").await;
    let (status, _) = harness.call_as(None, "GET", "/health", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn without_a_token_the_api_refuses_to_listen_beyond_loopback() {
    let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind every address");
    let registry = Arc::new(Registry::new(Limits::default(), 1));
    let error = faultproxy::api::serve(listener, Arc::clone(&registry), std::future::pending())
        .await
        .expect_err("an open control API without a token is refused");
    assert!(error.to_string().contains("--token-file"), "{error}");
    let listener = TcpListener::bind("0.0.0.0:0").await.expect("bind every address");
    let error = faultproxy::run(listener, FaultProxyConfig::default(), 1, None, std::future::pending())
        .await
        .expect_err("refused by run too");
    assert!(error.to_string().contains("loopback"), "{error}");
}

#[tokio::test]
async fn upstreams_outside_the_allowed_networks_are_refused() {
    let harness = Harness::new().await;
    let (status, body) = harness
        .call(
            "POST",
            "/proxies",
            Some(json!({"name": "out", "listen": "127.0.0.1:0", "upstream": "10.255.255.1:80"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let error = body["error"].as_str().expect("error");
    assert!(
        error.contains("10.255.255.1") && error.contains("--allow-upstream") && error.contains("127.0.0.0/8"),
        "{error}"
    );
    let (status, body) = harness
        .call(
            "POST",
            "/proxies",
            Some(json!({"name": "nowhere", "listen": "127.0.0.1:0", "upstream": "no-such-host.invalid:80"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // An update may not move a proxy out either, and a refused update changes nothing.
    harness.proxy("shop").await;
    let (status, body) = harness
        .call("POST", "/proxies/shop", Some(json!({"upstream": "169.254.169.254:80"})))
        .await;
    assert_eq!(status, 403, "{body}");
    let (_, shop) = harness.call("GET", "/proxies/shop", None).await;
    assert_eq!(shop["upstream"], json!(harness.echo.to_string()));
    let (status, _) = harness
        .call(
            "POST",
            "/populate",
            Some(json!([{"name": "p1", "listen": "127.0.0.1:0", "upstream": "192.0.2.1:80"}])),
        )
        .await;
    assert_eq!(status, 403);
    let (_, proxies) = harness.call("GET", "/proxies", None).await;
    assert_eq!(proxies.as_object().map(|p| p.len()), Some(1), "{proxies}");

    // A list replaces the default: loopback is then refused unless listed.
    let elsewhere = AllowList::new(vec!["10.0.0.0/8".parse().expect("prefix")]);
    let harness = Harness::with(Limits::default(), elsewhere, None).await;
    let (status, body) = harness
        .call(
            "POST",
            "/proxies",
            Some(json!({"name": "local", "listen": "127.0.0.1:0", "upstream": harness.echo.to_string()})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed() {
    let harness = Harness::with_limits(Limits {
        connections_max: 1,
        buffer_bytes: 4096,
    })
    .await;
    let address = harness.proxy("one").await;
    let mut first = TcpStream::connect(address).await.expect("connect");
    first.write_all(b"1").await.expect("write");
    assert_eq!(read_exactly(&mut first, 1).await, b"1");
    let mut second = TcpStream::connect(address).await.expect("connect");
    second.write_all(b"2").await.ok();
    let received = read_to_end(&mut second).await.unwrap_or_default();
    assert!(received.is_empty(), "the second connection is closed, not served");
    first.write_all(b"3").await.expect("write");
    assert_eq!(read_exactly(&mut first, 1).await, b"3");
}

#[tokio::test]
async fn config_proxies_start_with_their_toxics() {
    let echo = echo_server().await;
    let text = format!(
        "[fault_proxy]\nseed = 7\n[[fault_proxy.proxies]]\nname = \"cfg\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{echo}\"\n[[fault_proxy.proxies.toxics]]\ntype = \"limit_data\"\nattributes = {{ bytes = 3 }}\n"
    );
    let config: FaultProxyConfig = faultproxy::config::from_toml(&text, "test.toml").expect("config");
    let registry = faultproxy::start(&config, 1).await.expect("start");
    let view = registry.get("cfg").await.expect("proxy");
    let mut stream = TcpStream::connect(view.listen.as_str()).await.expect("connect");
    stream.write_all(b"abcdef").await.expect("write");
    assert_eq!(read_to_end(&mut stream).await.expect("closed"), b"abc");
    registry.stop_all().await;
}
