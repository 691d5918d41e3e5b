//! On-demand backups: CreateBackup, DescribeBackup, ListBackups, DeleteBackup,
//! RestoreTableFromBackup, and the continuous-backup operations DynamoDB answers for every table.
//!
//! A backup is a consistent snapshot of one table's items: a redb read transaction, taken when
//! CreateBackup is answered, so writers never wait for it. Its items are written in the
//! background (the backup is CREATING meanwhile, AVAILABLE after) to `ID.items` in the backup
//! directory (`--backup-dir`, `[store] backup_dir`, else `DATA_DIR/backups`), and its
//! description, with the items file's SHA-256, to `ID.json`. Both are written under a `.partial`
//! name, synced and renamed, the description last: a backup exists exactly when its `ID.json`
//! does, and a crash mid-way leaves only `.partial` files, removed at the next start.
//!
//! A restore checks the file against its checksum before it answers (a file over
//! [`RESTORE_CHECK_BEFORE_ANSWER_BYTES_MAX`]: its size and format only), creates the target table
//! CREATING (item operations on it get ResourceNotFoundException, as DynamoDB answers for a
//! table that is not ACTIVE), copies the items in bounded batches through the writer, checks
//! the checksum again over what it copied, then makes the table ACTIVE. A restore interrupted
//! by a crash starts again at the next start (the copy is idempotent); one whose backup is gone
//! or damaged is dropped, with the reason in the log.
//!
//! Point-in-time recovery (UpdateContinuousBackups, DescribeContinuousBackups,
//! RestoreTableToPointInTime) is in [`pitr`], on the undo log of `crate::engine::pitr`.

pub mod file;
mod pitr;

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dynamo_protocol::{ApiError, ErrorKind, Item};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::catalog::{self, IndexKind, IndexMeta, RestoreSummary, TableMeta};
use crate::engine::{Engine, HEALTH_TABLE, RangeRequest};
use crate::ops::{Store, decode};

/// The operations this module serves.
pub const OPERATIONS: &[&str] = &[
    "CreateBackup",
    "DeleteBackup",
    "DescribeBackup",
    "DescribeContinuousBackups",
    "ListBackups",
    "RestoreTableFromBackup",
    "RestoreTableToPointInTime",
    "UpdateContinuousBackups",
];
/// ListBackups answers at most this many backups per page (DynamoDB's Limit bound).
pub const LIST_BACKUPS_LIMIT_MAX: usize = 100;
/// A restore copies at most this many items per write batch...
pub const RESTORE_BATCH_ITEMS_MAX: usize = 500;
/// ...and at most this many item bytes.
pub const RESTORE_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// A backup written to the data directory's filesystem measures the disk after every this
/// many bytes, and stops while this much room is left above the disk watermark, so it never
/// takes the room the store's own writes are kept.
pub const BACKUP_ROOM_CHECK_BYTES: u64 = 4 << 20;
/// A restore reads a backup's items file whole (every record decoded, the SHA-256 compared)
/// before it answers only when the file is at most this large: a few seconds of reading. A
/// larger backup is checked as it is copied in, so RestoreTableFromBackup answers at once
/// instead of after minutes (past the SDKs' 60 s read timeout, whose retry would then find the
/// target TableInUse); damage found midway fails the restore and drops the half-restored table.
/// The file's size and format are checked before answering either way.
pub const RESTORE_CHECK_BEFORE_ANSWER_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Version of the description file's format.
const FORMAT_VERSION: u32 = 1;
/// Shortest and longest BackupArn botocore's model accepts.
const BACKUP_ARN_LENGTH_MIN: usize = 37;
const BACKUP_ARN_LENGTH_MAX: usize = 1024;

/// A backup's description, stored as `ID.json` beside its items file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackupMeta {
    pub format: u32,
    pub id: String,
    pub arn: String,
    pub name: String,
    pub region: String,
    /// The source table's definition at the snapshot.
    pub table: TableMeta,
    pub table_arn: String,
    pub created_at_ms: u64,
    pub item_count: u64,
    pub size_bytes: u64,
    pub file_bytes: u64,
    pub sha256: String,
}

impl BackupMeta {
    fn created_seconds(&self) -> f64 {
        self.created_at_ms as f64 / 1000.0
    }

    fn details(&self, status: &str) -> Value {
        let mut details = json!({
            "BackupArn": self.arn,
            "BackupName": self.name,
            "BackupStatus": status,
            "BackupType": "USER",
            "BackupCreationDateTime": self.created_seconds(),
        });
        if status != "CREATING" {
            details["BackupSizeBytes"] = json!(self.size_bytes);
        }
        details
    }

    fn summary(&self, status: &str) -> Value {
        let mut summary = self.details(status);
        summary["TableName"] = json!(self.table.name);
        summary["TableId"] = json!(catalog::table_uuid(self.table.id, &self.table.name));
        summary["TableArn"] = json!(self.table_arn);
        summary
    }

    fn description(&self, status: &str) -> Value {
        let table = &self.table;
        let throughput = table.throughput.unwrap_or(catalog::Throughput { read: 0, write: 0 });
        let mut source = json!({
            "TableName": table.name,
            "TableId": catalog::table_uuid(table.id, &table.name),
            "TableArn": self.table_arn,
            "KeySchema": table.key.to_json(),
            "TableCreationDateTime": table.created_at_seconds,
            "ProvisionedThroughput": {"ReadCapacityUnits": throughput.read, "WriteCapacityUnits": throughput.write},
            "BillingMode": if table.throughput.is_some() { "PROVISIONED" } else { "PAY_PER_REQUEST" },
        });
        if status != "CREATING" {
            source["ItemCount"] = json!(self.item_count);
            source["TableSizeBytes"] = json!(self.size_bytes);
        }
        let index = |kind: IndexKind| {
            indexes_json(table, kind, |i| {
                let t = i.throughput.unwrap_or(catalog::Throughput { read: 0, write: 0 });
                (kind == IndexKind::Global).then(|| json!({"ReadCapacityUnits": t.read, "WriteCapacityUnits": t.write}))
            })
        };
        let mut features = serde_json::Map::new();
        let (globals, locals) = (index(IndexKind::Global), index(IndexKind::Local));
        if !globals.is_empty() {
            features.insert("GlobalSecondaryIndexes".into(), Value::Array(globals));
        }
        if !locals.is_empty() {
            features.insert("LocalSecondaryIndexes".into(), Value::Array(locals));
        }
        if let Some(stream) = table.stream.as_ref().filter(|s| s.enabled) {
            features.insert(
                "StreamDescription".into(),
                json!({"StreamEnabled": true, "StreamViewType": stream.view_type.as_str()}),
            );
        }
        features.insert(
            "TimeToLiveDescription".into(),
            match &table.ttl {
                Some(ttl) if ttl.enabled => json!({"TimeToLiveStatus": "ENABLED", "AttributeName": ttl.attribute}),
                _ => json!({"TimeToLiveStatus": "DISABLED"}),
            },
        );
        json!({
            "BackupDetails": self.details(status),
            "SourceTableDetails": source,
            "SourceTableFeatureDetails": Value::Object(features),
        })
    }
}

