//! `switchyard lab --controllers 3`: the controller survives its own loss. Three controllers,
//! one per site, in `[controller.ha]` on a three-member etcd cluster (Debian's `etcd`), all
//! links through the lab's fault proxy:
//! - `etcd-peer-S`: every connection to site S's etcd member's peer URL (its advertised peer
//!   URL is this link). etcd members also send over streams they dial themselves, so cutting S
//!   off the others entirely takes this link and S's streams to them (or killing the member);
//! - `etcd-M-to-S`: controller M's client connection to site S's etcd member (each controller
//!   lists all three), so a drill can cut one controller from etcd while it still sees the
//!   regions;
//! - `controller-M`: how the other members, the agents and the region's pointer reach
//!   controller M's API (its `advertise` URL);
//! - `dns-admin-M`: controller M's pushes to the DNS server's admin API (its runbook's DNS
//!   steps), so a drill can hold one member's DNS step.
//!
//! Each member probes as a vantage point of its own (`controller-SITE`, `--vantage`) and has a
//! token of its own (`role = "member"`, `[controller.ha] token_file`), with which a follower
//! passes its own reports on to the leader: the leader's quorum counts every member's view.
//!
//! Sites are the first three regions; a two-region lab puts the third etcd member and
//! controller on a `tie-breaker` site (as a deployment with two regions should). Pure, like the
//! plan.

use std::path::{Path, PathBuf};

use crate::configs::{ControllerFile, ControllerMember, HaSection, Token};
use crate::supervisor::ComponentSpec;

/// Controllers (and etcd members) of a `--controllers 3` lab.
pub const MEMBERS: usize = 3;
/// The site name of the third member when the lab runs only two regions.
pub const TIE_BREAKER: &str = "tie-breaker";
/// The lab's leader lease (the default): a dead leader is replaced after at most this plus one
/// renewal; drills measure it.
pub const LAB_LEASE_MS: u64 = 5_000;
/// The DNS step's timeout with several controllers: three leases, beyond a takeover.
pub const HA_DNS_STEP_TIMEOUT_MS: u64 = 3 * LAB_LEASE_MS;
/// etcd's cluster token for the lab.
const CLUSTER_TOKEN: &str = "switchyard-lab";

/// The sites of the members: the first three regions, or two plus the tie-breaker.
pub fn sites(regions: &[&str]) -> Vec<String> {
    regions
        .iter()
        .take(MEMBERS)
        .map(|r| r.to_string())
        .chain(std::iter::once(TIE_BREAKER.to_string()))
        .take(MEMBERS)
        .collect()
}

/// The component name of the controller at `site`.
pub fn controller_name(site: &str) -> String {
    format!("controller-{site}")
}

/// The component name of the etcd member at `site`.
pub fn etcd_name(site: &str) -> String {
    format!("etcd-{site}")
}

/// Ports of the HA pieces, in the lab's first block (`base + 20 ..= base + 48` and
/// `base + 56 ..= base + 58`, unused otherwise). Member 0's API keeps the single controller's
/// port.
pub(crate) struct HaPorts {
    pub base: u16,
}

impl HaPorts {
    fn etcd_client(&self, i: usize) -> u16 {
        self.base + 20 + i as u16
    }
    fn etcd_peer(&self, i: usize) -> u16 {
        self.base + 24 + i as u16
    }
    fn etcd_peer_link(&self, i: usize) -> u16 {
        self.base + 28 + i as u16
    }
    /// Controller `k`'s own API port.
    pub fn api(&self, k: usize) -> u16 {
        if k == 0 {
            self.base + 1
        } else {
            self.base + 32 + k as u16
        }
    }
    /// The link to controller `k`'s API.
    pub fn api_link(&self, k: usize) -> u16 {
        self.base + 36 + k as u16
    }
    fn etcd_link(&self, k: usize, i: usize) -> u16 {
        self.base + 40 + (MEMBERS * k + i) as u16
    }
    /// Controller `k`'s link to the DNS admin API.
    fn dns_admin_link(&self, k: usize) -> u16 {
        self.base + 56 + k as u16
    }
}

/// Controller `k`'s vantage name: each member probes as a vantage point of its own.
pub fn vantage_name(site: &str) -> String {
    controller_name(site)
}

/// Member tokens' file name in the config folder (`{site}` is the member).
const MEMBER_TOKEN_FILE: &str = "member-{site}.token";

/// The member at `site`'s token file in a lab directory.
pub fn member_token_path(dir: &Path, site: &str) -> PathBuf {
    dir.join("config").join(MEMBER_TOKEN_FILE.replace("{site}", site))
}

/// The `[[tokens]]` entries of the members (role `member`, named by their vantage), for the
/// config every member shares.
pub(crate) fn member_tokens(sites: &[String]) -> Vec<Token> {
    sites
        .iter()
        .map(|site| Token {
            name: vantage_name(site),
            role: "member".to_string(),
            token_file: PathBuf::from(MEMBER_TOKEN_FILE.replace("{site}", site)),
        })
        .collect()
}

/// The `[[controllers]]` of `drill-targets.toml`: how a drill finds the leader, its process,
/// its audit log and the links that cut it off.
pub(crate) fn drill_targets(dir: &Path, ports: &HaPorts, sites: &[String], regions: &[&str]) -> Vec<ControllerMember> {
    sites
        .iter()
        .enumerate()
        .map(|(k, site)| ControllerMember {
            name: site.clone(),
            url: format!("http://{}", local(ports.api(k))),
            site: regions.contains(&site.as_str()).then(|| site.clone()),
            process: controller_name(site),
            etcd_process: etcd_name(site),
            audit_log: audit_path(dir, site),
            isolation_links: sites
                .iter()
                .map(|other| format!("etcd-{site}-to-{other}"))
                .chain(std::iter::once(controller_name(site)))
                .collect(),
            dns_links: vec![format!("dns-admin-{site}")],
        })
        .collect()
}

