//! `haproxy`: sets HAProxy servers to `ready`, `drain` or `maint` through its runtime API (the
//! stats socket, a unix path or a TCP address, at `level admin`), per region: the servers of
//! the regions that serve after the decision become `ready`, the others `standby` (`maint` by
//! default). Used for cross-region backup pools and to fence a region at its load balancer.
//!
//! One run: `show servers state` (read), [`plan`] (pure: what each server should be, from the
//! settings and the order), `set server B/S state X` for each server that differs — the ones
//! becoming ready first, so a pool is never left with none —, then `show servers state` again
//! to verify. HAProxy's runtime API has no compare-and-set, so this step cannot fence a stale
//! controller by itself: the runbook's generation (the steps before it, like `rfc2136` or the
//! DNS push, fail first) does. Runtime API state is lost when HAProxy restarts unless its
//! configuration keeps it (`server-state-file`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use toml::Spanned;

use crate::{Checker, Failure, Order, Outcome};

/// Default wait for one runtime API command.
pub const TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Longest `timeout_ms` accepted.
pub const TIMEOUT_MS_MAX: u64 = 60_000;
/// Longest answer read from the runtime API (`show servers state` of a large configuration).
pub const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most entries (servers or backends) per region.
pub const ENTRIES_MAX: usize = 256;
/// Servers one run may change.
pub const CHANGES_MAX: usize = 4_096;

/// Admin-state bits of `srv_admin_state` (HAProxy's `enum srv_admin`): forced, inherited and
/// resolution maintenance...
const ADMIN_MAINT_MASK: u32 = 0x01 | 0x02 | 0x20;
/// ...and forced or inherited drain.
const ADMIN_DRAIN_MASK: u32 = 0x08 | 0x10;

/// A server's administrative state, as `set server ... state` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Admin {
    Ready,
    Drain,
    Maint,
}

impl Admin {
    pub fn as_str(self) -> &'static str {
        match self {
            Admin::Ready => "ready",
            Admin::Drain => "drain",
            Admin::Maint => "maint",
        }
    }

    /// From `srv_admin_state` (maintenance wins over drain, as in HAProxy).
    pub fn from_bits(bits: u32) -> Admin {
        if bits & ADMIN_MAINT_MASK != 0 {
            Admin::Maint
        } else if bits & ADMIN_DRAIN_MASK != 0 {
            Admin::Drain
        } else {
            Admin::Ready
        }
    }
}

/// The `[runbook.haproxy]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The stats socket's path (`stats socket /run/haproxy/admin.sock level admin`); relative
    /// paths start at the config file's folder.
    #[serde(default)]
    pub socket: Option<Spanned<PathBuf>>,
    /// Or its TCP address (`stats socket ipv4@127.0.0.1:9999 level admin`).
    #[serde(default)]
    pub address: Option<Spanned<String>>,
    /// What the servers of regions that do not serve become: `maint` (default) or `drain`.
    #[serde(default = "default_standby")]
    pub standby: Spanned<String>,
    #[serde(default = "default_timeout")]
    pub timeout_ms: Spanned<u64>,
    /// Each region's servers: `"BACKEND/SERVER"`, or `"BACKEND"` for all of its servers.
    pub regions: Spanned<BTreeMap<String, Spanned<Vec<Spanned<String>>>>>,
}

fn default_standby() -> Spanned<String> {
    Spanned::new(0..0, "maint".to_string())
}
fn default_timeout() -> Spanned<u64> {
    Spanned::new(0..0, TIMEOUT_MS_DEFAULT)
}

/// Where the runtime API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tcp(address) => write!(f, "{address}"),
        }
    }
}

/// One entry of a region: a server, or every server of a backend.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Member {
    Server { backend: String, server: String },
    Backend(String),
}

impl Member {
    fn parse(text: &str) -> Result<Member, String> {
        let valid = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        };
        match text.split_once('/') {
            Some((backend, server)) if valid(backend) && valid(server) => Ok(Member::Server {
                backend: backend.to_string(),
                server: server.to_string(),
            }),
            None if valid(text) => Ok(Member::Backend(text.to_string())),
            _ => Err(format!(
                "'{text}' is not BACKEND/SERVER or BACKEND (letters, digits, '-', '_', '.', ':')"
            )),
        }
    }
}

