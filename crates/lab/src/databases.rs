//! `switchyard lab --databases`: per region a MariaDB and a Redis from Debian, as a Magento
//! shop runs them next to its application servers. The active region's are the primaries, the
//! others replicate from them: MariaDB with GTIDs (semi-synchronously with `--semi-sync`),
//! Redis with `REPLICAOF`. Every server is reached through a fault-proxy link of its own
//! (`mariadb-REGION`, `redis-REGION`): the controller's steps and checks and the replicas all
//! use that address, so a drill that cuts or delays a region's links cuts or delays its
//! database too. The region's own shops reach their databases directly (same region).
//!
//! Every MariaDB starts read-only; the controller's `mysql_promote` step makes the active
//! region's writable at the first placement and points the others at it (the rule in
//! production too: a server that restarts never comes back writable on its own). Redis
//! replicas start with `--replicaof` the first region's server; the `redis_promote` step
//! moves them. Without the controller the first region's MariaDB starts writable and the
//! others replicate from it through their init file.
//!
//! The lab's database accounts have fixed passwords ([`MARIADB_PASSWORD`] and friends): the
//! servers listen on loopback only and hold a demo shop's orders, like moto's lab keys.
//! Pure, like the plan: the programs are looked up by the binary ([`DbPrograms::find`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::configs::{
    Check, CheckKind, DatabaseAccounts, DatabaseTargets, MysqlPromote, PerRegion, RedisPromote, SecretFile, Step,
};
use crate::plan::{LabFile, REGION_PORT_BLOCK};
use crate::supervisor::ComponentSpec;

/// Where in each region's port block the databases and their links sit.
pub const MARIADB_PORT_OFFSET: u16 = 60;
pub const REDIS_PORT_OFFSET: u16 = 61;
pub const MARIADB_LINK_PORT_OFFSET: u16 = 62;
pub const REDIS_LINK_PORT_OFFSET: u16 = 63;
/// The region's guard's `/health` and `/metrics` (`switchyard guard --listen`).
pub const GUARD_STATUS_PORT_OFFSET: u16 = 64;

/// Where region `i`'s guard serves `/health` and `/metrics`.
pub fn guard_status_address(base_port: u16, i: usize) -> String {
    local(port(base_port, i, GUARD_STATUS_PORT_OFFSET))
}
/// The controller's account (promotion, fencing, checks).
pub const MARIADB_ADMIN_USER: &str = "switchyard";
pub const MARIADB_PASSWORD: &str = "switchyard-lab";
/// The replicas' account.
pub const MARIADB_REPL_USER: &str = "repl";
pub const MARIADB_REPL_PASSWORD: &str = "repl-lab";
/// The shops' account: rows of `shop.*` only.
pub const MARIADB_SHOP_USER: &str = "shop";
pub const MARIADB_SHOP_PASSWORD: &str = "shop-lab";
/// The shops' database and the orders table, shaped like Magento's `sales_order` (an
/// `entity_id`, shown to customers as a 9-digit `increment_id`, totals, the quote it came
/// from).
pub const SHOP_DATABASE: &str = "shop";
pub const ORDERS_TABLE: &str = "sales_order";
/// Redis ACL users: the controller's (every command) and the shops' (sessions and keys).
pub const REDIS_ADMIN_USER: &str = "switchyard";
pub const REDIS_PASSWORD: &str = "switchyard-lab";
pub const REDIS_SHOP_USER: &str = "shop";
pub const REDIS_SHOP_PASSWORD: &str = "shop-lab";
/// The lab's `promote_lag_max_ms` for both steps: a standby that has not applied everything
/// known to exist within this is refused (the `db-lag` drill shows it).
pub const LAB_PROMOTE_LAG_MAX_MS: u64 = 1_000;
/// The steps' `timeout_ms`: the lag bound, the steps' own overhead bound, and some slack.
pub const LAB_DB_STEP_TIMEOUT_MS: u64 = LAB_PROMOTE_LAG_MAX_MS + 12_000;
/// With `--semi-sync`: how long a MariaDB primary waits for a replica's acknowledgement before
/// it falls back to asynchronous replication (`rpl_semi_sync_master_timeout`). Short, so a
/// primary whose replica region died stalls its commits once and then carries on.
pub const LAB_SEMI_SYNC_TIMEOUT_MS: u64 = 2_000;
/// InnoDB's buffer pool per lab server: small, the lab runs many.
pub const MARIADB_BUFFER_POOL_BYTES: u64 = 16 * 1024 * 1024;

