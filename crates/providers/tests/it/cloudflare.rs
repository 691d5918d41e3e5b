//! The `cloudflare` step against an in-test fake of Cloudflare's API v4: Cloudflare has no
//! local server, so the fake follows its documented request and response shapes — paths under
//! `/client/v4`, `Authorization: Bearer` with a scoped token (403 with error code 10000
//! "Authentication error" otherwise), the `{success, errors[{code, message}], messages,
//! result, result_info}` envelope, the DNS record list filtered by `type` and `name.exact` and
//! paginated by `page`/`per_page` with `result_info.total_pages`, `PATCH` of a record's
//! `content`/`comment`, Load Balancing pools' `enabled`, and 429 with `Retry-After` (error
//! code 971) when throttled: a second or two, or the five minutes Cloudflare blocks a token
//! that went over its global limit (developers.cloudflare.com/fundamentals/api/reference/limits).

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::common::{assert_refused, check_settings};
use crate::fake::{self, Collect, Request, answer, failover, order, token_file};
use providers::Failure;

const TOKEN: &str = "cf-scoped-token-for-tests";
const ZONE: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const ACCOUNT: &str = "01a7362d577a6c3019a474fd6f485823";
const POOL_US: &str = "17b5962d775c646f3f9725cbc7a53df4";
const POOL_EU: &str = "9290f38c5d07c2e2f4df57b1f61d4196";
const US: &str = "192.0.2.10";
const EU: &str = "198.51.100.20";

#[derive(Default)]
struct Zone {
    records: Vec<Value>,
    pools: Vec<Value>,
    throttle: fake::Throttle,
    /// The `Retry-After` of a throttled answer in seconds (default 1).
    retry_after_s: Option<u64>,
    patches: Vec<(String, Value)>,
}

type Shared = Arc<Mutex<Zone>>;

fn envelope(result: Value) -> Value {
    json!({"success": true, "errors": [], "messages": [], "result": result})
}

fn failure(status: u16, code: u32, message: &str) -> axum::response::Response {
    answer(
        status,
        json!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null}),
        &[],
    )
}

fn handle(zone: &Shared, request: Request) -> axum::response::Response {
    let mut zone = zone.lock().expect("fake state");
    if request.bearer() != Some(TOKEN) {
        return failure(403, 10000, "Authentication error");
    }
    if zone.throttle.take() {
        return answer(
            429,
            json!({"success": false, "errors": [{"code": 971, "message": "Please wait and consider throttling your request speed"}], "messages": [], "result": null}),
            &[("retry-after", &zone.retry_after_s.unwrap_or(1).to_string())],
        );
    }
    let parts: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    match (request.method.as_str(), parts.as_slice()) {
        ("GET", ["client", "v4", "zones", zone_id, "dns_records"]) if *zone_id == ZONE => {
            let matching: Vec<&Value> = zone
                .records
                .iter()
                .filter(|r| request.query("type").is_none_or(|t| r["type"] == t))
                .filter(|r| request.query("name.exact").is_none_or(|n| r["name"] == n))
                .collect();
            let page = fake::page_of(&request, 100, matching);
            let mut body = envelope(json!(page.items));
            body["result_info"] = json!({"page": page.page, "per_page": page.per_page, "count": page.items.len(), "total_count": page.total, "total_pages": page.pages});
            answer(200, body, &[])
        }
        (method @ ("GET" | "PATCH"), ["client", "v4", "zones", zone_id, "dns_records", id]) if *zone_id == ZONE => {
            let Some(record) = zone.records.iter_mut().find(|r| r["id"] == *id) else {
                return failure(404, 81044, "Record does not exist.");
            };
            if method == "PATCH" {
                let body = request.json();
                if let Some(content) = body.get("content").and_then(Value::as_str) {
                    let stored = stored_content(record["type"].as_str().unwrap_or_default(), content);
                    record["content"] = json!(stored);
                }
                if let Some(comment) = body.get("comment") {
                    record["comment"] = comment.clone();
                }
                let record = record.clone();
                zone.patches.push((id.to_string(), body));
                return answer(200, envelope(record), &[]);
            }
            answer(200, envelope(record.clone()), &[])
        }
        (method @ ("GET" | "PATCH"), ["client", "v4", "accounts", account, "load_balancers", "pools", id])
            if *account == ACCOUNT =>
        {
            let Some(pool) = zone.pools.iter_mut().find(|p| p["id"] == *id) else {
                return failure(404, 1002, "Pool not found");
            };
            if method == "PATCH" {
                let body = request.json();
                if let Some(enabled) = body.get("enabled") {
                    pool["enabled"] = enabled.clone();
                }
                let pool = pool.clone();
                zone.patches.push((id.to_string(), body));
                return answer(200, envelope(pool), &[]);
            }
            answer(200, envelope(pool.clone()), &[])
        }
        _ => failure(404, 7003, "Could not route to the requested path"),
    }
}

