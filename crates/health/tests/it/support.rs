//! Helpers: free ports, child processes killed on drop, waiting for conditions with deadlines.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use health::probe::{ProbeOutcome, probe};
use health::{CheckSpec, ProbeKind};

/// How long a server gets to start.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Finds a server binary on PATH, in /usr/sbin, or in PostgreSQL's versioned directories.
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

/// A child process killed (and reaped) on drop; its log is printed if the test panics.
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A graceful stop first (PostgreSQL and MariaDB clean up their children), then SIGKILL.
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
            eprintln!("--- {} ---\n{}", self.log.display(), self.log_text());
        }
    }
}

pub fn spec(kind: ProbeKind) -> CheckSpec {
    let mut spec = CheckSpec::new("check", "east", kind);
    spec.timeout_ms = 5000;
    spec
}

/// Probes until the outcome satisfies `done`, or panics with the last outcome at the deadline.
pub async fn probe_until(spec: &CheckSpec, deadline: Duration, done: impl Fn(&ProbeOutcome) -> bool) -> ProbeOutcome {
    let until = Instant::now() + deadline;
    loop {
        let outcome = probe(spec).await;
        if done(&outcome) {
            return outcome;
        }
        assert!(
            Instant::now() < until,
            "condition not reached before the deadline; last outcome {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a condition with a deadline, polling.
pub async fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !condition() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
