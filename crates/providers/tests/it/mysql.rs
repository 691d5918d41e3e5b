//! `mysql_promote` against two real MariaDB servers (primary `a` in eu, replica `b` in us,
//! GTID replication set up by the test with `log_slave_updates` and `gtid_strict_mode`).

use std::path::Path;

use mysql_async::prelude::Queryable;
use providers::Failure;
use providers::db::mysql::{MysqlPromote, Settings};

use crate::support::{Server, Strict, find_binary, free_port, order, skip, wait_until};

/// Accounts: the step's (all privileges), replication's, and the shop's (no privilege past
/// read_only). Not binlogged: each server creates its own.
pub(crate) const USERS: &str = "SET sql_log_bin = 0;\n\
    DROP USER IF EXISTS ''@'localhost';\n\
    CREATE USER IF NOT EXISTS 'switchyard'@'%' IDENTIFIED BY 'sw-pass';\n\
    GRANT ALL PRIVILEGES ON *.* TO 'switchyard'@'%' WITH GRANT OPTION;\n\
    CREATE USER IF NOT EXISTS 'repl'@'%' IDENTIFIED BY 'repl-pass';\n\
    GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';\n\
    CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app-pass';\n\
    GRANT ALL PRIVILEGES ON shop.* TO 'app'@'%';\n";

/// ER_OPTION_PREVENTS_STATEMENT: the server runs with read_only.
const READ_ONLY_ERROR: u16 = 1290;

struct Pair {
    dir: tempfile::TempDir,
    a: u16,
    b: u16,
    servers: Vec<Server>,
}

fn start_mariadb(mariadbd: &Path, dir: &Path, name: &str, port: u16, server_id: u32, read_only: bool) -> Server {
    start_mariadb_with(mariadbd, dir, name, port, server_id, read_only, &[])
}

/// [`start_mariadb`] with more server options (the TLS test's `--ssl-*`).
pub(crate) fn start_mariadb_with(
    mariadbd: &Path,
    dir: &Path,
    name: &str,
    port: u16,
    server_id: u32,
    read_only: bool,
    extra: &[String],
) -> Server {
    let mut args = vec![
        format!("--server-id={server_id}"),
        format!("--log-bin={name}-bin"),
        "--log-slave-updates".into(),
        "--gtid-strict-mode=1".into(),
        format!("--read-only={}", if read_only { 1 } else { 0 }),
    ];
    args.extend_from_slice(extra);
    testkit::start_mariadb(mariadbd, dir, name, port, USERS, &args)
}

pub(crate) async fn connect(port: u16, user: &str, password: &str) -> Result<mysql_async::Conn, mysql_async::Error> {
    let options = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false);
    mysql_async::Conn::new(options).await
}

pub(crate) async fn admin(port: u16, statement: &str) -> Vec<mysql_async::Row> {
    let mut conn = connect(port, "switchyard", "sw-pass").await.expect("admin login");
    conn.query(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement} on {port}: {e}"))
}

pub(crate) async fn text(port: u16, statement: &str) -> String {
    admin(port, statement)
        .await
        .first()
        .and_then(|row| row.get_opt::<Option<String>, usize>(0))
        .and_then(Result::ok)
        .flatten()
        .unwrap_or_default()
}

pub(crate) async fn insert(port: u16, id: u32) -> Result<(), mysql_async::Error> {
    let mut conn = connect(port, "app", "app-pass").await?;
    conn.query_drop(format!("INSERT INTO shop.orders (id) VALUES ({id})"))
        .await
}

fn server_code(result: Result<(), mysql_async::Error>) -> Option<u16> {
    match result {
        Err(mysql_async::Error::Server(e)) => Some(e.code),
        _ => None,
    }
}

pub(crate) async fn count(port: u16) -> u64 {
    text(port, "SELECT COUNT(*) FROM shop.orders")
        .await
        .parse()
        .unwrap_or(0)
}

async fn record(port: u16) -> String {
    text(port, "SELECT generation FROM switchyard.promotion WHERE id = 1").await
}

