//! `media_sync`: product images and uploads copied from the active region to the others, and
//! the `media_lag` figure (objects and bytes the standby lacks, age of the oldest), which
//! `status`, the dashboard and `/metrics` show and failback can wait for.
//!
//! Two modes, one per `[runbook.media_sync] mode`:
//! - `rsync` ([`rsync`]): runs the real `rsync` binary between a local folder and a remote one
//!   (over SSH, `user@host:/path`, or an rsync daemon, `rsync://host/module/path`). The lag is
//!   `rsync --dry-run --itemize-changes --stats` of the same copy. `--delete` only with
//!   `delete = true`; `--update` only in the runbook step's copy into the region taking over
//!   (a newer file there stays, and is counted in the lag).
//! - `s3` ([`s3`], with the `aws` feature): any S3-compatible API (AWS S3, DigitalOcean
//!   Spaces, MinIO). Both buckets are listed (ListObjectsV2, paginated), what is missing on the
//!   receiver or differs in size or ETag is copied (GetObject, PutObject), and each copy is
//!   verified with HeadObject (size, and the ETag or the source ETag recorded in the copy's
//!   metadata for multipart sources). An object the receiver wrote itself after the source's
//!   version differs, and is counted, like rsync's newer file; only the runbook step's copy
//!   leaves it alone.
//!
//! As a runbook step it copies from the region that was active (`order.from`) to the new
//! active region (`order.to`): on a failback that brings the uploads made during the outage
//! home before traffic moves. On a failover the old region is usually unreachable, so by
//! default (`on_failover = "best_effort"`) a failed copy is reported and the runbook goes on
//! (also on a retry or a roll-forward, which may be a failover's; only a switchover or a
//! failback always copies strictly).
//! A stale controller's copy (the runbook step's) cannot overwrite newer files: rsync runs with
//! `--update`, and the S3 mode leaves an object alone that the receiver holds in a newer,
//! different version it did not get from Switchyard; both still count it as differing.
//!
//! Every run is bounded: `objects_per_run_max`, `bytes_per_run_max`, `object_bytes_max` (S3),
//! `concurrency` (S3), `run_timeout_ms` for the whole run, `objects_listed_max` per listing.

pub mod rsync;
#[cfg(feature = "aws")]
pub mod s3;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::aws::{self, Access};
use crate::{Checker, Failure, Order, Outcome};

/// The step kind.
pub const KIND: &str = "media_sync";
/// Default of `run_timeout_ms`: one whole sync or lag measurement.
pub const RUN_TIMEOUT_MS_DEFAULT: u64 = 300_000;
/// Largest `run_timeout_ms`.
pub const RUN_TIMEOUT_MS_MAX: u64 = 6 * 3_600_000;
/// Default of `lag_interval_ms`: how often the controller measures the lag.
pub const LAG_INTERVAL_MS_DEFAULT: u64 = 60_000;
/// Smallest `lag_interval_ms`.
pub const LAG_INTERVAL_MS_MIN: u64 = 1_000;
/// Largest `lag_interval_ms`.
pub const LAG_INTERVAL_MS_MAX: u64 = 24 * 3_600_000;
/// Default of `objects_per_run_max`.
pub const OBJECTS_PER_RUN_MAX_DEFAULT: u64 = 10_000;
/// Default of `bytes_per_run_max` (10 GiB).
pub const BYTES_PER_RUN_MAX_DEFAULT: u64 = 10 * 1024 * 1024 * 1024;
/// Default of `object_bytes_max` (S3: an object is held in memory while copied; 256 MiB).
pub const OBJECT_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// Largest `object_bytes_max` (PutObject takes at most 5 GiB in one request).
pub const OBJECT_BYTES_MAX_LIMIT: u64 = 5 * 1024 * 1024 * 1024;
/// Default of `concurrency` (S3 copies in flight).
pub const CONCURRENCY_DEFAULT: u32 = 4;
/// Largest `concurrency`.
pub const CONCURRENCY_MAX: u32 = 32;
/// Default of `objects_listed_max` (objects one listing of one bucket may hold).
pub const OBJECTS_LISTED_MAX_DEFAULT: u64 = 1_000_000;
/// Most keys per ListObjectsV2 page (S3's own maximum), and the default.
pub const LIST_PAGE_KEYS_MAX: u32 = 1000;
/// Longest location URL, in bytes.
pub const URL_BYTES_MAX: usize = 1024;
/// Paths of a lag figure's sample of missing objects.
pub const MISSING_SAMPLE_MAX: usize = 5;
/// Default of `delete_fraction_max`: one run may delete at most this fraction of the
/// receiver's synced files.
pub const DELETE_FRACTION_MAX_DEFAULT: f64 = 0.25;
/// Deletions of up to this many files are not refused by `delete_fraction_max` (a few files
/// deleted in a small folder are no mass deletion) as long as they leave at least half of the
/// receiver's synced files: on a receiver of 4 files, deleting 3 is most of the media, the
/// mark of a source that lost it by mistake, and is refused. Never when the source lists
/// nothing.
pub const DELETE_FILES_FLOOR: u64 = 5;
/// Largest `bwlimit_kib` (10 GiB/s).
pub const BWLIMIT_KIB_MAX: u64 = 10 * 1024 * 1024;
/// Paths named in an error about refused deletions.
pub const DELETE_EXAMPLES_MAX: usize = 5;

