//! Point-in-time recovery, as DynamoDB documents it: UpdateContinuousBackups
//! (PointInTimeRecoverySpecification with RecoveryPeriodInDays 1 to 35), DescribeContinuousBackups
//! (EarliestRestorableDateTime, LatestRestorableDateTime) and RestoreTableToPointInTime (by name or
//! ARN, to RestoreDateTime or the latest restorable time, with the index, billing and throughput
//! overrides RestoreTableFromBackup takes).
//!
//! A restore reads one snapshot after a write barrier (every write submitted before the request
//! has committed, so every change stamped up to the restore time is in it), takes the source's
//! current items, puts back for each key changed after the restore time the before-image of its
//! first such change (`crate::engine::pitr`), and copies the result into a new regional table,
//! CREATING until the copy is done, as a restore from a backup does. The new table has no
//! stream, TTL, tags or PITR of its own, as in DynamoDB. A restore interrupted by a crash is
//! done again at the next start from the source's undo log (the copy only ever writes items of
//! the restored state, so a partial copy is a subset of it); if the source is gone or its log no
//! longer reaches back far enough, the half-restored table is dropped, with the reason in the
//! log.
//!
//! LatestRestorableDateTime is `now − pitr_restorable_lag_ms` (`[store]` key or
//! `SWITCHYARD_PITR_RESTORABLE_LAG_MS`; 1 s by default, DynamoDB says "typically 5 minutes"):
//! the barrier makes a restore exact up to its own arrival. A restore holds the before-images
//! of the keys changed since the restore time in memory; the per-table undo log bound
//! (`pitr_undo_bytes_max`, 256 MiB by default) bounds them.

use std::collections::HashMap;
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use dynamo_protocol::{ApiError, ErrorKind, Item};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Overrides, create_restoring, drop_restoring, finish_restore, keyed, restored_table_request, spawn_fill,
    table_not_found, target_taken, write_restored,
};
use crate::catalog::{self, PitrSpec, RestoreSummary, TableMeta};
use crate::engine::{Engine, HEALTH_TABLE, PitrView, RangeRequest, Snapshot};
use crate::ops::Store;

/// RecoveryPeriodInDays: DynamoDB's range and default.
pub const RECOVERY_PERIOD_DAYS_MIN: i64 = 1;
pub const RECOVERY_PERIOD_DAYS_MAX: i64 = 35;
/// A point-in-time restore copies at most this many items per write batch...
const COPY_BATCH_ITEMS_MAX: usize = super::RESTORE_BATCH_ITEMS_MAX;
/// ...and at most this many item bytes.
const COPY_BATCH_BYTES_MAX: usize = super::RESTORE_BATCH_BYTES_MAX;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TableNameRequest {
    table_name: String,
}

