//! Measurements over a drill: RTO, false failovers, convergence and failback times, from the
//! recorded history (client requests and DNS lookups) and the timeline of events the drill
//! saw (faults it injected, the controller's active region and generation, replication lag).
//!
//! Pure: a function of its inputs, so a report can be recomputed from a saved history.
//!
//! - RTO(DNS): fault → the first authoritative DNS answer that differs from the answer before
//!   the fault.
//! - RTO(99%): fault → the start of the first second from which every second of a window has
//!   at least 99% of client requests succeeding (requests are counted in the second they
//!   started; a second without requests counts as failing: clients that cannot get an answer
//!   stop sending).
//! - Failovers: the controller's generation rising; false when the scenario expects none.
//! - Converge: heal → the first replication lag sample (all regions answering) at or below
//!   the converged threshold.
//! - Failback: heal → the authoritative DNS answer being the pre-fault answer again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::{Action, History, Phase};

/// Success rate, in per mille, a second needs for RTO(99%).
pub const SUCCESS_PER_MILLE_MIN: u64 = 990;
/// Seconds the success rate must hold for RTO(99%).
pub const RECOVERY_WINDOW_S: u64 = 5;
/// Replication lag at or below which the regions count as converged.
pub const CONVERGED_LAG_MS_MAX: u64 = 1_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    /// The fault phase starts (the first fault step is about to run).
    FaultStart,
    /// One fault step ran (or failed to).
    Step { label: String, ok: bool },
    /// The heal phase starts.
    Heal,
    /// The controller's active region(s) and generation, when they changed (and the first one).
    ActiveRegion { region: String, generation: u64 },
    /// The largest replication lag over every region and peer; none when a store did not answer.
    ReplicationLag { lag_ms: Option<u64> },
    /// Anything else worth a marker on the chart.
    Note { text: String },
    /// What a provider the runbook acts on (a DNS primary, HAProxy) shows, when it changed
    /// (and the first reading): the region it points at, if exactly one, and what was read.
    Provider {
        provider: String,
        region: Option<String>,
        state: String,
    },
    /// With several controllers: the member that acts (none while no member does), when it
    /// changed (and the first reading), with its generation.
    Leader { member: Option<String>, generation: u64 },
    /// With several controllers: a fault step that names the leader is about to run against
    /// this member.
    LeaderFault { member: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What the measurements need to know of the scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasureParams {
    pub expects_failover: bool,
    pub success_per_mille_min: u64,
    pub recovery_window_s: u64,
    pub converged_lag_ms_max: u64,
}

impl MeasureParams {
    pub fn new(expects_failover: bool) -> MeasureParams {
        MeasureParams {
            expects_failover,
            success_per_mille_min: SUCCESS_PER_MILLE_MIN,
            recovery_window_s: RECOVERY_WINDOW_S,
            converged_lag_ms_max: CONVERGED_LAG_MS_MAX,
        }
    }
}

/// Client requests started in one second of the drill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecondBucket {
    pub second: u64,
    pub ok: u64,
    pub total: u64,
}