/// A record's content as Cloudflare stores (and then returns) it: an IPv6 address compressed
/// and in lower case, a CNAME target without its final dot, TXT content as a quoted
/// character string (RFC 1035).
fn stored_content(record_type: &str, content: &str) -> String {
    match record_type {
        "AAAA" => content
            .parse::<std::net::Ipv6Addr>()
            .map_or_else(|_| content.to_string(), |ip| ip.to_string()),
        "CNAME" => content.trim_end_matches('.').to_string(),
        "TXT" if !content.starts_with('"') => format!("\"{}\"", content.replace('"', "\\\"")),
        _ => content.to_string(),
    }
}

fn record(id: &str, name: &str, content: &str, comment: Option<&str>) -> Value {
    json!({
        "id": id, "zone_id": ZONE, "zone_name": "shop.example", "name": name, "type": "A",
        "content": content, "proxiable": true, "proxied": false, "ttl": 60, "locked": false,
        "comment": comment, "tags": [], "created_on": "2026-01-01T00:00:00Z", "modified_on": "2026-01-01T00:00:00Z"
    })
}

async fn start(zone: Zone) -> (Shared, String) {
    let shared: Shared = Arc::new(Mutex::new(zone));
    let state = Arc::clone(&shared);
    let base = fake::serve(move |request| handle(&state, request)).await;
    (shared, format!("{base}/client/v4"))
}

fn check(
    settings: &providers::cloudflare::Settings,
    checker: &mut Collect,
) -> Option<providers::cloudflare::Cloudflare> {
    settings.check("dns", checker)
}

fn step(settings: &str) -> providers::cloudflare::Cloudflare {
    check_settings(settings, Collect::new(&["us-east-1", "eu-west-1"]), check).expect("a checked step")
}

fn record_settings(base: &str, token_file: &std::path::Path) -> String {
    format!(
        r#"
token = {{ file = "{}" }}
api_url = "{base}"
zone_id = "{ZONE}"
record = "shop.example"
type = "A"
values = {{ us-east-1 = "{US}", eu-west-1 = "{EU}" }}
"#,
        token_file.display()
    )
}

/// An operator's comment on the record stays, with the generation beside it.
#[tokio::test]
async fn the_record_keeps_an_operators_comment_beside_the_generation() {
    let (zone, base) = start(Zone {
        records: vec![record("r1", "shop.example", US, Some("shop front, ticket OPS-12"))],
        ..Zone::default()
    })
    .await;
    let token = token_file(TOKEN);
    let step = step(&record_settings(&base, token.path()));
    step.run(&order(5, Some("us-east-1"), "eu-west-1"))
        .await
        .expect("moved");
    assert_eq!(
        zone.lock().expect("state").records[0]["comment"],
        "shop front, ticket OPS-12; switchyard generation 5"
    );
    step.run(&order(6, Some("eu-west-1"), "us-east-1"))
        .await
        .expect("moved back");
    let zone = zone.lock().expect("state");
    assert_eq!(zone.records[0]["content"], US);
    assert_eq!(
        zone.records[0]["comment"],
        "shop front, ticket OPS-12; switchyard generation 6"
    );
}

