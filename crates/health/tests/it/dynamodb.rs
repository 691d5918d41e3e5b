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
        lag_sources: Vec::new(),
        write: false,
        cloudwatch_lag: None,
    }
}

/// Creates `table` (hash key `pk`, a string) in `engine`.
async fn create_table(engine: &store::Engine, table: &str) {
    store::Store::new(engine.clone())
        .handle(
            "CreateTable",
            json!({
                "TableName": table,
                "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
                "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
                "BillingMode": "PAY_PER_REQUEST"
            })
            .to_string()
            .as_bytes(),
        )
        .await
        .expect("create table");
}

/// A store serving an engine on a loopback port (signed requests only with `credentials`).
struct Served {
    endpoint: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(engine: store::Engine, credentials: Option<Credentials>) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(store::server::run(
            listener,
            engine,
            store::server::ServerConfig {
                credentials,
                replication: None,
            },
            async move {
                let _ = stopped.await;
            },
        ));
        Served { endpoint, stop, server }
    }

    /// Stops the server and waits until it has.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.expect("server task").expect("server stops cleanly");
    }
}

#[tokio::test]
async fn dynamodb_probe_reads_a_signed_store() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = store::Engine::open(dir.path(), "east", Arc::new(store::SystemClock)).expect("open engine");
    create_table(&engine, "health").await;
    store::Store::new(engine.clone())
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
    let served = Served::start(engine, Some(credentials)).await;
    let endpoint = served.endpoint.clone();

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

    served.stop().await;
    let gone = probe(&spec(dynamodb(&endpoint, "health", None, Some("health-secret")))).await;
    assert!(!gone.success);
}

const REPLICATION_KEY: &[u8] = b"a-test-replication-key-of-32-bytes";
/// Generous bound for replication to catch up on a loaded 2-core machine.
const CATCH_UP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
/// A caught-up peer's lag is a few milliseconds; this bound only rules out nonsense.
const CAUGHT_UP_LAG_MS_MAX: u64 = 5_000;

async fn call(url: &str, operation: &str, body: serde_json::Value) -> serde_json::Value {
    let (status, value) = testkit::dynamodb_call(url, operation, body.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{operation}: {value}");
    value
}

struct ReplicatingStore {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl ReplicatingStore {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("store stops cleanly");
    }
}

/// Two regions' stores on loopback, each the other's replication peer.
async fn replicating_pair() -> (ReplicatingStore, ReplicatingStore) {
    let names = ["east", "west"];
    let listeners = [
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
    ];
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().expect("address")))
        .collect();
    let mut stores = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let engine = store::Engine::open(dir.path(), names[index], Arc::new(store::SystemClock)).expect("open engine");
        let other = 1 - index;
        let config = store::server::ServerConfig {
            credentials: None,
            replication: Some(store::global::ReplicationConfig::new(
                vec![store::global::Peer {
                    region: names[other].to_string(),
                    url: urls[other].clone(),
                }],
                REPLICATION_KEY.to_vec(),
            )),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            store::server::run(listener, engine, config, async move {
                let _ = stopped.await;
            })
            .await
            .expect("store runs");
        });
        stores.push(ReplicatingStore {
            url: urls[index].clone(),
            stop: Some(stop),
            task,
            _dir: dir,
        });
    }
    let west = stores.pop().expect("two stores");
    let east = stores.pop().expect("two stores");
    (east, west)
}

