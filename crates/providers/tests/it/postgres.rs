//! `postgres_promote` against real PostgreSQL servers (the Debian `postgresql` package): a
//! primary `a` in eu and two streaming standbys `b` and `c` in us, made by the test with
//! `pg_basebackup -R`, `wal_log_hints = on` so `pg_rewind` can rejoin a former primary. The
//! rejoin command is a shell script the test writes (stop, `pg_rewind` when asked, standby.signal
//! and primary_conninfo, start), as an operator's would be. As root, the servers run as nobody.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use providers::Failure;
use providers::db::postgres::{PostgresPromote, Settings};

use crate::support::{Strict, find_binary, free_port, order, running_as_root, skip, wait_until};

const NOBODY: u32 = 65534;
const SUPER_PASSWORD: &str = "pg-pass";
/// SQLSTATE read_only_sql_transaction: the server is fenced.
const READ_ONLY: &str = "25006";

struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// eu primary `a`, us standbys `b` and `c`.
    ports: [u16; 3],
}

impl Cluster {
    fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(["a", "b", "c"][i])
    }

    fn address(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// A PostgreSQL tool, as nobody when the test runs as root.
    fn tool(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin.join(name));
        if running_as_root() {
            command.uid(NOBODY).gid(NOBODY);
        }
        command
    }

    fn pg_ctl(&self, i: usize, args: &[&str]) -> std::process::Output {
        let data = self.data(i);
        let log = self.dir.path().join(format!("{}.log", ["a", "b", "c"][i]));
        self.tool("pg_ctl")
            .args(["-D", &data.display().to_string(), "-l", &log.display().to_string()])
            .args(["-o", &format!("-p {}", self.ports[i])])
            .args(args)
            .output()
            .expect("run pg_ctl")
    }

    fn start(&self, i: usize) {
        let output = self.pg_ctl(i, &["-w", "-t", "60", "start"]);
        assert!(
            output.status.success(),
            "pg_ctl start {}: {}{}",
            self.address(i),
            String::from_utf8_lossy(&output.stderr),
            self.log(i)
        );
    }

    /// Stops a server at once, as a crash would.
    fn kill(&self, i: usize) {
        let output = self.pg_ctl(i, &["-w", "-m", "immediate", "stop"]);
        assert!(
            output.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", ["a", "b", "c"][i]))).unwrap_or_default()
    }

    fn step(&self, promote_lag_max_ms: u64, rejoin: bool) -> PostgresPromote {
        let rejoin = if rejoin {
            format!(
                "rejoin = {{ program = \"{}\", timeout_ms = 60000 }}\n",
                self.dir.path().join("rejoin.sh").display()
            )
        } else {
            String::new()
        };
        let settings = format!(
            "servers = {{ eu = [\"{}\"], us = [\"{}\", \"{}\"] }}\n\
             user = \"postgres\"\n\
             password = {{ file = \"{}\" }}\n\
             replication_user = \"repl\"\n\
             replication_password = {{ file = \"{}\" }}\n\
             promote_lag_max_ms = {promote_lag_max_ms}\n{rejoin}",
            self.address(0),
            self.address(1),
            self.address(2),
            self.dir.path().join("password").display(),
            self.dir.path().join("repl.password").display(),
        );
        let settings: Settings = toml::from_str(&settings).expect("settings parse");
        settings
            .check("orders-db", &mut Strict::new(&["eu", "us"]))
            .expect("settings check")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..3 {
            let _ = self.pg_ctl(i, &["-w", "-m", "immediate", "stop"]);
        }
        if std::thread::panicking() {
            for i in 0..3 {
                eprintln!("--- {} ---\n{}", self.address(i), self.log(i));
            }
        }
    }
}

async fn client(port: u16, user: &str, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(5))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The first column of the first row, as the superuser.
async fn text(port: u16, statement: &str) -> String {
    let client = client(port, "postgres", SUPER_PASSWORD)
        .await
        .unwrap_or_else(|e| panic!("login on {port}: {e}"));
    let messages = client
        .simple_query(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement} on {port}: {e}"));
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

/// An order as the shop inserts it (its own role, no session settings).
async fn insert(port: u16, id: u32) -> Result<(), String> {
    let client = client(port, "app", "app-pass").await.map_err(|e| e.to_string())?;
    client
        .simple_query(&format!("INSERT INTO orders (id) VALUES ({id})"))
        .await
        .map(|_| ())
        .map_err(|e| match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        })
}