#[derive(Default)]
struct State {
    /// Backups whose items are being written, by id.
    creating: BTreeMap<String, BackupMeta>,
    /// Restores reading a backup, by backup id.
    in_use: HashMap<String, usize>,
    /// Backups made since startup (part of each new backup id's hash).
    sequence: u64,
    /// Backups that failed while their items were written (removed), since startup.
    failed_total: u64,
    /// The last such failure: the backup's ARN and why.
    last_failure: Option<String>,
    /// Restores (from a backup or to a point in time) that failed while copying, since startup
    /// (their half-restored tables dropped).
    restores_failed_total: u64,
    /// The last such failure: the table, its source and why.
    last_restore_failure: Option<String>,
}

/// What `/health` and `/metrics` show of the backups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupStatus {
    pub creating: usize,
    pub failed_total: u64,
    pub last_failure: Option<String>,
    pub restores_failed_total: u64,
    pub last_restore_failure: Option<String>,
}

/// The backup directory and the backups in flight.
pub struct Backups {
    dir: PathBuf,
    state: Mutex<State>,
    /// [`RESTORE_CHECK_BEFORE_ANSWER_BYTES_MAX`] unless a test lowered it.
    check_before_answer_bytes_max: AtomicU64,
}

/// Marks a backup as read by a restore while alive.
struct InUse {
    backups: Arc<Backups>,
    id: String,
}

impl Drop for InUse {
    fn drop(&mut self) {
        let mut state = self.backups.state();
        if let Some(count) = state.in_use.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                state.in_use.remove(&self.id);
            }
        }
    }
}

impl Backups {
    pub fn new(dir: PathBuf) -> Backups {
        Backups {
            dir,
            state: Mutex::new(State::default()),
            check_before_answer_bytes_max: AtomicU64::new(RESTORE_CHECK_BEFORE_ANSWER_BYTES_MAX),
        }
    }

    /// Sets the largest items file a restore reads whole before it answers (tests: a large
    /// backup without writing 256 MiB).
    pub fn set_check_before_answer_bytes_max(&self, bytes: u64) {
        self.check_before_answer_bytes_max.store(bytes, Ordering::Relaxed);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Backups in progress and those that failed since startup.
    pub fn status(&self) -> BackupStatus {
        let state = self.state();
        BackupStatus {
            creating: state.creating.len(),
            failed_total: state.failed_total,
            last_failure: state.last_failure.clone(),
            restores_failed_total: state.restores_failed_total,
            last_restore_failure: state.last_restore_failure.clone(),
        }
    }

    fn note_restore_failure(&self, failure: String) {
        let mut state = self.state();
        state.restores_failed_total += 1;
        state.last_restore_failure = Some(failure);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("backup state lock is never poisoned: holders do not panic")
    }

    fn items_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.items"))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Holds backup `id` for a restore, which DeleteBackup then refuses (`BackupInUse`). A
    /// DeleteBackup that removed it since it was looked up has taken its description first,
    /// under the same lock: the backup is then not found, rather than read as damaged.
    fn take_for_restore(self: &Arc<Self>, id: &str) -> Result<InUse, ApiError> {
        let in_use = self.use_backup(id);
        if !self.meta_path(id).exists() {
            return Err(backup_not_found_id(id));
        }
        Ok(in_use)
    }

    fn use_backup(self: &Arc<Self>, id: &str) -> InUse {
        *self.state().in_use.entry(id.to_string()).or_default() += 1;
        InUse {
            backups: Arc::clone(self),
            id: id.to_string(),
        }
    }

    /// Creates the directory, removes what a crash left half-written (`.partial` files, items
    /// files without a description), and starts again the restores a crash interrupted.
    pub fn recover(self: &Arc<Self>, store: &Store) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!(
                    "cannot create the backup directory {}: {error}; check the path and its permissions (--backup-dir)",
                    self.dir.display()
                ),
            )
        })?;
        // What a crash left is removed; one that cannot be (a read-only backup filesystem) is
        // left with a warning: it is never read, and the store must start all the same.
        let entries = std::fs::read_dir(&self.dir).map_err(|error| {
            std::io::Error::new(
                error.kind(),
                format!(
                    "cannot list the backup directory {}: {error}; check its permissions (--backup-dir)",
                    self.dir.display()
                ),
            )
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            let orphan = name
                .strip_suffix(".items")
                .is_some_and(|id| !self.meta_path(id).exists());
            if name.ends_with(".partial") || orphan {
                tracing::warn!(path = %path.display(), "removing a backup file a crash left half-written");
                if let Err(error) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), %error, "cannot remove a half-written backup file; it is ignored (remove it by hand)");
                }
            }
        }
        for table in store.engine().tables().into_iter().filter(|t| t.restoring()) {
            if table.restore.as_ref().is_some_and(|r| r.point_in_time.is_some()) {
                pitr::resume(store, (*table).clone());
                continue;
            }
            let arn = table
                .restore
                .as_ref()
                .map(|r| r.source_backup_arn.clone())
                .unwrap_or_default();
            let backup = parse_backup_arn(&arn).ok().and_then(|id| self.load(&id).ok());
            match backup {
                Some(backup) => {
                    tracing::info!(table = %table.name, backup = %arn, "resuming a restore interrupted by a restart");
                    spawn_restore(store.clone(), Arc::clone(self), backup, (*table).clone());
                }
                None => {
                    tracing::error!(table = %table.name, backup = %arn, "a restore was interrupted and its backup is gone; dropping the half-restored table");
                    let store = store.clone();
                    tokio::spawn(async move { drop_restoring(store.engine(), (*table).clone()).await });
                }
            }
        }
        Ok(())
    }

    /// The BackupDescription DeleteBackup answers for a finished backup whose description no
    /// longer parses (damaged or hand-edited): what can still be read of it. `None` when the
    /// description is not there or reads fine; BackupNotFound when what can be read of it names
    /// this backup under another ARN than `arn`.
    fn damaged_description(&self, id: &str, arn: &str) -> Option<Result<Value, ApiError>> {
        let bytes = std::fs::read(self.meta_path(id)).ok()?;
        if parse_description(id, &bytes).is_ok() {
            return None;
        }
        let partial: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if let Some(recorded) = partial.get("arn").and_then(Value::as_str)
            && recorded.ends_with(&format!("/backup/{id}"))
            && recorded != arn
        {
            return Some(Err(backup_not_found_id(id)));
        }
        let name = partial.get("name").and_then(Value::as_str).unwrap_or(id);
        Some(Ok(json!({
            "BackupDetails": {
                "BackupArn": arn,
                "BackupName": name,
                "BackupStatus": "DELETED",
                "BackupType": "USER",
                "BackupCreationDateTime": backup_id_created_ms(id) as f64 / 1000.0,
            },
        })))
    }

    /// Reads the description of a finished backup.
    fn load(&self, id: &str) -> Result<BackupMeta, ApiError> {
        let path = self.meta_path(id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Err(backup_not_found_id(id)),
            Err(error) => {
                return Err(ApiError::internal(format!(
                    "Internal server error: cannot read backup description {}: {error}",
                    path.display()
                )));
            }
        };
        parse_description(id, &bytes).map_err(|error| {
            ApiError::internal(format!(
                "Internal server error: backup description {} is damaged ({error}); delete the backup (DeleteBackup removes it)",
                path.display()
            ))
        })
    }

    /// Every backup, finished or being created, with its status, in creation order.
    fn all(&self) -> Result<Vec<(BackupMeta, &'static str)>, ApiError> {
        // Read before the directory: a backup finishing meanwhile is then seen on disk (and
        // listed once, AVAILABLE) rather than missed.
        let creating: Vec<BackupMeta> = self.state().creating.values().cloned().collect();
        let mut out: Vec<(BackupMeta, &'static str)> = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(creating.into_iter().map(|meta| (meta, "CREATING")).collect());
            }
            Err(error) => {
                return Err(ApiError::internal(format!(
                    "Internal server error: cannot list the backup directory {}: {error}",
                    self.dir.display()
                )));
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            match self.load(id) {
                Ok(meta) => {
                    let status = self.status_on_disk(&meta);
                    out.push((meta, status));
                }
                Err(error) => tracing::warn!(%error, "skipping a backup whose description cannot be read"),
            }
        }
        for meta in creating {
            if !out.iter().any(|(done, _)| done.id == meta.id) {
                out.push((meta, "CREATING"));
            }
        }
        out.sort_by(|a, b| (a.0.created_at_ms, &a.0.id).cmp(&(b.0.created_at_ms, &b.0.id)));
        Ok(out)
    }

    /// A backup and its status.
    fn find(&self, id: &str) -> Result<(BackupMeta, &'static str), ApiError> {
        if let Some(meta) = self.state().creating.get(id) {
            return Ok((meta.clone(), "CREATING"));
        }
        let meta = self.load(id)?;
        let status = self.status_on_disk(&meta);
        Ok((meta, status))
    }

    /// A finished backup's status: AVAILABLE, or DELETED when its items file was removed from
    /// the backup directory by hand (it cannot be restored; DeleteBackup removes what is left).
    fn status_on_disk(&self, meta: &BackupMeta) -> &'static str {
        let items = self.items_path(&meta.id);
        if items.exists() {
            "AVAILABLE"
        } else {
            tracing::warn!(backup = %meta.arn, path = %items.display(), "a backup's items file is missing from the backup directory; it is listed DELETED and cannot be restored");
            "DELETED"
        }
    }

    /// The backup a request's BackupArn names, and its status. The whole ARN must be the
    /// backup's: one with its id under another table, region or account names no backup here
    /// (BackupNotFoundException), as in DynamoDB, rather than reaching it by its id alone.
    fn find_arn(&self, arn: &str) -> Result<(BackupMeta, &'static str), ApiError> {
        let id = parse_backup_arn(arn)?;
        let (backup, status) = self.find(&id)?;
        if backup.arn != arn {
            return Err(backup_not_found_id(&id));
        }
        Ok((backup, status))
    }
}

