//! The configuration files the lab writes, as data: one `serde` struct per file, mirroring the
//! part of its component's configuration the lab sets, serialized with `toml` (so paths and
//! names are quoted and escaped as TOML says, whatever a lab directory is called). The lab
//! depends on no component crate; its tests parse every file it writes back with the
//! component's own parser.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

/// A file: `header` (comment lines, each starting with `#`) and then `value` as TOML.
pub(crate) fn to_toml<T: Serialize>(header: &str, value: &T) -> Result<String, toml::ser::Error> {
    let body = toml::to_string(value)?;
    Ok(format!("{header}{body}"))
}

// ---------------------------------------------------------------------------------------------
// `switchyard fault-proxy`: faults.toml

#[derive(Clone, Debug, Serialize)]
pub(crate) struct FaultProxyFile {
    pub fault_proxy: FaultProxySection,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct FaultProxySection {
    pub listen: String,
    pub proxies: Vec<Link>,
}

/// A named link: the fault proxy listens on `listen` and relays to `upstream`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Link {
    pub name: String,
    pub listen: String,
    pub upstream: String,
}

// ---------------------------------------------------------------------------------------------
// `switchyard proxy`: proxy-REGION.toml

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProxyFile {
    pub proxy: ProxySection,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProxySection {
    pub listen: String,
    pub admin_listen: String,
    pub balance: String,
    pub retries: u32,
    pub redispatch: bool,
    pub slowstart_ms: u64,
    pub check: ProxyCheck,
    pub servers: Vec<ProxyServer>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProxyCheck {
    #[serde(rename = "type")]
    pub kind: String,
    pub inter_ms: u64,
    pub fastinter_ms: u64,
    pub downinter_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub path: String,
    pub expect_status: Vec<u16>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProxyServer {
    pub name: String,
    pub address: String,
}

// ---------------------------------------------------------------------------------------------
// `switchyard dns`: dns.toml

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DnsFile {
    pub dns: DnsServerSection,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DnsServerSection {
    pub listen: String,
    pub admin_listen: String,
    pub reload_interval_ms: u64,
    pub zones: Vec<Zone>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Zone {
    pub origin: String,
    pub ttl: u32,
    pub ns: Vec<String>,
    pub soa: Soa,
    pub records: Vec<Record>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Soa {
    pub rname: String,
    pub serial: u32,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Record {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<RecordMember>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct RecordMember {
    pub role: String,
    pub values: Vec<String>,
    pub health: String,
}

// ---------------------------------------------------------------------------------------------
// `switchyard controller`: controller.toml (and, with `--controllers 3`, controller-SITE.toml)

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ControllerFile {
    pub controller: ControllerSection,
    pub policy: Policy,
    pub quorum: Quorum,
    pub regions: Vec<Region>,
    pub checks: Vec<Check>,
    /// Per agent, `"address in the checks" = "address from this agent"`.
    pub vantage_paths: BTreeMap<String, BTreeMap<String, String>>,
    pub tokens: Vec<Token>,
    pub dns: ControllerDns,
    pub runbook: Vec<Step>,
    /// `[guard]`, in a guard's copy only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardSection>,
}

/// `[guard]` of a guard's copy: with several members, how many (the failsafe: every member
/// answering stale is an etcd outage, not isolation).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct GuardSection {
    pub controller_members: usize,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ControllerSection {
    pub listen: String,
    pub vantage: String,
    pub audit_log: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaSection>,
}

/// `[controller.ha]`: one of several controllers elected through etcd.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct HaSection {
    pub etcd: Vec<String>,
    pub member: String,
    pub lease_ms: u64,
    pub advertise: String,
    pub token_file: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Policy {
    pub mode: String,
    pub min_hold_ms: u64,
    pub stability_window_ms: u64,
    pub failovers_per_hour_max: u32,
    pub failback_lag_check: bool,
    pub failback_lag_max_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Quorum {
    pub vantages: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Region {
    pub name: String,
    pub priority: u32,
    pub endpoints: Vec<String>,
}

/// A `[[checks]]` entry: the timings stay the defaults.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Check {
    pub name: String,
    pub region: String,
    pub kind: CheckKind,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum CheckKind {
    Http {
        url: String,
        expect_status: u16,
    },
    Dynamodb {
        endpoint: String,
        table: String,
        write: bool,
        lag_sources: Vec<String>,
    },
    Sql {
        driver: String,
        address: String,
        user: String,
        password: String,
        replica_lag: bool,
    },
    Redis {
        address: String,
        username: String,
        password: String,
        replication: bool,
    },
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Token {
    pub name: String,
    pub role: String,
    /// Relative to the config file's folder.
    pub token_file: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ControllerDns {
    pub admin_url: String,
    pub token_file: PathBuf,
    pub txt_name: String,
}

/// A secret read from a file: `{ file = "..." }`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct SecretFile {
    pub file: PathBuf,
}

/// A `[[runbook]]` step: the common fields and the table of its kind.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Step {
    pub name: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mysql_promote: Option<MysqlPromote>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_promote: Option<RedisPromote>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rfc2136: Option<Rfc2136>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<Haproxy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route53: Option<Route53>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm_parameter: Option<SsmParameter>,
}

impl Step {
    pub fn new(name: &str, kind: &str) -> Step {
        Step {
            name: name.to_string(),
            kind: kind.to_string(),
            ..Step::default()
        }
    }
}

/// Per region, its values (servers, addresses, backend/server names).
pub(crate) type PerRegion = BTreeMap<String, Vec<String>>;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct MysqlPromote {
    pub servers: PerRegion,
    pub user: String,
    pub password: SecretFile,
    pub replication_user: String,
    pub replication_password: SecretFile,
    pub promote_lag_max_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct RedisPromote {
    pub servers: PerRegion,
    pub username: String,
    pub password: SecretFile,
    pub promote_lag_max_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Rfc2136 {
    pub server: String,
    pub zone: String,
    pub name: String,
    pub ttl: u32,
    pub key: SecretFile,
    pub values: PerRegion,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Haproxy {
    pub socket: PathBuf,
    pub standby: String,
    pub regions: PerRegion,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Route53 {
    pub zone: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub ttl: u32,
    pub insync_timeout_ms: u64,
    pub endpoint_url: String,
    pub profile: String,
    pub values: PerRegion,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct SsmParameter {
    pub name: String,
    pub region: String,
    pub endpoint_url: String,
    pub profile: String,
}

// ---------------------------------------------------------------------------------------------
// `switchyard drill --lab DIR`: drill-targets.toml

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DrillTargets {
    pub shop_name: String,
    pub shop_port: u16,
    pub dns_server: String,
    pub fault_proxy_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_url: Option<String>,
    pub regions: Vec<RegionTargets>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<Processes>,
    pub links: BTreeMap<String, LinkNames>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<ControllerMember>,
    pub process_control: ProcessControl,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderWatch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseTargets>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_accounts: Option<DatabaseAccounts>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct RegionTargets {
    pub name: String,
    pub store_url: String,
    pub shop_addresses: Vec<String>,
    pub store_process: String,
    pub app_processes: Vec<String>,
    pub proxy_process: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub database_processes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Processes {
    pub controller: String,
    pub vantages: Vec<String>,
}

/// One link's name, or several (a vantage point's view of a region: its shop and store checks).
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum LinkNames {
    One(String),
    Many(Vec<String>),
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct ControllerMember {
    pub name: String,
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub process: String,
    pub etcd_process: String,
    pub audit_log: PathBuf,
    pub isolation_links: Vec<String>,
    pub dns_links: Vec<String>,
}

/// Commands a drill runs (`{program}` and `{name}` are filled in by the drill).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ProcessControl {
    pub kill: String,
    pub stop: String,
    pub cont: String,
    pub restart: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal_network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill_disk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_disk: Option<String>,
}

/// A `[[providers]]` entry: what the drill watches of a runbook step's infrastructure.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct ProviderWatch {
    pub name: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws_region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    pub regions: PerRegion,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DatabaseTargets {
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mariadb: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mariadb_link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mariadb_process: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_process: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct DatabaseAccounts {
    pub mariadb_user: String,
    pub mariadb_password: String,
    pub redis_user: String,
    pub redis_password: String,
    pub promote_lag_max_ms: u64,
    pub semi_sync: bool,
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::plan::{LabOptions, plan};

    /// A lab directory whose path TOML must quote and escape: a space, a double quote and a
    /// backslash.
    fn awkward_dir(root: &Path) -> PathBuf {
        root.join("my \"lab\" \\ dir")
    }

    fn options(dir: &Path, controllers: usize, tls: bool, moto: bool) -> LabOptions {
        LabOptions {
            dir: dir.to_path_buf(),
            disk_mib: Some(crate::disks::DISK_MIB_MIN),
            providers: Some(crate::providers::Programs {
                named: Some(PathBuf::from("/usr/sbin/named")),
                haproxy: Some(PathBuf::from("/usr/sbin/haproxy")),
                moto_server: moto.then(|| PathBuf::from("/venv/bin/moto_server")),
                moto_python: moto.then(|| PathBuf::from("/venv/bin/python3")),
            }),
            controllers,
            etcd: Some(PathBuf::from("/usr/bin/etcd")),
            tls,
            quiet: true,
            databases: Some(crate::databases::DatabaseOptions {
                programs: crate::databases::tests::programs(),
                semi_sync: true,
            }),
            ..crate::plan::tests::options(3)
        }
    }

    /// Writes the plan's files and the secrets `run` would make, as `run` does.
    fn write_out(plan: &crate::plan::Plan) {
        for file in &plan.files {
            std::fs::create_dir_all(file.path.parent().expect("folder")).expect("mkdir");
            std::fs::write(&file.path, &file.contents).expect("write");
        }
        for (n, secret) in plan.secrets.iter().enumerate() {
            std::fs::create_dir_all(secret.parent().expect("folder")).expect("mkdir");
            std::fs::write(secret, format!("lab-token-{n}-0123456789abcdef\n")).expect("write secret");
        }
        for (key, name) in &plan.tsig_keys {
            std::fs::write(
                key,
                format!(
                    "key \"{name}\" {{\n  algorithm hmac-sha256;\n  secret \"c3dpdGNoeWFyZC1sYWItdHNpZy1rZXk=\";\n}};\n"
                ),
            )
            .expect("write key");
        }
    }

    #[test]
    fn every_file_parses_back_through_its_components_parser_whatever_the_lab_directory_is_called() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = awkward_dir(root.path());
        let config = dir.join("config");
        for (controllers, tls, moto) in [(1, false, true), (1, true, false), (3, true, false)] {
            let plan = plan(&options(&dir, controllers, tls, moto)).expect("plan");
            write_out(&plan);
            let mut parsed = Vec::new();
            for file in plan
                .files
                .iter()
                .filter(|f| f.path.extension().is_some_and(|e| e == "toml"))
            {
                let name = file.path.file_name().and_then(|n| n.to_str()).expect("name");
                let shown = file.path.display().to_string();
                let text = &file.contents;
                if name == "faults.toml" {
                    let faults = faultproxy::config::from_toml(text, &shown).expect("faults.toml parses");
                    assert!(faults.proxies.iter().any(|p| p.name == "mariadb-us-east-1"));
                } else if name.starts_with("proxy-") {
                    let proxy = proxy::config::parse(text).expect("proxy config parses");
                    assert!(proxy.admin_listen.is_some());
                } else if name == "dns.toml" {
                    let dns = dns::config::parse(text, &shown).expect("dns.toml parses");
                    assert_eq!(dns.reload_interval_ms, 0);
                } else if name.starts_with("controller") || name.starts_with("guard-") {
                    let parsed_config = match controller::config::parse_in(&shown, text, &config) {
                        Ok(parsed_config) => parsed_config,
                        // This test builds the controller without the `aws` feature: its
                        // route53 and ssm_parameter steps parse, and are then refused.
                        Err(error)
                            if moto && error.problems.iter().all(|p| p.message.contains("without AWS support")) =>
                        {
                            parsed.push(name.to_string());
                            continue;
                        }
                        Err(error) => panic!("{name} parses: {error}\n{text}"),
                    };
                    // The paths come back exactly as the lab named them: a member of a group
                    // (controller-SITE.toml) has an audit log of its own.
                    let audit = match name.strip_prefix("controller-").and_then(|n| n.strip_suffix(".toml")) {
                        Some(site) => crate::ha::audit_path(&dir, site),
                        None => dir.join("data").join("controller-audit.jsonl"),
                    };
                    assert_eq!(parsed_config.file.controller.audit_log, audit);
                    let kinds: Vec<&str> = parsed_config.steps.iter().map(|s| s.kind_name()).collect();
                    assert!(
                        kinds.starts_with(&["mysql_promote", "redis_promote", "dns_health"]),
                        "{kinds:?}"
                    );
                    // The guards' copy is the configuration without a member's own section;
                    // with several members it says how many (the failsafe), and the guard
                    // lists them all.
                    assert_eq!(
                        parsed_config.file.controller.ha.is_some(),
                        controllers == 3 && !name.starts_with("guard-"),
                        "{name}"
                    );
                    if let Some(region) = name.strip_prefix("guard-").and_then(|n| n.strip_suffix(".toml")) {
                        let members = parsed_config
                            .file
                            .guard
                            .as_ref()
                            .and_then(|g| g.controller_members.as_ref())
                            .map(|m| *m.get_ref());
                        assert_eq!(members, (controllers == 3).then_some(3), "{name}");
                        let guard = plan
                            .components
                            .iter()
                            .find(|c| c.name == format!("guard-{region}"))
                            .expect("the guard");
                        let listed = guard
                            .args
                            .windows(2)
                            .find(|w| w[0] == "--controller")
                            .map(|w| w[1].split(',').count());
                        assert_eq!(listed, Some(controllers), "{:?}", guard.args);
                    }
                } else {
                    panic!("a TOML file the test does not know: {shown}");
                }
                parsed.push(name.to_string());
            }
            assert!(parsed.iter().any(|n| n.starts_with("controller")), "{parsed:?}");
            assert!(parsed.iter().any(|n| n == "guard-us-east-1.toml"), "{parsed:?}");
            let targets =
                drill::runtime::deployment::Deployment::parse(&plan.drill_targets, false).expect("drill targets parse");
            let control = targets.process_control.expect("process control");
            assert_eq!(
                control.kill,
                format!("{{program}} lab ctl --dir {} kill {{name}}", dir.display())
            );
            assert!(control.fill_disk.is_some());
            if moto {
                let route53 = targets.providers.iter().find(|p| p.name == "route53").expect("route53");
                assert_eq!(route53.credentials_file, Some(config.join("aws-credentials")));
            }
            let haproxy = targets.providers.iter().find(|p| p.name == "haproxy").expect("haproxy");
            assert_eq!(haproxy.socket, Some(dir.join("run").join("haproxy.sock")));
            assert_eq!(
                targets.regions[0].database_processes,
                ["mariadb-us-east-1", "redis-us-east-1", "guard-us-east-1"]
            );
            assert_eq!(targets.controllers.len(), if controllers == 3 { 3 } else { 0 });
            for member in &targets.controllers {
                let audit = member.audit_log.as_ref().expect("audit log");
                assert!(audit.starts_with(&dir), "{}", audit.display());
            }
        }
    }
}
