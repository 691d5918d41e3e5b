//! The HTTP front in process: what reaches a client before any operation runs.

use std::sync::Arc;

use std::time::Duration;

use common::http::Limits;
use store::server::{REQUEST_BODY_BYTES_MAX, ServerConfig, default_limits, run, run_with_limits};
use store::{Engine, SystemClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for the server to act on a short limit before it fails (a bound on
/// the wait, never a timing assertion).
const WAIT_SECS: u64 = 20;
/// A kept-alive ListTables request, raw.
const LIST_TABLES: &[u8] =
    b"POST / HTTP/1.1\r\nhost: x\r\nx-amz-target: DynamoDB_20120810.ListTables\r\ncontent-length: 2\r\n\r\n{}";

async fn post(url: &str, operation: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let (status, value) = testkit::dynamodb_call(url, operation, body).await;
    assert!(!value.is_null(), "{operation}: a JSON answer, not plain text");
    (status, value)
}

#[tokio::test]
async fn an_oversize_body_gets_413_with_a_dynamodb_validation_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(
        listener,
        engine,
        ServerConfig {
            credentials: None,
            replication: None,
        },
        async {
            let _ = stopped.await;
        },
    ));
    let (status, body) = post(&url, "PutItem", vec![b' '; REQUEST_BODY_BYTES_MAX + 1]).await;
    assert_eq!(status, 413, "{body}");
    // DynamoDB's own namespace for validation errors.
    assert_eq!(body["__type"], "com.amazon.coral.validate#ValidationException");
    let message = body["message"].as_str().expect("a message");
    assert!(message.contains(&REQUEST_BODY_BYTES_MAX.to_string()), "{message}");
    // The server still answers afterwards.
    let (status, body) = post(&url, "ListTables", b"{}".to_vec()).await;
    assert_eq!(status, 200, "{body}");
    let _ = stop.send(());
    server.await.expect("server task").expect("server ran");
}

/// A store on loopback with `limits`; the guard stops it.
struct Edge {
    address: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn edge(limits: Limits) -> Edge {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run_with_limits(
        listener,
        engine,
        ServerConfig {
            credentials: None,
            replication: None,
        },
        limits,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    Edge {
        address,
        stop: Some(stop),
        _dir: dir,
    }
}

/// Everything the server sends until it closes (or resets) the connection.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = async {
        let mut buffer = [0u8; 4096];
        while let Ok(count @ 1..) = stream.read(&mut buffer).await {
            received.extend_from_slice(&buffer[..count]);
        }
    };
    tokio::time::timeout(Duration::from_secs(WAIT_SECS), read)
        .await
        .expect("the server closes the connection");
    String::from_utf8_lossy(&received).into_owned()
}

fn short_timeouts() -> Limits {
    Limits {
        header_read_timeout_ms: 300,
        body_read_timeout_ms: 300,
        idle_timeout_ms: 300,
        ..default_limits()
    }
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_answer() {
    let store = edge(default_limits()).await;
    let mut stream = TcpStream::connect(store.address).await.expect("connect");
    // A write: its answer waits for the commit, so the end of the request arrives while the
    // server is still working on it.
    let body = r#"{"TableName":"half","BillingMode":"PAY_PER_REQUEST","KeySchema":[{"AttributeName":"pk","KeyType":"HASH"}],"AttributeDefinitions":[{"AttributeName":"pk","AttributeType":"S"}]}"#;
    let request = format!(
        "POST / HTTP/1.1\r\nhost: x\r\nx-amz-target: DynamoDB_20120810.CreateTable\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    stream.shutdown().await.expect("half-close the write side");
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("TableDescription"), "{answer}");
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let store = edge(default_limits()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    // `GET /` is DynamoDB's health line naming the host reached (and an answer to a browser,
    // which sends an Origin, carries CORS headers).
    let request = hyper::Request::get(format!("http://{}/", store.address))
        .header("origin", "http://app.example")
        .body(http_body_util::Empty::new())
        .expect("valid request");
    let response = client.request(request).await.expect("store answers");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"*"[..])
    );
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, format!("healthy: {} ", store.address).as_bytes());
    let request = hyper::Request::get(format!("http://{}/", store.address))
        .body(http_body_util::Empty::new())
        .expect("valid request");
    let response = client.request(request).await.expect("store answers");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        !response.headers().contains_key("access-control-allow-origin"),
        "no CORS headers without an Origin, as DynamoDB"
    );
    assert_eq!(
        response.headers().get("server").map(|v| v.as_bytes()),
        Some(&b"Server"[..]),
        "DynamoDB's Server header"
    );
    for (method, path, status) in [
        ("PUT", "/", 405),
        ("DELETE", "/", 405),
        ("GET", "/nowhere", 404),
        ("POST", "/health", 405),
    ] {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", store.address))
            .body(http_body_util::Empty::new())
            .expect("valid request");
        let response = client.request(request).await.expect("store answers");
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            response.headers().get("server").map(|v| v.as_bytes()),
            Some(&b"Server"[..]),
            "errors carry it too"
        );
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error body");
        assert!(
            json["__type"]
                .as_str()
                .is_some_and(|t| t.ends_with("#UnknownOperationException")),
            "{json}"
        );
        assert!(json["message"].as_str().is_some_and(|m| m.contains(path)), "{json}");
    }
}