/// The replica's source as `host:port` with both threads running, or "" when not replicating.
async fn source(port: u16) -> String {
    let rows = admin(port, "SHOW SLAVE STATUS").await;
    let Some(row) = rows.first() else {
        return String::new();
    };
    let get = |name: &str| -> String {
        row.get_opt::<Option<String>, &str>(name)
            .and_then(Result::ok)
            .flatten()
            .unwrap_or_default()
    };
    if get("Slave_IO_Running") == "Yes" && get("Slave_SQL_Running") == "Yes" {
        format!("{}:{}", get("Master_Host"), get("Master_Port"))
    } else {
        format!("(stopped) {}:{}", get("Master_Host"), get("Master_Port"))
    }
}

async fn start_pair(mariadbd: &Path) -> Pair {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (a, b) = (free_port(), free_port());
    let servers = vec![
        start_mariadb(mariadbd, dir.path(), "a", a, 1, false),
        start_mariadb(mariadbd, dir.path(), "b", b, 2, true),
    ];
    for port in [a, b] {
        wait_until("the server to accept logins", || async move {
            connect(port, "switchyard", "sw-pass").await.is_ok()
        })
        .await;
    }
    admin(a, "CREATE DATABASE shop").await;
    admin(a, "CREATE TABLE shop.orders (id INT PRIMARY KEY) ENGINE=InnoDB").await;
    admin(
        b,
        &format!(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={a}, MASTER_USER='repl', \
             MASTER_PASSWORD='repl-pass', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1"
        ),
    )
    .await;
    admin(b, "START SLAVE").await;
    wait_until("the replica to have the table", || async move {
        text(
            b,
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME = 'orders'",
        )
        .await
            == "1"
    })
    .await;
    std::fs::write(dir.path().join("sw.password"), "sw-pass\n").expect("write password");
    std::fs::write(dir.path().join("repl.password"), "repl-pass\n").expect("write password");
    Pair { dir, a, b, servers }
}

fn step(pair: &Pair, promote_lag_max_ms: u64) -> MysqlPromote {
    let settings = format!(
        "servers = {{ eu = [\"127.0.0.1:{}\"], us = [\"127.0.0.1:{}\"] }}\n\
         user = \"switchyard\"\n\
         password = {{ file = \"{}\" }}\n\
         replication_user = \"repl\"\n\
         replication_password = {{ file = \"{}\" }}\n\
         promote_lag_max_ms = {promote_lag_max_ms}\n",
        pair.a,
        pair.b,
        pair.dir.path().join("sw.password").display(),
        pair.dir.path().join("repl.password").display(),
    );
    let settings: Settings = toml::from_str(&settings).expect("settings parse");
    settings
        .check("orders-db", &mut Strict::new(&["eu", "us"]))
        .expect("settings check")
}

