//! Helpers: free ports, child processes killed on drop, waiting for conditions with deadlines,
//! a `Checker` for settings.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server gets to start, or a condition to become true.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Finds a server binary on PATH, in /usr/sbin, or in PostgreSQL's versioned directories
/// (newest first).
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/bin".into());
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        versions.reverse();
        dirs.extend(versions);
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Prints why a test is skipped; only for a server binary that is genuinely absent.
pub fn skip(binary: &str, package: &str) {
    eprintln!("SKIP: `{binary}` not found; install the Debian package {package} (scripts/install-test-deps.sh does)");
}

/// A child process stopped (TERM, then KILL) and reaped on drop; its log is printed if the
/// test panics.
pub struct Server {
    pub child: Child,
    pub log: PathBuf,
}

impl Server {
    pub fn start(command: &mut Command, log: PathBuf) -> Server {
        let file = std::fs::File::create(&log).expect("create log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        Server { child, log }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} ---\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

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
