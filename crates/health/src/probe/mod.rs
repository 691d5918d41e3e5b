//! Probes: one async function per `ProbeKind`, each run under the check's timeout. A probe
//! opens its own connection every time (no pooling), as HAProxy's checks do, so a server that
//! stopped accepting connections is seen at once.

pub mod cloudwatch;
mod dns;
mod dynamodb;
mod http;
mod mysql;
mod postgres;
mod redis;
mod tls;
mod wire;

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::report::ReplicationPosition;
use crate::spec::{CheckSpec, ProbeKind, SqlDriver};

pub use dynamodb::HEARTBEAT_TABLE;
pub use http::BODY_BYTES_MAX;

/// Bytes of a server reply a probe reads at most (Redis INFO, SQL rows, DNS answers).
pub const REPLY_BYTES_MAX: usize = 256 * 1024;

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub success: bool,
    /// What happened, in words: `HTTP 200`, `connect: Connection refused`, `timed out after 800 ms`.
    pub detail: String,
    /// How long the probe took, when it finished before its timeout.
    pub latency_ms: Option<u64>,
    /// Replication lag read by SQL and Redis probes that ask for it, and by DynamoDB probes
    /// with `lag_sources` (the lag into the check's region).
    pub replica_lag_ms: Option<u64>,
    /// The replication position SQL and Redis probes read with their lag.
    pub position: Option<ReplicationPosition>,
}

/// What a probe found when it completed: success or a reason, and a lag if it read one.
pub(crate) struct Finding {
    pub(crate) success: bool,
    pub(crate) detail: String,
    pub(crate) replica_lag_ms: Option<u64>,
    pub(crate) position: Option<ReplicationPosition>,
}

impl Finding {
    pub(crate) fn up(detail: impl Into<String>) -> Finding {
        Finding {
            success: true,
            detail: detail.into(),
            replica_lag_ms: None,
            position: None,
        }
    }
    pub(crate) fn down(detail: impl Into<String>) -> Finding {
        Finding {
            success: false,
            detail: detail.into(),
            replica_lag_ms: None,
            position: None,
        }
    }
    pub(crate) fn with_lag(mut self, lag_ms: Option<u64>) -> Finding {
        self.replica_lag_ms = lag_ms;
        self
    }
    pub(crate) fn with_position(mut self, position: Option<ReplicationPosition>) -> Finding {
        self.position = position;
        self
    }
}

/// Runs the check's probe once, cut at `timeout_ms`.
pub async fn probe(spec: &CheckSpec) -> ProbeOutcome {
    let started = Instant::now();
    let timeout = Duration::from_millis(spec.timeout_ms);
    match tokio::time::timeout(timeout, run(spec, started)).await {
        Ok(finding) => ProbeOutcome {
            success: finding.success,
            detail: finding.detail,
            latency_ms: Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
            replica_lag_ms: finding.replica_lag_ms,
            position: finding.position,
        },
        Err(_) => ProbeOutcome {
            success: false,
            detail: format!("timed out after {} ms", spec.timeout_ms),
            latency_ms: None,
            replica_lag_ms: None,
            position: None,
        },
    }
}

/// Share of a DynamoDB probe's `timeout_ms`, from its start, after which `lag_sources` that
/// have not answered count as unknown.
pub const LAG_BUDGET_PERCENT: u64 = 80;

async fn run(spec: &CheckSpec, started: Instant) -> Finding {
    match &spec.kind {
        ProbeKind::Http {
            url,
            method,
            expect_status,
            body_contains,
            headers,
            ca_file,
        } => {
            http::probe(
                url,
                method,
                *expect_status,
                body_contains.as_deref(),
                headers,
                ca_file.as_deref(),
            )
            .await
        }
        ProbeKind::Tcp { address } => match connect(address).await {
            Ok(_) => Finding::up(format!("connected to {address}")),
            Err(error) => Finding::down(error),
        },
        ProbeKind::Dns {
            server,
            name,
            record_type,
            expect,
        } => dns::probe(server, name, record_type, expect.as_deref()).await,
        ProbeKind::Dynamodb {
            endpoint,
            table,
            key,
            signing_region,
            access_key_id,
            secret_access_key,
            lag_sources,
            write,
            cloudwatch_lag,
        } => {
            let credentials = access_key_id.as_deref().zip(secret_access_key.as_deref());
            let region = signing_region.as_deref().unwrap_or(&spec.region);
            let finding = dynamodb::probe(endpoint, table, key.as_ref(), region, credentials, *write).await;
            if !finding.success || !spec.kind.reads_replica_lag() {
                return finding;
            }
            // The lag reads share what is left of the probe's timeout with a margin, so a slow
            // source costs the reading, never the probe's own verdict.
            let budget_ms = spec.timeout_ms.saturating_mul(LAG_BUDGET_PERCENT) / 100;
            let deadline = started + Duration::from_millis(budget_ms);
            match cloudwatch_lag {
                Some(lag) => cloudwatch::read_inbound_lag(finding, lag, table, &spec.region, deadline).await,
                None => dynamodb::read_inbound_lag(finding, lag_sources, &spec.region, deadline).await,
            }
        }
        ProbeKind::Sql {
            driver,
            address,
            user,
            password,
            database,
            max_replica_lag_ms,
            ..
        } => {
            let login = SqlLogin {
                address,
                user,
                password: password.as_deref().unwrap_or(""),
                database: database.as_deref(),
            };
            let read_lag = spec.kind.reads_replica_lag();
            let finding = match driver {
                SqlDriver::Mysql => mysql::probe(&login, read_lag).await,
                SqlDriver::Postgres => postgres::probe(&login, read_lag).await,
            };
            judge_lag(finding, *max_replica_lag_ms)
        }
        ProbeKind::Redis {
            address,
            username,
            password,
            expect_role,
            max_replica_lag_ms,
            ..
        } => {
            let options = redis::Options {
                username: username.as_deref(),
                password: password.as_deref(),
                replication: spec.kind.reads_replica_lag(),
                expect_role: expect_role.as_deref(),
            };
            judge_lag(redis::probe(address, &options).await, *max_replica_lag_ms)
        }
    }
}

/// How a SQL probe logs in.
pub(crate) struct SqlLogin<'a> {
    pub(crate) address: &'a str,
    pub(crate) user: &'a str,
    pub(crate) password: &'a str,
    pub(crate) database: Option<&'a str>,
}

/// With a lag bound, a successful probe fails when the lag is above it or unknown.
fn judge_lag(finding: Finding, max_replica_lag_ms: Option<u64>) -> Finding {
    let Some(max) = max_replica_lag_ms else {
        return finding;
    };
    if !finding.success {
        return finding;
    }
    match finding.replica_lag_ms {
        Some(lag) if lag <= max => finding,
        Some(lag) => Finding {
            success: false,
            detail: format!("{}; replica lag {lag} ms is above {max} ms", finding.detail),
            replica_lag_ms: Some(lag),
            position: finding.position,
        },
        None => Finding {
            success: false,
            detail: format!("{}; replica lag unknown (not replicating?)", finding.detail),
            replica_lag_ms: None,
            position: finding.position,
        },
    }
}

/// Connects over TCP; the error names the address.
pub(crate) async fn connect(address: &str) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|error| format!("connect {address}: {error}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A random 64-bit value from the standard library's OS-seeded hasher keys (query ids, nonces).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}
