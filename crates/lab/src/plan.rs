//! The lab's topology as data: which components run, on which ports, with which command lines
//! and configuration files, and the fault-proxy links between them. Pure: the same options
//! give the same plan, so it is tested without starting anything.
//!
//! Every link between components goes through one `switchyard fault-proxy` (the lab's
//! "network"), as a named proxy drills can break:
//! - `repl-A-to-B`: store A replicating to store B;
//! - `app-A-to-store-B`: region A's demo apps to store B (B = A for reads);
//! - `lb-A-to-app-A-N`: region A's load balancer to its demo app N;
//! - `pointer-A`: region A's demo apps to the controller's active-region pointer;
//! - `agent-N`: vantage agent N to the controller;
//! - `frontend-A`: clients to region A's load balancer (its address 127.0.0.(11+A));
//! - `health-V-A`: vantage point V's health checks of region A (V = `controller` or
//!   `agent-N`), then through `frontend-A`: one link per vantage, so a drill can cut one
//!   vantage's view of a region (`vantage-partition`) or every view (`region-partition`). The
//!   controller's config writes the checks with the controller's link and maps them to each
//!   agent's own with `[vantage_paths.agent-N]`;
//! - `health-store-V-A`: vantage point V's checks of region A's store, likewise one per vantage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::configs::{
    Check, CheckKind, ControllerDns, ControllerFile, ControllerSection, DnsFile, DnsServerSection, DrillTargets,
    FaultProxyFile, FaultProxySection, Link, LinkNames, Policy, ProcessControl, Processes, ProxyCheck, ProxyFile,
    ProxySection, ProxyServer, Quorum, Record, RecordMember, Region, RegionTargets, Soa, Step, Token, Zone,
};
use crate::supervisor::ComponentSpec;

/// Region names, in order.
pub const REGION_NAMES: [&str; 5] = ["us-east-1", "eu-west-1", "ap-south-1", "us-west-2", "eu-central-1"];
pub const REGIONS_MAX: usize = REGION_NAMES.len();
/// Demo app servers behind each region's load balancer.
pub const APPS_PER_REGION: usize = 2;
/// Vantage agents besides the controller's own probes.
pub const AGENTS: usize = 3;
/// Ports each region's block spans, starting at `base_port + 100 × (region + 1)`.
pub const REGION_PORT_BLOCK: u16 = 100;
/// The zone the lab's DNS serves and the shop's name in it.
pub const ZONE: &str = "shop.example.";
pub const SHOP_NAME: &str = "www.shop.example.";
pub const BASE_PORT_DEFAULT: u16 = 17_000;
/// The lab's controller holds a placement (and wants a recovered region stable) this long
/// before failing back; production defaults are a minute, too long for drills.
pub const LAB_HOLD_MS: u64 = 10_000;
/// Failback waits until the replication lag into the preferred region is at most this.
pub const LAB_FAILBACK_LAG_MAX_MS: u64 = 1_000;
/// Drills run back to back on one lab: the hourly failover cap must not stop them.
pub const LAB_FAILOVERS_PER_HOUR_MAX: u32 = 1_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabOptions {
    pub dir: PathBuf,
    pub regions: usize,
    pub base_port: u16,
    /// Start the controller and its agents (they drive DNS and the pointer).
    pub controller: bool,
    /// Run each region's processes (store, shops, load balancer) in a network namespace of
    /// its own, joined to the lab by a veth pair, so `lab ctl cut-network` cuts a real link
    /// (Linux, root, iproute2).
    pub netns: bool,
    /// `--disk-mib N`: each region's store on a tmpfs of N MiB of its own, so
    /// `lab ctl fill-disk REGION` fills one region's disk (Linux, root).
    pub disk_mib: Option<u64>,
    /// `--providers`: also BIND9 and HAProxy (those installed), driven by the runbook's
    /// `rfc2136` and `haproxy` steps.
    pub providers: Option<crate::providers::Programs>,
    /// `--controllers`: 1 (one controller with its audit log) or 3 (in `[controller.ha]` on a
    /// three-member etcd cluster, see [`crate::ha`]).
    pub controllers: usize,
    /// The etcd program, for `--controllers 3` (the binary looks it up; the plan stays pure).
    pub etcd: Option<PathBuf>,
    /// `--tls`: every API between components over HTTPS with a CA the lab generates
    /// (replication with mutual TLS); see [`TlsPlan`].
    pub tls: bool,
    /// `--quiet`: one line once everything is up, instead of the table and the try-lines.
    pub quiet: bool,
    /// `--databases`: a MariaDB and a Redis per region, replicating from the active region's
    /// (see [`crate::databases`]).
    pub databases: Option<crate::databases::DatabaseOptions>,
}

/// What `--tls` needs made before anything starts: a private CA and one certificate for every
/// address the lab's components listen on (see `common::devca`), in `dir`.
///
/// HTTPS then carries the stores' API and replication (mutual TLS: a store accepts replication
/// only from a certificate the lab's CA signed), the apps' and checks' calls to the stores, the
/// controller's API (agents, pointers, members, the CLI), the DNS admin API and the load
/// balancers' admin APIs. What stays plain: the shop's front door (the load balancers and the
/// shops behind them, which is where a deployment terminates its public TLS), the fault
/// proxy's control API and etcd, both on loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPlan {
    pub dir: PathBuf,
    /// IP addresses (and `localhost`) the certificate is valid for.
    pub names: Vec<String>,
}

impl TlsPlan {
    pub fn files(&self) -> common::devca::DevCaFiles {
        common::devca::DevCaFiles::in_dir(&self.dir)
    }
}

/// Where `--tls` keeps the lab's CA and certificate.
pub fn tls_dir(dir: &Path) -> PathBuf {
    dir.join("config").join("tls")
}

/// One region's network namespace (with `--netns`): the region's processes listen on
/// `address`, the fault proxy reaches them from the lab's namespace over the veth pair, and the
/// region reaches the fault proxy's links on `gateway`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionNet {
    pub region: String,
    pub namespace: String,
    /// The veth end in the lab's namespace (taking it down cuts the region off).
    pub host_veth: String,
    /// The veth end inside the namespace.
    pub inner_veth: String,
    pub gateway: std::net::Ipv4Addr,
    pub address: std::net::Ipv4Addr,
}

/// The namespaces of a `--netns` lab: names and a /24 per region derived from the base port,
/// so labs at least 100 ports apart do not collide.
fn region_nets(options: &LabOptions, regions: &[&str]) -> Vec<RegionNet> {
    if !options.netns {
        return Vec::new();
    }
    let block = (options.base_port / 100) % 200 + 20;
    regions
        .iter()
        .enumerate()
        .map(|(i, region)| RegionNet {
            region: region.to_string(),
            namespace: format!("sy{}r{i}", options.base_port),
            host_veth: format!("sy{}r{i}h", options.base_port),
            inner_veth: format!("sy{}r{i}n", options.base_port),
            gateway: std::net::Ipv4Addr::new(10, block as u8, i as u8, 1),
            address: std::net::Ipv4Addr::new(10, block as u8, i as u8, 2),
        })
        .collect()
}

/// A file the lab writes before starting components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabFile {
    pub path: PathBuf,
    pub contents: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub files: Vec<LabFile>,
    /// In start order; the supervisor stops them in reverse.
    pub components: Vec<ComponentSpec>,
    /// Every port the plan binds, with what binds it, to check before starting.
    pub ports: Vec<(String, String)>,
    /// Lines to print after the table: how to try the lab.
    pub try_lines: Vec<String>,
    /// `drill-targets.toml` (see [`DRILL_TARGETS_FILE`]) with `{program}` standing for the
    /// lab's executable in the process-control commands.
    pub drill_targets: String,
    /// With `--netns`: the regions' namespaces, to create before starting anything.
    pub networks: Vec<RegionNet>,
    /// With `--disk-mib`: the regions' data filesystems, to mount before starting anything.
    pub disks: Vec<crate::disks::RegionDisk>,
    /// Secret files (the replication key, each agent's token, the DNS admin token) the lab
    /// fills with fresh random hex before starting, unless they exist: a plan is pure, so it
    /// names them and `run` makes them.
    pub secrets: Vec<PathBuf>,
    /// TSIG key files (path, key name) `run` makes with a fresh secret unless they exist.
    pub tsig_keys: Vec<(PathBuf, String)>,
    /// Files of an earlier run `run` removes before starting (a BIND9 journal, a socket).
    pub stale: Vec<PathBuf>,
    /// What `--providers` could not start and how to fix it, printed at start.
    pub notes: Vec<String>,
    /// With `--tls`: the CA and certificate `run` makes (afresh at every start).
    pub tls: Option<TlsPlan>,
}

/// What `switchyard drill --lab DIR` reads to find and break the lab.
pub const DRILL_TARGETS_FILE: &str = "drill-targets.toml";

