//! The process supervisor: start components as child processes in order, wait for their ready
//! files, keep their logs, fault them one at a time, stop them in reverse order.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::state::{ComponentRecord, LabState, process_alive};

/// How long a component may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_GRACE_MS_DEFAULT: u64 = 10_000;
/// How long a component may take to write its ready file.
pub const READY_WAIT_MS_DEFAULT: u64 = 30_000;
/// Pause between looks at a ready file.
pub const READY_POLL_MS: u64 = 20;
/// How much of a log an error shows.
pub const LOG_TAIL_BYTES: u64 = 4_000;
/// Most components one lab runs.
pub const COMPONENTS_MAX: usize = 256;
/// Longest component name.
pub const NAME_BYTES_MAX: usize = 64;
/// The environment variable through which a component learns its supervisor's pid, so it can
/// exit when the supervisor dies (see [`exit_with_supervisor`]).
pub const SUPERVISOR_PID_ENV: &str = "SWITCHYARD_SUPERVISOR_PID";
/// iproute2, which enters network namespaces (`--netns`).
pub const IP_PROGRAM: &str = "ip";
/// How often a component looks whether its supervisor still lives.
pub const SUPERVISOR_WATCH_MS: u64 = 500;

/// Whether this process leads its own process group, read from `/proc/self/stat` (field 5).
/// Not `getpgrp(2)`: in a container whose group leader is outside the pid namespace it answers 0,
/// which rustix refuses with a panic. Unreadable: `false` (signal nobody else's group).
fn leads_own_process_group() -> bool {
    let Ok(bytes) = std::fs::read("/proc/self/stat") else {
        return false;
    };
    let text = String::from_utf8_lossy(&bytes);
    let group = text
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_ascii_whitespace().nth(2))
        .and_then(|field| field.parse::<u32>().ok());
    group == Some(std::process::id())
}

/// Called early by every process of the binary: when started by a lab supervisor (the
/// [`SUPERVISOR_PID_ENV`] variable names our parent), exit as soon as that parent is gone. A lab
/// killed with SIGKILL (or the OOM killer) cannot stop its components itself; without this they
/// would run on, orphaned, holding the lab's ports. Grandchildren inherit the variable but see
/// another parent, and are left alone. Returns whether a watch was started.
pub fn exit_with_supervisor() -> bool {
    let Some(supervisor) = std::env::var(SUPERVISOR_PID_ENV)
        .ok()
        .and_then(|value| value.trim().parse::<u32>().ok())
    else {
        return false;
    };
    if std::os::unix::process::parent_id() != supervisor {
        return false;
    }
    let spawned = std::thread::Builder::new()
        .name("supervisor-watch".to_string())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(SUPERVISOR_WATCH_MS));
                // Re-parented (to init or a subreaper): the supervisor is gone.
                if std::os::unix::process::parent_id() != supervisor {
                    tracing::error!(
                        supervisor_pid = supervisor,
                        "the lab supervisor is gone (killed?); exiting so nothing runs orphaned"
                    );
                    // A component leads its own process group: take what it started (the
                    // program `lab exec` runs) along.
                    if leads_own_process_group() {
                        let _ = rustix::process::kill_current_process_group(Signal::TERM);
                    }
                    std::process::exit(70);
                }
            }
        });
    spawned.is_ok()
}

/// How to run one component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentSpec {
    /// Unique in the lab: letters, digits, '-', '_', '.'; names its log and ready files.
    pub name: String,
    /// What it is (`store`, `demo-app`, ...): shown in the table.
    pub kind: String,
    /// `None`: the supervisor's program (the current executable in the lab).
    pub program: Option<PathBuf>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The flag that takes the ready file's path (`--ready-file`); the supervisor appends it
    /// and its path to `args` and waits for the file. `None`: ready once spawned.
    pub ready_flag: Option<String>,
    /// Run inside this network namespace (`ip netns exec NAME PROGRAM ...`; the process keeps
    /// its pid, so signals and the ready file work as without).
    pub netns: Option<String>,
}

