//! What to probe and how often: `CheckSpec` and its `ProbeKind`, as written in the TOML config
//! and handed to agents in an `AgentPlan`.
//!
//! The defaults detect a dead region within 3 s of the fault, whatever the failure looks like.
//! The next probe is scheduled after the previous one ends, so the worst case is a target that
//! blackholes traffic just after a successful probe: one normal interval, then `fall` probes
//! that each run to their timeout with `fall - 1` fast intervals between them —
//! 1000 + 3 × 500 + 2 × 250 = 3000 ms. A target that refuses connections is seen in
//! 1000 + 2 × 250 = 1500 ms. `fall = 3` still absorbs one lost packet or one slow answer. A
//! vantage point far from its target (more than ~150 ms round trip) needs a longer
//! `timeout_ms`, which lengthens the worst case by `fall` times the increase. See
//! `CheckSpec::detection_bound_ms`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default time between probes of a check that is stable (HAProxy `inter`).
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
/// Default time between probes while a check is changing state (HAProxy `fastinter`).
pub const DEFAULT_FAST_INTERVAL_MS: u64 = 250;
/// Default time after which a probe is abandoned and counted as a failure.
pub const DEFAULT_TIMEOUT_MS: u64 = 500;
/// Default consecutive successes that bring a down check up (HAProxy `rise`).
pub const DEFAULT_RISE: u32 = 2;
/// Default consecutive failures that bring an up check down (HAProxy `fall`).
pub const DEFAULT_FALL: u32 = 3;
/// The shortest interval a check may ask for: below it probing becomes load, not signal.
pub const INTERVAL_MS_MIN: u64 = 10;
/// The longest interval or timeout a check may ask for (one hour).
pub const INTERVAL_MS_MAX: u64 = 3_600_000;
/// Upper bound on `rise` and `fall`.
pub const RISE_FALL_MAX: u32 = 100;
/// Largest `max_replica_lag_ms`: a day (a replica further behind is not a standby).
pub const REPLICA_LAG_MS_MAX: u64 = 86_400_000;
/// Most `lag_sources` of one DynamoDB check (one per other region).
pub const LAG_SOURCES_MAX: usize = 16;

/// Most `source_regions` of a `cloudwatch_lag` (one per other replica).
pub const CLOUDWATCH_SOURCES_MAX: usize = 16;
/// Longest `window_s` of a `cloudwatch_lag`: an hour.
pub const CLOUDWATCH_WINDOW_S_MAX: u64 = 3_600;
/// Default `window_s`: CloudWatch publishes DynamoDB's replication metrics every minute.
pub const CLOUDWATCH_WINDOW_S_DEFAULT: u64 = 300;

/// Where a DynamoDB check reads the replication lag of an AWS DynamoDB global table: the
/// `ReplicationLatency` and `PendingReplicationCount` metrics (namespace `AWS/DynamoDB`,
/// dimensions `TableName` and `ReceivingRegion`) that each other replica's region publishes
/// about replication into `receiving_region`. The lag is the largest latest value among the
/// sources (a pending count above 0 is never a lag of 0); a source with no datapoint in the
/// window gives no reading, and with no reading at all the lag is unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudwatchLag {
    /// The AWS region of this check's replica, like `eu-west-1`.
    pub receiving_region: String,
    /// The AWS regions of the other replicas, like `["us-east-1"]`.
    pub source_regions: Vec<String>,
    /// The global table; default the check's `table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// How far back to look for the latest datapoint, in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_s: Option<u64>,
    /// A profile of the shared AWS files; default the standard credential chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Another CloudWatch endpoint than AWS's (moto in tests, a VPC endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
}

impl CloudwatchLag {
    fn validate(&self) -> Result<(), String> {
        let region_ok = |r: &str| {
            let parts: Vec<&str> = r.split('-').collect();
            parts.len() >= 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        };
        if !region_ok(&self.receiving_region) {
            return Err(format!(
                "cloudwatch_lag receiving_region '{}' is not an AWS region: write it like eu-west-1",
                self.receiving_region
            ));
        }
        if self.source_regions.is_empty() || self.source_regions.len() > CLOUDWATCH_SOURCES_MAX {
            return Err(format!(
                "cloudwatch_lag source_regions has {} entries: list 1..={CLOUDWATCH_SOURCES_MAX} AWS regions of the other replicas",
                self.source_regions.len()
            ));
        }
        for source in &self.source_regions {
            if !region_ok(source) || *source == self.receiving_region {
                return Err(format!(
                    "cloudwatch_lag source_regions entry '{source}' is not another replica's AWS region: write it like us-east-1"
                ));
            }
        }
        if let Some(window) = self.window_s
            && !(60..=CLOUDWATCH_WINDOW_S_MAX).contains(&window)
        {
            return Err(format!(
                "cloudwatch_lag window_s = {window} is out of range: use 60..={CLOUDWATCH_WINDOW_S_MAX} seconds"
            ));
        }
        if let Some(url) = &self.endpoint_url {
            parse_url(url, true).map_err(|message| format!("cloudwatch_lag endpoint_url: {message}"))?;
        }
        Ok(())
    }
}

/// A vantage point's own network path to each target: `host:port` as written in the checks →
/// `host:port` this vantage point connects to instead (see `CheckSpec::with_address_map`).
pub type AddressMap = BTreeMap<String, String>;

