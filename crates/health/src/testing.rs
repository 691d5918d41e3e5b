//! Test support (feature `testing`): check results as the quorum's and the controller's tests
//! feed them in.

use crate::report::{CheckResult, CheckStatus};

/// `check` of `region` in `status` since 0, its detail the status' name, its probe 1 ms long.
pub fn check_result(check: &str, region: &str, status: CheckStatus) -> CheckResult {
    CheckResult {
        check: check.into(),
        region: region.into(),
        status,
        since_ms: 0,
        detail: format!("{status:?}"),
        latency_ms: Some(1),
        replica_lag_ms: None,
        position: None,
    }
}
