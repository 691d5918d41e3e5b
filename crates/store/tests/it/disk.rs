//! A full disk and I/O errors, injected under the storage engine: writes are refused with a
//! clear error below the watermark while deletes go on, an I/O error fails its batch and the
//! database is reopened without a restart, `/health` says what is going on, and no
//! acknowledged write is lost through any of it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamo_protocol::{ApiError, ErrorKind};
use serde_json::{Value, json};
use store::disk::{DiskSettings, FaultyDisk, RESERVE_FILE_NAME};
use store::engine::{EngineOptions, HEALTH_TABLE, WriterState};
use store::{Engine, Store, SystemClock};

use crate::support::on_demand_table;

const WATERMARK_BYTES: u64 = 2 << 20;
const RESERVE_BYTES: u64 = 512 << 10;
const WAIT_MS: u64 = 20_000;

struct Disk {
    store: Store,
    faults: Arc<FaultyDisk>,
    dir: tempfile::TempDir,
    /// Every acknowledged write: key → value (`None`: deleted).
    acknowledged: BTreeMap<String, Option<String>>,
}

impl Disk {
    async fn open() -> Disk {
        Disk::open_with(DiskSettings {
            free_bytes_min: Some(WATERMARK_BYTES),
            reserve_bytes: RESERVE_BYTES,
        })
        .await
    }

    async fn open_with(settings: DiskSettings) -> Disk {
        let dir = tempfile::tempdir().expect("temporary directory");
        let faults = FaultyDisk::new();
        let options = EngineOptions::on_faulty_disk(&faults, settings);
        let engine = Engine::open_with(dir.path(), "us-east-1", Arc::new(SystemClock), options).expect("open engine");
        let disk = Disk {
            store: Store::new(engine),
            faults,
            dir,
            acknowledged: BTreeMap::new(),
        };
        disk.call("CreateTable", on_demand_table("orders", "id"))
            .await
            .expect("create table");
        disk
    }

    async fn call(&self, operation: &str, body: Value) -> Result<Value, ApiError> {
        self.store.handle(operation, body.to_string().as_bytes()).await
    }

    async fn put(&mut self, id: &str, value: &str) -> Result<(), ApiError> {
        let item = json!({"TableName": "orders", "Item": {"id": {"S": id}, "v": {"S": value}}});
        self.call("PutItem", item).await?;
        self.acknowledged.insert(id.to_string(), Some(value.to_string()));
        Ok(())
    }

