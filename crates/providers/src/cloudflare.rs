//! `kind = "cloudflare"`: points a Cloudflare DNS record at the active region, or enables the
//! Load Balancing pools of the serving regions and disables the others (API v4, a scoped API
//! token sent as `Authorization: Bearer`).
//!
//! Record mode (`zone_id`, `record`, `type`, `values`): finds the record by zone, name and type
//! (`GET /zones/{zone_id}/dns_records`, every page), re-reads it by id just before writing, and
//! `PATCH`es its `content` to the new active region's value; then reads it back.
//! Compare-and-set: Cloudflare's API has no conditional write, so the rule of [`crate::cas`]
//! applies — the content found must be the value this controller last wrote (or the previous
//! region's), otherwise someone else changed the record and the step is `Fenced`. On top of
//! that the step writes `switchyard generation N` into the record's `comment`
//! (`comment_generation`, on by default), and a record whose comment carries a newer
//! generation than the order's is `Fenced` too: a stale controller cannot overwrite a newer
//! decision even when the values agree.
//!
//! Pool mode (`account_id`, `pools`): per region a pool id; the pools of the regions in the
//! order's serving set are enabled (first) and the others disabled, each through
//! `PATCH /accounts/{account_id}/load_balancers/pools/{pool_id}` `{"enabled": ...}` only when
//! it differs, then read back. A pool has no field to fence on, so here the generation check
//! of the controller is the only fence.
//!
//! Errors carry Cloudflare's own `errors[].code` and `message`. 429 answers are retried after
//! `Retry-After` (see [`crate::rest`]); 5xx and timeouts are `Retryable`, other 4xx (a bad
//! token, a missing permission, an unknown zone) are `Refused`: no retry can fix them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use hyper::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use toml::Spanned;

use crate::cas;
use crate::rest::{self, Answer, Rest, classify, transport};
use crate::{Checker, Failure, Order, Outcome};

/// Where the API is; `api_url` overrides it (tests).
pub const API_URL_DEFAULT: &str = "https://api.cloudflare.com/client/v4";
/// Records asked for per page (Cloudflare's default is 100).
pub const RECORDS_PER_PAGE: u32 = 100;
/// Pages of a record listing read at most.
pub const RECORD_PAGES_MAX: u32 = 50;
/// Pools one step may drive.
pub const POOLS_MAX: usize = 32;
/// The record types a step may point at a region.
pub const RECORD_TYPES: &[&str] = &["A", "AAAA", "CNAME", "TXT"];
/// What the step writes into a record's comment, followed by the generation.
pub const COMMENT_PREFIX: &str = "switchyard generation ";
/// Longest record comment written, in characters: the smallest plan's limit (Cloudflare's
/// "DNS record comments": 100 on Free, more on paid plans).
pub const COMMENT_CHARS_MAX: usize = 100;