/// A checked `haproxy` step, ready to run.
#[derive(Debug)]
pub struct Haproxy {
    endpoint: Endpoint,
    standby: Admin,
    timeout: Duration,
    regions: BTreeMap<String, Vec<Member>>,
}

impl Settings {
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<Haproxy> {
        let failed = std::cell::Cell::new(false);
        let error = |checker: &mut dyn Checker, span: std::ops::Range<usize>, message: String, fix: String| {
            checker.error(span, format!("haproxy step '{step}': {message}"), fix);
            failed.set(true);
        };
        let endpoint = match (&self.socket, &self.address) {
            (Some(socket), None) => {
                let mut path = socket.get_ref().clone();
                if path.is_relative() {
                    path = checker.folder().join(path);
                }
                Some(Endpoint::Unix(path))
            }
            (None, Some(address)) => {
                let text = address.get_ref().trim();
                let valid = text
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
                if !valid {
                    error(
                        checker,
                        address.span(),
                        format!("address '{text}' is not HOST:PORT"),
                        "write the stats socket's TCP address, like \"127.0.0.1:9999\"".into(),
                    );
                }
                Some(Endpoint::Tcp(text.to_string()))
            }
            _ => {
                error(
                    checker,
                    self.regions.span(),
                    "needs exactly one of socket and address".into(),
                    "write socket = \"/run/haproxy/admin.sock\" or address = \"127.0.0.1:9999\" (a stats socket at level admin)".into(),
                );
                None
            }
        };
        let standby = match self.standby.get_ref().as_str() {
            "maint" => Admin::Maint,
            "drain" => Admin::Drain,
            other => {
                error(
                    checker,
                    self.standby.span(),
                    format!("standby = '{other}' is not a state for servers that do not serve"),
                    "use standby = \"maint\" (no traffic) or \"drain\" (only sticky sessions)".into(),
                );
                Admin::Maint
            }
        };
        let timeout_ms = *self.timeout_ms.get_ref();
        if timeout_ms == 0 || timeout_ms > TIMEOUT_MS_MAX {
            error(
                checker,
                self.timeout_ms.span(),
                format!("timeout_ms = {timeout_ms} is out of range"),
                format!("use 1..={TIMEOUT_MS_MAX} milliseconds (default {TIMEOUT_MS_DEFAULT})"),
            );
        }
        let known = checker.regions().clone();
        let mut regions = BTreeMap::new();
        let mut owner: BTreeMap<Member, String> = BTreeMap::new();
        for (region, entries) in self.regions.get_ref() {
            if !known.contains(region) {
                error(
                    checker,
                    entries.span(),
                    format!("regions names '{region}', which is not configured"),
                    format!("use one of: {}", known.iter().cloned().collect::<Vec<_>>().join(", ")),
                );
                continue;
            }
            let count = entries.get_ref().len();
            if count == 0 || count > ENTRIES_MAX {
                error(
                    checker,
                    entries.span(),
                    format!("region '{region}' has {count} entries"),
                    format!("list 1 to {ENTRIES_MAX} servers (\"BACKEND/SERVER\") or backends"),
                );
                continue;
            }
            let mut members = Vec::new();
            for entry in entries.get_ref() {
                match Member::parse(entry.get_ref().trim()) {
                    Ok(member) => {
                        if let Some(other) = owner.insert(member.clone(), region.clone()) {
                            error(
                                checker,
                                entry.span(),
                                format!("'{}' is listed for regions '{other}' and '{region}'", entry.get_ref()),
                                "a server belongs to one region: list it once".into(),
                            );
                        }
                        members.push(member);
                    }
                    Err(why) => error(
                        checker,
                        entry.span(),
                        why,
                        "write \"BACKEND/SERVER\" or \"BACKEND\" as in haproxy.cfg".into(),
                    ),
                }
            }
            regions.insert(region.clone(), members);
        }
        if regions.is_empty() && !failed.get() {
            error(
                checker,
                self.regions.span(),
                "regions is empty".into(),
                "list each region's servers, like \"us-east-1\" = [\"shop/us1\"]".into(),
            );
        }
        if failed.get() {
            return None;
        }
        Some(Haproxy {
            endpoint: endpoint?,
            standby,
            timeout: Duration::from_millis(timeout_ms),
            regions,
        })
    }
}

