//! `kind = "digitalocean"`: points a DigitalOcean domain record at the active region, or
//! assigns a reserved IP to the active region's droplet (API v2, a personal access token sent
//! as `Authorization: Bearer`).
//!
//! Record mode (`domain`, `record`, `type`, `values`): finds the record's id by name and type
//! (`GET /v2/domains/{domain}/records?name=&type=`, every page), re-reads it by id just before
//! writing, `PUT /v2/domains/{domain}/records/{id}` with the new `data`, and reads it back.
//!
//! Reserved IP mode (`reserved_ip`, `droplets`): reads `GET /v2/reserved_ips/{ip}`; if the IP
//! is not on the active region's droplet, `POST /v2/reserved_ips/{ip}/actions`
//! `{"type": "assign", "droplet_id": N}`, polls `GET /v2/reserved_ips/{ip}/actions/{id}` until
//! the action is `completed` or `errored` (bounded by `action_wait_ms`), then reads the IP back.
//! DigitalOcean moves a reserved IP only between droplets of one datacenter: this is the
//! standby-droplet failover inside a region; across regions, drive a record.
//!
//! Compare-and-set: DigitalOcean has no conditional write, so the rule of [`crate::cas`]
//! applies to the record's data and to the droplet holding the IP (an unassigned IP may
//! always be assigned). A reserved IP that is `locked` (an action in progress) is retried.
//!
//! Errors carry DigitalOcean's `id` and `message`; 429 answers are retried after
//! `Retry-After`; 5xx and timeouts are `Retryable`, other 4xx are `Refused`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hyper::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use toml::Spanned;

use crate::cas::{self, Verdict};
use crate::rest::{self, Answer, Rest, classify, transport};
use crate::{Checker, Failure, Order, Outcome};

/// Where the API is; `api_url` overrides it (tests).
pub const API_URL_DEFAULT: &str = "https://api.digitalocean.com";
/// Records asked for per page (DigitalOcean's maximum is 200).
pub const RECORDS_PER_PAGE: u32 = 200;
/// Pages of a record listing read at most.
pub const RECORD_PAGES_MAX: u32 = 50;
/// The record types a step may point at a region.
pub const RECORD_TYPES: &[&str] = &["A", "AAAA", "CNAME", "TXT"];
/// Default and longest wait for a reserved IP action to finish.
pub const ACTION_WAIT_MS_DEFAULT: u64 = 60_000;
pub const ACTION_WAIT_MS_MAX: u64 = 600_000;
/// Default and shortest interval between two polls of an action.
pub const ACTION_POLL_MS_DEFAULT: u64 = 1_000;
pub const ACTION_POLL_MS_MIN: u64 = 10;

cas::rest_settings! {
    records {
        /// The domain as DigitalOcean holds it, like `example.com`; `record` may be the domain
        /// itself (its apex).
        #[serde(default)]
        pub domain: Option<Spanned<String>>,
    }
    /// The `[runbook.digitalocean]` table. Its `token` is a personal access token with write
    /// scope (domain, reserved_ip).
    pub struct Settings {
        #[serde(default)]
        pub reserved_ip: Option<Spanned<String>>,
        /// Per region, the droplet that holds the reserved IP while that region is active.
        #[serde(default)]
        pub droplets: Option<Spanned<BTreeMap<Spanned<String>, Spanned<u64>>>>,
        #[serde(default)]
        pub action_wait_ms: Option<Spanned<u64>>,
        #[serde(default)]
        pub action_poll_ms: Option<Spanned<u64>>,
    }
}

/// The checked step, ready to run.
#[derive(Debug)]
pub struct DigitalOcean {
    api: Rest,
    target: Target,
}

#[derive(Debug)]
enum Target {
    Record(RecordTarget),
    ReservedIp {
        ip: String,
        droplets: BTreeMap<String, u64>,
        wait_ms: u64,
        poll_ms: u64,
        last_assigned: Mutex<Option<u64>>,
    },
}

/// The record a record step drives.
#[derive(Debug)]
struct RecordTarget {
    domain: String,
    /// The full name (the `name` filter of the list wants it) and the name relative to
    /// the domain (what records carry: `shop`, or `@` for the apex).
    full_name: String,
    relative_name: String,
    record_type: String,
    values: BTreeMap<String, String>,
    last_written: Mutex<Option<String>>,
}

