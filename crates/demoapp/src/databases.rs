//! The shop's databases, when configured (`switchyard lab --databases`, or a deployment that
//! has them): orders go to MariaDB/MySQL as Magento keeps them (`shop.sales_order`, numbered
//! by `entity_id`, shown as a 9-digit `increment_id`), sessions to Redis (`session:ID`, with
//! the Magento default lifetime), next to the carts in the regional store. The shop talks to
//! its own region's servers: in the active region they are the primaries (the controller's
//! runbook promotes them before it moves the traffic); a standby's are read-only replicas, so
//! its writes are refused, never silently lost.
//!
//! Each operation opens its own connection, bounded by [`DB_CONNECT_TIMEOUT_MS`] and
//! [`DB_QUERY_TIMEOUT_MS`]: after a failover no pooled connection to a fenced primary lingers.

use common::deadline::bounded;
use mysql_async::prelude::Queryable;

/// Longest wait for a connection and login.
pub const DB_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Longest wait for one statement or command.
pub const DB_QUERY_TIMEOUT_MS: u64 = 2_000;
/// `/health` waits this long at most for the databases' roles (a detail, never a failure).
pub const DB_ROLE_PROBE_MS: u64 = 300;
/// A session key's lifetime in Redis (Magento's default cookie lifetime, one hour).
pub const SESSION_TTL_S: u64 = 3_600;
/// Longest order reference stored (the `quote_ref` column).
pub const QUOTE_REF_CHARS_MAX: usize = 64;

pub use common::db::{RedisTarget, SqlTarget, split_address};

/// What was stored for an order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOrder {
    pub entity_id: u64,
    /// Magento's customer-facing number: the entity id, 9 digits.
    pub increment_id: String,
}

/// The shop's databases.
#[derive(Clone, Debug, Default)]
pub struct ShopDatabases {
    pub orders: Option<SqlTarget>,
    pub sessions: Option<RedisTarget>,
}

/// A connection to the orders database.
async fn orders(target: &SqlTarget) -> Result<mysql_async::Conn, String> {
    let what = format!("orders database {}:{}", target.host, target.port);
    target.connect(&what, DB_CONNECT_TIMEOUT_MS).await
}

/// A connection to the sessions database.
async fn sessions(target: &RedisTarget) -> Result<redis::aio::MultiplexedConnection, String> {
    let what = format!("sessions database {}:{}", target.host, target.port);
    target.connect(&what, DB_CONNECT_TIMEOUT_MS, DB_QUERY_TIMEOUT_MS).await
}

impl ShopDatabases {
    pub fn is_empty(&self) -> bool {
        self.orders.is_none() && self.sessions.is_none()
    }

    /// Inserts the order (idempotent on `quote_ref`: a retried order finds its row) and
    /// returns its numbers. `Ok(None)` without an orders database.
    pub async fn insert_order(
        &self,
        quote_ref: &str,
        region: &str,
        session: &str,
        items: &str,
        total_cents: u64,
    ) -> Result<Option<StoredOrder>, String> {
        let Some(target) = &self.orders else {
            return Ok(None);
        };
        if quote_ref.chars().count() > QUOTE_REF_CHARS_MAX {
            return Err(format!(
                "order reference '{quote_ref}' is longer than {QUOTE_REF_CHARS_MAX} characters"
            ));
        }
        let mut conn = orders(target).await?;
        let total = format!("{}.{:02}", total_cents / 100, total_cents % 100);
        let work = async {
            conn.exec_drop(
                "INSERT INTO sales_order (quote_ref, store_region, customer_session, items, grand_total) VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE quote_ref = quote_ref",
                (quote_ref, region, session, items, total),
            )
            .await?;
            conn.exec_first::<u64, _, _>("SELECT entity_id FROM sales_order WHERE quote_ref = ?", (quote_ref,))
                .await
        };
        let entity_id = bounded("insert the order", DB_QUERY_TIMEOUT_MS, work).await?;
        let _ = conn.disconnect().await;
        let entity_id = entity_id.ok_or_else(|| format!("order {quote_ref} was inserted but is not there"))?;
        Ok(Some(StoredOrder {
            entity_id,
            increment_id: format!("{entity_id:09}"),
        }))
    }

    /// Stores a new session. `Ok(false)` without a sessions database.
    pub async fn put_session(&self, session: &str, value: &str) -> Result<bool, String> {
        let Some(target) = &self.sessions else {
            return Ok(false);
        };
        let mut conn = sessions(target).await?;
        let mut command = redis::cmd("SET");
        command
            .arg(format!("session:{session}"))
            .arg(value)
            .arg("EX")
            .arg(SESSION_TTL_S);
        let set = command.query_async::<()>(&mut conn);
        bounded("store the session in Redis", DB_QUERY_TIMEOUT_MS, set).await?;
        Ok(true)
    }

    /// For `/health`: each database's role as this region's shop sees it (`writable`,
    /// `read-only` or `unreachable: why`). Details only: a standby's replicas are read-only by
    /// design and must not make the region unhealthy.
    pub async fn roles(&self) -> Vec<(&'static str, String)> {
        let writable = |writable: bool| if writable { "writable" } else { "read-only" };
        let mut roles = Vec::new();
        if let Some(target) = &self.orders {
            let role = async {
                let conn = orders(target).await?;
                common::db::mysql_writable(conn, DB_QUERY_TIMEOUT_MS).await
            };
            roles.push(("orders_db", role.await));
        }
        if let Some(target) = &self.sessions {
            let role = async {
                let mut conn = sessions(target).await?;
                common::db::redis_is_master(&mut conn, DB_QUERY_TIMEOUT_MS).await
            };
            roles.push(("sessions_db", role.await));
        }
        roles
            .into_iter()
            .map(|(name, role)| match role {
                Ok(role) => (name, writable(role).to_string()),
                Err(error) => (name, format!("unreachable: {error}")),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_databases_nothing_is_written_and_nothing_fails() {
        let none = ShopDatabases::default();
        assert!(none.is_empty());
        assert_eq!(none.insert_order("k-1", "us", "s", "[]", 100).await, Ok(None));
        assert_eq!(none.put_session("s", "{}").await, Ok(false));
        assert!(none.roles().await.is_empty());
    }
}
