//! The set check for the global table (Jepsen's set checker, with last-writer-wins in mind).
//!
//! Input: the history of writes and the final contents each region's store holds after the
//! drill healed and replication converged. Every acknowledged write is classified:
//!
//! - **present**: its value is what the key holds;
//! - **superseded**: the key holds the value of a write invoked after this one was
//!   acknowledged — a newer write, in the writes' real-time order; nothing was lost;
//! - **overwritten**: the key holds the value of a *concurrent* write (neither finished before
//!   the other started) and last-writer-wins picked that one. In a split brain this is how the
//!   isolated region's writes disappear; it is reported, never hidden;
//! - **lost**: the key is missing, holds an older write's value, or holds a value no write
//!   ever wrote. Lost acknowledged writes are the RPO.
//!
//! A write is judged in every region and gets its worst verdict. Writes that were not
//! acknowledged (timeouts: indeterminate) are counted when present; a definitely failed write
//! that is present is an anomaly. Pure: a function of the history and the final state.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::history::{Action, History, Phase};

/// Lost and overwritten writes listed in full in a result; the counts are always complete.
pub const LISTED_WRITES_MAX: usize = 100;

/// Each region's table after the drill: region → key → value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalState {
    pub regions: BTreeMap<String, BTreeMap<String, String>>,
}

/// A region cut off from the others from `from_ms` to `to_ms` (a partition). Writes it
/// acknowledged in that window are reported separately.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    pub region: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// Ordered from best to worst, so a write's verdict over several regions is the maximum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteClass {
    Present,
    Superseded,
    Overwritten,
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteVerdict {
    pub key: String,
    pub value: String,
    pub region: String,
    pub invoke_ms: u64,
    pub ack_ms: u64,
    pub class: WriteClass,
    /// The value found instead, in the region that gave the worst verdict (none: missing).
    pub found: Option<String>,
    /// That region.
    pub judged_in: String,
    /// Acknowledged by the isolated region during its isolation.
    pub isolated: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub acknowledged: usize,
    pub present: usize,
    pub superseded: usize,
    pub overwritten: usize,
    /// Acknowledged writes lost: the RPO, in writes.
    pub lost: usize,
    /// Acknowledged by the isolated region during its isolation (included in the counts above).
    pub isolated_acknowledged: usize,
    /// Of those, overwritten by a concurrent write elsewhere (last writer wins).
    pub isolated_overwritten: usize,
    /// Of those, lost.
    pub isolated_lost: usize,
    /// Writes that timed out or never completed.
    pub indeterminate: usize,
    /// Of those, present in every region (they did happen).
    pub indeterminate_present: usize,
    /// Writes the store refused that are present anyway: an anomaly.
    pub failed_present: usize,
    /// Keys whose value differs between regions (replication did not converge).
    pub divergent_keys: Vec<String>,
    /// Values no write of the history wrote (an anomaly; such keys count as lost).
    pub unknown_values: usize,
    /// Lost writes, then overwritten ones, at most [`LISTED_WRITES_MAX`].
    pub listed: Vec<WriteVerdict>,
}

impl CheckResult {
    /// No acknowledged write lost, no anomaly, every region equal.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.failed_present == 0 && self.unknown_values == 0 && self.divergent_keys.is_empty()
    }
}

struct Write<'a> {
    key: &'a str,
    value: &'a str,
    region: &'a str,
    invoke_ms: u64,
    invoke_index: usize,
    /// History index of the completion; `usize::MAX` when it never completed.
    complete_index: usize,
    ack_ms: u64,
    outcome: Phase,
}

fn writes(history: &History) -> Vec<Write<'_>> {
    history
        .pairs()
        .into_iter()
        .filter_map(|pair| match &pair.invoke.action {
            Action::Write { key, value, region } => Some(Write {
                key,
                value,
                region,
                invoke_ms: pair.invoke.at_ms,
                invoke_index: pair.invoke.index,
                complete_index: pair.completion.map_or(usize::MAX, |op| op.index),
                ack_ms: pair.completion.map_or(u64::MAX, |op| op.at_ms),
                outcome: pair.outcome(),
            }),
            _ => None,
        })
        .collect()
}