impl ComponentSpec {
    /// A subcommand of the lab's own program with a `--ready-file`.
    pub fn subcommand(name: &str, kind: &str, args: &[&str]) -> ComponentSpec {
        ComponentSpec {
            name: name.to_string(),
            kind: kind.to_string(),
            program: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            ready_flag: Some("--ready-file".to_string()),
            netns: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ComponentState {
    Running,
    /// Stopped with SIGSTOP: alive but frozen (a hung region).
    Paused,
    /// Ended on its own or by a fault; the text says how.
    Exited(String),
    /// Stopped by the supervisor.
    Stopped,
}

impl ComponentState {
    fn label(&self) -> String {
        match self {
            ComponentState::Running => "running".to_string(),
            ComponentState::Paused => "paused".to_string(),
            ComponentState::Exited(how) => format!("exited ({how})"),
            ComponentState::Stopped => "stopped".to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(
        "the lab in {dir} is already running (supervisor pid {pid}); stop it with Ctrl-C or `kill {pid}`, or pick another --dir"
    )]
    AlreadyRunning { dir: String, pid: u32 },
    #[error("{0}")]
    BadSpec(String),
    #[error("no component named '{name}'; the lab has: {known}")]
    UnknownComponent { name: String, known: String },
    #[error("component '{0}' is not running")]
    NotRunning(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("{name} exited before it was ready ({status}); last lines of {log}:\n{tail}")]
    ExitedEarly {
        name: String,
        status: String,
        log: String,
        tail: String,
    },
    #[error("{name} did not write {ready_file} within {wait_ms} ms; last lines of {log}:\n{tail}")]
    NotReady {
        name: String,
        ready_file: String,
        wait_ms: u64,
        log: String,
        tail: String,
    },
}

struct Component {
    spec: ComponentSpec,
    child: Option<Child>,
    pid: Option<u32>,
    address: Option<String>,
    state: ComponentState,
    log: PathBuf,
    ready_file: PathBuf,
}

/// Runs the lab's components. Dropping it kills whatever still runs (SIGKILL); call
/// [`Supervisor::stop_all`] for an orderly shutdown.
pub struct Supervisor {
    dir: PathBuf,
    program: PathBuf,
    grace: Duration,
    ready_wait: Duration,
    /// How many components the caller will start (recorded in `lab.json` for `--status`).
    planned: Option<usize>,
    components: Vec<Component>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SupervisorError {
    let what = what.into();
    move |source| SupervisorError::Io { what, source }
}

impl Supervisor {
    /// Takes the lab directory (created if missing; refused if another live supervisor holds
    /// it) and the program components run by default.
    pub fn new(dir: &Path, program: PathBuf) -> Result<Supervisor, SupervisorError> {
        std::fs::create_dir_all(dir.join("logs")).map_err(io(format!("create {}", dir.display())))?;
        std::fs::create_dir_all(dir.join("run")).map_err(io(format!("create {}/run", dir.display())))?;
        if let Ok(previous) = LabState::read(dir)
            && previous.supervisor_pid != std::process::id()
            && previous.supervisor_alive()
        {
            return Err(SupervisorError::AlreadyRunning {
                dir: dir.display().to_string(),
                pid: previous.supervisor_pid,
            });
        }
        let supervisor = Supervisor {
            dir: dir.to_path_buf(),
            program,
            grace: Duration::from_millis(STOP_GRACE_MS_DEFAULT),
            ready_wait: Duration::from_millis(READY_WAIT_MS_DEFAULT),
            planned: None,
            components: Vec::new(),
        };
        supervisor.save()?;
        Ok(supervisor)
    }

    /// A supervisor running the current executable's subcommands.
    pub fn for_current_exe(dir: &Path) -> Result<Supervisor, SupervisorError> {
        let program = std::env::current_exe().map_err(io("find the current executable"))?;
        Supervisor::new(dir, program)
    }

    pub fn with_grace(mut self, grace: Duration) -> Supervisor {
        self.grace = grace;
        self
    }

    pub fn with_ready_wait(mut self, ready_wait: Duration) -> Supervisor {
        self.ready_wait = ready_wait;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a component and waits until it is ready; returns what its ready file says
    /// (usually its address).
    pub async fn start(&mut self, spec: ComponentSpec) -> Result<Option<String>, SupervisorError> {
        check_name(&spec.name)?;
        if self.components.iter().any(|c| c.spec.name == spec.name) {
            return Err(SupervisorError::BadSpec(format!(
                "component '{}' is started twice; names must be unique",
                spec.name
            )));
        }
        if self.components.len() >= COMPONENTS_MAX {
            return Err(SupervisorError::BadSpec(format!(
                "a lab runs at most {COMPONENTS_MAX} components"
            )));
        }
        let component = Component {
            log: self.dir.join("logs").join(format!("{}.log", spec.name)),
            ready_file: self.dir.join("run").join(format!("{}.ready", spec.name)),
            spec,
            child: None,
            pid: None,
            address: None,
            state: ComponentState::Stopped,
        };
        self.components.push(component);
        let index = self.components.len() - 1;
        let result = self.launch(index).await;
        self.save()?;
        result
    }

    async fn launch(&mut self, index: usize) -> Result<Option<String>, SupervisorError> {
        let program = self.program.clone();
        let ready_wait = self.ready_wait;
        let component = &mut self.components[index];
        let spec = &component.spec;
        match std::fs::remove_file(&component.ready_file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("remove {}", component.ready_file.display()))(error));
            }
            _ => {}
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&component.log)
            .map_err(io(format!("open {}", component.log.display())))?;
        let log_err = log.try_clone().map_err(io("duplicate the log handle"))?;
        let program = spec.program.clone().unwrap_or(program);
        let mut command = match &spec.netns {
            Some(namespace) => {
                let mut command = Command::new(IP_PROGRAM);
                command.args(["netns", "exec", namespace.as_str()]).arg(&program);
                command
            }
            None => Command::new(&program),
        };
        command.args(&spec.args);
        if let Some(flag) = &spec.ready_flag {
            command.arg(flag).arg(&component.ready_file);
        }
        command
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(SUPERVISOR_PID_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // Own process group: a Ctrl-C at the terminal reaches the supervisor only, which
            // then stops the components in order.
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn().map_err(|source| SupervisorError::Spawn {
            name: spec.name.clone(),
            program: program.display().to_string(),
            source,
        })?;
        component.pid = child.id();
        component.child = Some(child);
        component.state = ComponentState::Running;
        component.address = None;
        tracing::info!(component = %component.spec.name, pid = ?component.pid, "started");
        if component.spec.ready_flag.is_none() {
            return Ok(None);
        }
        let deadline = Instant::now() + ready_wait;
        loop {
            if let Ok(text) = std::fs::read_to_string(&component.ready_file)
                && !text.trim().is_empty()
            {
                // Some ready files hold several addresses, one per line (e.g. listen and admin).
                component.address = Some(text.split_whitespace().collect::<Vec<_>>().join(" "));
                return Ok(component.address.clone());
            }
            let exited = match component.child.as_mut() {
                Some(child) => child.try_wait().map_err(io("check a child process"))?,
                None => None,
            };
            if let Some(status) = exited {
                component.state = ComponentState::Exited(describe(status));
                component.child = None;
                return Err(SupervisorError::ExitedEarly {
                    name: component.spec.name.clone(),
                    status: describe(status),
                    log: component.log.display().to_string(),
                    tail: log_tail(&component.log),
                });
            }
            if Instant::now() >= deadline {
                return Err(SupervisorError::NotReady {
                    name: component.spec.name.clone(),
                    ready_file: component.ready_file.display().to_string(),
                    wait_ms: ready_wait.as_millis() as u64,
                    log: component.log.display().to_string(),
                    tail: log_tail(&component.log),
                });
            }
            tokio::time::sleep(Duration::from_millis(READY_POLL_MS)).await;
        }
    }

    fn index(&self, name: &str) -> Result<usize, SupervisorError> {
        self.components
            .iter()
            .position(|c| c.spec.name == name)
            .ok_or_else(|| SupervisorError::UnknownComponent {
                name: name.to_string(),
                known: self
                    .components
                    .iter()
                    .map(|c| c.spec.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn signal(&self, index: usize, signal: Signal) -> Result<(), SupervisorError> {
        let component = &self.components[index];
        let pid = component
            .child
            .as_ref()
            .and(component.pid)
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| SupervisorError::NotRunning(component.spec.name.clone()))?;
        // Each component leads its own process group (spawned with `process_group(0)`): a
        // fault (SIGKILL, SIGSTOP, SIGCONT) goes to the group, so a program a component runs
        // (`lab exec`'s MariaDB, Redis, BIND9) dies, freezes and resumes with it, as on a
        // real host. SIGTERM goes to the component alone: an orderly stop is its own to
        // carry out (`lab exec` passes it on to its program).
        let sent = if signal == Signal::TERM {
            rustix::process::kill_process(pid, signal)
        } else {
            rustix::process::kill_process_group(pid, signal)
        };
        sent.map_err(|errno| SupervisorError::Io {
            what: format!("signal {} ({signal:?})", component.spec.name),
            source: errno.into(),
        })
    }

    /// kill -9: the process dies at once, without any chance to clean up.
    pub async fn kill(&mut self, name: &str) -> Result<(), SupervisorError> {
        let index = self.index(name)?;
        self.signal(index, Signal::KILL)?;
        let component = &mut self.components[index];
        if let Some(mut child) = component.child.take() {
            let status = child.wait().await.map_err(io(format!("wait for {name}")))?;
            component.state = ComponentState::Exited(describe(status));
        }
        self.save()
    }

    /// SIGSTOP: the process stays, frozen — connections open, nothing answered.
    pub fn pause(&mut self, name: &str) -> Result<(), SupervisorError> {
        let index = self.index(name)?;
        self.signal(index, Signal::STOP)?;
        self.components[index].state = ComponentState::Paused;
        self.save()
    }

    /// SIGCONT: a paused process carries on.
    pub fn resume(&mut self, name: &str) -> Result<(), SupervisorError> {
        let index = self.index(name)?;
        self.signal(index, Signal::CONT)?;
        self.components[index].state = ComponentState::Running;
        self.save()
    }

    /// SIGTERM, then SIGKILL if it has not exited within the grace period.
    pub async fn stop(&mut self, name: &str) -> Result<(), SupervisorError> {
        let index = self.index(name)?;
        self.stop_index(index).await?;
        self.save()
    }

    async fn stop_index(&mut self, index: usize) -> Result<(), SupervisorError> {
        let grace = self.grace;
        if self.components[index].child.is_none() {
            return Ok(());
        }
        self.signal(index, Signal::TERM).ok();
        if self.components[index].state == ComponentState::Paused {
            // A stopped process only sees SIGTERM once it runs again.
            self.signal(index, Signal::CONT).ok();
        }
        let component = &mut self.components[index];
        let Some(mut child) = component.child.take() else {
            return Ok(());
        };
        let name = component.spec.name.clone();
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => status.map_err(io(format!("wait for {name}")))?,
            Err(_) => {
                tracing::warn!(component = %name, grace_ms = grace.as_millis() as u64, "did not stop after SIGTERM; sending SIGKILL");
                child.start_kill().map_err(io(format!("kill {name}")))?;
                child.wait().await.map_err(io(format!("wait for {name}")))?
            }
        };
        component.state = if status.success() {
            ComponentState::Stopped
        } else {
            ComponentState::Exited(describe(status))
        };
        tracing::info!(component = %name, status = %describe(status), "stopped");
        Ok(())
    }

    /// Stops it (if it runs) and starts it again with the same command line.
    pub async fn restart(&mut self, name: &str) -> Result<Option<String>, SupervisorError> {
        let index = self.index(name)?;
        self.stop_index(index).await?;
        let result = self.launch(index).await;
        self.save()?;
        result
    }

    /// Stops every component, the last started first.
    pub async fn stop_all(&mut self) -> Result<(), SupervisorError> {
        for index in (0..self.components.len()).rev() {
            self.stop_index(index).await?;
        }
        self.save()
    }

    /// Notices components that ended on their own.
    pub fn poll(&mut self) -> Result<(), SupervisorError> {
        let mut changed = false;
        for component in &mut self.components {
            let exited = match component.child.as_mut() {
                Some(child) => child.try_wait().map_err(io("check a child process"))?,
                None => None,
            };
            if let Some(status) = exited {
                tracing::warn!(component = %component.spec.name, status = %describe(status), "exited");
                component.state = ComponentState::Exited(describe(status));
                component.child = None;
                changed = true;
            }
        }
        if changed { self.save() } else { Ok(()) }
    }

    pub fn component_state(&self, name: &str) -> Result<ComponentState, SupervisorError> {
        Ok(self.components[self.index(name)?].state.clone())
    }

    pub fn pid(&self, name: &str) -> Result<Option<u32>, SupervisorError> {
        let component = &self.components[self.index(name)?];
        Ok(component.child.as_ref().and(component.pid))
    }

    /// Records how many components will be started, so `lab --status` reports a lab that is
    /// still starting instead of a healthy one with half its components.
    pub fn expect_components(&mut self, planned: usize) -> Result<(), SupervisorError> {
        self.planned = Some(planned);
        self.save()
    }

    pub fn state(&self) -> LabState {
        LabState {
            supervisor_pid: std::process::id(),
            planned: self.planned,
            components: self
                .components
                .iter()
                .map(|c| ComponentRecord {
                    name: c.spec.name.clone(),
                    kind: c.spec.kind.clone(),
                    pid: c.child.as_ref().and(c.pid),
                    address: c.address.clone(),
                    log: c.log.clone(),
                    state: c.state.label(),
                })
                .collect(),
        }
    }

    fn save(&self) -> Result<(), SupervisorError> {
        self.state()
            .write(&self.dir)
            .map_err(io(format!("write {}", LabState::path(&self.dir).display())))
    }
}

fn check_name(name: &str) -> Result<(), SupervisorError> {
    if name.is_empty()
        || name.len() > NAME_BYTES_MAX
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(SupervisorError::BadSpec(format!(
            "component name '{name}' must be 1 to {NAME_BYTES_MAX} letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(9)) => "killed by SIGKILL".to_string(),
        (None, Some(15)) => "killed by SIGTERM".to_string(),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "unknown status".to_string(),
    }
}

/// The last [`LOG_TAIL_BYTES`] of a log, for error messages.
pub fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return "(no log)".to_string();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES))).ok();
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether a recorded component process still exists (for `status --lab`).
pub fn alive(record: &ComponentRecord) -> bool {
    record.pid.is_some_and(process_alive)
}