#[tokio::test]
async fn mariadb_failover_with_apply_lag_fences_rejoins_reruns_as_no_op_and_fails_back() {
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    let pair = start_pair(&mariadbd).await;
    let (a, b) = (pair.a, pair.b);
    let (a_address, b_address) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
    for id in 1..=3 {
        insert(a, id).await.expect("insert on the primary");
    }
    wait_until("the replica to apply 3 orders", || async move { count(b).await == 3 }).await;

    // Apply lag: the replica receives 3 more orders but its SQL thread is stopped.
    admin(b, "STOP SLAVE SQL_THREAD").await;
    for id in 4..=6 {
        insert(a, id).await.expect("insert on the primary");
    }
    let primary_position = text(a, "SELECT @@GLOBAL.gtid_binlog_pos").await;
    wait_until("the replica to receive everything", || {
        let primary_position = primary_position.clone();
        async move {
            let rows = admin(b, "SHOW SLAVE STATUS").await;
            rows.first()
                .and_then(|r| r.get_opt::<Option<String>, &str>("Gtid_IO_Pos"))
                .and_then(Result::ok)
                .flatten()
                == Some(primary_position)
        }
    })
    .await;
    assert_eq!(count(b).await, 3, "the replica applied nothing yet");
    let mut shop_session = connect(a, "app", "app-pass").await.expect("shop login");
    shop_session.query_drop("SELECT 1").await.expect("shop session works");

    let step = step(&pair, 10_000);
    let outcome = step.run(&order(5, "eu", "us", false)).await.expect("promoted");
    assert!(
        outcome.contains(&format!("fenced old primary {a_address}")),
        "{outcome}"
    );
    assert!(outcome.contains(&format!("promoted {b_address} in us")), "{outcome}");
    assert!(
        outcome.contains(&format!("{a_address} now replicates from {b_address}")),
        "{outcome}"
    );
    // Nothing received was lost: the step applied the relay log before promoting.
    assert_eq!(count(b).await, 6);
    insert(b, 7).await.expect("the new primary takes writes");
    assert_eq!(
        server_code(insert(a, 100).await),
        Some(READ_ONLY_ERROR),
        "the old primary refuses writes"
    );
    assert!(
        shop_session.query_drop("SELECT 1").await.is_err(),
        "the shop's connection was killed"
    );
    let b_source = b_address.clone();
    wait_until("the old primary to replicate from b", || {
        let b_source = b_source.clone();
        async move { source(a).await == b_source }
    })
    .await;
    wait_until(
        "the old primary to replicate order 7",
        || async move { count(a).await == 7 },
    )
    .await;
    assert_eq!(record(b).await, "5");

    // Running the same order again, or rolling it forward with a newer generation after a
    // crash, promotes nothing twice.
    let binlog_before = text(b, "SELECT @@GLOBAL.gtid_binlog_pos").await;
    let again = step.run(&order(5, "eu", "us", false)).await.expect("no-op");
    assert!(
        again.contains(&format!(
            "{b_address} already primary (promotion record of generation 5)"
        )),
        "{again}"
    );
    assert_eq!(
        text(b, "SELECT @@GLOBAL.gtid_binlog_pos").await,
        binlog_before,
        "no write at all"
    );
    let rolled = step.run(&order(6, "eu", "us", false)).await.expect("roll forward");
    assert!(rolled.contains("already primary"), "{rolled}");
    assert_eq!(record(b).await, "6");
    assert!(source(a).await.ends_with(&b_address), "a still points at b");
    wait_until("the record to replicate", || async move { record(a).await == "6" }).await;

    // An older generation is fenced by the record.
    let stale = step.run(&order(4, "eu", "us", false)).await;
    assert!(
        matches!(&stale, Err(Failure::Fenced(m)) if m.contains("generation 6")),
        "{stale:?}"
    );

    // Failback: a is a clean replica, so it takes over with zero loss and b rejoins it.
    let back = step.run(&order(7, "us", "eu", false)).await.expect("failed back");
    assert!(back.contains(&format!("fenced old primary {b_address}")), "{back}");
    assert!(back.contains(&format!("promoted {a_address} in eu")), "{back}");
    assert_eq!(count(a).await, 7);
    insert(a, 8).await.expect("the old primary takes writes again");
    assert_eq!(server_code(insert(b, 101).await), Some(READ_ONLY_ERROR));
    let a_source = a_address.clone();
    wait_until("b to replicate from a", || {
        let a_source = a_source.clone();
        async move { source(b).await == a_source }
    })
    .await;
    wait_until("b to replicate order 8", || async move { count(b).await == 8 }).await;
}