/// Classifies acknowledged write `write` against the `found` value of its key in one region.
fn classify(write: &Write<'_>, found: Option<&str>, by_value: &HashMap<&str, &Write<'_>>) -> WriteClass {
    let Some(found) = found else {
        return WriteClass::Lost;
    };
    if found == write.value {
        return WriteClass::Present;
    }
    match by_value.get(found) {
        Some(other) if other.key == write.key => {
            if other.invoke_index > write.complete_index {
                WriteClass::Superseded
            } else if other.complete_index < write.invoke_index {
                // An older write came back: this one is gone.
                WriteClass::Lost
            } else {
                WriteClass::Overwritten
            }
        }
        _ => WriteClass::Lost,
    }
}

/// The set check. `isolation` names the partitioned region, if the scenario had one.
pub fn check(history: &History, state: &FinalState, isolation: Option<&Isolation>) -> CheckResult {
    let writes = writes(history);
    let by_value: HashMap<&str, &Write<'_>> = writes.iter().map(|w| (w.value, w)).collect();
    let mut result = CheckResult::default();
    let mut lost_listed = Vec::new();
    let mut overwritten_listed = Vec::new();

    for write in &writes {
        match write.outcome {
            Phase::Ok => {}
            Phase::Fail => {
                let present = !state.regions.is_empty()
                    && state
                        .regions
                        .values()
                        .any(|table| table.get(write.key).map(String::as_str) == Some(write.value));
                if present {
                    result.failed_present += 1;
                }
                continue;
            }
            Phase::Info | Phase::Invoke => {
                result.indeterminate += 1;
                let present = !state.regions.is_empty()
                    && state
                        .regions
                        .values()
                        .all(|table| table.get(write.key).map(String::as_str) == Some(write.value));
                if present {
                    result.indeterminate_present += 1;
                }
                continue;
            }
        }
        result.acknowledged += 1;
        let (class, found, judged_in) = state
            .regions
            .iter()
            .map(|(region, table)| {
                let found = table.get(write.key).map(String::as_str);
                (classify(write, found, &by_value), found, region.as_str())
            })
            .max_by_key(|(class, _, _)| *class)
            .unwrap_or((WriteClass::Lost, None, ""));
        let isolated = isolation
            .is_some_and(|iso| iso.region == write.region && write.ack_ms >= iso.from_ms && write.ack_ms <= iso.to_ms);
        match class {
            WriteClass::Present => result.present += 1,
            WriteClass::Superseded => result.superseded += 1,
            WriteClass::Overwritten => result.overwritten += 1,
            WriteClass::Lost => result.lost += 1,
        }
        if isolated {
            result.isolated_acknowledged += 1;
            match class {
                WriteClass::Overwritten => result.isolated_overwritten += 1,
                WriteClass::Lost => result.isolated_lost += 1,
                _ => {}
            }
        }
        if matches!(class, WriteClass::Lost | WriteClass::Overwritten) {
            let verdict = WriteVerdict {
                key: write.key.to_string(),
                value: write.value.to_string(),
                region: write.region.to_string(),
                invoke_ms: write.invoke_ms,
                ack_ms: write.ack_ms,
                class,
                found: found.map(str::to_string),
                judged_in: judged_in.to_string(),
                isolated,
            };
            if class == WriteClass::Lost {
                lost_listed.push(verdict);
            } else {
                overwritten_listed.push(verdict);
            }
        }
    }

    let mut keys: BTreeSet<&str> = BTreeSet::new();
    for table in state.regions.values() {
        keys.extend(table.keys().map(String::as_str));
        result.unknown_values += table.values().filter(|v| !by_value.contains_key(v.as_str())).count();
    }
    for key in keys {
        let mut values = state.regions.values().map(|table| table.get(key));
        let first = values.next().flatten();
        if values.any(|value| value != first) {
            result.divergent_keys.push(key.to_string());
        }
    }
    result.listed = lost_listed
        .into_iter()
        .chain(overwritten_listed)
        .take(LISTED_WRITES_MAX)
        .collect();
    result
}

#[cfg(test)]
mod tests;
