//! The durable audit log: append-only JSON lines, one fsync per record, rotated by size.
//!
//! Every state-changing observation, decision, runbook step and alert is a record with its
//! reason and generation. The log is also the controller's memory across restarts: `restore`
//! reads it back to find the highest generation ever used, the last placement a runbook
//! applied, and a runbook that started but never finished (rolled forward with a new
//! generation), and the alert incidents still open (`alert` records without a `resolved`
//! after them: resolved at the next start once their condition no longer holds). Each file
//! starts with a checkpoint of that state, so rotation loses nothing the restore needs.
//!
//! Alerts are delivered asynchronously, after their record is written: the log also says which
//! were delivered. A raise that opens an incident is written `delivery_pending`, and a
//! `delivered` record follows once its trigger finished on every channel it goes to; a resolve
//! is written `delivery_pending` and kept in the checkpoint's `resolving` until its
//! `delivered` record. A restart pages again an incident whose trigger was not recorded
//! delivered and sends again a resolve not recorded delivered: a lost page is far worse than a
//! duplicate. Records written before delivery was recorded (no `delivery_pending`) read as
//! delivered, so an upgrade does not page every open incident again.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::{
    FAILOVER_WINDOW_MS, Generation, Manual, Note, Placement, RegionId, RunbookOutcome, TransitionKind,
};
use crate::ha::TRANSITION_TIMES_MAX;

/// Records kept in memory for `GET /v1/events`.
pub const RECENT_RECORDS_MAX: usize = 1000;
/// A line longer than this is not a record (torn or foreign) and is skipped on restore.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;
/// Resolves whose delivery is not recorded, kept in the checkpoint at most (the oldest are
/// forgotten beyond): the alert queue's own bound on open incidents.
pub const RESOLVES_PENDING_MAX: usize = providers::alerts::queue::INCIDENTS_MAX;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// Wall-clock milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub generation: Generation,
    #[serde(flatten)]
    pub entry: Entry,
}

/// The state a restart needs, written at the top of every file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub generation: Generation,
    pub observed: Option<Placement>,
    /// The generation that applied `observed`.
    #[serde(default)]
    pub observed_generation: Generation,
    pub interrupted: Option<Placement>,
    /// The move the interrupted runbook made (rolled forward as that kind of move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_kind: Option<TransitionKind>,
    pub preferred: Option<RegionId>,
    pub paused: bool,
    /// When the last transition was decided (wall-clock ms): a restart keeps `min_hold_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_at_ms: Option<u64>,
    /// When the recent automatic transitions were decided (wall-clock ms, at most
    /// `ha::TRANSITION_TIMES_MAX`, none older than an hour before the last): a restart keeps
    /// `failovers_per_hour_max`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitions_at_ms: Vec<u64>,
    /// The alert incidents raised and not resolved, by alert key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub open_alerts: BTreeMap<String, OpenAlert>,
    /// Resolves written and not recorded delivered, by dedup key (at most
    /// [`RESOLVES_PENDING_MAX`]): a restart sends them again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resolving: BTreeMap<String, PendingResolve>,
}

/// An alert incident still open, as the audit log recorded its last raise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenAlert {
    /// Its dedup key (absent in records written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<String>,
    pub generation: Generation,
    pub at_ms: u64,
    pub message: String,
    /// Whether its trigger was recorded delivered on every channel. Absent in checkpoints
    /// written before delivery was recorded: read as delivered (an upgrade does not page every
    /// open incident again).
    #[serde(default = "delivered_unless_recorded")]
    pub delivered: bool,
}

/// A resolve written to the log whose delivery is not recorded yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingResolve {
    /// The condition it ends.
    pub key: String,
    pub generation: Generation,
    pub at_ms: u64,
}