/// The comment to write for `generation`, keeping what an operator wrote: the generation of an
/// earlier write is replaced where it stands, or `; switchyard generation N` is appended. An
/// operator's text too long to keep whole is cut (ending in `…`) so the comment stays within
/// [`COMMENT_CHARS_MAX`]: the generation, the fence, always fits.
pub fn comment_with_generation(old: Option<&str>, generation: u64) -> String {
    let token = format!("{COMMENT_PREFIX}{generation}");
    let old = old.unwrap_or_default().trim();
    let (before, after) = match old.find(COMMENT_PREFIX) {
        Some(at) => {
            let rest = &old[at + COMMENT_PREFIX.len()..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            (&old[..at], &rest[digits..])
        }
        None if old.is_empty() => ("", ""),
        None => (old, ""),
    };
    let before = before.trim_end();
    let separator = if before.is_empty() || before.ends_with(';') {
        if before.is_empty() { "" } else { " " }
    } else if old.contains(COMMENT_PREFIX) {
        " "
    } else {
        "; "
    };
    let whole = format!("{before}{separator}{token}{after}");
    if whole.chars().count() <= COMMENT_CHARS_MAX {
        return whole;
    }
    // Too long: keep the operator's text before the token, cut to fit.
    let room = COMMENT_CHARS_MAX.saturating_sub(token.chars().count() + 3);
    let kept: String = format!("{before}{after}").chars().take(room).collect();
    if kept.trim().is_empty() {
        token
    } else {
        format!("{}…; {token}", kept.trim_end())
    }
}

cas::rest_settings! {
    records {
        #[serde(default)]
        pub zone_id: Option<Spanned<String>>,
    }
    /// The `[runbook.cloudflare]` table. Its `token` is a scoped API token (DNS:Edit for
    /// records, Load Balancing: Monitors and Pools Write for pools).
    pub struct Settings {
        #[serde(default = "yes")]
        pub comment_generation: bool,
        #[serde(default)]
        pub account_id: Option<Spanned<String>>,
        /// Per region, its Load Balancing pool id.
        #[serde(default)]
        pub pools: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
    }
}

fn yes() -> bool {
    true
}

/// The checked step, ready to run.
#[derive(Debug)]
pub struct Cloudflare {
    api: Rest,
    target: Target,
}

#[derive(Debug)]
enum Target {
    Record(RecordTarget),
    Pools {
        account_id: String,
        pools: BTreeMap<String, String>,
    },
}

/// The record a record step drives.
#[derive(Debug)]
struct RecordTarget {
    zone_id: String,
    name: String,
    record_type: String,
    values: BTreeMap<String, String>,
    comment_generation: bool,
    last_written: Mutex<Option<String>>,
}

/// How record steps name their values in errors.
const WORDING: cas::RecordWording = cas::RecordWording {
    types: RECORD_TYPES,
    content: |record_type| format!("a valid {record_type} record content"),
    needs: "a record step needs zone_id, record, type and values = { region = \"content\", ... }",
};

/// Cloudflare identifiers (zones, accounts, pools) are 32 hexadecimal characters.
fn check_id(what: &str, id: &Spanned<String>, checker: &mut dyn Checker) -> String {
    let value = id.get_ref();
    if value.len() != 32 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
        checker.error(
            id.span(),
            format!("{what} '{value}' is not a Cloudflare identifier (32 hexadecimal characters)"),
            "copy the id from the Cloudflare dashboard (Overview → API, or the pool's page) or from the API".into(),
        );
    }
    value.clone()
}

/// Checks that `content` fits a record of type `record_type`.
pub(crate) fn check_content(record_type: &str, content: &str) -> Result<(), String> {
    let ok = match record_type {
        "A" => content.parse::<std::net::Ipv4Addr>().is_ok(),
        "AAAA" => content.parse::<std::net::Ipv6Addr>().is_ok(),
        "CNAME" => {
            !content.is_empty()
                && content.len() <= 253
                && content.trim_end_matches('.').split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        }
        _ => !content.is_empty() && content.len() <= 2048,
    };
    if ok {
        Ok(())
    } else {
        Err(match record_type {
            "A" => format!("'{content}' is not an IPv4 address"),
            "AAAA" => format!("'{content}' is not an IPv6 address"),
            "CNAME" => format!("'{content}' is not a host name"),
            _ => format!("'{content}' is empty or longer than 2048 bytes"),
        })
    }
}

impl Settings {
    /// Reports every problem through `checker` and returns the step ready to run.
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<Cloudflare> {
        let what = format!("cloudflare step '{step}'");
        let modes = cas::Modes {
            first: (
                "a record (zone_id, record, type, values)",
                self.zone_id.is_some() || self.record_keys_given(),
            ),
            second: (
                "pools (account_id, pools)",
                self.account_id.is_some() || self.pools.is_some(),
            ),
            fix: "use one cloudflare step per record and another per set of pools",
        };
        let keys = self.rest_keys(API_URL_DEFAULT);
        let (api, target) = cas::check_rest_step(&what, keys, modes, checker, |record, checker| match record {
            true => self.check_record(&what, checker).map(Target::Record),
            false => self.check_pools(&what, checker),
        })?;
        Some(Cloudflare { api, target })
    }

