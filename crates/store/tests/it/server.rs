//! The HTTP front in process: what reaches a client before any operation runs.

use std::sync::Arc;

use store::server::{REQUEST_BODY_BYTES_MAX, ServerConfig, run};
use store::{Engine, SystemClock};
use tokio::net::TcpListener;

async fn post(url: &str, operation: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = hyper::Request::post(format!("{url}/"))
        .header("x-amz-target", format!("DynamoDB_20120810.{operation}"))
        .header("content-type", "application/x-amz-json-1.0")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("valid request");
    let response = client.request(request).await.expect("store answers");
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&body).expect("a JSON answer, not plain text"),
    )
}

#[tokio::test]
async fn an_oversize_body_gets_a_dynamodb_validation_error() {
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
    assert_eq!(status, 400, "{body}");
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
