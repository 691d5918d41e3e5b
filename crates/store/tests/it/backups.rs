//! Backups in process: a restore's CREATING table serves no item operation, and what the next
//! start does with a restore a crash interrupted (resume it, or drop the table when its backup
//! is gone).

use std::sync::Arc;
use std::time::Duration;

use dynamo_protocol::{ApiError, ErrorKind};
use serde_json::{Value, json};
use store::catalog::RestoreSummary;
use store::{Engine, Store, SystemClock};

use crate::support::on_demand_table;

/// Bound on waiting for a background backup or restore (never a timing assertion).
const WAIT: Duration = Duration::from_secs(30);

async fn call(store: &Store, operation: &str, body: Value) -> Result<Value, ApiError> {
    store.handle(operation, body.to_string().as_bytes()).await
}

async fn ok(store: &Store, operation: &str, body: Value) -> Value {
    call(store, operation, body)
        .await
        .unwrap_or_else(|error| panic!("{operation} failed: {error}"))
}

async fn wait_until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn backed_up_table(store: &Store, items: usize) -> String {
    ok(store, "CreateTable", on_demand_table("source", "pk")).await;
    for n in 0..items {
        ok(
            store,
            "PutItem",
            json!({"TableName": "source", "Item": {"pk": {"S": format!("k{n}")}, "n": {"N": n.to_string()}}}),
        )
        .await;
    }
    let created = ok(
        store,
        "CreateBackup",
        json!({"TableName": "source", "BackupName": "first"}),
    )
    .await;
    let arn = created["BackupDetails"]["BackupArn"].as_str().expect("arn").to_string();
    wait_until("backup AVAILABLE", async || {
        let described = ok(store, "DescribeBackup", json!({"BackupArn": arn})).await;
        described["BackupDescription"]["BackupDetails"]["BackupStatus"] == "AVAILABLE"
    })
    .await;
    arn
}

/// Puts `name` in the catalog as a restore of `arn` that a crash interrupted.
async fn interrupted_restore(engine: &Engine, name: &str, arn: &str) {
    let source = engine.table("source").expect("source table");
    let name = name.to_string();
    let arn = arn.to_string();
    engine
        .write_exclusive(move |context| {
            let mut meta = (*source).clone();
            meta.id = context.next_table_id()?;
            meta.name = name;
            meta.restore = Some(RestoreSummary {
                source_backup_arn: arn,
                source_table_arn: source.arn("us-east-1"),
                restore_date_time_seconds: 0.0,
                in_progress: true,
                point_in_time: None,
            });
            context.put_table(meta)
        })
        .await
        .expect("catalog entry");
}

