//! `media_sync` with `mode = "rsync"`: the real `rsync` binary, between a local folder and a
//! remote one (SSH or an rsync daemon).
//!
//! Every run is `rsync -rlpt --safe-links`: recursive, symlinks as symlinks (but none that
//! points outside the tree), permissions and times kept. The runbook step adds `--update`
//! ([`Options::keep_newer`]: a file newer on the region taking over is not overwritten); a copy
//! from the active region (`media sync`) makes the receiver match it, and the lag counts a
//! newer, different file on the receiver as differing.
//! `--delete` only with `delete = true`, and never when the sender lists no file at all (an
//! unmounted folder would empty the receiver). Deletions remove only what both sides held after
//! the last complete sync between them and the sender no longer has: each complete sync with
//! `delete = true` records the sender's entries on both sides (in each location's `record_url`,
//! outside the served folder: the record lists every synced path), and a
//! later run names each entry it may delete with an `R` (risk) filter rule and protects every
//! other (`P *`; the rules in a NUL-terminated file read with `--from0`, each pattern the
//! entry's own bytes with its wildcards escaped, so it matches that entry only): a file the
//! receiver holds outside that record — an upload made there that never reached the other
//! side (the old active region's uploads from before a failover it could not copy, at the
//! failback) — stays, and so does one uploaded there while the copy runs. Without a usable record nothing is deleted (and the copy still runs).
//! The lag is the same
//! command with `--dry-run --itemize-changes --stats`; its `--out-format=%i|%l|%M|%n` lines name
//! each file rsync would send, its size and its modification time (printed in UTC: the child
//! runs with `TZ=UTC`). A run over `objects_per_run_max` or `bytes_per_run_max` copies the
//! first files within the limits (`--files-from=-`, the list on rsync's stdin), without deleting anything; with
//! `delete = true` the deletions count against the same `objects_per_run_max`
//! (`--max-delete`; the dry run's `*deleting` lines tell whether it cuts the run short, since an
//! rsync daemon on the receiving side keeps its exit code 25 to itself).
//!
//! Exit codes (rsync(1), "EXIT VALUES") decide the failure: 1–4 (syntax, protocol, paths,
//! unsupported action) are mistakes no retry fixes (`Refused`); 24 (source files vanished
//! during the copy, an upload deleted meanwhile) is success with a note; the rest (network,
//! timeouts, SSH's 255, partial transfers) is `Retryable`. The message always carries the end
//! of rsync's own stderr.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::{Lag, Limits, SyncReport, now_s};
use crate::Failure;

/// rsync's I/O timeout (`--timeout`): no data for this long ends the run, in seconds.
pub const IO_TIMEOUT_SECONDS: u64 = 60;
/// Connecting to an rsync daemon (`--contimeout`), and SSH's `ConnectTimeout`, in seconds.
pub const CONNECT_TIMEOUT_SECONDS: u64 = 10;
/// The note of exit code 25: `--max-delete` (the rest of `objects_per_run_max`) stopped the
/// deletions.
pub const MAX_DELETE_NOTE: &str = "deletions stopped at objects_per_run_max (rsync --max-delete)";
/// Where the receiver keeps a file a run was cut off in (`--partial-dir`, relative: one in
/// each folder with such a file, removed once the file is complete), so the next run resumes
/// it instead of starting over, and a file too big for one `run_timeout_ms` does not hold up
/// every file after it forever. Hidden, never copied either way, never deleted (`--exclude`).
pub const PARTIAL_DIR: &str = ".switchyard-partial";
/// Bytes of rsync's stderr kept for an error message (its end).
pub const STDERR_BYTES_MAX: usize = 2048;
/// The old place of the record of the entries both sides held after the last complete sync:
/// the top of each location, inside the folder the web server serves (it published the whole
/// inventory). A run with `delete = true` moves it to the location's `record_url`
/// ([`migrate_record`]); until then it is never copied, deleted or counted (`--exclude`).
pub const SYNCED_LIST_NAME: &str = ".switchyard-media-synced";
/// The record's file name in a location's `record_url` folder: `STEP.switchyard-media-synced`.
pub const RECORD_SUFFIX: &str = ".switchyard-media-synced";
/// The record's first line.
const SYNCED_LIST_HEADER: &str =
    "# switchyard media_sync v2: entries both sides held after the last complete sync (STATE|PATH)";

/// Settings shared by both ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub ssh_identity_file: Option<PathBuf>,
    /// `ssh -p`.
    pub ssh_port: Option<u16>,
    /// `ssh -o UserKnownHostsFile=FILE -o StrictHostKeyChecking=yes`.
    pub ssh_known_hosts_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    /// `--bwlimit`, in KiB/s.
    pub bwlimit_kib: Option<u64>,
    /// `--update`: a file newer on the receiver is not overwritten. Only for the runbook step's
    /// copy into the region taking over; a copy from the active region (`media sync`) makes
    /// the receiver match it, and the lag always counts a newer, different file as differing.
    pub keep_newer: bool,
}

/// Whether a path can go into the `-e` command in single quotes (rsync splits that command on
/// whitespace and honours quotes; a single quote or a control character would break it).
pub fn ssh_safe_path(path: &std::path::Path) -> bool {
    path.to_str()
        .is_some_and(|text| !text.chars().any(|c| c == '\'' || c.is_control()))
}

/// The remote shell rsync runs for SSH locations (`rsync -e`): keys only (`BatchMode`), a
/// bounded connect, and the configured key, port and known_hosts file.
pub fn ssh_command(options: &Options) -> String {
    let mut ssh = format!("ssh -o BatchMode=yes -o ConnectTimeout={CONNECT_TIMEOUT_SECONDS}");
    if let Some(port) = options.ssh_port {
        ssh.push_str(&format!(" -p {port}"));
    }
    if let Some(key) = &options.ssh_identity_file {
        ssh.push_str(&format!(" -i '{}' -o IdentitiesOnly=yes", key.display()));
    }
    if let Some(file) = &options.ssh_known_hosts_file {
        ssh.push_str(&format!(
            " -o 'UserKnownHostsFile={}' -o StrictHostKeyChecking=yes",
            file.display()
        ));
    }
    ssh
}

/// How rsync reaches a location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Local,
    Ssh,
    Daemon,
}

