//! `switchyard lab` and `switchyard lab --status`: start the plan's components under the
//! supervisor, print what runs where, stay up until shutdown; check a running lab.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::plan::{LabOptions, plan};
use crate::state::LabState;
use crate::supervisor::{Supervisor, SupervisorError, alive};

/// How often the running lab looks for components that ended on their own.
pub const POLL_MS: u64 = 1_000;
/// How long `--status` waits for each component's port.
pub const STATUS_CONNECT_MS: u64 = 500;
/// How often the running lab looks for control requests (`switchyard lab ctl`).
pub const CONTROL_POLL_MS: u64 = 50;
/// How long `switchyard lab ctl` waits for the lab to carry a request out (a restart waits
/// for the component's ready file).
pub const CONTROL_WAIT_MS: u64 = 60_000;
/// Control requests are files in this directory of the lab directory.
pub const CONTROL_DIR: &str = "run/ctl";
/// Most control requests handled per look.
pub const CONTROL_BATCH_MAX: usize = 64;

/// A process fault or repair `switchyard lab ctl` asks the running lab for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// kill -9.
    Kill,
    /// SIGSTOP: frozen, as a hung host.
    Stop,
    /// SIGCONT.
    Cont,
    /// Stop (SIGTERM, then SIGKILL) and start again.
    Restart,
    /// `--netns` labs: take a region's network link down (the name is the region's).
    #[serde(rename = "cut-network")]
    CutNetwork,
    /// `--netns` labs: bring a region's network link back.
    #[serde(rename = "heal-network")]
    HealNetwork,
    /// `--disk-mib` labs: fill a region's data disk past its store's watermark.
    #[serde(rename = "fill-disk")]
    FillDisk,
    /// `--disk-mib` labs: give the region's disk its room back.
    #[serde(rename = "free-disk")]
    FreeDisk,
}

