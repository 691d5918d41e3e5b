//! The deployment description: everything a drill needs to find and break a deployment.
//!
//! `switchyard lab` writes it as `DIR/drill-targets.toml`; for your own deployment, write it by
//! hand and pass `--targets FILE`. Names of processes and fault-proxy links are the lab's (or
//! your supervisor's); the drill only passes them to the process-control commands and the
//! fault proxy's API.
//!
//! ```toml
//! shop_name = "shop.lab.test."          # the failover record clients resolve
//! shop_port = 8080                       # the shop's port on the answered address
//! dns_server = "127.0.0.1:5353"          # the authoritative switchyard dns (UDP)
//! controller_url = "http://127.0.0.1:9000"   # optional: GET /v1/active-region
//! fault_proxy_url = "http://127.0.0.1:8474"  # optional: Toxiproxy-style API
//! fault_proxy_token_file = "fault-proxy.token" # the API's token, if it has one (relative to
//!                                        # this file's folder)
//! table = "switchyard-drill"             # the global table the writers use (created if missing)
//!
//! [[regions]]
//! name = "us-east-1"
//! store_url = "http://127.0.0.1:8001"
//! shop_addresses = ["127.0.0.11"]        # what the DNS answers for this region
//! store_process = "store-us-east-1"
//! app_processes = ["app-us-east-1-a", "app-us-east-1-b"]
//! proxy_process = "proxy-us-east-1"
//! database_processes = ["mariadb-us-east-1", "redis-us-east-1"]   # killed with the region
//!
//! [[databases]]     # with databases (`switchyard lab --databases`): each region's servers
//! region = "us-east-1"
//! mariadb = "127.0.0.1:17160"            # the server itself (the orders are checked here)
//! mariadb_link = "127.0.0.1:17162"       # the address the runbook and the replicas use
//! mariadb_process = "mariadb-us-east-1"
//! redis = "127.0.0.1:17161"
//! redis_link = "127.0.0.1:17163"
//! redis_process = "redis-us-east-1"
//!
//! [database_accounts]   # how the drill reads them, and the runbook's bound
//! mariadb_user = "switchyard"
//! mariadb_password = "..."
//! redis_user = "switchyard"
//! redis_password = "..."
//! promote_lag_max_ms = 1000
//! semi_sync = true
//!
//! [processes]
//! controller = "controller"
//! vantages = ["vantage-0", "vantage-1", "vantage-2"]
//!
//! [links]   # link key → fault-proxy proxy name
//! "replication:us-east-1:eu-west-1" = "repl-us-east-1-eu-west-1"
//! "health:0:us-east-1" = "vantage-0-us-east-1"
//! "controller:us-east-1" = "controller-us-east-1"
//! "frontend:us-east-1" = "frontend-us-east-1"
//! "app-store:us-east-1" = "app-store-us-east-1"
//! "database:us-east-1" = ["mariadb-us-east-1", "redis-us-east-1"]   # db-partition
//!
//! [[controllers]]   # with several controllers ([controller.ha]): each member
//! name = "us-east-1"                     # its member name
//! url = "http://127.0.0.1:9000"          # its API (GET /health says whether it acts)
//! site = "us-east-1"                     # the region it runs in (leader-region-outage)
//! process = "controller-us-east-1"       # for kill / restart
//! etcd_process = "etcd-us-east-1"        # the etcd member at its site
//! audit_log = "/srv/lab/data/controller-us-east-1-audit.jsonl"   # read after the drill
//! isolation_links = ["etcd-us-east-1-to-us-east-1", "controller-us-east-1"]   # cut it off etcd and the others
//! dns_links = ["dns-admin-us-east-1"]    # its pushes to the DNS admin API
//!
//! [process_control]   # shell commands; {name} becomes the process name
//! kill = "switchyard lab ctl --dir lab kill {name}"
//! stop = "switchyard lab ctl --dir lab stop {name}"
//! cont = "switchyard lab ctl --dir lab cont {name}"
//! restart = "switchyard lab ctl --dir lab restart {name}"
//! ```

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::scenario::{Link, RegionRole, Roles};

