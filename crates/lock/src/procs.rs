//! Every process a job started, wherever its session or process group: the descendants of a
//! process, found by reading `/proc/*/stat` (each process's parent), and signals to them that
//! cannot hit a stranger who got a recycled pid.
//!
//! Why a walk and not only the process group: a job's process that calls `setsid` (a daemon that
//! double-forks, `setsid sh -c …`) leaves the group, and `kill(-group, …)` no longer reaches it.
//! It stays a descendant, though: `lock run` and the guard are both child subreapers
//! (`PR_SET_CHILD_SUBREAPER`), so an orphan is reparented to the nearest of them, never to init,
//! and the walk from the subreaper finds it.
//!
//! Invariants:
//! - a process is identified by its pid **and** its start time (`/proc/PID/stat` field 22, clock
//!   ticks since boot): a pid read in one scan is signalled only through a pidfd
//!   (`pidfd_open`, then `pidfd_send_signal`) opened while the same start time is still there,
//!   so the signal goes to the process the scan saw or to nobody (on a kernel without pidfds,
//!   before Linux 5.3, or without a file descriptor to spare, a plain `kill` right after the
//!   same check);
//! - a scan is a snapshot: a process can fork while it is read or signalled, so whoever must
//!   see all of them gone scans again until a scan finds none ([`kill_pass`]);
//! - zombies are not running: they are left out of what is signalled and counted, and reaped by
//!   their parent (or by the subreaper they were reparented to).
//!
//! `/proc/PID/task/*/children` would be cheaper but is not built into every kernel
//! (`CONFIG_PROC_CHILDREN`), so the scan reads every process's `stat`.

use std::collections::{HashMap, HashSet};

use rustix::process::{Pid, PidfdFlags, Signal};

/// Pause between two passes of [`kill_pass`]: SIGKILLed processes need a moment to exit and
/// their children a moment to be reparented.
pub const KILL_PASS_PAUSE_MS: u64 = 20;

/// A process as one scan of `/proc` saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub parent: i32,
    /// Its process group.
    pub group: i32,
    /// Its session (read from `/proc`: `getsid(2)` answers 0 where the session's leader is
    /// outside the pid namespace, as in a container).
    pub session: i32,
    /// Clock ticks since boot when it started: with the pid, who it is.
    pub start_time: u64,
    /// Ended, not yet reaped by its parent.
    pub zombie: bool,
}

/// Parses `/proc/PID/stat`: `pid (comm) state ppid … starttime …`. The command name may hold
/// spaces and parentheses, so the fields are counted from the last `)`. `None` for text that
/// is not such a line.
pub fn parse_stat(text: &str) -> Option<Process> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // Fields 3 (state), 4 (parent), 5 (process group), 6 (session); field 22 is the 16th after
    // field 6.
    let state = fields.next()?;
    let parent = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    let start_time = fields.nth(15)?.parse().ok()?;
    Some(Process {
        pid,
        parent,
        group,
        session,
        start_time,
        zombie: state == "Z" || state == "X",
    })
}

/// The descendants of `root` among `processes` (one scan), parents before their children;
/// `root` itself is left out, and so is each process in `except` (same pid and start time) with
/// everything below it. Zombies are included (flagged); their children, if any were left, are
/// reparented and found under their new parent.
pub fn descendants_in(processes: &[Process], root: i32, except: &[Process]) -> Vec<Process> {
    let mut children: HashMap<i32, Vec<&Process>> = HashMap::new();
    for process in processes {
        // A pid is its own parent never; guard against a torn read making a loop.
        if process.pid != process.parent {
            children.entry(process.parent).or_default().push(process);
        }
    }
    let mut found = Vec::new();
    let mut next = vec![root];
    let mut seen = HashSet::from([root]);
    while let Some(parent) = next.pop() {
        for child in children.get(&parent).into_iter().flatten() {
            let excepted = except
                .iter()
                .any(|other| other.pid == child.pid && other.start_time == child.start_time);
            if !excepted && seen.insert(child.pid) {
                found.push(**child);
                next.push(child.pid);
            }
        }
    }
    found
}

/// Every process now (one pass over `/proc`). Processes that end while it reads are skipped.
pub fn scan() -> std::io::Result<Vec<Process>> {
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Some(process) = read_stat(&name) {
            processes.push(process);
        }
    }
    Ok(processes)
}

/// Reads `/proc/PID/stat` as bytes: the command name is whatever the process chose (`exec` of a
/// file so named, `prctl(PR_SET_NAME)`), not necessarily UTF-8, and a process whose name made the
/// read fail would be missing from the scan, with everything it started. Invalid UTF-8 becomes
/// U+FFFD, which holds no `)` byte; every field after the name is ASCII.
fn read_stat(pid: &str) -> Option<Process> {
    let bytes = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&String::from_utf8_lossy(&bytes))
}