fn delivered_unless_recorded() -> bool {
    true
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Checkpoint {
        state: Checkpoint,
    },
    ControllerStarted {
        version: String,
    },
    Engine {
        note: Note,
    },
    Step {
        step: String,
        attempt: u32,
        /// `ok`, `skipped`, `error` or `fenced`.
        outcome: String,
        detail: String,
        duration_ms: u64,
    },
    Alert {
        key: String,
        message: String,
        /// The incident's dedup key, the same in every channel (PagerDuty's `dedup_key`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<String>,
        /// This raise opened the incident and its trigger is being delivered: it counts as
        /// delivered only once a `delivered` record follows. Absent (older records, updates,
        /// adopted incidents): delivered.
        #[serde(default, skip_serializing_if = "is_false")]
        delivery_pending: bool,
    },
    Resolved {
        key: String,
        /// The resolved incident's dedup key (absent when none was open, and in older records).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident: Option<String>,
        /// The resolve is being delivered: a restart sends it again unless a `delivered`
        /// record follows. Absent in older records: delivered.
        #[serde(default, skip_serializing_if = "is_false")]
        delivery_pending: bool,
    },
    /// The trigger (`resolve` false) or resolve of incident `incident` of condition `key`
    /// finished on every channel it goes to: delivered, or given up on.
    Delivered {
        key: String,
        incident: String,
        #[serde(default)]
        resolve: bool,
    },
    Verdict {
        region: String,
        verdict: String,
        reason: String,
    },
    /// With `[controller.ha]`: this member started or stopped leading (`leading`, `stepped_down`).
    Leadership {
        event: String,
        detail: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The open log.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    bytes: u64,
    bytes_max: u64,
    files_kept: u32,
    seq: u64,
    state: Checkpoint,
    recent: VecDeque<AuditRecord>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn rotated(path: &Path, index: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

impl AuditLog {
    /// Opens (creating) the log, restores the state from it and its rotated files.
    pub fn open(path: &Path, bytes_max: u64, files_kept: u32) -> Result<AuditLog, AuditError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        let (state, seq, recent) = restore(path, files_kept)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error(path))?;
        let bytes = file.metadata().map_err(io_error(path))?.len();
        Ok(AuditLog {
            path: path.to_path_buf(),
            file,
            bytes,
            bytes_max,
            files_kept,
            seq,
            state,
            recent,
        })
    }

    /// What a restart restores.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.state
    }

    /// Appends one record and fsyncs it; returns it.
    pub fn append(&mut self, at_ms: u64, generation: Generation, entry: Entry) -> Result<AuditRecord, AuditError> {
        let encode = |record: &AuditRecord| {
            let mut line = serde_json::to_vec(record).expect("audit records always serialize");
            line.push(b'\n');
            line
        };
        let mut record = AuditRecord {
            seq: self.seq + 1,
            at_ms,
            generation,
            entry,
        };
        let mut line = encode(&record);
        // Rotate first: the new file's checkpoint holds the state before this record, and the
        // record follows it, so a restart folds the record in once (a checkpoint that already
        // held it, followed by it, counted a failover twice toward the hourly limit).
        if self.bytes > 0 && self.bytes + line.len() as u64 > self.bytes_max {
            self.rotate(at_ms)?;
            record.seq = self.seq + 1;
            line = encode(&record);
        }
        self.seq = record.seq;
        apply(&mut self.state, &record);
        self.write_line(&line)?;
        self.recent.push_back(record.clone());
        while self.recent.len() > RECENT_RECORDS_MAX {
            self.recent.pop_front();
        }
        Ok(record)
    }

    fn write_line(&mut self, line: &[u8]) -> Result<(), AuditError> {
        self.file.write_all(line).map_err(io_error(&self.path))?;
        self.file.sync_data().map_err(io_error(&self.path))?;
        self.bytes += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self, at_ms: u64) -> Result<(), AuditError> {
        let oldest = rotated(&self.path, self.files_kept.max(1));
        if oldest.exists() {
            std::fs::remove_file(&oldest).map_err(io_error(&oldest))?;
        }
        for index in (1..self.files_kept.max(1)).rev() {
            let from = rotated(&self.path, index);
            if from.exists() {
                let to = rotated(&self.path, index + 1);
                std::fs::rename(&from, &to).map_err(io_error(&from))?;
            }
        }
        let first = rotated(&self.path, 1);
        std::fs::rename(&self.path, &first).map_err(io_error(&self.path))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io_error(&self.path))?;
        self.bytes = 0;
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty())
            && let Ok(dir) = File::open(parent)
        {
            let _ = dir.sync_all();
        }
        self.seq += 1;
        let record = AuditRecord {
            seq: self.seq,
            at_ms,
            generation: self.state.generation,
            entry: Entry::Checkpoint {
                state: self.state.clone(),
            },
        };
        let mut line = serde_json::to_vec(&record).expect("audit records always serialize");
        line.push(b'\n');
        self.write_line(&line)
    }

    /// The latest records, oldest first, at most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<AuditRecord> {
        let skip = self.recent.len().saturating_sub(limit);
        self.recent.iter().skip(skip).cloned().collect()
    }
}