/// One health check: a probe of one kind against one target, attributed to one region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Unique name of the check (across all regions), e.g. `use1-app`.
    pub name: String,
    /// The region whose health this check contributes to.
    pub region: String,
    /// What to probe.
    pub kind: ProbeKind,
    /// Time between probes while the check is stable (HAProxy `inter`). Default 1000.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Time between probes while the check is transitioning, i.e. after a result that
    /// disagrees with the current state (HAProxy `fastinter`). Default 250.
    #[serde(default = "default_fast_interval_ms")]
    pub fast_interval_ms: u64,
    /// Time between probes while the check is fully down (HAProxy `downinter`); `None` uses
    /// `interval_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_interval_ms: Option<u64>,
    /// A probe still running after this long is cut and counts as a failure. Default 500.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down check up. Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that bring an up check down. Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_interval_ms() -> u64 {
    DEFAULT_INTERVAL_MS
}
fn default_fast_interval_ms() -> u64 {
    DEFAULT_FAST_INTERVAL_MS
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_rise() -> u32 {
    DEFAULT_RISE
}
fn default_fall() -> u32 {
    DEFAULT_FALL
}

/// A mistake in a `CheckSpec`, naming the check, the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("check '{check}': {message}")]
pub struct SpecError {
    pub check: String,
    pub message: String,
}

impl CheckSpec {
    /// A check with every timing at its default.
    pub fn new(name: impl Into<String>, region: impl Into<String>, kind: ProbeKind) -> CheckSpec {
        CheckSpec {
            name: name.into(),
            region: region.into(),
            kind,
            interval_ms: DEFAULT_INTERVAL_MS,
            fast_interval_ms: DEFAULT_FAST_INTERVAL_MS,
            down_interval_ms: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }

    /// The same check as seen through one vantage point's network path: every address it
    /// connects to (the authority of http and dynamodb URLs and of `lag_sources`, tcp/sql/redis
    /// addresses, the DNS server) that is a key of `map` is replaced by its value. A URL without
    /// a port matches the key with its scheme's default port (80 or 443), a DNS server without
    /// one matches port 53. Names, regions and timings are unchanged, so every vantage point's
    /// reports still speak of the same check. For `https`, the certificate must be valid for
    /// the new host — or for the check's `Host` header, which names the TLS server when set —
    /// unless the check has `tls_verify = false`.
    pub fn with_address_map(&self, map: &AddressMap) -> CheckSpec {
        let mut spec = self.clone();
        if map.is_empty() {
            return spec;
        }
        match &mut spec.kind {
            ProbeKind::Http { url, .. } => *url = map_url(url, map),
            ProbeKind::Dynamodb {
                endpoint, lag_sources, ..
            } => {
                *endpoint = map_url(endpoint, map);
                for source in lag_sources {
                    *source = map_url(source, map);
                }
            }
            ProbeKind::Tcp { address } | ProbeKind::Sql { address, .. } | ProbeKind::Redis { address, .. } => {
                if let Some(to) = map.get(address.as_str()) {
                    address.clone_from(to);
                }
            }
            ProbeKind::Dns { server, .. } => {
                let with_port = if host_port(server, "server").is_ok() && !is_bare_ipv6(server) {
                    server.clone()
                } else {
                    format_host_port(server, 53)
                };
                if let Some(to) = map.get(&with_port) {
                    server.clone_from(to);
                }
            }
        }
        spec
    }

    /// The interval used while the check is fully down.
    pub fn effective_down_interval_ms(&self) -> u64 {
        self.down_interval_ms.unwrap_or(self.interval_ms)
    }

    /// Worst-case time from a fault to this check reporting down, once probes fail at once:
    /// the current interval (`inter`), then `fall - 1` fast intervals, each probe taking at
    /// most `timeout_ms`.
    pub fn detection_bound_ms(&self) -> u64 {
        let fast_steps = u64::from(self.fall.saturating_sub(1));
        self.interval_ms
            .saturating_add(fast_steps.saturating_mul(self.fast_interval_ms))
            .saturating_add(u64::from(self.fall).saturating_mul(self.timeout_ms))
    }

    /// Checks ranges and the probe's own fields; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), SpecError> {
        let fail = |message: String| SpecError {
            check: self.name.clone(),
            message,
        };
        if self.name.trim().is_empty() {
            return Err(fail(
                "name is empty: give every check a unique name like 'use1-app'".into(),
            ));
        }
        if self.region.trim().is_empty() {
            return Err(fail("region is empty: name the region this check belongs to".into()));
        }
        let intervals = [
            ("interval_ms", Some(self.interval_ms)),
            ("fast_interval_ms", Some(self.fast_interval_ms)),
            ("down_interval_ms", self.down_interval_ms),
            ("timeout_ms", Some(self.timeout_ms)),
        ];
        for (field, value) in intervals {
            if let Some(value) = value
                && !(INTERVAL_MS_MIN..=INTERVAL_MS_MAX).contains(&value)
            {
                return Err(fail(format!(
                    "{field} = {value} is out of range: use {INTERVAL_MS_MIN}..={INTERVAL_MS_MAX} milliseconds"
                )));
            }
        }
        for (field, value) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=RISE_FALL_MAX).contains(&value) {
                return Err(fail(format!(
                    "{field} = {value} is out of range: use 1..={RISE_FALL_MAX}"
                )));
            }
        }
        if let ProbeKind::Redis {
            max_replica_lag_ms: Some(lag),
            ..
        }
        | ProbeKind::Sql {
            max_replica_lag_ms: Some(lag),
            ..
        } = &self.kind
            && *lag > REPLICA_LAG_MS_MAX
        {
            return Err(fail(format!(
                "max_replica_lag_ms = {lag} is above the bound of {REPLICA_LAG_MS_MAX} ms (1 day): use 0..={REPLICA_LAG_MS_MAX} milliseconds"
            )));
        }
        self.kind.validate().map_err(fail)
    }
}