/// The file `switchyard lab --dir DIR` writes for drills.
pub const LAB_TARGETS_FILE: &str = "drill-targets.toml";
/// Default global table of the drill's writers.
pub const TABLE_DEFAULT: &str = "switchyard-drill";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub shop_name: String,
    pub shop_port: u16,
    pub dns_server: SocketAddr,
    #[serde(default)]
    pub controller_url: Option<String>,
    #[serde(default)]
    pub fault_proxy_url: Option<String>,
    /// The file holding the fault proxy API's token (`switchyard fault-proxy --token-file`),
    /// sent as `Authorization: Bearer`. A relative path starts at the deployment file's folder.
    #[serde(default)]
    pub fault_proxy_token_file: Option<PathBuf>,
    /// The token read from `fault_proxy_token_file` by [`Deployment::load`].
    #[serde(skip)]
    pub fault_proxy_token: Option<String>,
    #[serde(default = "table_default")]
    pub table: String,
    pub regions: Vec<RegionTargets>,
    #[serde(default)]
    pub processes: Processes,
    /// Link key → the fault-proxy proxy name(s) that carry it.
    #[serde(default)]
    pub links: BTreeMap<String, LinkNames>,
    #[serde(default)]
    pub process_control: Option<ProcessCommands>,
    /// Infrastructure the controller's runbook acts on (a DNS primary, HAProxy): the drill
    /// watches each and reports when it switched (RTO per provider).
    #[serde(default)]
    pub providers: Vec<ProviderWatch>,
    /// With several controllers (`[controller.ha]`): every member, so the drills that break the
    /// leader find it at run time and read the audit logs.
    #[serde(default)]
    pub controllers: Vec<ControllerMember>,
    /// `switchyard lab --databases`: each region's MariaDB and Redis, which the drills write
    /// numbered orders and sessions to and check after convergence ([`crate::runtime::databases`]).
    #[serde(default)]
    pub databases: Vec<DatabaseTargets>,
    #[serde(default)]
    pub database_accounts: Option<DatabaseAccounts>,
}

/// One region's databases: the servers themselves (as the region's shops reach them) and the
/// fault-proxy links the controller and the replicas reach them through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseTargets {
    pub region: String,
    #[serde(default)]
    pub mariadb: Option<String>,
    #[serde(default)]
    pub mariadb_link: Option<String>,
    #[serde(default)]
    pub mariadb_process: Option<String>,
    #[serde(default)]
    pub redis: Option<String>,
    #[serde(default)]
    pub redis_link: Option<String>,
    #[serde(default)]
    pub redis_process: Option<String>,
}

/// The accounts the drill checks the databases with, and the bounds the runbook promotes under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseAccounts {
    pub mariadb_user: String,
    pub mariadb_password: String,
    pub redis_user: String,
    pub redis_password: String,
    /// The steps' `promote_lag_max_ms`.
    pub promote_lag_max_ms: u64,
    /// MariaDB replicates semi-synchronously.
    #[serde(default)]
    pub semi_sync: bool,
}

/// One controller of a group (`[controller.ha]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerMember {
    /// Its member name (`[controller.ha] member`).
    pub name: String,
    /// Its API, reached directly: `GET /health` says whether it acts.
    pub url: String,
    /// The region it runs in (a tie-breaker site is in none).
    #[serde(default)]
    pub site: Option<String>,
    /// Its process name, for the process-control commands.
    #[serde(default)]
    pub process: Option<String>,
    /// The etcd member at its site, killed with the site.
    #[serde(default)]
    pub etcd_process: Option<String>,
    /// Its audit log, read after the drill (the member's record of every runbook and step).
    #[serde(default)]
    pub audit_log: Option<std::path::PathBuf>,
    /// Fault-proxy proxies that cut it off etcd and the other members (it still sees the
    /// regions).
    #[serde(default)]
    pub isolation_links: Vec<String>,
    /// Fault-proxy proxies its pushes to the DNS admin API go through.
    #[serde(default)]
    pub dns_links: Vec<String>,
}