impl Action {
    /// As `switchyard lab ctl` spells it.
    pub fn verb(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Stop => "stop",
            Action::Cont => "cont",
            Action::Restart => "restart",
            Action::CutNetwork => "cut-network",
            Action::HealNetwork => "heal-network",
            Action::FillDisk => "fill-disk",
            Action::FreeDisk => "free-disk",
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ControlRequest {
    action: Action,
    name: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ControlResult {
    ok: bool,
    message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("{0}")]
    PortInUse(String),
    #[error("{0}")]
    Network(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
}

/// Starts the lab and serves until `shutdown` resolves; then stops every component.
pub async fn run(
    options: &LabOptions,
    shutdown: impl Future<Output = ()>,
    out: &mut (impl Write + Send),
) -> Result<(), LabError> {
    let plan = plan(options)?;
    // A lab refused before anything started (a port in use) leaves no directory it made.
    let existed = options.dir.exists();
    let mut supervisor = Supervisor::for_current_exe(&options.dir)?;
    if !plan.networks.is_empty() {
        crate::netns::setup(&plan.networks).map_err(LabError::Network)?;
    }
    if !plan.disks.is_empty()
        && let Err(error) = crate::disks::setup(&plan.disks)
    {
        crate::netns::teardown(&plan.networks);
        return Err(LabError::Network(error));
    }
    let result = run_plan(options, &plan, &mut supervisor, shutdown, out).await;
    crate::disks::teardown(&plan.disks);
    crate::netns::teardown(&plan.networks);
    if matches!(result, Err(LabError::PortInUse(_))) && !existed {
        drop(supervisor);
        let _ = std::fs::remove_dir_all(&options.dir);
    }
    result
}

/// `lab --quiet`: the lab in one line for CI logs — components up, regions, where its
/// details are.
pub fn summary_line(options: &LabOptions, table: &str) -> String {
    let rows: Vec<&str> = table.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
    let running = rows
        .iter()
        .filter(|row| row.split_whitespace().last() == Some("running"))
        .count();
    format!(
        "lab up: {running}/{} components running, {} regions{}{} in {} (switchyard status --lab {}; logs in {}/logs)\n",
        rows.len(),
        options.regions,
        if options.controller {
            format!(
                ", {}",
                common::text::counted(options.controllers, "controller", "controllers")
            )
        } else {
            String::new()
        },
        if options.tls { ", TLS" } else { "" },
        options.dir.display(),
        options.dir.display(),
        options.dir.display(),
    )
}

async fn run_plan(
    options: &LabOptions,
    plan: &crate::plan::Plan,
    supervisor: &mut Supervisor,
    shutdown: impl Future<Output = ()>,
    out: &mut (impl Write + Send),
) -> Result<(), LabError> {
    for (what, address) in &plan.ports {
        if let Err(error) = std::net::TcpListener::bind(address.as_str()) {
            return Err(LabError::PortInUse(format!(
                "{address} ({what}) is not free: {error}. Stop what uses it, or move the whole lab with --base-port"
            )));
        }
    }
    for file in &plan.files {
        write_file(&file.path, &file.contents)?;
        if holds_secrets(&file.path) {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
                LabError::Io {
                    what: format!("make {} readable by its owner only", file.path.display()),
                    source,
                }
            })?;
        }
    }
    let program = std::env::current_exe().map_err(|source| LabError::Io {
        what: "find the current executable".to_string(),
        source,
    })?;
    write_file(
        &options.dir.join(crate::plan::DRILL_TARGETS_FILE),
        &plan.drill_targets.replace("{program}", &program.display().to_string()),
    )?;
    let control = options.dir.join(CONTROL_DIR);
    std::fs::remove_dir_all(&control).ok();
    std::fs::create_dir_all(&control).map_err(|source| LabError::Io {
        what: format!("create {}", control.display()),
        source,
    })?;
    for secret in &plan.secrets {
        if !secret.exists() {
            write_secret(secret, &random_hex())?;
        }
    }
    match &plan.tls {
        // A fresh CA at every start: its key is not kept, and the names follow the plan.
        Some(tls) => common::devca::generate(&tls.dir, &tls.names)
            .map(|_| ())
            .map_err(|message| LabError::Io {
                what: format!("make the lab's CA and certificate in {}", tls.dir.display()),
                source: std::io::Error::other(message),
            })?,
        // A plain lab has no CA folder, so commands given `--lab DIR` speak plain HTTP to it.
        None => match std::fs::remove_dir_all(crate::plan::tls_dir(&options.dir)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(LabError::Io {
                    what: format!("remove {}", crate::plan::tls_dir(&options.dir).display()),
                    source: error,
                });
            }
            _ => {}
        },
    }
    for (path, name) in &plan.tsig_keys {
        if !path.exists() {
            write_secret(path, &tsig_key(name))?;
        }
    }
    for stale in &plan.stale {
        match std::fs::remove_file(stale) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(LabError::Io {
                    what: format!("remove {}", stale.display()),
                    source: error,
                });
            }
            _ => {}
        }
    }
    for note in &plan.notes {
        tracing::warn!("{note}");
        let _ = writeln!(out, "{note}");
    }
    supervisor.expect_components(plan.components.len())?;
    tokio::pin!(shutdown);
    for spec in plan.components.clone() {
        let name = spec.name.clone();
        let started = tokio::select! {
            started = supervisor.start(spec) => started,
            () = &mut shutdown => {
                supervisor.stop_all().await?;
                return Ok(());
            }
        };
        if let Err(error) = started {
            tracing::error!(component = %name, %error, "the lab could not start");
            supervisor.stop_all().await?;
            return Err(error.into());
        }
    }
    let state = supervisor.state();
    let mut text = if options.quiet {
        summary_line(options, &state.table())
    } else {
        String::new()
    };
    if !options.quiet {
        text = format!(
            "The lab runs in {} ({} regions):\n\n{}\nTry:\n",
            options.dir.display(),
            options.regions,
            state.table()
        );
        for line in &plan.try_lines {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("\nLogs are in logs/; Ctrl-C stops everything.\n");
    }
    out.write_all(text.as_bytes()).map_err(|source| LabError::Io {
        what: "print the table".to_string(),
        source,
    })?;
    out.flush().ok();
    let mut last_poll = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(Duration::from_millis(CONTROL_POLL_MS)) => {
                handle_requests(supervisor, plan, &control).await;
                if last_poll.elapsed() >= Duration::from_millis(POLL_MS) {
                    supervisor.poll()?;
                    last_poll = tokio::time::Instant::now();
                }
            }
        }
    }
    supervisor.stop_all().await?;
    Ok(())
}