fn drill_targets(
    options: &LabOptions,
    ports: &Ports,
    regions: &[&str],
    hosts: &Hosts,
    db_processes: &[Vec<String>],
    db_links: &[(String, String, String)],
) -> DrillTargets {
    let sites = crate::ha::sites(regions);
    let ha = options.controller && options.controllers == crate::ha::MEMBERS;
    let regions_targets = regions
        .iter()
        .enumerate()
        .map(|(i, region)| RegionTargets {
            name: region.to_string(),
            store_url: hosts.url(i, ports.store(i)),
            shop_addresses: vec![region_ip(i)],
            store_process: format!("store-{region}"),
            app_processes: (1..=APPS_PER_REGION).map(|n| format!("shop-{region}-{n}")).collect(),
            proxy_process: format!("lb-{region}"),
            database_processes: db_processes.get(i).cloned().unwrap_or_default(),
        })
        .collect();
    let processes = options.controller.then(|| Processes {
        // With several controllers, the first member's (a drill that kills "the controller"
        // kills it; `switchyard status --lab` says which one leads).
        controller: if ha {
            crate::ha::controller_name(&sites[0])
        } else {
            "controller".to_string()
        },
        vantages: (1..=AGENTS).map(|n| format!("agent-{n}")).collect(),
    });
    let mut links = BTreeMap::new();
    for region in regions {
        for other in regions.iter().filter(|o| *o != region) {
            links.insert(
                format!("replication:{region}:{other}"),
                LinkNames::One(format!("repl-{region}-to-{other}")),
            );
        }
        links.insert(
            format!("frontend:{region}"),
            LinkNames::One(format!("frontend-{region}")),
        );
        links.insert(
            format!("app-store:{region}"),
            LinkNames::One(format!("app-{region}-to-store-{region}")),
        );
        // Everyone else's way to the region's databases (db-partition cuts it).
        let databases: Vec<String> = db_links
            .iter()
            .map(|(name, _, _)| name)
            .filter(|name| **name == format!("mariadb-{region}") || **name == format!("redis-{region}"))
            .cloned()
            .collect();
        if !databases.is_empty() {
            links.insert(format!("database:{region}"), LinkNames::Many(databases));
        }
        if options.controller {
            // A vantage point's view of a region: its checks of the shop and of the store.
            links.insert(
                format!("controller:{region}"),
                LinkNames::Many(vec![health_link(0, region), store_health_link(0, region)]),
            );
            for agent in 1..=AGENTS {
                links.insert(
                    format!("health:{}:{region}", agent - 1),
                    LinkNames::Many(vec![health_link(agent, region), store_health_link(agent, region)]),
                );
            }
        }
    }
    let controllers = if ha {
        let ha_ports = crate::ha::HaPorts {
            base: options.base_port,
        };
        crate::ha::drill_targets(&options.dir, &ha_ports, &sites, regions)
    } else {
        Vec::new()
    };
    let dir = options.dir.display();
    let command = |action: &str| format!("{{program}} lab ctl --dir {dir} {action} {{name}}");
    DrillTargets {
        shop_name: SHOP_NAME.to_string(),
        shop_port: ports.shop(),
        dns_server: local(ports.dns()),
        fault_proxy_url: url(ports.fault_api()),
        controller_url: options.controller.then(|| api_url(options.tls, ports.controller())),
        regions: regions_targets,
        processes,
        links,
        controllers,
        process_control: ProcessControl {
            kill: command("kill"),
            stop: command("stop"),
            cont: command("cont"),
            restart: command("restart"),
            cut_network: options.netns.then(|| command("cut-network")),
            heal_network: options.netns.then(|| command("heal-network")),
            fill_disk: options.disk_mib.map(|_| command("fill-disk")),
            free_disk: options.disk_mib.map(|_| command("free-disk")),
        },
        providers: Vec::new(),
        databases: Vec::new(),
        database_accounts: None,
    }
}

/// The lab's stores refuse new writes below this much free disk (see `switchyard store
/// --disk-free-bytes-min`).
pub const LAB_DISK_FREE_BYTES_MIN: &str = "256MiB";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--regions {0}: the lab runs 2 to {REGIONS_MAX} regions")]
    Regions(usize),
    #[error("--base-port {0} leaves no room: the lab needs ports up to base + {1}; pick a base port of at most {2}")]
    BasePort(u16, u32, u32),
    #[error("--disk-mib {0}: give {min} to {max} MiB per region (the store's files and its watermark must fit)", min = crate::disks::DISK_MIB_MIN, max = crate::disks::DISK_MIB_MAX)]
    DiskMib(u64),
    #[error("--controllers {0}: the lab runs 1 controller, or 3 on a three-member etcd cluster")]
    Controllers(usize),
    #[error("--controllers 3 needs the controller: drop --no-controller")]
    ControllersWithout,
    #[error(
        "--controllers 3 needs etcd, which is not installed: `apt-get install etcd-server` (or ./scripts/install-test-deps.sh)"
    )]
    Etcd,
    #[error(
        "--databases runs the databases on the lab's loopback, which --netns regions cannot reach: drop one of them"
    )]
    DatabasesNetns,
    #[error("cannot write the lab's {file}: {message}; pick a lab directory whose path is valid UTF-8")]
    Config { file: String, message: String },
}

/// `value` as the TOML file `path` (with `header` comment lines first).
fn config_file<T: serde::Serialize>(path: PathBuf, header: &str, value: &T) -> Result<LabFile, PlanError> {
    let contents = crate::configs::to_toml(header, value).map_err(|error| PlanError::Config {
        file: path.display().to_string(),
        message: error.to_string(),
    })?;
    Ok(LabFile { path, contents })
}

struct Ports {
    base: u16,
}

impl Ports {
    fn fault_api(&self) -> u16 {
        self.base
    }
    fn controller(&self) -> u16 {
        self.base + 1
    }
    fn dns(&self) -> u16 {
        self.base + 2
    }
    fn dns_admin(&self) -> u16 {
        self.base + 3
    }
    /// `--providers`: BIND9 (UDP and TCP).
    fn bind(&self) -> u16 {
        self.base + 4
    }
    /// `--providers`: HAProxy's frontend.
    fn haproxy(&self) -> u16 {
        self.base + 5
    }
    /// `--providers`: moto's server (the AWS API).
    fn moto(&self) -> u16 {
        self.base + 6
    }
    /// The shop's port on every region's load-balancer address.
    fn shop(&self) -> u16 {
        self.base + 80
    }
    fn agent_link(&self, agent: usize) -> u16 {
        self.base + 10 + agent as u16
    }
    fn region(&self, region: usize) -> u16 {
        self.base + REGION_PORT_BLOCK * (region as u16 + 1)
    }
    fn store(&self, region: usize) -> u16 {
        self.region(region)
    }
    fn app(&self, region: usize, app: usize) -> u16 {
        self.region(region) + 1 + app as u16
    }
    fn lb_admin(&self, region: usize) -> u16 {
        self.region(region) + 9
    }
    /// The load balancer itself; clients reach it through the `frontend-REGION` link.
    fn lb(&self, region: usize) -> u16 {
        self.region(region) + 8
    }
    fn app_to_store(&self, region: usize, store: usize) -> u16 {
        self.region(region) + 10 + store as u16
    }
    fn repl(&self, from: usize, to: usize) -> u16 {
        self.region(from) + 20 + to as u16
    }
    fn lb_to_app(&self, region: usize, app: usize) -> u16 {
        self.region(region) + 30 + app as u16
    }
    fn pointer(&self, region: usize) -> u16 {
        self.region(region) + 40
    }
    /// Where vantage `vantage`'s health checks of the region enter the network (0 is the
    /// controller, N is agent-N).
    fn health(&self, region: usize, vantage: usize) -> u16 {
        self.region(region) + 41 + vantage as u16
    }
    /// Where vantage `vantage`'s checks of the region's store enter the network.
    fn store_health(&self, region: usize, vantage: usize) -> u16 {
        self.region(region) + 50 + vantage as u16
    }
}

/// The fault-proxy link carrying vantage `vantage`'s checks of `region` (0 is the controller).
fn health_link(vantage: usize, region: &str) -> String {
    if vantage == 0 {
        format!("health-controller-{region}")
    } else {
        format!("health-agent-{vantage}-{region}")
    }
}

/// The fault-proxy link carrying vantage `vantage`'s checks of `region`'s store.
fn store_health_link(vantage: usize, region: &str) -> String {
    if vantage == 0 {
        format!("health-store-controller-{region}")
    } else {
        format!("health-store-agent-{vantage}-{region}")
    }
}

/// The load balancer of region `i` listens on its own loopback address, so DNS answers differ
/// per region while the port stays the same.
pub fn region_ip(region: usize) -> String {
    format!("127.0.0.{}", 11 + region)
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// A URL of an API that `--tls` serves over HTTPS.
fn api_url(tls: bool, port: u16) -> String {
    format!("{}://127.0.0.1:{port}", scheme(tls))
}

fn scheme(tls: bool) -> &'static str {
    if tls { "https" } else { "http" }
}

/// Where region processes listen and where they reach the lab's links: loopback for both,
/// or (with `--netns`) the region's address and its gateway. Stores' URLs are `https://`
/// with `--tls`.
struct Hosts {
    nets: Vec<RegionNet>,
    tls: bool,
}

impl Hosts {
    /// A region process's own address.
    fn at(&self, region: usize, port: u16) -> String {
        match self.nets.get(region) {
            Some(net) => format!("{}:{port}", net.address),
            None => local(port),
        }
    }
    /// A fault-proxy link a region process connects to.
    fn link(&self, region: usize, port: u16) -> String {
        match self.nets.get(region) {
            Some(net) => format!("{}:{port}", net.gateway),
            None => local(port),
        }
    }
    fn url(&self, region: usize, port: u16) -> String {
        format!("{}://{}", scheme(self.tls), self.at(region, port))
    }
    fn link_url(&self, region: usize, port: u16) -> String {
        format!("{}://{}", scheme(self.tls), self.link(region, port))
    }
    fn namespace(&self, region: usize) -> Option<String> {
        self.nets.get(region).map(|n| n.namespace.clone())
    }
}

