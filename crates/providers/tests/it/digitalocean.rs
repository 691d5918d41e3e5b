//! The `digitalocean` step against an in-test fake of DigitalOcean's API v2: DigitalOcean has
//! no local server, so the fake follows its documented request and response shapes — paths
//! under `/v2`, `Authorization: Bearer` (401 `{"id": "unauthorized", "message": "Unable to
//! authenticate you."}` otherwise), domain records listed with the `name` (fully qualified)
//! and `type` filters, `page`/`per_page` and `links.pages.next`, records carrying names
//! relative to the domain (`@` for the apex), `PUT` of a record, reserved IPs
//! (`{"reserved_ip": {"ip", "droplet", "locked", ...}}`), `POST .../actions`
//! `{"type": "assign", "droplet_id"}` answered 201 with an `in-progress` action that
//! completes (or errors) after some polls of `GET .../actions/{id}`, 422 for an assign while
//! the droplet has a pending event, 422 `Data needs to end with a dot (.)` for a CNAME's data
//! without one, and 429 `{"id": "too_many_requests", ...}` with `Retry-After` (the burst limit)
//! or with `ratelimit-remaining: 0` and `ratelimit-reset` only (the hourly limit).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::common::{assert_refused, check_settings};
use crate::fake::{self, Collect, Request, answer, digitalocean_error as error, failover, token_file};
use providers::Failure;

const TOKEN: &str = "dop_v1_token_for_tests";
const IP: &str = "203.0.113.7";
const US: &str = "192.0.2.10";
const EU: &str = "198.51.100.20";

#[derive(Default)]
struct Account {
    records: Vec<Value>,
    droplet: Option<u64>,
    locked: bool,
    /// The assign action in flight: id, target droplet, polls left before it finishes, and
    /// whether it errors.
    action: Option<(u64, u64, u32, bool)>,
    polls: u32,
    fail_actions: bool,
    throttle: fake::Throttle,
    /// Every request answered 429 with the hourly limit's headers (reset in an hour).
    hourly_limit_spent: bool,
    /// Assigns refused with 422 "Droplet already has a pending event." before one is taken.
    pending_events: u32,
    writes: u32,
}

type Shared = Arc<Mutex<Account>>;

fn droplet(id: u64) -> Value {
    json!({"id": id, "name": format!("shop-{id}"), "status": "active", "region": {"slug": "fra1"}})
}

fn action_json(id: u64, status: &str, droplet: u64) -> Value {
    json!({"action": {
        "id": id, "status": status, "type": "assign_ip", "started_at": "2026-12-02T08:00:00Z",
        "completed_at": if status == "in-progress" { Value::Null } else { json!("2026-12-02T08:00:03Z") },
        "resource_id": droplet, "resource_type": "reserved_ip", "region": {"slug": "fra1"}, "region_slug": "fra1"
    }})
}

