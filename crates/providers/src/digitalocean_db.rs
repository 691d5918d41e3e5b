//! `digitalocean_db_promote`: promotes the read-only replica of a DigitalOcean Managed
//! Database (MySQL or PostgreSQL) that serves the order's region to an independent primary
//! cluster, and waits until it is online (API v2, `Authorization: Bearer`).
//!
//! One run, for the region the order moves to:
//! 1. If the region is the source cluster's own (`primary_region`), nothing is promoted: the
//!    source is the primary while no replica was promoted; once one was, a failback is refused
//!    (DigitalOcean cannot turn a cluster back into a replica: fork a new replica of the
//!    promoted cluster, or move the application's data back by hand).
//! 2. Fence: every other region's replica is read (`GET /v2/databases/{cluster}/replicas/{name}`);
//!    one that is gone from the source and exists as a cluster of its own
//!    (`GET /v2/databases/{id}`) was promoted already (by a newer order, or an operator):
//!    promoting a second one would make two primaries, so the run is `Fenced`.
//! 3. The replica: listed under the source and `online`/`active` → `PUT
//!    /v2/databases/{cluster}/replicas/{name}/promote` (204); still `creating`/`forking` →
//!    retried later; gone from the source and its own cluster → promoted already (a retry, or
//!    a controller that restarted mid-runbook rolls forward without promoting twice).
//! 4. Poll (every `poll_ms`, at most `wait_ms`) until it is gone from the source's replicas
//!    and `GET /v2/databases/{id}` says `online`: verified after acting.
//!
//! The replica's `id` is in the settings, as `doctl databases replica list CLUSTER --format
//! Name,ID` shows it: after the promotion the replica's name no longer resolves under the
//! source, and the id is how the promoted cluster is found again. The old primary keeps
//! taking writes if it is up: fence the application's path to it (the `haproxy` step, or the
//! proxy) — DigitalOcean has no read-only switch for a cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::digitalocean::{checked, failure};
use crate::rest::{Rest, check_api, transport};
use crate::{Checker, Failure, Order, Outcome};

/// Default and longest wait for a promoted replica to come online within one attempt (a
/// promotion restarts the nodes: minutes). The longest is a step's longest `timeout_ms`; a
/// promotion slower than that is waited for again by the next attempt, not promoted twice.
pub const WAIT_MS_DEFAULT: u64 = 540_000;
pub const WAIT_MS_MAX: u64 = 600_000;
/// Default and shortest interval between two polls.
pub const POLL_MS_DEFAULT: u64 = 5_000;
pub const POLL_MS_MIN: u64 = 10;
/// A replica's (or cluster's) statuses in which it serves.
pub const READY_STATUSES: &[&str] = &["online", "active"];
/// Longest replica name accepted (DigitalOcean names are short slugs).
pub const NAME_BYTES_MAX: usize = 63;

crate::cas::rest_settings! {
    /// The `[runbook.digitalocean_db_promote]` table. Its `token` is a personal access token
    /// with write scope on databases.
    pub struct Settings {
        /// The source (primary) cluster's UUID.
        pub cluster: Spanned<String>,
        /// The region the source cluster serves; optional.
        #[serde(default)]
        pub primary_region: Option<Spanned<String>>,
        /// Per region, the read-only replica promoted when that region becomes active.
        pub replicas: Spanned<BTreeMap<String, Spanned<ReplicaSettings>>>,
        #[serde(default)]
        pub wait_ms: Option<Spanned<u64>>,
        #[serde(default)]
        pub poll_ms: Option<Spanned<u64>>,
    }
}

/// `{ name = "shop-db-nyc3", id = "5e8c2a7b-..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSettings {
    pub name: Spanned<String>,
    pub id: Spanned<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Replica {
    name: String,
    id: String,
}

/// The checked step, ready to run.
#[derive(Debug)]
pub struct DigitalOceanDbPromote {
    api: Rest,
    cluster: String,
    primary_region: Option<String>,
    replicas: BTreeMap<String, Replica>,
    wait_ms: u64,
    poll_ms: u64,
}

