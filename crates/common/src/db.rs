//! Connections to the shop's databases (MariaDB/MySQL and Redis) as the demo shop and the
//! drill open them: one connection per use, every step bounded, errors that name the server.
//! Behind the `db` feature, so the crates that never talk to a database do not build the
//! clients. (The `providers` promote steps open theirs with TLS and their own settings.)

use std::time::Duration;

use mysql_async::prelude::Queryable;

use crate::deadline::bounded;

/// `host:port` → (host, port); brackets around an IPv6 host are removed.
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

/// A MariaDB/MySQL server, the account on it and (optionally) the default database.
#[derive(Clone, Debug)]
pub struct SqlTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: Option<String>,
}

impl SqlTarget {
    /// Opens a connection (TCP, never the local socket) within `connect_ms`; the error starts
    /// with `what`.
    pub async fn connect(&self, what: &str, connect_ms: u64) -> Result<mysql_async::Conn, String> {
        let options = mysql_async::OptsBuilder::default()
            .ip_or_hostname(self.host.clone())
            .tcp_port(self.port)
            .user(Some(self.user.clone()))
            .pass(Some(self.password.clone()))
            .db_name(self.database.clone())
            .prefer_socket(false);
        bounded(what, connect_ms, mysql_async::Conn::new(options)).await
    }
}

/// A Redis server and the ACL user on it (`None`: the `default` user).
#[derive(Clone, Debug)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl RedisTarget {
    /// Opens a multiplexed connection (RESP2) within `connect_ms`, whose commands each wait
    /// `query_ms` at most; the error starts with `what`.
    pub async fn connect(
        &self,
        what: &str,
        connect_ms: u64,
        query_ms: u64,
    ) -> Result<redis::aio::MultiplexedConnection, String> {
        let info = redis::ConnectionInfo {
            addr: redis::ConnectionAddr::Tcp(self.host.clone(), self.port),
            redis: redis::RedisConnectionInfo {
                db: 0,
                username: self.user.clone(),
                password: self.password.clone(),
                protocol: redis::ProtocolVersion::RESP2,
            },
        };
        let client = redis::Client::open(info).map_err(|e| format!("{what}: {e}"))?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_millis(connect_ms))
            .set_response_timeout(Duration::from_millis(query_ms));
        bounded(
            what,
            connect_ms,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
    }
}

/// Whether the server takes writes (`@@GLOBAL.read_only` off); the connection is closed.
pub async fn mysql_writable(mut conn: mysql_async::Conn, query_ms: u64) -> Result<bool, String> {
    let read_only = bounded(
        "read @@read_only",
        query_ms,
        conn.query_first::<u8, _>("SELECT @@GLOBAL.read_only"),
    )
    .await?;
    let _ = conn.disconnect().await;
    Ok(read_only == Some(0))
}

/// Whether the server is a master (`ROLE`'s first element).
pub async fn redis_is_master(conn: &mut redis::aio::MultiplexedConnection, query_ms: u64) -> Result<bool, String> {
    let command = redis::cmd("ROLE");
    let value = bounded("ROLE", query_ms, command.query_async::<redis::Value>(conn)).await?;
    Ok(matches!(value, redis::Value::Array(items)
        if matches!(items.first(), Some(redis::Value::BulkString(b)) if b.as_slice() == b"master")))
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
        assert_eq!(split_address("[::1]:6379").expect("ok"), ("::1".to_string(), 6379));
        assert!(split_address("db").is_err());
        assert!(split_address("db:0").is_err());
        assert!(split_address(":3306").is_err());
        assert!(split_address("db:http").is_err());
    }
}
