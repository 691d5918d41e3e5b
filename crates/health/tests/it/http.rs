//! HTTP and TCP probes against a hyper server and TCP listeners in the test.

use std::collections::BTreeMap;
use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use health::ProbeKind;
use health::probe::probe;

use crate::support::{accept_each, loopback_listener, spec};

/// Answers `/ok` with 200 "all good", `/fail` with 503, `/slow` never; anything else 404.
async fn start_app() -> std::net::SocketAddr {
    let (listener, address) = loopback_listener().await;
    accept_each(listener, |stream| async move {
        let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
            let (status, body) = match request.uri().path() {
                "/ok" => (200, "status: all good"),
                "/fail" => (503, "maintenance"),
                "/slow" => {
                    std::future::pending::<()>().await;
                    (200, "")
                }
                "/host" => {
                    let check = request.headers().get("x-check").map(|v| v.as_bytes().to_vec());
                    let hosts: Vec<_> = request.headers().get_all("host").iter().collect();
                    let shop = hosts.len() == 1 && hosts[0].as_bytes() == b"shop.example";
                    if check.as_deref() == Some(b"yes") && shop {
                        (200, "header seen")
                    } else {
                        (400, "no header")
                    }
                }
                _ => (404, "not found"),
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(body)))
                    .expect("response"),
            )
        });
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    address
}

fn http(url: String, expect_status: Option<u16>, body_contains: Option<&str>) -> ProbeKind {
    ProbeKind::Http {
        url,
        method: "GET".into(),
        expect_status,
        body_contains: body_contains.map(str::to_string),
        headers: BTreeMap::new(),
        ca_file: None,
        tls_verify: true,
    }
}

/// A TCP listener that accepts but never answers HTTP, and an HTTP check of it with a
/// timeout of 200 ms.
async fn silent_check() -> (TcpListener, health::CheckSpec) {
    let (silent, address) = loopback_listener().await;
    let mut check = spec(http(format!("http://{address}/"), None, None));
    check.timeout_ms = 200;
    (silent, check)
}

#[tokio::test]
async fn http_probe_judges_status_and_body() {
    let address = start_app().await;
    let ok = probe(&spec(http(format!("http://{address}/ok"), None, Some("all good")))).await;
    assert!(ok.success, "{ok:?}");
    assert!(ok.latency_ms.is_some());
    assert_eq!(ok.detail, "HTTP 200, body contains 'all good'");

    let fail = probe(&spec(http(format!("http://{address}/fail"), None, None))).await;
    assert!(!fail.success);
    assert_eq!(fail.detail, "HTTP 503, expected 2xx or 3xx");

    let expected = probe(&spec(http(format!("http://{address}/fail"), Some(503), None))).await;
    assert!(expected.success, "{expected:?}");

    let lacking = probe(&spec(http(format!("http://{address}/ok"), None, Some("broken")))).await;
    assert!(!lacking.success);
    assert!(lacking.detail.contains("lacks 'broken'"), "{}", lacking.detail);

    let mut headers = BTreeMap::new();
    headers.insert("x-check".to_string(), "yes".to_string());
    headers.insert("Host".to_string(), "shop.example".to_string());
    let with_header = probe(&spec(ProbeKind::Http {
        url: format!("http://{address}/host"),
        method: "GET".into(),
        expect_status: Some(200),
        body_contains: None,
        headers,
        ca_file: None,
        tls_verify: true,
    }))
    .await;
    assert!(with_header.success, "{with_header:?}");
}

#[tokio::test]
async fn a_hanging_server_is_cut_at_the_timeout() {
    let address = start_app().await;
    let mut slow = spec(http(format!("http://{address}/slow"), None, None));
    slow.timeout_ms = 200;
    let outcome = probe(&slow).await;
    assert!(!outcome.success);
    assert_eq!(outcome.detail, "timed out after 200 ms");
    assert_eq!(outcome.latency_ms, None);
    let (_silent, check) = silent_check().await;
    assert_eq!(probe(&check).await.detail, "timed out after 200 ms");
}

#[tokio::test]
async fn tcp_probe_connects_or_reports_the_refusal() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let up = probe(&spec(ProbeKind::Tcp {
        address: address.clone(),
    }))
    .await;
    assert!(up.success, "{up:?}");
    drop(listener);
    let down = probe(&spec(ProbeKind::Tcp {
        address: address.clone(),
    }))
    .await;
    assert!(!down.success);
    assert!(
        down.detail.starts_with(&format!("connect {address}:")),
        "{}",
        down.detail
    );
    let refused_http = probe(&spec(http(format!("http://{address}/ok"), None, None))).await;
    assert!(!refused_http.success);
    assert!(refused_http.detail.contains("refused"), "{}", refused_http.detail);
}