/// The description of backup `id` from its file's bytes. One that names another backup (a
/// description copied or renamed by hand) is damaged: its id would lead reads to another
/// backup's items than the ones checked.
fn parse_description(id: &str, bytes: &[u8]) -> Result<BackupMeta, String> {
    let meta: BackupMeta = serde_json::from_slice(bytes).map_err(|error| error.to_string())?;
    if meta.id != id || !meta.arn.ends_with(&format!("/backup/{id}")) {
        return Err(format!("it describes backup {} ({}), not {id}", meta.id, meta.arn));
    }
    Ok(meta)
}

/// Runs one backup operation.
pub async fn handle(store: &Store, operation: &str, body: &[u8]) -> Result<Value, ApiError> {
    match operation {
        "CreateBackup" => create_backup(store, decode(body)?).await,
        "DescribeBackup" => describe_backup(store, decode(body)?),
        "ListBackups" => list_backups(store, decode(body)?),
        "DeleteBackup" => delete_backup(store, decode(body)?),
        "RestoreTableFromBackup" => restore_table(store, decode(body)?).await,
        "DescribeContinuousBackups" => pitr::describe_continuous(store, decode(body)?),
        "UpdateContinuousBackups" => pitr::update_continuous(store, decode(body)?).await,
        "RestoreTableToPointInTime" => pitr::restore_to_point_in_time(store, decode(body)?).await,
        other => Err(ApiError::new(
            ErrorKind::UnknownOperation,
            format!("Unknown operation {other}"),
        )),
    }
}

fn table_already_exists(name: &str) -> ApiError {
    ApiError::new(ErrorKind::TableAlreadyExists, format!("Table already exists: {name}"))
}

/// Why a restore cannot create its target, a table named so existing: TableInUseException
/// while that table is itself being restored (CREATING), as DynamoDB answers for "a target
/// table with the specified name ... being created or deleted", else TableAlreadyExistsException.
fn target_taken(existing: &TableMeta) -> ApiError {
    if existing.restoring() {
        return ApiError::new(
            ErrorKind::TableInUse,
            format!(
                "Table {} is being created (a restore into it is in progress); restore under another name, or delete it once it is ACTIVE",
                existing.name
            ),
        );
    }
    table_already_exists(&existing.name)
}

/// Creates the table a restore fills, CREATING (with `restore` in progress) until it is full;
/// `created` is its creation time in seconds.
async fn create_restoring(
    engine: &Engine,
    create: catalog::CreateTableRequest,
    created: f64,
    restore: RestoreSummary,
) -> Result<TableMeta, ApiError> {
    engine
        .write_exclusive(move |context| {
            if let Some(existing) = context.table_named(&create.table_name) {
                return Err(target_taken(&existing));
            }
            let id = context.next_table_id()?;
            let mut meta = catalog::table_from_request(&create, id, created)?;
            meta.restore = Some(restore);
            context.put_table(meta.clone())?;
            Ok(meta)
        })
        .await
}

fn table_not_found(name: &str) -> ApiError {
    ApiError::new(ErrorKind::TableNotFound, format!("Table not found: {name}"))
}

fn backup_not_found_id(id: &str) -> ApiError {
    ApiError::new(
        ErrorKind::BackupNotFound,
        format!("Backup not found for the given BackupARN (backup {id}); ListBackups shows the backups there are"),
    )
}

/// The backup id at the end of a BackupArn (`arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/backup/ID`).
pub fn parse_backup_arn(arn: &str) -> Result<String, ApiError> {
    parse_backup_arn_at(arn, "backupArn")
}

/// [`parse_backup_arn`] of the request member `field` (named in a length error).
pub fn parse_backup_arn_at(arn: &str, field: &str) -> Result<String, ApiError> {
    let length = arn.len();
    if !(BACKUP_ARN_LENGTH_MIN..=BACKUP_ARN_LENGTH_MAX).contains(&length) {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{arn}' at '{field}' failed to satisfy constraint: Member must have length {} {BACKUP_ARN_LENGTH_MAX}",
            if length < BACKUP_ARN_LENGTH_MIN {
                format!("greater than or equal to {BACKUP_ARN_LENGTH_MIN}, and less than or equal to")
            } else {
                "less than or equal to".to_string()
            }
        )));
    }
    let invalid = || {
        ApiError::validation(format!(
            "Invalid BackupArn provided as input: {arn}; expected arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE/backup/ID as CreateBackup or ListBackups returns it"
        ))
    };
    let (head, id) = arn.rsplit_once("/backup/").ok_or_else(invalid)?;
    if !head.starts_with("arn:aws:dynamodb:") || !head.contains(":table/") || !valid_backup_id(id) {
        return Err(invalid());
    }
    Ok(id.to_string())
}

