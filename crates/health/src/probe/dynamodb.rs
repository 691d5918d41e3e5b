//! DynamoDB probe: `GetItem` of a key, or `Scan` with `Limit = 1`, against any endpoint that
//! speaks DynamoDB's JSON protocol; SigV4-signed when credentials are given. With
//! `lag_sources`, it also reads the replication lag into the check's region from the other
//! regions' Switchyard stores. With `write`, a conditional `PutItem` of a heartbeat into the
//! reserved table [`HEARTBEAT_TABLE`] follows the read: a store that can read but not write is
//! down.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;

use dynamo_protocol::sigv4::{JSON_CONTENT_TYPE, format_amz_date, sign_request};

use super::{Finding, http::exchange};

/// Path of a Switchyard store's health document.
const STORE_HEALTH_PATH: &str = "/health";
/// The reserved table of write probes; Switchyard's store creates it (its
/// `engine::HEALTH_TABLE`), hides it from ListTables and never replicates it.
pub const HEARTBEAT_TABLE: &str = "__switchyard_health";
/// The heartbeat item's partition key.
const HEARTBEAT_KEY: &str = "heartbeat";

pub(super) async fn probe(
    endpoint: &str,
    table: &str,
    key: Option<&serde_json::Value>,
    region: &str,
    credentials: Option<(&str, &str)>,
    write: bool,
) -> Finding {
    let uri: hyper::Uri = match endpoint.parse() {
        Ok(uri) => uri,
        Err(error) => return Finding::down(format!("endpoint '{endpoint}': {error}")),
    };
    let https = uri.scheme_str() == Some("https");
    let Some(authority) = uri.authority().map(|a| a.as_str().to_string()) else {
        return Finding::down(format!("endpoint '{endpoint}' is not http(s)://host:port"));
    };
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let (operation, body) = match key {
        Some(key) => ("GetItem", serde_json::json!({"TableName": table, "Key": key})),
        None => ("Scan", serde_json::json!({"TableName": table, "Limit": 1})),
    };
    let target = Target {
        authority: &authority,
        host: &host,
        port,
        https,
        region,
        credentials,
    };
    let read = match target.call(operation, &body).await {
        Err(error) => return Finding::down(error),
        Ok((status, body)) => judge(operation, table, status, &body),
    };
    if !read.success || !write {
        return read;
    }
    let heartbeat = heartbeat_request(&nonce(), now_ms());
    let written = match target.call("PutItem", &heartbeat).await {
        Err(error) => return Finding::down(format!("{}; heartbeat write: {error}", read.detail)),
        Ok((status, body)) => judge("PutItem", HEARTBEAT_TABLE, status, &body),
    };
    let detail = format!("{}; {}", read.detail, written.detail);
    if written.success {
        Finding::up(detail)
    } else {
        Finding::down(detail)
    }
}

/// Where a probe sends its requests.
struct Target<'a> {
    authority: &'a str,
    host: &'a str,
    port: u16,
    https: bool,
    region: &'a str,
    credentials: Option<(&'a str, &'a str)>,
}

impl Target<'_> {
    async fn call(&self, operation: &str, body: &serde_json::Value) -> Result<(u16, Vec<u8>), String> {
        let now_secs = (now_ms() / 1000) as i64;
        let request = build_request(
            self.authority,
            operation,
            body.to_string().into_bytes(),
            self.region,
            self.credentials,
            now_secs,
        )?;
        exchange(self.host, self.port, self.https, request).await
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A value no earlier heartbeat of this process used (time and a counter): the condition
/// below then holds, so only a store that cannot write fails the put.
fn nonce() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{}-{count}", std::process::id())
}

/// The conditional put of the heartbeat: a condition makes the store evaluate it in its
/// writer, as the shop's conditional writes are.
fn heartbeat_request(nonce: &str, now_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "TableName": HEARTBEAT_TABLE,
        "Item": {
            "pk": {"S": HEARTBEAT_KEY},
            "nonce": {"S": nonce},
            "at_unix_ms": {"N": now_ms.to_string()},
        },
        "ConditionExpression": "attribute_not_exists(nonce) OR nonce <> :nonce",
        "ExpressionAttributeValues": {":nonce": {"S": nonce}},
    })
}