/// `[runbook.media_sync]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `rsync` or `s3`.
    pub mode: Spanned<String>,
    /// Per region, where its media lives.
    pub locations: Spanned<BTreeMap<String, Spanned<LocationSettings>>>,
    /// Delete on the receiver what the sender no longer has (rsync `--delete`; S3
    /// DeleteObject). Off by default: a wrong direction then loses nothing.
    #[serde(default)]
    pub delete: bool,
    /// With `delete`: the largest fraction of the receiver's synced files one run may delete
    /// (above [`DELETE_FILES_FLOOR`] files, or half of them); a run that would delete more, or a whole folder
    /// of more than the floor, deletes nothing and fails. 1 lifts the bound.
    #[serde(default)]
    pub delete_fraction_max: Option<Spanned<f64>>,
    /// `best_effort` (default), `required` or `skip`: what a failed copy does on a failover.
    #[serde(default)]
    pub on_failover: Option<Spanned<String>>,
    #[serde(default)]
    pub run_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub lag_interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub objects_per_run_max: Option<Spanned<u64>>,
    #[serde(default)]
    pub bytes_per_run_max: Option<Spanned<u64>>,
    #[serde(default)]
    pub object_bytes_max: Option<Spanned<u64>>,
    #[serde(default)]
    pub concurrency: Option<Spanned<u32>>,
    #[serde(default)]
    pub objects_listed_max: Option<Spanned<u64>>,
    /// S3: keys per ListObjectsV2 page (S3's maximum and the default: 1000; some
    /// S3-compatible services page smaller).
    #[serde(default)]
    pub list_page_keys: Option<Spanned<u32>>,
    /// rsync over SSH: the private key (`ssh -i`), relative to the config file's folder.
    #[serde(default)]
    pub ssh_identity_file: Option<Spanned<PathBuf>>,
    /// rsync over SSH: the SSH server's port (`ssh -p`; default: ssh's own, 22 or
    /// `~/.ssh/config`).
    #[serde(default)]
    pub ssh_port: Option<Spanned<u32>>,
    /// rsync over SSH: a known_hosts file with the SSH servers' host keys (`ssh -o
    /// UserKnownHostsFile=FILE -o StrictHostKeyChecking=yes`), relative to the config file's
    /// folder; default: ssh's own (`~/.ssh/known_hosts`).
    #[serde(default)]
    pub ssh_known_hosts_file: Option<Spanned<PathBuf>>,
    /// rsync daemon: the file holding the module's password (`--password-file`).
    #[serde(default)]
    pub password_file: Option<Spanned<PathBuf>>,
    /// rsync: the bandwidth one copy may use, in KiB/s (`--bwlimit`); default: no limit.
    #[serde(default)]
    pub bwlimit_kib: Option<Spanned<u64>>,
}

aws::aws_settings! {
    /// One region's `locations.REGION` table. S3 only: `region` (the signing region;
    /// DigitalOcean Spaces and MinIO: `us-east-1`), `profile`, `endpoint_url`
    /// (`https://fra1.digitaloceanspaces.com`, MinIO's).
    pub struct LocationSettings {
        /// rsync: `/srv/media/`, `user@host:/srv/media/` or `rsync://host[:port]/module/path/`;
        /// s3: `s3://bucket/prefix/`.
        pub url: Spanned<String>,
        /// rsync with `delete = true`: the folder (reached like `url`, outside the folder the
        /// web server serves) that keeps this location's record of the last complete sync.
        #[serde(default)]
        pub record_url: Option<Spanned<String>>,
        /// S3: path-style addressing (`endpoint/bucket/key`); default: on with `endpoint_url`.
        #[serde(default)]
        pub path_style: Option<bool>,
    }
}

/// What a failed copy does on a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailover {
    /// Try; a failure is reported in the step's detail and the runbook goes on.
    BestEffort,
    /// A failure fails the step like on any other move.
    Required,
    /// Do not copy on a failover.
    Skip,
}

