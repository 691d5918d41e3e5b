//! Online backfill of a global secondary index created by UpdateTable, and of the TTL index
//! when TTL is enabled on a table with items: the index is live for
//! writes at once (every write maintains it; a write violating its key is taken and left out of
//! it until it is ACTIVE, then refused, as DynamoDB documents), and the items
//! that were there before are copied into it in bounded jobs, so a table of any size never
//! holds the writer for longer than one job. Reads of the index are refused until it is
//! filled, as DynamoDB refuses them ("Cannot read from backfilling global secondary index").
//!
//! Invariants:
//! - an index with `IndexMeta::backfilling` has, in [`INDEX_BACKFILLS`], the stored key of the
//!   last item copied (empty: none yet), written in the job that copied it; a missing entry
//!   means "from the first item" (a catalog from a backup, say), never "done";
//! - a job copies at most [`INDEX_BACKFILL_ITEMS_PER_JOB`] items and
//!   [`INDEX_BACKFILL_BYTES_PER_JOB`] bytes, in key order, after the recorded key, and the job
//!   that reaches the table's end clears the flag and the entry in the same transaction;
//! - copying is idempotent and counted once: an entry a write already made for an item (the
//!   item changed after the index was created) is written again with the same content and not
//!   counted again, because the write path counts an index entry by what the storage held
//!   (`WriteContext::store_beside`), not by what the items imply;
//! - dropping the index or its table drops its entry here in the same transaction;
//! - a TTL index being filled has its entry `t{table id}` the same way (no flag in the catalog:
//!   DynamoDB shows the TTL ENABLED at once); an item not yet reached expires once reached.

use super::*;

/// Where each backfilling index is: `x{table id}/{index}` (the index's storage name) → the
/// stored key of the last item copied into it.
pub(super) const INDEX_BACKFILLS: TableDefinition<&str, &[u8]> = TableDefinition::new("index_backfills");
/// Items one backfill job copies at most. A job is one durable commit of the index pages it
/// dirtied, and writes that arrive meanwhile wait for it: 1,000 items of ~1 KB took ~39 ms
/// (BENCHMARKS.md, "Online index backfill"), 256 take about a quarter of that.
pub const INDEX_BACKFILL_ITEMS_PER_JOB: usize = 256;
/// Bytes of items one backfill job reads at most.
pub const INDEX_BACKFILL_BYTES_PER_JOB: usize = 1 << 20;
/// While other writes wait for the writer, the backfill takes at most this share of its time:
/// after a job, the next one waits as long again (so writes keep at least half the writer,
/// and an idle store fills at full speed).
pub const INDEX_BACKFILL_WRITER_SHARE_PERCENT: u32 = 50;

/// What one backfill job did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackfillStep {
    /// Copied this many items; more remain.
    Copied(usize),
    /// Copied this many items and reached the table's end: the index is ACTIVE.
    Finished(usize),
    /// The table or the index is gone, or the index is no longer backfilling.
    Gone,
    /// Nothing copied: the disk is below the watermark (the fill waits for room without
    /// counting as a refused write; deletes give the room back).
    DiskLow,
}

/// Forgets where the backfill of `index` of table `table_id` is (the index is dropped, or
/// filled).
pub(super) fn forget(txn: &LoggedTxn, table_id: u64, index: &str) -> Result<(), redb::Error> {
    forget_key(txn, &index_table_name(table_id, index))
}

/// Forgets the backfill of the index stored as `storage_name` (a global index's, or a TTL
/// index's `t{table id}`).
pub(super) fn forget_key(txn: &LoggedTxn, storage_name: &str) -> Result<(), redb::Error> {
    txn.open_table(INDEX_BACKFILLS)?.remove(storage_name)?;
    Ok(())
}

/// Forgets every backfill of table `table_id`'s indexes (the table is dropped): by the
/// storage names' prefix, so an index the caller's definition does not list yet goes too.
pub(super) fn forget_table(txn: &LoggedTxn, table_id: u64) -> Result<(), redb::Error> {
    let prefix = index_table_name(table_id, "");
    let mut table = txn.open_table(INDEX_BACKFILLS)?;
    let keys: Vec<String> = table
        .range::<&str>(prefix.as_str()..)?
        .map(|entry| entry.map(|(k, _)| k.value().to_string()))
        .take_while(|key| key.as_ref().map_or(true, |k| k.starts_with(&prefix)))
        .collect::<Result<_, _>>()?;
    for key in keys {
        table.remove(key.as_str())?;
    }
    table.remove(ttl_table_name(table_id).as_str())?;
    Ok(())
}

