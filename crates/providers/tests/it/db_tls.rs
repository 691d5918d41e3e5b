//! The promotion steps over TLS (`tls = true`, `ca_file`, `cert_file` + `key_file`) against
//! real servers that accept TLS only: two Redis servers listening on `--tls-port` alone, with
//! client certificates required (`--tls-auth-clients yes`) and replication over TLS, and a
//! MariaDB pair started with `--ssl-cert/--ssl-key/--ssl-ca` whose step account is `REQUIRE
//! SSL`. The CA and the certificate (for 127.0.0.1, usable as server and client certificate)
//! come from `common::devca`. The same steps without TLS are refused by the servers.

use std::path::Path;

use common::devca::DevCaFiles;
use providers::db::mysql::{MysqlPromote, Settings as MysqlSettings};
use providers::db::redis::{RedisPromote, Settings as RedisSettings};

use crate::support::{Server, Strict, find_binary, free_port, order, skip};

const USER: &str = "switchyard";
const PASSWORD: &str = "sw-s3cret";

fn dev_ca(dir: &Path) -> DevCaFiles {
    common::devca::generate(&dir.join("tls"), &["127.0.0.1".to_string()]).expect("dev CA")
}

fn start_redis(binary: &Path, dir: &Path, name: &str, port: u16, master: Option<u16>, tls: &DevCaFiles) -> Server {
    start_redis_replicating(binary, dir, name, port, master, tls, "yes")
}

/// [`start_redis`], with `tls_replication` (`yes`, or `no`: it replicates in plain text, which a
/// TLS-only master refuses).
fn start_redis_replicating(
    binary: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    master: Option<u16>,
    tls: &DevCaFiles,
    tls_replication: &str,
) -> Server {
    let path = |p: &Path| p.display().to_string();
    let mut command = crate::support::redis_server(binary, dir, name, 0, master, (USER, PASSWORD));
    command.args([
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &path(&tls.cert),
        "--tls-key-file",
        &path(&tls.key),
        "--tls-ca-cert-file",
        &path(&tls.ca_cert),
        "--tls-auth-clients",
        "yes",
        "--tls-replication",
        tls_replication,
    ]);
    Server::start(&mut command, dir.join(format!("{name}.log")))
}

/// `INFO replication` of a TLS-only server, with the test's client certificate.
async fn redis_info(port: u16, tls: &DevCaFiles) -> String {
    let info = redis::ConnectionInfo {
        addr: redis::ConnectionAddr::TcpTls {
            host: "127.0.0.1".into(),
            port,
            insecure: false,
            tls_params: None,
        },
        redis: redis::RedisConnectionInfo {
            db: 0,
            username: Some(USER.into()),
            password: Some(PASSWORD.into()),
            protocol: redis::ProtocolVersion::RESP2,
        },
    };
    let read = |p: &Path| std::fs::read(p).expect("read PEM");
    let certificates = redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig {
            client_cert: read(&tls.cert),
            client_key: read(&tls.key),
        }),
        root_cert: Some(read(&tls.ca_cert)),
    };
    let Ok(client) = redis::Client::build_with_tls(info, certificates) else {
        return String::new();
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return String::new();
    };
    redis::cmd("INFO")
        .arg("replication")
        .query_async::<String>(&mut conn)
        .await
        .unwrap_or_default()
}

fn redis_step(dir: &Path, a: u16, b: u16, tls_keys: &str) -> RedisPromote {
    std::fs::write(dir.join("password"), PASSWORD).expect("write password");
    let settings = format!(
        "servers = {{ eu = [\"127.0.0.1:{a}\"], us = [\"127.0.0.1:{b}\"] }}\n\
         username = \"{USER}\"\n\
         password = {{ file = \"{}\" }}\n\
         promote_lag_max_ms = 2000\n{tls_keys}",
        dir.join("password").display()
    );
    let settings: RedisSettings = toml::from_str(&settings).expect("settings parse");
    settings
        .check("sessions", &mut Strict::new(&["eu", "us"]))
        .expect("settings check")
}