/// The programs `--databases` runs, where installed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbPrograms {
    pub mariadbd: Option<PathBuf>,
    pub install_db: Option<PathBuf>,
    pub redis_server: Option<PathBuf>,
    /// The lab runs as root: MariaDB refuses that unless told `--user=root`.
    pub root: bool,
}

impl DbPrograms {
    pub fn find() -> DbPrograms {
        use crate::providers::find_program;
        DbPrograms {
            mariadbd: find_program("mariadbd"),
            install_db: find_program("mariadb-install-db"),
            redis_server: find_program("redis-server"),
            root: rustix::process::geteuid().is_root(),
        }
    }
}

/// `--databases` (and `--semi-sync`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatabaseOptions {
    pub programs: DbPrograms,
    pub semi_sync: bool,
}

/// Region `i`'s port `offset` (the plan's region blocks).
fn port(base: u16, region: usize, offset: u16) -> u16 {
    base + REGION_PORT_BLOCK * (region as u16 + 1) + offset
}

fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Where a region's databases are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionDatabases {
    pub region: String,
    /// The servers themselves (the region's shops connect here).
    pub mariadb: Option<String>,
    pub redis: Option<String>,
    /// Their fault-proxy links (the controller, the checks and the replicas connect here).
    pub mariadb_link: Option<String>,
    pub redis_link: Option<String>,
}

/// What `--databases` adds to a plan.
#[derive(Default)]
pub(crate) struct DbAdditions {
    pub files: Vec<LabFile>,
    pub components: Vec<ComponentSpec>,
    pub bound: Vec<(String, String)>,
    /// Fault-proxy links (name, listen, upstream).
    pub links: Vec<(String, String, String)>,
    /// `[[runbook]]` steps, before the DNS steps (the database moves before the traffic).
    pub runbook: Vec<Step>,
    /// `[[checks]]` of the servers.
    pub checks: Vec<Check>,
    /// `[[databases]]` of `drill-targets.toml`.
    pub drill_targets: Vec<DatabaseTargets>,
    /// `[database_accounts]` of `drill-targets.toml`.
    pub accounts: Option<DatabaseAccounts>,
    /// Per region, the database processes a region outage kills.
    pub processes: Vec<Vec<String>>,
    /// Per region, the arguments of its shops.
    pub shop_args: Vec<Vec<String>>,
    pub try_lines: Vec<String>,
    pub notes: Vec<String>,
    pub regions: Vec<RegionDatabases>,
}

/// Longest Unix socket path (`sun_path` holds 108 bytes with its terminating NUL).
pub const SOCKET_PATH_BYTES_MAX: usize = 107;

/// MariaDB's Unix socket (the lab speaks TCP; mariadbd makes one anyway): in the lab's `run`
/// folder, or under /tmp, named by its port, when that path would be too long for a socket.
fn socket_path(run: &Path, name: &str, port: u16) -> PathBuf {
    let path = run.join(format!("{name}.sock"));
    if path.as_os_str().len() <= SOCKET_PATH_BYTES_MAX {
        path
    } else {
        PathBuf::from(format!("/tmp/switchyard-lab-mariadb-{port}.sock"))
    }
}

/// The password files the runbook and the shops read, in the config folder.
pub fn password_file(dir: &Path, user: &str, kind: &str) -> PathBuf {
    dir.join("config").join(format!("{kind}-{user}.password"))
}

fn missing(what: &str, program: &str, package: &str) -> String {
    format!(
        "--databases: {what} not started: {program} is not installed; install it with `apt-get install {package}` (or ./scripts/install-test-deps.sh) and start the lab again"
    )
}