/// One region's media, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Rsync(rsync::Endpoint),
    S3 {
        bucket: String,
        /// Empty or ending in `/`.
        prefix: String,
        access: Access,
        path_style: bool,
    },
}

/// The limits of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub run_timeout_ms: u64,
    pub objects_per_run_max: u64,
    pub bytes_per_run_max: u64,
    pub object_bytes_max: u64,
    pub concurrency: u32,
    pub objects_listed_max: u64,
    /// S3: keys per ListObjectsV2 page.
    pub list_page_keys: u32,
}

/// The ready step.
#[derive(Clone, Debug)]
pub struct MediaSync {
    pub name: String,
    pub locations: BTreeMap<String, Location>,
    pub delete: bool,
    /// `delete_fraction_max`.
    pub delete_fraction_max: f64,
    pub on_failover: OnFailover,
    pub lag_interval_ms: u64,
    pub limits: Limits,
    pub rsync: rsync::Options,
}

/// What the receiver lacks: the `media_lag` figure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lag {
    /// Objects (files) missing on the receiver or different from the sender's.
    pub objects: u64,
    /// Their size on the sender, in bytes.
    pub bytes: u64,
    /// Age of the oldest of them (by the sender's modification time), in seconds.
    pub oldest_age_seconds: Option<u64>,
    /// A few of their paths, for the operator.
    pub sample: Vec<String>,
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub copied_objects: u64,
    pub copied_bytes: u64,
    pub deleted_objects: u64,
    /// The lag measured after the copy (the verification).
    pub remaining: Lag,
    /// The run stopped at a limit; another run copies the rest.
    pub limited: Option<String>,
    /// Something worth saying that is not a failure (rsync: source files vanished).
    pub note: Option<String>,
}

impl SyncReport {
    pub fn describe(&self, from: &str, to: &str) -> String {
        let mut text = format!(
            "{from} -> {to}: copied {} objects ({} bytes)",
            self.copied_objects, self.copied_bytes
        );
        if self.deleted_objects > 0 {
            text.push_str(&format!(", deleted {}", self.deleted_objects));
        }
        text.push_str(&format!(
            "; verified: {} objects ({} bytes) still differ",
            self.remaining.objects, self.remaining.bytes
        ));
        if let Some(limited) = &self.limited {
            text.push_str(&format!("; stopped at {limited}, the next run copies the rest"));
        }
        if let Some(note) = &self.note {
            text.push_str(&format!("; {note}"));
        }
        text
    }
}

impl Lag {
    /// Adds one differing object (`modified_s`: its Unix time on the sender).
    pub fn add(&mut self, path: &str, bytes: u64, modified_s: Option<u64>, now_s: u64) {
        self.objects += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if let Some(modified) = modified_s {
            let age = now_s.saturating_sub(modified);
            self.oldest_age_seconds = Some(self.oldest_age_seconds.map_or(age, |old| old.max(age)));
        }
        if self.sample.len() < MISSING_SAMPLE_MAX {
            self.sample.push(path.to_string());
        }
    }

    pub fn describe(&self) -> String {
        let mut text = format!("{} objects ({} bytes) missing or different", self.objects, self.bytes);
        if let Some(age) = self.oldest_age_seconds {
            text.push_str(&format!(", oldest {age} s old"));
        }
        if !self.sample.is_empty() {
            text.push_str(&format!(" (like {})", self.sample.join(", ")));
        }
        text
    }
}

/// The folders above a path (`a/`, `a/b/` for `a/b/c.jpg`).
fn folders_of(path: &str) -> impl Iterator<Item = &str> {
    path.trim_end_matches('/')
        .char_indices()
        .filter(|(_, c)| *c == '/')
        .map(move |(i, _)| &path[..=i])
}