/// One location, as rsync names it (always ending in `/`: the folder's contents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub text: String,
    pub transport: Transport,
    /// With `delete = true`: where this location's record of the last complete sync is kept
    /// (a file in the `record_url` folder, outside the served folder, reached the same way).
    pub record: Option<String>,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        if url.starts_with('-') {
            return Err("starts with '-' (rsync would read it as an option)".into());
        }
        if url.chars().any(|c| c.is_control()) {
            return Err("holds control characters".into());
        }
        let before_slash = url.split('/').next().unwrap_or_default();
        let transport = if let Some(rest) = url.strip_prefix("rsync://") {
            let mut parts = rest.splitn(3, '/');
            let host = parts.next().unwrap_or_default();
            let module = parts.next().unwrap_or_default();
            if host.is_empty() || module.is_empty() {
                return Err("names no host or no module (rsync://host[:port]/module/path/)".into());
            }
            Transport::Daemon
        } else if url.starts_with('/') {
            Transport::Local
        } else if before_slash.contains("::") {
            Transport::Daemon
        } else if let Some((host, _)) = before_slash.split_once(':') {
            if host.is_empty() || host.ends_with('@') {
                return Err("names no host before ':'".into());
            }
            Transport::Ssh
        } else {
            return Err("is a relative folder (rsync locations must be absolute: /srv/media/)".into());
        };
        let mut text = url.to_string();
        if !text.ends_with('/') {
            text.push('/');
        }
        Ok(Endpoint {
            text,
            transport,
            record: None,
        })
    }

    /// The same location with its record in the folder `record_url` (reached like the
    /// location: the same transport, SSH user and host, or daemon host; not inside the
    /// location's folder), as the file `STEP.switchyard-media-synced`.
    pub fn with_record(mut self, record_url: &str, step: &str) -> Result<Endpoint, String> {
        let folder = Endpoint::parse(record_url)?;
        if folder.transport != self.transport {
            return Err("is not reached like url (a local folder for a local url, user@host:/path over SSH, rsync://host/module/ for a daemon)".into());
        }
        let host = |text: &str| -> String {
            match self.transport {
                Transport::Local => String::new(),
                Transport::Ssh => text.split_once(':').map(|(h, _)| h.to_string()).unwrap_or_default(),
                Transport::Daemon => text
                    .strip_prefix("rsync://")
                    .map(|rest| rest.split('/').next().unwrap_or_default().to_string())
                    .unwrap_or_else(|| text.split("::").next().unwrap_or_default().to_string()),
            }
        };
        if host(&folder.text) != host(&self.text) {
            return Err("names another host than url (each side's record is kept on that side)".into());
        }
        if folder.text.starts_with(&self.text) {
            return Err(
                "is inside url's folder, which the web server serves (the record lists every synced path)".into(),
            );
        }
        let name: String = step
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.record = Some(format!("{}{name}{RECORD_SUFFIX}", folder.text));
        Ok(self)
    }

    /// The record's URL, or an error saying record_url is missing.
    fn record_url(&self) -> Result<&str, Failure> {
        self.record.as_deref().ok_or_else(|| {
            Failure::Refused(format!(
                "{} has no record_url: delete = true keeps the record of the last complete sync there (outside the served folder)",
                self.text
            ))
        })
    }

    pub fn is_remote(&self) -> bool {
        self.transport != Transport::Local
    }
}

/// One file rsync would send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub path: String,
    pub bytes: u64,
    pub modified_s: Option<u64>,
}

/// What an `--out-format=%i|%l|%M|%n` listing says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Files to send, in rsync's order: the first `keep_max` of them (all with `None`). The
    /// figures below count every one, so a lag needs none kept and memory does not grow
    /// with the tree.
    pub files: Vec<Item>,
    pub keep_max: Option<usize>,
    /// Every file to send: how many, their bytes, the oldest modification time and the
    /// first few paths.
    pub counted: u64,
    pub counted_bytes: u64,
    pub oldest_modified_s: Option<u64>,
    pub sample: Vec<String>,
    /// `*deleting` lines.
    pub deletions: u64,
    /// Their paths (all: the run's `lines_max` bounds them).
    pub deleting: Vec<String>,
    /// With `collect_names`: every entry rsync itemized (files, folders, symlinks) with its
    /// state ([`entry_state`]), as the sender's full listing when the receiver is an empty
    /// folder.
    pub collect_names: bool,
    pub names: Vec<(String, String)>,
    /// Symlinks `--safe-links` left out (`PATH -> TARGET`): how many, and the first few.
    pub unsafe_links: u64,
    pub unsafe_sample: Vec<String>,
    /// "Total transferred file size" of `--stats`, if printed.
    pub stats_bytes: Option<u64>,
    /// "Number of files" of `--stats` (the sender's file list, folders included) and how many
    /// of them are folders, if printed.
    pub source_entries: Option<(u64, u64)>,
}

/// The `%M` time, `2026/12/02-20:40:00` (UTC), as Unix seconds.
pub fn parse_time(text: &str) -> Option<u64> {
    let (date, time) = text.split_once('-')?;
    let mut d = date.split('/').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hour, minute, second) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hour * 3_600 + minute * 60 + second).ok()
}