/// The running (not zombie) descendants of `root` now, parents first, but for the processes in
/// `except` and theirs. An error means `/proc` cannot be read at all.
pub fn running_descendants(root: Pid, except: &[Process]) -> std::io::Result<Vec<Process>> {
    let processes = scan()?;
    Ok(descendants_in(&processes, root.as_raw_nonzero().get(), except)
        .into_iter()
        .filter(|process| !process.zombie)
        .collect())
}

/// Whether the process the scan saw as `process` is still the one with that pid (same start
/// time) and has not ended.
fn still_there(process: &Process) -> bool {
    read_stat(&process.pid.to_string()).is_some_and(|now| now.start_time == process.start_time && !now.zombie)
}

/// Sends `signal` to `process`, if it is still the process the scan saw; returns whether it was
/// sent. A process that has ended meanwhile is not an error.
pub fn signal(process: &Process, signal: Signal) -> bool {
    let Some(pid) = Pid::from_raw(process.pid) else {
        return false;
    };
    match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        // The pidfd names whatever had the pid when it was opened; the same start time read after
        // that proves it was the process the scan saw (a start time, once gone, never returns).
        Ok(pidfd) => still_there(process) && rustix::process::pidfd_send_signal(&pidfd, signal).is_ok(),
        // Gone already.
        Err(rustix::io::Errno::SRCH) => false,
        // Before Linux 5.3 (ENOSYS), or no file descriptor to spare (EMFILE): the same check,
        // then kill (a recycled pid in between is the race the pidfd closes).
        Err(_) => still_there(process) && rustix::process::kill_process(pid, signal).is_ok(),
    }
}

/// One pass of SIGKILL to every running descendant of `root` but `except` and theirs; returns
/// those it found (empty: none was left). A process can fork between the scan and its signal, so whoever must see them
/// all gone calls it again, after a pause for the killed to exit (and, for a subreaper, after
/// reaping what was reparented to it), until it finds none.
pub fn kill_pass(root: Pid, except: &[Process]) -> std::io::Result<Vec<Process>> {
    let processes = running_descendants(root, except)?;
    for process in &processes {
        signal(process, Signal::KILL);
    }
    Ok(processes)
}

