//! The `[fault_proxy]` section of a deployment's TOML file.
//!
//! ```toml
//! [fault_proxy]
//! listen = "127.0.0.1:8474"   # the control API (Toxiproxy's port)
//! seed = 42                   # optional: reproducible jitter, slicing and toxicity draws
//! connections_max = 1024      # per proxy
//! buffer_bytes = 16384        # read buffer per direction of a connection
//! allow_upstream = ["127.0.0.0/8", "10.20.0.0/16"]  # where proxies may relay (default: loopback)
//!
//! [[fault_proxy.proxies]]
//! name = "store-eu"
//! listen = "127.0.0.1:21000"
//! upstream = "127.0.0.1:8001"
//!
//! [[fault_proxy.proxies.toxics]]
//! type = "latency"
//! stream = "downstream"
//! attributes = { latency = 100, jitter = 10 }
//! ```

use serde::Deserialize;

use crate::access::{AllowList, Cidr};
use crate::proxy::{Limits, ProxySpec};

/// Toxiproxy's control port.
pub const API_LISTEN_DEFAULT: &str = "127.0.0.1:8474";
pub const CONNECTIONS_MAX_LIMIT: u64 = 65_536;
pub const BUFFER_BYTES_MIN: u64 = 512;
pub const BUFFER_BYTES_MAX: u64 = 4 << 20;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultProxyConfig {
    /// Where the control API listens.
    #[serde(default = "api_listen_default")]
    pub listen: String,
    /// Seed of the generator behind jitter, slicing and toxicity; unset: from the clock.
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default = "connections_max_default")]
    pub connections_max: ConnectionsMax,
    #[serde(default = "buffer_bytes_default")]
    pub buffer_bytes: BufferBytes,
    /// Networks proxies may relay to; empty: loopback only. Given, it replaces the default.
    #[serde(default)]
    pub allow_upstream: Vec<Cidr>,
    #[serde(default)]
    pub proxies: Vec<ProxyConfig>,
}

impl Default for FaultProxyConfig {
    fn default() -> FaultProxyConfig {
        FaultProxyConfig {
            listen: api_listen_default(),
            seed: None,
            connections_max: connections_max_default(),
            buffer_bytes: buffer_bytes_default(),
            allow_upstream: Vec::new(),
            proxies: Vec::new(),
        }
    }
}

impl FaultProxyConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            connections_max: self.connections_max.0 as usize,
            buffer_bytes: self.buffer_bytes.0 as usize,
        }
    }

    pub fn allow_list(&self) -> AllowList {
        AllowList::new(self.allow_upstream.clone())
    }
}

/// A proxy of the configuration file: what creating one through the API takes.
pub type ProxyConfig = ProxySpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct ConnectionsMax(pub u64);

