//! The `[store]` section of a deployment's TOML file: what `switchyard store --config FILE`
//! reads. Every key is optional; a flag on the command line (or its environment variable)
//! overrides the file. Other sections belong to other components and are ignored. Relative paths
//! are relative to the file's directory. Every error names the key, its line and the fix.
//!
//! ```toml
//! [store]
//! region = "us-east-1"
//! listen = "10.0.0.5:8000"
//! data_dir = "/var/lib/switchyard"
//! backup_dir = "/var/backups/switchyard"  # on-demand backups (default: DATA_DIR/backups)
//! credentials = "credentials"            # ACCESS_KEY_ID SECRET lines
//! tls_cert = "server.pem"                 # with tls_key: HTTPS (reloaded on SIGHUP)
//! tls_key = "server.key"
//! peer_ca = "regions-ca.pem"              # verifies https:// peers (default: public roots)
//! peer_client_ca = "regions-ca.pem"       # mutual TLS: replication needs a client certificate it signed
//! peer_client_cert = "region-client.pem"  # with peer_client_key: presented to https:// peers
//! peer_client_key = "region-client.key"
//! connections_max = 1024                  # listener limits, applied before authentication
//! connections_per_client_max = 256
//! header_read_timeout_ms = 10000
//! body_read_timeout_ms = 60000
//! idle_timeout_ms = 60000
//! buffered_body_bytes_max = "32MiB"
//! replication_key_file = "replication.key"
//! replication_backlog_bytes_max = "1GiB"  # log kept for a peer that is behind
//! clock_offset_alarm_ms = 500             # a peer's clock further off raises an alarm
//! clock_offset_max_ms = 1000              # local writes never stamped further ahead
//! disk_free_bytes_min = "2GiB"            # below this, new writes are refused (deletes go on)
//! disk_reserve_bytes = "64MiB"            # preallocated, released below the watermark
//! cache_bytes = "256MiB"                  # the page cache in memory (default 1GiB)
//! write_ahead_log = true                  # commit through store.wal (default false)
//! stream_retention_ms = 86400000          # DynamoDB Streams: records kept (default 24 h)
//! stream_shard_age_ms = 14400000          # a shard closes after this long (default 4 h)...
//! stream_shard_records_max = 100000       # ...or this many records
//! pitr_undo_bytes_max = "256MiB"          # point-in-time recovery: undo log kept per table
//! pitr_restorable_lag_ms = 1000           # LatestRestorableDateTime is this long before now
//!
//! [store.peers]                           # the other regions' stores, for global tables
//! eu-west-1 = "http://10.1.0.5:8000"
//! ap-south-1 = "http://10.2.0.5:8000"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::global::Peer;

/// Most peers one store replicates to.
pub const PEERS_MAX: usize = 16;

/// The `[store]` section, validated. `None` means "not in the file".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreFileConfig {
    pub region: Option<String>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub backup_dir: Option<PathBuf>,
    pub credentials: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub peer_ca: Option<PathBuf>,
    pub peer_client_ca: Option<PathBuf>,
    pub peer_client_cert: Option<PathBuf>,
    pub peer_client_key: Option<PathBuf>,
    pub connections_max: Option<u64>,
    pub connections_per_client_max: Option<u64>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub buffered_body_bytes_max: Option<u64>,
    pub replication_key_file: Option<PathBuf>,
    pub replication_backlog_bytes_max: Option<u64>,
    pub clock_offset_alarm_ms: Option<u64>,
    pub clock_offset_max_ms: Option<u64>,
    pub disk_free_bytes_min: Option<u64>,
    pub disk_reserve_bytes: Option<u64>,
    pub cache_bytes: Option<u64>,
    pub write_ahead_log: Option<bool>,
    /// `stream_retention_ms`, `stream_shard_age_ms`, `stream_shard_records_max`.
    pub stream_limits: crate::streams::StreamLimitKeys,
    /// `pitr_undo_bytes_max`, `pitr_restorable_lag_ms`.
    pub pitr_limits: crate::engine::PitrLimitKeys,
    pub peers: Vec<Peer>,
}

