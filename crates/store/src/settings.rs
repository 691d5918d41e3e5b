//! A store's settings: the command line's flags and environment variables ([`Overrides`]) over
//! the `[store]` section of the config file ([`StoreFileConfig`]) over the defaults, checked,
//! and the replication configuration they give. The binary parses the flags and calls
//! [`Settings::merge`]; every rule of which source wins lives here.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::StoreFileConfig;
use crate::global::{Peer, ReplicationConfig};

/// The region a store serves when neither a flag nor the file names one.
pub const REGION_DEFAULT: &str = "us-east-1";
/// The address a store listens on by default.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8000));
/// The data directory by default (relative to the working directory).
pub const DATA_DIR_DEFAULT: &str = "./data";
/// Bytes a replication key has at least.
pub const REPLICATION_KEY_BYTES_MIN: usize = 16;

/// What the command line (a flag or its environment variable) gives; `None` (empty for
/// `peers`) leaves the file's key or the default.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub region: Option<String>,
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub backup_dir: Option<PathBuf>,
    pub credentials: Option<PathBuf>,
    /// Given, they replace the file's `[store.peers]` (not merged with them).
    pub peers: Vec<Peer>,
    pub replication_key_file: Option<PathBuf>,
    pub replication_backlog_bytes_max: Option<u64>,
    pub clock_offset_alarm_ms: Option<u64>,
    pub clock_offset_max_ms: Option<u64>,
    pub disk_free_bytes_min: Option<u64>,
    pub disk_reserve_bytes: Option<u64>,
    pub cache_bytes: Option<u64>,
    pub write_ahead_log: Option<bool>,
    pub limits: LimitOverrides,
    /// Used only with `tls_key` (both or the file's pair).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub peer_ca: Option<PathBuf>,
    pub peer_client_ca: Option<PathBuf>,
    /// Used only with `peer_client_key` (both or the file's pair).
    pub peer_client_cert: Option<PathBuf>,
    pub peer_client_key: Option<PathBuf>,
}

/// The listener limits the command line gives.
#[derive(Clone, Debug, Default)]
pub struct LimitOverrides {
    pub connections_max: Option<usize>,
    pub connections_per_client_max: Option<usize>,
    pub header_read_timeout_ms: Option<u64>,
    pub body_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub buffered_body_bytes_max: Option<u64>,
}

/// A store's settings, every source applied.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `stream_*` keys of `[store]`; the SWITCHYARD_STREAM_* variables win over them.
    pub stream_limits: crate::streams::StreamLimitKeys,
    /// `pitr_*` keys of `[store]`; the SWITCHYARD_PITR_* variables win over them.
    pub pitr_limits: crate::engine::PitrLimitKeys,
    pub region: String,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub backup_dir: Option<PathBuf>,
    pub credentials: Option<PathBuf>,
    pub peers: Vec<Peer>,
    pub replication_key_file: Option<PathBuf>,
    pub replication_backlog_bytes_max: u64,
    pub clock_offset_alarm_ms: u64,
    pub clock_offset_max_ms: u64,
    pub disk: crate::disk::DiskSettings,
    /// redb's page cache (`cache_bytes`, `--cache-bytes`) [default: 1GiB].
    pub cache_bytes: u64,
    /// Commit through the write-ahead log (`write_ahead_log`, `--write-ahead-log`) [default: off].
    pub write_ahead_log: bool,
    pub limits: common::http::Limits,
    pub tls: Option<common::http::TlsFiles>,
    pub peer_ca: Option<PathBuf>,
    pub peer_client: Option<common::tls_client::ClientIdentity>,
}