fn handle(account: &Shared, request: Request, base: &str) -> axum::response::Response {
    let mut account = account.lock().expect("fake state");
    if request.bearer() != Some(TOKEN) {
        return error(401, "unauthorized", "Unable to authenticate you.");
    }
    if account.hourly_limit_spent {
        let reset = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 3_600;
        return answer(
            429,
            json!({"id": "too_many_requests", "message": "API Rate limit exceeded."}),
            &[
                ("ratelimit-limit", "5000"),
                ("ratelimit-remaining", "0"),
                ("ratelimit-reset", &reset.to_string()),
            ],
        );
    }
    if account.throttle.take() {
        return answer(
            429,
            json!({"id": "too_many_requests", "message": "API Rate limit exceeded."}),
            &[("retry-after", "1")],
        );
    }
    let parts: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    match (request.method.as_str(), parts.as_slice()) {
        ("GET", ["v2", "domains", domain, "records"]) => {
            let name = request.query("name").map(|full| {
                // The filter takes the full name; records carry it relative to the domain.
                if full == *domain {
                    "@".to_string()
                } else {
                    full.strip_suffix(&format!(".{domain}")).unwrap_or("").to_string()
                }
            });
            let matching: Vec<&Value> = account
                .records
                .iter()
                .filter(|r| request.query("type").is_none_or(|t| r["type"] == t))
                .filter(|r| name.as_ref().is_none_or(|n| r["name"] == n.as_str()))
                .collect();
            let fake::Page {
                items,
                page,
                per_page,
                total,
                pages,
            } = fake::page_of(&request, 20, matching);
            let mut links = json!({});
            if page < pages {
                links = json!({"pages": {
                    "next": format!("{base}/v2/domains/{domain}/records?page={}&per_page={per_page}", page + 1),
                    "last": format!("{base}/v2/domains/{domain}/records?page={pages}&per_page={per_page}"),
                }});
            }
            answer(
                200,
                json!({"domain_records": items, "links": links, "meta": {"total": total}}),
                &[],
            )
        }
        (method @ ("GET" | "PUT"), ["v2", "domains", _domain, "records", id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let Some(record) = account.records.iter_mut().find(|r| r["id"] == id) else {
                return error(404, "not_found", "The resource you were accessing could not be found.");
            };
            if method == "PUT" {
                let body = request.json();
                if body.get("type").is_some_and(|t| *t != record["type"]) {
                    return error(422, "unprocessable_entity", "Type cannot be changed.");
                }
                if let Some(data) = body.get("data") {
                    let cname = body.get("type").unwrap_or(&record["type"]) == "CNAME";
                    if cname && !data.as_str().is_some_and(|d| d.ends_with('.') || d == "@") {
                        return error(422, "unprocessable_entity", "Data needs to end with a dot (.)");
                    }
                    record["data"] = data.clone();
                }
                let record = record.clone();
                account.writes += 1;
                return answer(200, json!({"domain_record": record}), &[]);
            }
            answer(200, json!({"domain_record": record.clone()}), &[])
        }
        ("GET", ["v2", "reserved_ips", ip]) if *ip == IP => answer(
            200,
            json!({"reserved_ip": {
                "ip": IP, "droplet": account.droplet.map(droplet), "region": {"slug": "fra1"},
                "locked": account.locked, "project_id": "746c6152-2fa2-11ed-92d3-27aaa54e4988"
            }}),
            &[],
        ),
        ("POST", ["v2", "reserved_ips", ip, "actions"]) if *ip == IP => {
            let body = request.json();
            let (Some("assign"), Some(target)) = (body["type"].as_str(), body["droplet_id"].as_u64()) else {
                return error(
                    422,
                    "unprocessable_entity",
                    "type must be assign or unassign, with droplet_id for assign",
                );
            };
            if account.pending_events > 0 {
                account.pending_events -= 1;
                return error(422, "unprocessable_entity", "Droplet already has a pending event.");
            }
            let id = 36_804_636 + u64::from(account.writes);
            account.writes += 1;
            account.locked = true;
            let fails = account.fail_actions;
            account.action = Some((id, target, 2, fails));
            answer(201, action_json(id, "in-progress", target), &[])
        }
        ("GET", ["v2", "reserved_ips", ip, "actions", id]) if *ip == IP => {
            let id: u64 = id.parse().unwrap_or(0);
            account.polls += 1;
            let Some((action, target, left, fails)) = account.action else {
                return error(404, "not_found", "The resource you were accessing could not be found.");
            };
            if action != id {
                return error(404, "not_found", "The resource you were accessing could not be found.");
            }
            if left > 0 {
                account.action = Some((action, target, left - 1, fails));
                return answer(200, action_json(id, "in-progress", target), &[]);
            }
            account.locked = false;
            if fails {
                return answer(200, action_json(id, "errored", target), &[]);
            }
            account.droplet = Some(target);
            answer(200, action_json(id, "completed", target), &[])
        }
        _ => error(404, "not_found", "The resource you were accessing could not be found."),
    }
}

async fn start(account: Account) -> (Shared, String) {
    let shared: Shared = Arc::new(Mutex::new(account));
    let state = Arc::clone(&shared);
    let base_cell: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let base_seen = Arc::clone(&base_cell);
    let base = fake::serve(move |request| {
        let base = base_seen.lock().expect("base").clone();
        handle(&state, request, &base)
    })
    .await;
    *base_cell.lock().expect("base") = base.clone();
    (shared, base)
}

fn check(
    settings: &providers::digitalocean::Settings,
    checker: &mut Collect,
) -> Option<providers::digitalocean::DigitalOcean> {
    settings.check("do", checker)
}

fn step(settings: &str) -> providers::digitalocean::DigitalOcean {
    check_settings(settings, Collect::new(&["us-east-1", "eu-west-1"]), check).expect("a checked step")
}

fn record(id: u64, name: &str, data: &str) -> Value {
    json!({"id": id, "type": "A", "name": name, "data": data, "priority": null, "port": null, "ttl": 60, "weight": null, "flags": null, "tag": null})
}

fn record_settings(base: &str, token: &std::path::Path) -> String {
    format!(
        r#"
token = {{ file = "{}" }}
api_url = "{base}"
domain = "shop.example"
record = "www.shop.example"
type = "A"
values = {{ us-east-1 = "{US}", eu-west-1 = "{EU}" }}
"#,
        token.display()
    )
}

fn ip_settings(base: &str, token: &std::path::Path) -> String {
    format!(
        r#"
token = {{ file = "{}" }}
api_url = "{base}"
reserved_ip = "{IP}"
droplets = {{ us-east-1 = 111, eu-west-1 = 222 }}
action_poll_ms = 10
action_wait_ms = 5000
"#,
        token.display()
    )
}

#[tokio::test]
async fn a_failover_updates_the_domain_record_and_reads_it_back() {
    let (account, base) = start(Account {
        records: vec![record(3352892, "@", US), record(3352893, "www", US)],
        ..Account::default()
    })
    .await;
    let token = token_file(TOKEN);
    let step = &step(&record_settings(&base, token.path()));
    let writes = || account.lock().expect("state").writes as usize;
    fake::moves_then_stays(|order| async move { step.run(&order).await }, 5, EU, writes).await;
    let account = account.lock().expect("state");
    assert_eq!(account.records[1]["data"], EU);
    assert_eq!(account.records[0]["data"], US, "the apex stays");
    assert_eq!(account.writes, 1);
}

#[tokio::test]
async fn a_record_someone_else_changed_is_fenced_and_a_bad_token_refused_with_digitaloceans_text() {
    let (account, base) = start(Account {
        records: vec![record(3352893, "www", "203.0.113.99")],
        ..Account::default()
    })
    .await;
    let token = token_file(TOKEN);
    let fenced = step(&record_settings(&base, token.path())).run(&failover(5)).await;
    assert!(
        matches!(&fenced, Err(Failure::Fenced(m)) if m.contains("203.0.113.99")),
        "{fenced:?}"
    );
    assert_eq!(account.lock().expect("state").writes, 0);
    let wrong = token_file("dop_v1_wrong");
    let refused = step(&record_settings(&base, wrong.path())).run(&failover(5)).await;
    assert_eq!(
        refused,
        Err(Failure::Refused(
            "DigitalOcean answered 401 to listing the A records named www.shop.example: unauthorized Unable to authenticate you.".into()
        ))
    );
}

#[tokio::test]
async fn every_page_is_read_and_throttling_is_waited_out() {
    // 250 round-robin records of one name: two pages of 200, all counted.
    let records = (0..250).map(|i| record(1000 + i, "www", US)).collect();
    let (account, base) = start(Account {
        records,
        throttle: fake::Throttle { left: 1, seen: 0 },
        ..Account::default()
    })
    .await;
    let token = token_file(TOKEN);
    let refused = step(&record_settings(&base, token.path())).run(&failover(2)).await;
    assert!(
        matches!(&refused, Err(Failure::Refused(m)) if m.contains("has 250 A records")),
        "{refused:?}"
    );
    assert_eq!(account.lock().expect("state").throttle.seen, 1);
}

#[tokio::test]
async fn the_reserved_ip_moves_to_the_new_regions_droplet_after_its_action_completes() {
    let (account, base) = start(Account {
        droplet: Some(111),
        ..Account::default()
    })
    .await;
    let token = token_file(TOKEN);
    let step = &step(&ip_settings(&base, token.path()));
    let writes = || account.lock().expect("state").writes as usize;
    let run = |order| async move { step.run(&order).await };
    let done = fake::moves_then_stays(run, 8, "droplet 222", writes).await;
    assert!(done.contains("completed"), "{done}");
    let account = account.lock().expect("state");
    assert_eq!(account.droplet, Some(222));
    assert!(account.polls >= 3, "polled until completed: {}", account.polls);
    assert_eq!(account.writes, 1);
}

#[tokio::test]
async fn an_errored_action_is_retryable_and_an_ip_on_a_foreign_droplet_is_fenced() {
    let (account, base) = start(Account {
        droplet: Some(111),
        fail_actions: true,
        ..Account::default()
    })
    .await;
    let token = token_file(TOKEN);
    let step = step(&ip_settings(&base, token.path()));
    let errored = step.run(&failover(8)).await;
    assert!(
        matches!(&errored, Err(Failure::Retryable(m)) if m.contains("errored")),
        "{errored:?}"
    );
    assert_eq!(account.lock().expect("state").droplet, Some(111));
    account.lock().expect("state").droplet = Some(999);
    let fenced = step.run(&failover(9)).await;
    assert!(
        matches!(&fenced, Err(Failure::Fenced(m)) if m.contains("'999'")),
        "{fenced:?}"
    );
    assert_eq!(account.lock().expect("state").writes, 1, "no second assign");
}

/// A CNAME written without its final dot in the configuration is sent with it: DigitalOcean
/// refuses a CNAME's data without one (422), which would end every failover.
#[tokio::test]
async fn a_cname_is_sent_with_its_final_dot() {
    let mut cname = record(3352894, "shop", "lb-us.example.net.");
    cname["type"] = json!("CNAME");
    let (account, base) = start(Account {
        records: vec![cname],
        ..Account::default()
    })
    .await;
    let token = token_file(TOKEN);
    let settings = format!(
        r#"
token = {{ file = "{}" }}
api_url = "{base}"
domain = "shop.example"
record = "shop.shop.example"
type = "CNAME"
values = {{ us-east-1 = "lb-us.example.net", eu-west-1 = "lb-eu.example.net" }}
"#,
        token.path().display()
    );
    let step = &step(&settings);
    let writes = || account.lock().expect("state").writes as usize;
    fake::moves_then_stays(
        |order| async move { step.run(&order).await },
        5,
        "lb-eu.example.net",
        writes,
    )
    .await;
    let account = account.lock().expect("state");
    assert_eq!(account.records[0]["data"], "lb-eu.example.net.");
    assert_eq!(account.writes, 1, "read back as written: no second write");
}

/// An assign refused because the droplet has a pending event (still booting, say) is retried,
/// not a refusal that ends the failover.
#[tokio::test]
async fn an_assign_refused_for_a_pending_event_is_retried() {
    let (account, base) = start(Account {
        droplet: Some(111),
        pending_events: 1,
        ..Account::default()
    })
    .await;
    let token = token_file(TOKEN);
    let step = step(&ip_settings(&base, token.path()));
    let busy = step.run(&failover(8)).await;
    assert!(
        matches!(&busy, Err(Failure::Retryable(m)) if m.contains("pending event") && m.contains("retried")),
        "{busy:?}"
    );
    let done = step.run(&failover(8)).await;
    assert!(matches!(&done, Ok(m) if m.contains("completed")), "{done:?}");
    assert_eq!(account.lock().expect("state").droplet, Some(222));
}

/// The hourly limit spent: DigitalOcean sends `ratelimit-reset` without `Retry-After`; the step
/// does not sleep through the hour, and says how long the API asks for.
#[tokio::test]
async fn the_hourly_rate_limit_is_reported_with_its_wait() {
    let (account, base) = start(Account {
        records: vec![record(3352893, "www", US)],
        hourly_limit_spent: true,
        ..Account::default()
    })
    .await;
    let token = token_file(TOKEN);
    let limited = step(&record_settings(&base, token.path())).run(&failover(5)).await;
    let Err(Failure::Retryable(message)) = &limited else {
        panic!("{limited:?}");
    };
    assert!(
        message.contains("answered 429")
            && (message.contains("rate limited: the API asks for 3600 s")
                || message.contains("rate limited: the API asks for 3599 s")),
        "{message}"
    );
    assert_eq!(account.lock().expect("state").writes, 0);
}

#[test]
fn settings_problems_are_each_reported() {
    assert_refused(
        r#"
token = { file = "/nonexistent/do.token" }
reserved_ip = "not-an-ip"
droplets = { us-east-1 = 0 }
action_wait_ms = 0
"#,
        Collect::new(&["us-east-1", "eu-west-1"]),
        check,
        &[
            "cannot read /nonexistent/do.token",
            "'not-an-ip' is not an IPv4 address",
            "droplet id 0",
            "action_wait_ms = 0 is out of range",
        ],
    );
}
