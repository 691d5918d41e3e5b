//! Several controllers: what the drills that break the leader check, from the drill's own
//! monitor (which member acts, polled on every member) and from every member's audit log
//! (JSON lines; the controller's public record of each decision, runbook and step).
//!
//! Pure: the runtime reads the logs and hands their lines over.
//!
//! - **Takeover**: from the fault on the leader (its kill or cut, as the drill recorded it) to
//!   the first moment another member acts.
//! - **Finished with a higher generation**: the runbook the faulted leader started and did not
//!   finish (`runbook_started` without a successful `runbook_finished` in its log) is finished
//!   by another member with a higher generation and the same target region.
//! - **No step applied under two generations**: the runbooks of one decision (consecutive
//!   generations with the same target region) apply each step (`outcome: ok`) under one
//!   generation at most. A roll-forward must not repeat, under its new generation, a step the
//!   interrupted runbook had already applied.
//! - **Late pushes refused** (isolation): no step attempt the old leader makes after its
//!   `stepped_down` record is applied; it drops the step it was running when it stops acting
//!   (`stopped`), or a later attempt is refused (`fenced`: the receiver has a newer
//!   generation) — at least one of the two is seen (else the check proves nothing).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::measure::{Event, EventKind};
use crate::scenario::{ExpectationResult, HA_LEASE_MS, HaExpectation, TAKEOVER_SLACK_MS};

/// Largest audit log the drill reads (its newest part; the controller rotates at its own
/// `audit_log_bytes_max`, 64 MiB by default).
pub const AUDIT_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Longest audit line taken; a longer one is skipped (torn or foreign).
pub const AUDIT_LINE_BYTES_MAX: usize = 1024 * 1024;

/// One member's audit log as read after the drill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberLog {
    pub member: String,
    /// The lines, or why they could not be read.
    pub text: Result<String, String>,
}

/// What the audit check needs from one record.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Record {
    RunbookStarted {
        generation: u64,
        to: String,
    },
    RunbookSucceeded {
        generation: u64,
        to: String,
    },
    Step {
        generation: u64,
        step: String,
        outcome: String,
    },
    SteppedDown,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Line {
    at_ms: u64,
    record: Record,
}

/// Reads the records written at or after `from_wall_ms` (wall-clock ms); lines that are not
/// records are skipped.
fn parse(text: &str, from_wall_ms: u64) -> Vec<Line> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && line.len() <= AUDIT_LINE_BYTES_MAX)
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|value| {
            let at_ms = value["at_ms"].as_u64()?;
            if at_ms < from_wall_ms {
                return None;
            }
            let generation = value["generation"].as_u64().unwrap_or(0);
            let record = match value["kind"].as_str()? {
                "step" => Record::Step {
                    generation,
                    step: value["step"].as_str()?.to_string(),
                    outcome: value["outcome"].as_str()?.to_string(),
                },
                "leadership" if value["event"] == "stepped_down" => Record::SteppedDown,
                "engine" => {
                    let note = &value["note"];
                    let to = note["to"]["active"].as_str().map(str::to_string);
                    let generation = note["generation"].as_u64().unwrap_or(generation);
                    match (note["type"].as_str(), to) {
                        (Some("runbook_started"), Some(to)) => Record::RunbookStarted { generation, to },
                        (Some("runbook_finished"), Some(to)) if note["outcome"]["outcome"] == "succeeded" => {
                            Record::RunbookSucceeded { generation, to }
                        }
                        _ => Record::Other,
                    }
                }
                _ => Record::Other,
            };
            Some(Line { at_ms, record })
        })
        .collect()
}

/// What the drill found about the controllers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaCheck {
    /// The member the drill faulted: the leader when the drill first named it.
    pub faulted_leader: Option<String>,
    /// The first other member seen acting after the fault on the leader.
    pub next_leader: Option<String>,
    /// Fault on the leader → another member acting (the drill polls every member's `/health`
    /// every 250 ms).
    pub takeover_ms: Option<u64>,
    /// The runbook the faulted leader started during the drill and did not finish.
    pub interrupted_generation: Option<u64>,
    pub interrupted_to: Option<String>,
    /// The lowest generation above it that another member finished to the same region.
    pub finished_generation: Option<u64>,
    pub finished_by: Option<String>,
    /// Steps applied (`ok`) under two generations or more for one decision, described.
    pub applied_twice: Vec<String>,
    /// The faulted leader's audit log records that it stopped acting.
    pub stepped_down: bool,
    /// Step attempts the faulted leader made after it stopped acting: refused ones, and
    /// anything else that went through (described).
    pub late_refused: usize,
    pub late_applied: Vec<String>,
    /// Steps the faulted leader dropped mid-way because it stopped acting (`stopped`).
    pub late_stopped: usize,
    /// Audit logs read, and the ones that could not be (with why).
    pub logs_read: usize,
    pub unreadable: Vec<String>,
}

