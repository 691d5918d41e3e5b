//! The databases of a `switchyard lab --databases` deployment, as a drill sees them: the
//! controller's audit records, which server is the primary after convergence and which of the
//! shop's acknowledged orders (sessions) it holds, and the `db-lag` fault (a standby whose
//! applier runs `MASTER_DELAY` behind). Every call is bounded by the constants below.

use std::collections::BTreeSet;
use std::time::Duration;

use common::deadline::bounded;
use mysql_async::prelude::Queryable;
use serde_json::Value;

use super::deployment::{DatabaseAccounts, Deployment};
use super::http::HttpClient;
use crate::databases::{Acked, DatabaseFigures, DatabaseReport, DbExpectation};

/// Longest wait for a database connection and login.
pub const DB_CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Longest wait for one statement or command.
pub const DB_QUERY_TIMEOUT_MS: u64 = 5_000;
/// How long the drill waits after the workload for a writable primary to check against.
pub const DB_CONVERGE_WAIT_MS: u64 = 30_000;
pub const DB_CONVERGE_POLL_MS: u64 = 500;
/// Audit records read from the controller (its `/v1/events` maximum).
pub const AUDIT_RECORDS_MAX: usize = 1_000;
pub const AUDIT_TIMEOUT_MS: u64 = 5_000;
/// Acknowledged writes checked at most per database (a drill's workload stays far below).
pub const ACKED_CHECKED_MAX: usize = 100_000;
/// The `db-lag` drill's `MASTER_DELAY` on the standby: far beyond the lab's
/// `promote_lag_max_ms`, and beyond the time from the fault to the promotion attempt.
pub const DB_LAG_DELAY_S: u64 = 60;

async fn mariadb(address: &str, accounts: &DatabaseAccounts) -> Result<mysql_async::Conn, String> {
    let (host, port) = common::db::split_address(address)?;
    let target = common::db::SqlTarget {
        host,
        port,
        user: accounts.mariadb_user.clone(),
        password: accounts.mariadb_password.clone(),
        database: None,
    };
    target
        .connect(&format!("MariaDB {address}"), DB_CONNECT_TIMEOUT_MS)
        .await
}

async fn redis_conn(address: &str, accounts: &DatabaseAccounts) -> Result<redis::aio::MultiplexedConnection, String> {
    let (host, port) = common::db::split_address(address)?;
    let target = common::db::RedisTarget {
        host,
        port,
        user: Some(accounts.redis_user.clone()),
        password: Some(accounts.redis_password.clone()),
    };
    target
        .connect(&format!("Redis {address}"), DB_CONNECT_TIMEOUT_MS, DB_QUERY_TIMEOUT_MS)
        .await
}

/// The controller's recent audit records (`GET /v1/events`).
pub async fn audit(http: &HttpClient, controller_url: &str) -> Result<Vec<Value>, String> {
    let url = format!(
        "{}/v1/events?limit={AUDIT_RECORDS_MAX}",
        controller_url.trim_end_matches('/')
    );
    let response = http
        .send("GET", &url, &[], None, AUDIT_TIMEOUT_MS)
        .await
        .map_err(|e| format!("read the controller's audit records: {e}"))?;
    response
        .json()
        .and_then(|v| v["events"].as_array().cloned())
        .ok_or_else(|| {
            format!(
                "the controller's /v1/events answered {} without events",
                response.status
            )
        })
}

/// The region whose MariaDB is writable (read_only off), with its address.
async fn mariadb_primary(deployment: &Deployment, accounts: &DatabaseAccounts) -> Result<(String, String), String> {
    let mut seen = Vec::new();
    for region in &deployment.databases {
        let Some(address) = &region.mariadb else { continue };
        let state = async {
            let conn = mariadb(address, accounts).await?;
            common::db::mysql_writable(conn, DB_QUERY_TIMEOUT_MS).await
        };
        match state.await {
            Ok(true) => return Ok((region.region.clone(), address.clone())),
            Ok(false) => seen.push(format!("{} read-only", region.region)),
            Err(error) => seen.push(error),
        }
    }
    Err(format!("no writable MariaDB: {}", seen.join("; ")))
}

/// The Redis master with the newest promotion record (`switchyard:promotion`, the
/// generation first): a restarted old master is a master too, with an older record.
async fn redis_primary(deployment: &Deployment, accounts: &DatabaseAccounts) -> Result<(String, String), String> {
    let mut seen = Vec::new();
    let mut best: Option<(u64, String, String)> = None;
    for region in &deployment.databases {
        let Some(address) = &region.redis else { continue };
        let role = async {
            let mut conn = redis_conn(address, accounts).await?;
            let master = common::db::redis_is_master(&mut conn, DB_QUERY_TIMEOUT_MS).await?;
            let mut get = redis::cmd("GET");
            get.arg("switchyard:promotion");
            let record = bounded(
                "GET switchyard:promotion",
                DB_QUERY_TIMEOUT_MS,
                get.query_async::<Option<String>>(&mut conn),
            )
            .await?;
            let generation = record
                .as_deref()
                .and_then(|r| r.split_whitespace().next())
                .and_then(|g| g.parse::<u64>().ok())
                .unwrap_or(0);
            Ok::<_, String>((master, generation))
        };
        match role.await {
            Ok((true, generation)) => {
                if best.as_ref().is_none_or(|(g, _, _)| generation > *g) {
                    best = Some((generation, region.region.clone(), address.clone()));
                }
            }
            Ok((false, _)) => seen.push(format!("{} is a replica", region.region)),
            Err(error) => seen.push(error),
        }
    }
    best.map(|(_, region, address)| (region, address))
        .ok_or_else(|| format!("no Redis master: {}", seen.join("; ")))
}

