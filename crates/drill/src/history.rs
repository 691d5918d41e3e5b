//! The recorded history of a drill, in Jepsen's shape: every operation is an `invoke` followed
//! by exactly one completion from the same process — `ok` (it happened), `fail` (it certainly
//! did not happen) or `info` (indeterminate: a timeout or a lost connection; it may have
//! happened). Timestamps are monotonic milliseconds since the drill started.
//!
//! The history is data only: it never reads a clock. Whoever records passes the time, and the
//! history refuses a timestamp that goes backwards or a completion without its invocation, so
//! the checker and the measurements can rely on its order.

use serde::{Deserialize, Serialize};

/// The workload's clients, writers and watchers are processes in Jepsen's sense: each runs one
/// operation at a time.
pub type ProcessId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Invoke,
    Ok,
    /// Certainly not applied (the server refused it).
    Fail,
    /// Indeterminate: timed out or the connection broke; it may have been applied.
    Info,
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// A put of `value` under `key` into the global table through `region`'s store. Values are
    /// unique across a history, which is what lets the checker tell writes apart.
    Write { key: String, value: String, region: String },
    /// A DNS query for `name`. `authoritative` lookups ask the server directly (the drill's DNS
    /// watcher); the others are the workload's caching resolvers going to the server when their
    /// cached answer expired. The completion carries the answer and its TTL.
    Lookup {
        name: String,
        authoritative: bool,
        answer: Vec<String>,
        ttl_s: u32,
    },
    /// A client request to the shop (`operation` like `place_order`, `order_status`), sent to
    /// the region DNS pointed the client at when known.
    Request { operation: String, region: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history.
    pub index: usize,
    pub process: ProcessId,
    pub phase: Phase,
    /// Milliseconds since the drill started (monotonic clock).
    pub at_ms: u64,
    pub action: Action,
    /// Why a `fail` or `info` completion failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An invocation and its completion (none when the drill ended first: indeterminate).
#[derive(Clone, Copy, Debug)]
pub struct Pair<'a> {
    pub invoke: &'a Op,
    pub completion: Option<&'a Op>,
}

impl Pair<'_> {
    /// The completion's phase; `Info` for an operation that never completed.
    pub fn outcome(&self) -> Phase {
        self.completion.map_or(Phase::Info, |op| op.phase)
    }

    /// The completion's action when there is one (a lookup's answer lives there), else the
    /// invocation's.
    pub fn action(&self) -> &Action {
        self.completion.map_or(&self.invoke.action, |op| &op.action)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("time went backwards: an op at {at_ms} ms after one at {last_ms} ms")]
    TimeWentBackwards { at_ms: u64, last_ms: u64 },
    #[error("process {process} invoked an operation while its previous one is still open")]
    AlreadyOpen { process: ProcessId },
    #[error("process {process} completed an operation it never invoked")]
    NotOpen { process: ProcessId },
    #[error("a completion cannot have phase invoke")]
    CompletionIsInvoke,
}

