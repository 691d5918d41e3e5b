//! The supervisor with real child processes (`sh` scripts standing in for components): ready
//! files, logs, ordered shutdown, SIGKILL after the grace period, kill -9, SIGSTOP / SIGCONT,
//! restart, and refusing a lab directory another live supervisor holds.

use std::path::Path;
use std::time::Duration;

use lab::{ComponentSpec, ComponentState, LabState, Supervisor, SupervisorError};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

/// A component that writes its ready file, logs, and on SIGTERM appends its name to
/// `order.txt` in the lab directory and exits 0. Once ready it forks nothing: a shell caught
/// by SIGSTOP in the middle of a `vfork` shows `D`, not `T`, until its child runs again, so a
/// looping `sleep` made the pause test see a stopped group as running.
fn polite(name: &str, dir: &Path) -> ComponentSpec {
    let order = dir.join("order.txt");
    script(
        name,
        &format!(
            "trap 'kill $child 2>/dev/null; echo {name} >> {order}; echo bye; exit 0' TERM; sleep 3600 & child=$!; echo \"127.0.0.1:$$\" > \"$2\"; echo started; wait",
            order = order.display()
        ),
    )
}

fn script(name: &str, text: &str) -> ComponentSpec {
    ComponentSpec {
        name: name.to_string(),
        kind: "test".to_string(),
        program: Some("/bin/sh".into()),
        args: vec!["-c".to_string(), text.to_string(), "sh".to_string()],
        env: Vec::new(),
        ready_flag: Some("--ready-file".to_string()),
        netns: None,
    }
}

fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

async fn wait_for(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn starts_in_order_records_state_and_stops_in_reverse() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut supervisor = Supervisor::new(dir.path(), "/bin/false".into()).expect("supervisor");
    let first = supervisor
        .start(polite("first", dir.path()))
        .await
        .expect("first starts");
    supervisor
        .start(polite("second", dir.path()))
        .await
        .expect("second starts");
    let pid = supervisor.pid("first").expect("known").expect("running");
    assert_eq!(
        first,
        Some(format!("127.0.0.1:{pid}")),
        "the ready file's content is the address"
    );

    let state = LabState::read(dir.path()).expect("lab.json");
    assert_eq!(state.supervisor_pid, std::process::id());
    assert_eq!(state.components.len(), 2);
    assert_eq!(state.components[0].state, "running");
    assert!(state.table().contains("first"));

    supervisor.stop_all().await.expect("stop");
    let order = std::fs::read_to_string(dir.path().join("order.txt")).expect("order file");
    assert_eq!(order, "second\nfirst\n", "the last started stops first");
    assert_eq!(
        supervisor.component_state("first").expect("known"),
        ComponentState::Stopped
    );
    let log = std::fs::read_to_string(dir.path().join("logs/first.log")).expect("log");
    assert_eq!(log, "started\nbye\n");
    assert_eq!(
        LabState::read(dir.path()).expect("lab.json").components[1].state,
        "stopped"
    );
}

#[tokio::test]
async fn a_component_ignoring_sigterm_gets_sigkill_after_the_grace_period() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut supervisor = Supervisor::new(dir.path(), "/bin/false".into())
        .expect("supervisor")
        .with_grace(Duration::from_millis(200));
    supervisor
        .start(script(
            "stubborn",
            "trap '' TERM; echo x > \"$2\"; while :; do sleep 0.05; done",
        ))
        .await
        .expect("starts");
    supervisor.stop("stubborn").await.expect("stops");
    assert_eq!(
        supervisor.component_state("stubborn").expect("known"),
        ComponentState::Exited("killed by SIGKILL".to_string())
    );
}

#[tokio::test]
async fn kill_pause_resume_and_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut supervisor = Supervisor::new(dir.path(), "/bin/false".into()).expect("supervisor");
    supervisor.start(polite("app", dir.path())).await.expect("starts");
    let pid = supervisor.pid("app").expect("known").expect("running");

    supervisor.pause("app").expect("SIGSTOP");
    wait_for("the process stopping", || process_state(pid) == Some('T')).await;
    assert_eq!(LabState::read(dir.path()).expect("state").components[0].state, "paused");
    supervisor.resume("app").expect("SIGCONT");
    wait_for("the process running again", || {
        process_state(pid).is_some_and(|state| state != 'T')
    })
    .await;

    supervisor.kill("app").await.expect("kill -9");
    assert_eq!(
        supervisor.component_state("app").expect("known"),
        ComponentState::Exited("killed by SIGKILL".to_string())
    );
    assert_eq!(process_state(pid), None, "gone and reaped");
    assert!(matches!(supervisor.pause("app"), Err(SupervisorError::NotRunning(_))));

    let address = supervisor.restart("app").await.expect("restarts");
    let new_pid = supervisor.pid("app").expect("known").expect("running");
    assert_ne!(new_pid, pid);
    assert_eq!(address, Some(format!("127.0.0.1:{new_pid}")));

    // A paused component still stops cleanly: SIGTERM is followed by SIGCONT.
    supervisor.pause("app").expect("SIGSTOP");
    supervisor.stop_all().await.expect("stop");
    assert_eq!(
        supervisor.component_state("app").expect("known"),
        ComponentState::Stopped
    );
}