/// Builds the check from the drill's events, the member the drill faulted and every
/// member's audit log (records from `from_wall_ms`, the drill's start, on).
pub fn check(events: &[Event], faulted: Option<&str>, logs: &[MemberLog], from_wall_ms: u64) -> HaCheck {
    let mut result = HaCheck {
        faulted_leader: faulted.map(str::to_string),
        ..HaCheck::default()
    };
    // Takeover, from the monitor.
    let fault_at = events.iter().find_map(|e| match &e.kind {
        EventKind::LeaderFault { .. } => Some(e.at_ms),
        _ => None,
    });
    let next = fault_at.and_then(|fault_at| {
        events
            .iter()
            .filter(|e| e.at_ms >= fault_at)
            .find_map(|e| match &e.kind {
                EventKind::Leader { member: Some(m), .. } if Some(m.as_str()) != faulted => Some((m.clone(), e.at_ms)),
                _ => None,
            })
            .map(|(member, at)| (member, at - fault_at))
    });
    if let Some((member, takeover_ms)) = next {
        result.next_leader = Some(member);
        result.takeover_ms = Some(takeover_ms);
    }

    let mut parsed: Vec<(String, Vec<Line>)> = Vec::new();
    for log in logs {
        match &log.text {
            Ok(text) => {
                result.logs_read += 1;
                parsed.push((log.member.clone(), parse(text, from_wall_ms)));
            }
            Err(error) => result.unreadable.push(format!("{}: {error}", log.member)),
        }
    }

    // The interrupted runbook: the faulted leader's last start without a success.
    if let Some((_, lines)) = parsed.iter().find(|(m, _)| Some(m.as_str()) == faulted) {
        let succeeded: BTreeSet<u64> = lines
            .iter()
            .filter_map(|l| match &l.record {
                Record::RunbookSucceeded { generation, .. } => Some(*generation),
                _ => None,
            })
            .collect();
        if let Some((generation, to)) = lines.iter().rev().find_map(|l| match &l.record {
            Record::RunbookStarted { generation, to } if !succeeded.contains(generation) => {
                Some((*generation, to.clone()))
            }
            _ => None,
        }) {
            result.interrupted_generation = Some(generation);
            result.interrupted_to = Some(to);
        }
        let down_at = lines
            .iter()
            .find_map(|l| (l.record == Record::SteppedDown).then_some(l.at_ms));
        result.stepped_down = down_at.is_some();
        result.late_stopped = lines
            .iter()
            .filter(|l| matches!(&l.record, Record::Step { outcome, .. } if outcome == "stopped"))
            .count();
        if let Some(down_at) = down_at {
            for line in lines.iter().filter(|l| l.at_ms > down_at) {
                if let Record::Step {
                    generation,
                    step,
                    outcome,
                } = &line.record
                {
                    match outcome.as_str() {
                        "fenced" => result.late_refused += 1,
                        "ok" => result.late_applied.push(format!(
                            "step '{step}' of generation {generation} was applied after {} stopped acting",
                            faulted.unwrap_or("?")
                        )),
                        _ => {}
                    }
                }
            }
        }
    }
    if let (Some(generation), Some(to)) = (result.interrupted_generation, &result.interrupted_to) {
        let finished = parsed
            .iter()
            .filter(|(m, _)| Some(m.as_str()) != faulted)
            .flat_map(|(m, lines)| lines.iter().map(move |l| (m, l)))
            .filter_map(|(m, l)| match &l.record {
                Record::RunbookSucceeded { generation: g, to: t } if *g > generation && t == to => {
                    Some((*g, m.clone()))
                }
                _ => None,
            })
            .min();
        if let Some((g, member)) = finished {
            result.finished_generation = Some(g);
            result.finished_by = Some(member);
        }
    }

    // Decisions: consecutive generations with the same target; each step applied once.
    let starts: BTreeMap<u64, String> = parsed
        .iter()
        .flat_map(|(_, lines)| lines.iter())
        .filter_map(|l| match &l.record {
            Record::RunbookStarted { generation, to } => Some((*generation, to.clone())),
            _ => None,
        })
        .collect();
    let mut decision_of: BTreeMap<u64, usize> = BTreeMap::new();
    let mut decision = 0usize;
    let mut previous: Option<&String> = None;
    for (generation, to) in &starts {
        if previous.is_some_and(|p| p != to) {
            decision += 1;
        }
        decision_of.insert(*generation, decision);
        previous = Some(to);
    }
    let mut applied: BTreeMap<(usize, String), BTreeSet<u64>> = BTreeMap::new();
    for (_, lines) in &parsed {
        for line in lines {
            if let Record::Step {
                generation,
                step,
                outcome,
            } = &line.record
                && outcome == "ok"
                && let Some(decision) = decision_of.get(generation)
            {
                applied
                    .entry((*decision, step.clone()))
                    .or_default()
                    .insert(*generation);
            }
        }
    }
    for ((_, step), generations) in applied {
        if generations.len() > 1 {
            let to = generations
                .first()
                .and_then(|g| starts.get(g))
                .map_or("?", String::as_str);
            let list: Vec<String> = generations.iter().map(u64::to_string).collect();
            result.applied_twice.push(format!(
                "step '{step}' applied under generations {} (to {to})",
                list.join(" and ")
            ));
        }
    }
    result
}

