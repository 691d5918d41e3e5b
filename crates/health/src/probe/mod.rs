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

/// Bytes a SQL probe reads at most from its server over one probe — login and every result
/// together (1 MiB): a server that sends more fails the probe, so 64 probes in flight hold at
/// most 64 MiB of replies, not 64 × 1024 messages × [`REPLY_BYTES_MAX`].
pub const SQL_PROBE_BYTES_MAX: usize = 1024 * 1024;

/// Characters of one piece of server-supplied text (a version, an error message, a role, a
/// value) a probe puts in its detail; longer text is cut with `…`.
pub const SHOWN_CHARS_MAX: usize = 120;

/// Rows of an unexpected SQL result a detail shows; the rest are counted, not shown.
pub const SHOWN_ROWS_MAX: usize = 3;

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
            detail: format!("{}; max_replica_lag_ms = {max} needs a known lag", finding.detail),
            replica_lag_ms: None,
            position: finding.position,
        },
    }
}

/// `text` cut to at most `max_chars` characters, the cut marked with `…` (which counts).
pub(crate) fn cut(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut shown: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    shown.push('…');
    shown
}

/// Server-supplied text for a detail: cut at [`SHOWN_CHARS_MAX`] characters.
pub(crate) fn shown(text: &str) -> String {
    cut(text, SHOWN_CHARS_MAX)
}

/// SQL rows for a detail: at most [`SHOWN_ROWS_MAX`] rows, each cut at [`SHOWN_CHARS_MAX`]
/// characters (a value at a quarter of that), and how many more there are.
pub(crate) fn shown_rows(rows: &[Vec<Option<String>>]) -> String {
    let mut parts: Vec<String> = rows
        .iter()
        .take(SHOWN_ROWS_MAX)
        .map(|row| {
            let values: Vec<String> = row
                .iter()
                .map(|value| match value {
                    Some(value) => format!("'{}'", cut(value, SHOWN_CHARS_MAX / 4)),
                    None => "NULL".to_string(),
                })
                .collect();
            shown(&format!("({})", values.join(", ")))
        })
        .collect();
    if rows.len() > SHOWN_ROWS_MAX {
        parts.push(format!("… {} more", rows.len() - SHOWN_ROWS_MAX));
    }
    match rows.len() {
        0 => "no rows".to_string(),
        1 => format!("1 row {}", parts.join(" ")),
        n => format!("{n} rows {}", parts.join(" ")),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_short_text_and_marks_the_cut() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
        assert_eq!(cut("ééééé", 4), "ééé…");
        assert_eq!(cut("", 0), "");
        let long = "x".repeat(REPLY_BYTES_MAX);
        let shown = shown(&long);
        assert_eq!(shown.chars().count(), SHOWN_CHARS_MAX);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn shown_rows_shows_a_few_short_rows_and_counts_the_rest() {
        assert_eq!(shown_rows(&[]), "no rows");
        assert_eq!(shown_rows(&[vec![Some("2".into()), None]]), "1 row ('2', NULL)");
        let wide: Vec<Option<String>> = (0..1000).map(|_| Some("v".repeat(10_000))).collect();
        let rows = vec![wide; 1000];
        let text = shown_rows(&rows);
        assert!(text.starts_with("1000 rows ("), "{text}");
        assert!(text.ends_with("… 997 more"), "{text}");
        assert!(
            text.chars().count() <= SHOWN_ROWS_MAX * (SHOWN_CHARS_MAX + 1) + 30,
            "{} characters",
            text.chars().count()
        );
    }

    #[test]
    fn an_unknown_lag_fails_a_bound_and_says_why() {
        let unknown = judge_lag(
            Finding::up("PONG, role slave, master link down, lag unknown"),
            Some(1000),
        );
        assert!(!unknown.success);
        assert!(
            unknown.detail.ends_with("max_replica_lag_ms = 1000 needs a known lag"),
            "{}",
            unknown.detail
        );
        let fine = judge_lag(Finding::up("x").with_lag(Some(1000)), Some(1000));
        assert!(fine.success);
        let above = judge_lag(Finding::up("x").with_lag(Some(1001)), Some(1000));
        assert!(!above.success);
        assert!(judge_lag(Finding::up("x"), None).success);
    }
}