pub fn plan(options: &LabOptions) -> Result<Plan, PlanError> {
    let count = options.regions;
    if !(2..=REGIONS_MAX).contains(&count) {
        return Err(PlanError::Regions(count));
    }
    let span = u32::from(REGION_PORT_BLOCK) * (count as u32 + 1);
    if u32::from(options.base_port) + span > u32::from(u16::MAX) || options.base_port < 1024 {
        return Err(PlanError::BasePort(options.base_port, span, u32::from(u16::MAX) - span));
    }
    if let Some(mib) = options.disk_mib
        && !(crate::disks::DISK_MIB_MIN..=crate::disks::DISK_MIB_MAX).contains(&mib)
    {
        return Err(PlanError::DiskMib(mib));
    }
    if options.controllers != 1 && options.controllers != crate::ha::MEMBERS {
        return Err(PlanError::Controllers(options.controllers));
    }
    let ha = options.controllers == crate::ha::MEMBERS;
    if options.databases.is_some() && options.netns {
        return Err(PlanError::DatabasesNetns);
    }
    if ha && !options.controller {
        return Err(PlanError::ControllersWithout);
    }
    let etcd = match (&options.etcd, ha) {
        (Some(etcd), true) => Some(etcd.clone()),
        (None, true) => return Err(PlanError::Etcd),
        (_, false) => None,
    };
    let ports = Ports {
        base: options.base_port,
    };
    let ha_ports = crate::ha::HaPorts {
        base: options.base_port,
    };
    let dir = &options.dir;
    let regions = &REGION_NAMES[..count];
    let sites = crate::ha::sites(regions);
    // Where region `i`'s pointer and agent `n`'s reports go: the member at the region's own
    // site with `--controllers 3`, the one controller otherwise.
    let controller_port = |member: usize| {
        if ha {
            ha_ports.api(member % crate::ha::MEMBERS)
        } else {
            ports.controller()
        }
    };
    let hosts = Hosts {
        nets: region_nets(options, regions),
        tls: options.tls,
    };
    let tls = options.tls.then(|| TlsPlan {
        dir: tls_dir(dir),
        names: tls_names(regions.len(), &hosts.nets),
    });
    // The arguments that serve an API over HTTPS, and the environment that makes every
    // component trust the lab's CA (`--ca-file`).
    let tls_args: Vec<String> = match &tls {
        Some(tls) => vec![
            "--tls-cert".to_string(),
            tls.files().cert.display().to_string(),
            "--tls-key".to_string(),
            tls.files().key.display().to_string(),
        ],
        None => Vec::new(),
    };
    let trust: Vec<(String, String)> = match &tls {
        Some(tls) => vec![(
            "SWITCHYARD_CA_FILE".to_string(),
            tls.files().ca_cert.display().to_string(),
        )],
        None => Vec::new(),
    };
    // Addresses inside a namespace cannot be checked before it exists (it starts empty).
    let checkable = |address: &str| {
        !hosts
            .nets
            .iter()
            .any(|n| address.starts_with(&format!("{}:", n.address)))
    };
    let config = dir.join("config");
    let mut files = Vec::new();
    let mut components = Vec::new();
    let mut bound = vec![("fault-proxy API".to_string(), local(ports.fault_api()))];
    let databases = match &options.databases {
        Some(databases) => crate::databases::additions(dir, options.base_port, regions, options.controller, databases),
        None => crate::databases::DbAdditions::default(),
    };
    // The processes of each region's databases; its guard joins them (below).
    let mut db_processes = databases.processes.clone();

    // The network: every link, as named proxies of one fault proxy.
    let mut links = Vec::new();
    let mut link = |name: String, listen: String, upstream: String, bound: &mut Vec<(String, String)>| {
        bound.push((format!("link {name}"), listen.clone()));
        links.push(Link { name, listen, upstream });
    };
    for (i, region) in regions.iter().enumerate() {
        for (j, other) in regions.iter().enumerate() {
            if i != j {
                let name = format!("repl-{region}-to-{other}");
                link(
                    name,
                    hosts.link(i, ports.repl(i, j)),
                    hosts.at(j, ports.store(j)),
                    &mut bound,
                );
            }
            let name = format!("app-{region}-to-store-{other}");
            link(
                name,
                hosts.link(i, ports.app_to_store(i, j)),
                hosts.at(j, ports.store(j)),
                &mut bound,
            );
        }
        for app in 0..APPS_PER_REGION {
            let name = format!("lb-{region}-to-app-{}", app + 1);
            link(
                name,
                hosts.link(i, ports.lb_to_app(i, app)),
                hosts.at(i, ports.app(i, app)),
                &mut bound,
            );
        }
        if options.controller {
            let name = format!("pointer-{region}");
            link(
                name,
                hosts.link(i, ports.pointer(i)),
                local(controller_port(i)),
                &mut bound,
            );
        }
        // Clients (and the controller's checks) reach the region's load balancer through here.
        let front = format!("{}:{}", region_ip(i), ports.shop());
        link(
            format!("frontend-{region}"),
            front.clone(),
            hosts.at(i, ports.lb(i)),
            &mut bound,
        );
        if options.controller {
            // Health checks go through the front door too (an outage seen by clients is seen
            // by the checks), but can also be cut alone: a partition between the region and
            // the controller while its clients still reach it.
            for vantage in 0..=AGENTS {
                link(
                    health_link(vantage, region),
                    local(ports.health(i, vantage)),
                    front.clone(),
                    &mut bound,
                );
                link(
                    store_health_link(vantage, region),
                    local(ports.store_health(i, vantage)),
                    hosts.at(i, ports.store(i)),
                    &mut bound,
                );
            }
        }
    }
    if options.controller {
        for agent in 0..AGENTS {
            let name = format!("agent-{}", agent + 1);
            link(
                name,
                local(ports.agent_link(agent)),
                local(controller_port(agent)),
                &mut bound,
            );
        }
    }
    for (name, listen, upstream) in &databases.links {
        link(name.clone(), listen.clone(), upstream.clone(), &mut bound);
    }
    if ha {
        for (name, listen, upstream) in crate::ha::links(&ha_ports, &sites, &local(ports.dns_admin())) {
            link(name, listen, upstream, &mut bound);
        }
        bound.extend(crate::ha::bound(&ha_ports, &sites));
    }
    let faults_file = config.join("faults.toml");
    files.push(config_file(
        faults_file.clone(),
        "# The lab's network: every link between components, breakable by drills.\n",
        &FaultProxyFile {
            fault_proxy: FaultProxySection {
                listen: local(ports.fault_api()),
                proxies: links,
            },
        },
    )?);
    // The fault proxy relays to loopback only unless told; with namespaces it also relays to
    // each region's address.
    let mut fault_args = vec![
        "fault-proxy".to_string(),
        "--config".to_string(),
        faults_file.display().to_string(),
    ];
    if !hosts.nets.is_empty() {
        fault_args.extend(["--allow-upstream".to_string(), "127.0.0.0/8".to_string()]);
        for net in &hosts.nets {
            fault_args.extend(["--allow-upstream".to_string(), format!("{}/32", net.address)]);
        }
    }
    let fault_args: Vec<&str> = fault_args.iter().map(String::as_str).collect();
    components.push(ComponentSpec::subcommand("network", "fault-proxy", &fault_args));

    // Stores, each replicating to the others through the network.
    let mut disks = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let data = dir.join("data").join(region);
        // With --disk-mib the store's data folder is a filesystem of its own, with the
        // watermark scaled to it.
        let (watermark, reserve) = match options.disk_mib {
            Some(mib) => {
                let disk = crate::disks::RegionDisk::new(region, data.clone(), mib);
                let sizes = (disk.watermark_bytes.to_string(), Some(disk.reserve_bytes.to_string()));
                disks.push(disk);
                sizes
            }
            None => (LAB_DISK_FREE_BYTES_MIN.to_string(), None),
        };
        let mut args = vec![
            "store".to_string(),
            "--region".to_string(),
            region.to_string(),
            "--listen".to_string(),
            hosts.at(i, ports.store(i)),
            "--data-dir".to_string(),
            data.display().to_string(),
            "--replication-key-file".to_string(),
            dir.join("config").join("replication.key").display().to_string(),
            // A lab shares its machine's disk with everything else: the production watermark
            // (5 % of a large disk) would make a developer's lab read-only.
            "--disk-free-bytes-min".to_string(),
            watermark,
        ];
        if let Some(reserve) = reserve {
            args.extend(["--disk-reserve-bytes".to_string(), reserve]);
        }
        if let Some(tls) = &tls {
            // HTTPS for the API and replication, peers verified against the lab's CA, and
            // mutual TLS: replication only from a certificate the CA signed.
            let files = tls.files();
            args.extend(tls_args.iter().cloned());
            for (flag, path) in [
                ("--peer-ca", &files.ca_cert),
                ("--peer-client-ca", &files.ca_cert),
                ("--peer-client-cert", &files.cert),
                ("--peer-client-key", &files.key),
            ] {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
        }
        for (j, other) in regions.iter().enumerate() {
            if i != j {
                args.push("--peer".to_string());
                args.push(format!("{other}={}", hosts.link_url(i, ports.repl(i, j))));
            }
        }
        if hosts.namespace(i).is_some() {
            // Reachable only through the region's veth pair, from this host.
            args.push("--trusted-network".to_string());
        }
        bound.push((format!("store {region}"), hosts.at(i, ports.store(i))));
        let mut spec = owned_subcommand(&format!("store-{region}"), "store", args);
        spec.netns = hosts.namespace(i);
        spec.env.extend(trust.iter().cloned());
        components.push(spec);
    }

    // The databases, before the shops that use them.
    files.extend(databases.files.iter().cloned());
    components.extend(databases.components.iter().cloned());
    bound.extend(databases.bound.iter().cloned());

    // Demo apps; the very first creates the global tables.
    for (i, region) in regions.iter().enumerate() {
        for app in 0..APPS_PER_REGION {
            let name = format!("shop-{region}-{}", app + 1);
            let mut args = vec![
                "demo-app".to_string(),
                "--region".to_string(),
                region.to_string(),
                "--listen".to_string(),
                hosts.at(i, ports.app(i, app)),
                "--instance".to_string(),
                name.clone(),
            ];
            for (j, other) in regions.iter().enumerate() {
                args.push("--store".to_string());
                args.push(format!("{other}={}", hosts.link_url(i, ports.app_to_store(i, j))));
            }
            if options.controller {
                // Every member, as README says to give every client: the region's own link (to
                // the member at its site) first; with one member killed the others keep the
                // pointer fresh, so a follower's death fails no region over.
                args.push("--pointer".to_string());
                args.push(hosts.link_url(i, ports.pointer(i)));
                if ha {
                    for k in (0..crate::ha::MEMBERS).filter(|k| *k != i % crate::ha::MEMBERS) {
                        args.push("--pointer".to_string());
                        args.push(api_url(options.tls, ha_ports.api_link(k)));
                    }
                }
            }
            if i == 0 && app == 0 {
                args.push("--tables-create".to_string());
            }
            if let Some(db_args) = databases.shop_args.get(i) {
                args.extend(db_args.iter().cloned());
            }
            bound.push((format!("demo app {name}"), hosts.at(i, ports.app(i, app))));
            let mut spec = owned_subcommand(&name, "demo-app", args);
            spec.netns = hosts.namespace(i);
            spec.env.extend(trust.iter().cloned());
            components.push(spec);
        }
    }

    // A load balancer per region, on the region's own loopback address.
    for (i, region) in regions.iter().enumerate() {
        let proxy = ProxyFile {
            proxy: ProxySection {
                listen: hosts.at(i, ports.lb(i)),
                // In a namespace, the admin API stays on the namespace's own loopback.
                admin_listen: if hosts.namespace(i).is_some() {
                    local(ports.lb_admin(i))
                } else {
                    hosts.at(i, ports.lb_admin(i))
                },
                balance: "roundrobin".to_string(),
                retries: 2,
                redispatch: true,
                slowstart_ms: 0,
                check: ProxyCheck {
                    kind: "http".to_string(),
                    inter_ms: 500,
                    fastinter_ms: 250,
                    downinter_ms: 500,
                    timeout_ms: 400,
                    rise: 2,
                    fall: 2,
                    path: "/health".to_string(),
                    expect_status: vec![200],
                },
                servers: (0..APPS_PER_REGION)
                    .map(|app| ProxyServer {
                        name: format!("app{}", app + 1),
                        address: hosts.link(i, ports.lb_to_app(i, app)),
                    })
                    .collect(),
            },
        };
        let path = config.join(format!("proxy-{region}.toml"));
        files.push(config_file(path.clone(), "", &proxy)?);
        bound.push((format!("load balancer {region} admin"), hosts.at(i, ports.lb_admin(i))));
        bound.push((format!("load balancer {region}"), hosts.at(i, ports.lb(i))));
        let mut spec = ComponentSpec::subcommand(
            &format!("lb-{region}"),
            "proxy",
            &["proxy", "--config", &path.display().to_string()],
        );
        spec.args.extend(tls_args.iter().cloned());
        spec.netns = hosts.namespace(i);
        components.push(spec);
    }

    let mut secrets = vec![replication_key_path(dir)];

    // Authoritative DNS with a failover record for the shop: primary in the first region,
    // secondary in the second.
    let dns = DnsFile {
        dns: DnsServerSection {
            listen: local(ports.dns()),
            admin_listen: local(ports.dns_admin()),
            reload_interval_ms: 0,
            zones: vec![Zone {
                origin: ZONE.to_string(),
                ttl: 60,
                ns: vec!["ns1".to_string()],
                soa: Soa {
                    rname: format!("hostmaster.{ZONE}"),
                    serial: 1,
                },
                records: vec![
                    Record {
                        name: "ns1".to_string(),
                        kind: "A".to_string(),
                        values: vec!["127.0.0.1".to_string()],
                        policy: None,
                        members: Vec::new(),
                    },
                    Record {
                        name: "www".to_string(),
                        kind: "A".to_string(),
                        values: Vec::new(),
                        policy: Some("failover".to_string()),
                        members: [("primary", 0), ("secondary", 1)]
                            .into_iter()
                            .map(|(role, i)| RecordMember {
                                role: role.to_string(),
                                values: vec![region_ip(i)],
                                health: regions[i].to_string(),
                            })
                            .collect(),
                    },
                ],
            }],
        },
    };
    let dns_file = config.join("dns.toml");
    files.push(config_file(dns_file.clone(), "", &dns)?);
    bound.push(("dns".to_string(), local(ports.dns())));
    bound.push(("dns admin".to_string(), local(ports.dns_admin())));
    // The admin API takes pushes only with the DNS token, which only the controller holds.
    let dns_token = dns_token_path(dir);
    secrets.push(dns_token.clone());
    let mut dns_spec = ComponentSpec::subcommand(
        "dns",
        "dns",
        &[
            "dns",
            "--config",
            &dns_file.display().to_string(),
            "--state-dir",
            &dir.join("data").join("dns").display().to_string(),
            "--token-file",
            &dns_token.display().to_string(),
        ],
    );
    dns_spec.args.extend(tls_args.iter().cloned());
    components.push(dns_spec);

    let additions = match &options.providers {
        Some(programs) => crate::providers::additions(
            &crate::providers::Layout {
                dir,
                regions,
                shop_port: ports.shop(),
                bind_port: ports.bind(),
                haproxy_port: ports.haproxy(),
                moto_port: ports.moto(),
                controller: options.controller,
            },
            programs,
        ),
        None => crate::providers::Additions::default(),
    };
    files.extend(additions.files);
    components.extend(additions.components);
    bound.extend(additions.bound);

    if options.controller {
        // With several controllers each member is a vantage point of its own (`--vantage`; the
        // file names the first).
        let own: Vec<String> = if ha {
            sites.iter().map(|site| crate::ha::vantage_name(site)).collect()
        } else {
            vec!["controller".to_string()]
        };
        let vantages: Vec<String> = own
            .iter()
            .cloned()
            .chain((1..=AGENTS).map(|n| format!("agent-{n}")))
            .collect();
        let mut checks: Vec<Check> = regions
            .iter()
            .enumerate()
            .map(|(i, region)| Check {
                name: format!("{region}-shop"),
                region: region.to_string(),
                kind: CheckKind::Http {
                    url: format!("{}/health", url(ports.health(i, 0))),
                    expect_status: 200,
                },
            })
            .collect();
        // The region's store, read like the shop reads it and written (a heartbeat in the
        // store's reserved table, so a region whose store cannot write — a full disk — is
        // down and fails over); its lag_sources (the other regions' stores) give the
        // replication lag into the region, which failback waits on.
        checks.extend(regions.iter().enumerate().map(|(i, region)| {
            Check {
                name: format!("{region}-store"),
                region: region.to_string(),
                kind: CheckKind::Dynamodb {
                    endpoint: api_url(options.tls, ports.store_health(i, 0)),
                    table: "shop_orders".to_string(),
                    write: true,
                    lag_sources: (0..regions.len())
                        .filter(|j| *j != i)
                        .map(|j| hosts.url(j, ports.store(j)))
                        .collect(),
                },
            }
        }));
        checks.extend(databases.checks.iter().cloned());
        // Each agent probes through its own links: the checks name the controller's.
        let vantage_paths = (1..=AGENTS)
            .map(|agent| {
                let paths = (0..regions.len())
                    .flat_map(|i| {
                        [
                            (local(ports.health(i, 0)), local(ports.health(i, agent))),
                            (local(ports.store_health(i, 0)), local(ports.store_health(i, agent))),
                        ]
                    })
                    .collect();
                (format!("agent-{agent}"), paths)
            })
            .collect();
        // Each agent reports with a token of its own, which is good for its own name only (the
        // files sit next to this config; relative paths start at its folder).
        let mut tokens: Vec<Token> = (1..=AGENTS)
            .map(|agent| Token {
                name: format!("agent-{agent}"),
                role: "agent".to_string(),
                token_file: PathBuf::from(AGENT_TOKEN_FILE.replace("{n}", &agent.to_string())),
            })
            .collect();
        if ha {
            tokens.extend(crate::ha::member_tokens(&sites));
            secrets.extend(sites.iter().map(|site| crate::ha::member_token_path(dir, site)));
        }
        // The databases move before the traffic: their steps go first. With several
        // controllers, a DNS push in flight when its leader is cut off waits out the takeover
        // (lease plus slack), so the late push reaches the DNS server and its refusal is what
        // the leader's audit log records (`controller-isolation` checks it).
        let mut runbook = databases.runbook.clone();
        runbook.push(Step {
            timeout_ms: ha.then_some(crate::ha::HA_DNS_STEP_TIMEOUT_MS),
            ..Step::new("dns", "dns_health")
        });
        runbook.push(Step::new("txt", "dns_txt"));
        runbook.push(Step::new("pointer", "pointer"));
        runbook.extend(additions.runbook.iter().cloned());
        let controller_file = ControllerFile {
            controller: ControllerSection {
                listen: local(ports.controller()),
                vantage: own[0].clone(),
                audit_log: dir.join("data").join("controller-audit.jsonl"),
                ha: None,
            },
            // A lab is for drills: holds short enough for a drill, no cap that back-to-back
            // drills hit; failback waits until the replication lag into the preferred region
            // (each store check's lag_sources) is at most `failback_lag_max_ms`.
            policy: Policy {
                mode: "active-passive".to_string(),
                min_hold_ms: LAB_HOLD_MS,
                stability_window_ms: LAB_HOLD_MS,
                failovers_per_hour_max: LAB_FAILOVERS_PER_HOUR_MAX,
                failback_lag_check: true,
                failback_lag_max_ms: LAB_FAILBACK_LAG_MAX_MS,
            },
            quorum: Quorum { vantages },
            regions: regions
                .iter()
                .enumerate()
                .map(|(i, region)| Region {
                    name: region.to_string(),
                    priority: i as u32 + 1,
                    endpoints: vec![format!("http://{}:{}", region_ip(i), ports.shop())],
                })
                .collect(),
            checks,
            vantage_paths,
            tokens,
            dns: ControllerDns {
                admin_url: api_url(options.tls, ports.dns_admin()),
                token_file: PathBuf::from(DNS_TOKEN_FILE),
                txt_name: format!("_active-region.{ZONE}"),
            },
            runbook,
            guard: None,
        };
        bound.push(("controller".to_string(), local(ports.controller())));
        if let Some(etcd) = &etcd {
            components.extend(crate::ha::etcd_components(dir, &ha_ports, &sites, etcd));
            // Members reach each other's API (forwarded commands) and the DNS admin API (each
            // through its own link) over HTTPS too with `--tls`.
            let (member_files, members) =
                crate::ha::controllers(&config, dir, &ha_ports, &sites, &controller_file, options.tls);
            for (path, member) in member_files {
                files.push(config_file(path, CONTROLLER_HEADER, &member)?);
            }
            components.extend(members.into_iter().map(|mut member| {
                member.env.extend(additions.controller_env.iter().cloned());
                member.env.extend(trust.iter().cloned());
                member.args.extend(tls_args.iter().cloned());
                member
            }));
        } else {
            let path = config.join("controller.toml");
            files.push(config_file(path.clone(), CONTROLLER_HEADER, &controller_file)?);
            let mut controller = ComponentSpec::subcommand(
                "controller",
                "controller",
                &["controller", "--config", &path.display().to_string()],
            );
            controller.env.extend(additions.controller_env.iter().cloned());
            controller.env.extend(trust.iter().cloned());
            controller.args.extend(tls_args.iter().cloned());
            components.push(controller);
        }
        // A guard per region, beside its databases (`switchyard guard`): it reads a copy of the
        // controller's configuration naming its own region's servers directly, asks the
        // controller through the region's own link, as the region's shops do, and is killed
        // with the region.
        if !databases.runbook.is_empty() {
            for (i, region) in regions.iter().enumerate() {
                let path = config.join(format!("guard-{region}.toml"));
                let mut own = controller_file.clone();
                crate::databases::guard_servers(&mut own.runbook, options.base_port, i, region);
                // Every member, as a deployment lists them: the region's pointer link (to the
                // member at its site) first, then the others' API links; with all of them
                // listed the guard may take "every member answers stale" for an etcd outage.
                let mut members = vec![hosts.link_url(i, ports.pointer(i))];
                if ha {
                    members.extend(
                        (0..crate::ha::MEMBERS)
                            .filter(|k| *k != i % crate::ha::MEMBERS)
                            .map(|k| api_url(options.tls, ha_ports.api_link(k))),
                    );
                    own.guard = Some(crate::configs::GuardSection {
                        controller_members: crate::ha::MEMBERS,
                    });
                }
                files.push(config_file(path.clone(), GUARD_HEADER, &own)?);
                let name = guard_name(region);
                let mut spec = owned_subcommand(
                    &name,
                    "guard",
                    vec![
                        "guard".to_string(),
                        "--config".to_string(),
                        path.display().to_string(),
                        "--region".to_string(),
                        region.to_string(),
                        "--controller".to_string(),
                        members.join(","),
                        "--state-file".to_string(),
                        dir.join("data")
                            .join(format!("guard-{region}.json"))
                            .display()
                            .to_string(),
                        "--listen".to_string(),
                        crate::databases::guard_status_address(options.base_port, i),
                    ],
                );
                bound.push((
                    format!("guard {region} /health"),
                    crate::databases::guard_status_address(options.base_port, i),
                ));
                spec.netns = hosts.namespace(i);
                spec.env.extend(trust.iter().cloned());
                components.push(spec);
                if let Some(processes) = db_processes.get_mut(i) {
                    processes.push(name);
                }
            }
        }
        for agent in 0..AGENTS {
            let token = agent_token_path(dir, agent + 1);
            secrets.push(token.clone());
            // Every member, as a deployment lists them: its own link to the member it reports to
            // first, then the others' API links, so a member that is down, or cut off from etcd
            // (it answers `no_leader`), costs the leader none of this vantage point's reports.
            let mut members = vec![api_url(options.tls, ports.agent_link(agent))];
            if ha {
                members.extend(
                    (0..crate::ha::MEMBERS)
                        .filter(|k| *k != agent % crate::ha::MEMBERS)
                        .map(|k| api_url(options.tls, ha_ports.api_link(k))),
                );
            }
            let members = members.join(",");
            let mut spec = ComponentSpec::subcommand(
                &format!("agent-{}", agent + 1),
                "agent",
                &[
                    "agent",
                    "--controller",
                    &members,
                    "--name",
                    &format!("agent-{}", agent + 1),
                    "--token-file",
                    &token.display().to_string(),
                ],
            );
            spec.ready_flag = None;
            spec.env.extend(trust.iter().cloned());
            components.push(spec);
        }
    }

    let mut try_lines = vec![
        format!("dig @127.0.0.1 -p {} {SHOP_NAME} A +short", ports.dns()),
        format!(
            "curl -c jar -b jar -X POST http://{}:{}/api/cart -d '{{\"product\": \"grinder\"}}'",
            region_ip(0),
            ports.shop()
        ),
        format!("curl http://{}:{}/", region_ip(0), ports.shop()),
        format!(
            "curl {}/proxies        # the network's links (Toxiproxy API)",
            url(ports.fault_api())
        ),
    ];
    if options.controller {
        try_lines.push(format!(
            "xdg-open {}/dashboard  # the controller's dashboard: regions, quorum, generation, audit events",
            api_url(options.tls, ports.controller())
        ));
    }
    if let Some(tls) = &tls {
        try_lines.push(format!(
            "curl --cacert {} {}/health   # --tls: the lab's CA signs every API's certificate",
            tls.files().ca_cert.display(),
            hosts.url(0, ports.store(0))
        ));
    }
    try_lines.extend(databases.try_lines.iter().cloned());
    bound.retain(|(_, address)| checkable(address));
    let mut notes = additions.notes;
    notes.extend(databases.notes.iter().cloned());
    let mut targets = drill_targets(options, &ports, regions, &hosts, &db_processes, &databases.links);
    targets.providers = additions.drill_targets;
    targets.databases = databases.drill_targets.clone();
    targets.database_accounts = databases.accounts.clone();
    let drill_targets = crate::configs::to_toml(
        "# Written by `switchyard lab`: what drills need to find and break this lab.\n",
        &targets,
    )
    .map_err(|error| PlanError::Config {
        file: DRILL_TARGETS_FILE.to_string(),
        message: error.to_string(),
    })?;
    Ok(Plan {
        drill_targets,
        files,
        components,
        ports: bound,
        try_lines,
        networks: hosts.nets,
        disks,
        secrets,
        tsig_keys: additions.tsig_keys,
        stale: additions.stale,
        notes,
        tls,
    })
}