/// Why a run's deletions must not go (`None`: they may), like rsync's `--max-delete` but
/// decided before anything is deleted. `source_files`: every file the source lists;
/// `receiver_synced`: how many files the receiver holds as synced; `deleting`: the files the
/// run would delete (folders left out). Refused when the source lists no file at all, when
/// more than `fraction_max` of the receiver's synced files would go (and more than
/// [`DELETE_FILES_FLOOR`], or more than half of them), or when more than the floor would go
/// from one folder of which the source holds nothing any more (a sub-mount that is not
/// mounted). `fraction_max` 1 lifts the two bounds, never the first rule.
pub fn deletions_refused<'a>(
    source_files: impl IntoIterator<Item = &'a str>,
    receiver_synced: u64,
    deleting: &[String],
    fraction_max: f64,
) -> Option<String> {
    if deleting.is_empty() {
        return None;
    }
    let examples = |paths: &mut dyn Iterator<Item = &String>| {
        paths
            .take(DELETE_EXAMPLES_MAX)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let count = deleting.len() as u64;
    let mut source_folders = std::collections::HashSet::new();
    let mut source_count = 0u64;
    for file in source_files {
        source_count += 1;
        source_folders.extend(folders_of(file).map(str::to_string));
    }
    let fix = "check that the source is mounted and complete on the sending side (an NFS or EFS mount, a bucket, the prefix); if these deletions are intended, raise delete_fraction_max (1 lifts the bound) for one run";
    if source_count == 0 {
        return Some(format!(
            "deletions refused: the source lists no file at all (not mounted? emptied? a wrong path or prefix?) and the run would delete all {count} files the receiver holds as synced, like {}; nothing deleted. Check the source; a source that lists nothing never deletes (delete on the receiver by hand if that is intended)",
            examples(&mut deleting.iter())
        ));
    }
    if fraction_max >= 1.0 {
        return None;
    }
    // A few files may always go, but never most of the receiver's: the floor is at most half.
    let floor = DELETE_FILES_FLOOR.min(receiver_synced / 2);
    let allowed = (((receiver_synced as f64) * fraction_max).floor() as u64).max(floor);
    if count > allowed {
        return Some(format!(
            "deletions refused: the run would delete {count} of the {receiver_synced} files the receiver holds as synced, more than delete_fraction_max = {fraction_max} allows ({allowed}: that fraction, or up to {DELETE_FILES_FLOOR} files leaving at least half), like {}; nothing deleted. {fix}",
            examples(&mut deleting.iter())
        ));
    }
    let mut per_folder: BTreeMap<&str, u64> = BTreeMap::new();
    for path in deleting {
        for folder in folders_of(path) {
            *per_folder.entry(folder).or_default() += 1;
        }
    }
    // The topmost folder first (BTreeMap order puts `a/` before `a/b/`).
    if let Some((folder, files)) = per_folder
        .iter()
        .find(|(folder, files)| **files > DELETE_FILES_FLOOR && !source_folders.contains(**folder))
    {
        return Some(format!(
            "deletions refused: the source holds nothing under {folder} any more, and the run would delete all {files} files the receiver holds there as synced, like {}; nothing deleted. {fix}",
            examples(&mut deleting.iter().filter(|p| p.starts_with(*folder)))
        ));
    }
    None
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn limit<T: Copy + PartialOrd + std::fmt::Display>(
    what: &str,
    key: &str,
    value: &Option<Spanned<T>>,
    default: T,
    range: (T, T),
    table: &Range<usize>,
    checker: &mut dyn Checker,
) -> Option<T> {
    let Some(value) = value else {
        return Some(default);
    };
    let number = *value.get_ref();
    if number < range.0 || number > range.1 {
        let _ = table;
        checker.error(
            value.span(),
            format!("{what}: {key} = {number} is outside {}..={}", range.0, range.1),
            format!("set {key} between {} and {} (default {default})", range.0, range.1),
        );
        return None;
    }
    Some(number)
}

impl Settings {
    pub fn check(&self, step: &str, checker: &mut dyn Checker) -> Option<MediaSync> {
        let what = format!("media_sync step '{step}'");
        let table = self.locations.span();
        let mut ok = true;
        let mode = self.mode.get_ref().as_str();
        if !matches!(mode, "rsync" | "s3") {
            checker.error(
                self.mode.span(),
                format!("{what}: mode '{mode}' is not rsync or s3"),
                "write mode = \"rsync\" (folders over SSH or an rsync daemon) or mode = \"s3\" (AWS S3, DigitalOcean Spaces, MinIO)".into(),
            );
            return None;
        }
        #[cfg(not(feature = "aws"))]
        if mode == "s3" {
            checker.error(
                self.mode.span(),
                format!("{what}: mode \"s3\" needs a switchyard built with the aws feature"),
                "use the release binary (built with the default features), or mode = \"rsync\"".into(),
            );
            return None;
        }
        let on_failover = match self.on_failover.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("best_effort") => OnFailover::BestEffort,
            Some("required") => OnFailover::Required,
            Some("skip") => OnFailover::Skip,
            Some(other) => {
                checker.error(
                    self.on_failover.as_ref().map(|v| v.span()).unwrap_or(table.clone()),
                    format!("{what}: on_failover '{other}' is not best_effort, required or skip"),
                    "write on_failover = \"best_effort\" (try, report, go on), \"required\" or \"skip\"".into(),
                );
                ok = false;
                OnFailover::BestEffort
            }
        };
        let limits = (|| {
            Some(Limits {
                run_timeout_ms: limit(
                    &what,
                    "run_timeout_ms",
                    &self.run_timeout_ms,
                    RUN_TIMEOUT_MS_DEFAULT,
                    (1_000, RUN_TIMEOUT_MS_MAX),
                    &table,
                    checker,
                )?,
                objects_per_run_max: limit(
                    &what,
                    "objects_per_run_max",
                    &self.objects_per_run_max,
                    OBJECTS_PER_RUN_MAX_DEFAULT,
                    (1, 100_000_000),
                    &table,
                    checker,
                )?,
                bytes_per_run_max: limit(
                    &what,
                    "bytes_per_run_max",
                    &self.bytes_per_run_max,
                    BYTES_PER_RUN_MAX_DEFAULT,
                    (1, u64::MAX / 2),
                    &table,
                    checker,
                )?,
                object_bytes_max: limit(
                    &what,
                    "object_bytes_max",
                    &self.object_bytes_max,
                    OBJECT_BYTES_MAX_DEFAULT,
                    (1, OBJECT_BYTES_MAX_LIMIT),
                    &table,
                    checker,
                )?,
                concurrency: limit(
                    &what,
                    "concurrency",
                    &self.concurrency,
                    CONCURRENCY_DEFAULT,
                    (1, CONCURRENCY_MAX),
                    &table,
                    checker,
                )?,
                objects_listed_max: limit(
                    &what,
                    "objects_listed_max",
                    &self.objects_listed_max,
                    OBJECTS_LISTED_MAX_DEFAULT,
                    (1, 100_000_000),
                    &table,
                    checker,
                )?,
                list_page_keys: limit(
                    &what,
                    "list_page_keys",
                    &self.list_page_keys,
                    LIST_PAGE_KEYS_MAX,
                    (1, LIST_PAGE_KEYS_MAX),
                    &table,
                    checker,
                )?,
            })
        })();
        let delete_fraction_max = match &self.delete_fraction_max {
            Some(value) if !(value.get_ref().is_finite() && *value.get_ref() > 0.0 && *value.get_ref() <= 1.0) => {
                checker.error(
                    value.span(),
                    format!("{what}: delete_fraction_max = {} is outside (0, 1]", value.get_ref()),
                    format!(
                        "set delete_fraction_max to the largest fraction of the receiver's synced files one run may delete (default {DELETE_FRACTION_MAX_DEFAULT}; 1 lifts the bound)"
                    ),
                );
                ok = false;
                DELETE_FRACTION_MAX_DEFAULT
            }
            Some(value) => *value.get_ref(),
            None => DELETE_FRACTION_MAX_DEFAULT,
        };
        let lag_interval_ms = limit(
            &what,
            "lag_interval_ms",
            &self.lag_interval_ms,
            LAG_INTERVAL_MS_DEFAULT,
            (LAG_INTERVAL_MS_MIN, LAG_INTERVAL_MS_MAX),
            &table,
            checker,
        );
        if mode == "s3" {
            for (key, value) in [
                ("ssh_identity_file", self.ssh_identity_file.as_ref().map(|v| v.span())),
                ("ssh_port", self.ssh_port.as_ref().map(|v| v.span())),
                (
                    "ssh_known_hosts_file",
                    self.ssh_known_hosts_file.as_ref().map(|v| v.span()),
                ),
                ("password_file", self.password_file.as_ref().map(|v| v.span())),
                ("bwlimit_kib", self.bwlimit_kib.as_ref().map(|v| v.span())),
            ] {
                if let Some(span) = value {
                    checker.error(
                        span,
                        format!("{what}: {key} is an rsync setting and mode is s3"),
                        format!("remove {key}, or set mode = \"rsync\""),
                    );
                    ok = false;
                }
            }
        }
        let folder = checker.folder().to_path_buf();
        let resolve = |path: &Spanned<PathBuf>| {
            let p = path.get_ref();
            if p.is_absolute() { p.clone() } else { folder.join(p) }
        };
        let ssh_port = match &self.ssh_port {
            Some(port) if !(1..=65_535).contains(port.get_ref()) => {
                checker.error(
                    port.span(),
                    format!("{what}: ssh_port = {} is outside 1..=65535", port.get_ref()),
                    "set ssh_port to the SSH server's TCP port (default: ssh's own, 22)".into(),
                );
                ok = false;
                None
            }
            Some(port) => u16::try_from(*port.get_ref()).ok(),
            None => None,
        };
        let rsync_options = rsync::Options {
            ssh_identity_file: self.ssh_identity_file.as_ref().map(resolve),
            ssh_port,
            ssh_known_hosts_file: self.ssh_known_hosts_file.as_ref().map(resolve),
            keep_newer: false,
            password_file: self.password_file.as_ref().map(resolve),
            bwlimit_kib: match &self.bwlimit_kib {
                Some(value) if !(1..=BWLIMIT_KIB_MAX).contains(value.get_ref()) => {
                    checker.error(
                        value.span(),
                        format!(
                            "{what}: bwlimit_kib = {} is outside 1..={BWLIMIT_KIB_MAX}",
                            value.get_ref()
                        ),
                        "set bwlimit_kib to the KiB/s one copy may use, or remove it (no limit)".into(),
                    );
                    ok = false;
                    None
                }
                Some(value) => Some(*value.get_ref()),
                None => None,
            },
        };
        for (key, path) in [
            ("ssh_identity_file", &self.ssh_identity_file),
            ("ssh_known_hosts_file", &self.ssh_known_hosts_file),
            ("password_file", &self.password_file),
        ] {
            let Some(path) = path else { continue };
            let resolved = resolve(path);
            if !resolved.is_file() {
                checker.error(
                    path.span(),
                    format!("{what}: {key} {} does not exist", resolved.display()),
                    format!("point {key} at a readable file (relative paths start at the config file's folder)"),
                );
                ok = false;
            } else if key.starts_with("ssh_") && !rsync::ssh_safe_path(&resolved) {
                // rsync splits its `-e` command on whitespace, honouring quotes.
                checker.error(
                    path.span(),
                    format!(
                        "{what}: {key} {} holds a quote or a control character, which the ssh command rsync runs cannot carry",
                        resolved.display()
                    ),
                    format!("move the file to a path without quotes and name it in {key}"),
                );
                ok = false;
            }
        }

        let mut locations = BTreeMap::new();
        for (region, location) in self.locations.get_ref() {
            if !checker.regions().contains(region) {
                checker.error(
                    location.span(),
                    format!("{what}: locations names '{region}', which is not a configured region"),
                    format!(
                        "use the names of [[regions]]: {}",
                        checker.regions().iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                );
                ok = false;
                continue;
            }
            let location = location.get_ref();
            let url = location.url.get_ref();
            if url.len() > URL_BYTES_MAX || url.trim() != url || url.is_empty() {
                checker.error(
                    location.url.span(),
                    format!(
                        "{what}: the url of region '{region}' is empty, padded or longer than {URL_BYTES_MAX} bytes"
                    ),
                    "write the folder or bucket of the region's media".into(),
                );
                ok = false;
                continue;
            }
            let keys = aws::inline_credential_keys(
                &location.access_key_id,
                &location.secret_access_key,
                &location.session_token,
            );
            if !aws::check_no_inline_credentials(&what, &keys, checker) {
                ok = false;
            }
            if mode == "rsync" {
                for (key, present) in [
                    ("region", location.region.as_ref().map(|v| v.span())),
                    ("profile", location.profile.as_ref().map(|v| v.span())),
                    ("endpoint_url", location.endpoint_url.as_ref().map(|v| v.span())),
                ] {
                    if let Some(span) = present {
                        checker.error(
                            span,
                            format!("{what}: {key} of region '{region}' is an S3 setting and mode is rsync"),
                            format!("remove {key}, or set mode = \"s3\""),
                        );
                        ok = false;
                    }
                }
                match rsync::Endpoint::parse(url) {
                    Ok(endpoint) => match &location.record_url {
                        Some(record_url) => match endpoint.with_record(record_url.get_ref(), step) {
                            Ok(endpoint) => {
                                locations.insert(region.clone(), Location::Rsync(endpoint));
                            }
                            Err(problem) => {
                                checker.error(
                                    record_url.span(),
                                    format!(
                                        "{what}: record_url '{}' of region '{region}' {problem}",
                                        record_url.get_ref()
                                    ),
                                    "name a folder outside the one the web server serves, on the same host and reached the same way as url (/var/lib/switchyard/media/, deploy@web-eu:/var/lib/switchyard/media/, rsync://host/switchyard-state/)".into(),
                                );
                                ok = false;
                            }
                        },
                        None if self.delete => {
                            checker.error(
                                location.url.span(),
                                format!(
                                    "{what}: delete = true needs record_url for region '{region}': the record of the last complete sync, which decides what may be deleted, is kept there, outside the served folder"
                                ),
                                format!(
                                    "add record_url = \"/var/lib/switchyard/media/\" (a folder outside {url}, on the same host and reached the same way; the first run moves an old {} there from the media folder)",
                                    rsync::SYNCED_LIST_NAME
                                ),
                            );
                            ok = false;
                        }
                        None => {
                            locations.insert(region.clone(), Location::Rsync(endpoint));
                        }
                    },
                    Err(problem) => {
                        checker.error(
                            location.url.span(),
                            format!("{what}: url '{url}' of region '{region}' {problem}"),
                            "write an absolute folder (/srv/media/), user@host:/srv/media/ (SSH) or rsync://host/module/path/ (rsync daemon)".into(),
                        );
                        ok = false;
                    }
                }
            } else {
                if let Some(record_url) = &location.record_url {
                    checker.error(
                        record_url.span(),
                        format!("{what}: record_url of region '{region}' is an rsync setting and mode is s3"),
                        "remove record_url: mode s3 tells its copies by their metadata".into(),
                    );
                    ok = false;
                }
                let Some((bucket, prefix)) = parse_s3_url(url) else {
                    checker.error(
                        location.url.span(),
                        format!("{what}: url '{url}' of region '{region}' is not s3://bucket/prefix/"),
                        "write s3://BUCKET/ or s3://BUCKET/PREFIX/ (bucket names: 3-63 lowercase letters, digits, dots, dashes)".into(),
                    );
                    ok = false;
                    continue;
                };
                let access = Access::check(
                    &format!("{what}, region '{region}'"),
                    location.url.span(),
                    &location.region,
                    &location.profile,
                    &location.endpoint_url,
                    Some("us-east-1"),
                    checker,
                );
                if let Some(access) = access {
                    let path_style = location.path_style.unwrap_or(access.endpoint_url.is_some());
                    locations.insert(
                        region.clone(),
                        Location::S3 {
                            bucket,
                            prefix,
                            access,
                            path_style,
                        },
                    );
                } else {
                    ok = false;
                }
            }
        }
        if ok {
            let missing: Vec<String> = checker
                .regions()
                .iter()
                .filter(|r| !self.locations.get_ref().contains_key(*r))
                .cloned()
                .collect();
            if !missing.is_empty() {
                checker.error(
                    table.clone(),
                    format!("{what}: no location for region(s) {}", missing.join(", ")),
                    "give every region its media location under [runbook.media_sync.locations]".into(),
                );
                ok = false;
            }
        }
        if ok
            && mode == "rsync"
            && !locations
                .values()
                .any(|l| matches!(l, Location::Rsync(e) if e.transport == rsync::Transport::Ssh))
        {
            for (key, span) in [
                ("ssh_identity_file", self.ssh_identity_file.as_ref().map(|v| v.span())),
                ("ssh_port", self.ssh_port.as_ref().map(|v| v.span())),
                (
                    "ssh_known_hosts_file",
                    self.ssh_known_hosts_file.as_ref().map(|v| v.span()),
                ),
            ] {
                if let Some(span) = span {
                    checker.error(
                        span,
                        format!("{what}: {key} is set, but no location is reached over SSH (user@host:/path)"),
                        format!("remove {key}, or write the remote location as user@host:/path/"),
                    );
                    ok = false;
                }
            }
        }
        if ok && mode == "rsync" {
            let remote: Vec<&String> = locations
                .iter()
                .filter(|(_, l)| matches!(l, Location::Rsync(e) if e.is_remote()))
                .map(|(r, _)| r)
                .collect();
            if remote.len() > 1 {
                checker.error(
                    table.clone(),
                    format!(
                        "{what}: the locations of {} are all remote; rsync copies between a local folder and a remote one, never between two remote hosts",
                        remote.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" and ")
                    ),
                    "run the controller (or `switchyard media sync` from cron) on a host that has one region's media as a local folder (or a mount), and name that folder as its location".into(),
                );
                ok = false;
            }
        }
        let (limits, lag_interval_ms) = (limits?, lag_interval_ms?);
        ok.then(|| MediaSync {
            name: step.to_string(),
            locations,
            delete: self.delete,
            delete_fraction_max,
            on_failover,
            lag_interval_ms,
            limits,
            rsync: rsync_options,
        })
    }
}

/// `s3://bucket/prefix/` as (bucket, prefix ending in `/` or empty).
pub fn parse_s3_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !valid_bucket || prefix.starts_with('/') {
        return None;
    }
    let prefix = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    Some((bucket.to_string(), prefix))
}