/// The TTL indexes' entries in [`INDEX_BACKFILLS`]: `t{table id}` (a global index's start
/// with `x`).
const TTL_BACKFILLS: std::ops::Range<&str> = "t".."u";

/// Walks one job's worth of a table's live items after the stored key `after` (empty: from
/// the first), at most [`INDEX_BACKFILL_ITEMS_PER_JOB`] records and
/// [`INDEX_BACKFILL_BYTES_PER_JOB`] bytes, calling `copy` with each item's stored key and item
/// (tombstones and undecodable records are passed over, and counted). Returns the records
/// walked and the last key walked, `None` when the walk reached the table's end.
fn walk_items(
    txn: &LoggedTxn,
    table_id: u64,
    after: &[u8],
    mut copy: impl FnMut(&[u8], &Item) -> Result<(), redb::Error>,
) -> Result<(usize, Option<Vec<u8>>), redb::Error> {
    let data = txn.open_table(bytes_table(&data_table_name(table_id)))?;
    let from = if after.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(after)
    };
    let (mut walked, mut bytes, mut last) = (0usize, 0usize, None);
    for entry in data.range::<&[u8]>((from, Bound::Unbounded))? {
        if walked >= INDEX_BACKFILL_ITEMS_PER_JOB || bytes >= INDEX_BACKFILL_BYTES_PER_JOB {
            return Ok((walked, last));
        }
        let (key, value) = entry?;
        walked += 1;
        bytes += value.value().len();
        last = Some(key.value().to_vec());
        match record::decode(value.value()) {
            Ok(record) if !record.tombstone => copy(key.value(), &record.item)?,
            _ => {}
        }
    }
    Ok((walked, None))
}