#[tokio::test]
async fn mariadb_promotion_beyond_the_lag_bound_is_refused_forced_and_the_errant_old_primary_never_rejoins() {
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    let pair = start_pair(&mariadbd).await;
    let (a, b) = (pair.a, pair.b);
    let a_address = format!("127.0.0.1:{a}");
    for id in 1..=2 {
        insert(a, id).await.expect("insert");
    }
    wait_until("the replica to apply 2 orders", || async move { count(b).await == 2 }).await;
    // The replication link is cut: b receives nothing more.
    admin(b, "STOP SLAVE IO_THREAD").await;
    for id in 3..=5 {
        insert(a, id).await.expect("insert");
    }

    let step = step(&pair, 300);
    let refused = step.run(&order(5, "eu", "us", false)).await;
    let Err(Failure::Refused(message)) = &refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(message.contains("lacks 3 transaction(s)"), "{message}");
    assert!(message.contains("0-1-"), "the GTIDs are named: {message}");
    assert!(message.contains("--force-data-loss"), "{message}");
    insert(a, 6).await.expect("the old primary was given its writes back");
    // An account created on the old primary: MariaDB's binlog holds its password as written.
    admin(a, "CREATE USER 'late'@'%' IDENTIFIED BY 'late-s3cret'").await;
    assert_eq!(text(b, "SELECT @@GLOBAL.read_only").await, "1", "nothing was promoted");

    let forced = step.run(&order(6, "eu", "us", true)).await.expect("forced");
    assert!(
        forced.contains("lacks 5 transaction(s)") && forced.contains("they are lost"),
        "{forced}"
    );
    assert!(
        forced.contains(&format!(
            "{a_address} left fenced, not rejoined: 5 errant transaction(s)"
        )),
        "{forced}"
    );
    // Read from a's binlog: the four orders and the account it took that b never saw.
    assert!(
        forced.contains("their rows changed shop.orders (4 transaction(s)); statements: 0-1-"),
        "{forced}"
    );
    assert!(
        forced.contains("CREATE USER 'late'@'%' IDENTIFIED BY '<hidden>' (all 5 found in the binlog)"),
        "{forced}"
    );
    assert!(!forced.contains("late-s3cret"), "{forced}");
    assert_eq!(count(b).await, 2);
    insert(b, 3).await.expect("the new primary takes writes");
    assert_eq!(
        server_code(insert(a, 100).await),
        Some(READ_ONLY_ERROR),
        "the old primary stays fenced"
    );
    assert_eq!(source(a).await, "", "the old primary was not made a replica");

    // Failing back to eu needs a to rejoin b first: refused, naming the errant GTIDs.
    let back = step.run(&order(7, "us", "eu", false)).await;
    let Err(Failure::Refused(message)) = &back else {
        panic!("expected a refusal, got {back:?}");
    };
    assert!(message.contains(&format!("{a_address} cannot rejoin")), "{message}");
    assert!(
        message.contains("5 errant transaction(s)") && message.contains("0-1-"),
        "{message}"
    );
    assert!(!message.contains("late-s3cret"), "{message}");
    assert!(
        message.contains(&format!(
            "{a_address}'s errant transactions: their rows changed shop.orders (4 transaction(s))"
        )),
        "{message}"
    );
    assert_eq!(text(b, "SELECT @@GLOBAL.read_only").await, "0", "b stays the primary");
}

#[tokio::test]
async fn mariadb_a_replica_written_past_read_only_is_not_promoted_and_its_writes_are_named() {
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    let pair = start_pair(&mariadbd).await;
    let (a, b) = (pair.a, pair.b);
    let b_address = format!("127.0.0.1:{b}");
    for id in 1..=2 {
        insert(a, id).await.expect("insert");
    }
    wait_until("the replica to apply 2 orders", || async move { count(b).await == 2 }).await;
    // The shop's account cannot write on the replica, but one with READ_ONLY ADMIN (the
    // step's own account here) can: b now holds an order a never saw, under b's server_id.
    assert_eq!(server_code(insert(b, 40).await), Some(READ_ONLY_ERROR));
    admin(b, "INSERT INTO shop.orders (id) VALUES (41)").await;
    assert!(source(b).await.ends_with(&format!(":{a}")), "b still replicates from a");

    let step = step(&pair, 2_000);
    let refused = step.run(&order(5, "eu", "us", false)).await;
    let Err(Failure::Refused(message)) = &refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(
        message.contains(&format!(
            "{b_address} cannot be promoted: it has 1 errant transaction(s) written on it directly (server_id 2"
        )) && message.contains("never saw: 0-2-"),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "{b_address}'s errant transactions: their rows changed shop.orders (1 transaction(s))"
        )) && message.contains("all 1 found in the binlog"),
        "{message}"
    );
    assert_eq!(text(b, "SELECT @@GLOBAL.read_only").await, "1", "nothing was promoted");
    insert(a, 3).await.expect("the primary still takes writes");
}