/// What a check probes; internally tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProbeKind {
    /// An HTTP/1.1 request; success when the status matches (and the body contains a string).
    Http {
        /// `http://host:port/path?query` or `https://...` (TLS verified against the Mozilla
        /// roots, or against `ca_file`, unless `tls_verify = false`). User info in the URL
        /// (`http://user:password@host/`) is sent as `Authorization: Basic`, as curl does, never
        /// in the `Host` header, and is shown as `***` in details and errors.
        url: String,
        /// Request method. Default `GET`.
        #[serde(default = "default_method")]
        method: String,
        /// The status that counts as success; `None` accepts any 2xx or 3xx (as HAProxy does).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect_status: Option<u16>,
        /// When set, the response body must contain this string (searched in the first
        /// `probe::http::BODY_BYTES_MAX` bytes; reading stops at the first match). Not with
        /// `method = "HEAD"`, whose responses have no body.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_contains: Option<String>,
        /// Extra request headers, e.g. `Host` for a virtual host. For `https://`, a `Host`
        /// header's name (without its port) is also the TLS server name: sent as SNI and
        /// verified against the certificate (HAProxy's `check-sni`), so a URL naming an IP
        /// address (a vantage path, say) still verifies the site's certificate.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        /// For `https://`: a PEM file of CA certificates to trust instead of the built-in
        /// Mozilla roots (a private CA that issued the server's certificate).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<String>,
        /// For `https://`: verify the server's certificate (chain, dates, name). Default true.
        /// `false` accepts any certificate, as Route 53's HTTPS health checks do, so an
        /// expiring certificate shared by every region cannot fail them all at once; the
        /// handshake must still succeed.
        #[serde(default = "default_tls_verify", skip_serializing_if = "is_true")]
        tls_verify: bool,
    },
    /// A TCP connect; success when the connection is established.
    Tcp {
        /// `host:port`.
        address: String,
    },
    /// A DNS query over UDP with EDNS0 (over TCP again when the answer is truncated); success on
    /// a NOERROR answer with records for the name (or its CNAME chain), containing `expect` if
    /// set.
    Dns {
        /// The server as `ip:port` or `ip` (port 53).
        server: String,
        /// The name to look up, e.g. `www.example.com`.
        name: String,
        /// `A`, `AAAA`, `CNAME`, `TXT`, `MX`, `NS`, `SOA` or `SRV`. Default `A`.
        #[serde(default = "default_record_type")]
        record_type: String,
        /// When set, one answer record of `record_type` must have this value (an address for A
        /// and AAAA, a name for CNAME/NS/MX/SRV targets, the text for TXT).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
    },
    /// A DynamoDB read against a store (Switchyard's or AWS's): `GetItem` of `key` if given,
    /// else `Scan` with `Limit = 1`. Signed with SigV4 when credentials are given. With
    /// `write = true`, also a conditional `PutItem` of a heartbeat item into the reserved table
    /// `__switchyard_health` (`probe::HEARTBEAT_TABLE`), so a store that reads but cannot
    /// write (a full disk, a failing writer) is down.
    Dynamodb {
        /// `http://host:port` or `https://dynamodb.REGION.amazonaws.com`.
        endpoint: String,
        /// The table to read.
        table: String,
        /// The key in DynamoDB JSON, e.g. `{ pk = { S = "health" } }`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<serde_json::Value>,
        /// Region used in the signature; default the check's region.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signing_region: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access_key_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secret_access_key: Option<String>,
        /// The other regions' Switchyard stores (`http://host:port`, at most `LAG_SOURCES_MAX`):
        /// after the read, the probe GETs each one's `/health` and reports the largest
        /// `replication.peers.<this check's region>.lag_ms` as the replication lag *into* this
        /// region, which automatic failback waits on. A source that does not answer gives no
        /// reading (unknown, never 0); with no reading at all the lag is unknown.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        lag_sources: Vec<String>,
        /// Also write a heartbeat (Switchyard's stores keep the table; on AWS, create
        /// `__switchyard_health` with a string hash key `pk`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        write: bool,
        /// For AWS DynamoDB global tables: read the replication lag into this region from
        /// CloudWatch instead of `lag_sources` (see [`CloudwatchLag`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cloudwatch_lag: Option<CloudwatchLag>,
    },
    /// `SELECT 1` on MariaDB/MySQL or PostgreSQL, optionally reading replica lag.
    Sql {
        driver: SqlDriver,
        /// `host:port`.
        address: String,
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        database: Option<String>,
        /// Read replication lag: MySQL `SHOW REPLICA STATUS` (`Seconds_Behind_Master`);
        /// PostgreSQL 0 when its WAL receiver streams and has replayed all it received, the age
        /// of the last replayed commit while WAL waits to be replayed, unknown when the receiver
        /// is not streaming (or the user lacks `pg_monitor` to see it) — see `probe::postgres`.
        #[serde(default)]
        replica_lag: bool,
        /// When set (implies `replica_lag`), a lag above this, or an unknown lag, fails the check.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_replica_lag_ms: Option<u64>,
    },
    /// Redis `PING` (after `AUTH` if a password is given), optionally `INFO replication`.
    Redis {
        /// `host:port`.
        address: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        /// Read `INFO replication`: the role goes into the detail; a replica's lag is 0 while
        /// its link is up, not in a full sync and its master was heard from recently, unknown
        /// otherwise (a replica cannot time its own lag) — see `probe::redis`.
        #[serde(default)]
        replication: bool,
        /// When set, `INFO replication` must report this role (`master` or `slave`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect_role: Option<String>,
        /// When set (implies `replication`), a replica whose link is down or whose lag is above
        /// this fails the check.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_replica_lag_ms: Option<u64>,
    },
}

fn default_method() -> String {
    "GET".into()
}
fn default_tls_verify() -> bool {
    true
}
fn is_true(value: &bool) -> bool {
    *value
}
fn default_record_type() -> String {
    "A".into()
}

/// The SQL wire protocol a `Sql` probe speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqlDriver {
    /// MariaDB and MySQL.
    Mysql,
    Postgres,
}

/// The statuses `expect_status` may name: a final response's (RFC 9110, section 15: 1xx are
/// interim, and a client never sees one as the answer).
pub const EXPECT_STATUS_RANGE: std::ops::RangeInclusive<u16> = 200..=599;

/// Bytes of a response body an `http` check's `body_contains` is searched in
/// (`probe::BODY_BYTES_MAX`).
pub const BODY_SEARCH_BYTES: usize = 64 * 1024;

/// DNS record types a `Dns` probe can ask for.
pub const DNS_RECORD_TYPES: [&str; 8] = ["A", "AAAA", "CNAME", "TXT", "MX", "NS", "SOA", "SRV"];

