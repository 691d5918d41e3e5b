//! Support for the integration tests (`crates/*/tests/it`) that start real servers (MariaDB,
//! PostgreSQL, Redis, ...): free ports, finding the servers' binaries, child processes stopped
//! and reaped on drop, skipping with the package to install. A dev-dependency only; nothing in
//! a product crate uses it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a stopped server gets after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// A loopback TCP port free at the moment of asking.
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

/// Whether the tests run as root (some servers refuse to, or need to be told).
pub fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A child process stopped (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and reaped on drop;
/// its log is printed if the test panics.
pub struct Server {
    pub child: Child,
    pub log: PathBuf,
}

impl Server {
    /// Starts `command` with its output in the file `log`.
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
        let until = Instant::now() + STOP_GRACE;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let port = free_port();
        assert_ne!(port, 0);
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }

    #[test]
    fn a_server_is_stopped_and_reaped_on_drop() {
        let dir = std::env::temp_dir().join(format!("testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let server = Server::start(Command::new("sleep").arg("600"), dir.join("sleep.log"));
        let pid = server.child.id();
        drop(server);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} still there"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