/// Bounds of `clock_offset_alarm_ms` and `clock_offset_max_ms`: at least this...
pub const CLOCK_OFFSET_MS_MIN: u64 = 10;
/// ...and at most the signing window (a larger offset splits the regions anyway).
pub const CLOCK_OFFSET_MS_MAX: u64 = crate::global::REQUEST_SKEW_MS_MAX;

/// The smallest replication backlog bound accepted.
pub const BACKLOG_BYTES_MIN: u64 = 4096;

/// Parses a byte size: a whole number, optionally with a binary unit (`KiB`, `MiB`, `GiB`,
/// `TiB`), like `512MiB`; at least [`BACKLOG_BYTES_MIN`].
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bytes = parse_byte_size(text)?;
    if bytes < BACKLOG_BYTES_MIN {
        return Err(format!(
            "'{text}' is below the smallest bound, {BACKLOG_BYTES_MIN} bytes"
        ));
    }
    Ok(bytes)
}

/// The disk watermark: a byte size like [`parse_bytes`]; 0 turns the watermark off.
pub fn parse_disk_free_bytes_min(text: &str) -> Result<u64, String> {
    parse_byte_size(text)
}

/// The smallest page cache accepted: a few pages of every B-tree a write touches.
pub const CACHE_BYTES_MIN: u64 = 4 * 1024 * 1024;
/// The page cache when nothing sets it (redb's default).
pub const CACHE_BYTES_DEFAULT: u64 = 1024 * 1024 * 1024;

/// The page cache's size: a byte size of at least [`CACHE_BYTES_MIN`].
pub fn parse_cache_bytes(text: &str) -> Result<u64, String> {
    let bytes = parse_byte_size(text)?;
    if bytes < CACHE_BYTES_MIN {
        return Err(format!(
            "'{text}' is below the smallest page cache, {CACHE_BYTES_MIN} bytes (4MiB); a small machine still wants tens of MiB"
        ));
    }
    if usize::try_from(bytes).is_err() {
        return Err(format!("'{text}' is more memory than this machine can address"));
    }
    Ok(bytes)
}

/// The reserve file's size: a byte size up to [`crate::disk::DISK_RESERVE_BYTES_MAX`]; 0 keeps
/// no reserve.
pub fn parse_disk_reserve_bytes(text: &str) -> Result<u64, String> {
    let bytes = parse_byte_size(text)?;
    if bytes > crate::disk::DISK_RESERVE_BYTES_MAX {
        return Err(format!(
            "'{text}' is more than the largest reserve, {} bytes; a few tens of MiB let deletes commit",
            crate::disk::DISK_RESERVE_BYTES_MAX
        ));
    }
    Ok(bytes)
}

/// A whole number of bytes, optionally with a binary unit, without bounds.
fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "'{text}' has unit '{other}'; write bytes as a number with B, KiB, MiB, GiB or TiB, like 512MiB"
            ));
        }
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("'{text}' is not a byte size; write it like 512MiB or 1073741824"))?;
    Ok(bytes)
}