#[tokio::test]
async fn a_failover_points_the_record_at_the_new_region_with_its_generation_and_reads_it_back() {
    let (zone, base) = start(Zone {
        records: vec![
            record("r1", "shop.example", US, None),
            record("r2", "www.shop.example", US, None),
        ],
        ..Zone::default()
    })
    .await;
    let token = token_file(TOKEN);
    let step = &step(&record_settings(&base, token.path()));
    // Then the same order again (a retry): nothing to write.
    let patches = || zone.lock().expect("state").patches.len();
    fake::moves_then_stays(|order| async move { step.run(&order).await }, 5, EU, patches).await;
    {
        let zone = zone.lock().expect("state");
        assert_eq!(zone.records[0]["content"], EU);
        assert_eq!(zone.records[0]["comment"], "switchyard generation 5");
        assert_eq!(zone.records[1]["content"], US, "only the named record changes");
        assert_eq!(zone.patches.len(), 1);
    }
    // And back: the value this controller wrote is overwritten.
    step.run(&order(6, Some("eu-west-1"), "us-east-1"))
        .await
        .expect("moved back");
    assert_eq!(zone.lock().expect("state").records[0]["content"], US);
}

/// Cloudflare stores an AAAA content compressed and in lower case: a value written otherwise
/// reads back in Cloudflare's form, which is the same address — moved, not "reads back as
/// something else" on every attempt, and ordered again, already there.
#[tokio::test]
async fn a_value_cloudflare_stores_in_its_own_form_reads_back_as_the_value_written() {
    let mut aaaa = record("r1", "shop.example", "2001:db8::10", None);
    aaaa["type"] = json!("AAAA");
    let (zone, base) = start(Zone {
        records: vec![aaaa],
        ..Zone::default()
    })
    .await;
    let token = token_file(TOKEN);
    let settings = format!(
        r#"
token = {{ file = "{}" }}
api_url = "{base}"
zone_id = "{ZONE}"
record = "shop.example"
type = "AAAA"
values = {{ us-east-1 = "2001:DB8:0:0::10", eu-west-1 = "2001:DB8:0:0::20" }}
"#,
        token.path().display()
    );
    let step = &step(&settings);
    let patches = || zone.lock().expect("state").patches.len();
    fake::moves_then_stays(
        |order| async move { step.run(&order).await },
        5,
        "2001:DB8:0:0::20",
        patches,
    )
    .await;
    assert_eq!(zone.lock().expect("state").records[0]["content"], "2001:db8::20");
}

#[tokio::test]
async fn a_record_changed_by_someone_else_or_by_a_newer_generation_is_fenced_and_left_alone() {
    let (zone, base) = start(Zone {
        records: vec![record("r1", "shop.example", "203.0.113.99", None)],
        ..Zone::default()
    })
    .await;
    let token = token_file(TOKEN);
    let step = step(&record_settings(&base, token.path()));
    let fenced = step.run(&failover(5)).await;
    assert!(
        matches!(&fenced, Err(Failure::Fenced(m)) if m.contains("203.0.113.99") && m.contains("someone else")),
        "{fenced:?}"
    );
    zone.lock().expect("state").records[0] = record("r1", "shop.example", US, Some("switchyard generation 9"));
    let stale = step.run(&failover(5)).await;
    assert!(
        matches!(&stale, Err(Failure::Fenced(m)) if m.contains("generation 9")),
        "{stale:?}"
    );
    let zone = zone.lock().expect("state");
    assert!(zone.patches.is_empty(), "nothing written: {:?}", zone.patches);
    assert_eq!(zone.records[0]["content"], US);
}

/// A token over Cloudflare's global limit is blocked for five minutes: the step does not sleep
/// through them inside one attempt, and says how long Cloudflare asks for.
#[tokio::test]
async fn a_five_minute_block_is_reported_with_its_wait_not_slept_through() {
    let (zone, base) = start(Zone {
        records: vec![record("r1", "shop.example", US, None)],
        throttle: fake::Throttle { left: 10, seen: 0 },
        retry_after_s: Some(300),
        ..Zone::default()
    })
    .await;
    let token = token_file(TOKEN);
    let blocked = step(&record_settings(&base, token.path())).run(&failover(3)).await;
    assert!(
        matches!(&blocked, Err(Failure::Retryable(m))
            if m.contains("answered 429") && m.contains("971") && m.contains("the API asks for 300 s")),
        "{blocked:?}"
    );
    assert_eq!(
        zone.lock().expect("state").throttle.seen,
        1,
        "asked once, not retried at once"
    );
}