/// The init file every MariaDB runs at each start, outside the binlog (each server makes the
/// same accounts and tables itself, so none of this is a transaction another could lack).
fn mariadb_init(replicate_from: Option<&str>) -> String {
    let mut text = format!(
        "-- Written by `switchyard lab --databases`: run by mariadbd at every start, outside the binlog.\nSET sql_log_bin = 0;\nDROP USER IF EXISTS ''@'localhost';\nCREATE USER IF NOT EXISTS '{MARIADB_ADMIN_USER}'@'%' IDENTIFIED BY '{MARIADB_PASSWORD}';\nGRANT ALL PRIVILEGES ON *.* TO '{MARIADB_ADMIN_USER}'@'%' WITH GRANT OPTION;\nCREATE USER IF NOT EXISTS '{MARIADB_REPL_USER}'@'%' IDENTIFIED BY '{MARIADB_REPL_PASSWORD}';\nGRANT REPLICATION SLAVE ON *.* TO '{MARIADB_REPL_USER}'@'%';\nCREATE USER IF NOT EXISTS '{MARIADB_SHOP_USER}'@'%' IDENTIFIED BY '{MARIADB_SHOP_PASSWORD}';\nGRANT SELECT, INSERT, UPDATE ON {SHOP_DATABASE}.* TO '{MARIADB_SHOP_USER}'@'%';\nCREATE DATABASE IF NOT EXISTS {SHOP_DATABASE};\nCREATE TABLE IF NOT EXISTS {SHOP_DATABASE}.{ORDERS_TABLE} (\n  entity_id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\n  quote_ref VARCHAR(64) NOT NULL UNIQUE,\n  store_region VARCHAR(32) NOT NULL,\n  customer_session VARCHAR(64) NULL,\n  items TEXT NOT NULL,\n  grand_total DECIMAL(12,2) NOT NULL,\n  created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)\n) ENGINE=InnoDB;\nSET sql_log_bin = 1;\n"
    );
    if let Some(source) = replicate_from {
        let (host, port) = source.rsplit_once(':').unwrap_or((source, "3306"));
        let _ = write!(
            text,
            "-- No controller: this server replicates from the first region's.\nCHANGE MASTER TO MASTER_HOST = '{host}', MASTER_PORT = {port}, MASTER_USER = '{MARIADB_REPL_USER}', MASTER_PASSWORD = '{MARIADB_REPL_PASSWORD}', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1;\nSTART SLAVE;\n"
        );
    }
    text
}

/// One database server of a region, as the rest of the lab sees it.
struct Server {
    /// `mariadb` or `redis` (also the kind of its password files).
    kind: &'static str,
    /// Its component name, `KIND-REGION`.
    name: String,
    address: String,
    /// Its fault-proxy link (the controller, the checks and the replicas connect here).
    link: String,
    /// The shops' flag for it (`--orders-mysql`, `--sessions-redis`) and their account.
    shop_flag: &'static str,
    shop_user: &'static str,
}

impl Server {
    /// Its port in the plan's port check, its link, the shops' `FLAG`, `FLAG-user` and
    /// `FLAG-password-file` arguments, and its process among those a region outage kills.
    fn wire(
        &self,
        dir: &Path,
        region: &str,
        out: &mut DbAdditions,
        shop: &mut Vec<String>,
        processes: &mut Vec<String>,
    ) {
        out.bound
            .push((format!("{} {region}", self.kind), self.address.clone()));
        out.links
            .push((self.name.clone(), self.link.clone(), self.address.clone()));
        shop.extend([
            self.shop_flag.to_string(),
            self.address.clone(),
            format!("{}-user", self.shop_flag),
            self.shop_user.to_string(),
            format!("{}-password-file", self.shop_flag),
            password_file(dir, self.shop_user, self.kind).display().to_string(),
        ]);
        processes.push(self.name.clone());
    }
}

/// A database's promote step: one attempt (`retries = 0`) within the lab's step timeout.
fn promote_step(name: &str, kind: &str) -> Step {
    Step {
        timeout_ms: Some(LAB_DB_STEP_TIMEOUT_MS),
        retries: Some(0),
        ..Step::new(name, kind)
    }
}

/// One check per region, `REGION-SUFFIX`, of the kind `kind(region index)` gives.
fn region_checks(regions: &[&str], suffix: &str, kind: impl Fn(usize) -> CheckKind) -> Vec<Check> {
    regions
        .iter()
        .enumerate()
        .map(|(i, region)| Check {
            name: format!("{region}-{suffix}"),
            region: region.to_string(),
            kind: kind(i),
        })
        .collect()
}

