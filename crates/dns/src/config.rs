//! The `[dns]` section of the deployment TOML: serde structs (unknown keys are errors), and
//! validation into [`Zones`]. Other sections of the file belong to other parts and are ignored.
//!
//! Every error names the file, line and column, the bad value, and how to fix it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde::Deserialize;
use toml::Spanned;

use crate::policy::{FAILOVER_TTL_SECS_DEFAULT, Member, Policy, ROUTED_TTL_SECS_DEFAULT};
use crate::rrl::{
    IPV4_PREFIX_LENGTH_DEFAULT, IPV6_PREFIX_LENGTH_DEFAULT, RESPONSES_PER_SECOND_MAX, RateLimitConfig, SLIP_MAX,
    TABLE_ENTRIES_MAX, TABLE_ENTRIES_MIN, WINDOW_S_MAX,
};
use crate::server::{
    TCP_CONNECTIONS_MAX, TCP_CONNECTIONS_PER_CLIENT_MAX_DEFAULT, TCP_IDLE_TIMEOUT_BUSY_MS, TCP_IDLE_TIMEOUT_MS,
};
use crate::zone::{Lookup, Node, RrData, RrSet, Zone, Zones};
use common::tsig::{Key, KeyError};

/// Where the DNS server listens (UDP and TCP) unless the config or a flag says otherwise.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:5353";
/// Where the admin API listens unless the config or a flag says otherwise.
pub const ADMIN_LISTEN_DEFAULT: &str = "127.0.0.1:8053";
/// How often the config file is checked for changes (0 turns polling off; SIGHUP still works).
pub const RELOAD_INTERVAL_MS_DEFAULT: u64 = 2_000;
/// Shortest polling interval accepted (polling is a `stat` of the file; faster buys nothing).
pub const RELOAD_INTERVAL_MS_MIN: u64 = 100;
/// Longest polling interval accepted (an hour; 0 turns polling off).
pub const RELOAD_INTERVAL_MS_MAX: u64 = 3_600_000;
/// Largest TTL (RFC 2181 §8).
pub const TTL_SECS_MAX: u32 = 2_147_483_647;
/// Values one record set has at most (keeps every answer well under 64 KiB).
pub const VALUES_PER_SET_MAX: usize = 64;
/// Members one routing policy set has at most.
pub const MEMBERS_PER_SET_MAX: usize = 64;
/// Bytes one TXT value has at most (split into 255-byte strings on the wire).
pub const TXT_VALUE_BYTES_MAX: usize = 1_024;
/// Bytes of a config file read at most.
pub const CONFIG_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// TSIG keys one server holds at most (each request's key is looked up among them).
pub const TSIG_KEYS_MAX: usize = 64;
/// Bytes of a TSIG key file read at most (a `tsig-keygen` file has about a hundred).
pub const TSIG_KEY_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Secondaries one zone sends NOTIFY messages to at most.
pub const NOTIFY_TARGETS_MAX: usize = 32;
/// The port of a `notify` target written without one (DNS).
pub const NOTIFY_PORT_DEFAULT: u16 = 53;

#[derive(Deserialize)]
struct FileDoc {
    dns: Option<DnsSection>,
}

/// `[dns]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// UDP and TCP address of the DNS server.
    pub listen: Option<Spanned<String>>,
    /// Address of the admin API (health pushes, metrics).
    pub admin_listen: Option<Spanned<String>>,
    /// Directory where the last pushed view is kept across restarts.
    pub state_dir: Option<PathBuf>,
    /// Clients (addresses or CIDR prefixes) allowed to transfer zones (AXFR/IXFR over TCP).
    #[serde(default)]
    pub axfr_allow: Vec<Spanned<String>>,
    pub reload_interval_ms: Option<Spanned<u64>>,
    /// DNS-over-TCP connections one client address may hold at once.
    pub tcp_connections_per_client_max: Option<Spanned<u64>>,
    /// Response rate limiting of UDP answers (on by default).
    pub rate_limit: Option<RateLimitSection>,
    /// Secondaries sent a NOTIFY (RFC 1996) whenever a zone's serial changes, for every zone
    /// without a `notify` of its own: `IP:PORT` or `IP` (port 53).
    #[serde(default)]
    pub notify: Vec<Spanned<String>>,
    /// TSIG keys (RFC 8945) this server holds, for zone transfers and NOTIFY.
    #[serde(default)]
    pub tsig_keys: Vec<TsigKeySection>,
    /// The key a zone transfer must be signed with, for every zone without a `transfer_key` of
    /// its own (BIND's `allow-transfer { key NAME; }`).
    pub transfer_key: Option<Spanned<String>>,
    /// The key NOTIFY messages are signed with, for every zone without a `notify_key` of its own.
    pub notify_key: Option<Spanned<String>>,
    #[serde(default)]
    pub zones: Vec<ZoneSection>,
}

/// `[[dns.tsig_keys]]`: a key from a file or an environment variable, as the `rfc2136` step's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsigKeySection {
    /// The key's name: needed when the secret is bare, else it picks (and must match) the
    /// file's key.
    pub key_name: Option<Spanned<String>>,
    /// `{ file = "xfr.key" }` (a `tsig-keygen` file or the bare base64 secret; relative to the
    /// config file's folder) or `{ env = "VARIABLE" }`; never the secret itself.
    pub key: Spanned<toml::Value>,
    /// The algorithm of a bare secret (`hmac-sha1`, `hmac-sha224`, `hmac-sha256`,
    /// `hmac-sha384`, `hmac-sha512`, or BIND's truncated `hmac-sha256-128`); default
    /// hmac-sha256. A `tsig-keygen` file names its own: this must then match it.
    pub algorithm: Option<Spanned<String>>,
}

/// `[dns.rate_limit]`: BIND's `rate-limit` options; every field has a default.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    pub enabled: Option<bool>,
    pub responses_per_second: Option<Spanned<u64>>,
    /// Defaults to `responses_per_second`.
    pub nxdomains_per_second: Option<Spanned<u64>>,
    /// Defaults to `responses_per_second`.
    pub errors_per_second: Option<Spanned<u64>>,
    pub window_s: Option<Spanned<u64>>,
    pub slip: Option<Spanned<u64>>,
    pub ipv4_prefix_length: Option<Spanned<u64>>,
    pub ipv6_prefix_length: Option<Spanned<u64>>,
    pub table_entries: Option<Spanned<u64>>,
    #[serde(default)]
    pub exempt_clients: Vec<Spanned<String>>,
}

/// `[[dns.zones]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSection {
    /// The zone's apex, e.g. `shop.example.`.
    pub origin: Spanned<String>,
    /// Default TTL of the zone's records.
    #[serde(default = "ttl_default")]
    pub ttl: u32,
    #[serde(default)]
    pub soa: SoaSection,
    /// Name servers of the zone (the apex NS set); at least one.
    pub ns: Spanned<Vec<Spanned<String>>>,
    /// Secondaries of this zone sent a NOTIFY when its serial changes; replaces `[dns] notify`
    /// for this zone (`[]`: none).
    pub notify: Option<Vec<Spanned<String>>>,
    /// Replaces `[dns] transfer_key` for this zone.
    pub transfer_key: Option<Spanned<String>>,
    /// Replaces `[dns] notify_key` for this zone.
    pub notify_key: Option<Spanned<String>>,
    #[serde(default)]
    pub records: Vec<RecordSection>,
}

fn ttl_default() -> u32 {
    300
}

