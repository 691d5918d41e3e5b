//! The `[proxy]` section of the deployment TOML. This crate owns these structs; other sections
//! of the same file belong to other crates and are ignored here.
//!
//! Every error names the bad value, its `line:column` and the fix.

use std::collections::HashSet;
use std::net::SocketAddr;

use serde::Deserialize;
use toml::Spanned;

/// Largest weight a server may have (HAProxy's limit).
pub const WEIGHT_MAX: u32 = 256;
/// Most servers in one proxy; the balancer scans them linearly.
pub const SERVERS_MAX: usize = 1024;
/// Most worker threads.
pub const THREADS_MAX: usize = 256;
/// Most retries a request may get.
pub const RETRIES_MAX: u32 = 16;
/// Shortest check interval accepted, so a typo cannot turn checks into a flood.
pub const CHECK_INTERVAL_MS_MIN: u64 = 10;
/// Longest check interval or check timeout (an hour).
pub const CHECK_INTERVAL_MS_MAX: u64 = 3_600_000;
/// Longest of the `[proxy.timeouts]` (a day) and of `slowstart_ms` (an hour).
pub const TIMEOUT_MS_MAX: u64 = 86_400_000;
pub const SLOWSTART_MS_MAX: u64 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// Balancing algorithm, named as in HAProxy's `balance` keyword.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Smooth weighted round robin.
    #[default]
    Roundrobin,
    /// Fewest active requests relative to weight; ties go round robin.
    Leastconn,
}

/// What the file says; validated into [`ProxyConfig`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Spanned<String>,
    admin_listen: Option<Spanned<String>>,
    tls_cert: Option<Spanned<String>>,
    tls_key: Option<Spanned<String>>,
    #[serde(default)]
    balance: Balance,
    #[serde(default = "default_retries")]
    retries: Spanned<u32>,
    #[serde(default = "default_true")]
    redispatch: bool,
    #[serde(default)]
    slowstart_ms: u64,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    check: RawCheck,
    #[serde(default)]
    observe: Observe,
    #[serde(default)]
    servers: Vec<RawServer>,
    threads: Option<Spanned<usize>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Spanned<String>,
    address: Spanned<String>,
    #[serde(default = "default_weight")]
    weight: Spanned<u32>,
    #[serde(default)]
    backup: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    enabled: Option<bool>,
    #[serde(rename = "type")]
    kind: Option<CheckKind>,
    inter_ms: Option<Spanned<u64>>,
    fastinter_ms: Option<Spanned<u64>>,
    downinter_ms: Option<Spanned<u64>>,
    timeout_ms: Option<Spanned<u64>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    method: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    host: Option<String>,
    expect_status: Option<Spanned<Vec<u16>>>,
}

/// How a server is checked.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// An HTTP request; success is an expected status (HAProxy's `option httpchk`).
    #[default]
    Http,
    /// A TCP connect only (HAProxy's plain `check`).
    Tcp,
}

/// Active health checks, with HAProxy's names and defaults.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckConfig {
    pub enabled: bool,
    pub kind: CheckKind,
    /// Interval while a server is fully up (HAProxy `inter`, default 2000 ms).
    pub inter_ms: u64,
    /// Interval while a server is changing state (HAProxy `fastinter`, default `inter`).
    pub fastinter_ms: u64,
    /// Interval while a server is fully down (HAProxy `downinter`, default `inter`).
    pub downinter_ms: u64,
    /// How long one check may take (HAProxy `timeout check`, default `inter`).
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down server up (default 2).
    pub rise: u32,
    /// Consecutive failures that take an up server down (default 3).
    pub fall: u32,
    pub method: String,
    pub path: String,
    /// `Host` header of the check request; default: the server's address.
    pub host: Option<String>,
    /// Statuses that count as success; empty means any 2xx or 3xx (HAProxy's default).
    pub expect_status: Vec<u16>,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            enabled: true,
            kind: CheckKind::Http,
            inter_ms: 2000,
            fastinter_ms: 2000,
            downinter_ms: 2000,
            timeout_ms: 2000,
            rise: 2,
            fall: 3,
            method: "GET".into(),
            path: "/".into(),
            host: None,
            expect_status: Vec::new(),
        }
    }
}