fn seconds(ms: Option<u64>) -> String {
    ms.map_or_else(|| "never".to_string(), |v| format!("{:.1} s", v as f64 / 1000.0))
}

/// The expectations of an HA scenario against the check.
pub fn evaluate(expectation: HaExpectation, check: &HaCheck) -> Vec<ExpectationResult> {
    let mut results = Vec::new();
    let mut push = |name: &str, expected: String, actual: String, passed: bool| {
        results.push(ExpectationResult {
            name: name.to_string(),
            expected,
            actual,
            passed,
        })
    };
    let unreadable = if check.unreadable.is_empty() {
        String::new()
    } else {
        format!("; unreadable audit logs: {}", check.unreadable.join("; "))
    };
    push(
        "audit logs read",
        "every member's audit log".into(),
        format!("{} read{unreadable}", check.logs_read),
        check.unreadable.is_empty() && check.logs_read > 0,
    );
    let max = HA_LEASE_MS + TAKEOVER_SLACK_MS;
    push(
        "leader takeover",
        format!(
            "another member acts ≤ {} after the leader's fault (lease + {:.1} s)",
            seconds(Some(max)),
            TAKEOVER_SLACK_MS as f64 / 1000.0
        ),
        match (&check.next_leader, check.takeover_ms) {
            (Some(member), Some(ms)) => format!("{member} after {}", seconds(Some(ms))),
            _ => format!(
                "no other member acted (faulted: {})",
                check.faulted_leader.as_deref().unwrap_or("none found")
            ),
        },
        check.takeover_ms.is_some_and(|ms| ms <= max),
    );
    push(
        "no step applied under two generations",
        "each step of a decision applied under one generation".into(),
        if check.applied_twice.is_empty() {
            "none".into()
        } else {
            check.applied_twice.join("; ")
        },
        check.applied_twice.is_empty() && check.logs_read > 0,
    );
    if matches!(expectation, HaExpectation::Crash | HaExpectation::Isolation) {
        push(
            "interrupted runbook finished with a higher generation",
            "another member finishes the faulted leader's runbook under a higher generation".into(),
            match (check.interrupted_generation, check.finished_generation) {
                (None, _) => "the faulted leader started no runbook during the drill".into(),
                (Some(g), None) => format!("generation {g} was never finished by another member"),
                (Some(g), Some(f)) => format!(
                    "generation {g} → {f} by {}",
                    check.finished_by.as_deref().unwrap_or("?")
                ),
            },
            matches!((check.interrupted_generation, check.finished_generation), (Some(g), Some(f)) if f > g),
        );
    }
    if expectation == HaExpectation::Isolation {
        push(
            "isolated leader stopped acting",
            "its audit log records stepped_down".into(),
            if check.stepped_down { "yes" } else { "no" }.into(),
            check.stepped_down,
        );
        push(
            "late pushes refused",
            "the old leader drops its step when it stops acting, or its later attempts are refused; none applied"
                .into(),
            format!(
                "{} dropped, {} refused, {} applied{}",
                check.late_stopped,
                check.late_refused,
                check.late_applied.len(),
                if check.late_applied.is_empty() {
                    String::new()
                } else {
                    format!(": {}", check.late_applied.join("; "))
                }
            ),
            (check.late_refused >= 1 || check.late_stopped >= 1) && check.late_applied.is_empty(),
        );
    }
    results
}

#[cfg(test)]
mod tests;
