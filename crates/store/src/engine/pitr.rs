//! Point-in-time recovery storage: the undo log of a table with PITR enabled.
//!
//! Every item change goes through `WriteContext::store`; on a table whose `pitr` is set, that
//! is also where the change's before-image (the item as it was, or "absent") is appended to the
//! undo log, in the same redb write transaction as the item. A committed write thus always has
//! its undo entry, and a `kill -9` loses neither or both. Tables without PITR pay one
//! `Option` check per write.
//!
//! Table (redb) `pitr_undo`: `(table id, sequence)` → [`encode_entry`]: the batch's change time
//! (`u64` ms, big-endian), the stored key's length (`u32`, big-endian), the stored key, and the
//! before-image as JSON (nothing when the item did not exist). Sequence numbers come from one
//! counter (`settings.pitr_seq`).
//!
//! Invariants:
//! - change times never decrease along the sequence (a batch's time is `max(now, last time)`,
//!   kept in `settings.pitr_last_ms`), and every change of one batch (so of one transaction)
//!   has the same time, so a restore never splits a TransactWriteItems;
//! - the table's state at time `T` is its current state with, for every key changed after `T`,
//!   the before-image of its first change after `T` put back; that needs every entry with a
//!   time after `T`, so the earliest restorable time is never before the newest entry trimmed
//!   (`settings.pitr_trimmed_ms/ID`), nor before PITR was enabled, nor before the recovery
//!   window;
//! - trimming (the background sweep, [`Engine::trim_pitr_once`]) removes entries older than the
//!   window, entries from before the current enablement, entries of tables without PITR (it
//!   was disabled, or the table deleted), and, over the per-table byte cap, the oldest entries;
//!   each trimmed entry's time raises the table's trimmed mark first.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::config::{overlay, parse_bytes, positive_from};

pub(crate) const PITR_UNDO: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("pitr_undo");
const PITR_SEQ: &str = "pitr_seq";
const PITR_LAST_MS: &str = "pitr_last_ms";
/// Undo entries removed per sweep at most (the sweep is one write transaction).
pub const PITR_TRIM_ENTRIES_PER_SWEEP_MAX: usize = 10_000;
/// Default of the per-table undo log bound (`SWITCHYARD_PITR_UNDO_BYTES_MAX`).
pub const PITR_UNDO_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// Default of how far behind the present LatestRestorableDateTime is
/// (`SWITCHYARD_PITR_RESTORABLE_LAG_MS`). DynamoDB's is about 5 minutes; a restore here is
/// exact up to the moment it is asked for (it waits for the writes in flight), so one second.
pub const PITR_RESTORABLE_LAG_MS_DEFAULT: u64 = 1000;
pub const ENV_PITR_UNDO_BYTES_MAX: &str = "SWITCHYARD_PITR_UNDO_BYTES_MAX";
pub const ENV_PITR_RESTORABLE_LAG_MS: &str = "SWITCHYARD_PITR_RESTORABLE_LAG_MS";
const DAY_MS: u64 = 24 * 3600 * 1000;

/// Bounds of the undo log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PitrLimits {
    /// Undo bytes kept per table; the oldest entries beyond are trimmed (the earliest
    /// restorable time moves forward).
    pub undo_bytes_max: u64,
    /// LatestRestorableDateTime is this long before now (at least 1 ms: a restore to `T`
    /// waits for writes stamped up to its own arrival, which must be later than `T`).
    pub restorable_lag_ms: u64,
}

impl Default for PitrLimits {
    fn default() -> PitrLimits {
        PitrLimits {
            undo_bytes_max: PITR_UNDO_BYTES_MAX_DEFAULT,
            restorable_lag_ms: PITR_RESTORABLE_LAG_MS_DEFAULT,
        }
    }
}

/// The undo log's bounds a `[store]` section sets (`None`: not in the file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PitrLimitKeys {
    pub undo_bytes_max: Option<u64>,
    pub restorable_lag_ms: Option<u64>,
}

