//! SQL probes against real MariaDB (primary and replica) and PostgreSQL servers.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use health::probe::probe;
use health::{ProbeKind, SqlDriver};

use crate::support::{START_DEADLINE, Server, find_binary, free_port, probe_until, running_as_root, skip, spec};

/// uid and gid of `nobody` on Debian, for servers that refuse to run as root.
const NOBODY: u32 = 65534;

fn sql(driver: SqlDriver, port: u16, user: &str, password: Option<&str>, replica_lag: bool) -> ProbeKind {
    ProbeKind::Sql {
        driver,
        address: format!("127.0.0.1:{port}"),
        user: user.into(),
        password: password.map(str::to_string),
        database: None,
        replica_lag,
        max_replica_lag_ms: None,
    }
}

fn start_mariadb(mariadbd: &Path, dir: &Path, name: &str, port: u16, extra: &[String], init: &str) -> Server {
    testkit::start_mariadb(mariadbd, dir, name, port, init, extra)
}

#[tokio::test]
async fn mariadb_select_one_login_and_replica_lag() {
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let primary_port = free_port();
    let users = "DROP USER IF EXISTS ''@'localhost';\n\
        CREATE USER IF NOT EXISTS 'probe'@'%' IDENTIFIED BY 'pr0be-pass';\n\
        GRANT SLAVE MONITOR ON *.* TO 'probe'@'%';\n\
        CREATE USER IF NOT EXISTS 'repl'@'%' IDENTIFIED BY 'repl-pass';\n\
        GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';\n\
        CREATE USER IF NOT EXISTS 'nopass'@'%';\n";
    let _primary = start_mariadb(
        &mariadbd,
        dir.path(),
        "primary",
        primary_port,
        &["--server-id=1".into(), "--log-bin=primary-bin".into()],
        users,
    );
    let check = spec(sql(SqlDriver::Mysql, primary_port, "probe", Some("pr0be-pass"), false));
    let up = probe_until(&check, START_DEADLINE, |o| o.success).await;
    assert!(up.detail.starts_with("SELECT 1 ok ("), "{}", up.detail);

    let no_password = probe(&spec(sql(SqlDriver::Mysql, primary_port, "nopass", None, false))).await;
    assert!(no_password.success, "{no_password:?}");

    let wrong = probe(&spec(sql(SqlDriver::Mysql, primary_port, "probe", Some("nope"), false))).await;
    assert!(!wrong.success);
    assert!(wrong.detail.contains("ERROR 1045"), "{}", wrong.detail);

    let primary_lag = probe(&spec(sql(
        SqlDriver::Mysql,
        primary_port,
        "probe",
        Some("pr0be-pass"),
        true,
    )))
    .await;
    assert!(primary_lag.success, "{primary_lag:?}");
    assert!(primary_lag.detail.contains("not a replica"), "{}", primary_lag.detail);
    assert_eq!(primary_lag.replica_lag_ms, Some(0));
    let written = primary_lag.position.clone().expect("the primary's GTID position");
    assert_eq!((written.role.as_str(), written.kind.as_str()), ("primary", "gtid"));
    assert!(written.received.starts_with("0-1-"), "{written:?}");

    let replica_port = free_port();
    let replica_init = format!(
        "{users}CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary_port}, \
         MASTER_USER='repl', MASTER_PASSWORD='repl-pass', MASTER_USE_GTID=slave_pos;\nSTART SLAVE;\n"
    );
    let _replica = start_mariadb(
        &mariadbd,
        dir.path(),
        "replica",
        replica_port,
        &["--server-id=2".into()],
        &replica_init,
    );
    let mut bounded = sql(SqlDriver::Mysql, replica_port, "probe", Some("pr0be-pass"), true);
    if let ProbeKind::Sql { max_replica_lag_ms, .. } = &mut bounded {
        *max_replica_lag_ms = Some(60_000);
    }
    let replica = probe_until(&spec(bounded), START_DEADLINE, |o| {
        o.success && o.detail.contains("received GTIDs")
    })
    .await;
    assert!(replica.detail.contains("s behind"), "{}", replica.detail);
    assert!(replica.detail.contains("received GTIDs 0-1-"), "{}", replica.detail);
    assert!(replica.replica_lag_ms.is_some());
    let position = replica.position.clone().expect("the replica's position");
    assert_eq!((position.role.as_str(), position.kind.as_str()), ("replica", "gtid"));
    assert!(position.received.starts_with("0-1-"), "{position:?}");
}