/// `[dns.zones.soa]`; every field has a default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoaSection {
    /// Primary name server; defaults to the first `ns`.
    pub mname: Option<Spanned<String>>,
    /// The responsible mailbox as a name; defaults to `hostmaster.<origin>`.
    pub rname: Option<Spanned<String>>,
    pub serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    /// Negative-caching TTL (RFC 2308).
    pub minimum: u32,
}

impl Default for SoaSection {
    fn default() -> SoaSection {
        SoaSection {
            mname: None,
            rname: None,
            serial: 1,
            refresh: 3600,
            retry: 600,
            expire: 1_209_600,
            minimum: 60,
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum PolicyName {
    Failover,
    Weighted,
    Multivalue,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
}

/// `[[dns.zones.records]]`: a static record set (`values`) or a routing policy set (`policy` and
/// `[[...members]]`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordSection {
    /// Relative to the origin (`www`), `@` for the apex, or absolute (`www.shop.example.`);
    /// `*.name` is a wildcard.
    pub name: Spanned<String>,
    #[serde(rename = "type")]
    pub rtype: Spanned<String>,
    pub ttl: Option<u32>,
    #[serde(default)]
    pub values: Vec<Spanned<String>>,
    pub policy: Option<Spanned<PolicyName>>,
    #[serde(default)]
    pub members: Vec<MemberSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSection {
    /// The set identifier; defaults to the role or the position.
    pub id: Option<String>,
    pub values: Spanned<Vec<Spanned<String>>>,
    pub ttl: Option<u32>,
    /// The target whose health decides (as pushed to `PUT /v1/health`); none: always healthy.
    pub health: Option<String>,
    pub role: Option<Spanned<Role>>,
    pub weight: Option<u32>,
}

/// A validated `[dns]` section.
#[derive(Debug)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub state_dir: Option<PathBuf>,
    pub reload_interval_ms: u64,
    pub limits: Limits,
    pub zones: Zones,
}

/// Limits on what clients can take, read at start (a reload changes zones only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub rate_limit: RateLimitConfig,
    pub tcp_connections_per_client_max: usize,
    /// How long a DNS-over-TCP connection may wait for its next query, and how long while the
    /// server is under pressure. Not config keys: RFC 7766's advice, fixed; tests change them.
    pub tcp_idle_timeout_ms: u64,
    pub tcp_idle_timeout_busy_ms: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            rate_limit: RateLimitConfig::default(),
            tcp_connections_per_client_max: TCP_CONNECTIONS_PER_CLIENT_MAX_DEFAULT,
            tcp_idle_timeout_ms: TCP_IDLE_TIMEOUT_MS,
            tcp_idle_timeout_busy_ms: TCP_IDLE_TIMEOUT_BUSY_MS,
        }
    }
}

/// An address prefix (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub address: IpAddr,
    pub length: u8,
}