/// `8-4-4-4-12` hexadecimal digits.
fn valid_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn valid_name(text: &str) -> bool {
    !text.is_empty() && text.len() <= NAME_BYTES_MAX && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl Settings {
    /// Reports every problem through `checker` and returns the step ready to run.
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<DigitalOceanDbPromote> {
        let what = format!("digitalocean_db_promote step '{step}'");
        let mut ok = true;
        let token = self
            .token
            .get_ref()
            .resolve(self.token.span(), &format!("{what} token"), checker);
        let (url, timeout_ms) = check_api(&what, &self.rest_keys(crate::digitalocean::API_URL_DEFAULT), checker);
        if !valid_uuid(self.cluster.get_ref()) {
            checker.error(
                self.cluster.span(),
                format!("{what}: cluster '{}' is not a cluster UUID", self.cluster.get_ref()),
                "copy the source cluster's ID from `doctl databases list`, like 9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"
                    .into(),
            );
            ok = false;
        }
        let regions = checker.regions().clone();
        let known = |region: &str| regions.contains(region);
        let hint = format!(
            "use the names of [[regions]]: {}",
            regions.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        if let Some(primary) = &self.primary_region
            && !known(primary.get_ref())
        {
            checker.error(
                primary.span(),
                format!(
                    "{what}: primary_region '{}' is not a configured region",
                    primary.get_ref()
                ),
                hint.clone(),
            );
            ok = false;
        }
        let mut replicas = BTreeMap::new();
        if self.replicas.get_ref().is_empty() {
            checker.error(
                self.replicas.span(),
                format!("{what}: replicas lists no replica"),
                "name each region's replica, like replicas = { us = { name = \"shop-db-nyc3\", id = \"...\" } }".into(),
            );
            ok = false;
        }
        for (region, replica) in self.replicas.get_ref() {
            if !known(region) {
                checker.error(
                    replica.span(),
                    format!("{what}: replicas names region '{region}', which is not configured"),
                    hint.clone(),
                );
                ok = false;
            }
            if self.primary_region.as_ref().is_some_and(|p| p.get_ref() == region) {
                checker.error(
                    replica.span(),
                    format!("{what}: region '{region}' is the primary_region and also has a replica"),
                    "the source cluster serves its own region; list replicas of the other regions only".into(),
                );
                ok = false;
            }
            let r = replica.get_ref();
            if !valid_name(r.name.get_ref()) {
                checker.error(
                    r.name.span(),
                    format!("{what}: replica name '{}' is not a DigitalOcean database name", r.name.get_ref()),
                    format!("letters, digits and '-', at most {NAME_BYTES_MAX} characters, as `doctl databases replica list` shows it"),
                );
                ok = false;
            }
            if !valid_uuid(r.id.get_ref()) {
                checker.error(
                    r.id.span(),
                    format!("{what}: replica id '{}' is not a UUID", r.id.get_ref()),
                    "copy it from `doctl databases replica list CLUSTER --format Name,ID`".into(),
                );
                ok = false;
            }
            replicas.insert(
                region.clone(),
                Replica {
                    name: r.name.get_ref().clone(),
                    id: r.id.get_ref().to_ascii_lowercase(),
                },
            );
        }
        let mut bounded = |value: &Option<Spanned<u64>>, name: &str, default: u64, min: u64, max: u64| match value {
            None => default,
            Some(v) if (min..=max).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                checker.error(
                    v.span(),
                    format!("{what}: {name} = {} is not between {min} and {max}", v.get_ref()),
                    format!("leave it out for {default}"),
                );
                ok = false;
                default
            }
        };
        let wait_ms = bounded(&self.wait_ms, "wait_ms", WAIT_MS_DEFAULT, 1, WAIT_MS_MAX);
        let poll_ms = bounded(&self.poll_ms, "poll_ms", POLL_MS_DEFAULT, POLL_MS_MIN, WAIT_MS_MAX);
        let token = token?;
        let url = url?;
        if !ok {
            return None;
        }
        let api = Rest::for_step(&url, Some(token), timeout_ms, &what, self.token.span(), checker)?;
        Some(DigitalOceanDbPromote {
            api,
            cluster: self.cluster.get_ref().to_ascii_lowercase(),
            primary_region: self.primary_region.as_ref().map(|p| p.get_ref().clone()),
            replicas,
            wait_ms,
            poll_ms,
        })
    }
}

/// Where a configured replica stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Listed under the source cluster, with its status.
    Replica { status: String },
    /// Gone from the source and a cluster of its own, with its status.
    Promoted { status: String },
    /// Neither: deleted, or the settings name the wrong replica.
    Missing,
}

