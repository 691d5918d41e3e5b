//! `rfc2136`: sets a record on a self-hosted primary (BIND9, Knot, PowerDNS) with a DNS UPDATE
//! (RFC 2136) signed with TSIG (RFC 8945, HMAC-SHA256), to the active region's value.
//!
//! One run: query the primary for the record and for its generation record (a TXT next to it,
//! `_switchyard-generation.NAME`, holding the generation of the decision that last wrote it);
//! decide ([`decide`], pure); send one UPDATE whose prerequisites (RFC 2136 §2.4.2 "RRset
//! exists, value dependent", or §2.4.3 "RRset does not exist") say what was read, so the
//! server applies it atomically only if nothing changed since — a stale controller's update
//! fails with YXRRSET/NXRRSET and the step is fenced; then query again and verify. Every
//! request is signed and every response's TSIG verified. UDP first, TCP after a truncated
//! answer (or always, with `transport = "tcp"`).

pub mod tsig;

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage as _};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use toml::Spanned;

use crate::secret::SecretSource;
use crate::{Checker, Failure, Order, Outcome};
use tsig::Key;

/// Default wait for one answer (each query and the update).
pub const TIMEOUT_MS_DEFAULT: u64 = 2_000;
/// Longest `timeout_ms` accepted.
pub const TIMEOUT_MS_MAX: u64 = 60_000;
/// A UDP request is sent again after this long without an answer...
pub const UDP_RESEND_MS: u64 = 500;
/// ...at most this many times in all.
pub const UDP_SENDS_MAX: u32 = 3;
/// Largest DNS message read (TCP frames carry at most this).
pub const MESSAGE_BYTES_MAX: usize = 65_535;
/// UDP payload advertised with EDNS(0) on queries.
pub const UDP_PAYLOAD_BYTES: u16 = 1_232;
/// Datagrams that are not our answer (wrong ID, bad signature) ignored per request before
/// giving up.
pub const STRAY_DATAGRAMS_MAX: u32 = 64;
/// Default TTL of the record written.
pub const TTL_S_DEFAULT: u32 = 60;
/// Most values per region.
pub const VALUES_MAX: usize = 16;
/// Longest TTL accepted for the record (a week; failover wants short ones).
pub const TTL_S_MAX: u32 = 604_800;
/// The generation record's first label, before the record's name.
pub const GENERATION_LABEL: &str = "_switchyard-generation";

/// The `[runbook.rfc2136]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The zone's primary server: `IP`, `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (port 53 by
    /// default).
    pub server: Spanned<String>,
    /// The zone (its apex), like `shop.example.`.
    pub zone: Spanned<String>,
    /// The record's name, inside the zone, like `www.shop.example.`.
    pub name: Spanned<String>,
    /// `A`, `AAAA` or `CNAME`.
    #[serde(rename = "type", default = "default_type")]
    pub record_type: Spanned<String>,
    #[serde(default = "default_ttl")]
    pub ttl: Spanned<u32>,
    /// Each region's value(s): `{ "us-east-1" = ["192.0.2.10"], ... }`.
    pub values: Spanned<BTreeMap<String, Spanned<Vec<Spanned<String>>>>>,
    /// The TSIG key: a `tsig-keygen` file or the bare base64 secret, `{ file = ... }` or
    /// `{ env = ... }`.
    pub key: Spanned<SecretSource>,
    /// The key's name: needed when the secret is bare, else it picks (and must match) the
    /// file's key.
    #[serde(default)]
    pub key_name: Option<Spanned<String>>,
    /// The algorithm of a bare secret (`hmac-sha1`, `hmac-sha224`, `hmac-sha256`,
    /// `hmac-sha384`, `hmac-sha512`, or BIND's truncated `hmac-sha256-128`); default
    /// hmac-sha256. A `tsig-keygen` file names its own: this must then match it.
    #[serde(default)]
    pub algorithm: Option<Spanned<String>>,
    /// `udp` (falls back to TCP on truncation) or `tcp`.
    #[serde(default = "default_transport")]
    pub transport: Spanned<String>,
    #[serde(default = "default_timeout")]
    pub timeout_ms: Spanned<u64>,
    /// Keep the generation record next to the record and refuse to write over a newer one
    /// (default true). Without it the prerequisite still catches a concurrent change, but not
    /// a stale controller that reads after a newer one wrote.
    #[serde(default = "default_true")]
    pub generation_fence: Spanned<bool>,
    /// The generation record's name (default `_switchyard-generation.NAME`).
    #[serde(default)]
    pub generation_record: Option<Spanned<String>>,
}