/// Passive checks on live traffic (HAProxy `observe layer7` with `on-error mark-down`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Observe {
    /// Watch responses: 5xx statuses, connection errors and timeouts count as errors.
    pub layer7: bool,
    /// Consecutive errors that mark a server down before the next active check would
    /// (HAProxy `error-limit`, default 10).
    pub error_limit: u32,
}

impl Default for Observe {
    fn default() -> Self {
        Observe {
            layer7: true,
            error_limit: 10,
        }
    }
}

/// Timeouts, in milliseconds.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to a server (HAProxy `timeout connect`).
    pub connect_ms: u64,
    /// From the request sent to the response headers received (HAProxy `timeout server`);
    /// past it the client gets 504 and the server an error.
    pub response_header_ms: u64,
    /// A client's whole request head must arrive within this (HAProxy `timeout http-request`);
    /// the slowloris defence. Also how long a client connection may sit idle: an HTTP/1
    /// keep-alive connection between requests, an HTTP/2 one with no open stream (HAProxy's
    /// `timeout http-keep-alive`, which defaults to `timeout http-request`).
    pub client_header_ms: u64,
    /// A client's whole request body must arrive within this once its head has; else 408.
    pub client_body_ms: u64,
    /// Pooled server connections close after this idle; while a response streams, each read
    /// from the server and each write to the client must finish within it (HAProxy `timeout
    /// server`/`timeout client`; an HTTP/2 stream whose response waits this long on the
    /// client's flow control closes its connection); the interval of HTTP/2 keep-alive PINGs.
    pub idle_ms: u64,
    /// A tunnel (a connection its server switched to another protocol, a WebSocket) closes
    /// when neither side sent a byte for this long, or a side took none for as long (HAProxy
    /// `timeout tunnel`). WebSocket applications that ping less often than this lose their
    /// connection and reconnect.
    pub tunnel_idle_ms: u64,
    /// Once one side of a tunnel has closed its sending side (a half-close, passed on), the
    /// tunnel closes when the other side sent nothing for this long either (HAProxy `timeout
    /// client-fin`/`server-fin`). By default the same as `tunnel_idle_ms`, as HAProxy's are
    /// unset: some protocols half-close and then wait long for the answer (`docker attach`
    /// once its input ends). Lower it (30 s, say) where tunnels are WebSockets, so a peer that
    /// never finishes its close does not hold the connection for an hour. At most
    /// `tunnel_idle_ms` (the smaller one rules).
    pub tunnel_fin_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 2000,
            response_header_ms: 30_000,
            client_header_ms: 10_000,
            client_body_ms: 30_000,
            idle_ms: 60_000,
            tunnel_idle_ms: 3_600_000,
            tunnel_fin_ms: 3_600_000,
        }
    }
}

/// Limits that bound memory and work.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections held at once; more wait in the kernel's accept queue (HAProxy `maxconn`).
    pub connections_max: usize,
    /// Largest request body; larger ones get 413. Bodies are buffered so they can be retried.
    pub request_body_bytes_max: usize,
    /// Largest request head (request line plus headers); larger ones get 431.
    pub request_header_bytes_max: usize,
    /// Idle pooled connections kept per server.
    pub pool_idle_per_server_max: usize,
    /// Request bodies buffered at once across all requests; further bodies wait (within
    /// `client_body_ms`). Bounds memory whatever `connections_max` is.
    pub buffered_body_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: 4096,
            request_body_bytes_max: 10 * 1024 * 1024,
            request_header_bytes_max: 64 * 1024,
            pool_idle_per_server_max: 64,
            buffered_body_bytes_max: 256 * 1024 * 1024,
        }
    }
}

/// One app server.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub weight: u32,
    pub backup: bool,
}