#[tokio::test]
async fn redis_promote_over_tls_with_a_client_certificate() {
    let Some(binary) = find_binary("redis-server") else {
        return skip("redis-server", "redis-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let tls = dev_ca(dir.path());
    let (a, b) = (free_port(), free_port());
    let _servers = [
        start_redis(&binary, dir.path(), "a", a, None, &tls),
        start_redis(&binary, dir.path(), "b", b, Some(a), &tls),
    ];
    let (tls_ref, field) = (&tls, crate::redis::field);
    crate::support::wait_until("b to replicate from a over TLS", || async move {
        field(&redis_info(b, tls_ref).await, "master_link_status") == "up"
    })
    .await;

    let keys = format!(
        "tls = true\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        tls.ca_cert.display(),
        tls.cert.display(),
        tls.key.display()
    );
    // Without TLS, or without the client certificate the servers require, nothing answers.
    let plain = redis_step(dir.path(), a, b, "");
    let refused = plain.run(&order(3, "eu", "us", false)).await;
    assert!(refused.is_err(), "a plain connection to a TLS port: {refused:?}");
    let no_client_cert = redis_step(
        dir.path(),
        a,
        b,
        &format!("tls = true\nca_file = \"{}\"\n", tls.ca_cert.display()),
    );
    let refused = no_client_cert.run(&order(3, "eu", "us", false)).await;
    assert!(refused.is_err(), "no client certificate: {refused:?}");
    assert_eq!(field(&redis_info(b, &tls).await, "role"), "slave", "nothing moved");

    let step = redis_step(dir.path(), a, b, &keys);
    let outcome = step.run(&order(3, "eu", "us", false)).await.expect("promoted over TLS");
    assert!(outcome.contains(&format!("promoted 127.0.0.1:{b} in us")), "{outcome}");
    assert_eq!(field(&redis_info(b, &tls).await, "role"), "master");
    crate::support::wait_until("a to replicate from b over TLS", || async move {
        let info = redis_info(a, tls_ref).await;
        field(&info, "master_port") == b.to_string() && field(&info, "master_link_status") == "up"
    })
    .await;
    let again = step.run(&order(3, "eu", "us", false)).await.expect("no-op");
    assert!(!again.contains("promoted 127.0.0.1"), "{again}");
}

/// A statement as the step's account, which requires TLS.
async fn admin_over_tls(port: u16, ca: &Path, statement: &str) -> Vec<mysql_async::Row> {
    use mysql_async::prelude::Queryable;
    let options = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(USER))
        .pass(Some("sw-pass"))
        .prefer_socket(false)
        .ssl_opts(Some(
            mysql_async::SslOpts::default()
                .with_root_certs(vec![ca.to_path_buf().into()])
                .with_disable_built_in_roots(true),
        ));
    let mut conn = mysql_async::Conn::new(options).await.expect("login over TLS");
    conn.query(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement} on {port}: {e}"))
}

#[tokio::test]
async fn redis_a_repointed_server_whose_link_fails_is_named_not_said_to_replicate() {
    let Some(binary) = find_binary("redis-server") else {
        return skip("redis-server", "redis-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let tls = dev_ca(dir.path());
    let (a, b) = (free_port(), free_port());
    // a replicates in plain text, which b (TLS only) refuses once a is pointed at it.
    let _servers = [
        start_redis_replicating(&binary, dir.path(), "a", a, None, &tls, "no"),
        start_redis(&binary, dir.path(), "b", b, Some(a), &tls),
    ];
    let (tls_ref, field) = (&tls, crate::redis::field);
    crate::support::wait_until("b to replicate from a over TLS", || async move {
        field(&redis_info(b, tls_ref).await, "master_link_status") == "up"
    })
    .await;
    let keys = format!(
        "tls = true\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        tls.ca_cert.display(),
        tls.cert.display(),
        tls.key.display()
    );
    let step = redis_step(dir.path(), a, b, &keys);
    let outcome = step.run(&order(3, "eu", "us", false)).await.expect("promoted");
    assert!(outcome.contains(&format!("promoted 127.0.0.1:{b} in us")), "{outcome}");
    assert!(
        outcome.contains(&format!(
            "old master 127.0.0.1:{a} pointed at 127.0.0.1:{b}, but does not replicate: its link to the master is still down"
        )),
        "{outcome}"
    );
    assert!(!outcome.contains("now replicates"), "{outcome}");
}

#[tokio::test]
async fn mysql_promote_over_tls_to_an_account_that_requires_ssl() {
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let tls = dev_ca(dir.path());
    let ssl = [
        format!("--ssl-cert={}", tls.cert.display()),
        format!("--ssl-key={}", tls.key.display()),
        format!("--ssl-ca={}", tls.ca_cert.display()),
    ];
    let (a, b) = (free_port(), free_port());
    let _servers = [
        crate::mysql::start_mariadb_with(&mariadbd, dir.path(), "a", a, 1, false, &ssl),
        crate::mysql::start_mariadb_with(&mariadbd, dir.path(), "b", b, 2, true, &ssl),
    ];
    for port in [a, b] {
        crate::support::wait_until("the server to accept logins", || async move {
            crate::mysql::connect(port, "switchyard", "sw-pass").await.is_ok()
        })
        .await;
    }
    crate::mysql::admin(a, "CREATE DATABASE shop").await;
    crate::mysql::admin(a, "CREATE TABLE shop.orders (id INT PRIMARY KEY) ENGINE=InnoDB").await;
    // Replication over TLS too: the replication account requires it (each server its own).
    for port in [a, b] {
        crate::mysql::admin(
            port,
            "SET sql_log_bin = 0; ALTER USER 'repl'@'%' REQUIRE SSL; FLUSH PRIVILEGES",
        )
        .await;
    }
    crate::mysql::admin(
        b,
        &format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={a}, MASTER_USER='repl', \
             MASTER_PASSWORD='repl-pass', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, \
             MASTER_SSL=1, MASTER_SSL_CA='{}', MASTER_SSL_VERIFY_SERVER_CERT=1",
            tls.ca_cert.display()
        ),
    )
    .await;
    crate::mysql::admin(b, "START SLAVE").await;
    crate::support::wait_until("the replica to have the table", || async move {
        crate::mysql::text(
            b,
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME = 'orders'",
        )
        .await
            == "1"
    })
    .await;
    crate::mysql::insert(a, 1).await.expect("insert on the primary");
    crate::support::wait_until("the replica to apply the order", || async move {
        crate::mysql::count(b).await == 1
    })
    .await;
    // From now on the step's account logs in over TLS only (each server its own: not binlogged).
    for port in [a, b] {
        crate::mysql::admin(
            port,
            "SET sql_log_bin = 0; ALTER USER 'switchyard'@'%' REQUIRE SSL; FLUSH PRIVILEGES",
        )
        .await;
    }
    assert!(
        crate::mysql::connect(a, "switchyard", "sw-pass").await.is_err(),
        "a plain login must be refused now"
    );
    std::fs::write(dir.path().join("sw.password"), "sw-pass\n").expect("write password");
    std::fs::write(dir.path().join("repl.password"), "repl-pass\n").expect("write password");
    let step = |tls_keys: &str| -> MysqlPromote {
        let settings = format!(
            "servers = {{ eu = [\"127.0.0.1:{a}\"], us = [\"127.0.0.1:{b}\"] }}\n\
             user = \"switchyard\"\n\
             password = {{ file = \"{}\" }}\n\
             replication_user = \"repl\"\n\
             replication_password = {{ file = \"{}\" }}\n\
             promote_lag_max_ms = 5000\n{tls_keys}",
            dir.path().join("sw.password").display(),
            dir.path().join("repl.password").display(),
        );
        let settings: MysqlSettings = toml::from_str(&settings).expect("settings parse");
        settings
            .check("orders-db", &mut Strict::new(&["eu", "us"]))
            .expect("settings check")
    };
    let refused = step("").run(&order(5, "eu", "us", false)).await;
    assert!(refused.is_err(), "without TLS the account is refused: {refused:?}");

    let over_tls = step(&format!("tls = true\nca_file = \"{}\"\n", tls.ca_cert.display()));
    let outcome = over_tls
        .run(&order(5, "eu", "us", false))
        .await
        .expect("promoted over TLS");
    assert!(outcome.contains(&format!("promoted 127.0.0.1:{b} in us")), "{outcome}");
    assert!(
        outcome.contains(&format!("127.0.0.1:{a} now replicates from 127.0.0.1:{b} (over TLS")),
        "{outcome}"
    );
    // The old primary had no replication of its own: it took the replica's TLS options, and
    // the account that requires TLS logs in.
    crate::mysql::insert(b, 2).await.expect("insert on the new primary");
    let ca = tls.ca_cert.clone();
    crate::support::wait_until("the old primary to replicate over TLS", || {
        let ca = ca.clone();
        async move {
            admin_over_tls(a, &ca, "SELECT COUNT(*) FROM shop.orders")
                .await
                .first()
                .and_then(|r| r.get::<u64, usize>(0))
                == Some(2)
        }
    })
    .await;
    let status = admin_over_tls(a, &tls.ca_cert, "SHOW SLAVE STATUS").await;
    let get = |name: &str| -> String {
        status
            .first()
            .and_then(|row| row.get_opt::<Option<String>, &str>(name))
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default()
    };
    assert_eq!(
        (get("Master_SSL_Allowed"), get("Master_SSL_Verify_Server_Cert")),
        ("Yes".to_string(), "Yes".to_string())
    );
    // A CA that did not sign the servers' certificate: the certificate is refused.
    let other = dev_ca(&dir.path().join("other"));
    let wrong_ca = step(&format!("tls = true\nca_file = \"{}\"\n", other.ca_cert.display()));
    let refused = wrong_ca.run(&order(6, "us", "eu", false)).await;
    assert!(refused.is_err(), "a certificate from another CA: {refused:?}");
}