/// How record steps name their values in errors.
const WORDING: cas::RecordWording = cas::RecordWording {
    types: RECORD_TYPES,
    content: |record_type| format!("valid {record_type} record data"),
    needs: "a record step needs domain, record, type and values = { region = \"data\", ... }",
};

impl Settings {
    /// Reports every problem through `checker` and returns the step ready to run.
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<DigitalOcean> {
        let what = format!("digitalocean step '{step}'");
        let modes = cas::Modes {
            first: (
                "a record (domain, record, type, values)",
                self.domain.is_some() || self.record_keys_given(),
            ),
            second: (
                "a reserved IP (reserved_ip, droplets)",
                self.reserved_ip.is_some() || self.droplets.is_some(),
            ),
            fix: "use one digitalocean step per record and another per reserved IP",
        };
        let keys = self.rest_keys(API_URL_DEFAULT);
        let (api, target) = cas::check_rest_step(&what, keys, modes, checker, |record, checker| match record {
            true => self.check_record(&what, checker).map(Target::Record),
            false => self.check_reserved_ip(&what, checker),
        })?;
        Some(DigitalOcean { api, target })
    }

    fn check_record(&self, what: &str, checker: &mut dyn Checker) -> Option<RecordTarget> {
        let mut missing = Vec::new();
        let domain = match &self.domain {
            Some(d) if valid_domain(d.get_ref()) => Some(d.get_ref().trim_end_matches('.').to_ascii_lowercase()),
            Some(d) => {
                checker.error(
                    d.span(),
                    format!("{what} domain '{}' is not a domain name", d.get_ref()),
                    "write it as DigitalOcean lists it, like \"example.com\"".into(),
                );
                None
            }
            None => {
                missing.push("domain");
                None
            }
        };
        let names = match (&self.record, &domain) {
            (Some(record), Some(domain)) => {
                let full = record.get_ref().trim_end_matches('.').to_ascii_lowercase();
                let relative = if full == *domain {
                    Some("@".to_string())
                } else {
                    full.strip_suffix(&format!(".{domain}")).map(str::to_string)
                };
                match relative {
                    Some(relative) if !relative.is_empty() => Some((full, relative)),
                    _ => {
                        checker.error(
                            record.span(),
                            format!("{what} record '{}' is not in domain {domain}", record.get_ref()),
                            format!("write the record's full name, ending in .{domain}"),
                        );
                        None
                    }
                }
            }
            (None, _) => {
                missing.push("record");
                None
            }
            (Some(_), None) => None,
        };
        let (record_type, values) = self.check_record_mode(what, WORDING, missing, checker);
        let (full_name, relative_name) = names?;
        Some(RecordTarget {
            domain: domain?,
            full_name,
            relative_name,
            record_type: record_type?,
            values: values?,
            last_written: Mutex::new(None),
        })
    }

    fn check_reserved_ip(&self, what: &str, checker: &mut dyn Checker) -> Option<Target> {
        let ip = match &self.reserved_ip {
            Some(ip) if ip.get_ref().parse::<std::net::Ipv4Addr>().is_ok() => Some(ip.get_ref().clone()),
            Some(ip) => {
                checker.error(
                    ip.span(),
                    format!("{what} reserved_ip '{}' is not an IPv4 address", ip.get_ref()),
                    "copy the reserved IP from the DigitalOcean control panel (Networking → Reserved IPs)".into(),
                );
                None
            }
            None => {
                let names = ("reserved_ip", "droplets", "add reserved_ip = \"203.0.113.7\"");
                cas::missing_key(what, names, self.token.span(), checker);
                None
            }
        };
        let names = ("droplets", "reserved_ip", "add droplets = { region = droplet id, ... }");
        let droplets = cas::mode_table(
            what,
            names,
            &self.droplets,
            self.token.span(),
            checker,
            |table, checker| {
                for id in table.get_ref().values().filter(|id| *id.get_ref() == 0) {
                    checker.error(
                        id.span(),
                        format!("{what} droplet id 0 is not a droplet"),
                        "copy the droplet's id from its page or `doctl compute droplet list`".into(),
                    );
                }
            },
        );
        let wait_ms = rest::check_bounded(
            what,
            "action_wait_ms",
            &self.action_wait_ms,
            (1, ACTION_WAIT_MS_MAX),
            ACTION_WAIT_MS_DEFAULT,
            checker,
        );
        let poll_ms = rest::check_bounded(
            what,
            "action_poll_ms",
            &self.action_poll_ms,
            (ACTION_POLL_MS_MIN, ACTION_WAIT_MS_MAX),
            ACTION_POLL_MS_DEFAULT,
            checker,
        );
        Some(Target::ReservedIp {
            ip: ip?,
            droplets: droplets?,
            wait_ms,
            poll_ms,
            last_assigned: Mutex::new(None),
        })
    }
}