/// The certificate chain and private key (PEM) clients are served with over TLS.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TlsPaths {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// The validated `[proxy]` section.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// `tls_cert` and `tls_key`: with them every client connection is TLS (HTTP/1.1 or HTTP/2 by
    /// ALPN), terminated here, and servers see `X-Forwarded-Proto: https`.
    pub tls: Option<TlsPaths>,
    pub balance: Balance,
    /// Further attempts after a failed one (HAProxy `retries`, default 3).
    pub retries: u32,
    /// Retries go to another server (HAProxy `option redispatch`, default on).
    pub redispatch: bool,
    /// A server that comes back ramps its weight up over this long; 0 turns slow start off.
    pub slowstart_ms: u64,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub check: CheckConfig,
    pub observe: Observe,
    pub servers: Vec<ServerConfig>,
    /// Worker threads serving clients (HAProxy `nbthread`); default: one per core.
    pub threads: usize,
}

fn default_retries() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}
fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
fn default_true() -> bool {
    true
}

/// Reads the `[proxy]` section of the TOML file at `path`.
pub fn load(path: &std::path::Path) -> Result<ProxyConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut config = parse(&text).map_err(|message| ConfigError::Invalid {
        path: path.display().to_string(),
        message,
    })?;
    // The certificate's files are named relative to the configuration file.
    if let (Some(tls), Some(folder)) = (config.tls.as_mut(), path.parent()) {
        for file in [&mut tls.cert, &mut tls.key] {
            if file.is_relative() {
                *file = folder.join(&*file);
            }
        }
    }
    Ok(config)
}

/// Parses the `[proxy]` section out of a whole deployment file; other sections are ignored.
pub fn parse(text: &str) -> Result<ProxyConfig, String> {
    let document: DocumentOnlyProxy = toml::from_str(text).map_err(|e| e.to_string())?;
    let Some(raw) = document.proxy else {
        return Err("no [proxy] section: add one with at least `listen` and one [[proxy.servers]]".into());
    };
    validate(text, raw.into_inner())
}

/// The whole file, keeping only `proxy`; unknown top-level sections belong to other crates.
#[derive(Deserialize)]
struct DocumentOnlyProxy {
    proxy: Option<Spanned<RawProxy>>,
}

fn at<T>(text: &str, value: &Spanned<T>, message: String) -> String {
    if value.span().end == 0 {
        message
    } else {
        format!("{}: {message}", common::text::describe(text, value.span().start))
    }
}

fn socket_address(text: &str, value: &Spanned<String>, key: &str) -> Result<SocketAddr, String> {
    value.get_ref().parse().map_err(|_| {
        at(
            text,
            value,
            format!(
                "{key} = \"{}\" is not IP:PORT; write it like \"127.0.0.1:8080\" (names are not resolved)",
                value.get_ref()
            ),
        )
    })
}

