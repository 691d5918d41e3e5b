//! Helpers: free ports and child processes stopped on drop (from `testkit`), a `Checker` for
//! settings, orders.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use testkit::{Server, find_binary, free_port, running_as_root, skip};

/// How long a server gets to start, or a condition to become true.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A `providers::Checker` that fails the test on any error.
pub struct Strict {
    pub folder: PathBuf,
    pub regions: BTreeSet<String>,
}

impl Strict {
    pub fn new(regions: &[&str]) -> Strict {
        Strict {
            folder: std::env::temp_dir(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
        }
    }
}

impl providers::Checker for Strict {
    fn error(&mut self, _span: std::ops::Range<usize>, message: String, fix: String) {
        panic!("settings error: {message} ({fix})");
    }
    fn warn(&mut self, _span: std::ops::Range<usize>, _message: String, _fix: String) {}
    fn folder(&self) -> &Path {
        &self.folder
    }
    fn regions(&self) -> &BTreeSet<String> {
        &self.regions
    }
}

pub fn order(generation: u64, from: &str, to: &str, force_data_loss: bool) -> providers::Order {
    providers::Order {
        generation,
        kind: "failover".into(),
        from: Some(from.into()),
        to: to.into(),
        serving: vec![to.into()],
        reason: "test".into(),
        force_data_loss,
    }
}