fn build_request(
    authority: &str,
    operation: &str,
    body: Vec<u8>,
    region: &str,
    credentials: Option<(&str, &str)>,
    now_secs: i64,
) -> Result<Request<Full<Bytes>>, String> {
    let amz_date = format_amz_date(now_secs);
    let target = format!("DynamoDB_20120810.{operation}");
    let content_type = JSON_CONTENT_TYPE;
    let mut builder = Request::builder()
        .method("POST")
        .uri("/")
        .header("host", authority)
        .header("content-type", content_type)
        .header("x-amz-date", &amz_date)
        .header("x-amz-target", &target)
        .header("user-agent", "switchyard-health/1");
    if let Some((access_key_id, secret)) = credentials {
        let authorization = sign_request(access_key_id, secret, region, authority, &amz_date, &target, &body)
            .map_err(|e| format!("sign request: {e}"))?;
        builder = builder.header("authorization", authorization);
    }
    builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("build request: {e}"))
}

/// What one lag source said about the replication into `region`: a lag, or why there is none.
pub(super) type LagReading = Result<u64, String>;

/// Adds to a successful finding the inbound replication lag of `region`: the largest outbound
/// lag to `region` among the `sources` (the other regions' stores) that answer by `deadline`.
/// A source that fails gives no reading; with no reading at all the lag stays unknown.
pub(super) async fn read_inbound_lag(
    finding: Finding,
    sources: &[String],
    region: &str,
    deadline: tokio::time::Instant,
) -> Finding {
    let mut reads = tokio::task::JoinSet::new();
    for (index, source) in sources.iter().enumerate() {
        let source = source.clone();
        let region = region.to_string();
        reads.spawn(async move {
            let (reading, clock) = match tokio::time::timeout_at(deadline, read_peer_lag(&source, &region)).await {
                Ok(answer) => answer,
                Err(_) => (Err("no answer within the probe's lag budget".to_string()), None),
            };
            (index, reading, clock)
        });
    }
    let mut readings: Vec<Option<LagReading>> = vec![None; sources.len()];
    let mut clock_alarms = Vec::new();
    while let Some(joined) = reads.join_next().await {
        if let Ok((index, reading, clock)) = joined {
            readings[index] = Some(reading);
            clock_alarms.extend(clock);
        }
    }
    let readings: Vec<LagReading> = readings
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("lag read did not finish".into())))
        .collect();
    let (lag_ms, mut note) = summarize(sources, region, &readings);
    for alarm in clock_alarms {
        note.push_str(&format!("; {alarm}"));
    }
    Finding {
        detail: format!("{}; {note}", finding.detail),
        ..finding
    }
    .with_lag(lag_ms)
}

/// The largest lag among the readings (None when none), and words for the probe's detail.
pub(super) fn summarize(sources: &[String], region: &str, readings: &[LagReading]) -> (Option<u64>, String) {
    let lag_ms = readings.iter().filter_map(|r| r.as_ref().ok()).copied().max();
    let known = readings.iter().filter(|r| r.is_ok()).count();
    let failures: Vec<String> = sources
        .iter()
        .zip(readings)
        .filter_map(|(source, reading)| reading.as_ref().err().map(|e| format!("{source}: {e}")))
        .collect();
    let mut note = match lag_ms {
        Some(lag) => format!(
            "replication lag into {region} {lag} ms (max of {known} of {} sources)",
            sources.len()
        ),
        None => format!("replication lag into {region} unknown"),
    };
    if !failures.is_empty() {
        note.push_str(&format!(" (no reading from {})", failures.join("; ")));
    }
    (lag_ms, note)
}

/// GETs a store's `/health` and reads its outbound replication to `region`, and the clock
/// alarm it raises about `region`, if any.
async fn read_peer_lag(source: &str, region: &str) -> (LagReading, Option<String>) {
    match read_peer_health(source).await {
        Ok(health) => (peer_lag(&health, region), clock_alarm(&health, region)),
        Err(error) => (Err(error), None),
    }
}