/// Backup ids are 14 digits of creation milliseconds, a dash and 8 hex digits.
fn valid_backup_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 23
        && bytes[..14].iter().all(u8::is_ascii_digit)
        && bytes[14] == b'-'
        && bytes[15..]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The creation time a (valid) backup id starts with.
fn backup_id_created_ms(id: &str) -> u64 {
    id.get(..14).and_then(|digits| digits.parse().ok()).unwrap_or(0)
}

fn new_backup_id(now_ms: u64, region: &str, table: &TableMeta, sequence: u64) -> String {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(region.as_bytes());
    hasher.update(table.name.as_bytes());
    hasher.update(table.id.to_be_bytes());
    hasher.update(now_ms.to_be_bytes());
    hasher.update(sequence.to_be_bytes());
    let hash = hasher.finalize();
    format!("{now_ms:014}-{}", hex::encode(&hash[..4]))
}

/// Whether `dir` (or, while it does not exist yet, its nearest existing ancestor) is on the
/// filesystem of the data directory `data_dir`: then a backup takes the room the store's disk
/// watermark keeps for its own writes.
fn on_data_filesystem(dir: &Path, data_dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(data) = std::fs::metadata(data_dir) else {
        return false;
    };
    dir.ancestors()
        .find_map(|a| std::fs::metadata(a).ok())
        .is_some_and(|meta| meta.dev() == data.dev())
}

/// Why a backup may not write `needed` more bytes to the data directory's disk, if so: that
/// would leave it below the watermark plus one check interval (so the next check comes
/// before the watermark is reached).
fn backup_room_problem(engine: &Engine, needed: u64) -> Option<String> {
    let disk = engine.disk_status();
    if disk.total_bytes == 0 {
        // Not measured (the problem is on /health): the write itself fails on a full disk.
        return None;
    }
    let wanted = disk
        .free_bytes_min
        .saturating_add(needed)
        .saturating_add(BACKUP_ROOM_CHECK_BYTES);
    (disk.low || disk.free_bytes < wanted).then(|| {
        format!(
            "the data directory's disk has {} bytes free, and a backup there must leave disk_free_bytes_min ({} bytes) for the store's writes (about {} more bytes needed); free space on that filesystem, or keep backups on another one (--backup-dir)",
            disk.free_bytes,
            disk.free_bytes_min,
            wanted.saturating_sub(disk.free_bytes)
        )
    })
}

