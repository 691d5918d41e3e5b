//! DynamoDB probe against Switchyard's own store, started in-process with credentials.

use std::sync::Arc;

use dynamo_protocol::sigv4::Credentials;
use serde_json::json;
use tokio::net::TcpListener;

use health::ProbeKind;
use health::probe::probe;

use crate::support::spec;

fn dynamodb(endpoint: &str, table: &str, key: Option<serde_json::Value>, secret: Option<&str>) -> ProbeKind {
    ProbeKind::Dynamodb {
        endpoint: endpoint.into(),
        table: table.into(),
        key,
        signing_region: None,
        access_key_id: secret.map(|_| "AKIDHEALTH".to_string()),
        secret_access_key: secret.map(str::to_string),
    }
}

#[tokio::test]
async fn dynamodb_probe_reads_a_signed_store() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = store::Engine::open(dir.path(), "east", Arc::new(store::SystemClock)).expect("open engine");
    let admin = store::Store::new(engine.clone());
    admin
        .handle(
            "CreateTable",
            json!({
                "TableName": "health",
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "BillingMode": "PAY_PER_REQUEST"
            })
            .to_string()
            .as_bytes(),
        )
        .await
        .expect("create table");
    admin
        .handle(
            "PutItem",
            json!({"TableName": "health", "Item": {"pk": {"S": "canary"}}})
                .to_string()
                .as_bytes(),
        )
        .await
        .expect("put item");
    let mut credentials = Credentials::new();
    credentials.insert("AKIDHEALTH", "health-secret");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(store::server::run(
        listener,
        engine,
        store::server::ServerConfig {
            credentials: Some(credentials),
            replication: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));

    let scan = probe(&spec(dynamodb(&endpoint, "health", None, Some("health-secret")))).await;
    assert!(scan.success, "{scan:?}");
    assert_eq!(scan.detail, "Scan health: 1 items");

    let key = json!({"pk": {"S": "canary"}});
    let get = probe(&spec(dynamodb(&endpoint, "health", Some(key), Some("health-secret")))).await;
    assert!(get.success, "{get:?}");
    assert_eq!(get.detail, "GetItem health: item found");

    let missing = probe(&spec(dynamodb(&endpoint, "nope", None, Some("health-secret")))).await;
    assert!(!missing.success);
    assert!(
        missing.detail.contains("ResourceNotFoundException"),
        "{}",
        missing.detail
    );

    let wrong = probe(&spec(dynamodb(&endpoint, "health", None, Some("not-the-secret")))).await;
    assert!(!wrong.success);
    assert!(wrong.detail.contains("HTTP 400"), "{}", wrong.detail);

    let _ = stop.send(());
    server.await.expect("server task").expect("server stops cleanly");
    let gone = probe(&spec(dynamodb(&endpoint, "health", None, Some("health-secret")))).await;
    assert!(!gone.success);
}