/// Why a lab is not whole: the components' table when there is one (for stdout, as when it is
/// whole) and the reason (for stderr).
#[derive(Debug)]
pub struct StatusError {
    pub table: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl From<String> for StatusError {
    fn from(reason: String) -> StatusError {
        StatusError { table: None, reason }
    }
}

/// Checks a lab directory: `Ok(table)` when every component runs and its port answers,
/// `Err` otherwise, with the table when there is one.
pub fn status(dir: &Path) -> Result<String, StatusError> {
    let state = LabState::read(dir).map_err(|error| error.to_string())?;
    if !state.supervisor_alive() {
        return Err(StatusError::from(format!(
            "the lab in {0} is not running (its supervisor, pid {1}, is gone); start it again with `switchyard lab --dir {0}` and the options it had (--regions, --base-port, ...)",
            dir.display(),
            state.supervisor_pid
        )));
    }
    let mut problems = Vec::new();
    match state.planned {
        Some(planned) if state.components.len() < planned => problems.push(format!(
            "still starting: {} of {planned} components started",
            state.components.len()
        )),
        Some(_) => {}
        None => problems.push("still starting: no components planned yet".to_string()),
    }
    for component in &state.components {
        if component.state != "running" || !alive(component) {
            problems.push(format!("{} is {}", component.name, component.state));
            continue;
        }
        if let Some(address) = component
            .address
            .as_deref()
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            && TcpStream::connect_timeout(&address, Duration::from_millis(STATUS_CONNECT_MS)).is_err()
        {
            problems.push(format!("{} does not accept connections on {address}", component.name));
        }
    }
    let table = state.table();
    if problems.is_empty() {
        Ok(table)
    } else {
        Err(StatusError {
            table: Some(table),
            reason: format!("not healthy: {}", problems.join("; ")),
        })
    }
}

async fn handle_requests(supervisor: &mut Supervisor, plan: &crate::plan::Plan, control: &Path) {
    let networks = &plan.networks;
    let Ok(entries) = std::fs::read_dir(control) else {
        return;
    };
    let mut requests: Vec<std::path::PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "req"))
        .collect();
    requests.sort();
    requests.truncate(CONTROL_BATCH_MAX);
    for path in requests {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::remove_file(&path).ok();
        let result = match serde_json::from_str::<ControlRequest>(&text) {
            Ok(request) => {
                let outcome = match request.action {
                    Action::Kill => supervisor.kill(&request.name).await.map(|()| None),
                    Action::Stop => supervisor.pause(&request.name).map(|()| None),
                    Action::Cont => supervisor.resume(&request.name).map(|()| None),
                    Action::Restart => supervisor.restart(&request.name).await,
                    Action::CutNetwork | Action::HealNetwork => {
                        network_action(networks, &request.name, request.action == Action::HealNetwork)
                    }
                    Action::FillDisk | Action::FreeDisk => {
                        disk_action(&plan.disks, &request.name, request.action == Action::FillDisk).await
                    }
                };
                tracing::info!(action = ?request.action, component = %request.name, ok = outcome.is_ok(), "control request");
                match outcome {
                    Ok(address) => ControlResult {
                        ok: true,
                        message: format!(
                            "{} {}{}",
                            request.action.verb(),
                            request.name,
                            address
                                .map(|a| if request.action == Action::Restart {
                                    format!(": ready at {a}")
                                } else {
                                    format!(": {a}")
                                })
                                .unwrap_or_default()
                        ),
                    },
                    Err(error) => ControlResult {
                        ok: false,
                        message: error.to_string(),
                    },
                }
            }
            Err(error) => ControlResult {
                ok: false,
                message: format!("unreadable control request: {error}"),
            },
        };
        let done = path.with_extension("res");
        let text = serde_json::to_string(&result).unwrap_or_default();
        let temporary = path.with_extension("tmp");
        if std::fs::write(&temporary, text).is_ok() {
            std::fs::rename(&temporary, &done).ok();
        }
    }
}