/// What a store that replicates to `region` says of `region`'s clock when it raises its alarm:
/// the check's detail (and so `switchyard status` and the dashboard) shows it.
fn clock_alarm(health: &serde_json::Value, region: &str) -> Option<String> {
    let clock = health.pointer("/replication/clock")?;
    let peer = clock.get("peers")?.get(region)?;
    if peer.get("alarm").and_then(|a| a.as_bool()) != Some(true) {
        return None;
    }
    let offset = peer.get("offset_ms").and_then(|o| o.as_i64())?;
    let observer = health
        .pointer("/replication/region")
        .and_then(|r| r.as_str())
        .unwrap_or("a peer");
    let threshold = clock.get("offset_alarm_ms").and_then(|t| t.as_u64()).unwrap_or(0);
    let direction = if offset >= 0 { "ahead of" } else { "behind" };
    Some(format!(
        "clock alarm: {region}'s clock runs {} ms {direction} {observer}'s (alarm past {threshold} ms; check NTP)",
        offset.unsigned_abs()
    ))
}

/// GETs a store's `/health` document.
async fn read_peer_health(source: &str) -> Result<serde_json::Value, String> {
    let uri: hyper::Uri = source.parse().map_err(|e| format!("url: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| "not http(s)://host:port".to_string())?;
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let request = Request::builder()
        .method("GET")
        .uri(STORE_HEALTH_PATH)
        .header("host", authority)
        .header("user-agent", "switchyard-health/1")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("build request: {e}"))?;
    let (status, body) = exchange(&host, port, https, request).await?;
    // A store whose writer stopped answers 503 with the same document; its replication
    // counters are still what its peers lack.
    if status != 200 && status != 503 {
        return Err(format!("GET {STORE_HEALTH_PATH}: HTTP {status}"));
    }
    serde_json::from_slice(&body).map_err(|_| format!("GET {STORE_HEALTH_PATH}: body is not JSON"))
}

/// Reads `replication.peers.<region>` of a store's health document.
fn peer_lag(health: &serde_json::Value, region: &str) -> LagReading {
    let replication = health.get("replication").filter(|r| !r.is_null()).ok_or_else(|| {
        "the store does not replicate (no replication in its /health); list only global-table stores".to_string()
    })?;
    let peer = replication
        .get("peers")
        .and_then(|peers| peers.get(region))
        .ok_or_else(|| format!("the store has no replication peer named '{region}'"))?;
    // Clocks more than the signing window apart: the two regions refuse each other's changes,
    // so no lag figure means anything, and failing back to that region must wait.
    let split = replication
        .pointer("/clock/beyond_signing_window")
        .and_then(|peers| peers.as_array())
        .is_some_and(|peers| peers.iter().any(|p| p.as_str() == Some(region)));
    if split {
        return Err(format!(
            "replication to '{region}' is refused: the two regions' clocks are more than 5 minutes apart (fix NTP); lag unknown"
        ));
    }
    if peer.get("repairing").and_then(|r| r.as_bool()) == Some(true) {
        return Err(format!(
            "replication to '{region}' is being repaired; lag unknown until it ends"
        ));
    }
    let lag_ms = peer
        .get("lag_ms")
        .and_then(|l| l.as_u64())
        .ok_or_else(|| format!("peer '{region}' has no numeric lag_ms"))?;
    let pending = peer.get("pending_changes").and_then(|p| p.as_u64()).unwrap_or(0);
    // Changes still to ship whose age reads 0 (written this millisecond, or their age could not
    // be read) are behind all the same: never report such a peer as fully caught up.
    Ok(if pending > 0 { lag_ms.max(1) } else { lag_ms })
}

fn judge(operation: &str, table: &str, status: u16, body: &[u8]) -> Finding {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if status == 200 {
        let found = match (operation, &json) {
            ("PutItem", Some(_)) => "heartbeat written".to_string(),
            ("GetItem", Some(json)) => {
                if json.get("Item").is_some() {
                    "item found".to_string()
                } else {
                    "no such item".to_string()
                }
            }
            (_, Some(json)) => format!("{} items", json.get("Count").and_then(|c| c.as_u64()).unwrap_or(0)),
            (_, None) => return Finding::down(format!("{operation} {table}: HTTP 200 with a body that is not JSON")),
        };
        return Finding::up(format!("{operation} {table}: {found}"));
    }
    let kind = json
        .as_ref()
        .and_then(|j| j.get("__type"))
        .and_then(|t| t.as_str())
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        .unwrap_or_default();
    let message = json
        .as_ref()
        .and_then(|j| j.get("message").or_else(|| j.get("Message")))
        .and_then(|m| m.as_str())
        .unwrap_or("");
    Finding::down(
        format!("{operation} {table}: HTTP {status} {kind} {message}")
            .trim_end()
            .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_protocol::sigv4::{Credentials, RequestParts, verify};

    #[test]
    fn signed_requests_verify() {
        let body = br#"{"TableName":"t","Limit":1}"#.to_vec();
        let now = 1_700_000_000;
        let request = build_request(
            "127.0.0.1:8000",
            "Scan",
            body.clone(),
            "eu-west-1",
            Some(("AKID", "SECRET")),
            now,
        )
        .expect("builds");
        let headers: Vec<(String, Vec<u8>)> = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        let parts = RequestParts {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: &body,
        };
        let mut credentials = Credentials::new();
        credentials.insert("AKID", "SECRET");
        verify(&credentials, &parts, now).expect("the store's verifier accepts the signature");
        let mut wrong = Credentials::new();
        wrong.insert("AKID", "OTHER");
        assert!(verify(&wrong, &parts, now).is_err());
    }

    #[test]
    fn peer_lag_reads_the_named_peer() {
        let health = serde_json::json!({"replication": {"region": "eu", "peers": {
            "us": {"lag_ms": 120, "pending_changes": 4, "repairing": false},
            "ap": {"lag_ms": 0, "pending_changes": 2, "repairing": false},
            "sa": {"lag_ms": 0, "pending_changes": 0, "repairing": false},
            "af": {"lag_ms": 0, "pending_changes": 0, "repairing": true},
        }}});
        assert_eq!(peer_lag(&health, "us"), Ok(120));
        assert_eq!(peer_lag(&health, "ap"), Ok(1), "pending changes are never 0 lag");
        assert_eq!(peer_lag(&health, "sa"), Ok(0));
        assert!(peer_lag(&health, "af").expect_err("repairing").contains("repaired"));
        assert!(peer_lag(&health, "xx").expect_err("missing").contains("'xx'"));
        let split = serde_json::json!({"replication": {"region": "eu",
            "clock": {"beyond_signing_window": ["us"]},
            "peers": {"us": {"lag_ms": 0, "pending_changes": 0, "repairing": false}}}});
        assert!(peer_lag(&split, "us").expect_err("split").contains("clocks"));
        assert_eq!(clock_alarm(&split, "us"), None, "no alarm raised");
        let skewed = serde_json::json!({"replication": {"region": "eu",
            "clock": {"offset_alarm_ms": 500, "peers": {"us": {"offset_ms": -2000, "alarm": true}}},
            "peers": {"us": {"lag_ms": 0, "pending_changes": 0, "repairing": false}}}});
        assert_eq!(
            clock_alarm(&skewed, "us").as_deref(),
            Some("clock alarm: us's clock runs 2000 ms behind eu's (alarm past 500 ms; check NTP)")
        );
        let alone = serde_json::json!({"status": "ready", "replication": null});
        assert!(
            peer_lag(&alone, "us")
                .expect_err("no replication")
                .contains("does not replicate")
        );
    }

    #[test]
    fn summary_takes_the_max_and_never_invents_zero() {
        let sources = vec!["http://a".to_string(), "http://b".to_string()];
        let (lag, note) = summarize(&sources, "us", &[Ok(5), Ok(40)]);
        assert_eq!(lag, Some(40));
        assert!(note.contains("40 ms (max of 2 of 2 sources)"), "{note}");
        let (lag, note) = summarize(&sources, "us", &[Err("refused".into()), Ok(7)]);
        assert_eq!(lag, Some(7));
        assert!(note.contains("http://a: refused"), "{note}");
        let (lag, note) = summarize(&sources, "us", &[Err("refused".into()), Err("timeout".into())]);
        assert_eq!(lag, None);
        assert!(note.contains("unknown"), "{note}");
    }

    #[test]
    fn errors_name_the_type() {
        let body = br#"{"__type":"com.amazonaws.dynamodb.v20120810#ResourceNotFoundException","message":"Requested resource not found"}"#;
        let finding = judge("Scan", "t", 400, body);
        assert!(!finding.success);
        assert_eq!(
            finding.detail,
            "Scan t: HTTP 400 ResourceNotFoundException Requested resource not found"
        );
        assert!(judge("GetItem", "t", 200, br#"{"Item":{}}"#).success);
        assert!(!judge("GetItem", "t", 200, b"<html>").success);
    }
}