/// One line of `show servers state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub server: String,
    /// `srv_admin_state`.
    pub admin_bits: u32,
    /// `srv_op_state`: 0 stopped (down), 1 starting, 2 running, 3 stopping.
    pub operational: u32,
}

impl ServerState {
    pub fn admin(&self) -> Admin {
        Admin::from_bits(self.admin_bits)
    }
    fn name(&self) -> String {
        format!("{}/{}", self.backend, self.server)
    }
}

/// Parses `show servers state` (format version 1): columns found by their header names.
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some("1") => {}
        Some(other) => {
            return Err(format!(
                "HAProxy answered '{other}' instead of the server state (format version 1)"
            ));
        }
        None => return Err("HAProxy's answer to show servers state is empty".into()),
    }
    let header = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or("the server state has no header line")?;
    let columns: Vec<&str> = header.split_whitespace().collect();
    let column = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("the server state has no column {name}"))
    };
    let (backend, server, admin, operational) = (
        column("be_name")?,
        column("srv_name")?,
        column("srv_admin_state")?,
        column("srv_op_state")?,
    );
    let mut servers = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .copied()
                .ok_or_else(|| format!("a server state line is short: '{line}'"))
        };
        let number = |i: usize| {
            field(i)?
                .parse::<u32>()
                .map_err(|_| format!("a server state line has a bad number: '{line}'"))
        };
        servers.push(ServerState {
            backend: field(backend)?.to_string(),
            server: field(server)?.to_string(),
            admin_bits: number(admin)?,
            operational: number(operational)?,
        });
    }
    Ok(servers)
}

/// What each server should be: `ready` for the serving regions' servers, `standby` for the
/// others. Pure. Fails when an entry names nothing HAProxy has, or a server would be in two
/// regions.
pub fn plan(
    servers: &[ServerState],
    regions: &BTreeMap<String, Vec<Member>>,
    serving: &[String],
    standby: Admin,
) -> Result<BTreeMap<(String, String), Admin>, String> {
    let mut wanted: BTreeMap<(String, String), (Admin, &str)> = BTreeMap::new();
    let backends: BTreeSet<&str> = servers.iter().map(|s| s.backend.as_str()).collect();
    for (region, members) in regions {
        let state = if serving.iter().any(|r| r == region) {
            Admin::Ready
        } else {
            standby
        };
        for member in members {
            let matched: Vec<&ServerState> = match member {
                Member::Server { backend, server } => servers
                    .iter()
                    .filter(|s| &s.backend == backend && &s.server == server)
                    .collect(),
                Member::Backend(backend) => servers.iter().filter(|s| &s.backend == backend).collect(),
            };
            if matched.is_empty() {
                return Err(match member {
                    Member::Server { backend, server } if backends.contains(backend.as_str()) => {
                        format!(
                            "HAProxy's backend '{backend}' has no server '{server}' (region '{region}'): fix regions or haproxy.cfg"
                        )
                    }
                    Member::Server { backend, .. } | Member::Backend(backend) => {
                        format!(
                            "HAProxy has no backend '{backend}' with servers (region '{region}'): fix regions or haproxy.cfg"
                        )
                    }
                });
            }
            for found in matched {
                let key = (found.backend.clone(), found.server.clone());
                if let Some((_, other)) = wanted.insert(key, (state, region.as_str()))
                    && other != region
                {
                    return Err(format!(
                        "server {} belongs to regions '{other}' and '{region}' (through a backend entry): list it once",
                        found.name()
                    ));
                }
            }
        }
    }
    if wanted.len() > CHANGES_MAX {
        return Err(format!(
            "the regions cover {} servers; at most {CHANGES_MAX} are handled",
            wanted.len()
        ));
    }
    Ok(wanted.into_iter().map(|(key, (state, _))| (key, state)).collect())
}

impl Haproxy {
    pub const KIND: &'static str = "haproxy";

