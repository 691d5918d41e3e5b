//! Built without the `etcd` feature: `[controller.ha]` is refused by the config check, so no
//! member ever exists. `Member` is uninhabited; its methods only satisfy the server's code.

use std::sync::Arc;

use super::leadership::{LeaderInfo, LeadershipStatus, Role, Term};
use super::{GuardError, HoldTimers, Notice, SharedState};
use crate::engine::{RegionId, RunbookOrder, RunbookOutcome};

pub enum Member {}

impl Member {
    pub fn name(&self) -> &str {
        match *self {}
    }
    pub fn lease_ms(&self) -> u64 {
        match *self {}
    }
    pub fn acting(&self) -> Option<Term> {
        match *self {}
    }
    pub async fn term_ended(&self, _: Term) {
        match *self {}
    }
    pub fn pointer_stale(&self) -> Option<String> {
        match *self {}
    }
    pub fn leader(&self) -> Option<LeaderInfo> {
        match *self {}
    }
    pub fn role(&self) -> Role {
        match *self {}
    }
    pub fn status(&self) -> LeadershipStatus {
        match *self {}
    }
    pub fn take_over(&self) -> Option<SharedState> {
        match *self {}
    }
    pub fn take_over_incidents(&self) -> Option<Result<Option<super::incidents::IncidentList>, String>> {
        match *self {}
    }
    pub async fn save_incidents(&self, _: Term, _: &super::incidents::IncidentList) -> Result<(), GuardError> {
        match *self {}
    }
    pub fn seen(&self) -> Option<SharedState> {
        match *self {}
    }
    pub fn wall_now_for(&self, _: &SharedState) -> u64 {
        match *self {}
    }
    pub async fn drive(self: Arc<Self>, _notify: impl Fn(Notice) + Send + Sync + 'static) {
        match *self {}
    }
    pub async fn resign(&self) {
        match *self {}
    }
    pub async fn start_runbook(
        &self,
        _: Term,
        _: &RunbookOrder,
        _: &HoldTimers,
    ) -> Result<std::collections::BTreeMap<String, u64>, GuardError> {
        match *self {}
    }
    pub async fn before_step(&self, _: Term, _: &RunbookOrder, _: Option<&str>) -> Result<(), GuardError> {
        match *self {}
    }
    pub async fn finish_runbook(&self, _: Term, _: &RunbookOrder, _: &RunbookOutcome) -> Result<(), GuardError> {
        match *self {}
    }
    pub async fn save_preferences(&self, _: Term, _: &RegionId, _: bool) -> Result<(), GuardError> {
        match *self {}
    }
}
