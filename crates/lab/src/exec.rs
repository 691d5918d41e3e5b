//! `switchyard lab exec`: runs an outside program (BIND9's `named`, HAProxy) as a lab
//! component. The supervisor knows readiness by a ready file and stops components with SIGTERM;
//! outside programs write no ready file and do not watch the supervisor. This wrapper starts
//! the program, writes the ready file once the program accepts TCP connections on its address,
//! passes SIGTERM on, and ends with the program. With `--setup FILE` it first sends the HTTP
//! requests listed there to the program (moto's hosted zone and parameter, say) and is ready
//! only when each answered 2xx. It leads the component's process group, so
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
/// Largest setup file.
pub const SETUP_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// Most requests in a setup file.
pub const SETUP_REQUESTS_MAX: usize = 64;
/// Longest wait for one setup request's answer.
pub const SETUP_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Most bytes of a refused setup answer quoted in the error.
pub const SETUP_ANSWER_QUOTE_BYTES_MAX: usize = 400;
/// How long a one-time preparation (`--init-program`) may take.
pub const INIT_WAIT_MS: u64 = 120_000;
/// Most bytes of a failed preparation's output quoted in the error.
pub const INIT_OUTPUT_QUOTE_BYTES_MAX: usize = 2_000;

/// A one-time preparation run before the program: skipped when `creates` exists (it made it
/// on an earlier start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitStep {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub creates: PathBuf,
}

/// One HTTP request sent to the program once it listens, before it counts as ready. The
/// setup file is a JSON array of these.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// What it does, for errors ("create the hosted zone").
    pub what: String,
    pub method: String,
    /// Path and query, sent to the ready address.
    pub path: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOptions {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Ready once this address accepts TCP connections.
    pub ready_tcp: SocketAddr,
    pub ready_file: Option<PathBuf>,
    /// A JSON file of [`SetupRequest`]s sent once the program listens.
    pub setup: Option<PathBuf>,
    /// Run first, unless what it creates exists.
    pub init: Option<InitStep>,
}

/// Runs the preparation unless its file exists; bounded by [`INIT_WAIT_MS`].
async fn prepare(init: &InitStep) -> Result<(), String> {
    if init.creates.exists() {
        return Ok(());
    }
    let program = init.program.display().to_string();
    let run = tokio::process::Command::new(&init.program)
        .args(&init.args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_millis(INIT_WAIT_MS), run)
        .await
        .map_err(|_| format!("{program} did not finish within {INIT_WAIT_MS} ms"))?
        .map_err(|e| format!("start {program}: {e}"))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr).to_string() + &String::from_utf8_lossy(&output.stdout);
        let tail: String = text
            .chars()
            .rev()
            .take(INIT_OUTPUT_QUOTE_BYTES_MAX)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!("{program} failed ({}): {tail}", output.status));
    }
    if !init.creates.exists() {
        return Err(format!(
            "{program} succeeded but did not create {}",
            init.creates.display()
        ));
    }
    Ok(())
}

/// Runs the program until it exits or `shutdown` resolves; returns its exit code.
pub async fn exec(options: &ExecOptions, shutdown: impl Future<Output = ()>) -> Result<i32, String> {
    let program = options.program.display().to_string();
    if let Some(init) = &options.init {
        prepare(init).await?;
    }
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
    if let Some(setup) = &options.setup {
        let requests = read_setup(setup)?;
        for request in &requests {
            send_setup(options.ready_tcp, request)
                .await
                .map_err(|e| format!("{program} setup ({}, {}): {e}", request.what, setup.display()))?;
        }
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

/// Reads and checks a setup file.
pub fn read_setup(path: &std::path::Path) -> Result<Vec<SetupRequest>, String> {
    let shown = path.display();
    let size = std::fs::metadata(path).map_err(|e| format!("read {shown}: {e}"))?.len();
    if size > SETUP_FILE_BYTES_MAX {
        return Err(format!(
            "{shown} has {size} bytes; a setup file holds at most {SETUP_FILE_BYTES_MAX}"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {shown}: {e}"))?;
    let requests: Vec<SetupRequest> =
        serde_json::from_str(&text).map_err(|e| format!("{shown}: not a JSON array of setup requests: {e}"))?;
    if requests.len() > SETUP_REQUESTS_MAX {
        return Err(format!(
            "{shown} lists {} requests; at most {SETUP_REQUESTS_MAX}",
            requests.len()
        ));
    }
    for request in &requests {
        if hyper::Method::from_bytes(request.method.as_bytes()).is_err() || !request.path.starts_with('/') {
            return Err(format!(
                "{shown}: request '{}' needs an HTTP method and a path starting with '/'",
                request.what
            ));
        }
    }
    Ok(requests)
}

/// Sends one setup request over plain HTTP/1.1 to `address`; `Ok` on a 2xx answer.
async fn send_setup(address: SocketAddr, request: &SetupRequest) -> Result<(), String> {
    use http_body_util::{BodyExt as _, Full};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let mut builder = hyper::Request::builder()
        .method(request.method.as_str())
        .uri(format!("http://{address}{}", request.path));
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let built = builder
        .body(Full::new(bytes::Bytes::from(request.body.clone())))
        .map_err(|e| format!("the request is not valid HTTP: {e}"))?;
    let work = async {
        let answer = client.request(built).await.map_err(|e| format!("no answer: {e}"))?;
        let status = answer.status();
        let body = http_body_util::Limited::new(answer.into_body(), SETUP_ANSWER_QUOTE_BYTES_MAX * 16)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&body);
            let quoted: String = text.chars().take(SETUP_ANSWER_QUOTE_BYTES_MAX).collect();
            Err(format!("answered {status}: {quoted}"))
        }
    };
    tokio::time::timeout(Duration::from_millis(SETUP_REQUEST_TIMEOUT_MS), work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {SETUP_REQUEST_TIMEOUT_MS} ms")))
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
            setup: None,
            init: None,
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
            setup: None,
            init: None,
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