impl WriteContext<'_> {
    /// Records that the TTL index of `meta` (its TTL just enabled) is to be filled from the
    /// first item. The TTL's status stays ENABLED, as DynamoDB shows it at once; an item not yet
    /// reached expires once the fill reaches it.
    pub fn start_ttl_backfill(&mut self, meta: &TableMeta) -> Result<(), ApiError> {
        let key = ttl_table_name(meta.id);
        let result = self
            .txn
            .open_table(INDEX_BACKFILLS)
            .and_then(|mut t| t.insert(key.as_str(), &[][..]).map(|_| ()).map_err(Into::into));
        result.map_err(|e| self.fail("starting a TTL index backfill", e))?;
        self.shared
            .ttl_backfill_pending
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Copies the next items of one table whose TTL index is being filled into it; `None` when
    /// no TTL index is. Runs in an exclusive job.
    pub fn backfill_ttl_step(&mut self) -> Result<Option<BackfillStep>, ApiError> {
        let found = (|| -> Result<Option<(String, Vec<u8>)>, redb::Error> {
            let table = self.txn.open_table(INDEX_BACKFILLS)?;
            let first = table.range::<&str>(TTL_BACKFILLS)?.next().transpose()?;
            Ok(first.map(|(k, v)| (k.value().to_string(), v.value().to_vec())))
        })();
        let Some((storage_name, after)) = found.map_err(|e| self.fail("reading TTL index backfills", e))? else {
            return Ok(None);
        };
        let table = {
            let catalog = self.shared.catalog.read().expect("catalog lock is never poisoned");
            catalog
                .tables
                .values()
                .find(|t| ttl_table_name(t.id) == storage_name)
                .cloned()
        };
        let Some(table) = table.filter(|t| TtlSpec::active(t.ttl.as_ref()).is_some()) else {
            // The table is gone or its TTL is off: nothing to fill.
            forget_key(self.txn, &storage_name).map_err(|e| self.fail("forgetting a TTL index backfill", e))?;
            return Ok(Some(BackfillStep::Gone));
        };
        if self.low_disk.is_some() {
            return Ok(Some(BackfillStep::DiskLow));
        }
        self.mutations += 1;
        let result = (|| -> Result<(usize, Option<Vec<u8>>), redb::Error> {
            let mut target = self.txn.open_table(bytes_table(&storage_name))?;
            walk_items(self.txn, table.id, &after, |key, item| {
                if let Some(seconds) = ttl_seconds(&table, item) {
                    target.insert(ttl_entry_key(seconds, key).as_slice(), &[][..])?;
                }
                Ok(())
            })
        })();
        let (copied, last) = result.map_err(|e| self.fail("backfilling a TTL index", e))?;
        let result = match &last {
            Some(last) => self
                .txn
                .open_table(INDEX_BACKFILLS)
                .map_err(redb::Error::from)
                .and_then(|mut t| {
                    t.insert(storage_name.as_str(), last.as_slice())
                        .map(|_| ())
                        .map_err(Into::into)
                }),
            None => forget_key(self.txn, &storage_name),
        };
        result.map_err(|e| self.fail("recording a TTL index backfill's progress", e))?;
        Ok(Some(match last {
            Some(_) => BackfillStep::Copied(copied),
            None => BackfillStep::Finished(copied),
        }))
    }

    /// Records that `index` of `meta` (just put with `backfilling`) starts from the first item.
    pub fn start_index_backfill(&mut self, meta: &TableMeta, index: &str) -> Result<(), ApiError> {
        let key = index_table_name(meta.id, index);
        let result = self
            .txn
            .open_table(INDEX_BACKFILLS)
            .and_then(|mut t| t.insert(key.as_str(), &[][..]).map(|_| ()).map_err(Into::into));
        result.map_err(|e| self.fail("starting an index backfill", e))
    }

    /// Copies the next items of `meta`'s table into its backfilling index `index` (see the
    /// module's invariants). Runs in an exclusive job: the definition is read as committed.
    pub fn backfill_index_step(&mut self, meta: &TableMeta, index: &str) -> Result<BackfillStep, ApiError> {
        let Ok(current) = self.latest_table(meta) else {
            return Ok(BackfillStep::Gone);
        };
        let Some(definition) = current.index(index).filter(|i| i.backfilling).cloned() else {
            return Ok(BackfillStep::Gone);
        };
        if self.low_disk.is_some() {
            return Ok(BackfillStep::DiskLow);
        }
        self.mutations += 1;
        let target_name = index_table_name(current.id, index);
        let result = (|| -> Result<(usize, Option<Vec<u8>>, (i64, i64)), redb::Error> {
            let after = self
                .txn
                .open_table(INDEX_BACKFILLS)?
                .get(target_name.as_str())?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            let mut target = self.txn.open_table(bytes_table(&target_name))?;
            let mut added = (0i64, 0i64);
            let (copied, last) = walk_items(self.txn, current.id, &after, |key, item| {
                // An item the index cannot hold (no key attribute, another type, a key too
                // long) is left out, as DynamoDB leaves it out.
                let Some(entry_key) = index_entry_key(current.key_hash, &definition, item, key) else {
                    return Ok(());
                };
                let projected = definition.project(&current.key, item);
                let encoded = serde_json::to_vec(&projected).expect("serialising an item cannot fail");
                if target.insert(entry_key.as_slice(), encoded.as_slice())?.is_none() {
                    added.0 += 1;
                    added.1 += item_size_bytes(&projected) as i64;
                }
                Ok(())
            })?;
            Ok((copied, last, added))
        })();
        let (copied, last, added) = result.map_err(|e| self.fail("backfilling an index", e))?;
        let stats = self.stats.entry(stats_key(current.id, Some(index))).or_default();
        stats.0 += added.0;
        stats.1 += added.1;
        match last {
            Some(last) => {
                let result = self.txn.open_table(INDEX_BACKFILLS).and_then(|mut t| {
                    t.insert(target_name.as_str(), last.as_slice())
                        .map(|_| ())
                        .map_err(Into::into)
                });
                result.map_err(|e| self.fail("recording an index backfill's progress", e))?;
                Ok(BackfillStep::Copied(copied))
            }
            None => {
                let mut next = (*current).clone();
                if let Some(index) = next.indexes.iter_mut().find(|i| i.name == index) {
                    index.backfilling = false;
                }
                self.put_table(next)?;
                forget(self.txn, current.id, index).map_err(|e| self.fail("finishing an index backfill", e))?;
                Ok(BackfillStep::Finished(copied))
            }
        }
    }
}

/// How long the backfill waits after a job that took `took`, with `others` write jobs
/// submitted while it ran, to take at most `share_percent` of the writer: none when no other
/// write wanted it.
pub fn backfill_pause(took: std::time::Duration, others: usize, share_percent: u32) -> std::time::Duration {
    if others == 0 {
        return std::time::Duration::ZERO;
    }
    let share = share_percent.clamp(1, 100);
    took * (100 - share) / share
}

impl Engine {
    /// The indexes being backfilled now: `(table, index)`.
    pub fn backfilling_indexes(&self) -> Vec<(Arc<TableMeta>, String)> {
        self.tables()
            .into_iter()
            .flat_map(|table| {
                let names: Vec<String> = table
                    .indexes
                    .iter()
                    .filter(|i| i.backfilling)
                    .map(|i| i.name.clone())
                    .collect();
                names.into_iter().map(move |name| (Arc::clone(&table), name))
            })
            .collect()
    }