/// Starts `postgres` on `data` at `port` (its socket in `dir`, its log `dir/log`), as nobody when
/// the tests run as root.
fn start_postgres(postgres: &Path, data: &Path, port: u16, dir: &Path, as_root: bool, log: &str) -> Server {
    let mut command = Command::new(postgres);
    command.args([
        "-D",
        &data.display().to_string(),
        "-p",
        &port.to_string(),
        "-k",
        &dir.display().to_string(),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=off",
    ]);
    if as_root {
        command.uid(NOBODY).gid(NOBODY);
    }
    Server::start(&mut command, dir.join(log))
}

#[tokio::test]
async fn postgres_select_one_with_scram_login() {
    let (Some(initdb), Some(postgres)) = (find_binary("initdb"), find_binary("postgres")) else {
        return skip("initdb/postgres", "postgresql");
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let as_root = running_as_root();
    if as_root {
        // PostgreSQL refuses to run as root: run it as nobody, in a directory nobody can use.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "pg-s3cret\n").expect("write password file");
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let data = dir.path().join("data");
    let mut command = Command::new(&initdb);
    command.args([
        "-D",
        &data.display().to_string(),
        "-U",
        "postgres",
        &format!("--pwfile={}", password_file.display()),
        "--auth=scram-sha-256",
        "--no-sync",
        "-E",
        "UTF8",
    ]);
    if as_root {
        command.uid(NOBODY).gid(NOBODY);
    }
    let output = command.output().expect("run initdb");
    assert!(
        output.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let port = free_port();
    let server = start_postgres(&postgres, &data, port, dir.path(), as_root, "postgres.log");

    let check = spec(sql(SqlDriver::Postgres, port, "postgres", Some("pg-s3cret"), false));
    let up = probe_until(&check, START_DEADLINE, |o| o.success).await;
    assert!(up.detail.starts_with("SELECT 1 ok (PostgreSQL "), "{}", up.detail);

    let lag = probe(&spec(sql(
        SqlDriver::Postgres,
        port,
        "postgres",
        Some("pg-s3cret"),
        true,
    )))
    .await;
    assert!(lag.success, "{lag:?}");
    assert!(lag.detail.contains("primary"), "{}", lag.detail);
    assert_eq!(lag.replica_lag_ms, Some(0));
    let primary_position = lag.position.clone().expect("the primary's position");
    assert_eq!(
        (primary_position.role.as_str(), primary_position.kind.as_str()),
        ("primary", "lsn")
    );
    assert!(primary_position.received.contains('/'), "{primary_position:?}");

    let wrong = probe(&spec(sql(SqlDriver::Postgres, port, "postgres", Some("wrong"), false))).await;
    assert!(!wrong.success);
    assert!(wrong.detail.contains("28P01"), "{}", wrong.detail);

    let mut missing_db = sql(SqlDriver::Postgres, port, "postgres", Some("pg-s3cret"), false);
    if let ProbeKind::Sql { database, .. } = &mut missing_db {
        *database = Some("nope".into());
    }
    let missing = probe(&spec(missing_db)).await;
    assert!(!missing.success);
    assert!(missing.detail.contains("3D000"), "{}", missing.detail);

    // A streaming replica made with pg_basebackup -R: the probe sees a replica and its lag.
    let Some(basebackup) = find_binary("pg_basebackup") else {
        return skip("pg_basebackup", "postgresql");
    };
    let replica_data = dir.path().join("replica");
    let mut command = Command::new(&basebackup);
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-D",
            &replica_data.display().to_string(),
            "-R",
            "--no-sync",
            "-X",
            "stream",
        ])
        .env("PGPASSWORD", "pg-s3cret");
    if as_root {
        command.uid(NOBODY).gid(NOBODY);
    }
    let output = command.output().expect("run pg_basebackup");
    assert!(
        output.status.success(),
        "pg_basebackup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let replica_port = free_port();
    let _replica = start_postgres(
        &postgres,
        &replica_data,
        replica_port,
        dir.path(),
        as_root,
        "replica.log",
    );
    let mut bounded = sql(SqlDriver::Postgres, replica_port, "postgres", Some("pg-s3cret"), true);
    if let ProbeKind::Sql { max_replica_lag_ms, .. } = &mut bounded {
        *max_replica_lag_ms = Some(60_000);
    }
    // Streaming and caught up (nothing written since the base backup): 0, however long idle.
    let replica = probe_until(&spec(bounded.clone()), START_DEADLINE, |o| {
        o.success && o.replica_lag_ms == Some(0)
    })
    .await;
    assert!(replica.detail.contains("replica"), "{}", replica.detail);
    assert!(replica.detail.contains("streaming"), "{}", replica.detail);
    let position = replica.position.clone().expect("the standby's position");
    assert_eq!((position.role.as_str(), position.kind.as_str()), ("replica", "lsn"));
    assert!(
        position.applied.as_deref().is_some_and(|a| a.contains('/')),
        "{position:?}"
    );

    // pg_stat_wal_receiver shows a user without pg_read_all_stats (pg_monitor) only the pid: the
    // lag is unknown then, and the detail says what to grant; with pg_monitor it is read.
    let Some(psql) = find_binary("psql") else {
        return skip("psql", "postgresql-client");
    };
    let output = Command::new(&psql)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args([
            "-c",
            "CREATE ROLE plain LOGIN PASSWORD 'plain-pass'; \
             CREATE ROLE monitor LOGIN PASSWORD 'monitor-pass' IN ROLE pg_monitor;",
        ])
        .env("PGPASSWORD", "pg-s3cret")
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let in_postgres = |mut kind: ProbeKind| {
        if let ProbeKind::Sql { database, .. } = &mut kind {
            *database = Some("postgres".into());
        }
        spec(kind)
    };
    let monitor = in_postgres(sql(
        SqlDriver::Postgres,
        replica_port,
        "monitor",
        Some("monitor-pass"),
        true,
    ));
    let monitored = probe_until(&monitor, START_DEADLINE, |o| o.success && o.replica_lag_ms.is_some()).await;
    assert!(monitored.detail.contains("streaming"), "{}", monitored.detail);
    let plain = probe(&in_postgres(sql(
        SqlDriver::Postgres,
        replica_port,
        "plain",
        Some("plain-pass"),
        true,
    )))
    .await;
    assert!(plain.success, "{plain:?}");
    assert_eq!(plain.replica_lag_ms, None, "{plain:?}");
    assert!(plain.detail.contains("GRANT pg_monitor"), "{}", plain.detail);

    // The primary stops: the standby keeps what it received, all replayed (received = replayed),
    // but its WAL receiver is gone (or restarting every wal_retrieve_retry_interval, 5 s): the
    // lag is unknown, never 0, and the bound fails the check.
    drop(server);
    let cut_off = probe_until(&spec(bounded.clone()), Duration::from_secs(30), |o| !o.success).await;
    assert_eq!(cut_off.replica_lag_ms, None, "{cut_off:?}");
    assert!(cut_off.detail.contains("not streaming"), "{}", cut_off.detail);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let outcome = probe(&spec(bounded.clone())).await;
        assert_eq!(outcome.replica_lag_ms, None, "{outcome:?}");
        assert!(!outcome.success, "{outcome:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
