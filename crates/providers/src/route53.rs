//! `route53`: points a record set of a Route 53 hosted zone (A, AAAA or CNAME values, or an
//! alias to a load balancer) at the active region's value. `route53_failover_health`: drives
//! Route 53 failover records through the health check the primary record uses, as Route 53
//! ARC routing controls do.
//!
//! # How `route53` is fenced
//! Beside the record the step keeps a *fence record*, a TXT record (default
//! `_switchyard.<name>`) holding the generation and region of the last write and a digest of
//! the value written. One run:
//! 1. reads the record and the fence record (`ListResourceRecordSets`);
//! 2. decides ([`decide`], pure): a fence newer than the order's generation, or a record that
//!    no longer holds what the fence says was written (someone else changed it), is `Fenced`
//!    and nothing is written; a record that already holds the value only moves the fence up;
//! 3. sends one change batch that DELETEs exactly the record and fence it read and CREATEs the
//!    new ones. Route 53 applies a batch all or nothing and refuses a DELETE whose values do not
//!    match, so a controller whose read is stale has its whole batch refused (`Fenced`, with
//!    Route 53's error text) instead of overwriting a newer write;
//! 4. polls `GetChange` until `INSYNC` (bounded by `insync_timeout_ms`), then reads both
//!    records back and reports what it saw.
//!
//! `route53_failover_health` reads the health check (`GetHealthCheck`) and, when it differs,
//! sends `UpdateHealthCheck` with the `HealthCheckVersion` it read (Route 53 refuses a stale
//! version: `HealthCheckVersionMismatch` → `Fenced`), then reads it back; its detail says that
//! Route 53 applies the setting to DNS at its next evaluation of the check (the step does not
//! wait for that: `GetHealthCheckStatus` reports each checker's own measurement, is documented as
//! a development aid not fit for production polling, and cannot read calculated checks). The standby region
//! being active sets `Inverted` (the primary's check reads unhealthy, so Route 53 answers with
//! the secondary record); the primary being active clears it, and with
//! `force_primary_healthy` also sets `Disabled` (Route 53 then treats the check as healthy
//! whatever it measures).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::Deserialize;
use sha2::Digest as _;
use toml::Spanned;

use crate::Checker;
use crate::Failure;
use crate::aws::{self, Access};
#[cfg(feature = "aws")]
use crate::{Order, Outcome};

/// The SDK client (nothing in a build without AWS support).
#[cfg(feature = "aws")]
type SdkClient = aws_sdk_route53::Client;
#[cfg(not(feature = "aws"))]
type SdkClient = ();

/// Default bound on waiting for `INSYNC` after a change, in milliseconds (Route 53 usually
/// takes under a minute).
pub const INSYNC_TIMEOUT_MS_DEFAULT: u64 = 120_000;
/// Largest `insync_timeout_ms`.
pub const INSYNC_TIMEOUT_MS_MAX: u64 = 900_000;
/// First wait between two `GetChange` calls; doubles up to [`INSYNC_POLL_MS_MAX`].
pub const INSYNC_POLL_MS_FIRST: u64 = 250;
/// Longest wait between two `GetChange` calls.
pub const INSYNC_POLL_MS_MAX: u64 = 5_000;
/// Default TTL of the record set, in seconds.
pub const TTL_S_DEFAULT: i64 = 60;
/// Largest TTL Route 53 accepts, in seconds.
pub const TTL_S_MAX: i64 = 2_147_483_647;
/// TTL of the fence record, in seconds (resolvers never need it).
pub const FENCE_TTL_S: i64 = 300;
/// Most values of one record set per region.
pub const VALUES_MAX: usize = 100;
/// Longest DNS name, in bytes, with the final dot.
pub const NAME_BYTES_MAX: usize = 254;
/// Longest hosted zone or health check id, in bytes.
pub const ID_BYTES_MAX: usize = 64;
/// Hex digits of the value digest kept in the fence record.
const DIGEST_HEX_LEN: usize = 16;
/// Record types the step writes.
pub const RECORD_TYPES: &[&str] = &["A", "AAAA", "CNAME"];
/// The AWS region Route 53's API is signed for (it is a global service).
pub const SIGNING_REGION_DEFAULT: &str = "us-east-1";

aws::aws_settings! {
    /// `[runbook.route53]`.
    pub struct Settings {
        /// The hosted zone, like `Z0123456789ABCDEFGHIJ` (or `/hostedzone/Z...`).
        #[serde(default)]
        pub zone_id: Option<Spanned<String>>,
        /// Or the hosted zone's name, like `example.com`, looked up once with
        /// `ListHostedZonesByName` (exactly one zone of that name must exist).
        #[serde(default)]
        pub zone: Option<Spanned<String>>,
        /// The record's name, like `shop.example.com` (a final dot is added).
        pub name: Spanned<String>,
        /// `A`, `AAAA` or `CNAME`.
        #[serde(rename = "type")]
        pub record_type: Spanned<String>,
        /// Seconds; not for aliases.
        #[serde(default)]
        pub ttl: Option<Spanned<i64>>,
        /// Per region the record's value (a string) or values (a list).
        #[serde(default)]
        pub values: Option<Spanned<BTreeMap<String, Spanned<Values>>>>,
        /// Per region an alias target instead of values.
        #[serde(default)]
        pub alias: Option<Spanned<BTreeMap<String, Spanned<AliasSettings>>>>,
        /// The TXT record holding the fence; default `_switchyard.<name>`.
        #[serde(default)]
        pub fence_record: Option<Spanned<String>>,
        #[serde(default)]
        pub insync_timeout_ms: Option<Spanned<u64>>,
    }
}

/// One value or a list of values.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Values {
    One(String),
    Many(Vec<String>),
}

/// An alias target: a load balancer, CloudFront distribution or another record.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasSettings {
    /// The target's hosted zone (an ELB's canonical hosted zone id, like `Z35SXDOTRQ7X7K`).
    pub zone_id: String,
    pub dns_name: String,
    #[serde(default)]
    pub evaluate_target_health: bool,
}

/// What a record set holds, normalised so that equal contents compare equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordData {
    Values {
        ttl: i64,
        /// Canonical and sorted.
        values: Vec<String>,
    },
    Alias {
        zone_id: String,
        /// Lowercase with a final dot.
        dns_name: String,
        evaluate_target_health: bool,
    },
}

impl RecordData {
    /// Words for messages.
    pub fn describe(&self) -> String {
        match self {
            RecordData::Values { ttl, values } => format!("{} (TTL {ttl})", values.join(", ")),
            RecordData::Alias { zone_id, dns_name, .. } => format!("alias {dns_name} (zone {zone_id})"),
        }
    }

    /// The digest the fence record keeps of the value written.
    pub fn digest(&self, record_type: &str) -> String {
        let text = match self {
            RecordData::Values { ttl, values } => format!("{record_type} {ttl} {}", values.join(",")),
            RecordData::Alias {
                zone_id,
                dns_name,
                evaluate_target_health,
            } => format!("{record_type} alias {zone_id} {dns_name} {evaluate_target_health}"),
        };
        let hash = sha2::Sha256::digest(text.as_bytes());
        hex::encode(hash)[..DIGEST_HEX_LEN].to_string()
    }
}

/// What the fence record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub generation: u64,
    pub region: String,
    pub digest: String,
}