async fn count(port: u16) -> u64 {
    text(port, "SELECT count(*) FROM orders").await.parse().unwrap_or(0)
}

/// The timeline a primary writes.
async fn timeline(port: u16) -> String {
    text(port, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").await
}

/// `status@host:port` of the standby's WAL receiver, or "" without one.
async fn receiver(port: u16) -> String {
    text(
        port,
        "SELECT status || '@' || sender_host || ':' || sender_port FROM pg_stat_wal_receiver",
    )
    .await
}

async fn streams_from(cluster: &Cluster, standby: usize, primary: usize) {
    let (port, expected) = (
        cluster.ports[standby],
        format!("streaming@{}", cluster.address(primary)),
    );
    wait_until(
        &format!(
            "{} to stream from {}",
            cluster.address(standby),
            cluster.address(primary)
        ),
        || {
            let expected = expected.clone();
            async move { receiver(port).await == expected }
        },
    )
    .await;
}

/// Cuts a standby's replication: its upstream becomes a port nobody listens on.
async fn cut(cluster: &Cluster, standby: usize) {
    let port = cluster.ports[standby];
    let dead = free_port();
    text(
        port,
        &format!("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={dead} user=repl password=repl-pass'"),
    )
    .await;
    text(port, "SELECT pg_reload_conf()").await;
    wait_until("the standby to stop streaming", || async move {
        receiver(port).await.is_empty()
    })
    .await;
}

fn start_cluster() -> Option<Cluster> {
    let Some(initdb) = find_binary("initdb") else {
        skip("initdb", "postgresql");
        return None;
    };
    // /usr/local/bin/initdb may be a link into /usr/lib/postgresql/N/bin, where the rest is.
    let initdb = std::fs::canonicalize(&initdb).unwrap_or(initdb);
    let bin = initdb.parent().expect("bin folder").to_path_buf();
    for tool in ["pg_ctl", "pg_basebackup", "pg_rewind", "postgres"] {
        if !bin.join(tool).is_file() {
            skip(tool, "postgresql");
            return None;
        }
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    if running_as_root() {
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let cluster = Cluster {
        dir,
        bin,
        ports: [free_port(), free_port(), free_port()],
    };
    let root = cluster.dir.path();
    for (name, secret) in [("password", SUPER_PASSWORD), ("repl.password", "repl-pass")] {
        std::fs::write(root.join(name), format!("{secret}\n")).expect("write password");
        std::fs::set_permissions(root.join(name), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let output = cluster
        .tool("initdb")
        .args(["-D", &cluster.data(0).display().to_string(), "-U", "postgres"])
        .arg(format!("--pwfile={}", root.join("password").display()))
        .args(["--auth=scram-sha-256", "--no-sync", "-E", "UTF8"])
        .output()
        .expect("run initdb");
    assert!(
        output.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let conf = cluster.data(0).join("postgresql.conf");
    let mut settings = std::fs::read_to_string(&conf).expect("read postgresql.conf");
    settings.push_str(&format!(
        "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
         wal_log_hints = on\nwal_keep_size = 256MB\nshared_buffers = 16MB\n",
        root.display()
    ));
    std::fs::write(&conf, settings).expect("write postgresql.conf");
    // The rejoin command an operator would install (run as nobody, like the servers).
    let script = format!(
        "#!/bin/sh\nset -eu\n\
         if [ \"$(id -u)\" = 0 ]; then exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- \"$0\" \"$@\"; fi\n\
         case \"$SWITCHYARD_PG_TARGET_PORT\" in\n  {pa}) name=a;;\n  {pb}) name=b;;\n  {pc}) name=c;;\n  *) echo \"unknown target $SWITCHYARD_PG_TARGET\" >&2; exit 2;;\nesac\n\
         data={root}/$name\n\
         {bin}/pg_ctl -D \"$data\" -w -m fast stop || true\n\
         if [ \"$SWITCHYARD_PG_REWIND\" = 1 ]; then {bin}/pg_rewind --target-pgdata=\"$data\" --source-server=\"$SWITCHYARD_PG_SOURCE_SERVER\"; fi\n\
         touch \"$data/standby.signal\"\n\
         printf \"primary_conninfo = '%s'\\n\" \"$(printf %s \"$SWITCHYARD_PG_PRIMARY_CONNINFO\" | sed \"s/'/''/g\")\" >> \"$data/postgresql.auto.conf\"\n\
         {bin}/pg_ctl -D \"$data\" -l {root}/$name.log -o \"-p $SWITCHYARD_PG_TARGET_PORT\" -w -t 60 start\n",
        pa = cluster.ports[0],
        pb = cluster.ports[1],
        pc = cluster.ports[2],
        root = root.display(),
        bin = cluster.bin.display(),
    );
    std::fs::write(root.join("rejoin.sh"), script).expect("write rejoin script");
    std::fs::set_permissions(root.join("rejoin.sh"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    cluster.start(0);
    Some(cluster)
}

/// The schema, the roles, and the two standbys streaming.
/// [`populate`], then orders 1 to `orders` on the primary, waited for on both standbys.
async fn populate_and_replicate(cluster: &Cluster, orders: u32) {
    populate(cluster).await;
    let [a, b, c] = cluster.ports;
    for id in 1..=orders {
        insert(a, id).await.expect("insert on the primary");
    }
    let what = format!("both standbys to have {orders} order(s)");
    let expected = u64::from(orders);
    wait_until(&what, || async move {
        count(b).await == expected && count(c).await == expected
    })
    .await;
}

async fn populate(cluster: &Cluster) {
    let a = cluster.ports[0];
    text(
        a,
        "CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl-pass'; \
         CREATE ROLE app LOGIN PASSWORD 'app-pass'; \
         CREATE TABLE orders (id int PRIMARY KEY); GRANT ALL ON orders TO app",
    )
    .await;
    for i in 1..3 {
        let output = cluster
            .tool("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &a.to_string(), "-U", "repl"])
            .args([
                "-D",
                &cluster.data(i).display().to_string(),
                "-R",
                "--no-sync",
                "-X",
                "stream",
            ])
            .env("PGPASSWORD", "repl-pass")
            .output()
            .expect("run pg_basebackup");
        assert!(
            output.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.start(i);
        streams_from(cluster, i, 0).await;
    }
}

// Under load the other standby used to receive WAL past the fork point from the fenced old
// primary and never stream from the new one: the step now detaches every standby
// (`primary_conninfo = ''`) before promoting, so positions are frozen when it decides.
#[tokio::test]
async fn postgres_failover_picks_the_most_advanced_standby_fences_repoints_rejoins_and_fails_back() {
    let Some(cluster) = start_cluster() else { return };
    let [a, b, c] = cluster.ports;
    populate_and_replicate(&cluster, 3).await;
    // c streams through a physical replication slot, which b, once promoted, has not.
    text(a, "SELECT pg_create_physical_replication_slot('standby_c')").await;
    text(c, "ALTER SYSTEM SET primary_slot_name = 'standby_c'").await;
    text(c, "SELECT pg_reload_conf()").await;
    wait_until("c to stream through its slot", || async move {
        text(
            a,
            "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'standby_c'",
        )
        .await
            == "true"
    })
    .await;
    // c loses its link; b keeps receiving but its replay is paused (apply lag).
    cut(&cluster, 2).await;
    text(b, "SELECT pg_wal_replay_pause()").await;
    for id in 4..=6 {
        insert(a, id).await.expect("insert on the primary");
    }
    let written = text(a, "SELECT pg_current_wal_lsn()::text").await;
    wait_until("b to receive everything", || {
        let written = written.clone();
        async move { text(b, &format!("SELECT pg_last_wal_receive_lsn() >= '{written}'::pg_lsn")).await == "t" }
    })
    .await;
    assert_eq!(count(b).await, 3, "b replayed nothing yet");
    let shop = client(a, "app", "app-pass").await.expect("shop login");
    shop.simple_query("SELECT 1").await.expect("shop session works");

    let step = cluster.step(10_000, true);
    let outcome = step.run(&order(5, "eu", "us", false)).await.expect("promoted");
    for expected in [
        format!("fenced old primary {}", cluster.address(0)),
        "client backend(s) terminated".to_string(),
        format!("{} had replay paused: resumed", cluster.address(1)),
        format!("promoted {} in us", cluster.address(1)),
        "now timeline 2".to_string(),
        format!("{} now streams from {}", cluster.address(2), cluster.address(1)),
        format!(
            "created replication slot standby_c on {} for {}",
            cluster.address(1),
            cluster.address(2)
        ),
        format!("{} rejoined by pg_rewind", cluster.address(0)),
    ] {
        assert!(outcome.contains(&expected), "{expected} missing in: {outcome}");
    }
    assert!(
        !outcome.contains("stray"),
        "a was fenced by this run, not found writable: {outcome}"
    );
    assert!(
        shop.simple_query("SELECT 1").await.is_err(),
        "the shop's session on a was terminated"
    );
    assert_eq!(count(b).await, 6, "b replayed every order before it was promoted");
    insert(b, 7).await.expect("the new primary takes orders");
    assert_eq!(timeline(b).await, "00000002");
    assert_eq!(text(b, "SELECT generation FROM switchyard.promotion").await, "5");
    streams_from(&cluster, 0, 1).await;
    streams_from(&cluster, 2, 1).await;
    assert_eq!(
        text(
            b,
            "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'standby_c'"
        )
        .await,
        "true",
        "c streams from b through its slot"
    );
    wait_until("a and c to have all 7 orders", || async move {
        count(a).await == 7 && count(c).await == 7
    })
    .await;
    assert_eq!(
        insert(a, 100).await.map_err(|e| e.starts_with(READ_ONLY)),
        Err(true),
        "a is a standby now"
    );

    // A retry, or a controller that restarted and rolls forward: nothing promoted twice.
    let again = step.run(&order(5, "eu", "us", false)).await.expect("re-run");
    assert!(again.contains("already primary"), "{again}");
    assert!(!again.contains("promoted "), "{again}");
    assert_eq!(timeline(b).await, "00000002", "no second promotion");

    // Failback to eu: a (a standby again) takes over, b is fenced and rewound, c follows a.
    let back = step.run(&order(6, "us", "eu", false)).await.expect("failed back");
    for expected in [
        format!("fenced old primary {}", cluster.address(1)),
        format!("promoted {} in eu", cluster.address(0)),
        "now timeline 3".to_string(),
        format!("{} rejoined by", cluster.address(1)),
    ] {
        assert!(back.contains(&expected), "{expected} missing in: {back}");
    }
    // c follows a: repointed, or rewound if b's last WAL reached it after a's fork point.
    assert!(
        back.contains(&format!(
            "{} now streams from {}",
            cluster.address(2),
            cluster.address(0)
        )) || back.contains(&format!("{} rejoined by", cluster.address(2))),
        "{back}"
    );
    insert(a, 8).await.expect("a takes orders again");
    assert_eq!(count(a).await, 8, "no order lost in the failback");
    streams_from(&cluster, 1, 0).await;
    streams_from(&cluster, 2, 0).await;
    wait_until("b and c to have 8 orders", || async move {
        count(b).await == 8 && count(c).await == 8
    })
    .await;
}

#[tokio::test]
async fn postgres_refuses_beyond_the_lag_bound_until_forced_and_leaves_the_old_primary_fenced_without_rejoin() {
    let Some(cluster) = start_cluster() else { return };
    let [a, b, c] = cluster.ports;
    populate_and_replicate(&cluster, 1).await;
    cut(&cluster, 1).await;
    cut(&cluster, 2).await;
    for id in 2..=4 {
        insert(a, id).await.expect("insert on the primary");
    }
    let step = cluster.step(300, false);
    let Err(Failure::Refused(message)) = step.run(&order(5, "eu", "us", false)).await else {
        panic!("refused");
    };
    assert!(message.contains("byte(s) of WAL up to"), "{message}");
    assert!(message.contains("--force-data-loss"), "{message}");
    assert!(
        message.contains(&format!("{} is writable again", cluster.address(0))),
        "{message}"
    );
    insert(a, 5).await.expect("the old primary got its writes back");
    assert_eq!(text(b, "SELECT pg_is_in_recovery()").await, "t", "nothing promoted");

    let forced = step.run(&order(5, "eu", "us", true)).await.expect("forced");
    assert!(forced.contains("promoted anyway (force_data_loss)"), "{forced}");
    assert!(
        forced.contains(&format!("{} left fenced: rejoining it needs", cluster.address(0))),
        "{forced}"
    );
    let promoted = if forced.contains(&format!("promoted {} in us", cluster.address(1))) {
        b
    } else {
        c
    };
    insert(promoted, 6).await.expect("the new primary takes orders");
    assert_eq!(
        count(promoted).await,
        2,
        "orders 2-5 were never received: lost, as forced"
    );
    assert_eq!(
        insert(a, 7).await.map_err(|e| e.starts_with(READ_ONLY)),
        Err(true),
        "the old primary is fenced"
    );
}

// The server the test promotes by hand forks timeline 3 while the other standby may already
// hold timeline-2 WAL past that point (the fenced primary keeps writing): the step detaches
// it first, then decides from its frozen position whether it follows or is rewound.
#[tokio::test]
async fn postgres_unreachable_primary_is_fenced_on_return_and_a_crashed_promotion_rolls_forward_once() {
    let Some(cluster) = start_cluster() else { return };
    let [a, _, _] = cluster.ports;
    populate_and_replicate(&cluster, 1).await;
    // The eu region dies: a is unreachable.
    cluster.kill(0);
    let step = cluster.step(2_000, true);
    let outcome = step.run(&order(5, "eu", "us", false)).await.expect("promoted");
    assert!(
        outcome.contains(&format!("{} unreachable", cluster.address(0))),
        "{outcome}"
    );
    assert!(outcome.contains("the old primary did not answer"), "{outcome}");
    let promoted = if outcome.contains(&format!("promoted {} in us", cluster.address(1))) {
        1
    } else {
        2
    };
    let other = 3 - promoted;
    streams_from(&cluster, other, promoted).await;
    // a comes back writable, with writes of its own nobody saw.
    cluster.start(0);
    insert(a, 50)
        .await
        .expect("the stray primary is writable before the step sees it");
    let again = step.run(&order(5, "eu", "us", false)).await.expect("re-run");
    assert!(
        again.contains(&format!("fenced stray primary {}", cluster.address(0))),
        "{again}"
    );
    assert!(
        again.contains(&format!("{} rejoined by pg_rewind", cluster.address(0))),
        "{again}"
    );
    streams_from(&cluster, 0, promoted).await;
    wait_until("a to drop its stray order", || async move { count(a).await == 1 }).await;

    // A failback whose controller crashed right after pg_promote (before the record and the
    // rejoins): the re-run finds a promoted and finishes without promoting again.
    let new = cluster.ports[promoted];
    text(new, "ALTER SYSTEM SET default_transaction_read_only = on").await;
    text(new, "SELECT pg_reload_conf()").await;
    wait_until("a to replay everything", || async move {
        text(new, "SELECT pg_current_wal_lsn()::text").await == text(a, "SELECT pg_last_wal_replay_lsn()::text").await
    })
    .await;
    text(a, "SELECT pg_promote(true, 30)").await;
    assert_eq!(timeline(a).await, "00000003");
    let finished = step.run(&order(6, "us", "eu", false)).await.expect("rolled forward");
    assert!(finished.contains("already primary"), "{finished}");
    assert!(
        !finished.contains(&format!("promoted {}", cluster.address(0))),
        "{finished}"
    );
    assert_eq!(timeline(a).await, "00000003", "promoted once");
    assert_eq!(text(a, "SELECT generation FROM switchyard.promotion").await, "6");
    insert(a, 2).await.expect("a takes orders");
    streams_from(&cluster, promoted, 0).await;
    streams_from(&cluster, other, 0).await;
}

/// `tls = true`: the primary accepts TLS connections only (`ssl = on`, `hostnossl ... reject`
/// first in pg_hba.conf), with a certificate from `common::devca` for 127.0.0.1. The step
/// surveys and writes its record over TLS (a placement already in place: nothing to promote);
/// without TLS, or trusting another CA, it reaches no server.
#[tokio::test]
async fn postgres_promote_connects_over_tls_and_verifies_the_certificate() {
    let Some(cluster) = start_cluster() else { return };
    let root = cluster.dir.path();
    let tls = common::devca::generate(&root.join("tls"), &["127.0.0.1".to_string()]).expect("dev CA");
    let other = common::devca::generate(&root.join("other"), &["127.0.0.1".to_string()]).expect("dev CA");
    // The server reads its key as its own user (nobody when the test runs as root), mode 0600.
    let data = cluster.data(0);
    for (from, to) in [(&tls.cert, "server.crt"), (&tls.key, "server.key")] {
        std::fs::copy(from, data.join(to)).expect("copy");
        std::fs::set_permissions(data.join(to), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        if running_as_root() {
            std::os::unix::fs::chown(data.join(to), Some(NOBODY), Some(NOBODY)).expect("chown");
        }
    }
    let conf = data.join("postgresql.conf");
    let mut settings = std::fs::read_to_string(&conf).expect("read postgresql.conf");
    settings.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(&conf, settings).expect("write postgresql.conf");
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(
        &hba,
        format!("hostnossl all all 127.0.0.1/32 reject\nhostssl all all 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .expect("write pg_hba.conf");
    let output = cluster.pg_ctl(0, &["-w", "-t", "60", "restart"]);
    assert!(output.status.success(), "pg_ctl restart: {}", cluster.log(0));
    assert!(
        client(cluster.ports[0], "postgres", SUPER_PASSWORD).await.is_err(),
        "a plain connection must be rejected now"
    );

    let step = |keys: &str| -> PostgresPromote {
        let settings = format!(
            "servers = {{ eu = [\"{}\"] }}\n\
             user = \"postgres\"\n\
             password = {{ file = \"{}\" }}\n\
             replication_user = \"repl\"\n\
             replication_password = {{ file = \"{}\" }}\n{keys}",
            cluster.address(0),
            root.join("password").display(),
            root.join("repl.password").display(),
        );
        let settings: Settings = toml::from_str(&settings).expect("settings parse");
        settings
            .check("orders-db", &mut Strict::new(&["eu", "us"]))
            .expect("settings check")
    };
    let plain = step("").run(&order(2, "us", "eu", false)).await;
    assert!(plain.is_err(), "without TLS: {plain:?}");
    let wrong = step(&format!("tls = true\nca_file = \"{}\"\n", other.ca_cert.display()))
        .run(&order(2, "us", "eu", false))
        .await;
    assert!(wrong.is_err(), "a certificate from another CA: {wrong:?}");
    let outcome = step(&format!("tls = true\nca_file = \"{}\"\n", tls.ca_cert.display()))
        .run(&order(2, "us", "eu", false))
        .await
        .expect("over TLS");
    assert!(outcome.contains(&cluster.address(0)), "{outcome}");
}

// A partition: the step reaches neither the old primary a nor its standby c, b is promoted to
// timeline 2; a keeps taking orders on timeline 1, streamed to c. When the region of a and c
// comes back, c holds more WAL in bytes than b ever wrote, of another history: failing back
// must not promote it over b's orders.
#[tokio::test]
async fn postgres_a_standby_cut_off_with_the_old_primary_is_never_promoted_over_the_new_timeline() {
    let Some(cluster) = start_cluster() else { return };
    let [a, b, c] = cluster.ports;
    populate_and_replicate(&cluster, 3).await;
    // c is down; a refuses the step's login (its own pg_hba.conf) but keeps serving the shop.
    let output = cluster.pg_ctl(2, &["-w", "-m", "fast", "stop"]);
    assert!(output.status.success(), "stop c");
    let hba = cluster.data(0).join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(&hba, format!("host all postgres 127.0.0.1/32 reject\n{rules}")).expect("write pg_hba.conf");
    assert!(cluster.pg_ctl(0, &["reload"]).status.success(), "reload a");
    wait_until("a to refuse the step's login", || async move {
        client(a, "postgres", SUPER_PASSWORD).await.is_err()
    })
    .await;

    let settings = format!(
        "servers = {{ eu = [\"{}\", \"{}\"], us = [\"{}\"] }}\n\
         user = \"postgres\"\npassword = {{ file = \"{}\" }}\n\
         replication_user = \"repl\"\nreplication_password = {{ file = \"{}\" }}\n\
         promote_lag_max_ms = 2000\n",
        cluster.address(0),
        cluster.address(2),
        cluster.address(1),
        cluster.dir.path().join("password").display(),
        cluster.dir.path().join("repl.password").display(),
    );
    let settings: Settings = toml::from_str(&settings).expect("settings parse");
    let step = settings
        .check("orders-db", &mut Strict::new(&["eu", "us"]))
        .expect("settings check");
    let outcome = step.run(&order(5, "eu", "us", false)).await.expect("promoted");
    assert!(
        outcome.contains(&format!("promoted {} in us", cluster.address(1))),
        "{outcome}"
    );
    assert_eq!(timeline(b).await, "00000002");
    insert(b, 4).await.expect("the new primary takes orders");

    // Behind the partition: c comes back and streams from a, which takes many more orders.
    cluster.start(2);
    let shop = client(a, "app", "app-pass").await.expect("shop login on a");
    shop.simple_query("INSERT INTO orders SELECT generate_series(1000, 30000)")
        .await
        .expect("orders on the cut-off primary");
    wait_until("c to replay a's orders", || async move { count(c).await == 29_004 }).await;

    let back = step.run(&order(6, "us", "eu", false)).await;
    let Err(Failure::Refused(message)) = &back else {
        panic!("expected a refusal, got {back:?}");
    };
    assert!(
        message.contains(&format!(
            "{} is on timeline 1 and never followed timeline 2 (the primary {}'s)",
            cluster.address(2),
            cluster.address(1)
        )),
        "{message}"
    );
    insert(b, 5).await.expect("b is still the primary, not fenced");
    assert_eq!(count(b).await, 5);
}

/// A server process stopped with SIGSTOP, continued with SIGCONT when dropped.
struct Stopped(String);

impl Stopped {
    fn new(pid: String) -> Stopped {
        signal("-STOP", &pid);
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(which: &str, pid: &str) {
    let status = Command::new("kill").args([which, pid]).status().expect("run kill");
    assert!(status.success(), "kill {which} {pid}");
}

// A commit under synchronous_commit = off is acknowledged once in the WAL buffers, before the
// WAL writer writes it: the old primary's final position is its insert position, which the
// standby must replay, not its write position (pg_current_wal_lsn()). With the WAL writer
// stopped, the commit stays in the buffers deterministically; the step used to promote a
// standby without it.
#[tokio::test]
async fn postgres_waits_for_commits_acknowledged_under_synchronous_commit_off() {
    let Some(cluster) = start_cluster() else { return };
    let [a, b, c] = cluster.ports;
    populate_and_replicate(&cluster, 1).await;
    let walwriter = text(a, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walwriter'").await;
    assert!(!walwriter.is_empty(), "a has a WAL writer");
    let stopped = Stopped::new(walwriter);
    let shop = client(a, "app", "app-pass").await.expect("shop login");
    shop.simple_query("SET synchronous_commit = off; INSERT INTO orders (id) VALUES (2)")
        .await
        .expect("the order is acknowledged");
    let (written, inserted) = (
        text(a, "SELECT pg_current_wal_lsn()::text").await,
        text(a, "SELECT pg_current_wal_insert_lsn()::text").await,
    );
    assert_eq!(
        text(a, &format!("SELECT '{written}'::pg_lsn < '{inserted}'::pg_lsn")).await,
        "t",
        "the commit is not written yet: {written} < {inserted}"
    );

    // The standbys cannot receive it (only written and flushed WAL is sent): refused.
    let step = cluster.step(1_000, false);
    let refused = step.run(&order(5, "eu", "us", false)).await;
    let Err(Failure::Refused(message)) = &refused else {
        panic!("promoted without the acknowledged order: {refused:?}");
    };
    assert!(message.contains("byte(s) of WAL up to"), "{message}");
    assert!(
        message.contains(&format!("{} is writable again", cluster.address(0))),
        "{message}"
    );
    for standby in [b, c] {
        assert_eq!(
            text(standby, "SELECT pg_is_in_recovery()").await,
            "t",
            "nothing promoted"
        );
    }

    // Once the WAL writer runs, the standbys receive the order and the promotion keeps it.
    drop(stopped);
    let step = cluster.step(10_000, false);
    let outcome = step.run(&order(6, "eu", "us", false)).await.expect("promoted");
    let promoted = if outcome.contains(&format!("promoted {} in us", cluster.address(1))) {
        b
    } else {
        c
    };
    assert_eq!(count(promoted).await, 2, "the acknowledged order is kept: {outcome}");
}

// `switchyard guard` on PostgreSQL: the region's writable primary is fenced (new sessions
// read-only, an open session ended), standbys are left alone, a second round changes nothing,
// and the unfence makes the primary writable again but never a server that is a standby.
#[tokio::test]
async fn postgres_guard_fences_the_regions_primary_only_and_unfences_only_a_primary() {
    use providers::db::guard::GuardOutcome;
    let Some(cluster) = start_cluster() else { return };
    populate_and_replicate(&cluster, 2).await;
    let step = cluster.step(5_000, false);
    let [a, b, c] = cluster.ports;
    // A session of the shop's, open before the fence: it must not keep writing.
    let open = client(a, "app", "app-pass").await.expect("the shop's session");

    // The us region holds only standbys: nothing to do there.
    let reports = step.guard_fence("us", None).await;
    assert_eq!(
        reports.iter().map(|r| (&r.address, &r.outcome)).collect::<Vec<_>>(),
        [
            (&cluster.address(1), &GuardOutcome::Refusing),
            (&cluster.address(2), &GuardOutcome::Refusing)
        ]
    );
    let reports = step.guard_fence("eu", Some(3)).await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        matches!(reports[0].outcome, GuardOutcome::Fenced { ended } if ended >= 1),
        "{reports:?}"
    );
    let refused = insert(a, 100)
        .await
        .expect_err("a fenced primary refuses the shop's writes");
    assert!(refused.starts_with(READ_ONLY), "{refused}");
    assert!(
        open.simple_query("INSERT INTO orders (id) VALUES (101)").await.is_err(),
        "the session open before the fence was ended"
    );
    assert_eq!(step.guard_fence("eu", None).await[0].outcome, GuardOutcome::Refusing);
    assert_eq!(count(b).await, 2);

    // Unfencing: the primary takes writes again; a standby named by mistake stays as it is.
    let reports = step.guard_unfence("eu", &[cluster.address(0)], Some(3)).await;
    assert!(
        matches!(&reports[0].outcome, GuardOutcome::Kept(why) if why.contains("none")),
        "never promoted by Switchyard, so not by a runbook since: {reports:?}"
    );
    let reports = step
        .guard_unfence("eu", &[cluster.address(0), cluster.address(2)], None)
        .await;
    assert_eq!(
        reports.len(),
        1,
        "another region's server is not this guard's: {reports:?}"
    );
    assert_eq!(reports[0].outcome, GuardOutcome::Unfenced, "{reports:?}");
    let reports = step.guard_unfence("us", &[cluster.address(2)], None).await;
    assert!(
        matches!(&reports[0].outcome, GuardOutcome::Kept(why) if why.contains("replicates from")),
        "{reports:?}"
    );
    insert(a, 102).await.expect("writable again");
    wait_until("the order to reach a standby", || async move { count(c).await == 3 }).await;
}