#[tokio::test]
async fn an_interrupted_restore_is_resumed_and_its_table_refuses_items_until_active() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
    let store = Store::new(engine.clone());
    let arn = backed_up_table(&store, 20).await;
    interrupted_restore(&engine, "copy", &arn).await;

    let described = ok(&store, "DescribeTable", json!({"TableName": "copy"})).await;
    assert_eq!(described["Table"]["TableStatus"], "CREATING");
    assert_eq!(described["Table"]["RestoreSummary"]["RestoreInProgress"], true);
    let refused = call(
        &store,
        "PutItem",
        json!({"TableName": "copy", "Item": {"pk": {"S": "x"}}}),
    )
    .await
    .expect_err("no writes to a CREATING table");
    assert_eq!(refused.kind, ErrorKind::ResourceNotFound);
    let refused = call(&store, "Scan", json!({"TableName": "copy"}))
        .await
        .expect_err("no reads of a CREATING table");
    assert_eq!(refused.kind, ErrorKind::ResourceNotFound);
    let refused = call(&store, "DeleteTable", json!({"TableName": "copy"}))
        .await
        .expect_err("no delete of a CREATING table");
    assert_eq!(refused.kind, ErrorKind::ResourceInUse);
    // UpdateContinuousBackups' errors for a table not yet created: ContinuousBackupsUnavailable.
    let refused = call(
        &store,
        "UpdateContinuousBackups",
        json!({"TableName": "copy", "PointInTimeRecoverySpecification": {"PointInTimeRecoveryEnabled": true}}),
    )
    .await
    .expect_err("no PITR change on a CREATING table");
    assert_eq!(refused.kind, ErrorKind::ContinuousBackupsUnavailable, "{refused}");
    // A restore into a name being restored: "a target table with the specified name is either
    // being created or deleted" (TableInUse), not TableAlreadyExists.
    let refused = call(
        &store,
        "RestoreTableFromBackup",
        json!({"TargetTableName": "copy", "BackupArn": arn}),
    )
    .await
    .expect_err("the target is being restored");
    assert_eq!(refused.kind, ErrorKind::TableInUse, "{refused}");
    let refused = call(
        &store,
        "RestoreTableToPointInTime",
        json!({"SourceTableName": "source", "TargetTableName": "copy", "UseLatestRestorableTime": true}),
    )
    .await
    .expect_err("the target is being restored");
    assert_eq!(refused.kind, ErrorKind::TableInUse, "{refused}");
    let refused = call(
        &store,
        "RestoreTableFromBackup",
        json!({"TargetTableName": "source", "BackupArn": arn}),
    )
    .await
    .expect_err("the target exists");
    assert_eq!(refused.kind, ErrorKind::TableAlreadyExists, "{refused}");
    let refused = call(&store, "DeleteBackup", json!({"BackupArn": arn})).await;
    assert!(
        refused.is_ok(),
        "nothing reads the backup before the recovery: {refused:?}"
    );
    // Deleting it is allowed while no restore runs; make a new one for the resume.
    let arn = {
        let created = ok(
            &store,
            "CreateBackup",
            json!({"TableName": "source", "BackupName": "second"}),
        )
        .await;
        let arn = created["BackupDetails"]["BackupArn"].as_str().expect("arn").to_string();
        wait_until("backup AVAILABLE", async || {
            ok(&store, "DescribeBackup", json!({"BackupArn": arn})).await["BackupDescription"]["BackupDetails"]["BackupStatus"]
                == "AVAILABLE"
        })
        .await;
        arn
    };
    interrupted_restore(&engine, "copy2", &arn).await;

    Arc::clone(store.backups()).recover(&store).expect("recover");
    wait_until("resumed restore ACTIVE", async || {
        ok(&store, "DescribeTable", json!({"TableName": "copy2"})).await["Table"]["TableStatus"] == "ACTIVE"
    })
    .await;
    let scanned = ok(&store, "Scan", json!({"TableName": "copy2"})).await;
    assert_eq!(scanned["Count"], 20);
    // The first one's backup was deleted: its half-restored table is dropped.
    wait_until("orphaned restore dropped", async || {
        call(&store, "DescribeTable", json!({"TableName": "copy"}))
            .await
            .is_err()
    })
    .await;
}

/// A backup over the bound a restore reads before answering (lowered here to 0 bytes, as for a
/// backup of several hundred MiB): the restore answers CREATING at once, a sound backup comes
/// in whole, damage inside is found by the copy (the half-restored table dropped, the failure
/// counted for `/health`), and a cut file is still refused before anything is created.
#[tokio::test]
async fn a_backup_too_large_to_read_before_answering_is_checked_as_it_is_copied_in() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
    let store = Store::new(engine.clone());
    let arn = backed_up_table(&store, 50).await;
    store.backups().set_check_before_answer_bytes_max(0);
    let restore = async |target: &str| {
        call(
            &store,
            "RestoreTableFromBackup",
            json!({"TargetTableName": target, "BackupArn": arn}),
        )
        .await
    };
    let gone = async |target: &str| {
        call(&store, "DescribeTable", json!({"TableName": target}))
            .await
            .is_err_and(|error| error.kind == ErrorKind::ResourceNotFound)
    };

    let answered = restore("whole").await.expect("a sound backup");
    assert_eq!(answered["TableDescription"]["TableStatus"], "CREATING");
    wait_until("restore ACTIVE", async || {
        ok(&store, "DescribeTable", json!({"TableName": "whole"})).await["Table"]["TableStatus"] == "ACTIVE"
    })
    .await;
    assert_eq!(ok(&store, "Scan", json!({"TableName": "whole"})).await["Count"], 50);
    assert_eq!(store.backups().status().restores_failed_total, 0);

    let backup_id = arn.rsplit('/').next().expect("backup id");
    let items = engine.backup_dir().join(format!("{backup_id}.items"));
    let sound = std::fs::read(&items).expect("items file");
    let mut flipped = sound.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    std::fs::write(&items, &flipped).expect("damage the items file");
    let answered = restore("damaged").await.expect("same size and format: answered");
    assert_eq!(answered["TableDescription"]["TableStatus"], "CREATING");
    wait_until("the damaged restore dropped", async || gone("damaged").await).await;
    let status = store.backups().status();
    assert_eq!(status.restores_failed_total, 1);
    let failure = status.last_restore_failure.expect("the failure's reason");
    assert!(
        failure.contains("damaged") && failure.contains("table damaged"),
        "{failure}"
    );

    std::fs::write(&items, &sound[..sound.len() - 1]).expect("cut the items file");
    let refused = restore("cut").await.expect_err("a cut file");
    assert_eq!(refused.kind, ErrorKind::Validation, "{refused}");
    assert!(
        refused.message.contains("damaged") && refused.message.contains("bytes where the backup recorded"),
        "{refused}"
    );
    assert!(gone("cut").await, "nothing created for a refused restore");
    assert_eq!(
        ok(&store, "Scan", json!({"TableName": "source"})).await["Count"],
        50,
        "the source untouched"
    );
}

