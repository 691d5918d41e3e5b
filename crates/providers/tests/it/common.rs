//! What the provider tests share: a config checker that keeps problems, free ports, waiting;
//! servers and finding their binaries come from `testkit`.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Keeps what `Settings::check` reports, like the controller's config check: each error with
/// its fix (`message (fix: fix)`), and the warnings' messages.
pub struct Collect {
    pub folder: PathBuf,
    pub regions: BTreeSet<String>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

impl Collect {
    /// Relative paths start at the working folder.
    pub fn new(regions: &[&str]) -> Collect {
        Collect::in_folder(Path::new("."), regions)
    }

    /// Relative paths start at `folder`, the config file's folder.
    pub fn in_folder(folder: &Path, regions: &[&str]) -> Collect {
        Collect {
            folder: folder.to_path_buf(),
            regions: regions.iter().map(|r| r.to_string()).collect(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

impl providers::Checker for Collect {
    fn error(&mut self, _span: Range<usize>, message: String, fix: String) {
        self.errors.push(format!("{message} (fix: {fix})"));
    }
    fn warn(&mut self, _span: Range<usize>, message: String, _fix: String) {
        self.warnings.push(message);
    }
    fn folder(&self) -> &Path {
        &self.folder
    }
    fn regions(&self) -> &BTreeSet<String> {
        &self.regions
    }
}

/// Parses `text` as a step's settings `S` and checks them with `check` against `checker`: the
/// ready step, or the errors reported when `check` gives none.
pub fn check_settings<S: serde::de::DeserializeOwned, T>(
    text: &str,
    mut checker: Collect,
    check: impl FnOnce(&S, &mut Collect) -> Option<T>,
) -> Result<T, Vec<String>> {
    let settings: S = toml::from_str(text).expect("the test's settings parse");
    match check(&settings, &mut checker) {
        Some(step) => {
            assert!(checker.errors.is_empty(), "a step despite errors: {:?}", checker.errors);
            Ok(step)
        }
        None => Err(checker.errors),
    }
}

/// [`check_settings`] refuses `text`, and each of `expected` is part of a reported error.
pub fn assert_refused<S: serde::de::DeserializeOwned, T>(
    text: &str,
    checker: Collect,
    check: impl FnOnce(&S, &mut Collect) -> Option<T>,
    expected: &[&str],
) {
    let Err(errors) = check_settings(text, checker, check) else {
        panic!("settings accepted: {text}");
    };
    let all = errors.join("\n");
    for expected in expected {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
}

pub use testkit::Server;
pub use testkit::find_binary as installed;

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