/// Folds one record into the restart state.
fn apply(state: &mut Checkpoint, record: &AuditRecord) {
    state.generation = state.generation.max(record.generation);
    match &record.entry {
        Entry::Checkpoint { state: checkpoint } => {
            let generation = state.generation.max(checkpoint.generation);
            *state = checkpoint.clone();
            state.generation = generation;
        }
        Entry::Engine { note } => match note {
            Note::Decision { kind, automatic, .. } if *kind != TransitionKind::Initial => {
                let at = record.at_ms;
                state.last_transition_at_ms = Some(state.last_transition_at_ms.map_or(at, |last| last.max(at)));
                if *automatic {
                    state.transitions_at_ms.push(at);
                    state
                        .transitions_at_ms
                        .retain(|&t| at.saturating_sub(t) < FAILOVER_WINDOW_MS);
                    let skip = state.transitions_at_ms.len().saturating_sub(TRANSITION_TIMES_MAX);
                    state.transitions_at_ms.drain(..skip);
                }
            }
            Note::RunbookStarted(order) => {
                state.generation = state.generation.max(order.generation);
                state.interrupted = Some(order.to.clone());
                state.interrupted_kind = Some(order.move_kind());
            }
            Note::RunbookFinished {
                to,
                outcome,
                generation,
            } => {
                if *outcome == RunbookOutcome::Succeeded {
                    state.observed = Some(to.clone());
                    state.observed_generation = *generation;
                    state.interrupted = None;
                    state.interrupted_kind = None;
                } else if let RunbookOutcome::Fenced { .. } = outcome {
                    state.interrupted = None;
                    state.interrupted_kind = None;
                }
                // A failed runbook stays the intent: it is rolled forward.
            }
            Note::Manual {
                command,
                accepted: true,
                ..
            } => match command {
                Manual::Pause => state.paused = true,
                Manual::Resume => state.paused = false,
                Manual::Switchover { to } => state.preferred = Some(to.clone()),
                Manual::Failback => state.preferred = None,
                Manual::Failover { .. } | Manual::Acknowledge => {}
            },
            _ => {}
        },
        Entry::Alert {
            key,
            message,
            incident,
            delivery_pending,
        } => {
            let open = state.open_alerts.entry(key.clone()).or_insert_with(|| OpenAlert {
                incident: incident.clone(),
                generation: record.generation,
                at_ms: record.at_ms,
                message: String::new(),
                delivered: !*delivery_pending,
            });
            // An update keeps the incident it updates, and whether its trigger was delivered.
            if open.incident.is_none() {
                open.incident.clone_from(incident);
            }
            open.message.clone_from(message);
            // A trigger under the dedup key of a resolve still pending follows that resolve on
            // every channel: the resolve must not be sent again after it (it would close the
            // incident this trigger opens).
            if let Some(incident) = incident {
                state.resolving.remove(incident);
            }
        }
        Entry::Resolved {
            key,
            incident,
            delivery_pending,
        } => {
            state.open_alerts.remove(key);
            if let (Some(incident), true) = (incident, *delivery_pending) {
                state.resolving.insert(
                    incident.clone(),
                    PendingResolve {
                        key: key.clone(),
                        generation: record.generation,
                        at_ms: record.at_ms,
                    },
                );
                while state.resolving.len() > RESOLVES_PENDING_MAX {
                    let oldest = state
                        .resolving
                        .iter()
                        .min_by_key(|(_, pending)| pending.at_ms)
                        .map(|(incident, _)| incident.clone());
                    let Some(oldest) = oldest else { break };
                    state.resolving.remove(&oldest);
                }
            }
        }
        Entry::Delivered { key, incident, resolve } => {
            if *resolve {
                state.resolving.remove(incident);
            } else if let Some(open) = state.open_alerts.get_mut(key)
                && open.incident.as_deref() == Some(incident.as_str())
            {
                open.delivered = true;
            }
        }
        _ => {}
    }
}