impl PitrLimits {
    /// The defaults with the environment's overrides (`lookup`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<PitrLimits, String> {
        PitrLimits::default().overridden_by(lookup)
    }

    /// The defaults, then the `[store]` file's keys, then the environment (`lookup`) over both.
    pub fn from_file_and_lookup(
        file: &PitrLimitKeys,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<PitrLimits, String> {
        let mut limits = PitrLimits::default();
        overlay(&mut limits.undo_bytes_max, file.undo_bytes_max);
        overlay(&mut limits.restorable_lag_ms, file.restorable_lag_ms);
        limits.overridden_by(lookup)
    }

    fn overridden_by(mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<PitrLimits, String> {
        // A byte size as the file's `pitr_undo_bytes_max` takes it (units, the same least
        // bound), so the variable cannot set what the file refuses.
        if let Some(text) = lookup(ENV_PITR_UNDO_BYTES_MAX) {
            self.undo_bytes_max = parse_bytes(&text).map_err(|problem| {
                format!(
                    "{ENV_PITR_UNDO_BYTES_MAX}={text:?}: {problem}; set it to a byte size such as \"256MiB\" (or unset it for the default)"
                )
            })?;
        }
        overlay(
            &mut self.restorable_lag_ms,
            positive_from(&lookup, ENV_PITR_RESTORABLE_LAG_MS)?,
        );
        Ok(self)
    }
}

fn bytes_key(table_id: u64) -> String {
    format!("pitr_bytes/{table_id}")
}

fn trimmed_key(table_id: u64) -> String {
    format!("pitr_trimmed_ms/{table_id}")
}

fn table_range(table_id: u64) -> std::ops::RangeInclusive<(u64, u64)> {
    (table_id, 0)..=(table_id, u64::MAX)
}

/// One undo entry's stored form.
pub(crate) fn encode_entry(at_ms: u64, key: &[u8], before: Option<&Item>) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + key.len() + 64);
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    if let Some(item) = before {
        serde_json::to_writer(&mut out, item).expect("serialising an item into a Vec cannot fail");
    }
    out
}

fn entry_time(bytes: &[u8]) -> Result<u64, String> {
    bytes
        .get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| "an undo entry shorter than its header".to_string())
}

/// An undo entry's time, stored key and before-image.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<(u64, Vec<u8>, Option<Item>), String> {
    let at = entry_time(bytes)?;
    let length = bytes
        .get(8..12)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| "an undo entry shorter than its header".to_string())?;
    let key = bytes
        .get(12..12 + length)
        .ok_or_else(|| "an undo entry shorter than its key".to_string())?;
    let rest = &bytes[12 + length..];
    let before = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(rest).map_err(|e| format!("an undo entry's before-image: {e}"))?)
    };
    Ok((at, key.to_vec(), before))
}

fn read_setting(settings: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, redb::Error> {
    Ok(settings.get(key)?.map(|v| v.value()).unwrap_or(0))
}

impl WriteContext<'_> {
    /// Appends the before-image of one change to the undo log of a table with PITR.
    pub(super) fn pitr_append(
        &mut self,
        table: &TableMeta,
        key: &[u8],
        old: Option<&Item>,
        new: Option<&Item>,
    ) -> Result<(), redb::Error> {
        if table.pitr.is_none() || old == new {
            return Ok(());
        }
        let mut settings = self.txn.open_table(SETTINGS)?;
        let at = match self.pitr_ms {
            Some(at) => at,
            None => {
                let last = read_setting(&*settings, PITR_LAST_MS)?;
                let at = self.shared.clock.now_unix_ms().max(last);
                if at != last {
                    settings.insert(PITR_LAST_MS, at)?;
                }
                self.pitr_ms = Some(at);
                at
            }
        };
        let value = encode_entry(at, key, old);
        let seq = read_setting(&*settings, PITR_SEQ)? + 1;
        settings.insert(PITR_SEQ, seq)?;
        let bytes = bytes_key(table.id);
        let total = read_setting(&*settings, &bytes)? + value.len() as u64;
        settings.insert(bytes.as_str(), total)?;
        drop(settings);
        self.txn
            .open_table(PITR_UNDO)?
            .insert((table.id, seq), value.as_slice())?;
        Ok(())
    }

    /// One trim sweep (see the module's invariants); returns the entries removed.
    fn trim_pitr(&mut self, plan: &[TrimPlan]) -> Result<usize, redb::Error> {
        let mut budget = PITR_TRIM_ENTRIES_PER_SWEEP_MAX;
        let mut removed = 0;
        for plan in plan {
            if budget == 0 {
                break;
            }
            let mut undo = self.txn.open_table(PITR_UNDO)?;
            let mut settings = self.txn.open_table(SETTINGS)?;
            let mut bytes = read_setting(&*settings, &bytes_key(plan.table_id))?;
            let mut trimmed_ms = read_setting(&*settings, &trimmed_key(plan.table_id))?;
            let mut gone = Vec::new();
            for entry in undo.range(table_range(plan.table_id))? {
                if gone.len() >= budget {
                    break;
                }
                let (key, value) = entry?;
                let at = entry_time(value.value()).map_err(redb::Error::Corrupted)?;
                let keep = match plan.keep_after_ms {
                    None => false,
                    Some(after) => at > after && bytes <= plan.bytes_max,
                };
                if keep {
                    break;
                }
                bytes = bytes.saturating_sub(value.value().len() as u64);
                trimmed_ms = trimmed_ms.max(at);
                gone.push(key.value().1);
            }
            budget -= gone.len();
            removed += gone.len();
            for seq in &gone {
                undo.remove((plan.table_id, *seq))?;
            }
            let empty = undo.range(table_range(plan.table_id))?.next().is_none();
            if plan.keep_after_ms.is_none() && empty {
                settings.remove(bytes_key(plan.table_id).as_str())?;
                settings.remove(trimmed_key(plan.table_id).as_str())?;
            } else {
                settings.insert(bytes_key(plan.table_id).as_str(), bytes)?;
                settings.insert(trimmed_key(plan.table_id).as_str(), trimmed_ms)?;
            }
        }
        Ok(removed)
    }
}