impl ProbeKind {
    /// The `type` tag, for logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            ProbeKind::Http { .. } => "http",
            ProbeKind::Tcp { .. } => "tcp",
            ProbeKind::Dns { .. } => "dns",
            ProbeKind::Dynamodb { .. } => "dynamodb",
            ProbeKind::Sql { .. } => "sql",
            ProbeKind::Redis { .. } => "redis",
        }
    }

    /// Whether a probe of this kind, as configured, reads a replication lag (fills
    /// `CheckResult::replica_lag_ms`): `sql` with `replica_lag` or `max_replica_lag_ms`, `redis`
    /// that reads `INFO replication` (`replication`, `expect_role` or `max_replica_lag_ms`),
    /// `dynamodb` with `lag_sources` or `cloudwatch_lag`. The probes ask for the lag exactly
    /// then, and the quorum takes a lag only from such a check: a lag attached to any other
    /// result is no measurement.
    pub fn reads_replica_lag(&self) -> bool {
        match self {
            ProbeKind::Http { .. } | ProbeKind::Tcp { .. } | ProbeKind::Dns { .. } => false,
            ProbeKind::Dynamodb {
                lag_sources,
                cloudwatch_lag,
                ..
            } => !lag_sources.is_empty() || cloudwatch_lag.is_some(),
            ProbeKind::Sql {
                replica_lag,
                max_replica_lag_ms,
                ..
            } => *replica_lag || max_replica_lag_ms.is_some(),
            ProbeKind::Redis {
                replication,
                expect_role,
                max_replica_lag_ms,
                ..
            } => *replication || expect_role.is_some() || max_replica_lag_ms.is_some(),
        }
    }

    fn validate(&self) -> Result<(), String> {
        match self {
            ProbeKind::Http {
                url,
                method,
                ca_file,
                expect_status,
                body_contains,
                headers,
                tls_verify,
            } => {
                let https = parse_url(url, true)
                    .map_err(|message| format!("url: {message}; write it like http://10.0.0.5:8080/health"))?
                    .https;
                let shown = redact_url(url);
                if ca_file.is_some() && !https {
                    return Err(format!("ca_file is set but url '{shown}' is not https://"));
                }
                if !tls_verify && !https {
                    return Err(format!(
                        "tls_verify = false is set but url '{shown}' is not https://: leave tls_verify out"
                    ));
                }
                if !tls_verify && ca_file.is_some() {
                    return Err(
                        "tls_verify = false and ca_file contradict each other (ca_file is what certificates are verified against): drop one"
                            .into(),
                    );
                }
                if let Some(body_contains) = body_contains {
                    if method == "HEAD" {
                        return Err(
                            "body_contains is set but method is HEAD, and a response to HEAD has no body (RFC 9110, section 9.3.2), so the check could never pass: use method = \"GET\", or drop body_contains".into(),
                        );
                    }
                    if body_contains.len() > BODY_SEARCH_BYTES {
                        return Err(format!(
                            "body_contains has {} bytes, more than the {BODY_SEARCH_BYTES} bytes of the body searched: give a shorter string",
                            body_contains.len()
                        ));
                    }
                }
                if https && let Some((_, host)) = headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("host")) {
                    let name = host_header_name(host);
                    if name.parse::<std::net::IpAddr>().is_err() && !valid_host_name(name) {
                        return Err(format!(
                            "headers: Host '{host}' is not host or host:port, so it cannot name the TLS server: write it like shop.example.com"
                        ));
                    }
                }
                if let Some(status) = expect_status
                    && !EXPECT_STATUS_RANGE.contains(status)
                {
                    return Err(format!(
                        "expect_status = {status} is not a final HTTP status, so the check could never pass: use {}..={} (e.g. 200), or leave it out to accept any 2xx or 3xx",
                        EXPECT_STATUS_RANGE.start(),
                        EXPECT_STATUS_RANGE.end()
                    ));
                }
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(format!(
                        "method '{method}' is not an HTTP method; use GET, HEAD or POST"
                    ));
                }
                Ok(())
            }
            ProbeKind::Tcp { address } => host_port(address, "address"),
            ProbeKind::Dns {
                server,
                name,
                record_type,
                ..
            } => {
                let is_address =
                    server.parse::<std::net::SocketAddr>().is_ok() || server.parse::<std::net::IpAddr>().is_ok();
                if !is_address {
                    return Err(format!(
                        "server '{server}' is not an IP address: give the DNS server as ip or ip:port, like 10.0.0.2:53"
                    ));
                }
                if name.trim().is_empty() {
                    return Err("name is empty: give the name to look up".into());
                }
                if !DNS_RECORD_TYPES.contains(&record_type.to_ascii_uppercase().as_str()) {
                    return Err(format!(
                        "record_type '{record_type}' is not supported; use one of {}",
                        DNS_RECORD_TYPES.join(", ")
                    ));
                }
                Ok(())
            }
            ProbeKind::Dynamodb {
                endpoint,
                table,
                key,
                access_key_id,
                secret_access_key,
                lag_sources,
                cloudwatch_lag,
                ..
            } => {
                if let Some(cloudwatch) = cloudwatch_lag {
                    if !lag_sources.is_empty() {
                        return Err(
                            "give lag_sources (Switchyard's stores) or cloudwatch_lag (AWS DynamoDB), not both".into(),
                        );
                    }
                    cloudwatch.validate()?;
                }
                parse_url(endpoint, true)
                    .map_err(|message| format!("endpoint: {message}; write it like http://10.0.0.5:8000"))?;
                if table.is_empty() {
                    return Err("table is empty: name the table to read".into());
                }
                if let Some(key) = key
                    && !key.is_object()
                {
                    return Err("key must be a map of attribute names to DynamoDB JSON values, like { pk = { S = \"health\" } }".into());
                }
                if access_key_id.is_some() != secret_access_key.is_some() {
                    return Err("give both access_key_id and secret_access_key, or neither".into());
                }
                if lag_sources.len() > LAG_SOURCES_MAX {
                    return Err(format!(
                        "{} lag_sources is more than {LAG_SOURCES_MAX}: list one store per other region",
                        lag_sources.len()
                    ));
                }
                for source in lag_sources {
                    parse_url(source, true).map_err(|message| {
                        format!("lag_sources entry: {message}; give another region's store like http://10.0.1.5:8000")
                    })?;
                }
                Ok(())
            }
            ProbeKind::Sql { address, user, .. } => {
                host_port(address, "address")?;
                if user.is_empty() {
                    return Err("user is empty: give the database user the probe logs in as".into());
                }
                Ok(())
            }
            ProbeKind::Redis {
                address, expect_role, ..
            } => {
                host_port(address, "address")?;
                if let Some(role) = expect_role
                    && role != "master"
                    && role != "slave"
                {
                    return Err(format!(
                        "expect_role '{role}' is not a Redis role; use 'master' or 'slave'"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Rewrites the authority of an `http(s)://` URL through `map`; anything else is returned as is.
fn map_url(url: &str, map: &AddressMap) -> String {
    let (scheme, default_port) = if url.starts_with("https://") {
        ("https://", 443)
    } else if url.starts_with("http://") {
        ("http://", 80)
    } else {
        return url.to_string();
    };
    let rest = &url[scheme.len()..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // Credentials in the URL (`user@host`) stay; only the host and port are looked up.
    let (userinfo, host_and_port) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, authority),
    };
    let key = if host_port(host_and_port, "").is_ok() && !is_bare_ipv6(host_and_port) {
        host_and_port.to_string()
    } else {
        format_host_port(host_and_port, default_port)
    };
    match map.get(&key) {
        Some(to) => match userinfo {
            Some(userinfo) => format!("{scheme}{userinfo}@{to}{tail}"),
            None => format!("{scheme}{to}{tail}"),
        },
        None => url.to_string(),
    }
}

/// `::1` has colons but no port; `[::1]:53` has one.
fn is_bare_ipv6(address: &str) -> bool {
    address.parse::<std::net::Ipv6Addr>().is_ok()
}

fn format_host_port(host: &str, port: u16) -> String {
    if is_bare_ipv6(host) {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The parts of an `http://` or `https://` URL that say where it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

/// `url` with its user info (`user:password@`) replaced by `***`: what details, logs and
/// errors show of a URL.
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[scheme_end..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &rest[at..]).into(),
        None => url.into(),
    }
}

/// The name of a `Host` header value: without its port, and an IPv6 address without its
/// brackets (`shop.example:8443` → `shop.example`, `[2001:db8::1]:443` → `2001:db8::1`).
pub fn host_header_name(value: &str) -> &str {
    let value = value.trim();
    if let Some(bracketed) = value.strip_prefix('[') {
        return bracketed.split_once(']').map_or(bracketed, |(inside, _)| inside);
    }
    match value.split_once(':') {
        // One colon: host:port. More: a bare IPv6 address (not a valid Host, kept whole).
        Some((host, port)) if !port.contains(':') => host,
        _ => value,
    }
}

/// Bytes a URL in a config has at most.
pub const URL_BYTES_MAX: usize = 2048;

/// Parses a URL the way a client will use it: scheme `http` (or `https` when `https_allowed`),
/// a host that is an IP address or a DNS name, an optional port in 1..=65535, and a path
/// without spaces or control characters. The message says what is wrong and what was given.
pub fn parse_url(url: &str, https_allowed: bool) -> Result<UrlParts, String> {
    let shown = redact_url(url);
    if url.len() > URL_BYTES_MAX {
        return Err(format!("the URL has {} bytes; the bound is {URL_BYTES_MAX}", url.len()));
    }
    let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        if !https_allowed {
            return Err(format!(
                "'{shown}' is https://, which this client does not speak; use http://"
            ));
        }
        (true, rest)
    } else {
        let expected = if https_allowed {
            "http:// or https://"
        } else {
            "http://"
        };
        return Err(format!("'{shown}' does not start with {expected}"));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "'{shown}' has spaces or control characters; percent-encode them"
        ));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_and_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let (host, port) = if let Some(bracketed) = host_and_port.strip_prefix('[') {
        let Some((host, after)) = bracketed.split_once(']') else {
            return Err(format!("'{shown}' has an IPv6 host without its closing ']'"));
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{shown}': '{host}' is not an IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => {
                    return Err(format!(
                        "'{shown}' has '{after}' after the IPv6 host; write [ADDRESS]:PORT"
                    ));
                }
            },
        }
    } else {
        match host_and_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_and_port, None),
        }
    };
    if host.is_empty() {
        return Err(format!("'{shown}' has no host"));
    }
    if !host.contains(':') && !valid_host_name(host) {
        return Err(format!(
            "'{shown}': host '{host}' is neither an IP address nor a DNS name (letters, digits, '-' and '.')"
        ));
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return Err(format!("'{shown}': port '{text}' is not a number in 1..=65535")),
        },
    };
    if url.parse::<hyper::Uri>().is_err() {
        return Err(format!("'{shown}' is not a valid URL (RFC 3986)"));
    }
    Ok(UrlParts {
        https,
        host: host.to_string(),
        port,
    })
}