/// The names the `--tls` certificate carries: loopback, each region's front address, and with
/// `--netns` each namespace's address and gateway.
fn tls_names(regions: usize, nets: &[RegionNet]) -> Vec<String> {
    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    names.extend((0..regions).map(region_ip));
    for net in nets {
        names.push(net.address.to_string());
        names.push(net.gateway.to_string());
    }
    names
}

fn owned_subcommand(name: &str, kind: &str, args: Vec<String>) -> ComponentSpec {
    ComponentSpec {
        name: name.to_string(),
        kind: kind.to_string(),
        program: None,
        args,
        env: Vec::new(),
        ready_flag: Some("--ready-file".to_string()),
        netns: None,
    }
}

/// The replication key file's path in a lab directory.
pub fn replication_key_path(dir: &Path) -> PathBuf {
    dir.join("config").join("replication.key")
}

/// The first lines of the controllers' config files.
const GUARD_HEADER: &str = "# Written by `switchyard lab`: a guard's copy of the controller's configuration (`switchyard guard --config` this file), its own region's servers named directly.\n";

/// The lab's guard of `region` (a component, and one of the region's processes in drills).
pub fn guard_name(region: &str) -> String {
    format!("guard-{region}")
}

const CONTROLLER_HEADER: &str = "# Written by `switchyard lab`. Checks use the default timings: inter 1 s, fastinter 250 ms, timeout 500 ms, rise 2, fall 3.\n";