impl Fence {
    /// The TXT value, quoted as Route 53 wants it.
    pub fn to_txt(&self) -> String {
        format!(
            "\"switchyard generation={} region={} sha256={}\"",
            self.generation, self.region, self.digest
        )
    }

    /// Reads a TXT value written by [`Fence::to_txt`] (quotes optional).
    pub fn parse(txt: &str) -> Option<Fence> {
        let text = txt.trim().trim_matches('"');
        let mut words = text.split_whitespace();
        if words.next()? != "switchyard" {
            return None;
        }
        let (mut generation, mut region, mut digest) = (None, None, None);
        for word in words {
            let (key, value) = word.split_once('=')?;
            match key {
                "generation" => generation = value.parse().ok(),
                "region" => region = Some(value.to_string()),
                "sha256" => digest = Some(value.to_string()),
                _ => {}
            }
        }
        Some(Fence {
            generation: generation?,
            region: region?,
            digest: digest?,
        })
    }
}

/// What a run read, as plain data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub record: Option<RecordData>,
    /// The fence record's TXT value(s), joined; `None` when there is none.
    pub fence: Option<String>,
}

/// What to do, decided from a [`View`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The record holds the value and the fence is at this generation: nothing to write.
    Done,
    /// Write the record (when `record`) and the fence (always) in one batch.
    Write {
        record: bool,
    },
    Fenced(String),
}

/// The decision of one run (pure). `desired` is the order's region's value, `known` every
/// configured region's value (a record Switchyard never wrote may be taken over only when it
/// holds one of them).
pub fn decide(
    view: &View,
    record_type: &str,
    desired: &RecordData,
    known: &[&RecordData],
    generation: u64,
) -> Decision {
    let fence = match &view.fence {
        None => None,
        Some(txt) => match Fence::parse(txt) {
            Some(fence) => Some(fence),
            None => {
                return Decision::Fenced(format!(
                    "the fence record holds {txt}, which Switchyard did not write; nothing overwritten (delete it or set fence_record to another name)"
                ));
            }
        },
    };
    if let Some(fence) = &fence {
        if fence.generation > generation {
            return Decision::Fenced(format!(
                "generation {} (region {}) already wrote the record; this order's generation {generation} is stale",
                fence.generation, fence.region
            ));
        }
        let unchanged = view
            .record
            .as_ref()
            .is_some_and(|r| r.digest(record_type) == fence.digest);
        if !unchanged {
            let holds = view.record.as_ref().map_or("nothing".to_string(), RecordData::describe);
            return Decision::Fenced(format!(
                "someone else changed the record since generation {} wrote it for region {}: it holds {holds}; nothing overwritten (set it back, or delete the fence record to let Switchyard take the record over)",
                fence.generation, fence.region
            ));
        }
    } else if let Some(record) = &view.record
        && !known.contains(&record)
    {
        return Decision::Fenced(format!(
            "the record holds {}, which is none of the configured regions' values, and Switchyard never wrote it (no fence record); nothing overwritten (set it to one of the configured values, or fix the step's values)",
            record.describe()
        ));
    }
    let holds = view.record.as_ref() == Some(desired);
    let fenced_here = fence.as_ref().is_some_and(|f| f.generation == generation);
    if holds && fenced_here {
        Decision::Done
    } else {
        Decision::Write { record: !holds }
    }
}

/// Whether `view` shows this order's own write: the record holds `desired` and the fence
/// record says generation `generation` wrote exactly that value. A batch refused after such a
/// read was a resend of one already applied, not a concurrent writer's.
pub fn own_write_applied(view: &View, record_type: &str, desired: &RecordData, generation: u64) -> bool {
    view.record.as_ref() == Some(desired)
        && view
            .fence
            .as_deref()
            .and_then(Fence::parse)
            .is_some_and(|f| f.generation == generation && f.digest == desired.digest(record_type))
}

/// What a change batch Route 53 refused means, read back after the refusal (and after
/// [`own_write_applied`] said it was not this order's own earlier send): the record set changed
/// since this step read it — a concurrent writer, `Fenced` — or it did not, and then the batch
/// itself is what Route 53 refuses (a CNAME at the zone apex or beside another record, an alias
/// whose target does not exist): `Refused`, for an operator to fix the record's configuration,
/// not a fence that says a newer decision acted. Other failures are kept as they are.
pub fn judge_refused_batch(observed: &View, now: &View, name: &str, record_type: &str, failure: Failure) -> Failure {
    if now != observed {
        let text = match &failure {
            Failure::Retryable(text) | Failure::Fenced(text) | Failure::Refused(text) => text,
        };
        return Failure::Fenced(format!(
            "{name} {record_type} changed while this step acted (now {}); Route 53 refused the stale batch: {text}",
            now.record.as_ref().map_or("nothing".into(), RecordData::describe)
        ));
    }
    // Only `InvalidChangeBatch` (read as a fence) is the batch itself; an access or throttling
    // refusal stays what it is.
    let Failure::Fenced(text) = failure else {
        return failure;
    };
    Failure::Refused(format!(
        "Route 53 refused the change batch for {name} {record_type} although nothing changed since this step read it, so the batch itself is invalid there (a CNAME at the zone apex or beside another record of that name, an alias to a target that does not exist, a value Route 53 does not take): fix the step's record and run the order again. {text}"
    ))
}

/// Lowercase with one final dot; Route 53's `\052` escape read back as `*`.
pub fn normalize_name(name: &str) -> String {
    let mut name = name.trim().to_ascii_lowercase().replace("\\052", "*");
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

/// Why `name` is not a DNS name Route 53 takes, if it is not.
fn check_name(name: &str) -> Result<(), String> {
    let name = normalize_name(name);
    if name.len() > NAME_BYTES_MAX {
        return Err(format!("is longer than {NAME_BYTES_MAX} bytes"));
    }
    let labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    if labels.len() < 2 {
        return Err("is not a fully qualified name (like shop.example.com)".into());
    }
    for (index, label) in labels.iter().enumerate() {
        let wildcard = index == 0 && *label == "*";
        let ok = !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !wildcard && !ok {
            return Err(format!("has an invalid label '{label}'"));
        }
    }
    Ok(())
}

/// A value in the form Route 53 returns it, or why it is not one for `record_type`.
fn canonical_value(record_type: &str, value: &str) -> Result<String, String> {
    match record_type {
        "A" => value
            .trim()
            .parse::<Ipv4Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| "is not an IPv4 address".into()),
        "AAAA" => value
            .trim()
            .parse::<Ipv6Addr>()
            .map(|ip| ip.to_string())
            .map_err(|_| "is not an IPv6 address".into()),
        _ => check_name(value).map(|()| normalize_name(value)),
    }
}

/// A hosted zone or health check id without its `/hostedzone/` prefix.
fn bare_id(id: &str) -> &str {
    id.trim()
        .trim_start_matches("/hostedzone/")
        .trim_start_matches("/change/")
}

fn valid_zone_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= ID_BYTES_MAX && id.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