fn network_action(
    networks: &[crate::plan::RegionNet],
    region: &str,
    up: bool,
) -> Result<Option<String>, SupervisorError> {
    let Some(net) = networks.iter().find(|n| n.region == region) else {
        return Err(SupervisorError::BadSpec(if networks.is_empty() {
            "this lab runs without network namespaces: start it with --netns to cut a region's network".to_string()
        } else {
            format!(
                "no region '{region}' in this lab; regions: {}",
                networks
                    .iter()
                    .map(|n| n.region.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }));
    };
    crate::netns::set_link(net, up).map_err(SupervisorError::BadSpec)?;
    tracing::warn!(region, up, "region network link changed");
    Ok(None)
}

/// Fills or frees a region's disk on a blocking thread: writing hundreds of MiB of ballast
/// must not hold up the supervisor's runtime.
async fn disk_action(
    disks: &[crate::disks::RegionDisk],
    region: &str,
    fill: bool,
) -> Result<Option<String>, SupervisorError> {
    let Some(disk) = disks.iter().find(|d| d.region == region) else {
        return Err(SupervisorError::BadSpec(if disks.is_empty() {
            "this lab runs without disks of its own: start it with --disk-mib N to fill a region's disk".to_string()
        } else {
            format!(
                "no region '{region}' in this lab; regions: {}",
                disks.iter().map(|d| d.region.as_str()).collect::<Vec<_>>().join(", ")
            )
        }));
    };
    let disk = disk.clone();
    let done = tokio::task::spawn_blocking(move || {
        if fill {
            crate::disks::fill(&disk)
        } else {
            crate::disks::free(&disk)
        }
    })
    .await
    .map_err(|e| SupervisorError::BadSpec(format!("the disk task failed: {e}")))?
    .map_err(SupervisorError::BadSpec)?;
    tracing::warn!(region, fill, "{done}");
    Ok(Some(done))
}

/// Asks the lab running in `dir` to carry out `action` on the component `name`; waits until
/// it has. The supervisor owns the processes, so it keeps its table true.
pub async fn control(dir: &Path, action: Action, name: &str) -> Result<String, String> {
    let state = LabState::read(dir).map_err(|error| error.to_string())?;
    if !state.supervisor_alive() {
        return Err(format!(
            "the lab in {} is not running (its supervisor, pid {}, is gone)",
            dir.display(),
            state.supervisor_pid
        ));
    }
    let control = dir.join(CONTROL_DIR);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = format!("{nanos:032}-{}", std::process::id());
    let request = serde_json::to_string(&ControlRequest {
        action,
        name: name.to_string(),
    })
    .map_err(|e| e.to_string())?;
    let temporary = control.join(format!("{id}.tmp"));
    std::fs::write(&temporary, request).map_err(|e| format!("write {}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, control.join(format!("{id}.req"))).map_err(|e| e.to_string())?;
    let done = control.join(format!("{id}.res"));
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CONTROL_WAIT_MS);
    loop {
        if let Ok(text) = std::fs::read_to_string(&done) {
            std::fs::remove_file(&done).ok();
            let result: ControlResult = serde_json::from_str(&text).map_err(|e| format!("unreadable answer: {e}"))?;
            return if result.ok {
                Ok(result.message)
            } else {
                Err(result.message)
            };
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the lab in {} did not carry out the request within {CONTROL_WAIT_MS} ms",
                dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(CONTROL_POLL_MS)).await;
    }
}

/// The controllers' files: with MariaDB or Redis in the lab their checks hold the databases'
/// passwords inline, and the controller warns about such a file that others can read.
fn holds_secrets(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("controller") && name.ends_with(".toml"))
}

fn write_file(path: &Path, contents: &str) -> Result<(), LabError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| LabError::Io {
            what: format!("create {}", parent.display()),
            source,
        })?;
    }
    std::fs::write(path, contents).map_err(|source| LabError::Io {
        what: format!("write {}", path.display()),
        source,
    })
}

/// Writes a file only its owner can read (the lab's keys and tokens).
fn write_secret(path: &Path, contents: &str) -> Result<(), LabError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| LabError::Io {
            what: format!("create {}", parent.display()),
            source,
        })?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|source| LabError::Io {
            what: format!("write {}", path.display()),
            source,
        })
}