/// What one sweep trims of one table's undo log.
#[derive(Clone, Debug)]
struct TrimPlan {
    table_id: u64,
    /// Entries at or before this time go; `None`: all of them (no PITR on the table).
    keep_after_ms: Option<u64>,
    /// The oldest entries go while the table's undo bytes are above this.
    bytes_max: u64,
}

/// What a point-in-time restore reads from one snapshot.
pub struct PitrView {
    /// The earliest time the table can be restored to, as of the snapshot (ms).
    pub earliest_ms: u64,
    /// For every key changed after the restore time: its before-image at that time.
    pub overrides: HashMap<Vec<u8>, Option<Item>>,
}

impl Snapshot {
    /// The time of the newest change in the undo log (any table); 0 before the first.
    pub fn pitr_last_ms(&self) -> Result<u64, ApiError> {
        let settings = self
            .txn
            .open_table(SETTINGS)
            .map_err(|e| storage_error("opening settings", e))?;
        read_setting(&settings, PITR_LAST_MS).map_err(|e| storage_error("reading settings", e))
    }

    /// The earliest restorable time of `table` (with PITR enabled) at `now_ms`.
    pub fn pitr_earliest_ms(&self, table: &TableMeta, now_ms: u64) -> Result<u64, ApiError> {
        let Some(pitr) = table.pitr else {
            return Ok(now_ms);
        };
        let trimmed = {
            let settings = self
                .txn
                .open_table(SETTINGS)
                .map_err(|e| storage_error("opening settings", e))?;
            read_setting(&settings, &trimmed_key(table.id)).map_err(|e| storage_error("reading settings", e))?
        };
        let window = now_ms.saturating_sub(u64::from(pitr.recovery_period_days) * DAY_MS);
        Ok(pitr.enabled_at_ms.max(window).max(trimmed))
    }

    /// The before-images that turn the snapshot's current `table` into its state at `at_ms`.
    /// Errors if the undo log no longer reaches back to `at_ms`.
    pub fn pitr_view(&self, table: &TableMeta, at_ms: u64, now_ms: u64) -> Result<PitrView, ApiError> {
        let earliest_ms = self.pitr_earliest_ms(table, now_ms)?;
        let mut overrides = HashMap::new();
        let undo = match self.txn.open_table(PITR_UNDO) {
            Ok(undo) => undo,
            Err(TableError::TableDoesNotExist(_)) => return Ok(PitrView { earliest_ms, overrides }),
            Err(e) => return Err(storage_error("opening the undo log", e)),
        };
        // Newest first: the last before-image seen for a key is that of its first change after
        // `at_ms`, its value at `at_ms`.
        for entry in undo
            .range(table_range(table.id))
            .map_err(|e| storage_error("reading the undo log", e))?
            .rev()
        {
            let (_, value) = entry.map_err(|e| storage_error("reading the undo log", e))?;
            let (at, key, before) =
                decode_entry(value.value()).map_err(|e| storage_error("decoding the undo log", e))?;
            if at <= at_ms {
                break;
            }
            overrides.insert(key, before);
        }
        Ok(PitrView { earliest_ms, overrides })
    }

    /// Undo bytes held for the table (as counted in the same transaction as the entries).
    pub fn pitr_undo_bytes(&self, table_id: u64) -> Result<u64, ApiError> {
        let settings = self
            .txn
            .open_table(SETTINGS)
            .map_err(|e| storage_error("opening settings", e))?;
        read_setting(&settings, &bytes_key(table_id)).map_err(|e| storage_error("reading settings", e))
    }
}

impl Engine {
    /// The undo log's bounds in force.
    pub fn pitr_limits(&self) -> PitrLimits {
        *self.shared.pitr_limits.read().expect("limits lock is never poisoned")
    }