fn default_type() -> Spanned<String> {
    Spanned::new(0..0, "A".to_string())
}
fn default_ttl() -> Spanned<u32> {
    Spanned::new(0..0, TTL_S_DEFAULT)
}
fn default_transport() -> Spanned<String> {
    Spanned::new(0..0, "udp".to_string())
}
fn default_timeout() -> Spanned<u64> {
    Spanned::new(0..0, TIMEOUT_MS_DEFAULT)
}
fn default_true() -> Spanned<bool> {
    Spanned::new(0..0, true)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A checked `rfc2136` step, ready to run.
#[derive(Debug)]
pub struct Rfc2136 {
    step: String,
    server: String,
    zone: Name,
    name: Name,
    record_type: RecordType,
    ttl: u32,
    values: BTreeMap<String, Vec<RData>>,
    key: Key,
    transport: Transport,
    timeout: Duration,
    generation_record: Option<Name>,
}

fn parse_name(text: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(text.trim()).map_err(|e| format!("'{text}' is not a domain name ({e})"))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// A value as written in the settings, as record data of `record_type`.
fn parse_value(record_type: RecordType, text: &str) -> Result<RData, String> {
    match record_type {
        RecordType::A => std::net::Ipv4Addr::from_str(text.trim())
            .map(|ip| RData::A(A(ip)))
            .map_err(|_| format!("'{text}' is not an IPv4 address")),
        RecordType::AAAA => std::net::Ipv6Addr::from_str(text.trim())
            .map(|ip| RData::AAAA(AAAA(ip)))
            .map_err(|_| format!("'{text}' is not an IPv6 address")),
        _ => parse_name(text).map(|name| RData::CNAME(CNAME(name))),
    }
}

/// The form values are compared in: addresses as parsed, names in lower case.
fn canonical(rdata: &RData) -> String {
    match rdata {
        RData::CNAME(name) => name.0.to_lowercase().to_string(),
        other => other.to_string(),
    }
}

fn canonical_set(values: &[RData]) -> BTreeSet<String> {
    values.iter().map(canonical).collect()
}

impl Settings {
    /// Checks the settings (every problem reported with its line) and reads the key.
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<Rfc2136> {
        let failed = std::cell::Cell::new(false);
        let error = |checker: &mut dyn Checker, span: std::ops::Range<usize>, message: String, fix: &str| {
            checker.error(span, message, fix.to_string());
            failed.set(true);
        };
        let server = self.server.get_ref().trim().to_string();
        if let Err(why) = split_server(&server) {
            error(
                checker,
                self.server.span(),
                format!("rfc2136 step '{step}': server {why}"),
                "write the primary's address, like \"192.0.2.53\" or \"ns1.example.net:53\"",
            );
        }
        let zone = parse_name(self.zone.get_ref());
        let name = parse_name(self.name.get_ref());
        match (&zone, &name) {
            (Err(why), _) => error(
                checker,
                self.zone.span(),
                format!("rfc2136 step '{step}': zone {why}"),
                "write the zone's apex, like \"shop.example.\"",
            ),
            (_, Err(why)) => error(
                checker,
                self.name.span(),
                format!("rfc2136 step '{step}': name {why}"),
                "write the record's full name, like \"www.shop.example.\"",
            ),
            (Ok(zone), Ok(name)) if !zone.zone_of(name) => error(
                checker,
                self.name.span(),
                format!("rfc2136 step '{step}': name '{name}' is not inside zone '{zone}'"),
                "use a name that ends with the zone, or fix zone",
            ),
            _ => {}
        }
        let record_type = match self.record_type.get_ref().to_ascii_uppercase().as_str() {
            "A" => Some(RecordType::A),
            "AAAA" => Some(RecordType::AAAA),
            "CNAME" => Some(RecordType::CNAME),
            other => {
                error(
                    checker,
                    self.record_type.span(),
                    format!("rfc2136 step '{step}': type '{other}' is not supported"),
                    "use type = \"A\", \"AAAA\" or \"CNAME\"",
                );
                None
            }
        };
        let mut values = BTreeMap::new();
        let regions = checker.regions().clone();
        for (region, list) in self.values.get_ref() {
            if !regions.contains(region) {
                error(
                    checker,
                    list.span(),
                    format!("rfc2136 step '{step}': values names region '{region}', which is not configured"),
                    &format!("use one of: {}", regions.iter().cloned().collect::<Vec<_>>().join(", ")),
                );
                continue;
            }
            let count = list.get_ref().len();
            let single = record_type == Some(RecordType::CNAME);
            if count == 0 || count > VALUES_MAX || (single && count != 1) {
                let bound = if single {
                    "exactly 1".to_string()
                } else {
                    format!("1 to {VALUES_MAX}")
                };
                error(
                    checker,
                    list.span(),
                    format!("rfc2136 step '{step}': region '{region}' has {count} values"),
                    &format!("give {bound} value(s)"),
                );
                continue;
            }
            let Some(record_type) = record_type else { continue };
            let mut parsed = Vec::new();
            for value in list.get_ref() {
                match parse_value(record_type, value.get_ref()) {
                    Ok(rdata) => parsed.push(rdata),
                    Err(why) => error(
                        checker,
                        value.span(),
                        format!("rfc2136 step '{step}': region '{region}': {why}"),
                        &format!("write a {record_type} value"),
                    ),
                }
            }
            values.insert(region.clone(), parsed);
        }
        for region in &regions {
            if !self.values.get_ref().contains_key(region) {
                error(
                    checker,
                    self.values.span(),
                    format!("rfc2136 step '{step}': values has no entry for region '{region}'"),
                    &format!("add \"{region}\" = [\"...\"]: the record is set to the active region's value"),
                );
            }
        }
        let sets: Vec<BTreeSet<String>> = values.values().map(|v| canonical_set(v)).collect();
        for (i, set) in sets.iter().enumerate() {
            if sets[..i].contains(set) {
                error(
                    checker,
                    self.values.span(),
                    format!("rfc2136 step '{step}': two regions have the same values {set:?}"),
                    "give each region its own value, so the record tells which region is active",
                );
                break;
            }
        }
        let transport = match self.transport.get_ref().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            other => {
                error(
                    checker,
                    self.transport.span(),
                    format!("rfc2136 step '{step}': transport '{other}' is unknown"),
                    "use transport = \"udp\" (TCP after truncation) or \"tcp\"",
                );
                None
            }
        };
        let timeout_ms = *self.timeout_ms.get_ref();
        if timeout_ms == 0 || timeout_ms > TIMEOUT_MS_MAX {
            error(
                checker,
                self.timeout_ms.span(),
                format!("rfc2136 step '{step}': timeout_ms = {timeout_ms} is out of range"),
                &format!("use 1..={TIMEOUT_MS_MAX} milliseconds (default {TIMEOUT_MS_DEFAULT})"),
            );
        }
        let generation_record = match (&self.generation_record, *self.generation_fence.get_ref(), &name) {
            (_, false, _) => None,
            (Some(record), true, _) => match parse_name(record.get_ref()) {
                Ok(record) => Some(record),
                Err(why) => {
                    error(
                        checker,
                        record.span(),
                        format!("rfc2136 step '{step}': generation_record {why}"),
                        "write a full name inside the zone",
                    );
                    None
                }
            },
            (None, true, Ok(name)) => Name::from_ascii(GENERATION_LABEL)
                .ok()
                .and_then(|label| label.append_domain(name).ok()),
            (None, true, Err(_)) => None,
        };
        // A derived generation record is inside the zone exactly when the name is.
        if let (Some(record), Ok(zone), Some(set)) = (&generation_record, &zone, &self.generation_record)
            && !zone.zone_of(record)
        {
            let span = set.span();
            error(
                checker,
                span,
                format!("rfc2136 step '{step}': generation record '{record}' is not inside zone '{zone}'"),
                "pick a name inside the zone",
            );
        }
        let ttl = *self.ttl.get_ref();
        if ttl > TTL_S_MAX {
            error(
                checker,
                self.ttl.span(),
                format!("rfc2136 step '{step}': ttl = {ttl} is longer than {TTL_S_MAX} s"),
                "use a short TTL (60 s or less) so clients follow a failover soon",
            );
        }
        let what = format!("rfc2136 step '{step}' key");
        let secret = self.key.get_ref().resolve(self.key.span(), &what, checker);
        let key = secret.and_then(|secret| {
            let algorithm = self.algorithm.as_ref().map(|a| a.get_ref().as_str());
            match Key::parse(secret.expose(), self.key_name.as_ref().map(|n| n.get_ref().as_str()), algorithm) {
                Ok(key) => Some(key),
                Err(why) => {
                    // The key file is fine but holds no key of that name: point at key_name; an
                    // algorithm refused or contradicting the file's: at algorithm.
                    let algorithm_fault = matches!(why, tsig::KeyError::Md5 { .. } | tsig::KeyError::Algorithm { .. } | tsig::KeyError::AlgorithmMismatch { .. });
                    let span = match (&self.key_name, &self.algorithm) {
                        (Some(name), _) if matches!(why, tsig::KeyError::NoKeyNamed(_)) => name.span(),
                        (_, Some(algorithm)) if algorithm_fault => algorithm.span(),
                        _ => self.key.span(),
                    };
                    error(checker, span, format!("rfc2136 step '{step}' key: {why}"), "generate a key with `tsig-keygen -a hmac-sha256 NAME > NAME.key` and give the server the same key statement");
                    None
                }
            }
        });
        let ok = !failed.get();
        let (Ok(zone), Ok(name), Some(record_type), Some(transport), Some(key), true) =
            (zone, name, record_type, transport, key, ok)
        else {
            return None;
        };
        Some(Rfc2136 {
            step: step.to_string(),
            server,
            zone,
            name,
            record_type,
            ttl,
            values,
            key,
            transport,
            timeout: Duration::from_millis(timeout_ms),
            generation_record,
        })
    }
}

/// `host[:port]` → (host, port); IPv6 literals in brackets when a port follows.
fn split_server(server: &str) -> Result<(String, u16), String> {
    if server.is_empty() {
        return Err("is empty".into());
    }
    if let Ok(ip) = std::net::IpAddr::from_str(server) {
        return Ok((ip.to_string(), 53));
    }
    if let Ok(address) = SocketAddr::from_str(server) {
        return Ok((address.ip().to_string(), address.port()));
    }
    match server.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !host.contains(':') => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .map(|p| (host.to_string(), p))
            .ok_or_else(|| format!("'{server}' has a bad port")),
        None if !server.contains(char::is_whitespace) => Ok((server.to_string(), 53)),
        _ => Err(format!("'{server}' is not HOST or HOST:PORT")),
    }
}