fn validate(text: &str, raw: RawProxy) -> Result<ProxyConfig, String> {
    let listen = socket_address(text, &raw.listen, "listen")?;
    let tls = match (&raw.tls_cert, &raw.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            for (value, name) in [(cert, "tls_cert"), (key, "tls_key")] {
                if value.get_ref().trim().is_empty() {
                    return Err(at(
                        text,
                        value,
                        format!("{name} is empty; name the PEM file (relative to this file's folder, or absolute)"),
                    ));
                }
            }
            Some(TlsPaths {
                cert: cert.get_ref().into(),
                key: key.get_ref().into(),
            })
        }
        (Some(given), None) | (None, Some(given)) => {
            return Err(at(
                text,
                given,
                "tls_cert and tls_key come together: give both (the PEM certificate chain and its private key) to serve clients over TLS, or neither".to_string(),
            ));
        }
    };
    let admin_listen = raw
        .admin_listen
        .as_ref()
        .map(|a| socket_address(text, a, "admin_listen"))
        .transpose()?;
    let retries = *raw.retries.get_ref();
    if retries > RETRIES_MAX {
        return Err(at(
            text,
            &raw.retries,
            format!("retries = {retries} is too many; use 0 to {RETRIES_MAX}"),
        ));
    }
    if raw.servers.is_empty() {
        return Err("[proxy] has no servers: add [[proxy.servers]] with name and address".into());
    }
    if raw.servers.len() > SERVERS_MAX {
        return Err(format!(
            "[proxy] has {} servers; at most {SERVERS_MAX} are supported",
            raw.servers.len()
        ));
    }
    let mut names = HashSet::new();
    let mut servers = Vec::with_capacity(raw.servers.len());
    for server in &raw.servers {
        let name = server.name.get_ref();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(at(
                text,
                &server.name,
                format!("server name \"{name}\" is not valid; use 1 to 64 letters, digits, '-', '_' or '.'"),
            ));
        }
        if !names.insert(name.clone()) {
            return Err(at(
                text,
                &server.name,
                format!("server name \"{name}\" is used twice; give each server its own name"),
            ));
        }
        let weight = *server.weight.get_ref();
        if weight > WEIGHT_MAX {
            return Err(at(
                text,
                &server.weight,
                format!("weight = {weight} is too large; use 0 to {WEIGHT_MAX} (0: no traffic)"),
            ));
        }
        servers.push(ServerConfig {
            name: name.clone(),
            address: socket_address(text, &server.address, "address")?,
            weight,
            backup: server.backup,
        });
    }
    let check = validate_check(text, raw.check)?;
    let timeouts = raw.timeouts;
    for (key, value) in [
        ("timeouts.connect_ms", timeouts.connect_ms),
        ("timeouts.response_header_ms", timeouts.response_header_ms),
        ("timeouts.client_header_ms", timeouts.client_header_ms),
        ("timeouts.client_body_ms", timeouts.client_body_ms),
        ("timeouts.idle_ms", timeouts.idle_ms),
        ("timeouts.tunnel_idle_ms", timeouts.tunnel_idle_ms),
        ("timeouts.tunnel_fin_ms", timeouts.tunnel_fin_ms),
    ] {
        if value == 0 {
            return Err(format!(
                "{key} = 0 would never time out or always; use a positive number of milliseconds"
            ));
        }
        if value > TIMEOUT_MS_MAX {
            return Err(format!(
                "{key} = {value} is above the bound of {TIMEOUT_MS_MAX} ms (1 day); use 1..={TIMEOUT_MS_MAX}"
            ));
        }
    }
    if raw.slowstart_ms > SLOWSTART_MS_MAX {
        return Err(format!(
            "slowstart_ms = {} is above the bound of {SLOWSTART_MS_MAX} ms (1 h); use 0..={SLOWSTART_MS_MAX} (0: no ramp)",
            raw.slowstart_ms
        ));
    }
    let limits = raw.limits;
    if limits.connections_max == 0 {
        return Err("limits.connections_max = 0 would refuse every client; use a positive number".into());
    }
    if limits.buffered_body_bytes_max < limits.request_body_bytes_max {
        return Err(format!(
            "limits.buffered_body_bytes_max = {} is below limits.request_body_bytes_max = {}; raise it so one full body fits",
            limits.buffered_body_bytes_max, limits.request_body_bytes_max
        ));
    }
    if limits.request_header_bytes_max < 8192 {
        return Err(format!(
            "limits.request_header_bytes_max = {} is too small; use at least 8192",
            limits.request_header_bytes_max
        ));
    }
    let threads = match &raw.threads {
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(THREADS_MAX),
        Some(t) if *t.get_ref() == 0 || *t.get_ref() > THREADS_MAX => {
            return Err(at(
                text,
                t,
                format!("threads = {} is out of range; use 1 to {THREADS_MAX}", t.get_ref()),
            ));
        }
        Some(t) => *t.get_ref(),
    };
    Ok(ProxyConfig {
        threads,
        listen,
        admin_listen,
        tls,
        balance: raw.balance,
        retries,
        redispatch: raw.redispatch,
        slowstart_ms: raw.slowstart_ms,
        timeouts,
        limits,
        check,
        observe: raw.observe,
        servers,
    })
}