fn lag_check(endpoint: &str, sources: &[&str]) -> health::CheckSpec {
    let mut kind = dynamodb(endpoint, "orders", None, None);
    if let ProbeKind::Dynamodb { lag_sources, .. } = &mut kind {
        *lag_sources = sources.iter().map(|s| s.to_string()).collect();
    }
    spec(kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_probe_reads_inbound_replication_lag_from_the_other_region() {
    let (east, west) = replicating_pair().await;
    call(&west.url, "CreateTable", testkit::on_demand_table("orders", "id")).await;
    call(
        &west.url,
        "UpdateTable",
        json!({"TableName": "orders", "ReplicaUpdates": [{"Create": {"RegionName": "east"}}]}),
    )
    .await;
    for i in 0..5 {
        call(
            &west.url,
            "PutItem",
            json!({"TableName": "orders", "Item": {"id": {"S": format!("order-{i}")}}}),
        )
        .await;
    }

    // East's inbound lag is what west still has to ship to it: known, and small once the
    // orders arrived.
    let check = lag_check(&east.url, &[&west.url]);
    let caught_up = crate::support::probe_until(&check, CATCH_UP_DEADLINE, |outcome| {
        outcome.success && outcome.detail.contains("orders: 1 items")
    })
    .await;
    assert!(caught_up.success, "{caught_up:?}");
    let caught_up = crate::support::probe_until(&check, CATCH_UP_DEADLINE, |outcome| {
        outcome.replica_lag_ms.is_some_and(|lag| lag <= CAUGHT_UP_LAG_MS_MAX)
    })
    .await;
    assert!(caught_up.success, "{caught_up:?}");
    assert!(
        caught_up.detail.contains("replication lag into east") && caught_up.detail.contains("max of 1 of 1"),
        "{}",
        caught_up.detail
    );

    // A source without a peer named after the check's region gives no reading: never 0.
    let wrong_source = probe(&lag_check(&east.url, &[&east.url])).await;
    assert!(wrong_source.success, "the read itself still succeeds: {wrong_source:?}");
    assert_eq!(wrong_source.replica_lag_ms, None, "{wrong_source:?}");
    assert!(
        wrong_source.detail.contains("no replication peer named 'east'"),
        "{}",
        wrong_source.detail
    );

    // With the source region down the lag is unknown, and the probe of east still succeeds.
    let west_url = west.url.clone();
    west.stop().await;
    let down = probe(&lag_check(&east.url, &[&west_url])).await;
    assert!(down.success, "{down:?}");
    assert_eq!(down.replica_lag_ms, None, "{down:?}");
    assert!(down.detail.contains("unknown"), "{}", down.detail);
    east.stop().await;
}

#[tokio::test]
async fn the_write_probe_fails_against_a_store_that_cannot_write() {
    assert_eq!(
        health::probe::HEARTBEAT_TABLE,
        store::engine::HEALTH_TABLE,
        "one reserved table"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let (engine, faults) = store::testing::faulty_engine(dir.path(), "east");
    create_table(&engine, "health").await;
    let served = Served::start(engine, None).await;
    let endpoint = served.endpoint.clone();
    let writing = |write| {
        let mut kind = dynamodb(&endpoint, "health", None, None);
        if let ProbeKind::Dynamodb { write: w, .. } = &mut kind {
            *w = write;
        }
        spec(kind)
    };

    let up = probe(&writing(true)).await;
    assert!(up.success, "{up:?}");
    assert!(up.detail.contains("heartbeat written"), "{}", up.detail);

    // The disk falls below the store's watermark: reads go on, the write probe is down.
    store::testing::leave_free(&faults, dir.path(), 512 << 10);
    let read_only = probe(&writing(false)).await;
    assert!(read_only.success, "a read-only probe sees nothing wrong: {read_only:?}");
    let down = probe(&writing(true)).await;
    assert!(!down.success, "{down:?}");
    assert!(
        down.detail.contains("ServiceUnavailable") && down.detail.contains("disk_free_bytes_min"),
        "{}",
        down.detail
    );

    faults.set_capacity_bytes(u64::MAX);
    let again = probe(&writing(true)).await;
    assert!(again.success, "up again once space returns: {again:?}");
    served.stop().await;
}

/// Stands in for the binary's CloudWatch reader (the AWS SDK lives in `providers`; its reader is
/// tested against moto there): answers per source region and records the questions.
struct FakeCloudwatch {
    asked: std::sync::Mutex<Vec<health::probe::cloudwatch::LagQuery>>,
}

impl health::probe::cloudwatch::CloudwatchReader for FakeCloudwatch {
    fn replication_lag(&self, query: health::probe::cloudwatch::LagQuery) -> health::probe::cloudwatch::LagFuture {
        let answer = match query.source_region.as_str() {
            "us-east-1" => Ok(420),
            other => Err(format!(
                "CloudWatch GetMetricData in {other}: AccessDenied: not allowed"
            )),
        };
        self.asked.lock().expect("not poisoned").push(query);
        Box::pin(async move { answer })
    }
}

#[tokio::test]
async fn dynamodb_probe_reads_the_lag_of_an_aws_global_table_from_cloudwatch() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = store::Engine::open(dir.path(), "eu", Arc::new(store::SystemClock)).expect("open engine");
    create_table(&engine, "sessions").await;
    let served = Served::start(engine, None).await;
    let endpoint = served.endpoint.clone();
    let fake = Arc::new(FakeCloudwatch {
        asked: std::sync::Mutex::new(Vec::new()),
    });
    assert!(health::probe::cloudwatch::install_reader(fake.clone()), "first install");

    let mut kind = dynamodb(&endpoint, "sessions", None, None);
    if let ProbeKind::Dynamodb { cloudwatch_lag, .. } = &mut kind {
        *cloudwatch_lag = Some(health::spec::CloudwatchLag {
            receiving_region: "eu-west-1".into(),
            source_regions: vec!["us-east-1".into(), "ap-south-1".into()],
            table: None,
            window_s: None,
            profile: None,
            endpoint_url: None,
        });
    }
    let mut check = spec(kind);
    check.timeout_ms = 2_000;
    check.validate().expect("a valid check");
    let outcome = probe(&check).await;
    assert!(outcome.success, "{outcome:?}");
    assert_eq!(outcome.replica_lag_ms, Some(420), "{outcome:?}");
    assert!(outcome.detail.contains("AccessDenied"), "{}", outcome.detail);
    let asked = fake.asked.lock().expect("not poisoned").clone();
    assert_eq!(asked.len(), 2);
    assert!(
        asked
            .iter()
            .all(|q| q.receiving_region == "eu-west-1" && q.table == "sessions" && q.window_s == 300)
    );

    served.stop().await;
}