/// One provider to watch, and how to tell which region it points at.
///
/// ```toml
/// [[providers]]
/// name = "rfc2136"                 # as the report shows it
/// kind = "dns"                     # A records of `record` at `dns_server` (UDP)
/// dns_server = "127.0.0.1:17004"
/// record = "www.shop.example."
/// [providers.regions]              # region → the addresses that mean "this region"
/// "us-east-1" = ["127.0.0.11"]
///
/// [[providers]]
/// name = "haproxy"
/// kind = "haproxy"                 # `show servers state` on a stats socket
/// socket = "/srv/lab/run/haproxy.sock"   # or address = "127.0.0.1:9999"
/// [providers.regions]              # region → its servers: it is pointed at when they alone are ready
/// "us-east-1" = ["shop/us-east-1"]
///
/// [[providers]]
/// name = "route53"
/// kind = "route53"                 # the record set's values (ListResourceRecordSets)
/// zone = "shop.example."           # a hosted zone name or id
/// record = "www.shop.example."
/// record_type = "A"                # default A
/// endpoint_url = "http://127.0.0.1:17009"   # moto; leave out for AWS
/// credentials_file = "/srv/lab/config/aws-credentials"   # default: the AWS chain
/// [providers.regions]              # region → the values that mean "this region"
/// "us-east-1" = ["127.0.0.11"]
///
/// [[providers]]
/// name = "ssm"
/// kind = "ssm"                     # a parameter's value (GetParameter)
/// parameter = "/shop/AWS_REGION"
/// aws_region = "us-east-1"         # where the parameter lives
/// [providers.regions]
/// "us-east-1" = ["us-east-1"]
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderWatch {
    pub name: String,
    pub kind: ProviderKind,
    #[serde(default)]
    pub dns_server: Option<SocketAddr>,
    #[serde(default)]
    pub record: Option<String>,
    #[serde(default)]
    pub socket: Option<std::path::PathBuf>,
    #[serde(default)]
    pub address: Option<String>,
    /// `route53`: the hosted zone (id or name) and the record's type (default A).
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub record_type: Option<String>,
    /// `ssm`: the parameter's name.
    #[serde(default)]
    pub parameter: Option<String>,
    /// `route53`, `ssm`: the AWS region called (Route 53: us-east-1), another endpoint (moto),
    /// a profile and a shared credentials file instead of the standard chain's.
    #[serde(default)]
    pub aws_region: Option<String>,
    #[serde(default)]
    pub endpoint_url: Option<String>,
    #[serde(default)]
    pub profile: Option<String>,
    #[serde(default)]
    pub credentials_file: Option<std::path::PathBuf>,
    pub regions: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Dns,
    Haproxy,
    Route53,
    Ssm,
}

/// One proxy name, or several when a link runs over several proxies (a load balancer's link
/// to each of its app servers, say).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LinkNames {
    One(String),
    Many(Vec<String>),
}

impl LinkNames {
    pub fn names(&self) -> &[String] {
        match self {
            LinkNames::One(name) => std::slice::from_ref(name),
            LinkNames::Many(names) => names,
        }
    }
}