#[tokio::test]
async fn mariadb_a_run_stopped_after_the_reset_is_finished_by_the_next_without_a_second_promotion() {
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    let pair = start_pair(&mariadbd).await;
    let (a, b) = (pair.a, pair.b);
    let (a_address, b_address) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
    insert(a, 1).await.expect("insert");
    wait_until("the replica to apply", || async move { count(b).await == 1 }).await;
    // What a controller that died mid-step leaves: the old primary fenced, the candidate's
    // replication reset, still read-only, no promotion record.
    admin(a, "SET GLOBAL read_only = ON").await;
    admin(b, "STOP SLAVE").await;
    admin(b, "RESET SLAVE ALL").await;

    let step = step(&pair, 5_000);
    let outcome = step.run(&order(9, "eu", "us", false)).await.expect("rolled forward");
    assert!(outcome.contains(&format!("promoted {b_address} in us")), "{outcome}");
    assert!(
        outcome.contains(&format!("{a_address} now replicates from {b_address}")),
        "{outcome}"
    );
    assert_eq!(record(b).await, "9");
    insert(b, 2).await.expect("writable");
    wait_until("a to replicate from b", || async move { count(a).await == 2 }).await;
    let again = step.run(&order(10, "eu", "us", false)).await.expect("no-op");
    assert!(again.contains("already primary"), "{again}");
}

#[tokio::test]
async fn mariadb_an_unreachable_old_primary_is_named_then_fenced_on_sight_when_it_returns_writable() {
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    let mut pair = start_pair(&mariadbd).await;
    let (a, b) = (pair.a, pair.b);
    let (a_address, b_address) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
    insert(a, 1).await.expect("insert");
    wait_until("the replica to apply", || async move { count(b).await == 1 }).await;
    // The primary's host dies.
    pair.servers[0].child.kill().expect("kill a");
    pair.servers[0].child.wait().expect("reap a");

    let step = step(&pair, 1_000);
    let outcome = step.run(&order(5, "eu", "us", false)).await.expect("promoted");
    assert!(outcome.contains(&format!("{a_address} unreachable")), "{outcome}");
    assert!(outcome.contains("fence it at the load balancer"), "{outcome}");
    assert!(outcome.contains(&format!("promoted {b_address} in us")), "{outcome}");
    assert!(outcome.contains("the old primary did not answer"), "{outcome}");
    insert(b, 2).await.expect("the new primary takes writes");

    // a comes back writable (no read_only in its configuration): the promotion record says b
    // is the primary, so a is fenced on sight and, without errant transactions, rejoins b.
    pair.servers[0] = start_mariadb(&mariadbd, pair.dir.path(), "a", a, 1, false);
    wait_until("a to accept logins", || async move {
        connect(a, "switchyard", "sw-pass").await.is_ok()
    })
    .await;
    assert_eq!(text(a, "SELECT @@GLOBAL.read_only").await, "0");
    let again = step.run(&order(6, "eu", "us", false)).await.expect("rolled forward");
    assert!(again.contains(&format!("{b_address} already primary")), "{again}");
    assert!(again.contains(&format!("fenced stray primary {a_address}")), "{again}");
    assert!(
        again.contains(&format!("{a_address} now replicates from {b_address}")),
        "{again}"
    );
    assert_eq!(server_code(insert(a, 100).await), Some(READ_ONLY_ERROR));
    wait_until("a to replicate order 2", || async move { count(a).await == 2 }).await;
}

#[tokio::test]
async fn mariadb_a_repointed_server_whose_link_fails_is_named_not_said_to_replicate() {
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    let pair = start_pair(&mariadbd).await;
    let (a, b) = (pair.a, pair.b);
    let (a_address, b_address) = (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}"));
    insert(a, 1).await.expect("insert");
    wait_until("the replica to apply", || async move { count(b).await == 1 }).await;
    // The step's replication password is not the account's: b keeps the link it has, but the
    // old primary pointed at b cannot log in.
    std::fs::write(pair.dir.path().join("repl.password"), "not-repl-pass\n").expect("write password");
    let step = step(&pair, 5_000);
    let outcome = step.run(&order(5, "eu", "us", false)).await.expect("promoted");
    assert!(outcome.contains(&format!("promoted {b_address} in us")), "{outcome}");
    assert!(
        outcome.contains(&format!(
            "{a_address} pointed at {b_address}, but does not replicate: its I/O thread's last error:"
        )) && outcome.contains("Access denied for user 'repl'"),
        "{outcome}"
    );
    assert!(!outcome.contains("now replicates"), "{outcome}");
    assert!(!outcome.contains("not-repl-pass"), "{outcome}");
    // A re-run finds it set up, and still says its link does not connect.
    let again = step.run(&order(5, "eu", "us", false)).await.expect("re-run");
    assert!(
        again.contains(&format!(
            "{a_address} replicates from {b_address} but its I/O thread is not connected: "
        )) && again.contains("Access denied"),
        "{again}"
    );
}

