//! The request decoder: `Store::handle` (the entry point the HTTP server calls) with arbitrary
//! operation names and bodies against a store holding a table with an index and an item.
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
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = Store::new(engine);
        runtime.block_on(async {
            store.handle("CreateTable", SEED_TABLE.as_bytes()).await.expect("create the seed table");
        });
        Fixture { runtime, store, _dir: dir }
    })
}

fuzz_target!(|input: (u8, &str, &[u8])| {
    let (selector, custom_operation, body) = input;
    let fixture = fixture();
    let operations = store::ops::OPERATIONS;
    let operation = if (selector as usize) < operations.len() * 8 {
        operations[selector as usize % operations.len()]
    } else {
        custom_operation
    };
    fixture.runtime.block_on(async {
        // Refresh the table (a previous input may have deleted it) and the item.
        let _ = fixture.store.handle("CreateTable", SEED_TABLE.as_bytes()).await;
        let _ = fixture
            .store
            .handle(
                "PutItem",
                br#"{"TableName": "orders", "Item": {"customer": {"S": "ann"}, "order": {"N": "1"}, "status": {"S": "open"}}}"#,
            )
            .await;
        if let Err(error) = fixture.store.handle(operation, body).await {
            assert!(!error.kind.is_server_fault(), "{operation}: {error}");
        }
        if let Err(error) = fixture
            .store
            .handle("GetItem", br#"{"TableName": "orders", "Key": {"customer": {"S": "ann"}, "order": {"N": "1"}}}"#)
            .await
        {
            assert!(!error.kind.is_server_fault(), "GetItem after {operation}: {error}");
        }
    });
});
