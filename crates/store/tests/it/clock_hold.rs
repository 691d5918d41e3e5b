//! The wall clock going wrong: the sweeps that delete for good (TTL expiry, stream retention)
//! hold back by how far a peer's clock runs behind this region's, so a clock that jumps ahead
//! deletes nothing the other regions do not agree is due; and stream labels stay increasing
//! when the clock was set back across a restart.

use serde_json::json;

use crate::support::{Calls, ClockedStore};

const DAY_MS: u64 = 24 * 3_600_000;

struct ClockHold;

type Harness = ClockedStore<ClockHold>;

impl Harness {
    async fn create_with_ttl(&self) {
        self.ok(
            "CreateTable",
            json!({"TableName": "carts", "BillingMode": "PAY_PER_REQUEST",
                   "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                   "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                   "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "NEW_IMAGE"}}),
        )
        .await;
        self.ok(
            "UpdateTimeToLive",
            json!({"TableName": "carts", "TimeToLiveSpecification": {"Enabled": true, "AttributeName": "expires"}}),
        )
        .await;
    }

    async fn put(&self, id: &str, expires_s: u64) {
        self.ok(
            "PutItem",
            json!({"TableName": "carts", "Item": {"id": {"S": id}, "expires": {"N": expires_s.to_string()}}}),
        )
        .await;
    }

    async fn ids(&self) -> Vec<String> {
        let scan = self
            .ok("Scan", json!({"TableName": "carts", "ConsistentRead": true}))
            .await;
        let mut ids: Vec<String> = scan["Items"]
            .as_array()
            .expect("Items")
            .iter()
            .map(|item| item["id"]["S"].as_str().expect("id").to_string())
            .collect();
        ids.sort();
        ids
    }
}

/// This region's clock jumps two days ahead while a peer's stays right: TTL expiry deletes only
/// what is due by the peer's clock, and the stream keeps its records, until the hold is lifted.
#[tokio::test]
async fn a_clock_jumped_ahead_of_its_peers_expires_and_trims_nothing_early() {
    let h = Harness::new();
    h.create_with_ttl().await;
    let true_now_s = h.now() / 1000;
    h.put("due", true_now_s - 3_600).await;
    h.put("tomorrow", true_now_s + 86_400).await;
    // The wall clock jumps two days ahead; replication measured a peer two days behind it.
    h.advance(2 * DAY_MS);
    h.engine.hold_sweeps_back(2 * DAY_MS, h.now());
    assert_eq!(h.engine.sweep_hold_ms(), 2 * DAY_MS);
    assert_eq!(h.engine.expire_once().await.expect("sweep"), 1);
    assert_eq!(h.ids().await, ["tomorrow"], "only what the peer's clock says is due");
    assert_eq!(
        h.engine.trim_streams_once().await.expect("trim"),
        0,
        "the stream's records are a day old by the peer's clock, not past retention"
    );
    // The peer's clock is right after all (this one was stopped two days): the hold lifts.
    h.engine.hold_sweeps_back(0, h.now());
    assert_eq!(h.engine.expire_once().await.expect("sweep"), 1);
    assert_eq!(h.ids().await, Vec::<String>::new());
}

/// A measurement that is not renewed stops holding anything back after
/// `SWEEP_HOLD_MEMORY_MS`: a peer that went quiet cannot stop TTL expiry for good.
#[tokio::test]
async fn a_hold_not_renewed_lapses() {
    let h = Harness::new();
    h.create_with_ttl().await;
    h.put("soon", h.now() / 1000 + 60).await;
    h.engine.hold_sweeps_back(DAY_MS, h.now());
    h.advance(120_000);
    assert_eq!(h.engine.expire_once().await.expect("sweep"), 0, "held back a day");
    h.advance(store::engine::SWEEP_HOLD_MEMORY_MS);
    assert_eq!(h.engine.sweep_hold_ms(), 0);
    assert_eq!(h.engine.expire_once().await.expect("sweep"), 1);
}

/// A stream enabled after the clock was set back across a restart still gets a label newer
/// than the table's earlier stream's, so the new stream, not the old disabled one, is current.
#[tokio::test]
async fn a_stream_enabled_after_the_clock_went_back_across_a_restart_gets_a_newer_label() {
    use std::sync::Arc;

    use crate::support::ManualClock;
    use store::{Engine, Store};

    let dir = tempfile::tempdir().expect("temporary directory");
    let start = crate::support::START_MS;
    let first_label = {
        let engine = Engine::open(dir.path(), "us-east-1", Arc::new(ManualClock::starting_at(start))).expect("open");
        let store = Store::new(engine.clone());
        let created = store
            .handle(
                "CreateTable",
                json!({"TableName": "carts", "BillingMode": "PAY_PER_REQUEST",
                       "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                       "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                       "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "KEYS_ONLY"}})
                .to_string()
                .as_bytes(),
            )
            .await
            .expect("create");
        store
            .handle(
                "UpdateTable",
                json!({"TableName": "carts", "StreamSpecification": {"StreamEnabled": false}})
                    .to_string()
                    .as_bytes(),
            )
            .await
            .expect("disable");
        engine.close().await;
        created["TableDescription"]["LatestStreamLabel"]
            .as_str()
            .expect("a label")
            .to_string()
    };
    // The clock was an hour ahead; NTP set it back while the store was down. (The closed
    // engine's writer thread lets the file go just after it answers the close.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let engine = loop {
        match Engine::open(
            dir.path(),
            "us-east-1",
            Arc::new(ManualClock::starting_at(start - 3_600_000)),
        ) {
            Ok(engine) => break engine,
            Err(error) if std::time::Instant::now() < deadline && error.to_string().contains("already open") => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(error) => panic!("reopen: {error}"),
        }
    };
    let store = Store::new(engine);
    let enabled = store
        .handle(
            "UpdateTable",
            json!({"TableName": "carts", "StreamSpecification": {"StreamEnabled": true, "StreamViewType": "NEW_IMAGE"}})
                .to_string()
                .as_bytes(),
        )
        .await
        .expect("enable again");
    let second_label = enabled["TableDescription"]["LatestStreamLabel"]
        .as_str()
        .expect("a label")
        .to_string();
    assert!(
        second_label > first_label,
        "{second_label} must come after {first_label}"
    );
    assert_eq!(
        store::streams::label_ms(&first_label),
        Some(start),
        "a label stands for its time"
    );
}

/// A forward step of the store's own wall clock holds the sweeps back by the step at once,
/// before any peer is measured; a peer's clock far behind (set to 1970) holds them back by at
/// most `SWEEP_HOLD_MS_MAX`, so it cannot stop them for good.
#[tokio::test]
async fn a_forward_step_holds_the_sweeps_at_once_and_the_hold_is_capped() {
    let h = Harness::new();
    h.create_with_ttl().await;
    let true_now_s = h.now() / 1000;
    h.put("due", true_now_s - 60).await;
    h.put("tomorrow", true_now_s + 86_400).await;
    assert_eq!(h.engine.observe_clock(), None, "the first look is the baseline");
    h.advance(2 * DAY_MS);
    assert_eq!(h.engine.observe_clock(), Some((2 * DAY_MS) as i64));
    assert!(h.engine.sweep_hold_ms() >= 2 * DAY_MS);
    assert_eq!(h.engine.expire_once().await.expect("sweep"), 1);
    assert_eq!(h.ids().await, ["tomorrow"]);

    h.engine.hold_sweeps_back(h.now(), h.now());
    assert_eq!(h.engine.sweep_hold_ms(), store::engine::SWEEP_HOLD_MS_MAX);
    h.advance(store::engine::SWEEP_HOLD_MS_MAX);
    h.engine.hold_sweeps_back(h.now(), h.now());
    assert_eq!(
        h.engine.expire_once().await.expect("sweep"),
        1,
        "due by the wall clock less the capped hold"
    );
}

/// A store without peers whose clock jumps two days ahead: TTL expiry keeps holding back by the
/// step for as long as the store runs (it used to let go an hour later and delete two days of
/// items early), and a step back gives the hold back.
#[tokio::test]
async fn without_peers_a_forward_step_holds_until_the_clock_steps_back() {
    let h = Harness::new();
    h.create_with_ttl().await;
    let true_now_s = h.now() / 1000;
    h.put("due", true_now_s - 60).await;
    h.put("tomorrow", true_now_s + 86_400).await;
    assert_eq!(h.engine.observe_clock(), None, "the first look is the baseline");
    h.advance(2 * DAY_MS);
    assert_eq!(h.engine.observe_clock(), Some((2 * DAY_MS) as i64));
    // Past the hour a peer's measurement is remembered for (no peer measures here).
    h.advance(store::engine::SWEEP_HOLD_MEMORY_MS + 60_000);
    assert!(
        h.engine.sweep_hold_ms() >= 2 * DAY_MS,
        "the step still holds: {} ms",
        h.engine.sweep_hold_ms()
    );
    assert_eq!(h.engine.expire_once().await.expect("sweep"), 1);
    assert_eq!(
        h.ids().await,
        ["tomorrow"],
        "nothing due only by the jumped clock is deleted"
    );

    // The clock is set right again: the step back gives back what it held. (The hour this
    // test moved the wall clock unobserved counts in the step, so the step is that much shorter.)
    let before = h.engine.sweep_hold_ms();
    h.rewind(2 * DAY_MS);
    let back = h.engine.observe_clock().expect("two days back is a step");
    assert!(back < 0, "a step back: {back}");
    assert_eq!(h.engine.sweep_hold_ms(), before - back.unsigned_abs());
    assert!(h.engine.sweep_hold_ms() < 2 * 3_600_000);
}

/// A year's step ahead is held in full (a week's cap applies to what a peer's clock says, so a
/// peer set to 1970 cannot stop the sweeps; this store's own jump deletes nothing early).
#[tokio::test]
async fn a_forward_step_of_a_year_is_held_in_full() {
    let h = Harness::new();
    h.create_with_ttl().await;
    let true_now_s = h.now() / 1000;
    h.put("next-month", true_now_s + 30 * 86_400).await;
    assert_eq!(h.engine.observe_clock(), None, "the first look is the baseline");
    h.advance(365 * DAY_MS);
    assert_eq!(h.engine.observe_clock(), Some((365 * DAY_MS) as i64));
    assert!(h.engine.sweep_hold_ms() >= 365 * DAY_MS);
    assert_eq!(h.engine.expire_once().await.expect("sweep"), 0);
    assert_eq!(h.ids().await, ["next-month"]);
}