    pub async fn run(&self, order: &Order) -> Outcome {
        let before = self.servers().await?;
        let wanted = plan(&before, &self.regions, &order.serving, self.standby).map_err(Failure::Refused)?;
        let current: BTreeMap<(String, String), Admin> = before
            .iter()
            .map(|s| ((s.backend.clone(), s.server.clone()), s.admin()))
            .collect();
        let mut changes: Vec<(&(String, String), Admin)> = wanted
            .iter()
            .filter(|(key, state)| current.get(*key) != Some(*state))
            .map(|(key, state)| (key, *state))
            .collect();
        // Ready first: the pool that takes over is up before the other one leaves.
        changes.sort_by_key(|(key, state)| (*state, (*key).clone()));
        for ((backend, server), state) in &changes {
            let command = format!("set server {backend}/{server} state {}", state.as_str());
            let answer = self.command(&command).await?;
            if !answer.trim().is_empty() {
                return Err(self.refusal(&command, answer.trim()));
            }
        }
        let after = self.servers().await?;
        let mut wrong = Vec::new();
        let mut summary: BTreeMap<Admin, Vec<String>> = BTreeMap::new();
        for ((backend, server), state) in &wanted {
            let found = after.iter().find(|s| &s.backend == backend && &s.server == server);
            match found {
                Some(found) if found.admin() == *state => {
                    summary.entry(*state).or_default().push(found.name());
                }
                Some(found) => wrong.push(format!(
                    "{} is {} (admin state {:#x}), not {}",
                    found.name(),
                    found.admin().as_str(),
                    found.admin_bits,
                    state.as_str()
                )),
                None => wrong.push(format!("{backend}/{server} is gone")),
            }
        }
        if !wrong.is_empty() {
            return Err(Failure::Retryable(format!(
                "HAProxy at {} after setting the servers: {}",
                self.endpoint,
                wrong.join("; ")
            )));
        }
        let states: Vec<String> = summary
            .iter()
            .map(|(state, names)| format!("{}: {}", state.as_str(), names.join(", ")))
            .collect();
        Ok(format!(
            "HAProxy at {}: {} ({} changed), verified",
            self.endpoint,
            states.join("; "),
            changes.len()
        ))
    }

    /// Every server's state, as HAProxy reports it.
    pub async fn servers(&self) -> Result<Vec<ServerState>, Failure> {
        let answer = self.command("show servers state").await?;
        parse_servers_state(&answer).map_err(|why| self.refusal("show servers state", &why))
    }

    fn refusal(&self, command: &str, answer: &str) -> Failure {
        let fix = if answer.contains("Permission denied") {
            ": the stats socket must be at level admin (`stats socket ... level admin` in haproxy.cfg)"
        } else if answer.contains("No such") || answer.contains("Can't find") {
            ": fix regions or haproxy.cfg"
        } else {
            ""
        };
        Failure::Refused(format!(
            "HAProxy at {} answered '{command}' with: {answer}{fix}",
            self.endpoint
        ))
    }