/// Why settings were refused; each names the flag (or key) and the fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A listener limit out of its bounds (the message of [`common::http::Limits::check`],
    /// written as the flag).
    #[error("--{0}")]
    Limit(String),
    #[error("{what} is larger than this machine's address space")]
    TooLarge {
        what: &'static str,
        #[source]
        source: std::num::TryFromIntError,
    },
    #[error("--region: {0}")]
    Region(String),
    #[error(
        "peers need a replication key shared by all regions: pass --replication-key-file FILE, set replication_key_file in [store], or set SWITCHYARD_REPLICATION_KEY"
    )]
    NoReplicationKey,
    #[error("read replication key file {path}")]
    ReadReplicationKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the replication key has {bytes} bytes; use at least {REPLICATION_KEY_BYTES_MIN} (e.g. `openssl rand -hex 32`)"
    )]
    ReplicationKeyTooShort { bytes: usize },
    #[error("peer {0} is this store's own region; list the other regions only")]
    PeerIsOwnRegion(String),
    #[error("peer {0} is given twice; give each region once")]
    PeerTwice(String),
    #[error("--peer-ca / --peer-client-cert: {0}")]
    PeerTls(String),
}

impl LimitOverrides {
    /// These over the file's keys over `defaults`, checked.
    fn apply_over(
        &self,
        defaults: common::http::Limits,
        file: &StoreFileConfig,
    ) -> Result<common::http::Limits, SettingsError> {
        let count = |flag: Option<usize>, key: Option<u64>, default: usize| match (flag, key) {
            (Some(n), _) => Ok(n),
            (None, Some(n)) => usize::try_from(n).map_err(|source| SettingsError::TooLarge {
                what: "a connection limit",
                source,
            }),
            (None, None) => Ok(default),
        };
        let limits = common::http::Limits {
            connections_max: count(self.connections_max, file.connections_max, defaults.connections_max)?,
            connections_per_client_max: count(
                self.connections_per_client_max,
                file.connections_per_client_max,
                defaults.connections_per_client_max,
            )?,
            header_read_timeout_ms: self
                .header_read_timeout_ms
                .or(file.header_read_timeout_ms)
                .unwrap_or(defaults.header_read_timeout_ms),
            body_read_timeout_ms: self
                .body_read_timeout_ms
                .or(file.body_read_timeout_ms)
                .unwrap_or(defaults.body_read_timeout_ms),
            idle_timeout_ms: self
                .idle_timeout_ms
                .or(file.idle_timeout_ms)
                .unwrap_or(defaults.idle_timeout_ms),
            buffered_body_bytes_max: match self.buffered_body_bytes_max.or(file.buffered_body_bytes_max) {
                Some(bytes) => usize::try_from(bytes).map_err(|source| SettingsError::TooLarge {
                    what: "buffered_body_bytes_max",
                    source,
                })?,
                None => defaults.buffered_body_bytes_max,
            },
            request_body_bytes_max: defaults.request_body_bytes_max,
        };
        limits
            .check()
            .map_err(|message| SettingsError::Limit(message.replace('_', "-")))?;
        Ok(limits)
    }
}