impl Settings {
    /// Checks the settings of step `step`; reports every problem and returns the actuator.
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<Route53> {
        let what = format!("route53 step '{step}'");
        let zone_span = self
            .zone_id
            .as_ref()
            .or(self.zone.as_ref())
            .map_or(self.name.span(), Spanned::span);
        let table = aws::cover(zone_span.clone(), self.name.span());
        let (mut ok, access) = self
            .access_keys()
            .check(&what, table.clone(), Some(SIGNING_REGION_DEFAULT), checker);
        let zone = match (&self.zone_id, &self.zone) {
            (Some(zone_id), None) => {
                let id = bare_id(zone_id.get_ref()).to_string();
                if !valid_zone_id(&id) {
                    checker.error(
                        zone_id.span(),
                        format!("{what}: zone_id '{}' is not a hosted zone id", zone_id.get_ref()),
                        "copy the hosted zone's id from `aws route53 list-hosted-zones`, like Z0123456789ABCDEFGHIJ"
                            .into(),
                    );
                    ok = false;
                }
                Zone::Id(id)
            }
            (None, Some(zone)) => {
                if let Err(problem) = check_name(zone.get_ref()) {
                    checker.error(
                        zone.span(),
                        format!("{what}: zone '{}' {problem}", zone.get_ref()),
                        "write the hosted zone's name, like example.com, or give zone_id".into(),
                    );
                    ok = false;
                }
                Zone::Name(normalize_name(zone.get_ref()))
            }
            (Some(zone_id), Some(zone)) => {
                checker.error(
                    aws::cover(zone_id.span(), zone.span()),
                    format!("{what}: both zone_id and zone are given"),
                    "keep one: zone_id = \"Z...\" (exact) or zone = \"example.com\" (looked up by name)".into(),
                );
                ok = false;
                Zone::Name(String::new())
            }
            (None, None) => {
                checker.error(
                    table.clone(),
                    format!("{what}: no hosted zone"),
                    "add zone_id = \"Z0123456789ABCDEFGHIJ\" or zone = \"example.com\"".into(),
                );
                ok = false;
                Zone::Name(String::new())
            }
        };
        if let Zone::Name(zone) = &zone
            && !zone.is_empty()
            && !(normalize_name(self.name.get_ref()) == *zone
                || normalize_name(self.name.get_ref()).ends_with(&format!(".{zone}")))
        {
            checker.error(
                self.name.span(),
                format!("{what}: name '{}' is not in zone '{zone}'", self.name.get_ref()),
                "name a record inside the hosted zone, or fix the zone".into(),
            );
            ok = false;
        }
        if let Err(problem) = check_name(self.name.get_ref()) {
            checker.error(
                self.name.span(),
                format!("{what}: name '{}' {problem}", self.name.get_ref()),
                "write the record's full name, like shop.example.com".into(),
            );
            ok = false;
        }
        let name = normalize_name(self.name.get_ref());
        let record_type = self.record_type.get_ref().to_ascii_uppercase();
        if !RECORD_TYPES.contains(&record_type.as_str()) {
            checker.error(
                self.record_type.span(),
                format!(
                    "{what}: type '{}' is not one the step writes",
                    self.record_type.get_ref()
                ),
                format!("use one of {}", RECORD_TYPES.join(", ")),
            );
            ok = false;
        }
        let fence_name = match &self.fence_record {
            None => format!("_switchyard.{}", name.trim_start_matches("*.")),
            Some(fence) => {
                if let Err(problem) = check_name(fence.get_ref()) {
                    checker.error(
                        fence.span(),
                        format!("{what}: fence_record '{}' {problem}", fence.get_ref()),
                        "name a TXT record in the same zone, like _switchyard.shop.example.com".into(),
                    );
                    ok = false;
                }
                normalize_name(fence.get_ref())
            }
        };
        if fence_name == name {
            checker.error(
                table.clone(),
                format!("{what}: fence_record is the record itself"),
                "name another record for the fence, like _switchyard.shop.example.com".into(),
            );
            ok = false;
        }
        let insync_timeout_ms = match &self.insync_timeout_ms {
            None => INSYNC_TIMEOUT_MS_DEFAULT,
            Some(timeout) if (1..=INSYNC_TIMEOUT_MS_MAX).contains(timeout.get_ref()) => *timeout.get_ref(),
            Some(timeout) => {
                checker.error(
                    timeout.span(),
                    format!("{what}: insync_timeout_ms = {} is out of range", timeout.get_ref()),
                    format!("use 1..={INSYNC_TIMEOUT_MS_MAX} milliseconds"),
                );
                ok = false;
                INSYNC_TIMEOUT_MS_DEFAULT
            }
        };
        let ttl = match &self.ttl {
            None => TTL_S_DEFAULT,
            Some(ttl) if (0..=TTL_S_MAX).contains(ttl.get_ref()) => *ttl.get_ref(),
            Some(ttl) => {
                checker.error(
                    ttl.span(),
                    format!("{what}: ttl = {} is out of range", ttl.get_ref()),
                    format!("use 0..={TTL_S_MAX} seconds (60 suits failover)"),
                );
                ok = false;
                TTL_S_DEFAULT
            }
        };
        let desired = self.check_targets(&what, &record_type, ttl, table, checker);
        if desired.is_none() {
            ok = false;
        }
        if !aws::check_built(&what, zone_span, checker) {
            return None;
        }
        if !ok {
            return None;
        }
        Some(Route53 {
            step: step.to_string(),
            zone,
            zone_id: tokio::sync::OnceCell::new(),
            name,
            record_type,
            desired: desired?,
            fence_name,
            insync_timeout_ms,
            aws: aws::SdkClient::new(access?),
            pending: std::sync::Mutex::new(None),
        })
    }