#[derive(Debug, thiserror::Error)]
pub enum StoreConfigError {
    #[error("read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Deserialize)]
struct Document {
    store: Option<RawStore>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    region: Option<Spanned<String>>,
    listen: Option<Spanned<String>>,
    data_dir: Option<Spanned<String>>,
    backup_dir: Option<Spanned<String>>,
    credentials: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    peer_ca: Option<Spanned<String>>,
    peer_client_ca: Option<Spanned<String>>,
    peer_client_cert: Option<Spanned<String>>,
    peer_client_key: Option<Spanned<String>>,
    connections_max: Option<Spanned<i64>>,
    connections_per_client_max: Option<Spanned<i64>>,
    header_read_timeout_ms: Option<Spanned<i64>>,
    body_read_timeout_ms: Option<Spanned<i64>>,
    idle_timeout_ms: Option<Spanned<i64>>,
    buffered_body_bytes_max: Option<Spanned<toml::Value>>,
    replication_key_file: Option<Spanned<String>>,
    replication_backlog_bytes_max: Option<Spanned<toml::Value>>,
    clock_offset_alarm_ms: Option<Spanned<i64>>,
    clock_offset_max_ms: Option<Spanned<i64>>,
    disk_free_bytes_min: Option<Spanned<toml::Value>>,
    disk_reserve_bytes: Option<Spanned<toml::Value>>,
    cache_bytes: Option<Spanned<toml::Value>>,
    write_ahead_log: Option<Spanned<bool>>,
    stream_retention_ms: Option<Spanned<i64>>,
    stream_shard_age_ms: Option<Spanned<i64>>,
    stream_shard_records_max: Option<Spanned<i64>>,
    pitr_undo_bytes_max: Option<Spanned<toml::Value>>,
    pitr_restorable_lag_ms: Option<Spanned<i64>>,
    #[serde(default)]
    peers: BTreeMap<String, Spanned<String>>,
}

/// Reads the `[store]` section of the file at `path` (a file without one gives the defaults).
pub fn load(path: &Path) -> Result<StoreFileConfig, StoreConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| StoreConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|message| StoreConfigError::Invalid {
        path: path.display().to_string(),
        message,
    })
}

