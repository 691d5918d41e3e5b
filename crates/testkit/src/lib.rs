//! Support for the integration tests (`crates/*/tests/it`) that start real servers (MariaDB,
//! PostgreSQL, Redis, ...): free ports, finding the servers' binaries, child processes stopped
//! and reaped on drop, skipping with the package to install, and an unsigned DynamoDB JSON call
//! (and the usual `CreateTable` body) for tests that talk to a store over HTTP. A dev-dependency only; nothing in
//! a product crate uses it.

use std::path::{Path, PathBuf};
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

/// A `redis-server` command on loopback at `port` (0: no plain TCP port, for a TLS-only
/// server) without persistence, its working folder `dir`; the caller adds its own arguments
/// and starts it with [`Server::start`].
pub fn redis_server(binary: &Path, dir: &Path, port: u16) -> Command {
    let mut command = Command::new(binary);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir);
    command
}

/// Starts a throwaway MariaDB server `name`: `mariadb-install-db` into `dir/name` unless it
/// exists (a restart keeps its data), then `mariadbd` on loopback at `port` running the SQL
/// `init` at start, with `extra` arguments; its socket, pid file, temporary folder and log
/// (`dir/name.log`) are in `dir`.
pub fn start_mariadb(mariadbd: &Path, dir: &Path, name: &str, port: u16, init: &str, extra: &[String]) -> Server {
    let data = dir.join(name);
    // Its own temporary folder: bootstraps running side by side collide in a shared /tmp.
    let tmp = dir.join(format!("{name}-tmp"));
    std::fs::create_dir_all(&tmp).expect("create tmpdir");
    if !data.exists() {
        let install_db = find_binary("mariadb-install-db").expect("mariadb-install-db ships with mariadbd");
        let mut install = Command::new(install_db);
        install.env("TMPDIR", &tmp).args([
            "--no-defaults",
            &format!("--datadir={}", data.display()),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ]);
        if running_as_root() {
            install.arg("--user=root");
        }
        let output = install.output().expect("run mariadb-install-db");
        let log = dir.join(format!("{name}-install.log"));
        std::fs::write(&log, [output.stdout, output.stderr].concat()).expect("write log");
        assert!(
            output.status.success(),
            "mariadb-install-db failed; see {}",
            log.display()
        );
    }
    let init_file = dir.join(format!("{name}-init.sql"));
    std::fs::write(&init_file, init).expect("write init file");
    let mut command = Command::new(mariadbd);
    command.env("TMPDIR", &tmp).args([
        "--no-defaults".to_string(),
        format!("--datadir={}", data.display()),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".into(),
        format!("--socket={}", dir.join(format!("{name}.sock")).display()),
        format!("--pid-file={}", dir.join(format!("{name}.pid")).display()),
        format!("--init-file={}", init_file.display()),
        "--skip-name-resolve".into(),
        "--innodb-buffer-pool-size=16M".into(),
    ]);
    command.args(extra);
    if running_as_root() {
        command.arg("--user=root");
    }
    Server::start(&mut command, dir.join(format!("{name}.log")))
}

/// POSTs `body` to `url` with these headers over plain HTTP: the status and the body.
/// Panics when nothing answers (a test's server must).
pub async fn http_post(url: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, bytes::Bytes) {
    let (status, _, body) = http_post_full(url, headers, body).await;
    (status, body)
}

/// [`http_post`], with the answer's headers.
pub async fn http_post_full(
    url: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, hyper::HeaderMap, bytes::Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut request = hyper::Request::post(url);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("valid request");
    let response = client.request(request).await.expect("the server answers");
    let status = response.status().as_u16();
    let answer_headers = response.headers().clone();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    (status, answer_headers, body)
}

/// An unsigned DynamoDB JSON call (`X-Amz-Target: DynamoDB_20120810.<operation>`) to the store
/// at `url`: the status and the JSON answer (`Null` when the answer is not JSON).
pub async fn dynamodb_call(url: &str, operation: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let headers = [
        ("x-amz-target", format!("DynamoDB_20120810.{operation}")),
        ("content-type", "application/x-amz-json-1.0".to_string()),
    ];
    let (status, body) = http_post(&format!("{url}/"), &headers, body).await;
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

/// The CreateTable body of an on-demand table keyed by one string attribute `hash_key`.
pub fn on_demand_table(name: &str, hash_key: &str) -> serde_json::Value {
    serde_json::json!({
        "TableName": name,
        "AttributeDefinitions": [{"AttributeName": hash_key, "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": hash_key, "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST"
    })
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