/// `SHOW SLAVE STATUS`'s `name` on `port` ("" when not a replica).
async fn slave_status(port: u16, name: &str) -> String {
    admin(port, "SHOW SLAVE STATUS")
        .await
        .first()
        .and_then(|r| r.get_opt::<Option<String>, &str>(name))
        .and_then(Result::ok)
        .flatten()
        .unwrap_or_default()
}

/// Whether a statement containing `text` runs on `port` (another session's).
async fn running(port: u16, text: &str) -> bool {
    admin(
        port,
        "SELECT INFO FROM information_schema.PROCESSLIST WHERE INFO IS NOT NULL",
    )
    .await
    .iter()
    .filter_map(|r| r.get_opt::<Option<String>, usize>(0).and_then(Result::ok).flatten())
    .any(|info| info.contains(text) && !info.contains("PROCESSLIST"))
}

async fn stock(port: u16, sku: u32) -> String {
    text(port, &format!("SELECT n FROM shop.stock WHERE sku = {sku}")).await
}

/// A session on the replica `b` holding a row lock on `sku` of `shop.stock`: its SQL thread
/// cannot apply a change of that row until the session ends.
async fn lock_row(b: u16, sku: u32) -> mysql_async::Conn {
    let mut session = connect(b, "switchyard", "sw-pass").await.expect("login");
    session.query_drop("BEGIN").await.expect("begin");
    session
        .query_drop(format!("SELECT n FROM shop.stock WHERE sku = {sku} FOR UPDATE"))
        .await
        .expect("lock the row");
    session
}

/// The pair with `shop.stock` (skus 1 and 2, 10 each) on both servers, and a step that lists
/// the primary `a` at an address where nothing answers: for the step, the old primary is gone,
/// while `b` still replicates from it (a partition between the step and the primary only).
async fn partitioned_pair(mariadbd: &Path, promote_lag_max_ms: u64) -> (Pair, MysqlPromote) {
    let mut pair = start_pair(mariadbd).await;
    let (a, b) = (pair.a, pair.b);
    admin(
        a,
        "CREATE TABLE shop.stock (sku INT PRIMARY KEY, n INT NOT NULL) ENGINE=InnoDB",
    )
    .await;
    admin(a, "INSERT INTO shop.stock VALUES (1, 10), (2, 10)").await;
    wait_until(
        "the replica to have the stock",
        || async move { stock(b, 2).await == "10" },
    )
    .await;
    let real_a = pair.a;
    pair.a = free_port();
    let step = step(&pair, promote_lag_max_ms);
    pair.a = real_a;
    (pair, step)
}

/// Waits until the step `run` waits on `b` for it to catch up; the step's outcome when it
/// ended before.
async fn wait_for_catch_up(
    b: u16,
    run: tokio::task::JoinHandle<providers::Outcome>,
) -> tokio::task::JoinHandle<providers::Outcome> {
    let until = std::time::Instant::now() + crate::support::DEADLINE;
    while !running(b, "MASTER_GTID_WAIT").await {
        if run.is_finished() {
            panic!("the step ended first: {:?}", run.await);
        }
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for the step to wait"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    run
}

/// Waits until `b` received everything `a` has.
async fn received_everything(a: u16, b: u16) {
    let primary_position = text(a, "SELECT @@GLOBAL.gtid_binlog_pos").await;
    wait_until("the replica to receive every write", || {
        let primary_position = primary_position.clone();
        async move { slave_status(b, "Gtid_IO_Pos").await == primary_position }
    })
    .await;
}

/// How `b` keeps the write of sku 2 in its relay log, unapplied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Delayed replication (`MASTER_DELAY`): applied some seconds after `a` took it, and an
    /// applier in its delay stops at once.
    Delay,
    /// A row lock on `b` that the test keeps.
    Lock,
}