/// The number after `label` in a `--stats` line like `Number of files: 1,204 (reg: 1,100, dir: 104)`.
fn stats_count(text: &str, label: &str) -> Option<u64> {
    let start = text.find(label)? + label.len();
    let digits: String = text[start..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl Listing {
    /// Whether the sender listed folders only (an unmounted mount point, a wrong or emptied
    /// path): then `--delete` would empty the receiver.
    pub fn source_is_empty(&self) -> bool {
        self.source_entries
            .is_some_and(|(entries, dirs)| entries.saturating_sub(dirs) == 0)
    }

    /// Reads one line of rsync's stdout.
    pub fn line(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("ignoring unsafe symlink \"") {
            // `"PATH" -> "TARGET"`, or `"PATH" (in MODULE) -> "TARGET"` from a daemon.
            let end = [rest.find("\" -> \""), rest.find("\" (in ")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(rest.len());
            let target = rest.rsplit_once(" -> \"").map(|(_, t)| t.trim_end_matches('"'));
            self.unsafe_links += 1;
            if self.unsafe_sample.len() < super::MISSING_SAMPLE_MAX {
                self.unsafe_sample
                    .push(format!("{} -> {}", &rest[..end], target.unwrap_or("?")));
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("Number of files:") {
            if let Some(entries) = stats_count(rest, "") {
                self.source_entries = Some((entries, stats_count(rest, "dir:").unwrap_or(0)));
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("Total transferred file size:") {
            let digits: String = rest
                .chars()
                .take_while(|c| *c != 'b')
                .filter(char::is_ascii_digit)
                .collect();
            self.stats_bytes = digits.parse().ok();
            return;
        }
        let mut parts = line.splitn(4, '|');
        let (Some(item), Some(length), Some(time), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            if line.starts_with("*deleting") {
                self.deletions += 1;
            }
            return;
        };
        if item.starts_with("*deleting") {
            self.deletions += 1;
            self.deleting.push(name.to_string());
            return;
        }
        if self.collect_names && name != "./" && !name.is_empty() {
            self.names.push((name.to_string(), entry_state(item, length, time)));
        }
        let mut flags = item.chars();
        let (update, kind) = (flags.next(), flags.next());
        if matches!(update, Some('<' | '>')) && kind == Some('f') {
            let item = Item {
                path: name.to_string(),
                bytes: length.trim().replace(',', "").parse().unwrap_or(0),
                modified_s: parse_time(time.trim()),
            };
            self.counted += 1;
            self.counted_bytes = self.counted_bytes.saturating_add(item.bytes);
            if let Some(modified) = item.modified_s {
                self.oldest_modified_s = Some(self.oldest_modified_s.map_or(modified, |m| m.min(modified)));
            }
            if self.sample.len() < super::MISSING_SAMPLE_MAX {
                self.sample.push(item.path.clone());
            }
            if self.keep_max.is_none_or(|max| self.files.len() < max) {
                self.files.push(item);
            }
        }
    }

    /// What the receiver lacks: the files to send, and each symlink left out (its contents
    /// never reach the receiver, so the lag must not say nothing is missing).
    pub fn lag(&self, now_s: u64) -> Lag {
        let mut sample = self.sample.clone();
        for link in &self.unsafe_sample {
            if sample.len() < super::MISSING_SAMPLE_MAX {
                sample.push(format!("{link} (symlink out of the folder, not copied)"));
            }
        }
        Lag {
            objects: self.counted.saturating_add(self.unsafe_links),
            bytes: self.stats_bytes.unwrap_or(self.counted_bytes),
            oldest_age_seconds: self.oldest_modified_s.map(|m| now_s.saturating_sub(m)),
            sample,
        }
    }

    /// The warning about symlinks left out, if any.
    pub fn unsafe_links_warning(&self) -> Option<String> {
        (self.unsafe_links > 0).then(|| {
            format!(
                "WARNING: {} symlinks point out of the folder and are not copied (rsync --safe-links; counted in the lag), like {}: give the real folder a location (or a step) of its own, or mount it into the tree instead of linking to it",
                self.unsafe_links,
                self.unsafe_sample.join(", ")
            )
        })
    }
}

/// The files of `files` one run copies within the limits, and which limit stopped it.
pub fn within_limits<'a>(files: &'a [Item], limits: &Limits) -> (Vec<&'a Item>, Option<String>) {
    let mut chosen = Vec::new();
    let mut bytes = 0u64;
    let mut limited = None;
    for file in files {
        if chosen.len() as u64 >= limits.objects_per_run_max {
            limited = Some(format!("objects_per_run_max = {}", limits.objects_per_run_max));
            break;
        }
        if bytes.saturating_add(file.bytes) > limits.bytes_per_run_max {
            limited = Some(format!("bytes_per_run_max = {}", limits.bytes_per_run_max));
            if chosen.is_empty() {
                continue;
            }
            break;
        }
        bytes += file.bytes;
        chosen.push(file);
    }
    (chosen, limited)
}

/// What an rsync exit code means.
pub fn exit_failure(code: Option<i32>, stderr: &str) -> Result<Option<String>, Failure> {
    let said = stderr.trim();
    let said = if said.is_empty() { "(rsync said nothing)" } else { said };
    let meaning = match code {
        Some(0) => return Ok(None),
        Some(25) => return Ok(Some(MAX_DELETE_NOTE.into())),
        Some(24) => {
            return Ok(Some(
                "some source files vanished during the copy (deleted meanwhile)".into(),
            ));
        }
        Some(1) => "syntax or usage error",
        Some(2) => "protocol incompatibility",
        Some(3) => "errors selecting input/output files or folders (does the folder exist?)",
        Some(4) => "requested action not supported",
        Some(5) => "error starting the client-server protocol (unknown module, or the daemon refused the login)",
        Some(10) => "error in socket I/O (is the rsync daemon running and reachable?)",
        Some(11) => "error in file I/O (disk full, permissions?)",
        Some(12) => "error in the rsync protocol data stream",
        Some(23) => "partial transfer due to error",
        Some(30) => "timeout in data send/receive",
        Some(35) => "timeout waiting for the daemon connection",
        Some(255) => {
            "SSH failed (host unreachable, the key not accepted: BatchMode is on, or the host key not in known_hosts: ssh_known_hosts_file)"
        }
        Some(_) => "rsync failed",
        None => "rsync was killed by a signal",
    };
    let code = code.map_or("signal".to_string(), |c| c.to_string());
    let text = format!("rsync exit {code} ({meaning}): {said}");
    if matches!(code.as_str(), "1" | "2" | "3" | "4") {
        Err(Failure::Refused(text))
    } else {
        Err(Failure::Retryable(text))
    }
}

/// A name as rsync printed it, with its bytes back: rsync escapes a control or (under LC_ALL=C)
/// non-ASCII byte, and a backslash that would read as an escape, as `\#ooo` (three octal
/// digits; rsync(1), `--8-bit-output`).
pub fn unescape_name(printed: &str) -> Vec<u8> {
    let bytes = printed.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.get(i + 1) == Some(&b'#')
            && let Some(octal) = bytes.get(i + 2..i + 5)
            && octal.iter().all(|b| (b'0'..=b'7').contains(b))
            && let Ok(byte) = u8::from_str_radix(std::str::from_utf8(octal).unwrap_or_default(), 8)
        {
            out.push(byte);
            i += 5;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The arguments every run shares, before the paths.
fn common_args(source: &Endpoint, target: &Endpoint, options: &Options) -> Vec<String> {
    let mut args = vec![
        "-rlpt".to_string(),
        // A symlink pointing outside the tree (absolute, or climbing out with `..`) is not
        // copied: an upload of a symlink in one region must not become a link to the
        // receiving host's own files (`/etc/...`) that its web server then serves.
        "--safe-links".to_string(),
        format!("--timeout={IO_TIMEOUT_SECONDS}"),
        // A file cut off (run_timeout_ms, a lost connection) is kept in the partial-dir and
        // the next run resumes it, using it as the basis of the delta transfer: that needs
        // the delta algorithm between local folders too (`--no-whole-file`). Excluded first,
        // so no rule of ours sends or deletes one. No `--delay-updates`: it would stage every
        // updated file there until the end of the run.
        format!("--exclude={PARTIAL_DIR}/"),
        format!("--partial-dir={PARTIAL_DIR}"),
        "--no-whole-file".to_string(),
        "--itemize-changes".to_string(),
        // Says `ignoring unsafe symlink "PATH" -> "TARGET"` for each symlink --safe-links
        // leaves out (rsync prints it at NAME level 1): counted in the lag and warned about,
        // rather than skipped in silence (a symlinked subfolder would never be copied, with
        // a lag of 0).
        "--info=name1".to_string(),
        "--out-format=%i|%l|%M|%n".to_string(),
        "--stats".to_string(),
        // The record of what both sides held is neither copied nor deleted.
        format!("--exclude=/{SYNCED_LIST_NAME}"),
    ];
    if options.keep_newer {
        args.push("--update".into());
    }
    if let Some(kib) = options.bwlimit_kib {
        args.push(format!("--bwlimit={kib}"));
    }
    args.extend(transport_args(&[source.transport, target.transport], options));
    args
}

/// The arguments that reach the locations: the daemon's connect timeout and password, SSH.
fn transport_args(transports: &[Transport], options: &Options) -> Vec<String> {
    let mut args = Vec::new();
    if transports.contains(&Transport::Daemon) {
        args.push(format!("--contimeout={CONNECT_TIMEOUT_SECONDS}"));
        if let Some(file) = &options.password_file {
            args.push(format!("--password-file={}", file.display()));
        }
    }
    if transports.contains(&Transport::Ssh) {
        args.push("-e".into());
        args.push(ssh_command(options));
    }
    args
}

/// Runs rsync with `args` and `input` on its stdin (`--files-from=-`); every stdout line goes
/// into a listing (at most `lines_max`) that keeps the first `keep_files` files.
async fn run(
    args: &[String],
    lines_max: u64,
    input: Option<Vec<u8>>,
    keep_files: usize,
    collect_names: bool,
) -> Result<(Listing, Option<String>), Failure> {
    let mut child = tokio::process::Command::new("rsync")
        .args(args)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                Failure::Refused("rsync is not installed on this host (apt-get install rsync)".into())
            } else {
                Failure::Retryable(format!("cannot start rsync: {error}"))
            }
        })?;
    // Written while stdout is read, so neither side waits on a full pipe; closed at the end.
    let stdin_task = match (child.stdin.take(), input) {
        (Some(mut stdin), Some(input)) => Some(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        })),
        _ => None,
    };
    let stderr = child.stderr.take();
    let stderr_task = tokio::spawn(async move {
        let mut tail = Vec::new();
        if let Some(mut stderr) = stderr {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buffer).await {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buffer[..n]);
                if tail.len() > STDERR_BYTES_MAX {
                    tail.drain(..tail.len() - STDERR_BYTES_MAX);
                }
            }
        }
        String::from_utf8_lossy(&tail).into_owned()
    });
    let mut listing = Listing {
        keep_max: Some(keep_files),
        collect_names,
        ..Listing::default()
    };
    let mut lines_seen = 0u64;
    if let Some(stdout) = child.stdout.take() {
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => {
                    lines_seen += 1;
                    if lines_seen > lines_max {
                        let _ = child.kill().await;
                        return Err(Failure::Retryable(format!(
                            "rsync listed more than {lines_max} entries (objects_listed_max); raise objects_listed_max or sync a smaller folder"
                        )));
                    }
                    listing.line(&line);
                }
                Ok(None) => break,
                Err(error) => return Err(Failure::Retryable(format!("reading rsync's output: {error}"))),
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|error| Failure::Retryable(format!("waiting for rsync: {error}")))?;
    if let Some(task) = stdin_task {
        let _ = task.await;
    }
    let stderr = stderr_task.await.unwrap_or_default();
    let note = exit_failure(status.code(), &stderr)?;
    Ok((listing, note))
}

/// The dry run: what `target` lacks of `source`.
pub struct Measure {
    pub lag: Lag,
    pub listing: Listing,
}

/// The dry run; its listing keeps the first `keep_files` files (the lag needs none).
pub async fn measure(
    source: &Endpoint,
    target: &Endpoint,
    delete: bool,
    options: &Options,
    limits: &Limits,
    keep_files: usize,
) -> Result<Measure, Failure> {
    let mut args = common_args(source, target, options);
    args.push("--dry-run".into());
    if delete {
        args.push("--delete".into());
    }
    args.push(source.text.clone());
    args.push(target.text.clone());
    let (listing, _) = run(
        &args,
        limits.objects_listed_max.saturating_add(64),
        None,
        keep_files,
        false,
    )
    .await?;
    Ok(Measure {
        lag: listing.lag(now_s()),
        listing,
    })
}

/// What the record keeps of an entry, from its itemized line: a folder is `d` (its time
/// changes with its contents), anything else its kind, size and modification time
/// (`f:1234:2026/12/02-20:40:00`). A file whose state differs from the record's changed since
/// the last complete copy (a new upload under an old name) and is never deleted.
pub fn entry_state(item: &str, length: &str, time: &str) -> String {
    match item.chars().nth(1) {
        Some('d') => "d".to_string(),
        kind => format!(
            "{}:{}:{}",
            kind.unwrap_or('?'),
            length.trim().replace(',', ""),
            time.trim()
        ),
    }
}

/// A location's full listing (path, [`entry_state`]): every entry a copy into an empty folder
/// would create.
async fn list_all(source: &Endpoint, options: &Options, limits: &Limits) -> Result<Vec<(String, String)>, Failure> {
    let empty =
        tempfile::tempdir().map_err(|e| Failure::Retryable(format!("cannot create a temporary folder: {e}")))?;
    let target = Endpoint {
        text: format!("{}/", empty.path().display()),
        transport: Transport::Local,
        record: None,
    };
    let mut args = common_args(source, &target, options);
    args.push("--dry-run".into());
    args.push(source.text.clone());
    args.push(target.text.clone());
    let (listing, _) = run(&args, limits.objects_listed_max.saturating_add(64), None, 0, true).await?;
    Ok(listing.names)
}

/// Runs rsync for one small file (the record); its exit code and the end of its stderr.
async fn run_plain(args: &[String]) -> Result<(Option<i32>, String), Failure> {
    let output = tokio::process::Command::new("rsync")
        .args(args)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| Failure::Retryable(format!("cannot start rsync: {error}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail_start = stderr.len().saturating_sub(STDERR_BYTES_MAX);
    let tail = stderr.get(tail_start..).unwrap_or_default().to_string();
    Ok((output.status.code(), tail))
}

/// The record of what both sides held at `at` (its `record_url`); `None` when there is none.
pub async fn read_synced(
    at: &Endpoint,
    options: &Options,
    limits: &Limits,
) -> Result<Option<std::collections::HashMap<String, String>>, Failure> {
    let record = at.record_url()?;
    let dir = tempfile::tempdir().map_err(|e| Failure::Retryable(format!("cannot create a temporary folder: {e}")))?;
    let local = dir.path().join("synced");
    if !fetch_file(at, record, &local, false, options).await? {
        return Ok(None);
    }
    let bytes_max = limits.objects_listed_max.saturating_mul(4096);
    let size = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
    if size > bytes_max {
        return Err(Failure::Retryable(format!(
            "{record} is {size} bytes, more than objects_listed_max allows ({bytes_max}); delete it (the next complete sync writes it again, deleting nothing until then)"
        )));
    }
    let text = std::fs::read_to_string(&local).map_err(|e| {
        Failure::Retryable(format!(
            "{record} is unreadable ({e}); delete it (the next complete sync writes it again)"
        ))
    })?;
    parse_synced(&text).map(Some).map_err(|why| {
        Failure::Retryable(format!(
            "{record} {why}; delete it (the next complete sync writes it again)"
        ))
    })
}

/// A record's entries (path -> state).
fn parse_synced(text: &str) -> Result<std::collections::HashMap<String, String>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(SYNCED_LIST_HEADER) {
        return Err("is not a media_sync record".into());
    }
    let mut entries = std::collections::HashMap::new();
    for line in lines.filter(|line| !line.is_empty()) {
        let Some((state, path)) = line.split_once('|') else {
            return Err("has a line that is not STATE|PATH".into());
        };
        entries.insert(path.to_string(), state.to_string());
    }
    Ok(entries)
}

/// Copies the file `remote` (reached like `at`) to `local`; false when there is none. With
/// `remove`, rsync removes it at `remote` once copied (`--remove-source-files`).
async fn fetch_file(
    at: &Endpoint,
    remote: &str,
    local: &std::path::Path,
    remove: bool,
    options: &Options,
) -> Result<bool, Failure> {
    let mut args = vec![format!("--timeout={IO_TIMEOUT_SECONDS}")];
    if remove {
        args.push("--remove-source-files".into());
    }
    args.extend(transport_args(&[at.transport], options));
    args.push(remote.to_string());
    args.push(local.display().to_string());
    let (code, stderr) = run_plain(&args).await?;
    if code == Some(23) && stderr.contains("No such file or directory") {
        return Ok(false);
    }
    exit_failure(code, &stderr)?;
    Ok(local.exists())
}

/// Moves the record from its old place inside the served folder ([`SYNCED_LIST_NAME`]) to
/// `record_url`: kept as it is when `record_url` has none yet (the same entries, the same
/// meaning), and removed from the served folder in any case. A note when it cannot be.
pub async fn migrate_record(at: &Endpoint, options: &Options) -> Result<Option<String>, Failure> {
    let record = at.record_url()?.to_string();
    let legacy = format!("{}{SYNCED_LIST_NAME}", at.text);
    let dir = tempfile::tempdir().map_err(|e| Failure::Retryable(format!("cannot create a temporary folder: {e}")))?;
    let old = dir.path().join("old");
    match fetch_file(at, &legacy, &old, true, options).await {
        Ok(false) => return Ok(None),
        Ok(true) => {}
        Err(error) => {
            return Ok(Some(format!(
                "the old record {legacy}, inside the served folder, could not be moved ({error}); remove it by hand"
            )));
        }
    }
    let current = dir.path().join("current");
    if !fetch_file(at, &record, &current, false, options).await? {
        let text = std::fs::read_to_string(&old).unwrap_or_default();
        // Only a record moves (an upload of that name is no record: it is removed all the
        // same, since it is excluded from every copy and would stay in the folder forever).
        if parse_synced(&text).is_ok() {
            put_file(at, &old, &record, options).await?;
        }
    }
    if !matches!(
        fetch_file(at, &legacy, &dir.path().join("again"), false, options).await,
        Ok(false)
    ) {
        return Ok(Some(format!(
            "the old record {legacy}, inside the served folder, could not be removed; remove it by hand"
        )));
    }
    Ok(None)
}

/// Copies the local file `local` to `remote` (reached like `at`).
async fn put_file(at: &Endpoint, local: &std::path::Path, remote: &str, options: &Options) -> Result<(), Failure> {
    let mut args = vec![format!("--timeout={IO_TIMEOUT_SECONDS}")];
    args.extend(transport_args(&[at.transport], options));
    args.push(local.display().to_string());
    args.push(remote.to_string());
    let (code, stderr) = run_plain(&args).await?;
    exit_failure(code, &stderr)?;
    Ok(())
}

/// Writes the record of what both sides hold at `at` (its `record_url`).
pub async fn write_synced(at: &Endpoint, names: &[(String, String)], options: &Options) -> Result<(), Failure> {
    let record = at.record_url()?;
    let dir = tempfile::tempdir().map_err(|e| Failure::Retryable(format!("cannot create a temporary folder: {e}")))?;
    let local = dir.path().join("synced");
    let mut text = String::with_capacity(names.iter().map(|(n, s)| n.len() + s.len() + 2).sum::<usize>() + 128);
    text.push_str(SYNCED_LIST_HEADER);
    text.push('\n');
    for (name, state) in names {
        text.push_str(state);
        text.push('|');
        text.push_str(name);
        text.push('\n');
    }
    std::fs::write(&local, text).map_err(|e| Failure::Retryable(format!("cannot write the record: {e}")))?;
    put_file(at, &local, record, options).await
}

/// The entries a run may delete: named with the same state by the receiver's and the sender's
/// records, and, unless a folder, still in that state on the receiver (`now`).
pub fn deletable(
    receiver: &std::collections::HashMap<String, String>,
    sender: &std::collections::HashMap<String, String>,
    now: &std::collections::HashMap<String, String>,
) -> std::collections::HashSet<String> {
    receiver
        .iter()
        .filter(|(path, state)| sender.get(*path) == Some(*state))
        .filter(|(path, state)| state.as_str() == "d" || now.get(*path) == Some(*state))
        .map(|(path, _)| path.clone())
        .collect()
}

/// The longest filter rule pattern rsync keeps, in bytes: it discards one of `MAXPATHLEN`
/// (4096 on Linux) bytes or more ("discarding over-long filter").
pub const RULE_PATTERN_BYTES_MAX: usize = 4095;

/// A path rsync printed, as the bytes of a filter rule pattern that matches exactly it from the
/// top of the transfer (`/path`, a folder's with its `/`); `None` when no rule can (a pattern
/// longer than [`RULE_PATTERN_BYTES_MAX`]: its entry is then never named, so never deleted).
///
/// The name's own bytes come back first ([`unescape_name`]: rsync printed a newline, a CR or a
/// non-ASCII byte as `\#ooo`), so a rule names `café.jpg` itself. The rules go to rsync in a
/// file read with `--from0` ([`rules_file`]): each ends at a NUL, which no name holds, so a
/// newline or CR in a name stays in its pattern, and so does a space at either end (rsync
/// trims none). The leading `/` anchors the pattern and keeps a name like `- x` or `# x` from
/// reading as a prefix or a comment. rsync matches a pattern without `*`, `?` or `[` byte for
/// byte (a backslash in it is literal); one with any of them as a wildcard pattern, where a
/// backslash escapes the next character: then every `*`, `?`, `[` and `\` is escaped, and the
/// pattern holds no `**` (each `*` follows a backslash). rsync(1), "PATTERN MATCHING RULES".
pub fn exact_rule_pattern(path: &str) -> Option<Vec<u8>> {
    let name = unescape_name(path);
    if name.is_empty() || name.contains(&0) {
        return None;
    }
    let wildcards = name.iter().any(|b| matches!(b, b'*' | b'?' | b'['));
    let mut pattern = Vec::with_capacity(name.len() + 8);
    pattern.push(b'/');
    for byte in name {
        if wildcards && matches!(byte, b'*' | b'?' | b'[' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(byte);
    }
    (pattern.len() <= RULE_PATTERN_BYTES_MAX).then_some(pattern)
}

/// A filter rule: `prefix` (`R`, `P`), a space, the pattern.
pub fn rule(prefix: &str, pattern: &[u8]) -> Vec<u8> {
    let mut rule = Vec::with_capacity(prefix.len() + 1 + pattern.len());
    rule.extend_from_slice(prefix.as_bytes());
    rule.push(b' ');
    rule.extend_from_slice(pattern);
    rule
}

/// The text of a rules file for `--filter=merge FILE` with `--from0`: each rule ends with a
/// NUL ([`exact_rule_pattern`]).
pub fn rules_file(rules: &[Vec<u8>]) -> Vec<u8> {
    let mut text = Vec::with_capacity(rules.iter().map(|r| r.len() + 1).sum());
    for rule in rules {
        text.extend_from_slice(rule);
        text.push(0);
    }
    text
}

/// What a run with `delete = true` may delete: the receiver's entries the sender lacks that
/// both sides held at the last complete sync (`synced`), less every folder above an entry that
/// stays and every entry no rule can name exactly. Returns (to delete, rules): an `R` (risk)
/// rule for each entry to delete, then `P *`, which protects everything else on the receiver
/// — the entries the dry run listed as its own, and any that appeared there since the dry run
/// (an upload arriving while the copy runs is never deleted).
pub fn split_deletions(deleting: &[String], synced: &std::collections::HashSet<String>) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut delete = Vec::new();
    let mut keep: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for path in deleting {
        if synced.contains(path) && exact_rule_pattern(path).is_some() {
            delete.push(path.clone());
        } else {
            keep.insert(path.clone());
        }
    }
    // A folder holding a kept entry stays (rsync would fail to remove it, non-empty).
    let candidates: std::collections::HashSet<&str> = deleting.iter().map(String::as_str).collect();
    let folders: Vec<String> = keep
        .iter()
        .flat_map(|path| {
            let trimmed = path.trim_end_matches('/');
            trimmed
                .char_indices()
                .filter(|(_, c)| *c == '/')
                .map(|(i, _)| format!("{}/", &trimmed[..i]))
                .filter(|folder| candidates.contains(folder.as_str()))
                .collect::<Vec<_>>()
        })
        .collect();
    keep.extend(folders);
    delete.retain(|path| !keep.contains(path));
    if delete.is_empty() {
        return (delete, Vec::new());
    }
    let mut rules: Vec<Vec<u8>> = delete
        .iter()
        .filter_map(|path| exact_rule_pattern(path).map(|pattern| rule("R", &pattern)))
        .collect();
    rules.push(rule("P", b"*"));
    (delete, rules)
}

/// A partial file's path (`DIR/.switchyard-partial/NAME`, as rsync printed it) split into the
/// folder holding the partial-dir (`DIR/`, empty at the top) and the source file it belongs to
/// (`DIR/NAME`); `None` for anything else, and for a path no filter rule can name exactly
/// (longer than [`RULE_PATTERN_BYTES_MAX`]: never removed). Any other name is one: its bytes
/// are named exactly whatever they hold ([`exact_rule_pattern`]).
pub fn partial_source(path: &str) -> Option<(String, String)> {
    exact_rule_pattern(path)?;
    let (folder, name) = match path.rsplit_once(&format!("/{PARTIAL_DIR}/")) {
        Some((folder, name)) => (format!("{folder}/"), name),
        None => (String::new(), path.strip_prefix(&format!("{PARTIAL_DIR}/"))?),
    };
    if name.is_empty()
        || name.contains('/')
        || folder
            .split('/')
            .any(|part| part == ".." || part == "." || part == PARTIAL_DIR)
    {
        return None;
    }
    Some((folder.clone(), format!("{folder}{name}")))
}

/// The partials to remove and the rules that remove exactly them: of `partials` (the
/// receiver's, [`partial_source`] shapes), those whose source file `source_files` does not
/// name. Returns (to remove, folders the deletion run must hold, rules): an `R` rule for each
/// partial, and for a partial-dir left empty the partial-dir itself (it is then not among the
/// folders, so rsync removes it with its contents), then `P *`, which protects everything
/// else — a partial that appeared since the listing (a transfer cut off meanwhile) included.
pub fn stale_partials(
    partials: &[String],
    source_files: &std::collections::HashSet<String>,
) -> (Vec<String>, Vec<String>, Vec<Vec<u8>>) {
    use std::collections::BTreeMap;
    // Per partial-dir (by the folder holding it): its partials, and whether each is stale.
    let mut dirs: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for path in partials {
        if let Some((folder, source)) = partial_source(path) {
            dirs.entry(folder)
                .or_default()
                .push((path.clone(), !source_files.contains(&source)));
        }
    }
    let (mut remove, mut folders, mut rules) = (Vec::new(), Vec::new(), Vec::new());
    for (folder, entries) in dirs {
        let stale: Vec<&String> = entries.iter().filter(|(_, stale)| *stale).map(|(p, _)| p).collect();
        if stale.is_empty() {
            continue;
        }
        let partial_dir = format!("{folder}{PARTIAL_DIR}/");
        if stale.len() == entries.len() {
            // The whole partial-dir goes; the folder holding it is walked.
            if let Some(pattern) = exact_rule_pattern(&partial_dir) {
                rules.push(rule("R", &pattern));
            }
            folders.push(folder);
        } else {
            folders.push(partial_dir);
        }
        for path in stale {
            if let Some(pattern) = exact_rule_pattern(path) {
                rules.push(rule("R", &pattern));
            }
            remove.push(path.clone());
        }
    }
    if !rules.is_empty() {
        rules.push(rule("P", b"*"));
    }
    (remove, folders, rules)
}

/// Removes the partial files on `target` (in its `.switchyard-partial` folders) whose source
/// file `source` no longer has: a file cut off mid-copy and deleted at the source before the
/// next run would otherwise stay on the receiver forever (the partial-dir is excluded from
/// every copy and deletion). Runs after a copy, so this step's own transfer is not using any;
/// a partial whose source file exists is never touched (the next run resumes it, and a
/// transfer elsewhere may be using it), nor one that appears meanwhile (`P *`). Returns how
/// many were removed. Every rsync here reads or deletes only what its rules name.
pub async fn remove_stale_partials(
    source: &Endpoint,
    target: &Endpoint,
    options: &Options,
    limits: &Limits,
) -> Result<u64, Failure> {
    let lines_max = limits.objects_listed_max.saturating_add(64);
    let temporary =
        || tempfile::tempdir().map_err(|e| Failure::Retryable(format!("cannot create a temporary folder: {e}")));
    // The receiver's partials: every folder walked, only the partial-dirs' files listed.
    let empty = temporary()?;
    let mut args = vec![
        "-rlpt".to_string(),
        "--dry-run".to_string(),
        "--prune-empty-dirs".to_string(),
        format!("--timeout={IO_TIMEOUT_SECONDS}"),
        "--out-format=%i|%l|%M|%n".to_string(),
        "--include=*/".to_string(),
        format!("--include={PARTIAL_DIR}/*"),
        "--exclude=*".to_string(),
    ];
    args.extend(transport_args(&[target.transport], options));
    args.push(target.text.clone());
    args.push(format!("{}/", empty.path().display()));
    let (listing, _) = run(&args, lines_max, None, 0, true).await?;
    let partials: Vec<String> = listing
        .names
        .into_iter()
        .filter(|(path, state)| state.starts_with('f') && partial_source(path).is_some())
        .map(|(path, _)| path)
        .collect();
    if partials.is_empty() {
        return Ok(0);
    }
    // Which of their source files the sender still has.
    let mut wanted = Vec::new();
    for path in &partials {
        if let Some((_, source_file)) = partial_source(path) {
            wanted.extend(unescape_name(&source_file));
            wanted.push(0);
        }
    }
    let mut args = vec![
        "-lpt".to_string(),
        "--dry-run".to_string(),
        format!("--timeout={IO_TIMEOUT_SECONDS}"),
        "--out-format=%i|%l|%M|%n".to_string(),
        "--files-from=-".to_string(),
        "--from0".to_string(),
        // A source file gone is the answer looked for, not an error (exit 23).
        "--ignore-missing-args".to_string(),
    ];
    args.extend(transport_args(&[source.transport], options));
    args.push(source.text.clone());
    args.push(format!("{}/", empty.path().display()));
    let (listing, _) = run(&args, lines_max, Some(wanted), 0, true).await?;
    let source_files: std::collections::HashSet<String> = listing
        .names
        .into_iter()
        .filter(|(_, state)| state.starts_with('f'))
        .map(|(path, _)| path)
        .collect();
    let (remove, folders, rules) = stale_partials(&partials, &source_files);
    if remove.is_empty() {
        return Ok(0);
    }
    // The deletion run: a local tree of just the folders to walk, nothing copied
    // (`--existing --ignore-existing`), no time or permission changed, and only what the rules
    // name deleted.
    let tree = temporary()?;
    for folder in &folders {
        // The folder's own bytes, as rsync printed them escaped (`café/`).
        let folder = std::ffi::OsStr::from_bytes(&unescape_name(folder)).to_owned();
        std::fs::create_dir_all(tree.path().join(folder))
            .map_err(|e| Failure::Retryable(format!("cannot create a temporary folder: {e}")))?;
    }
    let rules_dir = temporary()?;
    let rules_path = rules_dir.path().join("rules");
    std::fs::write(&rules_path, rules_file(&rules))
        .map_err(|e| Failure::Retryable(format!("cannot write the partial files' rules: {e}")))?;
    let mut args = vec![
        "-r".to_string(),
        "--delete".to_string(),
        "--existing".to_string(),
        "--ignore-existing".to_string(),
        format!("--timeout={IO_TIMEOUT_SECONDS}"),
        "--out-format=%i|%l|%M|%n".to_string(),
        // The rules end at NULs ([`rules_file`]).
        "--from0".to_string(),
        format!("--filter=merge {}", rules_path.display()),
    ];
    args.extend(transport_args(&[target.transport], options));
    args.push(format!("{}/", tree.path().display()));
    args.push(target.text.clone());
    let (done, _) = run(&args, lines_max, None, 0, false).await?;
    Ok(done.deleting.iter().filter(|path| !path.ends_with('/')).count() as u64)
}

/// Copies what `target` lacks of `source`. `delete`: `None`, or `Some(delete_fraction_max)`
/// (see [`super::deletions_refused`]). Deletions refused by that bound fail the run after the
/// copy (copies go ahead), and leave the records as they were.
pub async fn sync(
    source: &Endpoint,
    target: &Endpoint,
    delete: Option<f64>,
    options: &Options,
    limits: &Limits,
) -> Result<SyncReport, Failure> {
    // One file more than a run may copy tells whether the limit cuts it short.
    let keep = usize::try_from(limits.objects_per_run_max.saturating_add(1)).unwrap_or(usize::MAX);
    // With delete: what the sender holds before the copy, which both sides hold after a
    // complete one (the record written at the end).
    let mut notes: Vec<String> = Vec::new();
    let sender_entries = if delete.is_some() {
        // Records kept inside the served folder by older versions move out first.
        for side in [target, source] {
            notes.extend(migrate_record(side, options).await?);
        }
        Some(list_all(source, options, limits).await?)
    } else {
        None
    };
    let before = measure(source, target, delete.is_some(), options, limits, keep).await?;
    let (chosen, limited) = within_limits(&before.listing.files, limits);
    let mut deletions_limited = false;
    let mut args = common_args(source, target, options);
    let mut files_from = None;
    // Deletions the safety bound refused: the run fails after the copy.
    let mut refused = None;
    // Holds the protect rules' file until rsync has read it.
    let mut rules_dir = None;
    if limited.is_some() {
        // Only the chosen files (on rsync's stdin: no file of ours anywhere), and no deletion
        // this time.
        // rsync printed each name with its control and non-ASCII bytes escaped (`\#ooo`,
        // LC_ALL=C): the list gets the real bytes back, NUL-separated (`--from0`), so a name
        // like `café.jpg` or one holding a newline is found.
        let mut list = Vec::new();
        for item in &chosen {
            list.extend(unescape_name(&item.path));
            list.push(0);
        }
        files_from = Some(list);
        args.push("--files-from=-".into());
        args.push("--from0".into());
    } else if let Some(fraction_max) = delete.filter(|_| before.listing.deletions > 0) {
        let candidates = &before.listing.deleting;
        // A record that cannot be read (planted by an upload of that name, cut short, too
        // large) deletes nothing, but stops no copy: the copy's end writes it again. Both
        // sides' records must name an entry (each complete copy writes the same one to both),
        // so a record planted or altered on one side cannot delete anything by itself.
        let records = match read_synced(target, options, limits).await {
            Ok(Some(receiver)) => match read_synced(source, options, limits).await {
                // Deletable: named alike by both records, and (a file) still as recorded on
                // the receiver; one changed since (a new upload under an old name) stays.
                Ok(Some(sender)) => match list_all(target, options, limits).await {
                    Ok(now) => {
                        let synced_files = receiver.values().filter(|state| state.as_str() != "d").count() as u64;
                        Ok(Some((
                            deletable(&receiver, &sender, &now.into_iter().collect()),
                            synced_files,
                        )))
                    }
                    Err(error) => Err(format!("the receiver's files cannot be listed ({error})")),
                },
                Ok(None) => Err(format!(
                    "the sender has no record of the last complete sync at {} (this run writes it)",
                    source.record.as_deref().unwrap_or_default()
                )),
                Err(error) => Err(format!("the sender's record cannot be used ({error})")),
            },
            Ok(None) => Ok(None),
            Err(error) => Err(format!("the receiver's record cannot be used ({error})")),
        };
        match records {
            Err(why) => notes.push(format!("nothing deleted: {why}")),
            Ok(None) => notes.push(format!(
                "nothing deleted: {} has no record of a complete sync yet ({}; this run writes it), so its {} files the sender lacks may be its own uploads",
                target.text,
                target.record.as_deref().unwrap_or_default(),
                before.listing.deletions
            )),
            Ok(Some((synced, synced_files))) => {
                let (to_delete, rules) = split_deletions(candidates, &synced);
                let kept = candidates.len() - to_delete.len();
                if kept > 0 {
                    notes.push(format!(
                        "kept {kept} entries the receiver holds that were not on both sides at the last complete sync (its own uploads, never copied to the sender) or that no rsync rule names exactly: delete removes only what the sender deleted"
                    ));
                }
                // The safety bound, on files (folders go with them): an unmounted sub-mount
                // or source lists nothing where the receiver holds a whole tree.
                let files: Vec<String> = to_delete.iter().filter(|p| !p.ends_with('/')).cloned().collect();
                let source_files = sender_entries
                    .iter()
                    .flatten()
                    .filter(|(_, state)| state.as_str() != "d")
                    .map(|(path, _)| path.as_str());
                if let Some(why) = super::deletions_refused(source_files, synced_files, &files, fraction_max) {
                    refused = Some(why);
                } else if !to_delete.is_empty() {
                    // Deletions count against the same objects_per_run_max as the copies.
                    // The dry run counted them: an rsync daemon receiving keeps its exit
                    // code 25 to itself.
                    let budget = limits.objects_per_run_max.saturating_sub(chosen.len() as u64);
                    args.push("--delete".into());
                    args.push(format!("--max-delete={budget}"));
                    deletions_limited = to_delete.len() as u64 > budget;
                    // Only the entries named may go: everything else is protected.
                    let dir = tempfile::tempdir()
                        .map_err(|e| Failure::Retryable(format!("cannot create a temporary folder: {e}")))?;
                    let file = dir.path().join("protect");
                    std::fs::write(&file, rules_file(&rules))
                        .map_err(|e| Failure::Retryable(format!("cannot write the protect rules: {e}")))?;
                    // The rules end at NULs ([`rules_file`]); no `--files-from` here.
                    args.push("--from0".into());
                    args.push(format!("--filter=merge {}", file.display()));
                    rules_dir = Some(dir);
                }
            }
        }
        if before.listing.source_is_empty() && refused.is_none() {
            // The sender lists no file at all while the receiver holds some: an unmounted
            // mount point or an emptied folder, far likelier than every upload deleted. Even
            // without records to delete by, that is an error, not a quiet note.
            let files: Vec<String> = candidates.iter().filter(|p| !p.ends_with('/')).cloned().collect();
            refused = super::deletions_refused(std::iter::empty(), files.len() as u64, &files, fraction_max);
        }
    }
    args.push(source.text.clone());
    args.push(target.text.clone());
    let result = if limited.is_some() && chosen.is_empty() {
        Ok((Listing::default(), None))
    } else {
        run(
            &args,
            limits.objects_listed_max.saturating_add(64),
            files_from,
            0,
            false,
        )
        .await
    };
    drop(rules_dir);
    let (done, note) = result?;
    let mut limited = limited;
    if deletions_limited || note.as_deref() == Some(MAX_DELETE_NOTE) {
        limited = Some(format!("objects_per_run_max = {}", limits.objects_per_run_max));
    }
    if let Some(note) = note.filter(|n| n != MAX_DELETE_NOTE) {
        notes.push(note);
    }
    // A complete copy: both sides hold what the sender listed before it. Recorded on both, so
    // the next run either way knows; a side it cannot be written to keeps its older record.
    // Not after refused deletions: the records keep naming what the receiver still holds, so
    // an intended mass deletion (the bound raised) can still remove it.
    if let Some(entries) = sender_entries.filter(|_| limited.is_none() && refused.is_none())
        && !before.listing.source_is_empty()
    {
        write_synced(target, &entries, options).await?;
        if let Err(error) = write_synced(source, &entries, options).await {
            notes.push(format!(
                "the record of this sync was not written at the source ({error}); a run the other way deletes only what it knew before"
            ));
        }
    }
    // The part of a file cut off mid-copy whose source was deleted since: removed, or it
    // would stay on the receiver forever. A failure here costs only disk space: a note.
    match remove_stale_partials(source, target, options, limits).await {
        Ok(0) => {}
        Ok(removed) => notes.push(format!(
            "removed {removed} partial files ({PARTIAL_DIR}) whose source file is gone"
        )),
        Err(error) => notes.push(format!(
            "partial files ({PARTIAL_DIR}) whose source file is gone were not removed: {error}"
        )),
    }
    // The verification counts every file that differs, a newer one on the receiver too.
    let plain = Options {
        keep_newer: false,
        ..options.clone()
    };
    let after = measure(source, target, false, &plain, limits, 0).await?;
    notes.extend(after.listing.unsafe_links_warning());
    if let Some(why) = refused {
        return Err(Failure::Refused(format!(
            "copied {} objects ({} bytes), {} still differ; {why}",
            done.counted, done.counted_bytes, after.lag.objects
        )));
    }
    Ok(SyncReport {
        copied_objects: done.counted,
        copied_bytes: done.counted_bytes,
        deleted_objects: done.deletions,
        remaining: after.lag,
        limited,
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    })
}