    /// Runs `job` as an exclusive write; then, if other writes came while it ran, waits so
    /// that the backfill takes at most [`INDEX_BACKFILL_WRITER_SHARE_PERCENT`] of the writer.
    /// (Jobs submitted meanwhile, not jobs still queued: the writer takes the queue into its
    /// next batch before this task is even woken, so the queue looks empty.)
    async fn backfill_job<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut WriteContext<'_>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let submitted = || self.shared.jobs_submitted.load(std::sync::atomic::Ordering::Relaxed);
        let before = submitted();
        let started = std::time::Instant::now();
        let result = self.write_exclusive(job).await;
        // Our own job is one of them.
        let others = submitted().saturating_sub(before).saturating_sub(1);
        let pause = backfill_pause(
            started.elapsed(),
            usize::try_from(others).unwrap_or(usize::MAX),
            INDEX_BACKFILL_WRITER_SHARE_PERCENT,
        );
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        result
    }

    /// Runs one backfill job for every backfilling index; returns how many are still
    /// backfilling after it.
    pub async fn backfill_indexes_once(&self) -> Result<usize, ApiError> {
        let mut left = 0;
        // A job that fails (an I/O error) does not hold up the other indexes: the first error
        // is answered once every index had its job.
        let mut failed = None;
        for (table, index) in self.backfilling_indexes() {
            let name = index.clone();
            let step = self
                .backfill_job(move |context| context.backfill_index_step(&table, &name))
                .await;
            match step {
                Ok(BackfillStep::Copied(_)) => left += 1,
                Ok(BackfillStep::Finished(_)) => tracing::info!(index = %index, "index backfilled; it is ACTIVE"),
                Ok(BackfillStep::Gone) => {}
                Ok(BackfillStep::DiskLow) => {
                    tracing::debug!(index = %index, "index backfill waits: the disk is below the watermark")
                }
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        if self
            .shared
            .ttl_backfill_pending
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            let step = self
                .backfill_job(|context| {
                    let step = context.backfill_ttl_step()?;
                    if step.is_none() {
                        // In the job, so a backfill started by an earlier job was seen, and
                        // one started by a later job sets the flag again.
                        context
                            .shared
                            .ttl_backfill_pending
                            .store(false, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(step)
                })
                .await;
            match step {
                // One more pass: another TTL index may be waiting (the next job finds none).
                Ok(Some(BackfillStep::Finished(_))) => {
                    tracing::info!("a TTL index backfilled");
                    left += 1;
                }
                Ok(Some(BackfillStep::Copied(_) | BackfillStep::Gone)) => left += 1,
                Ok(Some(BackfillStep::DiskLow)) => {
                    tracing::debug!("TTL index backfill waits: the disk is below the watermark")
                }
                Ok(None) => {}
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(left),
        }
    }

    /// Backfills every backfilling index to its end (tests, and the loop's inner step).
    pub async fn finish_index_backfills(&self) -> Result<(), ApiError> {
        while self.backfill_indexes_once().await? > 0 {}
        Ok(())
    }

    /// Wakes the backfill loop: an index to backfill was just created.
    pub fn wake_index_backfill(&self) {
        self.shared.index_backfill_wake.notify_one();
    }

    /// Backfills indexes as they are created, forever: the store's background task. A failed
    /// job (a full disk, an I/O error) is tried again after `retry_ms`.
    pub async fn run_index_backfills(&self, retry_ms: u64) {
        loop {
            match self.backfill_indexes_once().await {
                Ok(0) => {
                    let wake = self.shared.index_backfill_wake.notified();
                    // Also a slow tick: an index restored or received while nobody woke us.
                    let _ = tokio::time::timeout(std::time::Duration::from_millis(retry_ms.max(1_000)), wake).await;
                }
                Ok(_) => tokio::task::yield_now().await,
                Err(error) => {
                    tracing::warn!(%error, "index backfill failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(retry_ms)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backfill_pause;
    use std::time::Duration;

    #[test]
    fn the_backfill_yields_the_writer_only_to_waiting_writes_and_by_its_share() {
        let took = Duration::from_millis(12);
        assert_eq!(
            backfill_pause(took, 0, 50),
            Duration::ZERO,
            "an idle store fills at full speed"
        );
        assert_eq!(backfill_pause(took, 3, 50), took, "half the writer: as long again");
        assert_eq!(backfill_pause(took, 1, 25), took * 3);
        assert_eq!(backfill_pause(took, 1, 100), Duration::ZERO);
        // Out-of-range shares are clamped, never a division by zero.
        assert_eq!(backfill_pause(took, 1, 0), took * 99);
        assert_eq!(backfill_pause(took, 1, 250), Duration::ZERO);
    }
}