/// Damage inside a large backup that still decodes but names another key attribute (`pk` became `pj` in one record) is found by the copy; the failure's reason says
/// the backup is damaged, as the check before the answer would have said.
#[tokio::test]
async fn a_record_without_the_key_found_mid_copy_is_reported_as_the_backups_damage() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
    let store = Store::new(engine.clone());
    let arn = backed_up_table(&store, 50).await;
    store.backups().set_check_before_answer_bytes_max(0);
    let backup_id = arn.rsplit('/').next().expect("backup id");
    let items = engine.backup_dir().join(format!("{backup_id}.items"));
    let mut bytes = std::fs::read(&items).expect("items file");
    let middle = bytes.len() / 2;
    let at = middle
        + bytes[middle..]
            .windows(4)
            .position(|w| w == b"\"pk\"")
            .expect("a key attribute after the middle");
    bytes[at + 2] = b'j';
    std::fs::write(&items, &bytes).expect("damage the items file");
    let answered = call(
        &store,
        "RestoreTableFromBackup",
        json!({"TargetTableName": "damaged", "BackupArn": arn}),
    )
    .await
    .expect("same size and format: answered");
    assert_eq!(answered["TableDescription"]["TableStatus"], "CREATING");
    wait_until("the damaged restore dropped", async || {
        call(&store, "DescribeTable", json!({"TableName": "damaged"}))
            .await
            .is_err_and(|error| error.kind == ErrorKind::ResourceNotFound)
    })
    .await;
    let status = store.backups().status();
    assert_eq!(status.restores_failed_total, 1);
    let failure = status.last_restore_failure.expect("the failure's reason");
    assert!(failure.contains("is damaged"), "{failure}");
}

#[tokio::test]
async fn recovery_removes_half_written_backup_files() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
    let store = Store::new(engine);
    let arn = backed_up_table(&store, 3).await;
    let backups = store.backups().dir().to_path_buf();
    std::fs::write(backups.join("01700000000000-00000000.items.partial"), b"half").expect("write");
    std::fs::write(backups.join("01700000000000-00000001.items"), b"orphan").expect("write");
    Arc::clone(store.backups()).recover(&store).expect("recover");
    let mut left: Vec<String> = std::fs::read_dir(&backups)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let id = arn.rsplit('/').next().expect("id");
    assert_eq!(left, vec![format!("{id}.items"), format!("{id}.json")]);
    // One that cannot be removed (here a directory under a backup file's name; on a read-only
    // backup filesystem, any) is left with a warning: the store starts all the same.
    let stuck = backups.join("01700000000000-00000002.items.partial");
    std::fs::create_dir(&stuck).expect("mkdir");
    Arc::clone(store.backups())
        .recover(&store)
        .expect("the store starts with a backup leftover it cannot remove");
    assert!(stuck.exists());
    let described = ok(&store, "DescribeBackup", json!({"BackupArn": arn})).await;
    assert_eq!(
        described["BackupDescription"]["BackupDetails"]["BackupStatus"],
        "AVAILABLE"
    );
}

#[tokio::test]
async fn a_backup_whose_description_is_damaged_can_be_deleted() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
    let store = Store::new(engine);
    let arn = backed_up_table(&store, 3).await;
    let backups = store.backups().dir().to_path_buf();
    let id = arn.rsplit('/').next().expect("id").to_string();
    std::fs::write(backups.join(format!("{id}.json")), br#"{"name": "first", "sha256": "#).expect("damage");
    let described = call(&store, "DescribeBackup", json!({"BackupArn": arn}))
        .await
        .expect_err("a damaged description");
    assert!(described.message.contains("DeleteBackup"), "names the fix: {described}");
    // The fix it names works: the backup goes, both files with it.
    let deleted = ok(&store, "DeleteBackup", json!({"BackupArn": arn})).await;
    let details = &deleted["BackupDescription"]["BackupDetails"];
    assert_eq!(details["BackupArn"], json!(arn));
    assert_eq!(details["BackupStatus"], "DELETED");
    assert!(
        std::fs::read_dir(&backups).expect("list").next().is_none(),
        "both files removed"
    );
    let gone = call(&store, "DescribeBackup", json!({"BackupArn": arn}))
        .await
        .expect_err("deleted");
    assert_eq!(gone.kind, ErrorKind::BackupNotFound);
}