    fn check_record(&self, what: &str, checker: &mut dyn Checker) -> Option<RecordTarget> {
        let mut missing = Vec::new();
        let zone_id = match &self.zone_id {
            Some(id) => Some(check_id(&format!("{what} zone_id"), id, checker)),
            None => {
                missing.push("zone_id");
                None
            }
        };
        let name = match &self.record {
            Some(name) if !name.get_ref().trim().is_empty() => {
                Some(name.get_ref().trim_end_matches('.').to_ascii_lowercase())
            }
            Some(name) => {
                checker.error(
                    name.span(),
                    format!("{what} record is empty"),
                    "write the record's full name, like \"shop.example.com\"".into(),
                );
                None
            }
            None => {
                missing.push("record");
                None
            }
        };
        let (record_type, values) = self.check_record_mode(what, WORDING, missing, checker);
        Some(RecordTarget {
            zone_id: zone_id?,
            name: name?,
            record_type: record_type?,
            values: values?,
            comment_generation: self.comment_generation,
            last_written: Mutex::new(None),
        })
    }

    fn check_pools(&self, what: &str, checker: &mut dyn Checker) -> Option<Target> {
        let account_id = self
            .account_id
            .as_ref()
            .map(|id| check_id(&format!("{what} account_id"), id, checker));
        if account_id.is_none() {
            let names = (
                "account_id",
                "pools",
                "add account_id = \"...\" (32 hexadecimal characters)",
            );
            cas::missing_key(what, names, self.token.span(), checker);
        }
        let names = ("pools", "account_id", "add pools = { region = \"pool id\", ... }");
        let pools = cas::mode_table(
            what,
            names,
            &self.pools,
            self.token.span(),
            checker,
            |table, checker| {
                if table.get_ref().len() > POOLS_MAX {
                    checker.error(
                        table.span(),
                        format!("{what} has more than {POOLS_MAX} pools"),
                        "split them over several steps".into(),
                    );
                }
                for id in table.get_ref().values() {
                    check_id(&format!("{what} pool id"), id, checker);
                }
            },
        );
        Some(Target::Pools {
            account_id: account_id?,
            pools: pools?,
        })
    }
}

/// A DNS record as the API returns it (the fields the step reads).
#[derive(Debug, Clone, Deserialize)]
struct Record {
    id: String,
    name: String,
    #[serde(rename = "type")]
    record_type: String,
    content: String,
    #[serde(default)]
    comment: Option<String>,
}

impl Record {
    /// The generation in the record's comment, if this controller wrote it.
    fn generation(&self) -> Option<u64> {
        let comment = self.comment.as_deref()?;
        let at = comment.find(COMMENT_PREFIX)?;
        let digits: String = comment[at + COMMENT_PREFIX.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }
}

/// Unwraps Cloudflare's envelope `{success, errors, messages, result}`: the `result` of a
/// success, or a failure carrying every `errors[].code` and `message`.
fn envelope(answer: &Answer, doing: &str) -> Result<Value, Failure> {
    let body = answer.json();
    let success = body.as_ref().and_then(|b| b.get("success")).and_then(Value::as_bool);
    if answer.is_success() && success == Some(true) {
        return Ok(body
            .and_then(|mut b| b.get_mut("result").map(Value::take))
            .unwrap_or(Value::Null));
    }
    let errors = body
        .as_ref()
        .and_then(|b| b.get("errors"))
        .and_then(Value::as_array)
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e.get("code").map(Value::to_string).unwrap_or_default(),
                        e.get("message").and_then(Value::as_str).unwrap_or("")
                    )
                    .trim()
                    .to_string()
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| answer.shown());
    let message = format!(
        "Cloudflare answered {} to {doing}: {errors}{}",
        answer.status,
        rest::rate_limit_note(answer)
    );
    Err(classify(answer.status, message))
}

impl Cloudflare {
    /// Runs one attempt (see the module documentation).
    pub async fn run(&self, order: &Order) -> Outcome {
        match &self.target {
            Target::Record(record) => self.run_record(record, order).await,
            Target::Pools { account_id, pools } => self.run_pools(account_id, pools, order).await,
        }
    }

    async fn get(&self, path: &str, doing: &str) -> Result<Value, Failure> {
        let answer = self.api.send(Method::GET, path, None).await.map_err(transport)?;
        envelope(&answer, doing)
    }

    async fn patch(&self, path: &str, body: &Value, doing: &str) -> Result<Value, Failure> {
        let answer = self
            .api
            .send(Method::PATCH, path, Some(body))
            .await
            .map_err(transport)?;
        envelope(&answer, doing)
    }