/// Waits (bounded) for a primary, then reads which of `keys` it holds.
async fn present_on_mariadb(
    deployment: &Deployment,
    accounts: &DatabaseAccounts,
    prefix: &str,
) -> Result<(String, BTreeSet<String>), String> {
    let (_, address) = wait_for(|| mariadb_primary(deployment, accounts)).await?;
    let mut conn = mariadb(&address, accounts).await?;
    let rows = bounded(
        "read the orders",
        DB_QUERY_TIMEOUT_MS,
        conn.exec::<String, _, _>(
            format!("SELECT quote_ref FROM shop.sales_order WHERE quote_ref LIKE ? LIMIT {ACKED_CHECKED_MAX}"),
            (format!("k-{prefix}%"),),
        ),
    )
    .await?;
    let _ = conn.disconnect().await;
    Ok((address, rows.into_iter().collect()))
}

async fn present_on_redis(
    deployment: &Deployment,
    accounts: &DatabaseAccounts,
    acked: &[Acked],
) -> Result<(String, BTreeSet<String>), String> {
    let (_, address) = wait_for(|| redis_primary(deployment, accounts)).await?;
    let mut conn = redis_conn(&address, accounts).await?;
    let mut present = BTreeSet::new();
    for write in acked.iter().take(ACKED_CHECKED_MAX) {
        let mut command = redis::cmd("EXISTS");
        command.arg(format!("session:{}", write.key));
        let exists = bounded("EXISTS", DB_QUERY_TIMEOUT_MS, command.query_async::<u64>(&mut conn)).await?;
        if exists > 0 {
            present.insert(write.key.clone());
        }
    }
    Ok((address, present))
}

async fn wait_for<T, F, Fut>(probe: F) -> Result<T, String>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DB_CONVERGE_WAIT_MS);
    loop {
        match probe().await {
            Ok(value) => return Ok(value),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("{error} (after {DB_CONVERGE_WAIT_MS} ms)"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(DB_CONVERGE_POLL_MS)).await,
        }
    }
}

/// The shop's acknowledged writes, gathered by the shop clients.
#[derive(Debug, Default)]
pub struct AckedWrites {
    pub orders: Vec<Acked>,
    pub sessions: Vec<Acked>,
}

/// The database part of the report; `None` when the deployment has no databases.
pub async fn report(
    http: &HttpClient,
    deployment: &Deployment,
    expectation: DbExpectation,
    primary_region: &str,
    fault_wall_ms: u64,
    prefix: &str,
    acked: &AckedWrites,
) -> Option<DatabaseReport> {
    let accounts = deployment.database_accounts.as_ref()?;
    let audit = match &deployment.controller_url {
        Some(url) => audit(http, url).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "no audit records for the database report");
            Vec::new()
        }),
        None => Vec::new(),
    };
    let mut databases: Vec<DatabaseFigures> = Vec::new();
    if deployment.databases.iter().any(|d| d.mariadb.is_some()) {
        let present = present_on_mariadb(deployment, accounts, prefix).await;
        databases.push(crate::databases::figures(
            "mariadb",
            "orders-db",
            &audit,
            primary_region,
            fault_wall_ms,
            &acked.orders,
            present,
        ));
    }
    if deployment.databases.iter().any(|d| d.redis.is_some()) {
        let present = present_on_redis(deployment, accounts, &acked.sessions).await;
        databases.push(crate::databases::figures(
            "redis",
            "sessions",
            &audit,
            primary_region,
            fault_wall_ms,
            &acked.sessions,
            present,
        ));
    }
    Some(DatabaseReport {
        expectation,
        semi_sync: accounts.semi_sync,
        promote_lag_max_ms: accounts.promote_lag_max_ms,
        databases,
    })
}

/// `db-lag`: the standby region's MariaDB applies what it receives `delay_s` late (0: no
/// delay). `STOP SLAVE`, `CHANGE MASTER TO MASTER_DELAY`, `START SLAVE`.
pub async fn set_replication_delay(deployment: &Deployment, region: &str, delay_s: u64) -> Result<(), String> {
    let accounts = deployment
        .database_accounts
        .as_ref()
        .ok_or("the deployment file has no [database_accounts]: start the lab with --databases")?;
    let address = deployment
        .databases
        .iter()
        .find(|d| d.region == region)
        .and_then(|d| d.mariadb.clone())
        .ok_or_else(|| format!("the deployment file names no MariaDB in region {region}"))?;
    let mut conn = mariadb(&address, accounts).await?;
    for statement in [
        "STOP SLAVE".to_string(),
        format!("CHANGE MASTER TO MASTER_DELAY = {delay_s}"),
        "START SLAVE".to_string(),
    ] {
        bounded(&statement, DB_QUERY_TIMEOUT_MS, conn.query_drop(statement.as_str())).await?;
    }
    let _ = conn.disconnect().await;
    Ok(())
}