/// A DNS name or an IPv4 address: dot-separated labels of letters, digits, '-' and '_', each
/// 1..=63 bytes, at most 253 in all (a trailing dot allowed).
fn valid_host_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Checks that `address` is `host:port` with a numeric port (an address map's keys and values).
pub fn validate_host_port(address: &str) -> Result<(), String> {
    host_port(address, "address")?;
    if address.contains(['/', '@', '?', '#', ' ']) || is_bare_ipv6(address) {
        return Err(format!(
            "address '{address}' is not host:port; write it like 10.0.0.5:8000 (no scheme, no path)"
        ));
    }
    Ok(())
}

fn host_port(address: &str, field: &str) -> Result<(), String> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "{field} '{address}' is not host:port; write it like 10.0.0.5:6379"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_for_scheme_host_and_port() {
        let parts = |url: &str| parse_url(url, true).map(|p| (p.https, p.host, p.port));
        assert_eq!(
            parts("http://10.0.0.5:8080/health"),
            Ok((false, "10.0.0.5".into(), 8080))
        );
        assert_eq!(
            parts("https://dynamodb.eu-west-1.amazonaws.com"),
            Ok((true, "dynamodb.eu-west-1.amazonaws.com".into(), 443))
        );
        assert_eq!(parts("http://[::1]:53/x?y#z"), Ok((false, "::1".into(), 53)));
        assert_eq!(
            parts("http://user:secret@db.internal/"),
            Ok((false, "db.internal".into(), 80))
        );
        for (url, needle) in [
            ("10.0.0.5:8080", "does not start with"),
            ("http://", "has no host"),
            ("http://:80/", "has no host"),
            ("http://a b/", "spaces"),
            ("http://host:65536/", "port '65536'"),
            ("http://host:0/", "port '0'"),
            ("http://host:+80/", "port '+80'"),
            ("http://[::1/", "closing ']'"),
            ("http://[zz]:1/", "not an IPv6 address"),
            ("http://ho$t/", "neither an IP address nor a DNS name"),
            ("http://a..b/", "neither an IP address nor a DNS name"),
        ] {
            let error = parse_url(url, true).expect_err(url);
            assert!(error.contains(needle), "{url}: {error}");
        }
        assert!(
            parse_url("https://a.example/", false)
                .expect_err("http only")
                .contains("use http://")
        );
        let long = format!("http://a.example/{}", "x".repeat(URL_BYTES_MAX));
        assert!(parse_url(&long, true).expect_err("too long").contains("bound"));
    }

    #[test]
    fn defaults_detect_within_three_seconds_of_probing() {
        let spec = CheckSpec::new("c", "r", ProbeKind::Tcp { address: "a:1".into() });
        assert!(spec.interval_ms + u64::from(spec.fall - 1) * spec.fast_interval_ms <= 3000);
        assert_eq!(spec.detection_bound_ms(), 1000 + 2 * 250 + 3 * 500);
        assert!(
            spec.detection_bound_ms() <= 3000,
            "the issue's target: a dead region seen in 3 s"
        );
    }

    #[test]
    fn toml_with_defaults() {
        let text = r#"
            name = "use1-app"
            region = "us-east-1"
            [kind]
            type = "http"
            url = "http://127.0.0.1:8080/health"
            body_contains = "ok"
        "#;
        let spec: CheckSpec = toml::from_str(text).expect("valid");
        assert_eq!(spec.interval_ms, 1000);
        assert_eq!(spec.fall, 3);
        assert_eq!(
            spec.kind,
            ProbeKind::Http {
                url: "http://127.0.0.1:8080/health".into(),
                method: "GET".into(),
                expect_status: None,
                body_contains: Some("ok".into()),
                headers: BTreeMap::new(),
                ca_file: None,
                tls_verify: true,
            }
        );
        spec.validate().expect("valid");
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let text = "name = \"a\"\nregion = \"r\"\nintervall_ms = 5\n[kind]\ntype = \"tcp\"\naddress = \"a:1\"\n";
        let error = toml::from_str::<CheckSpec>(text).expect_err("typo").to_string();
        assert!(error.contains("intervall_ms"), "{error}");
        let text = "name = \"a\"\nregion = \"r\"\n[kind]\ntype = \"tcp\"\naddress = \"a:1\"\nport = 5\n";
        let error = toml::from_str::<CheckSpec>(text).expect_err("typo").to_string();
        assert!(error.contains("port"), "{error}");
    }

    #[test]
    fn every_kind_round_trips_through_json() {
        let kinds = vec![
            ProbeKind::Dns {
                server: "127.0.0.1:53".into(),
                name: "example.com".into(),
                record_type: "A".into(),
                expect: Some("192.0.2.1".into()),
            },
            ProbeKind::Dynamodb {
                endpoint: "http://127.0.0.1:8000".into(),
                table: "t".into(),
                key: Some(serde_json::json!({"pk": {"S": "x"}})),
                signing_region: None,
                access_key_id: Some("AK".into()),
                secret_access_key: Some("SK".into()),
                lag_sources: vec!["http://127.0.0.1:8001".into()],
                write: true,
                cloudwatch_lag: None,
            },
            ProbeKind::Sql {
                driver: SqlDriver::Postgres,
                address: "127.0.0.1:5432".into(),
                user: "u".into(),
                password: None,
                database: Some("d".into()),
                replica_lag: true,
                max_replica_lag_ms: Some(5000),
            },
            ProbeKind::Redis {
                address: "127.0.0.1:6379".into(),
                username: None,
                password: Some("p".into()),
                replication: true,
                expect_role: Some("master".into()),
                max_replica_lag_ms: None,
            },
        ];
        for kind in kinds {
            let spec = CheckSpec::new("c", "r", kind);
            spec.validate().expect("valid");
            let json = serde_json::to_string(&spec).expect("serialize");
            let back: CheckSpec = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, spec);
        }
    }

    #[test]
    fn validation_names_the_field() {
        let mut spec = CheckSpec::new("c", "r", ProbeKind::Tcp { address: "nope".into() });
        assert!(spec.validate().expect_err("bad").to_string().contains("'nope'"));
        spec.kind = ProbeKind::Tcp { address: "a:1".into() };
        spec.fall = 0;
        assert!(spec.validate().expect_err("bad").to_string().contains("fall = 0"));
        spec.fall = 3;
        spec.fast_interval_ms = 1;
        assert!(
            spec.validate()
                .expect_err("bad")
                .to_string()
                .contains("fast_interval_ms")
        );
    }

    #[test]
    fn expect_status_must_be_a_final_http_status() {
        let with_status = |status: u16| {
            let mut spec = CheckSpec::new("web", "r", http("http://10.0.0.5:8080/health"));
            if let ProbeKind::Http { expect_status, .. } = &mut spec.kind {
                *expect_status = Some(status);
            }
            spec.validate()
        };
        for status in [0, 99, 100, 199, 600, 999] {
            let error = with_status(status).expect_err("never a final status").to_string();
            assert!(
                error.contains(&format!("expect_status = {status}")) && error.contains("200..=599"),
                "{error}"
            );
        }
        for status in [200, 204, 301, 404, 503, 599] {
            with_status(status).expect("a final status");
        }
    }

    fn http_with(url: &str, change: impl FnOnce(&mut ProbeKind)) -> Result<(), SpecError> {
        let mut kind = http(url);
        change(&mut kind);
        CheckSpec::new("web", "r", kind).validate()
    }

    #[test]
    fn body_contains_needs_a_method_with_a_body() {
        let with = |method: &str| {
            http_with("http://10.0.0.5:8080/health", |kind| {
                if let ProbeKind::Http {
                    method: m,
                    body_contains,
                    ..
                } = kind
                {
                    *m = method.into();
                    *body_contains = Some("ok".into());
                }
            })
        };
        let error = with("HEAD").expect_err("HEAD has no body").message;
        // The message starts with the field, which is how `config check` finds its line.
        assert!(error.starts_with("body_contains "), "{error}");
        assert!(error.contains("HEAD") && error.contains("method = \"GET\""), "{error}");
        with("GET").expect("GET has a body");
        with("POST").expect("POST has a body");
        let long = http_with("http://10.0.0.5/", |kind| {
            if let ProbeKind::Http { body_contains, .. } = kind {
                *body_contains = Some("x".repeat(BODY_SEARCH_BYTES + 1));
            }
        });
        assert!(long.expect_err("too long").message.starts_with("body_contains "));
    }

    #[test]
    fn tls_verify_is_for_https_without_a_ca_file() {
        let unverified = |url: &str, ca: Option<&str>| {
            http_with(url, |kind| {
                if let ProbeKind::Http {
                    tls_verify, ca_file, ..
                } = kind
                {
                    *tls_verify = false;
                    *ca_file = ca.map(str::to_string);
                }
            })
        };
        unverified("https://shop.example/health", None).expect("https");
        let error = unverified("http://shop.example/health", None)
            .expect_err("http")
            .message;
        assert!(
            error.starts_with("tls_verify = false") && error.contains("not https://"),
            "{error}"
        );
        let error = unverified("https://shop.example/", Some("ca.pem"))
            .expect_err("both")
            .message;
        assert!(
            error.starts_with("tls_verify = false") && error.contains("ca_file"),
            "{error}"
        );
        // Default on, and left out of the JSON an agent gets unless off.
        let text = "name = \"a\"\nregion = \"r\"\n[kind]\ntype = \"http\"\nurl = \"https://a.example/\"\n";
        let spec: CheckSpec = toml::from_str(text).expect("valid");
        assert!(matches!(spec.kind, ProbeKind::Http { tls_verify: true, .. }));
        assert!(!serde_json::to_string(&spec).expect("json").contains("tls_verify"));
        let spec: CheckSpec = toml::from_str(&format!("{text}tls_verify = false\n")).expect("valid");
        assert!(matches!(spec.kind, ProbeKind::Http { tls_verify: false, .. }));
        let json = serde_json::to_string(&spec).expect("json");
        assert!(json.contains("\"tls_verify\":false"), "{json}");
        assert_eq!(serde_json::from_str::<CheckSpec>(&json).expect("back"), spec);
    }

    #[test]
    fn an_https_host_header_must_name_a_server() {
        let with_host = |url: &str, host: &str| {
            http_with(url, |kind| {
                if let ProbeKind::Http { headers, .. } = kind {
                    headers.insert("host".into(), host.into());
                }
            })
        };
        for good in [
            "shop.example.com",
            "shop.example.com:8443",
            "192.0.2.7",
            "[2001:db8::1]:443",
        ] {
            with_host("https://10.0.0.5/", good).expect(good);
        }
        let error = with_host("https://10.0.0.5/", "shop example")
            .expect_err("space")
            .message;
        assert!(error.starts_with("headers: Host 'shop example'"), "{error}");
        // Plain HTTP sends the header as given.
        with_host("http://10.0.0.5/", "shop example").expect("not a TLS name");
    }

    #[test]
    fn url_user_info_is_never_shown() {
        assert_eq!(
            redact_url("http://probe:secret@127.0.0.1:18810/health"),
            "http://***@127.0.0.1:18810/health"
        );
        assert_eq!(redact_url("https://token@a.example"), "https://***@a.example");
        assert_eq!(redact_url("http://a.example/x@y"), "http://a.example/x@y");
        assert_eq!(redact_url("not a url"), "not a url");
        let error = parse_url("http://probe:secret@host:0/", true).expect_err("port 0");
        assert!(!error.contains("secret") && error.contains("***@host:0"), "{error}");
        let error = http_with("http://probe:secret@10.0.0.5/", |kind| {
            if let ProbeKind::Http { ca_file, .. } = kind {
                *ca_file = Some("ca.pem".into());
            }
        })
        .expect_err("ca_file on http");
        assert!(!error.message.contains("secret"), "{error}");
    }

    #[test]
    fn only_kinds_configured_to_read_lag_read_it() {
        let sql = |replica_lag: bool, max_replica_lag_ms: Option<u64>| ProbeKind::Sql {
            driver: SqlDriver::Mysql,
            address: "10.0.0.6:3306".into(),
            user: "probe".into(),
            password: None,
            database: None,
            replica_lag,
            max_replica_lag_ms,
        };
        let redis = |replication: bool, expect_role: Option<&str>, max_replica_lag_ms: Option<u64>| ProbeKind::Redis {
            address: "10.0.0.7:6379".into(),
            username: None,
            password: None,
            replication,
            expect_role: expect_role.map(str::to_string),
            max_replica_lag_ms,
        };
        let dynamodb = |lag_sources: Vec<String>| ProbeKind::Dynamodb {
            endpoint: "http://10.0.0.8:8000".into(),
            table: "t".into(),
            key: None,
            signing_region: None,
            access_key_id: None,
            secret_access_key: None,
            lag_sources,
            write: false,
            cloudwatch_lag: None,
        };
        assert!(!http("http://10.0.0.5/").reads_replica_lag());
        assert!(!ProbeKind::Tcp { address: "a:1".into() }.reads_replica_lag());
        assert!(!sql(false, None).reads_replica_lag());
        assert!(sql(true, None).reads_replica_lag());
        assert!(sql(false, Some(1000)).reads_replica_lag());
        assert!(!redis(false, None, None).reads_replica_lag());
        assert!(redis(true, None, None).reads_replica_lag());
        assert!(redis(false, Some("slave"), None).reads_replica_lag());
        assert!(redis(false, None, Some(1000)).reads_replica_lag());
        assert!(!dynamodb(Vec::new()).reads_replica_lag());
        assert!(dynamodb(vec!["http://10.1.0.8:8000".into()]).reads_replica_lag());
    }

    fn map(pairs: &[(&str, &str)]) -> AddressMap {
        pairs
            .iter()
            .map(|(from, to)| (from.to_string(), to.to_string()))
            .collect()
    }

    fn mapped(kind: ProbeKind, pairs: &[(&str, &str)]) -> ProbeKind {
        let spec = CheckSpec::new("c", "r", kind);
        let out = spec.with_address_map(&map(pairs));
        assert_eq!((out.name.as_str(), out.region.as_str()), ("c", "r"), "identity is kept");
        out.kind
    }

    fn http(url: &str) -> ProbeKind {
        ProbeKind::Http {
            url: url.into(),
            method: "GET".into(),
            expect_status: None,
            body_contains: None,
            headers: BTreeMap::new(),
            ca_file: None,
            tls_verify: true,
        }
    }

    #[test]
    fn address_map_rewrites_http_authorities() {
        let pairs = [
            ("127.0.0.1:18000", "127.0.0.1:19000"),
            ("shop.example:80", "10.0.0.9:8080"),
        ];
        assert_eq!(
            mapped(http("http://127.0.0.1:18000/health?x=1"), &pairs),
            http("http://127.0.0.1:19000/health?x=1")
        );
        assert_eq!(
            mapped(http("http://127.0.0.1:18000"), &pairs),
            http("http://127.0.0.1:19000")
        );
        // The scheme's default port matches an explicit key.
        assert_eq!(
            mapped(http("http://shop.example/"), &pairs),
            http("http://10.0.0.9:8080/")
        );
        assert_eq!(
            mapped(http("http://user:pw@shop.example/"), &pairs),
            http("http://user:pw@10.0.0.9:8080/")
        );
        // Other ports, hosts and https's default port are left alone.
        for url in [
            "http://127.0.0.1:18001/",
            "https://shop.example/",
            "http://127.0.0.10:18000/",
        ] {
            assert_eq!(mapped(http(url), &pairs), http(url));
        }
        assert_eq!(
            mapped(http("https://[::1]:8443/h"), &[("[::1]:8443", "[::1]:9443")]),
            http("https://[::1]:9443/h")
        );
    }

    #[test]
    fn address_map_rewrites_dynamodb_endpoint_and_lag_sources() {
        let kind = |endpoint: &str, sources: &[&str]| ProbeKind::Dynamodb {
            endpoint: endpoint.into(),
            table: "t".into(),
            key: None,
            signing_region: None,
            access_key_id: None,
            secret_access_key: None,
            lag_sources: sources.iter().map(|s| s.to_string()).collect(),
            write: false,
            cloudwatch_lag: None,
        };
        let pairs = [
            ("127.0.0.1:18000", "127.0.0.1:19000"),
            ("127.0.0.1:28000", "127.0.0.1:29000"),
        ];
        assert_eq!(
            mapped(
                kind(
                    "http://127.0.0.1:18000",
                    &["http://127.0.0.1:28000", "http://127.0.0.1:38000"]
                ),
                &pairs
            ),
            kind(
                "http://127.0.0.1:19000",
                &["http://127.0.0.1:29000", "http://127.0.0.1:38000"]
            )
        );
    }

    #[test]
    fn address_map_rewrites_tcp_sql_redis_and_dns_addresses() {
        let pairs = [
            ("db.internal:3306", "203.0.113.7:13306"),
            ("127.0.0.1:6379", "127.0.0.1:16379"),
            ("127.0.0.1:53", "127.0.0.1:5353"),
            ("127.0.0.1:7000", "127.0.0.1:17000"),
        ];
        let tcp = |a: &str| ProbeKind::Tcp { address: a.into() };
        assert_eq!(mapped(tcp("127.0.0.1:7000"), &pairs), tcp("127.0.0.1:17000"));
        assert_eq!(mapped(tcp("127.0.0.1:7001"), &pairs), tcp("127.0.0.1:7001"));
        let sql = |a: &str| ProbeKind::Sql {
            driver: SqlDriver::Mysql,
            address: a.into(),
            user: "u".into(),
            password: None,
            database: None,
            replica_lag: true,
            max_replica_lag_ms: None,
        };
        assert_eq!(mapped(sql("db.internal:3306"), &pairs), sql("203.0.113.7:13306"));
        let redis = |a: &str| ProbeKind::Redis {
            address: a.into(),
            username: None,
            password: None,
            replication: false,
            expect_role: None,
            max_replica_lag_ms: None,
        };
        assert_eq!(mapped(redis("127.0.0.1:6379"), &pairs), redis("127.0.0.1:16379"));
        let dns = |s: &str| ProbeKind::Dns {
            server: s.into(),
            name: "shop.example".into(),
            record_type: "A".into(),
            expect: None,
        };
        // A server without a port is port 53.
        assert_eq!(mapped(dns("127.0.0.1"), &pairs), dns("127.0.0.1:5353"));
        assert_eq!(mapped(dns("127.0.0.1:53"), &pairs), dns("127.0.0.1:5353"));
        assert_eq!(mapped(dns("127.0.0.2"), &pairs), dns("127.0.0.2"));
        // An empty map changes nothing.
        assert_eq!(mapped(dns("127.0.0.1"), &[]), dns("127.0.0.1"));
    }

    #[test]
    fn host_port_validation_for_address_maps() {
        for good in ["127.0.0.1:18000", "db.internal:3306", "[::1]:53"] {
            validate_host_port(good).expect(good);
        }
        for bad in [
            "127.0.0.1",
            "http://127.0.0.1:80",
            "a:port",
            ":80",
            "::1",
            "a:80/x",
            "a:99999",
        ] {
            let error = validate_host_port(bad).expect_err(bad);
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn cloudwatch_lag_is_validated() {
        let lag = |receiving: &str, sources: &[&str]| CloudwatchLag {
            receiving_region: receiving.into(),
            source_regions: sources.iter().map(|s| s.to_string()).collect(),
            table: None,
            window_s: None,
            profile: None,
            endpoint_url: None,
        };
        assert!(lag("eu-west-1", &["us-east-1"]).validate().is_ok());
        assert!(lag("eu", &["us-east-1"]).validate().is_err(), "not an AWS region");
        assert!(lag("eu-west-1", &[]).validate().is_err(), "no source");
        assert!(lag("eu-west-1", &["eu-west-1"]).validate().is_err(), "itself");
        let mut short = lag("eu-west-1", &["us-east-1"]);
        short.window_s = Some(10);
        assert!(short.validate().expect_err("window").contains("window_s"));
    }

    #[test]
    fn lag_sources_are_validated() {
        let mut kind = ProbeKind::Dynamodb {
            endpoint: "http://127.0.0.1:8000".into(),
            table: "t".into(),
            key: None,
            signing_region: None,
            access_key_id: None,
            secret_access_key: None,
            lag_sources: vec!["127.0.0.1:8001".into()],
            write: false,
            cloudwatch_lag: None,
        };
        let error = CheckSpec::new("c", "r", kind.clone())
            .validate()
            .expect_err("no scheme");
        assert!(error.to_string().contains("'127.0.0.1:8001'"), "{error}");
        if let ProbeKind::Dynamodb { lag_sources, .. } = &mut kind {
            *lag_sources = vec!["http://127.0.0.1:8001".into(); LAG_SOURCES_MAX + 1];
        }
        let error = CheckSpec::new("c", "r", kind).validate().expect_err("too many");
        assert!(error.to_string().contains("lag_sources"), "{error}");
    }
}