pub(crate) fn audit_path(dir: &Path, site: &str) -> PathBuf {
    dir.join("data").join(format!("{}-audit.jsonl", controller_name(site)))
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Every link of the HA pieces as (name, listen, upstream); `dns_admin` is the DNS server's
/// admin address.
pub(crate) fn links(ports: &HaPorts, sites: &[String], dns_admin: &str) -> Vec<(String, String, String)> {
    let mut links = Vec::new();
    for (k, member) in sites.iter().enumerate() {
        links.push((
            format!("dns-admin-{member}"),
            local(ports.dns_admin_link(k)),
            dns_admin.to_string(),
        ));
    }
    for (i, site) in sites.iter().enumerate() {
        links.push((
            format!("etcd-peer-{site}"),
            local(ports.etcd_peer_link(i)),
            local(ports.etcd_peer(i)),
        ));
    }
    for (k, member) in sites.iter().enumerate() {
        for (i, site) in sites.iter().enumerate() {
            links.push((
                format!("etcd-{member}-to-{site}"),
                local(ports.etcd_link(k, i)),
                local(ports.etcd_client(i)),
            ));
        }
        links.push((
            format!("controller-{member}"),
            local(ports.api_link(k)),
            local(ports.api(k)),
        ));
    }
    links
}

/// The etcd members, each run by `switchyard lab exec` (ready once its peer port accepts
/// connections: a new cluster serves clients only once a quorum of members is up).
pub(crate) fn etcd_components(dir: &Path, ports: &HaPorts, sites: &[String], etcd: &Path) -> Vec<ComponentSpec> {
    let cluster: Vec<String> = sites
        .iter()
        .enumerate()
        .map(|(i, site)| format!("{site}=http://{}", local(ports.etcd_peer_link(i))))
        .collect();
    let cluster = cluster.join(",");
    sites
        .iter()
        .enumerate()
        .map(|(i, site)| {
            let client = format!("http://{}", local(ports.etcd_client(i)));
            let data = dir.join("data").join(etcd_name(site)).display().to_string();
            let peer = format!("http://{}", local(ports.etcd_peer(i)));
            let advertised = format!("http://{}", local(ports.etcd_peer_link(i)));
            let args: Vec<String> = [
                "--name",
                site.as_str(),
                "--data-dir",
                data.as_str(),
                "--listen-client-urls",
                client.as_str(),
                "--advertise-client-urls",
                client.as_str(),
                "--listen-peer-urls",
                peer.as_str(),
                "--initial-advertise-peer-urls",
                advertised.as_str(),
                "--initial-cluster",
                cluster.as_str(),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                CLUSTER_TOKEN,
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            crate::providers::external(&etcd_name(site), "etcd", etcd, &args, &local(ports.etcd_peer(i)))
        })
        .collect()
}

/// What every address the HA pieces bind is, for the plan's port check.
pub(crate) fn bound(ports: &HaPorts, sites: &[String]) -> Vec<(String, String)> {
    let mut bound = Vec::new();
    for (i, site) in sites.iter().enumerate() {
        bound.push((format!("etcd {site} client"), local(ports.etcd_client(i))));
        bound.push((format!("etcd {site} peer"), local(ports.etcd_peer(i))));
        if i > 0 {
            bound.push((format!("controller {site}"), local(ports.api(i))));
        }
    }
    bound
}

/// Each member's config file (the single controller's `base` plus its `[controller.ha]`, its
/// DNS pushes through its own link: `[dns] admin_url` becomes the link's URL) and component;
/// member 0 listens where the single controller would. With `tls`, the members' API links and
/// DNS pushes are HTTPS (etcd stays plain, on loopback).
pub(crate) fn controllers(
    config: &Path,
    dir: &Path,
    ports: &HaPorts,
    sites: &[String],
    base: &ControllerFile,
    tls: bool,
) -> (Vec<(PathBuf, ControllerFile)>, Vec<ComponentSpec>) {
    let scheme = if tls { "https" } else { "http" };
    let mut files = Vec::new();
    let mut components = Vec::new();
    for (k, member) in sites.iter().enumerate() {
        // One of the controllers: each reaches every etcd member, and is reached by the
        // others, through its own links; it passes its own reports on to the leader with its
        // member token.
        let mut file = base.clone();
        // The file says what the command line does, so that it is right on its own too.
        file.controller.listen = local(ports.api(k));
        file.controller.vantage = vantage_name(member);
        file.controller.audit_log = audit_path(dir, member);
        file.dns.admin_url = format!("{scheme}://{}", local(ports.dns_admin_link(k)));
        file.controller.ha = Some(HaSection {
            etcd: (0..sites.len())
                .map(|i| format!("http://{}", local(ports.etcd_link(k, i))))
                .collect(),
            member: member.clone(),
            lease_ms: LAB_LEASE_MS,
            advertise: format!("{scheme}://{}", local(ports.api_link(k))),
            token_file: PathBuf::from(MEMBER_TOKEN_FILE.replace("{site}", member)),
        });
        let path: PathBuf = config.join(format!("{}.toml", controller_name(member)));
        files.push((path.clone(), file));
        let audit = audit_path(dir, member);
        components.push(ComponentSpec::subcommand(
            &controller_name(member),
            "controller",
            &[
                "controller",
                "--config",
                &path.display().to_string(),
                "--listen",
                &local(ports.api(k)),
                "--audit-log",
                &audit.display().to_string(),
                "--vantage",
                &vantage_name(member),
            ],
        ));
    }
    (files, components)
}