/// Agent N's token file, in the config folder (`{n}` stands for N).
const AGENT_TOKEN_FILE: &str = "agent-{n}.token";
/// The DNS admin token file, in the config folder.
const DNS_TOKEN_FILE: &str = "dns.token";

/// Agent `n`'s token file in a lab directory.
pub fn agent_token_path(dir: &Path, n: usize) -> PathBuf {
    dir.join("config").join(AGENT_TOKEN_FILE.replace("{n}", &n.to_string()))
}

/// The DNS admin token file in a lab directory.
pub fn dns_token_path(dir: &Path) -> PathBuf {
    dir.join("config").join(DNS_TOKEN_FILE)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain lab's options (in /tmp/lab, at the default base port, one controller), for the
    /// crate's tests to adjust.
    pub(crate) fn options(regions: usize) -> LabOptions {
        LabOptions {
            dir: PathBuf::from("/tmp/lab"),
            regions,
            base_port: BASE_PORT_DEFAULT,
            controller: true,
            netns: false,
            disk_mib: None,
            providers: None,
            controllers: 1,
            etcd: None,
            tls: false,
            quiet: false,
            databases: None,
        }
    }

    #[test]
    fn three_controllers_run_on_three_etcd_members_with_every_link_through_the_network() {
        let mut three = options(2);
        three.controllers = 3;
        assert_eq!(plan(&three), Err(PlanError::Etcd));
        three.etcd = Some(PathBuf::from("/usr/bin/etcd"));
        let lab = plan(&three).expect("plan");
        let names: Vec<&str> = lab.components.iter().map(|c| c.name.as_str()).collect();
        let sites = ["us-east-1", "eu-west-1", crate::ha::TIE_BREAKER];
        for site in sites {
            assert!(names.contains(&format!("etcd-{site}").as_str()), "{names:?}");
            assert!(names.contains(&format!("controller-{site}").as_str()), "{names:?}");
        }
        let last_etcd = names.iter().rposition(|n| n.starts_with("etcd-")).expect("etcd");
        let first_member = names.iter().position(|n| n.starts_with("controller-")).expect("member");
        assert!(
            last_etcd < first_member,
            "etcd starts before the controllers: {names:?}"
        );
        assert!(!names.contains(&"controller"), "no single controller: {names:?}");
        let faults = &lab.files[0].contents;
        for site in sites {
            assert!(faults.contains(&format!("name = \"etcd-peer-{site}\"")), "{faults}");
            assert!(faults.contains(&format!("name = \"controller-{site}\"")));
            for other in sites {
                assert!(faults.contains(&format!("name = \"etcd-{site}-to-{other}\"")));
            }
        }
        // Each member's file lists its own links to the three etcd members and advertises its
        // API link; the peers advertise their peer links.
        let eu = lab
            .files
            .iter()
            .find(|f| f.path.ends_with("controller-eu-west-1.toml"))
            .expect("member file");
        assert!(eu.contents.contains("[controller.ha]\netcd = [\"http://127.0.0.1:17043\", \"http://127.0.0.1:17044\", \"http://127.0.0.1:17045\"]\nmember = \"eu-west-1\""), "{}", eu.contents);
        assert!(eu.contents.contains("advertise = \"http://127.0.0.1:17037\""));
        let etcd = lab
            .components
            .iter()
            .find(|c| c.name == "etcd-eu-west-1")
            .expect("etcd");
        assert!(
            etcd.args.contains(&"--arg=http://127.0.0.1:17029".to_string()),
            "{:?}",
            etcd.args
        );
        assert!(etcd.args.iter().any(|a| a.contains(
            "us-east-1=http://127.0.0.1:17028,eu-west-1=http://127.0.0.1:17029,tie-breaker=http://127.0.0.1:17030"
        )));
        // Each agent lists every member: its own link first, then the others' API links.
        let agent = lab.components.iter().find(|c| c.name == "agent-2").expect("agent");
        assert!(
            agent.args.windows(2).any(|p| p[0] == "--controller"
                && p[1] == "http://127.0.0.1:17011,http://127.0.0.1:17036,http://127.0.0.1:17038"),
            "{:?}",
            agent.args
        );
        let member = lab
            .components
            .iter()
            .find(|c| c.name == "controller-eu-west-1")
            .expect("member");
        assert!(
            member
                .args
                .windows(2)
                .any(|p| p[0] == "--listen" && p[1] == "127.0.0.1:17033")
        );
        // Each member's file says what its command line does (listen, vantage, audit log).
        assert!(
            eu.contents
                .contains("listen = \"127.0.0.1:17033\"\nvantage = \"controller-eu-west-1\"\n"),
            "{}",
            eu.contents
        );
        // Each shop follows every member's pointer, its own site's first.
        let shop = lab.components.iter().find(|c| c.kind == "demo-app").expect("a shop");
        let pointers: Vec<&str> = shop
            .args
            .windows(2)
            .filter(|p| p[0] == "--pointer")
            .map(|p| p[1].as_str())
            .collect();
        assert_eq!(pointers.len(), crate::ha::MEMBERS, "{:?}", shop.args);
        assert!(
            pointers[1..].iter().all(|p| p.starts_with("http://127.0.0.1:170")),
            "{pointers:?}"
        );
        // The second region's pointer is served by the member at its site.
        assert!(
            faults
                .contains("name = \"pointer-eu-west-1\"\nlisten = \"127.0.0.1:17240\"\nupstream = \"127.0.0.1:17033\""),
            "{faults}"
        );
        assert!(lab.drill_targets.contains("controller = \"controller-us-east-1\""));
        // Each member probes as itself, passes its reports on with its own member token, and
        // pushes to DNS through its own link.
        assert!(
            eu.contents
                .contains("vantages = [\"controller-us-east-1\", \"controller-eu-west-1\", \"controller-tie-breaker\", \"agent-1\""),
            "{}",
            eu.contents
        );
        assert!(
            eu.contents
                .contains("[[tokens]]\nname = \"controller-tie-breaker\"\nrole = \"member\"\ntoken_file = \"member-tie-breaker.token\"")
        );
        assert!(eu.contents.contains("token_file = \"member-eu-west-1.token\"\n"));
        assert!(
            eu.contents.contains("admin_url = \"http://127.0.0.1:17057\""),
            "{}",
            eu.contents
        );
        assert!(!eu.contents.contains("admin_url = \"http://127.0.0.1:17003\""));
        assert!(
            faults.contains(
                "name = \"dns-admin-eu-west-1\"\nlisten = \"127.0.0.1:17057\"\nupstream = \"127.0.0.1:17003\""
            )
        );
        assert!(
            member
                .args
                .windows(2)
                .any(|p| p[0] == "--vantage" && p[1] == "controller-eu-west-1")
        );
        assert!(lab.secrets.iter().any(|p| p.ends_with("config/member-eu-west-1.token")));
        // Drills find every member, its links and its audit log in the targets file.
        let targets = lab.drill_targets.replace("{program}", "switchyard");
        assert!(targets.contains("[[controllers]]\nname = \"eu-west-1\"\nurl = \"http://127.0.0.1:17033\"\nsite = \"eu-west-1\"\nprocess = \"controller-eu-west-1\"\netcd_process = \"etcd-eu-west-1\""), "{targets}");
        assert!(targets.contains("isolation_links = [\"etcd-eu-west-1-to-us-east-1\", \"etcd-eu-west-1-to-eu-west-1\", \"etcd-eu-west-1-to-tie-breaker\", \"controller-eu-west-1\"]\ndns_links = [\"dns-admin-eu-west-1\"]"), "{targets}");
        assert!(
            targets.contains("[[controllers]]\nname = \"tie-breaker\"\nurl = \"http://127.0.0.1:17034\"\nprocess"),
            "no site for the tie-breaker: {targets}"
        );
        let mut ports: Vec<&String> = lab.ports.iter().map(|(_, p)| p).collect();
        let total = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), total, "no port is used twice: {:?}", lab.ports);
        // Three regions: the sites are the regions.
        let mut regions3 = three.clone();
        regions3.regions = 3;
        let lab = plan(&regions3).expect("plan");
        assert!(lab.components.iter().any(|c| c.name == "controller-ap-south-1"));
        assert!(!lab.components.iter().any(|c| c.name.contains(crate::ha::TIE_BREAKER)));
        let mut wrong = three.clone();
        wrong.controllers = 2;
        assert_eq!(plan(&wrong), Err(PlanError::Controllers(2)));
        wrong.controllers = 3;
        wrong.controller = false;
        assert_eq!(plan(&wrong), Err(PlanError::ControllersWithout));
    }

    #[test]
    fn two_regions_have_every_component_and_unique_ports() {
        let plan = plan(&options(2)).expect("plan");
        let names: Vec<&str> = plan.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "network",
                "store-us-east-1",
                "store-eu-west-1",
                "shop-us-east-1-1",
                "shop-us-east-1-2",
                "shop-eu-west-1-1",
                "shop-eu-west-1-2",
                "lb-us-east-1",
                "lb-eu-west-1",
                "dns",
                "controller",
                "agent-1",
                "agent-2",
                "agent-3"
            ]
        );
        let mut ports: Vec<&String> = plan.ports.iter().map(|(_, p)| p).collect();
        let total = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), total, "no port is used twice: {:?}", plan.ports);
    }

    #[test]
    fn with_tls_every_api_between_components_is_https_and_trusts_the_labs_ca() {
        let plain = plan(&options(2)).expect("plan");
        assert_eq!(plain.tls, None);
        assert!(!plain.drill_targets.contains("https://"));
        let mut three = options(2);
        three.tls = true;
        let with = plan(&three).expect("plan");
        let tls = with.tls.clone().expect("a CA to make");
        assert_eq!(tls.dir, PathBuf::from("/tmp/lab/config/tls"));
        for name in ["127.0.0.1", "127.0.0.11", "127.0.0.12"] {
            assert!(tls.names.iter().any(|n| n == name), "{name} in {:?}", tls.names);
        }
        let ca = "/tmp/lab/config/tls/ca.pem".to_string();
        let component = |name: &str| {
            with.components
                .iter()
                .find(|c| c.name == name)
                .unwrap_or_else(|| panic!("{name}"))
        };
        let has = |name: &str, flag: &str, value: &str| {
            let args = &component(name).args;
            args.windows(2).any(|w| w[0] == flag && w[1] == value)
        };
        // Stores: HTTPS, peers over https:// verified by the CA, and mutual TLS.
        assert!(has("store-us-east-1", "--tls-cert", "/tmp/lab/config/tls/cert.pem"));
        assert!(has("store-us-east-1", "--peer-client-ca", &ca));
        assert!(has(
            "store-us-east-1",
            "--peer-client-key",
            "/tmp/lab/config/tls/key.pem"
        ));
        let store = component("store-us-east-1");
        assert!(
            store.args.iter().any(|a| a.starts_with("eu-west-1=https://")),
            "{:?}",
            store.args
        );
        // Apps reach stores and the pointer over https://.
        let shop = component("shop-us-east-1-1");
        assert!(shop.args.iter().any(|a| a.starts_with("us-east-1=https://")));
        assert!(
            shop.args
                .windows(2)
                .any(|w| w[0] == "--pointer" && w[1].starts_with("https://"))
        );
        // The controller, DNS and load balancers serve their APIs over HTTPS; everything trusts
        // the CA through the environment.
        for name in ["controller", "dns", "lb-us-east-1"] {
            assert!(has(name, "--tls-key", "/tmp/lab/config/tls/key.pem"), "{name}");
        }
        for name in ["store-eu-west-1", "shop-eu-west-1-2", "controller", "agent-1"] {
            assert!(
                component(name)
                    .env
                    .contains(&("SWITCHYARD_CA_FILE".to_string(), ca.clone())),
                "{name}"
            );
        }
        assert!(
            component("agent-2")
                .args
                .windows(2)
                .any(|w| w[0] == "--controller" && w[1].starts_with("https://"))
        );
        let controller = with
            .files
            .iter()
            .find(|f| f.path.ends_with("controller.toml"))
            .expect("controller config");
        assert!(controller.contents.contains("admin_url = \"https://127.0.0.1:"));
        assert!(controller.contents.contains("endpoint = \"https://127.0.0.1:"));
        assert!(with.drill_targets.contains("store_url = \"https://"));
        assert!(with.drill_targets.contains("controller_url = \"https://"));
        // The shop's front door and the fault proxy's API stay plain.
        assert!(with.drill_targets.contains("fault_proxy_url = \"http://"));
        assert!(controller.contents.contains("url = \"http://127.0.0.1:"));
        // Several controllers reach each other over HTTPS too.
        three.controllers = crate::ha::MEMBERS;
        three.etcd = Some(PathBuf::from("/usr/bin/etcd"));
        let ha = plan(&three).expect("plan");
        let members: Vec<&LabFile> = ha
            .files
            .iter()
            .filter(|f| f.contents.contains("[controller.ha]"))
            .collect();
        assert_eq!(members.len(), crate::ha::MEMBERS);
        assert!(members.iter().all(|f| f.contents.contains("advertise = \"https://")));
    }

    #[test]
    fn stores_replicate_through_the_network_and_apps_reach_every_store() {
        let plan = plan(&options(3)).expect("plan");
        let store = plan
            .components
            .iter()
            .find(|c| c.name == "store-eu-west-1")
            .expect("store");
        let peers: Vec<&String> = store
            .args
            .iter()
            .zip(store.args.iter().skip(1))
            .filter(|(flag, _)| *flag == "--peer")
            .map(|(_, value)| value)
            .collect();
        assert_eq!(peers.len(), 2);
        let faults = &plan.files[0].contents;
        for peer in peers {
            let port = peer.rsplit(':').next().expect("port");
            assert!(
                faults.contains(&format!("listen = \"127.0.0.1:{port}\"")),
                "{peer} is a link"
            );
        }
        assert!(faults.contains("name = \"repl-eu-west-1-to-us-east-1\""));
        assert!(faults.contains("name = \"app-ap-south-1-to-store-us-east-1\""));
        assert!(faults.contains("name = \"frontend-ap-south-1\"\nlisten = \"127.0.0.13:17080\""));
        assert!(
            plan.drill_targets
                .contains("\"replication:eu-west-1:us-east-1\" = \"repl-eu-west-1-to-us-east-1\"")
        );
        assert!(
            plan.drill_targets
                .contains("kill = \"{program} lab ctl --dir /tmp/lab kill {name}\"")
        );
        let creators: Vec<&str> = plan
            .components
            .iter()
            .filter(|c| c.args.iter().any(|a| a == "--tables-create"))
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(creators, ["shop-us-east-1-1"], "one instance creates the global tables");
    }

    #[test]
    fn each_agent_has_its_own_token_and_only_the_controller_the_dns_token() {
        let plan = plan(&options(2)).expect("plan");
        let config = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("controller.toml"))
            .expect("controller config");
        for n in 1..=AGENTS {
            let agent = plan
                .components
                .iter()
                .find(|c| c.name == format!("agent-{n}"))
                .expect("agent");
            let token = agent_token_path(Path::new("/tmp/lab"), n);
            let passed = agent
                .args
                .windows(2)
                .find(|pair| pair[0] == "--token-file")
                .map(|pair| pair[1].clone());
            assert_eq!(passed, Some(token.display().to_string()), "agent-{n}");
            assert!(plan.secrets.contains(&token));
            assert!(
                config.contents.contains(&format!(
                    "[[tokens]]\nname = \"agent-{n}\"\nrole = \"agent\"\ntoken_file = \"agent-{n}.token\"\n"
                )),
                "{}",
                config.contents
            );
            // The token file is next to the config, where its relative path points.
            assert_eq!(token.parent(), config.path.parent());
        }
        let dns = plan.components.iter().find(|c| c.name == "dns").expect("dns");
        let dns_token = dns_token_path(Path::new("/tmp/lab"));
        assert!(
            dns.args
                .windows(2)
                .any(|p| p[0] == "--token-file" && p[1] == dns_token.display().to_string())
        );
        assert!(config.contents.contains("token_file = \"dns.token\""));
        assert!(plan.secrets.contains(&dns_token));
        assert!(plan.secrets.contains(&replication_key_path(Path::new("/tmp/lab"))));
        let mut unique = plan.secrets.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), plan.secrets.len(), "one file per secret");
    }

    #[test]
    fn the_dashboard_is_offered_only_with_a_controller() {
        let with = plan(&options(2)).expect("plan");
        assert!(
            with.try_lines.iter().any(|l| l.contains("/dashboard")),
            "{:?}",
            with.try_lines
        );
        let without = plan(&LabOptions {
            controller: false,
            ..options(2)
        })
        .expect("plan");
        assert!(!without.try_lines.iter().any(|l| l.contains("/dashboard")));
    }

    #[test]
    fn every_vantage_checks_each_region_through_its_own_link() {
        let plan = plan(&options(2)).expect("plan");
        let faults = &plan.files[0].contents;
        let controller = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("controller.toml"))
            .expect("controller config");
        // The checks name the controller's link; each agent's map sends it through its own.
        assert!(faults.contains(
            "name = \"health-controller-eu-west-1\"\nlisten = \"127.0.0.1:17241\"\nupstream = \"127.0.0.12:17080\""
        ));
        assert!(faults.contains("name = \"health-agent-3-eu-west-1\"\nlisten = \"127.0.0.1:17244\""));
        assert!(controller.contents.contains("url = \"http://127.0.0.1:17241/health\""));
        // Drills measure the default check timings, not lab-tuned ones.
        assert!(!controller.contents.contains("interval_ms") && !controller.contents.contains("timeout_ms"));
        // Failback waits on the replication lag into the region, read from the other stores.
        assert!(controller.contents.contains("failback_lag_check = true"));
        assert!(controller.contents.contains(
            "name = \"us-east-1-store\"\nregion = \"us-east-1\"\n\n[checks.kind]\ntype = \"dynamodb\"\nendpoint = \"http://127.0.0.1:17150\"\ntable = \"shop_orders\"\nwrite = true\nlag_sources = [\"http://127.0.0.1:17200\"]"
        ));
        // The store checks too: one link per vantage, to the region's store.
        assert!(faults.contains(
            "name = \"health-store-agent-2-us-east-1\"\nlisten = \"127.0.0.1:17152\"\nupstream = \"127.0.0.1:17100\""
        ));
        assert!(controller.contents.contains(
            "[vantage_paths.agent-3]\n\"127.0.0.1:17141\" = \"127.0.0.1:17144\"\n\"127.0.0.1:17150\" = \"127.0.0.1:17153\"\n\"127.0.0.1:17241\" = \"127.0.0.1:17244\"\n\"127.0.0.1:17250\" = \"127.0.0.1:17253\""
        ));
        // Cutting a vantage point's view of a region cuts its shop and store checks.
        assert!(plan.drill_targets.contains(
            "\"controller:us-east-1\" = [\"health-controller-us-east-1\", \"health-store-controller-us-east-1\"]"
        ));
        assert!(
            plan.drill_targets.contains(
                "\"health:0:us-east-1\" = [\"health-agent-1-us-east-1\", \"health-store-agent-1-us-east-1\"]"
            )
        );
        assert!(
            plan.drill_targets.contains(
                "\"health:2:eu-west-1\" = [\"health-agent-3-eu-west-1\", \"health-store-agent-3-eu-west-1\"]"
            )
        );
    }

    #[test]
    fn with_netns_regions_live_in_namespaces_and_reach_the_network_through_their_gateway() {
        let plan = plan(&LabOptions {
            netns: true,
            ..options(2)
        })
        .expect("plan");
        let names: Vec<&str> = plan.networks.iter().map(|n| n.namespace.as_str()).collect();
        assert_eq!(names, ["sy17000r0", "sy17000r1"]);
        let net = &plan.networks[1];
        assert_eq!(
            (net.gateway.to_string(), net.address.to_string()),
            ("10.190.1.1".into(), "10.190.1.2".into())
        );
        assert!(
            net.host_veth.len() <= 15 && net.inner_veth.len() <= 15,
            "interface names fit IFNAMSIZ"
        );
        let spec = |name: &str| plan.components.iter().find(|c| c.name == name).expect("component");
        let store = spec("store-eu-west-1");
        assert_eq!(store.netns.as_deref(), Some("sy17000r1"));
        assert!(
            store
                .args
                .windows(2)
                .any(|w| w[0] == "--listen" && w[1] == "10.190.1.2:17200")
        );
        assert!(store.args.iter().any(|a| a == "--trusted-network"));
        assert!(
            store.args.iter().any(|a| a == "us-east-1=http://10.190.1.1:17220"),
            "{:?}",
            store.args
        );
        assert_eq!(
            spec("dns").netns,
            None,
            "DNS and the controller stay in the lab's namespace"
        );
        let faults = &plan.files[0].contents;
        assert!(faults.contains(
            "name = \"repl-eu-west-1-to-us-east-1\"\nlisten = \"10.190.1.1:17220\"\nupstream = \"10.190.0.2:17100\""
        ));
        let allowed: Vec<&str> = spec("network")
            .args
            .windows(2)
            .filter(|w| w[0] == "--allow-upstream")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(allowed, ["127.0.0.0/8", "10.190.0.2/32", "10.190.1.2/32"]);
        assert!(
            faults.contains(
                "name = \"frontend-us-east-1\"\nlisten = \"127.0.0.11:17080\"\nupstream = \"10.190.0.2:17108\""
            )
        );
        assert!(
            plan.ports
                .iter()
                .all(|(_, address)| !address.starts_with("10.190.0.2:") && !address.starts_with("10.190.1.2:")),
            "addresses inside the namespaces are not checked from outside"
        );
        assert!(plan.drill_targets.contains("store_url = \"http://10.190.0.2:17100\""));
        assert!(
            plan.drill_targets
                .contains("cut_network = \"{program} lab ctl --dir /tmp/lab cut-network {name}\"")
        );
        assert!(plan_without_netns_has_no_networks());
    }

    fn plan_without_netns_has_no_networks() -> bool {
        let plan = plan(&options(2)).expect("plan");
        let loopback_only = plan
            .components
            .iter()
            .all(|c| !c.args.iter().any(|a| a == "--allow-upstream"));
        plan.networks.is_empty() && loopback_only
    }

    #[test]
    fn without_a_controller_apps_write_locally() {
        let mut options = options(2);
        options.controller = false;
        let plan = plan(&options).expect("plan");
        assert!(
            plan.components
                .iter()
                .all(|c| c.kind != "controller" && c.kind != "agent")
        );
        assert!(plan.components.iter().all(|c| !c.args.iter().any(|a| a == "--pointer")));
    }

    #[test]
    fn bad_options_say_what_to_change() {
        assert_eq!(plan(&options(1)), Err(PlanError::Regions(1)));
        assert_eq!(plan(&options(6)), Err(PlanError::Regions(6)));
        let mut high = options(2);
        high.base_port = 65_400;
        let error = plan(&high).expect_err("too high");
        assert!(error.to_string().contains("65400"), "{error}");
    }

    #[test]
    fn with_disks_each_store_gets_a_filesystem_its_watermark_and_the_drill_the_commands() {
        let with = plan(&LabOptions {
            disk_mib: Some(256),
            ..options(2)
        })
        .expect("plan");
        assert_eq!(with.disks.len(), 2);
        let store = with
            .components
            .iter()
            .find(|c| c.name == "store-eu-west-1")
            .expect("store");
        let data = store.args.iter().position(|a| a == "--data-dir").expect("data dir");
        assert_eq!(PathBuf::from(&store.args[data + 1]), with.disks[1].path);
        let watermark = store
            .args
            .iter()
            .position(|a| a == "--disk-free-bytes-min")
            .expect("watermark");
        assert_eq!(store.args[watermark + 1], (64 * 1024 * 1024).to_string());
        assert!(
            with.drill_targets
                .contains("fill_disk = \"{program} lab ctl --dir /tmp/lab fill-disk {name}\"")
        );
        let without = plan(&options(2)).expect("plan");
        assert!(without.disks.is_empty() && !without.drill_targets.contains("fill_disk"));
        assert_eq!(
            plan(&LabOptions {
                disk_mib: Some(8),
                ..options(2)
            }),
            Err(PlanError::DiskMib(8))
        );
    }

    #[test]
    fn providers_add_bind9_and_haproxy_with_their_steps_and_drill_targets() {
        let programs = crate::providers::Programs {
            named: Some(PathBuf::from("/usr/sbin/named")),
            haproxy: Some(PathBuf::from("/usr/sbin/haproxy")),
            moto_server: Some(PathBuf::from("/venv/bin/moto_server")),
            moto_python: Some(PathBuf::from("/venv/bin/python3")),
        };
        let with = plan(&LabOptions {
            providers: Some(programs),
            ..options(2)
        })
        .expect("plan");
        let names: Vec<&str> = with.components.iter().map(|c| c.name.as_str()).collect();
        let controller = names.iter().position(|n| *n == "controller").expect("controller");
        for provider in ["bind9", "haproxy", "moto"] {
            let at = names.iter().position(|n| *n == provider).expect(provider);
            assert!(at < controller, "{provider} starts before the controller acts on it");
        }
        let bind = with.components.iter().find(|c| c.name == "bind9").expect("bind9");
        assert_eq!(&bind.args[..2], ["lab", "exec"]);
        assert!(bind.args.contains(&"--program".to_string()) && bind.args.contains(&"/usr/sbin/named".to_string()));
        let controller_toml = with
            .files
            .iter()
            .find(|f| f.path.ends_with("controller.toml"))
            .expect("controller config");
        assert!(controller_toml.contents.contains("kind = \"rfc2136\""));
        assert!(
            controller_toml
                .contents
                .contains("[runbook.haproxy.regions]\neu-west-1 = [\"shop/eu-west-1\"]")
        );
        assert!(with.drill_targets.contains("[[providers]]\nname = \"rfc2136\""));
        assert!(with.drill_targets.contains("kind = \"haproxy\""));
        // moto: created by its setup requests, driven with the lab's keys through the AWS chain.
        let moto = with.components.iter().find(|c| c.name == "moto").expect("moto");
        let setup = moto
            .args
            .iter()
            .find_map(|a| a.strip_prefix("--setup="))
            .expect("setup file");
        let setup = with
            .files
            .iter()
            .find(|f| f.path.to_str() == Some(setup))
            .expect("setup file planned");
        // moto runs under its own Python with the lab's Route 53 batch correction.
        assert!(moto.args.contains(&"/venv/bin/python3".to_string()), "{:?}", moto.args);
        let script = moto
            .args
            .iter()
            .find_map(|a| a.strip_prefix("--arg=").filter(|a| a.ends_with("moto_lab.py")))
            .expect("moto_lab.py is moto's first argument");
        assert!(
            with.files
                .iter()
                .any(|f| f.path.to_str() == Some(script) && f.contents.contains("Route53Backend")),
            "the script is planned"
        );
        let requests: Vec<crate::exec::SetupRequest> = serde_json::from_str(&setup.contents).expect("setup parses");
        assert_eq!(requests.len(), 2);
        assert!(requests[0].body.contains("<Name>shop.example.</Name>"));
        assert!(
            controller_toml
                .contents
                .contains("kind = \"route53\"\ntimeout_ms = 15000")
        );
        assert!(controller_toml.contents.contains("kind = \"ssm_parameter\""));
        let controller_spec = with
            .components
            .iter()
            .find(|c| c.name == "controller")
            .expect("controller");
        assert!(
            controller_spec
                .env
                .iter()
                .any(|(k, v)| k == "AWS_SHARED_CREDENTIALS_FILE" && v.ends_with("config/aws-credentials"))
        );
        assert!(with.drill_targets.contains("kind = \"route53\""));
        assert!(with.drill_targets.contains("kind = \"ssm\""));
        assert_eq!(with.tsig_keys.len(), 1);
        assert!(with.notes.is_empty());
        let ports: Vec<&str> = with.ports.iter().map(|(_, a)| a.as_str()).collect();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "no port planned twice: {ports:?}");

        let without = plan(&LabOptions {
            providers: Some(crate::providers::Programs::default()),
            ..options(2)
        })
        .expect("plan");
        assert!(
            !without
                .components
                .iter()
                .any(|c| c.name == "bind9" || c.name == "haproxy")
        );
        assert!(!without.drill_targets.contains("[[providers]]"));
        assert_eq!(without.notes.len(), 3);
        assert!(
            without.notes[0].contains("apt-get install bind9"),
            "{:?}",
            without.notes
        );
        assert!(
            without.notes[1].contains("apt-get install haproxy"),
            "{:?}",
            without.notes
        );
        assert!(
            without.notes[2].contains("pip install 'moto[server]'"),
            "{:?}",
            without.notes
        );
        assert_eq!(plan(&options(2)).expect("plan").notes.len(), 0);
        // Without the controller nothing drives them: they run, but no drill watches them.
        let quiet = plan(&LabOptions {
            controller: false,
            providers: Some(crate::providers::Programs {
                named: Some(PathBuf::from("/usr/sbin/named")),
                haproxy: None,
                moto_server: None,
                moto_python: None,
            }),
            ..options(2)
        })
        .expect("plan");
        assert!(quiet.components.iter().any(|c| c.name == "bind9"));
        assert!(!quiet.drill_targets.contains("[[providers]]"));
    }
}
