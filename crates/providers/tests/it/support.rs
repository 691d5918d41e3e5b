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

/// A `redis-server` of the promotion tests at `port` (0: TLS only, the caller adds
/// `--tls-port`): the `default` user off, the step's ACL user `user` with every right, which
/// replicas also use to reach their master (`master`, when it is one).
pub fn redis_server(
    binary: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    master: Option<u16>,
    (user, password): (&str, &str),
) -> std::process::Command {
    let mut command = testkit::redis_server(binary, dir, port);
    command
        .args(["--dbfilename", &format!("{name}.rdb")])
        .args(["--user", "default", "off"])
        .args(["--user", user, "on", &format!(">{password}"), "~*", "&*", "+@all"])
        .args(["--masteruser", user, "--masterauth", password]);
    if let Some(master) = master {
        command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
    }
    command
}
