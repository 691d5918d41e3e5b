//! Fault injection against a real deployment: a [`FaultTarget`] over the deployment file, the
//! fault proxy's Toxiproxy-style HTTP API for link faults and a [`ProcessControl`] for process
//! faults. The lab implements [`ProcessControl`] over its supervisor (or [`FaultTarget`]
//! whole); without it, [`CommandProcessControl`] runs the deployment file's shell commands.

use std::future::Future;

use serde_json::json;

use super::deployment::{ControllerMember, Deployment, ProcessCommands};
use super::http::HttpClient;
use super::members;
use crate::scenario::{
    AWAIT_MS_MAX, Component, FaultAction, FaultError, FaultTarget, Link, RegionRole, Roles, Stream, Toxic, ToxicKind,
};

/// Deadline of one fault-proxy API call.
pub const FAULT_API_TIMEOUT_MS: u64 = 5_000;
/// Deadline of one process-control command.
pub const PROCESS_COMMAND_TIMEOUT_MS: u64 = 30_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessSignal {
    /// SIGKILL.
    Kill,
    /// SIGSTOP.
    Stop,
    /// SIGCONT.
    Cont,
}

/// Process faults by process name. The lab's supervisor implements this: it knows the pids
/// and how to start a process again with the same arguments.
pub trait ProcessControl: Send + Sync {
    fn signal(&self, process: &str, signal: ProcessSignal) -> impl Future<Output = Result<(), String>> + Send;
    /// Starts the process again (after a kill), with the same arguments and data.
    fn restart(&self, process: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Fills (`full = true`) a region's data disk below its store's watermark, or frees it.
    fn disk(&self, region: &str, full: bool) -> impl Future<Output = Result<(), String>> + Send {
        let region = region.to_string();
        async move {
            let _ = full;
            Err(format!(
                "cannot fill {region}'s disk: the deployment file has no fill_disk / free_disk commands (a lab started with --disk-mib has them)"
            ))
        }
    }
    /// Cuts (`up = false`) or restores a region's network link.
    fn network(&self, region: &str, up: bool) -> impl Future<Output = Result<(), String>> + Send {
        let region = region.to_string();
        async move {
            let _ = up;
            Err(format!(
                "cannot cut {region}'s network: the deployment file has no cut_network / heal_network commands (a lab started with --netns has them)"
            ))
        }
    }
}

/// Process control through shell commands with `{name}` replaced by the process name.
pub struct CommandProcessControl {
    pub commands: ProcessCommands,
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

impl CommandProcessControl {
    async fn run(&self, template: &str, process: &str) -> Result<(), String> {
        let command = template.replace("{name}", &shell_quote(process));
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(std::time::Duration::from_millis(PROCESS_COMMAND_TIMEOUT_MS), child)
            .await
            .map_err(|_| format!("`{command}` did not finish within {PROCESS_COMMAND_TIMEOUT_MS} ms"))?
            .map_err(|e| format!("`{command}` could not run: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{command}` exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }
}

impl ProcessControl for CommandProcessControl {
    async fn signal(&self, process: &str, signal: ProcessSignal) -> Result<(), String> {
        let template = match signal {
            ProcessSignal::Kill => &self.commands.kill,
            ProcessSignal::Stop => &self.commands.stop,
            ProcessSignal::Cont => &self.commands.cont,
        };
        self.run(template, process).await
    }

    async fn restart(&self, process: &str) -> Result<(), String> {
        self.run(&self.commands.restart, process).await
    }

    async fn disk(&self, region: &str, full: bool) -> Result<(), String> {
        let template = if full {
            &self.commands.fill_disk
        } else {
            &self.commands.free_disk
        };
        match template {
            Some(template) => self.run(template, region).await,
            None => Err(format!(
                "cannot fill {region}'s disk: [process_control] has no fill_disk / free_disk commands (a lab started with --disk-mib has them)"
            )),
        }
    }

    async fn network(&self, region: &str, up: bool) -> Result<(), String> {
        let template = if up {
            &self.commands.heal_network
        } else {
            &self.commands.cut_network
        };
        match template {
            Some(template) => self.run(template, region).await,
            None => Err(format!(
                "cannot cut {region}'s network: [process_control] has no cut_network / heal_network commands (a lab started with --netns has them)"
            )),
        }
    }
}

/// No process control configured: every process fault is refused with the fix.
pub struct NoProcessControl;

impl ProcessControl for NoProcessControl {
    async fn signal(&self, process: &str, _: ProcessSignal) -> Result<(), String> {
        Err(format!(
            "no [process_control] commands in the deployment file, so {process} cannot be signalled; add kill/stop/cont/restart commands or run against a lab"
        ))
    }

    async fn restart(&self, process: &str) -> Result<(), String> {
        Err(format!(
            "no [process_control] commands in the deployment file, so {process} cannot be restarted"
        ))
    }
}

/// The Toxiproxy-shaped JSON of a toxic.
pub fn toxic_json(toxic: &Toxic) -> serde_json::Value {
    let (kind, attributes) = match toxic.kind {
        ToxicKind::Latency { latency_ms, jitter_ms } => {
            ("latency", json!({"latency": latency_ms, "jitter": jitter_ms}))
        }
        ToxicKind::Blackhole => ("timeout", json!({"timeout": 0})),
        ToxicKind::ResetPeer => ("reset_peer", json!({"timeout": 0})),
        ToxicKind::Bandwidth { rate_kbps } => ("bandwidth", json!({"rate": rate_kbps})),
    };
    json!({
        "name": toxic.name,
        "type": kind,
        "stream": match toxic.stream { Stream::Upstream => "upstream", Stream::Downstream => "downstream" },
        "toxicity": 1.0,
        "attributes": attributes,
    })
}

/// A [`FaultTarget`] over a deployment file.
pub struct DeploymentTarget<P> {
    deployment: Deployment,
    processes: P,
    http: HttpClient,
    /// The member [`Component::Leader`] stands for, once found.
    pinned: std::sync::Mutex<Option<String>>,
}

impl<P: ProcessControl> DeploymentTarget<P> {
    pub fn new(deployment: Deployment, processes: P) -> DeploymentTarget<P> {
        DeploymentTarget {
            deployment,
            processes,
            http: HttpClient::new(),
            pinned: std::sync::Mutex::new(None),
        }
    }

    fn pinned(&self) -> Option<String> {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn pin(&self, member: &str) {
        *self.pinned.lock().unwrap_or_else(|p| p.into_inner()) = Some(member.to_string());
    }

    fn no_controllers(&self) -> Result<(), String> {
        if self.deployment.controllers.is_empty() {
            Err("the deployment file lists no [[controllers]] (a lab started with --controllers 3 does)".into())
        } else {
            Ok(())
        }
    }

    /// The pinned leader, or (the first time) the member acting now, waited for at most
    /// [`AWAIT_MS_MAX`].
    async fn leader_member(&self) -> Result<&ControllerMember, String> {
        self.no_controllers()?;
        let name = match self.pinned() {
            Some(name) => name,
            None => {
                let name = self
                    .wait(|| async { members::acting(&self.http, &self.deployment).await.map(|(m, _)| m) })
                    .await
                    .ok_or_else(|| format!("no controller member said it acts within {AWAIT_MS_MAX} ms"))?;
                self.pin(&name);
                name
            }
        };
        self.deployment
            .controller(&name)
            .ok_or_else(|| format!("member {name} is not in [[controllers]]"))
    }

    /// Polls `probe` every [`members::MEMBER_POLL_MS`] until it gives a value, at most
    /// [`AWAIT_MS_MAX`].
    async fn wait<T, F, Fut>(&self, mut probe: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(AWAIT_MS_MAX);
        loop {
            if let Some(value) = probe().await {
                return Some(value);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(members::MEMBER_POLL_MS)).await;
        }
    }

    /// The fault-proxy proxies of the leader's links.
    async fn leader_links(&self, link: &Link) -> Result<Vec<String>, String> {
        let member = self.leader_member().await?;
        let names = match link {
            Link::LeaderIsolation => &member.isolation_links,
            _ => &member.dns_links,
        };
        if names.is_empty() {
            return Err(format!(
                "[[controllers]] gives member {} no {}",
                member.name,
                if *link == Link::LeaderIsolation {
                    "isolation_links"
                } else {
                    "dns_links"
                }
            ));
        }
        Ok(names.clone())
    }

    /// Makes the member at `site` the leader: when another member leads, SIGSTOP every other
    /// member until it does (the leader's lease runs out), then SIGCONT them.
    async fn lead_from(&self, site: &str) -> Result<(), String> {
        self.no_controllers()?;
        let wanted = self
            .deployment
            .controllers
            .iter()
            .find(|m| m.site.as_deref() == Some(site))
            .ok_or_else(|| format!("no member of [[controllers]] has site {site}"))?
            .name
            .clone();
        let now = self
            .wait(|| async { members::acting(&self.http, &self.deployment).await.map(|(m, _)| m) })
            .await;
        if now.as_deref() == Some(wanted.as_str()) {
            self.pin(&wanted);
            return Ok(());
        }
        let others: Vec<String> = self
            .deployment
            .controllers
            .iter()
            .filter(|m| m.name != wanted)
            .map(|m| {
                m.process
                    .clone()
                    .ok_or_else(|| format!("[[controllers]] gives member {} no process", m.name))
            })
            .collect::<Result<_, _>>()?;
        let mut result = Ok(());
        for process in &others {
            if let Err(error) = self.processes.signal(process, ProcessSignal::Stop).await {
                result = Err(error);
                break;
            }
        }
        if result.is_ok() {
            let leads = self
                .wait(|| async {
                    match members::acting(&self.http, &self.deployment).await {
                        Some((member, _)) if member == wanted => Some(()),
                        _ => None,
                    }
                })
                .await;
            if leads.is_none() {
                result = Err(format!(
                    "member {wanted} did not lead within {AWAIT_MS_MAX} ms of the others being stopped"
                ));
            }
        }
        // Always let the others run again, whatever happened.
        for process in &others {
            if let Err(error) = self.processes.signal(process, ProcessSignal::Cont).await
                && result.is_ok()
            {
                result = Err(error);
            }
        }
        if result.is_ok() {
            self.pin(&wanted);
        }
        result
    }

    /// The processes a component stands for, in the order to stop them (front to back);
    /// restarts go in reverse (store first).
    pub fn processes_of(&self, roles: &Roles, component: &Component) -> Result<Vec<String>, String> {
        let region = |role: &RegionRole| {
            let name = roles.region(*role);
            self.deployment
                .region(name)
                .ok_or_else(|| format!("region {name} is not in the deployment file"))
        };
        let missing =
            |what: &str, region: &str| format!("the deployment file names no {what} process for region {region}");
        let names = match component {
            Component::Store(role) => {
                let r = region(role)?;
                vec![r.store_process.clone().ok_or_else(|| missing("store", &r.name))?]
            }
            Component::Apps(role) => {
                let r = region(role)?;
                if r.app_processes.is_empty() {
                    return Err(missing("app", &r.name));
                }
                r.app_processes.clone()
            }
            Component::Proxy(role) => {
                let r = region(role)?;
                vec![r.proxy_process.clone().ok_or_else(|| missing("proxy", &r.name))?]
            }
            Component::Region(role) => {
                let r = region(role)?;
                let mut all: Vec<String> = r.proxy_process.iter().cloned().collect();
                all.extend(r.app_processes.iter().cloned());
                all.extend(r.store_process.iter().cloned());
                all.extend(r.database_processes.iter().cloned());
                if all.is_empty() {
                    return Err(missing("", &r.name));
                }
                all
            }
            Component::Controller => vec![
                self.deployment
                    .processes
                    .controller
                    .clone()
                    .ok_or("the deployment file names no controller process")?,
            ],
            Component::Vantage(v) => vec![
                self.deployment
                    .processes
                    .vantages
                    .get(*v as usize)
                    .cloned()
                    .ok_or_else(|| format!("the deployment file names no vantage {v}"))?,
            ],
            Component::Leader => {
                let name = self
                    .pinned()
                    .ok_or("no leader was found yet (a step that finds it runs first)")?;
                let member = self
                    .deployment
                    .controller(&name)
                    .ok_or_else(|| format!("member {name} is not in [[controllers]]"))?;
                vec![
                    member
                        .process
                        .clone()
                        .ok_or_else(|| format!("[[controllers]] gives member {name} no process"))?,
                ]
            }
            // The site's controller and etcd member first (the leader is gone before its
            // region fails), then the region front to back.
            Component::Site(role) => {
                let mut all = Vec::new();
                let name = roles.region(*role);
                for member in self
                    .deployment
                    .controllers
                    .iter()
                    .filter(|m| m.site.as_deref() == Some(name))
                {
                    all.extend(member.process.iter().cloned());
                    all.extend(member.etcd_process.iter().cloned());
                }
                all.extend(self.processes_of(roles, &Component::Region(*role))?);
                all
            }
        };
        Ok(names)
    }

    async fn fault_api(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<u16, String> {
        let base = self
            .deployment
            .fault_proxy_url
            .as_deref()
            .ok_or("the deployment file has no fault_proxy_url, so links cannot be faulted")?;
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let body = body.map(|b| b.to_string().into_bytes());
        let authorization = self
            .deployment
            .fault_proxy_token
            .as_ref()
            .map(|token| format!("Bearer {token}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(value) = &authorization {
            headers.push(("authorization", value.as_str()));
        }
        let response = self
            .http
            .send(method, &url, &headers, body, FAULT_API_TIMEOUT_MS)
            .await
            .map_err(|e| e.to_string())?;
        if response.status >= 400 && response.status != 404 && response.status != 409 {
            return Err(format!(
                "{method} {url} answered {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ));
        }
        Ok(response.status)
    }
}

impl<P: ProcessControl> FaultTarget for DeploymentTarget<P> {
    async fn apply(&self, roles: &Roles, action: &FaultAction) -> Result<(), FaultError> {
        let failed = |reason: String| FaultError::Failed {
            action: action.label(),
            reason,
        };
        let unsupported = |reason: String| FaultError::Unsupported {
            action: action.label(),
            reason,
        };
        match action {
            FaultAction::Kill { target } | FaultAction::Stop { target } | FaultAction::Cont { target } => {
                let signal = match action {
                    FaultAction::Kill { .. } => ProcessSignal::Kill,
                    FaultAction::Stop { .. } => ProcessSignal::Stop,
                    _ => ProcessSignal::Cont,
                };
                if *target == Component::Leader && signal != ProcessSignal::Cont {
                    self.leader_member().await.map_err(unsupported)?;
                }
                let mut names = self.processes_of(roles, target).map_err(unsupported)?;
                if signal == ProcessSignal::Cont {
                    names.reverse();
                }
                for name in names {
                    self.processes.signal(&name, signal).await.map_err(failed)?;
                }
                Ok(())
            }
            FaultAction::Restart { target } => {
                let mut names = self.processes_of(roles, target).map_err(unsupported)?;
                names.reverse();
                for name in names {
                    self.processes.restart(&name).await.map_err(failed)?;
                }
                Ok(())
            }
            FaultAction::AddToxic { link, toxic } => {
                let proxies = if matches!(link, Link::LeaderIsolation | Link::LeaderDns) {
                    self.leader_links(link).await.map_err(unsupported)?
                } else {
                    self.deployment.link_names(roles, link)
                };
                if proxies.is_empty() {
                    return Err(unsupported(format!(
                        "the deployment file's [links] has no entry for {}",
                        crate::scenario::link_label(link)
                    )));
                }
                for proxy in proxies {
                    let status = self
                        .fault_api("POST", &format!("/proxies/{proxy}/toxics"), Some(toxic_json(toxic)))
                        .await
                        .map_err(failed)?;
                    if status == 404 {
                        return Err(failed(format!("the fault proxy has no proxy named {proxy}")));
                    }
                }
                Ok(())
            }
            FaultAction::CutNetwork { region } | FaultAction::HealNetwork { region } => {
                let up = matches!(action, FaultAction::HealNetwork { .. });
                let name = roles.region(*region).to_string();
                self.processes
                    .network(&name, up)
                    .await
                    .map_err(|reason| if up { failed(reason) } else { unsupported(reason) })
            }
            FaultAction::FillDisk { region } | FaultAction::FreeDisk { region } => {
                let full = matches!(action, FaultAction::FillDisk { .. });
                let name = roles.region(*region).to_string();
                self.processes
                    .disk(&name, full)
                    .await
                    .map_err(|reason| if full { unsupported(reason) } else { failed(reason) })
            }
            FaultAction::RemoveToxic { link, name } => {
                let proxies = if matches!(link, Link::LeaderIsolation | Link::LeaderDns) {
                    self.leader_links(link).await.map_err(failed)?
                } else {
                    self.deployment.link_names(roles, link)
                };
                for proxy in proxies {
                    // 404: already gone, which is what a heal wants.
                    self.fault_api("DELETE", &format!("/proxies/{proxy}/toxics/{name}"), None)
                        .await
                        .map_err(failed)?;
                }
                Ok(())
            }
            FaultAction::AwaitRunbook => {
                let member = self.leader_member().await.map_err(unsupported)?;
                self.wait(|| async {
                    members::health(&self.http, member)
                        .await
                        .ok()
                        // A step under way, not only a runbook recorded in etcd: the fault
                        // that follows must catch a step's push in flight (held), not the
                        // guard's call to etcd before it.
                        .filter(|h| h.acting && h.runbook_in_progress && h.step_in_flight.is_some())
                })
                .await
                .map(|_| ())
                .ok_or_else(|| {
                    failed(format!(
                        "leader {} had no runbook step under way within {AWAIT_MS_MAX} ms",
                        member.name
                    ))
                })
            }
            FaultAction::AwaitTakeover => {
                let old = self.leader_member().await.map_err(unsupported)?.name.clone();
                self.wait(|| async {
                    match members::acting(&self.http, &self.deployment).await {
                        Some((member, health)) if member != old && !health.runbook_in_progress => Some(()),
                        _ => None,
                    }
                })
                .await
                .ok_or_else(|| {
                    failed(format!(
                        "no member other than {old} led with the runbook finished within {AWAIT_MS_MAX} ms"
                    ))
                })
            }
            FaultAction::AwaitFailover { to } => {
                let old = self.leader_member().await.map_err(unsupported)?.name.clone();
                let to = roles.region(*to).to_string();
                self.wait(|| async {
                    match members::acting(&self.http, &self.deployment).await {
                        Some((member, health))
                            if member != old
                                && !health.runbook_in_progress
                                && health.active.as_deref() == Some(to.as_str()) =>
                        {
                            Some(())
                        }
                        _ => None,
                    }
                })
                .await
                .ok_or_else(|| {
                    failed(format!(
                        "no member other than {old} led with {to} active within {AWAIT_MS_MAX} ms"
                    ))
                })
            }
            FaultAction::LeadFrom { region } => self.lead_from(roles.region(*region)).await.map_err(failed),
            FaultAction::DelayReplication { region, delay_s } => {
                super::databases::set_replication_delay(&self.deployment, roles.region(*region), *delay_s)
                    .await
                    .map_err(unsupported)
            }
            FaultAction::UndelayReplication { region } => {
                super::databases::set_replication_delay(&self.deployment, roles.region(*region), 0)
                    .await
                    .map_err(failed)
            }
        }
    }

    fn leader(&self) -> Option<String> {
        self.pinned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toxics_are_toxiproxy_shaped() {
        let toxic = Toxic {
            name: "slow".into(),
            stream: Stream::Downstream,
            kind: ToxicKind::Latency {
                latency_ms: 250,
                jitter_ms: 50,
            },
        };
        assert_eq!(
            toxic_json(&toxic),
            json!({"name": "slow", "type": "latency", "stream": "downstream", "toxicity": 1.0,
                   "attributes": {"latency": 250, "jitter": 50}})
        );
        let blackhole = Toxic {
            name: "cut".into(),
            stream: Stream::Upstream,
            kind: ToxicKind::Blackhole,
        };
        assert_eq!(toxic_json(&blackhole)["type"], "timeout");
        assert_eq!(toxic_json(&blackhole)["attributes"]["timeout"], 0);
    }

    #[test]
    fn shell_quoting_keeps_names_whole() {
        assert_eq!(shell_quote("store-a"), "'store-a'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