#[tokio::test]
async fn a_probe_cut_at_its_timeout_closes_its_connection() {
    use tokio::io::AsyncReadExt;
    let (silent, check) = silent_check().await;
    let probing = tokio::spawn(async move { probe(&check).await });
    let (mut stream, _) = silent.accept().await.expect("the probe connects");
    assert_eq!(probing.await.expect("probe task").detail, "timed out after 200 ms");
    // The server side sees the request, then the end of the stream: nothing is left open.
    let mut received = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the probe's connection stayed open after its timeout");
    assert!(
        received.starts_with(b"GET / HTTP/1.1"),
        "{}",
        String::from_utf8_lossy(&received)
    );
}

/// A raw HTTP server: reads each request's head, hands it to `respond` with the stream, and
/// records the heads.
async fn start_raw<F, Fut>(respond: F) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use tokio::io::AsyncReadExt;
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&heads);
    let (listener, address) = loopback_listener().await;
    accept_each(listener, move |mut stream| {
        let (respond, record) = (respond.clone(), std::sync::Arc::clone(&record));
        async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            record
                .lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&head).into_owned());
            respond(stream).await;
        }
    });
    (address, heads)
}

#[tokio::test]
async fn the_body_search_stops_at_the_string_though_the_server_holds_on() {
    use tokio::io::AsyncWriteExt;
    // The string in two writes split inside it, then a body that never ends.
    let (address, _heads) = start_raw(|mut stream: tokio::net::TcpStream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n{\"status\": \"he")
            .await;
        let _ = stream.flush().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let _ = stream.write_all(b"althy\", ").await;
        let _ = stream.flush().await;
        std::future::pending::<()>().await;
    })
    .await;
    let mut check = spec(http(
        format!("http://{address}/health"),
        None,
        Some("\"status\": \"healthy\""),
    ));
    check.timeout_ms = 1000;
    let outcome = probe(&check).await;
    assert!(outcome.success, "{outcome:?}");
    assert_eq!(outcome.detail, "HTTP 200, body contains '\"status\": \"healthy\"'");
    // Without the string, the same server is cut at the timeout.
    let mut lacking = spec(http(format!("http://{address}/health"), None, Some("sick")));
    lacking.timeout_ms = 300;
    assert_eq!(probe(&lacking).await.detail, "timed out after 300 ms");
}

#[tokio::test]
async fn url_user_info_goes_into_authorization_never_into_host() {
    use tokio::io::AsyncWriteExt;
    let (address, heads) = start_raw(|mut stream: tokio::net::TcpStream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await;
    })
    .await;
    let port = address.port();
    let url = format!("http://probe:s%40cret@127.0.0.1:{port}/health");
    let outcome = probe(&spec(http(url.clone(), Some(200), Some("ok")))).await;
    assert!(outcome.success, "{outcome:?}");
    // A probe that fails names the address, never the user info.
    let mut closed = spec(http("http://probe:secret@127.0.0.1/health".into(), None, None));
    closed.timeout_ms = 300;
    let down = probe(&closed).await;
    assert!(!down.detail.contains("secret"), "{down:?}");

    // A configured Authorization wins over the URL's user info.
    let mut headers = BTreeMap::new();
    headers.insert("Authorization".to_string(), "Bearer configured".to_string());
    let configured = probe(&spec(ProbeKind::Http {
        url,
        method: "GET".into(),
        expect_status: Some(200),
        body_contains: None,
        headers,
        ca_file: None,
        tls_verify: true,
    }))
    .await;
    assert!(configured.success, "{configured:?}");

    let heads = heads.lock().expect("lock").clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let lines = |head: &str| -> Vec<String> { head.lines().map(str::to_ascii_lowercase).collect() };
    let first = lines(&heads[0]);
    assert!(first.contains(&format!("host: 127.0.0.1:{port}")), "{first:?}");
    // probe:s@cret, percent-decoded as curl does.
    assert!(
        heads[0].contains("authorization: Basic cHJvYmU6c0BjcmV0\r\n"),
        "{:?}",
        heads[0]
    );
    assert!(
        !heads[0].contains("s%40cret") && !heads[0].contains("probe:"),
        "{:?}",
        heads[0]
    );
    let second = lines(&heads[1]);
    assert!(
        second.contains(&"authorization: bearer configured".to_string()),
        "{second:?}"
    );
    assert_eq!(
        second.iter().filter(|l| l.starts_with("authorization:")).count(),
        1,
        "{second:?}"
    );
}