    /// Finds the one record with the configured name and type, reading every page.
    async fn find(&self, zone_id: &str, name: &str, record_type: &str) -> Result<Record, Failure> {
        let listing = format!("{record_type} records named {name} in zone {zone_id}");
        let found = cas::read_pages(RECORD_PAGES_MAX, &listing, |page| async move {
            let path = format!(
                "/zones/{zone_id}/dns_records?type={}&name.exact={}&page={page}&per_page={RECORDS_PER_PAGE}",
                rest::query_value(record_type),
                rest::query_value(name)
            );
            let answer = self.api.send(Method::GET, &path, None).await.map_err(transport)?;
            let body = answer.json();
            let result = envelope(&answer, &format!("listing the {record_type} records named {name}"))?;
            let records: Vec<Record> = serde_json::from_value(result).map_err(|e| {
                Failure::Retryable(format!("Cloudflare's record list is not in the documented shape: {e}"))
            })?;
            let total_pages = body
                .as_ref()
                .and_then(|b| b.pointer("/result_info/total_pages"))
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let matching = records
                .into_iter()
                .filter(|r| r.record_type == record_type && r.name.trim_end_matches('.').eq_ignore_ascii_case(name));
            Ok((matching.collect(), u64::from(page) < total_pages))
        })
        .await?;
        cas::exactly_one(found, &format!("zone {zone_id}"), record_type, name, "in Cloudflare ")
    }

    async fn read(&self, zone_id: &str, id: &str, doing: &str) -> Result<Record, Failure> {
        let result = self.get(&format!("/zones/{zone_id}/dns_records/{id}"), doing).await?;
        serde_json::from_value(result)
            .map_err(|e| Failure::Retryable(format!("Cloudflare's record is not in the documented shape: {e}")))
    }

    async fn run_record(&self, record: &RecordTarget, order: &Order) -> Outcome {
        let RecordTarget {
            zone_id,
            name,
            record_type,
            values,
            comment_generation,
            last_written,
        } = record;
        let target = cas::target_of(values, order)?;
        let listed = self.find(zone_id, name, record_type).await?;
        // Re-read just before writing: the list may be cached at Cloudflare's edge.
        let record = self
            .read(zone_id, &listed.id, &format!("reading record {}", listed.id))
            .await?;
        if let Some(generation) = record.generation()
            && generation > order.generation
        {
            return Err(Failure::Fenced(format!(
                "{name} {record_type} was written by generation {generation}, newer than this order's {}",
                order.generation
            )));
        }
        let what = format!("{name} {record_type}");
        if let Some(done) = cas::before_write(&what, record_type, &record.content, target, values, last_written, order)?
        {
            return Ok(done);
        }
        let mut body = json!({ "content": target });
        if *comment_generation {
            body["comment"] = json!(comment_with_generation(record.comment.as_deref(), order.generation));
        }
        self.patch(
            &format!("/zones/{zone_id}/dns_records/{}", record.id),
            &body,
            &format!("updating {what} to {target}"),
        )
        .await?;
        let back = self.read(zone_id, &record.id, "reading the record back").await?;
        cas::after_write(&what, record_type, &record.content, target, &back.content, last_written)
    }

    async fn run_pools(&self, account_id: &str, pools: &BTreeMap<String, String>, order: &Order) -> Outcome {
        // Enable before disabling, so the load balancer never has fewer pools than needed.
        let mut plan: Vec<(&String, &String, bool)> = pools
            .iter()
            .map(|(region, pool)| (region, pool, order.serving.contains(region) || *region == order.to))
            .collect();
        plan.sort_by_key(|(_, _, enabled)| !*enabled);
        let mut done = Vec::new();
        for (region, pool, want) in plan {
            let path = format!("/accounts/{account_id}/load_balancers/pools/{pool}");
            let state = |value: bool| if value { "enabled" } else { "disabled" };
            let current = self.pool_enabled(&path, pool).await?;
            if current != want {
                self.patch(
                    &path,
                    &json!({ "enabled": want }),
                    &format!("setting pool {pool} ({region}) {}", state(want)),
                )
                .await?;
                let back = self.pool_enabled(&path, pool).await?;
                if back != want {
                    return Err(Failure::Retryable(format!(
                        "pool {pool} ({region}) reads back {} after setting it {}",
                        state(back),
                        state(want)
                    )));
                }
                done.push(format!("{region} {} (was {})", state(want), state(current)));
            } else {
                done.push(format!("{region} already {}", state(want)));
            }
        }
        Ok(format!("pools: {}; read back", done.join(", ")))
    }

