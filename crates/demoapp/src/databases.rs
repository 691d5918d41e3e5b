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

use std::time::Duration;

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

/// A MariaDB/MySQL server and the shop's account on it.
#[derive(Clone, Debug)]
pub struct SqlTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
}

/// A Redis server and the shop's ACL user on it.
#[derive(Clone, Debug)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// `host:port` → (host, port).
pub fn split_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("'{address}' is not host:port"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("'{address}': the port is not a number from 1 to 65535"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("'{address}' is not host:port"));
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

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

impl SqlTarget {
    async fn connect(&self) -> Result<mysql_async::Conn, String> {
        let options = mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(Some(self.password.clone()))
            .db_name(Some(self.database.clone()))
            .prefer_socket(false);
        bounded(
            &format!("orders database {}:{}", self.host, self.port),
            DB_CONNECT_TIMEOUT_MS,
            mysql_async::Conn::new(options),
        )
        .await
    }
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
        let mut conn = target.connect().await?;
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
        let mut conn = target.connect().await?;
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
        let mut roles = Vec::new();
        if let Some(target) = &self.orders {
            let role = async {
                let mut conn = target.connect().await?;
                let read_only = bounded(
                    "read @@read_only",
                    DB_QUERY_TIMEOUT_MS,
                    conn.query_first::<u8, _>("SELECT @@GLOBAL.read_only"),
                )
                .await?;
                let _ = conn.disconnect().await;
                Ok::<_, String>(if read_only == Some(0) { "writable" } else { "read-only" })
            };
            roles.push((
                "orders_db",
                match role.await {
                    Ok(role) => role.to_string(),
                    Err(error) => format!("unreachable: {error}"),
                },
            ));
        }
        if let Some(target) = &self.sessions {
            let role = async {
                let mut conn = target.connect().await?;
                let command = redis::cmd("ROLE");
                let info = bounded(
                    "ROLE",
                    DB_QUERY_TIMEOUT_MS,
                    command.query_async::<redis::Value>(&mut conn),
                )
                .await?;
                Ok::<_, String>(match info {
                    redis::Value::Array(items) if matches!(items.first(), Some(redis::Value::BulkString(b)) if b.as_slice() == b"master") => {
                        "writable"
                    }
                    _ => "read-only",
                })
            };
            roles.push((
                "sessions_db",
                match role.await {
                    Ok(role) => role.to_string(),
                    Err(error) => format!("unreachable: {error}"),
                },
            ));
        }
        roles
    }
}

impl RedisTarget {
    async fn connect(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(self.host.clone(), self.port),
            redis: redis::RedisConnectionInfo {
                db: 0,
                username: self.user.clone(),
                password: self.password.clone(),
                protocol: redis::ProtocolVersion::RESP2,
            },
        };
        let what = format!("sessions database {}:{}", self.host, self.port);
        let client = redis::Client::open(info).map_err(|e| format!("{what}: {e}"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_millis(DB_CONNECT_TIMEOUT_MS))
            .set_response_timeout(Duration::from_millis(DB_QUERY_TIMEOUT_MS));
        bounded(
            &what,
            DB_CONNECT_TIMEOUT_MS,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_address("127.0.0.1:3306").expect("ok"),
            ("127.0.0.1".to_string(), 3306)
        );
        assert!(split_address("db").is_err());
        assert!(split_address("db:0").is_err());
        assert!(split_address("db:http").is_err());
    }

    #[tokio::test]
    async fn without_databases_nothing_is_written_and_nothing_fails() {
        let none = ShopDatabases::default();
        assert!(none.is_empty());
        assert_eq!(none.insert_order("k-1", "us", "s", "[]", 100).await, Ok(None));
        assert_eq!(none.put_session("s", "{}").await, Ok(false));
        assert!(none.roles().await.is_empty());
    }
}