    /// Per region the record data, from `values` or `alias` (exactly one), covering every
    /// configured region.
    fn check_targets(
        &self,
        what: &str,
        record_type: &str,
        ttl: i64,
        table: std::ops::Range<usize>,
        checker: &mut dyn Checker,
    ) -> Option<BTreeMap<String, RecordData>> {
        let mut ok = true;
        let mut desired = BTreeMap::new();
        let (span, regions): (std::ops::Range<usize>, Vec<&String>) = match (&self.values, &self.alias) {
            (Some(values), None) => {
                for (region, value) in values.get_ref() {
                    let list = match value.get_ref() {
                        Values::One(one) => vec![one.clone()],
                        Values::Many(many) => many.clone(),
                    };
                    if list.is_empty() || list.len() > VALUES_MAX || (record_type == "CNAME" && list.len() != 1) {
                        checker.error(
                            value.span(),
                            format!("{what}: region '{region}' has {} values", list.len()),
                            format!("give 1..={VALUES_MAX} values (exactly one for a CNAME)"),
                        );
                        ok = false;
                        continue;
                    }
                    let mut canonical = Vec::new();
                    for item in &list {
                        match canonical_value(record_type, item) {
                            Ok(value) => canonical.push(value),
                            Err(problem) => {
                                checker.error(
                                    value.span(),
                                    format!("{what}: value '{item}' of region '{region}' {problem}"),
                                    format!("give a value a {record_type} record holds"),
                                );
                                ok = false;
                            }
                        }
                    }
                    canonical.sort();
                    canonical.dedup();
                    desired.insert(region.clone(), RecordData::Values { ttl, values: canonical });
                }
                (values.span(), values.get_ref().keys().collect())
            }
            (None, Some(alias)) => {
                if self.ttl.is_some() {
                    checker.error(
                        table.clone(),
                        format!("{what}: an alias record has no TTL of its own"),
                        "remove ttl (Route 53 uses the alias target's)".into(),
                    );
                    ok = false;
                }
                if record_type == "CNAME" {
                    checker.error(
                        self.record_type.span(),
                        format!("{what}: an alias record is of type A or AAAA"),
                        "write type = \"A\" (or \"AAAA\") for an alias".into(),
                    );
                    ok = false;
                }
                for (region, target) in alias.get_ref() {
                    let settings = target.get_ref();
                    let zone_id = bare_id(&settings.zone_id).to_string();
                    if !valid_zone_id(&zone_id) {
                        checker.error(
                            target.span(),
                            format!("{what}: alias zone_id '{}' of region '{region}' is not a hosted zone id", settings.zone_id),
                            "give the target's canonical hosted zone id (for a load balancer: `aws elbv2 describe-load-balancers`, CanonicalHostedZoneId)".into(),
                        );
                        ok = false;
                    }
                    if let Err(problem) = check_name(&settings.dns_name) {
                        checker.error(
                            target.span(),
                            format!(
                                "{what}: alias dns_name '{}' of region '{region}' {problem}",
                                settings.dns_name
                            ),
                            "give the target's DNS name, like shop-eu-123.eu-west-1.elb.amazonaws.com".into(),
                        );
                        ok = false;
                    }
                    desired.insert(
                        region.clone(),
                        RecordData::Alias {
                            zone_id,
                            dns_name: normalize_name(&settings.dns_name),
                            evaluate_target_health: settings.evaluate_target_health,
                        },
                    );
                }
                (alias.span(), alias.get_ref().keys().collect())
            }
            (Some(values), Some(_)) => {
                checker.error(
                    values.span(),
                    format!("{what} has both values and alias"),
                    "give values = { REGION = \"VALUE\", ... } or alias = { REGION = { zone_id = ..., dns_name = ... } }, not both".into(),
                );
                return None;
            }
            (None, None) => {
                checker.error(
                    table,
                    format!("{what} has neither values nor alias"),
                    "give the record's value per region: values = { us = \"203.0.113.10\", eu = \"198.51.100.7\" }"
                        .into(),
                );
                return None;
            }
        };
        for region in &regions {
            if !checker.regions().contains(region.as_str()) {
                checker.error(
                    span.clone(),
                    format!("{what}: '{region}' is not a configured region"),
                    format!(
                        "use the names of [[regions]]: {}",
                        checker.regions().iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
                ok = false;
            }
        }
        let missing: Vec<String> = checker
            .regions()
            .iter()
            .filter(|r| !desired.contains_key(r.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            checker.error(
                span,
                format!("{what} has no value for region(s) {}", missing.join(", ")),
                "give a value for every region that can become active".into(),
            );
            ok = false;
        }
        ok.then_some(desired)
    }
}

/// How the step names its hosted zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Zone {
    Id(String),
    /// Normalised (final dot).
    Name(String),
}

/// Most hosted zones read when looking one up by name (one `ListHostedZonesByName` page).
pub const ZONE_LOOKUP_ITEMS_MAX: i32 = 100;

/// The one zone called `name` among `zones` (id, name) as `ListHostedZonesByName` lists them
/// from `name` on; an error naming the fix when there is none or more than one.
pub fn pick_zone(name: &str, zones: &[(String, String)]) -> Result<String, String> {
    let matching: Vec<&str> = zones
        .iter()
        .filter(|(_, zone)| normalize_name(zone) == name)
        .map(|(id, _)| bare_id(id))
        .collect();
    match matching.as_slice() {
        [] => Err(format!(
            "no hosted zone is named {name}; create it, or give the step zone_id"
        )),
        [one] => Ok((*one).to_string()),
        many => Err(format!(
            "{} hosted zones are named {name} ({}); give the step the zone_id of the one to change",
            many.len(),
            many.join(", ")
        )),
    }
}

/// The `route53` step, ready to run.
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
pub struct Route53 {
    step: String,
    zone: Zone,
    /// The hosted zone's id: [`Zone::Id`]'s, or the one looked up for [`Zone::Name`].
    zone_id: tokio::sync::OnceCell<String>,
    /// Normalised.
    name: String,
    record_type: String,
    desired: BTreeMap<String, RecordData>,
    fence_name: String,
    insync_timeout_ms: u64,
    aws: aws::SdkClient<SdkClient>,
    /// A change this step made and has not yet seen `INSYNC`: (generation, change id). A retry
    /// of the same order then waits for it instead of claiming success early.
    pending: std::sync::Mutex<Option<(u64, String)>>,
}

impl std::fmt::Debug for Route53 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route53")
            .field("step", &self.step)
            .field("zone", &self.zone)
            .field("name", &self.name)
            .field("type", &self.record_type)
            .field("fence", &self.fence_name)
            .field("access", self.aws.access())
            .finish()
    }
}

/// What one read returned: the plain view and the record sets as Route 53 holds them (the
/// DELETEs of the change batch must match them exactly).
#[cfg(feature = "aws")]
#[derive(Clone, Debug)]
pub struct Observed {
    pub view: View,
    record: Option<aws_sdk_route53::types::ResourceRecordSet>,
    fence: Option<aws_sdk_route53::types::ResourceRecordSet>,
}

impl Route53 {
    /// The bound on waiting for `INSYNC`; the step's `timeout_ms` should be longer.
    pub fn insync_timeout_ms(&self) -> u64 {
        self.insync_timeout_ms
    }

    /// Reads, decides, writes and verifies.
    #[cfg(feature = "aws")]
    async fn run_live(&self, order: &Order) -> Outcome {
        let observed = self.observe().await?;
        self.apply(&observed, order).await
    }
}

aws::step_entry_points!(Route53, aws, "aws", aws::not_built());

/// Reads one record set for a watcher (`switchyard drill` following where the record points):
/// its values, or the alias target's DNS name.
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
pub struct RecordReader {
    zone: Zone,
    name: String,
    record_type: String,
    zone_id: tokio::sync::OnceCell<String>,
    aws: aws::SdkClient<SdkClient>,
}

aws::reader_credentials!(RecordReader);

impl RecordReader {
    /// `zone` is a hosted zone id or name (a name ends with a dot or holds one), `name` the
    /// record, `record_type` A, AAAA or CNAME.
    pub fn new(zone: &str, name: &str, record_type: &str, access: Access) -> Result<RecordReader, String> {
        let record_type = record_type.to_ascii_uppercase();
        if !RECORD_TYPES.contains(&record_type.as_str()) {
            return Err(format!(
                "type '{record_type}' is not one of {}",
                RECORD_TYPES.join(", ")
            ));
        }
        check_name(name).map_err(|problem| format!("record '{name}' {problem}"))?;
        let zone = if valid_zone_id(bare_id(zone)) {
            Zone::Id(bare_id(zone).to_string())
        } else {
            check_name(zone).map_err(|problem| format!("zone '{zone}' {problem}"))?;
            Zone::Name(normalize_name(zone))
        };
        if !cfg!(feature = "aws") {
            return Err(crate::aws::NOT_BUILT.into());
        }
        Ok(RecordReader {
            zone,
            name: normalize_name(name),
            record_type,
            zone_id: tokio::sync::OnceCell::new(),
            aws: aws::SdkClient::new(access),
        })
    }