/// Replication delay of [`Hold::Delay`]: the write of sku 2, taken at least a second after
/// that of sku 1, is applied at least a second after it.
const DELAY_S: u32 = 5;

/// Holds `b`'s SQL thread on sku 1 until the step waits for it to catch up, then has `a` take
/// a write of sku 2 (acknowledged) that `b` receives after the step's survey and keeps
/// unapplied (`hold`), then lets sku 1 go. The lock of sku 2, if any, and the step's run.
async fn a_write_received_after_the_survey(
    pair: &Pair,
    step: &MysqlPromote,
    hold: Hold,
) -> (Option<mysql_async::Conn>, tokio::task::JoinHandle<providers::Outcome>) {
    let (a, b) = (pair.a, pair.b);
    if hold == Hold::Delay {
        admin(b, "STOP SLAVE").await;
        admin(b, &format!("CHANGE MASTER TO MASTER_DELAY = {DELAY_S}")).await;
        admin(b, "START SLAVE").await;
    }
    let first = lock_row(b, 1).await;
    let second = match hold {
        Hold::Lock => Some(lock_row(b, 2).await),
        Hold::Delay => None,
    };
    admin(a, "UPDATE shop.stock SET n = n - 1 WHERE sku = 1").await;
    let first_taken: u64 = text(a, "SELECT UNIX_TIMESTAMP()").await.parse().expect("a number");
    received_everything(a, b).await;
    let step = step.clone();
    let run = tokio::spawn(async move { step.run(&order(5, "eu", "us", false)).await });
    let run = wait_for_catch_up(b, run).await;
    // Event timestamps count whole seconds.
    wait_until("a's clock to pass the first write's second", || async move {
        text(a, "SELECT UNIX_TIMESTAMP()").await.parse::<u64>().unwrap_or(0) > first_taken
    })
    .await;
    admin(a, "UPDATE shop.stock SET n = n - 1 WHERE sku = 2").await;
    received_everything(a, b).await;
    assert_eq!(stock(b, 2).await, "10", "the write is received, not applied");
    if run.is_finished() {
        panic!("the step ended before sku 1 was let go: {:?}", run.await);
    }
    drop(first);
    (second, run)
}

#[tokio::test]
async fn mariadb_promotion_with_the_primary_unreachable_applies_what_arrived_after_the_survey() {
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    let (pair, step) = partitioned_pair(&mariadbd, 15_000).await;
    let b = pair.b;
    let b_address = format!("127.0.0.1:{b}");
    let (_, run) = a_write_received_after_the_survey(&pair, &step, Hold::Delay).await;
    // The catch-up ends once sku 1 is applied, a second or more before sku 2 is: resetting
    // b's replication then would discard sku 2 from its relay log.
    let outcome = run.await.expect("the step's task").expect("promoted");
    assert!(outcome.contains(&format!("promoted {b_address} in us")), "{outcome}");
    assert_eq!(stock(b, 1).await, "9");
    assert_eq!(
        stock(b, 2).await,
        "9",
        "the write a acknowledged and b received is on the new primary: {outcome}"
    );
    assert_eq!(slave_status(b, "Master_Host").await, "", "b replicates no more");
}

#[tokio::test]
async fn mariadb_a_relay_log_that_does_not_drain_in_time_refuses_the_promotion_naming_what_is_left() {
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    // The catch-up outlasts the test's write of sku 2 (its bound is what the drain gets).
    let (pair, step) = partitioned_pair(&mariadbd, 5_000).await;
    let (a, b) = (pair.a, pair.b);
    let b_address = format!("127.0.0.1:{b}");
    // sku 2 stays locked on b for the whole run.
    let (second, run) = a_write_received_after_the_survey(&pair, &step, Hold::Lock).await;
    let refused = run.await.expect("the step's task");
    let Err(Failure::Refused(message)) = &refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    let write = text(a, "SELECT @@GLOBAL.gtid_binlog_pos").await;
    assert!(
        message.contains(&format!("{b_address} still lacks 1 transaction(s)"))
            && message.contains("1 of them in its relay log, received but not applied within")
            && message.contains(&write),
        "{message}"
    );
    drop(second);
    // Nothing was promoted, and b receives again: it applies the write.
    assert_eq!(text(b, "SELECT @@GLOBAL.read_only").await, "1");
    wait_until("b to apply the write", || async move { stock(b, 2).await == "9" }).await;
    // The IO thread passes through "Preparing" (MariaDB 10.11) while it connects again.
    wait_until("b's IO thread to run", || async move {
        slave_status(b, "Slave_IO_Running").await == "Yes"
    })
    .await;
}