impl SecondBucket {
    fn meets(&self, per_mille_min: u64) -> bool {
        self.total > 0 && self.ok * 1000 >= self.total * per_mille_min
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurements {
    pub fault_ms: Option<u64>,
    pub heal_ms: Option<u64>,
    /// Time of the last op or event.
    pub end_ms: u64,
    pub requests: u64,
    pub requests_ok: u64,
    pub dns_answer_before: Vec<String>,
    /// The first different answer after the fault.
    pub dns_answer_switched_to: Option<Vec<String>>,
    pub rto_dns_ms: Option<u64>,
    pub rto_99_ms: Option<u64>,
    /// Fault → the controller's generation rose.
    pub failover_decided_ms: Option<u64>,
    pub generation_start: Option<u64>,
    pub generation_end: Option<u64>,
    /// Generation increases observed during the drill.
    pub failovers: u64,
    /// Failovers in a scenario that expects none.
    pub false_failovers: u64,
    /// Changes of the active region observed during the drill.
    pub region_changes: u64,
    /// Of those, the changes before the heal: a failover while the fault lasts, or a flap.
    /// (A failback once the fault is over is the system working, not a flap.)
    #[serde(default)]
    pub region_changes_during_fault: u64,
    pub lag_at_failover_ms: Option<u64>,
    pub lag_max_ms: Option<u64>,
    pub converge_ms: Option<u64>,
    pub failback_ms: Option<u64>,
    pub success: Vec<SecondBucket>,
    /// Fault steps run, and those that failed (a drill whose faults were not injected proves
    /// nothing).
    pub steps: u64,
    pub steps_failed: u64,
    /// Client DNS queries that reached the server (cache misses).
    pub client_lookups: u64,
    /// The smallest gap between two successive queries of one client that got answers, and the
    /// TTL the first of them carried: a client honouring TTLs keeps the gap ≥ the TTL.
    pub client_requery_gap_ms_min: Option<(u64, u32)>,
    /// Each watched provider: where it pointed at the fault and when it switched.
    #[serde(default)]
    pub providers: Vec<ProviderMeasure>,
}

/// One provider's switch: fault → the first reading pointing at another region.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderMeasure {
    pub provider: String,
    pub before: Option<String>,
    pub switched_to: Option<String>,
    pub rto_ms: Option<u64>,
    /// Heal → the first reading, after the switch, that points at `before` again (the
    /// provider followed the failback).
    #[serde(default)]
    pub back_ms: Option<u64>,
    /// The region of the last reading.
    #[serde(default)]
    pub last: Option<String>,
}

/// Per provider (in order of first reading): the region it pointed at when the fault began,
/// the first reading after it that points at another region, and (after `heal_ms`) the first
/// reading that points back at the first region.
///
/// "Pointed at when the fault began" is the last reading naming a region at or before the
/// fault: a reading naming none (an empty answer, both regions at once) says where the
/// provider is not, so it neither starts nor ends a switch. A provider never read naming a
/// region before the fault is taken to point at `active_at_fault` (the controller's region
/// then), so its first reading after the fault is not a switch merely for naming a region.
pub fn provider_switches(
    events: &[Event],
    fault_ms: Option<u64>,
    heal_ms: Option<u64>,
    active_at_fault: Option<&str>,
) -> Vec<ProviderMeasure> {
    let mut order: Vec<&str> = Vec::new();
    for event in events {
        if let EventKind::Provider { provider, .. } = &event.kind
            && !order.contains(&provider.as_str())
        {
            order.push(provider);
        }
    }
    order
        .into_iter()
        .map(|name| {
            let readings: Vec<(u64, Option<&String>)> = events
                .iter()
                .filter_map(|e| match &e.kind {
                    EventKind::Provider { provider, region, .. } if provider == name => {
                        Some((e.at_ms, region.as_ref()))
                    }
                    _ => None,
                })
                .collect();
            let mut measure = ProviderMeasure {
                provider: name.to_string(),
                ..ProviderMeasure::default()
            };
            measure.last = readings.iter().rev().find_map(|(_, region)| region.cloned());
            let Some(fault) = fault_ms else { return measure };
            measure.before = readings
                .iter()
                .rev()
                .filter(|(at, _)| *at <= fault)
                .find_map(|(_, region)| region.cloned())
                .or_else(|| active_at_fault.map(String::from));
            if let Some((at, region)) = readings
                .iter()
                .find(|(at, region)| *at >= fault && region.is_some() && region.cloned() != measure.before)
            {
                measure.rto_ms = Some(at - fault);
                measure.switched_to = region.cloned();
                if let (Some(heal), Some(before)) = (heal_ms, &measure.before) {
                    let from = (*at).max(heal);
                    measure.back_ms = readings
                        .iter()
                        .find(|(back_at, region)| *back_at >= from && *region == Some(before))
                        .map(|(back_at, _)| back_at - heal);
                }
            }
            measure
        })
        .collect()
}

fn sorted(answer: &[String]) -> Vec<String> {
    let mut answer = answer.to_vec();
    answer.sort();
    answer
}

/// Per-second success of client requests, from second 0 to the last request's second.
pub fn success_series(history: &History) -> Vec<SecondBucket> {
    let mut buckets: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for pair in history.pairs() {
        if !matches!(pair.invoke.action, Action::Request { .. }) {
            continue;
        }
        let entry = buckets.entry(pair.invoke.at_ms / 1000).or_default();
        entry.1 += 1;
        if pair.outcome() == Phase::Ok {
            entry.0 += 1;
        }
    }
    let Some(&last) = buckets.keys().next_back() else {
        return Vec::new();
    };
    (0..=last)
        .map(|second| {
            let (ok, total) = buckets.get(&second).copied().unwrap_or((0, 0));
            SecondBucket { second, ok, total }
        })
        .collect()
}

/// Fault → the first second from which a whole window of seconds meets the success rate.
pub fn rto_99(series: &[SecondBucket], fault_ms: u64, params: &MeasureParams) -> Option<u64> {
    let window = params.recovery_window_s.max(1) as usize;
    let first = (fault_ms / 1000) as usize;
    (first..series.len()).find_map(|start| {
        let end = start.checked_add(window)?;
        let slice = series.get(start..end)?;
        slice
            .iter()
            .all(|bucket| bucket.meets(params.success_per_mille_min))
            .then(|| (start as u64 * 1000).max(fault_ms) - fault_ms)
    })
}

/// Authoritative answers in time order: (completion time, sorted answer). Failed lookups are
/// left out: an unanswered query says nothing about what the server would answer.
fn authoritative_answers(history: &History) -> Vec<(u64, Vec<String>)> {
    history
        .pairs()
        .into_iter()
        .filter(|pair| pair.outcome() == Phase::Ok)
        .filter_map(|pair| match pair.action() {
            Action::Lookup {
                authoritative: true,
                answer,
                ..
            } => Some((pair.completion.map_or(pair.invoke.at_ms, |op| op.at_ms), sorted(answer))),
            _ => None,
        })
        .collect()
}

fn client_requery_gap(history: &History) -> Option<(u64, u32)> {
    let mut last: BTreeMap<u32, (u64, u32)> = BTreeMap::new();
    let mut smallest: Option<(u64, u32)> = None;
    for pair in history.pairs() {
        let Action::Lookup {
            authoritative: false,
            answer,
            ttl_s,
            ..
        } = pair.action()
        else {
            continue;
        };
        let process = pair.invoke.process;
        if let Some(&(previous_ms, previous_ttl_s)) = last.get(&process) {
            let gap = pair.invoke.at_ms - previous_ms;
            if smallest.is_none_or(|(s, _)| gap < s) {
                smallest = Some((gap, previous_ttl_s));
            }
        }
        if pair.outcome() == Phase::Ok && !answer.is_empty() {
            last.insert(process, (pair.invoke.at_ms, *ttl_s));
        } else {
            last.remove(&process);
        }
    }
    smallest
}

pub fn measure(history: &History, events: &[Event], params: &MeasureParams) -> Measurements {
    let mut m = Measurements {
        fault_ms: events.iter().find(|e| e.kind == EventKind::FaultStart).map(|e| e.at_ms),
        end_ms: history
            .ops()
            .last()
            .map_or(0, |op| op.at_ms)
            .max(events.iter().map(|e| e.at_ms).max().unwrap_or(0)),
        success: success_series(history),
        ..Measurements::default()
    };
    m.heal_ms = events
        .iter()
        .find(|e| e.kind == EventKind::Heal && m.fault_ms.is_none_or(|f| e.at_ms >= f))
        .map(|e| e.at_ms);
    m.requests = m.success.iter().map(|b| b.total).sum();
    m.requests_ok = m.success.iter().map(|b| b.ok).sum();
    m.client_lookups = history
        .ops()
        .iter()
        .filter(|op| {
            op.phase == Phase::Invoke
                && matches!(
                    op.action,
                    Action::Lookup {
                        authoritative: false,
                        ..
                    }
                )
        })
        .count() as u64;

    m.client_requery_gap_ms_min = client_requery_gap(history);
    for event in events {
        if let EventKind::Step { ok, .. } = event.kind {
            m.steps += 1;
            if !ok {
                m.steps_failed += 1;
            }
        }
    }

    // DNS.
    let answers = authoritative_answers(history);
    if let Some(fault) = m.fault_ms {
        m.dns_answer_before = answers
            .iter()
            .rev()
            .find(|(at, answer)| *at <= fault && !answer.is_empty())
            .map(|(_, answer)| answer.clone())
            .unwrap_or_default();
        if let Some((at, answer)) = answers
            .iter()
            .find(|(at, answer)| *at >= fault && !answer.is_empty() && *answer != m.dns_answer_before)
        {
            m.rto_dns_ms = Some(at - fault);
            m.dns_answer_switched_to = Some(answer.clone());
            if let Some(heal) = m.heal_ms {
                let back = answers
                    .iter()
                    .find(|(back_at, back)| *back_at >= heal.max(*at) && *back == m.dns_answer_before);
                m.failback_ms = back.map(|(back_at, _)| back_at - heal);
            }
        }
        m.rto_99_ms = rto_99(&m.success, fault, params);
    }

    // The controller.
    let mut previous: Option<(&str, u64)> = None;
    for event in events {
        let EventKind::ActiveRegion { region, generation } = &event.kind else {
            continue;
        };
        match previous {
            None => m.generation_start = Some(*generation),
            Some((previous_region, previous_generation)) => {
                if *generation > previous_generation {
                    m.failovers += 1;
                    if m.failover_decided_ms.is_none() {
                        m.failover_decided_ms = m.fault_ms.map(|f| event.at_ms.saturating_sub(f));
                        m.lag_at_failover_ms =
                            events
                                .iter()
                                .rev()
                                .filter(|e| e.at_ms <= event.at_ms)
                                .find_map(|e| match e.kind {
                                    EventKind::ReplicationLag { lag_ms: Some(lag) } => Some(lag),
                                    _ => None,
                                });
                    }
                }
                if region != previous_region {
                    m.region_changes += 1;
                    if m.heal_ms.is_none_or(|heal| event.at_ms < heal) {
                        m.region_changes_during_fault += 1;
                    }
                }
            }
        }
        m.generation_end = Some(*generation);
        previous = Some((region, *generation));
    }
    if !params.expects_failover {
        m.false_failovers = m.failovers;
    }

    let active_at_fault = m.fault_ms.and_then(|fault| {
        events
            .iter()
            .rev()
            .filter(|e| e.at_ms <= fault)
            .find_map(|e| match &e.kind {
                EventKind::ActiveRegion { region, .. } => Some(region.as_str()),
                _ => None,
            })
    });
    m.providers = provider_switches(events, m.fault_ms, m.heal_ms, active_at_fault);

    // Replication.
    m.lag_max_ms = events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::ReplicationLag { lag_ms } => lag_ms,
            _ => None,
        })
        .max();
    if let Some(heal) = m.heal_ms {
        m.converge_ms = events.iter().filter(|e| e.at_ms >= heal).find_map(|e| match e.kind {
            EventKind::ReplicationLag { lag_ms: Some(lag) } if lag <= params.converged_lag_ms_max => {
                Some(e.at_ms - heal)
            }
            _ => None,
        });
    }
    m
}

#[cfg(test)]
mod tests;