    /// The record's values (sorted), or its alias target; empty when there is no such record.
    pub async fn read(&self) -> Result<Vec<String>, String> {
        #[cfg(feature = "aws")]
        {
            use aws_sdk_route53::types::RrType;
            let client = self.aws.get(aws_sdk_route53::Client::new).await;
            let zone_id = self
                .zone_id
                .get_or_try_init(|| async { resolve_zone(client, &self.zone).await })
                .await
                .map_err(|f| f.to_string())?;
            let set = read_set(client, zone_id, &self.name, RrType::from(self.record_type.as_str()))
                .await
                .map_err(|f| f.to_string())?;
            let Some(set) = set else {
                return Ok(Vec::new());
            };
            if let Some(alias) = set.alias_target() {
                return Ok(vec![normalize_name(alias.dns_name())]);
            }
            let mut values: Vec<String> = set.resource_records().iter().map(|r| r.value().to_string()).collect();
            values.sort();
            Ok(values)
        }
        #[cfg(not(feature = "aws"))]
        {
            Err(crate::aws::NOT_BUILT.into())
        }
    }
}

/// The hosted zone's id: given, or looked up by name with `ListHostedZonesByName`.
#[cfg(feature = "aws")]
async fn resolve_zone(client: &aws_sdk_route53::Client, zone: &Zone) -> Result<String, Failure> {
    match zone {
        Zone::Id(id) => Ok(id.clone()),
        Zone::Name(name) => {
            let answer = client
                .list_hosted_zones_by_name()
                .dns_name(name)
                .max_items(ZONE_LOOKUP_ITEMS_MAX)
                .send()
                .await
                .map_err(|e| aws::failure("Route 53 ListHostedZonesByName", &e))?;
            let zones: Vec<(String, String)> = answer
                .hosted_zones()
                .iter()
                .map(|zone| (zone.id().to_string(), zone.name().to_string()))
                .collect();
            pick_zone(name, &zones).map_err(Failure::Refused)
        }
    }
}

