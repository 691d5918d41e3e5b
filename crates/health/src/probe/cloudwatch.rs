//! The replication lag of an AWS DynamoDB global table, read from CloudWatch
//! (`spec::CloudwatchLag`). The reading itself needs the AWS SDK, which lives in the
//! `providers` crate; the binary installs it here once at start ([`install_reader`]) so this
//! crate stays free of the SDK. Without an installed reader the lag is unknown and the probe's
//! detail says why.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use crate::spec::{CLOUDWATCH_WINDOW_S_DEFAULT, CloudwatchLag};

use super::Finding;
use super::dynamodb::{LagReading, summarize};

/// One source region's question: the latest replication lag into `receiving_region`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LagQuery {
    /// The region whose CloudWatch holds the metrics (the replica that sends).
    pub source_region: String,
    pub receiving_region: String,
    pub table: String,
    pub window_s: u64,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
}

pub type LagFuture = Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

/// Reads `ReplicationLatency` / `PendingReplicationCount`; implemented in `providers`.
pub trait CloudwatchReader: Send + Sync {
    /// The lag in milliseconds (at least 1 while changes are pending), or why there is none.
    fn replication_lag(&self, query: LagQuery) -> LagFuture;
}

static READER: OnceLock<Arc<dyn CloudwatchReader>> = OnceLock::new();

/// Installs the process's CloudWatch reader; false when one was installed already.
pub fn install_reader(reader: Arc<dyn CloudwatchReader>) -> bool {
    READER.set(reader).is_ok()
}

/// Adds to a successful finding the lag into `region`'s replica, read from every source
/// region's CloudWatch by `deadline`.
pub(super) async fn read_inbound_lag(
    finding: Finding,
    lag: &CloudwatchLag,
    table: &str,
    region: &str,
    deadline: tokio::time::Instant,
) -> Finding {
    let labels: Vec<String> = lag.source_regions.iter().map(|s| format!("cloudwatch {s}")).collect();
    let Some(reader) = READER.get().cloned() else {
        return Finding {
            detail: format!(
                "{}; replication lag into {region} unknown: this switchyard reads CloudWatch only when built with the aws feature",
                finding.detail
            ),
            ..finding
        }
        .with_lag(None);
    };
    let mut reads = tokio::task::JoinSet::new();
    for (index, source) in lag.source_regions.iter().enumerate() {
        let query = LagQuery {
            source_region: source.clone(),
            receiving_region: lag.receiving_region.clone(),
            table: lag.table.clone().unwrap_or_else(|| table.to_string()),
            window_s: lag.window_s.unwrap_or(CLOUDWATCH_WINDOW_S_DEFAULT),
            profile: lag.profile.clone(),
            endpoint_url: lag.endpoint_url.clone(),
        };
        let read = reader.replication_lag(query);
        reads.spawn(async move {
            let reading = match tokio::time::timeout_at(deadline, read).await {
                Ok(reading) => reading,
                Err(_) => Err("no answer within the probe's lag budget".to_string()),
            };
            (index, reading)
        });
    }
    let mut readings: Vec<Option<LagReading>> = vec![None; labels.len()];
    while let Some(joined) = reads.join_next().await {
        if let Ok((index, reading)) = joined {
            readings[index] = Some(reading);
        }
    }
    let readings: Vec<LagReading> = readings
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("lag read did not finish".into())))
        .collect();
    let (lag_ms, note) = summarize(&labels, region, &readings);
    Finding {
        detail: format!("{}; {note}", finding.detail),
        ..finding
    }
    .with_lag(lag_ms)
}