impl Settings {
    /// `overrides` over `file` over the defaults, checked.
    pub fn merge(file: StoreFileConfig, overrides: Overrides) -> Result<Settings, SettingsError> {
        let limits = overrides.limits.apply_over(crate::server::default_limits(), &file)?;
        let region = overrides
            .region
            .or(file.region)
            .unwrap_or_else(|| REGION_DEFAULT.to_string());
        crate::global::check_region_name(&region).map_err(SettingsError::Region)?;
        Ok(Settings {
            stream_limits: file.stream_limits,
            pitr_limits: file.pitr_limits,
            limits,
            region,
            listen: overrides.listen.or(file.listen).unwrap_or(LISTEN_DEFAULT),
            data_dir: overrides
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DATA_DIR_DEFAULT)),
            backup_dir: overrides.backup_dir.or(file.backup_dir),
            credentials: overrides.credentials.or(file.credentials),
            peers: if overrides.peers.is_empty() {
                file.peers
            } else {
                overrides.peers
            },
            replication_key_file: overrides.replication_key_file.or(file.replication_key_file),
            replication_backlog_bytes_max: overrides
                .replication_backlog_bytes_max
                .or(file.replication_backlog_bytes_max)
                .unwrap_or(crate::global::LOG_BACKLOG_BYTES_DEFAULT),
            clock_offset_alarm_ms: overrides
                .clock_offset_alarm_ms
                .or(file.clock_offset_alarm_ms)
                .unwrap_or(crate::global::CLOCK_OFFSET_ALARM_MS_DEFAULT),
            clock_offset_max_ms: overrides
                .clock_offset_max_ms
                .or(file.clock_offset_max_ms)
                .unwrap_or(crate::global::CLOCK_OFFSET_MAX_MS_DEFAULT),
            disk: crate::disk::DiskSettings {
                free_bytes_min: overrides.disk_free_bytes_min.or(file.disk_free_bytes_min),
                reserve_bytes: overrides
                    .disk_reserve_bytes
                    .or(file.disk_reserve_bytes)
                    .unwrap_or(crate::disk::DISK_RESERVE_BYTES_DEFAULT),
            },
            cache_bytes: overrides
                .cache_bytes
                .or(file.cache_bytes)
                .unwrap_or(crate::config::CACHE_BYTES_DEFAULT),
            write_ahead_log: overrides.write_ahead_log.or(file.write_ahead_log).unwrap_or(false),
            tls: match (overrides.tls_cert, overrides.tls_key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                _ => file.tls_cert.clone().zip(file.tls_key.clone()),
            }
            .map(|(cert, key)| common::http::TlsFiles {
                cert,
                key,
                client_ca: overrides.peer_client_ca.or(file.peer_client_ca.clone()),
            }),
            peer_ca: overrides.peer_ca.or(file.peer_ca),
            peer_client: match (overrides.peer_client_cert, overrides.peer_client_key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                _ => file.peer_client_cert.zip(file.peer_client_key),
            }
            .map(|(cert, key)| common::tls_client::ClientIdentity { cert, key }),
        })
    }

    /// Replication to the peers, `None` without any. The key comes from
    /// `replication_key_file`, else `key_from_environment` (SWITCHYARD_REPLICATION_KEY, which
    /// the caller reads); surrounding whitespace is not part of it.
    pub fn replication(
        &self,
        key_from_environment: Option<String>,
    ) -> Result<Option<ReplicationConfig>, SettingsError> {
        if self.peers.is_empty() {
            return Ok(None);
        }
        let key = match (&self.replication_key_file, key_from_environment) {
            (Some(path), _) => std::fs::read(path).map_err(|source| SettingsError::ReadReplicationKey {
                path: path.display().to_string(),
                source,
            })?,
            (None, Some(key)) => key.into_bytes(),
            (None, None) => return Err(SettingsError::NoReplicationKey),
        };
        let key: Vec<u8> = key.trim_ascii().to_vec();
        if key.len() < REPLICATION_KEY_BYTES_MIN {
            return Err(SettingsError::ReplicationKeyTooShort { bytes: key.len() });
        }
        for (index, peer) in self.peers.iter().enumerate() {
            if peer.region == self.region {
                return Err(SettingsError::PeerIsOwnRegion(peer.region.clone()));
            }
            if self.peers[..index].iter().any(|p| p.region == peer.region) {
                return Err(SettingsError::PeerTwice(peer.region.clone()));
            }
        }
        Ok(Some(ReplicationConfig {
            peers: self.peers.clone(),
            key,
            backlog_bytes_max: self.replication_backlog_bytes_max,
            clock_offset_alarm_ms: self.clock_offset_alarm_ms,
            clock_offset_max_ms: self.clock_offset_max_ms,
            peer_tls: match (&self.peer_ca, &self.peer_client) {
                (None, None) => None,
                (ca, identity) => Some(
                    common::tls_client::client_config_with_identity(ca.as_deref(), identity.as_ref())
                        .map_err(SettingsError::PeerTls)?,
                ),
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> Peer {
        Peer::parse(text).expect("a valid peer")
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_the_defaults() {
        let defaults = Settings::merge(StoreFileConfig::default(), Overrides::default()).expect("defaults");
        assert_eq!(defaults.region, REGION_DEFAULT);
        assert_eq!(defaults.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(defaults.data_dir, PathBuf::from("./data"));
        assert_eq!(defaults.limits, crate::server::default_limits());
        assert!(defaults.tls.is_none() && defaults.peer_client.is_none());

        let file = StoreFileConfig {
            region: Some("eu-west-1".into()),
            data_dir: Some("/file/data".into()),
            idle_timeout_ms: Some(5_000),
            tls_cert: Some("file.pem".into()),
            tls_key: Some("file.key".into()),
            peers: vec![peer("us-east-1=http://10.0.0.1:8000")],
            ..StoreFileConfig::default()
        };
        let overrides = Overrides {
            region: Some("ap-south-1".into()),
            tls_cert: Some("flag.pem".into()),
            peers: vec![peer("eu-west-1=http://10.0.0.2:8000")],
            limits: LimitOverrides {
                header_read_timeout_ms: Some(2_000),
                ..LimitOverrides::default()
            },
            ..Overrides::default()
        };
        let settings = Settings::merge(file, overrides).expect("valid");
        assert_eq!(settings.region, "ap-south-1");
        assert_eq!(settings.data_dir, PathBuf::from("/file/data"));
        assert_eq!(settings.limits.idle_timeout_ms, 5_000);
        assert_eq!(settings.limits.header_read_timeout_ms, 2_000);
        // A certificate flag without its key leaves the file's pair.
        let tls = settings.tls.as_ref().expect("the file's pair");
        assert_eq!(tls.cert, PathBuf::from("file.pem"));
        // Peers on the command line replace the file's.
        assert_eq!(settings.peers.len(), 1);
        assert_eq!(settings.peers[0].region, "eu-west-1");
    }

    #[test]
    fn bad_settings_are_refused_naming_the_flag() {
        let bad_region = Overrides {
            region: Some("eu west".into()),
            ..Overrides::default()
        };
        let error = Settings::merge(StoreFileConfig::default(), bad_region).expect_err("refused");
        assert!(matches!(error, SettingsError::Region(_)), "{error}");
        assert!(error.to_string().starts_with("--region: "), "{error}");

        let zero_timeout = Overrides {
            limits: LimitOverrides {
                idle_timeout_ms: Some(0),
                ..LimitOverrides::default()
            },
            ..Overrides::default()
        };
        let error = Settings::merge(StoreFileConfig::default(), zero_timeout).expect_err("refused");
        assert!(matches!(error, SettingsError::Limit(_)), "{error}");
        assert!(error.to_string().starts_with("--idle-timeout-ms"), "{error}");
    }

    #[test]
    fn replication_needs_a_long_key_and_distinct_other_regions() {
        let with_peers = |peers: &[&str]| {
            let overrides = Overrides {
                region: Some("us-east-1".into()),
                peers: peers.iter().map(|p| peer(p)).collect(),
                ..Overrides::default()
            };
            Settings::merge(StoreFileConfig::default(), overrides).expect("valid")
        };
        let none = with_peers(&[]);
        assert!(none.replication(None).expect("no peers, no key needed").is_none());

        let one = with_peers(&["eu-west-1=http://10.0.0.2:8000"]);
        assert!(matches!(one.replication(None), Err(SettingsError::NoReplicationKey)));
        assert!(matches!(
            one.replication(Some(" short \n".into())),
            Err(SettingsError::ReplicationKeyTooShort { bytes: 5 })
        ));
        let config = one
            .replication(Some("  0123456789abcdef\n".into()))
            .expect("valid")
            .expect("peers");
        assert_eq!(config.key, b"0123456789abcdef");
        assert!(config.peer_tls.is_none());

        let own = with_peers(&["us-east-1=http://10.0.0.2:8000"]);
        assert!(matches!(
            own.replication(Some("0123456789abcdef".into())),
            Err(SettingsError::PeerIsOwnRegion(region)) if region == "us-east-1"
        ));
        let twice = with_peers(&["eu-west-1=http://10.0.0.2:8000", "eu-west-1=http://10.0.0.3:8000"]);
        assert!(matches!(
            twice.replication(Some("0123456789abcdef".into())),
            Err(SettingsError::PeerTwice(region)) if region == "eu-west-1"
        ));
    }
}
