//! The request decoder: `Store::handle` (the entry point the HTTP server calls) with arbitrary
//! operation names and bodies against a store holding a table with an index and an item.
//! Run with `cargo +nightly fuzz run request corpus/request seeds/request -- -dict=request.dict` (new
//! inputs go to the first directory, the gitignored corpus).
//! Never panics, never answers with a fault of its own (500), and the seeded item stays
//! readable unless the request itself legitimately changed it.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use store::{Engine, Store, SystemClock};

const SEED_TABLE: &str = r#"{"TableName": "orders", "BillingMode": "PAY_PER_REQUEST",
    "AttributeDefinitions": [{"AttributeName": "customer", "AttributeType": "S"},
        {"AttributeName": "order", "AttributeType": "N"}, {"AttributeName": "status", "AttributeType": "S"}],
    "KeySchema": [{"AttributeName": "customer", "KeyType": "HASH"}, {"AttributeName": "order", "KeyType": "RANGE"}],
    "GlobalSecondaryIndexes": [{"IndexName": "by-status", "Projection": {"ProjectionType": "ALL"},
        "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"}]}]}"#;

const PUT_SEED: &[u8] =
    br#"{"TableName": "orders", "Item": {"customer": {"S": "ann"}, "order": {"N": "1"}, "status": {"S": "open"}}}"#;
const GET_SEED: &[u8] = br#"{"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}}}"#;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: Store,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let engine = Engine::open(dir.path(), "us-east-1", Arc::new(SystemClock)).expect("open the engine");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = Store::new(engine);
        runtime.block_on(async {
            store
                .handle("CreateTable", SEED_TABLE.as_bytes())
                .await
                .expect("create the seed table");
        });
        Fixture {
            runtime,
            store,
            _dir: dir,
        }
    })
}

// Input: one selector byte, then the body. A selector below `8 * OPERATIONS.len()` picks a real
// operation; above it, the body's first line is the operation name (unknown names included).
// Seeds in `fuzz/seeds/request` follow this format.
fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let operations = store::ops::OPERATIONS;
    let custom;
    let (operation, body) = if (selector as usize) < operations.len() * 8 {
        (operations[selector as usize % operations.len()], rest)
    } else {
        let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        custom = String::from_utf8_lossy(&rest[..split]).into_owned();
        (custom.as_str(), rest.get(split + 1..).unwrap_or_default())
    };
    fixture.runtime.block_on(async {
        // Restore the table (a previous input may have deleted it) and the item, only when gone:
        // every write is an fsync, and speed is coverage.
        let seeded = fixture.store.handle("GetItem", GET_SEED).await;
        if !matches!(&seeded, Ok(found) if found.get("Item").is_some()) {
            let _ = fixture.store.handle("CreateTable", SEED_TABLE.as_bytes()).await;
            let _ = fixture.store.handle("PutItem", PUT_SEED).await;
        }
        if let Err(error) = fixture.store.handle(operation, body).await {
            assert!(!error.kind.is_server_fault(), "{operation}: {error}");
        }
        if let Err(error) = fixture.store.handle("GetItem", GET_SEED).await {
            assert!(!error.kind.is_server_fault(), "GetItem after {operation}: {error}");
        }
    });
});