/// Parses the `[store]` section of a whole deployment file; relative paths join `base`.
pub fn parse(text: &str, base: &Path) -> Result<StoreFileConfig, String> {
    let document: Document = toml::from_str(text).map_err(|e| e.to_string())?;
    let Some(raw) = document.store else {
        return Ok(StoreFileConfig::default());
    };
    let path = |value: &Option<Spanned<String>>, key: &str| -> Result<Option<PathBuf>, String> {
        value
            .as_ref()
            .map(|v| {
                if v.get_ref().trim().is_empty() {
                    return Err(at(text, v.span(), format!("{key} is empty; give a path")));
                }
                Ok(base.join(v.get_ref()))
            })
            .transpose()
    };
    // Every mistake is collected and all are named at once, each with its line and column
    // (a value a check refuses counts as unset meanwhile).
    let mut problems: Vec<String> = Vec::new();
    macro_rules! check {
        ($result:expr) => {
            match $result {
                Ok(value) => value,
                Err(problem) => {
                    problems.push(problem);
                    Default::default()
                }
            }
        };
    }
    let region = match &raw.region {
        Some(value) => match crate::global::check_region_name(value.get_ref()) {
            Ok(()) => Some(value.get_ref().clone()),
            Err(message) => {
                problems.push(at(text, value.span(), message));
                None
            }
        },
        None => None,
    };
    let listen = check!(
        raw.listen
            .as_ref()
            .map(|value| {
                value.get_ref().parse::<SocketAddr>().map_err(|_| {
                    at(
                        text,
                        value.span(),
                        format!(
                            "listen = \"{}\" is not IP:PORT; write it like \"127.0.0.1:8000\" (names are not resolved)",
                            value.get_ref()
                        ),
                    )
                })
            })
            .transpose()
    );
    if raw.peers.len() > PEERS_MAX {
        problems.push(format!(
            "[store.peers] lists {} regions; a store replicates to at most {PEERS_MAX}",
            raw.peers.len()
        ));
    }
    let mut peers = Vec::with_capacity(raw.peers.len());
    for (peer_region, url) in &raw.peers {
        let peer = match Peer::parse(&format!("{peer_region}={}", url.get_ref())) {
            Ok(peer) => peer,
            Err(message) => {
                problems.push(at(text, url.span(), format!("[store.peers] {peer_region}: {message}")));
                continue;
            }
        };
        if region.as_deref() == Some(peer.region.as_str()) {
            problems.push(at(
                text,
                url.span(),
                format!("[store.peers] {peer_region} is this store's own region; list the other regions only"),
            ));
            continue;
        }
        peers.push(peer);
    }
    let clock_ms = |value: &Option<Spanned<i64>>, key: &str| -> Result<Option<u64>, String> {
        value
            .as_ref()
            .map(|v| {
                u64::try_from(*v.get_ref())
                    .ok()
                    .filter(|ms| (CLOCK_OFFSET_MS_MIN..=CLOCK_OFFSET_MS_MAX).contains(ms))
                    .ok_or_else(|| {
                        at(
                            text,
                            v.span(),
                            format!(
                                "{key} = {} is out of range; give milliseconds from {CLOCK_OFFSET_MS_MIN} to {CLOCK_OFFSET_MS_MAX}",
                                v.get_ref()
                            ),
                        )
                    })
            })
            .transpose()
    };
    let bytes = |value: &Option<Spanned<toml::Value>>,
                 key: &str,
                 parse: fn(&str) -> Result<u64, String>|
     -> Result<Option<u64>, String> {
        value
            .as_ref()
            .map(|value| {
                let given = match value.get_ref() {
                    toml::Value::Integer(n) => n.to_string(),
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                parse(&given).map_err(|message| at(text, value.span(), format!("{key}: {message}")))
            })
            .transpose()
    };
    let replication_backlog_bytes_max = check!(bytes(
        &raw.replication_backlog_bytes_max,
        "replication_backlog_bytes_max",
        parse_bytes,
    ));
    if let (Some(given), None) | (None, Some(given)) = (&raw.tls_cert, &raw.tls_key) {
        problems.push(at(
            text,
            given.span(),
            "tls_cert and tls_key go together; give both (the certificate chain and its key) or neither".into(),
        ));
    }
    if let (Some(given), None) | (None, Some(given)) = (&raw.peer_client_cert, &raw.peer_client_key) {
        problems.push(at(
            text,
            given.span(),
            "peer_client_cert and peer_client_key go together; give both (the client certificate and its key) or neither".into(),
        ));
    }
    if let (Some(given), None) = (&raw.peer_client_ca, &raw.tls_cert) {
        problems.push(at(
            text,
            given.span(),
            "peer_client_ca checks the certificates peers present over TLS, but this store serves plain HTTP; add tls_cert and tls_key".into(),
        ));
    }
    let positive = |value: &Option<Spanned<i64>>, key: &str| -> Result<Option<u64>, String> {
        value
            .as_ref()
            .map(|v| {
                u64::try_from(*v.get_ref()).ok().filter(|n| *n > 0).ok_or_else(|| {
                    at(
                        text,
                        v.span(),
                        format!("{key} = {} must be a positive whole number", v.get_ref()),
                    )
                })
            })
            .transpose()
    };
    let config = StoreFileConfig {
        connections_max: check!(positive(&raw.connections_max, "connections_max")),
        connections_per_client_max: check!(positive(&raw.connections_per_client_max, "connections_per_client_max")),
        header_read_timeout_ms: check!(positive(&raw.header_read_timeout_ms, "header_read_timeout_ms")),
        body_read_timeout_ms: check!(positive(&raw.body_read_timeout_ms, "body_read_timeout_ms")),
        idle_timeout_ms: check!(positive(&raw.idle_timeout_ms, "idle_timeout_ms")),
        buffered_body_bytes_max: check!(bytes(
            &raw.buffered_body_bytes_max,
            "buffered_body_bytes_max",
            parse_bytes
        )),
        peer_client_ca: check!(path(&raw.peer_client_ca, "peer_client_ca")),
        peer_client_cert: check!(path(&raw.peer_client_cert, "peer_client_cert")),
        peer_client_key: check!(path(&raw.peer_client_key, "peer_client_key")),
        region,
        listen,
        replication_backlog_bytes_max,
        clock_offset_alarm_ms: check!(clock_ms(&raw.clock_offset_alarm_ms, "clock_offset_alarm_ms")),
        clock_offset_max_ms: check!(clock_ms(&raw.clock_offset_max_ms, "clock_offset_max_ms")),
        disk_free_bytes_min: check!(bytes(
            &raw.disk_free_bytes_min,
            "disk_free_bytes_min",
            parse_disk_free_bytes_min,
        )),
        disk_reserve_bytes: check!(bytes(
            &raw.disk_reserve_bytes,
            "disk_reserve_bytes",
            parse_disk_reserve_bytes
        )),
        cache_bytes: check!(bytes(&raw.cache_bytes, "cache_bytes", parse_cache_bytes)),
        write_ahead_log: raw.write_ahead_log.as_ref().map(|value| *value.get_ref()),
        data_dir: check!(path(&raw.data_dir, "data_dir")),
        backup_dir: check!(path(&raw.backup_dir, "backup_dir")),
        credentials: check!(path(&raw.credentials, "credentials")),
        tls_cert: check!(path(&raw.tls_cert, "tls_cert")),
        tls_key: check!(path(&raw.tls_key, "tls_key")),
        peer_ca: check!(path(&raw.peer_ca, "peer_ca")),
        replication_key_file: check!(path(&raw.replication_key_file, "replication_key_file")),
        stream_limits: crate::streams::StreamLimitKeys {
            retention_ms: check!(positive(&raw.stream_retention_ms, "stream_retention_ms")),
            shard_age_ms: check!(positive(&raw.stream_shard_age_ms, "stream_shard_age_ms")),
            shard_records_max: check!(positive(&raw.stream_shard_records_max, "stream_shard_records_max")),
        },
        pitr_limits: crate::engine::PitrLimitKeys {
            undo_bytes_max: check!(bytes(&raw.pitr_undo_bytes_max, "pitr_undo_bytes_max", parse_bytes)),
            restorable_lag_ms: check!(positive(&raw.pitr_restorable_lag_ms, "pitr_restorable_lag_ms")),
        },
        peers,
    };
    if problems.is_empty() {
        return Ok(config);
    }
    // In the file's order (each names its line; one about the whole file comes last).
    problems.sort_by_key(|problem| {
        problem
            .strip_prefix("line ")
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|line| line.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    });
    Err(problems.join("\n"))
}

/// A positive whole number from the variable `name` of `lookup` (the environment in the
/// binary), `None` when unset; zero or text is refused naming the variable and the fix.
pub(crate) fn positive_from(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<u64>, String> {
    match lookup(name) {
        None => Ok(None),
        Some(text) => match text.trim().parse::<u64>() {
            Ok(0) | Err(_) => Err(format!(
                "{name}={text:?} is not a positive whole number; set it to one (or unset it for the default)"
            )),
            Ok(value) => Ok(Some(value)),
        },
    }
}

/// Replaces `value` with `over` when there is one (a file's key, a variable).
pub(crate) fn overlay(value: &mut u64, over: Option<u64>) {
    if let Some(over) = over {
        *value = over;
    }
}

/// `line N, column M: message` for a value's span.
fn at(text: &str, span: Range<usize>, message: String) -> String {
    format!("{}: {message}", common::text::describe(text, span.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mistake_is_named_at_once_in_the_files_order() {
        let text = "[store]\nregion = \"us-east-1\"\ncache_bytes = \"lots\"\nstream_retention_ms = -5\nlisten = \"nope\"\ntls_cert = \"a.pem\"\n";
        let error = parse(text, Path::new(".")).expect_err("four mistakes");
        let lines: Vec<&str> = error.lines().collect();
        assert_eq!(lines.len(), 4, "{error}");
        for (line, (number, key)) in lines.iter().zip([
            (3, "cache_bytes"),
            (4, "stream_retention_ms"),
            (5, "listen"),
            (6, "tls_cert"),
        ]) {
            assert!(
                line.starts_with(&format!("line {number},")) && line.contains(key),
                "{error}"
            );
        }
    }

    const FILE: &str = r#"[proxy]
listen = "127.0.0.1:9000"

[store]
region = "us-east-1"
listen = "127.0.0.1:8000"
data_dir = "data"
replication_key_file = "/etc/switchyard/replication.key"
replication_backlog_bytes_max = "512MiB"

[store.peers]
eu-west-1 = "http://127.0.0.1:8001/"
ap-south-1 = "https://store.ap-south-1.example:8000"
"#;

    #[test]
    fn stream_limits_are_read_and_checked_with_their_line() {
        let config = parse(
            "[store]\nstream_retention_ms = 3000\nstream_shard_age_ms = 60000\nstream_shard_records_max = 3\n",
            Path::new("/srv"),
        )
        .expect("valid");
        let keys = config.stream_limits;
        assert_eq!(
            (keys.retention_ms, keys.shard_age_ms, keys.shard_records_max),
            (Some(3000), Some(60000), Some(3))
        );
        let limits = crate::streams::StreamLimits::from_file_and_lookup(&keys, |name| {
            (name == crate::streams::ENV_SHARD_RECORDS_MAX).then(|| "7".to_string())
        })
        .expect("limits");
        assert_eq!(
            (limits.retention_ms, limits.shard_records_max),
            (3000, 7),
            "the variable wins"
        );
        let error = parse(
            "[store]\nregion = \"us-east-1\"\nstream_shard_records_max = 0\n",
            Path::new("/srv"),
        )
        .expect_err("zero");
        assert!(
            error.contains("line 3") && error.contains("stream_shard_records_max = 0 must be a positive whole number"),
            "{error}"
        );
        let error = parse("[store]\nstream_retention_ms = \"1d\"\n", Path::new("/srv")).expect_err("a string");
        assert!(error.contains("stream_retention_ms"), "{error}");
    }

    #[test]
    fn pitr_limits_are_read_and_the_environment_wins() {
        let config = parse(
            "[store]\npitr_undo_bytes_max = \"1MiB\"\npitr_restorable_lag_ms = 5\n",
            Path::new("/srv"),
        )
        .expect("valid");
        let keys = config.pitr_limits;
        assert_eq!((keys.undo_bytes_max, keys.restorable_lag_ms), (Some(1 << 20), Some(5)));
        let limits = crate::engine::PitrLimits::from_file_and_lookup(&keys, |name| {
            (name == crate::engine::ENV_PITR_RESTORABLE_LAG_MS).then(|| "7".to_string())
        })
        .expect("limits");
        assert_eq!((limits.undo_bytes_max, limits.restorable_lag_ms), (1 << 20, 7));
        let error = parse("[store]\npitr_restorable_lag_ms = 0\n", Path::new("/srv")).expect_err("zero");
        assert!(
            error.contains("line 2") && error.contains("pitr_restorable_lag_ms"),
            "{error}"
        );
        let error = parse("[store]\npitr_undo_bytes_max = \"lots\"\n", Path::new("/srv")).expect_err("words");
        assert!(error.contains("pitr_undo_bytes_max"), "{error}");
    }

    #[test]
    fn tls_files_come_as_a_pair_relative_to_the_file() {
        let both = parse(
            "[store]\ntls_cert = \"tls/server.pem\"\ntls_key = \"tls/server.key\"\n",
            Path::new("/srv/sy"),
        )
        .expect("valid");
        assert_eq!(both.tls_cert, Some(PathBuf::from("/srv/sy/tls/server.pem")));
        assert_eq!(both.tls_key, Some(PathBuf::from("/srv/sy/tls/server.key")));
        let alone = parse("[store]\ntls_cert = \"server.pem\"\n", Path::new("/srv")).expect_err("cert without key");
        assert!(alone.contains("line 2") && alone.contains("tls_key"), "{alone}");
    }

    #[test]
    fn mutual_tls_and_listener_limits_are_read_and_checked() {
        let text = "[store]\ntls_cert = \"s.pem\"\ntls_key = \"s.key\"\npeer_client_ca = \"ca.pem\"\n\
                    peer_client_cert = \"c.pem\"\npeer_client_key = \"c.key\"\nconnections_max = 64\n\
                    connections_per_client_max = 8\nheader_read_timeout_ms = 2000\nbody_read_timeout_ms = 3000\n\
                    idle_timeout_ms = 4000\nbuffered_body_bytes_max = \"8MiB\"\n";
        let config = parse(text, Path::new("/srv")).expect("valid");
        assert_eq!(config.peer_client_ca, Some(PathBuf::from("/srv/ca.pem")));
        assert_eq!(config.peer_client_cert, Some(PathBuf::from("/srv/c.pem")));
        assert_eq!(config.peer_client_key, Some(PathBuf::from("/srv/c.key")));
        assert_eq!(
            (
                config.connections_max,
                config.connections_per_client_max,
                config.header_read_timeout_ms,
                config.body_read_timeout_ms,
                config.idle_timeout_ms,
                config.buffered_body_bytes_max
            ),
            (Some(64), Some(8), Some(2000), Some(3000), Some(4000), Some(8 << 20))
        );
        let plain = parse("[store]\npeer_client_ca = \"ca.pem\"\n", Path::new("/srv")).expect_err("no TLS");
        assert!(plain.contains("line 2") && plain.contains("tls_cert"), "{plain}");
        let half = parse("[store]\npeer_client_key = \"c.key\"\n", Path::new("/srv")).expect_err("key alone");
        assert!(half.contains("peer_client_cert"), "{half}");
        let zero = parse("[store]\n\nconnections_max = 0\n", Path::new("/srv")).expect_err("zero");
        assert!(zero.contains("line 3") && zero.contains("positive"), "{zero}");
    }

    #[test]
    fn reads_the_store_section_and_ignores_the_others() {
        let config = parse(FILE, Path::new("/srv/sy")).expect("valid");
        assert_eq!(config.region.as_deref(), Some("us-east-1"));
        assert_eq!(config.listen, Some("127.0.0.1:8000".parse().expect("address")));
        assert_eq!(
            config.data_dir,
            Some(PathBuf::from("/srv/sy/data")),
            "relative to the file"
        );
        assert_eq!(
            config.replication_key_file,
            Some(PathBuf::from("/etc/switchyard/replication.key"))
        );
        assert_eq!(config.credentials, None);
        assert_eq!(config.replication_backlog_bytes_max, Some(512 << 20));
        let peers: Vec<(&str, &str)> = config
            .peers
            .iter()
            .map(|p| (p.region.as_str(), p.url.as_str()))
            .collect();
        assert_eq!(
            peers,
            [
                ("ap-south-1", "https://store.ap-south-1.example:8000"),
                ("eu-west-1", "http://127.0.0.1:8001")
            ]
        );
        assert_eq!(
            parse("[proxy]\nx = 1\n", Path::new(".")),
            Ok(StoreFileConfig::default())
        );
    }

    #[test]
    fn clock_offsets_are_bounded_milliseconds() {
        let config = parse(
            "[store]\nclock_offset_alarm_ms = 250\nclock_offset_max_ms = 2000\n",
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(
            (config.clock_offset_alarm_ms, config.clock_offset_max_ms),
            (Some(250), Some(2000))
        );
        let error =
            parse("[store]\n\nclock_offset_max_ms = 9223372036854775807\n", Path::new(".")).expect_err("absurd");
        assert!(error.starts_with("line 3, column 23"), "{error}");
        assert!(error.contains("from 10 to 300000"), "{error}");
        let error = parse("[store]\nclock_offset_alarm_ms = -1\n", Path::new(".")).expect_err("negative");
        assert!(error.contains("clock_offset_alarm_ms = -1"), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn byte_sizes_never_panic(text in ".{0,24}") {
            let _ = parse_bytes(&text);
        }
    }

    #[test]
    fn byte_sizes_take_binary_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert!(parse_bytes("1GB").is_err());
        assert!(parse_bytes("-5").is_err());
        assert!(parse_bytes("99999999999TiB").is_err(), "overflow is an error");
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn mistakes_name_the_key_its_line_and_the_fix() {
        let error = parse(
            "[store]\nregion = \"us-east-1\"\nlisten = \"localhost:80\"\n",
            Path::new("."),
        )
        .expect_err("names are not addresses");
        assert!(error.starts_with("line 3, column 10"), "{error}");
        assert!(error.contains("127.0.0.1:8000"), "{error}");
        let error = parse("[store]\nregoin = \"us-east-1\"\n", Path::new(".")).expect_err("typo");
        assert!(error.contains("line 2") && error.contains("regoin"), "{error}");
        let error = parse(
            "[store]\nregion = \"us-east-1\"\n[store.peers]\nus-east-1 = \"http://x:1\"\n",
            Path::new("."),
        )
        .expect_err("own region");
        assert!(error.starts_with("line 4") && error.contains("own region"), "{error}");
        let error = parse("[store.peers]\neu-west-1 = \"ftp://x\"\n", Path::new(".")).expect_err("scheme");
        assert!(error.starts_with("line 2") && error.contains("http://"), "{error}");
        let error = parse("[store]\nreplication_backlog_bytes_max = \"1 GB\"\n", Path::new(".")).expect_err("unit");
        assert!(error.starts_with("line 2") && error.contains("GiB"), "{error}");
        let error = parse("[store]\nreplication_backlog_bytes_max = 10\n", Path::new(".")).expect_err("small");
        assert!(error.contains("smallest"), "{error}");
        assert_eq!(
            parse("[store]\nreplication_backlog_bytes_max = 65536\n", Path::new("."))
                .map(|c| c.replication_backlog_bytes_max),
            Ok(Some(65536))
        );
        let error = parse("[store]\n\ndisk_free_bytes_min = \"1 GB\"\n", Path::new(".")).expect_err("unit");
        assert!(
            error.starts_with("line 3") && error.contains("disk_free_bytes_min"),
            "{error}"
        );
        let error = parse("[store]\ndisk_reserve_bytes = \"1TiB\"\n", Path::new(".")).expect_err("too big");
        assert!(
            error.starts_with("line 2") && error.contains("largest reserve"),
            "{error}"
        );
        let disk = parse(
            "[store]\ndisk_free_bytes_min = 0\ndisk_reserve_bytes = \"8MiB\"\n",
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(
            (disk.disk_free_bytes_min, disk.disk_reserve_bytes),
            (Some(0), Some(8 << 20)),
            "0 turns the watermark off"
        );
        let error = parse("[store]\nregion = \"us east\"\n", Path::new(".")).expect_err("region");
        assert!(error.starts_with("line 2") && error.contains("eu-west-1"), "{error}");
    }

    #[test]
    fn the_write_ahead_log_is_a_boolean_off_by_default() {
        let on = parse("[store]\nwrite_ahead_log = true\n", Path::new(".")).expect("valid");
        assert_eq!(on.write_ahead_log, Some(true));
        let unset = parse("[store]\n", Path::new(".")).expect("valid");
        assert_eq!(unset.write_ahead_log, None);
        let error = parse("[store]\n\nwrite_ahead_log = \"yes\"\n", Path::new(".")).expect_err("not a boolean");
        assert!(error.contains("line 3") && error.contains("write_ahead_log"), "{error}");
    }

    #[test]
    fn the_page_cache_is_a_byte_size_of_at_least_4_mib() {
        let cache = parse("[store]\ncache_bytes = \"256MiB\"\n", Path::new(".")).expect("valid");
        assert_eq!(cache.cache_bytes, Some(256 << 20));
        let error = parse("[store]\n\ncache_bytes = \"1MiB\"\n", Path::new(".")).expect_err("too small");
        assert!(
            error.starts_with("line 3") && error.contains("cache_bytes") && error.contains("4MiB"),
            "{error}"
        );
        assert!(parse_cache_bytes("4MiB").is_ok());
        assert!(parse_cache_bytes("lots").is_err());
    }
}