fn valid_domain(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.contains('.')
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A domain record as the API returns it (the fields the step reads).
#[derive(Debug, Clone, Deserialize)]
struct DomainRecord {
    id: u64,
    #[serde(rename = "type")]
    record_type: String,
    name: String,
    data: String,
}

/// A DigitalOcean answer's JSON, or a failure carrying its `id` and `message` ([`failure`]).
pub(crate) fn checked(answer: &Answer, doing: &str) -> Result<Value, Failure> {
    if !answer.is_success() {
        return Err(failure(answer, doing));
    }
    answer.json().ok_or_else(|| {
        Failure::Retryable(format!(
            "DigitalOcean's answer to {doing} is not JSON: {}",
            answer.shown()
        ))
    })
}

/// The failure of an unsuccessful answer, carrying DigitalOcean's `id` and `message` (else the
/// body), retryable or not by its status ([`classify`]).
pub(crate) fn failure(answer: &Answer, doing: &str) -> Failure {
    let text = answer
        .json()
        .map(|b| {
            format!(
                "{} {}",
                b.get("id").and_then(Value::as_str).unwrap_or(""),
                b.get("message").and_then(Value::as_str).unwrap_or("")
            )
            .trim()
            .to_string()
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| answer.shown());
    classify(
        answer.status,
        format!(
            "DigitalOcean answered {} to {doing}: {text}{}",
            answer.status,
            rest::rate_limit_note(answer)
        ),
    )
}

/// A record's `data` as DigitalOcean takes it: a CNAME's host name ends with a dot (it answers
/// `422 Data needs to end with a dot (.)` otherwise, and `@` would mean the domain itself), so
/// one written without it in the configuration gets it here. Other types go as written.
fn record_data(record_type: &str, value: &str) -> String {
    if record_type == "CNAME" && !value.ends_with('.') {
        format!("{value}.")
    } else {
        value.to_string()
    }
}

/// DigitalOcean refuses an assign with 422 while the droplet or the reserved IP has another
/// event pending ("Droplet already has a pending event.", "The floating IP already has a
/// pending event."): a droplet still booting or being resized, or an action another client
/// started. That passes by itself, so it is retried, not a refusal that ends the failover.
fn pending_event_is_retryable(failure: Failure, droplet: u64) -> Failure {
    match failure {
        Failure::Refused(message) if message.to_ascii_lowercase().contains("pending event") => {
            Failure::Retryable(format!(
                "{message} (droplet {droplet} or the reserved IP is busy with another action; retried once it ends)"
            ))
        }
        other => other,
    }
}

fn shape(what: &str) -> impl FnOnce(serde_json::Error) -> Failure + '_ {
    move |e| Failure::Retryable(format!("DigitalOcean's {what} is not in the documented shape: {e}"))
}

impl DigitalOcean {
    /// The shortest step timeout that lets an attempt see its action through: a reserved IP's
    /// `action_wait_ms` (the requests around it add a little more); `None` for a record.
    pub fn least_timeout_ms(&self) -> Option<u64> {
        match &self.target {
            Target::ReservedIp { wait_ms, .. } => Some(*wait_ms),
            Target::Record { .. } => None,
        }
    }

    /// Runs one attempt (see the module documentation).
    pub async fn run(&self, order: &Order) -> Outcome {
        match &self.target {
            Target::Record(record) => self.run_record(record, order).await,
            Target::ReservedIp { .. } => self.run_reserved_ip(order).await,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<&Value>, doing: &str) -> Result<Value, Failure> {
        let answer = self.api.send(method, path, body).await.map_err(transport)?;
        checked(&answer, doing)
    }

    async fn find(
        &self,
        domain: &str,
        full_name: &str,
        relative_name: &str,
        record_type: &str,
    ) -> Result<DomainRecord, Failure> {
        let listing = format!("{record_type} records named {full_name}");
        let found = cas::read_pages(RECORD_PAGES_MAX, &listing, |page| async move {
            let path = format!(
                "/v2/domains/{domain}/records?name={}&type={}&page={page}&per_page={RECORDS_PER_PAGE}",
                rest::query_value(full_name),
                rest::query_value(record_type)
            );
            let body = self
                .call(
                    Method::GET,
                    &path,
                    None,
                    &format!("listing the {record_type} records named {full_name}"),
                )
                .await?;
            let records: Vec<DomainRecord> =
                serde_json::from_value(body.get("domain_records").cloned().unwrap_or(Value::Null))
                    .map_err(shape("record list"))?;
            let next = body.pointer("/links/pages/next").and_then(Value::as_str).is_some();
            let matching = records.into_iter().filter(|r| {
                r.record_type == record_type
                    && (r.name.eq_ignore_ascii_case(relative_name) || r.name.eq_ignore_ascii_case(full_name))
            });
            Ok((matching.collect(), next))
        })
        .await?;
        cas::exactly_one(found, &format!("domain {domain}"), record_type, full_name, "")
    }

    async fn read_record(&self, domain: &str, id: u64, doing: &str) -> Result<DomainRecord, Failure> {
        let body = self
            .call(Method::GET, &format!("/v2/domains/{domain}/records/{id}"), None, doing)
            .await?;
        serde_json::from_value(body.get("domain_record").cloned().unwrap_or(Value::Null)).map_err(shape("record"))
    }

    async fn run_record(&self, record: &RecordTarget, order: &Order) -> Outcome {
        let RecordTarget {
            domain,
            full_name,
            relative_name,
            record_type,
            values,
            last_written,
        } = record;
        let target = cas::target_of(values, order)?;
        let listed = self.find(domain, full_name, relative_name, record_type).await?;
        let record = self
            .read_record(domain, listed.id, &format!("reading record {}", listed.id))
            .await?;
        let what = format!("{full_name} {record_type}");
        if let Some(done) = cas::before_write(&what, record_type, &record.data, target, values, last_written, order)? {
            return Ok(done);
        }
        self.call(
            Method::PUT,
            &format!("/v2/domains/{domain}/records/{}", record.id),
            Some(&json!({ "type": record_type, "data": record_data(record_type, target) })),
            &format!("updating {what} to {target}"),
        )
        .await?;
        let back = self.read_record(domain, record.id, "reading the record back").await?;
        cas::after_write(&what, record_type, &record.data, target, &back.data, last_written)
    }

    /// The droplet holding the IP (`None`: unassigned) and whether an action is in progress.
    async fn reserved_ip(&self, ip: &str, doing: &str) -> Result<(Option<u64>, bool), Failure> {
        let body = self
            .call(Method::GET, &format!("/v2/reserved_ips/{ip}"), None, doing)
            .await?;
        let reserved = body
            .get("reserved_ip")
            .ok_or_else(|| Failure::Retryable("DigitalOcean's answer has no reserved_ip".into()))?;
        let droplet = match reserved.get("droplet") {
            None | Some(Value::Null) => None,
            Some(droplet) => Some(droplet.get("id").and_then(Value::as_u64).ok_or_else(|| {
                Failure::Retryable("DigitalOcean's reserved IP names a droplet without an id".into())
            })?),
        };
        let locked = reserved.get("locked").and_then(Value::as_bool).unwrap_or(false);
        Ok((droplet, locked))
    }

    async fn run_reserved_ip(&self, order: &Order) -> Outcome {
        let Target::ReservedIp {
            ip,
            droplets,
            wait_ms,
            poll_ms,
            last_assigned,
        } = &self.target
        else {
            return Err(Failure::Refused("not a reserved IP step".into()));
        };
        let target = *droplets
            .get(&order.to)
            .ok_or_else(|| Failure::Refused(format!("no droplet for region {} in the step's droplets", order.to)))?;
        let (current, locked) = self.reserved_ip(ip, &format!("reading reserved IP {ip}")).await?;
        if current == Some(target) {
            return Ok(format!("reserved IP {ip} already on droplet {target}; read back"));
        }
        if let Some(current) = current {
            let last = last_assigned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|d| d.to_string());
            let from = order.from.as_ref().and_then(|f| droplets.get(f)).map(u64::to_string);
            let configured: Vec<String> = droplets.values().map(u64::to_string).collect();
            let configured: Vec<&str> = configured.iter().map(String::as_str).collect();
            let what = format!("the droplet holding reserved IP {ip}");
            if let Verdict::Fenced(message) = cas::judge(
                &what,
                &current.to_string(),
                &target.to_string(),
                last.as_deref(),
                from.as_deref(),
                &configured,
            ) {
                return Err(Failure::Fenced(message));
            }
        }
        if locked {
            return Err(Failure::Retryable(format!(
                "reserved IP {ip} is locked: an action on it is in progress"
            )));
        }
        let started = self
            .call(
                Method::POST,
                &format!("/v2/reserved_ips/{ip}/actions"),
                Some(&json!({ "type": "assign", "droplet_id": target })),
                &format!("assigning reserved IP {ip} to droplet {target}"),
            )
            .await
            .map_err(|failure| pending_event_is_retryable(failure, target))?;
        let action = started
            .pointer("/action/id")
            .and_then(Value::as_u64)
            .ok_or_else(|| Failure::Retryable("DigitalOcean's action answer has no action.id".into()))?;
        self.wait_for_action(ip, action, *wait_ms, *poll_ms).await?;
        let (back, _) = self.reserved_ip(ip, "reading the reserved IP back").await?;
        if back != Some(target) {
            return Err(Failure::Retryable(format!(
                "reserved IP {ip} reads back on droplet {} after action {action} completed",
                back.map_or("none".to_string(), |d| d.to_string())
            )));
        }
        *last_assigned.lock().unwrap_or_else(|p| p.into_inner()) = Some(target);
        Ok(format!(
            "reserved IP {ip} assigned to droplet {target} (was {}); action {action} completed; read back",
            current.map_or("unassigned".to_string(), |d| d.to_string())
        ))
    }

    async fn wait_for_action(&self, ip: &str, action: u64, wait_ms: u64, poll_ms: u64) -> Result<(), Failure> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let body = self
                .call(
                    Method::GET,
                    &format!("/v2/reserved_ips/{ip}/actions/{action}"),
                    None,
                    &format!("reading action {action}"),
                )
                .await?;
            match body.pointer("/action/status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("errored") => {
                    return Err(Failure::Retryable(format!(
                        "DigitalOcean action {action} (assign reserved IP {ip}) errored"
                    )));
                }
                Some(_) => {}
                None => {
                    return Err(Failure::Retryable(format!(
                        "DigitalOcean's action {action} has no status"
                    )));
                }
            }
            if tokio::time::Instant::now() + Duration::from_millis(poll_ms) > deadline {
                return Err(Failure::Retryable(format!(
                    "DigitalOcean action {action} (assign reserved IP {ip}) did not complete within {wait_ms} ms"
                )));
            }
            tokio::time::sleep(Duration::from_millis(poll_ms)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_digitaloceans_id_and_message() {
        let answer = Answer {
            status: 404,
            retry_after_ms: None,
            body: bytes::Bytes::from_static(
                br#"{"id":"not_found","message":"The resource you were accessing could not be found."}"#,
            ),
        };
        assert_eq!(
            checked(&answer, "reading"),
            Err(Failure::Refused(
                "DigitalOcean answered 404 to reading: not_found The resource you were accessing could not be found."
                    .into()
            ))
        );
        let busy = Answer {
            status: 503,
            retry_after_ms: None,
            body: bytes::Bytes::from_static(b"upstream connect error"),
        };
        assert!(matches!(checked(&busy, "x"), Err(Failure::Retryable(m)) if m.contains("upstream connect error")));
    }

    #[test]
    fn domains_are_checked() {
        assert!(valid_domain("example.com"));
        assert!(valid_domain("shop.example.co.uk."));
        assert!(!valid_domain("localhost"));
        assert!(!valid_domain("bad domain.com"));
    }
}