impl MediaSync {
    pub const KIND: &'static str = KIND;

    /// The regions with a location.
    pub fn regions(&self) -> impl Iterator<Item = &String> {
        self.locations.keys()
    }

    fn pair(&self, from: &str, to: &str) -> Result<(&Location, &Location), Failure> {
        let source = self.locations.get(from).ok_or_else(|| {
            Failure::Refused(format!(
                "media_sync '{}' has no location for region '{from}'",
                self.name
            ))
        })?;
        let target = self
            .locations
            .get(to)
            .ok_or_else(|| Failure::Refused(format!("media_sync '{}' has no location for region '{to}'", self.name)))?;
        Ok((source, target))
    }

    /// What `to` lacks of `from`'s media.
    pub async fn lag(&self, from: &str, to: &str) -> Result<Lag, Failure> {
        let (source, target) = self.pair(from, to)?;
        let timeout = std::time::Duration::from_millis(self.limits.run_timeout_ms);
        let work = async {
            match (source, target) {
                (Location::Rsync(source), Location::Rsync(target)) => {
                    rsync::measure(source, target, self.delete, &self.rsync, &self.limits, 0)
                        .await
                        .map(|m| m.lag)
                }
                #[cfg(feature = "aws")]
                (Location::S3 { .. }, Location::S3 { .. }) => s3::lag(source, target, &self.limits).await,
                _ => Err(Failure::Refused("locations of different modes".into())),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Retryable(format!(
                "measuring the media lag {from} -> {to} took longer than run_timeout_ms = {}",
                self.limits.run_timeout_ms
            ))),
        }
    }