#[tokio::test]
async fn idle_connections_and_slow_heads_are_closed() {
    let store = edge(short_timeouts()).await;
    // Connected, never sends a byte: closed by the idle timeout.
    let mut idle = TcpStream::connect(store.address).await.expect("connect");
    assert_eq!(read_until_closed(&mut idle).await, "");
    // Sends part of a head and stalls: closed by the header read timeout.
    let mut slow = TcpStream::connect(store.address).await.expect("connect");
    slow.write_all(b"POST / HTTP/1.1\r\nhost: x\r\n").await.expect("send");
    assert_eq!(read_until_closed(&mut slow).await, "");
    // A keep-alive connection that was served, then idles, is closed too.
    let mut served = TcpStream::connect(store.address).await.expect("connect");
    served.write_all(LIST_TABLES).await.expect("send");
    let answer = read_until_closed(&mut served).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_head_started_on_an_idle_connection_gets_the_header_timeout_not_the_idle_one() {
    // The idle timeout is far past the wait below: only the header read timeout can close these.
    let store = edge(Limits {
        header_read_timeout_ms: 300,
        idle_timeout_ms: 3_600_000,
        ..default_limits()
    })
    .await;
    // A new connection that starts a head and stalls (one byte of it, then nothing).
    let mut fresh = TcpStream::connect(store.address).await.expect("connect");
    fresh.write_all(b"P").await.expect("send");
    assert_eq!(read_until_closed(&mut fresh).await, "");
    // A keep-alive connection, served once, that starts its next head and stalls.
    let mut served = TcpStream::connect(store.address).await.expect("connect");
    served.write_all(LIST_TABLES).await.expect("send");
    let mut answer = [0u8; 12];
    served.read_exact(&mut answer).await.expect("an answer");
    assert_eq!(&answer, b"HTTP/1.1 200");
    served.write_all(b"POST / HTTP/1.1\r\nho").await.expect("send");
    read_until_closed(&mut served).await;
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_the_connection_closes() {
    let store = edge(short_timeouts()).await;
    let mut stream = TcpStream::connect(store.address).await.expect("connect");
    stream
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\nx-amz-target: DynamoDB_20120810.ListTables\r\ncontent-length: 100\r\n\r\n{\"Li")
        .await
        .expect("send");
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("RequestTimeoutException"), "{answer}");
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413() {
    let limits = Limits {
        request_body_bytes_max: 1000,
        ..default_limits()
    };
    let store = edge(limits).await;
    let mut stream = TcpStream::connect(store.address).await.expect("connect");
    let chunk = "x".repeat(600);
    let request = format!(
        "POST / HTTP/1.1\r\nhost: x\r\nx-amz-target: DynamoDB_20120810.PutItem\r\ntransfer-encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("ValidationException") && answer.contains("1000 bytes"),
        "{answer}"
    );
}

#[tokio::test]
async fn connections_over_the_per_client_limit_are_refused_with_503() {
    let limits = Limits {
        connections_per_client_max: 2,
        ..default_limits()
    };
    let store = edge(limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(store.address).await.expect("connect");
        // A served request proves the connection was admitted before the next one opens.
        stream.write_all(LIST_TABLES).await.expect("send");
        let mut buffer = [0u8; 12];
        stream.read_exact(&mut buffer).await.expect("answer");
        assert_eq!(&buffer, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut third = TcpStream::connect(store.address).await.expect("connect");
    let answer = read_until_closed(&mut third).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("from this client address"), "{answer}");
    // Once one closes, a new connection is served again.
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(WAIT_SECS);
    loop {
        let mut stream = TcpStream::connect(store.address).await.expect("connect");
        stream
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\nx-amz-target: DynamoDB_20120810.ListTables\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            .await
            .expect("send");
        let answer = read_until_closed(&mut stream).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot freed: {answer}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn requests_rfc_9112_refuses_get_400_and_501_in_dynamodbs_error_shape() {
    let store = edge(default_limits()).await;
    let list = "x-amz-target: DynamoDB_20120810.ListTables\r\ncontent-type: application/x-amz-json-1.0\r\n";
    // An HTTP/1.1 request without Host; the same with Host is served; HTTP/1.0 needs none.
    for (request, status) in [
        (
            format!("POST / HTTP/1.1\r\n{list}content-length: 2\r\nconnection: close\r\n\r\n{{}}"),
            "400",
        ),
        (
            format!("POST / HTTP/1.1\r\nhost: x\r\n{list}content-length: 2\r\nconnection: close\r\n\r\n{{}}"),
            "200",
        ),
        (format!("POST / HTTP/1.0\r\n{list}content-length: 2\r\n\r\n{{}}"), "200"),
        // A transfer coding other than chunked, before it.
        (
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\n{list}transfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
            ),
            "501",
        ),
        // Chunked twice, and two Host headers.
        (
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\n{list}transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
            ),
            "501",
        ),
        (
            format!(
                "POST / HTTP/1.1\r\nhost: x\r\nhost: y\r\n{list}content-length: 2\r\nconnection: close\r\n\r\n{{}}"
            ),
            "400",
        ),
    ] {
        let mut stream = TcpStream::connect(store.address).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let answer = read_until_closed(&mut stream).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")) || answer.starts_with(&format!("HTTP/1.0 {status}")),
            "{request:?}: {answer}"
        );
        if status != "200" {
            assert!(
                answer.contains("\"__type\":\"com.amazon.coral.validate#ValidationException\""),
                "{answer}"
            );
            assert!(answer.contains("RFC 9112"), "{answer}");
        }
    }
}

#[tokio::test]
async fn an_http2_connection_between_requests_gets_the_idle_timeout_not_the_header_one() {
    // Frames a client sends between requests (PINGs here; WINDOW_UPDATEs while a big answer
    // streams) are no head: only the idle timeout, far past this test, may close the connection.
    let store = edge(Limits {
        header_read_timeout_ms: 200,
        idle_timeout_ms: 3_600_000,
        ..default_limits()
    })
    .await;
    let tcp = TcpStream::connect(store.address).await.expect("connect");
    let (mut client, mut connection) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let mut ping_pong = connection.ping_pong().expect("ping pong");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let address = store.address;
    let list_tables = |client: &mut h2::client::SendRequest<bytes::Bytes>| {
        let request = hyper::Request::post(format!("http://{address}/"))
            .header("x-amz-target", "DynamoDB_20120810.ListTables")
            .header("content-type", "application/x-amz-json-1.0")
            .body(())
            .expect("request");
        let (response, mut body) = client.send_request(request, false).expect("send");
        body.send_data(bytes::Bytes::from_static(b"{}"), true).expect("body");
        response
    };
    let first = list_tables(&mut client).await.expect("an answer");
    assert_eq!(first.status(), 200);
    // PINGs for longer than the header read timeout, then a second request on the connection.
    for _ in 0..5 {
        ping_pong
            .ping(h2::Ping::opaque())
            .await
            .expect("the connection answers PING");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = client.ready().await.expect("the connection is still open");
    let second = list_tables(&mut client)
        .await
        .expect("an answer on the same connection");
    assert_eq!(second.status(), 200);
}