#[tokio::test]
async fn a_component_that_dies_or_never_gets_ready_is_reported_with_its_log() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut supervisor = Supervisor::new(dir.path(), "/bin/false".into())
        .expect("supervisor")
        .with_ready_wait(Duration::from_millis(300));
    let error = supervisor
        .start(script(
            "crashing",
            "echo 'listen on 127.0.0.1:1: address in use' >&2; exit 3",
        ))
        .await
        .expect_err("exits early");
    let text = error.to_string();
    assert!(
        text.contains("exit code 3") && text.contains("address in use"),
        "{text}"
    );

    let error = supervisor
        .start(script("silent", "echo waiting; while :; do sleep 0.05; done"))
        .await
        .expect_err("never ready");
    let text = error.to_string();
    assert!(text.contains("silent.ready") && text.contains("waiting"), "{text}");
    supervisor.stop_all().await.expect("stop");

    let error = supervisor.stop("nope").await.expect_err("unknown");
    assert!(error.to_string().contains("crashing, silent"), "{error}");
    let error = supervisor.start(script("bad name", "true")).await.expect_err("name");
    assert!(error.to_string().contains("bad name"), "{error}");
}

#[tokio::test]
async fn exits_on_their_own_are_noticed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut supervisor = Supervisor::new(dir.path(), "/bin/false".into()).expect("supervisor");
    let stop_file = dir.path().join("stop-now");
    supervisor
        .start(script(
            "short",
            &format!(
                "echo x > \"$2\"; while [ ! -e {} ]; do sleep 0.02; done; exit 7",
                stop_file.display()
            ),
        ))
        .await
        .expect("starts");
    std::fs::write(&stop_file, "").expect("signal the script");
    let deadline = Instant::now() + WAIT;
    loop {
        supervisor.poll().expect("poll");
        if supervisor.component_state("short").expect("known") == ComponentState::Exited("exit code 7".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "exit not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        LabState::read(dir.path()).expect("state").components[0].state,
        "exited (exit code 7)"
    );
}

#[tokio::test]
async fn a_directory_held_by_a_live_supervisor_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut other = tokio::process::Command::new("sleep")
        .arg("30")
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a stand-in supervisor");
    let pid = other.id().expect("pid");
    LabState {
        supervisor_pid: pid,
        planned: None,
        components: Vec::new(),
    }
    .write(dir.path())
    .expect("write state");
    let error = match Supervisor::new(dir.path(), "/bin/false".into()) {
        Ok(_) => panic!("a live supervisor holds the directory"),
        Err(error) => error,
    };
    assert!(
        matches!(error, SupervisorError::AlreadyRunning { pid: p, .. } if p == pid),
        "{error}"
    );
    other.kill().await.expect("end the stand-in");
    // Its supervisor is gone: the directory can be taken over.
    Supervisor::new(dir.path(), "/bin/false".into()).expect("stale state is replaced");
}

#[tokio::test]
async fn kill_takes_what_the_component_runs_down_with_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut supervisor = Supervisor::new(dir.path(), "/bin/false".into()).expect("supervisor");
    let child_file = dir.path().join("child.pid");
    // Like `lab exec`: the component runs a program as its child (here `sleep`).
    supervisor
        .start(script(
            "wrapper",
            &format!(
                "sleep 600 & echo $! > {}; echo \"127.0.0.1:$$\" > \"$2\"; wait",
                child_file.display()
            ),
        ))
        .await
        .expect("starts");
    wait_for("the child's pid", || {
        std::fs::read_to_string(&child_file).is_ok_and(|t| t.trim().parse::<u32>().is_ok())
    })
    .await;
    let child: u32 = std::fs::read_to_string(&child_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(process_state(child).is_some(), "the child runs");
    supervisor.kill("wrapper").await.expect("kill");
    // The child is gone too (or a zombie until init reaps it), not left running.
    wait_for("the child to die with its component", || {
        process_state(child).is_none_or(|state| state == 'Z')
    })
    .await;
}
