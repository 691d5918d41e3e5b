//! Integration tests of the controller: runbook steps against real processes and an in-test
//! HTTP server, the whole controller over HTTP, and a seeded simulation.

mod fake;
mod members;
mod runbook;
mod server;
mod sim;

use std::time::{Duration, Instant};

/// Polls `condition` until it holds or `timeout_ms` passes.
pub async fn wait_for(what: &str, timeout_ms: u64, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
