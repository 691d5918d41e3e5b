//! Starts moto's server (`moto_server`, PyPI `moto[server]`, installed into .venv by
//! scripts/install-test-deps.sh) on a free loopback port for one test.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long moto may take to start listening.
const START_TIMEOUT_MS: u64 = 60_000;

pub struct Moto {
    child: Child,
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `MOTO_SERVER`, else the repository's .venv, else `moto_server` on the PATH.
fn program() -> PathBuf {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

impl Moto {
    pub fn start() -> Moto {
        let program = program();
        let mut child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): run ./scripts/install-test-deps.sh (moto[server] from tests/requirements.txt) or set MOTO_SERVER",
                    program.display()
                )
            });
        let stderr = child.stderr.take().expect("stderr is piped");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1) {
                    let _ = sender.send(rest.trim().to_string());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        let port = receiver
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("moto_server printed its port");
        Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}