/// A TSIG key statement as BIND's `tsig-keygen -a hmac-sha256 NAME` writes it, fresh secret.
fn tsig_key(name: &str) -> String {
    use base64::Engine as _;
    format!(
        "key \"{name}\" {{\n\talgorithm hmac-sha256;\n\tsecret \"{}\";\n}};\n",
        base64::engine::general_purpose::STANDARD.encode(random_bytes())
    )
}

fn random_hex() -> String {
    random_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes() -> [u8; 32] {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if from_os.is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = (nanos >> ((index % 16) * 8)) as u8 ^ (std::process::id() >> (index % 4 * 8)) as u8;
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quiet_summary_is_one_line_counting_running_components() {
        let options = LabOptions {
            quiet: true,
            ..crate::plan::tests::options(2)
        };
        let table = "component  kind   address  pid  state\nstore-us   store  1.2.3.4  10   running\nshop-us    shop   -        -    exited 1\n";
        let line = summary_line(&options, table);
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(
            line.starts_with("lab up: 1/2 components running, 2 regions, 1 controller in /tmp/lab"),
            "{line}"
        );
    }

    #[test]
    fn the_controllers_files_are_the_ones_kept_private() {
        let plan = crate::plan::plan(&crate::plan::tests::options(2)).expect("a plan");
        let private: Vec<&Path> = plan
            .files
            .iter()
            .map(|f| f.path.as_path())
            .filter(|p| holds_secrets(p))
            .collect();
        assert!(!private.is_empty(), "the plan writes a controller file");
        assert!(
            plan.files
                .iter()
                .filter(|f| f.contents.contains("[controller"))
                .all(|f| holds_secrets(&f.path)),
            "every file with a [controller] section is kept private: {private:?}"
        );
        assert!(!holds_secrets(Path::new("/lab/config/haproxy-us-east-1.cfg")));
    }

    #[test]
    fn status_of_a_directory_without_a_lab_says_how_to_start_one() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let error = status(dir.path()).expect_err("no lab");
        assert!(error.reason.contains("switchyard lab --dir"), "{error}");
    }

    #[test]
    fn status_of_a_stopped_lab_names_the_dead_supervisor() {
        let dir = tempfile::tempdir().expect("temporary directory");
        LabState {
            supervisor_pid: u32::MAX - 1,
            planned: None,
            components: Vec::new(),
        }
        .write(dir.path())
        .expect("state");
        let error = status(dir.path()).expect_err("not running");
        assert!(error.reason.contains("not running") && error.table.is_none(), "{error}");
    }

    #[test]
    fn status_of_a_live_lab_checks_each_component() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let record = |name: &str, address: &str, state: &str| crate::state::ComponentRecord {
            name: name.to_string(),
            kind: "test".to_string(),
            pid: Some(std::process::id()),
            address: Some(address.to_string()),
            log: dir.path().join("x.log"),
            state: state.to_string(),
        };
        let state = LabState {
            supervisor_pid: std::process::id(),
            planned: None,
            components: Vec::new(),
        };
        state.write(dir.path()).expect("state");
        let error = status(dir.path()).expect_err("nothing planned yet");
        assert!(error.reason.contains("still starting"), "{error}");
        let mut state = LabState {
            supervisor_pid: std::process::id(),
            planned: Some(2),
            components: vec![record("up", &address, "running")],
        };
        state.write(dir.path()).expect("state");
        let error = status(dir.path()).expect_err("one of two started");
        assert!(error.reason.contains("still starting: 1 of 2"), "{error}");
        state.planned = Some(1);
        state.write(dir.path()).expect("state");
        let table = status(dir.path()).expect("healthy");
        assert!(table.contains("up"), "{table}");
        state
            .components
            .push(record("gone", "127.0.0.1:1", "exited (killed by SIGKILL)"));
        state.write(dir.path()).expect("state");
        let error = status(dir.path()).expect_err("one is down");
        assert!(error.reason.contains("gone is exited (killed by SIGKILL)"), "{error}");
    }
}