/// The record set of exactly `name` and `kind` in the zone, if any.
#[cfg(feature = "aws")]
async fn read_set(
    client: &aws_sdk_route53::Client,
    zone_id: &str,
    name: &str,
    kind: aws_sdk_route53::types::RrType,
) -> Result<Option<aws_sdk_route53::types::ResourceRecordSet>, Failure> {
    let answer = client
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .start_record_name(name)
        .start_record_type(kind.clone())
        .max_items(1)
        .send()
        .await
        .map_err(|e| aws::failure("Route 53 ListResourceRecordSets", &e))?;
    Ok(answer
        .resource_record_sets()
        .iter()
        .find(|set| normalize_name(set.name()) == name && *set.r#type() == kind)
        .cloned())
}

#[cfg(feature = "aws")]
mod live {
    use std::time::{Duration, Instant};

    use aws_sdk_route53::types::{
        AliasTarget, Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet, RrType,
    };

    use super::*;

    impl Route53 {
        async fn client(&self) -> &aws_sdk_route53::Client {
            self.aws.get(aws_sdk_route53::Client::new).await
        }

        /// The hosted zone's id, looked up by name the first time when the step names it.
        async fn zone_id(&self) -> Result<&str, Failure> {
            let id = self
                .zone_id
                .get_or_try_init(|| async { resolve_zone(self.client().await, &self.zone).await })
                .await?;
            Ok(id.as_str())
        }

        /// Reads the record and the fence record.
        pub async fn observe(&self) -> Result<Observed, Failure> {
            let record = self.read(&self.name, RrType::from(self.record_type.as_str())).await?;
            let fence = self.read(&self.fence_name, RrType::Txt).await?;
            let view = View {
                record: match &record {
                    None => None,
                    Some(set) => Some(self.data_of(set)?),
                },
                fence: fence.as_ref().map(|set| {
                    set.resource_records()
                        .iter()
                        .map(|r| r.value().to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                }),
            };
            Ok(Observed { view, record, fence })
        }

        /// The record set of exactly `name` and `kind`, if any.
        async fn read(&self, name: &str, kind: RrType) -> Result<Option<ResourceRecordSet>, Failure> {
            read_set(self.client().await, self.zone_id().await?, name, kind).await
        }

        /// The plain data of a record set read back; a record with a routing policy is not
        /// one this step manages.
        fn data_of(&self, set: &ResourceRecordSet) -> Result<RecordData, Failure> {
            if let Some(identifier) = set.set_identifier() {
                return Err(Failure::Refused(format!(
                    "{} {} has a routing policy (SetIdentifier '{identifier}'); the route53 step sets simple records (use route53_failover_health for failover records)",
                    self.name, self.record_type
                )));
            }
            Ok(match set.alias_target() {
                Some(alias) => RecordData::Alias {
                    zone_id: bare_id(alias.hosted_zone_id()).to_string(),
                    dns_name: normalize_name(alias.dns_name()),
                    evaluate_target_health: alias.evaluate_target_health(),
                },
                None => {
                    let mut values: Vec<String> = set
                        .resource_records()
                        .iter()
                        .map(|r| {
                            canonical_value(&self.record_type, r.value()).unwrap_or_else(|_| r.value().to_string())
                        })
                        .collect();
                    values.sort();
                    RecordData::Values {
                        ttl: set.ttl().unwrap_or_default(),
                        values,
                    }
                }
            })
        }

        /// Acts on what `observed` shows for `order`; public so tests can hold a read back while
        /// another controller writes (a stale read must be fenced by Route 53).
        pub async fn apply(&self, observed: &Observed, order: &Order) -> Outcome {
            let Some(desired) = self.desired.get(&order.to) else {
                return Err(Failure::Refused(format!(
                    "route53 step '{}' has no value for region '{}'",
                    self.step, order.to
                )));
            };
            let known: Vec<&RecordData> = self.desired.values().collect();
            let started = Instant::now();
            match decide(&observed.view, &self.record_type, desired, &known, order.generation) {
                Decision::Fenced(reason) => {
                    Err(Failure::Fenced(format!("{} {}: {reason}", self.name, self.record_type)))
                }
                Decision::Done => {
                    let waited = self.finish_pending(order.generation).await?;
                    Ok(format!(
                        "{} {} already holds {} (region {}, generation {}){waited}",
                        self.name,
                        self.record_type,
                        desired.describe(),
                        order.to,
                        order.generation
                    ))
                }
                Decision::Write { record } => {
                    let batch = self.batch(observed, desired, record, order)?;
                    let sent = self
                        .client()
                        .await
                        .change_resource_record_sets()
                        .hosted_zone_id(self.zone_id().await?)
                        .change_batch(batch)
                        .send()
                        .await;
                    let change_id = match sent {
                        Ok(answer) => answer
                            .change_info()
                            .map(|c| bare_id(c.id()).trim().to_string())
                            .unwrap_or_default(),
                        Err(error) => return self.refused_change(observed, desired, order, &error).await,
                    };
                    if change_id.is_empty() {
                        // Nothing to wait for, ever: no pending change is kept (an older one
                        // of this generation was superseded by this batch). The next attempt
                        // reads the record back and decides from what Route 53 holds.
                        *self.lock_pending() = None;
                        return Err(Failure::Retryable(format!(
                            "Route 53 accepted the change batch for {} {} but its answer has no change id (ChangeInfo/Id), so INSYNC cannot be awaited: a malformed answer (check endpoint_url, or a proxy between); the next attempt reads the record back",
                            self.name, self.record_type
                        )));
                    }
                    *self.lock_pending() = Some((order.generation, change_id.clone()));
                    self.wait_insync(&change_id).await?;
                    *self.lock_pending() = None;
                    self.verify(desired, order).await?;
                    Ok(format!(
                        "{} {} set to {} (region {}, generation {}): change {change_id} INSYNC after {} ms",
                        self.name,
                        self.record_type,
                        desired.describe(),
                        order.to,
                        order.generation,
                        started.elapsed().as_millis()
                    ))
                }
            }
        }

        fn lock_pending(&self) -> std::sync::MutexGuard<'_, Option<(u64, String)>> {
            self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// Waits for a change of this generation that an earlier attempt sent and did not see
        /// `INSYNC`.
        async fn finish_pending(&self, generation: u64) -> Result<String, Failure> {
            let pending = self.lock_pending().clone();
            match pending {
                Some((g, change_id)) if g == generation && !change_id.is_empty() => {
                    self.wait_insync(&change_id).await?;
                    *self.lock_pending() = None;
                    Ok(format!("; change {change_id} INSYNC"))
                }
                _ => Ok(String::new()),
            }
        }

        /// One batch: DELETE what was read, CREATE what is wanted, for the record (when
        /// `record`) and the fence.
        fn batch(
            &self,
            observed: &Observed,
            desired: &RecordData,
            record: bool,
            order: &Order,
        ) -> Result<ChangeBatch, Failure> {
            let built =
                |what: &str, e: aws_sdk_route53::error::BuildError| Failure::Refused(format!("build {what}: {e}"));
            let mut changes = Vec::new();
            let mut change = |action: ChangeAction, set: ResourceRecordSet| {
                Change::builder()
                    .action(action)
                    .resource_record_set(set)
                    .build()
                    .map(|c| changes.push(c))
                    .map_err(|e| built("change", e))
            };
            if record {
                if let Some(old) = &observed.record {
                    change(ChangeAction::Delete, old.clone())?;
                }
                change(
                    ChangeAction::Create,
                    self.record_set(desired).map_err(|e| built("record set", e))?,
                )?;
            }
            if let Some(old) = &observed.fence {
                change(ChangeAction::Delete, old.clone())?;
            }
            let fence = Fence {
                generation: order.generation,
                region: order.to.clone(),
                digest: desired.digest(&self.record_type),
            };
            let fence_set = ResourceRecordSet::builder()
                .name(&self.fence_name)
                .r#type(RrType::Txt)
                .ttl(FENCE_TTL_S)
                .resource_records(
                    ResourceRecord::builder()
                        .value(fence.to_txt())
                        .build()
                        .map_err(|e| built("fence", e))?,
                )
                .build()
                .map_err(|e| built("fence", e))?;
            change(ChangeAction::Create, fence_set)?;
            ChangeBatch::builder()
                .comment(format!(
                    "switchyard generation {}: {} to {}",
                    order.generation, order.kind, order.to
                ))
                .set_changes(Some(changes))
                .build()
                .map_err(|e| built("change batch", e))
        }

        fn record_set(&self, data: &RecordData) -> Result<ResourceRecordSet, aws_sdk_route53::error::BuildError> {
            let builder = ResourceRecordSet::builder()
                .name(&self.name)
                .r#type(RrType::from(self.record_type.as_str()));
            match data {
                RecordData::Values { ttl, values } => {
                    let mut builder = builder.ttl(*ttl);
                    for value in values {
                        builder = builder.resource_records(ResourceRecord::builder().value(value).build()?);
                    }
                    builder.build()
                }
                RecordData::Alias {
                    zone_id,
                    dns_name,
                    evaluate_target_health,
                } => builder
                    .alias_target(
                        AliasTarget::builder()
                            .hosted_zone_id(zone_id)
                            .dns_name(dns_name)
                            .evaluate_target_health(*evaluate_target_health)
                            .build()?,
                    )
                    .build(),
            }
        }

        /// A refused change batch: fenced when Route 53 says the batch did not match, or when
        /// the record or fence changed since this run read them (a concurrent writer) — unless
        /// what changed them was this very batch: the SDK sends a request again when its answer
        /// is lost (a timeout, a reset connection), and the second send of a batch Route 53
        /// already applied is refused (`InvalidChangeBatch`: its DELETE no longer matches).
        /// The record holding the order's value under a fence of this generation is this
        /// order's own write: success, not a fence.
        async fn refused_change<E, R>(
            &self,
            observed: &Observed,
            desired: &RecordData,
            order: &Order,
            error: &aws_sdk_route53::error::SdkError<E, R>,
        ) -> Outcome
        where
            E: aws_sdk_route53::error::ProvideErrorMetadata + std::error::Error + 'static,
            R: std::fmt::Debug,
        {
            let failure = aws::failure("Route 53 ChangeResourceRecordSets", error);
            if aws::error_code(error).is_none() {
                return Err(failure);
            }
            let Ok(now) = self.observe().await else {
                return Err(failure);
            };
            if own_write_applied(&now.view, &self.record_type, desired, order.generation) {
                return Ok(format!(
                    "{} {} set to {} (region {}, generation {}): an earlier send of this change batch was applied (Route 53 refused the resend: {failure}); read back",
                    self.name,
                    self.record_type,
                    desired.describe(),
                    order.to,
                    order.generation
                ));
            }
            Err(judge_refused_batch(
                &observed.view,
                &now.view,
                &self.name,
                &self.record_type,
                failure,
            ))
        }

        /// Polls `GetChange` until `INSYNC`, at most `insync_timeout_ms`.
        async fn wait_insync(&self, change_id: &str) -> Result<(), Failure> {
            if change_id.is_empty() {
                return Err(Failure::Retryable("Route 53 returned no change id to wait for".into()));
            }
            let started = Instant::now();
            let deadline = started + Duration::from_millis(self.insync_timeout_ms);
            let mut poll_ms = INSYNC_POLL_MS_FIRST;
            loop {
                let answer = self
                    .client()
                    .await
                    .get_change()
                    .id(change_id)
                    .send()
                    .await
                    .map_err(|e| aws::failure("Route 53 GetChange", &e))?;
                if answer.change_info().map(|c| c.status()) == Some(&ChangeStatus::Insync) {
                    return Ok(());
                }
                let now = Instant::now();
                if now >= deadline {
                    return Err(Failure::Retryable(format!(
                        "change {change_id} is still PENDING after {} ms (insync_timeout_ms)",
                        started.elapsed().as_millis()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(poll_ms).min(deadline - now)).await;
                poll_ms = (poll_ms * 2).min(INSYNC_POLL_MS_MAX);
            }
        }

        /// Reads both records back: the record must hold the value and the fence this order.
        async fn verify(&self, desired: &RecordData, order: &Order) -> Result<(), Failure> {
            let now = self.observe().await?;
            let fence = now.view.fence.as_deref().and_then(Fence::parse);
            if now.view.record.as_ref() == Some(desired)
                && fence.as_ref().is_some_and(|f| f.generation == order.generation)
            {
                return Ok(());
            }
            let holds = now.view.record.as_ref().map_or("nothing".into(), RecordData::describe);
            match fence {
                Some(f) if f.generation > order.generation => Err(Failure::Fenced(format!(
                    "{} {}: generation {} wrote after this step (it holds {holds})",
                    self.name, self.record_type, f.generation
                ))),
                _ => Err(Failure::Retryable(format!(
                    "{} {} reads back {holds} after an INSYNC change to {}",
                    self.name,
                    self.record_type,
                    desired.describe()
                ))),
            }
        }
    }
}

aws::aws_settings! {
    /// `[runbook.route53_failover_health]`.
    pub struct FailoverHealthSettings {
        /// The health check the PRIMARY failover record uses.
        pub health_check_id: Spanned<String>,
        /// The region the PRIMARY record points at.
        pub primary: Spanned<String>,
        /// While the primary is active, also set `Disabled` (Route 53 treats the check as healthy,
        /// like an ARC routing control that is On).
        #[serde(default)]
        pub force_primary_healthy: bool,
    }
}

/// The health check's two switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthSwitches {
    pub inverted: bool,
    pub disabled: bool,
}

impl HealthSwitches {
    /// What the primary's health check should say while `active` is the active region.
    pub fn wanted(active: &str, primary: &str, force_primary_healthy: bool) -> HealthSwitches {
        if active == primary {
            HealthSwitches {
                inverted: false,
                disabled: force_primary_healthy,
            }
        } else {
            HealthSwitches {
                inverted: true,
                disabled: false,
            }
        }
    }
}

impl std::fmt::Display for HealthSwitches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inverted={} Disabled={}", self.inverted, self.disabled)
    }
}

impl FailoverHealthSettings {
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<FailoverHealth> {
        let what = format!("route53_failover_health step '{step}'");
        let table = aws::cover(self.health_check_id.span(), self.primary.span());
        let (mut ok, access) = self
            .access_keys()
            .check(&what, table, Some(SIGNING_REGION_DEFAULT), checker);
        let id = self.health_check_id.get_ref().trim();
        let id_ok = !id.is_empty() && id.len() <= ID_BYTES_MAX && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
        if !id_ok {
            checker.error(
                self.health_check_id.span(),
                format!("{what}: health_check_id '{id}' is not a health check id"),
                "copy it from `aws route53 list-health-checks`, like 1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718".into(),
            );
            ok = false;
        }
        if !checker.regions().contains(self.primary.get_ref()) {
            checker.error(
                self.primary.span(),
                format!(
                    "{what}: primary '{}' is not a configured region",
                    self.primary.get_ref()
                ),
                "name the region whose PRIMARY failover record uses this health check".into(),
            );
            ok = false;
        }
        if !aws::check_built(&what, self.health_check_id.span(), checker) {
            return None;
        }
        if !ok {
            return None;
        }
        Some(FailoverHealth {
            health_check_id: id.to_string(),
            primary: self.primary.get_ref().clone(),
            force_primary_healthy: self.force_primary_healthy,
            aws: aws::SdkClient::new(access?),
        })
    }
}

/// The `route53_failover_health` step, ready to run.
#[cfg_attr(not(feature = "aws"), allow(dead_code))]
#[derive(Debug)]
pub struct FailoverHealth {
    health_check_id: String,
    primary: String,
    force_primary_healthy: bool,
    aws: aws::SdkClient<SdkClient>,
}

aws::step_entry_points!(FailoverHealth, aws, "aws", aws::not_built());

impl FailoverHealth {
    /// What the detail of a run that changed the check adds: the change reaches DNS only when
    /// Route 53 next evaluates the check. `request_interval_s`: the check's `RequestInterval`
    /// (none for a calculated or CloudWatch-alarm check).
    pub fn applies_later(request_interval_s: Option<i32>) -> String {
        let when = match request_interval_s {
            Some(s) if s > 0 => format!("its next evaluation of the check (request interval {s} s)"),
            _ => "its next evaluation of the check".to_string(),
        };
        format!(
            "; Route 53 applies this to DNS answers at {when}, not at once, and resolvers follow after the failover records' TTL: the step has read the setting back, it does not wait for that"
        )
    }

    #[cfg(feature = "aws")]
    async fn read(&self, client: &aws_sdk_route53::Client) -> Result<(i64, HealthSwitches, Option<i32>), Failure> {
        let answer = client
            .get_health_check()
            .health_check_id(&self.health_check_id)
            .send()
            .await
            .map_err(|e| aws::failure("Route 53 GetHealthCheck", &e))?;
        let check = answer
            .health_check()
            .ok_or_else(|| Failure::Retryable("Route 53 GetHealthCheck returned no health check".into()))?;
        let config = check.health_check_config();
        Ok((
            check.health_check_version(),
            HealthSwitches {
                inverted: config.and_then(|c| c.inverted()).unwrap_or(false),
                disabled: config.and_then(|c| c.disabled()).unwrap_or(false),
            },
            config.and_then(|c| c.request_interval()),
        ))
    }

    #[cfg(feature = "aws")]
    async fn run_live(&self, order: &Order) -> Outcome {
        let client = self.aws.get(aws_sdk_route53::Client::new).await;
        let wanted = HealthSwitches::wanted(&order.to, &self.primary, self.force_primary_healthy);
        let (version, now, interval) = self.read(client).await?;
        let id = &self.health_check_id;
        if now == wanted {
            return Ok(format!(
                "health check {id} already {wanted} (region {} active)",
                order.to
            ));
        }
        let sent = client
            .update_health_check()
            .health_check_id(id)
            .health_check_version(version)
            .inverted(wanted.inverted)
            .disabled(wanted.disabled)
            .send()
            .await;
        if let Err(error) = sent {
            let failure = aws::failure("Route 53 UpdateHealthCheck", &error);
            // The SDK sends a request again when its answer is lost (a timeout, a 5xx); the
            // second send of an update Route 53 applied carries a version that is stale by
            // then. The check holding what this order wants is that update, not a fence.
            if aws::error_code(&error) == Some("HealthCheckVersionMismatch")
                && let Ok((_, after, _)) = self.read(client).await
                && after == wanted
            {
                return Ok(format!(
                    "health check {id} set to {wanted} (was {now}; region {} active, generation {}): Route 53 refused a resend of the update it had applied ({failure}); read back{}",
                    order.to,
                    order.generation,
                    FailoverHealth::applies_later(interval)
                ));
            }
            return Err(failure);
        }
        let (_, after, interval) = self.read(client).await?;
        if after != wanted {
            return Err(Failure::Retryable(format!(
                "health check {id} reads back {after} after an update to {wanted}"
            )));
        }
        Ok(format!(
            "health check {id} set to {wanted} (was {now}; region {} active, generation {}){}",
            order.to,
            order.generation,
            FailoverHealth::applies_later(interval)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(list: &[&str]) -> RecordData {
        RecordData::Values {
            ttl: 60,
            values: list.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn fence(generation: u64, region: &str, data: &RecordData) -> Option<String> {
        Some(
            Fence {
                generation,
                region: region.into(),
                digest: data.digest("A"),
            }
            .to_txt(),
        )
    }

    #[test]
    fn fence_round_trips_and_rejects_foreign_text() {
        let written = Fence {
            generation: 7,
            region: "eu".into(),
            digest: values(&["198.51.100.7"]).digest("A"),
        };
        assert_eq!(Fence::parse(&written.to_txt()), Some(written.clone()));
        assert_eq!(Fence::parse("\"v=spf1 -all\""), None);
        assert_eq!(Fence::parse("\"switchyard region=eu\""), None, "no generation");
        assert_ne!(values(&["1.1.1.1"]).digest("A"), values(&["1.1.1.2"]).digest("A"));
    }

    #[test]
    fn a_first_write_creates_and_a_known_value_is_taken_over() {
        let us = values(&["203.0.113.10"]);
        let eu = values(&["198.51.100.7"]);
        let known = [&us, &eu];
        let empty = View::default();
        assert_eq!(decide(&empty, "A", &eu, &known, 3), Decision::Write { record: true });
        let adopted = View {
            record: Some(us.clone()),
            fence: None,
        };
        assert_eq!(decide(&adopted, "A", &eu, &known, 3), Decision::Write { record: true });
        let foreign = View {
            record: Some(values(&["192.0.2.99"])),
            fence: None,
        };
        assert!(
            matches!(decide(&foreign, "A", &eu, &known, 3), Decision::Fenced(m) if m.contains("none of the configured"))
        );
    }

    #[test]
    fn the_fence_decides() {
        let us = values(&["203.0.113.10"]);
        let eu = values(&["198.51.100.7"]);
        let known = [&us, &eu];
        let written_us = View {
            record: Some(us.clone()),
            fence: fence(5, "us", &us),
        };
        assert_eq!(
            decide(&written_us, "A", &eu, &known, 6),
            Decision::Write { record: true }
        );
        assert!(matches!(decide(&written_us, "A", &eu, &known, 4), Decision::Fenced(m) if m.contains("stale")));
        let done = View {
            record: Some(eu.clone()),
            fence: fence(6, "eu", &eu),
        };
        assert_eq!(
            decide(&done, "A", &eu, &known, 6),
            Decision::Done,
            "a re-run writes nothing"
        );
        assert_eq!(
            decide(&done, "A", &eu, &known, 7),
            Decision::Write { record: false },
            "a newer order that wants the same value only raises the fence"
        );
        let changed = View {
            record: Some(values(&["192.0.2.99"])),
            fence: fence(5, "us", &us),
        };
        assert!(matches!(decide(&changed, "A", &eu, &known, 6), Decision::Fenced(m) if m.contains("someone else")));
        let deleted = View {
            record: None,
            fence: fence(5, "us", &us),
        };
        assert!(matches!(decide(&deleted, "A", &eu, &known, 6), Decision::Fenced(m) if m.contains("holds nothing")));
        let foreign_fence = View {
            record: Some(us.clone()),
            fence: Some("\"hello\"".into()),
        };
        assert!(
            matches!(decide(&foreign_fence, "A", &eu, &known, 6), Decision::Fenced(m) if m.contains("did not write"))
        );
    }

    /// A batch refused while the record set stayed as read is invalid in itself: Refused, for
    /// the operator, not Fenced (which says a newer decision acted); a record set that changed
    /// is a concurrent writer: Fenced.
    #[test]
    fn a_refused_batch_is_a_fence_only_when_the_record_set_changed() {
        let observed = View {
            record: Some(values(&["192.0.2.10"])),
            fence: fence(4, "us-east-1", &values(&["192.0.2.10"])),
        };
        let refusal = || Failure::Fenced("InvalidChangeBatch: RRSet of type CNAME ... is not permitted at apex".into());
        let judged = judge_refused_batch(&observed, &observed.clone(), "shop.example.com.", "CNAME", refusal());
        match judged {
            Failure::Refused(text) => {
                assert!(text.contains("nothing changed"), "{text}");
                assert!(text.contains("not permitted at apex"), "keeps Route 53's words: {text}");
            }
            other => panic!("an invalid batch is refused, not {other:?}"),
        }
        let moved = View {
            record: Some(values(&["198.51.100.20"])),
            fence: fence(5, "eu-west-1", &values(&["198.51.100.20"])),
        };
        match judge_refused_batch(&observed, &moved, "shop.example.com.", "A", refusal()) {
            Failure::Fenced(text) => assert!(text.contains("198.51.100.20"), "{text}"),
            other => panic!("a concurrent change is a fence, not {other:?}"),
        }
        let denied = Failure::Refused("AccessDenied".into());
        assert_eq!(
            judge_refused_batch(&observed, &observed.clone(), "shop.example.com.", "A", denied.clone()),
            denied,
            "a refusal that is not about the batch stays as it is"
        );
        let retry = judge_refused_batch(
            &observed,
            &observed.clone(),
            "shop.example.com.",
            "A",
            Failure::Retryable("throttled".into()),
        );
        assert_eq!(retry, Failure::Retryable("throttled".into()));
        assert!(matches!(
            judge_refused_batch(
                &observed,
                &moved,
                "shop.example.com.",
                "A",
                Failure::Retryable("throttled".into())
            ),
            Failure::Fenced(_)
        ));
    }

    #[test]
    fn only_this_generations_fence_over_the_desired_value_is_an_own_write() {
        let desired = values(&["192.0.2.1"]);
        let view = |record: RecordData, generation: u64, of: &RecordData| View {
            record: Some(record),
            fence: fence(generation, "eu", of),
        };
        assert!(own_write_applied(&view(desired.clone(), 4, &desired), "A", &desired, 4));
        assert!(!own_write_applied(
            &view(desired.clone(), 5, &desired),
            "A",
            &desired,
            4
        ));
        let other = values(&["192.0.2.9"]);
        assert!(!own_write_applied(&view(other.clone(), 4, &other), "A", &desired, 4));
        assert!(!own_write_applied(&view(desired.clone(), 4, &other), "A", &desired, 4));
        let unfenced = View {
            record: Some(desired.clone()),
            fence: None,
        };
        assert!(!own_write_applied(&unfenced, "A", &desired, 4));
    }

    #[test]
    fn names_and_values_are_normalised() {
        assert_eq!(normalize_name("Shop.Example.com"), "shop.example.com.");
        assert_eq!(normalize_name("\\052.example.com."), "*.example.com.");
        assert!(check_name("shop.example.com").is_ok());
        assert!(check_name("*.example.com").is_ok());
        assert!(check_name("localhost").is_err());
        assert!(check_name("a..b").is_err());
        assert_eq!(canonical_value("AAAA", "2001:DB8:0:0::1"), Ok("2001:db8::1".into()));
        assert!(canonical_value("A", "300.1.1.1").is_err());
        assert_eq!(canonical_value("CNAME", "LB.Example.net"), Ok("lb.example.net.".into()));
    }

    #[test]
    fn health_switches_follow_the_active_region() {
        let primary_active = HealthSwitches::wanted("us", "us", false);
        assert_eq!(
            primary_active,
            HealthSwitches {
                inverted: false,
                disabled: false
            }
        );
        assert!(HealthSwitches::wanted("us", "us", true).disabled);
        let standby_active = HealthSwitches::wanted("eu", "us", true);
        assert_eq!(
            standby_active,
            HealthSwitches {
                inverted: true,
                disabled: false
            }
        );
    }

    #[test]
    fn a_changed_health_check_says_dns_follows_at_the_next_evaluation() {
        let with_interval = FailoverHealth::applies_later(Some(10));
        assert!(
            with_interval.contains("next evaluation of the check (request interval 10 s)"),
            "{with_interval}"
        );
        assert!(with_interval.contains("does not wait"), "{with_interval}");
        let calculated = FailoverHealth::applies_later(None);
        assert!(calculated.contains("next evaluation of the check,"), "{calculated}");
    }
}