    async fn delete(&mut self, id: &str) -> Result<(), ApiError> {
        self.call("DeleteItem", json!({"TableName": "orders", "Key": {"id": {"S": id}}}))
            .await?;
        self.acknowledged.insert(id.to_string(), None);
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<String>, ApiError> {
        let answer = self
            .call(
                "GetItem",
                json!({"TableName": "orders", "Key": {"id": {"S": id}}, "ConsistentRead": true}),
            )
            .await?;
        Ok(answer["Item"]["v"]["S"].as_str().map(str::to_string))
    }

    /// Leaves `free` bytes on the fake disk (beyond what the data directory holds now).
    fn leave_free(&self, free: u64) {
        self.faults.set_capacity_bytes(used_bytes(self.dir.path()) + free);
    }

    async fn assert_nothing_acknowledged_lost(&self) {
        for (id, value) in &self.acknowledged {
            assert_eq!(&self.get(id).await.expect("read"), value, "item {id}");
        }
    }

    /// Retries a put (with a deadline) until it succeeds.
    async fn put_once_writes_resume(&mut self, id: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
        while let Err(error) = self.put(id, value).await {
            assert!(Instant::now() < deadline, "writes never resumed: {error}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_for_writer(&self, state: WriterState) {
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
        while self.store.engine().writer_status().state != state {
            assert!(
                Instant::now() < deadline,
                "writer never reached {state:?}: {:?}",
                self.store.engine().writer_status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn used_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn big(n: usize) -> String {
    "x".repeat(n)
}

#[tokio::test]
async fn below_the_watermark_writes_are_refused_deletes_go_on_and_writes_resume_by_themselves() {
    let mut disk = Disk::open().await;
    for i in 0..20 {
        disk.put(&format!("before-{i}"), &big(1000)).await.expect("room");
    }
    assert!(disk.dir.path().join(RESERVE_FILE_NAME).exists(), "the reserve is held");
    disk.leave_free(WATERMARK_BYTES / 2);

    let refused = disk.put("refused", "v").await.expect_err("below the watermark");
    assert_eq!(refused.kind, ErrorKind::ServiceUnavailable, "{refused}");
    assert!(
        refused.message.contains("disk_free_bytes_min") && refused.message.contains("Deletes still work"),
        "names the cause and the fix: {refused}"
    );
    let status = disk.store.engine().disk_status();
    assert!(status.low, "{status:?}");
    assert_eq!(status.reserve_held_bytes, 0, "released so deletes can commit");
    assert!(!disk.dir.path().join(RESERVE_FILE_NAME).exists());
    let update = disk
        .call(
            "UpdateItem",
            json!({"TableName": "orders", "Key": {"id": {"S": "before-1"}}, "UpdateExpression": "SET v = :v", "ExpressionAttributeValues": {":v": {"S": "new"}}}),
        )
        .await
        .expect_err("an update adds data too");
    assert_eq!(update.kind, ErrorKind::ServiceUnavailable);
    let created = disk
        .call("CreateTable", on_demand_table("more", "id"))
        .await
        .expect_err("no new tables either");
    assert_eq!(created.kind, ErrorKind::ServiceUnavailable);

    // Deletes are how space comes back: they still commit, and reads are served.
    for i in 0..10 {
        disk.delete(&format!("before-{i}"))
            .await
            .expect("deletes go on below the watermark");
    }
    assert_eq!(disk.get("before-15").await.expect("reads go on"), Some(big(1000)));
    assert!(disk.store.engine().writer_status().writes_refused_total >= 3);

    // Space returns: the next write goes through, no restart.
    disk.faults.set_capacity_bytes(u64::MAX);
    disk.put("after", "v").await.expect("writes resume by themselves");
    let status = disk.store.engine().disk_status();
    assert!(!status.low, "{status:?}");
    assert_eq!(status.reserve_held_bytes, RESERVE_BYTES, "the reserve is back");
    assert_eq!(
        disk.get("refused").await.expect("read"),
        None,
        "a refused write left nothing"
    );
    disk.assert_nothing_acknowledged_lost().await;
}

#[tokio::test]
async fn an_io_error_fails_its_batch_and_the_database_is_reopened_without_a_restart() {
    let mut disk = Disk::open().await;
    for i in 0..10 {
        disk.put(&format!("before-{i}"), "v").await.expect("healthy disk");
    }
    disk.faults.set_fail_syncs(true);
    let failed = disk.put("unlucky", "v").await.expect_err("the fsync failed");
    assert_eq!(failed.kind, ErrorKind::InternalServerError, "{failed}");
    assert!(disk.faults.faults_injected.load(std::sync::atomic::Ordering::SeqCst) > 0);
    // While the disk keeps failing, writes fail (and are never acknowledged)...
    for _ in 0..3 {
        assert!(disk.put("still-unlucky", "v").await.is_err());
    }
    let status = disk.store.engine().writer_status();
    assert!(status.storage_failures_total >= 1, "{status:?}");
    assert!(
        status.last_error.is_some() && status.last_error_at_unix_ms.is_some(),
        "{status:?}"
    );

    // ...and once it works again the writer has reopened the database by itself.
    disk.faults.set_fail_syncs(false);
    disk.put_once_writes_resume("after", "v").await;
    disk.wait_for_writer(WriterState::Ok).await;
    let status = disk.store.engine().writer_status();
    assert!(status.reopens_total >= 1, "{status:?}");
    assert!(
        status.recovered_at_unix_ms >= status.last_error_at_unix_ms,
        "{status:?}"
    );
    disk.assert_nothing_acknowledged_lost().await;
}

#[tokio::test]
async fn a_disk_that_fills_up_under_the_engine_heals_when_it_grows() {
    // No watermark and no reserve: the write itself meets ENOSPC.
    let mut disk = Disk::open_with(DiskSettings {
        free_bytes_min: Some(0),
        reserve_bytes: 0,
    })
    .await;
    disk.put("first", "v").await.expect("healthy disk");
    disk.faults.set_capacity_bytes(used_bytes(disk.dir.path()));
    // The database file has room inside it at first; keep writing until it must grow.
    let mut failures = 0;
    for i in 0..2000 {
        if disk.put(&format!("filler-{i}"), &big(8000)).await.is_err() {
            failures += 1;
            if failures == 3 {
                break;
            }
        }
    }
    assert!(failures > 0, "the full disk failed some writes");
    let status = disk.store.engine().writer_status();
    assert!(
        status.storage_failures_total > 0,
        "ENOSPC, not the watermark: {status:?}"
    );
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("No space left")),
        "{status:?}"
    );
    // The disk grows.
    disk.faults.set_capacity_bytes(u64::MAX);
    disk.put_once_writes_resume("after", "v").await;
    disk.delete("first").await.expect("deletes work again");
    disk.wait_for_writer(WriterState::Ok).await;
    assert!(
        disk.store.engine().writer_status().reopens_total >= 1,
        "recovered by reopening"
    );
    disk.assert_nothing_acknowledged_lost().await;
}

#[tokio::test]
async fn the_health_table_is_reserved_and_hidden() {
    let disk = Disk::open().await;
    let listed = disk.call("ListTables", json!({})).await.expect("list");
    assert_eq!(listed["TableNames"], json!(["orders"]), "never listed");
    disk.call(
        "PutItem",
        json!({"TableName": HEALTH_TABLE, "Item": {"pk": {"S": "probe"}, "nonce": {"S": "1"}},
               "ConditionExpression": "attribute_not_exists(nonce) OR nonce <> :n",
               "ExpressionAttributeValues": {":n": {"S": "1"}}}),
    )
    .await
    .expect("the heartbeat put works");
    let error = disk
        .call("DeleteTable", json!({"TableName": HEALTH_TABLE}))
        .await
        .expect_err("reserved");
    assert!(error.message.contains("reserved"), "{error}");
    let error = disk
        .call("CreateTable", on_demand_table(HEALTH_TABLE, "id"))
        .await
        .expect_err("exists");
    assert_eq!(error.kind, ErrorKind::ResourceInUse);
}

mod http {
    //! `/health` and `/metrics` through the HTTP server.

    use super::*;
    use store::server::{ServerConfig, run};

    async fn get(url: &str) -> (u16, String) {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let response = client.get(url.parse().expect("url")).await.expect("store answers");
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The HTTP server on a loopback port, serving a [`Disk`]'s engine.
    struct Server {
        url: String,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        async fn start(disk: &Disk) -> Server {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("address"));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let config = ServerConfig {
                credentials: None,
                replication: None,
            };
            let task = tokio::spawn(run(listener, disk.store.engine().clone(), config, async {
                let _ = stopped.await;
            }));
            Server { url, stop, task }
        }

        async fn stop(self) {
            let _ = self.stop.send(());
            self.task.await.expect("server task").expect("server ran");
        }
    }

    async fn health(url: &str) -> (u16, Value) {
        let (status, body) = get(&format!("{url}/health")).await;
        (status, serde_json::from_str(&body).expect("JSON health"))
    }

    #[tokio::test]
    async fn health_goes_read_only_below_the_watermark_and_back_to_ready() {
        let mut disk = Disk::open().await;
        let server = Server::start(&disk).await;
        let url = server.url.clone();
        let (status, body) = health(&url).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");
        assert_eq!(body["writer"]["state"], "ok");

        disk.leave_free(WATERMARK_BYTES / 2);
        let (status, body) = health(&url).await;
        assert_eq!((status, body["status"].as_str()), (503, Some("read_only")), "{body}");
        assert!(
            body["reason"]
                .as_str()
                .expect("reason")
                .contains("disk below watermark"),
            "{body}"
        );
        assert_eq!(body["disk"]["below_watermark"], true);
        assert!(disk.put("refused", "v").await.is_err());
        let (_, metrics) = get(&format!("{url}/metrics")).await;
        assert!(metrics.contains("switchyard_store_disk_below_watermark 1"), "{metrics}");
        assert!(
            metrics.contains("switchyard_store_writes_refused_disk_low_total 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("switchyard_store_writer_state{state=\"ok\"} 1"),
            "{metrics}"
        );

        disk.faults.set_capacity_bytes(u64::MAX);
        let (status, body) = health(&url).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");
        server.stop().await;
    }

    #[tokio::test]
    async fn health_is_degraded_while_the_writer_reopens_the_database() {
        let mut disk = Disk::open().await;
        let server = Server::start(&disk).await;
        let url = server.url.clone();
        disk.put("before", "v").await.expect("healthy");
        // Every write fails, so the reopen (whose repair writes) keeps failing too.
        disk.faults.set_fail_writes(true);
        disk.faults.set_fail_syncs(true);
        assert!(disk.put("unlucky", "v").await.is_err());
        disk.wait_for_writer(WriterState::Reopening).await;
        let (status, body) = health(&url).await;
        assert_eq!((status, body["status"].as_str()), (503, Some("degraded")), "{body}");
        assert!(
            body["reason"].as_str().expect("reason").contains("writer failing"),
            "{body}"
        );
        let read = disk
            .get("before")
            .await
            .expect_err("reads fail clearly while reopening");
        assert_eq!(read.kind, ErrorKind::ServiceUnavailable, "{read}");

        disk.faults.set_fail_writes(false);
        disk.faults.set_fail_syncs(false);
        disk.wait_for_writer(WriterState::Ok).await;
        let (status, body) = health(&url).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");
        assert!(
            body["writer"]["last_error_at_unix_ms"].is_u64(),
            "the last error keeps its time: {body}"
        );
        assert_eq!(body["writer"]["reopens_total"], 1);
        disk.assert_nothing_acknowledged_lost().await;
        server.stop().await;
    }
}

#[tokio::test]
async fn a_backup_on_the_data_disk_never_takes_the_room_kept_for_writes() {
    use store::backup::BACKUP_ROOM_CHECK_BYTES;
    let dir = tempfile::tempdir().expect("temporary directory");
    let faults = FaultyDisk::new();
    let mut options = EngineOptions::on_faulty_disk(
        &faults,
        DiskSettings {
            free_bytes_min: Some(WATERMARK_BYTES),
            reserve_bytes: RESERVE_BYTES,
        },
    );
    // The backups beside the database, on the disk the watermark guards.
    options.backup_dir = Some(dir.path().to_path_buf());
    let engine = Engine::open_with(dir.path(), "us-east-1", Arc::new(SystemClock), options).expect("open engine");
    let store = Store::new(engine);
    let call = async |operation: &str, body: Value| store.handle(operation, body.to_string().as_bytes()).await;
    call("CreateTable", on_demand_table("orders", "id"))
        .await
        .expect("table");
    // Items whose backup file is about three times their DynamoDB size (many small numbers).
    let mut item = serde_json::Map::new();
    for n in 0..300 {
        item.insert(format!("a{n:03}"), json!({"N": "1"}));
    }
    for batch in 0..80 {
        let puts: Vec<Value> = (0..25)
            .map(|i| {
                let mut item = item.clone();
                item.insert("id".into(), json!({"S": format!("k{batch:03}-{i:02}")}));
                json!({"PutRequest": {"Item": item}})
            })
            .collect();
        call("BatchWriteItem", json!({"RequestItems": {"orders": puts}}))
            .await
            .expect("batch");
    }
    let table = store.engine().table("orders").expect("table");
    let size = store.engine().stats(table.id, None).size_bytes;
    assert!(size > 3 << 20, "{size} bytes");
    // Room above the watermark for the table's bytes (the backup is accepted) but not for its
    // file: it must stop before the disk reaches the watermark.
    let files_before = used_bytes(dir.path());
    faults.set_capacity_bytes(files_before + WATERMARK_BYTES + size + BACKUP_ROOM_CHECK_BYTES + (1 << 20));
    call("CreateBackup", json!({"TableName": "orders", "BackupName": "big"}))
        .await
        .expect("accepted: the table's bytes fit");
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while store.backups().status().creating > 0 {
        assert!(Instant::now() < deadline, "the backup never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = store.backups().status();
    assert_eq!(status.failed_total, 1, "{status:?}");
    let reason = status.last_failure.expect("the reason");
    assert!(
        reason.contains("disk_free_bytes_min") && reason.contains("--backup-dir"),
        "names the cause and the fix: {reason}"
    );
    assert_eq!(
        used_bytes(dir.path()),
        files_before,
        "the half-written backup is removed"
    );
    let listed = call("ListBackups", json!({})).await.expect("list");
    assert_eq!(listed["BackupSummaries"], json!([]));
    // The store never went below the watermark: writes go on.
    assert!(!store.engine().disk_status().low);
    call(
        "PutItem",
        json!({"TableName": "orders", "Item": {"id": {"S": "after"}}}),
    )
    .await
    .expect("writes go on");
    // With less room than the table's bytes, the backup is refused at once, saying why.
    faults.set_capacity_bytes(used_bytes(dir.path()) + WATERMARK_BYTES + size / 2);
    let refused = call("CreateBackup", json!({"TableName": "orders", "BackupName": "big"}))
        .await
        .expect_err("no room");
    assert_eq!(refused.kind, ErrorKind::ServiceUnavailable, "{refused}");
    assert!(refused.message.contains("--backup-dir"), "{refused}");
    assert_eq!(store.backups().status().creating, 0);
}

#[tokio::test]
async fn a_database_deleted_while_the_store_runs_refuses_writes_and_is_never_made_again_empty() {
    let mut disk = Disk::open().await;
    for n in 0..5 {
        disk.put(&format!("k{n}"), "kept").await.expect("put");
    }
    let database = disk.dir.path().join("store.redb");
    // What the disk held (the crash image an operator would put back).
    let copy = disk.dir.path().join("store.redb.copy");
    std::fs::copy(&database, &copy).expect("copy");
    std::fs::remove_file(&database).expect("rm store.redb");

    // New writes would go to a file no path leads to: refused, saying why; reads go on.
    let refused = disk.put("lost", "lost").await.expect_err("refused");
    assert_eq!(refused.kind, ErrorKind::ServiceUnavailable, "{refused}");
    assert!(
        refused.message.contains("was deleted while the store runs"),
        "{refused}"
    );
    let status = disk.store.engine().disk_status();
    assert!(status.files_gone.is_some(), "{status:?}");
    disk.assert_nothing_acknowledged_lost().await;

    // An I/O error now makes the writer reopen: it waits for the file instead of creating an
    // empty database at its path.
    disk.faults.set_fail_writes(true);
    disk.delete("k0").await.expect_err("the commit fails");
    disk.faults.set_fail_writes(false);
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let writer = disk.store.engine().writer_status();
        if writer.last_error.as_deref().is_some_and(|e| e.contains("is missing")) {
            assert_eq!(writer.state, WriterState::Reopening);
            break;
        }
        assert!(Instant::now() < deadline, "{writer:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!database.exists(), "no empty database was made");
    // Put back, the database opens and serves what it held.
    std::fs::rename(&copy, &database).expect("put it back");
    disk.wait_for_writer(WriterState::Ok).await;
    disk.acknowledged.insert("k0".into(), Some("kept".into()));
    disk.assert_nothing_acknowledged_lost().await;
    assert!(disk.store.engine().disk_status().files_gone.is_none());
    disk.put_once_writes_resume("after", "back").await;
}

#[tokio::test]
async fn a_restore_the_disk_cannot_hold_is_dropped_and_says_why() {
    let mut disk = Disk::open().await;
    for batch in 0..120 {
        let puts: Vec<Value> = (0..25)
            .map(|i| json!({"PutRequest": {"Item": {"id": {"S": format!("k{batch:03}-{i:02}")}, "v": {"S": big(2000)}}}}))
            .collect();
        disk.call("BatchWriteItem", json!({"RequestItems": {"orders": puts}}))
            .await
            .expect("batch");
    }
    disk.put("kept", "kept").await.expect("put");
    disk.call(
        "UpdateContinuousBackups",
        json!({"TableName": "orders", "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": true}}),
    )
    .await
    .expect("PITR");
    let created = disk
        .call("CreateBackup", json!({"TableName": "orders", "BackupName": "all"}))
        .await
        .expect("backup");
    let arn = created["BackupDetails"]["BackupArn"].as_str().expect("arn").to_string();
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while disk.store.backups().status().creating > 0 {
        assert!(Instant::now() < deadline, "backup never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Too little room above the watermark for the items alone: refused at once, saying so.
    let table = disk.store.engine().table("orders").expect("table");
    let size = disk.store.engine().stats(table.id, None).size_bytes;
    disk.leave_free(WATERMARK_BYTES + size / 2);
    let refused = disk
        .call(
            "RestoreTableFromBackup",
            json!({"BackupArn": arn, "TargetTableName": "copy"}),
        )
        .await
        .expect_err("no room");
    assert_eq!(refused.kind, ErrorKind::ServiceUnavailable, "{refused}");
    assert!(refused.message.contains("disk_free_bytes_min"), "{refused}");
    let refused = disk
        .call(
            "RestoreTableToPointInTime",
            json!({"SourceTableName": "orders", "TargetTableName": "copy", "UseLatestRestorableTime": true}),
        )
        .await
        .expect_err("no room");
    assert_eq!(refused.kind, ErrorKind::ServiceUnavailable, "{refused}");
    assert!(refused.message.contains("disk_free_bytes_min"), "{refused}");
    assert!(disk.store.engine().table("copy").is_none());
    // Room above the watermark for the items, not for what the database stores of them (about
    // three times as much here): the copy meets the watermark, or a growth of the file meets
    // the full disk, part-way.
    disk.leave_free(WATERMARK_BYTES + size + (1 << 20));
    disk.call(
        "RestoreTableFromBackup",
        json!({"BackupArn": arn, "TargetTableName": "copy"}),
    )
    .await
    .expect("the restore starts");
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while disk.store.backups().status().restores_failed_total == 0 {
        assert!(Instant::now() < deadline, "the restore never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failure = disk.store.backups().status().last_restore_failure.expect("why");
    assert!(
        failure.contains("copy")
            && failure.contains(&arn)
            && (failure.contains("disk_free_bytes_min") || failure.contains("No space left")),
        "names the table, the source and the cause: {failure}"
    );
    // The half-restored table goes (dropped after the failure is noted).
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    while disk.store.engine().table("copy").is_some() {
        assert!(Instant::now() < deadline, "the half-restored table stayed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    disk.faults.set_capacity_bytes(u64::MAX);
    disk.assert_nothing_acknowledged_lost().await;
}

#[tokio::test]
async fn a_failing_reopen_names_the_fix_on_health() {
    let mut disk = Disk::open().await;
    disk.put("a", "v").await.expect("put");
    disk.faults.set_fail_writes(true);
    disk.put("b", "v").await.expect_err("the commit fails");
    // While the disk keeps failing, the reopen's error (on /health as the writer's last error)
    // says what to check, as the same error at startup does.
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS);
    loop {
        let writer = disk.store.engine().writer_status();
        let last = writer.last_error.unwrap_or_default();
        if last.contains("reopening") {
            assert!(last.contains("check the disk"), "{last}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed reopen: {last}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    disk.faults.set_fail_writes(false);
    disk.put_once_writes_resume("after", "v").await;
    disk.assert_nothing_acknowledged_lost().await;
}

/// Below the watermark an index backfill waits for room: nothing copied, no refused write
/// counted (no client asked for one), and it goes on by itself once the room is back.
#[tokio::test]
async fn an_index_backfill_waits_below_the_watermark_without_counting_refused_writes() {
    use store::engine::BackfillStep;
    let mut disk = Disk::open().await;
    for i in 0..20 {
        disk.put(&format!("item-{i}"), &big(100)).await.expect("room");
    }
    disk.call(
        "UpdateTable",
        json!({"TableName": "orders", "AttributeDefinitions": [{"AttributeName": "v", "AttributeType": "S"}],
               "GlobalSecondaryIndexUpdates": [{"Create": {"IndexName": "by_v",
                   "KeySchema": [{"AttributeName": "v", "KeyType": "HASH"}], "Projection": {"ProjectionType": "KEYS_ONLY"}}}]}),
    )
    .await
    .expect("index created");
    disk.leave_free(WATERMARK_BYTES / 2);
    // A refused write makes the writer see the low disk.
    disk.put("refused", "v").await.expect_err("below the watermark");
    let engine = disk.store.engine().clone();
    let refused_before = engine.writer_status().writes_refused_total;
    let table = engine.table("orders").expect("table");
    let step = {
        let table = Arc::clone(&table);
        engine
            .write_exclusive(move |context| context.backfill_index_step(&table, "by_v"))
            .await
            .expect("a backfill job")
    };
    assert_eq!(step, BackfillStep::DiskLow);
    assert_eq!(
        engine.backfill_indexes_once().await.expect("a pass"),
        0,
        "nothing to go on with"
    );
    assert_eq!(engine.writer_status().writes_refused_total, refused_before);

    disk.faults.set_capacity_bytes(u64::MAX);
    disk.put_once_writes_resume("after", "v").await;
    engine.finish_index_backfills().await.expect("backfill");
    let described = disk
        .call("DescribeTable", json!({"TableName": "orders"}))
        .await
        .expect("describe");
    let index = &described["Table"]["GlobalSecondaryIndexes"][0];
    assert_eq!(index["IndexStatus"], "ACTIVE");
    assert_eq!(index["ItemCount"], 21);
}