/// What the primary holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub values: Vec<RData>,
    /// The generation record's TXT data (empty when absent).
    pub generation_txt: Vec<RData>,
}

/// What to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The record holds the target (and the generation record this generation).
    Done,
    /// Update, on condition the record (and generation record) still hold what was read.
    Update,
    /// A newer decision wrote, or someone else did: do not touch it.
    Fenced(String),
}

/// The generation a TXT of the generation record names (`generation=N`).
pub fn generation_of(txt: &[RData]) -> Result<Option<u64>, String> {
    let [only] = txt else {
        return if txt.is_empty() {
            Ok(None)
        } else {
            Err(format!("{} TXT records", txt.len()))
        };
    };
    let RData::TXT(data) = only else {
        return Err("not a TXT record".into());
    };
    let text: String = data
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("generation="))
        .and_then(|n| n.parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| format!("\"{text}\" names no generation=N"))
}

/// Decides from what was read. Pure: the same reading, the same decision.
pub fn decide(
    observed: &Observed,
    target: &[RData],
    known: &[Vec<RData>],
    generation: u64,
    fenced_by_generation: bool,
) -> Decision {
    let current = canonical_set(&observed.values);
    let wanted = canonical_set(target);
    let mut stamped = true;
    if fenced_by_generation {
        match generation_of(&observed.generation_txt) {
            Ok(Some(found)) if found > generation => {
                return Decision::Fenced(format!(
                    "the generation record holds {found}, newer than this decision's {generation}"
                ));
            }
            Ok(found) => stamped = found == Some(generation),
            Err(why) => {
                return Decision::Fenced(format!(
                    "the generation record is not Switchyard's ({why}): remove it or set generation_record"
                ));
            }
        }
    }
    if current == wanted {
        return if stamped { Decision::Done } else { Decision::Update };
    }
    if current.is_empty() || known.iter().any(|values| canonical_set(values) == current) {
        return Decision::Update;
    }
    Decision::Fenced(format!(
        "the record holds {}, which is no region's value: someone else changed it; set it back to a region's value or fix values",
        current.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// Why one exchange with the server failed.
#[derive(Debug)]
enum ExchangeError {
    /// Timeouts, network errors, unreadable answers: worth another attempt.
    Transient(String),
    /// The server refused our TSIG (BADKEY, BADSIG, BADTIME): configuration.
    Key(String),
    /// An unsigned TSIG refusal (BADKEY, BADSIG): the server's, or a forgery by anyone who
    /// saw the request. Over UDP the exchange waits on for a signed answer and reports this
    /// only when none comes.
    UnsignedRefusal(String),
}

impl From<ExchangeError> for Failure {
    fn from(error: ExchangeError) -> Failure {
        match error {
            ExchangeError::Transient(why) => Failure::Retryable(why),
            ExchangeError::Key(why) | ExchangeError::UnsignedRefusal(why) => Failure::Refused(why),
        }
    }
}

const RCODE_FORMERR: u8 = 1;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

/// The header's RCODE of an answer (the low 4 bits of its fourth byte).
fn unsigned_rcode(bytes: &[u8]) -> Option<u8> {
    bytes.get(3).map(|flags| flags & 0x0f)
}

fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        RCODE_FORMERR => "FORMERR",
        RCODE_NOTIMP => "NOTIMP",
        RCODE_REFUSED => "REFUSED",
        _ => "an error",
    }
}

fn random_id() -> u16 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(now_s());
    hasher.finish() as u16
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Rfc2136 {
    /// The step kind's name.
    pub const KIND: &'static str = "rfc2136";

    pub async fn run(&self, order: &Order) -> Outcome {
        let address = self.resolve().await?;
        let observed = self.observe(address).await?;
        self.apply(order, address, &observed).await
    }

    /// The primary's address (`server` resolved).
    pub async fn resolve(&self) -> Result<SocketAddr, Failure> {
        let (host, port) = split_server(&self.server).map_err(Failure::Refused)?;
        let lookup = tokio::time::timeout(self.timeout, tokio::net::lookup_host((host.as_str(), port)));
        match lookup.await {
            Ok(Ok(mut addresses)) => addresses
                .next()
                .ok_or_else(|| Failure::Retryable(format!("server {host} has no address"))),
            Ok(Err(error)) => Err(Failure::Retryable(format!("cannot resolve server {host}: {error}"))),
            Err(_) => Err(Failure::Retryable(format!("resolving server {host} timed out"))),
        }
    }

    /// The second half of [`Rfc2136::run`]: decides from `observed` (what was read), updates on
    /// condition that the server still holds it, verifies. Public so a test can play a
    /// controller that read before another one wrote. `observed` must be a reading of the
    /// primary: when it already shows the target, that reading is the verification.
    pub async fn apply(&self, order: &Order, address: SocketAddr, observed: &Observed) -> Outcome {
        let target = self.values.get(&order.to).ok_or_else(|| {
            Failure::Refused(format!(
                "step '{}' has no value for region '{}': add it to values",
                self.step, order.to
            ))
        })?;
        let known: Vec<Vec<RData>> = self.values.values().cloned().collect();
        let fence = self.generation_record.is_some();
        match decide(observed, target, &known, order.generation, fence) {
            Decision::Fenced(why) => return Err(Failure::Fenced(format!("{} {}: {why}", self.name, self.record_type))),
            Decision::Done => return Ok(self.describe(target, order, address, "already")),
            Decision::Update => {}
        }
        let update = self.update_message(observed, target, order)?;
        let response = self.exchange(address, update).await?;
        match response.response_code() {
            ResponseCode::NoError => {}
            code
            @ (ResponseCode::YXRRSet | ResponseCode::NXRRSet | ResponseCode::YXDomain | ResponseCode::NXDomain) => {
                // Our own earlier attempt may have applied (a lost UDP answer): then it holds
                // exactly what we want, with our generation.
                let now = self.observe(address).await?;
                if decide(&now, target, &known, order.generation, fence) == Decision::Done {
                    return Ok(self.describe(target, order, address, "already"));
                }
                return Err(Failure::Fenced(format!(
                    "{} {}: the server refused the update ({code}: a prerequisite failed): it changed since it was read and now holds {}",
                    self.name,
                    self.record_type,
                    self.show(&now)
                )));
            }
            code => return Err(self.update_refused(code)),
        }
        let after = self.observe(address).await?;
        match decide(&after, target, &known, order.generation, fence) {
            Decision::Done => Ok(self.describe(target, order, address, "now")),
            Decision::Fenced(why) => Err(Failure::Fenced(format!(
                "{} {}: after the update: {why}",
                self.name, self.record_type
            ))),
            Decision::Update => Err(Failure::Retryable(format!(
                "the server accepted the update, but {} {} reads {}",
                self.name,
                self.record_type,
                self.show(&after)
            ))),
        }
    }

    /// What an UPDATE answered with `code` (neither NOERROR nor a failed prerequisite) means:
    /// final for the codes that say the server will not take this update until its
    /// configuration (or the step's) changes, worth another attempt for the rest (SERVFAIL: the
    /// server could not apply it just now).
    fn update_refused(&self, code: ResponseCode) -> Failure {
        let (name, kind, zone, key) = (&self.name, &self.record_type, &self.zone, &self.key.name);
        match code {
            ResponseCode::Refused => Failure::Refused(format!(
                "the server refused the update of {name} {kind} (REFUSED): grant key '{key}' the name in the zone's update-policy (BIND: grant {key} name {name} {kind};) or allow-update"
            )),
            ResponseCode::NotImp => Failure::Refused(format!(
                "the server does not take dynamic updates for zone {zone} (NOTIMP): enable them for the zone (BIND: allow-update {{ key {key}; }}; or update-policy in its zone statement; Knot: an acl with action update; PowerDNS: dnsupdate=yes and the zone's TSIG-ALLOW-DNSUPDATE metadata), or point server at a primary that does"
            )),
            ResponseCode::FormErr => Failure::Refused(format!(
                "the server could not parse the update of {name} {kind} (FORMERR): it does not understand this UPDATE (RFC 2136 with TSIG HMAC-SHA256), or something between rewrote it; no retry fixes that: read the server's log for the reason, and check server points at the zone's primary"
            )),
            ResponseCode::NotAuth => Failure::Refused(format!(
                "the server is not authoritative for zone {zone} (NOTAUTH): point server at the zone's primary (a secondary does not take updates unless it forwards them), and check zone"
            )),
            ResponseCode::NotZone => Failure::Refused(format!(
                "{name} is not inside zone {zone} as the server holds it (NOTZONE): fix zone or name so the name is in the zone, and point server at that zone's primary"
            )),
            code => Failure::Retryable(format!("the server answered {code} to the update of {name} {kind}")),
        }
    }

    fn describe(&self, target: &[RData], order: &Order, address: SocketAddr, when: &str) -> String {
        let values: Vec<String> = target.iter().map(canonical).collect();
        let generation = if self.generation_record.is_some() {
            format!(" (generation {})", order.generation)
        } else {
            String::new()
        };
        format!(
            "{} {} {when} {}{generation}, verified at {address}",
            self.name,
            self.record_type,
            values.join(", ")
        )
    }

    fn show(&self, observed: &Observed) -> String {
        let values: Vec<String> = observed.values.iter().map(canonical).collect();
        let values = if values.is_empty() {
            "nothing".to_string()
        } else {
            values.join(", ")
        };
        match (&self.generation_record, generation_of(&observed.generation_txt)) {
            (Some(_), Ok(Some(g))) => format!("{values} (generation {g})"),
            (Some(_), Ok(None)) => format!("{values} (no generation record)"),
            _ => values,
        }
    }

    /// Reads the record and the generation record from the primary.
    pub async fn observe(&self, address: SocketAddr) -> Result<Observed, Failure> {
        let values = self.query(address, &self.name, self.record_type).await?;
        let generation_txt = match &self.generation_record {
            Some(record) => self.query(address, record, RecordType::TXT).await?,
            None => Vec::new(),
        };
        Ok(Observed { values, generation_txt })
    }

    async fn query(&self, address: SocketAddr, name: &Name, record_type: RecordType) -> Result<Vec<RData>, Failure> {
        let mut message = Message::new();
        message
            .set_id(random_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false);
        let mut query = Query::query(name.clone(), record_type);
        query.set_query_class(DNSClass::IN);
        message.add_query(query);
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(UDP_PAYLOAD_BYTES);
        message.set_edns(edns);
        let response = self.exchange(address, message).await?;
        match response.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain => {}
            // The server will not answer this controller's queries until its configuration
            // changes: no retry helps.
            code @ (ResponseCode::Refused | ResponseCode::NotImp | ResponseCode::FormErr) => {
                return Err(Failure::Refused(format!(
                    "the server answered {code} to a query for {name} {record_type}: let this controller's address (and key '{}') query zone {} (BIND: allow-query), and point server at the zone's primary",
                    self.key.name, self.zone
                )));
            }
            code => {
                return Err(Failure::Retryable(format!(
                    "the server answered {code} to a query for {name} {record_type}"
                )));
            }
        }
        if !response.authoritative() {
            return Err(Failure::Refused(format!(
                "server {address} is not authoritative for {name}: point server at the primary of zone {}",
                self.zone
            )));
        }
        Ok(response
            .answers()
            .iter()
            .filter(|r| r.record_type() == record_type && r.name().to_lowercase() == name.to_lowercase())
            .map(|r| r.data().clone())
            .collect())
    }

    /// The UPDATE: prerequisites say what was read, then the RRsets are replaced.
    fn update_message(&self, observed: &Observed, target: &[RData], order: &Order) -> Result<Message, Failure> {
        let mut message = Message::new();
        message
            .set_id(random_id())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Update)
            .set_recursion_desired(false);
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        message.add_zone(zone);
        let mut replace = |name: &Name, record_type: RecordType, read: &[RData], write: Vec<RData>| {
            prerequisite(&mut message, name, record_type, read);
            let mut delete = Record::update0(name.clone(), 0, record_type);
            delete.set_dns_class(DNSClass::ANY);
            message.add_update(delete);
            for rdata in write {
                message.add_update(Record::from_rdata(name.clone(), self.ttl, rdata));
            }
        };
        replace(&self.name, self.record_type, &observed.values, target.to_vec());
        if let Some(record) = &self.generation_record {
            let text = format!("generation={} active={} by=switchyard", order.generation, order.to);
            replace(
                record,
                RecordType::TXT,
                &observed.generation_txt,
                vec![RData::TXT(TXT::new(vec![text]))],
            );
        }
        Ok(message)
    }

    /// Signs, sends (UDP with resends, TCP after truncation) and verifies one exchange.
    async fn exchange(&self, address: SocketAddr, message: Message) -> Result<Message, Failure> {
        let id = message.id();
        let wire = message
            .to_vec()
            .map_err(|e| Failure::Retryable(format!("encode the request: {e}")))?;
        let signed = tsig::sign(&wire, &self.key, now_s()).map_err(Failure::Retryable)?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let over_udp = match self.transport {
            Transport::Udp => self.udp(address, &signed, id, deadline).await.map_err(Failure::from)?,
            Transport::Tcp => None,
        };
        match over_udp {
            Some(response) => Ok(response),
            None => Ok(self.tcp(address, &signed, id, deadline).await.map_err(Failure::from)?),
        }
    }

    fn accept(&self, bytes: &[u8], signed: &tsig::Signed, id: u16) -> Result<Option<Message>, ExchangeError> {
        if bytes.len() < 12 || u16::from_be_bytes([bytes[0], bytes[1]]) != id || bytes[2] & 0x80 == 0 {
            return Ok(None);
        }
        match tsig::verify(bytes, &signed.mac, &self.key, now_s()) {
            Ok(stripped) => Message::from_vec(&stripped)
                .map(Some)
                .map_err(|e| ExchangeError::Transient(format!("the server's answer does not parse: {e}"))),
            Err(error @ tsig::VerifyError::Server { signed: false, .. }) => {
                Err(ExchangeError::UnsignedRefusal(error.describe(&self.key)))
            }
            Err(error @ (tsig::VerifyError::Server { .. } | tsig::VerifyError::BadTime { .. })) => {
                Err(ExchangeError::Key(error.describe(&self.key)))
            }
            // A server that knows no TSIG (or not this key's algorithm) answers a signed request
            // unsigned, with FORMERR or NOTIMP (or REFUSED): final, once no signed answer comes.
            Err(tsig::VerifyError::Unsigned) => match unsigned_rcode(bytes) {
                Some(rcode @ (RCODE_FORMERR | RCODE_NOTIMP | RCODE_REFUSED)) => {
                    Err(ExchangeError::UnsignedRefusal(format!(
                        "the server answered {} without a TSIG to a request signed with key '{}' ({}): it does not support TSIG or this key's algorithm, or does not hold the key; give the server the key (BIND: a key statement with algorithm {} and the same secret, and allow-update {{ key {}; }}), or check server points at the zone's primary",
                        rcode_name(rcode),
                        self.key.name,
                        self.key.algorithm_name(),
                        self.key.algorithm_name(),
                        self.key.name
                    )))
                }
                _ => Err(ExchangeError::Transient(
                    tsig::VerifyError::Unsigned.describe(&self.key),
                )),
            },
            Err(error) => Err(ExchangeError::Transient(error.describe(&self.key))),
        }
    }

    async fn udp(
        &self,
        address: SocketAddr,
        signed: &tsig::Signed,
        id: u16,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Message>, ExchangeError> {
        let transient =
            |what: &str, e: std::io::Error| ExchangeError::Transient(format!("{what} {address} over UDP: {e}"));
        let local: SocketAddr = if address.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| transient("bind a socket for", e))?;
        socket.connect(address).await.map_err(|e| transient("connect to", e))?;
        let mut buffer = vec![0u8; MESSAGE_BYTES_MAX];
        let mut strays = 0;
        let mut last_problem = None;
        let mut unsigned_refusal = None;
        for _ in 0..UDP_SENDS_MAX {
            socket.send(&signed.wire).await.map_err(|e| transient("send to", e))?;
            let resend_at = (tokio::time::Instant::now() + Duration::from_millis(UDP_RESEND_MS)).min(deadline);
            loop {
                let received = match tokio::time::timeout_at(resend_at, socket.recv(&mut buffer)).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(transient("receive from", e)),
                    Ok(Ok(n)) => n,
                };
                let bytes = &buffer[..received];
                // Truncated (TC): ask again over TCP, whatever the datagram holds (a forged
                // one can only make us use TCP).
                if bytes.len() >= 12 && u16::from_be_bytes([bytes[0], bytes[1]]) == id && bytes[2] & 0x82 == 0x82 {
                    return Ok(None);
                }
                match self.accept(bytes, signed, id) {
                    Ok(Some(message)) => return Ok(Some(message)),
                    Ok(None) => {}
                    Err(ExchangeError::Key(why)) => return Err(ExchangeError::Key(why)),
                    // Not final at once: a datagram anyone can send would otherwise stop the
                    // runbook as a key problem; the server's signed answer may still come.
                    Err(ExchangeError::UnsignedRefusal(why)) => unsigned_refusal = Some(why),
                    Err(ExchangeError::Transient(why)) => {
                        tracing::warn!(step = %self.step, %address, "ignored an answer: {why}");
                        last_problem = Some(why);
                    }
                }
                strays += 1;
                if strays >= STRAY_DATAGRAMS_MAX {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline || strays >= STRAY_DATAGRAMS_MAX {
                break;
            }
        }
        if let Some(why) = unsigned_refusal {
            return Err(ExchangeError::Key(why));
        }
        Err(ExchangeError::Transient(match last_problem {
            Some(why) => format!(
                "no valid answer from {address} over UDP within {} ms (last: {why})",
                self.timeout.as_millis()
            ),
            None => format!(
                "no answer from {address} over UDP within {} ms",
                self.timeout.as_millis()
            ),
        }))
    }

    async fn tcp(
        &self,
        address: SocketAddr,
        signed: &tsig::Signed,
        id: u16,
        deadline: tokio::time::Instant,
    ) -> Result<Message, ExchangeError> {
        let exchange = async {
            let mut stream = TcpStream::connect(address).await?;
            let length = u16::try_from(signed.wire.len()).map_err(|_| std::io::Error::other("request too large"))?;
            let mut frame = length.to_be_bytes().to_vec();
            frame.extend_from_slice(&signed.wire);
            stream.write_all(&frame).await?;
            let mut length = [0u8; 2];
            stream.read_exact(&mut length).await?;
            let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(length))];
            stream.read_exact(&mut bytes).await?;
            Ok::<_, std::io::Error>(bytes)
        };
        let bytes = match tokio::time::timeout_at(deadline, exchange).await {
            Err(_) => {
                return Err(ExchangeError::Transient(format!(
                    "no answer from {address} over TCP within {} ms",
                    self.timeout.as_millis()
                )));
            }
            Ok(Err(e)) => {
                return Err(ExchangeError::Transient(format!(
                    "exchange with {address} over TCP: {e}"
                )));
            }
            Ok(Ok(bytes)) => bytes,
        };
        self.accept(&bytes, signed, id)?
            .ok_or_else(|| ExchangeError::Transient(format!("{address} answered over TCP with another message's ID")))
    }
}