    /// Changes the undo log's bounds (tests use small ones).
    pub fn set_pitr_limits(&self, limits: PitrLimits) {
        *self.shared.pitr_limits.write().expect("limits lock is never poisoned") = limits;
    }

    /// Waits until every write submitted before this call has committed (a restore to a
    /// time before now then sees every change stamped up to that time).
    pub async fn write_barrier(&self) -> Result<(), ApiError> {
        self.write(|_| Ok(())).await
    }

    /// One undo-log trim sweep; runs a write only when something is due. Returns the entries
    /// removed.
    pub async fn trim_pitr_once(&self) -> Result<usize, ApiError> {
        let now_ms = self.sweep_now_ms();
        let limits = self.pitr_limits();
        let tables: HashMap<u64, Arc<TableMeta>> = self.tables().into_iter().map(|t| (t.id, t)).collect();
        let plan = {
            let snapshot = self.snapshot()?;
            let undo = match snapshot.txn.open_table(PITR_UNDO) {
                Ok(undo) => undo,
                Err(TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(storage_error("opening the undo log", e)),
            };
            let settings = snapshot
                .txn
                .open_table(SETTINGS)
                .map_err(|e| storage_error("opening settings", e))?;
            let mut plan = Vec::new();
            let mut seen = HashSet::new();
            let mut next = 0u64;
            loop {
                let first = undo
                    .range((next, 0)..)
                    .map_err(|e| storage_error("reading the undo log", e))?
                    .next()
                    .transpose()
                    .map_err(|e| storage_error("reading the undo log", e))?;
                let Some((key, value)) = first else {
                    break;
                };
                let table_id = key.value().0;
                if !seen.insert(table_id) {
                    break;
                }
                let oldest = entry_time(value.value()).map_err(|e| storage_error("decoding the undo log", e))?;
                let bytes =
                    read_setting(&settings, &bytes_key(table_id)).map_err(|e| storage_error("reading settings", e))?;
                let keep_after_ms = tables.get(&table_id).and_then(|t| t.pitr).map(|pitr| {
                    let window = now_ms.saturating_sub(u64::from(pitr.recovery_period_days) * DAY_MS);
                    window.max(pitr.enabled_at_ms.saturating_sub(1))
                });
                let due = match keep_after_ms {
                    None => true,
                    Some(after) => oldest <= after || bytes > limits.undo_bytes_max,
                };
                if due {
                    plan.push(TrimPlan {
                        table_id,
                        keep_after_ms,
                        bytes_max: limits.undo_bytes_max,
                    });
                }
                match table_id.checked_add(1) {
                    Some(n) => next = n,
                    None => break,
                }
            }
            plan
        };
        if plan.is_empty() {
            return Ok(0);
        }
        self.write(move |context| {
            let result = context.trim_pitr(&plan);
            result.map_err(|e| context.fail("trimming the undo log", e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let mut item = Item::new();
        item.insert("pk".into(), AttributeValue::S("a".into()));
        for before in [None, Some(&item)] {
            let bytes = encode_entry(42, b"key", before);
            let (at, key, decoded) = decode_entry(&bytes).expect("decodes");
            assert_eq!((at, key.as_slice(), decoded.as_ref()), (42, &b"key"[..], before));
        }
        assert!(decode_entry(&[0; 10]).is_err());
        assert!(decode_entry(&[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 9, 1]).is_err());
    }

    #[test]
    fn limits_come_from_the_environment() {
        let limits = PitrLimits::from_lookup(|name| (name == ENV_PITR_RESTORABLE_LAG_MS).then(|| "5".to_string()))
            .expect("valid");
        assert_eq!(limits.restorable_lag_ms, 5);
        assert_eq!(limits.undo_bytes_max, PITR_UNDO_BYTES_MAX_DEFAULT);
        let error = PitrLimits::from_lookup(|name| (name == ENV_PITR_UNDO_BYTES_MAX).then(|| "0".to_string()))
            .expect_err("zero");
        assert!(error.contains(ENV_PITR_UNDO_BYTES_MAX), "{error}");
        // The variable takes what the file's key takes, and refuses what it refuses.
        let from_env = |value: &str| {
            let value = value.to_string();
            PitrLimits::from_lookup(move |name| (name == ENV_PITR_UNDO_BYTES_MAX).then(|| value.clone()))
        };
        assert_eq!(from_env("64MiB").expect("a unit").undo_bytes_max, 64 * 1024 * 1024);
        assert_eq!(from_env("8192").expect("bytes").undo_bytes_max, 8192);
        let error = from_env("100").expect_err("below the file's least bound");
        assert!(
            error.contains("smallest bound") && error.contains(ENV_PITR_UNDO_BYTES_MAX),
            "{error}"
        );
    }
}