impl TryFrom<u64> for ConnectionsMax {
    type Error = String;
    fn try_from(value: u64) -> Result<ConnectionsMax, String> {
        if (1..=CONNECTIONS_MAX_LIMIT).contains(&value) {
            Ok(ConnectionsMax(value))
        } else {
            Err(format!(
                "connections_max {value} must be from 1 to {CONNECTIONS_MAX_LIMIT}"
            ))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub struct BufferBytes(pub u64);

impl TryFrom<u64> for BufferBytes {
    type Error = String;
    fn try_from(value: u64) -> Result<BufferBytes, String> {
        if (BUFFER_BYTES_MIN..=BUFFER_BYTES_MAX).contains(&value) {
            Ok(BufferBytes(value))
        } else {
            Err(format!(
                "buffer_bytes {value} must be from {BUFFER_BYTES_MIN} to {BUFFER_BYTES_MAX}"
            ))
        }
    }
}

fn api_listen_default() -> String {
    API_LISTEN_DEFAULT.to_string()
}
fn connections_max_default() -> ConnectionsMax {
    ConnectionsMax(Limits::default().connections_max as u64)
}
fn buffer_bytes_default() -> BufferBytes {
    BufferBytes(Limits::default().buffer_bytes as u64)
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Deserialize)]
struct File {
    /// Other sections belong to other parts of Switchyard.
    #[serde(default)]
    fault_proxy: Option<FaultProxyConfig>,
}

/// Reads the `[fault_proxy]` section of a TOML document; `origin` names it in errors (a path).
/// A document without the section gives the defaults.
pub fn from_toml(text: &str, origin: &str) -> Result<FaultProxyConfig, ConfigError> {
    match toml::from_str::<File>(text) {
        Ok(file) => Ok(file.fault_proxy.unwrap_or_default()),
        Err(error) => {
            let (line, column) = common::text::line_column(text, error.span().map_or(0, |span| span.start));
            Err(ConfigError {
                origin: origin.to_string(),
                line,
                column,
                message: error.message().to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toxic::ToxicKind;

    #[test]
    fn reads_the_documented_example() {
        let text = r#"
[store]
ignored = "belongs to someone else"

[fault_proxy]
listen = "127.0.0.1:9474"
seed = 42

[[fault_proxy.proxies]]
name = "store-eu"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:8001"

[[fault_proxy.proxies.toxics]]
type = "latency"
stream = "downstream"
attributes = { latency = 100, jitter = 10 }
"#;
        let config = from_toml(text, "lab.toml").expect("valid");
        assert_eq!(config.listen, "127.0.0.1:9474");
        assert_eq!(config.seed, Some(42));
        assert_eq!(config.limits(), Limits::default());
        let proxy = &config.proxies[0];
        assert_eq!(proxy.name, "store-eu");
        assert!(proxy.enabled);
        assert_eq!(proxy.toxics[0].name, "latency_downstream");
        assert_eq!(
            proxy.toxics[0].kind,
            ToxicKind::Latency {
                latency_ms: 100,
                jitter_ms: 10
            }
        );
    }

    #[test]
    fn errors_carry_line_and_column() {
        let text = "[fault_proxy]\nlisten = \"127.0.0.1:1\"\n\n[[fault_proxy.proxies]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:2\"\n\n[[fault_proxy.proxies.toxics]]\ntype = \"latency\"\nattributes = { latency = -1 }\n";
        let error = from_toml(text, "lab.toml").expect_err("negative latency");
        let shown = error.to_string();
        assert!(shown.starts_with("lab.toml:"), "{shown}");
        assert!((9..=11).contains(&error.line), "{shown}");
        assert!(shown.contains("-1"), "{shown}");

        let error = from_toml("[fault_proxy]\nbuffer_bytes = 3\n", "x.toml").expect_err("small buffer");
        assert_eq!(error.line, 2, "{error}");
        assert!(error.to_string().contains("buffer_bytes 3"), "{error}");

        let error = from_toml("[fault_proxy]\nlisten_typo = 1\n", "x.toml").expect_err("unknown key");
        assert_eq!((error.line, error.column), (2, 1), "{error}");
    }

    #[test]
    fn allow_upstream_is_read_and_checked() {
        let config = from_toml(
            "[fault_proxy]\nallow_upstream = [\"10.20.0.0/16\", \"::1\"]\n",
            "x.toml",
        )
        .expect("valid");
        let allowed = config.allow_list();
        assert!(allowed.allows("10.20.1.2".parse().expect("ip")));
        assert!(!allowed.allows("127.0.0.1".parse().expect("ip")));
        let error = from_toml("[fault_proxy]\nallow_upstream = [\"10.0.0.0/40\"]\n", "x.toml").expect_err("bad prefix");
        assert_eq!(error.line, 2, "{error}");
        assert!(error.to_string().contains("10.0.0.0/40"), "{error}");
    }

    #[test]
    fn no_section_means_defaults() {
        let config = from_toml("[store]\nx = 1\n", "x.toml").expect("valid");
        assert_eq!(config.listen, API_LISTEN_DEFAULT);
        assert!(config.proxies.is_empty());
    }
}