/// The pids of `processes`, for a message.
pub fn pids(processes: &[Process]) -> String {
    let pids: Vec<String> = processes.iter().map(|process| process.pid.to_string()).collect();
    pids.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: i32, parent: i32) -> Process {
        Process {
            pid,
            parent,
            group: pid,
            session: pid,
            start_time: u64::try_from(pid).unwrap_or(0) * 10,
            zombie: false,
        }
    }

    #[test]
    fn a_stat_line_is_read_from_the_last_parenthesis() {
        let line = "4242 (a) b (c)) S 17 4242 4243 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 12345678 \
                    300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Process {
                pid: 4242,
                parent: 17,
                group: 4242,
                session: 4243,
                start_time: 987_654,
                zombie: false
            })
        );
        let zombie = "99 (sh) Z 1 99 99 0 -1 4227084 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0 0";
        assert!(parse_stat(zombie).is_some_and(|p| p.zombie && p.start_time == 5));
        for bad in [
            "",
            "12 (sh",
            "x (sh) S 1",
            "12 (sh) S",
            "12 (sh) S one 2 3",
            "12 (sh) S 1 2 3",
        ] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_process_whose_name_is_not_utf8_is_in_the_scan_with_what_it_started() {
        // A job can name itself anything: here by exec'ing a symlink whose name is not UTF-8 (the
        // kernel takes the command name from the file name), and that process starts a child.
        use std::os::unix::ffi::OsStrExt;
        let dir = std::env::temp_dir().join(format!("procs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let link = dir.join(std::ffi::OsStr::from_bytes(b"sh\xff) Z 1 1"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/bin/sh", &link).expect("a symlink");
        let (mut child, grandchild) = spawn_reporting_a_pid(&link, "sleep 1000 & echo $! ; wait $!");
        let pid = i32::try_from(child.id()).expect("a pid");
        let stat = std::fs::read(format!("/proc/{pid}/stat")).expect("its stat");
        assert!(std::str::from_utf8(&stat).is_err(), "the name is not UTF-8");
        let me = rustix::process::getpid();
        let found: Vec<i32> = running_descendants(me, &[])
            .expect("scan")
            .iter()
            .map(|p| p.pid)
            .collect();
        let named = found.contains(&pid);
        let below = found.contains(&grandchild);
        let _ = child.kill();
        let _ = rustix::process::kill_process(Pid::from_raw(grandchild).expect("a pid"), Signal::KILL);
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(named && below, "{pid} and {grandchild} among {found:?}");
    }

    #[test]
    fn descendants_are_found_wherever_their_session_and_parents_first() {
        // 10 is the root; 11 its child, 12 a grandchild (a setsid'ed daemon looks the same: its
        // group and session are not in the parent link), 13 a great-grandchild; 20 and 21 are
        // strangers; 30 claims to be its own parent (a torn read).
        let processes = [
            process(13, 12),
            process(12, 11),
            process(11, 10),
            process(20, 1),
            process(21, 20),
            process(30, 30),
            process(10, 1),
        ];
        let found: Vec<i32> = descendants_in(&processes, 10, &[]).iter().map(|p| p.pid).collect();
        assert_eq!(found, vec![11, 12, 13]);
        assert!(descendants_in(&processes, 13, &[]).is_empty());
        assert!(descendants_in(&processes, 30, &[]).is_empty());
        // A child left out takes its subtree along; the same pid with another start time (a
        // recycled pid) is not left out.
        let before = process(12, 11);
        assert_eq!(descendants_in(&processes, 10, &[before]), vec![process(11, 10)]);
        let recycled = Process {
            start_time: 1,
            ..before
        };
        assert_eq!(descendants_in(&processes, 10, &[recycled]).len(), 3);
    }

    #[test]
    fn this_process_is_in_the_scan_with_its_parent() {
        let me = i32::try_from(std::process::id()).expect("a pid");
        let processes = scan().expect("/proc is readable");
        let found = processes.iter().find(|p| p.pid == me).expect("this process");
        let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
        assert_eq!(found.parent, parent);
        assert!(!found.zombie);
    }

    #[test]
    fn a_stranger_with_a_recycled_pid_is_not_signalled() {
        // What a scan saw: this process's pid with another start time — as if the process seen had
        // ended and its pid gone to someone else. The signal must not be sent (it would be fatal
        // to this test).
        let me = i32::try_from(std::process::id()).expect("a pid");
        let now = scan()
            .expect("/proc is readable")
            .into_iter()
            .find(|p| p.pid == me)
            .expect("this process");
        let seen = Process {
            start_time: now.start_time + 1,
            ..now
        };
        assert!(!signal(&seen, Signal::KILL));
        // The process itself is signalled (signal 0 would not do: use one with no effect here).
        assert!(signal(&now, Signal::WINCH));
    }

    /// The session of `pid` now, from `/proc` ([`Process::session`]).
    fn session_of(pid: i32) -> Option<i32> {
        read_stat(&pid.to_string()).map(|process| process.session)
    }

    /// Starts `program -c script` (a shell), its stdout piped and its stderr dropped (sh reports
    /// "Killed" there), and reads the first line it prints: the pid of the background process
    /// `script` starts (`… & echo $!`).
    fn spawn_reporting_a_pid(program: &std::path::Path, script: &str) -> (std::process::Child, i32) {
        let mut child = std::process::Command::new(program)
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("sh starts");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("the background process's pid");
        let pid = line.trim().parse().expect("a pid");
        (child, pid)
    }

    #[test]
    fn kill_passes_reach_a_process_that_left_the_group_and_the_session() {
        // A child that starts a setsid'ed grandchild, as a daemonizing job does, and waits for it.
        let (mut child, grandchild) =
            spawn_reporting_a_pid(std::path::Path::new("sh"), "setsid sleep 1000 & echo $! ; wait $!");
        let root = Pid::from_raw(i32::try_from(child.id()).expect("a pid")).expect("a pid");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // Its own session once setsid(1) ran: a signal to sh's process group misses it.
        while session_of(grandchild) != Some(grandchild) {
            assert!(std::time::Instant::now() < deadline, "setsid never ran");
            std::thread::sleep(std::time::Duration::from_millis(KILL_PASS_PAUSE_MS));
        }
        let found = running_descendants(root, &[]).expect("scan");
        let seen = *found
            .iter()
            .find(|p| p.pid == grandchild)
            .unwrap_or_else(|| panic!("the setsid'ed grandchild is a descendant: {found:?}"));
        while !kill_pass(root, &[]).expect("scan").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "still running after 10 s of SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(KILL_PASS_PAUSE_MS));
        }
        // sh's `wait` saw it end and sh exited 137 (128 + SIGKILL).
        let status = child.wait().expect("sh ends");
        assert_eq!(status.code(), Some(137), "{status:?}");
        assert!(!still_there(&seen));
    }
}