    async fn pool_enabled(&self, path: &str, pool: &str) -> Result<bool, Failure> {
        let result = self.get(path, &format!("reading pool {pool}")).await?;
        result
            .get("enabled")
            .and_then(Value::as_bool)
            .ok_or_else(|| Failure::Retryable(format!("Cloudflare's pool {pool} has no boolean 'enabled' field")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_is_read_from_the_comment() {
        let record = |comment: Option<&str>| Record {
            id: "x".into(),
            name: "n".into(),
            record_type: "A".into(),
            content: "192.0.2.1".into(),
            comment: comment.map(str::to_string),
        };
        assert_eq!(record(Some("switchyard generation 42")).generation(), Some(42));
        assert_eq!(
            record(Some("shop; switchyard generation 7 by ops")).generation(),
            Some(7)
        );
        assert_eq!(record(Some("hand-made")).generation(), None);
        assert_eq!(record(None).generation(), None);
    }

    #[test]
    fn the_comment_keeps_what_an_operator_wrote_and_always_the_generation() {
        assert_eq!(comment_with_generation(None, 5), "switchyard generation 5");
        assert_eq!(comment_with_generation(Some("  "), 5), "switchyard generation 5");
        assert_eq!(
            comment_with_generation(Some("switchyard generation 4"), 5),
            "switchyard generation 5"
        );
        assert_eq!(
            comment_with_generation(Some("shop front, ticket OPS-12"), 5),
            "shop front, ticket OPS-12; switchyard generation 5"
        );
        assert_eq!(
            comment_with_generation(Some("shop front; switchyard generation 4 by ops"), 5),
            "shop front; switchyard generation 5 by ops"
        );
        let long = "x".repeat(150);
        let cut = comment_with_generation(Some(&long), 12345);
        assert!(cut.chars().count() <= COMMENT_CHARS_MAX, "{cut}");
        assert!(cut.ends_with("…; switchyard generation 12345"), "{cut}");
        let record = |comment: String| Record {
            id: "x".into(),
            name: "n".into(),
            record_type: "A".into(),
            content: "192.0.2.1".into(),
            comment: Some(comment),
        };
        assert_eq!(record(cut).generation(), Some(12345));
        let again = comment_with_generation(Some(&comment_with_generation(Some("ops note"), 5)), 6);
        assert_eq!(again, "ops note; switchyard generation 6");
    }

    #[test]
    fn the_envelope_gives_the_result_or_cloudflares_own_error_text() {
        let answer = |status: u16, body: &str| Answer {
            status,
            retry_after_ms: None,
            body: bytes::Bytes::from(body.to_string()),
        };
        let ok = envelope(
            &answer(200, r#"{"success":true,"errors":[],"messages":[],"result":{"id":"a"}}"#),
            "x",
        );
        assert_eq!(ok, Ok(json!({"id": "a"})));
        let denied = envelope(
            &answer(
                403,
                r#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}],"messages":[],"result":null}"#,
            ),
            "listing",
        );
        assert_eq!(
            denied,
            Err(Failure::Refused(
                "Cloudflare answered 403 to listing: 10000 Authentication error".into()
            ))
        );
        let busy = envelope(&answer(502, "<html>Bad gateway</html>"), "x");
        assert!(matches!(busy, Err(Failure::Retryable(m)) if m.contains("Bad gateway")));
    }

    #[test]
    fn record_contents_are_checked_by_type() {
        assert!(check_content("A", "192.0.2.1").is_ok());
        assert!(check_content("A", "2001:db8::1").is_err());
        assert!(check_content("AAAA", "2001:db8::1").is_ok());
        assert!(check_content("CNAME", "lb-eu.example.com").is_ok());
        assert!(check_content("CNAME", "bad name").is_err());
        assert!(check_content("TXT", "").is_err());
    }
}