#[tokio::test]
async fn throttling_is_waited_out_and_a_bad_token_is_refused_with_cloudflares_text() {
    let (zone, base) = start(Zone {
        records: vec![record("r1", "shop.example", US, None)],
        throttle: fake::Throttle { left: 1, seen: 0 },
        ..Zone::default()
    })
    .await;
    let token = token_file(TOKEN);
    step(&record_settings(&base, token.path()))
        .run(&failover(3))
        .await
        .expect("moved after the 429");
    assert_eq!(zone.lock().expect("state").throttle.seen, 1);
    assert_eq!(zone.lock().expect("state").records[0]["content"], EU);

    let wrong = token_file("not-the-token");
    let refused = step(&record_settings(&base, wrong.path()))
        .run(&order(4, Some("eu-west-1"), "us-east-1"))
        .await;
    assert_eq!(
        refused,
        Err(Failure::Refused(
            "Cloudflare answered 403 to listing the A records named shop.example: 10000 Authentication error".into()
        ))
    );
}

#[tokio::test]
async fn every_page_of_the_listing_is_read() {
    // 120 round-robin A records of one name span two pages of 100: the step counts them all
    // and refuses to pick one.
    let records = (0..120)
        .map(|i| record(&format!("r{i}"), "shop.example", US, None))
        .collect();
    let (_zone, base) = start(Zone {
        records,
        ..Zone::default()
    })
    .await;
    let token = token_file(TOKEN);
    let refused = step(&record_settings(&base, token.path())).run(&failover(2)).await;
    assert!(
        matches!(&refused, Err(Failure::Refused(m)) if m.contains("has 120 A records")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn pools_of_serving_regions_are_enabled_first_and_the_others_disabled() {
    let pool = |id: &str, name: &str, enabled: bool| json!({"id": id, "name": name, "enabled": enabled, "minimum_origins": 1, "origins": [], "created_on": "2026-01-01T00:00:00Z"});
    let (zone, base) = start(Zone {
        pools: vec![pool(POOL_US, "us", true), pool(POOL_EU, "eu", false)],
        ..Zone::default()
    })
    .await;
    let token = token_file(TOKEN);
    let settings = format!(
        r#"
token = {{ file = "{}" }}
api_url = "{base}"
account_id = "{ACCOUNT}"
pools = {{ us-east-1 = "{POOL_US}", eu-west-1 = "{POOL_EU}" }}
"#,
        token.path().display()
    );
    let step = step(&settings);
    let done = step.run(&failover(7)).await.expect("pools moved");
    assert!(
        done.contains("eu-west-1 enabled") && done.contains("us-east-1 disabled"),
        "{done}"
    );
    {
        let zone = zone.lock().expect("state");
        assert_eq!(zone.pools[0]["enabled"], false);
        assert_eq!(zone.pools[1]["enabled"], true);
        let order: Vec<&str> = zone.patches.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            order,
            vec![POOL_EU, POOL_US],
            "the new pool is enabled before the old one is disabled"
        );
    }
    let again = step.run(&failover(7)).await.expect("idempotent");
    assert!(again.contains("already"), "{again}");
    assert_eq!(zone.lock().expect("state").patches.len(), 2);
}

#[test]
fn settings_problems_are_each_reported() {
    assert_refused(
        r#"
token = { env = "SWITCHYARD_TEST_CF_UNSET" }
api_url = "http://api.cloudflare.com/client/v4"
zone_id = "not-an-id"
record = "shop.example"
type = "MX"
values = { us-east-1 = "192.0.2.1", mars-1 = "192.0.2.2" }
"#,
        Collect::new(&["us-east-1", "eu-west-1"]),
        check,
        &[
            "SWITCHYARD_TEST_CF_UNSET is not set",
            "plain http to a non-loopback host",
            "'not-an-id' is not a Cloudflare identifier",
            "type 'MX' is not supported",
            "unknown region 'mars-1'",
            "no value for region(s) eu-west-1",
        ],
    );
}
