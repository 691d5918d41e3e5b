//! What a vantage point tells the controller (`Report`) and what the controller tells an agent
//! (`AgentPlan`): the JSON bodies of `POST /v1/agent/report` and `GET /v1/agent/plan`.

use serde::{Deserialize, Serialize};

use crate::spec::CheckSpec;

/// Path of the plan endpoint on the controller (`?name=AGENT`), answered with an `AgentPlan`.
pub const PLAN_PATH: &str = "/v1/agent/plan";
/// Path of the report endpoint on the controller; takes a `Report`, answers 204.
pub const REPORT_PATH: &str = "/v1/agent/report";
/// Request header of an agent's report: how many controller members the agent can send it to.
/// A member that knows no leader answers 503 (`no_leader`) when there are others, so the agent
/// moves on to a member that passes reports on to the leader; to an agent with one member it
/// answers 204 (the report counts there, the agent has nowhere else to go).
pub const MEMBERS_HEADER: &str = "x-switchyard-members";
/// Default time between two reports of an agent.
pub const DEFAULT_REPORT_INTERVAL_MS: u64 = 500;

/// The judgement of one check by one vantage point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Up,
    Down,
}

/// One check's state as seen from one vantage point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// `CheckSpec::name`.
    pub check: String,
    /// `CheckSpec::region`.
    pub region: String,
    /// The state after rise/fall, not the last probe's raw outcome.
    pub status: CheckStatus,
    /// When `status` last changed (or the check started), on the vantage point's clock.
    pub since_ms: u64,
    /// The last probe's outcome in words, e.g. `HTTP 200 in 3 ms` or `connect: refused`.
    pub detail: String,
    /// Duration of the last probe, if it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Replication lag the last probe read (SQL and Redis probes that ask for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_lag_ms: Option<u64>,
    /// Where the server stands in its replication stream (SQL and Redis probes that read lag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<ReplicationPosition>,
}

/// Where a database server stands in its replication stream, as an `sql` or `redis` check that
/// reads lag saw it: compared between the servers of one database, it tells how much a
/// promotion of a replica would lose before anyone confirms a failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationPosition {
    /// `primary` or `replica`.
    pub role: String,
    /// [`POSITION_GTID`], [`POSITION_LSN`] or [`POSITION_OFFSET`].
    pub kind: String,
    /// What the server holds: a primary's written position, a replica's received one.
    pub received: String,
    /// A replica's applied position (executed GTIDs, replayed LSN), when it reads one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
}

/// MariaDB `domain-server-seq` lists or MySQL GTID sets.
pub const POSITION_GTID: &str = "gtid";
/// PostgreSQL WAL positions (`X/Y`, bytes).
pub const POSITION_LSN: &str = "lsn";
/// Redis replication offsets (bytes).
pub const POSITION_OFFSET: &str = "offset";

/// Longest position text kept (a MySQL GTID set can be long); longer ones are not reported.
pub const POSITION_CHARS_MAX: usize = 4096;

impl ReplicationPosition {
    /// A position, or `None` when the text is empty or longer than [`POSITION_CHARS_MAX`].
    pub fn new(role: &str, kind: &str, received: &str, applied: Option<&str>) -> Option<ReplicationPosition> {
        let fits = |t: &str| !t.trim().is_empty() && t.len() <= POSITION_CHARS_MAX;
        fits(received).then(|| ReplicationPosition {
            role: role.to_string(),
            kind: kind.to_string(),
            received: received.trim().to_string(),
            applied: applied.filter(|a| fits(a)).map(|a| a.trim().to_string()),
        })
    }
}

/// Everything one vantage point currently knows, sent as a whole (not as deltas) so a lost
/// report costs nothing and the latest one alone is enough.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The vantage point's name (`switchyard agent --name`).
    pub vantage: String,
    /// When the report was made, on the vantage point's clock; orders reports of one vantage.
    /// Freshness is judged on the receiver's clock, never on this.
    pub sent_at_ms: u64,
    /// One entry per check that has completed at least one probe.
    pub results: Vec<CheckResult>,
}

/// What the controller hands an agent: the checks to run and how often to report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPlan {
    pub checks: Vec<CheckSpec>,
    #[serde(default = "default_report_interval_ms")]
    pub report_interval_ms: u64,
}

fn default_report_interval_ms() -> u64 {
    DEFAULT_REPORT_INTERVAL_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_json_shape() {
        let report = Report {
            vantage: "eu-agent".into(),
            sent_at_ms: 42,
            results: vec![CheckResult {
                check: "app".into(),
                region: "us-east-1".into(),
                status: CheckStatus::Down,
                since_ms: 40,
                detail: "connect: refused".into(),
                latency_ms: None,
                replica_lag_ms: Some(1500),
                position: None,
            }],
        };
        let json = serde_json::to_value(&report).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "vantage": "eu-agent",
                "sent_at_ms": 42,
                "results": [{
                    "check": "app", "region": "us-east-1", "status": "down", "since_ms": 40,
                    "detail": "connect: refused", "replica_lag_ms": 1500
                }]
            })
        );
        let back: Report = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, report);
    }

    #[test]
    fn plan_defaults_report_interval() {
        let plan: AgentPlan = serde_json::from_str(r#"{"checks": []}"#).expect("valid");
        assert_eq!(plan.report_interval_ms, DEFAULT_REPORT_INTERVAL_MS);
    }
}