// `switchyard guard` on MariaDB: the region's writable primary is fenced (read_only, the shop's
// open connection ended), the read-only replica is left alone, a second round changes nothing,
// and the unfence makes the primary writable again but never a server that replicates.
#[tokio::test]
async fn mariadb_guard_fences_the_regions_primary_only_and_unfences_only_a_primary() {
    use providers::db::guard::GuardOutcome;
    let Some(mariadbd) = find_binary("mariadbd") else {
        return skip("mariadbd", "mariadb-server");
    };
    let pair = start_pair(&mariadbd).await;
    let step = step(&pair, 5_000);
    let (a, b) = (pair.a, pair.b);
    insert(a, 1).await.expect("the shop writes");
    let mut open = connect(a, "app", "app-pass").await.expect("the shop's connection");

    let reports = step.guard_fence("us", Some(5)).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].outcome,
        GuardOutcome::Refusing,
        "the replica is read-only already"
    );
    // A primary promoted under generation 5 (as a runbook moving the role back here would) is
    // that decision's, not an old primary: a fence for the move to 5 leaves it writable.
    admin(
        a,
        "CREATE DATABASE switchyard; CREATE TABLE switchyard.promotion (id TINYINT UNSIGNED PRIMARY KEY, \
         generation BIGINT UNSIGNED NOT NULL, primary_address VARCHAR(300) NOT NULL, region VARCHAR(200) NOT NULL); \
         INSERT INTO switchyard.promotion VALUES (1, 5, 'a', 'eu')",
    )
    .await;
    let reports = step.guard_fence("eu", Some(5)).await;
    assert_eq!(
        reports[0].outcome,
        GuardOutcome::Promoted { generation: 5 },
        "{reports:?}"
    );
    assert_eq!(text(a, "SELECT @@GLOBAL.read_only").await, "0");
    // A move to generation 6 fences it.
    let reports = step.guard_fence("eu", Some(6)).await;
    assert!(
        matches!(reports[0].outcome, GuardOutcome::Fenced { ended } if ended >= 1),
        "{reports:?}"
    );
    assert_eq!(server_code(insert(a, 2).await), Some(READ_ONLY_ERROR));
    assert!(
        open.query_drop("INSERT INTO shop.orders (id) VALUES (3)")
            .await
            .is_err(),
        "the connection open before the fence was ended"
    );
    assert_eq!(step.guard_fence("eu", None).await[0].outcome, GuardOutcome::Refusing);
    assert_eq!(source(b).await, format!("127.0.0.1:{a}"), "replication goes on");

    // After a move during an isolation, only a server promoted since is unfenced.
    let reports = step.guard_unfence("eu", &[format!("127.0.0.1:{a}")], Some(7)).await;
    assert!(
        matches!(&reports[0].outcome, GuardOutcome::Kept(why) if why.contains("generation 5")),
        "{reports:?}"
    );
    assert_eq!(text(a, "SELECT @@GLOBAL.read_only").await, "1");
    // Another region's server is never this region's guard's to unfence.
    let reports = step
        .guard_unfence("eu", &[format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}")], Some(5))
        .await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].outcome, GuardOutcome::Unfenced, "{reports:?}");
    let reports = step.guard_unfence("us", &[format!("127.0.0.1:{b}")], None).await;
    assert!(
        matches!(&reports[0].outcome, GuardOutcome::Kept(why) if why.contains(&format!("127.0.0.1:{a}"))),
        "{reports:?}"
    );
    assert_eq!(text(b, "SELECT @@GLOBAL.read_only").await, "1");
    insert(a, 4).await.expect("writable again");
    wait_until("the order to replicate", || async move { count(b).await == 2 }).await;
}
