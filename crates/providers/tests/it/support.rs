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

/// An order moving the active region from `from` to `to` at `generation`.
pub fn order(generation: u64, from: &str, to: &str, force_data_loss: bool) -> providers::Order {
    order_from(generation, Some(from), to, force_data_loss)
}

/// An order to `to` at `generation`, from `from` when one is known; only `to` serves.
pub fn order_from(generation: u64, from: Option<&str>, to: &str, force_data_loss: bool) -> providers::Order {
    providers::Order {
        generation,
        kind: "failover".into(),
        from: from.map(str::to_string),
        to: to.into(),
        serving: vec![to.into()],
        reason: "test".into(),
        force_data_loss,
    }
}

/// Polls the async `condition` every 50 ms until it holds, at most [`DEADLINE`]; panics with
/// `what` when it never does.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + DEADLINE;
    while !condition().await {
        assert!(std::time::Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
