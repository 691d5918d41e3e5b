//! `lab.json`: what runs where, written by the supervisor after every change.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The state file's name inside the lab directory.
pub const STATE_FILE: &str = "lab.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// The supervising process; the lab runs while it lives.
    pub supervisor_pid: u32,
    /// How many components the lab starts; fewer in `components` means it is still starting.
    #[serde(default)]
    pub planned: Option<usize>,
    pub components: Vec<ComponentRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    pub name: String,
    /// What it is (`store`, `demo-app`, `fault-proxy`, ...), for the table.
    pub kind: String,
    pub pid: Option<u32>,
    /// What the ready file said (usually `IP:PORT`), once ready.
    pub address: Option<String>,
    pub log: PathBuf,
    /// `running`, `paused`, `exited (…)` or `stopped`.
    pub state: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path} does not exist: is {dir} a lab directory? Start one with `switchyard lab --dir {dir}`")]
    Missing { path: String, dir: String },
    #[error("read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not a lab state file: {source}")]
    Parse { path: String, source: serde_json::Error },
}

impl LabState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    pub fn read(dir: &Path) -> Result<LabState, StateError> {
        let path = LabState::path(dir);
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::Missing {
                    path: shown,
                    dir: dir.display().to_string(),
                });
            }
            Err(source) => return Err(StateError::Read { path: shown, source }),
        };
        serde_json::from_str(&text).map_err(|source| StateError::Parse { path: shown, source })
    }

    /// Writes atomically (temporary file, then rename), so readers never see half a file.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let path = LabState::path(dir);
        let temporary = dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&temporary, text)?;
        std::fs::rename(&temporary, &path)
    }

    /// Whether the supervisor recorded here is still alive.
    pub fn supervisor_alive(&self) -> bool {
        process_alive(self.supervisor_pid)
    }

    /// The table of what runs where.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 5]> = self
            .components
            .iter()
            .map(|c| {
                [
                    c.name.clone(),
                    c.kind.clone(),
                    c.address.clone().unwrap_or_else(|| "-".to_string()),
                    c.pid.map_or("-".to_string(), |p| p.to_string()),
                    c.state.clone(),
                ]
            })
            .collect();
        let header = ["component", "kind", "address", "pid", "state"].map(String::from);
        let mut widths = header.clone().map(|h| h.chars().count());
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |row: &[String; 5]| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        };
        let mut out = line(&header);
        out.push('\n');
        for row in &rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

/// Whether a process with this id exists (signal 0).
pub fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
        return false;
    };
    rustix::process::test_kill_process(pid).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_prints_a_table() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let state = LabState {
            supervisor_pid: std::process::id(),
            planned: None,
            components: vec![ComponentRecord {
                name: "store-us-east-1".to_string(),
                kind: "store".to_string(),
                pid: Some(42),
                address: Some("127.0.0.1:8000".to_string()),
                log: dir.path().join("logs/store-us-east-1.log"),
                state: "running".to_string(),
            }],
        };
        state.write(dir.path()).expect("write");
        let read = LabState::read(dir.path()).expect("read");
        assert_eq!(read, state);
        assert!(read.supervisor_alive());
        let table = read.table();
        assert!(table.starts_with("component"), "{table}");
        assert!(
            table.contains("store-us-east-1  store  127.0.0.1:8000  42   running"),
            "{table}"
        );
    }

    #[test]
    fn a_missing_directory_says_how_to_start_one() {
        let error = LabState::read(Path::new("/nonexistent/lab")).expect_err("missing");
        assert!(
            error.to_string().contains("switchyard lab --dir /nonexistent/lab"),
            "{error}"
        );
    }
}
