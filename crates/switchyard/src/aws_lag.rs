//! Hands the health probes (the controller's and the agents') the CloudWatch reader of the
//! `providers` crate, for `dynamodb` checks with `cloudwatch_lag` (AWS DynamoDB global tables).

use std::sync::Arc;

use health::probe::cloudwatch::{CloudwatchReader, LagFuture, LagQuery};
use providers::cloudwatch::LagReader;

struct Reader(Arc<LagReader>);

impl CloudwatchReader for Reader {
    fn replication_lag(&self, query: LagQuery) -> LagFuture {
        let reader = self.0.clone();
        Box::pin(async move {
            let access = providers::aws::Access {
                region: query.source_region,
                profile: query.profile,
                endpoint_url: query.endpoint_url,
                credentials_file: None,
            };
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            reader
                .replication_lag(&access, &query.table, &query.receiving_region, query.window_s, now_s)
                .await
        })
    }
}

/// Installs the reader once for the process.
pub(crate) fn install() {
    health::probe::cloudwatch::install_reader(Arc::new(Reader(Arc::new(LagReader::new()))));
}