    /// One command on a fresh connection (non-interactive mode: HAProxy answers and closes).
    async fn command(&self, command: &str) -> Result<String, Failure> {
        let exchange = async {
            match &self.endpoint {
                Endpoint::Unix(path) => talk(tokio::net::UnixStream::connect(path).await?, command).await,
                Endpoint::Tcp(address) => talk(tokio::net::TcpStream::connect(address).await?, command).await,
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(Failure::Retryable(format!(
                "HAProxy's runtime API at {} ({command}): {error}",
                self.endpoint
            ))),
            Err(_) => Err(Failure::Retryable(format!(
                "HAProxy's runtime API at {} did not answer '{command}' within {} ms",
                self.endpoint,
                self.timeout.as_millis()
            ))),
        }
    }
}

async fn talk(mut stream: impl AsyncRead + AsyncWrite + Unpin, command: &str) -> std::io::Result<String> {
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut answer = Vec::new();
    let read = (&mut stream)
        .take(RESPONSE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut answer)
        .await?;
    if read > RESPONSE_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "the answer is longer than {RESPONSE_BYTES_MAX} bytes"
        )));
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from HAProxy 2.6: us1 drained, us2 in maintenance, eu1 disabled in the
    /// configuration and then set ready (0x04 stays: not maintenance).
    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 shop 1 us1 127.0.0.1 2 8 1 1 0 1 0 2 0 0 0 0 - 19981 - 0 0 - - 0\n3 shop 2 us2 127.0.0.1 0 1 1 1 0 1 0 0 0 0 0 0 - 19982 - 0 0 - - 0\n3 shop 3 eu1 127.0.0.1 2 4 1 1 0 1 0 0 8 0 0 0 - 19983 - 0 0 - - 0\n4 shop_eu 1 eu2 127.0.0.1 2 0 1 1 1 1 0 2 0 0 0 0 - 19983 - 0 0 - - 0\n\n";

    fn member(text: &str) -> Member {
        Member::parse(text).expect("a member")
    }

    #[test]
    fn the_server_state_parses_with_admin_states() {
        let servers = parse_servers_state(STATE).expect("parses");
        let states: Vec<(String, Admin)> = servers.iter().map(|s| (s.name(), s.admin())).collect();
        assert_eq!(
            states,
            vec![
                ("shop/us1".to_string(), Admin::Drain),
                ("shop/us2".to_string(), Admin::Maint),
                ("shop/eu1".to_string(), Admin::Ready),
                ("shop_eu/eu2".to_string(), Admin::Ready),
            ]
        );
        assert!(parse_servers_state("Permission denied\n").is_err());
        assert!(parse_servers_state("").is_err());
        assert!(parse_servers_state("1\n# be_name srv_name\nshop us1\n").is_err());
    }

    #[test]
    fn serving_regions_are_ready_and_the_others_standby() {
        let servers = parse_servers_state(STATE).expect("parses");
        let regions = BTreeMap::from([
            ("us".to_string(), vec![member("shop/us1"), member("shop/us2")]),
            ("eu".to_string(), vec![member("shop/eu1"), member("shop_eu")]),
        ]);
        let wanted = plan(&servers, &regions, &["eu".to_string()], Admin::Maint).expect("plan");
        let key = |b: &str, s: &str| (b.to_string(), s.to_string());
        assert_eq!(wanted[&key("shop", "us1")], Admin::Maint);
        assert_eq!(wanted[&key("shop", "eu1")], Admin::Ready);
        assert_eq!(wanted[&key("shop_eu", "eu2")], Admin::Ready);
        let both = plan(&servers, &regions, &["eu".to_string(), "us".to_string()], Admin::Drain).expect("plan");
        assert!(both.values().all(|s| *s == Admin::Ready));
        let none = plan(&servers, &regions, &[], Admin::Drain).expect("plan");
        assert!(none.values().all(|s| *s == Admin::Drain));
    }

    #[test]
    fn unknown_servers_and_backends_and_overlaps_are_refused() {
        let servers = parse_servers_state(STATE).expect("parses");
        let missing = BTreeMap::from([("us".to_string(), vec![member("shop/us9")])]);
        assert!(
            plan(&servers, &missing, &[], Admin::Maint)
                .expect_err("missing")
                .contains("no server 'us9'")
        );
        let missing = BTreeMap::from([("us".to_string(), vec![member("nope")])]);
        assert!(
            plan(&servers, &missing, &[], Admin::Maint)
                .expect_err("missing")
                .contains("no backend 'nope'")
        );
        let overlap = BTreeMap::from([
            ("us".to_string(), vec![member("shop")]),
            ("eu".to_string(), vec![member("shop/eu1")]),
        ]);
        assert!(
            plan(&servers, &overlap, &[], Admin::Maint)
                .expect_err("overlap")
                .contains("belongs to regions")
        );
    }

    #[test]
    fn members_parse() {
        assert_eq!(
            member("be_1/srv-2"),
            Member::Server {
                backend: "be_1".into(),
                server: "srv-2".into()
            }
        );
        assert_eq!(member("shop"), Member::Backend("shop".into()));
        assert!(Member::parse("a/b/c").is_err());
        assert!(Member::parse("shop/").is_err());
        assert!(Member::parse("sh op").is_err());
    }
}
