//! Three in-process stores on loopback replicating a global table over real HTTP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use store::global::{Peer, ReplicationConfig};
use store::server::{ServerConfig, run};
use store::{Engine, SystemClock};
use tokio::net::TcpListener;

use crate::support::{on_demand_table, run_behind_a_queued_tag};

const REGIONS: [&str; 3] = ["ap-south-1", "eu-west-1", "us-east-1"];
const KEY: &[u8] = b"a-test-replication-key-of-32-bytes";
/// Generous bound for convergence on a loaded 2-core machine.
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(30);

struct Region {
    name: &'static str,
    url: String,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// POSTs `body` to `url` with `headers`; the status and the JSON answer (`Null` if not JSON).
async fn send(url: String, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
    let (status, body) = testkit::http_post(&url, headers, body).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn call(url: &str, operation: &str, body: Value) -> (u16, Value) {
    testkit::dynamodb_call(url, operation, body.to_string().into_bytes()).await
}

async fn ok(url: &str, operation: &str, body: Value) -> Value {
    let (status, value) = call(url, operation, body).await;
    assert_eq!(status, 200, "{operation} failed: {value}");
    value
}

/// A region on a fresh loopback port and `dir`, not started yet, and the port's listener.
async fn bind_region(name: &'static str, dir: tempfile::TempDir) -> (TcpListener, Region) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let region = Region {
        name,
        url: format!("http://{}", listener.local_addr().expect("address")),
        dir,
        stop: None,
        task: None,
    };
    (listener, region)
}

/// Starts the three [`REGIONS`], each with the others as its peers; every listener is bound
/// first so each knows its peers' addresses.
async fn start_regions() -> Vec<Region> {
    let mut listeners = Vec::new();
    let mut regions = Vec::new();
    for name in REGIONS {
        let (listener, region) = bind_region(name, tempfile::tempdir().expect("temp dir")).await;
        listeners.push(listener);
        regions.push(region);
    }
    let urls: Vec<(String, String)> = regions.iter().map(|r| (r.name.to_string(), r.url.clone())).collect();
    for (region, listener) in regions.iter_mut().zip(listeners) {
        start(region, listener, &urls).await;
    }
    regions
}

/// How long a restarted region waits for its previous engine to release the database file.
const REOPEN_DEADLINE_MS: u64 = 10_000;

/// Opens a region's database once its previous engine has let go of the file: a stopped
/// region's engine closes it when the last clone (its writer thread, aborted replication tasks)
/// is gone, which may be a moment after the server task ended.
async fn reopen(dir: &std::path::Path, name: &str) -> Engine {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(REOPEN_DEADLINE_MS);
    loop {
        match Engine::open(dir, name, Arc::new(SystemClock)) {
            Ok(engine) => return engine,
            Err(error) if std::time::Instant::now() > deadline => panic!("database still locked: {error}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

async fn start(region: &mut Region, listener: TcpListener, urls: &[(String, String)]) {
    let engine = reopen(region.dir.path(), region.name).await;
    let peers = urls
        .iter()
        .filter(|(name, _)| name != region.name)
        .map(|(name, url)| Peer {
            region: name.clone(),
            url: url.clone(),
        })
        .collect();
    let config = ServerConfig {
        credentials: None,
        replication: Some(ReplicationConfig::new(peers, KEY.to_vec())),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    region.stop = Some(stop);
    region.task = Some(tokio::spawn(async move {
        run(listener, engine, config, async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
    }));
}

async fn stop(region: &mut Region) {
    if let Some(stop) = region.stop.take() {
        let _ = stop.send(());
    }
    if let Some(task) = region.task.take() {
        task.await.expect("server task ends cleanly");
    }
}

async fn scan_all(url: &str) -> Vec<Value> {
    let mut items = ok(url, "Scan", json!({"TableName": "carts"})).await["Items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    items.sort_by_key(|i| i["id"]["S"].as_str().unwrap_or_default().to_string());
    items
}

async fn wait_converged(regions: &[Region], expected: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let mut contents = Vec::new();
        for region in regions {
            contents.push(scan_all(&region.url).await);
        }
        if contents.iter().all(|c| *c == contents[0]) && contents[0].len() == expected {
            return contents.remove(0);
        }
        if started.elapsed() >= CONVERGENCE_DEADLINE {
            let differing: Vec<&Value> = contents
                .iter()
                .flatten()
                .filter(|item| !contents.iter().all(|c| c.contains(item)))
                .collect();
            panic!(
                "no convergence after {CONVERGENCE_DEADLINE:?}: sizes {:?}, {expected} expected; items not in every region: {differing:?}",
                contents.iter().map(Vec::len).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_replicate_a_global_table_and_survive_a_restart() {
    let mut regions = start_regions().await;
    let first = regions[2].url.clone();
    ok(&first, "CreateTable", on_demand_table("carts", "id")).await;
    // Data written before the table becomes global must be backfilled to the new replicas.
    for i in 0..20 {
        ok(
            &first,
            "PutItem",
            json!({"TableName": "carts", "Item": {"id": {"S": format!("before-{i:02}")}, "v": {"S": "x"}}}),
        )
        .await;
    }
    let updated = ok(
        &first,
        "UpdateTable",
        json!({
            "TableName": "carts",
            "ReplicaUpdates": [{"Create": {"RegionName": "eu-west-1"}}, {"Create": {"RegionName": "ap-south-1"}}]
        }),
    )
    .await;
    assert_eq!(
        updated["TableDescription"]["Replicas"].as_array().map(Vec::len),
        Some(3)
    );
    for (index, region) in regions.iter().enumerate() {
        for i in 0..10 {
            let item = json!({"id": {"S": format!("{}-{i:02}", region.name)}, "n": {"S": index.to_string()}});
            ok(&region.url, "PutItem", json!({"TableName": "carts", "Item": item})).await;
        }
    }
    ok(
        &regions[0].url,
        "DeleteItem",
        json!({"TableName": "carts", "Key": {"id": {"S": "before-00"}}}),
    )
    .await;
    let converged = wait_converged(&regions, 20 + 30 - 1).await;
    assert!(
        converged.iter().all(|i| i["id"]["S"] != "before-00"),
        "the delete replicated"
    );

    // Lose a region, keep writing elsewhere, bring it back: it catches up from the log.
    stop(&mut regions[1]).await;
    for i in 0..15 {
        ok(
            &regions[0].url,
            "PutItem",
            json!({"TableName": "carts", "Item": {"id": {"S": format!("during-{i:02}")}}}),
        )
        .await;
    }
    let listener = TcpListener::bind(regions[1].url.trim_start_matches("http://"))
        .await
        .expect("rebind the same port");
    let urls: Vec<(String, String)> = regions.iter().map(|r| (r.name.to_string(), r.url.clone())).collect();
    start(&mut regions[1], listener, &urls).await;
    wait_converged(&regions, 20 + 30 - 1 + 15).await;
    let described = ok(&regions[1].url, "DescribeTable", json!({"TableName": "carts"})).await;
    assert_eq!(described["Table"]["GlobalTableVersion"], "2019.11.21");
    for region in &mut regions {
        stop(region).await;
    }
}

/// POSTs a replication request signed as `from` would sign it.
async fn post_signed(url: &str, path: &str, from: &str, body: Vec<u8>) -> (u16, Value) {
    let date_ms = now_ms();
    let signature = store::global::sign(KEY, from, "us-east-1", path, date_ms, &body);
    call_raw(url, path, from, date_ms, signature, body).await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Starts `us-east-1` on `dir` with one peer, `eu-west-1`, that never answers.
async fn start_lone_region(dir: tempfile::TempDir) -> Region {
    let (listener, mut region) = bind_region("us-east-1", dir).await;
    let peers = lone_peers(&region.url);
    start(&mut region, listener, &peers).await;
    region
}

/// The lone region's view of the regions: itself at `url`, and eu-west-1, which never answers.
fn lone_peers(url: &str) -> [(String, String); 2] {
    [
        ("us-east-1".to_string(), url.to_string()),
        ("eu-west-1".to_string(), "http://127.0.0.1:1".to_string()),
    ]
}

/// Stops the lone region and starts it again on its port and data directory: everything it
/// kept only in memory is gone.
async fn restart_lone_region(region: &mut Region) {
    stop(region).await;
    let listener = TcpListener::bind(region.url.trim_start_matches("http://"))
        .await
        .expect("rebind the region's port");
    let peers = lone_peers(&region.url);
    start(region, listener, &peers).await;
}

/// One region, `us-east-1`, whose peer `eu-west-1` never answers (only its requests to us
/// matter), holding a table `carts`; returns it and the table's definition.
async fn lone_region_with_carts() -> (Region, store::catalog::TableMeta) {
    let region = start_lone_region(tempfile::tempdir().expect("temp dir")).await;
    let create = on_demand_table("carts", "id");
    ok(&region.url, "CreateTable", create.clone()).await;
    let request: store::catalog::CreateTableRequest = serde_json::from_value(create).expect("request");
    let table = store::catalog::table_from_request(&request, 1, 0.0).expect("table");
    (region, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_definition_with_another_key_hash_is_refused() {
    use store::keys::KeyHash;

    let (mut region, mut table) = lone_region_with_carts().await;
    table.replicas = vec!["us-east-1".into(), "eu-west-1".into()];

    // A peer whose replica hashes keys differently would ship keys this region cannot use.
    table.key_hash = KeyHash::Fnv1a;
    let body = table_body(&table, false, 1, true);
    let (status, answer) = post_signed(&region.url, "/replication/v1/table", "eu-west-1", body).await;
    assert_eq!(status, 400, "{answer}");
    let message = answer["message"]
        .as_str()
        .or(answer["Message"].as_str())
        .unwrap_or_default();
    assert!(message.contains("another key hash"), "{answer}");

    // The same definition with the same hash joins the table to the peer (a refused request
    // does not use up its sequence number).
    table.key_hash = KeyHash::CURRENT;
    let path = "/replication/v1/table";
    let body = table_body(&table, false, 1, true);
    let date_ms = now_ms();
    let signature = store::global::sign(KEY, "eu-west-1", "us-east-1", path, date_ms, &body);
    let (status, answer) = call_raw(&region.url, path, "eu-west-1", date_ms, signature.clone(), body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    // The very same request again (captured and replayed) is refused...
    let (status, answer) = call_raw(&region.url, path, "eu-west-1", date_ms, signature, body.clone()).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.to_string().contains("replayed"), "{answer}");
    // ...and so is one signed long ago, or with a signature for another path.
    let old = date_ms - store::global::REQUEST_SKEW_MS_MAX - 60_000;
    let signature = store::global::sign(KEY, "eu-west-1", "us-east-1", path, old, &body);
    let (status, answer) = call_raw(&region.url, path, "eu-west-1", old, signature, body.clone()).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.to_string().contains("clock"), "{answer}");
    let signature = store::global::sign(KEY, "eu-west-1", "us-east-1", "/replication/v1/repair", date_ms, &body);
    let (status, answer) = call_raw(&region.url, path, "eu-west-1", date_ms, signature, body).await;
    assert_eq!(status, 403, "{answer}");
    let described = ok(&region.url, "DescribeTable", json!({"TableName": "carts"})).await;
    assert_eq!(
        described["Table"]["Replicas"].as_array().map(Vec::len),
        Some(2),
        "{described}"
    );

    // The peer deletes its replica here (sequence 2); the captured request...
    let delete = table_body(&table, true, 2, false);
    let date_ms = now_ms();
    let delete_signature = store::global::sign(KEY, "eu-west-1", "us-east-1", path, date_ms, &delete);
    let (status, answer) = call_raw(
        &region.url,
        path,
        "eu-west-1",
        date_ms,
        delete_signature.clone(),
        delete.clone(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // ...then it joins again (sequence 3), and the region restarts: the in-memory state is gone.
    let join = table_body(&table, false, 3, true);
    let (status, answer) = post_signed(&region.url, path, "eu-west-1", join.clone()).await;
    assert_eq!(status, 200, "{answer}");
    ok(
        &region.url,
        "PutItem",
        json!({"TableName": "carts", "Item": {"id": {"S": "kept"}}}),
    )
    .await;
    restart_lone_region(&mut region).await;
    // Replaying the captured delete (still inside the signing window) drops nothing.
    let (status, answer) = call_raw(&region.url, path, "eu-west-1", date_ms, delete_signature, delete).await;
    assert_eq!(status, 403, "a replayed delete after a restart: {answer}");
    assert!(answer.to_string().contains("replayed"), "{answer}");
    let item = ok(
        &region.url,
        "GetItem",
        json!({"TableName": "carts", "Key": {"id": {"S": "kept"}}}),
    )
    .await;
    assert!(item.get("Item").is_some(), "the table and its items survive: {item}");
    // An older sequence, newly signed (a peer rolled back, or a forged counter), is refused too.
    let (status, answer) = post_signed(&region.url, path, "eu-west-1", join).await;
    assert_eq!(status, 403, "{answer}");
    stop(&mut region).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_replayed_batches_apply_nothing() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use dynamo_protocol::AttributeValue;
    use store::record::{Record, encode};

    let (mut region, table) = lone_region_with_carts().await;

    // A change from eu-west-1 setting cart `c1` to `note`, at HLC `hlc`.
    let change = |note: &str, hlc: u64| {
        let mut item = dynamo_protocol::Item::new();
        item.insert("id".into(), AttributeValue::S("c1".into()));
        item.insert("note".into(), AttributeValue::S(note.into()));
        let key = store::engine::key_of(table.key_hash, &table.key, &item).expect("key");
        let record = encode(&Record {
            hlc,
            origin: "eu-west-1".into(),
            tombstone: false,
            item,
        });
        BASE64.encode(store::replication_log::encode_change("carts", &key, &record))
    };
    let batch = |seq: u64, changes: Vec<String>| {
        serde_json::to_vec(&json!({"batch": seq, "from_seq": seq, "to_seq": seq, "changes": changes}))
            .expect("serialize")
    };
    let note = || async {
        ok(
            &region.url,
            "GetItem",
            json!({"TableName": "carts", "Key": {"id": {"S": "c1"}}}),
        )
        .await["Item"]["note"]["S"]
            .as_str()
            .map(str::to_string)
    };
    let hlc = |ms: u64| replication::Hlc::from_parts(ms, 0).0;
    let path = "/replication/v1/batch";
    // Batch `seq` from eu-west-1 holding the one change to `note` at `ms`.
    let send_change = |seq: u64, note: &'static str, ms: u64| {
        post_signed(&region.url, path, "eu-west-1", batch(seq, vec![change(note, hlc(ms))]))
    };

    let (status, answer) = send_change(1, "first", 1_000).await;
    assert_eq!((status, answer["applied"].as_u64()), (200, Some(1)), "{answer}");
    assert_eq!(note().await.as_deref(), Some("first"));

    // Sequence 1 again, now carrying a newer write that last-writer-wins alone would take:
    // the sequence says it was applied already, so nothing is.
    let (status, answer) = send_change(1, "replayed", 9_000).await;
    assert_eq!((status, answer["applied"].as_u64()), (200, Some(0)), "{answer}");
    assert_eq!(
        note().await.as_deref(),
        Some("first"),
        "a replayed sequence applies nothing"
    );

    // Corrupt batches: a change that is not base64, a change that does not decode, a range that
    // does not match the changes, a bad signature. Each is refused whole.
    let not_base64 = batch(2, vec![change("bad", hlc(9_000)), "%%%".into()]);
    let mangled = batch(2, vec![change("bad", hlc(9_000)), BASE64.encode(b"\x01garbage")]);
    let mismatched =
        serde_json::to_vec(&json!({"batch": 2, "from_seq": 2, "to_seq": 3, "changes": [change("bad", hlc(9_000))]}))
            .expect("serialize");
    let overflowing =
        serde_json::to_vec(&json!({"batch": 2, "from_seq": 0, "to_seq": u64::MAX, "changes": []})).expect("serialize");
    for body in [not_base64, mangled, mismatched, overflowing] {
        let (status, answer) = post_signed(&region.url, path, "eu-west-1", body).await;
        assert_eq!(status, 400, "{answer}");
    }
    let forged = batch(2, vec![change("forged", hlc(9_000))]);
    let (status, answer) = call_raw(&region.url, path, "eu-west-1", now_ms(), "00".repeat(32), forged).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.to_string().contains("bad replication signature"), "{answer}");
    // A batch eu-west-1 signed for another region (captured on its way there), replayed here:
    // with the region it names, or relabelled as for this one, it is refused.
    let elsewhere = batch(2, vec![change("for ap-south-1", hlc(9_000))]);
    let date_ms = now_ms();
    let signature = store::global::sign(KEY, "eu-west-1", "ap-south-1", path, date_ms, &elsewhere);
    for to in ["ap-south-1", "us-east-1"] {
        let headers = [
            (store::global::REGION_HEADER, "eu-west-1".to_string()),
            (store::global::TO_REGION_HEADER, to.to_string()),
            (store::global::DATE_HEADER, date_ms.to_string()),
            (store::global::SIGNATURE_HEADER, signature.clone()),
        ];
        let (status, answer) = send(format!("{}{path}", region.url), &headers, elsewhere.clone()).await;
        assert_eq!(status, 403, "{answer}");
        let expected = if to == "us-east-1" {
            "bad replication signature"
        } else {
            "for region 'ap-south-1'"
        };
        assert!(answer.to_string().contains(expected), "{answer}");
    }
    assert_eq!(
        note().await.as_deref(),
        Some("first"),
        "nothing of a refused batch is applied"
    );

    // The stream carries on where it was: sequence 2 is next.
    let (status, answer) = send_change(2, "second", 2_000).await;
    assert_eq!((status, answer["applied"].as_u64()), (200, Some(1)), "{answer}");
    assert_eq!(note().await.as_deref(), Some("second"));
    stop(&mut region).await;
}

/// A peer's TableRequest for `table`, serialised.
fn table_body(table: &store::catalog::TableMeta, delete: bool, sequence: u64, joining: bool) -> Vec<u8> {
    let request = store::global::TableRequest {
        table: table.clone(),
        delete,
        sequence,
        joining,
    };
    serde_json::to_vec(&request).expect("serialize")
}

/// POSTs with a given signature header (to send a wrong one).
async fn call_raw(url: &str, path: &str, from: &str, date_ms: u64, signature: String, body: Vec<u8>) -> (u16, Value) {
    let headers = [
        (store::global::REGION_HEADER, from.to_string()),
        (store::global::TO_REGION_HEADER, "us-east-1".to_string()),
        (store::global::DATE_HEADER, date_ms.to_string()),
        (store::global::SIGNATURE_HEADER, signature),
    ];
    send(format!("{url}{path}"), &headers, body).await
}

/// Items cart-0 .. cart-{count-1} in `carts`.
async fn put_carts(url: &str, count: usize) {
    for i in 0..count {
        ok(
            url,
            "PutItem",
            json!({"TableName": "carts", "Item": {"id": {"S": format!("cart-{i}")}}}),
        )
        .await;
    }
}

/// The root range's 16 children, as `(depth, index)`.
fn sixteen_ranges() -> Vec<(u8, u32)> {
    (0..16).map(|i| (4, i)).collect()
}

/// Digests of `ranges` (as `(depth, index)`) of `carts`, asked as peer eu-west-1 would.
async fn digests(url: &str, ranges: &[(u8, u32)]) -> (u16, Value) {
    let body = json!({"table": "carts", "ranges": ranges}).to_string().into_bytes();
    post_signed(url, "/replication/v1/digest", "eu-west-1", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_digests_count_and_fingerprint_the_records_of_each_range() {
    let (mut region, _) = lone_region_with_carts().await;
    put_carts(&region.url, 200).await;
    let children = sixteen_ranges();
    let (status, answer) = digests(&region.url, &[(0, 0)]).await;
    assert_eq!(status, 200, "{answer}");
    let root = answer["digests"][0].clone();
    assert_eq!(root[0], 200, "the root range holds every item: {answer}");
    let (_, answer) = digests(&region.url, &children).await;
    let counts: Vec<u64> = (0..16)
        .map(|i| answer["digests"][i][0].as_u64().expect("count"))
        .collect();
    assert_eq!(
        counts.iter().sum::<u64>(),
        200,
        "the children tile the root: {counts:?}"
    );
    assert!(counts.iter().all(|c| *c > 0), "keys spread over the ranges: {counts:?}");

    // Rewriting one item with the same content is a new version: exactly one range changes.
    let (_, before) = digests(&region.url, &children).await;
    ok(
        &region.url,
        "PutItem",
        json!({"TableName": "carts", "Item": {"id": {"S": "cart-7"}}}),
    )
    .await;
    let (_, after) = digests(&region.url, &children).await;
    let changed: Vec<usize> = (0..16)
        .filter(|i| before["digests"][*i] != after["digests"][*i])
        .collect();
    assert_eq!(changed.len(), 1, "{before} {after}");
    let (_, root_after) = digests(&region.url, &[(0, 0)]).await;
    assert_ne!(root_after["digests"][0], root, "the root digest follows its children");

    // Bad ranges and unsigned requests are refused.
    let (status, answer) = digests(&region.url, &[(4, 16)]).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("does not exist"), "{answer}");
    let too_many: Vec<(u8, u32)> = (0..300).map(|i| (12, i)).collect();
    let (status, _) = digests(&region.url, &too_many).await;
    assert_eq!(status, 400);
    refused_unsigned(
        &region.url,
        "/replication/v1/digest",
        json!({"table": "carts", "ranges": [[0, 0]]}),
    )
    .await;
    stop(&mut region).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_hashes_list_what_each_range_digest_sums() {
    let (mut region, _) = lone_region_with_carts().await;
    put_carts(&region.url, 40).await;
    let children = sixteen_ranges();
    let body = json!({"table": "carts", "ranges": children, "hashes": true})
        .to_string()
        .into_bytes();
    let (status, answer) = post_signed(&region.url, "/replication/v1/digest", "eu-west-1", body).await;
    assert_eq!(status, 200, "{answer}");
    let mut listed = 0;
    for i in 0..16 {
        let digest = &answer["digests"][i];
        let hashes = answer["hashes"][i].as_array().expect("a range of 40 items is listed");
        assert_eq!(hashes.len() as u64, digest[0].as_u64().expect("count"), "{answer}");
        // The range digest is the wrapping sum of the listed record hashes.
        let sum = hashes.iter().fold(0u128, |sum, entry| {
            sum.wrapping_add(u128::from_str_radix(entry[1].as_str().expect("hex"), 16).expect("a hash"))
        });
        assert_eq!(format!("{sum:x}"), digest[1].as_str().expect("hex"), "{answer}");
        listed += hashes.len();
    }
    assert_eq!(listed, 40);
    // Without the flag (and from peers of earlier versions) no hashes are answered.
    let (_, plain) = digests(&region.url, &[(0, 0)]).await;
    assert!(plain.get("hashes").is_none(), "{plain}");
    stop(&mut region).await;
}

/// The status DescribeTable gives the replica of `carts` in eu-west-1 on a store whose data
/// directory was prepared with a global `carts` table, with or without a backfill of
/// eu-west-1 still pending from before a restart. The peer never answers, so a pending
/// backfill cannot finish.
async fn replica_status_after_restart(backfill_pending: bool) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open");
        let store = store::Store::new(engine.clone());
        let create = on_demand_table("carts", "id");
        store
            .handle("CreateTable", create.to_string().as_bytes())
            .await
            .expect("created");
        let mut meta = (*engine.table("carts").expect("table")).clone();
        meta.replicas = vec!["eu-west-1".into(), "us-east-1".into()];
        let setting = store::global::backfill_setting("eu-west-1");
        engine
            .write_exclusive(move |context| {
                context.put_table(meta)?;
                if backfill_pending {
                    context.set_setting(&setting, 1)?;
                }
                Ok(())
            })
            .await
            .expect("made global");
    }
    let mut region = start_lone_region(dir).await;
    // A change to ship, then wait until the shipping task has tried (and failed) to reach the
    // peer: it has read the durable setting by then.
    ok(
        &region.url,
        "PutItem",
        json!({"TableName": "carts", "Item": {"id": {"S": "a"}}}),
    )
    .await;
    let deadline = Instant::now() + CONVERGENCE_DEADLINE;
    loop {
        let health = get_json(&format!("{}/health", region.url)).await;
        if health["replication"]["peers"]["eu-west-1"]["consecutive_failures"].as_u64() >= Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the shipping task never ran: {health}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let described = ok(&region.url, "DescribeTable", json!({"TableName": "carts"})).await;
    let replica = described["Table"]["Replicas"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["RegionName"] == "eu-west-1").cloned())
        .expect("eu-west-1 replica");
    stop(&mut region).await;
    replica["ReplicaStatus"].as_str().unwrap_or_default().to_string()
}

async fn get_json(url: &str) -> Value {
    serde_json::from_str(&get_text(url).await).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_unfinished_before_a_restart_starts_again() {
    assert_eq!(replica_status_after_restart(true).await, "CREATING");
    assert_eq!(replica_status_after_restart(false).await, "ACTIVE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_error_carries_its_time_and_no_lag_figure_counts_from_1970() {
    let started_ms = now_ms();
    let (mut region, mut table) = lone_region_with_carts().await;
    table.replicas = vec!["us-east-1".into(), "eu-west-1".into()];
    let body = table_body(&table, false, 1, false);
    let (status, answer) = post_signed(&region.url, "/replication/v1/table", "eu-west-1", body).await;
    assert_eq!(status, 200, "{answer}");
    ok(
        &region.url,
        "PutItem",
        json!({"TableName": "carts", "Item": {"id": {"S": "cart-1"}}}),
    )
    .await;
    // eu-west-1 never answers: shipping fails, and nothing is ever purged.
    let deadline = Instant::now() + CONVERGENCE_DEADLINE;
    let peer = loop {
        let health = get_json(&format!("{}/health", region.url)).await;
        let peer = health["replication"]["peers"]["eu-west-1"].clone();
        if !peer["last_error"].is_null() {
            break peer;
        }
        assert!(Instant::now() < deadline, "no replication error reported: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let at = peer["last_error_at_unix_ms"].as_u64().expect("the error's time");
    assert!(at >= started_ms, "{peer}");
    let metrics = get_text(&format!("{}/metrics", region.url)).await;
    assert!(
        metrics.contains("switchyard_store_tombstone_purge_lag_seconds 0.0\n"),
        "no watermark yet is no lag, not the time since 1970: {metrics}"
    );
    stop(&mut region).await;
}

/// A repair captured off the wire and replayed after the item was deleted and its tombstone
/// purged must not bring the item back in this region only — neither before nor after a
/// restart (the purge watermark that stands in for the tombstone is durable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_repair_does_not_resurrect_a_purged_delete() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use dynamo_protocol::AttributeValue;
    use store::record::{Record, encode};

    let mut region = start_lone_region(tempfile::tempdir().expect("temp dir")).await;
    let create = on_demand_table("carts", "id");
    let request: store::catalog::CreateTableRequest = serde_json::from_value(create).expect("request");
    let mut table = store::catalog::table_from_request(&request, 1, 0.0).expect("table");
    table.replicas = vec!["eu-west-1".into(), "us-east-1".into()];

    // eu-west-1 makes this region join its global table...
    let join = table_body(&table, false, 1, true);
    let (status, answer) = post_signed(&region.url, "/replication/v1/table", "eu-west-1", join).await;
    assert_eq!(status, 200, "{answer}");
    let barrier = answer["joined_below"].as_u64().expect("a join barrier");
    // The UpdateTable is retried (its first attempt failed elsewhere): the replica exists, and
    // the wait for its backfill is handed to the requester with the same barrier; a plain
    // update of the definition (another replica added) answers no barrier.
    for (sequence, joining, expected) in [(2, true, Some(barrier)), (3, false, None)] {
        let retry = table_body(&table, false, sequence, joining);
        let (status, answer) = post_signed(&region.url, "/replication/v1/table", "eu-west-1", retry).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["joined_below"].as_u64(), expected, "{answer}");
    }

    // ...and backfills it with cart c1. The request is captured.
    let mut item = dynamo_protocol::Item::new();
    item.insert("id".into(), AttributeValue::S("c1".into()));
    item.insert("note".into(), AttributeValue::S("backfilled".into()));
    let key = store::engine::key_of(table.key_hash, &table.key, &item).expect("key");
    let record = encode(&Record {
        hlc: barrier,
        origin: "eu-west-1".into(),
        tombstone: false,
        item,
    });
    let repair_path = "/replication/v1/repair";
    let change = BASE64.encode(store::replication_log::encode_change("carts", &key, &record));
    // The same record from a repair that is not a backfill (anti-entropy from a peer that may
    // lag behind a delete purged elsewhere) applies nothing at or below the join barrier.
    let stale = serde_json::to_vec(&json!({"records": [change.clone()], "complete_through": null})).expect("serialize");
    let (status, answer) = post_signed(&region.url, repair_path, "eu-west-1", stale).await;
    assert_eq!((status, answer["applied"].as_u64()), (200, Some(0)), "{answer}");
    // Every request of a backfill carries the barrier it backfills.
    let captured = serde_json::to_vec(&json!({
        "records": [change],
        "complete_through": null,
        "backfill_barrier": barrier,
    }))
    .expect("serialize");
    let captured_date = now_ms();
    let captured_signature = store::global::sign(KEY, "eu-west-1", "us-east-1", repair_path, captured_date, &captured);
    let url = region.url.clone();
    let replay = || {
        call_raw(
            &url,
            repair_path,
            "eu-west-1",
            captured_date,
            captured_signature.clone(),
            captured.clone(),
        )
    };
    let (status, answer) = replay().await;
    assert_eq!((status, answer["applied"].as_u64()), (200, Some(1)), "{answer}");
    let get = json!({"TableName": "carts", "Key": {"id": {"S": "c1"}}});
    assert!(ok(&region.url, "GetItem", get.clone()).await.get("Item").is_some());

    // The item is deleted here (a tombstone newer than the backfilled write).
    ok(&region.url, "DeleteItem", get.clone()).await;
    let tombstones =
        || async { get_json(&format!("{}/health", region.url)).await["replication"]["tombstones"].clone() };
    assert_eq!(tombstones().await["waiting"].as_u64(), Some(1));

    // Until the backfill completes, the region purges nothing, and says why.
    send_marks_until(&region.url, "the pending backfill in /health", |t| {
        t["held_back_by"]
            .as_str()
            .is_some_and(|h| h.contains("backfill of table carts from eu-west-1"))
    })
    .await;
    assert_eq!(
        tombstones().await["waiting"].as_u64(),
        Some(1),
        "nothing purged during a backfill"
    );

    // The backfill completes; eu-west-1's marks say it has everything: the tombstone goes.
    let complete = serde_json::to_vec(&json!({
        "records": [],
        "complete_through": 0,
        "backfill_barrier": barrier,
    }))
    .expect("serialize");
    let (status, answer) = post_signed(&region.url, repair_path, "eu-west-1", complete).await;
    assert_eq!(status, 200, "{answer}");
    send_marks_until(&region.url, "the tombstone to be purged", |t| {
        t["purged_total"].as_u64() == Some(1)
    })
    .await;

    // The captured backfill, replayed, brings nothing back...
    let (status, answer) = replay().await;
    assert_eq!((status, answer["applied"].as_u64()), (200, Some(0)), "{answer}");
    assert!(ok(&region.url, "GetItem", get.clone()).await.get("Item").is_none());
    // ...nor after a restart, when every in-memory watermark starts from nothing.
    restart_lone_region(&mut region).await;
    let (status, answer) = replay().await;
    assert_eq!((status, answer["applied"].as_u64()), (200, Some(0)), "{answer}");
    assert!(
        ok(&region.url, "GetItem", get).await.get("Item").is_none(),
        "a replayed repair resurrected a purged delete"
    );
    // A newer write arriving from the peer still applies.
    let mut item = dynamo_protocol::Item::new();
    item.insert("id".into(), AttributeValue::S("c2".into()));
    let key = store::engine::key_of(table.key_hash, &table.key, &item).expect("key");
    let record = encode(&Record {
        hlc: replication::Hlc::from_parts(now_ms() + 120_000, 0).0,
        origin: "eu-west-1".into(),
        tombstone: false,
        item,
    });
    let fresh = serde_json::to_vec(&json!({
        "records": [BASE64.encode(store::replication_log::encode_change("carts", &key, &record))],
        "complete_through": null,
    }))
    .expect("serialize");
    let (status, answer) = post_signed(&region.url, repair_path, "eu-west-1", fresh).await;
    assert_eq!((status, answer["applied"].as_u64()), (200, Some(1)), "{answer}");
    stop(&mut region).await;
}

/// A peer whose requests are signed two seconds ahead shows that offset in `/health` and
/// `/metrics` with an alarm; one beyond the signing window is refused and named as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_clock_offsets_are_measured_and_alarmed() {
    let mut region = start_lone_region(tempfile::tempdir().expect("temp dir")).await;
    let mark = serde_json::to_vec(&json!({"clock": 0, "received": 0, "head": 0})).expect("serialize");
    let path = "/replication/v1/mark";
    let send_at = |date_ms: u64| {
        let signature = store::global::sign(KEY, "eu-west-1", "us-east-1", path, date_ms, &mark);
        call_raw(&region.url, path, "eu-west-1", date_ms, signature, mark.clone())
    };
    let clock = || async { get_json(&format!("{}/health", region.url)).await["replication"]["clock"].clone() };
    assert_eq!(clock().await["peers"], json!({}), "no offset before any request");

    let (status, answer) = send_at(now_ms() + 2_000).await;
    assert_eq!(status, 200, "{answer}");
    let seen = clock().await;
    let offset = seen["peers"]["eu-west-1"]["offset_ms"].as_i64().expect("an offset");
    assert!((1_000..=2_000).contains(&offset), "{seen}");
    assert_eq!(seen["alarm"], json!(true), "{seen}");
    assert_eq!(seen["peers"]["eu-west-1"]["beyond_signing_window"], json!(false));
    let metrics = get_text(&format!("{}/metrics", region.url)).await;
    assert!(metrics.contains("switchyard_store_clock_offset_alarm 1"), "{metrics}");
    let seconds: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("switchyard_store_peer_clock_offset_seconds{peer=\"eu-west-1\"} "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no offset metric for eu-west-1: {metrics}"));
    assert!((1.0..=2.0).contains(&seconds), "{metrics}");

    // Seven minutes ahead: past the signing window, refused, and shown as a split.
    let (status, answer) = send_at(now_ms() + 420_000).await;
    assert_eq!(status, 403, "{answer}");
    let health = get_json(&format!("{}/health", region.url)).await;
    let seen = &health["replication"]["clock"];
    assert_eq!(seen["beyond_signing_window"], json!(["eu-west-1"]), "{seen}");
    // The region says it is degraded, and why: it exchanges no changes with that peer.
    assert_eq!(health["status"], json!("degraded"), "{health}");
    assert!(health["reason"].to_string().contains("clock skew"), "{health}");
    stop(&mut region).await;
}

/// The body of a GET as text.
async fn get_text(url: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = hyper::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("valid request");
    let response = client.request(request).await.expect("store answers");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Sends eu-west-1's marks (its clock a minute ahead, everything received) to `url` until
/// `done` holds for the store's `/health` tombstone figures.
async fn send_marks_until(url: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + CONVERGENCE_DEADLINE;
    loop {
        let clock = replication::Hlc::from_parts(now_ms() + 60_000, 0).0;
        let mark = serde_json::to_vec(&json!({"clock": clock, "received": clock, "head": 0})).expect("serialize");
        let (status, answer) = post_signed(url, "/replication/v1/mark", "eu-west-1", mark).await;
        assert_eq!(status, 200, "{answer}");
        let tombstones = get_json(&format!("{url}/health")).await["replication"]["tombstones"].clone();
        if done(&tombstones) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {tombstones}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `condition` until it holds, failing after the convergence deadline.
async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < CONVERGENCE_DEADLINE,
            "{what}: not within {CONVERGENCE_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Point-in-time recovery on one replica of a global table: the replica's undo log holds the
/// changes applied there, replicated ones included, and a restore makes a regional table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restores_replicated_changes_to_a_point_in_time() {
    let mut regions = start_regions().await;
    let (writer, replica) = (regions[2].url.clone(), regions[1].url.clone());
    ok(&writer, "CreateTable", on_demand_table("carts", "id")).await;
    ok(
        &writer,
        "UpdateTable",
        json!({"TableName": "carts", "ReplicaUpdates": [{"Create": {"RegionName": "eu-west-1"}}]}),
    )
    .await;
    wait_until("the replica exists", async || {
        call(&replica, "DescribeTable", json!({"TableName": "carts"})).await.0 == 200
    })
    .await;
    let enabled = ok(
        &replica,
        "UpdateContinuousBackups",
        json!({"TableName": "carts", "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": true}}),
    )
    .await;
    assert_eq!(
        enabled["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"],
        "ENABLED"
    );
    // PITR is each replica's own: the writer's copy has none.
    let (_, writer_side) = call(&writer, "DescribeContinuousBackups", json!({"TableName": "carts"})).await;
    assert_eq!(
        writer_side["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"],
        "DISABLED"
    );
    let has = |id: &'static str, value: &'static str| {
        let replica = replica.clone();
        async move || {
            let (_, got) = call(
                &replica,
                "GetItem",
                json!({"TableName": "carts", "Key": {"id": {"S": id}}}),
            )
            .await;
            got["Item"]["v"]["S"] == value
        }
    };
    ok(
        &writer,
        "PutItem",
        json!({"TableName": "carts", "Item": {"id": {"S": "a"}, "v": {"S": "1"}}}),
    )
    .await;
    wait_until("a=1 replicated", has("a", "1")).await;
    let between = now_ms();
    wait_until("restorable past the first write", async || {
        let described = ok(&replica, "DescribeContinuousBackups", json!({"TableName": "carts"})).await;
        let latest =
            described["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]["LatestRestorableDateTime"]
                .as_f64()
                .unwrap_or(0.0);
        latest * 1000.0 > between as f64
    })
    .await;
    ok(
        &writer,
        "PutItem",
        json!({"TableName": "carts", "Item": {"id": {"S": "a"}, "v": {"S": "2"}}}),
    )
    .await;
    ok(
        &writer,
        "PutItem",
        json!({"TableName": "carts", "Item": {"id": {"S": "b"}, "v": {"S": "1"}}}),
    )
    .await;
    wait_until("b replicated", has("b", "1")).await;
    wait_until("a=2 replicated", has("a", "2")).await;

    let restored = ok(
        &replica,
        "RestoreTableToPointInTime",
        json!({"SourceTableName": "carts", "TargetTableName": "carts-then", "RestoreDateTime": between as f64 / 1000.0}),
    )
    .await;
    assert!(restored["TableDescription"].get("Replicas").is_none(), "{restored}");
    wait_until("restored table ACTIVE", async || {
        ok(&replica, "DescribeTable", json!({"TableName": "carts-then"})).await["Table"]["TableStatus"] == "ACTIVE"
    })
    .await;
    let items = ok(&replica, "Scan", json!({"TableName": "carts-then"})).await["Items"].clone();
    assert_eq!(items, json!([{"id": {"S": "a"}, "v": {"S": "1"}}]));
    // Regional: nothing of it reaches the other regions.
    assert_eq!(
        call(&writer, "DescribeTable", json!({"TableName": "carts-then"}))
            .await
            .0,
        400
    );
    for region in &mut regions {
        stop(region).await;
    }
}

/// An UpdateTable with ReplicaUpdates that read the table before a TagResource committed puts
/// the new replica list on the definition as committed, with the tag (it used to write back the
/// definition it read, losing the tag). Region us-east-1 is a `Store` driven in-process (no
/// background tasks, so its write queue holds only this test's jobs); eu-west-1 is a real
/// server that receives the replica over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_updates_keep_a_tag_committed_after_they_read_the_table() {
    let (listener, mut europe) = bind_region("eu-west-1", tempfile::tempdir().expect("temp dir")).await;
    let urls = [
        ("us-east-1".to_string(), "http://127.0.0.1:1".to_string()),
        ("eu-west-1".to_string(), europe.url.clone()),
    ];
    start(&mut europe, listener, &urls).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
    let replication = store::global::Replication::new(
        engine.clone(),
        ReplicationConfig {
            peers: vec![Peer {
                region: "eu-west-1".to_string(),
                url: europe.url.clone(),
            }],
            key: KEY.to_vec(),
            backlog_bytes_max: store::global::LOG_BACKLOG_BYTES_DEFAULT,
            clock_offset_alarm_ms: store::global::CLOCK_OFFSET_ALARM_MS_DEFAULT,
            clock_offset_max_ms: store::global::CLOCK_OFFSET_MAX_MS_DEFAULT,
            peer_tls: None,
        },
    );
    let us = store::Store::with_replication(engine.clone(), replication);
    let handle = |operation: &'static str, body: Value| {
        let us = us.clone();
        async move { us.handle(operation, body.to_string().as_bytes()).await }
    };
    let created = handle("CreateTable", on_demand_table("carts", "id"))
        .await
        .expect("CreateTable");
    let arn = created["TableDescription"]["TableArn"]
        .as_str()
        .expect("TableArn")
        .to_string();

    let body = json!({"TableName": "carts", "ReplicaUpdates": [{"Create": {"RegionName": "eu-west-1"}}]});
    let (updated, tags) = run_behind_a_queued_tag(&us, &arn, "UpdateTable", body).await;

    let regions = |description: &Value| -> Vec<String> {
        description["Replicas"]
            .as_array()
            .map(|replicas| {
                let mut names: Vec<String> = replicas
                    .iter()
                    .filter_map(|r| r["RegionName"].as_str().map(str::to_string))
                    .collect();
                names.sort();
                names
            })
            .unwrap_or_default()
    };
    assert_eq!(
        regions(&updated["TableDescription"]),
        ["eu-west-1", "us-east-1"],
        "{updated}"
    );
    assert_eq!(
        tags,
        json!([{"Key": "team", "Value": "billing"}]),
        "the tag committed while ReplicaUpdates ran was lost: {tags}"
    );
    let described = handle("DescribeTable", json!({"TableName": "carts"}))
        .await
        .expect("DescribeTable");
    assert_eq!(regions(&described["Table"]), ["eu-west-1", "us-east-1"], "{described}");
    // The replica exists in eu-west-1.
    let remote = ok(&europe.url, "DescribeTable", json!({"TableName": "carts"})).await;
    assert_eq!(remote["Table"]["TableName"], "carts", "{remote}");
    stop(&mut europe).await;
}

/// Rewrites the replication log in `dir` the way the build before log blocks stored it: one
/// entry per change, keyed by its sequence number, holding tag 1, the byte count through it
/// (`u64`, big-endian) and the change.
async fn rewrite_log_one_change_per_entry(dir: &std::path::Path, region: &str) -> usize {
    let engine = reopen(dir, region).await;
    let (changes, ends) = {
        let snapshot = engine.snapshot().expect("snapshot");
        let first = snapshot.log_first(engine.log_head()).expect("first");
        let changes = snapshot.read_log(first, usize::MAX, usize::MAX).expect("log");
        let total = snapshot.log_bytes_after(0).expect("bytes");
        let ends: Vec<u64> = changes
            .iter()
            .map(|(seq, _)| total - snapshot.log_bytes_after(*seq).expect("bytes"))
            .collect();
        (changes, ends)
    };
    drop(engine);
    let deadline = Instant::now() + Duration::from_millis(REOPEN_DEADLINE_MS);
    let database = loop {
        match redb::Database::open(dir.join("store.redb")) {
            Ok(database) => break database,
            Err(error) if Instant::now() > deadline => panic!("database still locked: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let txn = database.begin_write().expect("write");
    {
        let mut log = txn
            .open_table(redb::TableDefinition::<u64, &[u8]>::new("replog"))
            .expect("log");
        log.retain(|_, _| false).expect("clear the log");
        for ((seq, change), end) in changes.iter().zip(ends) {
            let mut entry = vec![1u8];
            entry.extend_from_slice(&end.to_be_bytes());
            entry.extend_from_slice(change);
            log.insert(*seq, entry.as_slice()).expect("rewrite");
        }
    }
    txn.commit().expect("commit");
    changes.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_stored_one_change_per_entry_still_ships_after_the_upgrade() {
    let mut regions = start_regions().await;
    let origin = regions[0].url.clone();
    ok(&origin, "CreateTable", on_demand_table("carts", "id")).await;
    ok(
        &origin,
        "UpdateTable",
        json!({
            "TableName": "carts",
            "ReplicaUpdates": [{"Create": {"RegionName": "eu-west-1"}}, {"Create": {"RegionName": "us-east-1"}}]
        }),
    )
    .await;
    put_carts(&origin, 5).await;
    wait_converged(&regions, 5).await;

    // eu-west-1 misses a batch of 25 and a few single writes; then the origin stops, and its
    // log is stored as the previous build stored it.
    stop(&mut regions[1]).await;
    let requests: Vec<Value> = (0..25)
        .map(|i| json!({"PutRequest": {"Item": {"id": {"S": format!("missed-{i:02}")}}}}))
        .collect();
    ok(&origin, "BatchWriteItem", json!({"RequestItems": {"carts": requests}})).await;
    for i in 0..3 {
        ok(
            &origin,
            "PutItem",
            json!({"TableName": "carts", "Item": {"id": {"S": format!("single-{i}")}}}),
        )
        .await;
    }
    stop(&mut regions[0]).await;
    let rewritten = rewrite_log_one_change_per_entry(regions[0].dir.path(), regions[0].name).await;
    assert!(
        rewritten >= 28,
        "the changes eu-west-1 missed are in the log ({rewritten})"
    );

    let urls: Vec<(String, String)> = regions.iter().map(|r| (r.name.to_string(), r.url.clone())).collect();
    for index in [0, 1] {
        let listener = TcpListener::bind(regions[index].url.trim_start_matches("http://"))
            .await
            .expect("rebind the same port");
        start(&mut regions[index], listener, &urls).await;
    }
    // More writes after the upgrade land in blocks behind the old entries.
    put_carts(&regions[0].url, 8).await;
    wait_converged(&regions, 8 + 25 + 3).await;
    // Through the log, not only by repair: eu-west-1 acknowledged every change logged.
    let health_url = format!("{}/health", regions[0].url);
    wait_until("eu-west-1 acknowledging the origin's whole log", || async {
        let health = get_json(&health_url).await["replication"].clone();
        health["log_head"].as_u64().is_some() && health["peers"]["eu-west-1"]["acked_seq"] == health["log_head"]
    })
    .await;
    for region in &mut regions {
        stop(region).await;
    }
}

/// Calls an operation of the Streams API.
async fn streams_ok(url: &str, operation: &str, body: Value) -> Value {
    let headers = [
        ("x-amz-target", format!("DynamoDBStreams_20120810.{operation}")),
        ("content-type", "application/x-amz-json-1.0".to_string()),
    ];
    let (status, value) = send(format!("{url}/"), &headers, body.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{operation} failed: {value}");
    value
}

/// Every record of the table's latest stream in `url`'s region, shard by shard.
async fn stream_records(url: &str) -> Vec<Value> {
    let table = ok(url, "DescribeTable", json!({"TableName": "carts"})).await;
    let arn = table["Table"]["LatestStreamArn"].clone();
    assert!(arn.is_string(), "the replica has a stream: {table}");
    let described = streams_ok(url, "DescribeStream", json!({"StreamArn": arn})).await;
    let mut records = Vec::new();
    for shard in described["StreamDescription"]["Shards"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let mut iterator = streams_ok(
            url,
            "GetShardIterator",
            json!({"StreamArn": arn, "ShardId": shard["ShardId"], "ShardIteratorType": "TRIM_HORIZON"}),
        )
        .await["ShardIterator"]
            .clone();
        loop {
            let page = streams_ok(url, "GetRecords", json!({"ShardIterator": iterator})).await;
            let got = page["Records"].as_array().cloned().unwrap_or_default();
            let empty = got.is_empty();
            records.extend(got);
            iterator = page["NextShardIterator"].clone();
            if empty || iterator.is_null() {
                break;
            }
        }
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_gives_the_new_replica_the_origins_items_index_entries_counts_and_stream() {
    let mut regions = start_regions().await;
    let (replica, origin) = (regions[1].url.clone(), regions[2].url.clone());
    let mut table = on_demand_table("carts", "id");
    table["AttributeDefinitions"]
        .as_array_mut()
        .expect("definitions")
        .push(json!({"AttributeName": "shop", "AttributeType": "S"}));
    table["GlobalSecondaryIndexes"] = json!([{
        "IndexName": "by_shop",
        "KeySchema": [{"AttributeName": "shop", "KeyType": "HASH"}, {"AttributeName": "id", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "ALL"}
    }]);
    ok(&origin, "CreateTable", table).await;
    // Enough items that the backfill's requests hold long runs of keys with nothing between,
    // and deletes (tombstones the backfill also brings) and updates among them.
    for i in 0..120 {
        let item =
            json!({"id": {"S": format!("c{i:03}")}, "shop": {"S": format!("s{}", i % 4)}, "n": {"N": i.to_string()}});
        ok(&origin, "PutItem", json!({"TableName": "carts", "Item": item})).await;
    }
    for i in [5, 50, 51, 52, 99] {
        let key = json!({"id": {"S": format!("c{i:03}")}});
        ok(&origin, "DeleteItem", json!({"TableName": "carts", "Key": key})).await;
    }
    ok(
        &origin,
        "UpdateItem",
        json!({"TableName": "carts", "Key": {"id": {"S": "c010"}}, "UpdateExpression": "SET n = :n",
               "ExpressionAttributeValues": {":n": {"N": "1000"}}}),
    )
    .await;
    ok(
        &origin,
        "UpdateTable",
        json!({"TableName": "carts", "ReplicaUpdates": [{"Create": {"RegionName": "eu-west-1"}}]}),
    )
    .await;
    let expected = scan_all(&origin).await;
    assert_eq!(expected.len(), 115);
    let started = Instant::now();
    while scan_all(&replica).await != expected {
        assert!(
            started.elapsed() < CONVERGENCE_DEADLINE,
            "the backfill did not complete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let count = |v: &Value| v["Table"]["ItemCount"].clone();
    assert_eq!(
        count(&ok(&replica, "DescribeTable", json!({"TableName": "carts"})).await),
        json!(115)
    );
    for shop in ["s0", "s1", "s2", "s3"] {
        let query = json!({"TableName": "carts", "IndexName": "by_shop", "KeyConditionExpression": "shop = :s",
                           "ExpressionAttributeValues": {":s": {"S": shop}}});
        let (here, there) = (
            ok(&origin, "Query", query.clone()).await,
            ok(&replica, "Query", query).await,
        );
        assert_eq!(here["Items"], there["Items"], "index entries of {shop}");
        assert!(here["Count"].as_u64().is_some_and(|c| c >= 28));
    }
    // The replica's stream shows each backfilled item once, as an INSERT of the item.
    let mut inserted: Vec<Value> = stream_records(&replica)
        .await
        .into_iter()
        .map(|r| {
            assert_eq!(r["eventName"], "INSERT", "{r}");
            r["dynamodb"]["NewImage"].clone()
        })
        .collect();
    inserted.sort_by_key(|i| i["id"]["S"].as_str().unwrap_or_default().to_string());
    assert_eq!(inserted, expected);
    // The replica's items are ordinary items: a change to one replicates back.
    ok(
        &replica,
        "DeleteItem",
        json!({"TableName": "carts", "Key": {"id": {"S": "c000"}}}),
    )
    .await;
    let started = Instant::now();
    while scan_all(&origin).await.len() != 114 {
        assert!(started.elapsed() < CONVERGENCE_DEADLINE, "the delete did not replicate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for region in &mut regions {
        stop(region).await;
    }
}

/// A peer's marks name its database. A new name (its data directory wiped) is recorded with
/// when; a replayed mark of the old name, within the signing window, changes nothing; a name
/// that is not 16 hex digits is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peers_new_database_is_recorded_and_a_replayed_old_mark_changes_nothing() {
    let mut region = start_lone_region(tempfile::tempdir().expect("temp dir")).await;
    let path = "/replication/v1/mark";
    let mark = |store: &str| {
        serde_json::to_vec(&json!({"clock": 0, "received": 0, "head": 0, "store": store})).expect("serialize")
    };
    let first_at = now_ms();
    let old = mark("00000000000000aa");
    let old_signature = store::global::sign(KEY, "eu-west-1", "us-east-1", path, first_at, &old);
    let (status, answer) = call_raw(
        &region.url,
        path,
        "eu-west-1",
        first_at,
        old_signature.clone(),
        old.clone(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let new = mark("00000000000000bb");
    let new_signature = store::global::sign(KEY, "eu-west-1", "us-east-1", path, first_at + 1, &new);
    let (status, answer) = call_raw(&region.url, path, "eu-west-1", first_at + 1, new_signature, new).await;
    assert_eq!(status, 200, "{answer}");
    // The first mark, captured and sent again.
    let (status, answer) = call_raw(&region.url, path, "eu-west-1", first_at, old_signature, old).await;
    assert_eq!(status, 200, "a replay within the window is taken, as a mark: {answer}");
    let (status, answer) = post_signed(&region.url, path, "eu-west-1", mark("+bb")).await;
    assert_eq!(status, 400, "{answer}");
    stop(&mut region).await;

    let engine = reopen(region.dir.path(), "us-east-1").await;
    assert_eq!(
        engine.setting_value(&store::global::peer_store_setting("eu-west-1")),
        0xbb,
        "the replayed old name did not come back"
    );
    let since = engine.setting_value(&store::global::peer_rebuilt_setting("eu-west-1"));
    assert!(
        since >= first_at && since <= now_ms(),
        "recorded when the old name was last seen: {since}"
    );
}

/// Stops `region` and starts it again on its port and data directory with `peers`.
async fn restart_with(region: &mut Region, peers: &[(String, String)]) {
    stop(region).await;
    let listener = TcpListener::bind(region.url.trim_start_matches("http://"))
        .await
        .expect("rebind the region's port");
    start(region, listener, peers).await;
}

/// How the stand-in eu-west-1 answers the lone region's marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MarkAnswerMode {
    /// Nothing missing, signed for this mark.
    Nothing,
    /// `{}`: nothing missing, unsigned (a claim stripped on the way, hiding a wipe).
    UnsignedNothing,
    /// Nothing missing, signed for a mark signed a millisecond earlier (a replayed clearance).
    NothingForAnotherMark,
    /// The claim that `carts` is missing here, without a signature.
    Unsigned,
    /// The claim, signed for a mark signed a millisecond earlier (a replayed answer).
    SignedForAnotherMark,
    /// The claim, signed for this mark.
    Signed,
}

/// Serves `POST /replication/v1/mark` as eu-west-1, answering per `mode`; counts the marks.
async fn mark_answerer(
    mode: Arc<std::sync::Mutex<MarkAnswerMode>>,
    marks: Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    let app = axum::Router::new().route(
        "/replication/v1/mark",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let (mode, marks) = (mode.clone(), marks.clone());
            async move {
                marks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let date: u64 = headers
                    .get("x-switchyard-date")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("a signed mark has a date");
                let missing = json!({"since": 1, "tables": ["carts"]});
                let payload = serde_json::to_vec(&missing).expect("serialize");
                let sign_payload = |date_ms: u64, payload: &[u8]| {
                    store::global::sign(
                        KEY,
                        "eu-west-1",
                        "us-east-1",
                        "answer:/replication/v1/mark",
                        date_ms,
                        payload,
                    )
                };
                let sign = |date_ms: u64| sign_payload(date_ms, &payload);
                let mode = *mode.lock().expect("lock");
                let answer = match mode {
                    MarkAnswerMode::Nothing => json!({"signature": sign_payload(date, b"null")}),
                    MarkAnswerMode::UnsignedNothing => json!({}),
                    MarkAnswerMode::NothingForAnotherMark => json!({"signature": sign_payload(date - 1, b"null")}),
                    MarkAnswerMode::Unsigned => json!({"replicas_missing_here": missing}),
                    MarkAnswerMode::SignedForAnotherMark => {
                        json!({"replicas_missing_here": missing, "signature": sign(date - 1)})
                    }
                    MarkAnswerMode::Signed => json!({"replicas_missing_here": missing, "signature": sign(date)}),
                };
                let answer = answer.to_string();
                // The peer's own answers carry its signature of the whole answer for this
                // mark; a forgery on the way cannot make one.
                let signature = matches!(mode, MarkAnswerMode::Nothing | MarkAnswerMode::Signed).then(|| {
                    answer_signature(
                        "eu-west-1",
                        "us-east-1",
                        "/replication/v1/mark",
                        date,
                        &body,
                        answer.as_bytes(),
                    )
                });
                signed_answer(answer, signature)
            }
        }),
    );
    serve_stand_in(app).await
}

/// A peer's word that this region's database lacks its replicas fails this region's health,
/// but only when the peer signed it for the mark it answers: an unsigned claim, or one signed
/// for another mark (captured and replayed), changes nothing; nor does an unsigned or
/// replayed word that nothing is missing clear it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_signed_answer_to_this_mark_says_replicas_are_missing_here() {
    let mode = Arc::new(std::sync::Mutex::new(MarkAnswerMode::Nothing));
    let marks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let europe = mark_answerer(mode.clone(), marks.clone()).await;
    let (listener, mut region) = bind_region("us-east-1", tempfile::tempdir().expect("temp dir")).await;
    let peers = [
        ("us-east-1".to_string(), region.url.clone()),
        ("eu-west-1".to_string(), europe),
    ];
    start(&mut region, listener, &peers).await;
    let health_url = format!("{}/health", region.url);
    let health = || async { get_json(&health_url).await };
    // Two marks answered in a mode (the second sent after the first's answer was taken).
    let answer_marks_with = |next: MarkAnswerMode| {
        let (mode, marks) = (mode.clone(), marks.clone());
        async move {
            *mode.lock().expect("lock") = next;
            let seen = marks.load(std::sync::atomic::Ordering::SeqCst);
            let started = Instant::now();
            while marks.load(std::sync::atomic::Ordering::SeqCst) < seen + 2 {
                assert!(started.elapsed() < CONVERGENCE_DEADLINE, "no marks sent");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    for forged in [MarkAnswerMode::Unsigned, MarkAnswerMode::SignedForAnotherMark] {
        answer_marks_with(forged).await;
        let body = health().await;
        assert_eq!(body["status"], "ready", "{forged:?}: {body}");
    }
    answer_marks_with(MarkAnswerMode::Signed).await;
    let body = health().await;
    assert_eq!(body["status"], "degraded", "{body}");
    let reason = body["reason"].as_str().expect("reason");
    assert!(
        reason.contains("eu-west-1 lists replicas of the global tables carts here")
            && reason.contains("ReplicaUpdates"),
        "{reason}"
    );
    // Nor does an unsigned or replayed "nothing missing" clear it: stripping the claim from
    // the answers on the way would hide the wipe.
    for forged in [MarkAnswerMode::UnsignedNothing, MarkAnswerMode::NothingForAnotherMark] {
        answer_marks_with(forged).await;
        let body = health().await;
        assert_eq!(body["status"], "degraded", "{forged:?}: {body}");
    }
    // The alarm outlives a restart: the restarted store is not `ready` before the peer
    // answers again (here it answers only with forgeries, which change nothing).
    *mode.lock().expect("lock") = MarkAnswerMode::UnsignedNothing;
    restart_with(&mut region, &peers).await;
    let body = health().await;
    assert_eq!(body["status"], "degraded", "remembered across the restart: {body}");
    let reason = body["reason"].as_str().expect("reason");
    assert!(
        reason.contains("before this store last started, eu-west-1 listed replicas of global tables here"),
        "{reason}"
    );
    answer_marks_with(MarkAnswerMode::Signed).await;
    let body = health().await;
    let reason = body["reason"].as_str().expect("reason");
    assert!(reason.contains("global tables carts here"), "named again: {reason}");
    answer_marks_with(MarkAnswerMode::Nothing).await;
    let body = health().await;
    assert_eq!(body["status"], "ready", "cleared by the next signed answer: {body}");
    // Cleared durably too: restarted while the peer answers only forgeries, it is ready.
    *mode.lock().expect("lock") = MarkAnswerMode::Unsigned;
    restart_with(&mut region, &peers).await;
    let body = health().await;
    assert_eq!(body["status"], "ready", "the clearance outlives a restart: {body}");
    stop(&mut region).await;
}

/// A request to `path` with a signature that is not the key's: refused (403) before anything.
async fn refused_unsigned(url: &str, path: &str, body: Value) {
    let (status, answer) = call_raw(
        url,
        path,
        "eu-west-1",
        now_ms(),
        "00".repeat(32),
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{path}: {answer}");
}

/// A settings comparison (`/replication/v1/settings`) as peer eu-west-1 would send it, signed
/// later than any request before it (a request signed no later than the last one is a replay,
/// answered but marking nothing).
async fn compare_settings(url: &str, tables: Value) -> (u16, Value) {
    let (status, answer, _) = compare_settings_dated(url, tables).await;
    (status, answer)
}

/// [`compare_settings`], with the request's signing time.
async fn compare_settings_dated(url: &str, tables: Value) -> (u16, Value, u64) {
    static LAST_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let date_ms = {
        let now = now_ms();
        let last = LAST_MS.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        let date = now.max(last + 1);
        LAST_MS.fetch_max(date, std::sync::atomic::Ordering::SeqCst);
        date
    };
    let body = json!({"tables": tables}).to_string().into_bytes();
    let path = "/replication/v1/settings";
    let signature = store::global::sign(KEY, "eu-west-1", "us-east-1", path, date_ms, &body);
    let (status, answer) = call_raw(url, path, "eu-west-1", date_ms, signature, body).await;
    (status, answer, date_ms)
}

/// us-east-1's signature of a settings answer's tables for the request signed at `date_ms`.
fn settings_answer_signature(tables: &Value, date_ms: u64) -> String {
    let tables: std::collections::BTreeMap<String, store::global::HeldSettings> =
        serde_json::from_value(tables.clone()).expect("held settings");
    let payload = store::global::settings_answer_payload(&tables);
    store::global::sign(
        KEY,
        "us-east-1",
        "eu-west-1",
        store::global::SETTINGS_ANSWER_PATH,
        date_ms,
        &payload,
    )
}

/// eu-west-1's replica definition of `table` (request `sequence`), taken.
async fn define(url: &str, table: &store::catalog::TableMeta, sequence: u64, joining: bool) {
    let body = table_body(table, false, sequence, joining);
    let (status, answer) = post_signed(url, "/replication/v1/table", "eu-west-1", body).await;
    assert_eq!(status, 200, "{answer}");
}

async fn ttl_status(url: &str) -> Value {
    ok(url, "DescribeTimeToLive", json!({"TableName": "carts"})).await["TimeToLiveDescription"]["TimeToLiveStatus"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_holding_a_peers_setting_newer_than_another_peer_marks_it_to_send_on() {
    let (mut region, mut table) = lone_region_with_carts().await;
    ok(&region.url, "CreateTable", on_demand_table("local_only", "id")).await;
    table.replicas = vec!["us-east-1".into(), "eu-west-1".into()];
    define(&region.url, &table, 1, true).await;
    // A TTL enabled by eu-west-1 arrives with its definition: taken, and not this region's to
    // send (it made no change).
    let version = (replication::Hlc::from_parts(now_ms(), 0).0, "eu-west-1".to_string());
    table.ttl = Some(store::catalog::TtlSpec {
        attribute: "exp".into(),
        enabled: true,
        version: Some(version.clone()),
    });
    define(&region.url, &table, 2, false).await;
    assert_eq!(ttl_status(&region.url).await, "ENABLED");

    // A peer holding the same version: nothing to send; the answer gives this region's
    // versions of the shared tables only.
    let (status, answer, date_ms) =
        compare_settings_dated(&region.url, json!({"carts": {"ttl": version}, "local_only": {}})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["tables"], json!({"carts": {"ttl": version}}));
    // Signed by this region for that request (the asker takes nothing else).
    assert_eq!(
        answer["signature"],
        json!(settings_answer_signature(&answer["tables"], date_ms))
    );
    assert_ne!(
        answer["signature"],
        json!(settings_answer_signature(&answer["tables"], date_ms + 1))
    );
    assert_eq!(ttl_status(&region.url).await, "ENABLED");

    // The same request replayed, saying the peer holds none: answered, and nothing marked.
    let body = json!({"tables": {"carts": {}}}).to_string().into_bytes();
    let path = "/replication/v1/settings";
    let old_ms = now_ms() - 60_000;
    let signature = store::global::sign(KEY, "eu-west-1", "us-east-1", path, old_ms, &body);
    let (status, answer) = call_raw(&region.url, path, "eu-west-1", old_ms, signature, body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(ttl_status(&region.url).await, "ENABLED");

    // A peer holding none (it missed it): this region now sends it on, and says it is not in
    // every replica yet.
    let (status, answer) = compare_settings(&region.url, json!({"carts": {}})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["tables"]["carts"]["ttl"], json!(version));
    assert_eq!(ttl_status(&region.url).await, "ENABLING");

    // Refused: unsigned, corrupt, or naming more tables than a request may.
    refused_unsigned(&region.url, "/replication/v1/settings", json!({"tables": {}})).await;
    let (status, answer) = post_signed(
        &region.url,
        "/replication/v1/settings",
        "eu-west-1",
        b"{\"tables\": [".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    let many: serde_json::Map<String, Value> = (0..=store::global::SETTINGS_TABLES_PER_REQUEST_MAX)
        .map(|i| (format!("t{i}"), json!({})))
        .collect();
    let (status, answer) = compare_settings(&region.url, Value::Object(many)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("at most"), "{answer}");
    stop(&mut region).await;
}

/// Serves `app` on a loopback port, as a stand-in peer; its URL.
async fn serve_stand_in(app: axum::Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A stand-in peer's 200 `answer`, with `signature` as its `ANSWER_SIGNATURE_HEADER` if any.
fn signed_answer(answer: String, signature: Option<String>) -> axum::response::Response {
    let mut response = axum::response::IntoResponse::into_response(answer);
    if let Some(signature) = signature {
        response
            .headers_mut()
            .insert(store::global::ANSWER_SIGNATURE_HEADER, signature.parse().expect("hex"));
    }
    response
}

/// What the answerer signs for its 200 answer to a request: `ANSWER_SIGNATURE_HEADER`.
fn answer_signature(from: &str, to: &str, path: &str, date_ms: u64, request: &[u8], answer: &[u8]) -> String {
    use sha2::Digest as _;
    let mut payload = sha2::Sha256::digest(request).to_vec();
    payload.extend_from_slice(answer);
    store::global::sign(KEY, from, to, &format!("answer-body:{path}"), date_ms, &payload)
}

/// Every 200 answer of a replication endpoint is signed by the answering region for the
/// request it answers: its exact bytes, that request's signing time and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_answer_is_signed_for_the_request_it_answers() {
    let (mut region, mut table) = lone_region_with_carts().await;
    table.replicas = vec!["us-east-1".into(), "eu-west-1".into()];
    define(&region.url, &table, 1, false).await;
    put_carts(&region.url, 3).await;
    let path = "/replication/v1/digest";
    let body = json!({"table": "carts", "ranges": sixteen_ranges()})
        .to_string()
        .into_bytes();
    let date_ms = now_ms();
    let headers = [
        (store::global::REGION_HEADER, "eu-west-1".to_string()),
        (store::global::TO_REGION_HEADER, "us-east-1".to_string()),
        (store::global::DATE_HEADER, date_ms.to_string()),
        (
            store::global::SIGNATURE_HEADER,
            store::global::sign(KEY, "eu-west-1", "us-east-1", path, date_ms, &body),
        ),
    ];
    let (status, answer_headers, answer) =
        testkit::http_post_full(&format!("{}{path}", region.url), &headers, body.clone()).await;
    assert_eq!(status, 200, "{answer:?}");
    let signature = answer_headers
        .get(store::global::ANSWER_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("a signed answer");
    assert_eq!(
        signature,
        answer_signature("us-east-1", "eu-west-1", path, date_ms, &body, &answer)
    );
    // Bound to that request: not another body's, nor another signing time's.
    assert_ne!(
        signature,
        answer_signature("us-east-1", "eu-west-1", path, date_ms, b"{}", &answer)
    );
    assert_ne!(
        signature,
        answer_signature("us-east-1", "eu-west-1", path, date_ms + 1, &body, &answer)
    );
    // A refused request gets no signature.
    let (status, answer_headers, _) = testkit::http_post_full(
        &format!("{}{path}", region.url),
        &[
            (store::global::REGION_HEADER, "eu-west-1".to_string()),
            (store::global::TO_REGION_HEADER, "us-east-1".to_string()),
            (store::global::DATE_HEADER, date_ms.to_string()),
            (store::global::SIGNATURE_HEADER, "00".repeat(32)),
        ],
        body,
    )
    .await;
    assert_eq!(status, 403);
    assert!(answer_headers.get(store::global::ANSWER_SIGNATURE_HEADER).is_none());
    stop(&mut region).await;
}

/// How the stand-in eu-west-1 answers the batches shipped to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AckMode {
    /// Every change taken, without a signature (an acknowledgement forged on the way).
    Unsigned,
    /// Every change taken, signed for another request (an answer swapped or replayed).
    SignedForAnotherRequest,
    /// Every change taken, signed for this request.
    Signed,
}

/// Serves `POST /replication/v1/batch` as eu-west-1, acknowledging each batch whole per `mode`;
/// counts the batches.
async fn batch_acknowledger(
    mode: Arc<std::sync::Mutex<AckMode>>,
    batches: Arc<std::sync::atomic::AtomicUsize>,
) -> String {
    let app = axum::Router::new()
        .route(
            "/replication/v1/batch",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (mode, batches) = (mode.clone(), batches.clone());
                async move {
                    batches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let date: u64 = headers
                        .get(store::global::DATE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .expect("a signed batch has a date");
                    let request: Value = serde_json::from_slice(&body).expect("a batch is JSON");
                    let changes = request["changes"].as_array().map_or(0, Vec::len);
                    let answer = json!({"through": request["to_seq"], "applied": changes}).to_string();
                    let path = "/replication/v1/batch";
                    let signature = match *mode.lock().expect("lock") {
                        AckMode::Unsigned => None,
                        AckMode::SignedForAnotherRequest => Some(answer_signature(
                            "eu-west-1",
                            "us-east-1",
                            path,
                            date,
                            b"another batch",
                            answer.as_bytes(),
                        )),
                        AckMode::Signed => Some(answer_signature(
                            "eu-west-1",
                            "us-east-1",
                            path,
                            date,
                            &body,
                            answer.as_bytes(),
                        )),
                    };
                    signed_answer(answer, signature)
                }
            }),
        )
        // Anything else (marks, settings, a repair's digests) answered 200, unsigned: never taken.
        .fallback(|| async { "{}" });
    serve_stand_in(app).await
}

/// A batch's acknowledgement moves what this region counts as delivered only when the peer
/// signed it for that batch: one forged or swapped on the way would have it skip changes the
/// peer never applied (and never ship them again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_signed_acknowledgement_of_this_batch_counts_it_delivered() {
    let mode = Arc::new(std::sync::Mutex::new(AckMode::Unsigned));
    let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let europe = batch_acknowledger(mode.clone(), batches.clone()).await;
    let (listener, mut region) = bind_region("us-east-1", tempfile::tempdir().expect("temp dir")).await;
    let peers = [
        ("us-east-1".to_string(), region.url.clone()),
        ("eu-west-1".to_string(), europe),
    ];
    start(&mut region, listener, &peers).await;
    let create = on_demand_table("carts", "id");
    ok(&region.url, "CreateTable", create.clone()).await;
    let request: store::catalog::CreateTableRequest = serde_json::from_value(create).expect("request");
    let mut table = store::catalog::table_from_request(&request, 1, 0.0).expect("table");
    table.replicas = vec!["us-east-1".into(), "eu-west-1".into()];
    define(&region.url, &table, 1, false).await;
    put_carts(&region.url, 5).await;
    let peer =
        || async { get_json(&format!("{}/health", region.url)).await["replication"]["peers"]["eu-west-1"].clone() };
    for forged in [AckMode::Unsigned, AckMode::SignedForAnotherRequest] {
        *mode.lock().expect("lock") = forged;
        let seen = batches.load(std::sync::atomic::Ordering::SeqCst);
        wait_until("two batches answered with the forgery", async || {
            batches.load(std::sync::atomic::Ordering::SeqCst) >= seen + 2
        })
        .await;
        let figures = peer().await;
        assert_eq!(figures["acked_seq"], 0, "{forged:?}: {figures}");
        let error = figures["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("is not signed by eu-west-1"), "{forged:?}: {figures}");
    }
    *mode.lock().expect("lock") = AckMode::Signed;
    wait_until("the signed acknowledgement taken", async || {
        let figures = peer().await;
        figures["acked_seq"].as_u64().is_some_and(|acked| acked > 0) && figures["pending_changes"] == 0
    })
    .await;
    stop(&mut region).await;
}