fn table_default() -> String {
    TABLE_DEFAULT.to_string()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionTargets {
    pub name: String,
    pub store_url: String,
    #[serde(default)]
    pub shop_addresses: Vec<Ipv4Addr>,
    #[serde(default)]
    pub store_process: Option<String>,
    #[serde(default)]
    pub app_processes: Vec<String>,
    #[serde(default)]
    pub proxy_process: Option<String>,
    /// Its database servers (`switchyard lab --databases`): a region outage kills them too.
    #[serde(default)]
    pub database_processes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Processes {
    #[serde(default)]
    pub controller: Option<String>,
    #[serde(default)]
    pub vantages: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessCommands {
    pub kill: String,
    pub stop: String,
    pub cont: String,
    pub restart: String,
    /// Cuts a region's network (`{name}` is the region), as `switchyard lab --netns` can.
    #[serde(default)]
    pub cut_network: Option<String>,
    /// Restores it.
    #[serde(default)]
    pub heal_network: Option<String>,
    /// Fills a region's data disk below its store's watermark (`{name}` is the region), as
    /// `switchyard lab --disk-mib` can.
    #[serde(default)]
    pub fill_disk: Option<String>,
    /// Gives it its room back.
    #[serde(default)]
    pub free_disk: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Deployment {
    /// Reads a deployment file (TOML; `.json` files as JSON).
    pub fn load(path: &Path) -> Result<Deployment, DeploymentError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeploymentError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let json = path.extension().is_some_and(|e| e == "json");
        let mut deployment = Deployment::parse(&text, json).map_err(|e| match e {
            DeploymentError::Parse { message, .. } => DeploymentError::Parse {
                path: path.display().to_string(),
                message,
            },
            DeploymentError::Invalid { message, .. } => DeploymentError::Invalid {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })?;
        if let Some(file) = &deployment.fault_proxy_token_file {
            let file = match path.parent() {
                Some(folder) if file.is_relative() => folder.join(file),
                _ => file.clone(),
            };
            let token = std::fs::read_to_string(&file).map_err(|e| DeploymentError::Invalid {
                path: path.display().to_string(),
                message: format!(
                    "fault_proxy_token_file {}: {e}; give the file the fault proxy reads with --token-file",
                    file.display()
                ),
            })?;
            let token = token.trim().to_string();
            if token.is_empty() {
                return Err(DeploymentError::Invalid {
                    path: path.display().to_string(),
                    message: format!(
                        "fault_proxy_token_file {} is empty; give the file the fault proxy reads with --token-file",
                        file.display()
                    ),
                });
            }
            deployment.fault_proxy_token = Some(token);
            deployment.fault_proxy_token_file = Some(file);
        }
        Ok(deployment)
    }

    pub fn parse(text: &str, json: bool) -> Result<Deployment, DeploymentError> {
        let parsed: Deployment = if json {
            serde_json::from_str(text).map_err(|e| DeploymentError::Parse {
                path: String::new(),
                message: e.to_string(),
            })?
        } else {
            // toml's error names the line and column.
            toml::from_str(text).map_err(|e| DeploymentError::Parse {
                path: String::new(),
                message: e.to_string(),
            })?
        };
        parsed.validate().map_err(|message| DeploymentError::Invalid {
            path: String::new(),
            message,
        })?;
        Ok(parsed)
    }

    fn validate(&self) -> Result<(), String> {
        if self.regions.len() < 2 {
            return Err(format!(
                "{} region(s) listed; a drill needs at least two [[regions]] to fail over between",
                self.regions.len()
            ));
        }
        for (i, region) in self.regions.iter().enumerate() {
            if self.regions[..i].iter().any(|r| r.name == region.name) {
                return Err(format!(
                    "region '{}' is listed twice; list each region once",
                    region.name
                ));
            }
            check_url(&format!("regions.{}.store_url", region.name), &region.store_url)?;
        }
        for (field, url) in [
            ("controller_url", &self.controller_url),
            ("fault_proxy_url", &self.fault_proxy_url),
        ] {
            if let Some(url) = url {
                check_url(field, url)?;
            }
        }
        for key in self.links.keys() {
            parse_link_key(key)?;
        }
        for (i, provider) in self.providers.iter().enumerate() {
            if self.providers[..i].iter().any(|p| p.name == provider.name) {
                return Err(format!(
                    "provider '{}' is listed twice; give each a name of its own",
                    provider.name
                ));
            }
            let ready = match provider.kind {
                ProviderKind::Dns => provider.dns_server.is_some() && provider.record.is_some(),
                ProviderKind::Haproxy => provider.socket.is_some() != provider.address.is_some(),
                ProviderKind::Route53 => provider.zone.is_some() && provider.record.is_some(),
                ProviderKind::Ssm => provider.parameter.is_some() && provider.aws_region.is_some(),
            };
            if !ready {
                return Err(format!(
                    "provider '{}': kind dns needs dns_server and record; kind haproxy needs one of socket and address; kind route53 needs zone and record; kind ssm needs parameter and aws_region",
                    provider.name
                ));
            }
            if let Some(unknown) = provider.regions.keys().find(|r| self.region(r).is_none()) {
                return Err(format!(
                    "provider '{}' names region '{unknown}', which [[regions]] does not list",
                    provider.name
                ));
            }
        }
        for (i, member) in self.controllers.iter().enumerate() {
            if self.controllers[..i].iter().any(|m| m.name == member.name) {
                return Err(format!(
                    "controller '{}' is listed twice in [[controllers]]; list each member once",
                    member.name
                ));
            }
            check_url(&format!("controllers.{}.url", member.name), &member.url)?;
            if let Some(site) = &member.site
                && self.region(site).is_none()
            {
                return Err(format!(
                    "controller '{}' has site '{site}', which [[regions]] does not list; leave site out for a tie-breaker",
                    member.name
                ));
            }
        }
        if self.table.is_empty() || self.table.len() > 255 {
            return Err(format!("table '{}' must be 1 to 255 characters", self.table));
        }
        Ok(())
    }

    /// The member of `[[controllers]]` called `name`.
    pub fn controller(&self, name: &str) -> Option<&ControllerMember> {
        self.controllers.iter().find(|m| m.name == name)
    }

    pub fn region(&self, name: &str) -> Option<&RegionTargets> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The region whose shop addresses include `address`.
    pub fn region_of_address(&self, address: Ipv4Addr) -> Option<&RegionTargets> {
        self.regions.iter().find(|r| r.shop_addresses.contains(&address))
    }

    /// Roles from the active region: it is the primary, the next listed region the secondary.
    pub fn roles(&self, active: &str) -> Result<Roles, String> {
        let primary = self.region(active).ok_or_else(|| {
            format!(
                "the active region '{active}' is not among the deployment's regions ({})",
                self.regions
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let secondary = self
            .regions
            .iter()
            .find(|r| r.name != primary.name)
            .expect("validate() requires two distinct regions");
        Ok(Roles {
            primary: primary.name.clone(),
            secondary: secondary.name.clone(),
        })
    }

    /// The fault-proxy proxy names a link maps to (several for "every vantage").
    pub fn link_names(&self, roles: &Roles, link: &Link) -> Vec<String> {
        link_keys(
            roles,
            link,
            self.processes.vantages.len().max(self.max_vantage_in_links()),
        )
        .into_iter()
        .filter_map(|key| self.links.get(&key))
        .flat_map(|names| names.names().iter().cloned())
        .collect()
    }

    fn max_vantage_in_links(&self) -> usize {
        self.links
            .keys()
            .filter_map(|key| key.strip_prefix("health:"))
            .filter_map(|rest| rest.split(':').next()?.parse::<usize>().ok())
            .map(|v| v + 1)
            .max()
            .unwrap_or(0)
    }
}

fn check_url(field: &str, url: &str) -> Result<(), String> {
    if (url.starts_with("http://") || url.starts_with("https://")) && url.parse::<hyper::Uri>().is_ok() {
        Ok(())
    } else {
        Err(format!(
            "{field} = '{url}' is not a URL; write it like http://127.0.0.1:8000"
        ))
    }
}

/// The keys of the `[links]` table a link stands for.
pub fn link_keys(roles: &Roles, link: &Link, vantages: usize) -> Vec<String> {
    let r = |role: &RegionRole| roles.region(*role).to_string();
    match link {
        Link::Replication { from, to } => vec![format!("replication:{}:{}", r(from), r(to))],
        Link::Health {
            vantage: Some(v),
            region,
        } => vec![format!("health:{v}:{}", r(region))],
        Link::Health { vantage: None, region } => (0..vantages).map(|v| format!("health:{v}:{}", r(region))).collect(),
        Link::Controller { region } => vec![format!("controller:{}", r(region))],
        Link::Frontend { region } => vec![format!("frontend:{}", r(region))],
        Link::AppStore { region } => vec![format!("app-store:{}", r(region))],
        Link::Database { region } => vec![format!("database:{}", r(region))],
        // The leader's links are in [[controllers]], found at run time.
        Link::LeaderIsolation | Link::LeaderDns => Vec::new(),
    }
}

fn parse_link_key(key: &str) -> Result<(), String> {
    let parts: Vec<&str> = key.split(':').collect();
    let ok = match parts.as_slice() {
        ["replication", from, to] => !from.is_empty() && !to.is_empty(),
        ["health", vantage, region] => vantage.parse::<u32>().is_ok() && !region.is_empty(),
        ["controller" | "frontend" | "app-store" | "database", region] => !region.is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "link key '{key}' is not one of replication:FROM:TO, health:VANTAGE:REGION, controller:REGION, frontend:REGION, app-store:REGION, database:REGION"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_for_a_deployment_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/drill-targets.toml");
        let deployment = Deployment::load(&path).expect("docs/examples/drill-targets.toml loads");
        assert_eq!(deployment.regions.len(), 2);
        assert!(deployment.region("eu-west-1").is_some());
        assert!(deployment.process_control.is_some());
    }

    const EXAMPLE: &str = r#"
shop_name = "shop.lab.test."
shop_port = 8080
dns_server = "127.0.0.1:5353"
controller_url = "http://127.0.0.1:9000"

[[regions]]
name = "r1"
store_url = "http://127.0.0.1:8001"
shop_addresses = ["127.0.0.11"]

[[regions]]
name = "r2"
store_url = "http://127.0.0.1:8002"
shop_addresses = ["127.0.0.12"]

[links]
"health:0:r1" = "v0-r1"
"health:1:r1" = "v1-r1"
"replication:r1:r2" = "repl-12"
"frontend:r1" = ["lb-r1-1", "lb-r1-2"]
"#;

    #[test]
    fn parses_and_resolves_roles_and_links() {
        let deployment = Deployment::parse(EXAMPLE, false).expect("valid");
        assert_eq!(deployment.table, TABLE_DEFAULT);
        let roles = deployment.roles("r2").expect("known region");
        assert_eq!((roles.primary.as_str(), roles.secondary.as_str()), ("r2", "r1"));
        let roles = deployment.roles("r1").expect("known region");
        let all = Link::Health {
            vantage: None,
            region: RegionRole::Primary,
        };
        assert_eq!(deployment.link_names(&roles, &all), vec!["v0-r1", "v1-r1"]);
        let repl = Link::Replication {
            from: RegionRole::Primary,
            to: RegionRole::Secondary,
        };
        assert_eq!(deployment.link_names(&roles, &repl), vec!["repl-12"]);
        let frontend = |region| Link::Frontend { region };
        assert_eq!(
            deployment.link_names(&roles, &frontend(RegionRole::Primary)),
            vec!["lb-r1-1", "lb-r1-2"]
        );
        assert!(
            deployment
                .link_names(&roles, &frontend(RegionRole::Secondary))
                .is_empty()
        );
        assert_eq!(
            deployment
                .region_of_address("127.0.0.12".parse().expect("ip"))
                .map(|r| r.name.as_str()),
            Some("r2")
        );
        assert!(deployment.roles("r9").expect_err("unknown").contains("r1, r2"));
    }

    #[test]
    fn the_fault_proxy_token_is_read_from_a_file_next_to_the_deployment() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("targets.toml");
        std::fs::write(&path, format!("fault_proxy_token_file = \"fault.token\"\n{EXAMPLE}")).expect("write");
        let error = Deployment::load(&path).expect_err("the token file is missing");
        assert!(
            error.to_string().contains("fault.token") && error.to_string().contains("--token-file"),
            "{error}"
        );
        std::fs::write(dir.path().join("fault.token"), "\n").expect("write");
        let error = Deployment::load(&path).expect_err("the token file is empty");
        assert!(error.to_string().contains("empty"), "{error}");
        std::fs::write(dir.path().join("fault.token"), "s3cret\n").expect("write");
        let deployment = Deployment::load(&path).expect("loads");
        assert_eq!(deployment.fault_proxy_token.as_deref(), Some("s3cret"));
        assert_eq!(deployment.fault_proxy_token_file, Some(dir.path().join("fault.token")));
    }

    #[test]
    fn bad_files_say_what_and_where() {
        let error = Deployment::parse("shop_name = \"x\"\nshop_port = \"eighty\"\n", false).expect_err("bad");
        assert!(error.to_string().contains("line 2"), "{error}");
        let one_region = EXAMPLE.replace("name = \"r2\"", "name = \"r1\"");
        let error = Deployment::parse(&one_region, false).expect_err("duplicate");
        assert!(error.to_string().contains("'r1' is listed twice"), "{error}");
        let bad_link = format!("{EXAMPLE}\"sideways:r1\" = \"x\"\n");
        let error = Deployment::parse(&bad_link, false).expect_err("bad link");
        assert!(error.to_string().contains("'sideways:r1'"), "{error}");
        let bad_url = EXAMPLE.replace("http://127.0.0.1:8002", "127.0.0.1:8002");
        let error = Deployment::parse(&bad_url, false).expect_err("bad url");
        assert!(error.to_string().contains("regions.r2.store_url"), "{error}");
    }
}

#[cfg(test)]
mod controllers_tests {
    use super::*;

    const MEMBERS: &str = r#"
shop_name = "shop.lab.test."
shop_port = 8080
dns_server = "127.0.0.1:5353"

[[regions]]
name = "r1"
store_url = "http://127.0.0.1:8001"

[[regions]]
name = "r2"
store_url = "http://127.0.0.1:8002"

[[controllers]]
name = "r1"
url = "http://127.0.0.1:9001"
site = "r1"
process = "controller-r1"
etcd_process = "etcd-r1"
audit_log = "/lab/data/controller-r1-audit.jsonl"
isolation_links = ["etcd-r1-to-r1", "controller-r1"]
dns_links = ["dns-admin-r1"]

[[controllers]]
name = "tie-breaker"
url = "http://127.0.0.1:9002"
"#;

    #[test]
    fn controllers_parse_and_bad_ones_say_what_to_fix() {
        let deployment = Deployment::parse(MEMBERS, false).expect("valid");
        let member = deployment.controller("r1").expect("listed");
        assert_eq!(member.isolation_links, vec!["etcd-r1-to-r1", "controller-r1"]);
        assert_eq!(member.site.as_deref(), Some("r1"));
        assert_eq!(deployment.controller("tie-breaker").and_then(|m| m.site.clone()), None);
        let twice = format!("{MEMBERS}\n[[controllers]]\nname = \"r1\"\nurl = \"http://127.0.0.1:9003\"\n");
        let error = Deployment::parse(&twice, false).expect_err("twice");
        assert!(error.to_string().contains("'r1' is listed twice"), "{error}");
        let elsewhere = MEMBERS.replace("site = \"r1\"", "site = \"r9\"");
        let error = Deployment::parse(&elsewhere, false).expect_err("unknown site");
        assert!(error.to_string().contains("site 'r9'"), "{error}");
        let bad_url = MEMBERS.replace("http://127.0.0.1:9002", "127.0.0.1:9002");
        let error = Deployment::parse(&bad_url, false).expect_err("bad url");
        assert!(error.to_string().contains("controllers.tie-breaker.url"), "{error}");
    }
}