/// The lab's databases: per region a MariaDB (if installed) and a Redis (if installed).
pub(crate) fn additions(
    dir: &Path,
    base_port: u16,
    regions: &[&str],
    controller: bool,
    options: &DatabaseOptions,
) -> DbAdditions {
    let mut out = DbAdditions::default();
    let programs = &options.programs;
    let mariadb = match (&programs.mariadbd, &programs.install_db) {
        (Some(server), Some(install)) => Some((server.clone(), install.clone())),
        _ => {
            out.notes
                .push(missing("MariaDB (mysql_promote)", "mariadbd", "mariadb-server"));
            None
        }
    };
    if programs.redis_server.is_none() {
        out.notes
            .push(missing("Redis (redis_promote)", "redis-server", "redis-server"));
    }
    let config = dir.join("config");
    let run = dir.join("run");
    let mariadb_link = |i: usize| local(port(base_port, i, MARIADB_LINK_PORT_OFFSET));
    let redis_link = |i: usize| local(port(base_port, i, REDIS_LINK_PORT_OFFSET));
    for (i, region) in regions.iter().enumerate() {
        let mut processes = Vec::new();
        let mut shop = Vec::new();
        let mut record = RegionDatabases {
            region: region.to_string(),
            mariadb: None,
            redis: None,
            mariadb_link: None,
            redis_link: None,
        };
        if let Some((server, install)) = &mariadb {
            let name = format!("mariadb-{region}");
            let address = local(port(base_port, i, MARIADB_PORT_OFFSET));
            let data = dir.join("data").join(&name);
            let scratch = dir.join("data").join(format!("{name}-tmp"));
            let init = config.join(format!("{name}-init.sql"));
            let replicate_from = (!controller && i > 0).then(|| mariadb_link(0));
            out.files.push(LabFile {
                path: init.clone(),
                contents: mariadb_init(replicate_from.as_deref()),
            });
            // A file in the scratch folder, so the folder exists before the server starts.
            out.files.push(LabFile {
                path: scratch.join("README"),
                contents: "MariaDB's temporary files (`switchyard lab --databases`).\n".into(),
            });
            let mut args = vec![
                "--no-defaults".to_string(),
                format!("--datadir={}", data.display()),
                format!("--port={}", port(base_port, i, MARIADB_PORT_OFFSET)),
                "--bind-address=127.0.0.1".to_string(),
                format!(
                    "--socket={}",
                    socket_path(&run, &name, port(base_port, i, MARIADB_PORT_OFFSET)).display()
                ),
                format!("--pid-file={}", run.join(format!("{name}.pid")).display()),
                format!("--tmpdir={}", scratch.display()),
                format!("--init-file={}", init.display()),
                "--skip-name-resolve".to_string(),
                format!("--innodb-buffer-pool-size={MARIADB_BUFFER_POOL_BYTES}"),
                "--performance-schema=0".to_string(),
                format!("--server-id={}", i + 1),
                format!("--log-bin={name}-bin"),
                format!("--relay-log={name}-relay"),
                "--log-slave-updates".to_string(),
                "--gtid-strict-mode=1".to_string(),
                // Every server starts read-only: the controller makes the primary writable.
                format!("--read-only={}", u8::from(controller || i > 0)),
            ];
            if options.semi_sync {
                args.extend([
                    "--rpl-semi-sync-master-enabled=1".to_string(),
                    "--rpl-semi-sync-slave-enabled=1".to_string(),
                    format!("--rpl-semi-sync-master-timeout={LAB_SEMI_SYNC_TIMEOUT_MS}"),
                ]);
            }
            let mut install_args = vec![
                "--no-defaults".to_string(),
                format!("--datadir={}", data.display()),
                "--auth-root-authentication-method=normal".to_string(),
                "--skip-test-db".to_string(),
            ];
            if programs.root {
                args.push("--user=root".to_string());
                install_args.push("--user=root".to_string());
            }
            let mut spec = crate::providers::external(&name, "mariadb", server, &args, &address);
            spec.args.push(format!("--init-program={}", install.display()));
            for arg in &install_args {
                spec.args.push(format!("--init-arg={arg}"));
            }
            spec.args
                .push(format!("--init-creates={}", data.join("mysql").display()));
            spec.env.push(("TMPDIR".to_string(), scratch.display().to_string()));
            out.components.push(spec);
            let server = Server {
                kind: "mariadb",
                name,
                address,
                link: mariadb_link(i),
                shop_flag: "--orders-mysql",
                shop_user: MARIADB_SHOP_USER,
            };
            server.wire(dir, region, &mut out, &mut shop, &mut processes);
            record.mariadb = Some(server.address);
            record.mariadb_link = Some(server.link);
        }
        if let Some(server) = &programs.redis_server {
            let name = format!("redis-{region}");
            let address = local(port(base_port, i, REDIS_PORT_OFFSET));
            let data = dir.join("data").join(&name);
            out.files.push(LabFile {
                path: data.join("README"),
                contents: "Redis's folder (`switchyard lab --databases`): its append-only file.\n".into(),
            });
            let mut args: Vec<String> = [
                "--port",
                &port(base_port, i, REDIS_PORT_OFFSET).to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                // Persistence, as Redis's replication docs require of a master that restarts on
                // its own: without it a killed master comes back empty and its replicas
                // resync to empty.
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                &data.display().to_string(),
                "--repl-diskless-sync",
                "yes",
                "--repl-diskless-sync-delay",
                "0",
                "--user",
                "default",
                "off",
                "--user",
                REDIS_ADMIN_USER,
                "on",
                &format!(">{REDIS_PASSWORD}"),
                "~*",
                "&*",
                "+@all",
                "--user",
                REDIS_SHOP_USER,
                "on",
                &format!(">{REDIS_SHOP_PASSWORD}"),
                "~*",
                "+@read",
                "+@write",
                "+@keyspace",
                "+@connection",
                "+role",
                "--masteruser",
                REDIS_ADMIN_USER,
                "--masterauth",
                REDIS_PASSWORD,
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            if i > 0 {
                let first = redis_link(0);
                let (host, first_port) = first.rsplit_once(':').unwrap_or((&first, ""));
                args.extend(["--replicaof".to_string(), host.to_string(), first_port.to_string()]);
            }
            out.components
                .push(crate::providers::external(&name, "redis", server, &args, &address));
            let server = Server {
                kind: "redis",
                name,
                address,
                link: redis_link(i),
                shop_flag: "--sessions-redis",
                shop_user: REDIS_SHOP_USER,
            };
            server.wire(dir, region, &mut out, &mut shop, &mut processes);
            record.redis = Some(server.address);
            record.redis_link = Some(server.link);
        }
        out.processes.push(processes);
        out.shop_args.push(shop);
        out.regions.push(record);
    }
    for (user, password, kind) in [
        (MARIADB_ADMIN_USER, MARIADB_PASSWORD, "mariadb"),
        (MARIADB_REPL_USER, MARIADB_REPL_PASSWORD, "mariadb"),
        (MARIADB_SHOP_USER, MARIADB_SHOP_PASSWORD, "mariadb"),
        (REDIS_ADMIN_USER, REDIS_PASSWORD, "redis"),
        (REDIS_SHOP_USER, REDIS_SHOP_PASSWORD, "redis"),
    ] {
        out.files.push(LabFile {
            path: password_file(dir, user, kind),
            contents: format!("{password}\n"),
        });
    }
    let servers = |link: &dyn Fn(usize) -> String| -> PerRegion {
        regions
            .iter()
            .enumerate()
            .map(|(i, region)| (region.to_string(), vec![link(i)]))
            .collect()
    };
    if mariadb.is_some() {
        // The shop's orders database moves first (MariaDB, GTID), then its sessions (Redis),
        // then the traffic.
        out.runbook.push(Step {
            mysql_promote: Some(MysqlPromote {
                servers: servers(&mariadb_link),
                user: MARIADB_ADMIN_USER.to_string(),
                password: SecretFile {
                    file: password_file(dir, MARIADB_ADMIN_USER, "mariadb"),
                },
                replication_user: MARIADB_REPL_USER.to_string(),
                replication_password: SecretFile {
                    file: password_file(dir, MARIADB_REPL_USER, "mariadb"),
                },
                promote_lag_max_ms: LAB_PROMOTE_LAG_MAX_MS,
            }),
            ..promote_step("orders-db", "mysql_promote")
        });
        out.checks
            .extend(region_checks(regions, "orders-db", |i| CheckKind::Sql {
                driver: "mysql".to_string(),
                address: mariadb_link(i),
                user: MARIADB_ADMIN_USER.to_string(),
                password: MARIADB_PASSWORD.to_string(),
                replica_lag: true,
            }));
        out.try_lines.push(format!(
            "mariadb -h127.0.0.1 -P{} -u{MARIADB_SHOP_USER} -p{MARIADB_SHOP_PASSWORD} {SHOP_DATABASE} -e 'SELECT LPAD(entity_id, 9, 0) AS increment_id, quote_ref, grand_total FROM {ORDERS_TABLE}'   # the shop's orders",
            port(base_port, 0, MARIADB_PORT_OFFSET)
        ));
    }
    if programs.redis_server.is_some() {
        out.runbook.push(Step {
            redis_promote: Some(RedisPromote {
                servers: servers(&redis_link),
                username: REDIS_ADMIN_USER.to_string(),
                password: SecretFile {
                    file: password_file(dir, REDIS_ADMIN_USER, "redis"),
                },
                promote_lag_max_ms: LAB_PROMOTE_LAG_MAX_MS,
            }),
            ..promote_step("sessions", "redis_promote")
        });
        out.checks
            .extend(region_checks(regions, "sessions", |i| CheckKind::Redis {
                address: redis_link(i),
                username: REDIS_ADMIN_USER.to_string(),
                password: REDIS_PASSWORD.to_string(),
                replication: true,
            }));
        out.try_lines.push(format!(
            "redis-cli -p {} --user {REDIS_SHOP_USER} --pass {REDIS_SHOP_PASSWORD} --no-auth-warning --scan --pattern 'session:*'   # the shop's sessions",
            port(base_port, 0, REDIS_PORT_OFFSET)
        ));
    }
    for record in &out.regions {
        let mariadb = record.mariadb.as_ref().zip(record.mariadb_link.as_ref());
        let redis = record.redis.as_ref().zip(record.redis_link.as_ref());
        out.drill_targets.push(DatabaseTargets {
            region: record.region.clone(),
            mariadb: mariadb.map(|(server, _)| server.clone()),
            mariadb_link: mariadb.map(|(_, link)| link.clone()),
            mariadb_process: mariadb.map(|_| format!("mariadb-{}", record.region)),
            redis: redis.map(|(server, _)| server.clone()),
            redis_link: redis.map(|(_, link)| link.clone()),
            redis_process: redis.map(|_| format!("redis-{}", record.region)),
        });
    }
    if !out.regions.is_empty() && (mariadb.is_some() || programs.redis_server.is_some()) {
        out.accounts = Some(DatabaseAccounts {
            mariadb_user: MARIADB_ADMIN_USER.to_string(),
            mariadb_password: MARIADB_PASSWORD.to_string(),
            redis_user: REDIS_ADMIN_USER.to_string(),
            redis_password: REDIS_PASSWORD.to_string(),
            promote_lag_max_ms: LAB_PROMOTE_LAG_MAX_MS,
            semi_sync: options.semi_sync,
        });
    }
    out
}

/// Region `i`'s guard reaches its own databases directly, as the region's shops do (not
/// through the links the controller and the replicas use): a cut link must not cut the guard
/// off from the primary it has to fence. Rewrites `runbook`'s database steps for that region.
pub(crate) fn guard_servers(runbook: &mut [Step], base_port: u16, i: usize, region: &str) {
    for step in runbook {
        if let Some(mysql) = &mut step.mysql_promote {
            mysql
                .servers
                .insert(region.to_string(), vec![local(port(base_port, i, MARIADB_PORT_OFFSET))]);
        }
        if let Some(redis) = &mut step.redis_promote {
            redis
                .servers
                .insert(region.to_string(), vec![local(port(base_port, i, REDIS_PORT_OFFSET))]);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every database server installed where Debian puts them.
    pub(crate) fn programs() -> DbPrograms {
        DbPrograms {
            mariadbd: Some(PathBuf::from("/usr/sbin/mariadbd")),
            install_db: Some(PathBuf::from("/usr/bin/mariadb-install-db")),
            redis_server: Some(PathBuf::from("/usr/bin/redis-server")),
            root: false,
        }
    }

    /// The additions for a two-region lab in /tmp/lab at base port 17000.
    fn two_regions(controller: bool, options: &DatabaseOptions) -> DbAdditions {
        additions(
            Path::new("/tmp/lab"),
            17_000,
            &["us-east-1", "eu-west-1"],
            controller,
            options,
        )
    }

    #[test]
    fn each_region_gets_a_mariadb_and_a_redis_behind_links_of_their_own() {
        let options = DatabaseOptions {
            programs: programs(),
            semi_sync: true,
        };
        let out = two_regions(true, &options);
        assert!(out.notes.is_empty(), "{:?}", out.notes);
        let names: Vec<&str> = out.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "mariadb-us-east-1",
                "redis-us-east-1",
                "mariadb-eu-west-1",
                "redis-eu-west-1"
            ]
        );
        // Links: the controller and the replicas reach each server through the fault proxy.
        assert!(out.links.contains(&(
            "mariadb-us-east-1".into(),
            "127.0.0.1:17162".into(),
            "127.0.0.1:17160".into()
        )));
        assert!(out.links.contains(&(
            "redis-eu-west-1".into(),
            "127.0.0.1:17263".into(),
            "127.0.0.1:17261".into()
        )));
        // Every MariaDB starts read-only under a controller; semi-sync on each.
        for spec in out.components.iter().filter(|c| c.kind == "mariadb") {
            assert!(
                spec.args.contains(&"--arg=--read-only=1".to_string()),
                "{:?}",
                spec.args
            );
            assert!(
                spec.args
                    .contains(&"--arg=--rpl-semi-sync-master-enabled=1".to_string())
            );
            assert!(spec.args.iter().any(|a| a.starts_with("--init-program=")));
        }
        // The Redis replica follows the first region's link.
        let replica = out
            .components
            .iter()
            .find(|c| c.name == "redis-eu-west-1")
            .expect("replica");
        assert!(
            replica
                .args
                .windows(3)
                .any(|w| w == ["--arg=--replicaof", "--arg=127.0.0.1", "--arg=17163"])
        );
        let kinds: Vec<&str> = out.runbook.iter().map(|step| step.kind.as_str()).collect();
        assert_eq!(kinds, ["mysql_promote", "redis_promote"]);
        let servers = &out.runbook[0].mysql_promote.as_ref().expect("mysql_promote").servers;
        assert_eq!(servers["us-east-1"], ["127.0.0.1:17162"]);
        assert_eq!(servers["eu-west-1"], ["127.0.0.1:17262"]);
        assert!(out.checks.iter().any(|check| check.name == "eu-west-1-orders-db"));
        assert_eq!(
            out.drill_targets[0].mariadb_process.as_deref(),
            Some("mariadb-us-east-1")
        );
        assert_eq!(out.processes[1], ["mariadb-eu-west-1", "redis-eu-west-1"]);
        assert!(out.shop_args[0].contains(&"127.0.0.1:17160".to_string()));
    }

    #[test]
    fn the_plan_runs_the_databases_before_the_shops_and_promotes_them_before_the_traffic() {
        let options = crate::plan::LabOptions {
            databases: Some(DatabaseOptions {
                programs: programs(),
                semi_sync: false,
            }),
            ..crate::plan::tests::options(2)
        };
        let plan = crate::plan::plan(&options).expect("plan");
        let names: Vec<&str> = plan.components.iter().map(|c| c.name.as_str()).collect();
        let position = |name: &str| names.iter().position(|n| *n == name).expect(name);
        assert!(
            position("mariadb-eu-west-1") < position("shop-us-east-1-1"),
            "{names:?}"
        );
        let controller = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("controller.toml"))
            .expect("controller.toml");
        let text = &controller.contents;
        let orders = text.find("name = \"orders-db\"").expect("mysql step");
        let sessions = text.find("name = \"sessions\"").expect("redis step");
        let dns = text.find("name = \"dns\"").expect("dns step");
        assert!(orders < sessions && sessions < dns, "{text}");
        assert!(text.contains("name = \"us-east-1-orders-db\""), "{text}");
        let faults = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("faults.toml"))
            .expect("faults.toml");
        assert!(
            faults.contents.contains("name = \"mariadb-us-east-1\""),
            "{}",
            faults.contents
        );
        let shop = plan
            .components
            .iter()
            .find(|c| c.name == "shop-eu-west-1-1")
            .expect("shop");
        assert!(
            shop.args.windows(2).any(|w| w == ["--orders-mysql", "127.0.0.1:17260"]),
            "{:?}",
            shop.args
        );
        // The region's guard is one of its processes (killed with it in drills), and asks the
        // controller through the region's own link.
        assert!(
            plan.drill_targets
                .contains("database_processes = [\"mariadb-us-east-1\", \"redis-us-east-1\", \"guard-us-east-1\"]"),
            "{}",
            plan.drill_targets
        );
        let guard = plan
            .components
            .iter()
            .find(|c| c.name == "guard-eu-west-1")
            .expect("a guard per region");
        assert!(
            guard.args.windows(2).any(|w| w[0] == "--region" && w[1] == "eu-west-1")
                && guard
                    .args
                    .windows(2)
                    .any(|w| w[0] == "--listen" && w[1] == guard_status_address(options.base_port, 1))
                && guard
                    .args
                    .windows(2)
                    .any(|w| w[0] == "--config" && w[1].ends_with("guard-eu-west-1.toml")),
            "{:?}",
            guard.args
        );
        // Its own region's servers directly (a cut link must not hide them), the others as the
        // controller names them.
        let own = plan
            .files
            .iter()
            .find(|f| f.path.ends_with("config/guard-eu-west-1.toml"))
            .expect("the guard's configuration");
        let direct = format!(
            "eu-west-1 = [\"127.0.0.1:{}\"]",
            port(options.base_port, 1, MARIADB_PORT_OFFSET)
        );
        let linked = format!(
            "us-east-1 = [\"127.0.0.1:{}\"]",
            port(options.base_port, 0, MARIADB_LINK_PORT_OFFSET)
        );
        assert!(
            own.contents.contains(&direct) && own.contents.contains(&linked),
            "{}",
            own.contents
        );
        assert!(plan.ports.iter().any(|(what, _)| what == "link mariadb-eu-west-1"));
        let mut netns = options.clone();
        netns.netns = true;
        assert_eq!(crate::plan::plan(&netns), Err(crate::plan::PlanError::DatabasesNetns));
    }

    #[test]
    fn a_socket_path_too_long_for_unix_sockets_moves_under_tmp() {
        let short = socket_path(Path::new("/tmp/lab/run"), "mariadb-us-east-1", 17_160);
        assert_eq!(short, PathBuf::from("/tmp/lab/run/mariadb-us-east-1.sock"));
        let deep = PathBuf::from(format!("/tmp/{}/run", "x".repeat(120)));
        let moved = socket_path(&deep, "mariadb-us-east-1", 17_160);
        assert_eq!(moved, PathBuf::from("/tmp/switchyard-lab-mariadb-17160.sock"));
    }

    #[test]
    fn missing_servers_are_left_out_with_the_command_that_installs_them() {
        let options = DatabaseOptions::default();
        let out = two_regions(true, &options);
        assert!(out.components.is_empty());
        assert!(out.runbook.is_empty());
        assert_eq!(out.notes.len(), 2);
        assert!(
            out.notes[0].contains("apt-get install mariadb-server"),
            "{}",
            out.notes[0]
        );
        assert!(
            out.notes[1].contains("apt-get install redis-server"),
            "{}",
            out.notes[1]
        );
    }

    #[test]
    fn without_a_controller_the_first_region_is_writable_and_the_others_replicate_from_it() {
        let options = DatabaseOptions {
            programs: programs(),
            semi_sync: false,
        };
        let out = two_regions(false, &options);
        let first = out
            .components
            .iter()
            .find(|c| c.name == "mariadb-us-east-1")
            .expect("first");
        assert!(first.args.contains(&"--arg=--read-only=0".to_string()));
        let init = out
            .files
            .iter()
            .find(|f| f.path.ends_with("mariadb-eu-west-1-init.sql"))
            .expect("init file");
        assert!(init.contents.contains("MASTER_PORT = 17162"), "{}", init.contents);
        assert!(out.runbook.is_empty() || out.runbook.iter().any(|step| step.kind == "mysql_promote"));
    }
}