/// What a run does (pure): `target` is the state of the order's region's replica (`None` when
/// the order moves to the primary region), `others` those of every other region's replica.
pub fn decide(target: Option<(&str, &State)>, others: &[(&str, &State)]) -> Result<Decision, Failure> {
    let promoted: Vec<&str> = others
        .iter()
        .filter(|(_, s)| matches!(s, State::Promoted { .. }))
        .map(|(r, _)| *r)
        .collect();
    let Some((region, state)) = target else {
        return match promoted.as_slice() {
            [] => Ok(Decision::SourceIsPrimary),
            regions => Err(Failure::Refused(format!(
                "the replica of {} was promoted: the source cluster is no longer the primary, and DigitalOcean cannot make a cluster a replica again; fork a new read-only replica of the promoted cluster and promote that, or move back by hand",
                regions.join(", ")
            ))),
        };
    };
    if let Some(other) = promoted.first() {
        return Err(Failure::Fenced(format!(
            "the replica of {other} was promoted already (by a newer order, or by hand): promoting {region}'s too would make two primaries"
        )));
    }
    match state {
        State::Replica { status } if READY_STATUSES.contains(&status.as_str()) => Ok(Decision::Promote),
        State::Replica { status } => Err(Failure::Retryable(format!(
            "the replica of {region} is {status}, not online: it cannot be promoted yet"
        ))),
        State::Promoted { status } if READY_STATUSES.contains(&status.as_str()) => Ok(Decision::Done),
        State::Promoted { .. } => Ok(Decision::Wait),
        State::Missing => Err(Failure::Refused(format!(
            "the replica of {region} is neither a replica of the source cluster nor a cluster of its own: check its name and id against `doctl databases replica list`"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The order moves to the source cluster's region and no replica was promoted.
    SourceIsPrimary,
    Promote,
    /// Promoted by an earlier run, not online yet.
    Wait,
    Done,
}

impl DigitalOceanDbPromote {
    /// The shortest step timeout that lets an attempt see a promotion through.
    pub fn least_timeout_ms(&self) -> u64 {
        self.wait_ms
    }

    /// `Some(status)` of `GET path` under `key`, `None` on 404.
    async fn status(&self, path: &str, key: &str, doing: &str) -> Result<Option<(String, Value)>, Failure> {
        let answer = self.api.send(Method::GET, path, None).await.map_err(transport)?;
        if answer.status == 404 {
            return Ok(None);
        }
        let body = checked(&answer, doing)?;
        let object = body
            .get(key)
            .cloned()
            .ok_or_else(|| Failure::Retryable(format!("DigitalOcean's answer to {doing} has no {key}")))?;
        let status = object
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::Retryable(format!("DigitalOcean's {key} in the answer to {doing} has no status")))?
            .to_string();
        Ok(Some((status, object)))
    }

    async fn state(&self, region: &str, replica: &Replica) -> Result<State, Failure> {
        let listed = self
            .status(
                &format!("/v2/databases/{}/replicas/{}", self.cluster, replica.name),
                "replica",
                &format!("reading the replica {} of {region}", replica.name),
            )
            .await?;
        if let Some((status, object)) = listed {
            if let Some(id) = object.get("id").and_then(Value::as_str)
                && !id.eq_ignore_ascii_case(&replica.id)
            {
                return Err(Failure::Refused(format!(
                    "the replica named {} has id {id}, not the configured {}: fix the step's replicas",
                    replica.name, replica.id
                )));
            }
            return Ok(State::Replica { status });
        }
        match self
            .status(
                &format!("/v2/databases/{}", replica.id),
                "database",
                &format!("reading the cluster {} (the replica of {region})", replica.id),
            )
            .await?
        {
            Some((status, _)) => Ok(State::Promoted { status }),
            None => Ok(State::Missing),
        }
    }

    /// Runs one attempt (see the module documentation).
    pub async fn run(&self, order: &Order) -> Outcome {
        let target = self.replicas.get(&order.to);
        if target.is_none() && self.primary_region.as_deref() != Some(order.to.as_str()) {
            return Err(Failure::Refused(format!(
                "no replica is configured for region {} and it is not the primary_region",
                order.to
            )));
        }
        let mut others = Vec::new();
        for (region, replica) in &self.replicas {
            if region != &order.to {
                others.push((region.as_str(), self.state(region, replica).await?));
            }
        }
        let target_state = match target {
            Some(replica) => Some(self.state(&order.to, replica).await?),
            None => None,
        };
        let others_ref: Vec<(&str, &State)> = others.iter().map(|(r, s)| (*r, s)).collect();
        let decision = decide(target_state.as_ref().map(|s| (order.to.as_str(), s)), &others_ref)?;
        let (Some(replica), false) = (target, decision == Decision::SourceIsPrimary) else {
            return Ok(format!(
                "region {} is served by the source cluster {}; no replica was promoted",
                order.to, self.cluster
            ));
        };
        let promoted_now = match decision {
            Decision::SourceIsPrimary | Decision::Done => {
                return Ok(format!(
                    "the replica {} of {} is a primary cluster already ({}, online); nothing promoted",
                    replica.name, order.to, replica.id
                ));
            }
            Decision::Wait => false,
            Decision::Promote => {
                let doing = format!("promoting the replica {} of {}", replica.name, order.to);
                let answer = self
                    .api
                    .send(
                        Method::PUT,
                        &format!("/v2/databases/{}/replicas/{}/promote", self.cluster, replica.name),
                        None,
                    )
                    .await
                    .map_err(transport)?;
                if !answer.is_success() {
                    return Err(failure(&answer, &doing));
                }
                true
            }
        };
        let waited = self.wait_online(&order.to, replica).await?;
        Ok(format!(
            "{} the replica {} of {} (cluster {}); gone from the source {} and online after {waited} ms",
            if promoted_now {
                "promoted"
            } else {
                "an earlier run promoted"
            },
            replica.name,
            order.to,
            replica.id,
            self.cluster
        ))
    }

    /// Polls until the replica is a cluster of its own and online (bounded by `wait_ms`).
    async fn wait_online(&self, region: &str, replica: &Replica) -> Result<u64, Failure> {
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(self.wait_ms);
        loop {
            let state = self.state(region, replica).await?;
            match &state {
                State::Promoted { status } if READY_STATUSES.contains(&status.as_str()) => {
                    return Ok(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX));
                }
                State::Missing => {
                    return Err(Failure::Retryable(format!(
                        "the replica {} of {region} vanished during its promotion (neither under the source nor as cluster {})",
                        replica.name, replica.id
                    )));
                }
                _ => {}
            }
            if tokio::time::Instant::now() + Duration::from_millis(self.poll_ms) > deadline {
                return Err(Failure::Retryable(format!(
                    "the replica {} of {region} is not an online cluster of its own within wait_ms = {} ({state:?}); the next attempt waits again without promoting twice",
                    replica.name, self.wait_ms
                )));
            }
            tokio::time::sleep(Duration::from_millis(self.poll_ms)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(status: &str) -> State {
        State::Replica { status: status.into() }
    }

    fn promoted(status: &str) -> State {
        State::Promoted { status: status.into() }
    }

    #[test]
    fn decisions_promote_wait_finish_and_fence() {
        assert_eq!(decide(Some(("us", &replica("online"))), &[]), Ok(Decision::Promote));
        assert_eq!(
            decide(Some(("us", &replica("active"))), &[("ap", &replica("online"))]),
            Ok(Decision::Promote)
        );
        assert!(
            matches!(decide(Some(("us", &replica("forking"))), &[]), Err(Failure::Retryable(m)) if m.contains("forking"))
        );
        assert_eq!(decide(Some(("us", &promoted("creating"))), &[]), Ok(Decision::Wait));
        assert_eq!(decide(Some(("us", &promoted("online"))), &[]), Ok(Decision::Done));
        let Err(Failure::Fenced(message)) = decide(Some(("us", &replica("online"))), &[("ap", &promoted("online"))])
        else {
            panic!("fenced");
        };
        assert!(message.contains("two primaries"), "{message}");
        assert!(matches!(
            decide(Some(("us", &State::Missing)), &[]),
            Err(Failure::Refused(_))
        ));
        assert_eq!(
            decide(None, &[("us", &replica("online"))]),
            Ok(Decision::SourceIsPrimary)
        );
        let Err(Failure::Refused(message)) = decide(None, &[("us", &promoted("online"))]) else {
            panic!("refused");
        };
        assert!(message.contains("cannot make a cluster a replica again"), "{message}");
    }

    #[test]
    fn ids_and_names_are_checked() {
        assert!(valid_uuid("9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"));
        assert!(!valid_uuid("9cc10173-e9ea-4176-9dbc"));
        assert!(!valid_uuid("9cc10173-e9ea-4176-9dbc-a4cee4c4ff3g"));
        assert!(valid_name("read-nyc3-01"));
        assert!(!valid_name("read nyc3"));
        assert!(!valid_name(""));
    }
}
