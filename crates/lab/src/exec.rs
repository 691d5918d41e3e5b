//! `switchyard lab exec`: runs an outside program (BIND9's `named`, HAProxy) as a lab
//! component. The supervisor knows readiness by a ready file and stops components with SIGTERM;
//! outside programs write no ready file and do not watch the supervisor. This wrapper starts
//! the program, writes the ready file once the program accepts TCP connections on its address,
//! passes SIGTERM on, and ends with the program. It leads the component's process group, so
//! when the supervisor dies [`crate::supervisor::exit_with_supervisor`] takes the program down
//! too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rustix::process::{Pid, Signal};

/// How long the program may take to accept connections.
pub const EXEC_READY_WAIT_MS: u64 = 30_000;
/// Pause between two connection attempts while waiting.
pub const EXEC_READY_POLL_MS: u64 = 50;
/// How long the program may take to exit after SIGTERM before it gets SIGKILL.
pub const EXEC_STOP_GRACE_MS: u64 = 5_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOptions {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Ready once this address accepts TCP connections.
    pub ready_tcp: SocketAddr,
    pub ready_file: Option<PathBuf>,
}

/// Runs the program until it exits or `shutdown` resolves; returns its exit code.
pub async fn exec(options: &ExecOptions, shutdown: impl Future<Output = ()>) -> Result<i32, String> {
    let program = options.program.display().to_string();
    let mut child = tokio::process::Command::new(&options.program)
        .args(&options.args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start {program}: {e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(EXEC_READY_WAIT_MS);
    loop {
        if tokio::net::TcpStream::connect(options.ready_tcp).await.is_ok() {
            break;
        }
        if let Some(status) = child.try_wait().map_err(|e| format!("wait for {program}: {e}"))? {
            return Err(format!(
                "{program} exited ({status}) before accepting connections on {}; its output is above",
                options.ready_tcp
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "{program} did not accept connections on {} within {EXEC_READY_WAIT_MS} ms",
                options.ready_tcp
            ));
        }
        tokio::time::sleep(Duration::from_millis(EXEC_READY_POLL_MS)).await;
    }
    if let Some(file) = &options.ready_file {
        std::fs::write(file, options.ready_tcp.to_string()).map_err(|e| format!("write {}: {e}", file.display()))?;
    }
    tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| format!("wait for {program}: {e}"))?;
            Ok(status.code().unwrap_or(1))
        }
        () = shutdown => {
            if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()).and_then(Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, Signal::TERM);
            }
            match tokio::time::timeout(Duration::from_millis(EXEC_STOP_GRACE_MS), child.wait()).await {
                Ok(Ok(status)) => Ok(status.code().unwrap_or(0)),
                _ => {
                    let _ = child.kill().await;
                    Ok(1)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_program_that_exits_before_listening_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        let options = ExecOptions {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), "exit 3".into()],
            ready_tcp: address,
            ready_file: None,
        };
        let error = exec(&options, std::future::pending()).await.expect_err("exits early");
        assert!(
            error.contains("exited") && error.contains(&address.to_string()),
            "{error}"
        );
    }

    #[tokio::test]
    async fn ready_once_listening_then_stopped_by_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let ready = dir.path().join("ready");
        let options = ExecOptions {
            program: PathBuf::from("/bin/sleep"),
            args: vec!["600".into()],
            ready_tcp: listener.local_addr().expect("address"),
            ready_file: Some(ready.clone()),
        };
        let file = ready.clone();
        let shutdown = async move {
            while !file.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        // Bounded far below the 600 s the program would run: the stop reached it.
        let code = tokio::time::timeout(Duration::from_secs(60), exec(&options, shutdown))
            .await
            .expect("the program stops with the wrapper")
            .expect("runs");
        assert_eq!(
            std::fs::read_to_string(&ready).expect("ready file"),
            options.ready_tcp.to_string()
        );
        // `sleep 600` ended by the SIGTERM passed on: a clean stop, not a failure.
        assert_eq!(code, 0);
    }
}
