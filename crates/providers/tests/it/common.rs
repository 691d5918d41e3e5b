//! What the provider tests share: a config checker that keeps problems, free ports, waiting.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Keeps what `Settings::check` reports.
pub struct Collect {
    pub folder: PathBuf,
    pub regions: BTreeSet<String>,
    pub errors: Vec<String>,
}

impl Collect {
    pub fn new(folder: &Path, regions: &[&str]) -> Collect {
        Collect {
            folder: folder.to_path_buf(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            errors: Vec::new(),
        }
    }
}

impl providers::Checker for Collect {
    fn error(&mut self, _span: Range<usize>, message: String, fix: String) {
        self.errors.push(format!("{message} (fix: {fix})"));
    }
    fn warn(&mut self, _span: Range<usize>, _message: String, _fix: String) {}
    fn folder(&self) -> &Path {
        &self.folder
    }
    fn regions(&self) -> &BTreeSet<String> {
        &self.regions
    }
}

/// Where a program is installed, if it is.
pub fn installed(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Tries at finding a port free for both TCP and UDP.
const FREE_PORT_TRIES_MAX: usize = 100;

/// A loopback port free for TCP and UDP at the moment of asking.
pub fn free_port() -> u16 {
    for _ in 0..FREE_PORT_TRIES_MAX {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local address").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP in {FREE_PORT_TRIES_MAX} tries");
}

/// Polls `condition` until it holds, at most `limit`; panics with `what` when it never does.
pub fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when the test ends.
pub struct Server {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Server {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
