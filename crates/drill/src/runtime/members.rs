//! Several controllers (`[[controllers]]` in the deployment file): which member acts, read from
//! each member's `GET /health` (its `ha` object), the monitor that records it, and the audit
//! logs read after the drill.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::sync::Arc;

use super::deployment::{ControllerMember, Deployment};
use super::http::HttpClient;
use super::workload::Context;
use crate::ha::{AUDIT_BYTES_MAX, MemberLog};
use crate::measure::EventKind;

/// Deadline of one `/health` call to a member.
pub const MEMBER_TIMEOUT_MS: u64 = 1_000;
/// Pause between two rounds of `/health` calls (the monitor's and the waits').
pub const MEMBER_POLL_MS: u64 = 250;

/// What one member's `/health` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHealth {
    /// It holds the leader key and may act right now.
    pub acting: bool,
    /// etcd's shared state (as this member last read it) records a runbook in progress.
    pub runbook_in_progress: bool,
    /// The runbook step whose attempt is under way on this member (its guard in etcd passed),
    /// if any.
    pub step_in_flight: Option<String>,
    /// The active region etcd's shared state records (the last runbook's that succeeded).
    pub active: Option<String>,
    pub generation: u64,
}

/// Reads `GET URL/health`: an error when it does not answer, or answers without an `ha`
/// object (a controller without `[controller.ha]`).
pub async fn health(http: &HttpClient, member: &ControllerMember) -> Result<MemberHealth, String> {
    let url = format!("{}/health", member.url.trim_end_matches('/'));
    let response = http
        .send("GET", &url, &[], None, MEMBER_TIMEOUT_MS)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status != 200 {
        return Err(format!("{url} answered {}", response.status));
    }
    let value = response.json().ok_or_else(|| format!("{url} did not answer JSON"))?;
    let ha = &value["ha"];
    let acting = ha["acting"].as_bool().ok_or_else(|| {
        format!(
            "{url} has no ha.acting: is member {} a controller with [controller.ha]?",
            member.name
        )
    })?;
    Ok(MemberHealth {
        acting,
        runbook_in_progress: !ha["shared"]["runbook"].is_null(),
        step_in_flight: ha["step_in_flight"]["step"].as_str().map(str::to_string),
        active: ha["shared"]["observed"]["active"].as_str().map(str::to_string),
        generation: value["generation"].as_u64().unwrap_or(0),
    })
}

/// The member that acts now (the first that says so), with its health; none when no member
/// answers that it acts.
pub async fn acting(http: &HttpClient, deployment: &Deployment) -> Option<(String, MemberHealth)> {
    for member in &deployment.controllers {
        if let Ok(health) = health(http, member).await
            && health.acting
        {
            return Some((member.name.clone(), health));
        }
    }
    None
}

/// Records which member acts (and its generation) whenever that changes.
pub async fn leader_watcher(ctx: Arc<Context>) {
    let mut last: Option<(Option<String>, u64)> = None;
    loop {
        let now = acting(&ctx.http, &ctx.deployment).await;
        let reading = match now {
            Some((member, health)) => (Some(member), health.generation),
            // Keep the last generation while nobody acts: the change is who acts.
            None => (None, last.as_ref().map_or(0, |l| l.1)),
        };
        if last.as_ref().map(|l| &l.0) != Some(&reading.0) {
            ctx.recorder.event(EventKind::Leader {
                member: reading.0.clone(),
                generation: reading.1,
            });
            last = Some(reading);
        }
        if !ctx.pause(MEMBER_POLL_MS).await {
            break;
        }
    }
}

/// Reads the newest [`AUDIT_BYTES_MAX`] of a file (the first, possibly cut, line is dropped
/// then).
fn read_tail(path: &std::path::Path) -> Result<String, String> {
    let shown = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| format!("open {shown}: {e}"))?;
    let length = file.metadata().map_err(|e| format!("stat {shown}: {e}"))?.len();
    let cut = length > AUDIT_BYTES_MAX;
    if cut {
        file.seek(SeekFrom::Start(length - AUDIT_BYTES_MAX))
            .map_err(|e| format!("seek {shown}: {e}"))?;
    }
    let mut bytes = Vec::new();
    file.take(AUDIT_BYTES_MAX)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read {shown}: {e}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(if cut {
        text.split_once('\n')
            .map_or(String::new(), |(_, rest)| rest.to_string())
    } else {
        text
    })
}

/// Every member's audit log (those the deployment file names a path for).
pub fn audit_logs(deployment: &Deployment) -> Vec<MemberLog> {
    deployment
        .controllers
        .iter()
        .map(|member| MemberLog {
            member: member.name.clone(),
            text: match &member.audit_log {
                Some(path) => read_tail(path),
                None => Err("the deployment file gives no audit_log for it".into()),
            },
        })
        .collect()
}