/// An append-only history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    ops: Vec<Op>,
    /// Index of each process's open invocation (processes are small integers).
    #[serde(skip)]
    open: std::collections::BTreeMap<ProcessId, usize>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn check_time(&self, at_ms: u64) -> Result<(), HistoryError> {
        match self.ops.last() {
            Some(last) if at_ms < last.at_ms => Err(HistoryError::TimeWentBackwards {
                at_ms,
                last_ms: last.at_ms,
            }),
            _ => Ok(()),
        }
    }

    /// Records the start of an operation; returns its index.
    pub fn invoke(&mut self, process: ProcessId, at_ms: u64, action: Action) -> Result<usize, HistoryError> {
        self.check_time(at_ms)?;
        if self.open.contains_key(&process) {
            return Err(HistoryError::AlreadyOpen { process });
        }
        let index = self.ops.len();
        self.ops.push(Op {
            index,
            process,
            phase: Phase::Invoke,
            at_ms,
            action,
            error: None,
        });
        self.open.insert(process, index);
        Ok(index)
    }

    /// Records the completion of `process`'s open operation. `action` replaces the
    /// invocation's when given (a lookup's answer); otherwise the invocation's is repeated.
    pub fn complete(
        &mut self,
        process: ProcessId,
        at_ms: u64,
        phase: Phase,
        action: Option<Action>,
        error: Option<String>,
    ) -> Result<usize, HistoryError> {
        if phase == Phase::Invoke {
            return Err(HistoryError::CompletionIsInvoke);
        }
        self.check_time(at_ms)?;
        let Some(&open) = self.open.get(&process) else {
            return Err(HistoryError::NotOpen { process });
        };
        self.open.remove(&process);
        let action = action.unwrap_or_else(|| self.ops[open].action.clone());
        let index = self.ops.len();
        self.ops.push(Op {
            index,
            process,
            phase,
            at_ms,
            action,
            error,
        });
        Ok(index)
    }

    /// Every invocation with its completion, in invocation order.
    pub fn pairs(&self) -> Vec<Pair<'_>> {
        let mut open: std::collections::BTreeMap<ProcessId, usize> = std::collections::BTreeMap::new();
        let mut pairs: Vec<Pair<'_>> = Vec::new();
        for op in &self.ops {
            if op.phase == Phase::Invoke {
                open.insert(op.process, pairs.len());
                pairs.push(Pair {
                    invoke: op,
                    completion: None,
                });
            } else if let Some(slot) = open.remove(&op.process) {
                pairs[slot].completion = Some(op);
            }
        }
        pairs
    }

    /// Ends the history: what is still open stays open (indeterminate) and the bookkeeping is
    /// rebuilt from the ops (after deserialising a history, for instance).
    pub fn from_ops(ops: Vec<Op>) -> Result<History, HistoryError> {
        let mut history = History::new();
        for op in ops {
            if op.phase == Phase::Invoke {
                history.invoke(op.process, op.at_ms, op.action)?;
            } else {
                history.complete(op.process, op.at_ms, op.phase, Some(op.action), op.error)?;
            }
        }
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(key: &str, value: &str) -> Action {
        Action::Write {
            key: key.into(),
            value: value.into(),
            region: "a".into(),
        }
    }

    #[test]
    fn pairs_match_invocations_with_completions_per_process() {
        let mut history = History::new();
        history.invoke(1, 0, write("k1", "v1")).expect("valid");
        history.invoke(2, 1, write("k2", "v2")).expect("valid");
        history.complete(2, 2, Phase::Ok, None, None).expect("valid");
        history
            .complete(1, 3, Phase::Info, None, Some("timeout".into()))
            .expect("valid");
        history.invoke(1, 4, write("k3", "v3")).expect("valid");
        let pairs = history.pairs();
        assert_eq!(pairs.len(), 3);
        assert_eq!(pairs[0].outcome(), Phase::Info);
        assert_eq!(pairs[0].completion.map(|op| op.at_ms), Some(3));
        assert_eq!(pairs[1].outcome(), Phase::Ok);
        assert!(pairs[2].completion.is_none());
        assert_eq!(
            pairs[2].outcome(),
            Phase::Info,
            "an op the drill never saw complete is indeterminate"
        );
    }

    #[test]
    fn refuses_time_going_backwards_and_unpaired_completions() {
        let mut history = History::new();
        history.invoke(1, 10, write("k", "v")).expect("valid");
        assert_eq!(
            history.invoke(2, 9, write("k", "w")),
            Err(HistoryError::TimeWentBackwards { at_ms: 9, last_ms: 10 })
        );
        assert_eq!(
            history.invoke(1, 11, write("k", "w")),
            Err(HistoryError::AlreadyOpen { process: 1 })
        );
        assert_eq!(
            history.complete(3, 11, Phase::Ok, None, None),
            Err(HistoryError::NotOpen { process: 3 })
        );
        assert_eq!(
            history.complete(1, 11, Phase::Invoke, None, None),
            Err(HistoryError::CompletionIsInvoke)
        );
    }

    #[test]
    fn a_lookup_completion_carries_the_answer() {
        let mut history = History::new();
        let query = Action::Lookup {
            name: "shop.".into(),
            authoritative: true,
            answer: vec![],
            ttl_s: 0,
        };
        history.invoke(7, 0, query).expect("valid");
        let answered = Action::Lookup {
            name: "shop.".into(),
            authoritative: true,
            answer: vec!["127.0.0.2".into()],
            ttl_s: 5,
        };
        history
            .complete(7, 1, Phase::Ok, Some(answered.clone()), None)
            .expect("valid");
        assert_eq!(history.pairs()[0].action(), &answered);
    }

    #[test]
    fn round_trips_through_json() {
        let mut history = History::new();
        history.invoke(1, 0, write("k", "v")).expect("valid");
        history.complete(1, 5, Phase::Ok, None, None).expect("valid");
        let text = serde_json::to_string(history.ops()).expect("serialises");
        let ops: Vec<Op> = serde_json::from_str(&text).expect("parses");
        let again = History::from_ops(ops).expect("valid history");
        assert_eq!(again.ops(), history.ops());
    }
}