fn require_table(store: &Store, name: &str) -> Result<Arc<TableMeta>, ApiError> {
    catalog::validate_table_name(name, "tableName")?;
    store
        .engine()
        .table(name)
        .filter(|t| t.name != HEALTH_TABLE)
        .ok_or_else(|| table_not_found(name))
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// LatestRestorableDateTime: `lag_ms` before the undo log's present, the later of the clock
/// and the newest change's time. Changes are stamped `max(now, newest)`, so after the clock
/// steps back every change is stamped with the time it had reached; measured from the clock
/// alone, a restore to the latest time would silently undo every change of the last step's
/// length (or be refused as before EarliestRestorableDateTime). Every batch after a snapshot
/// is stamped at or after both, so later than the result: a restore to it is repeatable.
fn latest_restorable_ms(now_ms: u64, newest_change_ms: u64, lag_ms: u64) -> u64 {
    now_ms.max(newest_change_ms).saturating_sub(lag_ms)
}

/// The ContinuousBackupsDescription of `table`.
fn description(store: &Store, table: &TableMeta) -> Result<Value, ApiError> {
    let Some(pitr) = table.pitr else {
        return Ok(json!({
            "ContinuousBackupsStatus": "ENABLED",
            "PointInTimeRecoveryDescription": {"PointInTimeRecoveryStatus": "DISABLED"},
        }));
    };
    let engine = store.engine();
    let now_ms = engine.now_unix_ms();
    let snapshot = engine.snapshot()?;
    let earliest_ms = snapshot.pitr_earliest_ms(table, now_ms)?;
    let latest_ms = latest_restorable_ms(now_ms, snapshot.pitr_last_ms()?, engine.pitr_limits().restorable_lag_ms);
    Ok(json!({
        "ContinuousBackupsStatus": "ENABLED",
        "PointInTimeRecoveryDescription": {
            "PointInTimeRecoveryStatus": "ENABLED",
            "RecoveryPeriodInDays": pitr.recovery_period_days,
            "EarliestRestorableDateTime": seconds(earliest_ms),
            "LatestRestorableDateTime": seconds(latest_ms),
        },
    }))
}

pub fn describe_continuous(store: &Store, request: TableNameRequest) -> Result<Value, ApiError> {
    let table = require_table(store, &request.table_name)?;
    Ok(json!({"ContinuousBackupsDescription": description(store, &table)?}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PitrSpecification {
    point_in_time_recovery_enabled: bool,
    recovery_period_in_days: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateContinuousRequest {
    table_name: String,
    point_in_time_recovery_specification: PitrSpecification,
}

/// Checks RecoveryPeriodInDays against DynamoDB's range, with its message.
fn recovery_period(days: Option<i64>) -> Result<u32, ApiError> {
    let days = days.unwrap_or(RECOVERY_PERIOD_DAYS_MAX);
    if (RECOVERY_PERIOD_DAYS_MIN..=RECOVERY_PERIOD_DAYS_MAX).contains(&days) {
        return Ok(days as u32);
    }
    let bound = if days < RECOVERY_PERIOD_DAYS_MIN {
        format!("greater than or equal to {RECOVERY_PERIOD_DAYS_MIN}")
    } else {
        format!("less than or equal to {RECOVERY_PERIOD_DAYS_MAX}")
    };
    Err(ApiError::validation(format!(
        "1 validation error detected: Value '{days}' at 'pointInTimeRecoverySpecification.recoveryPeriodInDays' failed to satisfy constraint: Member must have value {bound}"
    )))
}

pub async fn update_continuous(store: &Store, request: UpdateContinuousRequest) -> Result<Value, ApiError> {
    let table = require_table(store, &request.table_name)?;
    let specification = request.point_in_time_recovery_specification;
    let wanted = if specification.point_in_time_recovery_enabled {
        let days = recovery_period(specification.recovery_period_in_days)?;
        Some(days)
    } else {
        if specification.recovery_period_in_days.is_some() {
            return Err(ApiError::validation(
                "One or more parameter values were invalid: RecoveryPeriodInDays can only be given when PointInTimeRecoveryEnabled is true",
            ));
        }
        None
    };
    // DynamoDB answers a table still being created with ContinuousBackupsUnavailableException
    // (TableInUseException is not among this operation's errors).
    if table.restoring() {
        return Err(ApiError::new(
            ErrorKind::ContinuousBackupsUnavailable,
            format!(
                "Backups have not yet been enabled for this table: table {} is being restored (CREATING); change its continuous backups once it is ACTIVE",
                table.name
            ),
        ));
    }
    let name = table.name.clone();
    let updated = store
        .engine()
        .write_exclusive(move |context| {
            // The definition as committed now: a change committed since the request read the
            // table (tags, TTL, UpdateTable) is kept.
            let table = context.latest_table(&table)?;
            let now_ms = context.now_unix_ms();
            let pitr = match (wanted, table.pitr) {
                (None, _) => None,
                // Already on: only the window changes; what is kept stays restorable.
                (Some(days), Some(current)) => Some(PitrSpec {
                    recovery_period_days: days,
                    ..current
                }),
                (Some(days), None) => Some(PitrSpec {
                    enabled_at_ms: now_ms,
                    recovery_period_days: days,
                }),
            };
            if pitr == table.pitr {
                return Ok(table);
            }
            let mut next = (*table).clone();
            next.pitr = pitr;
            context.put_table(next.clone())?;
            Ok(Arc::new(next))
        })
        .await?;
    match (&updated.pitr, wanted) {
        (Some(_), _) => tracing::info!(table = %name, "point-in-time recovery enabled"),
        (None, None) => tracing::info!(table = %name, "point-in-time recovery disabled; its undo log is trimmed"),
        _ => {}
    }
    Ok(json!({"ContinuousBackupsDescription": description(store, &updated)?}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PointInTimeRequest {
    source_table_arn: Option<String>,
    source_table_name: Option<String>,
    target_table_name: String,
    restore_date_time: Option<f64>,
    use_latest_restorable_time: Option<bool>,
    #[serde(flatten)]
    overrides: Overrides,
}

fn invalid_restore_time(at_ms: u64, earliest_ms: u64, latest_ms: u64) -> ApiError {
    ApiError::new(
        ErrorKind::InvalidRestoreTime,
        format!(
            "Invalid restore time specified: RestoreDateTime ({}) must be between EarliestRestorableDateTime ({}) and LatestRestorableDateTime ({})",
            seconds(at_ms),
            seconds(earliest_ms),
            seconds(latest_ms)
        ),
    )
}

pub async fn restore_to_point_in_time(store: &Store, request: PointInTimeRequest) -> Result<Value, ApiError> {
    catalog::validate_table_name(&request.target_table_name, "targetTableName")?;
    let engine = store.engine().clone();
    let source_name = match (&request.source_table_name, &request.source_table_arn) {
        (Some(name), None) => name.clone(),
        (None, Some(arn)) => {
            let name = arn
                .rsplit_once(":table/")
                .map(|(_, name)| name.to_string())
                .filter(|name| !name.contains('/'))
                .ok_or_else(|| ApiError::validation(format!("Invalid SourceTableArn provided as input: {arn}")))?;
            let source = require_table(store, &name)?;
            if source.arn(engine.region()) != *arn {
                return Err(table_not_found(arn));
            }
            name
        }
        _ => {
            return Err(ApiError::validation(
                "One or more parameter values were invalid: give exactly one of SourceTableName and SourceTableArn",
            ));
        }
    };
    let use_latest = request.use_latest_restorable_time.unwrap_or(false);
    let requested_ms = match (request.restore_date_time, use_latest) {
        (Some(_), true) => {
            return Err(ApiError::validation(
                "One or more parameter values were invalid: give RestoreDateTime or UseLatestRestorableTime = true, not both",
            ));
        }
        (None, false) => {
            return Err(ApiError::validation(
                "One or more parameter values were invalid: give RestoreDateTime, or UseLatestRestorableTime = true",
            ));
        }
        // Seconds since the epoch that fit in milliseconds (1e300 would saturate, and then be
        // named in the answer as a time the client never sent).
        (Some(at), false) if at.is_finite() && at >= 0.0 && at * 1000.0 < u64::MAX as f64 => {
            Some((at * 1000.0).round() as u64)
        }
        (Some(at), false) => {
            // Huge numbers in exponent form (Rust writes every digit of 1e300 otherwise).
            let shown = if at.is_finite() && at.abs() >= 1e16 {
                format!("{at:e}")
            } else {
                format!("{at}")
            };
            return Err(ApiError::validation(format!(
                "One or more parameter values were invalid: RestoreDateTime {shown} is not a time"
            )));
        }
        (None, true) => None,
    };
    let source = require_table(store, &source_name)?;
    if let Some(existing) = engine.table(&request.target_table_name) {
        return Err(target_taken(&existing));
    }
    if source.pitr.is_none() || source.restoring() {
        return Err(ApiError::new(
            ErrorKind::PointInTimeRecoveryUnavailable,
            format!("Point in time recovery is not enabled for table '{source_name}'"),
        ));
    }
    let create = restored_table_request(&source, &request.target_table_name, &request.overrides)?;
    let now_ms = engine.now_unix_ms();
    catalog::table_from_request(&create, 0, seconds(now_ms))?;
    super::check_restore_room(
        &engine,
        &request.target_table_name,
        engine.stats(source.id, None).size_bytes,
    )?;
    // Every write submitted before now has committed once the barrier has: changes stamped up
    // to `at_ms` (before the undo log's present) are all in the snapshot, and later ones are
    // in its undo log.
    engine.write_barrier().await?;
    let snapshot = engine.snapshot()?;
    let source = match engine.table(&source_name) {
        Some(now) if now.id == source.id && now.pitr.is_some() => now,
        Some(_) | None => return Err(table_not_found(&source_name)),
    };
    let lag_ms = engine.pitr_limits().restorable_lag_ms.max(1);
    let latest_ms = latest_restorable_ms(now_ms, snapshot.pitr_last_ms()?, lag_ms);
    let at_ms = requested_ms.unwrap_or(latest_ms);
    let earliest_ms = snapshot.pitr_earliest_ms(&source, now_ms)?;
    if requested_ms.is_none() && latest_ms < earliest_ms {
        // Enabled less than the restorable lag ago: no time is restorable yet.
        return Err(ApiError::new(
            ErrorKind::InvalidRestoreTime,
            format!(
                "Invalid restore time specified: no point in time of table '{source_name}' is restorable yet: its EarliestRestorableDateTime ({}) is after its LatestRestorableDateTime ({}), which reaches it within {lag_ms} ms of point-in-time recovery being enabled; try again then",
                seconds(earliest_ms),
                seconds(latest_ms)
            ),
        ));
    }
    if at_ms < earliest_ms || at_ms > latest_ms {
        return Err(invalid_restore_time(at_ms, earliest_ms, latest_ms));
    }
    let view = snapshot.pitr_view(&source, at_ms, now_ms)?;
    let restore = RestoreSummary {
        source_backup_arn: String::new(),
        source_table_arn: source.arn(engine.region()),
        restore_date_time_seconds: seconds(at_ms),
        in_progress: true,
        point_in_time: Some((source.id, at_ms)),
    };
    let meta = create_restoring(&engine, create, seconds(now_ms), restore).await?;
    tracing::info!(table = %meta.name, source = %source.name, at_ms, changed_keys = view.overrides.len(), "restoring a table to a point in time");
    let description = store.describe_table_json(&meta);
    spawn_copy(store.clone(), snapshot, (*source).clone(), view, meta);
    Ok(json!({"TableDescription": description}))
}

/// Starts again a point-in-time restore a crash interrupted (at startup).
pub fn resume(store: &Store, target: TableMeta) {
    let engine = store.engine();
    let Some((source_id, at_ms)) = target.restore.as_ref().and_then(|r| r.point_in_time) else {
        return;
    };
    let prepared = (|| -> Result<(Snapshot, TableMeta, PitrView), String> {
        let source = engine
            .tables()
            .into_iter()
            .find(|t| t.id == source_id && t.pitr.is_some())
            .ok_or("its source table is gone or no longer has point-in-time recovery")?;
        let snapshot = engine.snapshot().map_err(|e| e.message)?;
        let now_ms = engine.now_unix_ms();
        let view = snapshot.pitr_view(&source, at_ms, now_ms).map_err(|e| e.message)?;
        if at_ms < view.earliest_ms {
            return Err(format!(
                "the source's undo log no longer reaches back to {at_ms} ms (earliest {} ms)",
                view.earliest_ms
            ));
        }
        Ok((snapshot, (*source).clone(), view))
    })();
    match prepared {
        Ok((snapshot, source, view)) => {
            tracing::info!(table = %target.name, source = %source.name, at_ms, "resuming a point-in-time restore interrupted by a restart");
            spawn_copy(store.clone(), snapshot, source, view, target);
        }
        Err(reason) => {
            tracing::error!(table = %target.name, %reason, "a point-in-time restore was interrupted and cannot be done again; dropping the half-restored table");
            let store = store.clone();
            tokio::spawn(async move { drop_restoring(store.engine(), target).await });
        }
    }
}

/// Copies the restored state into the CREATING table `target` in the background, then makes
/// it ACTIVE; on failure drops the table.
fn spawn_copy(store: Store, snapshot: Snapshot, source: TableMeta, view: PitrView, target: TableMeta) {
    let from = format!("table {}", source.name);
    spawn_fill(
        "point-in-time restore",
        from,
        store,
        target,
        move |handle, engine, target| copy(handle, engine, &snapshot, &source, view.overrides, target),
    );
}

fn copy(
    handle: &tokio::runtime::Handle,
    engine: &Engine,
    snapshot: &Snapshot,
    source: &TableMeta,
    mut overrides: HashMap<Vec<u8>, Option<Item>>,
    target: &TableMeta,
) -> Result<u64, ApiError> {
    let target = Arc::new(target.clone());
    let mut copied = 0u64;
    let mut batch: Vec<Item> = Vec::new();
    let mut bytes = 0usize;
    let mut failure: Option<ApiError> = None;
    let mut flush = |batch: &mut Vec<Item>, bytes: &mut usize| -> Result<(), ApiError> {
        if batch.is_empty() {
            return Ok(());
        }
        copied += batch.len() as u64;
        *bytes = 0;
        write_restored(handle, engine, &target, keyed(&target, std::mem::take(batch))?)
    };
    snapshot.range(
        &RangeRequest {
            table: source,
            index: None,
            lower: Bound::Unbounded,
            upper: Bound::Unbounded,
            reverse: false,
        },
        |row| {
            let item = match overrides.remove(row.key) {
                Some(Some(before)) => before,
                Some(None) => return ControlFlow::Continue(()),
                None => row.item,
            };
            bytes += dynamo_protocol::value::item_size_bytes(&item);
            batch.push(item);
            if (batch.len() >= COPY_BATCH_ITEMS_MAX || bytes >= COPY_BATCH_BYTES_MAX)
                && let Err(error) = flush(&mut batch, &mut bytes)
            {
                failure = Some(error);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    )?;
    if let Some(error) = failure {
        return Err(error);
    }
    // Keys deleted since the restore time: their before-images.
    for item in overrides.into_values().flatten() {
        bytes += dynamo_protocol::value::item_size_bytes(&item);
        batch.push(item);
        if batch.len() >= COPY_BATCH_ITEMS_MAX || bytes >= COPY_BATCH_BYTES_MAX {
            flush(&mut batch, &mut bytes)?;
        }
    }
    flush(&mut batch, &mut bytes)?;
    finish_restore(handle, engine, &target)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_period_is_checked_as_dynamodb_does() {
        assert_eq!(recovery_period(None).expect("default"), 35);
        assert_eq!(recovery_period(Some(1)).expect("min"), 1);
        let low = recovery_period(Some(0)).expect_err("0");
        assert!(low.message.contains("greater than or equal to 1"), "{}", low.message);
        let high = recovery_period(Some(36)).expect_err("36");
        assert!(high.message.contains("less than or equal to 35"), "{}", high.message);
        assert_eq!(high.kind, ErrorKind::Validation);
    }
}