/// Reads the rotated files oldest first, then the current one. Torn or foreign lines (a crash
/// in the middle of a write) are skipped.
fn restore(path: &Path, files_kept: u32) -> Result<(Checkpoint, u64, VecDeque<AuditRecord>), AuditError> {
    let mut files: Vec<PathBuf> = (1..=files_kept.max(1)).rev().map(|i| rotated(path, i)).collect();
    files.push(path.to_path_buf());
    let mut state = Checkpoint::default();
    let mut seq = 0;
    let mut recent = VecDeque::new();
    for file in files {
        let handle = match File::open(&file) {
            Ok(handle) => handle,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io_error(&file)(error)),
        };
        let mut reader = BufReader::new(handle);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).map_err(io_error(&file))?;
            if read == 0 {
                break;
            }
            if line.len() > RECORD_BYTES_MAX {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<AuditRecord>(&line) else {
                tracing::warn!(file = %file.display(), "skipping an unreadable audit line (torn write?)");
                continue;
            };
            seq = seq.max(record.seq);
            apply(&mut state, &record);
            recent.push_back(record);
            while recent.len() > RECENT_RECORDS_MAX {
                recent.pop_front();
            }
        }
    }
    Ok((state, seq, recent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{RunbookOrder, TransitionKind};

    fn order(generation: u64, to: &str) -> Note {
        Note::RunbookStarted(RunbookOrder {
            generation: Generation(generation),
            kind: TransitionKind::Failover,
            from: None,
            to: Placement::single(RegionId::new(to)),
            reason: "test".into(),
            force_data_loss: false,
            continues: None,
        })
    }

    fn finished(generation: u64, to: &str) -> Note {
        Note::RunbookFinished {
            generation: Generation(generation),
            to: Placement::single(RegionId::new(to)),
            outcome: RunbookOutcome::Succeeded,
        }
    }

    #[test]
    fn restore_finds_generation_observed_and_interrupted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        {
            let mut log = AuditLog::open(&path, 1 << 20, 3).expect("open");
            log.append(1, Generation(1), Entry::Engine { note: order(1, "a") })
                .expect("append");
            log.append(2, Generation(1), Entry::Engine { note: finished(1, "a") })
                .expect("append");
            log.append(3, Generation(2), Entry::Engine { note: order(2, "b") })
                .expect("append");
        }
        // A torn last line, as a crash mid-write leaves it.
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(b"{\"seq\":4,\"at_ms\":4,\"gen").expect("write");
        drop(file);
        let log = AuditLog::open(&path, 1 << 20, 3).expect("reopen");
        let state = log.checkpoint();
        assert_eq!(state.generation, Generation(2));
        assert_eq!(state.observed, Some(Placement::single(RegionId::new("a"))));
        assert_eq!(state.interrupted, Some(Placement::single(RegionId::new("b"))));
        assert_eq!(state.interrupted_kind, Some(TransitionKind::Failover));
        assert_eq!(log.recent(10).len(), 3);
    }

    #[test]
    fn an_interrupted_retry_of_a_failback_is_restored_as_a_failback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        {
            let mut log = AuditLog::open(&path, 1 << 20, 3).expect("open");
            let retry = Note::RunbookStarted(RunbookOrder {
                generation: Generation(4),
                kind: TransitionKind::Retry,
                from: None,
                to: Placement::single(RegionId::new("a")),
                reason: "test".into(),
                force_data_loss: false,
                continues: Some(TransitionKind::Failback),
            });
            log.append(1, Generation(4), Entry::Engine { note: retry })
                .expect("append");
        }
        let log = AuditLog::open(&path, 1 << 20, 3).expect("reopen");
        assert_eq!(log.checkpoint().interrupted_kind, Some(TransitionKind::Failback));
        drop(log);
        // Finishing the move clears it.
        let mut log = AuditLog::open(&path, 1 << 20, 3).expect("reopen");
        log.append(2, Generation(4), Entry::Engine { note: finished(4, "a") })
            .expect("append");
        assert_eq!(log.checkpoint().interrupted_kind, None);
    }

    #[test]
    fn rotation_bounds_files_and_keeps_the_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 4096, 2).expect("open");
        for g in 1..=200u64 {
            log.append(g, Generation(g), Entry::Engine { note: order(g, "a") })
                .expect("append");
            log.append(g, Generation(g), Entry::Engine { note: finished(g, "a") })
                .expect("append");
        }
        log.append(
            201,
            Generation(200),
            Entry::Engine {
                note: Note::Manual {
                    command: Manual::Switchover { to: RegionId::new("b") },
                    accepted: true,
                    reason: "test".into(),
                },
            },
        )
        .expect("append");
        drop(log);
        assert!(rotated(&path, 1).exists());
        assert!(rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists(), "only files_kept rotated files remain");
        for file in [path.clone(), rotated(&path, 1)] {
            let size = std::fs::metadata(&file).expect("stat").len();
            assert!(size <= 4096 + 1024, "{} is {size} bytes", file.display());
        }
        let log = AuditLog::open(&path, 4096, 2).expect("reopen");
        assert_eq!(log.checkpoint().generation, Generation(200));
        assert_eq!(log.checkpoint().interrupted, None);
        assert_eq!(log.checkpoint().preferred, Some(RegionId::new("b")));
    }

    fn decision(automatic: bool) -> Note {
        Note::Decision {
            kind: TransitionKind::Failover,
            from: Some(Placement::single(RegionId::new("a"))),
            to: Placement::single(RegionId::new("b")),
            reason: "test".into(),
            automatic,
        }
    }

    /// A decision that is the first record of a rotated file counts once after a restart.
    #[test]
    fn a_decision_at_the_rotation_boundary_counts_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let at = 10_000;
        {
            let mut log = AuditLog::open(&path, 4096, 3).expect("open");
            let mut g = 1;
            // Fill the file to just below its bound, then append a decision that rotates it.
            loop {
                let before = rotated(&path, 1).exists();
                log.append(at, Generation(g), Entry::Engine { note: decision(true) })
                    .expect("append");
                if !before && rotated(&path, 1).exists() {
                    break;
                }
                g += 1;
                assert!(g < 1_000, "the log never rotated");
            }
            let counted = log.checkpoint().transitions_at_ms.len();
            assert_eq!(counted as u64, g, "in memory: one per decision");
        }
        let log = AuditLog::open(&path, 4096, 3).expect("reopen");
        let restored = log.checkpoint().transitions_at_ms.len() as u64;
        let written = std::fs::read_to_string(&path).expect("read").lines().count() as u64;
        assert_eq!(
            written, 2,
            "the new file: the checkpoint, then the decision that rotated it"
        );
        let before = std::fs::read_to_string(rotated(&path, 1))
            .expect("read")
            .lines()
            .count() as u64;
        assert_eq!(restored, before + 1, "every decision once, the boundary one too");
    }

    #[test]
    fn the_hold_timers_survive_a_restart_and_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let hour = FAILOVER_WINDOW_MS;
        {
            let mut log = AuditLog::open(&path, 4096, 2).expect("open");
            // An automatic failover more than an hour before the last one: out of the window.
            log.append(1_000, Generation(1), Entry::Engine { note: decision(true) })
                .expect("append");
            log.append(1_000 + hour, Generation(2), Entry::Engine { note: decision(true) })
                .expect("append");
            // An operator's decision: a transition for the hold, not for the hourly limit.
            log.append(2_000 + hour, Generation(3), Entry::Engine { note: decision(false) })
                .expect("append");
            // Enough records to rotate: the checkpoint at the top of the new file keeps them.
            for g in 4..60u64 {
                log.append(3_000 + hour, Generation(g), Entry::Engine { note: finished(g, "b") })
                    .expect("append");
            }
        }
        assert!(rotated(&path, 1).exists(), "the log rotated");
        let log = AuditLog::open(&path, 4096, 2).expect("reopen");
        assert_eq!(log.checkpoint().last_transition_at_ms, Some(2_000 + hour));
        assert_eq!(log.checkpoint().transitions_at_ms, vec![1_000 + hour]);
    }

    #[test]
    fn open_alert_incidents_survive_a_restart_and_rotation_until_resolved() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let alert = |key: &str, message: &str, incident: Option<&str>| Entry::Alert {
            key: key.into(),
            message: message.into(),
            incident: incident.map(str::to_string),
            delivery_pending: false,
        };
        {
            let mut log = AuditLog::open(&path, 4096, 2).expect("open");
            log.append(
                1_000,
                Generation(1),
                alert("all_down", "every region is down", Some("shop/all_down")),
            )
            .expect("append");
            log.append(
                1_500,
                Generation(1),
                alert("runbook", "step failed", Some("shop/runbook")),
            )
            .expect("append");
            // A record from before dedup keys were recorded.
            log.append(1_600, Generation(1), alert("fenced", "stale", None))
                .expect("append");
            log.append(
                2_000,
                Generation(2),
                alert("all_down", "still down", Some("shop/all_down")),
            )
            .expect("append");
            log.append(
                2_500,
                Generation(2),
                Entry::Resolved {
                    key: "runbook".into(),
                    incident: None,
                    delivery_pending: false,
                },
            )
            .expect("append");
            for g in 3..60u64 {
                log.append(3_000, Generation(g), Entry::Engine { note: finished(g, "b") })
                    .expect("append");
            }
        }
        assert!(rotated(&path, 1).exists(), "the log rotated");
        let log = AuditLog::open(&path, 4096, 2).expect("reopen");
        let open = &log.checkpoint().open_alerts;
        assert_eq!(open.keys().collect::<Vec<_>>(), vec!["all_down", "fenced"]);
        let down = &open["all_down"];
        assert_eq!(down.incident.as_deref(), Some("shop/all_down"));
        assert_eq!((down.generation, down.at_ms), (Generation(1), 1_000), "opened then");
        assert_eq!(down.message, "still down");
        assert_eq!(open["fenced"].incident, None);
    }

    fn raised(key: &str, pending: bool) -> Entry {
        Entry::Alert {
            key: key.into(),
            message: format!("{key} holds"),
            incident: Some(format!("shop/{key}")),
            delivery_pending: pending,
        }
    }

    fn resolved(key: &str) -> Entry {
        Entry::Resolved {
            key: key.into(),
            incident: Some(format!("shop/{key}")),
            delivery_pending: true,
        }
    }

    fn delivered(key: &str, resolve: bool) -> Entry {
        Entry::Delivered {
            key: key.into(),
            incident: format!("shop/{key}"),
            resolve,
        }
    }

    /// What was delivered survives a restart and rotation; what was not is still pending.
    #[test]
    fn deliveries_of_triggers_and_resolves_survive_a_restart_and_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        {
            let mut log = AuditLog::open(&path, 4096, 2).expect("open");
            // Opened and delivered; opened, its update written, not delivered.
            log.append(1_000, Generation(1), raised("all_down", true))
                .expect("append");
            log.append(1_100, Generation(1), delivered("all_down", false))
                .expect("append");
            log.append(1_200, Generation(1), raised("fenced", true))
                .expect("append");
            log.append(1_300, Generation(1), raised("fenced", false))
                .expect("append");
            // A delivery of another incident of the condition does not count for this one.
            log.append(
                1_350,
                Generation(1),
                Entry::Delivered {
                    key: "fenced".into(),
                    incident: "ctl/fenced/g1-1".into(),
                    resolve: false,
                },
            )
            .expect("append");
            // Resolved, the resolve delivered; resolved, the resolve not delivered.
            log.append(1_400, Generation(1), raised("decision", true))
                .expect("append");
            log.append(1_500, Generation(1), resolved("decision")).expect("append");
            log.append(1_600, Generation(1), delivered("decision", true))
                .expect("append");
            log.append(1_700, Generation(1), raised("runbook", true))
                .expect("append");
            log.append(1_800, Generation(2), resolved("runbook")).expect("append");
            // Resolved and raised again before the resolve was delivered: the trigger follows
            // the resolve on every channel, so the resolve is not sent again after it.
            log.append(1_900, Generation(2), raised("stuck", true)).expect("append");
            log.append(2_000, Generation(2), resolved("stuck")).expect("append");
            log.append(2_100, Generation(2), raised("stuck", true)).expect("append");
            for g in 3..60u64 {
                log.append(3_000, Generation(g), Entry::Engine { note: finished(g, "b") })
                    .expect("append");
            }
        }
        assert!(rotated(&path, 1).exists(), "the log rotated");
        let log = AuditLog::open(&path, 4096, 2).expect("reopen");
        let state = log.checkpoint();
        let open: Vec<(&str, bool)> = state
            .open_alerts
            .iter()
            .map(|(key, open)| (key.as_str(), open.delivered))
            .collect();
        assert_eq!(open, vec![("all_down", true), ("fenced", false), ("stuck", false)]);
        assert_eq!(
            state.resolving,
            BTreeMap::from([(
                "shop/runbook".to_string(),
                PendingResolve {
                    key: "runbook".into(),
                    generation: Generation(2),
                    at_ms: 1_800
                }
            )])
        );
        // Each record reads back as written.
        for entry in [
            raised("a", true),
            resolved("a"),
            delivered("a", true),
            delivered("a", false),
        ] {
            let record = AuditRecord {
                seq: 1,
                at_ms: 1,
                generation: Generation(1),
                entry,
            };
            let line = serde_json::to_string(&record).expect("encode");
            assert_eq!(
                serde_json::from_str::<AuditRecord>(&line).expect("decode"),
                record,
                "{line}"
            );
        }
    }

    /// A log written before deliveries were recorded has no `delivered` records: its open
    /// incidents read as delivered (an upgrade pages nothing again), its resolves as sent.
    #[test]
    fn records_from_before_deliveries_were_recorded_read_as_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.jsonl");
        let old = [
            r#"{"seq":1,"at_ms":1,"generation":1,"kind":"checkpoint","state":{"generation":1,"observed":null,"interrupted":null,"preferred":null,"paused":false,"open_alerts":{"fenced":{"incident":"shop/fenced","generation":1,"at_ms":1,"message":"stale"}}}}"#,
            r#"{"seq":2,"at_ms":2,"generation":1,"kind":"alert","key":"all_down","message":"down","incident":"shop/all_down"}"#,
            r#"{"seq":3,"at_ms":3,"generation":1,"kind":"alert","key":"runbook","message":"failed","incident":"shop/runbook"}"#,
            r#"{"seq":4,"at_ms":4,"generation":1,"kind":"resolved","key":"runbook"}"#,
        ];
        std::fs::write(&path, old.join("\n") + "\n").expect("write");
        let mut log = AuditLog::open(&path, 1 << 20, 2).expect("open");
        let state = log.checkpoint().clone();
        assert_eq!(state.open_alerts.keys().collect::<Vec<_>>(), vec!["all_down", "fenced"]);
        assert!(state.open_alerts.values().all(|open| open.delivered), "{state:?}");
        assert!(state.resolving.is_empty(), "{state:?}");
        // A new raise after the upgrade is tracked.
        log.append(5, Generation(1), raised("stuck", true)).expect("append");
        assert!(!log.checkpoint().open_alerts["stuck"].delivered);
    }
}
