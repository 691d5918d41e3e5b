//! Arbitrary bodies, correctly signed by a peer, at every replication endpoint
//! (`batch`, `repair`, `table`, `mark`, `digest`): each is answered with an error or a result,
//! never a panic, and the data stored before stays as it was unless the body was a valid change.
//! Bodies are either raw bytes or JSON shaped like the real requests with fields mutated, so
//! the decoders past the JSON layer (base64, encoded changes, records, ranges) are reached.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::prelude::*;
use serde_json::{Value, json};
use store::global::{Peer, Replication, ReplicationConfig};
use store::{Engine, Store, SystemClock};

use crate::support::on_demand_table;

const KEY: &[u8] = b"a-test-replication-key-of-32-bytes";
const PATHS: [&str; 5] = [
    "/replication/v1/batch",
    "/replication/v1/repair",
    "/replication/v1/table",
    "/replication/v1/mark",
    "/replication/v1/digest",
];

struct Target {
    _dir: tempfile::TempDir,
    store: Store,
    replication: Arc<Replication>,
    runtime: tokio::runtime::Runtime,
}

fn target() -> Target {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let replication = Replication::new(
        engine.clone(),
        ReplicationConfig::new(
            vec![Peer {
                region: "eu-west-1".into(),
                url: "http://127.0.0.1:1".into(),
            }],
            KEY.to_vec(),
        ),
    );
    let store = Store::new(engine);
    runtime.block_on(async {
        store
            .handle("CreateTable", on_demand_table("carts", "id").to_string().as_bytes())
            .await
            .expect("create");
        store
            .handle(
                "PutItem",
                json!({"TableName": "carts", "Item": {"id": {"S": "kept"}, "n": {"N": "1"}}})
                    .to_string()
                    .as_bytes(),
            )
            .await
            .expect("put");
    });
    Target {
        _dir: dir,
        store,
        replication,
        runtime,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

fn headers(path: &str, body: &[u8]) -> axum::http::HeaderMap {
    let date_ms = now_ms();
    let mut headers = axum::http::HeaderMap::new();
    let value = |text: String| axum::http::HeaderValue::from_str(&text).expect("header value");
    headers.insert(store::global::REGION_HEADER, value("eu-west-1".into()));
    headers.insert(store::global::TO_REGION_HEADER, value("us-east-1".into()));
    headers.insert(store::global::DATE_HEADER, value(date_ms.to_string()));
    headers.insert(
        store::global::SIGNATURE_HEADER,
        value(store::global::sign(KEY, "eu-west-1", "us-east-1", path, date_ms, body)),
    );
    headers
}

/// JSON values of every shape the decoders meet, small and large numbers included.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        "[a-zA-Z0-9+/=%_-]{0,40}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| Value::String(BASE64.encode(b))),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,12}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A body shaped like the real request of `path`, with some fields replaced.
fn shaped(path: usize, replacements: Vec<(usize, Value)>) -> Vec<u8> {
    let mut body = match path {
        0 => json!({"batch": 1, "from_seq": 1, "to_seq": 1, "changes": [""]}),
        1 => json!({"records": [], "complete_through": null, "backfill_barrier": 0}),
        2 => json!({"table": {"name": "carts"}, "delete": false, "sequence": 1, "joining": true}),
        3 => json!({"clock": 1, "received": 1, "head": 0}),
        _ => json!({"table": "carts", "ranges": [[0, 0]]}),
    };
    let fields: Vec<String> = body
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    for (index, replacement) in replacements {
        if let (Some(field), Some(object)) = (fields.get(index % fields.len().max(1)), body.as_object_mut()) {
            object.insert(field.clone(), replacement);
        }
    }
    body.to_string().into_bytes()
}

fn post(target: &Target, path: &str, body: &[u8]) -> Result<Value, dynamo_protocol::ApiError> {
    let headers = headers(path, body);
    let replication = &target.replication;
    target.runtime.block_on(async {
        match path {
            "/replication/v1/batch" => replication.receive_batch(&headers, body).await,
            "/replication/v1/repair" => replication.receive_repair(&headers, body).await,
            "/replication/v1/table" => replication.receive_table(&headers, body).await,
            "/replication/v1/mark" => replication.receive_mark(&headers, body).await,
            _ => replication.receive_digest(&headers, body).await,
        }
    })
}

fn kept(target: &Target) -> Option<Value> {
    target.runtime.block_on(async {
        target
            .store
            .handle(
                "GetItem",
                json!({"TableName": "carts", "Key": {"id": {"S": "kept"}}})
                    .to_string()
                    .as_bytes(),
            )
            .await
            .ok()
            .and_then(|answer| answer.get("Item").cloned())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_signed_bodies_never_panic_and_lose_nothing(
        path in 0usize..PATHS.len(),
        raw in proptest::collection::vec(any::<u8>(), 0..256),
        replacements in proptest::collection::vec((0usize..8, value()), 0..4),
        use_raw in any::<bool>(),
    ) {
        let target = target();
        let before = kept(&target);
        prop_assert!(before.is_some());
        let body = if use_raw { raw } else { shaped(path, replacements) };
        let _ = post(&target, PATHS[path], &body);
        // A random body is never a valid change to `kept` (its records are random), a
        // random table request never names a key schema `carts` has, and nothing else deletes.
        prop_assert_eq!(kept(&target), before);
    }
}