impl Prefix {
    pub fn contains(&self, ip: IpAddr) -> bool {
        common::net::prefix_contains(self.address, self.length, ip)
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(text: &str) -> Result<Prefix, String> {
        let bad = || format!("'{text}' is not an address or prefix: write it like 192.0.2.10, 10.0.0.0/8 or ::1/128");
        let (address, length) = match text.split_once('/') {
            Some((address, length)) => (address, Some(length)),
            None => (text, None),
        };
        let address: IpAddr = address.trim().parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let length = match length {
            Some(length) => length.trim().parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Prefix { address, length })
    }
}

/// A config error with its place in the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("read {path}: {source} (check the path given to --config)")]
    Read { path: String, source: std::io::Error },
    #[error("{path} has {bytes} bytes; a config file has at most {CONFIG_BYTES_MAX}")]
    TooLarge { path: String, bytes: u64 },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Reads and validates the `[dns]` section of the file at `path`.
pub fn load(path: &Path) -> Result<DnsConfig, LoadError> {
    let shown = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|source| LoadError::Read {
        path: shown.clone(),
        source,
    })?;
    if metadata.len() > CONFIG_BYTES_MAX {
        return Err(LoadError::TooLarge {
            path: shown,
            bytes: metadata.len(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: shown.clone(),
        source,
    })?;
    let mut config = parse(&text, &shown)?;
    // A relative state_dir is next to the file, not wherever the server was started.
    if let Some(state_dir) = config.state_dir.as_mut()
        && state_dir.is_relative()
        && let Some(folder) = path.parent()
    {
        *state_dir = folder.join(&*state_dir);
    }
    Ok(config)
}

/// Validates the `[dns]` section of `text`; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<DnsConfig, ConfigError> {
    let at = |span: Range<usize>, message: String| {
        let (line, column) = common::text::line_column(text, span.start);
        ConfigError {
            file: file.to_string(),
            line,
            column,
            message,
        }
    };
    let doc: FileDoc = toml::from_str(text).map_err(|e| {
        let message = e.message().trim_end().to_string();
        at(e.span().unwrap_or(0..0), message)
    })?;
    let Some(section) = doc.dns else {
        return Err(at(
            0..0,
            "there is no [dns] section: add one with listen, admin_listen and [[dns.zones]] (see docs/examples/dns.toml)"
                .to_string(),
        ));
    };
    let address = |value: &Option<Spanned<String>>, default: &str, key: &str| -> Result<SocketAddr, ConfigError> {
        match value {
            None => Ok(default.parse().expect("the default address parses")),
            Some(value) => value.get_ref().parse().map_err(|_| {
                at(
                    value.span(),
                    format!("{key} = '{}' is not IP:PORT; write it like {default}", value.get_ref()),
                )
            }),
        }
    };
    let listen = address(&section.listen, LISTEN_DEFAULT, "listen")?;
    let admin_listen = address(&section.admin_listen, ADMIN_LISTEN_DEFAULT, "admin_listen")?;
    let mut axfr_allow = Vec::new();
    for entry in &section.axfr_allow {
        axfr_allow.push(entry.get_ref().parse::<Prefix>().map_err(|m| at(entry.span(), m))?);
    }
    let (reload_interval_ms, reload_span) = match &section.reload_interval_ms {
        Some(value) => (*value.get_ref(), value.span()),
        None => (RELOAD_INTERVAL_MS_DEFAULT, 0..0),
    };
    if reload_interval_ms != 0 && reload_interval_ms < RELOAD_INTERVAL_MS_MIN {
        return Err(at(
            reload_span,
            format!(
                "reload_interval_ms = {reload_interval_ms} is too short; use 0 (reload on SIGHUP only) or at least {RELOAD_INTERVAL_MS_MIN}"
            ),
        ));
    }
    if reload_interval_ms > RELOAD_INTERVAL_MS_MAX {
        return Err(at(
            reload_span,
            format!(
                "reload_interval_ms = {reload_interval_ms} is above the bound of {RELOAD_INTERVAL_MS_MAX} ms (1 h); use 0 (reload on SIGHUP only) or {RELOAD_INTERVAL_MS_MIN}..={RELOAD_INTERVAL_MS_MAX}"
            ),
        ));
    }
    let limits = build_limits(&section, &at)?;
    let notify_default = notify_targets(&section.notify, &at)?;
    let folder = Path::new(file).parent().unwrap_or(Path::new(""));
    let keys = tsig_keys(&section.tsig_keys, folder, &at)?;
    let key_named = |name: &Spanned<String>, what: &str| -> Result<Key, ConfigError> {
        let wanted = name.get_ref().trim_end_matches('.');
        keys.iter()
            .find(|key| key.name.eq_ignore_ascii_case(wanted))
            .cloned()
            .ok_or_else(|| {
                let held: Vec<&str> = keys.iter().map(|key| key.name.as_str()).collect();
                at(
                    name.span(),
                    format!(
                        "{what} = '{wanted}' names no key of [[dns.tsig_keys]] (held: {}); add the key there or fix the name",
                        if held.is_empty() { "none".to_string() } else { held.join(", ") }
                    ),
                )
            })
    };
    let mut zones = Vec::new();
    for zone in &section.zones {
        let mut built = build_zone(zone, &at)?;
        built.notify = match &zone.notify {
            Some(own) => notify_targets(own, &at)?,
            None => notify_default.clone(),
        };
        if let Some(name) = zone.transfer_key.as_ref().or(section.transfer_key.as_ref()) {
            built.transfer_key = Some(key_named(name, "transfer_key")?.name.to_ascii_lowercase());
        }
        if let Some(name) = zone.notify_key.as_ref().or(section.notify_key.as_ref()) {
            built.notify_key = Some(key_named(name, "notify_key")?);
        }
        if zones.iter().any(|z: &Zone| z.origin == built.origin) {
            return Err(at(
                zone.origin.span(),
                format!(
                    "zone {} is defined twice; merge the two [[dns.zones]] entries",
                    built.origin
                ),
            ));
        }
        zones.push(built);
    }
    Ok(DnsConfig {
        listen,
        admin_listen,
        state_dir: section.state_dir,
        reload_interval_ms,
        limits,
        zones: Zones::new(zones, axfr_allow).with_keys(keys),
    })
}

/// The keys of `[[dns.tsig_keys]]`, each read from its file (relative to `folder`) or
/// environment variable; names unique, at most [`TSIG_KEYS_MAX`].
fn tsig_keys(sections: &[TsigKeySection], folder: &Path, at: &At<'_>) -> Result<Vec<Key>, ConfigError> {
    let mut keys: Vec<Key> = Vec::new();
    let fix = format!(
        "make one with `tsig-keygen -a {} NAME > NAME.key`",
        common::tsig::DEFAULT_ALGORITHM
    );
    for section in sections {
        if keys.len() == TSIG_KEYS_MAX {
            return Err(at(
                section.key.span(),
                format!(
                    "[[dns.tsig_keys]] lists more than {TSIG_KEYS_MAX} keys; a server holds at most {TSIG_KEYS_MAX}"
                ),
            ));
        }
        let text = key_text(&section.key, folder, at)?;
        let name = section.key_name.as_ref().map(|name| name.get_ref().as_str());
        let algorithm = section.algorithm.as_ref().map(|algorithm| algorithm.get_ref().as_str());
        let key = Key::parse(&text, name, algorithm).map_err(|why| {
            // The file is fine but holds no key of that name: point at the name; an algorithm
            // refused or contradicting the file's: at the configured algorithm.
            let span = match (&why, &section.key_name, &section.algorithm) {
                (KeyError::NoKeyNamed(_), Some(name), _) => name.span(),
                (
                    KeyError::Md5 { .. } | KeyError::Algorithm { .. } | KeyError::AlgorithmMismatch { .. },
                    _,
                    Some(algorithm),
                ) => algorithm.span(),
                _ => section.key.span(),
            };
            // The other errors already say what to do.
            let hint = match why {
                KeyError::Malformed(_) | KeyError::NoKeyNamed(_) => format!("; {fix}"),
                _ => String::new(),
            };
            at(span, format!("[[dns.tsig_keys]] key: {why}{hint}"))
        })?;
        if keys.iter().any(|held| held.name.eq_ignore_ascii_case(&key.name)) {
            return Err(at(
                section.key.span(),
                format!(
                    "TSIG key '{}' is defined twice; keep one [[dns.tsig_keys]] entry per name",
                    key.name
                ),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

/// A key's text from `{ file = "..." }` or `{ env = "..." }`; an inline secret is refused
/// without being repeated.
fn key_text(source: &Spanned<toml::Value>, folder: &Path, at: &At<'_>) -> Result<String, ConfigError> {
    let shape = "write key = { file = \"NAME.key\" } (a tsig-keygen file or the bare base64 secret) or key = { env = \"VARIABLE\" }";
    let table = match source.get_ref() {
        toml::Value::Table(table) => table,
        toml::Value::String(_) => {
            return Err(at(
                source.span(),
                format!(
                    "[[dns.tsig_keys]] key holds the secret inline, where anyone reading the config sees it; {shape}"
                ),
            ));
        }
        _ => {
            return Err(at(
                source.span(),
                format!("[[dns.tsig_keys]] key is not a table; {shape}"),
            ));
        }
    };
    match (table.get("file"), table.get("env"), table.len()) {
        (Some(toml::Value::String(file)), None, 1) => {
            let path = folder.join(file);
            let shown = path.display();
            let metadata = std::fs::metadata(&path).map_err(|e| {
                at(source.span(), format!("[[dns.tsig_keys]] key file {shown}: {e}; check the path (relative to the config file's folder)"))
            })?;
            if metadata.len() > TSIG_KEY_FILE_BYTES_MAX {
                return Err(at(
                    source.span(),
                    format!("[[dns.tsig_keys]] key file {shown} has {} bytes; a key file has at most {TSIG_KEY_FILE_BYTES_MAX}", metadata.len()),
                ));
            }
            std::fs::read_to_string(&path).map_err(|e| {
                at(source.span(), format!("[[dns.tsig_keys]] key file {shown}: {e}; check the file's permissions"))
            })
        }
        (None, Some(toml::Value::String(variable)), 1) => std::env::var(variable).map_err(|_| {
            at(
                source.span(),
                format!("[[dns.tsig_keys]] key: environment variable {variable} is not set (or not UTF-8); set it, or use key = {{ file = \"...\" }}"),
            )
        }),
        _ => Err(at(source.span(), format!("[[dns.tsig_keys]] key has other fields than one file or env; {shape}"))),
    }
}

/// The secondaries of a `notify` list: `IP:PORT` or `IP` (port [`NOTIFY_PORT_DEFAULT`]), each
/// once, at most [`NOTIFY_TARGETS_MAX`].
fn notify_targets(list: &[Spanned<String>], at: &At<'_>) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut targets: Vec<SocketAddr> = Vec::new();
    for entry in list {
        let text = entry.get_ref().trim();
        let target = text
            .parse::<SocketAddr>()
            .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, NOTIFY_PORT_DEFAULT)))
            .ok()
            .filter(|target| target.port() != 0 && !target.ip().is_unspecified())
            .ok_or_else(|| {
                at(
                    entry.span(),
                    format!(
                        "notify = '{text}' is not a secondary's address; write it like 192.0.2.10:53, [2001:db8::10]:53 or 192.0.2.10 (port {NOTIFY_PORT_DEFAULT})"
                    ),
                )
            })?;
        if !targets.contains(&target) {
            targets.push(target);
        }
        if targets.len() > NOTIFY_TARGETS_MAX {
            return Err(at(
                entry.span(),
                format!(
                    "notify lists more than {NOTIFY_TARGETS_MAX} secondaries; a zone notifies at most {NOTIFY_TARGETS_MAX}"
                ),
            ));
        }
    }
    Ok(targets)
}

/// A whole number in `range`, or an error naming the key, the value and the range.
fn bounded(
    value: &Option<Spanned<u64>>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
    at: &At<'_>,
) -> Result<u64, ConfigError> {
    // A note after the key (`name (0: off)`) goes after the range in the message.
    let (key, note) = match key.split_once(" (") {
        Some((key, note)) => (key, format!(" ({note}")),
        None => (key, String::new()),
    };
    let Some(value) = value else {
        return Ok(default);
    };
    let number = *value.get_ref();
    if range.contains(&number) {
        Ok(number)
    } else {
        Err(at(
            value.span(),
            format!(
                "{key} = {number} is out of range; use a value from {} to {}{note}",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn build_limits(section: &DnsSection, at: &At<'_>) -> Result<Limits, ConfigError> {
    let tcp_connections_per_client_max = bounded(
        &section.tcp_connections_per_client_max,
        "tcp_connections_per_client_max",
        1..=TCP_CONNECTIONS_MAX as u64,
        TCP_CONNECTIONS_PER_CLIENT_MAX_DEFAULT as u64,
        at,
    )? as usize;
    let empty = RateLimitSection::default();
    let rl = section.rate_limit.as_ref().unwrap_or(&empty);
    let defaults = RateLimitConfig::default();
    let per_second = 0..=u64::from(RESPONSES_PER_SECOND_MAX);
    let responses_per_second = bounded(
        &rl.responses_per_second,
        "rate_limit.responses_per_second (0: not limited)",
        per_second.clone(),
        u64::from(defaults.responses_per_second),
        at,
    )?;
    let nxdomains_per_second = bounded(
        &rl.nxdomains_per_second,
        "rate_limit.nxdomains_per_second (0: not limited)",
        per_second.clone(),
        responses_per_second,
        at,
    )?;
    let errors_per_second = bounded(
        &rl.errors_per_second,
        "rate_limit.errors_per_second (0: not limited)",
        per_second,
        responses_per_second,
        at,
    )?;
    let window_s = bounded(
        &rl.window_s,
        "rate_limit.window_s",
        1..=u64::from(WINDOW_S_MAX),
        u64::from(defaults.window_s),
        at,
    )?;
    let slip = bounded(
        &rl.slip,
        "rate_limit.slip (0: drop every limited response)",
        0..=u64::from(SLIP_MAX),
        u64::from(defaults.slip),
        at,
    )?;
    let ipv4_prefix_length = bounded(
        &rl.ipv4_prefix_length,
        "rate_limit.ipv4_prefix_length",
        0..=32,
        u64::from(IPV4_PREFIX_LENGTH_DEFAULT),
        at,
    )?;
    let ipv6_prefix_length = bounded(
        &rl.ipv6_prefix_length,
        "rate_limit.ipv6_prefix_length",
        0..=128,
        u64::from(IPV6_PREFIX_LENGTH_DEFAULT),
        at,
    )?;
    let table_entries = bounded(
        &rl.table_entries,
        "rate_limit.table_entries",
        TABLE_ENTRIES_MIN as u64..=TABLE_ENTRIES_MAX as u64,
        defaults.table_entries as u64,
        at,
    )?;
    let mut exempt_clients = Vec::new();
    for entry in &rl.exempt_clients {
        exempt_clients.push(entry.get_ref().parse::<Prefix>().map_err(|m| at(entry.span(), m))?);
    }
    // Every value was checked against a range that fits its type above.
    let narrow = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(Limits {
        rate_limit: RateLimitConfig {
            enabled: rl.enabled.unwrap_or(defaults.enabled),
            responses_per_second: narrow(responses_per_second),
            nxdomains_per_second: narrow(nxdomains_per_second),
            errors_per_second: narrow(errors_per_second),
            window_s: narrow(window_s),
            slip: narrow(slip),
            ipv4_prefix_length: u8::try_from(ipv4_prefix_length).unwrap_or(32),
            ipv6_prefix_length: u8::try_from(ipv6_prefix_length).unwrap_or(128),
            table_entries: usize::try_from(table_entries).unwrap_or(TABLE_ENTRIES_MAX),
            exempt_clients,
        },
        tcp_connections_per_client_max,
        ..Limits::default()
    })
}

type At<'a> = dyn Fn(Range<usize>, String) -> ConfigError + 'a;

fn check_ttl(ttl: u32, span: Range<usize>, at: &At<'_>) -> Result<u32, ConfigError> {
    if ttl > TTL_SECS_MAX {
        return Err(at(
            span,
            format!("ttl {ttl} is above the maximum {TTL_SECS_MAX} (RFC 2181)"),
        ));
    }
    Ok(ttl)
}

/// A name in the zone file: absolute if it ends with a dot, `@` for the origin, else relative.
fn zone_name(text: &Spanned<String>, origin: &Name, at: &At<'_>) -> Result<Name, ConfigError> {
    let raw = text.get_ref().trim();
    let bad = |why: String| {
        at(
            text.span(),
            format!("'{raw}' is not a valid name ({why}); write it like www, @, *.eu or www.shop.example."),
        )
    };
    if raw == "@" {
        return Ok(origin.clone());
    }
    if raw.is_empty() {
        return Err(bad("empty".to_string()));
    }
    let name = Name::from_ascii(raw).map_err(|e| bad(e.to_string()))?;
    if raw.ends_with('.') {
        Ok(name)
    } else {
        name.append_domain(origin).map_err(|e| bad(e.to_string()))
    }
}

fn build_zone(section: &ZoneSection, at: &At<'_>) -> Result<Zone, ConfigError> {
    let raw_origin = section.origin.get_ref().trim();
    let origin = Name::from_ascii(raw_origin)
        .ok()
        .filter(|_| raw_origin.ends_with('.') && raw_origin != ".")
        .ok_or_else(|| {
            at(
                section.origin.span(),
                format!("origin '{raw_origin}' is not a fully qualified name: write it with the final dot, like shop.example."),
            )
        })?;
    let ttl = check_ttl(section.ttl, section.origin.span(), at)?;
    if section.ns.get_ref().is_empty() {
        return Err(at(
            section.ns.span(),
            "a zone needs at least one name server: ns = [\"ns1.shop.example.\"]".to_string(),
        ));
    }
    let mut ns = Vec::new();
    for entry in section.ns.get_ref() {
        ns.push(RData::NS(NS(zone_name(entry, &origin, at)?)));
    }
    let soa = &section.soa;
    let mname = match &soa.mname {
        Some(mname) => zone_name(mname, &origin, at)?,
        None => match ns.first() {
            Some(RData::NS(NS(first))) => first.clone(),
            _ => origin.clone(),
        },
    };
    let rname = match &soa.rname {
        Some(rname) => zone_name(rname, &origin, at)?,
        None => Name::from_ascii("hostmaster")
            .and_then(|h| h.append_domain(&origin))
            .map_err(|e| {
                at(
                    section.origin.span(),
                    format!("origin too long for hostmaster.<origin>: {e}"),
                )
            })?,
    };
    let soa_record = Record::from_rdata(
        origin.clone(),
        ttl,
        RData::SOA(SOA::new(
            mname,
            rname,
            soa.serial,
            soa.refresh as i32,
            soa.retry as i32,
            soa.expire as i32,
            soa.minimum,
        )),
    );
    let mut zone = Zone::new(origin.clone(), soa_record, soa.minimum, ns, ttl);
    for record in &section.records {
        let name = zone_name(&record.name, &origin, at)?;
        if !origin.zone_of(&name) {
            return Err(at(
                record.name.span(),
                format!("{name} is outside the zone {origin}; move it to its own [[dns.zones]] entry"),
            ));
        }
        let rtype = parse_type(&record.rtype, at)?;
        if rtype == RecordType::SOA || (rtype == RecordType::NS && name == origin) {
            return Err(at(
                record.rtype.span(),
                format!("the apex {rtype} comes from the zone's soa and ns keys; set them there"),
            ));
        }
        if rtype == RecordType::NS {
            return Err(at(
                record.rtype.span(),
                format!(
                    "NS at {name} would delegate a subzone, which this server does not support; define the subzone as its own [[dns.zones]] entry"
                ),
            ));
        }
        let set = build_set(record, rtype, ttl, &origin, at)?;
        zone.add(&name, set).map_err(|m| at(record.name.span(), m))?;
    }
    check_aliases(&zone, section, at)?;
    Ok(zone)
}

/// What RFC 2181 forbids of CNAMEs, checked once every record of the zone is in: an MX or NS
/// that names a CNAME (§10.3, refused as BIND's `check-mx-cname` and NS checks do), and a CNAME
/// chain that comes back to a name it passed (answered, it would repeat until the chain limit).
/// Wildcards count: a target that only a wildcard CNAME covers is a CNAME too.
fn check_aliases(zone: &Zone, section: &ZoneSection, at: &At<'_>) -> Result<(), ConfigError> {
    let origin = &zone.origin;
    let alias = |target: &Name| {
        let node = cname_node(zone, target)?;
        let via = if node.name.is_wildcard() {
            format!(" (through the wildcard {})", node.name)
        } else {
            String::new()
        };
        Some(via)
    };
    for entry in section.ns.get_ref() {
        let target = zone_name(entry, origin, at)?;
        if let Some(via) = alias(&target) {
            return Err(at(
                entry.span(),
                format!(
                    "the name server {target} is a CNAME{via}, and an NS must name a host with addresses (RFC 2181 §10.3); name the host the CNAME points to, or give {target} A/AAAA records instead of the CNAME"
                ),
            ));
        }
    }
    for record in &section.records {
        if parse_type(&record.rtype, at)? != RecordType::MX {
            continue;
        }
        let members = record.members.iter().flat_map(|member| member.values.get_ref());
        for value in record.values.iter().chain(members) {
            let RData::MX(mx) = rdata(value, RecordType::MX, origin, at)? else {
                continue;
            };
            let target = mx.exchange();
            if let Some(via) = alias(target) {
                return Err(at(
                    value.span(),
                    format!(
                        "the MX exchange {target} is a CNAME{via}, and an MX must name a host with addresses (RFC 2181 §10.3); name the host the CNAME points to, or give {target} A/AAAA records instead of the CNAME"
                    ),
                ));
            }
        }
    }
    let Some(cycle) = cname_cycle(zone) else {
        return Ok(());
    };
    // Report the loop at its first CNAME in the file.
    let span = section
        .records
        .iter()
        .filter(|record| record.rtype.get_ref().eq_ignore_ascii_case("CNAME"))
        .find(|record| zone_name(&record.name, origin, at).is_ok_and(|name| cycle.iter().any(|n| **n == name)))
        .map_or(section.origin.span(), |record| record.name.span());
    let message = match &cycle[..] {
        [only] => {
            format!("{only} is a CNAME to itself, so it never leads to an answer; point it at a name with records")
        }
        _ => {
            let chain: Vec<String> = cycle.iter().chain(cycle.first()).map(|n| n.to_string()).collect();
            format!(
                "these CNAMEs make a loop, so they never lead to an answer: {}; point one of them at a name with records",
                chain.join(" -> ")
            )
        }
    };
    Err(at(span, message))
}

/// The node of the zone's CNAME that `target` lands on (exactly or through a wildcard), if
/// `target` is inside the zone and lands on one.
fn cname_node<'z>(zone: &'z Zone, target: &Name) -> Option<&'z Node> {
    if !zone.origin.zone_of(target) {
        return None;
    }
    match zone.find(target) {
        Lookup::Exact(node) | Lookup::Wildcard(node) => node.rrset(RecordType::CNAME).map(|_| node),
        Lookup::NoRecords => None,
    }
}

/// Every target a CNAME set can point at (each member of a routed one).
fn cname_targets(node: &Node) -> Vec<&Name> {
    let rdatas: Vec<&RData> = match node.rrset(RecordType::CNAME).map(|set| &set.data) {
        Some(RrData::Static { rdatas, .. }) => rdatas.iter().collect(),
        Some(RrData::Routed(policy)) => policy_members(policy).flat_map(|member| &member.rdatas).collect(),
        None => Vec::new(),
    };
    rdatas
        .into_iter()
        .filter_map(|rdata| match rdata {
            RData::CNAME(target) => Some(&target.0),
            _ => None,
        })
        .collect()
}

fn policy_members(policy: &Policy) -> Box<dyn Iterator<Item = &Member> + '_> {
    match policy {
        Policy::Failover { primary, secondary } => Box::new([primary, secondary].into_iter()),
        Policy::Weighted(members) | Policy::Multivalue(members) => Box::new(members.iter()),
    }
}

/// A loop of CNAMEs inside the zone, as the owner names of its nodes in chain order, if there
/// is one. Depth-first over the CNAME nodes with an explicit stack (a config can hold a chain
/// far longer than the call stack could follow), each node visited once.
fn cname_cycle(zone: &Zone) -> Option<Vec<&Name>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Visit {
        OnPath,
        Done,
    }
    let mut visits: HashMap<&Name, Visit> = HashMap::new();
    let mut starts: Vec<&Node> = zone
        .nodes()
        .filter(|node| node.rrset(RecordType::CNAME).is_some())
        .collect();
    // Deterministic: the same file reports the same loop.
    starts.sort_by(|a, b| a.name.cmp(&b.name));
    for start in starts {
        if visits.contains_key(&start.name) {
            continue;
        }
        visits.insert(&start.name, Visit::OnPath);
        let mut stack: Vec<(&Node, Vec<&Name>, usize)> = vec![(start, cname_targets(start), 0)];
        while let Some((node, targets, next)) = stack.last_mut() {
            let Some(&target) = targets.get(*next) else {
                visits.insert(&node.name, Visit::Done);
                stack.pop();
                continue;
            };
            *next += 1;
            let Some(following) = cname_node(zone, target) else {
                continue;
            };
            match visits.get(&following.name) {
                Some(Visit::Done) => {}
                Some(Visit::OnPath) => {
                    let from = stack
                        .iter()
                        .position(|(on_path, _, _)| std::ptr::eq(*on_path, following))
                        .unwrap_or(0);
                    return Some(stack[from..].iter().map(|(on_path, _, _)| &on_path.name).collect());
                }
                None => {
                    visits.insert(&following.name, Visit::OnPath);
                    stack.push((following, cname_targets(following), 0));
                }
            }
        }
    }
    None
}

fn parse_type(text: &Spanned<String>, at: &At<'_>) -> Result<RecordType, ConfigError> {
    match text.get_ref().to_ascii_uppercase().as_str() {
        "A" => Ok(RecordType::A),
        "AAAA" => Ok(RecordType::AAAA),
        "CNAME" => Ok(RecordType::CNAME),
        "TXT" => Ok(RecordType::TXT),
        "MX" => Ok(RecordType::MX),
        "SRV" => Ok(RecordType::SRV),
        "NS" => Ok(RecordType::NS),
        "SOA" => Ok(RecordType::SOA),
        other => Err(at(
            text.span(),
            format!("record type '{other}' is not supported; use one of A, AAAA, CNAME, TXT, MX, SRV"),
        )),
    }
}

fn build_set(
    record: &RecordSection,
    rtype: RecordType,
    zone_ttl: u32,
    origin: &Name,
    at: &At<'_>,
) -> Result<RrSet, ConfigError> {
    let Some(policy) = &record.policy else {
        if !record.members.is_empty() {
            return Err(at(
                record.name.span(),
                "members need a policy: add policy = \"failover\", \"weighted\" or \"multivalue\"".to_string(),
            ));
        }
        let rdatas = values(&record.values, rtype, origin, record.name.span(), at)?;
        let ttl = check_ttl(record.ttl.unwrap_or(zone_ttl), record.name.span(), at)?;
        return Ok(RrSet {
            rtype,
            data: RrData::Static { ttl, rdatas },
        });
    };
    if !record.values.is_empty() {
        return Err(at(
            record.values[0].span(),
            "a record with a policy takes its values from [[...members]]; move values into the members".to_string(),
        ));
    }
    let policy_name = *policy.get_ref();
    let default_ttl = match policy_name {
        PolicyName::Failover => FAILOVER_TTL_SECS_DEFAULT,
        _ => ROUTED_TTL_SECS_DEFAULT,
    };
    let set_ttl = record.ttl.unwrap_or(default_ttl);
    if record.members.is_empty() || record.members.len() > MEMBERS_PER_SET_MAX {
        return Err(at(
            policy.span(),
            format!(
                "a {policy_name:?} record needs between 1 and {MEMBERS_PER_SET_MAX} [[...members]] entries (it has {})",
                record.members.len()
            )
            .to_lowercase(),
        ));
    }
    let mut members = Vec::new();
    let mut primary = None;
    let mut secondary = None;
    for (index, section) in record.members.iter().enumerate() {
        let rdatas = values(section.values.get_ref(), rtype, origin, section.values.span(), at)?;
        if rtype == RecordType::CNAME && policy_name == PolicyName::Multivalue {
            return Err(at(
                policy.span(),
                "multivalue CNAME records would put several CNAMEs at one name; use weighted or failover".to_string(),
            ));
        }
        let id = section
            .id
            .clone()
            .or_else(|| {
                section
                    .role
                    .as_ref()
                    .map(|r| format!("{:?}", r.get_ref()).to_lowercase())
            })
            .unwrap_or_else(|| format!("member-{}", index + 1));
        let member = Member {
            id,
            ttl: check_ttl(section.ttl.unwrap_or(set_ttl), section.values.span(), at)?,
            rdatas,
            health: section.health.clone().filter(|h| !h.is_empty()),
            weight: section.weight.unwrap_or(1),
        };
        match (policy_name, &section.role) {
            (PolicyName::Failover, Some(role)) => {
                let slot = match role.get_ref() {
                    Role::Primary => &mut primary,
                    Role::Secondary => &mut secondary,
                };
                if slot.is_some() {
                    return Err(at(
                        role.span(),
                        format!(
                            "a failover record has one {:?} member; remove the other",
                            role.get_ref()
                        )
                        .to_lowercase(),
                    ));
                }
                *slot = Some(member);
            }
            (PolicyName::Failover, None) => {
                return Err(at(
                    section.values.span(),
                    "a failover member needs role = \"primary\" or role = \"secondary\"".to_string(),
                ));
            }
            (_, Some(role)) => {
                return Err(at(
                    role.span(),
                    "role is only for failover records; remove it or use policy = \"failover\"".to_string(),
                ));
            }
            (_, None) => members.push(member),
        }
    }
    let policy = match policy_name {
        PolicyName::Failover => match (primary, secondary) {
            (Some(primary), Some(secondary)) => Policy::Failover { primary, secondary },
            _ => {
                return Err(at(
                    policy.span(),
                    "a failover record needs exactly two members: one role = \"primary\" and one role = \"secondary\""
                        .to_string(),
                ));
            }
        },
        PolicyName::Weighted => Policy::Weighted(members),
        PolicyName::Multivalue => Policy::Multivalue(members),
    };
    Ok(RrSet {
        rtype,
        data: RrData::Routed(policy),
    })
}

fn values(
    list: &[Spanned<String>],
    rtype: RecordType,
    origin: &Name,
    span: Range<usize>,
    at: &At<'_>,
) -> Result<Vec<RData>, ConfigError> {
    if list.is_empty() || list.len() > VALUES_PER_SET_MAX {
        return Err(at(
            span,
            format!(
                "a record needs between 1 and {VALUES_PER_SET_MAX} values (it has {}): values = [\"...\"]",
                list.len()
            ),
        ));
    }
    if rtype == RecordType::CNAME && list.len() != 1 {
        return Err(at(span, "a CNAME has exactly one value".to_string()));
    }
    let mut rdatas: Vec<RData> = Vec::new();
    for value in list {
        let rdata = rdata(value, rtype, origin, at)?;
        if !rdatas.contains(&rdata) {
            rdatas.push(rdata);
        }
    }
    Ok(rdatas)
}

fn rdata(value: &Spanned<String>, rtype: RecordType, origin: &Name, at: &At<'_>) -> Result<RData, ConfigError> {
    let raw = value.get_ref().trim();
    let bad = |example: &str| {
        at(
            value.span(),
            format!("'{raw}' is not a valid {rtype} value; write it like \"{example}\""),
        )
    };
    let name = |text: &str, example: &str| {
        zone_name(&Spanned::new(value.span(), text.to_string()), origin, at).map_err(|_| bad(example))
    };
    let number =
        |text: Option<&str>, example: &str| text.and_then(|t| t.parse::<u16>().ok()).ok_or_else(|| bad(example));
    match rtype {
        RecordType::A => raw
            .parse::<Ipv4Addr>()
            .map(|ip| RData::A(A(ip)))
            .map_err(|_| bad("192.0.2.10")),
        RecordType::AAAA => raw
            .parse::<Ipv6Addr>()
            .map(|ip| RData::AAAA(AAAA(ip)))
            .map_err(|_| bad("2001:db8::10")),
        RecordType::CNAME => Ok(RData::CNAME(CNAME(name(raw, "www.shop.example.")?))),
        RecordType::TXT => {
            let text = value.get_ref();
            if text.len() > TXT_VALUE_BYTES_MAX {
                return Err(at(
                    value.span(),
                    format!(
                        "a TXT value has at most {TXT_VALUE_BYTES_MAX} bytes (this has {})",
                        text.len()
                    ),
                ));
            }
            Ok(RData::TXT(TXT::new(txt_strings(text))))
        }
        RecordType::MX => {
            const EXAMPLE: &str = "10 mail.shop.example.";
            let mut parts = raw.split_whitespace();
            let preference = number(parts.next(), EXAMPLE)?;
            let exchange = name(parts.next().ok_or_else(|| bad(EXAMPLE))?, EXAMPLE)?;
            if parts.next().is_some() {
                return Err(bad(EXAMPLE));
            }
            Ok(RData::MX(MX::new(preference, exchange)))
        }
        RecordType::SRV => {
            const EXAMPLE: &str = "10 5 443 api.shop.example.";
            let mut parts = raw.split_whitespace();
            let priority = number(parts.next(), EXAMPLE)?;
            let weight = number(parts.next(), EXAMPLE)?;
            let port = number(parts.next(), EXAMPLE)?;
            let target = name(parts.next().ok_or_else(|| bad(EXAMPLE))?, EXAMPLE)?;
            if parts.next().is_some() {
                return Err(bad(EXAMPLE));
            }
            Ok(RData::SRV(SRV::new(priority, weight, port, target)))
        }
        other => Err(at(value.span(), format!("{other} values are not supported here"))),
    }
}

/// Splits a TXT value into the 255-byte character-strings of the wire format, on char boundaries.
pub fn txt_strings(text: &str) -> Vec<String> {
    const STRING_BYTES_MAX: usize = 255;
    let mut strings = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if current.len() + c.len_utf8() > STRING_BYTES_MAX {
            strings.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    strings.push(current);
    strings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> ConfigError {
        match parse(text, "deploy.toml") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e,
        }
    }

    const HEAD: &str = "[dns]\n[[dns.zones]]\norigin = \"shop.example.\"\nns = [\"ns1\"]\n";

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../docs/examples/dns.toml");
        let config = parse(text, "docs/examples/dns.toml").expect("the example parses");
        assert_eq!(config.listen, "127.0.0.1:5353".parse().expect("addr"));
        assert_eq!(config.zones.iter().count(), 1);
    }

    #[test]
    fn other_sections_are_ignored_and_defaults_apply() {
        let text = format!("[store]\nanything = 1\n[proxy.backends]\nx = \"y\"\n{HEAD}");
        let config = parse(&text, "deploy.toml").expect("valid");
        assert_eq!(config.admin_listen, ADMIN_LISTEN_DEFAULT.parse().expect("addr"));
        assert_eq!(config.reload_interval_ms, RELOAD_INTERVAL_MS_DEFAULT);
    }

    #[test]
    fn unknown_keys_are_errors_with_line_and_column() {
        let e = error(&format!("{HEAD}colour = \"blue\"\n"));
        assert_eq!((e.line, e.column), (5, 1), "{e}");
        assert!(e.message.contains("colour"), "{e}");
        assert!(e.to_string().starts_with("deploy.toml:5:1: "), "{e}");
    }

    #[test]
    fn bad_values_name_the_value_the_place_and_the_fix() {
        let e = error(&format!(
            "{HEAD}\n[[dns.zones.records]]\nname = \"www\"\ntype = \"A\"\nvalues = [\"192.0.2.300\"]\n"
        ));
        assert_eq!((e.line, e.column), (9, 11), "{e}");
        assert!(e.message.contains("192.0.2.300") && e.message.contains("like"), "{e}");
        let e = error(&format!(
            "{HEAD}\n[[dns.zones.records]]\nname = \"www\"\ntype = \"HINFO\"\nvalues = [\"x\"]\n"
        ));
        assert_eq!(e.line, 8, "{e}");
        let e = error("[dns]\n[[dns.zones]]\norigin = \"shop.example\"\nns = [\"ns1\"]\n");
        assert!(e.message.contains("final dot"), "{e}");
        assert_eq!(e.line, 3);
        let e = error("[dns]\nlisten = \"localhost\"\n");
        assert!(e.message.contains("IP:PORT"), "{e}");
        let e = error("[store]\nx = 1\n");
        assert!(e.message.contains("[dns]"), "{e}");
        let e = error("[dns]\nreload_interval_ms = 5\n");
        assert!(e.message.contains("at least 100"), "{e}");
        assert_eq!(e.line, 2, "{e}");
        let e = error("[dns\n");
        assert_eq!(e.line, 1, "{e}");
        let e = error("[dns]\n\nreload_interval_ms = 9223372036854775807\n");
        assert!(e.message.contains("above the bound of 3600000 ms"), "{e}");
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn a_relative_state_dir_is_next_to_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dns.toml");
        std::fs::write(&path, "[dns]\nstate_dir = \"state/dns\"\n").expect("write");
        let config = load(&path).expect("valid");
        assert_eq!(config.state_dir, Some(dir.path().join("state/dns")));
        std::fs::write(&path, "[dns]\nstate_dir = \"/var/lib/dns\"\n").expect("write");
        assert_eq!(
            load(&path).expect("valid").state_dir,
            Some(PathBuf::from("/var/lib/dns"))
        );
    }

    #[test]
    fn record_rules_are_checked() {
        let cname_and_a = format!(
            "{HEAD}[[dns.zones.records]]\nname = \"www\"\ntype = \"CNAME\"\nvalues = [\"app\"]\n[[dns.zones.records]]\nname = \"www\"\ntype = \"A\"\nvalues = [\"192.0.2.1\"]\n"
        );
        assert!(error(&cname_and_a).message.contains("CNAME"));
        let failover_one = format!(
            "{HEAD}[[dns.zones.records]]\nname = \"app\"\ntype = \"A\"\npolicy = \"failover\"\n[[dns.zones.records.members]]\nrole = \"primary\"\nvalues = [\"192.0.2.1\"]\n"
        );
        assert!(error(&failover_one).message.contains("exactly two"));
        let outside =
            format!("{HEAD}[[dns.zones.records]]\nname = \"www.other.\"\ntype = \"A\"\nvalues = [\"192.0.2.1\"]\n");
        assert!(error(&outside).message.contains("outside"));
        let bad_policy = format!("{HEAD}[[dns.zones.records]]\nname = \"a\"\ntype = \"A\"\npolicy = \"geo\"\n");
        assert_eq!(error(&bad_policy).line, 8);
    }

    /// `HEAD` and one `[[dns.zones.records]]` per (name, type, values).
    fn zone(records: &[(&str, &str, &str)]) -> String {
        let mut text = HEAD.to_string();
        for (name, rtype, values) in records {
            text.push_str(&format!(
                "[[dns.zones.records]]\nname = \"{name}\"\ntype = \"{rtype}\"\nvalues = [{values}]\n"
            ));
        }
        text
    }

    #[test]
    fn cname_loops_are_refused_at_their_first_cname() {
        let two = zone(&[
            ("ok", "A", "\"192.0.2.1\""),
            ("a", "CNAME", "\"b\""),
            ("b", "CNAME", "\"A.shop.example.\""),
        ]);
        let e = error(&two);
        assert_eq!((e.line, e.column), (10, 8), "the name of the loop's first CNAME: {e}");
        assert!(
            e.message
                .contains("a.shop.example. -> b.shop.example. -> a.shop.example.")
                && e.message.contains("point one of them at a name with records"),
            "{e}"
        );
        let itself = zone(&[("a", "CNAME", "\"a\"")]);
        let e = error(&itself);
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("a.shop.example. is a CNAME to itself"), "{e}");
        // Through a wildcard: `x.w` does not exist, so `*.w` covers it.
        let wildcard = zone(&[("*.w", "CNAME", "\"x.w\"")]);
        assert!(
            error(&wildcard).message.contains("CNAME to itself"),
            "{}",
            error(&wildcard)
        );
        // Through a routed CNAME's secondary.
        let routed = format!(
            "{}[[dns.zones.records]]\nname = \"app\"\ntype = \"CNAME\"\npolicy = \"failover\"\n[[dns.zones.records.members]]\nrole = \"primary\"\nvalues = [\"us.cdn.example.\"]\n[[dns.zones.records.members]]\nrole = \"secondary\"\nvalues = [\"back\"]\n",
            zone(&[("back", "CNAME", "\"app\"")])
        );
        assert!(error(&routed).message.contains("loop"), "{}", error(&routed));
        // A chain that ends, and one that leaves the zone, are fine.
        let chain = zone(&[
            ("a", "CNAME", "\"b\""),
            ("b", "CNAME", "\"c\""),
            ("c", "A", "\"192.0.2.1\""),
            ("d", "CNAME", "\"a.shop.example.net.\""),
            ("e", "CNAME", "\"a\""),
        ]);
        parse(&chain, "deploy.toml").expect("no loop");
    }

    #[test]
    fn an_mx_or_ns_naming_a_cname_is_refused() {
        let mx = zone(&[
            ("mail", "CNAME", "\"host\""),
            ("host", "A", "\"192.0.2.25\""),
            ("@", "MX", "\"10 host\", \"20 mail\""),
        ]);
        let e = error(&mx);
        assert_eq!((e.line, e.column), (16, 22), "the MX value: {e}");
        assert!(
            e.message.contains("MX exchange mail.shop.example. is a CNAME") && e.message.contains("RFC 2181"),
            "{e}"
        );
        let wildcard = zone(&[("*.eu", "CNAME", "\"host.example.net.\""), ("@", "MX", "\"10 mx.eu\"")]);
        assert!(
            error(&wildcard)
                .message
                .contains("through the wildcard *.eu.shop.example.")
        );
        let ns = "[dns]\n[[dns.zones]]\norigin = \"shop.example.\"\nns = [\"ns1\", \"ns2\"]\n[[dns.zones.records]]\nname = \"ns2\"\ntype = \"CNAME\"\nvalues = [\"ns1\"]\n";
        let e = error(ns);
        assert_eq!((e.line, e.column), (4, 14), "{e}");
        assert!(e.message.contains("name server ns2.shop.example. is a CNAME"), "{e}");
        // Out of the zone, or at a host: fine.
        let fine = zone(&[
            ("@", "MX", "\"10 mx.example.net.\", \"20 host\""),
            ("host", "A", "\"192.0.2.25\""),
        ]);
        parse(&fine, "deploy.toml").expect("valid");
    }

    #[test]
    fn limits_default_and_are_validated_with_line_and_column() {
        let config = parse(HEAD, "deploy.toml").expect("valid");
        assert_eq!(config.limits, Limits::default());
        assert!(config.limits.rate_limit.enabled);
        let text = format!(
            "[dns]\ntcp_connections_per_client_max = 4\n[dns.rate_limit]\nresponses_per_second = 10\nslip = 1\nipv6_prefix_length = 48\nexempt_clients = [\"10.0.0.0/8\"]\n{}",
            &HEAD[6..]
        );
        let config = parse(&text, "deploy.toml").expect("valid");
        let rate_limit = &config.limits.rate_limit;
        assert_eq!(config.limits.tcp_connections_per_client_max, 4);
        assert_eq!(
            (rate_limit.responses_per_second, rate_limit.errors_per_second),
            (10, 10)
        );
        assert_eq!(
            (rate_limit.slip, rate_limit.ipv6_prefix_length, rate_limit.window_s),
            (1, 48, 15)
        );
        assert_eq!(rate_limit.exempt_clients.len(), 1);
        let e = error("[dns]\n[dns.rate_limit]\nwindow_s = 0\n");
        assert_eq!((e.line, e.column), (3, 12), "{e}");
        assert!(
            e.message.contains("window_s = 0") && e.message.contains("from 1 to 3600"),
            "{e}"
        );
        let e = error("[dns]\n[dns.rate_limit]\nslip = 11\n");
        assert!(e.message.contains("slip") && e.message.contains("0 to 10"), "{e}");
        let e = error("[dns]\n[dns.rate_limit]\nipv4_prefix_length = 33\n");
        assert_eq!(e.line, 3, "{e}");
        let e = error("[dns]\n[dns.rate_limit]\nresponses_per_second = 5000\n");
        assert_eq!(
            e.message,
            "rate_limit.responses_per_second = 5000 is out of range; use a value from 0 to 1000 (0: not limited)"
        );
        let e = error("[dns]\ntcp_connections_per_client_max = 0\n");
        assert!(e.message.contains("from 1 to 256"), "{e}");
        let e = error("[dns]\n[dns.rate_limit]\nexempt_clients = [\"nope\"]\n");
        assert!(e.message.contains("'nope'"), "{e}");
        let e = error("[dns]\n[dns.rate_limit]\nrate = 5\n");
        assert_eq!((e.line, e.column), (3, 1), "{e}");
    }

    #[test]
    fn notify_targets_default_from_dns_and_are_validated_with_line_and_column() {
        let text = "[dns]\nnotify = [\"192.0.2.10\", \"[2001:db8::10]:5300\", \"192.0.2.10:53\"]\n[[dns.zones]]\norigin = \"shop.example.\"\nns = [\"ns1\"]\n[[dns.zones]]\norigin = \"own.example.\"\nns = [\"ns1\"]\nnotify = [\"198.51.100.7:53\"]\n[[dns.zones]]\norigin = \"quiet.example.\"\nns = [\"ns1\"]\nnotify = []\n";
        let config = parse(text, "deploy.toml").expect("valid");
        let notify = |origin: &str| {
            config
                .zones
                .iter()
                .find(|zone| zone.origin.to_ascii() == origin)
                .map(|zone| zone.notify.iter().map(|t| t.to_string()).collect::<Vec<_>>())
                .expect("zone")
        };
        assert_eq!(
            notify("shop.example."),
            ["192.0.2.10:53", "[2001:db8::10]:5300"],
            "deduplicated, port 53 by default"
        );
        assert_eq!(
            notify("own.example."),
            ["198.51.100.7:53"],
            "a zone's own list replaces the default"
        );
        assert!(notify("quiet.example.").is_empty());
        let e = error("[dns]\nnotify = [\"192.0.2.10:53\",\n  \"secondary.example:53\"]\n");
        assert_eq!((e.line, e.column), (3, 3), "{e}");
        assert!(
            e.message.contains("'secondary.example:53'") && e.message.contains("like 192.0.2.10:53"),
            "{e}"
        );
        let e = error(&format!("{HEAD}notify = [\"192.0.2.10:0\"]\n"));
        assert_eq!((e.line, e.column), (5, 11), "{e}");
        let many: Vec<String> = (0..=NOTIFY_TARGETS_MAX).map(|n| format!("\"192.0.2.{n}\"")).collect();
        let e = error(&format!("{HEAD}notify = [{}]\n", many.join(", ")));
        assert!(e.message.contains("more than 32"), "{e}");
        assert_eq!(e.line, 5, "{e}");
    }

    #[test]
    fn soa_fields_default_one_by_one() {
        let config = parse(&format!("{HEAD}[dns.zones.soa]\nserial = 7\n"), "deploy.toml").expect("valid");
        let zone = config.zones.iter().next().expect("one zone");
        assert!(matches!(zone.soa.data(), RData::SOA(soa) if soa.serial() == 7 && soa.minimum() == 60));
    }

    #[test]
    fn prefixes_match_addresses() {
        let net: Prefix = "10.0.0.0/8".parse().expect("prefix");
        assert!(net.contains("10.200.1.1".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.0.0.1".parse().expect("ip")));
        let host: Prefix = "::1".parse().expect("prefix");
        assert!(host.contains("::1".parse().expect("ip")));
        let all: Prefix = "0.0.0.0/0".parse().expect("prefix");
        assert!(all.contains("192.0.2.1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
    }
}