    /// Copies what `to` lacks of `from`'s media, within the limits, and verifies it: `from`
    /// is the active region, whose copy is the truth (rsync without `--update`: a file newer
    /// on the receiver but different, a media restore that kept old times, is replaced; S3
    /// likewise replaces an object the receiver wrote itself after the source's version).
    pub async fn sync(&self, from: &str, to: &str) -> Result<SyncReport, Failure> {
        self.sync_as(from, to, false).await
    }

    /// [`Self::sync`]; `keep_newer`: rsync `--update`, and S3 keeps the receiver's own newer
    /// objects (the runbook step's copy into the region taking over, which may already hold
    /// newer uploads of its own).
    async fn sync_as(&self, from: &str, to: &str, keep_newer: bool) -> Result<SyncReport, Failure> {
        let (source, target) = self.pair(from, to)?;
        let options = rsync::Options {
            keep_newer,
            ..self.rsync.clone()
        };
        let timeout = std::time::Duration::from_millis(self.limits.run_timeout_ms);
        let work = async {
            match (source, target) {
                (Location::Rsync(source), Location::Rsync(target)) => {
                    let delete = self.delete.then_some(self.delete_fraction_max);
                    rsync::sync(source, target, delete, &options, &self.limits).await
                }
                #[cfg(feature = "aws")]
                (Location::S3 { .. }, Location::S3 { .. }) => {
                    let delete = self.delete.then_some(self.delete_fraction_max);
                    s3::sync(source, target, delete, keep_newer, &self.limits).await
                }
                _ => Err(Failure::Refused("locations of different modes".into())),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Retryable(format!(
                "the media copy {from} -> {to} took longer than run_timeout_ms = {}; what was copied stays, {}",
                self.limits.run_timeout_ms,
                match source {
                    Location::Rsync(_) => format!(
                        "and the file cut off is kept in {} on the receiver, where the next run resumes it",
                        rsync::PARTIAL_DIR
                    ),
                    Location::S3 { .. } =>
                        "the next run copies the rest (an object cut off is copied again whole)".to_string(),
                }
            ))),
        }
    }