/// Refuses a restore whose items alone (a lower bound of what it stores) would take the data
/// directory's disk below its watermark: the copy would fail part-way (its table dropped), or
/// a growth of the file would meet a full disk and make the store reopen its database.
pub(crate) fn check_restore_room(engine: &Engine, target: &str, needed: u64) -> Result<(), ApiError> {
    let disk = engine.disk_status();
    if disk.total_bytes == 0 {
        return Ok(());
    }
    let wanted = disk.free_bytes_min.saturating_add(needed);
    if !disk.low && disk.free_bytes >= wanted {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorKind::ServiceUnavailable,
        format!(
            "Restore into table {target} refused: its items take {needed} bytes, and the disk of the data directory has {} bytes free, which must stay above disk_free_bytes_min ({} bytes); free at least {} bytes on that filesystem first",
            disk.free_bytes,
            disk.free_bytes_min,
            wanted.saturating_sub(disk.free_bytes)
        ),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateBackupRequest {
    table_name: String,
    backup_name: String,
}

async fn create_backup(store: &Store, request: CreateBackupRequest) -> Result<Value, ApiError> {
    catalog::validate_table_name(&request.table_name, "tableName")?;
    catalog::validate_table_name(&request.backup_name, "backupName")?;
    let engine = store.engine().clone();
    let meta = engine
        .table(&request.table_name)
        .filter(|t| t.name != HEALTH_TABLE)
        .ok_or_else(|| table_not_found(&request.table_name))?;
    if meta.restoring() {
        return Err(ApiError::new(
            ErrorKind::TableInUse,
            format!(
                "Table {} is being restored (CREATING); back it up once it is ACTIVE",
                meta.name
            ),
        ));
    }
    // The snapshot is the backup's point in time; the table is read again after it, so a table
    // deleted (or deleted and created again) meanwhile is not backed up as empty.
    let snapshot = engine.snapshot()?;
    if engine.table(&meta.name).is_none_or(|now| now.id != meta.id) {
        return Err(table_not_found(&request.table_name));
    }
    let backups = Arc::clone(store.backups());
    // A backup on the data directory's disk must not take the room the watermark keeps for
    // the store's writes: refused now when the table alone would (its item bytes are a lower
    // bound of the file), and stopped while it is written if the disk fills meanwhile.
    let guard = on_data_filesystem(backups.dir(), engine.data_dir()).then(|| engine.clone());
    if let Some(engine) = &guard
        && let Some(problem) = backup_room_problem(engine, engine.stats(meta.id, None).size_bytes)
    {
        return Err(ApiError::new(
            ErrorKind::ServiceUnavailable,
            format!("Backup of table {} refused: {problem}", meta.name),
        ));
    }
    let now_ms = engine.now_unix_ms();
    let backup = {
        let mut state = backups.state();
        // One backup of a table at a time, as DynamoDB answers (each holds a snapshot and a
        // thread while it is written).
        if let Some(running) = state.creating.values().find(|b| b.table.id == meta.id) {
            return Err(ApiError::new(
                ErrorKind::BackupInUse,
                format!(
                    "Backup {} of table {} is being created; make another once it is AVAILABLE",
                    running.arn, meta.name
                ),
            ));
        }
        // The sequence starts again at each start: after a restart at the same millisecond (a
        // clock stepped back) an id could repeat and the new backup overwrite the old one's
        // files. An id taken (finished or being written) is never used again.
        let id = loop {
            state.sequence += 1;
            let id = new_backup_id(now_ms, engine.region(), &meta, state.sequence);
            let taken =
                state.creating.contains_key(&id) || backups.meta_path(&id).exists() || backups.items_path(&id).exists();
            if !taken {
                break id;
            }
        };
        let backup = BackupMeta {
            format: FORMAT_VERSION,
            arn: format!("{}/backup/{id}", meta.arn(engine.region())),
            id: id.clone(),
            name: request.backup_name,
            region: engine.region().to_string(),
            table: (*meta).clone(),
            table_arn: meta.arn(engine.region()),
            created_at_ms: now_ms,
            item_count: 0,
            size_bytes: 0,
            file_bytes: 0,
            sha256: String::new(),
        };
        state.creating.insert(id, backup.clone());
        backup
    };
    let details = backup.details("CREATING");
    let writer = Arc::clone(&backups);
    let pending = backup.clone();
    let pending_arn = backup.arn.clone();
    tokio::task::spawn_blocking(move || {
        let id = pending.id.clone();
        match write_backup(&writer, snapshot, pending, guard.as_ref()) {
            Ok(done) => {
                tracing::info!(backup = %done.arn, items = done.item_count, bytes = done.file_bytes, "backup available")
            }
            Err(error) => {
                tracing::error!(backup = %id, %error, "backup failed; it is removed (its table is untouched)");
                {
                    let mut state = writer.state();
                    state.failed_total += 1;
                    state.last_failure = Some(format!("backup {}: {error}", pending_arn));
                }
                for path in [
                    partial(&writer.items_path(&id)),
                    partial(&writer.meta_path(&id)),
                    writer.items_path(&id),
                ] {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        writer.state().creating.remove(&id);
    });
    Ok(json!({"BackupDetails": details}))
}

fn partial(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

/// Writes a backup's items from `snapshot`, then its description; both synced, then renamed.
fn write_backup(
    backups: &Backups,
    snapshot: crate::engine::Snapshot,
    mut backup: BackupMeta,
    guard: Option<&Engine>,
) -> Result<BackupMeta, String> {
    std::fs::create_dir_all(&backups.dir).map_err(|e| format!("creating {}: {e}", backups.dir.display()))?;
    let items_path = backups.items_path(&backup.id);
    let items_partial = partial(&items_path);
    let mut writer =
        file::Writer::create(&items_partial).map_err(|e| format!("creating {}: {e}", items_partial.display()))?;
    let mut failure: Option<String> = None;
    let mut checked_at = writer.bytes_written();
    snapshot
        .range(
            &RangeRequest {
                table: &backup.table,
                index: None,
                lower: Bound::Unbounded,
                upper: Bound::Unbounded,
                reverse: false,
            },
            |row| {
                if let Err(error) = writer.item(&row.item) {
                    failure = Some(format!("writing {}: {error}", items_partial.display()));
                    return ControlFlow::Break(());
                }
                if let Some(engine) = guard
                    && writer.bytes_written() - checked_at >= BACKUP_ROOM_CHECK_BYTES
                {
                    checked_at = writer.bytes_written();
                    // Room for what the next check may find written: one interval, and the
                    // buffer and record that can overrun it.
                    let next = BACKUP_ROOM_CHECK_BYTES + file::RECORD_BYTES_MAX as u64 + file::IO_BUFFER_BYTES as u64;
                    if let Some(problem) = backup_room_problem(engine, next) {
                        failure = Some(format!("stopped after {checked_at} bytes: {problem}"));
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            },
        )
        .map_err(|e| e.message)?;
    drop(snapshot);
    if let Some(error) = failure {
        return Err(error);
    }
    let summary = writer
        .finish()
        .map_err(|e| format!("syncing {}: {e}", items_partial.display()))?;
    backup.item_count = summary.item_count;
    backup.size_bytes = summary.size_bytes;
    backup.file_bytes = summary.file_bytes;
    backup.sha256 = summary.sha256;
    std::fs::rename(&items_partial, &items_path).map_err(|e| format!("renaming {}: {e}", items_partial.display()))?;
    let meta_path = backups.meta_path(&backup.id);
    let meta_partial = partial(&meta_path);
    let encoded = serde_json::to_vec_pretty(&backup).map_err(|e| e.to_string())?;
    write_synced(&meta_partial, &encoded).map_err(|e| format!("writing {}: {e}", meta_partial.display()))?;
    std::fs::rename(&meta_partial, &meta_path).map_err(|e| format!("renaming {}: {e}", meta_partial.display()))?;
    sync_dir(&backups.dir).map_err(|e| format!("syncing {}: {e}", backups.dir.display()))?;
    Ok(backup)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BackupArnRequest {
    backup_arn: String,
}

fn describe_backup(store: &Store, request: BackupArnRequest) -> Result<Value, ApiError> {
    let (backup, status) = store.backups().find_arn(&request.backup_arn)?;
    Ok(json!({"BackupDescription": backup.description(status)}))
}

fn delete_backup(store: &Store, request: BackupArnRequest) -> Result<Value, ApiError> {
    let id = parse_backup_arn(&request.backup_arn)?;
    let backups = store.backups();
    let (arn, deleted) = match backups.find_arn(&request.backup_arn) {
        Ok((backup, "CREATING")) => {
            return Err(ApiError::new(
                ErrorKind::BackupInUse,
                format!("Backup {} is being created; delete it once it is AVAILABLE", backup.arn),
            ));
        }
        Ok((backup, _)) => (backup.arn.clone(), backup.description("DELETED")),
        // A description that no longer reads is deleted all the same: its error names
        // DeleteBackup as the fix.
        Err(error) => match backups.damaged_description(&id, &request.backup_arn) {
            Some(Err(not_found)) => return Err(not_found),
            Some(Ok(description)) => {
                tracing::warn!(backup = %id, error = %error.message, "deleting a backup whose description cannot be read");
                (request.backup_arn.clone(), description)
            }
            None => return Err(error),
        },
    };
    {
        // Held across the removal, so no restore starts reading the backup meanwhile.
        let state = backups.state();
        if state.in_use.contains_key(&id) {
            return Err(ApiError::new(
                ErrorKind::BackupInUse,
                format!("Backup {arn} is being restored; delete it once the restored table is ACTIVE"),
            ));
        }
        // The description goes first: without it the backup no longer exists, and a crash
        // before the items file is removed leaves an orphan the next start removes.
        for path in [backups.meta_path(&id), backups.items_path(&id)] {
            if let Err(error) = std::fs::remove_file(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                return Err(ApiError::internal(format!(
                    "Internal server error: cannot remove {}: {error}",
                    path.display()
                )));
            }
        }
    }
    tracing::info!(backup = %arn, "backup deleted");
    Ok(json!({"BackupDescription": deleted}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListBackupsRequest {
    table_name: Option<String>,
    limit: Option<i64>,
    time_range_lower_bound: Option<f64>,
    time_range_upper_bound: Option<f64>,
    exclusive_start_backup_arn: Option<String>,
    backup_type: Option<String>,
}

fn list_backups(store: &Store, request: ListBackupsRequest) -> Result<Value, ApiError> {
    if let Some(name) = &request.table_name {
        catalog::validate_table_name(name, "tableName")?;
    }
    let limit = match request.limit {
        None => LIST_BACKUPS_LIMIT_MAX,
        Some(limit) if (1..=LIST_BACKUPS_LIMIT_MAX as i64).contains(&limit) => limit as usize,
        Some(limit) => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value {}",
                if limit < 1 {
                    "greater than or equal to 1".to_string()
                } else {
                    format!("less than or equal to {LIST_BACKUPS_LIMIT_MAX}")
                }
            )));
        }
    };
    let user = match request.backup_type.as_deref() {
        None | Some("USER" | "ALL") => true,
        Some("SYSTEM" | "AWS_BACKUP") => false,
        Some(other) => {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{other}' at 'backupType' failed to satisfy constraint: Member must satisfy enum value set: [USER, SYSTEM, AWS_BACKUP, ALL]"
            )));
        }
    };
    if let (Some(lower), Some(upper)) = (request.time_range_lower_bound, request.time_range_upper_bound)
        && lower > upper
    {
        return Err(ApiError::validation(format!(
            "TimeRangeLowerBound ({lower}) must not be after TimeRangeUpperBound ({upper})"
        )));
    }
    let start = match &request.exclusive_start_backup_arn {
        Some(arn) => Some(parse_backup_arn_at(arn, "exclusiveStartBackupArn")?),
        None => None,
    };
    // Every backup this store makes is a USER backup.
    let all = if user { store.backups().all()? } else { Vec::new() };
    let matching: Vec<&(BackupMeta, &str)> = all
        .iter()
        .filter(|(b, _)| request.table_name.as_ref().is_none_or(|name| b.table.name == *name))
        .filter(|(b, _)| {
            request
                .time_range_lower_bound
                .is_none_or(|lower| b.created_seconds() >= lower)
        })
        .filter(|(b, _)| {
            request
                .time_range_upper_bound
                .is_none_or(|upper| b.created_seconds() < upper)
        })
        .collect();
    // The listing is in (creation time, id) order and an id starts with its creation time, so
    // the next page starts after the start backup's place even when that backup was deleted
    // since (listing and deleting page by page is how old backups are cleaned up).
    let from = match &start {
        Some(id) => {
            let place = (backup_id_created_ms(id), id.as_str());
            matching.partition_point(|(b, _)| (b.created_at_ms, b.id.as_str()) <= place)
        }
        None => 0,
    };
    let page: Vec<&&(BackupMeta, &str)> = matching[from..].iter().take(limit).collect();
    let mut response = json!({
        "BackupSummaries": page.iter().map(|(b, status)| b.summary(status)).collect::<Vec<_>>(),
    });
    if matching.len() > from + limit
        && let Some((last, _)) = page.last()
    {
        response["LastEvaluatedBackupArn"] = json!(last.arn);
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestoreRequest {
    target_table_name: String,
    backup_arn: String,
    #[serde(flatten)]
    overrides: Overrides,
}

/// The overrides a restore (from a backup or to a point in time) may give.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Overrides {
    billing_mode_override: Option<String>,
    global_secondary_index_override: Option<Vec<Value>>,
    local_secondary_index_override: Option<Vec<Value>>,
    provisioned_throughput_override: Option<Value>,
    /// Accepted as CreateTable accepts SSESpecification: data at rest is the disk's business.
    #[serde(rename = "SSESpecificationOverride")]
    #[allow(dead_code)]
    sse_specification_override: Option<Value>,
    #[allow(dead_code)]
    on_demand_throughput_override: Option<Value>,
}

/// The table's indexes of `kind` as CreateTable and DescribeBackup show them (name, key schema,
/// projection), each with the ProvisionedThroughput `throughput` gives it, if any.
fn indexes_json(table: &TableMeta, kind: IndexKind, throughput: impl Fn(&IndexMeta) -> Option<Value>) -> Vec<Value> {
    table
        .indexes
        .iter()
        .filter(|i| i.kind == kind)
        .map(|i| {
            let mut out = json!({
                "IndexName": i.name,
                "KeySchema": i.key.to_json(),
                "Projection": i.projection.to_json(),
            });
            if let Some(t) = throughput(i) {
                out["ProvisionedThroughput"] = t;
            }
            out
        })
        .collect()
}

/// The CreateTable request a restore amounts to: the source table's definition (as backed up,
/// or as it is now for a point-in-time restore) with the overrides applied. What DynamoDB does
/// not restore (tags, streams, TTL, deletion protection, PITR) is left out.
pub(crate) fn restored_table_request(
    table: &TableMeta,
    target_table_name: &str,
    request: &Overrides,
) -> Result<catalog::CreateTableRequest, ApiError> {
    let billing = request.billing_mode_override.clone().unwrap_or_else(|| {
        if table.throughput.is_some() {
            "PROVISIONED"
        } else {
            "PAY_PER_REQUEST"
        }
        .to_string()
    });
    let provisioned = billing == "PROVISIONED";
    let throughput_json = |t: catalog::Throughput| json!({"ReadCapacityUnits": t.read, "WriteCapacityUnits": t.write});
    let table_throughput = match &request.provisioned_throughput_override {
        Some(value) => Some(value.clone()),
        None if provisioned => table.throughput.map(throughput_json),
        None => None,
    };
    if provisioned && table_throughput.is_none() {
        return Err(ApiError::validation(
            "One or more parameter values were invalid: ProvisionedThroughputOverride must be specified when BillingModeOverride is PROVISIONED and the source table is on demand",
        ));
    }
    let index_json = |kind: IndexKind| {
        indexes_json(table, kind, |i| {
            if kind == IndexKind::Global && provisioned {
                let source = i.throughput.or(table.throughput).map(throughput_json);
                source.or_else(|| table_throughput.clone())
            } else {
                None
            }
        })
    };
    let mut globals = request
        .global_secondary_index_override
        .clone()
        .unwrap_or_else(|| index_json(IndexKind::Global));
    if !provisioned {
        for index in &mut globals {
            if let Some(index) = index.as_object_mut() {
                index.remove("ProvisionedThroughput");
            }
        }
    }
    let locals = request
        .local_secondary_index_override
        .clone()
        .unwrap_or_else(|| index_json(IndexKind::Local));
    // The attribute definitions the key and the indexes use (an override may drop some).
    let mut used: Vec<String> = table.key.attributes().map(|a| a.name.clone()).collect();
    for index in globals.iter().chain(&locals) {
        for element in index.get("KeySchema").and_then(Value::as_array).into_iter().flatten() {
            if let Some(name) = element.get("AttributeName").and_then(Value::as_str) {
                used.push(name.to_string());
            }
        }
    }
    let definitions: Vec<Value> = table
        .attribute_definitions
        .iter()
        .filter(|(name, _)| used.contains(name))
        .map(|(name, t)| json!({"AttributeName": name, "AttributeType": t.descriptor()}))
        .collect();
    let mut create = json!({
        "TableName": target_table_name,
        "KeySchema": table.key.to_json(),
        "AttributeDefinitions": definitions,
        "BillingMode": billing,
    });
    if let Some(t) = table_throughput {
        create["ProvisionedThroughput"] = t;
    }
    if !globals.is_empty() {
        create["GlobalSecondaryIndexes"] = Value::Array(globals);
    }
    if !locals.is_empty() {
        create["LocalSecondaryIndexes"] = Value::Array(locals);
    }
    if let Some(class) = &table.table_class {
        create["TableClass"] = json!(class);
    }
    serde_json::from_value(create).map_err(|error| {
        ApiError::validation(format!(
            "One or more parameter values were invalid: an index or throughput override is malformed: {error}"
        ))
    })
}

async fn restore_table(store: &Store, request: RestoreRequest) -> Result<Value, ApiError> {
    catalog::validate_table_name(&request.target_table_name, "targetTableName")?;
    let backups = Arc::clone(store.backups());
    let (backup, status) = backups.find_arn(&request.backup_arn)?;
    let id = backup.id.clone();
    if status == "CREATING" {
        return Err(ApiError::new(
            ErrorKind::BackupInUse,
            format!(
                "Backup {} is still being created; restore it once it is AVAILABLE",
                backup.arn
            ),
        ));
    }
    if status == "DELETED" {
        return Err(damaged(
            &backup,
            format!(
                "its items file {} was removed from the backup directory",
                backups.items_path(&id).display()
            ),
        ));
    }
    if let Some(existing) = store.engine().table(&request.target_table_name) {
        return Err(target_taken(&existing));
    }
    let now = store.engine().now_unix_ms() as f64 / 1000.0;
    let create = restored_table_request(&backup.table, &request.target_table_name, &request.overrides)?;
    catalog::table_from_request(&create, 0, now)?;
    check_restore_room(store.engine(), &request.target_table_name, backup.size_bytes)?;
    // The backup is checked before the table exists: a missing, cut or replaced items file is
    // refused here, and a damaged one too while it is small enough to read before answering
    // (a larger one is checked as it is copied in, `copy_items`).
    let in_use = backups.take_for_restore(&id)?;
    let items = backups.items_path(&id);
    let read_whole = backup.file_bytes <= backups.check_before_answer_bytes_max.load(Ordering::Relaxed);
    let checked = backup.clone();
    let summary = tokio::task::spawn_blocking(move || {
        if read_whole {
            file::verify(&items).map(Some)
        } else {
            file::check_frame(&items, checked.file_bytes).map(|()| None)
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("Internal server error: the backup check stopped: {e}")))?;
    match summary {
        Ok(Some(summary)) => check_summary(&backup, Ok(summary))?,
        Ok(None) => {}
        Err(error) => return Err(damaged(&backup, error)),
    }
    let restore = RestoreSummary {
        source_backup_arn: backup.arn.clone(),
        source_table_arn: backup.table_arn.clone(),
        // "Point in time or source backup time": a backup restores its table as it was when
        // the backup was made.
        restore_date_time_seconds: backup.created_seconds(),
        in_progress: true,
        point_in_time: None,
    };
    let meta = create_restoring(store.engine(), create, now, restore).await?;
    tracing::info!(table = %meta.name, backup = %backup.arn, items = backup.item_count, "restoring a backup");
    let description = store.describe_table_json(&meta);
    spawn_restore(store.clone(), backups, backup, meta);
    // Released only now that the restore holds the backup itself.
    drop(in_use);
    Ok(json!({"TableDescription": description}))
}

/// Compares what was read from an items file with what its description promises.
fn check_summary(backup: &BackupMeta, read: Result<file::Summary, file::ReadError>) -> Result<(), ApiError> {
    let summary = read.map_err(|error| damaged(backup, error))?;
    if summary.sha256 != backup.sha256 || summary.item_count != backup.item_count {
        return Err(damaged(
            backup,
            format!(
                "its items file has SHA-256 {} and {} items where the backup recorded {} and {}",
                summary.sha256, summary.item_count, backup.sha256, backup.item_count
            ),
        ));
    }
    Ok(())
}

/// Why `backup` cannot be restored: `detail` found in its items file.
fn damaged(backup: &BackupMeta, detail: impl std::fmt::Display) -> ApiError {
    ApiError::validation(format!(
        "Backup {} is damaged and cannot be restored: {detail}. Restore another backup of table {}",
        backup.arn, backup.table.name
    ))
}

/// Copies a backup's items into the CREATING table `meta` in the background, then makes it
/// ACTIVE; on failure drops the table.
fn spawn_restore(store: Store, backups: Arc<Backups>, backup: BackupMeta, meta: TableMeta) {
    let source = format!("backup {}", backup.arn);
    let in_use = backups.use_backup(&backup.id);
    spawn_fill("restore", source, store, meta, move |handle, engine, meta| {
        let outcome = copy_items(handle, engine, &backups, &backup, meta);
        drop(in_use);
        outcome
    });
}

/// Runs `fill` (copying a restore's items into the CREATING table `target`, `source` telling
/// from where) on a blocking thread of the server's runtime, then makes the table ACTIVE; on
/// failure drops the half-restored table. `kind` names the restore in the log.
pub(crate) fn spawn_fill(
    kind: &'static str,
    source: String,
    store: Store,
    target: TableMeta,
    fill: impl FnOnce(&tokio::runtime::Handle, &Engine, &TableMeta) -> Result<u64, ApiError> + Send + 'static,
) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tracing::error!(table = %target.name, "a restore cannot start outside the server's runtime; it resumes at the next start");
        return;
    };
    tokio::task::spawn_blocking(move || {
        let engine = store.engine().clone();
        match fill(&handle, &engine, &target) {
            Ok(count) => {
                tracing::info!(table = %target.name, items = count, %source, "{kind} finished; table ACTIVE")
            }
            // The store's stop refused the fill's writes: the table stays CREATING and the
            // restore starts again at the next start (`Backups::recover` resumes it); nothing failed.
            Err(error) if engine.is_stopping() => {
                tracing::info!(table = %target.name, %source, error = %error.message, "{kind} interrupted by the store's stop; it resumes at the next start");
            }
            Err(error) => {
                tracing::error!(table = %target.name, %source, error = %error.message, "{kind} failed; dropping the half-restored table");
                store.backups().note_restore_failure(format!(
                    "{kind} of table {} from {source} failed (the half-restored table is dropped): {}",
                    target.name, error.message
                ));
                handle.block_on(drop_restoring(&engine, target));
            }
        }
    });
}

fn copy_items(
    handle: &tokio::runtime::Handle,
    engine: &Engine,
    backups: &Backups,
    backup: &BackupMeta,
    meta: &TableMeta,
) -> Result<u64, ApiError> {
    let path = backups.items_path(&backup.id);
    // What cannot be read is damage, named as the check before the answer names it.
    let mut reader = file::Reader::open(&path).map_err(|error| damaged(backup, error))?;
    let table = Arc::new(meta.clone());
    let mut copied = 0u64;
    loop {
        let mut batch: Vec<(Vec<u8>, Item)> = Vec::new();
        let mut bytes = 0;
        while batch.len() < RESTORE_BATCH_ITEMS_MAX && bytes < RESTORE_BATCH_BYTES_MAX {
            let Some(item) = reader.next_item().map_err(|error| damaged(backup, error))? else {
                break;
            };
            // An item that decodes but lacks the table's key is damage too.
            let key = crate::engine::key_of(table.key_hash, &table.key, &item).map_err(|error| {
                damaged(
                    backup,
                    format!(
                        "item {} does not fit the table's key: {}",
                        copied + batch.len() as u64,
                        error.message
                    ),
                )
            })?;
            bytes += dynamo_protocol::value::item_size_bytes(&item);
            batch.push((key, item));
        }
        if batch.is_empty() {
            break;
        }
        copied += batch.len() as u64;
        write_restored(handle, engine, &table, batch)?;
    }
    check_summary(backup, Ok(reader.finish()))?;
    finish_restore(handle, engine, &table)?;
    Ok(copied)
}

/// `batch` with each item's stored key in `target`.
pub(crate) fn keyed(target: &TableMeta, batch: Vec<Item>) -> Result<Vec<(Vec<u8>, Item)>, ApiError> {
    batch
        .into_iter()
        .map(|item| Ok((crate::engine::key_of(target.key_hash, &target.key, &item)?, item)))
        .collect()
}

/// Puts restored items, with their stored keys, into the table being restored, in one writer
/// job.
fn write_restored(
    handle: &tokio::runtime::Handle,
    engine: &Engine,
    target: &Arc<TableMeta>,
    keyed: Vec<(Vec<u8>, Item)>,
) -> Result<(), ApiError> {
    let target = Arc::clone(target);
    handle.block_on(engine.write(move |context| {
        context.current_table(&target)?;
        // A backup holds its items in key order: they go in as runs, in full leaves.
        let mut new_items = Vec::with_capacity(keyed.len());
        for (key, item) in &keyed {
            match context.get(&target, key)? {
                None => new_items.push((key.as_slice(), item)),
                Some(old) => context.put(&target, key, Some(&old), item)?,
            }
        }
        context.put_new_items(&target, new_items)
    }))
}

/// Ends a restore that copied every item: the table's definition as committed now loses its
/// in-progress mark, and the table is ACTIVE.
fn finish_restore(handle: &tokio::runtime::Handle, engine: &Engine, table: &Arc<TableMeta>) -> Result<(), ApiError> {
    let current = Arc::clone(table);
    handle.block_on(engine.write_exclusive(move |context| {
        let mut next = (*context.latest_table(&current)?).clone();
        if let Some(restore) = &mut next.restore {
            restore.in_progress = false;
        }
        context.put_table(next)
    }))
}

async fn drop_restoring(engine: &Engine, meta: TableMeta) {
    let name = meta.name.clone();
    let result = engine
        .write_exclusive(move |context| {
            context.current_table(&meta)?;
            context.drop_table(&meta)
        })
        .await;
    if let Err(error) = result {
        tracing::error!(table = %name, %error, "could not drop a half-restored table; it stays CREATING until the next start retries");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restore that takes a backup a DeleteBackup removed since its lookup answers "not
    /// found", not "damaged"; one it takes first makes the delete wait (`BackupInUse`).
    #[test]
    fn a_restore_takes_a_backup_only_while_it_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backups = Arc::new(Backups::new(dir.path().to_path_buf()));
        let id = "01700000000000-0a1b2c3d";
        std::fs::write(backups.meta_path(id), "{}").expect("description");
        let held = backups.take_for_restore(id).expect("there");
        assert!(backups.state().in_use.contains_key(id));
        drop(held);
        assert!(!backups.state().in_use.contains_key(id), "released");
        std::fs::remove_file(backups.meta_path(id)).expect("deleted");
        let gone = backups.take_for_restore(id).err().expect("deleted meanwhile");
        assert_eq!(gone.kind, ErrorKind::BackupNotFound, "{gone:?}");
        assert!(!backups.state().in_use.contains_key(id), "a refused take holds nothing");
    }

    #[tokio::test]
    async fn one_backup_of_a_table_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path(), "us-east-1", Arc::new(crate::SystemClock)).expect("engine");
        let store = Store::new(engine);
        let call = async |operation: &str, body: Value| store.handle(operation, body.to_string().as_bytes()).await;
        call("CreateTable", testkit::on_demand_table("orders", "pk"))
            .await
            .expect("table");
        call("CreateTable", testkit::on_demand_table("other", "pk"))
            .await
            .expect("table");
        // A backup of "orders" being written (held here so the test does not race its writer).
        let table = store.engine().table("orders").expect("orders");
        let running = BackupMeta {
            format: FORMAT_VERSION,
            id: "01700000000000-0a1b2c3d".into(),
            arn: format!("{}/backup/01700000000000-0a1b2c3d", table.arn("us-east-1")),
            name: "running".into(),
            region: "us-east-1".into(),
            table: (*table).clone(),
            table_arn: table.arn("us-east-1"),
            created_at_ms: 1_700_000_000_000,
            item_count: 0,
            size_bytes: 0,
            file_bytes: 0,
            sha256: String::new(),
        };
        store
            .backups()
            .state()
            .creating
            .insert(running.id.clone(), running.clone());
        let refused = call("CreateBackup", json!({"TableName": "orders", "BackupName": "second"}))
            .await
            .expect_err("one at a time");
        assert_eq!(refused.kind, ErrorKind::BackupInUse, "{refused}");
        assert!(refused.message.contains(&running.arn), "{refused}");
        // Another table's backup is not held up.
        call("CreateBackup", json!({"TableName": "other", "BackupName": "other"}))
            .await
            .expect("another table");
        store.backups().state().creating.remove(&running.id);
        call("CreateBackup", json!({"TableName": "orders", "BackupName": "second"}))
            .await
            .expect("once the first is done");
    }

    #[test]
    fn restore_requests_carry_their_overrides() {
        let request: RestoreRequest = decode(
            br#"{"TargetTableName": "copy", "BackupArn": "b", "BillingModeOverride": "PROVISIONED",
                "ProvisionedThroughputOverride": {"ReadCapacityUnits": 7, "WriteCapacityUnits": 3},
                "LocalSecondaryIndexOverride": [], "SSESpecificationOverride": {"Enabled": true}}"#,
        )
        .expect("valid request");
        assert_eq!(request.target_table_name, "copy");
        assert_eq!(request.overrides.billing_mode_override.as_deref(), Some("PROVISIONED"));
        assert_eq!(request.overrides.local_secondary_index_override, Some(vec![]));
        assert_eq!(request.overrides.global_secondary_index_override, None);
        let Err(missing) = decode::<RestoreRequest>(br#"{"BackupArn": "b"}"#) else {
            panic!("a request without TargetTableName decodes");
        };
        assert!(missing.message.contains("'targetTableName'"), "{}", missing.message);
        let Err(wrong) = decode::<pitr::PointInTimeRequest>(br#"{"TargetTableName": "t", "BillingModeOverride": 5}"#)
        else {
            panic!("a number as BillingModeOverride decodes");
        };
        assert_eq!(wrong.kind, ErrorKind::Serialization, "{}", wrong.message);
    }

    #[test]
    fn backup_arns_parse_strictly() {
        let arn = "arn:aws:dynamodb:us-east-1:000000000000:table/orders/backup/01700000000000-0a1b2c3d";
        assert_eq!(parse_backup_arn(arn).expect("valid"), "01700000000000-0a1b2c3d");
        for bad in [
            "arn:aws:dynamodb:us-east-1:000000000000:table/orders/backup/../../etc/passwd",
            "arn:aws:dynamodb:us-east-1:000000000000:table/orders/backup/01700000000000-0A1B2C3D",
            "arn:aws:dynamodb:us-east-1:000000000000:table/orders/01700000000000-0a1b2c3d",
            "arn:aws:s3:us-east-1:000000000000:table/orders/backup/01700000000000-0a1b2c3d",
        ] {
            let error = parse_backup_arn(bad).expect_err(bad);
            assert_eq!(error.kind, ErrorKind::Validation, "{bad}");
        }
        assert!(parse_backup_arn("short").expect_err("short").message.contains("length"));
    }

    #[test]
    fn backup_ids_are_distinct_and_valid() {
        let request: catalog::CreateTableRequest = serde_json::from_value(json!({
            "TableName": "orders",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        }))
        .expect("request");
        let table = catalog::table_from_request(&request, 7, 0.0).expect("table");
        let a = new_backup_id(1_700_000_000_000, "r", &table, 1);
        let b = new_backup_id(1_700_000_000_000, "r", &table, 2);
        assert_ne!(a, b);
        assert!(valid_backup_id(&a) && valid_backup_id(&b), "{a} {b}");
    }
}