/// RFC 2136 §2.4.2 (the RRset exists with exactly these values) or §2.4.3 (it does not exist).
fn prerequisite(message: &mut Message, name: &Name, record_type: RecordType, read: &[RData]) {
    if read.is_empty() {
        let mut absent = Record::update0(name.clone(), 0, record_type);
        absent.set_dns_class(DNSClass::NONE);
        message.add_pre_requisite(absent);
    } else {
        for rdata in read {
            message.add_pre_requisite(Record::from_rdata(name.clone(), 0, rdata.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::test_support::Collect;

    fn a(ip: &str) -> RData {
        parse_value(RecordType::A, ip).expect("an address")
    }

    fn txt(text: &str) -> Vec<RData> {
        vec![RData::TXT(TXT::new(vec![text.to_string()]))]
    }

    fn observed(values: &[&str], generation: Option<u64>) -> Observed {
        Observed {
            values: values.iter().map(|v| a(v)).collect(),
            generation_txt: generation
                .map(|g| txt(&format!("generation={g} active=x by=switchyard")))
                .unwrap_or_default(),
        }
    }

    fn known() -> Vec<Vec<RData>> {
        vec![vec![a("192.0.2.1")], vec![a("192.0.2.2")]]
    }

    #[test]
    fn a_record_holding_another_regions_value_is_updated_and_the_target_is_done() {
        let target = [a("192.0.2.2")];
        assert_eq!(
            decide(&observed(&["192.0.2.1"], Some(4)), &target, &known(), 5, true),
            Decision::Update
        );
        assert_eq!(
            decide(&observed(&["192.0.2.2"], Some(5)), &target, &known(), 5, true),
            Decision::Done
        );
        assert_eq!(
            decide(&observed(&[], None), &target, &known(), 5, true),
            Decision::Update
        );
        // Right value, older stamp: stamp it so a stale controller is fenced later.
        assert_eq!(
            decide(&observed(&["192.0.2.2"], Some(3)), &target, &known(), 5, true),
            Decision::Update
        );
        assert_eq!(
            decide(&observed(&["192.0.2.2"], None), &target, &known(), 5, false),
            Decision::Done
        );
    }

    #[test]
    fn a_newer_generation_a_foreign_value_or_a_foreign_txt_fence() {
        let target = [a("192.0.2.2")];
        assert!(
            matches!(decide(&observed(&["192.0.2.1"], Some(6)), &target, &known(), 5, true), Decision::Fenced(m) if m.contains("6"))
        );
        assert!(matches!(
            decide(&observed(&["192.0.2.2"], Some(6)), &target, &known(), 5, true),
            Decision::Fenced(_)
        ));
        assert!(
            matches!(decide(&observed(&["203.0.113.9"], Some(4)), &target, &known(), 5, true), Decision::Fenced(m) if m.contains("203.0.113.9"))
        );
        let mut foreign = observed(&["192.0.2.1"], None);
        foreign.generation_txt = txt("v=spf1 -all");
        assert!(
            matches!(decide(&foreign, &target, &known(), 5, true), Decision::Fenced(m) if m.contains("not Switchyard's"))
        );
        // Without the fence the generation record is not read at all.
        assert_eq!(decide(&foreign, &target, &known(), 5, false), Decision::Update);
    }

    #[test]
    fn generations_are_read_from_the_txt() {
        assert_eq!(
            generation_of(&txt("generation=42 active=eu by=switchyard")),
            Ok(Some(42))
        );
        assert_eq!(generation_of(&[]), Ok(None));
        assert!(generation_of(&txt("generation=x")).is_err());
        let two: Vec<RData> = txt("generation=1").into_iter().chain(txt("generation=2")).collect();
        assert!(generation_of(&two).is_err());
    }

    #[test]
    fn servers_split_into_host_and_port() {
        assert_eq!(split_server("192.0.2.53"), Ok(("192.0.2.53".into(), 53)));
        assert_eq!(split_server("192.0.2.53:5353"), Ok(("192.0.2.53".into(), 5353)));
        assert_eq!(split_server("[2001:db8::1]:53"), Ok(("2001:db8::1".into(), 53)));
        assert_eq!(split_server("2001:db8::1"), Ok(("2001:db8::1".into(), 53)));
        assert_eq!(split_server("ns1.example.net"), Ok(("ns1.example.net".into(), 53)));
        assert!(split_server("ns1.example.net:0").is_err());
        assert!(split_server("ns1.example.net:x").is_err());
        assert!(split_server("").is_err());
    }

    #[test]
    fn canonical_values_ignore_case_of_names() {
        let one = parse_value(RecordType::CNAME, "EU.shop.example").expect("name");
        let two = parse_value(RecordType::CNAME, "eu.shop.example.").expect("name");
        assert_eq!(canonical(&one), canonical(&two));
        assert!(parse_value(RecordType::A, "2001:db8::1").is_err());
        assert!(parse_value(RecordType::AAAA, "2001:db8::1").is_ok());
    }

    /// A fake primary: over UDP it answers every request truncated (TC), over TCP with the
    /// record; both signed with the key, as a server does.
    async fn truncating_server(key: Key) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<&'static str>) {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
            let port = udp.local_addr().expect("address").port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let address = udp.local_addr().expect("address");
        let (seen, seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let answer = move |wire: &[u8], truncated: bool| {
            let (request, mac) = tsig::server::unsigned_request(wire);
            let request = Message::from_vec(&request).expect("the request parses");
            let mut response = Message::new();
            response
                .set_id(request.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query)
                .set_authoritative(true)
                .set_truncated(truncated);
            response.add_queries(request.queries().to_vec());
            if !truncated {
                let query = &request.queries()[0];
                response.add_answer(Record::from_rdata(query.name().clone(), 60, a("192.0.2.2")));
            }
            tsig::server::sign_response(&response.to_vec().expect("encodes"), &mac, &key, now_s(), 0)
        };
        let udp_answer = answer.clone();
        let udp_seen = seen.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; MESSAGE_BYTES_MAX];
            while let Ok((n, from)) = udp.recv_from(&mut buffer).await {
                let _ = udp_seen.send("udp");
                let _ = udp.send_to(&udp_answer(&buffer[..n], true), from).await;
            }
        });
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let _ = seen.send("tcp");
                let mut length = [0u8; 2];
                stream.read_exact(&mut length).await.expect("length");
                let mut wire = vec![0u8; usize::from(u16::from_be_bytes(length))];
                stream.read_exact(&mut wire).await.expect("request");
                let response = answer(&wire, false);
                let mut frame = (response.len() as u16).to_be_bytes().to_vec();
                frame.extend_from_slice(&response);
                stream.write_all(&frame).await.expect("answer");
            }
        });
        (address, seen_rx)
    }

    /// A fake primary over UDP that answers every request twice: first with an unsigned BADSIG
    /// refusal (what anyone who saw the request can forge), then with the signed answer.
    async fn forged_refusal_first_server(key: Key) -> SocketAddr {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let address = udp.local_addr().expect("address");
        tokio::spawn(async move {
            let mut buffer = vec![0u8; MESSAGE_BYTES_MAX];
            while let Ok((n, from)) = udp.recv_from(&mut buffer).await {
                let (request, mac) = tsig::server::unsigned_request(&buffer[..n]);
                let request = Message::from_vec(&request).expect("the request parses");
                let mut response = Message::new();
                response
                    .set_id(request.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(OpCode::Query)
                    .set_authoritative(true);
                response.add_queries(request.queries().to_vec());
                let mut refusal = response.clone();
                refusal.set_response_code(ResponseCode::NotAuth);
                let forged =
                    tsig::server::unsigned_error(&refusal.to_vec().expect("encodes"), &key, now_s(), tsig::BADSIG);
                let _ = udp.send_to(&forged, from).await;
                let query = &request.queries()[0];
                response.add_answer(Record::from_rdata(query.name().clone(), 60, a("192.0.2.2")));
                let signed = tsig::server::sign_response(&response.to_vec().expect("encodes"), &mac, &key, now_s(), 0);
                let _ = udp.send_to(&signed, from).await;
            }
        });
        address
    }

    /// A fake primary over UDP: queries get an empty signed answer, updates a signed answer
    /// with `update_code`.
    async fn update_answering_server(key: Key, update_code: ResponseCode) -> SocketAddr {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let address = udp.local_addr().expect("address");
        tokio::spawn(async move {
            let mut buffer = vec![0u8; MESSAGE_BYTES_MAX];
            while let Ok((n, from)) = udp.recv_from(&mut buffer).await {
                let (request, mac) = tsig::server::unsigned_request(&buffer[..n]);
                let request = Message::from_vec(&request).expect("the request parses");
                let mut response = Message::new();
                response
                    .set_id(request.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(request.op_code())
                    .set_authoritative(true);
                response.add_queries(request.queries().to_vec());
                if request.op_code() == OpCode::Update {
                    response.set_response_code(update_code);
                }
                let signed = tsig::server::sign_response(&response.to_vec().expect("encodes"), &mac, &key, now_s(), 0);
                let _ = udp.send_to(&signed, from).await;
            }
        });
        address
    }

    /// The step of the tests against a fake primary at `address`, its key in `dir`.
    fn step_at(dir: &std::path::Path, address: SocketAddr, secret: &str) -> Rfc2136 {
        std::fs::write(dir.join("k.key"), secret).expect("write the key");
        let text = format!(
            "server = \"{address}\"\nzone = \"shop.example.\"\nname = \"www.shop.example.\"\nkey = {{ file = \"k.key\" }}\nkey_name = \"k\"\n[values]\n\"eu\" = [\"192.0.2.1\"]\n\"us\" = [\"192.0.2.2\"]\n"
        );
        let settings: Settings = toml::from_str(&text).expect("parses");
        let mut checker = Collect {
            folder: dir.to_path_buf(),
            regions: ["eu", "us"].iter().map(|r| r.to_string()).collect(),
            errors: Vec::new(),
        };
        settings
            .check("dns", &mut checker)
            .unwrap_or_else(|| panic!("{:?}", checker.errors))
    }

    #[tokio::test]
    async fn an_update_the_server_cannot_take_is_refused_with_the_fix() {
        let secret = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";
        let order = Order {
            generation: 3,
            kind: "failover".into(),
            from: Some("eu".into()),
            to: "us".into(),
            serving: vec!["us".into()],
            reason: "test".into(),
            force_data_loss: false,
        };
        for (code, mnemonic, fix) in [
            (ResponseCode::NotImp, "NOTIMP", "allow-update"),
            (ResponseCode::FormErr, "FORMERR", "server's log"),
            (ResponseCode::NotAuth, "NOTAUTH", "zone's primary"),
            (ResponseCode::Refused, "REFUSED", "update-policy"),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let key = Key::parse(secret, Some("k"), None).expect("key");
            let address = update_answering_server(key, code).await;
            let outcome = step_at(dir.path(), address, secret).run(&order).await;
            assert!(
                matches!(&outcome, Err(Failure::Refused(m)) if m.contains(&format!("({mnemonic})")) && m.contains(fix)),
                "{code}: {outcome:?}"
            );
        }
        // SERVFAIL: the server could not apply it now; another attempt may.
        let dir = tempfile::tempdir().expect("tempdir");
        let key = Key::parse(secret, Some("k"), None).expect("key");
        let address = update_answering_server(key, ResponseCode::ServFail).await;
        let outcome = step_at(dir.path(), address, secret).run(&order).await;
        assert!(matches!(&outcome, Err(Failure::Retryable(_))), "{outcome:?}");
    }

    /// A fake primary that knows no TSIG: it answers every request unsigned, with `code`.
    async fn tsig_unaware_server(code: ResponseCode) -> SocketAddr {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let address = udp.local_addr().expect("address");
        tokio::spawn(async move {
            let mut buffer = vec![0u8; MESSAGE_BYTES_MAX];
            while let Ok((n, from)) = udp.recv_from(&mut buffer).await {
                let (request, _) = tsig::server::unsigned_request(&buffer[..n]);
                let request = Message::from_vec(&request).expect("the request parses");
                let mut response = Message::new();
                response
                    .set_id(request.id())
                    .set_message_type(MessageType::Response)
                    .set_op_code(request.op_code())
                    .set_response_code(code);
                response.add_queries(request.queries().to_vec());
                let _ = udp.send_to(&response.to_vec().expect("encodes"), from).await;
            }
        });
        address
    }

    #[tokio::test]
    async fn a_server_that_knows_no_tsig_is_a_refusal_naming_the_key_not_a_timeout() {
        let secret = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";
        let order = Order {
            generation: 3,
            kind: "failover".into(),
            from: Some("eu".into()),
            to: "us".into(),
            serving: vec!["us".into()],
            reason: "test".into(),
            force_data_loss: false,
        };
        for (code, mnemonic) in [
            (ResponseCode::FormErr, "FORMERR"),
            (ResponseCode::NotImp, "NOTIMP"),
            (ResponseCode::Refused, "REFUSED"),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let address = tsig_unaware_server(code).await;
            let outcome = step_at(dir.path(), address, secret).run(&order).await;
            assert!(
                matches!(&outcome, Err(Failure::Refused(m))
                    if m.contains(&format!("answered {mnemonic} without a TSIG")) && m.contains("key 'k'")),
                "{code}: {outcome:?}"
            );
        }
        // An unsigned SERVFAIL says nothing about the key: still worth another attempt.
        let dir = tempfile::tempdir().expect("tempdir");
        let address = tsig_unaware_server(ResponseCode::ServFail).await;
        let outcome = step_at(dir.path(), address, secret).run(&order).await;
        assert!(matches!(&outcome, Err(Failure::Retryable(_))), "{outcome:?}");
    }

    #[tokio::test]
    async fn an_unsigned_refusal_over_udp_does_not_end_the_wait_for_the_signed_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";
        std::fs::write(dir.path().join("k.key"), secret).expect("write the key");
        let key = Key::parse(secret, Some("k"), None).expect("key");
        let address = forged_refusal_first_server(key).await;
        let text = format!(
            "server = \"{address}\"\nzone = \"shop.example.\"\nname = \"www.shop.example.\"\nkey = {{ file = \"k.key\" }}\nkey_name = \"k\"\n[values]\n\"eu\" = [\"192.0.2.1\"]\n\"us\" = [\"192.0.2.2\"]\n"
        );
        let settings: Settings = toml::from_str(&text).expect("parses");
        let mut checker = Collect {
            folder: dir.path().to_path_buf(),
            regions: ["eu", "us"].iter().map(|r| r.to_string()).collect(),
            errors: Vec::new(),
        };
        let step = settings
            .check("dns", &mut checker)
            .unwrap_or_else(|| panic!("{:?}", checker.errors));
        let name = parse_name("www.shop.example.").expect("name");
        let values = step
            .query(address, &name, RecordType::A)
            .await
            .expect("the signed answer counts");
        assert_eq!(canonical_set(&values), canonical_set(&[a("192.0.2.2")]));
    }

    #[tokio::test]
    async fn a_truncated_udp_answer_is_asked_again_over_tcp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = "2HK0YGgkgF7e+w1Yk1tBF5h5qGFQf3c1l0jC2hL6R3A=";
        std::fs::write(dir.path().join("k.key"), secret).expect("write the key");
        let key = Key::parse(secret, Some("k"), None).expect("key");
        let (address, mut seen) = truncating_server(key).await;
        let text = format!(
            "server = \"{address}\"\nzone = \"shop.example.\"\nname = \"www.shop.example.\"\nkey = {{ file = \"k.key\" }}\nkey_name = \"k\"\n[values]\n\"eu\" = [\"192.0.2.1\"]\n\"us\" = [\"192.0.2.2\"]\n"
        );
        let settings: Settings = toml::from_str(&text).expect("parses");
        let mut checker = Collect {
            folder: dir.path().to_path_buf(),
            regions: ["eu", "us"].iter().map(|r| r.to_string()).collect(),
            errors: Vec::new(),
        };
        let step = settings
            .check("dns", &mut checker)
            .unwrap_or_else(|| panic!("{:?}", checker.errors));
        let name = parse_name("www.shop.example.").expect("name");
        let values = step.query(address, &name, RecordType::A).await.expect("answered");
        assert_eq!(canonical_set(&values), canonical_set(&[a("192.0.2.2")]));
        assert_eq!(seen.recv().await, Some("udp"));
        assert_eq!(seen.recv().await, Some("tcp"));
    }
}