fn validate_check(text: &str, raw: RawCheck) -> Result<CheckConfig, String> {
    let defaults = CheckConfig::default();
    let interval = |value: &Option<Spanned<u64>>, key: &str, fallback: u64| -> Result<u64, String> {
        match value {
            None => Ok(fallback),
            Some(v) if *v.get_ref() > CHECK_INTERVAL_MS_MAX => Err(at(
                text,
                v,
                format!(
                    "check.{key} = {} is above the bound of {CHECK_INTERVAL_MS_MAX} ms (1 h); use {CHECK_INTERVAL_MS_MIN}..={CHECK_INTERVAL_MS_MAX}",
                    v.get_ref()
                ),
            )),
            Some(v) if *v.get_ref() < CHECK_INTERVAL_MS_MIN => Err(at(
                text,
                v,
                format!(
                    "check.{key} = {} is too short; use at least {CHECK_INTERVAL_MS_MIN}",
                    v.get_ref()
                ),
            )),
            Some(v) => Ok(*v.get_ref()),
        }
    };
    let inter_ms = interval(&raw.inter_ms, "inter_ms", defaults.inter_ms)?;
    let fastinter_ms = interval(&raw.fastinter_ms, "fastinter_ms", inter_ms)?;
    let downinter_ms = interval(&raw.downinter_ms, "downinter_ms", inter_ms)?;
    let timeout_ms = interval(&raw.timeout_ms, "timeout_ms", inter_ms)?;
    let count = |value: &Option<Spanned<u32>>, key: &str, fallback: u32| -> Result<u32, String> {
        match value {
            None => Ok(fallback),
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1000 => Err(at(
                text,
                v,
                format!("check.{key} = {} is out of range; use 1 to 1000", v.get_ref()),
            )),
            Some(v) => Ok(*v.get_ref()),
        }
    };
    let rise = count(&raw.rise, "rise", defaults.rise)?;
    let fall = count(&raw.fall, "fall", defaults.fall)?;
    let method = match &raw.method {
        None => defaults.method,
        Some(m) => {
            let upper = m.get_ref().to_ascii_uppercase();
            if hyper::Method::from_bytes(upper.as_bytes()).is_err() || upper.is_empty() {
                return Err(at(
                    text,
                    m,
                    format!(
                        "check.method = \"{}\" is not an HTTP method; use GET, HEAD or OPTIONS",
                        m.get_ref()
                    ),
                ));
            }
            upper
        }
    };
    let path = match &raw.path {
        None => defaults.path,
        Some(p) => {
            if !p.get_ref().starts_with('/') || p.get_ref().parse::<hyper::Uri>().is_err() {
                return Err(at(
                    text,
                    p,
                    format!(
                        "check.path = \"{}\" is not a path; write it like \"/health\"",
                        p.get_ref()
                    ),
                ));
            }
            p.get_ref().clone()
        }
    };
    let expect_status = match &raw.expect_status {
        None => Vec::new(),
        Some(list) => {
            if let Some(bad) = list.get_ref().iter().find(|s| !(100..=599).contains(*s)) {
                return Err(at(
                    text,
                    list,
                    format!("check.expect_status has {bad}, not an HTTP status; use codes 100 to 599 like [200, 204]"),
                ));
            }
            list.get_ref().clone()
        }
    };
    Ok(CheckConfig {
        enabled: raw.enabled.unwrap_or(true),
        kind: raw.kind.unwrap_or_default(),
        inter_ms,
        fastinter_ms,
        downinter_ms,
        timeout_ms,
        rise,
        fall,
        method,
        path,
        host: raw.host,
        expect_status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[store]
listen = "127.0.0.1:8000"

[proxy]
listen = "127.0.0.1:8080"

[[proxy.servers]]
name = "web1"
address = "127.0.0.1:9001"
"#;

    #[test]
    fn minimal_section_gets_haproxy_defaults_and_ignores_other_sections() {
        let config = parse(MINIMAL).expect("valid");
        assert_eq!(config.check.inter_ms, 2000);
        assert_eq!(config.check.fastinter_ms, 2000);
        assert_eq!(config.check.downinter_ms, 2000);
        assert_eq!(config.check.rise, 2);
        assert_eq!(config.check.fall, 3);
        assert_eq!(config.retries, 3);
        assert!(config.redispatch);
        assert_eq!(config.servers[0].weight, 1);
        assert!(!config.servers[0].backup);
        assert_eq!(config.balance, Balance::Roundrobin);
    }

    #[test]
    fn fastinter_and_downinter_default_to_inter() {
        let text = MINIMAL.replace(
            "[[proxy.servers]]",
            "[proxy.check]\ninter_ms = 500\n\n[[proxy.servers]]",
        );
        let config = parse(&text).expect("valid");
        assert_eq!(config.check.fastinter_ms, 500);
        assert_eq!(config.check.downinter_ms, 500);
        assert_eq!(config.check.timeout_ms, 500);
    }

    #[test]
    fn durations_have_upper_bounds_named_in_the_message() {
        let huge = i64::MAX;
        let check = MINIMAL.replace(
            "[[proxy.servers]]",
            &format!("[proxy.check]\ninter_ms = {huge}\n\n[[proxy.servers]]"),
        );
        let error = parse(&check).expect_err("too long");
        assert!(error.contains("above the bound of 3600000 ms"), "{error}");
        let timeouts = MINIMAL.replace(
            "[[proxy.servers]]",
            &format!("[proxy.timeouts]\nidle_ms = {huge}\n\n[[proxy.servers]]"),
        );
        let error = parse(&timeouts).expect_err("too long");
        assert!(
            error.contains("timeouts.idle_ms") && error.contains("86400000 ms"),
            "{error}"
        );
        let slowstart = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:8080\"\nslowstart_ms = {huge}"),
        );
        let error = parse(&slowstart).expect_err("too long");
        assert!(
            error.contains("slowstart_ms") && error.contains("3600000 ms"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_is_reported_with_its_line() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\nbalanse = \"x\"",
        );
        let error = parse(&text).expect_err("unknown key");
        assert!(error.contains("line 7"), "{error}");
        assert!(error.contains("balanse"), "{error}");
    }

    #[test]
    fn bad_address_names_the_value_and_line() {
        let text = MINIMAL.replace("127.0.0.1:9001", "web1.local");
        let error = parse(&text).expect_err("bad address");
        assert!(error.contains("line 10"), "{error}");
        assert!(error.contains("web1.local"), "{error}");
    }

    #[test]
    fn duplicate_server_names_are_refused() {
        let text = format!("{MINIMAL}\n[[proxy.servers]]\nname = \"web1\"\naddress = \"127.0.0.1:9002\"\n");
        let error = parse(&text).expect_err("duplicate");
        assert!(error.contains("used twice"), "{error}");
        assert!(error.contains("line 13"), "{error}");
    }

    #[test]
    fn weight_over_the_limit_is_refused() {
        let text = MINIMAL.replace(
            "address = \"127.0.0.1:9001\"",
            "address = \"127.0.0.1:9001\"\nweight = 1000",
        );
        let error = parse(&text).expect_err("weight");
        assert!(error.contains("weight = 1000"), "{error}");
    }

    #[test]
    fn body_budget_must_hold_one_full_body() {
        let text = MINIMAL.replace(
            "[[proxy.servers]]",
            "[proxy.limits]\nrequest_body_bytes_max = 2048\nbuffered_body_bytes_max = 1024\n\n[[proxy.servers]]",
        );
        let error = parse(&text).expect_err("budget too small");
        assert!(error.contains("buffered_body_bytes_max = 1024"), "{error}");
    }

    #[test]
    fn missing_section_says_what_to_add() {
        let error = parse("[store]\nlisten = \"x\"\n").expect_err("no section");
        assert!(error.contains("[proxy]"), "{error}");
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../docs/examples/proxy.toml");
        let config = parse(text).expect("the shipped example is valid");
        assert!(config.servers.iter().any(|s| s.backup));
    }
}
