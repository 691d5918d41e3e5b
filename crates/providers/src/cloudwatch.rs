//! The replication lag of an AWS DynamoDB global table, from CloudWatch: the `dynamodb` check
//! with `cloudwatch_lag` (and so the failback guard) reads it through [`LagReader`], which the
//! binary installs into the health crate's probes.
//!
//! DynamoDB publishes, in each replica's region, `ReplicationLatency` (milliseconds) and, for
//! tables of version 2017.11.29, `PendingReplicationCount` per receiving region (namespace
//! `AWS/DynamoDB`, dimensions `TableName` and `ReceivingRegion`). One `GetMetricData` asks for
//! the maximum of both per minute over the window; the lag is the newest latency datapoint,
//! raised to at least 1 ms while the newest pending count is above 0 (pending changes are
//! never a lag of 0). No datapoint in the window means no reading: DynamoDB publishes the
//! metrics only while it replicates, so an idle table reads unknown (a `write = true` check on
//! a global `__switchyard_health` table keeps it replicating).

use crate::aws::Access;

/// Seconds per datapoint asked for (DynamoDB publishes these metrics once a minute).
pub const PERIOD_S: i32 = 60;
/// Cached clients (one per source region, profile and endpoint).
pub const CLIENTS_MAX: usize = 64;
/// Datapoints asked for at most per metric.
pub const DATAPOINTS_MAX: i32 = 100;

/// The lag from the newest datapoints (pure): `latency` and `pending` are (timestamp in
/// seconds, value) pairs in any order.
pub fn lag_from_datapoints(latency: &[(i64, f64)], pending: &[(i64, f64)]) -> Result<u64, String> {
    let newest = |points: &[(i64, f64)]| {
        points
            .iter()
            .filter(|(_, v)| v.is_finite() && *v >= 0.0)
            .max_by_key(|(t, _)| *t)
            .map(|(_, v)| *v)
    };
    let pending_now = newest(pending).is_some_and(|count| count > 0.0);
    match newest(latency) {
        Some(ms) => {
            let lag = ms.ceil().min(u64::MAX as f64) as u64;
            Ok(if pending_now { lag.max(1) } else { lag })
        }
        None if pending_now => Err("PendingReplicationCount is above 0 but ReplicationLatency has no datapoint".into()),
        None => Err("no ReplicationLatency datapoint in the window (the table may be idle)".into()),
    }
}

/// Reads the lag with one client per (region, profile, endpoint), kept for reuse.
#[derive(Default)]
pub struct LagReader {
    #[cfg(feature = "aws")]
    clients: tokio::sync::Mutex<
        std::collections::BTreeMap<(String, Option<String>, Option<String>), aws_sdk_cloudwatch::Client>,
    >,
    credentials: Option<crate::aws::StaticCredentials>,
}

impl LagReader {
    pub fn new() -> LagReader {
        LagReader::default()
    }

    pub fn with_static_credentials(mut self, credentials: crate::aws::StaticCredentials) -> LagReader {
        self.credentials = Some(credentials);
        self
    }

    /// The lag into `receiving_region` of `table`, from `access.region`'s CloudWatch, looking
    /// back `window_s` seconds from `now_s` (Unix seconds). Errors carry AWS's text.
    pub async fn replication_lag(
        &self,
        access: &Access,
        table: &str,
        receiving_region: &str,
        window_s: u64,
        now_s: i64,
    ) -> Result<u64, String> {
        #[cfg(feature = "aws")]
        {
            self.read(access, (table, receiving_region), (window_s, now_s)).await
        }
        #[cfg(not(feature = "aws"))]
        {
            let _ = (access, table, receiving_region, window_s, now_s);
            Err(crate::aws::NOT_BUILT.into())
        }
    }

    #[cfg(feature = "aws")]
    async fn client(&self, access: &Access) -> aws_sdk_cloudwatch::Client {
        let key = (
            access.region.clone(),
            access.profile.clone(),
            access.endpoint_url.clone(),
        );
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let client = aws_sdk_cloudwatch::Client::new(&access.sdk_config(self.credentials.as_ref()).await);
        if clients.len() >= CLIENTS_MAX {
            clients.clear();
        }
        clients.insert(key, client.clone());
        client
    }

    /// [`Self::replication_lag`] of `(table, receiving_region)` over `(window_s, now_s)`.
    #[cfg(feature = "aws")]
    async fn read(
        &self,
        access: &Access,
        (table, receiving_region): (&str, &str),
        (window_s, now_s): (u64, i64),
    ) -> Result<u64, String> {
        use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
        use aws_smithy_types::DateTime;

        let query = |id: &str, metric: &str| {
            MetricDataQuery::builder()
                .id(id)
                .return_data(true)
                .metric_stat(
                    MetricStat::builder()
                        .metric(
                            Metric::builder()
                                .namespace("AWS/DynamoDB")
                                .metric_name(metric)
                                .dimensions(Dimension::builder().name("TableName").value(table).build())
                                .dimensions(
                                    Dimension::builder()
                                        .name("ReceivingRegion")
                                        .value(receiving_region)
                                        .build(),
                                )
                                .build(),
                        )
                        .period(PERIOD_S)
                        .stat("Maximum")
                        .build(),
                )
                .build()
        };
        let window = i64::try_from(window_s).unwrap_or(i64::MAX);
        let answer = self
            .client(access)
            .await
            .get_metric_data()
            .metric_data_queries(query("latency", "ReplicationLatency"))
            .metric_data_queries(query("pending", "PendingReplicationCount"))
            .start_time(DateTime::from_secs(now_s.saturating_sub(window)))
            .end_time(DateTime::from_secs(now_s.saturating_add(i64::from(PERIOD_S))))
            .max_datapoints(DATAPOINTS_MAX)
            .send()
            .await
            .map_err(|e| {
                crate::aws::failure(&format!("CloudWatch GetMetricData in {}", access.region), &e).to_string()
            })?;
        let points = |id: &str| -> Vec<(i64, f64)> {
            answer
                .metric_data_results()
                .iter()
                .filter(|r| r.id() == Some(id))
                .flat_map(|r| r.timestamps().iter().map(|t| t.secs()).zip(r.values().iter().copied()))
                .collect()
        };
        lag_from_datapoints(&points("latency"), &points("pending"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_datapoint_counts_and_pending_is_never_zero() {
        assert_eq!(lag_from_datapoints(&[(60, 900.0), (120, 350.2)], &[]), Ok(351));
        assert_eq!(lag_from_datapoints(&[(120, 0.0)], &[(120, 3.0)]), Ok(1));
        assert_eq!(lag_from_datapoints(&[(120, 0.0)], &[(60, 3.0), (120, 0.0)]), Ok(0));
        assert!(
            lag_from_datapoints(&[], &[])
                .expect_err("idle")
                .contains("no ReplicationLatency")
        );
        assert!(lag_from_datapoints(&[], &[(1, 2.0)]).is_err());
        assert!(lag_from_datapoints(&[(1, f64::NAN)], &[]).is_err());
    }
}