    /// The runbook step: copies from the region that was active to the new active one.
    pub async fn run(&self, order: &Order) -> Outcome {
        let Some(from) = order.from.as_deref() else {
            return Ok("no region was active before; nothing to copy".into());
        };
        if from == order.to {
            return Ok(format!("{from} stays active; nothing to copy"));
        }
        // Like `rds::planned`: only a switchover or a failback is known to be planned. A retry
        // or a roll-forward does not say what it retries (often a failover whose later step
        // failed, the old region still down), so on_failover applies to it too; otherwise a
        // best-effort copy would turn strict on the retry and hold the failover forever.
        let failover = !matches!(order.kind.as_str(), "switchover" | "failback" | "initial");
        if failover && self.on_failover == OnFailover::Skip {
            return Ok(format!(
                "not copied on a failover (on_failover = \"skip\"); {from}'s media reach {} when it returns",
                order.to
            ));
        }
        match self.sync_as(from, &order.to, true).await {
            Ok(report) => Ok(report.describe(from, &order.to)),
            Err(failure) if failover && self.on_failover == OnFailover::BestEffort => Ok(format!(
                "NOT copied {from} -> {} (best effort on a failover; the old region is likely unreachable): {failure}",
                order.to
            )),
            Err(failure) => Err(failure),
        }
    }
}

#[cfg(test)]
mod tests;