#[tokio::test]
async fn listing_and_deleting_page_by_page_reaches_every_backup() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
    let store = Store::new(engine);
    let first = backed_up_table(&store, 2).await;
    let mut made = vec![first];
    for n in 0..4 {
        let created = ok(
            &store,
            "CreateBackup",
            json!({"TableName": "source", "BackupName": format!("more-{n}")}),
        )
        .await;
        let arn = created["BackupDetails"]["BackupArn"].as_str().expect("arn").to_string();
        // One backup of a table at a time.
        wait_until("backup AVAILABLE", async || {
            let described = ok(&store, "DescribeBackup", json!({"BackupArn": arn})).await;
            described["BackupDescription"]["BackupDetails"]["BackupStatus"] == "AVAILABLE"
        })
        .await;
        made.push(arn);
    }
    // A cleanup as scripts do it: list a page, delete what it holds, ask for the next page
    // after the last (now deleted) backup.
    let mut deleted = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let mut request = json!({"Limit": 2});
        if let Some(arn) = &start {
            request["ExclusiveStartBackupArn"] = json!(arn);
        }
        let page = ok(&store, "ListBackups", request).await;
        for summary in page["BackupSummaries"].as_array().expect("summaries") {
            let arn = summary["BackupArn"].as_str().expect("arn").to_string();
            ok(&store, "DeleteBackup", json!({"BackupArn": arn})).await;
            deleted.push(arn);
        }
        match page.get("LastEvaluatedBackupArn").and_then(Value::as_str) {
            Some(last) => start = Some(last.to_string()),
            None => break,
        }
    }
    let mut expected = made.clone();
    expected.sort();
    deleted.sort();
    assert_eq!(deleted, expected, "every backup reached once");
}

#[tokio::test]
async fn a_description_copied_under_another_backups_name_is_damaged_not_that_backup() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open engine");
    let store = Store::new(engine);
    let arn = backed_up_table(&store, 3).await;
    let backups = store.backups().dir().to_path_buf();
    let id = arn.rsplit('/').next().expect("id").to_string();
    // Copied by hand under another (valid) backup id, without an items file of its own.
    let copy_id = "01700000000000-00000000";
    let copy_arn = arn.replace(&id, copy_id);
    std::fs::copy(
        backups.join(format!("{id}.json")),
        backups.join(format!("{copy_id}.json")),
    )
    .expect("copy");
    let refused = call(
        &store,
        "RestoreTableFromBackup",
        json!({"BackupArn": copy_arn, "TargetTableName": "copy"}),
    )
    .await
    .expect_err("not that backup");
    assert!(
        refused.message.contains("damaged") && refused.message.contains(&format!("not {copy_id}")),
        "{refused}"
    );
    let listed = ok(&store, "ListBackups", json!({})).await;
    assert_eq!(
        listed["BackupSummaries"].as_array().expect("summaries").len(),
        1,
        "{listed}"
    );
    assert_eq!(listed["BackupSummaries"][0]["BackupArn"], json!(arn));
    ok(&store, "DeleteBackup", json!({"BackupArn": copy_arn})).await;
    // The original is untouched.
    let described = ok(&store, "DescribeBackup", json!({"BackupArn": arn})).await;
    assert_eq!(
        described["BackupDescription"]["BackupDetails"]["BackupStatus"],
        "AVAILABLE"
    );
    assert!(backups.join(format!("{id}.items")).exists());
}

#[tokio::test]
async fn a_backup_id_is_never_used_twice_across_restarts_at_the_same_millisecond() {
    use crate::support::ManualClock;
    // A clock standing still: the restart below comes at the same millisecond, as after a
    // clock stepped back.
    let dir = tempfile::tempdir().expect("temporary directory");
    let clock = Arc::new(ManualClock::starting_at(crate::support::START_MS));
    let engine = Engine::open(dir.path(), "us-east-1", clock).expect("open engine");
    let before = Store::new(engine.clone());
    let first = backed_up_table(&before, 3).await;
    // A new start: the backups' in-memory numbering starts again.
    let after = Store::new(engine);
    let created = ok(
        &after,
        "CreateBackup",
        json!({"TableName": "source", "BackupName": "second"}),
    )
    .await;
    let second = created["BackupDetails"]["BackupArn"].as_str().expect("arn").to_string();
    assert_ne!(first, second, "a new id");
    wait_until("backup AVAILABLE", async || {
        let described = ok(&after, "DescribeBackup", json!({"BackupArn": second})).await;
        described["BackupDescription"]["BackupDetails"]["BackupStatus"] == "AVAILABLE"
    })
    .await;
    let described = ok(&after, "DescribeBackup", json!({"BackupArn": first})).await;
    assert_eq!(
        described["BackupDescription"]["BackupDetails"]["BackupName"], "first",
        "the first backup is untouched"
    );
}
